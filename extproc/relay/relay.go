package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
)

// DefaultHandshakeTimeout bounds the SSL negotiation, the TLS handshake,
// the client's first message and the upstream dial when
// Options.HandshakeTimeout is zero.
const DefaultHandshakeTimeout = 30 * time.Second

// closeGrace is how long the Relay waits, after CloseSend, for the
// processor to end the stream of a finished connection.
const closeGrace = 10 * time.Second

// Options configure a Relay. Connection, Upstream and Processor are
// required.
type Options struct {
	// Connection is the vigil connection name, sent to the processor in
	// the x-vigil-connection header of every stream.
	Connection string
	// Upstream is the server's host:port, dialed once per client connection.
	Upstream string
	// Processor is the gRPC client of the NetworkExternalProcessor. The
	// Relay opens one stream per client connection on it; it does not
	// close the underlying gRPC connection.
	Processor procv3.NetworkExternalProcessorClient
	// TLS, when set, holds the certificate the Relay presents to clients:
	// those that send an SSLRequest (answered `S`) and those that open with
	// TLS directly (PostgreSQL 17 sslnegotiation=direct, ALPN "postgresql"
	// required). A client that sends its startup message in plaintext is
	// then refused with a FATAL error (MsgTLSRequired). Nil answers
	// SSLRequest `N` and closes direct TLS connections: clients then speak
	// plaintext, or give up if they require TLS. New clones it and adds
	// ALPN "postgresql" to NextProtos; require client certificates through
	// ClientAuth and ClientCAs.
	TLS *tls.Config
	// UpstreamTLS, when set, makes the Relay ask the server for TLS
	// (SSLRequest, then the handshake) on every upstream connection before
	// any byte is relayed; a server that answers `N` or whose certificate
	// does not verify fails the client with a FATAL error (SQLSTATE 08001)
	// that the processor never sees. Nil speaks plaintext to the server.
	// New clones it; an empty ServerName becomes Upstream's host.
	//
	// With InsecureSkipVerify set (upstream_tls mode require) the
	// connection is encrypted but the server is not authenticated: anyone
	// who can intercept it can pose as the server and read the stored
	// credential vigil logs in with and every statement. Use it only where
	// the path to the server is trusted; verify-full otherwise.
	UpstreamTLS *tls.Config
	// Log receives lifecycle lines and contract violations; nil uses
	// slog.Default().
	Log *slog.Logger
	// HandshakeTimeout bounds everything before the first chunk reaches
	// the processor; zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MessageTimeout closes the connection when a request waits longer
	// than this for its reply, as Envoy's message_timeout does. Zero, the
	// gateway's choice, waits forever: approvals hold replies for minutes.
	MessageTimeout time.Duration
}

// Stats counts a Relay's connections since New. All fields are totals
// except Active.
type Stats struct {
	Accepted uint64 // connections accepted
	Active   int64  // connections being served now
	// Violations counts connections closed because the processor broke
	// the Envoy contract (including a missed MessageTimeout).
	Violations uint64
	// StreamErrors counts connections closed because the gRPC stream
	// failed or ended early.
	StreamErrors uint64
	// Panics counts connections closed by a recovered panic in the Relay.
	Panics uint64
}

// Relay serves client connections for one vigil connection. It is safe for
// concurrent use; one Relay may serve several listeners.
type Relay struct {
	opts   Options
	log    *slog.Logger
	nextID atomic.Uint64

	accepted, violations, streamErrors, panics atomic.Uint64
	active                                     atomic.Int64
}

// New returns a Relay for opts.
func New(opts Options) *Relay {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("connection", opts.Connection)
	if opts.TLS != nil {
		opts.TLS = opts.TLS.Clone()
		if !slices.Contains(opts.TLS.NextProtos, alpnPostgres) {
			opts.TLS.NextProtos = append(opts.TLS.NextProtos, alpnPostgres)
		}
	}
	if opts.UpstreamTLS != nil {
		opts.UpstreamTLS = opts.UpstreamTLS.Clone()
		if opts.UpstreamTLS.ServerName == "" {
			host, _, err := net.SplitHostPort(opts.Upstream)
			if err != nil {
				host = opts.Upstream
			}
			opts.UpstreamTLS.ServerName = host
		}
		if len(opts.UpstreamTLS.NextProtos) == 0 {
			// As libpq 17 does; servers before 17 ignore it.
			opts.UpstreamTLS.NextProtos = []string{alpnPostgres}
		}
	}
	return &Relay{opts: opts, log: log}
}

// Stats returns the Relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{
		Accepted:     r.accepted.Load(),
		Active:       r.active.Load(),
		Violations:   r.violations.Load(),
		StreamErrors: r.streamErrors.Load(),
		Panics:       r.panics.Load(),
	}
}

// Serve accepts connections on ln and serves each on its own goroutine
// until ctx is cancelled or ln fails. Cancelling ctx closes ln and every
// connection; Serve returns after all of them have ended, with nil when
// ctx ended it and the accept error otherwise.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	r.log.Info("relay listening", "listen", ln.Addr().String(), "upstream", r.opts.Upstream)
	backoff := time.Duration(0)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("relay: accept: %w", err)
			}
			// Out of descriptors and the like: back off and keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			r.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.ServeConn(ctx, c)
		}()
	}
}

// ListenAndServe listens on the TCP address addr and calls Serve.
func (r *Relay) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("relay: listen: %w", err)
	}
	return r.Serve(ctx, ln)
}

// ServeConn serves one accepted client connection and returns when it has
// ended; it always closes c. A panic while serving closes only c (and its
// upstream) and is counted in Stats.Panics.
func (r *Relay) ServeConn(ctx context.Context, c net.Conn) {
	r.accepted.Add(1)
	r.active.Add(1)
	defer r.active.Add(-1)
	log := r.log.With("conn_id", r.nextID.Add(1), "client", c.RemoteAddr().String())
	cn := &conn{r: r, log: log, client: c, done: make(chan struct{})}
	defer func() {
		if p := recover(); p != nil {
			r.panics.Add(1)
			log.Error("relay panic; closing the connection", "panic", fmt.Sprint(p),
				"stack", string(debug.Stack()))
			cn.closeConns(true)
		}
	}()
	cn.serve(ctx)
}
