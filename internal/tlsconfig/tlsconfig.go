// Package tlsconfig turns a connection's tls and upstream_tls settings
// (config.TLS, config.UpstreamTLS) into the crypto/tls configurations the
// relay of `vigil gateway` uses: one to terminate clients' TLS, one to
// speak TLS to the database server.
//
// Both require TLS 1.2 or later. The server side reloads its certificate
// and key from disk when the files change, so a renewed certificate is
// served without a restart.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/vigilaudit/vigil/config"
)

// MinVersion is the oldest TLS version either side accepts.
const MinVersion = tls.VersionTLS12

// ForConnection returns the client-side (server) and upstream (client)
// TLS configurations of cn; either is nil when cn does not use TLS on that
// side. log receives certificate reloads; nil uses slog.Default().
func ForConnection(cn *config.Connection, log *slog.Logger) (server, upstream *tls.Config,
	err error) {
	if cn.TLS != nil {
		if server, err = Server(*cn.TLS, log); err != nil {
			return nil, nil, fmt.Errorf("%w (connection %s)", err, cn.Name)
		}
	}
	if upstream, err = Upstream(cn.UpstreamTLS); err != nil {
		return nil, nil, fmt.Errorf("%w (connection %s)", err, cn.Name)
	}
	return server, upstream, nil
}

// Server returns the configuration that terminates clients' TLS with the
// certificate in t.CertFile and t.KeyFile. Before each handshake the files'
// modification times are checked; when they changed, the pair is read
// again, and if that fails (a rotation half done) the previous certificate
// stays in use and the failure is logged. With t.ClientCAFile set, clients
// must present a certificate signed by one of its CAs; that file is read
// once, here.
//
// The returned value may be cloned and extended (ALPN, for instance); its
// GetCertificate must be kept.
func Server(t config.TLS, log *slog.Logger) (*tls.Config, error) {
	if log == nil {
		log = slog.Default()
	}
	kp := &keyPair{certFile: t.CertFile, keyFile: t.KeyFile, log: log}
	if err := kp.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: MinVersion, GetCertificate: kp.get}
	if t.ClientCAFile != "" {
		pool, err := loadPool("tls.client_ca_file", t.ClientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Upstream returns the configuration for TLS to the database server, or
// nil for mode disable.
//
// Mode verify-full checks the server's certificate against the CAs in
// u.CAFile (the system pool when empty) and its name against u.ServerName;
// when ServerName is empty the caller must set it (the relay uses the
// upstream's host).
//
// Mode require encrypts without verifying anything: the returned config has
// InsecureSkipVerify set, so anyone who can intercept the connection can
// present their own certificate, read the stored credential vigil logs in
// with, and every statement. It only protects against passive listening;
// use verify-full wherever the path to the server is not fully trusted.
func Upstream(u config.UpstreamTLS) (*tls.Config, error) {
	switch u.Mode {
	case config.TLSDisable, "":
		return nil, nil
	case config.TLSRequire:
		return &tls.Config{MinVersion: MinVersion, InsecureSkipVerify: true}, nil
	case config.TLSVerifyFull:
		cfg := &tls.Config{MinVersion: MinVersion, ServerName: u.ServerName}
		if u.CAFile != "" {
			pool, err := loadPool("upstream_tls.ca_file", u.CAFile)
			if err != nil {
				return nil, err
			}
			cfg.RootCAs = pool
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("tlsconfig: upstream_tls.mode %q: want disable, require or verify-full",
		u.Mode)
}

// loadPool reads PEM certificates from path, the value of the config key,
// into a new pool.
func loadPool(key, path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tlsconfig: %s: %w", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tlsconfig: %s: %s holds no PEM certificate", key, path)
	}
	return pool, nil
}

// keyPair is a certificate and key kept in step with their files. It is
// safe for concurrent use.
type keyPair struct {
	certFile, keyFile string
	log               *slog.Logger

	mu     sync.Mutex
	cert   *tls.Certificate
	stamp  [2]time.Time // modification times of the loaded files
	failed string       // the last reload failure, logged once
}

// load reads both files and replaces the certificate.
func (kp *keyPair) load() error {
	stamp, err := kp.stamps()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		return fmt.Errorf("tlsconfig: tls: load %s and %s: %w", kp.certFile, kp.keyFile, err)
	}
	kp.cert, kp.stamp = &cert, stamp
	return nil
}

// stamps returns the modification times of the certificate and key files.
func (kp *keyPair) stamps() ([2]time.Time, error) {
	var s [2]time.Time
	for i, f := range []string{kp.certFile, kp.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return s, fmt.Errorf("tlsconfig: tls: %w", err)
		}
		s[i] = fi.ModTime()
	}
	return s, nil
}

// get is tls.Config.GetCertificate: the current certificate, reloaded
// first when its files changed.
func (kp *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	stamp, err := kp.stamps()
	if err == nil && stamp == kp.stamp {
		return kp.cert, nil
	}
	if err == nil {
		err = kp.load()
	}
	if err == nil {
		kp.failed = ""
		kp.log.Info("TLS certificate reloaded", "cert_file", kp.certFile)
		return kp.cert, nil
	}
	// Every handshake retries; the same failure is logged once.
	if f := fmt.Sprint(stamp, err); f != kp.failed {
		kp.failed = f
		kp.log.Warn("TLS certificate reload failed; serving the previous one",
			"cert_file", kp.certFile, "err", err)
	}
	return kp.cert, nil
}
