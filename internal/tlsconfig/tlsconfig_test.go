package tlsconfig

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/internal/tlsconfig/tlstest"
)

// served returns the certificate cfg presents to a client.
func served(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	c, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Certificate[0]
}

// bump gives path a modification time later than any before.
func bump(t *testing.T, path string, n int) {
	t.Helper()
	at := time.Now().Add(time.Duration(n) * time.Minute)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func TestServerReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	first, second := ca.Issue(t, "one.test"), ca.Issue(t, "two.test")
	f := ca.WriteFiles(t, dir, "server", first)
	var logs bytes.Buffer
	cfg, err := Server(config.TLS{CertFile: f.Cert, KeyFile: f.Key},
		slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("MinVersion %x, ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	if !bytes.Equal(served(t, cfg), first.TLS.Certificate[0]) {
		t.Fatal("not serving the configured certificate")
	}

	// Half a rotation (new certificate, old key) keeps the old pair.
	if err := os.WriteFile(f.Cert, second.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	bump(t, f.Cert, 1)
	if !bytes.Equal(served(t, cfg), first.TLS.Certificate[0]) {
		t.Fatal("a mismatched pair replaced the certificate")
	}
	served(t, cfg)
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Fatalf("the failed reload was logged %d times, want once:\n%s", n, logs.String())
	}

	// The rotation completes: the new pair is served.
	if err := os.WriteFile(f.Key, second.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	bump(t, f.Key, 2)
	if !bytes.Equal(served(t, cfg), second.TLS.Certificate[0]) {
		t.Fatal("the renewed certificate is not served")
	}
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Fatalf("reload not logged:\n%s", logs.String())
	}
}

func TestServerClientCA(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	f := ca.WriteFiles(t, dir, "server", ca.Issue(t, "127.0.0.1"))
	cfg, err := Server(config.TLS{CertFile: f.Cert, KeyFile: f.Key, ClientCAFile: f.CA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil ||
		!cfg.ClientCAs.Equal(ca.Pool()) {
		t.Fatalf("client certificates not required from the CA: %v", cfg.ClientAuth)
	}
}

func TestServerErrors(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	f := ca.WriteFiles(t, dir, "server", ca.Issue(t, "127.0.0.1"))
	notPEM := dir + "/not.pem"
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  config.TLS
		want string
	}{
		{"missing cert", config.TLS{CertFile: dir + "/none", KeyFile: f.Key}, "no such file"},
		{"key not PEM", config.TLS{CertFile: f.Cert, KeyFile: notPEM}, "tls: load"},
		{"client CA not PEM", config.TLS{CertFile: f.Cert, KeyFile: f.Key, ClientCAFile: notPEM},
			"tls.client_ca_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Server(tc.tls, nil)
			if err == nil || !strings.HasPrefix(err.Error(), "tlsconfig: ") ||
				!strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestUpstream(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	f := ca.WriteFiles(t, dir, "db", ca.Issue(t, "db.test"))
	for _, tc := range []struct {
		name string
		u    config.UpstreamTLS
		want func(*tls.Config) bool
	}{
		{"disable", config.UpstreamTLS{Mode: config.TLSDisable},
			func(c *tls.Config) bool { return c == nil }},
		{"require", config.UpstreamTLS{Mode: config.TLSRequire},
			func(c *tls.Config) bool { return c.InsecureSkipVerify && c.MinVersion == MinVersion }},
		{"verify-full, system pool", config.UpstreamTLS{Mode: config.TLSVerifyFull},
			func(c *tls.Config) bool {
				return !c.InsecureSkipVerify && c.RootCAs == nil && c.ServerName == ""
			}},
		{"verify-full, CA and name", config.UpstreamTLS{Mode: config.TLSVerifyFull,
			CAFile: f.CA, ServerName: "db.test"},
			func(c *tls.Config) bool {
				return !c.InsecureSkipVerify && c.RootCAs.Equal(ca.Pool()) &&
					c.ServerName == "db.test" && c.MinVersion == MinVersion
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Upstream(tc.u)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(c) {
				t.Fatalf("config = %+v", c)
			}
		})
	}
	if _, err := Upstream(config.UpstreamTLS{Mode: "verify-ca"}); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
	_, err := Upstream(config.UpstreamTLS{Mode: config.TLSVerifyFull, CAFile: dir + "/none"})
	if err == nil || !strings.Contains(err.Error(), "upstream_tls.ca_file") {
		t.Fatalf("err = %v, want one naming upstream_tls.ca_file", err)
	}
}

func TestForConnection(t *testing.T) {
	cn := &config.Connection{Name: "customer-db",
		TLS:         &config.TLS{CertFile: "/nonexistent.crt", KeyFile: "/nonexistent.key"},
		UpstreamTLS: config.UpstreamTLS{Mode: config.TLSDisable}}
	if _, _, err := ForConnection(cn, nil); err == nil ||
		!strings.Contains(err.Error(), "customer-db") {
		t.Fatalf("err = %v, want one naming the connection", err)
	}
	cn.TLS = nil
	srv, up, err := ForConnection(cn, nil)
	if err != nil || srv != nil || up != nil {
		t.Fatalf("plaintext connection: %v, %v, %v", srv, up, err)
	}
}
