// Package app assembles a running vigil from its configuration: the
// journal, the token verifier, the protocol handlers, the ext_proc gRPC
// server and, for `vigil gateway`, the relays that play Envoy's part.
//
// cmd/vigil stays thin by calling it, and end-to-end tests run the very
// same assembly in process.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/audit/es"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/extproc"
	"github.com/vigilaudit/vigil/extproc/postgres"
	"github.com/vigilaudit/vigil/extproc/relay"
	"github.com/vigilaudit/vigil/identity"
	"github.com/vigilaudit/vigil/internal/tlsconfig"
	"github.com/vigilaudit/vigil/policy"
	"github.com/vigilaudit/vigil/policy/approvals"
)

// App is an assembled vigil.
type App struct {
	Config  *config.Config
	Journal *audit.Journal
	Log     *slog.Logger

	// Approvals holds commands for human decisions.
	Approvals *approvals.Service

	grpc   *grpc.Server
	health *health.Server
	policy *policy.Engine // nil with policy mode off
	store  approvals.Store
	export *es.Shipper // nil without an Elasticsearch export
}

// Options tune New; the zero value is what the CLI uses.
type Options struct {
	// Verifier replaces the one built from the config's identity section.
	Verifier identity.Verifier
	// IdentityOptions are passed to identity.NewVerifier.
	IdentityOptions []identity.Option
}

// maxMessage bounds one gRPC message between Envoy (or the gateway's
// relays) and the processor: the largest PostgreSQL message and framing.
const maxMessage = postgres.DefaultMaxMessage + 1<<20

// New opens the journal and builds the processor for cfg.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, opts Options) (*App, error) {
	// A credential that cannot be read stops vigil now, not at the first login.
	if err := cfg.CheckSecrets(); err != nil {
		return nil, err
	}
	if key, err := cfg.Policy.HashKey(); err != nil {
		return nil, err
	} else if key != nil {
		if err := policy.SetHashKey(key); err != nil {
			return nil, fmt.Errorf("%s: policy.hash_key_file: %w", cfg.Path, err)
		}
	}
	j, err := audit.Open(cfg.Audit.Dir, audit.Options{Log: log})
	if err != nil {
		return nil, err
	}
	v := opts.Verifier
	if v == nil {
		iopts := append([]identity.Option{identity.WithLogger(log)}, opts.IdentityOptions...)
		if cfg.Identity.Groups == "graph" {
			r, err := graphResolver(cfg, log)
			if err != nil {
				j.Close()
				return nil, err
			}
			iopts = append(iopts, identity.WithGroupResolver(r))
		}
		ev, err := identity.NewVerifier(ctx, cfg.Identity, iopts...)
		if err != nil {
			j.Close()
			return nil, err
		}
		v = ev
	}
	var dec postgres.Decider
	var engine *policy.Engine
	if cfg.Policy.Mode != config.PolicyOff {
		engine, err = policy.New(ctx, cfg.Policy.Dir, policy.WithLogger(log))
		if err != nil {
			j.Close()
			return nil, err
		}
		dec = engine
		log.Info("policy mode", "mode", cfg.Policy.Mode)
	}
	svc, store, err := approvalService(ctx, cfg, v, log)
	if err != nil {
		j.Close()
		if engine != nil {
			engine.Close()
		}
		return nil, err
	}
	// Requests held for sessions a crash or a stop cut are cancelled: their
	// clients are gone, and an approval must not open a window for them.
	if _, err := svc.CancelSessions(ctx, j.Dangling(),
		"vigil restarted; the session that waited for this request is gone"); err != nil {
		log.Warn("approvals: cancelling the requests of ended sessions failed", "err", err)
	}
	h := postgres.NewHandler(postgres.Options{Config: cfg, Verifier: v, Journal: j, Log: log,
		Policy: dec, Monitor: cfg.Policy.Mode == config.PolicyMonitor, Approvals: svc})

	// One chunk's reply carries whole PostgreSQL messages, up to the
	// protocol's 1 GiB: gRPC's default 4 MiB would end the stream on a
	// large statement or row. (Envoy's envoy_grpc client has no limit
	// unless max_receive_message_length is set.)
	g := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage))
	extproc.NewServer(h, log).Register(g)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	a := &App{Config: cfg, Journal: j, Log: log, grpc: g, health: hs, policy: engine,
		Approvals: svc, store: store}

	// The Elasticsearch export follows the journal until Close.
	if a.export, err = startExport(ctx, cfg, log); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// approvalService builds the approvals service on the configured store.
