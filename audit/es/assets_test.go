package es

import (
	"bufio"
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// fieldTypes flattens an index template's mappings into dotted field →
// type, multi-fields included ("vigil.command.sql.text").
func fieldTypes(t *testing.T, tpl []byte) map[string]string {
	t.Helper()
	var in struct {
		IndexPatterns []string  `json:"index_patterns"`
		DataStream    *struct{} `json:"data_stream"`
		Template      struct {
			Mappings struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"mappings"`
		} `json:"template"`
	}
	if err := json.Unmarshal(tpl, &in); err != nil {
		t.Fatalf("index template is not valid JSON: %v", err)
	}
	if in.DataStream == nil || len(in.IndexPatterns) == 0 {
		t.Fatalf("index template is not a data stream template: %s", tpl[:200])
	}
	out := map[string]string{}
	var walk func(prefix string, props map[string]json.RawMessage)
	walk = func(prefix string, props map[string]json.RawMessage) {
		for name, raw := range props {
			var m struct {
				Type       string                     `json:"type"`
				Properties map[string]json.RawMessage `json:"properties"`
				Fields     map[string]struct {
					Type string `json:"type"`
				} `json:"fields"`
			}
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatalf("mapping of %s%s: %v", prefix, name, err)
			}
			if m.Properties != nil {
				walk(prefix+name+".", m.Properties)
				continue
			}
			out[prefix+name] = m.Type
			for sub, f := range m.Fields {
				out[prefix+name+"."+sub] = f.Type
			}
		}
	}
	walk("", in.Template.Mappings.Properties)
	return out
}

// TestIndexTemplateMappings checks the ECS fields and the statement's
// keyword with its text multi-field.
func TestIndexTemplateMappings(t *testing.T) {
	tpl, err := IndexTemplate(DefaultDataStream, "vigil-audit")
	if err != nil {
		t.Fatal(err)
	}
	types := fieldTypes(t, tpl)
	want := map[string]string{
		"@timestamp": "date", "ecs.version": "keyword",
		"event.kind": "keyword", "event.category": "keyword", "event.type": "keyword",
		"event.action": "keyword", "event.outcome": "keyword", "event.sequence": "long",
		"event.hash": "keyword", "event.original": "keyword", "event.dataset": "keyword",
		"user.id": "keyword", "user.name": "keyword", "user.domain": "keyword",
		"user.roles":     "keyword",
		"source.address": "keyword", "source.ip": "ip", "source.port": "long",
		"destination.address": "keyword", "destination.ip": "ip", "destination.port": "long",
		"vigil.session_id": "keyword", "vigil.prev_hash": "keyword",
		"vigil.command.sql": "keyword", "vigil.command.sql.text": "text",
		"vigil.decision.allowed": "boolean", "vigil.result.masked.column": "keyword",
		"vigil.checkpoint.seq": "long", "vigil.checkpoint.signature": "keyword",
	}
	for f, typ := range want {
		if types[f] != typ {
			t.Errorf("%s is mapped as %q, want %q", f, types[f], typ)
		}
	}

	// Another data stream name gets its own pattern.
	other, err := IndexTemplate("vigil-audit-eu", "p")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(other, []byte(`"index_patterns":["vigil-audit-eu"]`)) ||
		!bytes.Contains(other, []byte(`"index.lifecycle.name":"p"`)) {
		t.Errorf("template for another data stream: %s", other[:200])
	}
}

// TestDocumentsAreMapped fails when a document carries a field the
// template does not map: with dynamic false it would be stored but not
// searchable.
func TestDocumentsAreMapped(t *testing.T) {
	tpl, err := IndexTemplate(DefaultDataStream, "vigil-audit")
	if err != nil {
		t.Fatal(err)
	}
	types := fieldTypes(t, tpl)
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	who := &identity.Identity{OID: "o", TID: "t", Sub: "s", AppID: "a", IDType: "app",
		Name: "n", UPN: "u", MIResourceID: "m", Roles: []string{"r"}, Groups: []string{"g"},
		GroupsOverage: true, UTI: "x", Version: "2.0", Issuer: "i", Audience: "aud",
		ExpiresAt: at}
	ev := audit.Event{SessionID: "s1", Seq: 2, Time: at, Kind: audit.KindCommand,
		Connection: "c", Protocol: "postgres", Identity: who, Grant: "role:r",
		Client: "10.0.0.1:5000", Upstream: "10.0.0.2:5432", UpstreamUser: "u", Database: "d",
		Command: &audit.Command{Message: "execute", SQL: "SELECT $1", Index: 1, Count: 2,
			Statement: "s", Portal: "p", ParameterCount: 1, Function: 7,
			Parameters: []audit.Parameter{{Format: "text", Null: true, Value: "v", TypeOID: 23}}},
		Decision: &audit.Decision{Allowed: false, Rules: []string{"r"}, Reasons: []string{"x"},
			Revision: "rev", Mask: []string{"email:redact"}, Hold: true},
		Result: &audit.Result{Command: 1, Status: "ok", Tag: "SELECT 1", Rows: 1,
			SQLState: "00000", Message: "m", Duration: 1.5,
			Masked: []audit.Masked{{Column: "c", Strategy: "s", Rule: "r", Values: 1}}},
		Approval: &audit.Approval{Command: 1, RequestID: "q", Step: "approved", Actor: who,
			Reason: "ok", Approvers: []string{"group:g"}},
		Session: &audit.Session{Opened: at, Closed: at, Commands: 1, Application: "psql",
			ClientUser: "agent"},
		Reason: "r", ReasonCode: "c"}
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := NewDocument(audit.Record{Hash: strings.Repeat("1", 64),
		Prev: strings.Repeat("0", 64), Event: raw})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := NewCheckpointDocument(&audit.Checkpoint{Seq: 3, Time: at, Prev: "p",
		Heads: []audit.Head{{Session: "s1", Seq: 2, Hash: "h", Ended: true}}, Open: 1,
		Final: true, Key: "k", Signature: "sig", Raw: json.RawMessage(`{"seq":3}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Document{doc, cp} {
		b, _ := json.Marshal(d)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		for _, f := range leaves("", m) {
			if types[f] == "" {
				t.Errorf("document field %s is not mapped by the template", f)
			}
		}
	}
}

// leaves lists the dotted paths of a decoded JSON document's leaves.
func leaves(prefix string, v any) []string {
	switch x := v.(type) {
	case map[string]any:
		var out []string
		for k, e := range x {
			out = append(out, leaves(prefix+k+".", e)...)
		}
		return out
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, leaves(prefix, e)...)
		}
		return slices.Compact(out)
	}
	return []string{strings.TrimSuffix(prefix, ".")}
}

func TestILMPolicy(t *testing.T) {
	b, err := ILMPolicy("30d")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Policy struct {
			Phases map[string]struct {
				MinAge  string                     `json:"min_age"`
				Actions map[string]json.RawMessage `json:"actions"`
			} `json:"phases"`
		} `json:"policy"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	del := p.Policy.Phases["delete"]
	if del.MinAge != "30d" || del.Actions["delete"] == nil ||
		p.Policy.Phases["hot"].Actions["rollover"] == nil {
		t.Errorf("policy %s", b)
	}
	for _, bad := range []string{"", "30", "3 months", "-1d"} {
		if _, err := ILMPolicy(bad); err == nil {
			t.Errorf("retention %q accepted", bad)
		}
	}
}

// savedObject is one line of the saved objects NDJSON.
type savedObject struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Attributes map[string]any `json:"attributes"`
	References []struct {
		Name, Type, ID string
	} `json:"references"`
}

// TestSavedObjects parses the Kibana objects: a data view, the two saved
// searches and a dashboard showing them, every reference resolving, every
// embedded JSON valid, every column a mapped field.
func TestSavedObjects(t *testing.T) {
	raw, err := SavedObjects(DefaultDataStream)
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := IndexTemplate(DefaultDataStream, "vigil-audit")
	if err != nil {
		t.Fatal(err)
	}
	types := fieldTypes(t, tpl)
	var objs []savedObject
	byKey := map[string]savedObject{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var o savedObject
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			t.Fatalf("line %d is not a JSON object: %v", len(objs)+1, err)
		}
		if o.Type == "" || o.ID == "" || o.Attributes == nil {
			t.Fatalf("line %d lacks type, id or attributes", len(objs)+1)
		}
		objs = append(objs, o)
		byKey[o.Type+"/"+o.ID] = o
	}
	titles := map[string]string{}
	for _, o := range objs {
		title, _ := o.Attributes["title"].(string)
		titles[o.Type+"/"+title] = o.ID
		refs := map[string]bool{}
		for _, r := range o.References {
			if _, ok := byKey[r.Type+"/"+r.ID]; !ok {
				t.Errorf("%s %s references %s %s, which is not in the file", o.Type, o.ID,
					r.Type, r.ID)
			}
			refs[r.Name] = true
		}
		switch o.Type {
		case "index-pattern":
			if title != "logs-vigil.audit-*" || o.Attributes["timeFieldName"] != "@timestamp" {
				t.Errorf("data view %+v", o.Attributes)
			}
		case "search":
			checkSearch(t, o, refs, types)
		case "dashboard":
			checkDashboard(t, o, refs)
		}
	}
	for _, want := range []string{"index-pattern/logs-vigil.audit-*",
		"search/vigil: commands by identity", "search/vigil: denied or masked commands",
		"dashboard/vigil audit"} {
		if titles[want] == "" {
			t.Errorf("no %s among the saved objects", want)
		}
	}

	// Another data stream gets a data view over it.
	other, err := SavedObjects("vigil-audit-eu")
	if err != nil || !bytes.Contains(other, []byte(`"title":"vigil-audit-eu"`)) {
		t.Errorf("saved objects for another data stream: %v", err)
	}
}

func checkSearch(t *testing.T, o savedObject, refs map[string]bool, types map[string]string) {
	t.Helper()
	meta, _ := o.Attributes["kibanaSavedObjectMeta"].(map[string]any)
	src, _ := meta["searchSourceJSON"].(string)
	var ss struct {
		Query struct {
			Query, Language string
		} `json:"query"`
		IndexRefName string `json:"indexRefName"`
	}
	if err := json.Unmarshal([]byte(src), &ss); err != nil {
		t.Errorf("search %s: searchSourceJSON: %v", o.ID, err)
	}
	if !refs[ss.IndexRefName] || ss.Query.Language != "kuery" || ss.Query.Query == "" {
		t.Errorf("search %s: index reference %q, query %+v", o.ID, ss.IndexRefName, ss.Query)
	}
	cols, _ := o.Attributes["columns"].([]any)
	if len(cols) == 0 {
		t.Errorf("search %s has no columns", o.ID)
	}
	for _, c := range cols {
		if types[c.(string)] == "" {
			t.Errorf("search %s: column %s is not a mapped field", o.ID, c)
		}
	}
}

func checkDashboard(t *testing.T, o savedObject, refs map[string]bool) {
	t.Helper()
	pj, _ := o.Attributes["panelsJSON"].(string)
	var panels []struct {
		Type, PanelRefName string
	}
	if err := json.Unmarshal([]byte(pj), &panels); err != nil {
		t.Fatalf("dashboard %s: panelsJSON: %v", o.ID, err)
	}
	searches := 0
	for _, p := range panels {
		if !refs[p.PanelRefName] {
			t.Errorf("dashboard panel refers to %q, which is not a reference", p.PanelRefName)
		}
		if p.Type == "search" {
			searches++
		}
	}
	if searches != 2 {
		t.Errorf("dashboard shows %d saved searches, want 2", searches)
	}
}
