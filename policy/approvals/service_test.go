package approvals

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHoldApproved(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		s := newService(t, open(), Options{})
		h := startHold(context.Background(), s, newRequest())
		first := h.step(t)
		if first.Kind != StepRequested || first.Actor.OID != agentOID {
			t.Fatalf("first step = %+v, want requested by the agent", first)
		}
		pending, err := s.pending(context.Background())
		if err != nil || len(pending) != 1 {
			t.Fatalf("pending = %v, %v; want the held request", pending, err)
		}
		id := pending[0].ID
		if !validID(id) {
			t.Errorf("id %q is not 16 base32 characters", id)
		}

		got, err := s.Decide(context.Background(), id, dba(), true, "looks fine")
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != StatusApproved {
			t.Errorf("Decide returned status %q", got.Status)
		}
		r := h.wait(t)
		if r.Status != StatusApproved || r.Decider.OID != dbaOID || r.Reason != "looks fine" {
			t.Errorf("Hold returned %+v, want approved by the DBA", r)
		}
		if st := h.step(t); st.Kind != StepApproved || st.Actor.OID != dbaOID {
			t.Errorf("last step = %+v, want approved by the DBA", st)
		}
		if _, err := s.Decide(context.Background(), id, dba(), false, "x"); !errors.Is(err,
			ErrNotPending) {
			t.Errorf("second decision: err = %v, want ErrNotPending", err)
		}
	})
}

func TestHoldDenied(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		s := newService(t, open(), Options{})
		h := startHold(context.Background(), s, newRequest())
		h.step(t)
		id := onlyPending(t, s)

		if _, err := s.Decide(context.Background(), id, dba(), false, "  "); !errors.Is(err,
			ErrReasonRequired) {
			t.Fatalf("deny without reason: err = %v, want ErrReasonRequired", err)
		}
		if _, err := s.Decide(context.Background(), id, dba(), false,
			"not during business hours"); err != nil {
			t.Fatal(err)
		}
		r := h.wait(t)
		if r.Status != StatusDenied || r.Reason != "not during business hours" {
			t.Errorf("Hold returned %s %q, want denied with the reason", r.Status, r.Reason)
		}
		if st := h.step(t); st.Kind != StepDenied || st.Reason != "not during business hours" {
			t.Errorf("last step = %+v", st)
		}
	})
}

func TestHoldExpires(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		st := open()
		s := newService(t, st, Options{})
		req := newRequest()
		req.Timeout = 300 * time.Millisecond
		h := startHold(context.Background(), s, req)
		h.step(t)
		r := h.wait(t)
		if r.Status != StatusExpired || r.Reason != "approval timed out" {
			t.Errorf("Hold returned %s %q, want expired", r.Status, r.Reason)
		}
		if step := h.step(t); step.Kind != StepExpired || step.Actor != nil {
			t.Errorf("last step = %+v, want expired without an actor", step)
		}
		stored, steps, err := st.Get(context.Background(), r.ID)
		if err != nil || stored.Status != StatusExpired || len(steps) != 2 {
			t.Errorf("stored %+v with %d steps (%v), want expired with 2", stored,
				len(steps), err)
		}
		if _, err := s.Decide(context.Background(), r.ID, dba(), true, ""); !errors.Is(err,
			ErrNotPending) {
			t.Errorf("approving an expired request: err = %v", err)
		}
	})
}

func TestHoldCancelled(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		st := open()
		s := newService(t, st, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		h := startHold(ctx, s, newRequest())
		h.step(t)
		cancel()
		r := h.wait(t)
		if r.Status != StatusCancelled {
			t.Errorf("Hold returned %s, want cancelled", r.Status)
		}
		if step := h.step(t); step.Kind != StepCancelled {
			t.Errorf("last step = %+v, want cancelled", step)
		}
		stored, _, err := st.Get(context.Background(), r.ID)
		if err != nil || stored.Status != StatusCancelled {
			t.Errorf("stored status %v (%v), want cancelled", stored, err)
		}
	})
}

func TestRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		st := open()
		s := newService(t, st, Options{})
		h := startHold(context.Background(), s, newRequest())
		h.step(t)
		id := onlyPending(t, s)

		// The agent itself, even with a user-shaped token from its own app.
		self := agent()
		self.Groups = []string{"dba"}
		if _, err := s.Decide(context.Background(), id, self, true, ""); !errors.Is(err,
			ErrSelfApproval) || !strings.Contains(err.Error(), "same object id") {
			t.Fatalf("self approval: err = %v, want ErrSelfApproval naming the object id", err)
		}
		if step := h.step(t); step.Kind != StepRefused || step.Actor.OID != agentOID {
			t.Errorf("step after self approval = %+v, want refused", step)
		}
		sameApp := dba()
		sameApp.OID, sameApp.AppID, sameApp.IDType = "other", agentApp, "app"
		_, err := s.Decide(context.Background(), id, sameApp, true, "")
		if !errors.Is(err, ErrSelfApproval) || strings.Contains(err.Error(), "object id") ||
			!strings.Contains(err.Error(), "same application ("+agentApp+"), acting as itself") {
			t.Fatalf("approval by the same app: err = %v, want ErrSelfApproval naming the app",
				err)
		}
		if step := h.step(t); !strings.Contains(step.Reason, "same application") {
			t.Errorf("step after approval by the same app = %+v, want the cause named", step)
		}
		if _, err := s.Decide(context.Background(), id, outsider(), true, ""); !errors.Is(err,
			ErrNotApprover) {
			t.Fatalf("outsider: err = %v, want ErrNotApprover", err)
		}
		if step := h.step(t); step.Kind != StepRefused || step.Actor.OID != outsiderOID {
			t.Errorf("step after outsider = %+v, want refused", step)
		}

		// Still pending; the DBA may approve.
		if _, err := s.Decide(context.Background(), id, dba(), true, ""); err != nil {
			t.Fatal(err)
		}
		if r := h.wait(t); r.Status != StatusApproved {
			t.Errorf("Hold returned %s", r.Status)
		}
		_, steps, err := st.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, s := range steps {
			kinds = append(kinds, s.Kind)
		}
		want := []string{StepRequested, StepRefused, StepRefused, StepRefused, StepApproved}
		if !equal(kinds, want) {
			t.Errorf("stored steps %v, want %v", kinds, want)
		}
	})
}

func TestWindowScope(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		clock := &fakeClock{t: time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)}
		s := newService(t, open(), Options{Clock: clock.Now})
		ctx := context.Background()

		// A once approval covers nothing.
		h := startHold(ctx, s, newRequest())
		h.step(t)
		if _, err := s.Decide(ctx, onlyPending(t, s), dba(), true, ""); err != nil {
			t.Fatal(err)
		}
		h.wait(t)
		if s.Covered(ctx, agent(), "customer-db", "DROP TABLE customers") {
			t.Error("a once approval covers a repeat")
		}

		req := newRequest()
		req.Scope, req.Window = ScopeWindow, 10*time.Minute
		h = startHold(ctx, s, req)
		h.step(t)
		if s.Covered(ctx, agent(), "customer-db", "DROP TABLE customers") {
			t.Error("a pending window request covers a repeat")
		}
		if _, err := s.Decide(ctx, onlyPending(t, s), dba(), true, ""); err != nil {
			t.Fatal(err)
		}
		h.wait(t)

		other := agent()
		other.OID, other.AppID = "someone-else", "another-app"
		cases := []struct {
			name string
			ok   bool
			got  bool
		}{
			{"same", true, s.Covered(ctx, agent(), "customer-db", "DROP TABLE customers")},
			{"other sql", false, s.Covered(ctx, agent(), "customer-db", "DROP TABLE orders")},
			{"other connection", false, s.Covered(ctx, agent(), "other-db",
				"DROP TABLE customers")},
			{"other requester", false, s.Covered(ctx, other, "customer-db",
				"DROP TABLE customers")},
		}
		for _, c := range cases {
			if c.got != c.ok {
				t.Errorf("%s: covered = %v, want %v", c.name, c.got, c.ok)
			}
		}
		clock.Add(11 * time.Minute)
		if s.Covered(ctx, agent(), "customer-db", "DROP TABLE customers") {
			t.Error("covered after the window closed")
		}
	})
}

// TestTwoServices: two services, each on its own handle of one store (as
// two replicas), see the same request; a decision through one releases
// the other's hold. On PostgreSQL the poll interval is an hour, so only
// LISTEN/NOTIFY can wake the hold.
func TestTwoServices(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		poll := time.Hour
		if _, ok := open().(Watcher); !ok {
			poll = 20 * time.Millisecond // the file store has no notifications
		}
		a := newService(t, open(), Options{PollInterval: poll})
		b := newService(t, open(), Options{PollInterval: poll})
		h := startHold(context.Background(), a, newRequest())
		h.step(t)
		id := onlyPending(t, b)

		// A refused attempt through b reaches a's hold too.
		if _, err := b.Decide(context.Background(), id, outsider(), true, ""); !errors.Is(err,
			ErrNotApprover) {
			t.Fatalf("outsider through b: %v", err)
		}
		if step := h.step(t); step.Kind != StepRefused {
			t.Errorf("a's hold saw %+v, want the refused step", step)
		}
		if _, err := b.Decide(context.Background(), id, dba(), true, "ok"); err != nil {
			t.Fatal(err)
		}
		if r := h.wait(t); r.Status != StatusApproved || r.Reason != "ok" {
			t.Errorf("a's hold returned %s %q", r.Status, r.Reason)
		}
	})
}

