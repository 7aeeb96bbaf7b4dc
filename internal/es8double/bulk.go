package es8double

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// action is one parsed bulk action.
type action struct {
	op     string // create, index, delete, update
	index  string // as sent (or the path's target)
	id     string
	source []byte
}

// bulk answers POST _bulk: HTTP 200 with one item per action whenever the
// request itself is accepted.
func (d *Double) bulk(rw *reply, r *http.Request, pathTarget string, body []byte) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		rw.methodNotAllowed(r)
		return
	}
	d.mu.Lock()
	if d.reqReject > 0 {
		d.reqReject--
		d.mu.Unlock()
		rw.error(429, "es_rejected_execution_exception", fmt.Sprintf("rejected execution of "+
			"coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, "+
			"all_bytes=0, coordinating_operation_bytes=%d, max_coordinating_and_primary_bytes=0]",
			len(body)), nil)
		return
	}
	d.mu.Unlock()

	actions, err := parseBulk(body, pathTarget)
	if err != nil {
		rw.error(400, "illegal_argument_exception", err.Error(), nil)
		return
	}
	refresh, hasRefresh := r.URL.Query()["refresh"]
	forced := hasRefresh && (refresh[0] == "" || refresh[0] == "true")

	start := time.Now()
	d.mu.Lock()
	items := make([]any, len(actions))
	failed := false
	for i, a := range actions {
		res := d.apply(a, forced)
		if _, bad := res["error"]; bad {
			failed = true
		}
		items[i] = map[string]any{a.op: res}
	}
	d.mu.Unlock()
	rw.json(200, map[string]any{"errors": failed,
		"took": time.Since(start).Milliseconds(), "items": items})
}

// parseBulk splits an NDJSON bulk body into actions.
func parseBulk(body []byte, pathTarget string) ([]action, error) {
	var out []action
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 100<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var head map[string]struct {
			Index string `json:"_index"`
			ID    string `json:"_id"`
		}
		if err := json.Unmarshal(line, &head); err != nil || len(head) != 1 {
			return nil, fmt.Errorf("Malformed action/metadata line [%d], expected "+
				"START_OBJECT or END_OBJECT but found [VALUE_STRING]", len(out)+1)
		}
		var a action
		for op, m := range head {
			a = action{op: op, index: m.Index, id: m.ID}
		}
		if a.index == "" {
			a.index = pathTarget
		}
		switch a.op {
		case "create", "index", "update":
			if !sc.Scan() {
				return nil, fmt.Errorf("The bulk request must be terminated by a newline [\\n]")
			}
			a.source = append([]byte(nil), bytes.TrimSpace(sc.Bytes())...)
		case "delete":
		default:
			return nil, fmt.Errorf("Malformed action/metadata line [%d], expected one of "+
				"[create, delete, index, update] but found [%s]", len(out)+1, a.op)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("Validation Failed: 1: no requests added;")
	}
	return out, nil
}

// apply runs one action; d.mu is held.
func (d *Double) apply(a action, forced bool) map[string]any {
	if a.id == "" && a.op != "delete" && a.op != "update" {
		a.id = newID()
	}
	t := d.targets[a.index]
	if t == nil {
		// Auto-create: a data stream when a data stream template matches,
		// a regular index otherwise.
		t = d.newTarget(a.index, d.matchTemplate(a.index))
		if a.op == "create" || a.op == "index" {
			d.targets[a.index] = t
		}
	}
	if t.dataStream && a.op != "create" {
		return itemError(a.index, a.id, 400, "illegal_argument_exception",
			"only write ops with an op_type of create are allowed in data streams", nil)
	}
	if d.readOnly && a.op != "delete" {
		return itemError(a.index, a.id, 429, "cluster_block_exception", "index ["+t.backing+
			"] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, "+
			"index has read-only-allow-delete block];", nil)
	}
	if d.takeItemRejection(a.index) {
		return itemError(a.index, a.id, 429, "es_rejected_execution_exception",
			"rejected execution of primary operation [coordinating_and_primary_bytes=0, "+
				"replica_bytes=0, all_bytes=0, primary_operation_bytes="+
				strconv.Itoa(len(a.source))+", max_coordinating_and_primary_bytes=0]", nil)
	}
	switch a.op {
	case "create", "index":
		return d.write(t, a, forced)
	case "delete":
		return d.remove(t, a, forced)
	default:
		return d.update(t, a, forced)
	}
}

