package policy

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// keyer derives decision cache keys. A key hashes the parts of the input
// the policy can observe, found by reading the compiled modules: every
// reference to input is cut to at most two levels (input.identity.roles,
// input.command.statements) and the values at those paths are hashed. A
// policy that reads input as a whole gets a key over the whole input, so a
// cached decision is only reused for an identical input.
//
// Statement text is left out of the key unless some module names the
// string "text" or calls a built-in that can see every field of a value
// (walk, json.marshal, ...). A policy that reaches statement text some other
// way must run with WithCacheSize(0).
type keyer struct {
	paths []string // "identity.roles", "command", "" for all of input
	text  bool     // statement text is part of the key
	// volatile is set when a module calls a non-deterministic built-in
	// (time.now_ns, http.send, rand.intn, ...): its decisions are not cached.
	volatile bool
}

// opaque are built-ins that see fields a policy never names.
var opaque = map[string]bool{
	"walk": true, "json.marshal": true, "json.marshal_with_options": true,
	"yaml.marshal": true, "object.keys": true, "json.patch": true,
	"object.filter": true, "object.remove": true, "print": true,
}

func newKeyer(c *ast.Compiler) *keyer {
	set := map[string]bool{}
	k := &keyer{}
	for _, m := range c.Modules {
		ast.WalkRefs(m, func(r ast.Ref) bool {
			if r[0].Equal(ast.InputRootDocument) {
				set[refPath(r)] = true
			}
			return false
		})
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if s, ok := t.Value.(ast.String); ok && s == "text" {
				k.text = true
			}
			return false
		})
		ast.WalkExprs(m, func(x *ast.Expr) bool {
			if x.IsCall() {
				k.call(x.Operator().String())
			}
			return false
		})
		ast.WalkTerms(m, func(t *ast.Term) bool {
			if call, ok := t.Value.(ast.Call); ok {
				k.call(call[0].String())
			}
			return false
		})
	}
	for p := range set {
		k.paths = append(k.paths, p)
	}
	sort.Strings(k.paths)
	return k
}

// call notes what a call to the named function means for the key.
func (k *keyer) call(name string) {
	if opaque[name] {
		k.text = true
	}
	if b, ok := ast.BuiltinMap[name]; ok && b.Nondeterministic {
		k.volatile = true
	}
}

// refPath cuts input.a.b.c[x] to "a.b"; a dynamic part ends the path early.
func refPath(r ast.Ref) string {
	var parts []string
	for _, t := range r[1:] {
		s, ok := t.Value.(ast.String)
		if !ok || len(parts) == 2 {
			break
		}
		parts = append(parts, string(s))
	}
	return strings.Join(parts, ".")
}

// key hashes the observed parts of in.
func (k *keyer) key(in *Input) ([32]byte, error) {
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, p := range k.paths {
		h.Write([]byte(p))
		h.Write([]byte{0})
		if err := enc.Encode(k.value(in, p)); err != nil {
			return [32]byte{}, fmt.Errorf("policy: cache key: %w", err)
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

// value returns what input holds at path p.
func (k *keyer) value(in *Input, p string) any {
	section, field, _ := strings.Cut(p, ".")
	var v any
	switch section {
	case "":
		c := *in
		c.Command.Statements = k.statements(in.Command.Statements)
		return c
	case "identity":
		v = in.Identity
	case "connection":
		v = in.Connection
	case "session":
		v = in.Session
	case "command":
		if field == "statements" || field == "" {
			c := in.Command
			c.Statements = k.statements(c.Statements)
			if field == "" {
				return c
			}
			return c.Statements
		}
		v = in.Command
	default:
		return nil
	}
	if field == "" {
		return v
	}
	return jsonField(v, field)
}

// statements drops statement text from the key unless the policy reads it.
func (k *keyer) statements(list []Statement) []Statement {
	if k.text || list == nil {
		return list
	}
	out := make([]Statement, len(list))
	for i, s := range list {
		s.Text = ""
		s.Nested = k.statements(s.Nested)
		out[i] = s
	}
	return out
}

// jsonField returns the field of struct v (or *struct) whose JSON name is
// name; nil when there is none.
func jsonField(v any, name string) any {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return nil
	}
	t := rv.Type()
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if tag == name {
			return rv.Field(i).Interface()
		}
	}
	return nil
}
