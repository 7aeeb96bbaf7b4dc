package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/pgtest"
	"github.com/vigilaudit/vigil/policy/approvals"
)

// Approvals end to end: the default policy holds DROP TABLE and TRUNCATE
// by agents for group:dba; approvers decide through the CLI, the HTTP API
// and the page, with their own tokens.

const (
	dbaOID      = "5a1c0e7e-0000-4000-8000-00000000d8a1"
	outsiderOID = "5a1c0e7e-0000-4000-8000-0000000000b0"
)

// azureCLI is the client id of the Azure CLI, through which people get
// their tokens; it is not the agent's application.
const azureCLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"

// approverToken mints a user token for a person, in group dba or not.
func (e *env) approverToken(t *testing.T, oid string, groups ...string) string {
	t.Helper()
	return e.token(t, identity.TokenSpec{OID: oid, AppID: azureCLI, Roles: []string{},
		Groups: groups,
		Name:   "Person " + oid[len(oid)-4:], UPN: "p" + oid[len(oid)-4:] + "@example.com"})
}

// startApprovalsEnv starts a gateway enforcing the default policy (or
// policyDir) with extra top-level YAML, and a table to drop.
func startApprovalsEnv(t *testing.T, policyDir, extra string) *env {
	t.Helper()
	e := startEnv(t, envOptions{policy: "enforce", policyDir: policyDir, extraYAML: extra})
	e.pg.Exec(t, `CREATE TABLE victims (id int); INSERT INTO victims VALUES (1), (2), (3);
		ALTER TABLE victims OWNER TO `+upstreamUser)
	return e
}

// policyWithTimeout copies the default bundle with the approval timeout
// set to d.
func policyWithTimeout(t *testing.T, d string) string {
	t.Helper()
	return policyWith(t, `"timeout": "15m"`, `"timeout": "`+d+`"`)
}

