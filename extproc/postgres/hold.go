package postgres

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/policy"
	"github.com/vigilaudit/vigil/policy/approvals"
)

// Holds: a command the policy wants approved waits for a person.
//
// Under Envoy a hold is the processor not answering the client chunk that
// carries the command: Envoy forwards nothing of that direction until the
// reply comes. OnClient therefore blocks in Service.Hold with mu released,
// so the server direction keeps flowing (answers to earlier requests,
// notices, notifications) and other sessions, each on its own stream, are
// never affected. The hold ends with a decision, at its timeout, or when
// the client goes away (the stream's context ends), which cancels the
// request. Approved, the original request is forwarded; otherwise it is
// denied as any policy denial is.

// Approver holds commands for a human decision; *approvals.Service is one.
type Approver interface {
	Hold(ctx context.Context, req *approvals.Request, notify func(approvals.Step)) (
		*approvals.Request, error)
	Covered(ctx context.Context, id *identity.Identity, connection, sql string) bool
}

// holdNeeded merges the approvals a verdict's decisions ask for: every
// approver named, the shortest timeout, and a window only when every
// statement allows one. It returns nil when nothing needs approval.
func holdNeeded(v verdict) *policy.Approval {
	var out *policy.Approval
	for _, d := range v.decisions {
		a := d.Approval
		if a == nil || !d.Allow {
			continue
		}
		if out == nil {
			c := *a
			c.Approvers = slices.Clone(a.Approvers)
			out = &c
			continue
		}
		for _, g := range a.Approvers {
			if !slices.Contains(out.Approvers, g) {
				out.Approvers = append(out.Approvers, g)
			}
		}
		out.Timeout = min(out.Timeout, a.Timeout)
		if a.Scope != approvals.ScopeWindow {
			out.Scope, out.Window = approvals.ScopeOnce, 0
		} else if out.Scope == approvals.ScopeWindow {
			out.Window = min(out.Window, a.Window)
		}
	}
	return out
}

// holdReasons are the policy's reasons of the decisions that asked for
// approval.
func holdReasons(v verdict) []string {
	var out []string
	for _, d := range v.decisions {
		if d.Approval != nil && d.Allow {
			out = append(out, d.Reasons...)
		}
	}
	return out
}

// hold waits for approval of a command already recorded as cmd, and
// returns nil when it may run or the denial to apply. mu is held on entry
// and on return, and released while waiting.
func (s *session) hold(ctx context.Context, v verdict, sql string, params []audit.Parameter,
	cmd *command) *denial {
	need := holdNeeded(v)
	if need == nil || s.h.opts.Monitor {
		return nil
	}
	svc := s.h.opts.Approvals
	if svc == nil {
		return &denial{message: "vigil: denied: the statement needs approval by " +
			strings.Join(need.Approvers, " or ") + " and this vigil has no approvals service"}
	}
	id, conn := s.id, s.cn.Name
	if need.Scope == approvals.ScopeWindow && svc.Covered(ctx, id, conn, sql) {
		s.recordApproval(cmd.seq, audit.Approval{Step: "covered",
			Reason: "an approval window for this statement is open"})
		return nil
	}
	// The id is made here, not by Hold, so that every step recorded names it.
	reqID := approvals.NewID()
	req := &approvals.Request{ID: reqID, SessionID: s.rec.ID(), CommandSeq: cmd.seq,
		Connection: conn,
		Requester:  id, Grant: s.grant, SQL: sql, Reasons: holdReasons(v),
		Approvers: need.Approvers, Timeout: need.Timeout, Scope: need.Scope,
		Window: need.Window}
	if s.cn.RecordParameters() {
		req.Parameters = params
	}
	if req.Scope == "" {
		req.Scope = approvals.ScopeOnce
	}
	if req.Timeout <= 0 {
		req.Timeout = 15 * time.Minute
	}
	notify := func(st approvals.Step) {
		a := audit.Approval{RequestID: reqID, Step: st.Kind, Actor: st.Actor, Reason: st.Reason}
		if st.Kind == approvals.StepRequested {
			a.Approvers = need.Approvers
		}
		s.mu.Lock()
		s.recordApproval(cmd.seq, a)
		s.mu.Unlock()
	}
	s.log.Info("command held for approval", "request", reqID, "seq", cmd.seq,
		"approvers", need.Approvers, "timeout", need.Timeout)

	s.mu.Unlock()
	r, err := svc.Hold(ctx, req, notify)
	s.mu.Lock()

	// The wait may have been long: the result's duration starts now.
	cmd.start = time.Now()
	switch {
	case err != nil:
		s.log.Error("approvals store failed; denying the held command", "err", err)
		return &denial{message: "vigil: denied: the approval could not be recorded: " +
			err.Error()}
	case r.Status == approvals.StatusApproved:
		s.log.Info("held command approved", "request", reqID, "approver", r.Decider.Principal())
		return nil
	case r.Status == approvals.StatusDenied:
		who := r.Decider.Principal()
		return &denial{message: "vigil: denied by " + who + ": " + r.Reason}
	case r.Status == approvals.StatusExpired:
		return &denial{message: "vigil: denied: approval timed out after " +
			need.Timeout.String()}
	default:
		return &denial{message: "vigil: denied: approval " + r.Status + ": " + r.Reason}
	}
}

// recordApproval writes one approval step of command seq; mu is held. A
// step that cannot be recorded is logged; the command's own fate is
// decided by the hold, and the journal's failure closes the session at
// its next command.
func (s *session) recordApproval(seq uint64, a audit.Approval) {
	if s.rec == nil {
		return
	}
	a.Command = seq
	ev := s.base(audit.KindApproval)
	ev.Approval = &a
	if _, err := s.rec.Record(ev); err != nil {
		s.log.Error("audit: approval step not recorded", "seq", seq, "step", a.Step, "err", err)
	}
	s.recorded = true
}
