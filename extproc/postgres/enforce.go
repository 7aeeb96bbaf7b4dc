package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/policy"
)

// Policy enforcement inside the Envoy contract.
//
// vigil cannot answer a client's request itself while answering a client
// chunk. To deny, it rewrites the request into one the server is certain
// to reject, and rewrites that ErrorResponse on its way back into vigil's
// own (SQLSTATE 42501, the rules and reasons). The server keeps the
// protocol and transaction semantics exactly right: an error inside a
// transaction block aborts it, and in an extended-protocol batch the
// server skips everything up to Sync.
//
//   - A simple Query becomes a statement that cannot parse. If any
//     statement of a query string is denied, none of them runs.
//   - An Execute names a portal that does not exist.

// stateInsufficientPrivilege is SQLSTATE 42501, vigil's denial.
const stateInsufficientPrivilege = "42501"

// Decider judges commands; *policy.Engine is one.
type Decider interface {
	Decide(ctx context.Context, in *policy.Input) (*policy.Decision, error)
}

// denial is a refused request waiting for the server's error to rewrite.
type denial struct {
	message string
	// code is the SQLSTATE the client sees; default 42501.
	code string
	hint string
	// fatal makes the client's error FATAL: the session ends after it.
	fatal bool
}

// state is the SQLSTATE of the denial.
func (d *denial) state() string {
	if d.code == "" {
		return stateInsufficientPrivilege
	}
	return d.code
}

// stateIOError is SQLSTATE 58030: the journal cannot be written.
const stateIOError = "58030"

// verdict is the judgement of one request: one decision per statement.
type verdict struct {
	decisions []*policy.Decision
	denied    *denial
	mask      []policy.MaskRule
}

// judge asks the policy about each statement of a request. mu is held;
// evaluation does no I/O, so it stays held.
func (s *session) judge(ctx context.Context, message, sql string, params []audit.Parameter,
	a analysis) verdict {
	var v verdict
	if s.h.opts.Policy == nil {
		return v
	}
	stmts := a.stmts
	in := s.input(sql, params)
	in.Command.Message, in.Command.ParseError = message, a.parseError
	in.Command.Function = s.function
	var reasons []string
	judgeOne := func(st []policy.Statement) {
		in.Command.Statements = st
		d, err := s.h.opts.Policy.Decide(ctx, in)
		if err != nil {
			// Fail closed: a policy that cannot decide denies.
			s.log.Error("policy evaluation failed; denying", "err", err)
			d = &policy.Decision{Allow: false, Reasons: []string{"policy evaluation failed"},
				Rules: []string{"vigil.error"}}
		}
		v.decisions = append(v.decisions, d)
		v.mask = append(v.mask, d.Mask...)
		switch {
		case !d.Allow:
			reasons = append(reasons, denialText(d))
		}
	}
	if len(stmts) == 0 {
		judgeOne(nil)
	}
	for i := range stmts {
		judgeOne(stmts[i : i+1])
	}
	if s.h.opts.Monitor {
		// Monitor mode: the decisions are recorded, nothing is enforced.
		v.mask = nil
		return v
	}
	if len(reasons) > 0 {
		v.denied = &denial{message: "vigil: denied by policy: " + strings.Join(reasons, "; ")}
	}
	return v
}

func denialText(d *policy.Decision) string {
	why := strings.Join(d.Reasons, ", ")
	if why == "" {
		why = "not allowed"
	}
	if len(d.Rules) > 0 {
		why += " (rule " + strings.Join(d.Rules, ", ") + ")"
	}
	return why
}

// input builds the policy input document for a command.
func (s *session) input(sql string, params []audit.Parameter) *policy.Input {
	in := &policy.Input{Identity: s.id}
	in.Connection = policy.ConnectionInput{Name: s.cn.Name, Type: s.cn.Type,
		Database: s.database, UpstreamUser: s.upstreamUser(), Grant: s.grant}
	in.Session = policy.SessionInput{Client: s.info.Client, Application: s.clientUp.application,
		Opened: s.opened}
	if s.rec != nil {
		in.Session.ID = s.rec.ID()
	}
	in.Command = policy.CommandInput{Protocol: "postgres", SQL: sql, Parameters: params}
	return in
}

// auditDecision is the record of a verdict's decision for one statement.
func auditDecision(d *policy.Decision) *audit.Decision {
	if d == nil {
		return nil
	}
	ad := &audit.Decision{Allowed: d.Allow, Rules: d.Rules, Reasons: d.Reasons,
		Revision: d.Revision, Hold: d.Approval != nil}
	for _, m := range d.Mask {
		ad.Mask = append(ad.Mask, maskRuleName(m)+":"+m.Strategy)
	}
	return ad
}

func maskRuleName(m policy.MaskRule) string {
	switch {
	case m.Detector != "":
		return m.Detector
	case m.Table != "":
		return m.Table + "." + m.Column
	}
	return m.Column
}

// deniedQuery is a Query the server is certain to refuse at parse time:
// no object a user creates can make it valid.
func (s *session) deniedQuery(out []byte) []byte {
	b, _ := (&pgproto3.Query{String: "VIGIL DENIED " + s.nonce()}).Encode(out)
	return b
}

// deniedExecute names a portal that cannot exist.
func (s *session) deniedExecute(out []byte) []byte {
	b, _ := (&pgproto3.Execute{Portal: "vigil denied " + s.nonce()}).Encode(out)
	return b
}

func (s *session) nonce() string {
	if s.denyNonce == "" {
		var b [8]byte
		rand.Read(b[:])
		s.denyNonce = hex.EncodeToString(b[:])
	}
	return s.denyNonce
}

// rewriteDenial replaces the server's error for a denied request with
// vigil's own.
func rewriteDenial(out []byte, d *denial, severity string) []byte {
	if severity == "" {
		severity = "ERROR"
	}
	if d.fatal {
		severity = "FATAL"
	}
	hint := d.hint
	if hint == "" {
		hint = "the statement was not run; ask the policy owner if it should be allowed"
	}
	e := pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity,
		Code: d.state(), Message: d.message, Hint: hint}
	b, err := e.Encode(out)
	if err != nil {
		return appendError(out, severity, d.state(), d.message)
	}
	return b
}

// recordDenied records the result of a command vigil refused.
func (s *session) recordDenied(c *command, d *denial) {
	s.finish(c, audit.Result{Status: audit.StatusDenied, SQLState: d.state(),
		Message: d.message})
}

// errDenied formats a denial for logs.
func (d *denial) String() string { return fmt.Sprintf("denied: %s", d.message) }

// first is the decision of the first statement, or nil.
func (v verdict) first() *policy.Decision {
	if len(v.decisions) == 0 {
		return nil
	}
	return v.decisions[0]
}
