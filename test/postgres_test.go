// Package test holds vigil's end-to-end tests: a real PostgreSQL started
// by the test, vigil gateway in process in front of it, tokens from the dev
// issuer, and real clients (psql, pgx, raw sockets).
package test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/pgtest"
)

// script is 20 mixed statements; three of them travel in one query string
// (psql sends statements joined by \; as one Query message).
const script = `CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric);
CREATE INDEX accounts_owner ON accounts (owner);
INSERT INTO accounts (owner, balance) VALUES ('ann', 10), ('bob', 20) RETURNING id, owner;
INSERT INTO accounts (owner, balance) VALUES ('cy', NULL) RETURNING *;
UPDATE accounts SET balance = balance + 1 WHERE owner = 'ann';
SELECT id, owner, balance FROM accounts ORDER BY id;
DELETE FROM accounts WHERE owner = 'cy';
SELECT count(*) FROM accounts;
BEGIN;
UPDATE accounts SET balance = 0;
SELECT sum(balance) FROM accounts;
ROLLBACK;
SELECT sum(balance) FROM accounts;
SELECT * FROM no_such_table;
ALTER TABLE accounts ADD COLUMN note text;
COMMENT ON TABLE accounts IS 'e2e';
SELECT 1 AS one \; SELECT 'two' AS two \; SELECT now() IS NOT NULL AS three;
DROP TABLE accounts;
`

// scriptStatements is how many commands the script holds.
const scriptStatements = 20

func TestPsqlScriptRecordedInOrderAndOutputUnchanged(t *testing.T) {
	e := startEnv(t, envOptions{})
	e.pg.Exec(t, "CREATE DATABASE direct OWNER "+upstreamUser)
	e.pg.Exec(t, "CREATE DATABASE through OWNER "+upstreamUser)

	args := []string{"-v", "ON_ERROR_STOP=0", "-a", "-f", "-"}
	wantOut, wantErr, _ := psql(t, e.pg.Addr(), upstreamUser, upstreamPassword, "direct",
		script, args...)
	tok := e.token(t, identity.TokenSpec{})
	gotOut, gotErr, _ := psql(t, e.addr, "agent", tok, "through", script, args...)
	if gotOut != wantOut {
		t.Errorf("stdout through vigil differs from direct:\n--- direct\n%s\n--- vigil\n%s",
			wantOut, gotOut)
	}
	if gotErr != wantErr {
		t.Errorf("stderr through vigil differs from direct:\n--- direct\n%s\n--- vigil\n%s",
			wantErr, gotErr)
	}

	evs := e.lastSession(t)
	start := evs[0]
	if start.Kind != audit.KindSessionStart || start.Identity == nil ||
		start.Identity.AppID != identity.DevClientID || start.Grant != "role:"+agentRole ||
		start.UpstreamUser != upstreamUser || start.Database != "through" {
		t.Fatalf("session start = %+v", start)
	}
	cs := commands(t, evs)
	if len(cs) != scriptStatements {
		t.Fatalf("%d commands recorded, want %d:\n%s", len(cs), scriptStatements, describe(cs))
	}
	wantSQL := strings.Split(strings.TrimSpace(strings.ReplaceAll(script, " \\; ", ";\n")), "\n")
	for i, c := range cs {
		want := strings.TrimSuffix(wantSQL[i], ";")
		if strings.TrimSpace(strings.TrimSuffix(c.cmd.Command.SQL, ";")) != want {
			t.Errorf("command %d is %q, want %q", i+1, c.cmd.Command.SQL, want)
		}
		if c.cmd.Identity == nil || c.cmd.Identity.OID != identity.DevObjectID {
			t.Errorf("command %d carries no identity", i+1)
		}
	}
	checks := map[int]struct{ status, tag, state string }{
		2:  {audit.StatusOK, "INSERT 0 2", ""},
		5:  {audit.StatusOK, "SELECT 3", ""},
		11: {audit.StatusOK, "ROLLBACK", ""},
		13: {audit.StatusError, "", "42P01"},
		17: {audit.StatusOK, "SELECT 1", ""},
	}
	for i, w := range checks {
		r := cs[i].res
		if r.Status != w.status || r.Tag != w.tag || r.SQLState != w.state {
			t.Errorf("command %d (%s): result %+v, want %+v", i+1, cs[i].cmd.Command.SQL, r, w)
		}
	}
	if c := cs[16].cmd.Command; c.Index != 1 || c.Count != 3 {
		t.Errorf("first statement of the query string: index %d of %d, want 1 of 3",
			c.Index, c.Count)
	}
	end := evs[len(evs)-1]
	if end.Session == nil || end.Session.Closed.Before(end.Session.Opened) ||
		end.Session.Commands != scriptStatements {
		t.Errorf("session end = %+v", end.Session)
	}
}

