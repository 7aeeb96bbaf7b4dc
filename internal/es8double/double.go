package es8double

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// Options configure a Double. The zero value is an open cluster.
type Options struct {
	// APIKey, when set, is the one credential the double accepts: every
	// request must carry "Authorization: ApiKey <APIKey>" (the encoded form
	// the Go client sends; the scheme in any case), else it is answered 401
	// security_exception.
	APIKey string
	// Now is the clock used for backing index names; time.Now when nil.
	Now func() time.Time
}

// Double is an Elasticsearch 8 http.Handler holding its indices in memory.
// It is safe for concurrent use.
type Double struct {
	opts Options

	mu        sync.Mutex
	templates map[string]*template
	policies  map[string]json.RawMessage
	targets   map[string]*target // data streams and regular indices by name
	latency   time.Duration
	down503   bool
	readOnly  bool
	reqReject int            // whole-request 429s still to give
	itemRej   map[string]int // per-item 429s still to give, by target ("" any)
	bulks     int
}

// template is an installed composable index template.
type template struct {
	patterns   []string
	priority   int
	dataStream bool
	fields     map[string]string // dotted path → mapping type
	raw        json.RawMessage
}

// target is a data stream or a regular index.
type target struct {
	name       string
	backing    string // the write index: .ds-<name>-<date>-000001, or name
	dataStream bool
	fields     map[string]string
	docs       map[string]*document
	seqNo      int64
}

// document is one stored source.
type document struct {
	id      string
	source  map[string]any
	raw     json.RawMessage
	seqNo   int64
	version int64
}

// New returns an empty cluster.
func New(opts Options) *Double {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Double{
		opts:      opts,
		templates: map[string]*template{},
		policies:  map[string]json.RawMessage{},
		targets:   map[string]*target{},
		itemRej:   map[string]int{},
	}
}

// SetUnavailable makes every request (but GET /) fail with 503
// cluster_block_exception "no master" until called with false.
func (d *Double) SetUnavailable(on bool) { d.with(func() { d.down503 = on }) }

// SetReadOnly puts the flood-stage read_only_allow_delete block on every
// index: write items fail with 429 cluster_block_exception.
func (d *Double) SetReadOnly(on bool) { d.with(func() { d.readOnly = on }) }

// RejectRequests makes the next n bulk requests fail as a whole with 429
// es_rejected_execution_exception.
func (d *Double) RejectRequests(n int) { d.with(func() { d.reqReject = n }) }

// RejectItems makes the next n write items naming target (any target when
// "") fail with 429 es_rejected_execution_exception while the others in
// the same request succeed.
func (d *Double) RejectItems(n int, target string) { d.with(func() { d.itemRej[target] = n }) }

// SetLatency delays every response by l.
func (d *Double) SetLatency(l time.Duration) { d.with(func() { d.latency = l }) }

// BulkRequests returns how many bulk requests reached the double, counting
// those answered with a fault (503, whole-request 429).
func (d *Double) BulkRequests() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bulks
}

// IDs returns the ids stored in the data stream or index name, sorted.
func (d *Double) IDs(name string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.targets[name]
	if t == nil {
		return nil
	}
	ids := make([]string, 0, len(t.docs))
	for id := range t.docs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Source returns the stored source of document id in name, or nil.
func (d *Double) Source(name, id string) json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.targets[name]; t != nil && t.docs[id] != nil {
		return t.docs[id].raw
	}
	return nil
}

// Template returns the body of the installed index template name, or nil.
func (d *Double) Template(name string) json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.templates[name]; t != nil {
		return t.raw
	}
	return nil
}

// Policy returns the body of the installed ILM policy name, or nil.
func (d *Double) Policy(name string) json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.policies[name]
}

// IsDataStream reports whether name is an existing data stream.
func (d *Double) IsDataStream(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.targets[name]
	return t != nil && t.dataStream
}

func (d *Double) with(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f()
}

// ServeHTTP answers one Elasticsearch request.
func (d *Double) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	lat := d.latency
	d.mu.Unlock()
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-r.Context().Done():
			return
		}
	}
	rw := &reply{w: w, compat: strings.Contains(r.Header.Get("Accept"), "compatible-with=8")}
	if !d.authenticate(rw, r) {
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		rw.error(400, "parse_exception", "request body is required", nil)
		return
	}
	d.route(rw, r, body)
}

