package es

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"path"
	"regexp"
	"strings"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
)

//go:embed assets/index-template.json assets/ilm-policy.json assets/kibana-saved-objects.ndjson
var assets embed.FS

// Names Setup uses unless told otherwise.
const (
	DefaultTemplateName = "vigil-audit"
	DefaultPolicyName   = "vigil-audit"
	DefaultRetention    = "90d"
	// templatePattern is the asset template's index pattern.
	templatePattern = "logs-vigil.audit-*"
)

// retentionRE is an Elasticsearch time value in the units ILM accepts.
var retentionRE = regexp.MustCompile(`^[1-9][0-9]*(d|h|m|s|ms|micros|nanos)$`)

// IndexTemplate returns the composable index template for dataStream,
// using ILM policy policy: ECS mappings plus vigil.*, a data stream
// template with priority 200 (above the built-in logs-*-* template).
func IndexTemplate(dataStream, policy string) ([]byte, error) {
	var t map[string]any
	if err := readAsset("index-template.json", &t); err != nil {
		return nil, err
	}
	if ok, _ := path.Match(templatePattern, dataStream); !ok {
		t["index_patterns"] = []string{dataStream}
	}
	tpl := t["template"].(map[string]any)
	tpl["settings"].(map[string]any)["index.lifecycle.name"] = policy
	return json.Marshal(t)
}

// ILMPolicy returns the lifecycle policy: roll over daily-ish (30 days or
// 50 GB per primary shard), delete a backing index retention after its
// rollover. retention is an Elasticsearch time value such as "90d".
func ILMPolicy(retention string) ([]byte, error) {
	if !retentionRE.MatchString(retention) {
		return nil, fmt.Errorf("es: retention %q: want a number and a unit such as 90d or 720h",
			retention)
	}
	var p map[string]any
	if err := readAsset("ilm-policy.json", &p); err != nil {
		return nil, err
	}
	phases := p["policy"].(map[string]any)["phases"].(map[string]any)
	phases["delete"].(map[string]any)["min_age"] = retention
	return json.Marshal(p)
}

// SavedObjects returns the Kibana saved objects as NDJSON: the data view
// (its title set to cover dataStream), the saved searches "commands by
// identity" and "denied or masked commands", and the dashboard showing
// both.
func SavedObjects(dataStream string) ([]byte, error) {
	raw, err := assets.ReadFile("assets/kibana-saved-objects.ndjson")
	if err != nil {
		return nil, fmt.Errorf("es: saved objects: %w", err)
	}
	if ok, _ := path.Match(templatePattern, dataStream); ok {
		return raw, nil
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var o map[string]any
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			return nil, fmt.Errorf("es: saved objects: %w", err)
		}
		if o["type"] == "index-pattern" {
			o["attributes"].(map[string]any)["title"] = dataStream
		}
		b, _ := json.Marshal(o)
		out.Write(append(b, '\n'))
	}
	return out.Bytes(), sc.Err()
}