func TestPgxParametersPreparedAndFailingBatch(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.vigilDSN(e.token(t, identity.TokenSpec{}), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, conn, `CREATE TABLE things (id int PRIMARY KEY, name text, blob bytea,
		a int, b int, c int, d int, e int, f int, g int, h text)`)

	// Eleven parameters, a NULL and a bytea among them.
	blob := []byte{0, 1, 2, 0xff}
	mustExec(t, conn, `INSERT INTO things VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)`,
		1, nil, blob, 4, 5, 6, 7, 8, 9, 10, "eleven")

	// A named prepared statement, reused.
	if _, err := conn.Prepare(ctx, "by_id", "SELECT name, h FROM things WHERE id = $1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		var name *string
		var h string
		if err := conn.QueryRow(ctx, "by_id", 1).Scan(&name, &h); err != nil || h != "eleven" {
			t.Fatalf("prepared run %d: %v %q", i, err, h)
		}
	}

	// A pipelined batch whose second statement fails.
	b := &pgx.Batch{}
	b.Queue("INSERT INTO things (id, h) VALUES (2, 'two')")
	b.Queue("INSERT INTO things (id, h) VALUES (1, 'duplicate')")
	b.Queue("INSERT INTO things (id, h) VALUES (3, 'three')")
	b.Queue("SELECT count(*) FROM things")
	err = conn.SendBatch(ctx, b).Close()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("batch error = %v, want a unique violation", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM things").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows after the failed batch: %d, %v (the batch is one transaction)", n, err)
	}
	conn.Close(ctx)

	cs := commands(t, e.lastSession(t))
	insert := find(t, cs, "INSERT INTO things VALUES")
	p := insert.cmd.Command.Parameters
	if len(p) != 11 {
		t.Fatalf("insert recorded %d parameters, want 11: %+v", len(p), p)
	}
	if p[0].Value != "1" || !p[1].Null || p[2].Value != `\x000102ff` || p[9].Value != "10" ||
		p[10].Value != "eleven" {
		t.Errorf("parameters = %+v", p)
	}
	runs := 0
	for _, c := range cs {
		if c.cmd.Command.Statement == "by_id" && c.cmd.Command.Message == "execute" {
			runs++
			if len(c.cmd.Command.Parameters) != 1 || c.cmd.Command.Parameters[0].Value != "1" {
				t.Errorf("by_id run parameters %+v", c.cmd.Command.Parameters)
			}
		}
	}
	if runs != 3 {
		t.Errorf("by_id ran %d times in the journal, want 3\n%s", runs, describe(cs))
	}
	want := []struct{ sql, status, state string }{
		{"VALUES (2, 'two')", audit.StatusOK, ""},
		{"VALUES (1, 'duplicate')", audit.StatusError, "23505"},
		{"VALUES (3, 'three')", audit.StatusSkipped, ""},
		{"SELECT count(*) FROM things", audit.StatusSkipped, ""},
	}
	i := indexOf(cs, want[0].sql)
	if i < 0 || i+len(want) > len(cs) {
		t.Fatalf("batch not found in the journal:\n%s", describe(cs))
	}
	for k, w := range want {
		c := cs[i+k]
		if !strings.Contains(c.cmd.Command.SQL, w.sql) || c.res.Status != w.status ||
			c.res.SQLState != w.state {
			t.Errorf("batch command %d: %q %+v, want %+v", k+1, c.cmd.Command.SQL, c.res, w)
		}
	}
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func indexOf(cs []cmdResult, sqlPart string) int {
	for i, c := range cs {
		if strings.Contains(c.cmd.Command.SQL, sqlPart) {
			return i
		}
	}
	return -1
}