// policyWith copies the default bundle with one setting of data.json
// replaced.
func policyWith(t *testing.T, old, new string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"vigil.rego", "data.json"} {
		b, err := os.ReadFile(filepath.Join("..", "policy", "bundle", name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "data.json" {
			if !bytes.Contains(b, []byte(old)) {
				t.Fatalf("policy/bundle/data.json no longer holds %s", old)
			}
			b = bytes.Replace(b, []byte(old), []byte(new), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// api calls the approvals API at base as the holder of tok.
func api(t *testing.T, base, tok, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return res.StatusCode
}

// waitPending polls the API at base as tok until a pending request for
// sql appears, and returns it.
func waitPending(t *testing.T, base, tok, sql string) *approvals.Request {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var lr approvals.ListResponse
		code := api(t, base, tok, "GET", "/api/approvals?status=pending", nil, &lr)
		if code != 200 {
			t.Fatalf("list: HTTP %d", code)
		}
		for _, v := range lr.Requests {
			if strings.Contains(v.Request.SQL, sql) {
				return v.Request
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no pending request for %q within 60s", sql)
	return nil
}

// tableCount counts victims directly on the cluster, -1 when it is gone.
func tableCount(t *testing.T, pg *pgtest.Cluster) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pg.SocketDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(context.Background(), "SELECT count(*) FROM victims").Scan(&n)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// keepWorking runs SELECTs in another session until stop is closed and
// reports how many succeeded, or the first error.
func keepWorking(t *testing.T, e *env, stop <-chan struct{}) <-chan error {
	t.Helper()
	out := make(chan error, 1)
	conn, err := pgx.Connect(context.Background(), e.vigilDSN(e.token(t, identity.TokenSpec{}),
		"postgres"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer conn.Close(context.Background())
		n := 0
		for {
			select {
			case <-stop:
				if n == 0 {
					out <- errors.New("the second session ran no query during the hold")
				} else {
					out <- nil
				}
				return
			default:
			}
			var one int
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := conn.QueryRow(ctx, "SELECT 1").Scan(&one)
			cancel()
			if err != nil {
				out <- fmt.Errorf("second session blocked or failed after %d queries: %w", n, err)
				return
			}
			n++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return out
}

// approvalSteps lists the approval steps of the session that ran sql.
func approvalSteps(t *testing.T, e *env, sql string) []audit.Approval {
	t.Helper()
	for _, s := range e.sessions(t) {
		// The session may still be open: read what it has so far.
		evs, err := audit.ReadSession(e.dataDir, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		var seq uint64
		for _, ev := range evs {
			if ev.Kind == audit.KindCommand && strings.Contains(ev.Command.SQL, sql) {
				seq = ev.Seq
			}
		}
		if seq == 0 {
			continue
		}
		var out []audit.Approval
		for _, ev := range evs {
			if ev.Kind == audit.KindApproval && ev.Approval.Command == seq {
				out = append(out, *ev.Approval)
			}
		}
		return out
	}
	t.Fatalf("no session ran %q", sql)
	return nil
}

// waitSteps waits up to 30 s for the approval steps of sql to read want,
// and returns what they read last.
func waitSteps(t *testing.T, e *env, sql, want string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := stepKinds(approvalSteps(t, e, sql))
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stepKinds(as []audit.Approval) string {
	var k []string
	for _, a := range as {
		k = append(k, a.Step)
	}
	return strings.Join(k, ",")
}

// TestApprovalApprovedThroughCLI: psql's DROP TABLE waits; another
// session keeps working; a DBA approves with `vigil approvals approve`;
// the DROP runs and psql sees its result.
func TestApprovalApprovedThroughCLI(t *testing.T) {
	e := startApprovalsEnv(t, "", "")
	bin := vigilBinary(t)
	dba := e.approverToken(t, dbaOID, "dba")

	stop := make(chan struct{})
	other := keepWorking(t, e, stop)

	done := e.startAgentPsql(t, "DROP TABLE victims")

	req := waitPending(t, e.http, dba, "DROP TABLE victims")
	select {
	case r := <-done:
		t.Fatalf("psql finished while the DROP was held: %v\n%s", r.err, r.out)
	default:
	}
	if n := tableCount(t, e.pg); n != 3 {
		t.Fatalf("victims has %d rows while held; want 3 (untouched)", n)
	}

	// `vigil approvals list` as the DBA shows it; approve it.
	cli := func(args ...string) string {
		cmd := exec.Command(bin, append(args, "--server", "http://"+e.http)...)
		cmd.Env = append(os.Environ(), "VIGIL_TOKEN="+dba)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vigil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if list := cli("approvals", "list"); !strings.Contains(list, req.ID) {
		t.Errorf("vigil approvals list does not show %s:\n%s", req.ID, list)
	}
	cli("approvals", "approve", req.ID, "--reason", "planned cleanup")

	var r psqlResult
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("psql still waiting 60s after the approval")
	}
	if r.err != nil || !strings.Contains(r.out, "DROP TABLE") {
		t.Fatalf("psql after approval: %v\n%s", r.err, r.out)
	}
	if n := tableCount(t, e.pg); n != -1 {
		t.Errorf("victims still exists (%d rows) after the approved DROP", n)
	}
	close(stop)
	if err := <-other; err != nil {
		t.Error(err)
	}

	steps := approvalSteps(t, e, "DROP TABLE victims")
	if got := stepKinds(steps); got != "requested,approved" {
		t.Fatalf("approval steps %q; want requested,approved", got)
	}
	if a := steps[1]; a.Actor == nil || a.Actor.OID != dbaOID || a.Reason != "planned cleanup" ||
		a.RequestID != req.ID {
		t.Errorf("approved step %+v; want the DBA, the reason and request %s", a, req.ID)
	}
	if !strings.Contains(strings.Join(steps[0].Approvers, ","), "group:dba") {
		t.Errorf("requested step names approvers %v; want group:dba", steps[0].Approvers)
	}
}

// TestApprovalDeniedThroughAPI: pgx's TRUNCATE waits; a DBA denies it
// through the HTTP API with a reason; the client gets the reason and its
// session goes on.
func TestApprovalDeniedThroughAPI(t *testing.T) {
	e := startApprovalsEnv(t, "", "")
	dba := e.approverToken(t, dbaOID, "dba")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.vigilDSN(e.token(t, identity.TokenSpec{}), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "TRUNCATE victims")
		done <- err
	}()
	req := waitPending(t, e.http, dba, "TRUNCATE victims")
	var er approvals.ErrorResponse
	if code := api(t, e.http, dba, "POST", "/api/approvals/"+req.ID+"/deny",
		approvals.DecisionBody{Reason: "not during business hours"}, &er); code != 200 {
		t.Fatalf("deny: HTTP %d: %+v", code, er)
	}
	err = <-done
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" ||
		!strings.Contains(pe.Message, "not during business hours") {
		t.Fatalf("TRUNCATE after denial: %v; want SQLSTATE 42501 with the approver's reason", err)
	}
	if n := tableCount(t, e.pg); n != 3 {
		t.Errorf("victims has %d rows after the denied TRUNCATE; want 3", n)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM victims").Scan(&n); err != nil || n != 3 {
		t.Errorf("session after the denial: %v, %d rows", err, n)
	}
	steps := approvalSteps(t, e, "TRUNCATE victims")
	if got := stepKinds(steps); got != "requested,denied" {
		t.Errorf("approval steps %q; want requested,denied", got)
	}
	conn.Close(ctx)
	cs := commands(t, e.lastSession(t))
	if !strings.Contains(describe(cs), "denied") {
		t.Errorf("the TRUNCATE's result is not recorded as denied:\n%s", describe(cs))
	}
}

// TestApprovalTimesOut: nobody decides; the command is denied with
// "approval timed out", and the timeout is in the audit.
func TestApprovalTimesOut(t *testing.T) {
	e := startApprovalsEnv(t, policyWithTimeout(t, "2s"), "")
	out, stderr := psqlFails(t, e, "DROP TABLE victims")
	if !strings.Contains(stderr, "approval timed out") {
		t.Fatalf("psql: want an approval timeout error; got\n%s%s", out, stderr)
	}
	if n := tableCount(t, e.pg); n != 3 {
		t.Errorf("victims has %d rows after the timed-out DROP; want 3", n)
	}
	if got := stepKinds(approvalSteps(t, e, "DROP TABLE victims")); got != "requested,expired" {
		t.Errorf("approval steps %q; want requested,expired", got)
	}
}

// agentPsql is psql running one statement through vigil as the agent.
func (e *env) agentPsql(t *testing.T, sql string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(pgBin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
		"-p", portOf(e.addr), "-U", "agent", "-d", "postgres", "-c", sql)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+e.token(t, identity.TokenSpec{}),
		"PGSSLMODE=disable")
	return cmd
}

// psqlResult is how a psql run ended: its output and error.
type psqlResult struct {
	out string
	err error
}

// startAgentPsql runs sql through vigil as the agent in the background;
// the outcome arrives on the channel.
func (e *env) startAgentPsql(t *testing.T, sql string) <-chan psqlResult {
	t.Helper()
	cmd := e.agentPsql(t, sql)
	done := make(chan psqlResult, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		done <- psqlResult{string(out), err}
	}()
	return done
}

// psqlFails runs one statement through vigil that must fail.
func psqlFails(t *testing.T, e *env, sql string) (string, string) {
	t.Helper()
	cmd := e.agentPsql(t, sql)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err == nil {
		t.Fatalf("psql %q succeeded; want a failure\n%s", sql, so.String())
	}
	return so.String(), se.String()
}

// TestApprovalRefusals: the requester cannot approve their own command,
// nor can someone outside group:dba; both attempts are refused and
// recorded, and the request stays pending until a DBA decides.
func TestApprovalRefusals(t *testing.T) {
	e := startApprovalsEnv(t, "", "")
	ctx := context.Background()
	// The agent is in group dba too: only self-approval stops it.
	agentTok := e.token(t, identity.TokenSpec{Groups: []string{"dba"}})
	conn, err := pgx.Connect(ctx, e.vigilDSN(agentTok, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "DROP TABLE victims")
		done <- err
	}()
	dba := e.approverToken(t, dbaOID, "dba")
	req := waitPending(t, e.http, dba, "DROP TABLE victims")

	var er approvals.ErrorResponse
	code := api(t, e.http, agentTok, "POST", "/api/approvals/"+req.ID+"/approve",
		approvals.DecisionBody{}, &er)
	if code != http.StatusForbidden || er.Cause != "self_approval" {
		t.Errorf("self-approval: HTTP %d cause %q; want 403 self_approval", code, er.Cause)
	}
	outsider := e.approverToken(t, outsiderOID, "finance")
	er = approvals.ErrorResponse{}
	if code := api(t, e.http, outsider, "POST", "/api/approvals/"+req.ID+"/approve",
		approvals.DecisionBody{}, &er); code != http.StatusForbidden || er.Cause != "not_approver" {
		t.Errorf("outsider approval: HTTP %d cause %q; want 403 not_approver", code, er.Cause)
	}
	if n := tableCount(t, e.pg); n != 3 {
		t.Fatalf("victims has %d rows after refused approvals; want 3 (still held)", n)
	}
	if code := api(t, e.http, dba, "POST", "/api/approvals/"+req.ID+"/deny",
		approvals.DecisionBody{Reason: "no"}, nil); code != 200 {
		t.Fatalf("deny: HTTP %d", code)
	}
	if err := <-done; err == nil {
		t.Fatal("DROP ran after a denial")
	}
	steps := approvalSteps(t, e, "DROP TABLE victims")
	if got := stepKinds(steps); got != "requested,refused,refused,denied" {
		t.Fatalf("approval steps %q; want requested,refused,refused,denied", got)
	}
	if a := steps[1]; a.Actor == nil || a.Actor.OID != identity.DevObjectID {
		t.Errorf("first refusal names %+v; want the requester", a.Actor)
	}
	if a := steps[2]; a.Actor == nil || a.Actor.OID != outsiderOID {
		t.Errorf("second refusal names %+v; want the outsider", a.Actor)
	}
}

// TestApprovalClientGoneCancels: a client that disconnects while its
// command waits cancels the request; the command never runs.
func TestApprovalClientGoneCancels(t *testing.T) {
	e := startApprovalsEnv(t, "", "")
	dba := e.approverToken(t, dbaOID, "dba")
	cmd := e.agentPsql(t, "DROP TABLE victims")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	req := waitPending(t, e.http, dba, "DROP TABLE victims")
	cmd.Process.Kill()
	cmd.Wait()

	deadline := time.Now().Add(30 * time.Second)
	var v approvals.View
	for time.Now().Before(deadline) {
		api(t, e.http, dba, "GET", "/api/approvals/"+req.ID, nil, &v)
		if v.Request != nil && v.Request.Status != approvals.StatusPending {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v.Request == nil || v.Request.Status != approvals.StatusCancelled {
		t.Fatalf("request after the client left: %+v; want cancelled", v.Request)
	}
	// Approving now is too late, and the table stays.
	if code := api(t, e.http, dba, "POST", "/api/approvals/"+req.ID+"/approve",
		approvals.DecisionBody{}, nil); code != http.StatusConflict {
		t.Errorf("approve after cancel: HTTP %d; want 409", code)
	}
	if n := tableCount(t, e.pg); n != 3 {
		t.Errorf("victims has %d rows; want 3", n)
	}
	// The store says cancelled before the session has recorded the step.
	const want = "requested,cancelled"
	if got := waitSteps(t, e, "DROP TABLE victims", want); got != want {
		t.Errorf("approval steps %q; want requested,cancelled", got)
	}
}

// TestApprovalSharedPostgresStore: two gateway processes share one
// PostgreSQL approvals store: this test's in-process gateway and a
// `vigil gateway` child process. A request held by the first is listed
// and approved through the second, and the first runs the command.
func TestApprovalSharedPostgresStore(t *testing.T) {
	store := pgtest.Start(t, pgtest.Options{Auth: pgtest.AuthTrust})
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(store.SocketDSN("postgres")), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := "approvals:\n  store: postgres\n  postgres_dsn_file: " + dsnFile + "\n"
	a := startApprovalsEnv(t, "", extra)
	dba := a.approverToken(t, dbaOID, "dba")

	// The second gateway: the same configuration with its own journal and
	// HTTP port, as another replica would have.
	cfg, err := os.ReadFile(a.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	httpB := freeAddr(t)
	dir := t.TempDir()
	cfgB := strings.Replace(string(cfg), "dir: "+a.dataDir, "dir: "+filepath.Join(dir, "data"), 1)
	cfgB = strings.Replace(cfgB, "http: 127.0.0.1:0", "http: "+httpB, 1)
	if cfgB == string(cfg) || !strings.Contains(cfgB, httpB) {
		t.Fatal("could not derive the second gateway's configuration")
	}
	cfgFileB := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(cfgFileB, []byte(cfgB), 0o600); err != nil {
		t.Fatal(err)
	}
	var logB bytes.Buffer
	b := exec.Command(vigilBinary(t), "gateway", "--config", cfgFileB)
	b.Stdout, b.Stderr = &logB, &logB
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Process.Kill(); b.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := http.Get("http://" + httpB + "/healthz")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second gateway did not serve /healthz within 60s:\n%s", logB.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	done := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(context.Background(), a.vigilDSN(a.token(t, identity.TokenSpec{}),
			"postgres"))
		if err != nil {
			done <- err
			return
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(context.Background(), "DROP TABLE victims")
		done <- err
	}()
	reqA := waitPending(t, a.http, dba, "DROP TABLE victims")
	reqB := waitPending(t, httpB, dba, "DROP TABLE victims")
	if reqA.ID != reqB.ID {
		t.Fatalf("gateways list different requests: %s and %s", reqA.ID, reqB.ID)
	}
	if code := api(t, httpB, dba, "POST", "/api/approvals/"+reqB.ID+"/approve",
		approvals.DecisionBody{Reason: "ok"}, nil); code != 200 {
		t.Fatalf("approve through the second gateway: HTTP %d\n%s", code, logB.String())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("DROP after approval through the other gateway: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the first gateway did not learn of the approval within 60s")
	}
	if n := tableCount(t, a.pg); n != -1 {
		t.Errorf("victims still exists on the first gateway's cluster (%d rows)", n)
	}
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// portOf is the port of a host:port address.
func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// TestApprovalWindow: with scope window, an approved TRUNCATE lets the
// same statement from the same agent run again without asking; another
// statement still waits.
func TestApprovalWindow(t *testing.T) {
	e := startApprovalsEnv(t, policyWith(t, `"scope": "once"`, `"scope": "window"`), "")
	dba := e.approverToken(t, dbaOID, "dba")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.vigilDSN(e.token(t, identity.TokenSpec{}), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "TRUNCATE victims")
		done <- err
	}()
	req := waitPending(t, e.http, dba, "TRUNCATE victims")
	if req.Scope != approvals.ScopeWindow {
		t.Errorf("request scope %q; want window", req.Scope)
	}
	if code := api(t, e.http, dba, "POST", "/api/approvals/"+req.ID+"/approve",
		approvals.DecisionBody{Reason: "cleanup for 10 minutes"}, nil); code != 200 {
		t.Fatalf("approve: HTTP %d", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("first TRUNCATE after approval: %v", err)
	}
	// The same statement again: covered, it runs at once.
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := conn.Exec(tctx, "TRUNCATE victims"); err != nil {
		t.Fatalf("second TRUNCATE inside the window: %v", err)
	}
	var lr approvals.ListResponse
	api(t, e.http, dba, "GET", "/api/approvals?status=", nil, &lr)
	if len(lr.Requests) != 1 {
		t.Errorf("%d requests exist; want 1 (the window covered the repeat)", len(lr.Requests))
	}
	// A different statement is not covered.
	go func() {
		_, err := conn.Exec(ctx, "TRUNCATE victims, victims")
		done <- err
	}()
	other := waitPending(t, e.http, dba, "TRUNCATE victims, victims")
	api(t, e.http, dba, "POST", "/api/approvals/"+other.ID+"/deny",
		approvals.DecisionBody{Reason: "no"}, nil)
	if err := <-done; err == nil {
		t.Error("a different statement ran under the window of another")
	}
}
