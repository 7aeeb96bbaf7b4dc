package test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/pgtest"
)

// procEnv is a PostgreSQL cluster, a dev issuer and a configuration for
// vigil gateway processes that share one audit.dir.
type procEnv struct {
	pg      *pgtest.Cluster
	issuer  *identity.DevIssuer
	cfgFile string
	dataDir string
	db      string
}

func startProcEnv(t *testing.T) *procEnv {
	t.Helper()
	e := &procEnv{db: "crash"}
	e.pg = pgtest.Start(t, pgtest.Options{Auth: pgtest.AuthPassword})
	e.pg.CreateUser(t, upstreamUser, upstreamPassword)
	e.pg.Exec(t, "CREATE DATABASE crash OWNER "+upstreamUser)
	iss, err := identity.NewDevIssuer(identity.DevTenant)
	if err != nil {
		t.Fatal(err)
	}
	e.issuer = iss
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	e.dataDir = filepath.Join(dir, "data")
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(upstreamPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`identity:
  tenants: [%s]
  audiences: [%s]
  authority: %s
connections:
  - name: %s
    type: postgres
    listen: 127.0.0.1:0
    upstream: %s
    credential:
      auth: password
      user: %s
      password_file: %s
    access: [role:%s]
    record: full
policy:
  mode: monitor
audit:
  dir: %s
`, identity.DevTenant, identity.DevAPIAppID, srv.URL, connName, e.pg.Addr(), upstreamUser,
		pwFile, agentRole, e.dataDir)
	e.cfgFile = filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(e.cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	// The table the load writes, created directly.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.pg.DSN(upstreamUser, upstreamPassword, e.db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE load (g int, i int)"); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *procEnv) dsn(t *testing.T, addr string) string {
	t.Helper()
	tok, err := e.issuer.Mint(identity.TokenSpec{Roles: []string{agentRole},
		Audience: identity.DevAPIAppID})
	if err != nil {
		t.Fatal(err)
	}
	return pgtest.DSN(addr, "agent", tok, e.db)
}

// gatewayProc is a `vigil gateway` child process.
type gatewayProc struct {
	cmd  *exec.Cmd
	addr string // the connection's listener
	done chan struct{}

	mu     sync.Mutex
	stderr bytes.Buffer
}

var listenRE = regexp.MustCompile(`msg="gateway listening".* addr=(127\.0\.0\.1:\d+)`)

// startGateway runs vigil gateway on e's configuration and waits until it
// listens. fsize, when positive, caps the size of every file the process
// writes (RLIMIT_FSIZE), so that its journal writes fail with EFBIG.
func startGateway(t *testing.T, e *procEnv, fsize int64) *gatewayProc {
	t.Helper()
	bin := vigilBinary(t)
	args := []string{"gateway", "--config", e.cfgFile}
	var cmd *exec.Cmd
	if fsize > 0 {
		// The test binary itself sets the limit and execs vigil (see
		// TestCrashFsizeWrapper).
		cmd = exec.Command(os.Args[0], "-test.run=^TestCrashFsizeWrapper$")
		cmd.Env = append(os.Environ(), fsizeEnv+"="+strconv.FormatInt(fsize, 10),
			fsizeExecEnv+"="+strings.Join(append([]string{bin}, args...), "\x1f"))
	} else {
		cmd = exec.Command(bin, args...)
	}
	g := &gatewayProc{cmd: cmd, done: make(chan struct{})}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			g.mu.Lock()
			g.stderr.WriteString(sc.Text() + "\n")
			g.mu.Unlock()
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addrs <- m[1]:
				default:
				}
			}
		}
	}()
	go func() {
		cmd.Wait()
		close(g.done)
	}()
	t.Cleanup(func() { g.kill() })
	select {
	case g.addr = <-addrs:
	case <-g.done:
		t.Fatalf("vigil gateway exited before listening:\n%s", g.logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("vigil gateway did not listen within 60s:\n%s", g.logs())
	}
	return g
}

func (g *gatewayProc) logs() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stderr.String()
}

// kill sends SIGKILL and waits for the process to go.
func (g *gatewayProc) kill() {
	g.cmd.Process.Kill()
	<-g.done
}

