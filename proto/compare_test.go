package proto_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// strict reads JSON into a message and fails on any field the message
// lacks.
var strict = protojson.UnmarshalOptions{DiscardUnknown: false}

// roundTrip reads src strictly into m, writes m back with protojson and
// checks that both documents hold the same non-zero values at the same
// paths: every field of src survived, and the schema added none.
func roundTrip(t *testing.T, what string, src []byte, m proto.Message) {
	t.Helper()
	if err := strict.Unmarshal(src, m); err != nil {
		t.Fatalf("%s: protojson cannot read it: %v\n%s", what, err, src)
	}
	back, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatalf("%s: protojson marshal: %v", what, err)
	}
	want, got := leaves(t, src), leaves(t, back)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: %s = %s lost in the round trip", what, k, want[k])
		} else if g != want[k] {
			t.Errorf("%s: %s = %s, read back as %s", what, k, want[k], g)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s = %s added by the round trip", what, k, got[k])
		}
	}
}

// leaves flattens a JSON document into path -> value. Zero values are
// left out (protojson does not write them); numbers, integers written as
// strings (protojson's int64) and timestamps are put in one canonical
// form, so that two encodings of the same values compare equal.
func leaves(t *testing.T, doc []byte) map[string]string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", doc, err)
	}
	out := map[string]string{}
	flatten("", v, out)
	return out
}

func flatten(path string, v any, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			flatten(path+"."+k, e, out)
		}
	case []any:
		for i, e := range v {
			flatten(fmt.Sprintf("%s[%d]", path, i), e, out)
		}
	case bool:
		if v {
			out[path] = "true"
		}
	case json.Number:
		if s := canonicalNumber(string(v)); s != "0" {
			out[path] = s
		}
	case string:
		if v != "" {
			out[path] = canonicalString(v)
		}
	}
}

func canonicalNumber(s string) string {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return strconv.FormatInt(n, 10)
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return strconv.FormatUint(n, 10)
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return s
}

func canonicalString(s string) string {
	if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return "time " + ts.UTC().Format(time.RFC3339Nano)
	}
	if _, err := strconv.ParseInt(s, 10, 64); err == nil {
		return canonicalNumber(s)
	}
	if _, err := strconv.ParseUint(s, 10, 64); err == nil {
		return canonicalNumber(s)
	}
	return strconv.Quote(s)
}
