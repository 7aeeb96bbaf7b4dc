package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilaudit/vigil/identity"
)

var devCmd = &cobra.Command{
	Use:   "dev",
	Short: "Local tools for trials and tests: an Entra-shaped issuer and its tokens",
	Long: `Local tools for trials and tests. Nothing here is for production.

  vigil dev issuer   serves discovery documents and keys shaped like Microsoft Entra
  vigil dev token    asks a running dev issuer for an access token`,
}

var devIssuerFlags struct {
	listen  string
	tenant  string
	keyFile string
}

var devIssuerCmd = &cobra.Command{
	Use:   "issuer",
	Short: "Run a local token issuer shaped like Microsoft Entra",
	Long: `Run a local token issuer shaped like Microsoft Entra ID.

It serves Entra's paths for one tenant:

  GET  /{tenant}/v2.0/.well-known/openid-configuration
  GET  /{tenant}/.well-known/openid-configuration
  GET  /common/discovery/v2.0/keys, /common/discovery/keys
  GET  /{tenant}/discovery/v2.0/keys, /{tenant}/discovery/keys
  POST /dev/token        (dev issuer only: mints a token; used by 'vigil dev token')

Tokens carry the real Entra issuer of their tenant and version
(https://login.microsoftonline.com/{tenant}/v2.0 or https://sts.windows.net/{tenant}/),
so a vigil.yaml needs only

  identity:
    authority: <the URL printed at start>
    tenants: [<the tenant printed at start>]

On start it prints the authority URL and the tenant on stdout, one per line:

  authority: http://127.0.0.1:43121
  tenant: deadbeef-0000-4000-8000-00000000d0e5

Anyone who can reach the listener can mint tokens: keep it on loopback.
Without --key-file the signing key is new at every start, and tokens minted
before a restart no longer verify.`,
	Example: `  vigil dev issuer
  vigil dev issuer --listen 127.0.0.1:8400 --key-file ./dev-issuer.pem`,
	Args: cobra.NoArgs,
	RunE: runDevIssuer,
}

var devTokenFlags struct {
	issuer    string
	tenant    string
	audience  string
	version   string
	roles     []string
	groups    []string
	appID     string
	oid       string
	name      string
	upn       string
	expiresIn time.Duration
}

var devTokenCmd = &cobra.Command{
	Use:   "token",
	Short: "Print an access token minted by a running 'vigil dev issuer'",
	Long: `Print one access token, minted by a running 'vigil dev issuer', on stdout.

v2 tokens are app-only tokens of a service principal (azp, azpacr, idtyp app,
roles, ver 2.0; aud defaults to the API app's GUID ` + identity.DevAPIAppID + `).
v1 tokens are shaped like a managed identity's (appid, appidacr, idtyp app,
xms_mirid, iss https://sts.windows.net/{tenant}/; aud defaults to ` + identity.DevAudience + `).
With --name or --upn the token is a user token instead: a person signed in
through the Azure CLI, so azp (appid) defaults to the Azure CLI's client id
` + identity.AzureCLIClientID + ` and oid to a GUID derived from the UPN
(or else the name), the same at every run: a person minted this way to
approve an agent's held command is not taken for the agent itself.
--app-id and --oid override both.

The token goes to stdout and nowhere else; use it as the database password:

  PGPASSWORD=$(vigil dev token --issuer http://127.0.0.1:8400 --role Db.Read) psql ...`,
	Example: `  vigil dev token --issuer http://127.0.0.1:8400 --role Db.Read
  vigil dev token --issuer http://127.0.0.1:8400 --version v1 --audience api://vigil
  vigil dev token --issuer http://127.0.0.1:8400 --group 0b1c... --expires-in 10m
  vigil dev token --issuer http://127.0.0.1:8400 --upn dba@example.com --group 0b1c...`,
	Args: cobra.NoArgs,
	RunE: runDevToken,
}

