package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// decodeToken returns a minted token's header and claims.
func decodeToken(t *testing.T, tok string) (hdr, cl map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		t.Fatal(err)
	}
	if err := decodeSegment(parts[1], &cl); err != nil {
		t.Fatal(err)
	}
	return hdr, cl
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestMintShapes checks the headers and claim names against
// shared/entra-tokens.md.
func TestMintShapes(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name    string
		spec    TokenSpec
		header  string // sorted header names
		claims  string // sorted claim names
		iss     string
		minLife time.Duration
		maxLife time.Duration
	}{{
		name:    "v2 app-only",
		spec:    TokenSpec{Roles: []string{"Db.Read"}},
		header:  "alg kid typ",
		claims:  "aio aud azp azpacr exp iat idtyp iss nbf oid rh roles sub tid uti ver",
		iss:     "https://login.microsoftonline.com/" + DevTenant + "/v2.0",
		minLife: time.Hour, maxLife: 90 * time.Minute,
	}, {
		name:   "v1 managed identity",
		spec:   TokenSpec{Version: "v1"},
		header: "alg kid typ x5t",
		claims: "aio appid appidacr aud exp iat idp idtyp iss nbf oid rh sub tid uti ver " +
			"xms_mirid xms_tcdt",
		iss:     "https://sts.windows.net/" + DevTenant + "/",
		minLife: 24 * time.Hour, maxLife: 24 * time.Hour,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr, cl := decodeToken(t, e.mint(t, c.spec))
			if got := strings.Join(keys(hdr), " "); got != c.header {
				t.Errorf("header %q, want %q", got, c.header)
			}
			if got := strings.Join(keys(cl), " "); got != c.claims {
				t.Errorf("claims %q, want %q", got, c.claims)
			}
			if hdr["alg"] != "RS256" || hdr["kid"] != e.issuer.KeyID() {
				t.Errorf("header %v", hdr)
			}
			if x5t, ok := hdr["x5t"]; ok && x5t != hdr["kid"] {
				t.Errorf("x5t %v differs from kid %v", x5t, hdr["kid"])
			}
			if cl["iss"] != c.iss {
				t.Errorf("iss %v, want %s", cl["iss"], c.iss)
			}
			exp, _ := cl["exp"].(json.Number).Int64()
			life := time.Unix(exp, 0).Sub(testNow)
			if life < c.minLife || life > c.maxLife {
				t.Errorf("lifetime %s, want %s to %s", life, c.minLife, c.maxLife)
			}
		})
	}
}

