package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/audit/es"
	"github.com/vigilaudit/vigil/internal/es8double"
)

// esEnv is an Elasticsearch double, a Kibana double and a vigil.yaml
// pointing at both, with API keys required by each.
type esEnv struct {
	double *es8double.Double
	kibana *es8double.Kibana
	config string
}

func newESEnv(t *testing.T, journal string) *esEnv {
	t.Helper()
	old := flagConfig
	t.Cleanup(func() { flagConfig = old })
	const esKey, kbKey = "ZXMta2V5OnNlY3JldA==", "a2Ita2V5OnNlY3JldA=="
	d := es8double.New(es8double.Options{APIKey: esKey})
	srv, err := es8double.Start(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	kb := es8double.NewKibana(kbKey)
	ksrv, err := es8double.Start(kb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ksrv.Close() })

	dir := t.TempDir()
	for name, key := range map[string]string{"es-key": esKey, "kb-key": kbKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	body := "identity:\n  provider: oidc\n  issuer: https://issuer.example\n" +
		"  audiences: [api://vigil]\n" +
		"connections:\n  - name: customer-db\n    type: postgres\n" +
		"    upstream: 127.0.0.1:5432\n    credential: {auth: trust, user: app}\n" +
		"    access: oid:oid-1\n    export: siem\n" +
		"audit:\n  dir: " + journal + "\n" +
		"  elasticsearch:\n    addresses: [" + srv.URL + "]\n    api_key_file: es-key\n" +
		"    retention: 30d\n" +
		"    kibana: {url: \"" + ksrv.URL + "\", api_key_file: kb-key}\n"
	cfg := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return &esEnv{double: d, kibana: kb, config: cfg}
}

// TestElasticsearchSetup runs `vigil elasticsearch setup` against the
// doubles: ILM policy with the configured retention, the index template
// with the ECS and vigil mappings, the data stream, and the Kibana saved
// objects; and again, since it must be safe to rerun.
func TestElasticsearchSetup(t *testing.T) {
	env := newESEnv(t, t.TempDir())
	for range 2 {
		out := runVigil(t, "--config", env.config, "elasticsearch", "setup")
		if !strings.Contains(out, "retention 30d") || !strings.Contains(out, "Kibana") {
			t.Errorf("setup output:\n%s", out)
		}
	}

	var policy struct {
		Policy struct {
			Phases map[string]struct {
				MinAge string `json:"min_age"`
			} `json:"phases"`
		} `json:"policy"`
	}
	if err := json.Unmarshal(env.double.Policy(es.DefaultPolicyName), &policy); err != nil {
		t.Fatalf("ILM policy: %v", err)
	}
	if got := policy.Policy.Phases["delete"].MinAge; got != "30d" {
		t.Errorf("ILM delete phase min_age %q, want the configured 30d", got)
	}

	var tpl struct {
		IndexPatterns []string `json:"index_patterns"`
		Template      struct {
			Settings map[string]any `json:"settings"`
			Mappings mapping        `json:"mappings"`
		} `json:"template"`
	}
	if err := json.Unmarshal(env.double.Template(es.DefaultTemplateName), &tpl); err != nil {
		t.Fatalf("index template: %v", err)
	}
	if tpl.Template.Settings["index.lifecycle.name"] != es.DefaultPolicyName ||
		!slices.Contains(tpl.IndexPatterns, "logs-vigil.audit-*") {
		t.Errorf("template patterns %v, settings %v", tpl.IndexPatterns, tpl.Template.Settings)
	}
	for field, typ := range map[string]string{"@timestamp": "date", "event.sequence": "long",
		"event.hash": "keyword", "user.name": "keyword", "vigil.command.sql": "keyword",
		"vigil.command.sql.text": "text", "vigil.session_id": "keyword"} {
		if got := tpl.Template.Mappings.typeOf(field); got != typ {
			t.Errorf("installed template maps %s as %q, want %q", field, got, typ)
		}
	}
	if !env.double.IsDataStream("logs-vigil.audit-default") {
		t.Error("data stream logs-vigil.audit-default not created")
	}

	var kinds []string
	for _, o := range env.kibana.Objects() {
		kinds = append(kinds, o.Type+"/"+o.ID)
	}
	want := []string{"dashboard/vigil-audit-overview", "index-pattern/vigil-audit",
		"search/vigil-commands-by-identity", "search/vigil-denied-or-masked-commands"}
	if !slices.Equal(kinds, want) {
		t.Errorf("Kibana holds %v, want %v", kinds, want)
	}
}

// mapping is a mappings or properties object of an index template.
type mapping struct {
	Type       string             `json:"type"`
	Properties map[string]mapping `json:"properties"`
	Fields     map[string]mapping `json:"fields"`
}

// typeOf returns the type of a dotted field, multi-fields included.
func (m mapping) typeOf(field string) string {
	cur := m
	for _, p := range strings.Split(field, ".") {
		next, ok := cur.Properties[p]
		if !ok {
			if next, ok = cur.Fields[p]; !ok {
				return ""
			}
		}
		cur = next
	}
	return cur.Type
}

// TestAuditFromElasticsearch ships a journal to the double and reads it
// back with `vigil audit sessions | show | verify --elasticsearch`.
func TestAuditFromElasticsearch(t *testing.T) {
	dir, id := buildJournal(t)
	env := newESEnv(t, dir)
	runVigil(t, "--config", env.config, "elasticsearch", "setup", "--skip-kibana")

	ec, err := esSettings()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := es.ConfigFrom(ec)
	if err != nil {
		t.Fatal(err)
	}
	c, err := es.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := es.NewShipper(es.Options{Client: c, Source: es.JournalSource(dir), Dir: dir,
		DataStream: ec.DataStream, Log: logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.ShipAvailable(ctx); err != nil {
		t.Fatal(err)
	}

	out := runVigil(t, "--config", env.config, "audit", "sessions", "--elasticsearch")
	if !strings.Contains(out, id) {
		t.Errorf("audit sessions --elasticsearch does not list %s:\n%s", id, out)
	}
	out = runVigil(t, "--config", env.config, "audit", "show", id, "--elasticsearch", "--json")
	recs, err := audit.ReadRecords(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, r := range recs {
		want.Write(r.Event)
		want.WriteByte('\n')
	}
	if out != want.String() {
		t.Errorf("audit show --elasticsearch --json differs from the journal:\n%s\nwant\n%s",
			out, want.String())
	}
	out, err = runVerifyCmd(t, "--config", env.config, "audit", "verify", "--elasticsearch")
	if err != nil || !strings.Contains(out, "ok: 1 sessions, 7 events, 1 checkpoints") {
		t.Errorf("audit verify --elasticsearch: %v\n%s", err, out)
	}

	// Without the flag the same commands read the journal: the flag must
	// not stick.
	out = runVigil(t, "--config", env.config, "audit", "sessions")
	if !strings.Contains(out, id) {
		t.Errorf("audit sessions from the journal:\n%s", out)
	}
}
