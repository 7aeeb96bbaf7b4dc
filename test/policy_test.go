package test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// policyEnv is an environment enforcing the default bundle, with a
// customers table holding personal data, owned by the superuser and
// granted to the upstream user.
func policyEnv(t *testing.T) *env {
	t.Helper()
	e := startEnv(t, envOptions{policy: "enforce"})
	e.pg.Exec(t, `CREATE TABLE customers (id int PRIMARY KEY, name text, email text,
		card_number text, note text, balance int);
	INSERT INTO customers VALUES
		(1, 'Ann', 'ann@example.com', '4111111111111111', 'vip', 10),
		(2, 'Bob', 'bob@example.org', '5500005555555559', 'call bob@example.org', 20),
		(3, 'Cy', NULL, NULL, 'none', 30);
	GRANT ALL ON customers TO `+upstreamUser)
	return e
}

// customers counts the rows, as the superuser, bypassing vigil.
func (e *env) customers(t *testing.T) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pg.SocketDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM customers").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func denied(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42501" && strings.HasPrefix(pe.Message, "vigil:")
}

func TestDeleteWithoutWhereDeniedEveryWay(t *testing.T) {
	e := policyEnv(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.vigilDSN(e.token(t, identity.TokenSpec{}), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	simple := pgx.QueryExecModeSimpleProtocol
	cases := []struct {
		name string
		sql  string
		mode pgx.QueryExecMode
	}{
		{"simple query", "DELETE FROM customers", simple},
		{"extended protocol", "DELETE FROM customers", pgx.QueryExecModeExec},
		{"prepared", "DELETE FROM customers", pgx.QueryExecModeCacheStatement},
		{"in a CTE", "WITH d AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM d", simple},
		{"behind a comment", "/* cleanup */ -- really\nDELETE FROM customers", simple},
		{"second of a query string", "SELECT 1; DELETE FROM customers", simple},
		{"first statement would write", "UPDATE customers SET balance = 0 WHERE id = 1; " +
			"DELETE FROM customers", simple},
		{"EXPLAIN ANALYZE", "EXPLAIN ANALYZE DELETE FROM customers", simple},
		{"WHERE true", "DELETE FROM customers WHERE true", simple},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := conn.Exec(ctx, c.sql, c.mode)
			if !denied(err) {
				t.Fatalf("err = %v, want vigil's 42501", err)
			}
			if n := e.customers(t); n != 3 {
				t.Fatalf("%d customers left: the statement ran", n)
			}
			// The session goes on working.
			var one int
			if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("session unusable after the denial: %v", err)
			}
		})
	}

	// A transaction is aborted as PostgreSQL would abort it.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM customers"); !denied(err) {
		t.Fatalf("in a transaction: %v", err)
	}
	_, err = tx.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "25P02" {
		t.Fatalf("after a denial in a transaction: %v, want 25P02 (transaction aborted)", err)
	}
	tx.Rollback(ctx)

	// An extended-protocol batch is skipped up to its Sync.
	b := &pgx.Batch{}
	b.Queue("SELECT 1")
	b.Queue("DELETE FROM customers")
	b.Queue("SELECT 2")
	if err := conn.SendBatch(ctx, b).Close(); !denied(err) {
		t.Fatalf("batch: %v", err)
	}
	if n := e.customers(t); n != 3 {
		t.Fatalf("%d customers left after the batch", n)
	}
	conn.Close(ctx)

	// The journal says what was denied, by which rule, under which policy.
	cs := commands(t, e.lastSession(t))
	deniedCount := 0
	for _, c := range cs {
		if c.res.Status == audit.StatusDenied {
			deniedCount++
			if c.res.SQLState != "42501" {
				t.Errorf("denied command %q has sqlstate %q", c.cmd.Command.SQL, c.res.SQLState)
			}
		}
		if d := c.cmd.Decision; d == nil || d.Revision == "" {
			t.Errorf("command %q has no policy decision recorded", c.cmd.Command.SQL)
		}
	}
	if deniedCount < len(cases)+2 {
		t.Errorf("%d denied commands in the journal, want at least %d:\n%s", deniedCount,
			len(cases)+2, describe(cs))
	}
	del := find(t, cs, "WITH d AS (DELETE")
	if del.cmd.Decision.Allowed || len(del.cmd.Decision.Rules) == 0 {
		t.Errorf("CTE decision %+v", del.cmd.Decision)
	}
}