// TestDevIssuerHTTP checks discovery with go-oidc, the key set, and
// minting over POST /dev/token.
func TestDevIssuerHTTP(t *testing.T) {
	e := newEnv(t)
	ctx := oidc.ClientContext(context.Background(), e.srv.Client())
	for _, c := range []struct{ path, issuer string }{
		{"/" + DevTenant + "/v2.0", "https://login.microsoftonline.com/" + DevTenant + "/v2.0"},
		{"/" + DevTenant, "https://sts.windows.net/" + DevTenant + "/"},
	} {
		p, err := oidc.NewProvider(oidc.InsecureIssuerURLContext(ctx, c.issuer), e.srv.URL+c.path)
		if err != nil {
			t.Fatalf("discovery at %s: %v", c.path, err)
		}
		var doc struct {
			JWKS string `json:"jwks_uri"`
		}
		if err := p.Claims(&doc); err != nil || !strings.HasPrefix(doc.JWKS, e.srv.URL+"/") {
			t.Errorf("discovery at %s: jwks_uri %q (%v)", c.path, doc.JWKS, err)
		}
	}
	other := e.srv.URL + "/0badbeef/v2.0/.well-known/openid-configuration"
	if resp, err := http.Get(other); err != nil ||
		resp.StatusCode != http.StatusBadRequest {
		t.Errorf("discovery of another tenant: %v %v", resp.Status, err)
	}

	// The key set is Entra's shape, and go-jose accepts its x5c and x5t.
	resp, err := http.Get(e.srv.URL + "/common/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct{ Keys []map[string]any }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("keys: %v %v", set, err)
	}
	if got := strings.Join(keys(set.Keys[0]), " "); got != "e issuer kid kty n use x5c x5t" {
		t.Errorf("key fields %q", got)
	}
	raw, _ := json.Marshal(set)
	if ks, err := parseJWKS(raw); err != nil || len(ks) != 1 || ks[0].KeyID != e.issuer.KeyID() {
		t.Errorf("parseJWKS: %v %v", ks, err)
	}

	// POST /dev/token mints what the spec asks; the verifier accepts it.
	body, _ := json.Marshal(TokenSpec{Version: "v1", Roles: []string{"R"},
		ExpiresIn: 10 * time.Minute})
	resp, err = http.Post(e.srv.URL+"/dev/token", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.ExpiresIn != 600 {
		t.Fatalf("POST /dev/token: %+v %v", out, err)
	}
	id, err := e.verifier(t).Verify(context.Background(), out.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if id.Version != "1.0" || !slices.Equal(id.Roles, []string{"R"}) ||
		!id.ExpiresAt.Equal(testNow.Add(10*time.Minute)) {
		t.Errorf("identity %+v", *id)
	}

	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/dev/token", strings.NewReader(`{"versoin":"v1"}`))
	e.issuer.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "versoin") {
		t.Errorf("unknown field: %d %s", rec.Code, rec.Body)
	}
}

func TestTokenSpecJSON(t *testing.T) {
	in := TokenSpec{Version: "v1", Roles: []string{"a"}, ExpiresIn: 90 * time.Minute,
		Claims: map[string]any{"x": "y"}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"expires_in":"1h30m0s"`) {
		t.Errorf("JSON %s", b)
	}
	var out TokenSpec
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.ExpiresIn != in.ExpiresIn || out.Version != "v1" || out.Claims["x"] != "y" {
		t.Errorf("round trip %+v", out)
	}
	if err := json.Unmarshal([]byte(`{"expires_in":"soon"}`), &out); err == nil {
		t.Error("bad expires_in accepted")
	}
}

func TestDevKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "issuer.pem")
	a, err := NewDevIssuer("", WithDevKeyFile(path), WithDevKey(sharedKey()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewDevIssuer("", WithDevKeyFile(path))
	if err != nil {
		t.Fatal(err)
	}
	if a.KeyID() != b.KeyID() || !a.PublicKey().Equal(b.PublicKey()) {
		t.Errorf("key changed across restarts: kid %s then %s", a.KeyID(), b.KeyID())
	}
	if _, err := NewDevIssuer("a/b"); err == nil {
		t.Error("tenant with a slash accepted")
	}
}

// TestUserTokenDefaults checks that a user token is a person's, signed in
// through the Azure CLI, with an object id of its own, so that a person
// minted to approve an agent's request is not taken for the agent; and
// that agent tokens keep their defaults.
func TestUserTokenDefaults(t *testing.T) {
	e := newEnv(t)
	guid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	claims := func(spec TokenSpec) (oid, app string) {
		_, cl := decodeToken(t, e.mint(t, spec))
		app, _ = cl["azp"].(string)
		if spec.Version == "v1" {
			app, _ = cl["appid"].(string)
		}
		oid, _ = cl["oid"].(string)
		return oid, app
	}

	cases := []struct {
		name     string
		spec     TokenSpec
		oid, app string
	}{
		{"agent v2", TokenSpec{}, DevObjectID, DevClientID},
		{"agent v1", TokenSpec{Version: "v1"}, DevObjectID, DevClientID},
		{"user by upn", TokenSpec{UPN: "dba@example.test"},
			DevUserObjectID("dba@example.test"), AzureCLIClientID},
		{"upn compared lower-case", TokenSpec{UPN: "DBA@Example.test", Name: "Dee"},
			DevUserObjectID("dba@example.test"), AzureCLIClientID},
		{"user by name, v1", TokenSpec{Version: "v1", Name: "Dee Bee"},
			DevUserObjectID("Dee Bee"), AzureCLIClientID},
		{"user with explicit ids", TokenSpec{UPN: "dba@example.test", OID: "o-1", AppID: "a-1"},
			"o-1", "a-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if oid, app := claims(c.spec); oid != c.oid || app != c.app {
				t.Errorf("oid %q app %q, want %q %q", oid, app, c.oid, c.app)
			}
		})
	}

	a, b := DevUserObjectID("a@example.test"), DevUserObjectID("b@example.test")
	if !guid.MatchString(a) || a == b || a == DevObjectID {
		t.Errorf("user object ids %q and %q: want distinct GUIDs", a, b)
	}
}