func approvalService(ctx context.Context, cfg *config.Config, v identity.Verifier,
	log *slog.Logger) (*approvals.Service, approvals.Store, error) {
	var store approvals.Store
	switch cfg.Approvals.Store {
	case "postgres":
		dsn, err := cfg.Approvals.DSN()
		if err != nil {
			return nil, nil, err
		}
		if store, err = approvals.NewPostgresStore(ctx, dsn.Reveal()); err != nil {
			return nil, nil, err
		}
	default:
		fs, err := approvals.NewFileStore(cfg.Audit.Dir)
		if err != nil {
			return nil, nil, err
		}
		store = fs
	}
	hook, err := cfg.Approvals.Webhook()
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return approvals.NewService(store, v, approvals.Options{Webhook: hook.Reveal(),
		PublicURL: cfg.Approvals.PublicURL, Log: log}), store, nil
}

// graphResolver builds the Microsoft Graph group resolver from the config.
func graphResolver(cfg *config.Config, log *slog.Logger) (*identity.GraphResolver, error) {
	g := cfg.Identity.Graph
	secret, err := g.Secret()
	if err != nil {
		return nil, err
	}
	tenant := g.Tenant
	if tenant == "" && len(cfg.Identity.Tenants) > 0 {
		tenant = cfg.Identity.Tenants[0]
	}
	return identity.NewGraphResolver(identity.GraphConfig{
		Tenant: tenant, ClientID: g.ClientID, ClientSecret: secret,
		Authority: cfg.Identity.Authority, URL: g.URL,
		TTL: time.Duration(g.CacheTTL), MaxStale: time.Duration(g.MaxStale), Log: log,
	})
}

// Close stops the gRPC server and closes the journal.
func (a *App) Close() error {
	a.health.Shutdown()
	stopped := make(chan struct{})
	go func() { a.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		a.grpc.Stop()
	}
	if a.policy != nil {
		a.policy.Close()
	}
	if err := a.Approvals.Close(); err != nil {
		a.Log.Warn("approvals close", "err", err)
	}
	if err := a.store.Close(); err != nil {
		a.Log.Warn("approvals store close", "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.export.Close(ctx); err != nil {
		a.Log.Warn("elasticsearch export close", "err", err)
	}
	return a.Journal.Close()
}

// ServeExtproc serves the ext_proc service for Envoy on server.grpc (and
// health on server.http) until ctx ends.
func (a *App) ServeExtproc(ctx context.Context) error {
	if a.Config.Server.GRPC == "" {
		return fmt.Errorf("%s: server.grpc: vigil extproc needs the address to serve Envoy on",
			a.Config.Path)
	}
	ln, err := net.Listen("tcp", a.Config.Server.GRPC)
	if err != nil {
		return fmt.Errorf("server.grpc: %w", err)
	}
	a.Log.Info("ext_proc listening", "addr", ln.Addr().String(),
		"connections", len(a.Config.Connections))
	if _, err := a.StartHTTP(ctx); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		a.grpc.GracefulStop()
	}()
	return a.grpc.Serve(ln)
}

// Gateway is `vigil gateway` running: one listener per connection, each
// relaying through the processor over the Envoy contract.
type Gateway struct {
	// Addrs maps each connection name to the address it listens on.
	Addrs map[string]string
	// HTTP is the address of server.http, "" when not set.
	HTTP string
	done chan error
}

// Wait returns when the gateway has stopped.
func (g *Gateway) Wait() error { return <-g.done }