func find(t *testing.T, cs []cmdResult, sqlPart string) cmdResult {
	t.Helper()
	i := indexOf(cs, sqlPart)
	if i < 0 {
		t.Fatalf("no command with %q:\n%s", sqlPart, describe(cs))
	}
	return cs[i]
}

// rawConn is a client speaking the protocol by hand over TCP.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	fe *pgproto3.Frontend
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, fe: pgproto3.NewFrontend(c, c)}
}

// writeIn writes b in pieces of n bytes, one write each.
func (r *rawConn) writeIn(b []byte, n int) {
	r.t.Helper()
	for len(b) > 0 {
		k := min(n, len(b))
		if _, err := r.c.Write(b[:k]); err != nil {
			r.t.Fatal(err)
		}
		b = b[k:]
		time.Sleep(2 * time.Millisecond) // let each piece travel as its own chunk
	}
}

// until reads messages until one of type T arrives and returns all read.
func (r *rawConn) until(match func(pgproto3.BackendMessage) bool) []pgproto3.BackendMessage {
	r.t.Helper()
	var got []pgproto3.BackendMessage
	for {
		m, err := r.fe.Receive()
		if err != nil {
			r.t.Fatalf("receive after %d messages: %v", len(got), err)
		}
		if dr, ok := m.(*pgproto3.DataRow); ok {
			// Messages are valid only until the next Receive: keep a copy.
			c := &pgproto3.DataRow{Values: make([][]byte, len(dr.Values))}
			for i, v := range dr.Values {
				c.Values[i] = append([]byte(nil), v...)
			}
			m = c
		}
		got = append(got, m)
		if match(m) {
			return got
		}
	}
}

func isReady(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok }

// login performs startup and sends tok, each in pieces of n bytes.
func (r *rawConn) login(tok string, n int) {
	r.t.Helper()
	b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent", "database": "postgres"}}).Encode(nil)
	r.writeIn(b, n)
	m, err := r.fe.Receive()
	if err != nil {
		r.t.Fatal(err)
	}
	if _, ok := m.(*pgproto3.AuthenticationCleartextPassword); !ok {
		r.t.Fatalf("got %T, want AuthenticationCleartextPassword", m)
	}
	b, _ = (&pgproto3.PasswordMessage{Password: tok}).Encode(nil)
	r.writeIn(b, n)
	r.until(isReady)
}

func TestSmallWritesAndManyMessagesInOneWrite(t *testing.T) {
	e := startEnv(t, envOptions{})
	tok := e.token(t, identity.TokenSpec{})

	// Startup, token and Query in pieces of 3 bytes.
	r := dialRaw(t, e.addr)
	r.login(tok, 3)
	q, _ := (&pgproto3.Query{String: "SELECT 41 + 1 AS answer"}).Encode(nil)
	r.writeIn(q, 3)
	got := r.until(isReady)
	if dr, ok := got[1].(*pgproto3.DataRow); !ok || string(dr.Values[0]) != "42" {
		t.Fatalf("answer: %#v", got)
	}
	r.c.Close()

	// Ten extended-protocol queries and a Sync in one write.
	r = dialRaw(t, e.addr)
	r.login(tok, 1<<20)
	var b []byte
	for i := 0; i < 10; i++ {
		b, _ = (&pgproto3.Parse{Query: "SELECT $1::int * 2"}).Encode(b)
		b, _ = (&pgproto3.Bind{Parameters: [][]byte{[]byte(itoa(i))}}).Encode(b)
		b, _ = (&pgproto3.Execute{}).Encode(b)
	}
	b, _ = (&pgproto3.Sync{}).Encode(b)
	b, _ = (&pgproto3.Terminate{}).Encode(b[:len(b):len(b)])
	if _, err := r.c.Write(b); err != nil {
		t.Fatal(err)
	}
	got = r.until(isReady)
	var rows []string
	for _, m := range got {
		if dr, ok := m.(*pgproto3.DataRow); ok {
			rows = append(rows, string(dr.Values[0]))
		}
	}
	if strings.Join(rows, ",") != "0,2,4,6,8,10,12,14,16,18" {
		t.Fatalf("rows %v", rows)
	}
	r.c.Close()

	ss := e.sessions(t)
	if len(ss) != 2 {
		t.Fatalf("%d sessions, want 2", len(ss))
	}
	first := commands(t, e.events(t, ss[0].ID))
	if len(first) != 1 || first[0].cmd.Command.SQL != "SELECT 41 + 1 AS answer" ||
		first[0].res.Tag != "SELECT 1" {
		t.Fatalf("small writes session:\n%s", describe(first))
	}
	second := commands(t, e.events(t, ss[1].ID))
	if len(second) != 10 {
		t.Fatalf("one-write session has %d commands, want 10:\n%s", len(second), describe(second))
	}
	for i, c := range second {
		if c.res.Status != audit.StatusOK || c.cmd.Command.Parameters[0].Value != itoa(i) {
			t.Errorf("command %d: %+v %+v", i, c.cmd.Command, c.res)
		}
	}
}

