package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/es8double"
	"github.com/vigilaudit/vigil/internal/pgtest"
)

// TestExportThroughGateway: a gateway with an Elasticsearch export ships
// an agent's session to the data stream as it happens, and the auditor's
// commands read it back from there: show lists the statements, verify
// finds the chain and the checkpoints whole. Elasticsearch is the double
// that answers as Elasticsearch 8 does (internal/es8double).
func TestExportThroughGateway(t *testing.T) {
	const key = "dGVzdC1rZXk6c2VjcmV0"
	d := es8double.New(es8double.Options{APIKey: key})
	srv, err := es8double.Start(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	keyFile := filepath.Join(t.TempDir(), "es-key")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, envOptions{
		connYAML: func(testing.TB, *pgtest.Cluster) string { return "    export: siem\n" },
		auditYAML: "  elasticsearch:\n    addresses: [" + srv.URL + "]\n    api_key_file: " +
			keyFile + "\n",
	})
	bin := vigilBinary(t)
	vigil := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args, "--config", e.cfgFile)...).CombinedOutput()
		return string(out), err
	}
	if out, err := vigil("elasticsearch", "setup", "--skip-kibana"); err != nil {
		t.Fatalf("vigil elasticsearch setup: %v\n%s", err, out)
	}

	sqls := []string{"SELECT 41 + 1", "CREATE TABLE shipped (id int)",
		"INSERT INTO shipped VALUES (1)", "SELECT * FROM shipped"}
	_, stderr, err := psql(t, e.addr, "agent", e.token(t, identity.TokenSpec{}), "postgres",
		strings.Join(sqls, ";\n")+";\n")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, stderr)
	}
	evs := e.lastSession(t)
	id := evs[0].SessionID

	// Every event of the session arrives, once, with id session:seq.
	const stream = "logs-vigil.audit-default"
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := 0
		for _, doc := range d.IDs(stream) {
			if strings.HasPrefix(doc, id+":") {
				n++
			}
		}
		if n == len(evs) {
			break
		}
		if n > len(evs) || time.Now().After(deadline) {
			t.Fatalf("%d of the session's %d events in %s", n, len(evs), stream)
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err := vigil("audit", "show", "--elasticsearch", id)
	if err != nil {
		t.Fatalf("vigil audit show --elasticsearch: %v\n%s", err, out)
	}
	for _, sql := range sqls {
		if !strings.Contains(out, sql) {
			t.Errorf("audit show --elasticsearch lacks %q:\n%s", sql, out)
		}
	}
	// Wait for a checkpoint written after the session ended to be shipped,
	// then verify against Elasticsearch.
	time.Sleep(100 * time.Millisecond)
	deadline = time.Now().Add(60 * time.Second)
	for {
		out, err = vigil("audit", "verify", "--elasticsearch")
		if err == nil && !strings.Contains(out, id) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vigil audit verify --elasticsearch: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
}
