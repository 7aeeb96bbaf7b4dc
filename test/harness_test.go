package test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/app"
	"github.com/vigilaudit/vigil/internal/pgtest"
)

// Names the harness uses in every environment.
const (
	upstreamUser     = "app_rw"
	upstreamPassword = `s3cret 'quoted' \back ünï`
	agentRole        = "Db.Write"
	connName         = "customer-db"
)

// env is one end-to-end environment: a throwaway PostgreSQL, a dev issuer
// shaped like Entra, and vigil gateway in process in front of the cluster.
type env struct {
	pg      *pgtest.Cluster
	issuer  *identity.DevIssuer
	iss     *httptest.Server
	app     *app.App
	addr    string // the gateway's listener for connName
	http    string // server.http: health and the approvals API
	dataDir string
	// cfgFile is the configuration as a file, for vigil processes.
	cfgFile string
}

// envOptions tune startEnv.
type envOptions struct {
	auth   string // pg_hba method; default password
	record string
	quiet  bool // log errors only (benchmarks)
	// policy is the policy mode; default monitor (decisions recorded,
	// nothing enforced), so protocol tests see PostgreSQL unchanged.
	policy string
	// connYAML, when set, runs once the cluster has started and returns
	// extra keys for the connection block, each line indented four spaces
	// (tls_test.go configures TLS with it).
	connYAML func(t testing.TB, pg *pgtest.Cluster) string
	// policyDir, when set, replaces the embedded default policy.
	policyDir string
	// extraYAML is added at the top level of the configuration, each key
	// at column zero (an approvals block, for example).
	extraYAML string
	// auditYAML is added under audit:, each key indented two spaces.
	auditYAML string
	// dataDir, when set, is audit.dir (two gateways may share nothing
	// else, so each takes its own).
	dataDir string
}

func startEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.auth == "" {
		o.auth = pgtest.AuthPassword
	}
	e := &env{}
	e.pg = pgtest.Start(t, pgtest.Options{Auth: o.auth})
	e.pg.CreateUser(t, upstreamUser, upstreamPassword)
	var connExtra string
	if o.connYAML != nil {
		connExtra = o.connYAML(t, e.pg)
	}

	iss, err := identity.NewDevIssuer(identity.DevTenant)
	if err != nil {
		t.Fatal(err)
	}
	e.issuer = iss
	e.iss = httptest.NewServer(iss.Handler())
	t.Cleanup(e.iss.Close)

	dir := t.TempDir()
	e.dataDir = filepath.Join(dir, "data")
	if o.dataDir != "" {
		e.dataDir = o.dataDir
	}
	policyDir := ""
	if o.policyDir != "" {
		policyDir = "\n  dir: " + o.policyDir
	}
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(upstreamPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	auth := o.auth
	if auth == pgtest.AuthSCRAM {
		auth = config.AuthSCRAM
	}
	yaml := fmt.Sprintf(`identity:
  tenants: [%s]
  audiences: [api://vigil, %s]
  authority: %s
connections:
  - name: %s
    type: postgres
    listen: 127.0.0.1:0
    upstream: %s
    credential:
      auth: %s
      user: %s
      password_file: %s
    access: [role:%s, group:billing-agents]
    record: %s
%spolicy:
  mode: %s%s
audit:
  dir: %s
%sserver:
  http: 127.0.0.1:0
%s`, identity.DevTenant, identity.DevAPIAppID, e.iss.URL, connName, e.pg.Addr(), auth,
		upstreamUser, pwFile, agentRole, orDefault(o.record, "full"), connExtra,
		orDefault(o.policy, "monitor"), policyDir, e.dataDir, o.auditYAML, o.extraYAML)
	e.cfgFile = filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(e.cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}

	level := slog.LevelInfo
	if o.quiet {
		level = slog.LevelError
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, log, app.Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	gw, err := a.StartGateway(ctx)
	if err != nil {
		cancel()
		a.Close()
		t.Fatal(err)
	}
	e.app, e.addr, e.http = a, gw.Addrs[connName], gw.HTTP
	t.Cleanup(func() {
		cancel()
		gw.Wait()
		a.Close()
	})
	return e
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// testWriter sends log lines to the test log, so they show on failure.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// token mints an agent token; fields of spec left zero take the agent's.
func (e *env) token(t *testing.T, spec identity.TokenSpec) string {
	t.Helper()
	if spec.Roles == nil {
		spec.Roles = []string{agentRole}
	}
	if spec.Audience == "" {
		spec.Audience = identity.DevAPIAppID
	}
	tok, err := e.issuer.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// vigilDSN is a URL reaching the cluster through vigil with tok.
func (e *env) vigilDSN(tok, db string) string {
	return pgtest.DSN(e.addr, "agent", tok, db)
}

// psql runs psql with args against host:port as user with password and
// returns stdout and stderr.
func psql(t *testing.T, addr, user, password, db string, stdin string,
	args ...string) (string, string, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	base := []string{"-X", "-h", host, "-p", port, "-U", user, "-d", db}
	cmd := exec.Command(pgBin("psql"), append(base, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGSSLMODE=disable",
		"PGAPPNAME=e2e", "PGCONNECT_TIMEOUT=20", "LC_ALL=C")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), errb.String(), err
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("psql did not finish in 2 minutes; stderr: %s", errb.String())
	}
	return "", "", nil
}

// sessions reads the journal's sessions, newest last.
func (e *env) sessions(t *testing.T) []audit.SessionSummary {
	t.Helper()
	s, err := audit.ReadSessions(e.dataDir, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// events waits until the session with id has ended and returns its events.
func (e *env) events(t *testing.T, id string) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := audit.ReadSession(e.dataDir, id)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(evs); n > 0 && evs[n-1].Kind == audit.KindSessionEnd {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s has not ended after 20s; %d events", id, len(evs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastSession waits for the newest session to end and returns its events.
func (e *env) lastSession(t *testing.T) []audit.Event {
	t.Helper()
	ss := e.sessions(t)
	if len(ss) == 0 {
		t.Fatal("the journal holds no session")
	}
	return e.events(t, ss[len(ss)-1].ID)
}

// commands pairs each command event with its result, in seq order.
type cmdResult struct {
	cmd audit.Event
	res *audit.Result
}

func commands(t *testing.T, evs []audit.Event) []cmdResult {
	t.Helper()
	var out []cmdResult
	idx := map[uint64]int{}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d: the sequence has a gap", i, ev.Seq)
		}
		switch ev.Kind {
		case audit.KindCommand:
			idx[ev.Seq] = len(out)
			out = append(out, cmdResult{cmd: ev})
		case audit.KindResult:
			j, ok := idx[ev.Result.Command]
			if !ok {
				t.Fatalf("result seq %d points at unknown command %d", ev.Seq, ev.Result.Command)
			}
			if out[j].res != nil {
				t.Fatalf("command %d has two results", ev.Result.Command)
			}
			out[j].res = ev.Result
		}
	}
	for _, c := range out {
		if c.res == nil {
			t.Fatalf("command %d (%q) has no result", c.cmd.Seq, c.cmd.Command.SQL)
		}
	}
	return out
}

func describe(cs []cmdResult) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %d %s %q -> %s %s %s\n", c.cmd.Seq, c.cmd.Command.Message,
			c.cmd.Command.SQL, c.res.Status, c.res.Tag, c.res.SQLState)
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// pgBin is the path of a PostgreSQL 15 client program.
func pgBin(name string) string {
	p := filepath.Join("/usr/lib/postgresql/15/bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return name
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }
