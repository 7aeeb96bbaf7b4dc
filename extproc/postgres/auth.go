package postgres

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/identity"
)

// Authentication request codes in AuthenticationXXX messages ('R').
const (
	authOK        = 0
	authCleartext = 3
	authMD5       = 5
	authSASL      = 10
	// authSASLContinue and authSASLFinal carry the server's SCRAM messages.
	authSASLContinue = 11
	authSASLFinal    = 12
)

// SQLSTATE codes vigil uses in its own errors.
const (
	stateInvalidAuthorization = "28000"
	stateProtocolViolation    = "08P01"
)

// authState tracks the login of one session.
type authState struct {
	// asked is the method the server asked for, as shown to the client.
	asked int
	// md5Salt is the salt of an AuthenticationMD5Password the client never saw.
	md5Salt [4]byte
	// held collects the server's messages after an AuthenticationOk that
	// arrived before the client proved who it is (upstream trust): the
	// client sees them only once its token checks out.
	holding bool
	held    []byte
	// startupRFQ is set once the ReadyForQuery ending the server's startup
	// has been held; the next one answers the Sync vigil injected.
	startupRFQ bool
	verified   bool
	// failure is the reason shown to the client in a FATAL error; once
	// sent, every further server byte is dropped.
	failure     string
	failureSent bool
	// scram is the SCRAM-SHA-256 exchange with the upstream, if any.
	scram *scramState
}

// startupInfo is what the client asked for in its StartupMessage.
type startupInfo struct {
	user, database, application string
}

// startup handles the client's first packet.
func (s *session) startup(out, raw []byte) ([]byte, extproc.Action) {
	switch code := startupCode(raw); code {
	case codeSSLRequest, codeGSSENC:
		// vigil cannot answer toward the client while answering a client
		// chunk, and must not let a token cross a plaintext hop the client
		// thought was encrypted.
		s.log.Warn("an SSLRequest or GSSENCRequest reached vigil: TLS is not terminated in front "+
			"of it; put postgres_proxy with terminate_ssl before the ext_proc filter "+
			"(see envoy/postgres.yaml); closing the connection", "code", code)
		return out, extproc.Close
	case codeCancel:
		s.phase = phaseCancel
		s.client.untyped = false
		s.log.Debug("cancel request passed through")
		return append(out, raw...), extproc.Continue
	}

	var msg pgproto3.StartupMessage
	if err := msg.Decode(body(0, raw)); err != nil {
		s.log.Warn("malformed startup packet; closing the connection", "err", err)
		return out, extproc.Close
	}
	s.client.untyped = false
	s.phase = phaseAuth
	s.clientUp = startupInfo{user: msg.Parameters["user"], database: msg.Parameters["database"],
		application: msg.Parameters["application_name"]}

	// Parse the parameters instead of copying them blindly.
	if s.unknown != "" {
		s.refuse(s.unknown, "unknown_connection")
	} else if reason := refusedParameter(msg.Parameters); reason != "" {
		s.refuse(reason, "startup_parameter")
	} else if !s.h.beginLogin(s.cn) {
		// Each login holds an upstream backend until the token arrives:
		// clients that never send one must not exhaust the server.
		s.log.Warn("too many logins in progress; refusing this one", "limit",
			s.cn.PendingLoginLimit())
		s.refuse("too many logins are in progress on this connection; try again shortly",
			"login_limit")
	} else {
		s.loginCounted = true
	}
	params := make(map[string]string, len(msg.Parameters))
	for k, v := range msg.Parameters {
		params[k] = v
	}
	if s.cn.Credential.Auth != config.AuthPassthrough {
		params["user"] = s.cn.Credential.User
	}
	if s.cn.Database != "" {
		params["database"] = s.cn.Database
	}
	s.database = params["database"]
	if s.database == "" {
		s.database = params["user"]
	}
	msg.Parameters = params
	b, err := msg.Encode(out)
	if err != nil {
		s.log.Warn("startup packet cannot be re-encoded; closing the connection", "err", err)
		return out, extproc.Close
	}
	if s.cn.Credential.Auth == config.AuthSCRAM && s.auth.failure == "" {
		if b, err = s.startSCRAM(b); err != nil {
			s.log.Error("stored credential unusable for SCRAM", "err", err)
			s.refuse("the connection's stored credential cannot be used", "credential")
		}
	}
	return b, extproc.Continue
}