func TestCopyBothWaysWithLargeRows(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, e.vigilDSN(e.token(t, identity.TokenSpec{}), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.Exec(ctx, "CREATE TABLE docs (id int, body text)").Close(); err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&in, "%d\t%s\n", i, strings.Repeat(string(rune('a'+i)), 9000+i*100))
	}
	want := in.String()
	tag, err := conn.CopyFrom(ctx, strings.NewReader(want), "COPY docs FROM STDIN")
	if err != nil || tag.RowsAffected() != 20 {
		t.Fatalf("copy in: %v %v", tag, err)
	}
	var out bytes.Buffer
	tag, err = conn.CopyTo(ctx, &out, "COPY (SELECT * FROM docs ORDER BY id) TO STDOUT")
	if err != nil || tag.RowsAffected() != 20 {
		t.Fatalf("copy out: %v %v", tag, err)
	}
	if out.String() != want {
		t.Fatalf("copied out %d bytes, want the %d copied in", out.Len(), len(want))
	}
	conn.Close(ctx)

	cs := commands(t, e.lastSession(t))
	if c := find(t, cs, "COPY docs FROM STDIN"); c.res.Tag != "COPY 20" || c.res.Rows != 20 {
		t.Errorf("copy in result %+v", c.res)
	}
	if c := find(t, cs, "TO STDOUT"); c.res.Tag != "COPY 20" {
		t.Errorf("copy out result %+v", c.res)
	}
}

func TestRefusedTokens(t *testing.T) {
	e := startEnv(t, envOptions{})
	other, err := identity.NewDevIssuer(identity.DevTenant)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := other.Mint(identity.TokenSpec{Audience: identity.DevAPIAppID,
		Roles: []string{agentRole}, Header: map[string]any{"kid": e.issuer.KeyID()}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, token, says, code string
	}{
		{"expired", e.token(t, identity.TokenSpec{ExpiresAt: time.Now().Add(-time.Hour),
			NotBefore: time.Now().Add(-2 * time.Hour)}), "expired", "expired"},
		{"another key", forged, "signature", "bad_signature"},
		{"another audience", e.token(t, identity.TokenSpec{Audience: "api://someone-else"}),
			"audience", "wrong_audience"},
		{"no grant", e.token(t, identity.TokenSpec{Roles: []string{"Other.Role"}}),
			"no grant", "no_grant"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(e.sessions(t))
			_, stderr, err := psql(t, e.addr, "agent", c.token, "postgres", "",
				"-c", "SELECT 'must not run'")
			if err == nil {
				t.Fatal("psql succeeded with a refused token")
			}
			if !strings.Contains(stderr, "vigil") || !strings.Contains(stderr, c.says) {
				t.Errorf("psql said %q, want a vigil error saying %q", stderr, c.says)
			}
			ss := e.sessions(t)
			if len(ss) != before+1 {
				t.Fatalf("%d sessions, want %d", len(ss), before+1)
			}
			evs := e.events(t, ss[len(ss)-1].ID)
			if evs[0].Kind != audit.KindAuthFailed || evs[0].ReasonCode != c.code {
				t.Errorf("first event %+v, want auth_failed %s", evs[0], c.code)
			}
			// Which grant would let a caller in is for the audit, not for it.
			if c.code == "no_grant" && (strings.Contains(stderr, agentRole) ||
				!strings.Contains(evs[0].Reason, "wants role:"+agentRole)) {
				t.Errorf("psql said %q, audit %q; want the wanted grant in the audit only",
					stderr, evs[0].Reason)
			}
			for _, ev := range evs {
				if ev.Kind == audit.KindCommand {
					t.Errorf("a command was recorded for a refused login: %+v", ev.Command)
				}
			}
		})
	}
}