// TestRacingDecisions: many approvers on separate store handles decide at
// once; exactly one wins.
func TestRacingDecisions(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		a := newService(t, open(), Options{})
		h := startHold(context.Background(), a, newRequest())
		h.step(t)
		id := onlyPending(t, a)

		const n = 8
		var wg sync.WaitGroup
		wins := make(chan string, n)
		for i := 0; i < n; i++ {
			s := newService(t, open(), Options{})
			approve := i%2 == 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := s.Decide(context.Background(), id, dba(), approve, "race")
				switch {
				case err == nil:
					wins <- r.Status
				case !errors.Is(err, ErrNotPending):
					t.Errorf("decide: %v", err)
				}
			}()
		}
		wg.Wait()
		close(wins)
		var won []string
		for w := range wins {
			won = append(won, w)
		}
		if len(won) != 1 {
			t.Fatalf("%d decisions won, want 1: %v", len(won), won)
		}
		if r := h.wait(t); r.Status != won[0] {
			t.Errorf("hold returned %s, the winner was %s", r.Status, won[0])
		}
	})
}

func TestPostgresMigrateTwice(t *testing.T) {
	dsn := startPG(t)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		s, err := NewPostgresStore(ctx, dsn)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		var versions int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM vigil_approvals.schema_version`).
			Scan(&versions); err != nil {
			t.Fatal(err)
		}
		if versions != len(migrations) {
			t.Errorf("open %d: %d versions recorded, want %d", i, versions, len(migrations))
		}
		s.Close()
	}
}

func TestHoldRejectsBadRequests(t *testing.T) {
	s := newService(t, mustFileStore(t), Options{})
	cases := map[string]func(r *Request){
		"no requester": func(r *Request) { r.Requester = nil },
		"no timeout":   func(r *Request) { r.Timeout = 0 },
		"bad scope":    func(r *Request) { r.Scope = "session" },
		"no window":    func(r *Request) { r.Scope = ScopeWindow },
	}
	for name, change := range cases {
		r := newRequest()
		change(r)
		if _, err := s.Hold(context.Background(), r, func(Step) {}); err == nil {
			t.Errorf("%s: Hold accepted it", name)
		}
	}
}

func mustFileStore(t *testing.T) *FileStore {
	t.Helper()
	st, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func onlyPending(t *testing.T, s *Service) string {
	t.Helper()
	rs, err := s.pending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 {
		t.Fatalf("%d pending requests, want 1", len(rs))
	}
	return rs[0].ID
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestCancelSessions: requests a stopped or crashed vigil left pending for
// sessions that are gone are cancelled at the next start; others stay.
func TestCancelSessions(t *testing.T) {
	forEachStore(t, func(t *testing.T, open func() Store) {
		st := open()
		ctx := context.Background()
		ids := map[string]string{}
		for _, session := range []string{"gone", "alive"} {
			r := newRequest()
			r.ID, r.SessionID, r.Status, r.Created = NewID(), session, StatusPending, time.Now()
			if err := st.Create(ctx, r, Step{Kind: StepRequested, Actor: r.Requester,
				Time: r.Created}); err != nil {
				t.Fatal(err)
			}
			ids[session] = r.ID
		}
		s := newService(t, st, Options{})
		n, err := s.CancelSessions(ctx, []string{"gone", "never-held"}, "vigil restarted")
		if err != nil || n != 1 {
			t.Fatalf("CancelSessions: %d, %v; want 1 cancelled", n, err)
		}
		for session, want := range map[string]string{"gone": StatusCancelled,
			"alive": StatusPending} {
			r, _, err := st.Get(ctx, ids[session])
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != want {
				t.Errorf("request of session %s is %s; want %s", session, r.Status, want)
			}
		}
		if _, err := s.Decide(ctx, ids["gone"], dba(), true, ""); !errors.Is(err, ErrNotPending) {
			t.Errorf("approving the cancelled request: %v; want ErrNotPending", err)
		}
	})
}
