package es8double

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// searchRequest is the part of the search body the double understands.
type searchRequest struct {
	Query       json.RawMessage   `json:"query"`
	Sort        []json.RawMessage `json:"sort"`
	Size        *int              `json:"size"`
	From        int               `json:"from"`
	SearchAfter []any             `json:"search_after"`
	SeqNo       bool              `json:"seq_no_primary_term"`
	TrackScores bool              `json:"track_scores"`
}

// sortKey is one sort clause.
type sortKey struct {
	field string
	desc  bool
}

// hit is a matching document and the target holding it.
type hit struct {
	t   *target
	doc *document
	key []any // sort values
}

func (d *Double) search(rw *reply, r *http.Request, expr string, body []byte) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		rw.methodNotAllowed(r)
		return
	}
	var req searchRequest
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			rw.error(400, "x_content_parse_exception", "[1:1] "+err.Error(), nil)
			return
		}
	}
	if s := r.URL.Query().Get("size"); s != "" {
		n, _ := strconv.Atoi(s)
		req.Size = &n
	}
	keys, err := parseSort(req.Sort)
	if err != nil {
		rw.error(400, "parsing_exception", err.Error(), nil)
		return
	}
	start := time.Now()
	hits, targets, ok, err := d.matching(expr, req.Query)
	if !ok {
		rw.error(404, "index_not_found_exception", "no such index ["+expr+"]", notFoundMeta(expr))
		return
	}
	if err != nil {
		rw.error(400, "parsing_exception", err.Error(), nil)
		return
	}
	for i := range hits {
		hits[i].key = sortValues(hits[i].doc, keys)
	}
	sort.SliceStable(hits, func(i, j int) bool { return less(hits[i].key, hits[j].key, keys) })
	total := len(hits)
	if req.SearchAfter != nil {
		cut := 0
		for cut < len(hits) && !less(req.SearchAfter, hits[cut].key, keys) {
			cut++
		}
		hits = hits[cut:]
	}
	size := 10
	if req.Size != nil {
		size = *req.Size
	}
	hits = window(hits, req.From, size)
	rw.json(200, map[string]any{
		"took":      time.Since(start).Milliseconds(),
		"timed_out": false,
		"_shards":   shards(targets),
		"hits":      renderHits(hits, total, keys, req.SeqNo),
	})
}

func window(hits []hit, from, size int) []hit {
	if from > len(hits) {
		from = len(hits)
	}
	hits = hits[from:]
	if size < len(hits) {
		hits = hits[:size]
	}
	return hits
}

func shards(n int) map[string]any {
	return map[string]any{"total": n, "successful": n, "skipped": 0, "failed": 0}
}

// renderHits writes hits.* as a node does: with an explicit sort, scores
// are null and each hit carries its sort values.
func renderHits(hits []hit, total int, keys []sortKey, seqNo bool) map[string]any {
	scored := len(keys) == 0
	list := make([]any, len(hits))
	for i, h := range hits {
		m := map[string]any{"_index": h.t.backing, "_id": h.doc.id,
			"_source": h.doc.raw}
		if scored {
			m["_score"] = 1.0
		} else {
			m["_score"] = nil
			m["sort"] = h.key
		}
		if seqNo {
			m["_seq_no"] = h.doc.seqNo
			m["_primary_term"] = 1
		}
		list[i] = m
	}
	var maxScore any
	if scored && len(hits) > 0 {
		maxScore = 1.0
	}
	return map[string]any{"total": map[string]any{"value": total, "relation": "eq"},
		"max_score": maxScore, "hits": list}
}

func (d *Double) count(rw *reply, r *http.Request, expr string, body []byte) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		rw.methodNotAllowed(r)
		return
	}
	var req searchRequest
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			rw.error(400, "x_content_parse_exception", "[1:1] "+err.Error(), nil)
			return
		}
	}
	hits, targets, ok, err := d.matching(expr, req.Query)
	if !ok {
		rw.error(404, "index_not_found_exception", "no such index ["+expr+"]", notFoundMeta(expr))
		return
	}
	if err != nil {
		rw.error(400, "parsing_exception", err.Error(), nil)
		return
	}
	rw.json(200, map[string]any{"count": len(hits), "_shards": shards(targets)})
}

