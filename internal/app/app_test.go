package app

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
)

// refuseAll is a verifier that is never reached: New must fail first.
type refuseAll struct{}

func (refuseAll) Verify(context.Context, string) (*identity.Identity, error) {
	return nil, errors.New("refused")
}

// TestNewRefusesUnreadableCredential checks that a connection whose stored
// password cannot be read stops New, before the first login would find
// out, and that the error names the file, the connection and the key.
func TestNewRefusesUnreadableCredential(t *testing.T) {
	dir := t.TempDir()
	src := `identity:
  tenants: [t1]
  audiences: [api://vigil]
connections:
  - name: db
    type: postgres
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:5432
    credential: {auth: scram-sha-256, user: app, password_file: missing-pw}
    access: role:x
policy:
  mode: off
audit:
  dir: data
`
	path := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := New(context.Background(), cfg, log, Options{Verifier: refuseAll{}})
	if err == nil {
		a.Close()
		t.Fatal("New started with a credential it cannot read")
	}
	for _, want := range []string{"vigil.yaml", "connections[0] (db)",
		"credential.password_file", "missing-pw"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to name %q", err, want)
		}
	}
}

// TestNewRefusesBadHashKey: a hash key file that is missing or too short
// stops New, naming the key.
func TestNewRefusesBadHashKey(t *testing.T) {
	for name, key := range map[string]*string{"missing": nil, "short": ptr("0123456789")} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if key != nil {
				err := os.WriteFile(filepath.Join(dir, "mask-key"), []byte(*key), 0o600)
				if err != nil {
					t.Fatal(err)
				}
			}
			src := "identity:\n  tenants: [t1]\n  audiences: [api://vigil]\n" +
				"connections:\n  - name: db\n    type: postgres\n    listen: 127.0.0.1:0\n" +
				"    upstream: 127.0.0.1:5432\n    credential: {auth: trust, user: app}\n" +
				"    access: role:x\npolicy:\n  mode: off\n  hash_key_file: mask-key\n" +
				"audit:\n  dir: data\n"
			path := filepath.Join(dir, "vigil.yaml")
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			a, err := New(context.Background(), cfg, log, Options{Verifier: refuseAll{}})
			if err == nil {
				a.Close()
				t.Fatal("New started with a bad hash key file")
			}
			if !strings.Contains(err.Error(), "policy.hash_key_file") {
				t.Errorf("error %q does not name policy.hash_key_file", err)
			}
		})
	}
}

func ptr(s string) *string { return &s }