func TestUpstreamAuthMethods(t *testing.T) {
	methods := []string{pgtest.AuthTrust, pgtest.AuthPassword, pgtest.AuthMD5, pgtest.AuthSCRAM}
	for _, method := range methods {
		t.Run(method, func(t *testing.T) {
			e := startEnv(t, envOptions{auth: method})
			tok := e.token(t, identity.TokenSpec{})

			// psql logs in with the token and runs as the stored user.
			out, stderr, err := psql(t, e.addr, "agent", tok, "postgres", "", "-At", "-c",
				"SELECT current_user")
			if err != nil || strings.TrimSpace(out) != upstreamUser {
				t.Fatalf("psql: %v %q %q", err, out, stderr)
			}
			evs := e.lastSession(t)
			if evs[0].Kind != audit.KindSessionStart || evs[0].UpstreamUser != upstreamUser ||
				evs[0].Identity.OID != identity.DevObjectID {
				t.Fatalf("session start %+v", evs[0])
			}

			// pgx too, with a long token (several kilobytes of claims).
			big := e.token(t, identity.TokenSpec{Claims: map[string]any{
				"padding": strings.Repeat("p", 6000)}})
			if len(big) < 8000 {
				t.Fatalf("token is only %d bytes", len(big))
			}
			conn, err := pgx.Connect(context.Background(), e.vigilDSN(big, "postgres"))
			if err != nil {
				t.Fatalf("pgx with a %d-byte token: %v", len(big), err)
			}
			var user string
			if err := conn.QueryRow(context.Background(), "SELECT current_user").Scan(&user); err != nil ||
				user != upstreamUser {
				t.Fatalf("pgx: %q %v", user, err)
			}
			conn.Close(context.Background())

			// A client that sends its token with its startup, before the
			// server asks, waits for the request and logs in.
			r := dialRaw(t, e.addr)
			b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
				Parameters: map[string]string{"user": "agent", "database": "postgres"}}).Encode(nil)
			b, _ = (&pgproto3.PasswordMessage{Password: tok}).Encode(b)
			r.writeIn(b, len(b))
			for _, m := range r.until(isReady) {
				if er, ok := m.(*pgproto3.ErrorResponse); ok {
					t.Fatalf("startup and token in one write: %s %s", er.Severity, er.Message)
				}
			}
			r.c.Close()

			// A refused token never reaches a login upstream.
			_, stderr, err = psql(t, e.addr, "agent", "not-a-token", "postgres", "",
				"-c", "SELECT 1")
			if err == nil || !strings.Contains(stderr, "vigil: access token refused") {
				t.Fatalf("a bad token: %v %q", err, stderr)
			}
		})
	}
}

func TestRoleChangingStartupRefused(t *testing.T) {
	e := startEnv(t, envOptions{})
	tok := e.token(t, identity.TokenSpec{})
	host, port, _ := net.SplitHostPort(e.addr)
	for _, opts := range []string{"-c role=postgres", "-c session_authorization=postgres"} {
		dsn := fmt.Sprintf("host=%s port=%s user=agent dbname=postgres sslmode=disable "+
			"password=%s options='%s'", host, port, tok, opts)
		_, err := pgconn.Connect(context.Background(), dsn)
		if err == nil || !strings.Contains(err.Error(), "set the role are not allowed") {
			t.Fatalf("options %q: err = %v", opts, err)
		}
	}
	evs := e.lastSession(t)
	if evs[0].Kind != audit.KindAuthFailed || evs[0].ReasonCode != "startup_parameter" {
		t.Fatalf("first event %+v", evs[0])
	}
}