// route dispatches on method and path.
func (d *Double) route(rw *reply, r *http.Request, body []byte) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.URL.Path == "/" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			rw.methodNotAllowed(r)
			return
		}
		rw.json(200, d.info())
		return
	}
	// Count every bulk request that reaches the node, also those a fault
	// knob answers (tests wait on the count while the cluster is down).
	d.mu.Lock()
	if parts[len(parts)-1] == "_bulk" {
		d.bulks++
	}
	unavailable := d.down503
	d.mu.Unlock()
	if unavailable {
		rw.error(503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
			nil)
		return
	}
	switch {
	case len(parts) == 2 && parts[0] == "_index_template":
		d.indexTemplate(rw, r, parts[1], body)
	case len(parts) == 3 && parts[0] == "_ilm" && parts[1] == "policy":
		d.ilmPolicy(rw, r, parts[2], body)
	case len(parts) == 2 && parts[0] == "_data_stream":
		d.dataStream(rw, r, parts[1])
	case len(parts) == 1 && parts[0] == "_bulk":
		d.bulk(rw, r, "", body)
	case len(parts) == 2 && parts[1] == "_bulk":
		d.bulk(rw, r, parts[0], body)
	case len(parts) == 2 && parts[1] == "_search":
		d.search(rw, r, parts[0], body)
	case len(parts) == 2 && parts[1] == "_count":
		d.count(rw, r, parts[0], body)
	case len(parts) == 2 && parts[1] == "_refresh":
		d.refresh(rw, r, parts[0])
	default:
		rw.error(400, "illegal_argument_exception", fmt.Sprintf(
			"es8double: unsupported request [%s %s]", r.Method, r.URL.Path), nil)
	}
}

// authenticate answers 401 and returns false when an API key is required
// and the request does not carry it.
func (d *Double) authenticate(rw *reply, r *http.Request) bool {
	if d.opts.APIKey == "" {
		return true
	}
	// The scheme is case-insensitive (RFC 9110 11.1): the Go client sends
	// "APIKey", Kibana and curl users "ApiKey".
	got := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(got, " ")
	if strings.EqualFold(scheme, "ApiKey") && cred == d.opts.APIKey {
		return true
	}
	reason := "missing authentication credentials for REST request [" + r.URL.RequestURI() + "]"
	if got != "" {
		reason = "unable to authenticate with provided credentials and anonymous access " +
			"is not allowed for this request"
	}
	schemes := []string{`Basic realm="security", charset="UTF-8"`, `Bearer realm="security"`,
		"ApiKey"}
	for _, s := range schemes {
		rw.w.Header().Add("WWW-Authenticate", s)
	}
	rw.error(401, "security_exception", reason, map[string]any{
		"header": map[string]any{"WWW-Authenticate": schemes}})
	return false
}

func (d *Double) info() map[string]any {
	return map[string]any{
		"name":         "es8double-0",
		"cluster_name": "es8double",
		"cluster_uuid": "ZXM4ZG91YmxlLWNsdXN0ZXI",
		"version": map[string]any{
			"number":                              "8.19.7",
			"build_flavor":                        "default",
			"build_type":                          "docker",
			"build_hash":                          "0000000000000000000000000000000000000000",
			"build_date":                          "2025-11-01T00:00:00.000000000Z",
			"build_snapshot":                      false,
			"lucene_version":                      "9.12.2",
			"minimum_wire_compatibility_version":  "7.17.0",
			"minimum_index_compatibility_version": "7.0.0",
		},
		"tagline": "You Know, for Search",
	}
}

