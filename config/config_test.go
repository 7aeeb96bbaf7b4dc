package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `identity:
  tenants: [t1]
  audiences: [api://vigil]
connections:
  - name: db
    type: postgres
    listen: 127.0.0.1:15432
    upstream: 127.0.0.1:5432
    credential: {auth: password, user: app, password_file: pw}
    access: group:billing-agents
audit:
  dir: data
`

func TestLoadGoodConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	cn := c.Connection("db")
	if cn == nil || cn.Access[0] != (Grant{Kind: "group", Value: "billing-agents"}) {
		t.Fatalf("connection %+v", cn)
	}
	// Relative paths are relative to the config file.
	if cn.Credential.PasswordFile != filepath.Join(dir, "pw") || c.Audit.Dir != filepath.Join(dir, "data") {
		t.Errorf("paths not resolved: %q %q", cn.Credential.PasswordFile, c.Audit.Dir)
	}
	if c.Identity.Provider != "entra" || cn.Record != RecordFull || cn.UpstreamTLS.Mode != TLSDisable {
		t.Errorf("defaults: %+v %+v", c.Identity, cn)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, from, to, want string
	}{
		{"unknown key", "    access:", "    acess: x\n    access:", "field acess not found"},
		{"grant names nothing", "group:billing-agents", `"group:"`, "names nothing"},
		{"unknown grant kind", "group:billing-agents", "team:x", "unknown kind"},
		{"no credential", "    credential: {auth: password, user: app, password_file: pw}\n", "",
			"needs a credential"},
		{"password without secret", "password_file: pw", "", "needs password_file or password_env"},
		{"export without elasticsearch", "    access:", "    export: siem\n    access:",
			"siem needs audit.elasticsearch"},
		{"no tenants", "  tenants: [t1]\n", "", "identity.tenants"},
		{"bad upstream", "127.0.0.1:5432", "nowhere", "upstream"},
		{"plaintext listen off the machine", "127.0.0.1:15432", "0.0.0.0:15432", "plaintext hop"},
		{"plaintext password upstream", "127.0.0.1:5432", "db.example:5432\n    upstream_tls: {mode: disable}",
			"sends the secret in clear"},
		{"graph without credentials", "  audiences:", "  groups: graph\n  audiences:", "graph"},
		{"duplicate names", "audit:", `  - name: db
    type: postgres
    upstream: 127.0.0.1:5432
    credential: {auth: trust, user: app}
    access: role:x
audit:`, "used twice"},
	}
	for _, c := range cases {
		if c.want == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(good, c.from, c.to, 1)
			if src == good {
				t.Fatalf("the case does not change the config")
			}
			_, err := Parse([]byte(src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broken.yaml")
	os.WriteFile(path, []byte("identity: [\n"), 0o600)
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), "broken.yaml") {
		t.Fatalf("err = %v", err)
	}
}

func TestSecretRedacts(t *testing.T) {
	s := Secret("hunter2")
	if s.String() != "[redacted]" || s.LogValue().String() != "[redacted]" || s.Reveal() != "hunter2" {
		t.Fatal("secret leaks")
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:5": true,
		"localhost:5432": true, "10.0.0.1:5432": false, "db.example:5432": false} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) != %v", addr, want)
		}
	}
}