// An error seen before the client sends the rest of its batch: the server
// discards everything up to Sync, and the journal says so.
func TestPipelineErrorBeforeRestOfBatch(t *testing.T) {
	e := startEnv(t, envOptions{})
	r := dialRaw(t, e.addr)
	r.login(e.token(t, identity.TokenSpec{}), 1<<20)

	extended := func(b []byte, sql string) []byte {
		b, _ = (&pgproto3.Parse{Query: sql}).Encode(b)
		b, _ = (&pgproto3.Bind{}).Encode(b)
		b, _ = (&pgproto3.Execute{}).Encode(b)
		return b
	}
	b := extended(nil, "SELECT 1/0")
	b, _ = (&pgproto3.Flush{}).Encode(b)
	r.c.Write(b)
	got := r.until(func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.ErrorResponse)
		return ok
	})
	if e, _ := got[len(got)-1].(*pgproto3.ErrorResponse); e.Code != "22012" {
		t.Fatalf("got %+v", got)
	}
	b = extended(nil, "SELECT 'discarded'")
	b, _ = (&pgproto3.Sync{}).Encode(b)
	r.c.Write(b)
	got = r.until(isReady)
	if len(got) != 1 {
		t.Fatalf("the server answered the discarded statement: %#v", got)
	}
	// The session goes on after the Sync.
	b = extended(nil, "SELECT 'after'")
	b, _ = (&pgproto3.Sync{}).Encode(b)
	b, _ = (&pgproto3.Terminate{}).Encode(b)
	r.c.Write(b)
	r.until(isReady)
	r.c.Close()

	cs := commands(t, e.lastSession(t))
	want := []struct{ sql, status string }{
		{"SELECT 1/0", audit.StatusError},
		{"SELECT 'discarded'", audit.StatusSkipped},
		{"SELECT 'after'", audit.StatusOK},
	}
	if len(cs) != len(want) {
		t.Fatalf("commands:\n%s", describe(cs))
	}
	for i, w := range want {
		if cs[i].cmd.Command.SQL != w.sql || cs[i].res.Status != w.status {
			t.Errorf("command %d: %q %s, want %+v", i+1, cs[i].cmd.Command.SQL, cs[i].res.Status, w)
		}
	}
}

