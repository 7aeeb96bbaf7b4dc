package main

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/internal/app"
)

func init() {
	root.AddCommand(&cobra.Command{
		Use:   "extproc",
		Short: "Serve the Envoy network ext_proc gRPC service",
		Long: `Serve envoy.service.network_ext_proc.v3.NetworkExternalProcessor on server.grpc,
with gRPC health, for Envoy listeners configured as in envoy/postgres.yaml.
Each Envoy listener names its vigil connection with the gRPC header
x-vigil-connection (grpc_service.initial_metadata).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			a, err := start(ctx, func(cfg *config.Config) error {
				if cfg.Server.GRPC == "" {
					return fmt.Errorf("%s: server.grpc: vigil extproc needs the address to "+
						"serve Envoy on", cfg.Path)
				}
				return nil
			})
			if err != nil {
				return err
			}
			defer a.Close()
			return a.ServeExtproc(ctx)
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "gateway",
		Short: "Run vigil's own listeners, the processor and the journal on one machine",
		Long: `Listen on each connection's listen address and relay every client through the
processor exactly as Envoy would (network ext_proc contract), recording every
command in the journal under audit.dir. For one machine, trials and tests;
Envoy in front of 'vigil extproc' is the path to scale.

The gateway answers SSLRequest itself. With the connection's tls block
(cert_file, key_file; client_ca_file to require client certificates) it
answers S and terminates TLS, accepts PostgreSQL 17's direct TLS
(sslnegotiation=direct), and refuses plaintext logins; without it, it
answers N. A listen address off this machine needs tls (or, on a closed test
network only, insecure_plaintext). upstream_tls says how the gateway itself
reaches the server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			a, err := start(ctx)
			if err != nil {
				return err
			}
			defer a.Close()
			gw, err := a.StartGateway(ctx)
			if err != nil {
				return err
			}
			return gw.Wait()
		},
	})
}

// start loads the configuration, runs the command's own checks on it
// before anything is opened, and assembles vigil.
func start(ctx context.Context, checks ...func(*config.Config) error) (*app.App, error) {
	cfg, err := config.Load(flagConfig)
	if err != nil {
		return nil, err
	}
	for _, check := range checks {
		if err := check(cfg); err != nil {
			return nil, err
		}
	}
	return app.New(ctx, cfg, logger(), app.Options{})
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
}
