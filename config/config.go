// Package config loads and checks vigil.yaml, the one configuration file
// every vigil subcommand reads.
//
// The shape follows docs/configuration.md. Loading is strict: an unknown
// key, a grant that names nothing, a connection without a credential, or
// `export: siem` without Elasticsearch settings is an error at start-up
// that names the file, the key (with its line) and what is expected.
//
// Secrets are never held in the Config itself: a Credential names a file or
// an environment variable, and Credential.Secret reads it when needed.
// Load never reads them, since auditors load the same file without access
// to them; Config.CheckSecrets reads them once, for the commands that log
// in upstream.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole of vigil.yaml.
type Config struct {
	Identity    Identity     `yaml:"identity"`
	Connections []Connection `yaml:"connections"`
	Policy      Policy       `yaml:"policy"`
	Approvals   Approvals    `yaml:"approvals"`
	Audit       Audit        `yaml:"audit"`
	Server      Server       `yaml:"server"`

	// Path is the file the configuration was read from; empty for
	// configurations built in code.
	Path string `yaml:"-"`
}

// Identity says whose tokens vigil accepts and how it checks them.
type Identity struct {
	// Provider is "entra" (the default) or "oidc".
	Provider string `yaml:"provider"`
	// Issuer is the issuer URL for provider "oidc".
	Issuer string `yaml:"issuer"`
	// Tenants lists the allowed Entra tenant ids (tid).
	Tenants []string `yaml:"tenants"`
	// Audiences lists the accepted aud values (GUID and App ID URI forms).
	Audiences []string `yaml:"audiences"`
	// Versions lists accepted Entra token versions: "v1", "v2".
	Versions []string `yaml:"versions"`
	// Groups is "token" (groups come from the token) or "graph".
	Groups string `yaml:"groups"`
	// Authority is where discovery documents and keys are fetched:
	// https://login.microsoftonline.com for Entra, or a `vigil dev issuer`.
	Authority string `yaml:"authority"`
	// ClockSkew bounds how far exp and nbf may be off; at most 5m.
	ClockSkew Duration `yaml:"clock_skew"`
	// Graph is how vigil reads group membership when Groups is "graph".
	Graph *Graph `yaml:"graph"`
}

// Graph holds vigil's own Microsoft Graph client credentials. vigil's app
// registration needs the GroupMember.Read.All application permission.
type Graph struct {
	// Tenant is where vigil's app is registered; default the first of
	// identity.tenants.
	Tenant           string `yaml:"tenant"`
	ClientID         string `yaml:"client_id"`
	ClientSecretFile string `yaml:"client_secret_file"`
	ClientSecretEnv  string `yaml:"client_secret_env"`
	// URL is Graph's base URL; default https://graph.microsoft.com.
	URL string `yaml:"url"`
	// CacheTTL is how long a membership is reused (default 10m).
	CacheTTL Duration `yaml:"cache_ttl"`
	// MaxStale is how long past CacheTTL a membership is still used while
	// Graph is unreachable (default 1h).
	MaxStale Duration `yaml:"max_stale"`
}

// Secret reads the Graph client secret.
func (g *Graph) Secret() (Secret, error) {
	c := Credential{PasswordFile: g.ClientSecretFile, PasswordEnv: g.ClientSecretEnv}
	s, err := c.Secret()
	if err != nil {
		return "", fmt.Errorf("config: identity.graph client secret: %w", err)
	}
	return s, nil
}

// Connection is one upstream service that agents reach through vigil.
type Connection struct {
	Name string `yaml:"name"`
	// Type is the protocol: "postgres".
	Type string `yaml:"type"`
	// Listen is the address `vigil gateway` listens on for this connection.
	Listen string `yaml:"listen"`
	// Upstream is the server's host:port.
	Upstream string `yaml:"upstream"`
	// Database, when set, replaces the database the client asks for.
	Database   string     `yaml:"database"`
	Credential Credential `yaml:"credential"`
	// Access lists the grants that may use this connection.
	Access Grants `yaml:"access"`
	// MaxPendingLogins bounds the logins in progress (startup received,
	// token not yet checked), each holding an upstream backend; 0 means
	// DefaultMaxPendingLogins.
	MaxPendingLogins int `yaml:"max_pending_logins"`
	// Record is "full" (statements and parameters) or "statements".
	Record string `yaml:"record"`
	// Export names where the audit events of this connection are shipped:
	// "" (journal only) or "siem" (the configured Elasticsearch).
	Export string `yaml:"export"`
	// TLS is the certificate `vigil gateway` presents to clients (it answers
	// SSLRequest with S). Behind Envoy, postgres_proxy terminates TLS.
	TLS *TLS `yaml:"tls"`
	// UpstreamTLS is how `vigil gateway` speaks TLS to the server.
	UpstreamTLS UpstreamTLS `yaml:"upstream_tls"`
	// InsecurePlaintext lets tokens and stored passwords cross a plaintext
	// hop that leaves the machine. Never set it outside a closed test
	// network: anyone on the path can replay what they see.
	InsecurePlaintext bool `yaml:"insecure_plaintext"`
}

