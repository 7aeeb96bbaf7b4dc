// Package docs_test checks that the example configurations in docs/ and
// README.md load, and that docs/vigil.example.yaml shows every key the
// loader knows.
package docs_test

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/vigilaudit/vigil/config"
)

const example = "vigil.example.yaml"

// TestExampleLoads parses the example with the strict loader: an unknown or
// misspelt key would fail here.
func TestExampleLoads(t *testing.T) {
	c, err := config.Load(example)
	if err != nil {
		t.Fatal(err)
	}
	cn := c.Connection("customer-db")
	if cn == nil {
		t.Fatal("connection customer-db missing")
	}
	if cn.Credential.Auth != config.AuthSCRAM || len(cn.Access) != 2 {
		t.Errorf("credential auth %q, %d grants; want scram-sha-256 and 2",
			cn.Credential.Auth, len(cn.Access))
	}
}

// TestReadmeConfigLoads parses the quick start's vigil.yaml in README.md.
func TestReadmeConfigLoads(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("README.md has no yaml block")
	}
	c, err := config.Parse(m[1])
	if err != nil {
		t.Fatalf("README.md vigil.yaml: %v", err)
	}
	if c.Connection("demo-db") == nil {
		t.Error("README.md vigil.yaml: connection demo-db missing")
	}
}

// TestExampleNamesEveryKey fails when config.Config gains a key the
// example does not show, set or commented out.
func TestExampleNamesEveryKey(t *testing.T) {
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, key := range yamlKeys(reflect.TypeFor[config.Config](), "") {
		leaf := key[strings.LastIndex(key, ".")+1:]
		re := regexp.MustCompile(`(?m)^[\s#-]*` + regexp.QuoteMeta(leaf) + `:`)
		if !re.MatchString(text) {
			t.Errorf("%s does not show key %s", example, key)
		}
	}
}

// yamlKeys lists the yaml keys of a struct type and its nested structs,
// dotted from the top.
func yamlKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		keys = append(keys, prefix+name)
		keys = append(keys, yamlKeys(f.Type, prefix+name+".")...)
	}
	return keys
}