func TestMaskedColumnsNeverInClear(t *testing.T) {
	e := policyEnv(t)
	ctx := context.Background()
	tok := e.token(t, identity.TokenSpec{})
	clear := []string{"ann@example.com", "bob@example.org", "4111111111111111", "5500005555555559"}
	leaks := func(t *testing.T, where string, out []byte) {
		t.Helper()
		for _, c := range clear {
			if bytes.Contains(out, []byte(c)) {
				t.Errorf("%s: %q reached the client in clear", where, c)
			}
		}
	}

	// psql: text format, simple protocol.
	out, stderr, err := psql(t, e.addr, "agent", tok, "postgres", "", "-At", "-c",
		"SELECT id, email, card_number, note FROM customers ORDER BY id")
	if err != nil {
		t.Fatalf("psql: %v %s", err, stderr)
	}
	leaks(t, "psql", []byte(out))
	if !strings.Contains(out, "1|a***@example.com|[REDACTED]|vip") {
		t.Errorf("psql output %q", out)
	}

	// pgx: extended protocol, binary result format where pgx asks for it.
	conn, err := pgx.Connect(ctx, e.vigilDSN(tok, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	rows, err := conn.Query(ctx, "SELECT email, card_number, balance FROM customers WHERE id < $1", 10)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var email, card *string
		var bal int
		if err := rows.Scan(&email, &card, &bal); err != nil {
			t.Fatal(err)
		}
		if email != nil {
			all.WriteString(*email + "\n")
		}
		if card != nil {
			all.WriteString(*card + "\n")
		}
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	leaks(t, "pgx", all.Bytes())
	if !strings.Contains(all.String(), "[REDACTED]") {
		t.Errorf("pgx saw %q", all.String())
	}

	// COPY TO STDOUT, text format.
	var copied bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &copied, "COPY customers TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	leaks(t, "COPY", copied.Bytes())
	if !strings.Contains(copied.String(), "a***@example.com") {
		t.Errorf("COPY output %q", copied.String())
	}
	var q bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &q,
		"COPY (SELECT note, email FROM customers ORDER BY id) TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	leaks(t, "COPY (query)", q.Bytes())
	// Binary COPY cannot be masked and is refused.
	_, err = conn.PgConn().CopyTo(ctx, &bytes.Buffer{}, "COPY customers TO STDOUT (FORMAT binary)")
	if !denied(err) {
		t.Errorf("binary COPY: %v", err)
	}
	conn.Close(ctx)

	// Portal suspension: Execute with a row limit, rows masked in every part.
	r := dialRaw(t, e.addr)
	r.login(tok, 1<<20)
	var b []byte
	b, _ = (&pgproto3.Parse{Query: "SELECT email FROM customers ORDER BY id"}).Encode(b)
	b, _ = (&pgproto3.Bind{}).Encode(b)
	b, _ = (&pgproto3.Execute{MaxRows: 1}).Encode(b)
	b, _ = (&pgproto3.Execute{MaxRows: 1}).Encode(b)
	b, _ = (&pgproto3.Execute{}).Encode(b)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	r.c.Write(b)
	got := r.until(isReady)
	var vals bytes.Buffer
	suspended := 0
	for _, m := range got {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			vals.Write(m.Values[0])
			vals.WriteByte('\n')
		case *pgproto3.PortalSuspended:
			suspended++
		case *pgproto3.RowDescription:
			t.Errorf("vigil's own Describe reached the client")
		}
	}
	if suspended != 2 {
		t.Errorf("%d PortalSuspended, want 2: %#v", suspended, got)
	}
	leaks(t, "portal suspension", vals.Bytes())
	if !strings.Contains(vals.String(), "a***@example.com") {
		t.Errorf("suspended rows %q", vals.String())
	}
	r.c.Close()

	// The journal counts what was masked.
	ss := e.sessions(t)
	psqlSession := commands(t, e.events(t, ss[0].ID))
	sel := find(t, psqlSession, "SELECT id, email")
	if len(sel.res.Masked) == 0 {
		t.Errorf("no masking summary: %+v", sel.res)
	}
}

func TestPgbenchPreparedUnderDefaultPolicy(t *testing.T) {
	e := policyEnv(t)
	tok := e.token(t, identity.TokenSpec{})
	host, port, _ := strings.Cut(e.addr, ":")
	script := t.TempDir() + "/script.sql"
	run := func(sql string) (string, error) {
		if err := writeFile(script, sql); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(pgBin("pgbench"), "-n", "-M", "prepared", "-t", "20", "-c", "2",
			"-h", host, "-p", port, "-U", "agent", "-f", script, "postgres")
		cmd.Env = append(cmd.Environ(), "PGPASSWORD="+tok, "PGSSLMODE=disable")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		done := make(chan error, 1)
		cmd.Start()
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return out.String(), err
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Fatal("pgbench did not finish")
		}
		return "", nil
	}
	out, err := run("\\set id random(1, 3)\nSELECT email, balance FROM customers WHERE id = :id;\n")
	if err != nil {
		t.Fatalf("pgbench reads: %v\n%s", err, out)
	}
	out, _ = run("DELETE FROM customers;\n")
	if !strings.Contains(out, "vigil: denied by policy") {
		t.Fatalf("pgbench delete: %s", out)
	}
	if n := e.customers(t); n != 3 {
		t.Fatalf("%d customers left after pgbench", n)
	}
}