// takeItemRejection consumes one per-item 429 for index, if any is set.
func (d *Double) takeItemRejection(index string) bool {
	for _, k := range []string{index, ""} {
		if d.itemRej[k] > 0 {
			d.itemRej[k]--
			return true
		}
	}
	return false
}

// write stores a create or index action.
func (d *Double) write(t *target, a action, forced bool) map[string]any {
	src, err := decodeSource(a.source)
	if err != nil {
		return itemError(a.index, a.id, 400, "document_parsing_exception",
			"[1:2] failed to parse: "+err.Error(), nil)
	}
	if msg := checkMapping(t.fields, src, a.id); msg != "" {
		return itemError(a.index, a.id, 400, "document_parsing_exception", msg, nil)
	}
	if t.dataStream {
		if _, ok := src["@timestamp"]; !ok {
			return itemError(a.index, a.id, 400, "document_parsing_exception",
				"[1:2] failed to parse: data stream timestamp field [@timestamp] is missing", nil)
		}
	}
	old := t.docs[a.id]
	if old != nil && a.op == "create" {
		return itemError(t.backing, a.id, 409, "version_conflict_engine_exception",
			fmt.Sprintf("[%s]: version conflict, document already exists (current version [%d])",
				a.id, old.version), map[string]any{"index_uuid": uuidOf(t.backing),
				"shard": "0", "index": t.backing})
	}
	doc := &document{id: a.id, source: src, raw: a.source, seqNo: t.seqNo, version: 1}
	result, status := "created", 201
	if old != nil {
		doc.version = old.version + 1
		result, status = "updated", 200
	}
	t.seqNo++
	t.docs[a.id] = doc
	return itemOK(t.backing, doc, result, status, forced)
}

// remove deletes a document from a regular index.
func (d *Double) remove(t *target, a action, forced bool) map[string]any {
	old := t.docs[a.id]
	doc := &document{id: a.id, seqNo: t.seqNo, version: 1}
	t.seqNo++
	if old == nil {
		return itemOK(t.backing, doc, "not_found", 404, forced)
	}
	delete(t.docs, a.id)
	doc.version = old.version + 1
	return itemOK(t.backing, doc, "deleted", 200, forced)
}

// update merges a partial document ({"doc":{...}}) into a stored one.
func (d *Double) update(t *target, a action, forced bool) map[string]any {
	old := t.docs[a.id]
	if old == nil {
		return itemError(t.backing, a.id, 404, "document_missing_exception",
			fmt.Sprintf("[%s]: document missing", a.id), map[string]any{
				"index_uuid": uuidOf(t.backing), "shard": "0", "index": t.backing})
	}
	var in struct {
		Doc map[string]any `json:"doc"`
	}
	if err := json.Unmarshal(a.source, &in); err != nil || in.Doc == nil {
		return itemError(a.index, a.id, 400, "action_request_validation_exception",
			"Validation Failed: 1: script or doc is missing;", nil)
	}
	for k, v := range in.Doc {
		old.source[k] = v
	}
	old.raw, _ = json.Marshal(old.source)
	old.version++
	old.seqNo = t.seqNo
	t.seqNo++
	return itemOK(t.backing, old, "updated", 200, forced)
}

func itemOK(index string, doc *document, result string, status int, forced bool) map[string]any {
	m := map[string]any{"_index": index, "_id": doc.id, "_version": doc.version,
		"result": result, "_shards": map[string]any{"total": 2, "successful": 1, "failed": 0},
		"_seq_no": doc.seqNo, "_primary_term": 1, "status": status}
	if forced {
		m["forced_refresh"] = true
	}
	return m
}

