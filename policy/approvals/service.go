package approvals

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// Defaults of Options.
const (
	defaultPollInterval = time.Second
	// endTimeout bounds the store write that records an expiry or a
	// cancellation, which runs after the caller's context may have ended.
	endTimeout = 10 * time.Second
)

// Options configure a Service. The zero value is usable.
type Options struct {
	// Webhook, when set, receives a JSON POST when a request is created and
	// when it ends (see the package doc).
	Webhook string
	// PublicURL is the approvals page as approvers reach it (for example
	// https://vigil.example.com/approvals/); the webhook text links to it.
	PublicURL string
	// HTTPClient sends webhooks; default a client with a 5 s timeout.
	HTTPClient *http.Client
	// Log receives lifecycle lines and anomalies; default slog.Default().
	Log *slog.Logger
	// Clock stamps requests and steps and decides window coverage; default
	// time.Now. Timeouts run on real timers.
	Clock func() time.Time
	// PollInterval is how often a Hold re-reads its request from the store,
	// to notice changes made by other processes that the store did not
	// announce; default one second.
	PollInterval time.Duration
}

// Service holds requests, takes decisions, and serves approvers. It is safe
// for concurrent use; Close it when done.
type Service struct {
	store    Store
	verifier identity.Verifier
	opts     Options
	log      *slog.Logger
	now      func() time.Time
	hooks    *webhook // nil without Options.Webhook

	mu      sync.Mutex
	waiters map[string][]chan struct{} // request id → holds waiting on it

	stop context.CancelFunc
	done chan struct{}
}

// NewService returns a service over store that checks approvers' tokens
// with verifier. When store is a Watcher, the service watches it until
// Close.
func NewService(store Store, verifier identity.Verifier, opts Options) *Service {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = defaultPollInterval
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Service{
		store: store, verifier: verifier, opts: opts, log: opts.Log, now: opts.Clock,
		waiters: map[string][]chan struct{}{}, stop: stop, done: make(chan struct{}),
	}
	if opts.Webhook != "" {
		s.hooks = newWebhook(opts.Webhook, opts.PublicURL, opts.HTTPClient, opts.Log)
	}
	go s.watch(ctx)
	return s
}

// Close stops watching the store and delivers the webhooks already queued
// (each bounded by its timeout and retries). It does not close the store.
func (s *Service) Close() error {
	s.stop()
	<-s.done
	if s.hooks != nil {
		s.hooks.close()
	}
	return nil
}