// TLS names a certificate and its key, PEM files.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, when set, requires clients to present a certificate
	// signed by it.
	ClientCAFile string `yaml:"client_ca_file"`
}

// UpstreamTLS says how vigil reaches the server over TLS.
type UpstreamTLS struct {
	// Mode is disable, require (encrypt, no verification) or verify-full
	// (the default for upstreams off the machine: certificate and host
	// name checked).
	Mode string `yaml:"mode"`
	// CAFile holds the CAs that sign the server's certificate; the system
	// pool when empty.
	CAFile string `yaml:"ca_file"`
	// ServerName overrides the host name checked in the certificate.
	ServerName string `yaml:"server_name"`
}

// Upstream TLS modes.
const (
	TLSDisable    = "disable"
	TLSRequire    = "require"
	TLSVerifyFull = "verify-full"
)

// DefaultMaxPendingLogins is a connection's default limit of logins in
// progress: well under PostgreSQL's default max_connections of 100.
const DefaultMaxPendingLogins = 32

// PendingLoginLimit is the connection's limit of logins in progress.
func (c *Connection) PendingLoginLimit() int {
	if c.MaxPendingLogins > 0 {
		return c.MaxPendingLogins
	}
	return DefaultMaxPendingLogins
}

// RecordParameters reports whether parameter values are written to the audit.
func (c *Connection) RecordParameters() bool { return c.Record != RecordStatements }

// Record modes.
const (
	RecordFull       = "full"
	RecordStatements = "statements"
)

// Credential is how vigil logs in upstream on behalf of an agent.
type Credential struct {
	// Auth is one of trust, password, md5, scram-sha-256, passthrough.
	Auth string `yaml:"auth"`
	// User is the upstream user vigil logs in as.
	User string `yaml:"user"`
	// PasswordFile holds the stored password (trailing newline ignored).
	PasswordFile string `yaml:"password_file"`
	// PasswordEnv names an environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
}

// Auth methods.
const (
	AuthTrust       = "trust"
	AuthPassword    = "password"
	AuthMD5         = "md5"
	AuthSCRAM       = "scram-sha-256"
	AuthPassthrough = "passthrough"
)

// Secret reads the stored password. The value must never be logged.
func (c *Credential) Secret() (Secret, error) {
	s, err := c.read()
	if err != nil {
		return "", fmt.Errorf("config: credential %w", err)
	}
	return s, nil
}

// read reads the stored password; its errors start with the key that
// named the secret (password_file or password_env).
func (c *Credential) read() (Secret, error) {
	switch {
	case c.PasswordFile != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("password_file: %w", err)
		}
		return Secret(strings.TrimRight(string(b), "\r\n")), nil
	case c.PasswordEnv != "":
		v, ok := os.LookupEnv(c.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("password_env: %s is not set", c.PasswordEnv)
		}
		return Secret(v), nil
	}
	return "", nil
}

// NeedsSecret reports whether vigil logs in upstream with a stored
// password: auth password, md5 or scram-sha-256.
func (c *Credential) NeedsSecret() bool {
	return c.Auth == AuthPassword || c.Auth == AuthMD5 || c.Auth == AuthSCRAM
}