// indexTemplate installs (PUT) or removes (DELETE) a composable template.
func (d *Double) indexTemplate(rw *reply, r *http.Request, name string, body []byte) {
	switch r.Method {
	case http.MethodPut, http.MethodPost:
	case http.MethodDelete:
		d.mu.Lock()
		_, ok := d.templates[name]
		delete(d.templates, name)
		d.mu.Unlock()
		if !ok {
			rw.error(404, "resource_not_found_exception",
				"index_template matching ["+name+"] not found", nil)
			return
		}
		rw.json(200, map[string]any{"acknowledged": true})
		return
	default:
		rw.methodNotAllowed(r)
		return
	}
	var in struct {
		IndexPatterns json.RawMessage `json:"index_patterns"`
		Priority      int             `json:"priority"`
		DataStream    *struct{}       `json:"data_stream"`
		Template      struct {
			Mappings struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"mappings"`
		} `json:"template"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		rw.error(400, "x_content_parse_exception", "[1:1] failed to parse template: "+
			err.Error(), nil)
		return
	}
	var patterns []string
	if err := json.Unmarshal(in.IndexPatterns, &patterns); err != nil {
		var one string
		if json.Unmarshal(in.IndexPatterns, &one) != nil || one == "" {
			rw.error(400, "action_request_validation_exception",
				"Validation Failed: 1: index patterns are missing;", nil)
			return
		}
		patterns = []string{one}
	}
	fields := map[string]string{}
	flattenMapping("", in.Template.Mappings.Properties, fields)
	t := &template{patterns: patterns, priority: in.Priority, dataStream: in.DataStream != nil,
		fields: fields, raw: append(json.RawMessage(nil), body...)}
	d.mu.Lock()
	for n, o := range d.templates {
		if n != name && o.priority == t.priority && overlaps(o.patterns, t.patterns) {
			d.mu.Unlock()
			rw.error(400, "illegal_argument_exception", fmt.Sprintf("index template [%s] "+
				"has index patterns %v matching patterns from existing templates [%s] with "+
				"patterns (%s => %v) that have the same priority [%d], multiple index "+
				"templates may not match during index creation, please use a different "+
				"priority", name, t.patterns, n, n, o.patterns, t.priority), nil)
			return
		}
	}
	d.templates[name] = t
	d.mu.Unlock()
	rw.json(200, map[string]any{"acknowledged": true})
}

// overlaps is a coarse test: two pattern lists overlap when one pattern
// matches the other taken literally.
func overlaps(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if glob(x, y) || glob(y, x) {
				return true
			}
		}
	}
	return false
}

// flattenMapping records the type of every mapped leaf under prefix.
func flattenMapping(prefix string, props map[string]json.RawMessage, out map[string]string) {
	for name, raw := range props {
		var m struct {
			Type       string                     `json:"type"`
			Properties map[string]json.RawMessage `json:"properties"`
		}
		if json.Unmarshal(raw, &m) != nil {
			continue
		}
		p := prefix + name
		if m.Properties != nil || m.Type == "object" || m.Type == "nested" {
			flattenMapping(p+".", m.Properties, out)
			continue
		}
		out[p] = m.Type
	}
}

// ilmPolicy installs or removes an ILM policy.
func (d *Double) ilmPolicy(rw *reply, r *http.Request, name string, body []byte) {
	switch r.Method {
	case http.MethodPut:
		var in struct {
			Policy *struct {
				Phases map[string]json.RawMessage `json:"phases"`
			} `json:"policy"`
		}
		if err := json.Unmarshal(body, &in); err != nil || in.Policy == nil {
			rw.error(400, "x_content_parse_exception",
				"[1:1] [put_lifecycle_request] policy is required", nil)
			return
		}
		d.with(func() { d.policies[name] = append(json.RawMessage(nil), body...) })
		rw.json(200, map[string]any{"acknowledged": true})
	case http.MethodDelete:
		d.with(func() { delete(d.policies, name) })
		rw.json(200, map[string]any{"acknowledged": true})
	default:
		rw.methodNotAllowed(r)
	}
}

// dataStream creates (PUT) or deletes a data stream.
func (d *Double) dataStream(rw *reply, r *http.Request, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		if t := d.targets[name]; t != nil {
			rw.error(400, "resource_already_exists_exception",
				"data_stream ["+name+"] already exists", nil)
			return
		}
		tpl := d.matchTemplate(name)
		if tpl == nil || !tpl.dataStream {
			rw.error(400, "illegal_argument_exception",
				"no matching index template found for data stream ["+name+"]", nil)
			return
		}
		d.targets[name] = d.newTarget(name, tpl)
		rw.json(200, map[string]any{"acknowledged": true})
	case http.MethodDelete:
		if t := d.targets[name]; t == nil || !t.dataStream {
			rw.error(404, "index_not_found_exception", "no such index ["+name+"]",
				notFoundMeta(name))
			return
		}
		delete(d.targets, name)
		rw.json(200, map[string]any{"acknowledged": true})
	default:
		rw.methodNotAllowed(r)
	}
}

