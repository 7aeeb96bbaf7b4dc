package policy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var (
	agentID  = &identity.Identity{OID: "o1", AppID: "c1", IDType: "app", Roles: []string{"Db.Read"}}
	personID = &identity.Identity{OID: "o2", IDType: "user", UPN: "ana@example.com"}
)

// input analyzes sql and wraps it as the processor would.
func input(t testing.TB, id *identity.Identity, grant, sql string) *Input {
	t.Helper()
	st, err := Analyze(sql)
	if err != nil {
		t.Fatal(err)
	}
	return &Input{
		Identity:   id,
		Connection: ConnectionInput{Name: "customer-db", Type: "postgres", Grant: grant},
		Session:    SessionInput{ID: "s1", Client: "127.0.0.1:5555"},
		Command:    CommandInput{Protocol: "postgres", Message: "query", SQL: sql, Statements: st},
	}
}

func newEngine(t testing.TB, dir string, opts ...Option) *Engine {
	t.Helper()
	e, err := New(context.Background(), dir, append([]Option{WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// bundleCase is one command and the bundled policy's expected answer.
type bundleCase struct {
	name     string
	id       *identity.Identity
	grant    string
	sql      string
	allow    bool
	rules    []string
	approval bool
}

func (c bundleCase) run(t *testing.T, e *Engine) {
	d, err := e.Decide(context.Background(), input(t, c.id, c.grant, c.sql))
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow != c.allow || strings.Join(d.Rules, ",") != strings.Join(c.rules, ",") ||
		(d.Approval != nil) != c.approval {
		t.Errorf("%q: allow=%v rules=%v approval=%+v; want allow=%v rules=%v approval=%v",
			c.sql, d.Allow, d.Rules, d.Approval, c.allow, c.rules, c.approval)
	}
	if d.Revision != e.Revision() || d.Revision == "" {
		t.Errorf("revision %q, engine has %q", d.Revision, e.Revision())
	}
}

func TestBundleDecisions(t *testing.T) {
	e := newEngine(t, "")
	noWhere := []string{"deny_delete_without_where"}
	for _, c := range []bundleCase{
		{"agent reads", agentID, "role:Db.Read", "SELECT * FROM customers WHERE id = 1",
			true, nil, false},
		{"agent inserts read-only", agentID, "role:Db.Read", "INSERT INTO t VALUES (1)",
			false, []string{"deny_agent_write"}, false},
		{"agent inserts with write grant", agentID, "role:Db.Write", "INSERT INTO t VALUES (1)",
			true, nil, false},
		{"delete without where", agentID, "role:Db.Write", "DELETE FROM t", false, noWhere, false},
		{"delete in cte", agentID, "role:Db.Write",
			"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false, noWhere, false},
		{"delete behind comment", personID, "group:dba", "/* hi */ DELETE FROM t",
			false, noWhere, false},
		{"second statement", personID, "group:dba", "SELECT 1; DELETE FROM t",
			false, noWhere, false},
		{"explain analyze delete", personID, "group:dba", "EXPLAIN ANALYZE DELETE FROM t",
			false, noWhere, false},
		{"plain explain delete is fine", personID, "group:dba", "EXPLAIN DELETE FROM t",
			true, nil, false},
		{"prepare delete", personID, "group:dba", "PREPARE p AS DELETE FROM t",
			false, noWhere, false},
		{"agent ddl", agentID, "role:Db.Write", "CREATE TABLE x (id int)",
			false, []string{"deny_agent_ddl"}, false},
		{"person ddl", personID, "group:dba", "CREATE TABLE x (id int)", true, nil, false},
		{"agent drop held", agentID, "role:Db.Read", "DROP TABLE x",
			true, []string{"hold_for_approval"}, true},
		{"agent truncate held", agentID, "role:Db.Read", "TRUNCATE x",
			true, []string{"hold_for_approval"}, true},
		{"agent dangerous function", agentID, "role:Db.Read",
			"SELECT pg_catalog.pg_read_file('/etc/passwd')",
			false, []string{"deny_agent_function"}, false},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, e) })
	}
}

func TestBundleMasks(t *testing.T) {
	e := newEngine(t, "")
	d, err := e.Decide(context.Background(), input(t, agentID, "role:Db.Read", "SELECT * FROM c"))
	if err != nil {
		t.Fatal(err)
	}
	var email, card bool
	for _, m := range d.Mask {
		email = email || m == MaskRule{Column: "email", Strategy: "partial"}
		card = card || m == MaskRule{Detector: "card", Strategy: "redact"}
	}
	if !email || !card {
		t.Errorf("mask %+v: want email partial and card redact", d.Mask)
	}
	d, err = e.Decide(context.Background(), input(t, personID, "group:dba", "SELECT * FROM c"))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Mask) != 0 {
		t.Errorf("group:dba gets mask %+v, want none", d.Mask)
	}
}

func TestBundleRegoTests(t *testing.T) {
	rs, err := RunTests(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) < 10 {
		t.Fatalf("%d Rego tests, want the bundle's", len(rs))
	}
	for _, r := range rs {
		if !r.Pass {
			t.Errorf("%s %s failed: %v", r.File, r.Name, r.Err)
		}
	}
}

func TestRunTestsReportsFailure(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", "package vigil\n\ndecision := {\"allow\": true}\n")
	write(t, dir, "p_test.rego", "package vigil_test\n\nimport data.vigil\n\n"+
		"test_ok if vigil.decision.allow\n\ntest_wrong if not vigil.decision.allow\n")
	rs, err := RunTests(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || !rs[0].Pass || rs[1].Pass {
		t.Fatalf("results %+v: want test_ok to pass and test_wrong to fail", rs)
	}
}

func write(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const allowAll = "package vigil\n\ndecision := {\"allow\": true, \"rules\": [\"v1\"]}\n"
const denyAll = "package vigil\n\ndecision := {\"allow\": false, \"rules\": [\"v2\"]}\n"

func TestNewErrors(t *testing.T) {
	empty := t.TempDir()
	_, err := New(context.Background(), empty, WithLogger(quiet))
	if !errors.Is(err, ErrEmptyBundle) || !strings.Contains(err.Error(), empty) {
		t.Errorf("empty dir: %v, want ErrEmptyBundle naming %s", err, empty)
	}

	bad := t.TempDir()
	write(t, bad, "p.rego", "package vigil\n\ndecision := {\n")
	_, err = New(context.Background(), bad, WithLogger(quiet))
	if err == nil || !strings.Contains(err.Error(), "p.rego:") {
		t.Errorf("broken policy: %v, want an error naming p.rego and a line", err)
	}
}

// TestReloadKeepsLastGoodPolicy changes the files under a watching engine
// and waits for each reload through OnReload.
func TestReloadKeepsLastGoodPolicy(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", allowAll)
	type attempt struct {
		rev string
		err error
	}
	reloads := make(chan attempt, 16)
	var logs strings.Builder
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))
	e := newEngine(t, dir, WithLogger(logger), OnReload(func(rev string, err error) {
		reloads <- attempt{rev, err}
	}))
	in := input(t, agentID, "role:Db.Read", "SELECT 1")
	first := e.Revision()

	decide := func() *Decision {
		d, err := e.Decide(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := decide(); !d.Allow {
		t.Fatal("initial policy denies")
	}

	// A syntax error is refused; the old policy keeps deciding.
	write(t, dir, "p.rego", "package vigil\n\ndecision := {\"allow\": \n")
	a := waitReload(t, reloads)
	if a.err == nil {
		t.Fatal("broken policy accepted")
	}
	if d := decide(); !d.Allow || d.Revision != first {
		t.Errorf("after broken reload: allow=%v revision=%s, want the first policy", d.Allow, d.Revision)
	}
	logMu.Lock()
	line := logs.String()
	logMu.Unlock()
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "p.rego") ||
		!strings.Contains(line, "line=") {
		t.Errorf("log %q: want a Warn naming file and line", line)
	}

	// A good policy replaces it, and the cache forgets old decisions.
	write(t, dir, "p.rego", denyAll)
	a = waitReload(t, reloads)
	for a.err != nil || a.rev == first {
		a = waitReload(t, reloads)
	}
	if d := decide(); d.Allow || d.Rules[0] != "v2" || d.Revision == first {
		t.Errorf("after good reload: %+v, want the new policy", d)
	}
}

func waitReload[T any](t *testing.T, ch chan T) T {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s")
	}
	panic("unreachable")
}

type lockedWriter struct {
	b  *strings.Builder
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func TestDecideFailsClosed(t *testing.T) {
	for name, src := range map[string]string{
		"undefined":   "package vigil\n\ndecision := {\"allow\": true} if input.never\n",
		"wrong shape": "package vigil\n\ndecision := {\"allow\": \"yes\"}\n",
		"bad strategy": "package vigil\n\ndecision := {\"allow\": true, " +
			"\"mask\": [{\"column\": \"a\", \"strategy\": \"x\"}]}\n",
		"conflict": "package vigil\n\n" +
			"decision := 1 if input.command\ndecision := 2 if input.command\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "p.rego", src)
			e := newEngine(t, dir, WithoutWatch())
			d, err := e.Decide(context.Background(), input(t, agentID, "", "SELECT 1"))
			if err == nil {
				t.Fatalf("decision %+v, want an error", d)
			}
		})
	}
}