// TestPendingLoginsBounded: clients that send a startup and never their
// token each hold an upstream backend; past max_pending_logins vigil
// refuses further logins with an error that says why, and once those
// clients go, logins work again.
func TestPendingLoginsBounded(t *testing.T) {
	e := startEnv(t, envOptions{connYAML: func(testing.TB, *pgtest.Cluster) string {
		return "    max_pending_logins: 3\n"
	}})
	var silent []*rawConn
	for range 3 {
		r := dialRaw(t, e.addr)
		b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": "agent", "database": "postgres"}}).Encode(nil)
		r.writeIn(b, len(b))
		// The server's password request arrives: the login is in progress.
		r.until(func(m pgproto3.BackendMessage) bool {
			_, ok := m.(*pgproto3.AuthenticationCleartextPassword)
			return ok
		})
		silent = append(silent, r)
	}
	tok := e.token(t, identity.TokenSpec{})
	_, stderr, err := psql(t, e.addr, "agent", tok, "postgres", "", "-c", "SELECT 1")
	if err == nil || !strings.Contains(stderr, "too many logins are in progress") {
		t.Fatalf("a fourth login while three wait: %v\n%s; want the limit named", err, stderr)
	}
	for _, r := range silent {
		r.c.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, stderr, err := psql(t, e.addr, "agent", tok, "postgres", "", "-c", "SELECT 1")
		if err == nil && strings.Contains(out, "1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logins still refused 30s after the silent clients left: %v\n%s", err, stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMessagesOverFourMegabytes: a statement and a row larger than gRPC's
// default message limit pass whole, both ways, and are recorded.
func TestMessagesOverFourMegabytes(t *testing.T) {
	e := startEnv(t, envOptions{})
	conn, err := pgx.Connect(context.Background(), e.vigilDSN(e.token(t, identity.TokenSpec{}),
		"postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	big := strings.Repeat("x", 5<<20)
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT length('"+big+"')",
		pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("a 5 MiB statement: %v, length %d", err, n)
	}
	var row string
	if err := conn.QueryRow(context.Background(), "SELECT repeat('ab', 3000000)").Scan(
		&row); err != nil || len(row) != 6000000 {
		t.Fatalf("a 6 MB row: %v, %d bytes", err, len(row))
	}
	conn.Close(context.Background())
	cs := commands(t, e.lastSession(t))
	if len(cs) != 2 || len(cs[0].cmd.Command.SQL) != len(big)+len("SELECT length('')") ||
		cs[1].res == nil || cs[1].res.Status != "ok" {
		t.Errorf("journal: %s", describe(cs)[:min(400, len(describe(cs)))])
	}
}

// TestMalformedRequestsRecordedNotRun: a Query vigil cannot decode (an
// embedded NUL hiding a second statement) is recorded as a protocol
// violation and never reaches the server; the client gets a FATAL error
// naming it, and the connection closes. A
// message type no client sends is recorded and left to the server, which
// refuses it with its own FATAL error.
func TestMalformedRequestsRecordedNotRun(t *testing.T) {
	e := startEnv(t, envOptions{policy: "enforce"})
	e.pg.Exec(t, "CREATE TABLE keep (id int); GRANT ALL ON keep TO "+upstreamUser)
	tok := e.token(t, identity.TokenSpec{})

	r := dialRaw(t, e.addr)
	r.login(tok, 1<<20)
	q := []byte("select 1\x00drop table keep\x00")
	msg := append([]byte{'Q', 0, 0, 0, 0}, q...)
	binary.BigEndian.PutUint32(msg[1:], uint32(4+len(q)))
	r.writeIn(msg, len(msg))
	// The client is told, as PostgreSQL tells it, and the connection ends.
	m, err := r.fe.Receive()
	if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Severity != "FATAL" ||
		e.Code != "08P01" || !strings.Contains(e.Message, "malformed") {
		t.Fatalf("after a malformed Query: %#v, %v; want FATAL 08P01 naming it", m, err)
	}
	for err == nil {
		m, err = r.fe.Receive()
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			t.Fatal("the session went on after the FATAL error")
		}
	}
	evs := e.lastSession(t)
	var found bool
	for _, c := range commands(t, evs) {
		if c.cmd.Command.Message == "protocol_violation" &&
			strings.Contains(c.cmd.Command.SQL, "drop table keep") {
			found = true
		}
	}
	if !found || !strings.Contains(evs[len(evs)-1].Reason, "malformed") {
		t.Errorf("the malformed Query is not recorded, or the end reason does not say so:\n%s",
			describe(commands(t, evs)))
	}
	conn, err := pgx.Connect(context.Background(), e.pg.SocketDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "SELECT count(*) FROM keep"); err != nil {
		t.Fatalf("table keep after the malformed Query: %v", err)
	}

	r = dialRaw(t, e.addr)
	r.login(tok, 1<<20)
	r.writeIn([]byte{'Z', 0, 0, 0, 5, 'I'}, 6)
	var pgErr *pgproto3.ErrorResponse
	for pgErr == nil {
		m, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("no error from the server for message type Z: %v", err)
		}
		pgErr, _ = m.(*pgproto3.ErrorResponse)
	}
	if pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "invalid frontend message") {
		t.Errorf("server's answer to type Z: %s %s", pgErr.Severity, pgErr.Message)
	}
	r.c.Close() // as clients do after a FATAL error
	found = false
	for _, c := range commands(t, e.lastSession(t)) {
		found = found || c.cmd.Command.Message == "protocol_violation"
	}
	if !found {
		t.Error("message type Z is not recorded")
	}
}
