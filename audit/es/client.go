package es

import (
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
	// authentication.
	APIKey string
	// Transport, when set, carries the requests (tests).
	Transport http.RoundTripper
}

// ConfigFrom reads the client settings of audit.elasticsearch, including
// the API key from api_key_file.
func ConfigFrom(c *config.Elasticsearch) (ClientConfig, error) {
	if c == nil || len(c.Addresses) == 0 {
		return ClientConfig{}, errors.New("es: audit.elasticsearch.addresses is not set")
	}
	cc := ClientConfig{Addresses: c.Addresses}
	if c.APIKeyFile != "" {
		b, err := os.ReadFile(c.APIKeyFile)
		if err != nil {
			return ClientConfig{}, fmt.Errorf("es: audit.elasticsearch.api_key_file: %w", err)
		}
		cc.APIKey = strings.TrimSpace(string(b))
	}
	return cc, nil
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
		tr = t
	}
	cl, err := elasticsearch.NewClient(elasticsearch.Config{
		Addresses:    c.Addresses,
		APIKey:       c.APIKey,
		DisableRetry: true,
		Transport:    tr,
	})
	if err != nil {
		return nil, fmt.Errorf("es: client: %w", err)
	}
	return cl, nil
}

// requestTimeout bounds the setup and reader calls.
const requestTimeout = 30 * time.Second