func init() {
	f := devIssuerCmd.Flags()
	f.StringVar(&devIssuerFlags.listen, "listen", "127.0.0.1:0",
		"address to listen on; port 0 picks a free port (printed on start)")
	f.StringVar(&devIssuerFlags.tenant, "tenant", identity.DevTenant,
		"tenant id (tid) it issues for")
	f.StringVar(&devIssuerFlags.keyFile, "key-file", "",
		"PEM file keeping the signing key across restarts (created if missing)")

	t := devTokenCmd.Flags()
	t.StringVar(&devTokenFlags.issuer, "issuer", "",
		"URL of the running dev issuer (the authority it printed)")
	t.StringVar(&devTokenFlags.tenant, "tenant", "", "tenant id (tid); default the issuer's")
	t.StringVar(&devTokenFlags.audience, "audience", "",
		"aud; default "+identity.DevAPIAppID+" (v2) or "+identity.DevAudience+" (v1)")
	t.StringVar(&devTokenFlags.version, "version", "v2", "token version: v1 or v2")
	t.StringArrayVar(&devTokenFlags.roles, "role", nil, "app role to include (repeatable)")
	t.StringArrayVar(&devTokenFlags.groups, "group", nil, "group object id to include (repeatable)")
	t.StringVar(&devTokenFlags.appID, "app-id", "",
		"calling app's client id (azp or appid); default "+identity.DevClientID+
			", or the Azure CLI's "+identity.AzureCLIClientID+" for a user token")
	t.StringVar(&devTokenFlags.oid, "oid", "",
		"caller's object id; default "+identity.DevObjectID+
			", or for a user token a GUID derived from --upn or --name")
	t.StringVar(&devTokenFlags.name, "name", "", "display name (makes a user token)")
	t.StringVar(&devTokenFlags.upn, "upn", "", "user principal name (makes a user token)")
	t.DurationVar(&devTokenFlags.expiresIn, "expires-in", 0,
		"lifetime, such as 10m; default 60-90m (v2) or 24h (v1), as Entra")
	_ = devTokenCmd.MarkFlagRequired("issuer")

	devCmd.AddCommand(devIssuerCmd, devTokenCmd)
	root.AddCommand(devCmd)
}

func runDevIssuer(cmd *cobra.Command, _ []string) error {
	log := logger()
	var opts []identity.DevOption
	opts = append(opts, identity.WithDevLogger(log))
	if devIssuerFlags.keyFile != "" {
		opts = append(opts, identity.WithDevKeyFile(devIssuerFlags.keyFile))
	}
	iss, err := identity.NewDevIssuer(devIssuerFlags.tenant, opts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", devIssuerFlags.listen)
	if err != nil {
		return fmt.Errorf("dev issuer: %w", err)
	}
	if addr, ok := ln.Addr().(*net.TCPAddr); ok && !addr.IP.IsLoopback() {
		log.Warn("dev issuer listens beyond loopback: anyone who reaches it can mint tokens",
			"listen", ln.Addr().String())
	}
	authority := "http://" + ln.Addr().String()
	fmt.Fprintf(cmd.OutOrStdout(), "authority: %s\ntenant: %s\n", authority, iss.Tenant())
	log.Info("dev issuer started", "authority", authority, "tenant", iss.Tenant(),
		"kid", iss.KeyID())

	srv := &http.Server{Handler: iss.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("dev issuer: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("dev issuer: shutdown: %w", err)
	}
	log.Info("dev issuer stopped")
	return nil
}

func runDevToken(cmd *cobra.Command, _ []string) error {
	f := &devTokenFlags
	if f.version != "v1" && f.version != "v2" {
		return fmt.Errorf("dev token: --version %q: want v1 or v2", f.version)
	}
	if f.expiresIn < 0 {
		return fmt.Errorf("dev token: --expires-in %s: want a positive duration", f.expiresIn)
	}
	spec := identity.TokenSpec{
		Version:   f.version,
		Tenant:    f.tenant,
		Audience:  f.audience,
		AppID:     f.appID,
		OID:       f.oid,
		Roles:     f.roles,
		Groups:    f.groups,
		Name:      f.name,
		UPN:       f.upn,
		ExpiresIn: f.expiresIn,
	}
	tok, err := requestDevToken(cmd.Context(), f.issuer, spec)
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), tok)
	return nil
}

// requestDevToken posts spec to the dev issuer's /dev/token.
func requestDevToken(ctx context.Context, issuer string, spec identity.TokenSpec) (string, error) {
	body, err := json.Marshal(spec)
	if err != nil {
		return "", fmt.Errorf("dev token: %w", err)
	}
	url := strings.TrimRight(issuer, "/") + "/dev/token"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("dev token: --issuer %q: %w", issuer, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("dev token: is 'vigil dev issuer' running at %s? %w", issuer, err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return "", fmt.Errorf("dev token: %s answered %s, not a token: %w", url, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || out.AccessToken == "" {
		if out.Description == "" {
			out.Description = resp.Status
		}
		return "", fmt.Errorf("dev token: %s: %w", url, errors.New(out.Description))
	}
	return out.AccessToken, nil
}