// matching returns the documents of expr that match query.
func (d *Double) matching(expr string, query json.RawMessage) ([]hit, int, bool, error) {
	var q map[string]json.RawMessage
	if len(query) > 0 {
		if err := json.Unmarshal(query, &q); err != nil {
			return nil, 0, true, fmt.Errorf("[query] malformed: %w", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ts, ok := d.resolve(expr)
	if !ok {
		return nil, 0, false, nil
	}
	var out []hit
	for _, t := range ts {
		for _, doc := range t.docs {
			m, err := matches(q, doc.source)
			if err != nil {
				return nil, 0, true, err
			}
			if m {
				out = append(out, hit{t: t, doc: doc})
			}
		}
	}
	// Stable base order (index order) before sorting.
	sort.Slice(out, func(i, j int) bool {
		if out[i].t.name != out[j].t.name {
			return out[i].t.name < out[j].t.name
		}
		return out[i].doc.seqNo < out[j].doc.seqNo
	})
	return out, len(ts), true, nil
}

// matches evaluates one query clause against a source.
func matches(q map[string]json.RawMessage, src map[string]any) (bool, error) {
	if len(q) == 0 {
		return true, nil
	}
	if len(q) != 1 {
		return false, fmt.Errorf("[query] malformed query, expected [END_OBJECT] but found " +
			"[FIELD_NAME]")
	}
	for kind, body := range q {
		switch kind {
		case "match_all":
			return true, nil
		case "term", "match":
			return fieldClause(body, src, func(v any, want any) bool { return equal(v, want) })
		case "terms":
			return termsClause(body, src)
		case "range":
			return rangeClause(body, src)
		case "exists":
			var e struct {
				Field string `json:"field"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				return false, err
			}
			return len(values(src, e.Field)) > 0, nil
		case "bool":
			return boolClause(body, src)
		default:
			return false, fmt.Errorf("unknown query [%s]", kind)
		}
	}
	return false, nil
}

// fieldClause handles {"field": value} and {"field": {"value"|"query": v}}.
func fieldClause(body json.RawMessage, src map[string]any,
	eq func(v, want any) bool) (bool, error) {
	var m map[string]any
	if err := unmarshalNumber(body, &m); err != nil || len(m) != 1 {
		return false, fmt.Errorf("[term] query malformed, no start_object after query name")
	}
	for field, want := range m {
		fold := false
		if obj, ok := want.(map[string]any); ok {
			if v, ok := obj["value"]; ok {
				want = v
			} else {
				want = obj["query"]
			}
			fold = obj["case_insensitive"] == true
		}
		for _, v := range values(src, field) {
			if eq(v, want) || fold && strings.EqualFold(fmt.Sprint(v), fmt.Sprint(want)) {
				return true, nil
			}
		}
	}
	return false, nil
}

func termsClause(body json.RawMessage, src map[string]any) (bool, error) {
	var m map[string]any
	if err := unmarshalNumber(body, &m); err != nil {
		return false, err
	}
	for field, list := range m {
		if field == "boost" {
			continue
		}
		wants, ok := list.([]any)
		if !ok {
			return false, fmt.Errorf("[terms] query does not support [%s]", field)
		}
		for _, v := range values(src, field) {
			for _, w := range wants {
				if equal(v, w) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

func rangeClause(body json.RawMessage, src map[string]any) (bool, error) {
	var m map[string]map[string]any
	if err := unmarshalNumber(body, &m); err != nil {
		return false, err
	}
	for field, bounds := range m {
		for _, v := range values(src, field) {
			if inRange(v, bounds) {
				return true, nil
			}
		}
	}
	return false, nil
}

func inRange(v any, bounds map[string]any) bool {
	for op, b := range bounds {
		c, ok := compare(v, b)
		if !ok {
			if op == "gt" || op == "gte" || op == "lt" || op == "lte" {
				return false
			}
			continue
		}
		switch {
		case op == "gt" && c <= 0, op == "gte" && c < 0, op == "lt" && c >= 0,
			op == "lte" && c > 0:
			return false
		}
	}
	return true
}

func boolClause(body json.RawMessage, src map[string]any) (bool, error) {
	var b struct {
		Must               clauses `json:"must"`
		Filter             clauses `json:"filter"`
		Should             clauses `json:"should"`
		MustNot            clauses `json:"must_not"`
		MinimumShouldMatch *int    `json:"minimum_should_match"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return false, err
	}
	for _, c := range append(b.Must, b.Filter...) {
		if ok, err := matches(c, src); err != nil || !ok {
			return false, err
		}
	}
	for _, c := range b.MustNot {
		if ok, err := matches(c, src); err != nil || ok {
			return false, err
		}
	}
	if len(b.Should) == 0 {
		return true, nil
	}
	need := 1
	if len(b.Must)+len(b.Filter) > 0 {
		need = 0
	}
	if b.MinimumShouldMatch != nil {
		need = *b.MinimumShouldMatch
	}
	n := 0
	for _, c := range b.Should {
		ok, err := matches(c, src)
		if err != nil {
			return false, err
		}
		if ok {
			n++
		}
	}
	return n >= need, nil
}

// clauses accepts a single clause object or an array of them.
type clauses []map[string]json.RawMessage

func (c *clauses) UnmarshalJSON(b []byte) error {
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte("[")) {
		var list []map[string]json.RawMessage
		err := json.Unmarshal(b, &list)
		*c = list
		return err
	}
	var one map[string]json.RawMessage
	err := json.Unmarshal(b, &one)
	*c = clauses{one}
	return err
}

func unmarshalNumber(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

// values returns the values at a dotted path, arrays flattened.
func values(src map[string]any, field string) []any {
	cur := []any{src}
	for _, p := range strings.Split(field, ".") {
		var next []any
		for _, c := range cur {
			m, ok := c.(map[string]any)
			if !ok {
				continue
			}
			switch v := m[p].(type) {
			case nil:
			case []any:
				next = append(next, v...)
			default:
				next = append(next, v)
			}
		}
		cur = next
	}
	return cur
}

func equal(v, want any) bool {
	if c, ok := compare(v, want); ok {
		return c == 0
	}
	return fmt.Sprint(v) == fmt.Sprint(want)
}

// compare orders two values as numbers, then as dates, then as strings.
func compare(a, b any) (int, bool) {
	fa, aok := number(a)
	fb, bok := number(b)
	if aok && bok {
		return cmp3(fa, fb), true
	}
	sa, sb := fmt.Sprint(a), fmt.Sprint(b)
	ta, aerr := parseDate(sa)
	tb, berr := parseDate(sb)
	if aerr == nil && berr == nil {
		return ta.Compare(tb), true
	}
	if aerr == nil && bok {
		return cmp3(float64(ta.UnixMilli()), fb), true
	}
	if _, isStr := a.(string); isStr {
		return strings.Compare(sa, sb), true
	}
	return 0, false
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	}
	return 0, false
}

func cmp3(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// parseSort reads [{"f":{"order":"desc"}}, {"f":"asc"}, "f"].
func parseSort(raw []json.RawMessage) ([]sortKey, error) {
	var keys []sortKey
	for _, r := range raw {
		var name string
		if json.Unmarshal(r, &name) == nil {
			keys = append(keys, sortKey{field: name})
			continue
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r, &m); err != nil || len(m) != 1 {
			return nil, fmt.Errorf("[sort] malformed sort clause")
		}
		for f, spec := range m {
			var order string
			if json.Unmarshal(spec, &order) != nil {
				var o struct {
					Order string `json:"order"`
				}
				if err := json.Unmarshal(spec, &o); err != nil {
					return nil, fmt.Errorf("[sort] malformed sort clause for [%s]", f)
				}
				order = o.Order
			}
			keys = append(keys, sortKey{field: f, desc: order == "desc"})
		}
	}
	return keys, nil
}

// sortValues are a document's sort values: dates as epoch millis, numbers
// as numbers, strings as strings.
func sortValues(doc *document, keys []sortKey) []any {
	out := make([]any, len(keys))
	for i, k := range keys {
		vs := values(doc.source, k.field)
		if len(vs) == 0 {
			out[i] = nil
			continue
		}
		v := vs[0]
		if n, ok := v.(json.Number); ok {
			if iv, err := n.Int64(); err == nil {
				out[i] = iv
			} else {
				f, _ := n.Float64()
				out[i] = f
			}
			continue
		}
		if s, ok := v.(string); ok && isDateField(k.field) {
			if t, err := parseDate(s); err == nil {
				out[i] = t.UnixMilli()
				continue
			}
		}
		out[i] = v
	}
	return out
}

// isDateField guesses date fields by the names ECS and vigil use.
func isDateField(f string) bool {
	return f == "@timestamp" || strings.HasSuffix(f, ".opened") || strings.HasSuffix(f, ".closed")
}

// less orders two sort-value lists under keys (missing values last).
func less(a, b []any, keys []sortKey) bool {
	for i, k := range keys {
		if i >= len(a) || i >= len(b) {
			return false
		}
		if a[i] == nil || b[i] == nil {
			if (a[i] == nil) != (b[i] == nil) {
				return b[i] == nil
			}
			continue
		}
		c, ok := compare(a[i], b[i])
		if !ok || c == 0 {
			continue
		}
		if k.desc {
			return c > 0
		}
		return c < 0
	}
	return false
}