// TestCacheKeyFollowsPolicy checks that the cache separates inputs that
// differ in what the policy reads, and shares those that do not.
func TestCacheKeyFollowsPolicy(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", `package vigil

decision := {"allow": allow}

default allow := false

allow if "Db.Read" in input.identity.roles
`)
	e := newEngine(t, dir, WithoutWatch())
	c := e.active.Load()
	a := input(t, agentID, "role:Db.Read", "SELECT 1 FROM t WHERE id = 1")
	b := input(t, agentID, "role:Db.Read", "SELECT 1 FROM t WHERE id = 2")
	b.Session.ID = "other"
	ka, _ := c.keyer.key(a)
	kb, _ := c.keyer.key(b)
	if ka != kb {
		t.Error("inputs that differ only in what the policy never reads have different keys")
	}
	other := *agentID
	other.Roles = nil
	b.Identity = &other
	kb, _ = c.keyer.key(b)
	if ka == kb {
		t.Error("inputs with different roles share a key")
	}
	d, err := e.Decide(context.Background(), b)
	if err != nil || d.Allow {
		t.Errorf("identity without the role: %+v %v, want denied", d, err)
	}
	if d, _ := e.Decide(context.Background(), a); !d.Allow {
		t.Error("identity with the role denied")
	}
}

func TestDecideConcurrent(t *testing.T) {
	e := newEngine(t, "")
	ins := []*Input{
		input(t, agentID, "role:Db.Read", "SELECT 1"),
		input(t, agentID, "role:Db.Read", "DELETE FROM t"),
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				d, err := e.Decide(context.Background(), ins[i%2])
				if err != nil || d.Allow != (i%2 == 0) {
					t.Errorf("decision %+v %v", d, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkAnalyze(b *testing.B) {
	sql := "WITH d AS (DELETE FROM orders WHERE created < now() - interval '1 day' RETURNING *) " +
		"SELECT c.email, count(*) FROM customers c JOIN d ON d.customer = c.id GROUP BY 1"
	for b.Loop() {
		if _, err := Analyze(sql); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecideCached(b *testing.B) {
	e := newEngine(b, "")
	in := input(b, agentID, "role:Db.Read", "SELECT email FROM customers WHERE id = 42")
	for b.Loop() {
		if _, err := e.Decide(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecideUncached(b *testing.B) {
	e := newEngine(b, "", WithCacheSize(0))
	in := input(b, agentID, "role:Db.Read", "SELECT email FROM customers WHERE id = 42")
	for b.Loop() {
		if _, err := e.Decide(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
}

func TestVolatilePolicyNotCached(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", "package vigil\n\ndecision := {\"allow\": time.now_ns() > 0}\n")
	e := newEngine(t, dir, WithoutWatch())
	if e.active.Load().cache != nil {
		t.Error("a policy reading the clock is cached")
	}
	e = newEngine(t, "", WithoutWatch())
	if e.active.Load().cache == nil {
		t.Error("the default bundle is not cached")
	}
}
