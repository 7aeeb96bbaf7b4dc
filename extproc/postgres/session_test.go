package postgres

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/policy"
)

// fakeVerifier accepts the token "good" as an agent with role Db.Read.
type fakeVerifier struct{}

func (fakeVerifier) Verify(_ context.Context, tok string) (*identity.Identity, error) {
	if tok != "good" {
		return nil, &identity.Error{Reason: identity.ReasonMalformed, Message: "not a token"}
	}
	return &identity.Identity{OID: "oid-1", AppID: "app-1", Roles: []string{"Db.Read"}}, nil
}

// fakePolicy denies statements containing "forbidden" and masks column
// "email" with redact and e-mail addresses anywhere with partial.
type fakePolicy struct{}

func (fakePolicy) Decide(_ context.Context, in *policy.Input) (*policy.Decision, error) {
	d := &policy.Decision{Allow: true, Revision: "test"}
	if strings.Contains(in.Command.SQL, "forbidden") {
		d.Allow = false
		d.Rules = []string{"no_forbidden"}
		d.Reasons = []string{"forbidden things are forbidden"}
	}
	d.Mask = []policy.MaskRule{{Column: "email", Strategy: "redact"},
		{Detector: "email", Strategy: "partial"}}
	return d, nil
}

type harness struct {
	t   testing.TB
	s   *session
	dir string
	j   *audit.Journal
}

