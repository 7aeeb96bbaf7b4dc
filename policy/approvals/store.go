package approvals

import (
	"context"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// Store keeps requests and their steps where every replica sees them.
// Implementations are safe for concurrent use, and return ErrNotFound and
// ErrNotPending (wrapped) where the methods say so. Requests they return
// are copies the caller may keep.
type Store interface {
	// Create stores r, which is pending, with first as its first step.
	Create(ctx context.Context, r *Request, first Step) error
	// Get returns the request with id and its steps in order, or
	// ErrNotFound.
	Get(ctx context.Context, id string) (*Request, []Step, error)
	// List returns the requests with status (every request when empty),
	// oldest first.
	List(ctx context.Context, status string) ([]*Request, error)
	// AddStep appends s to the steps of request id, or returns ErrNotFound.
	AddStep(ctx context.Context, id string, s Step) error
	// Decide ends request id as d says and appends the matching step, in
	// one atomic change that happens only while the request is pending;
	// otherwise it returns ErrNotPending (or ErrNotFound). It returns the
	// request as decided.
	Decide(ctx context.Context, id string, d Decision) (*Request, error)
	// Covered reports whether an approved request with ScopeWindow, of the
	// requester with requesterKey key, on connection, for exactly sql, is
	// still open at now (its Decided + Window is after now).
	Covered(ctx context.Context, key, connection, sql string, now time.Time) (bool, error)
	// Close releases the store's resources.
	Close() error
}

// Decision ends a pending request.
type Decision struct {
	// Status is StatusApproved, StatusDenied, StatusExpired or
	// StatusCancelled; the step appended has the same kind.
	Status string
	// Decider is the approver; nil for expired and cancelled.
	Decider *identity.Identity
	Reason  string
	Time    time.Time
}

// step is the step that records d.
func (d Decision) step() Step {
	return Step{Kind: d.Status, Actor: d.Decider, Reason: d.Reason, Time: d.Time}
}

// apply sets the decision fields of r.
func (d Decision) apply(r *Request) {
	r.Status = d.Status
	r.Decider = d.Decider
	r.Reason = d.Reason
	r.Decided = d.Time
}

// Watcher is implemented by stores that learn of changes made by other
// processes (PostgresStore, through LISTEN/NOTIFY). Watch calls changed
// with the id of each request that changed, until ctx ends; it returns
// early with an error when it cannot watch any more. Once it is watching
// (and after each reconnection) it calls changed("") to mean that any
// request may have changed unseen.
type Watcher interface {
	Watch(ctx context.Context, changed func(id string)) error
}

// covers reports whether r is an open window approval for the given
// requester, connection and statement.
func covers(r *Request, key, connection, sql string, now time.Time) bool {
	return r.Status == StatusApproved && r.Scope == ScopeWindow &&
		requesterKey(r.Requester) == key && r.Connection == connection && r.SQL == sql &&
		r.Decided.Add(r.Window).After(now)
}