// stop sends SIGTERM and waits for a clean exit.
func (g *gatewayProc) stop(t *testing.T) {
	t.Helper()
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(60 * time.Second):
		g.kill()
		t.Fatalf("vigil gateway did not stop within 60s:\n%s", g.logs())
	}
}

const (
	fsizeEnv     = "VIGIL_TEST_FSIZE"
	fsizeExecEnv = "VIGIL_TEST_FSIZE_EXEC"
)

// TestCrashFsizeWrapper is not a test: startGateway runs the test binary
// with it to exec vigil under RLIMIT_FSIZE. Go ignores SIGXFSZ, so a write
// over the limit fails with EFBIG instead of killing the process.
func TestCrashFsizeWrapper(t *testing.T) {
	n, err := strconv.ParseUint(os.Getenv(fsizeEnv), 10, 64)
	if err != nil {
		t.Skip("run by startGateway")
	}
	argv := strings.Split(os.Getenv(fsizeExecEnv), "\x1f")
	lim := syscall.Rlimit{Cur: n, Max: n}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	env := slicesWithout(os.Environ(), fsizeEnv, fsizeExecEnv)
	t.Fatal(syscall.Exec(argv[0], argv, env))
}

func slicesWithout(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// runVerify runs `vigil audit verify` on dir and returns its output and
// whether it exited 0.
func runVerify(t *testing.T, dir string) (string, bool) {
	t.Helper()
	out, err := exec.Command(vigilBinary(t), "audit", "verify", "--data", dir).CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return string(out), err == nil
}

// journaledSQL returns the SQL of every command event in dir, and the
// number of sessions whose end gives reason.
func journaledSQL(t *testing.T, dir, reason string) (map[string]bool, int) {
	t.Helper()
	ss, err := audit.ReadSessions(dir, audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	sqls, ended := map[string]bool{}, 0
	for _, s := range ss {
		evs, err := audit.ReadSession(dir, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Kind == audit.KindCommand && ev.Command != nil {
				sqls[ev.Command.SQL] = true
			}
		}
		if s.EndReason == reason {
			ended++
		}
	}
	return sqls, ended
}

// TestCrashGatewayKeepsAcknowledgedCommands kills vigil gateway with
// SIGKILL in the middle of a load of INSERTs from several clients, starts
// it again on the same journal, and checks that every INSERT a client saw
// acknowledged is journaled, that the sessions the crash cut are ended
// with the crash as their reason, and that the journal verifies clean.
func TestCrashGatewayKeepsAcknowledgedCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and vigil processes")
	}
	e := startProcEnv(t)
	g := startGateway(t, e, 0)

	// Load: clients insert until the gateway dies (each a bounded loop).
	const clients, perClient, killAfter = 6, 5000, 600
	var mu sync.Mutex
	var acked []string
	enough := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for c := range clients {
		conn, err := pgx.Connect(ctx, e.dsn(t, g.addr))
		if err != nil {
			t.Fatalf("connect through vigil: %v\n%s", err, g.logs())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close(context.Background())
			for i := range perClient {
				sql := fmt.Sprintf("INSERT INTO load VALUES (%d, %d)", c, i)
				if _, err := conn.Exec(ctx, sql); err != nil {
					return // the gateway is gone
				}
				mu.Lock()
				acked = append(acked, sql)
				if len(acked) >= killAfter {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-ctx.Done():
		t.Fatalf("the load did not reach %d acknowledged INSERTs", killAfter)
	}
	g.kill()
	wg.Wait()
	mu.Lock()
	ackedNow := slicesClone(acked)
	mu.Unlock()

	// Restart on the same journal: the crash's sessions get their end.
	g2 := startGateway(t, e, 0)
	sqls, crashed := journaledSQL(t, e.dataDir, audit.ReasonCrash)
	for _, sql := range ackedNow {
		if !sqls[sql] {
			t.Fatalf("%q was acknowledged to the client but is not in the journal", sql)
		}
	}
	if crashed != clients {
		t.Fatalf("%d sessions ended with reason %q, want %d", crashed, audit.ReasonCrash,
			clients)
	}
	if out, ok := runVerify(t, e.dataDir); !ok {
		t.Fatalf("verify of the live journal after the crash failed:\n%s", out)
	}

	// After a clean stop, verify passes, and its one warning is the
	// recovery: an auditor sees that vigil once restarted after an unclean
	// end.
	g2.stop(t)
	out, ok := runVerify(t, e.dataDir)
	if !ok || !strings.HasPrefix(out, "warn ") || !strings.Contains(out, "recovered") ||
		!strings.Contains(out, "; 1 warnings") {
		t.Fatalf("verify after a clean stop: want ok with the one recovered warning\n%s", out)
	}
	t.Logf("%d INSERTs acknowledged before the kill; %s", len(ackedNow), out)
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// TestJournalFailureRefusesCommands runs vigil gateway with a cap on file
// size, so that its journal soon cannot be written (as on a full disk):
// the client's next command fails, new logins are refused, vigil logs an
// alert, and everything acknowledged before is journaled and verifies
// once vigil restarts with room to write.
func TestJournalFailureRefusesCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and vigil processes")
	}
	e := startProcEnv(t)
	g := startGateway(t, e, 48<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.dsn(t, g.addr))
	if err != nil {
		t.Fatalf("connect through vigil: %v\n%s", err, g.logs())
	}
	defer conn.Close(context.Background())
	var acked []string
	var failure error
	for i := range 2000 { // ~1 KiB of journal each: far over the cap
		sql := fmt.Sprintf("INSERT INTO load VALUES (0, %d)", i)
		if _, err := conn.Exec(ctx, sql); err != nil {
			failure = err
			break
		}
		acked = append(acked, sql)
	}
	if failure == nil {
		t.Fatal("every INSERT succeeded although the journal could not grow")
	}
	if len(acked) == 0 {
		t.Fatalf("the first INSERT failed already: %v\n%s", failure, g.logs())
	}
	// The client is told why, with vigil's SQLSTATE for it.
	var pe *pgconn.PgError
	if !errors.As(failure, &pe) || pe.Code != "58030" ||
		!strings.Contains(pe.Message, "audit journal cannot be written") {
		t.Fatalf("the failed INSERT says %v; want SQLSTATE 58030 naming the journal", failure)
	}
	if conn2, err := pgx.Connect(ctx, e.dsn(t, g.addr)); err == nil {
		conn2.Close(ctx)
		t.Fatal("a new login succeeded while the journal cannot be written")
	} else if !strings.Contains(err.Error(), "journal") {
		t.Fatalf("the refused login does not say why: %v", err)
	}
	logs := g.logs()
	if !regexp.MustCompile(`level=ERROR msg="audit journal cannot be written[^"]*" alert=true`).
		MatchString(logs) {
		t.Fatalf("no alert line for the journal failure:\n%s", logs)
	}
	g.kill()

	// With room again, the journal recovers and vouches for what was
	// acknowledged.
	g2 := startGateway(t, e, 0)
	sqls, _ := journaledSQL(t, e.dataDir, "")
	for _, sql := range acked {
		if !sqls[sql] {
			t.Fatalf("%q was acknowledged but is not in the journal", sql)
		}
	}
	g2.stop(t)
	if out, ok := runVerify(t, e.dataDir); !ok {
		t.Fatalf("verify after the journal failure:\n%s", out)
	}
	t.Logf("%d INSERTs acknowledged before the journal failed with: %v", len(acked), failure)
}

// TestJournalFailureEndsTheConnection: psql runs a script of INSERTs while
// the journal fills up. The session whose answer cannot be made durable
// gets a FATAL error saying why, and vigil then closes the connection, so
// psql ends instead of waiting for an answer that will never come.
func TestJournalFailureEndsTheConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and vigil processes")
	}
	e := startProcEnv(t)
	g := startGateway(t, e, 48<<10)
	var script strings.Builder
	script.WriteString("CREATE TABLE load2 (i int);\n")
	for i := range 2000 {
		fmt.Fprintf(&script, "INSERT INTO load2 VALUES (%d);\n", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgBin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		e.dsn(t, g.addr))
	cmd.Stdin = strings.NewReader(script.String())
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("psql still waiting after 90s: the connection was left open\n%s", out)
	}
	if err == nil || !strings.Contains(string(out), "audit journal cannot be written") {
		t.Fatalf("psql: %v; want it ended by the journal failure, saying so:\n%s", err, out)
	}
}
