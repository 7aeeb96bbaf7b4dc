package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/identity"
)

// Options are what a Handler needs. Policy may be nil: then every command
// is allowed (and still recorded).
type Options struct {
	Config   *config.Config
	Verifier identity.Verifier
	Journal  *audit.Journal
	Policy   Decider
	// Monitor records the policy's decisions without enforcing them.
	Monitor bool
	// Approvals holds commands the policy wants approved; nil denies them.
	Approvals Approver
	Log       *slog.Logger
}

// Handler creates a PostgreSQL Session for each stream.
type Handler struct {
	opts Options

	mu sync.Mutex
	// logins counts, per connection, the logins waiting for their token.
	logins map[string]int
}

// beginLogin counts a login of cn in progress, or reports false when cn
// already has its limit of them.
func (h *Handler) beginLogin(cn *config.Connection) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.logins == nil {
		h.logins = map[string]int{}
	}
	if h.logins[cn.Name] >= cn.PendingLoginLimit() {
		return false
	}
	h.logins[cn.Name]++
	return true
}

// endLogin ends a login beginLogin counted.
func (h *Handler) endLogin(cn *config.Connection) {
	h.mu.Lock()
	h.logins[cn.Name]--
	h.mu.Unlock()
}

// NewHandler returns a Handler serving the postgres connections of
// opts.Config.
func NewHandler(opts Options) *Handler { return &Handler{opts: opts} }

// NewSession implements extproc.Handler.
func (h *Handler) NewSession(ctx context.Context, info extproc.ConnInfo) (extproc.Session, error) {
	cn, err := h.connection(info.Connection)
	if err != nil {
		// Serve the login anyway, so the client learns why in a FATAL
		// error and the attempt is recorded; nothing reaches a command.
		h.opts.Log.Warn("stream for an unknown connection", "connection", info.Connection,
			"peer", info.Peer, "err", err)
		name := info.Connection
		if name == "" {
			name = "(none)"
		}
		s := newSession(h, &config.Connection{Name: name, Type: "postgres"}, info)
		s.unknown = fmt.Sprintf("vigil serves no postgres connection named %q here", name)
		return s, nil
	}
	return newSession(h, cn, info), nil
}

// connection finds the connection a stream serves: the one named in the
// stream's header, or the only postgres connection when none is named.
func (h *Handler) connection(name string) (*config.Connection, error) {
	if name != "" {
		cn := h.opts.Config.Connection(name)
		if cn == nil || cn.Type != "postgres" {
			return nil, fmt.Errorf("postgres: no postgres connection named %q in %s",
				name, h.opts.Config.Path)
		}
		return cn, nil
	}
	var found *config.Connection
	for i := range h.opts.Config.Connections {
		if cn := &h.opts.Config.Connections[i]; cn.Type == "postgres" {
			if found != nil {
				return nil, fmt.Errorf("postgres: the stream names no connection (header %s) "+
					"and the config has several", extproc.HeaderConnection)
			}
			found = cn
		}
	}
	if found == nil {
		return nil, fmt.Errorf("postgres: the config has no postgres connection")
	}
	return found, nil
}
