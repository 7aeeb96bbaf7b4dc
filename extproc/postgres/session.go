package postgres

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/policy"
)

// phase is where a session is in the protocol.
type phase int

const (
	phaseStartup phase = iota // waiting for the client's first packet
	phaseAuth                 // startup sent upstream; authenticating
	phaseReady                // authenticated; commands flow
	phaseFailed               // login refused; the client was told why
	phaseCancel               // a CancelRequest connection: passed through
)

// session is the state of one PostgreSQL connection through vigil.
//
// OnClient and OnServer run on two goroutines (see extproc.Session). The
// framers belong to their direction and need no lock; everything else is
// guarded by mu. OnClient releases mu while it waits for a token check.
type session struct {
	h    *Handler
	cn   *config.Connection
	info extproc.ConnInfo
	log  *slog.Logger

	client framer // client to server; OnClient only
	server framer // server to client; OnServer only

	mu     sync.Mutex
	phase  phase
	opened time.Time
	auth   authState
	// Who logged in, once known.
	id       *identity.Identity
	grant    string
	database string
	clientUp startupInfo
	rec      *audit.Recorder
	// sessionID is the journal's id for the session, once it began.
	sessionID string
	commands  int
	// Extended-protocol objects as the client created them.
	stmts   map[string]*prepared
	portals map[string]*portal
	// sqlPrepared holds what SQL-level PREPARE statements prepared, so
	// an EXECUTE is judged by the statement it runs.
	sqlPrepared map[string][]policy.Statement
	// denyNonce makes vigil's refused requests impossible to collide with.
	denyNonce string
	// pending is what the server still owes an answer to, in order.
	pending []*item
	// recorded is set when results were recorded during the current
	// server chunk, so the reply waits for them to be durable.
	recorded bool
	// discarding is set after an extended-protocol error when the client
	// has not sent the Sync yet: the server drops everything up to it.
	discarding bool
	// shadow holds what the client creates while the server discards.
	shadow *session
	// unknown is set when the stream names no connection vigil serves;
	// the login is refused with this reason.
	unknown string
	// endReason says why vigil ended the session, for its end event.
	endReason string
	// serverSeen, when set, is closed after the next server chunk (see
	// waitServer).
	serverSeen chan struct{}
	// loginCounted is set while this session counts against its
	// connection's limit of logins in progress.
	loginCounted bool
	// violation says why the client's last message was refused as
	// malformed; the connection then closes.
	violation string
	// function is the OID of the FunctionCall being judged.
	function uint32
	// silenced is set when the journal failed under a result: nothing
	// more from the server reaches the client.
	silenced bool
}

func newSession(h *Handler, cn *config.Connection, info extproc.ConnInfo) *session {
	s := &session{
		h:           h,
		cn:          cn,
		info:        info,
		log:         h.opts.Log.With("connection", cn.Name, "client", info.Client),
		opened:      time.Now(),
		stmts:       map[string]*prepared{},
		portals:     map[string]*portal{},
		sqlPrepared: map[string][]policy.Statement{},
	}
	s.client.untyped = true
	s.client.max = DefaultMaxMessage
	s.server.max = DefaultMaxMessage
	return s
}

// OnClient implements extproc.Session.
func (s *session) OnClient(ctx context.Context, chunk []byte, eos bool) extproc.Reply {
	s.client.feed(chunk)
	var out []byte
	for {
		typ, raw, ok, err := s.client.next()
		if err != nil {
			return s.protocolError("client", err)
		}
		if !ok {
			break
		}
		var act extproc.Action
		out, act = s.fromClient(ctx, out, typ, raw)
		if act != extproc.Continue {
			return extproc.Reply{Action: act}
		}
	}
	if eos && s.client.pending() > 0 {
		s.log.Debug("client closed mid-message", "bytes", s.client.pending())
	}
	s.loginOver()
	return extproc.Reply{Data: out}
}

// loginOver stops counting the session's login once it is over, however
// it ended.
func (s *session) loginOver() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loginCounted && s.phase != phaseAuth {
		s.loginCounted = false
		s.h.endLogin(s.cn)
	}
}