// StartGateway listens on every connection's listen address and relays
// each client through the processor, in process over gRPC (and also on
// server.grpc when set, so an Envoy can share the processor).
func (a *App) StartGateway(ctx context.Context) (*Gateway, error) {
	// The relays reach the processor through an in-memory gRPC connection:
	// the real generated types and the real stream semantics, no port.
	buf := bufconn.Listen(1 << 20)
	go a.grpc.Serve(buf)
	cc, err := grpc.NewClient("passthrough:///vigil-processor",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return buf.DialContext(ctx)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage),
			grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		return nil, fmt.Errorf("gateway: processor connection: %w", err)
	}
	client := procv3.NewNetworkExternalProcessorClient(cc)

	gw := &Gateway{Addrs: map[string]string{}, done: make(chan error, 1)}
	type listener struct {
		cn               *config.Connection
		ln               net.Listener
		tls, upstreamTLS *tls.Config
	}
	var lns []listener
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	for i := range a.Config.Connections {
		cn := &a.Config.Connections[i]
		if cn.Listen == "" {
			continue
		}
		srvTLS, upTLS, err := tlsconfig.ForConnection(cn, a.Log.With("connection", cn.Name))
		if err != nil {
			closeAll()
			cc.Close()
			return nil, fmt.Errorf("gateway: %w", err)
		}
		ln, err := net.Listen("tcp", cn.Listen)
		if err != nil {
			closeAll()
			cc.Close()
			return nil, fmt.Errorf("gateway: connection %s: listen: %w", cn.Name, err)
		}
		lns = append(lns, listener{cn, ln, srvTLS, upTLS})
		gw.Addrs[cn.Name] = ln.Addr().String()
	}
	if len(lns) == 0 {
		cc.Close()
		return nil, fmt.Errorf("%s: no connection has a listen address; vigil gateway "+
			"listens on each connection's listen", a.Config.Path)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, l := range lns {
		cn, ln := l.cn, l.ln
		r := relay.New(relay.Options{
			Connection:  cn.Name,
			Upstream:    cn.Upstream,
			Processor:   client,
			TLS:         l.tls,
			UpstreamTLS: l.upstreamTLS,
			Log:         a.Log, // the relay adds the connection name
		})
		a.Log.Info("gateway listening", "connection", cn.Name, "addr", ln.Addr().String(),
			"upstream", cn.Upstream)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Serve(ctx, ln); err != nil && !errors.Is(err, net.ErrClosed) {
				errs <- err
			}
		}()
	}
	if gw.HTTP, err = a.StartHTTP(ctx); err != nil {
		closeAll()
		cc.Close()
		return nil, err
	}
	go func() {
		<-ctx.Done()
		closeAll()
	}()
	go func() {
		wg.Wait()
		cc.Close()
		close(errs)
		gw.done <- errors.Join(collect(errs)...)
	}()
	return gw, nil
}

func collect(ch <-chan error) []error {
	var out []error
	for err := range ch {
		out = append(out, err)
	}
	return out
}

// StartHTTP listens on server.http and serves health, the approvals API
// and page until ctx ends. It returns the address it listens on, or ""
// when server.http is not set.
func (a *App) StartHTTP(ctx context.Context) (string, error) {
	if a.Config.Server.HTTP == "" {
		if a.Approvals != nil {
			a.Log.Warn("server.http is not set: held commands can only time out, since " +
				"approvers reach vigil through its HTTP API")
		}
		return "", nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /export", a.export.Handler())
	if a.Approvals != nil {
		h := a.Approvals.Handler()
		mux.Handle("/approvals/", h)
		mux.Handle("/api/approvals", h)
		mux.Handle("/api/approvals/", h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", a.Config.Server.HTTP)
	if err != nil {
		return "", fmt.Errorf("server.http: %w", err)
	}
	a.Log.Info("http listening", "addr", ln.Addr().String())
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.Log.Error("http server", "err", err)
		}
	}()
	return ln.Addr().String(), nil
}