func newHarness(t testing.TB, auth string, dec Decider) *harness {
	t.Helper()
	dir := t.TempDir()
	j, err := audit.Open(dir, audit.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Connections: []config.Connection{{Name: "db", Type: "postgres",
		Upstream: "127.0.0.1:5432", Record: config.RecordFull,
		Credential: config.Credential{Auth: auth, User: "app", PasswordEnv: "VIGIL_TEST_PW"},
		Access:     config.Grants{{Kind: "role", Value: "Db.Read"}}}}}
	t.Setenv("VIGIL_TEST_PW", "stored")
	h := NewHandler(Options{Config: cfg, Verifier: fakeVerifier{}, Journal: j, Policy: dec,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s, err := h.NewSession(context.Background(), extproc.ConnInfo{Connection: "db"})
	if err != nil {
		t.Fatal(err)
	}
	hs := &harness{t: t, s: s.(*session), dir: dir, j: j}
	t.Cleanup(func() { j.Close() })
	return hs
}

func enc(t testing.TB, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// decode splits bytes into backend or frontend messages by type byte.
func types(b []byte) string {
	f := framer{max: DefaultMaxMessage}
	f.feed(b)
	var out []byte
	for {
		typ, _, ok, err := f.next()
		if err != nil || !ok {
			return string(out)
		}
		out = append(out, typ)
	}
}

func (h *harness) client(b []byte) extproc.Reply {
	return h.s.OnClient(context.Background(), b, false)
}

func (h *harness) server(b []byte) extproc.Reply {
	return h.s.OnServer(context.Background(), b, false)
}

// login runs a password login and returns what reached the server.
func (h *harness) login() {
	t := h.t
	t.Helper()
	up := h.client(enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent", "database": "db"}}))
	var sm pgproto3.StartupMessage
	if err := sm.Decode(up.Data[4:]); err != nil || sm.Parameters["user"] != "app" {
		t.Fatalf("startup upstream: %v %+v", err, sm.Parameters)
	}
	down := h.server(enc(t, &pgproto3.AuthenticationCleartextPassword{}))
	if types(down.Data) != "R" {
		t.Fatalf("client saw %q", types(down.Data))
	}
	up = h.client(enc(t, &pgproto3.PasswordMessage{Password: "good"}))
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(up.Data[5:]); err != nil || pm.Password != "stored" {
		t.Fatalf("password upstream: %v %q", err, pm.Password)
	}
	down = h.server(enc(t, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if types(down.Data) != "RZ" {
		t.Fatalf("client saw %q", types(down.Data))
	}
}

func TestDeniedQueryRewrittenBothWays(t *testing.T) {
	h := newHarness(t, config.AuthPassword, fakePolicy{})
	h.login()
	up := h.client(enc(t, &pgproto3.Query{String: "SELECT 1; SELECT 'forbidden'"}))
	var q pgproto3.Query
	if err := q.Decode(up.Data[5:]); err != nil || !strings.HasPrefix(q.String, "VIGIL DENIED") {
		t.Fatalf("upstream got %q", q.String)
	}
	down := h.server(enc(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601",
		Message: "syntax error at or near \"VIGIL\""}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	fe := pgproto3.NewFrontend(strings.NewReader(string(down.Data)), io.Discard)
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok || e.Code != "42501" || !strings.Contains(e.Message, "no_forbidden") {
		t.Fatalf("client got %#v", m)
	}
	h.s.Close(nil)
	evs, err := audit.ReadSession(h.dir, h.s.sessionID)
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, ev := range evs {
		if ev.Kind == audit.KindResult && ev.Result.Status == audit.StatusDenied {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("%d denied results, want both statements denied", denied)
	}
}

func TestMaskedDataRow(t *testing.T) {
	h := newHarness(t, config.AuthPassword, fakePolicy{})
	h.login()
	h.client(enc(t, &pgproto3.Query{String: "SELECT email, note FROM people"}))
	down := h.server(enc(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("email"), DataTypeOID: oidText}, {Name: []byte("note"), DataTypeOID: oidText}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("ann@example.com"), []byte("mail bob@example.org")}},
		&pgproto3.DataRow{Values: [][]byte{nil, []byte("nothing here")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if strings.Contains(string(down.Data), "ann@example.com") ||
		strings.Contains(string(down.Data), "bob@example.org") {
		t.Fatalf("clear e-mail reached the client: %q", down.Data)
	}
	if !strings.Contains(string(down.Data), "nothing here") {
		t.Fatalf("unmasked value lost: %q", down.Data)
	}
	// The framing stays valid: every message decodes.
	fe := pgproto3.NewFrontend(strings.NewReader(string(down.Data)), io.Discard)
	for i := 0; i < 5; i++ {
		if _, err := fe.Receive(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

func TestTrustLoginHeldUntilTokenChecked(t *testing.T) {
	h := newHarness(t, config.AuthTrust, nil)
	h.client(enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent"}}))
	down := h.server(enc(t, &pgproto3.AuthenticationOk{},
		&pgproto3.ParameterStatus{Name: "server_version", Value: "15"},
		&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if types(down.Data) != "R" {
		t.Fatalf("before the token the client saw %q, want only the password request", types(down.Data))
	}
	up := h.client(enc(t, &pgproto3.PasswordMessage{Password: "good"}))
	if types(up.Data) != "S" {
		t.Fatalf("upstream got %q, want the Sync standing in for the token", types(up.Data))
	}
	down = h.server(enc(t, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	if types(down.Data) != "RSKZ" {
		t.Fatalf("after the token the client saw %q", types(down.Data))
	}
}

func TestBadTokenNeverReachesUpstream(t *testing.T) {
	h := newHarness(t, config.AuthPassword, nil)
	h.client(enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent"}}))
	h.server(enc(t, &pgproto3.AuthenticationCleartextPassword{}))
	up := h.client(enc(t, &pgproto3.PasswordMessage{Password: "bad"}))
	if strings.Contains(string(up.Data), "stored") || strings.Contains(string(up.Data), "bad") {
		t.Fatalf("upstream got %q", up.Data)
	}
	down := h.server(enc(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "08P01",
		Message: "expected password response"}))
	if !strings.Contains(string(down.Data), "vigil: access token refused") {
		t.Fatalf("client got %q", down.Data)
	}
	if r := h.client(enc(t, &pgproto3.Query{String: "SELECT 1"})); r.Action != extproc.Close {
		t.Fatalf("a query after a refused login got %+v, want the connection closed", r)
	}
}

func TestProtocolViolationCloses(t *testing.T) {
	h := newHarness(t, config.AuthPassword, nil)
	h.login()
	if r := h.client([]byte{'Q', 0, 0, 0, 2}); r.Action != extproc.Close {
		t.Fatalf("got %+v", r)
	}
}

// FuzzSession feeds arbitrary bytes in both directions after a login: the
// session must never panic, and whatever it forwards must be whole
// messages.
func FuzzSession(f *testing.F) {
	f.Add(enc(f, &pgproto3.Query{String: "SELECT 1"}), enc(f, &pgproto3.CommandComplete{
		CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	f.Add(enc(f, &pgproto3.Parse{Query: "SELECT $1"}, &pgproto3.Bind{Parameters: [][]byte{nil}},
		&pgproto3.Execute{}, &pgproto3.Sync{}), enc(f, &pgproto3.ErrorResponse{Code: "42P01"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}))
	f.Fuzz(func(t *testing.T, fromClient, fromServer []byte) {
		h := newHarness(t, config.AuthPassword, fakePolicy{})
		h.login()
		for _, r := range []extproc.Reply{h.client(fromClient), h.server(fromServer)} {
			if r.Action != extproc.Continue {
				continue
			}
			fr := framer{max: DefaultMaxMessage}
			fr.feed(r.Data)
			for {
				_, _, ok, err := fr.next()
				if err != nil {
					t.Fatalf("forwarded bytes do not frame: %v", err)
				}
				if !ok {
					break
				}
			}
			if fr.pending() != 0 {
				t.Fatalf("forwarded %d bytes of a partial message", fr.pending())
			}
		}
		h.s.Close(errors.New("fuzz done"))
	})
}
