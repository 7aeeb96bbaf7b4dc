package proto_test

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
	auditv1 "github.com/vigilaudit/vigil/proto/vigil/audit/v1"
)

// agent and approver have every field set, so that a claim the schema
// lacks fails the tests.
var (
	agent = &identity.Identity{OID: "0b6f3c1e-agent", TID: "72f988bf-tenant",
		Sub: "sub-agent", AppID: "app-agent", IDType: "app", Name: "billing agent",
		UPN: "agent@example.com", MIResourceID: "/subscriptions/s/mi/agent",
		Roles: []string{"Db.Read"}, Groups: []string{"billing-agents"}, GroupsOverage: true,
		UTI: "uti-1", Version: "2.0", Issuer: "https://login.microsoftonline.com/t/v2.0",
		Audience: "api://vigil", ExpiresAt: time.Date(2031, 5, 6, 7, 8, 9, 123000000, time.UTC)}
	approver = &identity.Identity{OID: "oid-dba", TID: "72f988bf-tenant", IDType: "user",
		Name: "Dana", UPN: "dana@example.com", Groups: []string{"dba"}}
)

// writeJournal records two sessions with every kind of event and every
// event field set, takes a checkpoint and closes the journal (a final
// checkpoint). It returns the journal directory and the events recorded.
func writeJournal(t *testing.T) (string, int) {
	t.Helper()
	dir := t.TempDir()
	j, err := audit.Open(dir, audit.Options{CheckpointInterval: -1,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	base := audit.Event{Connection: "billing", Protocol: "postgres", Identity: agent,
		Grant: "group:billing-agents", Client: "10.0.0.7:51234", Upstream: "db:5432",
		UpstreamUser: "billing_rw", Database: "billing"}
	opened := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)

	// Session one: start, a held and masked command, its approval, its
	// result, end.
	ev := base
	ev.Kind, ev.Time = audit.KindSessionStart, opened
	ev.Session = &audit.Session{Opened: opened, Application: "psql", ClientUser: "agent"}
	rec, err := j.Begin(ev)
	must(err)

	ev = base
	ev.Kind = audit.KindCommand
	ev.Command = &audit.Command{Message: "execute", SQL: "SELECT email FROM users WHERE id = $1",
		Index: 1, Count: 2, Statement: "s1", Portal: "p1",
		Parameters: []audit.Parameter{{Format: "text", Value: "42", TypeOID: 23},
			{Format: "binary", Null: true}},
		ParameterCount: 2, Function: 1242}
	ev.Decision = &audit.Decision{Allowed: true, Rules: []string{"mask_email"},
		Reasons: []string{"emails are masked"}, Revision: "rev-7",
		Mask: []string{"email:redact"}, Hold: true}
	cmd, err := rec.Record(ev)
	must(err)

	for _, a := range []audit.Approval{
		{Command: cmd, RequestID: "abcdefghijklmnop", Step: "requested", Actor: agent,
			Reason: "reads customer emails", Approvers: []string{"group:dba"}},
		{Command: cmd, RequestID: "abcdefghijklmnop", Step: "approved", Actor: approver,
			Reason: "ticket 123"},
	} {
		ev = base
		ev.Kind, ev.Approval = audit.KindApproval, &a
		_, err = rec.Record(ev)
		must(err)
	}

	ev = base
	ev.Kind = audit.KindResult
	ev.Result = &audit.Result{Command: cmd, Status: audit.StatusError, Tag: "SELECT 3",
		Rows: 3, SQLState: "42501", Message: "permission denied", Duration: 1.25,
		Masked: []audit.Masked{{Column: "email", Strategy: "redact", Rule: "email", Values: 3}}}
	_, err = rec.Record(ev)
	must(err)

	ev = base
	ev.Reason = "client closed the connection"
	ev.Session = &audit.Session{Opened: opened, Closed: opened.Add(time.Minute), Commands: 1,
		Application: "psql", ClientUser: "agent"}
	must(rec.End(ev))

	// Session two: a refused login, open across the checkpoint.
	ev = base
	ev.Kind, ev.Reason, ev.ReasonCode = audit.KindAuthFailed, "token expired", "expired"
	rec2, err := j.Begin(ev)
	must(err)
	must(j.Checkpoint())
	must(rec2.End(audit.Event{Connection: "billing"}))
	must(j.Close())
	return dir, 8
}

// TestJournalLinesReadAsProto reads every line of a real journal strictly
// into Record or CheckpointLine, and writes each back: the schema must hold
// every field the journal writes, and nothing more.
func TestJournalLinesReadAsProto(t *testing.T) {
	dir, events := writeJournal(t)
	segs, err := filepath.Glob(filepath.Join(dir, "segment-*.jsonl"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment files in %s (%v)", dir, err)
	}

	kinds := map[string]bool{}
	var records, checkpoints, finals int
	for _, seg := range segs {
		f, err := os.Open(seg)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := sc.Bytes()
			if bytes.IndexByte(line, 0) >= 0 {
				break // the zero-filled tail of a preallocated segment: its end
			}
			what := fmt.Sprintf("%s:%d", filepath.Base(seg), n)
			if bytes.HasPrefix(line, []byte(`{"checkpoint":`)) {
				var cp auditv1.CheckpointLine
				roundTrip(t, what, line, &cp)
				checkpoints++
				if cp.GetCheckpoint().GetFinal() {
					finals++
				}
				continue
			}
			var r auditv1.Record
			roundTrip(t, what, line, &r)
			records++
			kinds[r.GetEvent().GetKind()] = true
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}

	if records != events {
		t.Errorf("read %d records, want %d", records, events)
	}
	if checkpoints != 2 || finals != 1 {
		t.Errorf("read %d checkpoints (%d final), want 2 (1 final)", checkpoints, finals)
	}
	for _, k := range []audit.Kind{audit.KindSessionStart, audit.KindAuthFailed,
		audit.KindCommand, audit.KindResult, audit.KindApproval, audit.KindSessionEnd} {
		if !kinds[string(k)] {
			t.Errorf("no %s event read; the test no longer covers it", k)
		}
	}
}