// matchTemplate returns the highest-priority template matching name; d.mu
// is held.
func (d *Double) matchTemplate(name string) *template {
	var best *template
	for _, t := range d.templates {
		for _, p := range t.patterns {
			if glob(p, name) && (best == nil || t.priority > best.priority) {
				best = t
			}
		}
	}
	return best
}

// newTarget creates the data stream or index name; d.mu is held.
func (d *Double) newTarget(name string, tpl *template) *target {
	t := &target{name: name, backing: name, docs: map[string]*document{},
		fields: map[string]string{}}
	if tpl != nil {
		t.fields = tpl.fields
		t.dataStream = tpl.dataStream
	}
	if t.dataStream {
		t.backing = fmt.Sprintf(".ds-%s-%s-000001", name, d.opts.Now().UTC().Format("2006.01.02"))
	}
	return t
}

// refresh answers a _refresh; documents are always visible.
func (d *Double) refresh(rw *reply, r *http.Request, name string) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		rw.methodNotAllowed(r)
		return
	}
	d.mu.Lock()
	_, ok := d.resolve(name)
	d.mu.Unlock()
	if !ok {
		rw.error(404, "index_not_found_exception", "no such index ["+name+"]", notFoundMeta(name))
		return
	}
	rw.json(200, map[string]any{"_shards": map[string]any{"total": 2, "successful": 1,
		"failed": 0}})
}

// resolve returns the targets an expression names (comma lists and globs);
// d.mu is held.
func (d *Double) resolve(expr string) ([]*target, bool) {
	var out []*target
	for _, e := range strings.Split(expr, ",") {
		if !strings.Contains(e, "*") {
			t := d.targets[e]
			if t == nil {
				return nil, false
			}
			out = append(out, t)
			continue
		}
		for n, t := range d.targets {
			if glob(e, n) {
				out = append(out, t)
			}
		}
	}
	return out, true
}

// glob matches name against a pattern whose only wildcard is '*'.
func glob(pattern, name string) bool {
	ok, err := path.Match(strings.ReplaceAll(pattern, "?", `\?`), name)
	return err == nil && ok
}

func notFoundMeta(name string) map[string]any {
	return map[string]any{"resource.type": "index_or_alias", "resource.id": name,
		"index_uuid": "_na_", "index": name}
}

// newID returns an id shaped like Elasticsearch's auto-generated ones.
func newID() string {
	var b [15]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// reply writes Elasticsearch responses: the product header always, JSON
// bodies, the error envelope.
type reply struct {
	w      http.ResponseWriter
	compat bool
}

func (rw *reply) json(status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = 500
		buf.Reset()
		buf.WriteString(`{"error":"es8double: encode"}`)
	}
	h := rw.w.Header()
	h.Set("X-Elastic-Product", "Elasticsearch")
	if rw.compat {
		h.Set("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
	} else {
		h.Set("Content-Type", "application/json")
	}
	rw.w.WriteHeader(status)
	_, _ = rw.w.Write(bytes.TrimRight(buf.Bytes(), "\n"))
}

// error writes the Elasticsearch error envelope with root_cause repeating
// the cause; extra fields go into both.
func (rw *reply) error(status int, typ, reason string, extra map[string]any) {
	cause := map[string]any{"type": typ, "reason": reason}
	for k, v := range extra {
		cause[k] = v
	}
	top := map[string]any{"root_cause": []any{cause}}
	for k, v := range cause {
		top[k] = v
	}
	rw.json(status, map[string]any{"error": top, "status": status})
}

func (rw *reply) methodNotAllowed(r *http.Request) {
	rw.json(405, map[string]any{"error": fmt.Sprintf(
		"Incorrect HTTP method for uri [%s] and method [%s]", r.URL.RequestURI(), r.Method),
		"status": 405})
}
