// Package pgtest starts throwaway PostgreSQL 15 clusters for tests.
//
// Start runs initdb into a fresh directory, configures pg_hba.conf for the
// requested authentication method on 127.0.0.1/32, starts the server with
// pg_ctl on a free loopback port and stops it (immediate mode) when the
// test ends. The server listens on 127.0.0.1 and on a unix socket inside
// the cluster's directory; nothing else is touched.
//
// PostgreSQL refuses to run as root. When the test runs as root, the
// cluster runs as an unprivileged operating-system user: $PGTEST_OS_USER,
// else "vigiltest" (created by `make deps`), else "postgres" (created by
// Debian's postgresql-common package).
//
// The binaries are taken from $PGTEST_BINDIR, else
// /usr/lib/postgresql/15/bin. When they are missing the test is skipped,
// unless $PGTEST_REQUIRE is set (as `make test` does), in which case it
// fails: CI must never skip silently.
package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultBinDir is where Debian's postgresql-15 package puts the server
// binaries.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Superuser is the name of the cluster's superuser. Its password is
// SuperPassword; over the unix socket it needs none.
const (
	Superuser     = "postgres"
	SuperPassword = "postgres"
)

// Authentication methods accepted in Options.Auth.
const (
	AuthTrust    = "trust"
	AuthPassword = "password"
	AuthMD5      = "md5"
	AuthSCRAM    = "scram-sha-256"
)

// maxSocketPath bounds the unix socket path (sun_path is 108 bytes,
// including the terminating NUL).
const maxSocketPath = 100

// startAttempts bounds retries when another process takes the chosen port
// between choosing it and the server binding it.
const startAttempts = 3

// Options says how the cluster is set up. The zero value gives trust
// authentication and default settings.
type Options struct {
	// Auth is the pg_hba.conf method for TCP connections from 127.0.0.1:
	// trust (the default), password, md5 or scram-sha-256.
	// password_encryption is set to match (md5 for md5, scram-sha-256
	// otherwise), so passwords set later are stored in the right form.
	Auth string

	// Settings are extra postgresql.conf parameters, name to value, written
	// verbatim after pgtest's own (so they win).
	Settings map[string]string
}

// Cluster is a running throwaway PostgreSQL server. Its fields are set by
// Start and must not be changed.
type Cluster struct {
	// Host is the TCP address the server listens on: 127.0.0.1.
	Host string
	// Port is the TCP port, also used in the unix socket's name.
	Port int
	// Dir holds the data directory (Dir/data), the log (Dir/server.log) and
	// the unix socket.
	Dir string
	// SocketDir is the unix socket directory.
	SocketDir string
	// Auth is the pg_hba.conf method in use for TCP connections.
	Auth string

	binDir string
	osUser *osUser
}

// osUser is the operating-system account the server runs as when the test
// runs as root.
type osUser struct {
	name     string
	uid, gid uint32
}

// Start initialises and starts a cluster, and stops it when tb ends. It
// skips the test when the PostgreSQL binaries are missing (see the package
// doc) and fails it on any other problem.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Auth == "" {
		opts.Auth = AuthTrust
	}
	if !slices.Contains([]string{AuthTrust, AuthPassword, AuthMD5, AuthSCRAM}, opts.Auth) {
		tb.Fatalf("pgtest: auth %q: want trust, password, md5 or scram-sha-256", opts.Auth)
	}
	bin := binDir(tb)

	c := &Cluster{Host: "127.0.0.1", Auth: opts.Auth, binDir: bin}
	if os.Geteuid() == 0 {
		u, err := serverUser()
		if err != nil {
			tb.Fatal(err)
		}
		c.osUser = u
	}
	c.Dir = c.makeDir(tb)
	c.SocketDir = c.Dir

	// Initialise the data directory.
	if err := c.initdb(); err != nil {
		tb.Fatal(err)
	}
	if err := c.writeHBA(); err != nil {
		tb.Fatal(err)
	}

	// Start on a free port; retry if another process took it meanwhile.
	var err error
	for range startAttempts {
		if c.Port, err = freePort(); err != nil {
			tb.Fatal(err)
		}
		if err = c.writeConf(opts); err != nil {
			tb.Fatal(err)
		}
		if err = c.start(); err == nil || !strings.Contains(err.Error(), "could not bind") {
			break
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.stop(tb) })
	return c
}

// Addr is the server's TCP address, "127.0.0.1:PORT".
func (c *Cluster) Addr() string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// DSN is a postgres:// URL for a TCP connection to db as user with
// password (omitted when empty), with TLS disabled.
func (c *Cluster) DSN(user, password, db string) string {
	return DSN(c.Addr(), user, password, db)
}

// DSN is a postgres:// URL for a TCP connection to addr, with TLS disabled.
// Tests use it to reach vigil's listeners as well as the cluster itself.
func DSN(addr, user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: addr, Path: "/" + db,
		RawQuery: "sslmode=disable"}
	if password != "" {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

// SocketDSN is a keyword/value connection string for the superuser over
// the unix socket, which pg_hba.conf trusts whatever Options.Auth says.
func (c *Cluster) SocketDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		c.SocketDir, c.Port, Superuser, db)
}

// Exec runs sql (one or more statements) as the superuser in database
// postgres, over the unix socket, and fails the test on error.
func (c *Cluster) Exec(tb testing.TB, sql string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.SocketDSN("postgres"))
	if err != nil {
		tb.Fatalf("pgtest: connect as superuser: %v", err)
	}
	defer conn.Close(context.Background())
	// Simple protocol so that a script of several statements is accepted.
	if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		tb.Fatalf("pgtest: exec %q: %v", shorten(sql), err)
	}
}

