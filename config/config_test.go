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
		{"authority not http", "  audiences:", "  authority: ftp://login.example\n  audiences:",
			"identity.authority"},
		{"plaintext authority off the machine", "  audiences:",
			"  authority: http://login.example\n  audiences:", "identity.authority"},
		{"oidc issuer not a URL", "  tenants: [t1]\n",
			"  provider: oidc\n  issuer: idp.example.com\n", "identity.issuer"},
		{"plaintext oidc issuer off the machine", "  tenants: [t1]\n",
			"  provider: oidc\n  issuer: http://idp.example.com\n", "identity.issuer"},
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

// TestKeyURLOnLoopback accepts plaintext key URLs on this machine only, as
// `vigil dev issuer` serves them.
func TestKeyURLOnLoopback(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8400", "http://localhost:8400",
		"http://[::1]:8400", "https://login.microsoftonline.com"} {
		src := strings.Replace(good, "  audiences:", "  authority: "+u+"\n  audiences:", 1)
		if _, err := Parse([]byte(src)); err != nil {
			t.Errorf("authority %s: %v", u, err)
		}
		src = strings.Replace(good, "  tenants: [t1]\n", "  provider: oidc\n  issuer: "+u+"\n", 1)
		if _, err := Parse([]byte(src)); err != nil {
			t.Errorf("issuer %s: %v", u, err)
		}
	}
}

// TestCheckSecrets checks that Load accepts a credential it cannot read
// (auditors load the file without the secrets) and that CheckSecrets
// refuses it, naming the config file, the connection, the key and the
// secret's file or variable.
func TestCheckSecrets(t *testing.T) {
	cases := []struct {
		name, cred string
		setup      func(dir string)
		want       []string // substrings of the error; none: no error
	}{
		{name: "readable file", cred: "password_file: pw",
			setup: func(dir string) { os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600) }},
		{name: "missing file", cred: "password_file: pw",
			want: []string{"connections[0] (db).credential.password_file", "pw", "vigil.yaml"}},
		{name: "unreadable file", cred: "password_file: pw",
			setup: func(dir string) { os.Mkdir(filepath.Join(dir, "pw"), 0o700) },
			want:  []string{"connections[0] (db).credential.password_file", "pw", "vigil.yaml"}},
		{name: "unset variable", cred: "password_env: VIGIL_TEST_UNSET_PASSWORD",
			want: []string{"connections[0] (db).credential.password_env",
				"VIGIL_TEST_UNSET_PASSWORD is not set"}},
		{name: "trust needs none", cred: "password_file: pw",
			setup: func(string) {}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if c.setup != nil {
				c.setup(dir)
			}
			src := strings.Replace(good, "password_file: pw", c.cred, 1)
			if c.name == "trust needs none" {
				src = strings.Replace(src, "auth: password", "auth: trust", 1)
			}
			path := filepath.Join(dir, "vigil.yaml")
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(path)
			if err != nil {
				t.Fatalf("Load must not read secrets: %v", err)
			}
			err = cfg.CheckSecrets()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("CheckSecrets: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckSecrets accepted a credential it cannot read")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to name %q", err, w)
				}
			}
		})
	}
}
