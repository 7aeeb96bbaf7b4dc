package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// buildJournal records one session with commands of every shape and
// returns the journal directory and the session id.
func buildJournal(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	j, err := audit.Open(dir, audit.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	base := audit.Event{Connection: "customer-db", Protocol: "postgres",
		Identity: &identity.Identity{Name: "billing-agent", OID: "oid-1", AppID: "app-1"},
		Grant:    "group:billing-agents", Client: "127.0.0.1:50123",
		Upstream: "127.0.0.1:5432", UpstreamUser: "billing_ro", Database: "app"}
	at := func(k audit.Kind, d time.Duration) audit.Event {
		ev := base
		ev.Kind, ev.Time = k, t0.Add(d)
		return ev
	}
	start := at(audit.KindSessionStart, 0)
	start.Session = &audit.Session{Opened: t0, Application: "psql", ClientUser: "agent"}
	r, err := j.Begin(start)
	if err != nil {
		t.Fatal(err)
	}
	record := func(ev audit.Event) uint64 {
		seq, err := r.Record(ev)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	result := func(cmd uint64, res audit.Result, d time.Duration) {
		ev := at(audit.KindResult, d)
		res.Command = cmd
		ev.Result = &res
		record(ev)
	}

	c := at(audit.KindCommand, time.Second)
	c.Command = &audit.Command{Message: "query", SQL: "SELECT id\n  FROM invoices\n WHERE paid"}
	result(record(c), audit.Result{Status: audit.StatusOK, Tag: "SELECT 3", Rows: 3,
		Duration: 1.25}, 1001*time.Millisecond)

	params := make([]audit.Parameter, 10)
	for i := range params {
		params[i] = audit.Parameter{Format: "text", Value: string(rune('a' + i))}
	}
	params[1] = audit.Parameter{Format: "text", Null: true}
	params[2] = audit.Parameter{Format: "binary", Value: `\x0102ff`}
	params[9].Value = "O'Brien"
	c = at(audit.KindCommand, 2*time.Second)
	c.Command = &audit.Command{Message: "execute", SQL: "INSERT INTO t VALUES ($1, $2)",
		Statement: "ins", Portal: "p1", Parameters: params}
	result(record(c), audit.Result{Status: audit.StatusError, SQLState: "23505",
		Message: "duplicate key value", Duration: 0.5}, 2001*time.Millisecond)

	af := at(audit.KindAuthFailed, 3*time.Second)
	af.Reason, af.ReasonCode = "the token has expired", "expired"
	record(af)

	end := at(audit.KindSessionEnd, 4*time.Second)
	end.Session = &audit.Session{Opened: t0, Closed: t0.Add(4500 * time.Millisecond),
		Commands: 2}
	if err := r.End(end); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, r.ID()
}

// runVigil runs the root command with args and returns its standard output.
func runVigil(t *testing.T, args ...string) string {
	t.Helper()
	auditFlags = auditOptions{}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	defer root.SetArgs(nil)
	if err := root.Execute(); err != nil {
		t.Fatalf("vigil %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

func TestAuditSessions(t *testing.T) {
	dir, id := buildJournal(t)
	out := runVigil(t, "audit", "sessions", "--data", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one session:\n%s", out)
	}
	for _, want := range []string{"SESSION", "OPENED", "CLOSED", "DURATION", "IDENTITY",
		"GRANT", "CONNECTION", "UPSTREAM USER", "CLIENT", "COMMANDS"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %q: %s", want, lines[0])
		}
	}
	f := strings.Fields(lines[1])
	want := []string{id, "2025-03-01T10:00:00.000Z", "2025-03-01T10:00:04.500Z", "4.5s",
		"billing-agent", "group:billing-agents", "customer-db", "billing_ro",
		"127.0.0.1:50123", "2"}
	if strings.Join(f, " ") != strings.Join(want, " ") {
		t.Fatalf("session line\n got %q\nwant %q", f, want)
	}

	out = runVigil(t, "audit", "sessions", "--data", dir, "--identity", "nobody")
	if strings.Contains(out, id) {
		t.Fatalf("--identity nobody still lists the session:\n%s", out)
	}
	out = runVigil(t, "audit", "sessions", "--data", dir, "--since", "1h")
	if strings.Contains(out, id) {
		t.Fatalf("--since 1h lists a session closed in 2025:\n%s", out)
	}
	out = runVigil(t, "audit", "sessions", "--data", dir, "--json",
		"--since", "2025-03-01T09:00:00Z", "--connection", "customer-db")
	var ss []audit.SessionSummary
	if err := json.Unmarshal([]byte(out), &ss); err != nil || len(ss) != 1 ||
		ss[0].ID != id || ss[0].Commands != 2 {
		t.Fatalf("--json: %v\n%s", err, out)
	}
}

func TestAuditShow(t *testing.T) {
	dir, id := buildJournal(t)
	out := runVigil(t, "audit", "show", id, "--data", dir)
	for _, want := range []string{
		"session     " + id,
		"identity    billing-agent (oid oid-1, appid app-1)",
		"grant       group:billing-agents",
		"client      127.0.0.1:50123 (application psql, user agent)",
		"upstream    billing_ro at 127.0.0.1:5432, database app",
		"opened      2025-03-01T10:00:00.000Z",
		"closed      2025-03-01T10:00:04.500Z (after 4.5s)",
		"    2  2025-03-01T10:00:01.000Z  ok             1.25ms  SELECT 3\n",
		"       SELECT id\n         FROM invoices\n        WHERE paid\n",
		"    4  2025-03-01T10:00:02.000Z  error          0.50ms  23505 duplicate key value",
		`[execute, statement name "ins", portal "p1"]`,
		`$1='a' $2=NULL $3=\x0102ff $4='d'`,
		`$10='O''Brien'`,
		"    6  2025-03-01T10:00:03.000Z  auth_failed the token has expired (expired)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}

	// --json prints the stored event bytes, one per line, in seq order.
	out = runVigil(t, "audit", "show", id, "--data", dir, "--json")
	recs, err := audit.ReadRecords(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, r := range recs {
		want.Write(r.Event)
		want.WriteByte('\n')
	}
	if out != want.String() || len(recs) != 7 {
		t.Fatalf("--json output differs from the stored events:\n%s", out)
	}
}

func TestAuditDataFromConfig(t *testing.T) {
	dir, id := buildJournal(t)
	cfg := t.TempDir() + "/vigil.yaml"
	body := "identity:\n  provider: oidc\n  issuer: https://issuer.example\n" +
		"  audiences: [api://vigil]\n" +
		"connections:\n  - name: customer-db\n    type: postgres\n" +
		"    upstream: 127.0.0.1:5432\n    credential: {auth: trust, user: app}\n" +
		"    access: oid:oid-1\n" +
		"audit:\n  dir: " + dir + "\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	old := flagConfig
	defer func() { flagConfig = old }()
	out := runVigil(t, "--config", cfg, "audit", "sessions")
	if !strings.Contains(out, id) {
		t.Fatalf("audit.dir of --config not used:\n%s", out)
	}
}