// CheckSecrets reads the stored password of every connection that logs in
// with one, and returns every credential that cannot be read, each naming
// the file, the connection and the key. The values are dropped at once.
//
// `vigil gateway` and `vigil extproc` call it (through app.New) so that a
// missing password_file or an unset password_env stops them at start-up
// rather than at the first login. Load does not: auditors and approvers
// read the same file without access to the secrets.
func (c *Config) CheckSecrets() error {
	var errs []error
	for i := range c.Connections {
		cn := &c.Connections[i]
		if !cn.Credential.NeedsSecret() {
			continue
		}
		if _, err := cn.Credential.read(); err != nil {
			errs = append(errs, fmt.Errorf("connections[%d] (%s).credential.%w", i, cn.Name, err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	if c.Path != "" {
		return fmt.Errorf("config: %s: %w", c.Path, errors.Join(errs...))
	}
	return fmt.Errorf("config: %w", errors.Join(errs...))
}

// Secret is a password or key. Its LogValue redacts it.
type Secret string

// LogValue keeps secrets out of logs.
func (Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// String redacts the secret when printed by accident.
func (Secret) String() string { return "[redacted]" }

// Reveal returns the secret itself, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }

// Policy says where the Rego bundle lives and whether it is enforced.
type Policy struct {
	// Dir holds the bundle (*.rego, data.json); empty means the default
	// bundle built into vigil (policy/bundle).
	Dir string `yaml:"dir"`
	// Mode is enforce (the default: deny, mask, hold), monitor (decide and
	// record every decision, but let everything through unmasked: for
	// rolling a policy out) or off (no policy at all).
	Mode string `yaml:"mode"`
	// HashKeyFile holds the key of the hash masking strategy (at least 16
	// bytes, a secret): replicas sharing it hash equal values equally, so
	// masked columns still join. Without it the key is random per process.
	HashKeyFile string `yaml:"hash_key_file"`
}

// HashKey reads policy.hash_key_file, or returns nil when it is not set.
func (p *Policy) HashKey() ([]byte, error) {
	if p.HashKeyFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(p.HashKeyFile)
	if err != nil {
		return nil, fmt.Errorf("config: policy.hash_key_file: %w", err)
	}
	return bytes.TrimRight(b, "\r\n"), nil
}

// Policy modes.
const (
	PolicyEnforce = "enforce"
	PolicyMonitor = "monitor"
	PolicyOff     = "off"
)

// Approvals says where held commands wait for a human decision. Approvers
// use the HTTP API and page on server.http, or `vigil approvals`.
type Approvals struct {
	// Store is "file" (the default: a file in audit.dir, for one machine)
	// or "postgres" (shared by every vigil replica).
	Store string `yaml:"store"`
	// PostgresDSNFile or PostgresDSNEnv hold the store's connection string.
	PostgresDSNFile string `yaml:"postgres_dsn_file"`
	PostgresDSNEnv  string `yaml:"postgres_dsn_env"`
	// WebhookFile holds the URL notified when a request is created and
	// decided (Slack- and Teams-compatible JSON); the URL is a secret.
	WebhookFile string `yaml:"webhook_file"`
	// PublicURL is the approvals page as approvers reach it, for links.
	PublicURL string `yaml:"public_url"`
}

// DSN reads the PostgreSQL store's connection string.
func (a *Approvals) DSN() (Secret, error) {
	c := Credential{PasswordFile: a.PostgresDSNFile, PasswordEnv: a.PostgresDSNEnv}
	s, err := c.Secret()
	if err != nil {
		return "", fmt.Errorf("config: approvals postgres dsn: %w", err)
	}
	return s, nil
}

// Webhook reads the webhook URL, or "" when none is configured.
func (a *Approvals) Webhook() (Secret, error) {
	c := Credential{PasswordFile: a.WebhookFile}
	s, err := c.Secret()
	if err != nil {
		return "", fmt.Errorf("config: approvals webhook: %w", err)
	}
	return s, nil
}

// Audit says where the journal lives and where it is exported.
type Audit struct {
	// Dir holds the journal, the export cursor and the checkpoint key.
	Dir           string         `yaml:"dir"`
	Elasticsearch *Elasticsearch `yaml:"elasticsearch"`
}

// Elasticsearch holds the export settings.
type Elasticsearch struct {
	Addresses  []string `yaml:"addresses"`
	APIKeyFile string   `yaml:"api_key_file"`
	// Username and PasswordFile are basic authentication, instead of an
	// API key.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// CAFile is the PEM bundle that signs the cluster's certificate;
	// default: the system's CAs.
	CAFile     string `yaml:"ca_file"`
	DataStream string `yaml:"data_stream"`
	// Retention is how long a backing index is kept after its rollover, an
	// Elasticsearch time value ("90d"); `vigil elasticsearch setup` puts it
	// in the ILM policy.
	Retention string `yaml:"retention"`
	// Kibana is where `vigil elasticsearch setup` imports the saved objects;
	// nil skips them.
	Kibana *Kibana `yaml:"kibana"`
}

// Kibana says where Kibana is.
type Kibana struct {
	URL        string `yaml:"url"`
	APIKeyFile string `yaml:"api_key_file"`
}

// Server holds vigil's own listeners.
type Server struct {
	// GRPC is the ext_proc listener for Envoy.
	GRPC string `yaml:"grpc"`
	// HTTP serves GET /healthz, GET /export (the Elasticsearch export's
	// lag, JSON), the approvals API under /api/approvals and the approvals
	// page at /approvals/.
	HTTP string `yaml:"http"`
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: want a duration such as 30s: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// Grant is one access rule: kind "group", "role", "app" or "oid", and the
// value it must equal.
type Grant struct {
	Kind  string
	Value string
}

// String gives the grant as written in the config, "group:billing-agents".
func (g Grant) String() string { return g.Kind + ":" + g.Value }

// ParseGrant reads "kind:value".
func ParseGrant(s string) (Grant, error) {
	kind, value, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || strings.TrimSpace(value) == "" {
		return Grant{}, fmt.Errorf("grant %q names nothing: want kind:value, "+
			"kind one of group, role, app, oid", s)
	}
	switch kind {
	case "group", "role", "app", "oid":
	default:
		return Grant{}, fmt.Errorf("grant %q: unknown kind %q: want group, role, app or oid", s, kind)
	}
	return Grant{Kind: kind, Value: strings.TrimSpace(value)}, nil
}

// Grants is one grant or a list of grants.
type Grants []Grant

// UnmarshalYAML accepts a scalar or a sequence of "kind:value" strings.
func (gs *Grants) UnmarshalYAML(n *yaml.Node) error {
	var raw []string
	switch n.Kind {
	case yaml.ScalarNode:
		raw = []string{n.Value}
	case yaml.SequenceNode:
		if err := n.Decode(&raw); err != nil {
			return err
		}
	default:
		return fmt.Errorf("line %d: access: want a grant or a list of grants", n.Line)
	}
	out := make(Grants, 0, len(raw))
	for _, r := range raw {
		g, err := ParseGrant(r)
		if err != nil {
			return fmt.Errorf("line %d: access: %w", n.Line, err)
		}
		out = append(out, g)
	}
	*gs = out
	return nil
}

// Load reads, decodes and checks the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	c.Path = path
	c.resolvePaths(filepath.Dir(path))
	return c, nil
}

// Parse decodes and checks a configuration held in memory. Relative paths
// stay relative to the working directory.
func Parse(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, errEOF) {
			return nil, fmt.Errorf("the file is empty")
		}
		return nil, err
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// resolvePaths makes relative file paths relative to the config's folder,
// so that `vigil gateway --config deploy/vigil.yaml` works from anywhere.
func (c *Config) resolvePaths(base string) {
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	rel(&c.Policy.Dir)
	rel(&c.Policy.HashKeyFile)
	rel(&c.Approvals.PostgresDSNFile)
	rel(&c.Approvals.WebhookFile)
	if c.Identity.Graph != nil {
		rel(&c.Identity.Graph.ClientSecretFile)
	}
	rel(&c.Audit.Dir)
	if c.Audit.Elasticsearch != nil {
		es := c.Audit.Elasticsearch
		rel(&es.APIKeyFile)
		rel(&es.PasswordFile)
		rel(&es.CAFile)
		if es.Kibana != nil {
			rel(&es.Kibana.APIKeyFile)
		}
	}
	for i := range c.Connections {
		cn := &c.Connections[i]
		rel(&cn.Credential.PasswordFile)
		if cn.TLS != nil {
			rel(&cn.TLS.CertFile)
			rel(&cn.TLS.KeyFile)
			rel(&cn.TLS.ClientCAFile)
		}
		rel(&cn.UpstreamTLS.CAFile)
	}
}

func (c *Config) applyDefaults() {
	if c.Identity.Provider == "" {
		c.Identity.Provider = "entra"
	}
	if c.Identity.Provider == "entra" && c.Identity.Authority == "" {
		c.Identity.Authority = "https://login.microsoftonline.com"
	}
	if len(c.Identity.Versions) == 0 {
		c.Identity.Versions = []string{"v1", "v2"}
	}
	if c.Identity.Groups == "" {
		c.Identity.Groups = "token"
	}
	if c.Identity.ClockSkew == 0 {
		c.Identity.ClockSkew = Duration(time.Minute)
	}
	if c.Audit.Dir == "" {
		c.Audit.Dir = "vigil-data"
	}
	if c.Approvals.Store == "" {
		c.Approvals.Store = "file"
	}
	if c.Policy.Mode == "" {
		c.Policy.Mode = PolicyEnforce
	}
	if c.Audit.Elasticsearch != nil && c.Audit.Elasticsearch.DataStream == "" {
		c.Audit.Elasticsearch.DataStream = "logs-vigil.audit-default"
	}
	if c.Audit.Elasticsearch != nil && c.Audit.Elasticsearch.Retention == "" {
		c.Audit.Elasticsearch.Retention = "90d"
	}
	for i := range c.Connections {
		cn := &c.Connections[i]
		if cn.Record == "" {
			cn.Record = RecordFull
		}
		if cn.UpstreamTLS.Mode == "" {
			cn.UpstreamTLS.Mode = TLSVerifyFull
			if IsLoopback(cn.Upstream) {
				cn.UpstreamTLS.Mode = TLSDisable
			}
		}
	}
}

// Connection returns the connection with the given name, or nil.
func (c *Config) Connection(name string) *Connection {
	for i := range c.Connections {
		if c.Connections[i].Name == name {
			return &c.Connections[i]
		}
	}
	return nil
}

// IsLoopback reports whether addr (host:port) is on this machine: a
// loopback IP or "localhost".
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
