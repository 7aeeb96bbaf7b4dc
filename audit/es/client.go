package es

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/vigilaudit/vigil/config"
)

// ClientConfig says how to reach the cluster.
type ClientConfig struct {
	Addresses []string
	// APIKey is the encoded API key (base64 of "id:key", the "encoded"
	// value Elasticsearch returns when the key is created). Empty means no
	// API key.
	APIKey string
	// Username and Password are basic authentication, used when APIKey is
	// empty.
	Username string
	Password config.Secret
	// CACert is the PEM bundle the cluster's certificate must chain to;
	// empty means the system's CAs.
	CACert []byte
	// Transport, when set, carries the requests (tests).
	Transport http.RoundTripper
}

// ConfigFrom reads the client settings of audit.elasticsearch, including
// the API key, password and CA files.
func ConfigFrom(c *config.Elasticsearch) (ClientConfig, error) {
	if c == nil || len(c.Addresses) == 0 {
		return ClientConfig{}, errors.New("es: audit.elasticsearch.addresses is not set")
	}
	cc := ClientConfig{Addresses: c.Addresses, Username: c.Username}
	var err error
	if cc.APIKey, err = readSecret("audit.elasticsearch.api_key_file", c.APIKeyFile); err != nil {
		return ClientConfig{}, err
	}
	pw, err := readSecret("audit.elasticsearch.password_file", c.PasswordFile)
	if err != nil {
		return ClientConfig{}, err
	}
	cc.Password = config.Secret(pw)
	if c.CAFile != "" {
		if cc.CACert, err = os.ReadFile(c.CAFile); err != nil {
			return ClientConfig{}, fmt.Errorf("es: audit.elasticsearch.ca_file: %w", err)
		}
	}
	return cc, nil
}

// KibanaFrom reads the Kibana settings of audit.elasticsearch.kibana; ok is
// false when there are none.
func KibanaFrom(c *config.Elasticsearch) (k KibanaOptions, ok bool, err error) {
	if c == nil || c.Kibana == nil {
		return KibanaOptions{}, false, nil
	}
	k.URL = c.Kibana.URL
	k.APIKey, err = readSecret("audit.elasticsearch.kibana.api_key_file", c.Kibana.APIKeyFile)
	if err != nil {
		return KibanaOptions{}, false, err
	}
	return k, true, nil
}

// readSecret reads a secret file, trimmed; "" when path is "".
func readSecret(key, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("es: %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// NewClient returns a client with the client's own retries turned off
// (the Shipper retries with its own backoff).
func NewClient(c ClientConfig) (*elasticsearch.Client, error) {
	tr := c.Transport
	if tr == nil {
		// A node that accepts and never answers must not hold a batch for
		// ever; Elasticsearch itself gives up on a bulk after 1m.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = 2 * time.Minute
		if len(c.CACert) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(c.CACert) {
				return nil, errors.New("es: audit.elasticsearch.ca_file holds no PEM certificate")
			}
			t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		tr = t
	}
	cfg := elasticsearch.Config{
		Addresses:    c.Addresses,
		APIKey:       c.APIKey,
		DisableRetry: true,
		Transport:    tr,
	}
	if c.APIKey == "" && c.Username != "" {
		cfg.Username, cfg.Password = c.Username, c.Password.Reveal()
	}
	cl, err := elasticsearch.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("es: client: %w", err)
	}
	return cl, nil
}

// requestTimeout bounds the setup and reader calls.
const requestTimeout = 30 * time.Second
