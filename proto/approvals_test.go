package proto_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/policy/approvals"
	approvalsv1 "github.com/vigilaudit/vigil/proto/vigil/approvals/v1"
	"google.golang.org/protobuf/proto"
)

// decidedView is a View as GET /api/approvals/{id} serves it, with every
// field set.
func decidedView() approvals.View {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	req := &approvals.Request{ID: "abcdefghijklmnop", Created: created,
		SessionID: "0190f1c2-0000-7000-8000-000000000001", CommandSeq: 2,
		Connection: "billing", Requester: agent, Grant: "group:billing-agents",
		SQL:        "DELETE FROM invoices WHERE id = $1",
		Parameters: []audit.Parameter{{Format: "text", Value: "7", TypeOID: 23}},
		Reasons:    []string{"deletes need a DBA"}, Approvers: []string{"group:dba"},
		Timeout: 15 * time.Minute, Scope: approvals.ScopeWindow, Window: time.Hour,
		Status: approvals.StatusApproved, Decider: approver, Reason: "ticket 123",
		Decided: created.Add(90 * time.Second)}
	return approvals.View{Request: req, Deadline: req.Deadline(), WaitedSeconds: 90.5,
		Steps: []approvals.Step{
			{Kind: approvals.StepRequested, Actor: agent, Reason: "deletes need a DBA",
				Time: created},
			{Kind: approvals.StepApproved, Actor: approver, Reason: "ticket 123",
				Time: created.Add(90 * time.Second)},
		}}
}

// TestApprovalsBodiesReadAsProto encodes the API's bodies as the HTTP
// handler does (encoding/json) and reads them strictly into the messages.
func TestApprovalsBodiesReadAsProto(t *testing.T) {
	pending := approvals.View{Request: &approvals.Request{ID: "qrstuvwxyz234567",
		Created: time.Now().UTC(), SessionID: "s", CommandSeq: 5, Connection: "billing",
		Requester: agent, SQL: "DROP TABLE t", Approvers: []string{"role:Db.Admin"},
		Timeout: time.Minute, Scope: approvals.ScopeOnce, Status: approvals.StatusPending},
		Deadline: time.Now().UTC().Add(time.Minute), WaitedSeconds: 0.25}

	for _, c := range []struct {
		name string
		body any
		msg  proto.Message
	}{
		{"view", decidedView(), &approvalsv1.View{}},
		{"list", approvals.ListResponse{Requests: []approvals.View{decidedView(), pending}},
			&approvalsv1.ListResponse{}},
		{"empty list", approvals.ListResponse{Requests: []approvals.View{}},
			&approvalsv1.ListResponse{}},
		{"decision", approvals.DecisionBody{Reason: "ticket 123"}, &approvalsv1.DecisionBody{}},
		{"error", approvals.ErrorResponse{Error: "no such request", Cause: "not_found"},
			&approvalsv1.ErrorResponse{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := json.Marshal(c.body)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, c.name, b, c.msg)
		})
	}
}

// TestRequestDurationsAreGoStrings pins the one place the API's JSON is
// not protojson's: durations are Go duration strings, held in string
// fields.
func TestRequestDurationsAreGoStrings(t *testing.T) {
	b, err := json.Marshal(decidedView())
	if err != nil {
		t.Fatal(err)
	}
	var v approvalsv1.View
	if err := strict.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if got := v.GetRequest().GetTimeout(); got != "15m0s" {
		t.Errorf("timeout = %q, want 15m0s", got)
	}
	if got := v.GetRequest().GetWindow(); got != "1h0m0s" {
		t.Errorf("window = %q, want 1h0m0s", got)
	}
}