func itemError(index, id string, status int, typ, reason string,
	meta map[string]any) map[string]any {
	e := map[string]any{"type": typ, "reason": reason}
	for k, v := range meta {
		e[k] = v
	}
	return map[string]any{"_index": index, "_id": id, "status": status, "error": e}
}

// uuidOf gives an index a stable made-up uuid.
func uuidOf(index string) string {
	const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	var b [22]byte
	h := uint32(2166136261)
	for i := range b {
		if i < len(index) {
			h = (h ^ uint32(index[i])) * 16777619
		} else {
			h = (h ^ uint32(i)) * 16777619
		}
		b[i] = chars[h%uint32(len(chars))]
	}
	return string(b[:])
}

// decodeSource parses a source document, expanding dotted keys into
// objects as Elasticsearch does for mapping.
func decodeSource(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("source is not an object")
	}
	return expandDots(m), nil
}

func expandDots(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			v = expandDots(sub)
		}
		parts := strings.Split(k, ".")
		cur := out
		for _, p := range parts[:len(parts)-1] {
			next, ok := cur[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				cur[p] = next
			}
			cur = next
		}
		last := parts[len(parts)-1]
		if sub, ok := v.(map[string]any); ok {
			if have, ok := cur[last].(map[string]any); ok {
				for sk, sv := range sub {
					have[sk] = sv
				}
				continue
			}
		}
		cur[last] = v
	}
	return out
}

// checkMapping returns the reason a document does not fit the mapped leaf
// types, or "".
func checkMapping(fields map[string]string, src map[string]any, id string) string {
	var msg string
	walk("", src, func(p string, v any) bool {
		typ, ok := fields[p]
		if !ok || fits(typ, v) {
			return true
		}
		msg = fmt.Sprintf("[1:2] failed to parse field [%s] of type [%s] in document with id "+
			"'%s'. Preview of field's value: '%s'", p, typ, id, preview(v))
		return false
	})
	return msg
}

// walk calls f for every leaf (and every object sitting where a leaf is
// mapped) of src, arrays flattened, until f returns false.
func walk(prefix string, v any, f func(path string, v any) bool) bool {
	switch x := v.(type) {
	case map[string]any:
		if prefix != "" && !f(strings.TrimSuffix(prefix, "."), x) {
			return false
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !walk(prefix+k+".", x[k], f) {
				return false
			}
		}
		return true
	case []any:
		for _, e := range x {
			if !walk(prefix, e, f) {
				return false
			}
		}
		return true
	default:
		return f(strings.TrimSuffix(prefix, "."), v)
	}
}

// fits reports whether a JSON value can be indexed as a field of type typ.
func fits(typ string, v any) bool {
	if v == nil {
		return true
	}
	if _, obj := v.(map[string]any); obj {
		return false
	}
	s := fmt.Sprint(v)
	switch typ {
	case "long", "integer", "short", "byte", "unsigned_long":
		if _, ok := v.(bool); ok {
			return false
		}
		_, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(s, 64)
			return ferr == nil && f == float64(int64(f))
		}
		return true
	case "float", "double", "half_float", "scaled_float":
		_, err := strconv.ParseFloat(s, 64)
		return err == nil
	case "date":
		if _, ok := v.(json.Number); ok {
			return true
		}
		_, err := parseDate(s)
		return err == nil
	case "ip":
		return net.ParseIP(s) != nil
	case "boolean":
		return s == "true" || s == "false"
	}
	return true
}

// preview renders a value the way Elasticsearch's Java maps print.
func preview(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Sprint(v)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + preview(m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// parseDate accepts the strict_date_optional_time forms vigil and the
// reference requests use.
func parseDate(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05",
		"2006-01-02T15:04:05.999999999", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("es8double: failed to parse date field [%s]", s)
}