// watch wakes holds when the store announces a change, until ctx ends.
func (s *Service) watch(ctx context.Context) {
	defer close(s.done)
	w, ok := s.store.(Watcher)
	if !ok {
		return
	}
	for {
		err := w.Watch(ctx, s.wake)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("approvals: watching the store failed; polling until it recovers",
			"err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// Hold creates req (filling in ID, Created and Status), tells the webhook,
// and blocks until the request is decided, expires after req.Timeout, or
// ctx ends; in the last case the request is cancelled (the client went
// away). notify is called on the caller's goroutine for every step, in
// order: requested, each refused attempt, and the final step.
//
// Hold returns the request as it ended; its Status says what happened and
// Reason says why ("approval timed out" for an expiry). A non-nil error
// means the store failed; the command must then not run.
func (s *Service) Hold(ctx context.Context, req *Request, notify func(Step)) (*Request, error) {
	r, err := s.prepare(req)
	if err != nil {
		return nil, err
	}
	first := Step{Kind: StepRequested, Actor: r.Requester,
		Reason: strings.Join(r.Reasons, "; "), Time: r.Created}

	// Register before creating, so that no wake-up is missed.
	wake := s.register(r.ID)
	defer s.unregister(r.ID, wake)
	if err := s.store.Create(ctx, r, first); err != nil {
		return nil, fmt.Errorf("approvals: create request: %w", err)
	}
	notify(first)
	s.log.Info("approvals: request held", "id", r.ID, "session", r.SessionID,
		"connection", r.Connection, "requester", r.Requester.Principal(),
		"approvers", r.Approvers, "timeout", r.Timeout)
	s.hook(r)

	timer := time.NewTimer(r.Timeout)
	defer timer.Stop()
	poll := time.NewTicker(s.opts.PollInterval)
	defer poll.Stop()
	seen := 1
	for {
		select {
		case <-ctx.Done():
			return s.end(r.ID, StatusCancelled, "client went away", notify, &seen)
		case <-timer.C:
			return s.end(r.ID, StatusExpired, "approval timed out", notify, &seen)
		case <-wake:
		case <-poll.C:
		}
		cur, steps, err := s.store.Get(ctx, r.ID)
		if err != nil {
			// Keep waiting: the timeout still bounds the hold.
			s.log.Warn("approvals: reading held request failed", "id", r.ID, "err", err)
			continue
		}
		seen = replay(steps, seen, notify)
		if !cur.Pending() {
			return cur, nil
		}
	}
}

// prepare checks req and returns the copy Hold stores.
func (s *Service) prepare(req *Request) (*Request, error) {
	r := req.clone()
	if r.Requester == nil {
		return nil, errors.New("approvals: request has no requester")
	}
	if r.Timeout <= 0 {
		return nil, fmt.Errorf("approvals: request timeout %v is not positive", r.Timeout)
	}
	switch r.Scope {
	case "", ScopeOnce:
		r.Scope, r.Window = ScopeOnce, 0
	case ScopeWindow:
		if r.Window <= 0 {
			return nil, fmt.Errorf("approvals: window scope needs a positive window, got %v",
				r.Window)
		}
	default:
		return nil, fmt.Errorf("approvals: unknown scope %q: want once or window", r.Scope)
	}
	if r.ID == "" {
		r.ID = newID()
	}
	if r.Created.IsZero() {
		r.Created = s.now()
	}
	r.Status, r.Decider, r.Reason, r.Decided = StatusPending, nil, "", time.Time{}
	return r, nil
}

// end records that request id expired or was cancelled, unless it was
// decided first, and returns it as it ended after replaying its steps.
func (s *Service) end(id, status, reason string, notify func(Step),
	seen *int) (*Request, error) {
	ctx, cancel := context.WithTimeout(context.Background(), endTimeout)
	defer cancel()
	d := Decision{Status: status, Reason: reason, Time: s.now()}
	r, err := s.store.Decide(ctx, id, d)
	switch {
	case err == nil:
		s.log.Info("approvals: request ended", "id", id, "status", status)
		s.hook(r)
	case errors.Is(err, ErrNotPending):
		// A decision won the race; report it.
	default:
		return nil, fmt.Errorf("approvals: record %s: %w", status, err)
	}
	cur, steps, gerr := s.store.Get(ctx, id)
	if gerr != nil {
		if err != nil {
			return nil, fmt.Errorf("approvals: read decided request: %w", gerr)
		}
		notify(d.step()) // the store has it; only the read failed
		return r, nil
	}
	*seen = replay(steps, *seen, notify)
	return cur, nil
}

// replay notifies the steps after the first seen ones and returns how many
// have been seen.
func replay(steps []Step, seen int, notify func(Step)) int {
	for ; seen < len(steps); seen++ {
		notify(steps[seen])
	}
	return seen
}

// CancelSessions cancels the pending requests of the given sessions,
// which ended without their holds (vigil stopped or crashed while they
// waited), so that nobody approves a command whose client is gone. It
// returns how many it cancelled.
func (s *Service) CancelSessions(ctx context.Context, sessions []string, reason string) (int,
	error) {
	if len(sessions) == 0 {
		return 0, nil
	}
	gone := map[string]bool{}
	for _, id := range sessions {
		gone[id] = true
	}
	rs, err := s.store.List(ctx, StatusPending)
	if err != nil {
		return 0, fmt.Errorf("approvals: list pending requests: %w", err)
	}
	n := 0
	for _, r := range rs {
		if !gone[r.SessionID] {
			continue
		}
		d := Decision{Status: StatusCancelled, Reason: reason, Time: s.now()}
		out, err := s.store.Decide(ctx, r.ID, d)
		switch {
		case errors.Is(err, ErrNotPending):
			continue
		case err != nil:
			return n, fmt.Errorf("approvals: cancel %s: %w", r.ID, err)
		}
		n++
		s.log.Info("approvals: request cancelled", "id", r.ID, "session", r.SessionID,
			"reason", reason)
		s.hook(out)
	}
	return n, nil
}

// Covered reports whether an open window approval covers the statement sql
// from id on connection. It fails closed: when the store cannot answer, it
// logs and reports false, so the command is held again.
func (s *Service) Covered(ctx context.Context, id *identity.Identity, connection,
	sql string) bool {
	key := requesterKey(id)
	if key == "" {
		return false
	}
	ok, err := s.store.Covered(ctx, key, connection, sql, s.now())
	if err != nil {
		s.log.Warn("approvals: window check failed; holding again", "err", err)
		return false
	}
	return ok
}

// Decide approves or denies request id as approver, with reason (required
// to deny). It refuses with ErrSelfApproval when approver is the requester
// and with ErrNotApprover when approver matches none of the request's
// Approvers, and stores each refusal as a "refused" step; it returns
// ErrNotPending when the request already ended (or its timeout passed),
// ErrNotFound for an unknown id and ErrReasonRequired for a denial
// without a reason. On a refusal the request is returned too.
func (s *Service) Decide(ctx context.Context, id string, approver *identity.Identity,
	approve bool, reason string) (*Request, error) {
	if approver == nil {
		return nil, errors.New("approvals: decide: no approver")
	}
	r, _, err := s.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !r.Pending() {
		return r, fmt.Errorf("%w: %s is %s", ErrNotPending, id, r.Status)
	}
	if !s.now().Before(r.Deadline()) {
		// Its hold has gone (or is about to expire it): end it now.
		s.expire(ctx, r)
		return r, fmt.Errorf("%w: %s timed out", ErrNotPending, id)
	}

	// Who may decide.
	verb := "approve"
	if !approve {
		verb = "deny"
	}
	if why := selfReason(r.Requester, approver); why != "" {
		s.refuse(ctx, r, approver, verb+" refused: the approver counts as the requester: "+why)
		return r, fmt.Errorf("%w: %s", ErrSelfApproval, why)
	}
	if _, ok := approverGrant(r.Approvers, approver); !ok {
		s.refuse(ctx, r, approver, verb+" refused: the approver holds none of "+
			strings.Join(r.Approvers, ", "))
		return r, fmt.Errorf("%w: %s holds none of %s", ErrNotApprover,
			approver.Principal(), strings.Join(r.Approvers, ", "))
	}
	reason = strings.TrimSpace(reason)
	if !approve && reason == "" {
		return r, ErrReasonRequired
	}

	// The decision itself, atomic in the store.
	d := Decision{Status: StatusApproved, Decider: approver, Reason: reason, Time: s.now()}
	if !approve {
		d.Status = StatusDenied
	}
	out, err := s.store.Decide(ctx, id, d)
	if err != nil {
		return nil, fmt.Errorf("approvals: decide %s: %w", id, err)
	}
	s.wake(id)
	s.log.Info("approvals: request decided", "id", id, "status", d.Status,
		"approver", approver.Principal(), "approver_oid", approver.OID)
	s.hook(out)
	return out, nil
}

// refuse stores a refused attempt and wakes the request's hold so that it
// is recorded promptly.
func (s *Service) refuse(ctx context.Context, r *Request, who *identity.Identity,
	reason string) {
	s.log.Info("approvals: attempt refused", "id", r.ID, "approver", who.Principal(),
		"approver_oid", who.OID, "reason", reason)
	st := Step{Kind: StepRefused, Actor: who, Reason: reason, Time: s.now()}
	if err := s.store.AddStep(ctx, r.ID, st); err != nil {
		s.log.Error("approvals: storing a refused attempt failed", "id", r.ID, "err", err)
		return
	}
	s.wake(r.ID)
}

// expire ends r, whose timeout has passed, unless something ended it first.
func (s *Service) expire(ctx context.Context, r *Request) {
	d := Decision{Status: StatusExpired, Reason: "approval timed out", Time: s.now()}
	out, err := s.store.Decide(ctx, r.ID, d)
	if err != nil {
		if !errors.Is(err, ErrNotPending) {
			s.log.Warn("approvals: expiring a request failed", "id", r.ID, "err", err)
		}
		return
	}
	s.wake(r.ID)
	s.hook(out)
}

// pending returns the pending requests, expiring those whose timeout has
// passed without their hold noticing (its process may have gone).
func (s *Service) pending(ctx context.Context) ([]*Request, error) {
	rs, err := s.store.List(ctx, StatusPending)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := rs[:0]
	for _, r := range rs {
		// A grace period lets a live hold record its own expiry first.
		if now.Sub(r.Deadline()) > s.opts.PollInterval+time.Second {
			s.expire(ctx, r)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// register returns a channel that is signalled when request id changes.
func (s *Service) register(id string) chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.waiters[id] = append(s.waiters[id], ch)
	s.mu.Unlock()
	return ch
}

func (s *Service) unregister(id string, ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.waiters[id]
	for i, c := range list {
		if c == ch {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.waiters, id)
	} else {
		s.waiters[id] = list
	}
}

// wake signals the holds waiting on request id in this process, or every
// hold when id is empty.
func (s *Service) wake(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for rid, list := range s.waiters {
		if id != "" && rid != id {
			continue
		}
		for _, ch := range list {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// hook queues a webhook delivery for r, if a webhook is configured.
func (s *Service) hook(r *Request) {
	if s.hooks != nil {
		s.hooks.send(r)
	}
}