// CreateUser creates a login role with password (none when empty),
// stored as password_encryption says, and lets it create objects in
// schema public of database postgres (PostgreSQL 15 no longer grants that
// to everyone).
func (c *Cluster) CreateUser(tb testing.TB, name, password string) {
	tb.Helper()
	id := pgx.Identifier{name}.Sanitize()
	sql := "CREATE ROLE " + id + " LOGIN"
	if password != "" {
		sql += " PASSWORD " + quoteLiteral(password)
	}
	c.Exec(tb, sql+"; GRANT ALL ON SCHEMA public TO "+id)
}

// LogTail returns up to the last n bytes of the server log, for failure
// messages.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(c.Dir, "server.log"))
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// binDir returns the directory of the PostgreSQL binaries, or skips (or
// fails, under PGTEST_REQUIRE) when they are missing.
func binDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("PGTEST_BINDIR")
	if dir == "" {
		dir = DefaultBinDir
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			msg := fmt.Sprintf("pgtest: PostgreSQL 15 server binaries not found in %s "+
				"(%v); run `make deps` (installs postgresql-15) or set PGTEST_BINDIR", dir, err)
			if os.Getenv("PGTEST_REQUIRE") != "" {
				tb.Fatal(msg)
			}
			tb.Skip(msg)
		}
	}
	return dir
}

// serverUser picks the unprivileged account the server runs as under root.
func serverUser() (*osUser, error) {
	names := []string{"vigiltest", "postgres"}
	if n := os.Getenv("PGTEST_OS_USER"); n != "" {
		names = []string{n}
	}
	for _, n := range names {
		u, err := user.Lookup(n)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &osUser{name: n, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses root: none of "+
		"the users %s exists to run the server; run `make deps` (creates vigiltest) or set "+
		"PGTEST_OS_USER", strings.Join(names, ", "))
}

// makeDir creates the cluster's directory. It is t.TempDir() when the test
// runs unprivileged and the socket path fits; otherwise a directory under
// /tmp owned by the server's user, removed when the test ends.
func (c *Cluster) makeDir(tb testing.TB) string {
	tb.Helper()
	if c.osUser == nil {
		d := tb.TempDir()
		if len(filepath.Join(d, ".s.PGSQL.65535")) <= maxSocketPath {
			return d
		}
	}
	d, err := os.MkdirTemp("/tmp", "pgtest-")
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	if c.osUser != nil {
		if err := os.Chown(d, int(c.osUser.uid), int(c.osUser.gid)); err != nil {
			tb.Fatalf("pgtest: %v", err)
		}
	}
	return d
}

// run runs one PostgreSQL binary as the server's user and returns its
// combined output in the error when it fails.
func (c *Cluster) run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGTZ=UTC")
	if c.osUser != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: c.osUser.uid, Gid: c.osUser.gid},
		}
		cmd.Env = append(cmd.Env, "HOME="+c.Dir, "USER="+c.osUser.name)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pgtest: %s %s: %w\n%s", name, strings.Join(args, " "), err,
			out.String())
	}
	return nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

// initdb creates the data directory with the superuser's password.
func (c *Cluster) initdb() error {
	pwfile := filepath.Join(c.Dir, "superuser.pw")
	if err := c.writeFile(pwfile, SuperPassword+"\n"); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	return c.run("initdb", "-D", c.dataDir(), "-U", Superuser, "--pwfile", pwfile,
		"-E", "UTF8", "--no-locale", "--auth-local=trust", "--auth-host=reject", "--no-sync")
}

// writeHBA trusts the unix socket (for Exec) and uses the requested method
// for TCP from 127.0.0.1. Nothing else may connect.
func (c *Cluster) writeHBA() error {
	hba := "# written by pgtest\n" +
		"local all all trust\n" +
		"host  all all 127.0.0.1/32 " + c.Auth + "\n"
	return c.writeFile(filepath.Join(c.dataDir(), "pg_hba.conf"), hba)
}

// writeConf appends pgtest's settings to postgresql.conf. Later lines win,
// so rewriting on a retry only adds a new port.
func (c *Cluster) writeConf(opts Options) error {
	enc := AuthSCRAM
	if c.Auth == AuthMD5 {
		enc = AuthMD5
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n# pgtest\nlisten_addresses = '127.0.0.1'\nport = %d\n", c.Port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", quoteLiteral(c.SocketDir))
	fmt.Fprintf(&b, "password_encryption = %s\n", quoteLiteral(enc))
	b.WriteString("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
	b.WriteString("max_connections = 100\nshared_buffers = 32MB\n")
	keys := make([]string, 0, len(opts.Settings))
	for k := range opts.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteLiteral(opts.Settings[k]))
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"),
		os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// start runs pg_ctl start and waits until the server accepts connections.
func (c *Cluster) start() error {
	err := c.run("pg_ctl", "start", "-w", "-t", "60", "-D", c.dataDir(),
		"-l", filepath.Join(c.Dir, "server.log"))
	if err != nil {
		return fmt.Errorf("%w\nserver log:\n%s", err, c.LogTail(4000))
	}
	return nil
}

// stop stops the server in immediate mode, showing its log when the test
// failed.
func (c *Cluster) stop(tb testing.TB) {
	if tb.Failed() {
		tb.Logf("pgtest: server log (tail):\n%s", c.LogTail(4000))
	}
	if err := c.run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", c.dataDir()); err != nil {
		tb.Errorf("pgtest: %v", err)
	}
}

// writeFile writes a file owned by the server's user.
func (c *Cluster) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if c.osUser != nil {
		if err := os.Chown(path, int(c.osUser.uid), int(c.osUser.gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before the server binds it; Start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// quoteLiteral quotes s as an SQL (and postgresql.conf) string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// shorten cuts long SQL for error messages.
func shorten(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
