package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

var errEOF = io.EOF

// maxClockSkew bounds identity.clock_skew: a larger skew would let expired
// tokens live on.
const maxClockSkew = 5 * time.Minute

// Validate checks the configuration and returns every problem it finds,
// each naming the key and what is expected.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}

	// Identity.
	id := &c.Identity
	switch id.Provider {
	case "entra":
		if len(id.Tenants) == 0 {
			bad("identity.tenants", "want at least one allowed tenant id")
		}
	case "oidc":
		if id.Issuer == "" {
			bad("identity.issuer", "provider oidc needs the issuer URL")
		} else {
			validateKeyURL("identity.issuer", id.Issuer, "https://idp.example.com", bad)
		}
	default:
		bad("identity.provider", "%q: want entra or oidc", id.Provider)
	}
	if len(id.Audiences) == 0 {
		bad("identity.audiences", "want at least one accepted audience")
	}
	for _, v := range id.Versions {
		if v != "v1" && v != "v2" {
			bad("identity.versions", "%q: want v1 or v2", v)
		}
	}
	if id.Groups != "token" && id.Groups != "graph" {
		bad("identity.groups", "%q: want token or graph", id.Groups)
	}
	if id.Groups == "graph" {
		g := id.Graph
		switch {
		case g == nil || g.ClientID == "":
			bad("identity.graph.client_id", "groups: graph needs vigil's own app registration "+
				"(client_id and client_secret_file or client_secret_env)")
		case g.ClientSecretFile == "" && g.ClientSecretEnv == "":
			bad("identity.graph", "want client_secret_file or client_secret_env")
		}
	}
	if id.Authority != "" {
		validateKeyURL("identity.authority", id.Authority, "https://login.microsoftonline.com",
			bad)
	}
	if time.Duration(id.ClockSkew) < 0 || time.Duration(id.ClockSkew) > maxClockSkew {
		bad("identity.clock_skew", "%s: want between 0s and %s",
			time.Duration(id.ClockSkew), maxClockSkew)
	}

	// Connections.
	if len(c.Connections) == 0 {
		bad("connections", "want at least one connection")
	}
	names := map[string]bool{}
	for i := range c.Connections {
		cn := &c.Connections[i]
		key := fmt.Sprintf("connections[%d]", i)
		if cn.Name == "" {
			bad(key+".name", "every connection needs a name")
		} else if names[cn.Name] {
			bad(key+".name", "%q is used twice", cn.Name)
		}
		names[cn.Name] = true
		if cn.Name != "" {
			key = fmt.Sprintf("connections[%d] (%s)", i, cn.Name)
		}
		c.validateConnection(cn, key, bad)
	}

	switch c.Policy.Mode {
	case PolicyEnforce, PolicyMonitor, PolicyOff:
	default:
		bad("policy.mode", "%q: want enforce, monitor or off", c.Policy.Mode)
	}

	switch ap := c.Approvals; ap.Store {
	case "file":
	case "postgres":
		if ap.PostgresDSNFile == "" && ap.PostgresDSNEnv == "" {
			bad("approvals", "store postgres needs postgres_dsn_file or postgres_dsn_env")
		}
	default:
		bad("approvals.store", "%q: want file or postgres", ap.Store)
	}

	// Audit.
	if es := c.Audit.Elasticsearch; es != nil {
		validateElasticsearch(es, bad)
	}
	for _, a := range []struct{ key, addr string }{
		{"server.grpc", c.Server.GRPC}, {"server.http", c.Server.HTTP},
	} {
		if a.addr != "" {
			if _, _, err := net.SplitHostPort(a.addr); err != nil {
				bad(a.key, "%q: want host:port", a.addr)
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Config) validateConnection(cn *Connection, key string, bad func(string, string, ...any)) {
	if cn.Type != "postgres" {
		bad(key+".type", "%q: want postgres", cn.Type)
	}
	if cn.Upstream == "" {
		bad(key+".upstream", "want the server's host:port")
	} else if _, _, err := net.SplitHostPort(cn.Upstream); err != nil {
		bad(key+".upstream", "%q: want host:port", cn.Upstream)
	}
	if cn.Listen != "" {
		if _, _, err := net.SplitHostPort(cn.Listen); err != nil {
			bad(key+".listen", "%q: want host:port", cn.Listen)
		}
	}

	cr := &cn.Credential
	switch {
	case cr.Auth == "":
		bad(key+".credential", "every connection needs a credential "+
			"(auth: trust | password | md5 | scram-sha-256 | passthrough)")
	case !slices.Contains([]string{AuthTrust, AuthPassword, AuthMD5, AuthSCRAM,
		AuthPassthrough}, cr.Auth):
		bad(key+".credential.auth", "%q: want trust, password, md5, scram-sha-256 or passthrough",
			cr.Auth)
	}
	if cr.Auth != AuthPassthrough && cr.Auth != "" && cr.User == "" {
		bad(key+".credential.user", "want the upstream user vigil logs in as")
	}
	if cr.NeedsSecret() && cr.PasswordFile == "" && cr.PasswordEnv == "" {
		bad(key+".credential", "auth %s needs password_file or password_env", cr.Auth)
	}
	if cr.PasswordFile != "" && cr.PasswordEnv != "" {
		bad(key+".credential", "set password_file or password_env, not both")
	}

	c.validateTLS(cn, key, bad)

	if len(cn.Access) == 0 {
		bad(key+".access", "want at least one grant (group:, role:, app:, oid:)")
	}
	if cn.Record != RecordFull && cn.Record != RecordStatements {
		bad(key+".record", "%q: want full or statements", cn.Record)
	}
	switch cn.Export {
	case "":
	case "siem":
		if c.Audit.Elasticsearch == nil {
			bad(key+".export", "siem needs audit.elasticsearch settings")
		}
	default:
		bad(key+".export", "%q: want siem or nothing", cn.Export)
	}
}

// validateTLS enforces that tokens and stored passwords never cross a
// plaintext hop off the machine unless the config says so explicitly.
func (c *Config) validateTLS(cn *Connection, key string, bad func(string, string, ...any)) {
	if t := cn.TLS; t != nil && (t.CertFile == "" || t.KeyFile == "") {
		bad(key+".tls", "want cert_file and key_file")
	}
	switch cn.UpstreamTLS.Mode {
	case TLSDisable, TLSRequire, TLSVerifyFull:
	default:
		bad(key+".upstream_tls.mode", "%q: want disable, require or verify-full",
			cn.UpstreamTLS.Mode)
	}
	if cn.InsecurePlaintext {
		return
	}
	if cn.Listen != "" && cn.TLS == nil && !IsLoopback(cn.Listen) {
		bad(key+".listen", "%s is off this machine and no tls is configured: agents' tokens "+
			"would cross a plaintext hop; configure tls (cert_file, key_file) or, on a closed "+
			"test network only, insecure_plaintext: true", cn.Listen)
	}
	revealing := cn.Credential.Auth == AuthPassword || cn.Credential.Auth == AuthPassthrough
	if revealing && cn.UpstreamTLS.Mode == TLSDisable && cn.Upstream != "" &&
		!IsLoopback(cn.Upstream) {
		bad(key+".upstream_tls.mode", "disable: auth %s sends the secret in clear to %s; use "+
			"require or verify-full, or insecure_plaintext: true on a closed test network",
			cn.Credential.Auth, cn.Upstream)
	}
}

// validateKeyURL checks a URL that token signing keys are fetched from:
// http or https with a host, and https unless the host is this machine,
// since whoever can change keys in transit can forge every token.
func validateKeyURL(key, raw, example string, bad func(string, string, ...any)) {
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		bad(key, "%q: want an http or https URL such as %s", raw, example)
	case u.Scheme == "http" && !IsLoopback(u.Hostname()):
		bad(key, "%q: signing keys would be fetched over plaintext from another machine, "+
			"where anyone on the path could swap them; use https (http is for loopback only)",
			raw)
	}
}

// esRetention is an Elasticsearch time value in the units ILM accepts.
var esRetention = regexp.MustCompile(`^[1-9][0-9]*(d|h|m|s|ms|micros|nanos)$`)

func validateElasticsearch(es *Elasticsearch, bad func(string, string, ...any)) {
	if len(es.Addresses) == 0 {
		bad("audit.elasticsearch.addresses", "want at least one Elasticsearch URL")
	}
	for _, a := range es.Addresses {
		if u, err := url.Parse(a); err != nil || (u.Scheme != "http" && u.Scheme != "https") ||
			u.Host == "" {
			bad("audit.elasticsearch.addresses", "%q: want a URL such as https://127.0.0.1:9200",
				a)
		}
	}
	switch {
	case es.APIKeyFile != "" && es.Username != "":
		bad("audit.elasticsearch", "want api_key_file or username, not both")
	case es.Username != "" && es.PasswordFile == "":
		bad("audit.elasticsearch.password_file", "username needs password_file")
	case es.PasswordFile != "" && es.Username == "":
		bad("audit.elasticsearch.username", "password_file needs username")
	}
	if !esRetention.MatchString(es.Retention) {
		bad("audit.elasticsearch.retention", "%q: want a number and a unit such as 90d or 720h",
			es.Retention)
	}
	ds := es.DataStream
	if ds != strings.ToLower(ds) || strings.ContainsAny(ds, `\/*?"<>| ,#:`) ||
		strings.IndexAny(ds, "-_+.") == 0 {
		bad("audit.elasticsearch.data_stream", "%q: want a lower-case data stream name such "+
			"as logs-vigil.audit-default", ds)
	}
	if k := es.Kibana; k != nil {
		if u, err := url.Parse(k.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") ||
			u.Host == "" {
			bad("audit.elasticsearch.kibana.url", "%q: want a URL such as https://127.0.0.1:5601",
				k.URL)
		}
	}
}