// TestFunctionCallJudged: the fast-path FunctionCall message (libpq's
// large-object calls; psql's \lo_import) is judged like SQL. The default
// policy refuses it to agents: nothing is created, the session goes on
// and the refusal is recorded. A person's token may use it.
func TestFunctionCallJudged(t *testing.T) {
	e := startEnv(t, envOptions{policy: "enforce"})
	file := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(file, []byte("large object"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(file), 0o755)
	largeObjects := func() int {
		conn, err := pgx.Connect(context.Background(), e.pg.SocketDSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var n int
		if err := conn.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_largeobject_metadata").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	out, stderr, err := psql(t, e.addr, "agent", e.token(t, identity.TokenSpec{}), "postgres",
		"", "-c", `\lo_import `+file, "-c", "SELECT 7 AS after")
	if err == nil && !strings.Contains(stderr, "fast-path function call") {
		t.Fatalf("agent's \\lo_import: want the fast-path refusal; got %v\n%s%s", err, out, stderr)
	}
	if !strings.Contains(stderr, "fast-path function call") {
		t.Errorf("agent's \\lo_import error does not name the rule:\n%s", stderr)
	}
	if n := largeObjects(); n != 0 {
		t.Errorf("%d large objects exist after the agent's refused \\lo_import", n)
	}
	var fn, deniedFn int
	for _, c := range commands(t, e.lastSession(t)) {
		if c.cmd.Command.Message == "function_call" {
			fn++
			if c.res != nil && c.res.Status == audit.StatusDenied {
				deniedFn++
			}
		}
	}
	if fn == 0 || deniedFn != fn {
		t.Errorf("%d function calls recorded, %d denied; want at least one, all denied", fn,
			deniedFn)
	}

	// A person (a user token, not an agent) with the same role may.
	person := e.token(t, identity.TokenSpec{Name: "Pat", UPN: "pat@example.com",
		OID: "5a1c0e7e-0000-4000-8000-0000000000a7"})
	out, stderr, err = psql(t, e.addr, "agent", person, "postgres", "", "-c", `\lo_import `+file)
	if err != nil || !strings.Contains(out, "lo_import") {
		t.Fatalf("person's \\lo_import: %v\n%s%s", err, out, stderr)
	}
	if n := largeObjects(); n != 1 {
		t.Errorf("%d large objects after the person's \\lo_import; want 1", n)
	}
}

// TestCardNumbersFoundInAnyText: values the detectors find are masked
// wherever they are: several in one value, next to an e-mail address, in
// a row rendered as text or JSON.
func TestCardNumbersFoundInAnyText(t *testing.T) {
	e := policyEnv(t)
	conn, err := pgx.Connect(context.Background(), e.vigilDSN(e.token(t, identity.TokenSpec{}),
		"postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		"SELECT string_agg(card_number, ' ' ORDER BY id) FROM customers",
		"SELECT '4111111111111111 5500005555555559'",
		"SELECT 'a@b.com,4111111111111111'",
		"SELECT json_agg(c ORDER BY c.id)::text FROM customers c",
		"SELECT row(c.*)::text FROM customers c WHERE id = 1",
	} {
		var got string
		if err := conn.QueryRow(context.Background(), sql).Scan(&got); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		for _, card := range []string{"4111111111111111", "5500005555555559"} {
			if strings.Contains(got, card) {
				t.Errorf("%s: card %s in clear in %q", sql, card, got)
			}
		}
		if strings.Contains(got, "a@b.com") {
			t.Errorf("%s: e-mail in clear in %q", sql, got)
		}
	}
}

// TestDeleteWithoutWhereDeniedInPsql: the same denial as psql users see
// it, in a script that goes on after it: the error names the rule, the
// table is untouched, and the next statement runs.
func TestDeleteWithoutWhereDeniedInPsql(t *testing.T) {
	e := policyEnv(t)
	out, stderr, err := psql(t, e.addr, "agent", e.token(t, identity.TokenSpec{}), "postgres",
		"DELETE FROM customers;\n/* tidy up */ DELETE FROM customers;\n"+
			"SELECT 1; DELETE FROM customers;\nSELECT 'still here' AS after;\n")
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, stderr)
	}
	if n := strings.Count(stderr, "ERROR:  vigil: denied by policy"); n != 3 ||
		!strings.Contains(stderr, "deny_delete_without_where") {
		t.Errorf("psql stderr has %d denials; want 3 naming the rule:\n%s", n, stderr)
	}
	if !strings.Contains(out, "still here") {
		t.Errorf("the statement after the denials did not run:\n%s", out)
	}
	if n := e.customers(t); n != 3 {
		t.Errorf("customers has %d rows; want 3", n)
	}
}