// OnServer implements extproc.Session.
func (s *session) OnServer(ctx context.Context, chunk []byte, eos bool) extproc.Reply {
	s.mu.Lock()
	silenced := s.silenced
	s.mu.Unlock()
	if silenced {
		return extproc.Reply{}
	}
	s.server.feed(chunk)
	var out []byte
	for {
		typ, raw, ok, err := s.server.next()
		if err != nil {
			return s.protocolError("server", err)
		}
		if !ok {
			break
		}
		out = s.fromServer(out, typ, raw)
	}
	s.loginOver()

	// The client may only see an answer once its record is durable.
	s.mu.Lock()
	if s.serverSeen != nil {
		close(s.serverSeen) // wake a token that came before the server asked
		s.serverSeen = nil
	}
	rec, wait := s.rec, s.recorded
	s.recorded = false
	s.mu.Unlock()
	if wait && rec != nil {
		if err := rec.Sync(ctx); err != nil {
			return s.journalLost(err)
		}
	}
	return extproc.Reply{Data: out}
}

// abortDelay lets a last reply reach the client before the stream ends.
const abortDelay = 500 * time.Millisecond

// abortSoon ends the stream with reason once the reply being built had
// time to reach the client. It reports false when the stream cannot be
// ended that way (no Abort: a caller outside extproc.Server).
func (s *session) abortSoon(reason error) bool {
	abort := s.info.Abort
	if abort == nil {
		return false
	}
	time.AfterFunc(abortDelay, func() { abort(reason) })
	return true
}

// journalLost ends a session whose results cannot be made durable. The
// answer is withheld: in its place the client gets a FATAL error saying
// why, as PostgreSQL itself ends a session, and nothing more from the
// server reaches it. (A Close reply would drop the message: Envoy closes
// first.)
func (s *session) journalLost(err error) extproc.Reply {
	s.log.Error("audit journal unavailable; ending the session", "alert", true, "err", err)
	s.mu.Lock()
	s.silenced = true
	s.phase = phaseFailed
	s.endReason = "audit journal unavailable: " + err.Error()
	s.mu.Unlock()
	msg := "vigil: the audit journal cannot be written, so the session ends; the last " +
		"command's outcome was not recorded: " + err.Error()
	// The FATAL goes out with this reply; then the stream ends, which
	// closes both connections, whatever the client does.
	s.abortSoon(errors.New("audit journal unavailable: " + err.Error()))
	return extproc.Reply{Data: appendError(nil, "FATAL", stateIOError, msg)}
}

func (s *session) protocolError(side string, err error) extproc.Reply {
	s.log.Warn("closing connection on a protocol violation", "side", side, "err", err)
	s.mu.Lock()
	s.endReason = err.Error()
	s.mu.Unlock()
	return extproc.Reply{Action: extproc.Close}
}

// Close implements extproc.Session.
func (s *session) Close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loginCounted {
		s.loginCounted = false
		s.h.endLogin(s.cn)
	}
	if s.rec == nil {
		return
	}
	for _, it := range s.pending {
		for _, c := range it.cmds {
			s.finish(c, audit.Result{Status: audit.StatusAborted,
				Message: "the connection ended before the server answered"})
		}
	}
	s.pending = nil
	ev := s.base(audit.KindSessionEnd)
	ev.Session = &audit.Session{Opened: s.opened, Closed: time.Now(), Commands: s.commands,
		Application: s.clientUp.application, ClientUser: s.clientUp.user}
	switch {
	case s.endReason != "":
		ev.Reason = s.endReason
	case err != nil && !errors.Is(err, context.Canceled):
		ev.Reason = err.Error()
	}
	if e := s.rec.End(ev); e != nil {
		s.log.Error("audit: session end not recorded", "err", e)
	}
	s.log.Info("session closed", "session", s.rec.ID(), "identity", s.id.Principal(),
		"commands", s.commands, "duration", time.Since(s.opened).Round(time.Millisecond))
	s.rec = nil
}

// base returns an event of kind k carrying who and where.
func (s *session) base(k audit.Kind) audit.Event {
	return audit.Event{
		Kind:         k,
		Connection:   s.cn.Name,
		Protocol:     "postgres",
		Identity:     s.id,
		Grant:        s.grant,
		Client:       s.info.Client,
		Upstream:     s.cn.Upstream,
		UpstreamUser: s.upstreamUser(),
		Database:     s.database,
	}
}

func (s *session) upstreamUser() string {
	if s.cn.Credential.Auth == config.AuthPassthrough {
		return s.clientUp.user
	}
	return s.cn.Credential.User
}
