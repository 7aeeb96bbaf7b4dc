package approvals

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/pgtest"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// Identities of the tests: an agent (app-only), a DBA (a user in group
// dba) and an outsider (a user in no approving group).
const (
	agentOID    = "00000000-0000-4000-8000-0000000000a9"
	agentApp    = "00000000-0000-4000-8000-0000000000aa"
	dbaOID      = "00000000-0000-4000-8000-0000000000d1"
	outsiderOID = "00000000-0000-4000-8000-0000000000e1"
)

func agent() *identity.Identity {
	return &identity.Identity{OID: agentOID, AppID: agentApp, IDType: "app",
		TID: identity.DevTenant}
}

func dba() *identity.Identity {
	return &identity.Identity{OID: dbaOID, AppID: identity.DevClientID, IDType: "user",
		UPN: "dba@example.test", Name: "Dee Bee", Groups: []string{"dba"}}
}

func outsider() *identity.Identity {
	return &identity.Identity{OID: outsiderOID, AppID: identity.DevClientID, IDType: "user",
		UPN: "someone@example.test", Groups: []string{"sales"}}
}

// newRequest is a held DROP TABLE for group:dba.
func newRequest() *Request {
	return &Request{
		SessionID: "s-1", CommandSeq: 7, Connection: "customer-db",
		Requester: agent(), Grant: "role:Db.Write",
		SQL:        "DROP TABLE customers",
		Parameters: []audit.Parameter{{Format: "text", Value: "42"}},
		Reasons:    []string{"DROP TABLE needs a DBA"},
		Approvers:  []string{"group:dba"},
		Timeout:    time.Minute,
	}
}

// storeKinds opens fresh stores of each kind; the PostgreSQL one starts a
// throwaway cluster (skipped without PostgreSQL unless PGTEST_REQUIRE).
var storeKinds = []struct {
	name string
	open func(t *testing.T) (open func() Store)
}{
	{"file", func(t *testing.T) func() Store {
		dir := t.TempDir()
		return func() Store {
			s, err := NewFileStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}},
	{"postgres", func(t *testing.T) func() Store {
		dsn := startPG(t)
		return func() Store {
			s, err := NewPostgresStore(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
}

func startPG(t *testing.T) string {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{})
	return c.DSN(pgtest.Superuser, pgtest.SuperPassword, "postgres")
}

// forEachStore runs test once per store kind; open returns a new store
// (a new handle on the same data) each time it is called.
func forEachStore(t *testing.T, test func(t *testing.T, open func() Store)) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { test(t, k.open(t)) })
	}
}

func newService(t *testing.T, st Store, opts Options) *Service {
	t.Helper()
	if opts.Log == nil {
		opts.Log = quietLog
	}
	s := NewService(st, nil, opts)
	t.Cleanup(func() { s.Close() })
	return s
}

// hold runs Service.Hold on its own goroutine and collects its steps.
type hold struct {
	steps chan Step
	done  chan struct{}
	req   *Request
	err   error
}

func startHold(ctx context.Context, s *Service, r *Request) *hold {
	h := &hold{steps: make(chan Step, 16), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		h.req, h.err = s.Hold(ctx, r, func(st Step) { h.steps <- st })
	}()
	return h
}

// step waits for the hold's next step.
func (h *hold) step(t *testing.T) Step {
	t.Helper()
	select {
	case st := <-h.steps:
		return st
	case <-time.After(20 * time.Second):
		t.Fatal("no step within 20s")
		return Step{}
	}
}

// wait waits for Hold to return and checks that every step was notified.
func (h *hold) wait(t *testing.T) *Request {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(20 * time.Second):
		t.Fatal("Hold did not return within 20s")
	}
	if h.err != nil {
		t.Fatalf("Hold: %v", h.err)
	}
	return h.req
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// tokens is a dev issuer on loopback and a verifier pointed at it.
type tokens struct {
	issuer   *identity.DevIssuer
	verifier identity.Verifier
}

func newTokens(t *testing.T) *tokens {
	t.Helper()
	iss, err := identity.NewDevIssuer("", identity.WithDevLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	cfg := config.Identity{
		Provider: "entra", Tenants: []string{identity.DevTenant},
		Audiences: []string{identity.DevAudience, identity.DevAPIAppID},
		Versions:  []string{"v1", "v2"}, Groups: "token", Authority: srv.URL,
		ClockSkew: config.Duration(time.Minute),
	}
	v, err := identity.NewVerifier(context.Background(), cfg, identity.WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	return &tokens{issuer: iss, verifier: v}
}

func (k *tokens) mint(t *testing.T, spec identity.TokenSpec) string {
	t.Helper()
	tok, err := k.issuer.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Token specs matching agent(), dba() and outsider().
var (
	agentSpec = identity.TokenSpec{OID: agentOID, AppID: agentApp, Roles: []string{"Db.Write"}}
	dbaSpec   = identity.TokenSpec{OID: dbaOID, Name: "Dee Bee", UPN: "dba@example.test",
		Groups: []string{"dba"}}
	outsiderSpec = identity.TokenSpec{OID: outsiderOID, UPN: "someone@example.test",
		Groups: []string{"sales"}}
)