// refusedParameter returns why a startup parameter is not allowed, or "".
// The upstream role is the connection's; nothing the client sends may
// change it.
func refusedParameter(p map[string]string) string {
	if _, ok := p["replication"]; ok {
		return "replication connections are not allowed through vigil"
	}
	for k, v := range p {
		key := strings.ToLower(k)
		if key == "role" || key == "session_authorization" {
			return fmt.Sprintf("startup parameter %q is not allowed: the upstream role is "+
				"the connection's", k)
		}
		if key == "options" {
			low := strings.ToLower(v)
			if strings.Contains(low, "role") || strings.Contains(low, "session_authorization") {
				return "startup options that set the role are not allowed: the upstream role " +
					"is the connection's"
			}
		}
	}
	return ""
}

// password handles the client's PasswordMessage: the access token.
func (s *session) password(ctx context.Context, out, raw []byte) ([]byte, extproc.Action) {
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body('p', raw)); err != nil {
		s.refuse("the password message is malformed", "malformed")
		return s.provoke(out), extproc.Continue
	}
	if s.auth.failure != "" || s.auth.verified {
		return s.provoke(out), extproc.Continue
	}

	// Check the token without holding the lock: it may fetch keys.
	s.mu.Unlock()
	id, err := s.h.opts.Verifier.Verify(ctx, pm.Password)
	s.mu.Lock()
	if err != nil {
		reason, code := describeTokenError(err)
		s.refuse(reason, code)
		return s.provoke(out), extproc.Continue
	}
	g, ok := identity.Match(s.cn.Access, id)
	if !ok {
		s.id = id
		// The grants it lacks go to the log and the audit only: telling an
		// unauthorised caller which grant to obtain helps it get in.
		reason := fmt.Sprintf("%s has no grant for connection %s", id.Principal(), s.cn.Name)
		s.refuseDetail(reason, reason+" (wants "+grantList(s.cn.Access)+")", "no_grant")
		return s.provoke(out), extproc.Continue
	}
	s.id, s.grant = id, g.String()
	if err := s.begin(); err != nil {
		s.log.Error("audit journal unavailable; refusing the login", "alert", true, "err", err)
		s.refuse("the audit journal is unavailable; no command can be recorded", "journal")
		return s.provoke(out), extproc.Continue
	}
	s.auth.verified = true

	// A client that sent its token before the server asked for one (in the
	// same write as its startup) waits here for the server's request.
	for s.auth.asked == 0 && !s.auth.holding && s.auth.failure == "" {
		if !s.waitServer(ctx) {
			s.refuse("the client went away during the login", "client_gone")
			return s.provoke(out), extproc.Continue
		}
	}
	if s.auth.failure != "" {
		return s.provoke(out), extproc.Continue
	}

	// Log in upstream with the connection's own credential.
	if s.auth.holding {
		return s.provoke(out), extproc.Continue
	}
	secret, err := s.secret(pm.Password)
	if err != nil {
		s.log.Error("stored credential unreadable", "err", err)
		s.failLogin("the connection's stored credential cannot be read", "credential")
		return s.provoke(out), extproc.Continue
	}
	switch s.auth.asked {
	case authSASL:
		b, err := s.scramResponse(ctx, out)
		if err != nil {
			if s.auth.failure == "" {
				s.failLogin("upstream SCRAM exchange failed: "+err.Error(), "upstream_scram")
			}
			return s.provoke(out), extproc.Continue
		}
		return b, extproc.Continue
	case authMD5:
		secret = md5Password(secret, s.upstreamUser(), s.auth.md5Salt)
	case authCleartext:
	default:
		s.failLogin("upstream asked for an authentication method vigil cannot answer",
			"upstream_method")
		return s.provoke(out), extproc.Continue
	}
	b, _ := (&pgproto3.PasswordMessage{Password: secret}).Encode(out)
	return b, extproc.Continue
}

