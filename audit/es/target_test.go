package es

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/vigilaudit/vigil/internal/es8double"
)

// target is the cluster a test runs against: the double, or the real
// cluster named by ELASTICSEARCH_URL.
type target struct {
	client *elasticsearch.Client
	cfg    ClientConfig
	ds     string
	double *es8double.Double // nil on a real cluster
	server *es8double.Server // nil on a real cluster
	tpl    string            // template and policy names
}

// forEachTarget runs fn against the double and, when ELASTICSEARCH_URL is
// set, against that cluster. The data stream, template and policy are
// fresh per run and removed afterwards.
func forEachTarget(t *testing.T, fn func(t *testing.T, tg *target)) {
	t.Run("double", func(t *testing.T) { fn(t, doubleTarget(t, es8double.Options{})) })
	t.Run("real", func(t *testing.T) { fn(t, realTarget(t)) })
}

func doubleTarget(t *testing.T, opts es8double.Options) *target {
	t.Helper()
	d := es8double.New(opts)
	srv, err := es8double.Start(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	tg := &target{cfg: ClientConfig{Addresses: []string{srv.URL}, APIKey: opts.APIKey},
		double: d, server: srv}
	tg.init(t)
	return tg
}

// realTarget connects to ELASTICSEARCH_URL. The tests create and remove
// only their own vigiltest-audit-<random> data stream, template and
// policy there.
func realTarget(t *testing.T) *target {
	t.Helper()
	raw := os.Getenv("ELASTICSEARCH_URL")
	if raw == "" {
		t.Skip("ELASTICSEARCH_URL is not set: the real-cluster run of this test is skipped " +
			"(the double run above covers it); set ELASTICSEARCH_URL=http://127.0.0.1:9200 " +
			"and, if security is on, ELASTICSEARCH_API_KEY to run it against Elasticsearch 8")
	}
	if u, err := url.Parse(raw); err != nil || u.Host == "" {
		t.Fatalf("ELASTICSEARCH_URL %q: want a URL such as http://127.0.0.1:9200", raw)
	}
	key := os.Getenv("ELASTICSEARCH_API_KEY")
	if key == "" {
		t.Log("ELASTICSEARCH_API_KEY is not set: talking to the cluster without credentials")
	}
	tg := &target{cfg: ClientConfig{Addresses: []string{raw}, APIKey: key}}
	tg.init(t)
	return tg
}

// init builds the client and installs a fresh template, policy and data
// stream named after a random suffix.
func (tg *target) init(t *testing.T) {
	t.Helper()
	c, err := NewClient(tg.cfg)
	if err != nil {
		t.Fatal(err)
	}
	tg.client = c
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	tg.ds = "vigiltest-audit-" + suffix
	tg.tpl = "vigiltest-audit-" + suffix
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = Setup(ctx, c, SetupOptions{DataStream: tg.ds, Retention: "1d",
		TemplateName: tg.tpl, PolicyName: tg.tpl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, path := range []string{"/_data_stream/" + tg.ds, "/_index_template/" + tg.tpl,
			"/_ilm/policy/" + tg.tpl} {
			tg.do(ctx, "DELETE", path, nil)
		}
	})
}

// do sends one raw request and returns status and body.
func (tg *target) do(ctx context.Context, method, path string, body any) (int, []byte) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := newRequest(ctx, method, path, r)
	if err != nil {
		return 0, []byte(err.Error())
	}
	res, err := tg.client.Perform(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// storedIDs returns every _id in the data stream, sorted, duplicates kept.
func (tg *target) storedIDs(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	tg.do(ctx, "POST", "/"+tg.ds+"/_refresh", nil)
	status, body := tg.do(ctx, "POST", "/"+tg.ds+"/_search", map[string]any{
		"size": 10000, "_source": false, "query": map[string]any{"match_all": map[string]any{}}})
	if status == 404 {
		return nil
	}
	if status != 200 {
		t.Fatalf("search: %d %s", status, body)
	}
	var out struct {
		Hits struct {
			Hits []struct {
				ID string `json:"_id"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(out.Hits.Hits))
	for i, h := range out.Hits.Hits {
		ids[i] = h.ID
	}
	slices.Sort(ids)
	return ids
}

// refresh makes everything shipped visible to search.
func (tg *target) refresh(t *testing.T) {
	t.Helper()
	if status, body := tg.do(context.Background(), "POST", "/"+tg.ds+"/_refresh",
		nil); status != 200 {
		t.Fatalf("refresh: %d %s", status, body)
	}
}