func readAsset(name string, v any) error {
	b, err := assets.ReadFile("assets/" + name)
	if err != nil {
		return fmt.Errorf("es: asset %s: %w", name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("es: asset %s: %w", name, err)
	}
	return nil
}

// SetupOptions configure Setup. The zero value installs the defaults.
type SetupOptions struct {
	DataStream   string // DefaultDataStream when empty
	Retention    string // DefaultRetention when empty
	TemplateName string // DefaultTemplateName when empty
	PolicyName   string // DefaultPolicyName when empty
	Log          *slog.Logger
}

// Setup installs (or replaces) the ILM policy and the index template, then
// creates the data stream unless it exists. It is safe to run again: the
// new template applies to the next backing index (roll the data stream
// over to use it at once).
func Setup(ctx context.Context, c *elasticsearch.Client, o SetupOptions) error {
	if o.DataStream == "" {
		o.DataStream = DefaultDataStream
	}
	if o.Retention == "" {
		o.Retention = DefaultRetention
	}
	if o.TemplateName == "" {
		o.TemplateName = DefaultTemplateName
	}
	if o.PolicyName == "" {
		o.PolicyName = DefaultPolicyName
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	policy, err := ILMPolicy(o.Retention)
	if err != nil {
		return err
	}
	tpl, err := IndexTemplate(o.DataStream, o.PolicyName)
	if err != nil {
		return err
	}

	// The policy first: the template names it.
	res, err := c.ILM.PutLifecycle(o.PolicyName, c.ILM.PutLifecycle.WithContext(ctx),
		c.ILM.PutLifecycle.WithBody(bytes.NewReader(policy)))
	if err := check("put ILM policy "+o.PolicyName, res, err); err != nil {
		return err
	}
	o.Log.Info("installed ILM policy", "policy", o.PolicyName, "retention", o.Retention)

	res, err = c.Indices.PutIndexTemplate(o.TemplateName, bytes.NewReader(tpl),
		c.Indices.PutIndexTemplate.WithContext(ctx))
	if err := check("put index template "+o.TemplateName, res, err); err != nil {
		return err
	}
	o.Log.Info("installed index template", "template", o.TemplateName)

	res, err = c.Indices.CreateDataStream(o.DataStream,
		c.Indices.CreateDataStream.WithContext(ctx))
	err = check("create data stream "+o.DataStream, res, err)
	var ae *APIError
	switch {
	case errors.As(err, &ae) && ae.Type == "resource_already_exists_exception":
		o.Log.Info("data stream exists", "data_stream", o.DataStream)
	case err != nil:
		return err
	default:
		o.Log.Info("created data stream", "data_stream", o.DataStream)
	}
	return nil
}

// APIError is an Elasticsearch error response.
type APIError struct {
	Op     string
	Status int
	Type   string
	Reason string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("es: %s: %d %s: %s", e.Op, e.Status, e.Type, e.Reason)
}

// check turns a failed call into an error and closes the body.
func check(op string, res *esapi.Response, err error) error {
	if err != nil {
		return fmt.Errorf("es: %s: %w", op, err)
	}
	defer res.Body.Close()
	if !res.IsError() {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	var env struct {
		Error struct {
			Type   string `json:"type"`
			Reason string `json:"reason"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if json.Unmarshal(b, &env) != nil || env.Error.Type == "" {
		env.Error.Reason = cut(string(b), 300)
	}
	return &APIError{Op: op, Status: res.StatusCode, Type: env.Error.Type,
		Reason: env.Error.Reason}
}

// KibanaOptions say where Kibana is.
type KibanaOptions struct {
	URL    string // e.g. http://127.0.0.1:5601
	APIKey string // encoded API key; empty for none
	// HTTP carries the request; http.DefaultClient when nil.
	HTTP *http.Client
}

// ImportSavedObjects imports the saved objects into Kibana through
// POST /api/saved_objects/_import?overwrite=true, so running it again
// replaces vigil's objects. It fails unless Kibana reports success.
func ImportSavedObjects(ctx context.Context, k KibanaOptions, dataStream string) error {
	if dataStream == "" {
		dataStream = DefaultDataStream
	}
	objs, err := SavedObjects(dataStream)
	if err != nil {
		return err
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("file", "vigil-saved-objects.ndjson")
	if err != nil {
		return fmt.Errorf("es: kibana import: %w", err)
	}
	fw.Write(objs)
	if err := mw.Close(); err != nil {
		return fmt.Errorf("es: kibana import: %w", err)
	}
	url := strings.TrimRight(k.URL, "/") + "/api/saved_objects/_import?overwrite=true"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &body)
	if err != nil {
		return fmt.Errorf("es: kibana import: %w", err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("kbn-xsrf", "vigil")
	if k.APIKey != "" {
		req.Header.Set("Authorization", "ApiKey "+k.APIKey)
	}
	hc := k.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("es: kibana import: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	var out struct {
		Success      bool `json:"success"`
		SuccessCount int  `json:"successCount"`
		Errors       []struct {
			ID    string `json:"id"`
			Type  string `json:"type"`
			Error struct {
				Type string `json:"type"`
			} `json:"error"`
		} `json:"errors"`
	}
	if res.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
		return fmt.Errorf("es: kibana import: %s: %s", res.Status, cut(string(b), 300))
	}
	if !out.Success {
		var parts []string
		for _, e := range out.Errors {
			parts = append(parts, fmt.Sprintf("%s %s: %s", e.Type, e.ID, e.Error.Type))
		}
		return fmt.Errorf("es: kibana import failed: %s", strings.Join(parts, "; "))
	}
	return nil
}
