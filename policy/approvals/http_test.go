package approvals

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// api is a Service behind an httptest server, with tokens for the agent,
// the DBA and an outsider.
type api struct {
	svc                  *Service
	srv                  *httptest.Server
	agent, dba, outsider string
}

func newAPI(t *testing.T, opts Options) *api {
	t.Helper()
	k := newTokens(t)
	if opts.Log == nil {
		opts.Log = quietLog
	}
	svc := NewService(mustFileStore(t), k.verifier, opts)
	t.Cleanup(func() { svc.Close() })
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	return &api{svc: svc, srv: srv, agent: k.mint(t, agentSpec), dba: k.mint(t, dbaSpec),
		outsider: k.mint(t, outsiderSpec)}
}

// call sends a request and decodes the JSON answer into out (when not nil).
func (a *api) call(t *testing.T, method, path, token, body string, out any) int {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

func TestHTTPAPI(t *testing.T) {
	a := newAPI(t, Options{})
	h := startHold(context.Background(), a.svc, newRequest())
	h.step(t)

	// Authentication.
	var e ErrorResponse
	if code := a.call(t, "GET", "/api/approvals", "", "", &e); code != 401 ||
		e.Cause != "missing_token" {
		t.Errorf("no token: %d %+v", code, e)
	}
	if code := a.call(t, "GET", "/api/approvals", "not.a.jwt", "", &e); code != 401 ||
		e.Cause != string(identity.ReasonMalformed) || e.Error == "" {
		t.Errorf("bad token: %d %+v", code, e)
	}

	// Listing: the DBA sees the request, the outsider does not.
	var list ListResponse
	if code := a.call(t, "GET", "/api/approvals?status=pending", a.dba, "", &list); code != 200 ||
		len(list.Requests) != 1 {
		t.Fatalf("DBA list: %d %+v", code, list)
	}
	v := list.Requests[0]
	id := v.Request.ID
	if v.Request.SQL != "DROP TABLE customers" || v.Request.Requester.OID != agentOID ||
		v.Request.Timeout != time.Minute || v.Request.Parameters[0].Value != "42" {
		t.Errorf("listed %+v", v.Request)
	}
	if code := a.call(t, "GET", "/api/approvals?status=pending", a.outsider, "",
		&list); code != 200 || len(list.Requests) != 0 {
		t.Errorf("outsider list: %d %+v", code, list)
	}
	if code := a.call(t, "GET", "/api/approvals/"+id, a.outsider, "", &e); code != 403 {
		t.Errorf("outsider get: %d", code)
	}
	if code := a.call(t, "GET", "/api/approvals/aaaaaaaaaaaaaaaa", a.dba, "", &e); code != 404 ||
		e.Cause != "not_found" {
		t.Errorf("unknown id: %d %+v", code, e)
	}

	// Refusals, each recorded.
	if code := a.call(t, "POST", "/api/approvals/"+id+"/approve", a.agent, "{}",
		&e); code != 403 ||
		e.Cause != "self_approval" || !strings.Contains(e.Error, "same object id") {
		t.Errorf("self approval: %d %+v", code, e)
	}
	if step := h.step(t); step.Kind != StepRefused || step.Actor.OID != agentOID {
		t.Errorf("step = %+v", step)
	}
	if code := a.call(t, "POST", "/api/approvals/"+id+"/approve", a.outsider, "",
		&e); code != 403 || e.Cause != "not_approver" || !strings.Contains(e.Error, "group:dba") {
		t.Errorf("outsider approval: %d %+v", code, e)
	}
	if step := h.step(t); step.Kind != StepRefused || step.Actor.OID != outsiderOID {
		t.Errorf("step = %+v", step)
	}
	if code := a.call(t, "POST", "/api/approvals/"+id+"/deny", a.dba, `{"reason":""}`,
		&e); code != 400 || e.Cause != "reason_required" {
		t.Errorf("deny without reason: %d %+v", code, e)
	}
	if code := a.call(t, "POST", "/api/approvals/"+id+"/deny", a.dba, `{`, &e); code != 400 {
		t.Errorf("bad body: %d", code)
	}

	// The denial.
	if code := a.call(t, "POST", "/api/approvals/"+id+"/deny", a.dba,
		`{"reason":"use TRUNCATE on staging"}`, &v); code != 200 ||
		v.Request.Status != StatusDenied {
		t.Fatalf("deny: %d %+v", code, v)
	}
	r := h.wait(t)
	if r.Status != StatusDenied || r.Reason != "use TRUNCATE on staging" ||
		r.Decider.UPN != "dba@example.test" {
		t.Errorf("Hold returned %+v", r)
	}
	if code := a.call(t, "POST", "/api/approvals/"+id+"/approve", a.dba, "", &e); code != 409 ||
		e.Cause != "not_pending" {
		t.Errorf("approve after deny: %d %+v", code, e)
	}
	if code := a.call(t, "GET", "/api/approvals/"+id, a.agent, "", &v); code != 200 ||
		len(v.Steps) != 4 {
		t.Errorf("requester get: %d, %d steps, want 4", code, len(v.Steps))
	}
}

// TestHTTPListAll checks that status=all lists every request, as an
// empty status does and as `vigil approvals list --status all` asks.
func TestHTTPListAll(t *testing.T) {
	a := newAPI(t, Options{})
	h := startHold(context.Background(), a.svc, newRequest())
	h.step(t)
	var all, empty ListResponse
	if code := a.call(t, "GET", "/api/approvals?status=all", a.dba, "", &all); code != 200 ||
		len(all.Requests) != 1 {
		t.Fatalf("status=all: %d %+v", code, all)
	}
	if code := a.call(t, "GET", "/api/approvals?status=", a.dba, "", &empty); code != 200 ||
		len(empty.Requests) != 1 || empty.Requests[0].Request.ID != all.Requests[0].Request.ID {
		t.Fatalf("status=: %d %+v", code, empty)
	}
	var e ErrorResponse
	if code := a.call(t, "GET", "/api/approvals?status=some", a.dba, "", &e); code != 400 ||
		!strings.Contains(e.Error, "all") {
		t.Errorf("status=some: %d %+v", code, e)
	}
}

// TestHTTPBodyTooLarge checks that a decision body over the limit is
// answered 413, not taken for malformed JSON.
func TestHTTPBodyTooLarge(t *testing.T) {
	a := newAPI(t, Options{})
	h := startHold(context.Background(), a.svc, newRequest())
	h.step(t)
	id := onlyPending(t, a.svc)
	body := `{"reason": "` + strings.Repeat("a", 2<<20) + `"}`
	var e ErrorResponse
	if code := a.call(t, "POST", "/api/approvals/"+id+"/deny", a.dba, body, &e); code != 413 ||
		e.Cause != "too_large" || e.Error != "the body is too large" {
		t.Errorf("2 MB body: %d %+v, want 413 too_large", code, e)
	}
	if code := a.call(t, "POST", "/api/approvals/"+id+"/deny", a.dba, `{"reason": 1}`,
		&e); code != 400 || e.Cause != "bad_request" {
		t.Errorf("malformed body: %d %+v, want 400 bad_request", code, e)
	}
}

func TestPageServed(t *testing.T) {
	a := newAPI(t, Options{})
	resp, err := http.Get(a.srv.URL + "/approvals/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.Contains(csp, "script-src 'nonce-") ||
		resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("page: %d, CSP %q", resp.StatusCode, csp)
	}
	if !bytes.Contains(b, []byte(`id="token"`)) || !bytes.Contains(b, []byte("sessionStorage")) {
		t.Errorf("page lacks the token field")
	}
}

func TestWebhook(t *testing.T) {
	got := make(chan WebhookPayload, 8)
	var fails atomic.Int32
	fails.Store(1) // the first delivery fails once and is retried
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fails.Add(-1) >= 0 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		var p WebhookPayload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil ||
			r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook body: %v", err)
		}
		got <- p
	}))
	defer hook.Close()

	s := newService(t, mustFileStore(t), Options{Webhook: hook.URL,
		PublicURL: "https://vigil.example.test/approvals/"})
	h := startHold(context.Background(), s, newRequest())
	h.step(t)
	if _, err := s.Decide(context.Background(), onlyPending(t, s), dba(), false,
		"not today"); err != nil {
		t.Fatal(err)
	}
	h.wait(t)

	for _, want := range []struct{ event, text string }{
		{"approval.requested", "DROP TABLE customers"},
		{"approval.denied", "not today"},
	} {
		select {
		case p := <-got:
			if p.Vigil.Event != want.event || !strings.Contains(p.Text, want.text) ||
				p.Vigil.Request.Connection != "customer-db" {
				t.Errorf("payload %+v, want event %s with %q", p, want.event, want.text)
			}
			if len(p.Vigil.Request.Parameters) != 0 {
				t.Error("the webhook carries bound parameters")
			}
			if want.event == "approval.requested" &&
				!strings.Contains(p.Text, "https://vigil.example.test/approvals/") {
				t.Errorf("text %q lacks the page link", p.Text)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s webhook", want.event)
		}
	}
}