// waitServer releases mu until the next server chunk has been handled or
// ctx ends; it reports whether a chunk came. mu is held on entry and
// return.
func (s *session) waitServer(ctx context.Context) bool {
	if s.serverSeen == nil {
		s.serverSeen = make(chan struct{})
	}
	ch := s.serverSeen
	s.mu.Unlock()
	defer s.mu.Lock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// provoke sends the server a Sync in place of the client's password. In
// the middle of a login the server answers it with a FATAL protocol error;
// after an upstream trust login, with ReadyForQuery. Either answer is the
// server chunk on which vigil tells the client the outcome, since it may
// only write toward the client while answering a server chunk.
func (s *session) provoke(out []byte) []byte {
	return append(out, 'S', 0, 0, 0, 4)
}

// refuse records a failed login; the client learns why on the next
// server chunk.
func (s *session) refuse(reason, code string) {
	s.refuseDetail(reason, reason, code)
}

// refuseDetail is refuse with more detail than the client may see: the
// client is told reason, the log and the auth_failed event get detail.
func (s *session) refuseDetail(reason, detail, code string) {
	if s.auth.failure != "" {
		return
	}
	s.auth.failure = reason
	s.log.Info("login refused", "reason", code, "detail", detail)
	ev := s.base(audit.KindAuthFailed)
	ev.Reason, ev.ReasonCode = detail, code
	ev.Session = &audit.Session{Opened: s.opened, Application: s.clientUp.application,
		ClientUser: s.clientUp.user}
	rec, err := s.h.opts.Journal.Begin(ev)
	if err != nil {
		s.log.Error("audit: failed login not recorded", "err", err)
		return
	}
	end := s.base(audit.KindSessionEnd)
	end.Reason = detail
	end.Session = &audit.Session{Opened: s.opened, Closed: time.Now()}
	if err := rec.End(end); err != nil {
		s.log.Error("audit: failed login not recorded", "err", err)
	}
}

// failLogin ends a login that failed after the session record began.
func (s *session) failLogin(reason, code string) {
	if sc := s.auth.scram; sc != nil && sc.err == nil && sc.final == "" {
		sc.err = errors.New(reason)
		close(sc.ready)
	}
	if s.rec == nil {
		s.refuse(reason, code)
		return
	}
	s.auth.failure = reason
	ev := s.base(audit.KindAuthFailed)
	ev.Reason, ev.ReasonCode = reason, code
	if _, err := s.rec.Record(ev); err != nil {
		s.log.Error("audit: failed login not recorded", "err", err)
	}
	s.recorded = true
}

// begin opens the session's record once the client is known.
func (s *session) begin() error {
	ev := s.base(audit.KindSessionStart)
	ev.Session = &audit.Session{Opened: s.opened, Application: s.clientUp.application,
		ClientUser: s.clientUp.user}
	rec, err := s.h.opts.Journal.Begin(ev)
	if err != nil {
		return err
	}
	s.rec, s.sessionID = rec, rec.ID()
	s.log.Info("session opened", "session", rec.ID(), "identity", s.id.Principal(),
		"grant", s.grant, "upstream_user", s.upstreamUser())
	return nil
}

// secret is the password vigil sends upstream.
func (s *session) secret(token string) (string, error) {
	if s.cn.Credential.Auth == config.AuthPassthrough {
		return token, nil
	}
	sec, err := s.cn.Credential.Secret()
	return sec.Reveal(), err
}

// fromServerAuth handles a server message before the session is ready.
func (s *session) fromServerAuth(out []byte, typ byte, raw []byte) []byte {
	if s.auth.failureSent {
		return out
	}
	if s.auth.failure != "" {
		// Wait for the server's answer to vigil's Sync (or its own
		// complaint), then tell the client why; drop everything else.
		if typ == 'R' || typ == 'Z' || typ == 'E' {
			s.auth.failureSent = true
			s.phase = phaseFailed
			s.auth.held = nil
			return appendError(out, "FATAL", stateInvalidAuthorization, "vigil: "+s.auth.failure)
		}
		return out
	}
	if s.auth.holding {
		return s.fromServerHeld(out, typ, raw)
	}

	switch typ {
	case 'R':
		return s.authRequest(out, raw)
	case 'E':
		return s.upstreamRefused(out, raw)
	case 'Z':
		s.phase = phaseReady
		if s.rec != nil {
			s.log.Debug("upstream login complete")
		}
	}
	return append(out, raw...)
}

// authRequest handles an AuthenticationXXX message.
func (s *session) authRequest(out, raw []byte) []byte {
	b := body('R', raw)
	if len(b) < 4 {
		s.failLogin("upstream sent a malformed authentication request", "upstream_protocol")
		return s.fromServerAuth(out, 'R', raw)
	}
	code := binary.BigEndian.Uint32(b)
	switch code {
	case authOK:
		if s.auth.verified {
			return append(out, raw...)
		}
		// Upstream trusts the connection: ask the client for its token
		// and hold the server's startup messages until it checks out.
		s.auth.holding = true
		s.auth.asked = authCleartext
		s.auth.held = append(s.auth.held[:0], raw...)
		return append(out, cleartextRequest...)
	case authCleartext:
		s.auth.asked = authCleartext
		return append(out, raw...)
	case authMD5:
		if len(b) < 8 {
			s.failLogin("upstream sent a malformed MD5 request", "upstream_protocol")
			return s.fromServerAuth(out, 'R', raw)
		}
		s.auth.asked = authMD5
		copy(s.auth.md5Salt[:], b[4:8])
		return append(out, cleartextRequest...)
	case authSASL:
		if s.auth.scram != nil {
			s.auth.asked = authSASL
			return append(out, cleartextRequest...)
		}
		s.failLogin("upstream asked for SCRAM-SHA-256; set credential.auth: scram-sha-256 "+
			"for connection "+s.cn.Name, "upstream_method")
	case authSASLContinue, authSASLFinal:
		if code == authSASLContinue {
			s.scramContinue(b[4:])
		} else {
			s.scramFinal(b[4:])
		}
		if s.auth.failure == "" {
			return out // the client never sees the SCRAM exchange
		}
	default:
		s.failLogin(fmt.Sprintf("upstream asked for authentication method %d, "+
			"which vigil cannot answer", code), "upstream_method")
	}
	return s.fromServerAuth(out, 'R', raw)
}

// cleartextRequest is AuthenticationCleartextPassword: what every client
// is shown, since what it sends is a token, not a password.
var cleartextRequest = []byte{'R', 0, 0, 0, 8, 0, 0, 0, authCleartext}

// fromServerHeld holds the server's startup messages after an upstream
// trust login until the client's token checks out.
func (s *session) fromServerHeld(out []byte, typ byte, raw []byte) []byte {
	if typ != 'Z' || !s.auth.startupRFQ {
		if typ == 'Z' {
			s.auth.startupRFQ = true
		}
		s.auth.held = append(s.auth.held, raw...)
		return out
	}
	// This ReadyForQuery answers vigil's Sync: release the login.
	if !s.auth.verified {
		return out
	}
	out = append(out, s.auth.held...)
	s.auth.held, s.auth.holding = nil, false
	s.phase = phaseReady
	return out
}

// upstreamRefused handles an ErrorResponse during login: the server
// refused the connection's credential, or the database does not exist.
func (s *session) upstreamRefused(out, raw []byte) []byte {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body('E', raw)); err != nil {
		return append(out, raw...)
	}
	if s.rec != nil {
		ev := s.base(audit.KindAuthFailed)
		ev.Reason = "upstream login failed: " + e.Message
		if _, err := s.rec.Record(ev); err != nil {
			s.log.Error("audit: upstream refusal not recorded", "err", err)
		}
		s.recorded = true
	}
	s.log.Warn("upstream refused the login", "sqlstate", e.Code, "message", e.Message)
	s.phase = phaseFailed
	s.auth.failureSent = true
	e.Message = "vigil: upstream login failed: " + e.Message
	b, err := e.Encode(out)
	if err != nil {
		return append(out, raw...)
	}
	return b
}

// md5Password computes PostgreSQL's MD5 response:
// "md5" + md5hex(md5hex(password + user) + salt).
func md5Password(password, user string, salt [4]byte) string {
	inner := md5.Sum([]byte(password + user))
	h := hex.EncodeToString(inner[:])
	outer := md5.Sum(append([]byte(h), salt[:]...))
	return "md5" + hex.EncodeToString(outer[:])
}

// describeTokenError turns a verification error into the client's reason
// and the audit code.
func describeTokenError(err error) (reason, code string) {
	var ie *identity.Error
	if errors.As(err, &ie) {
		return "access token refused: " + ie.Message, string(ie.Reason)
	}
	return "access token refused", "invalid_token"
}

func grantList(gs config.Grants) string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = g.String()
	}
	return strings.Join(s, " or ")
}

// appendError appends an ErrorResponse.
func appendError(out []byte, severity, code, message string) []byte {
	e := pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code,
		Message: message}
	b, err := e.Encode(out)
	if err != nil {
		return out
	}
	return b
}
