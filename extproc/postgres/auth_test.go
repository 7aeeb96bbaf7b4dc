package postgres

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
)

// TestNoGrantKeepsTheGrantsFromTheClient checks that a caller without a
// grant is told only that it has none: which grants would let it in goes
// to the audit (and the log), never to the client.
func TestNoGrantKeepsTheGrantsFromTheClient(t *testing.T) {
	h := newHarness(t, config.AuthPassword, nil)
	h.s.cn.Access = config.Grants{{Kind: "role", Value: "Db.Admin"}}
	h.client(enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent"}}))
	h.server(enc(t, &pgproto3.AuthenticationCleartextPassword{}))
	up := h.client(enc(t, &pgproto3.PasswordMessage{Password: "good"}))
	if strings.Contains(string(up.Data), "stored") {
		t.Fatalf("the stored password went upstream for a caller without a grant")
	}
	down := h.server(enc(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "08P01",
		Message: "expected password response"}))
	said := string(down.Data)
	if !strings.Contains(said, "has no grant for connection db") {
		t.Fatalf("client got %q, want the missing grant named", said)
	}
	if strings.Contains(said, "Db.Admin") || strings.Contains(said, "wants") {
		t.Errorf("client got %q: it names the grant it would need", said)
	}

	ss, err := audit.ReadSessions(h.dir, audit.Filter{})
	if err != nil || len(ss) != 1 {
		t.Fatalf("sessions %+v, %v; want the refused login", ss, err)
	}
	evs, err := audit.ReadSession(h.dir, ss[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Kind != audit.KindAuthFailed || evs[0].ReasonCode != "no_grant" ||
		!strings.Contains(evs[0].Reason, "(wants role:Db.Admin)") {
		t.Errorf("first event %+v, want auth_failed no_grant naming the grant it wants", evs[0])
	}
}
