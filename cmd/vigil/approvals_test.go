package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/policy/approvals"
)

// approvalsEnv is an approvals service on loopback with a dev issuer, and
// one held request.
type approvalsEnv struct {
	url   string
	dba   string // token of an approver in group dba
	held  chan *approvals.Request
	steps chan approvals.Step
}

func newApprovalsEnv(t *testing.T) *approvalsEnv {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	iss, err := identity.NewDevIssuer("", identity.WithDevLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	idp := httptest.NewServer(iss.Handler())
	t.Cleanup(idp.Close)
	v, err := identity.NewVerifier(context.Background(), config.Identity{
		Provider: "entra", Tenants: []string{identity.DevTenant},
		Audiences: []string{identity.DevAPIAppID}, Versions: []string{"v2"},
		Groups: "token", Authority: idp.URL, ClockSkew: config.Duration(time.Minute),
	}, identity.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	store, err := approvals.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svc := approvals.NewService(store, v, approvals.Options{Log: quiet})
	t.Cleanup(func() { svc.Close() })
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	dba, err := iss.Mint(identity.TokenSpec{OID: "dba-oid", UPN: "dba@example.test",
		Groups: []string{"dba"}})
	if err != nil {
		t.Fatal(err)
	}

	e := &approvalsEnv{url: srv.URL, dba: dba, held: make(chan *approvals.Request, 1),
		steps: make(chan approvals.Step, 8)}
	req := &approvals.Request{
		Connection: "customer-db", SessionID: "s-1", CommandSeq: 3,
		Requester: &identity.Identity{OID: "agent-oid", AppID: "agent-app", IDType: "app"},
		SQL:       "TRUNCATE\n  invoices", Approvers: []string{"group:dba"},
		Timeout: time.Minute,
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		r, err := svc.Hold(ctx, req, func(s approvals.Step) { e.steps <- s })
		if err != nil {
			t.Errorf("Hold: %v", err)
		}
		e.held <- r
	}()
	<-e.steps // requested
	return e
}

// runApprovals runs `vigil approvals args...` and returns its output.
func runApprovals(args ...string) (string, error) {
	approvalsFlags = approvalsOptions{status: "pending"}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"approvals"}, args...))
	defer root.SetArgs(nil)
	err := root.Execute()
	return out.String(), err
}

func (e *approvalsEnv) wait(t *testing.T) *approvals.Request {
	t.Helper()
	select {
	case r := <-e.held:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("the hold did not end")
		return nil
	}
}

func TestApprovalsCLIApprove(t *testing.T) {
	e := newApprovalsEnv(t)
	t.Setenv("VIGIL_TOKEN", e.dba)

	out, err := runApprovals("list", "--server", e.url)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "customer-db") || !strings.Contains(out, "TRUNCATE invoices") ||
		!strings.Contains(out, "agent-app") {
		t.Errorf("list printed:\n%s", out)
	}
	out, err = runApprovals("list", "--json", "--server", e.url)
	if err != nil {
		t.Fatal(err)
	}
	var list approvals.ListResponse
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Requests) != 1 {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	id := list.Requests[0].Request.ID

	out, err = runApprovals("approve", id, "--reason", "planned", "--server", e.url)
	if err != nil {
		t.Fatal(err)
	}
	if out != id+" approved\n" {
		t.Errorf("approve printed %q", out)
	}
	if r := e.wait(t); r.Status != approvals.StatusApproved || r.Reason != "planned" {
		t.Errorf("hold ended %s %q", r.Status, r.Reason)
	}
	_, err = runApprovals("approve", id, "--server", e.url)
	if err == nil || !strings.Contains(err.Error(), "not_pending") {
		t.Errorf("second approval: err = %v, want not_pending", err)
	}
}

func TestApprovalsCLIDeny(t *testing.T) {
	e := newApprovalsEnv(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.dba+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VIGIL_TOKEN", "")
	base := []string{"--server", e.url, "--token-file", tokenFile}

	out, err := runApprovals(append([]string{"list", "--json"}, base...)...)
	if err != nil {
		t.Fatal(err)
	}
	var list approvals.ListResponse
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Requests) != 1 {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	id := list.Requests[0].Request.ID

	if _, err := runApprovals(append([]string{"deny", id}, base...)...); err == nil ||
		!strings.Contains(err.Error(), "--reason") {
		t.Errorf("deny without --reason: err = %v", err)
	}
	if _, err := runApprovals(append([]string{"deny", id, "--reason", "not now"},
		base...)...); err != nil {
		t.Fatal(err)
	}
	if r := e.wait(t); r.Status != approvals.StatusDenied || r.Reason != "not now" {
		t.Errorf("hold ended %s %q", r.Status, r.Reason)
	}
}

func TestApprovalsCLINoToken(t *testing.T) {
	t.Setenv("VIGIL_TOKEN", "")
	_, err := runApprovals("list", "--server", "http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "VIGIL_TOKEN") {
		t.Errorf("err = %v, want one naming VIGIL_TOKEN", err)
	}
}
