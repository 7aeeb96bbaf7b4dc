package identity

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/config"
)

// testNow is the fixed time the tests run at.
var testNow = time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a dev issuer on loopback, a verifier pointed at it, and a count
// of key fetches.
type env struct {
	clock   *fakeClock
	issuer  *DevIssuer
	current atomic.Pointer[http.Handler] // what the server serves
	fail    atomic.Bool                  // answer key fetches with 500
	fetches atomic.Int64                 // key fetches seen
	srv     *httptest.Server
	cfg     config.Identity
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// sharedKey is one RSA key for most dev issuers, to keep tests fast.
var sharedKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{clock: &fakeClock{t: testNow}}
	iss, err := NewDevIssuer("", WithDevKey(sharedKey()), WithDevClock(e.clock.Now),
		WithDevLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	e.issuer = iss
	e.setIssuer(iss)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/keys") {
			e.fetches.Add(1)
			if e.fail.Load() {
				http.Error(w, "down", http.StatusInternalServerError)
				return
			}
		}
		(*e.current.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	e.cfg = config.Identity{
		Provider:  "entra",
		Tenants:   []string{DevTenant},
		Audiences: []string{DevAudience, DevAPIAppID},
		Versions:  []string{"v1", "v2"},
		Groups:    "token",
		Authority: e.srv.URL,
		ClockSkew: config.Duration(time.Minute),
	}
	return e
}

func (e *env) setIssuer(d *DevIssuer) {
	h := d.Handler()
	e.current.Store(&h)
}

func (e *env) verifier(t *testing.T, opts ...Option) *EntraVerifier {
	t.Helper()
	opts = append([]Option{WithClock(e.clock.Now), WithLogger(quietLog)}, opts...)
	v, err := NewVerifier(context.Background(), e.cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) mint(t *testing.T, spec TokenSpec) string {
	t.Helper()
	tok, err := e.issuer.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// forge builds a token with the given header and claims and signature.
func forge(hdr, cl map[string]any, sig func(signed string) []byte) string {
	h, _ := json.Marshal(hdr)
	c, _ := json.Marshal(cl)
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig(signed))
}

// validClaims are the claims of a v2 token the default env accepts.
func validClaims() map[string]any {
	return map[string]any{
		"iss": "https://login.microsoftonline.com/" + DevTenant + "/v2.0",
		"aud": DevAPIAppID, "tid": DevTenant, "ver": "2.0", "oid": DevObjectID,
		"azp": DevClientID, "iat": testNow.Unix(), "nbf": testNow.Unix(),
		"exp": testNow.Add(time.Hour).Unix(),
	}
}

func publicKeyPEM(k *rsa.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func hmacSig(secret []byte) func(string) []byte {
	return func(signed string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(signed))
		return m.Sum(nil)
	}
}

// verifyCase is one token and what the verifier must say about it.
type verifyCase struct {
	name   string
	cfg    func(*config.Identity) // changes to the default configuration
	token  func(t *testing.T, e *env) string
	reason Reason // "" when the token must verify
	msg    string // a substring of the error message
	check  func(t *testing.T, id *Identity)
}

func (c verifyCase) run(t *testing.T) {
	e := newEnv(t)
	if c.cfg != nil {
		c.cfg(&e.cfg)
	}
	v := e.verifier(t)
	id, err := v.Verify(context.Background(), c.token(t, e))
	if c.reason == "" {
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if c.check != nil {
			c.check(t, id)
		}
		return
	}
	var ie *Error
	if !errors.As(err, &ie) {
		t.Fatalf("Verify: got %v (identity %+v), want an *Error with reason %s", err, id, c.reason)
	}
	if ie.Reason != c.reason {
		t.Fatalf("reason %q (%v), want %q", ie.Reason, err, c.reason)
	}
	if !strings.Contains(ie.Message, c.msg) {
		t.Fatalf("message %q does not say %q", ie.Message, c.msg)
	}
}

func spec(s TokenSpec) func(*testing.T, *env) string {
	return func(t *testing.T, e *env) string { return e.mint(t, s) }
}

func TestVerify(t *testing.T) {
	const otherTenant = "0badbeef-0000-4000-8000-000000000000"
	onlyAud := func(a ...string) func(*config.Identity) {
		return func(c *config.Identity) { c.Audiences = a }
	}
	cases := []verifyCase{{
		name: "v2 app-only token",
		token: spec(TokenSpec{Roles: []string{"Db.Read"}, ExpiresIn: time.Hour,
			Groups: []string{"g1"}}),
		check: func(t *testing.T, id *Identity) {
			want := Identity{OID: DevObjectID, TID: DevTenant, AppID: DevClientID,
				IDType: "app", Roles: []string{"Db.Read"}, Groups: []string{"g1"},
				Version: "2.0", Issuer: "https://login.microsoftonline.com/" + DevTenant + "/v2.0",
				Audience: DevAPIAppID, ExpiresAt: testNow.Add(time.Hour)}
			want.Sub, want.UTI = id.Sub, id.UTI
			if id.Sub == "" || id.UTI == "" {
				t.Errorf("sub %q or uti %q empty", id.Sub, id.UTI)
			}
			if fmt.Sprint(*id) != fmt.Sprint(want) {
				t.Errorf("identity\n got %+v\nwant %+v", *id, want)
			}
		},
	}, {
		name:  "v1 managed identity token",
		token: spec(TokenSpec{Version: "v1", AppID: "mi-client"}),
		check: func(t *testing.T, id *Identity) {
			if id.AppID != "mi-client" || id.Version != "1.0" || id.Audience != DevAudience ||
				!strings.Contains(id.MIResourceID, "userAssignedIdentities/dev-agent") ||
				id.Issuer != "https://sts.windows.net/"+DevTenant+"/" || id.IDType != "app" {
				t.Errorf("identity %+v", *id)
			}
		},
	}, {
		name:  "user token keeps name and upn",
		token: spec(TokenSpec{Name: "Ada", UPN: "ada@example.test"}),
		check: func(t *testing.T, id *Identity) {
			if id.Name != "Ada" || id.UPN != "ada@example.test" || id.IDType != "user" {
				t.Errorf("identity %+v", *id)
			}
		},
	}, {
		name:   "v1 token when only v2 is accepted",
		cfg:    func(c *config.Identity) { c.Versions = []string{"v2"} },
		token:  spec(TokenSpec{Version: "v1"}),
		reason: ReasonVersionNotAccepted, msg: "v1 tokens are not accepted",
	}, {
		name:   "unknown version",
		token:  spec(TokenSpec{Claims: map[string]any{"ver": "3.0"}}),
		reason: ReasonVersionNotAccepted, msg: `"3.0"`,
	}, {
		name:   "another tenant signed by a valid key",
		token:  spec(TokenSpec{Tenant: otherTenant}),
		reason: ReasonTenantNotAllowed, msg: otherTenant,
	}, {
		name: "allowed tid with another tenant's issuer",
		token: spec(TokenSpec{Claims: map[string]any{
			"iss": "https://login.microsoftonline.com/" + otherTenant + "/v2.0"}}),
		reason: ReasonWrongIssuer, msg: otherTenant,
	}, {
		name: "v2 token with the v1 issuer",
		token: spec(TokenSpec{Claims: map[string]any{
			"iss": "https://sts.windows.net/" + DevTenant + "/"}}),
		reason: ReasonWrongIssuer, msg: "sts.windows.net",
	}, {
		name:   "no tid",
		token:  spec(TokenSpec{Claims: map[string]any{"tid": nil}}),
		reason: ReasonMalformed, msg: "tid",
	}, {
		name:  "audience URI, both forms configured",
		token: spec(TokenSpec{Audience: DevAudience}),
		check: func(t *testing.T, id *Identity) {
			if id.Audience != DevAudience {
				t.Errorf("audience %q", id.Audience)
			}
		},
	}, {
		name:  "audience GUID, both forms configured",
		token: spec(TokenSpec{Audience: DevAPIAppID}),
	}, {
		name:   "audience GUID, only the URI configured",
		cfg:    onlyAud(DevAudience),
		token:  spec(TokenSpec{Audience: DevAPIAppID}),
		reason: ReasonWrongAudience, msg: "audience " + DevAPIAppID + " is not accepted",
	}, {
		name:   "audience URI, only the GUID configured",
		cfg:    onlyAud(DevAPIAppID),
		token:  spec(TokenSpec{Audience: DevAudience}),
		reason: ReasonWrongAudience, msg: DevAudience,
	}, {
		name:   "audience with a trailing slash",
		token:  spec(TokenSpec{Audience: DevAudience + "/"}),
		reason: ReasonWrongAudience, msg: "audience api://vigil/ is not accepted",
	}, {
		name:   "configured audience with a trailing slash",
		cfg:    onlyAud(DevAudience + "/"),
		token:  spec(TokenSpec{Audience: DevAudience}),
		reason: ReasonWrongAudience,
	}, {
		name:   "another audience",
		token:  spec(TokenSpec{Audience: "api://other"}),
		reason: ReasonWrongAudience, msg: "token audience api://other is not accepted",
	}, {
		name:  "audience list with one accepted value",
		token: spec(TokenSpec{Claims: map[string]any{"aud": []string{"x", DevAudience}}}),
	}, {
		name:  "expired just inside the skew",
		token: spec(TokenSpec{ExpiresAt: testNow.Add(-time.Minute + time.Second)}),
	}, {
		name:  "expired exactly at the skew",
		token: spec(TokenSpec{ExpiresAt: testNow.Add(-time.Minute)}),
	}, {
		name:   "expired just outside the skew",
		token:  spec(TokenSpec{ExpiresAt: testNow.Add(-time.Minute - time.Second)}),
		reason: ReasonExpired, msg: "token expired at 2026-12-04T08:58:59Z",
	}, {
		name:   "expired with no skew configured",
		cfg:    func(c *config.Identity) { c.ClockSkew = 0 },
		token:  spec(TokenSpec{ExpiresAt: testNow.Add(-time.Second)}),
		reason: ReasonExpired, msg: "expired at",
	}, {
		name:  "nbf in the future within the skew",
		token: spec(TokenSpec{NotBefore: testNow.Add(59 * time.Second)}),
	}, {
		name:   "nbf in the future beyond the skew",
		token:  spec(TokenSpec{NotBefore: testNow.Add(2 * time.Minute)}),
		reason: ReasonNotYetValid, msg: "not valid before 2026-12-04T09:02:00Z",
	}, {
		name:   "no exp",
		token:  spec(TokenSpec{Claims: map[string]any{"exp": nil}}),
		reason: ReasonMalformed, msg: "exp",
	}, {
		name:   "exp not a number",
		token:  spec(TokenSpec{Claims: map[string]any{"exp": "tomorrow"}}),
		reason: ReasonMalformed,
	}, {
		name: "alg none",
		token: func(*testing.T, *env) string {
			return forge(map[string]any{"typ": "JWT", "alg": "none"}, validClaims(),
				func(string) []byte { return nil })
		},
		reason: ReasonUnsupportedAlgorithm, msg: `"none"`,
	}, {
		name: "HS256 with the public key as the secret",
		token: func(_ *testing.T, e *env) string {
			return forge(map[string]any{"typ": "JWT", "alg": "HS256", "kid": e.issuer.KeyID()},
				validClaims(), hmacSig(publicKeyPEM(e.issuer.PublicKey())))
		},
		reason: ReasonUnsupportedAlgorithm, msg: `"HS256"`,
	}, {
		name: "RS256 header over an HMAC signature with the public key",
		token: func(_ *testing.T, e *env) string {
			return forge(map[string]any{"typ": "JWT", "alg": "RS256", "kid": e.issuer.KeyID()},
				validClaims(), hmacSig(publicKeyPEM(e.issuer.PublicKey())))
		},
		reason: ReasonBadSignature, msg: "does not verify",
	}, {
		name: "another key with the issuer's kid",
		token: func(t *testing.T, e *env) string {
			other, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			return e.mint(t, TokenSpec{SigningKey: other})
		},
		reason: ReasonBadSignature, msg: "does not verify with key",
	}, {
		name: "claims changed after signing",
		token: func(t *testing.T, e *env) string {
			parts := strings.Split(e.mint(t, TokenSpec{}), ".")
			c := validClaims()
			c["roles"] = []string{"Db.Admin"}
			b, _ := json.Marshal(c)
			parts[1] = base64.RawURLEncoding.EncodeToString(b)
			return strings.Join(parts, ".")
		},
		reason: ReasonBadSignature,
	}, {
		name:   "unknown kid",
		token:  spec(TokenSpec{Header: map[string]any{"kid": "nope"}}),
		reason: ReasonBadSignature, msg: `key "nope" is not among the issuer's keys`,
	}, {
		name:   "not a JWT",
		token:  func(*testing.T, *env) string { return "hunter2" },
		reason: ReasonMalformed, msg: "not a JWT",
	}, {
		name:   "empty",
		token:  func(*testing.T, *env) string { return "" },
		reason: ReasonMalformed, msg: "no token",
	}, {
		name:  "service principal with no roles and no groups",
		token: spec(TokenSpec{}),
		check: func(t *testing.T, id *Identity) {
			if len(id.Roles) != 0 || len(id.Groups) != 0 {
				t.Fatalf("identity %+v has roles or groups", *id)
			}
			grants := config.Grants{{Kind: "group", Value: "billing-agents"},
				{Kind: "role", Value: "Db.Read"}, {Kind: "app", Value: "other-app"}}
			if g, ok := Match(grants, id); ok {
				t.Errorf("Match found %s for an identity with nothing to match", g)
			}
		},
	}, {
		name: "groups overage in token mode",
		token: spec(TokenSpec{Claims: map[string]any{
			"_claim_names":   map[string]any{"groups": "src1"},
			"_claim_sources": map[string]any{"src1": map[string]any{"endpoint": "https://graph.example/x"}},
		}}),
		check: func(t *testing.T, id *Identity) {
			if !id.GroupsOverage {
				t.Errorf("GroupsOverage not set")
			}
			if _, ok := Match(config.Grants{{Kind: "group", Value: "g"}}, id); ok {
				t.Errorf("group grant matched an overage token without groups")
			}
		},
	}}
	for _, c := range cases {
		t.Run(c.name, c.run)
	}
}

func TestMatch(t *testing.T) {
	id := &Identity{OID: "o1", AppID: "a1", Roles: []string{"Db.Read"}, Groups: []string{"g1"}}
	cases := []struct {
		grants config.Grants
		want   string // the grant matched, "" for none
	}{
		{config.Grants{{Kind: "group", Value: "g1"}}, "group:g1"},
		{config.Grants{{Kind: "group", Value: "g2"}, {Kind: "role", Value: "Db.Read"}}, "role:Db.Read"},
		{config.Grants{{Kind: "role", Value: "db.read"}}, ""},
		{config.Grants{{Kind: "app", Value: "a1"}}, "app:a1"},
		{config.Grants{{Kind: "oid", Value: "o1"}}, "oid:o1"},
		{config.Grants{{Kind: "oid", Value: "a1"}, {Kind: "app", Value: "o1"}}, ""},
		{nil, ""},
	}
	for _, c := range cases {
		g, ok := Match(c.grants, id)
		got := ""
		if ok {
			got = g.String()
		}
		if got != c.want {
			t.Errorf("Match(%v) = %q, want %q", c.grants, got, c.want)
		}
	}
	if _, ok := Match(config.Grants{{Kind: "app", Value: ""}}, &Identity{}); ok {
		t.Errorf("an empty app grant matched an identity without app id")
	}
}

// TestUnknownKidFlood checks that tokens with made-up kids cause at most
// one key fetch per cool-down, however many arrive and however fast.
func TestUnknownKidFlood(t *testing.T) {
	e := newEnv(t)
	v := e.verifier(t, WithKeyCooldown(time.Minute))
	ctx := context.Background()
	if _, err := v.Verify(ctx, e.mint(t, TokenSpec{})); err != nil {
		t.Fatal(err)
	}
	if n := e.fetches.Load(); n != 1 {
		t.Fatalf("%d key fetches for the first token, want 1", n)
	}

	flood := func() {
		var wg sync.WaitGroup
		for i := range 200 {
			tok := e.mint(t, TokenSpec{Header: map[string]any{"kid": fmt.Sprint("bogus-", i)}})
			wg.Go(func() {
				_, err := v.Verify(ctx, tok)
				var ie *Error
				if !errors.As(err, &ie) || ie.Reason != ReasonBadSignature {
					t.Errorf("bogus kid: %v, want bad_signature", err)
				}
			})
		}
		wg.Wait()
	}
	flood()
	if n := e.fetches.Load(); n != 1 {
		t.Fatalf("%d key fetches after a flood within the cool-down, want 1", n)
	}
	e.clock.Add(time.Minute)
	flood()
	if n := e.fetches.Load(); n != 2 {
		t.Fatalf("%d key fetches after a flood past the cool-down, want 2", n)
	}
	// Known kids keep verifying from the cache.
	if _, err := v.Verify(ctx, e.mint(t, TokenSpec{})); err != nil {
		t.Fatal(err)
	}
	if n := e.fetches.Load(); n != 2 {
		t.Fatalf("%d key fetches after a known kid, want 2", n)
	}
}

// TestFirstLoginsTogether: many valid tokens verified at once on a fresh
// verifier all pass: those that wait while another caller fetches the
// keys use what it fetched (they used to be refused by the cool-down).
func TestFirstLoginsTogether(t *testing.T) {
	e := newEnv(t)
	v := e.verifier(t, WithKeyCooldown(time.Minute))
	tok := e.mint(t, TokenSpec{})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := v.Verify(context.Background(), tok); err != nil {
				t.Errorf("a valid token verified with others at start: %v", err)
			}
		})
	}
	wg.Wait()
	if n := e.fetches.Load(); n != 1 {
		t.Errorf("%d key fetches; want 1", n)
	}
}

// TestKeyRollover checks that a new signing key is picked up on its first
// unknown kid once the cool-down has passed, and not before.
func TestKeyRollover(t *testing.T) {
	e := newEnv(t)
	v := e.verifier(t, WithKeyCooldown(time.Minute))
	ctx := context.Background()
	if _, err := v.Verify(ctx, e.mint(t, TokenSpec{})); err != nil {
		t.Fatal(err)
	}
	next, err := NewDevIssuer("", WithDevClock(e.clock.Now), WithDevLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	e.setIssuer(next)
	tok, err := next.Mint(TokenSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, tok); err == nil {
		t.Fatal("new key accepted within the cool-down; want a refusal until the next fetch")
	}
	e.clock.Add(time.Minute)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("new key after the cool-down: %v", err)
	}
}

func TestKeysUnavailable(t *testing.T) {
	e := newEnv(t)
	e.fail.Store(true)
	v := e.verifier(t)
	tok := e.mint(t, TokenSpec{})
	_, err := v.Verify(context.Background(), tok)
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonKeysUnavailable {
		t.Fatalf("got %v, want keys_unavailable", err)
	}
	// A failed fetch is retried after a short wait, not a whole cool-down.
	e.fail.Store(false)
	if _, err := v.Verify(context.Background(), tok); err == nil {
		t.Fatal("verified right after a failed fetch; want the retry wait to apply")
	}
	e.clock.Add(keyFailureRetry)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("after the retry wait: %v", err)
	}
	if n := e.fetches.Load(); n != 2 {
		t.Fatalf("%d key fetches, want 2", n)
	}
}

// TestOIDCProvider checks provider oidc against an issuer whose discovery
// document names itself, with the dev issuer's keys.
func TestOIDCProvider(t *testing.T) {
	e := newEnv(t)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/openid-configuration" {
			writeJSON(w, 200, map[string]any{"issuer": srv.URL,
				"jwks_uri": e.srv.URL + "/common/discovery/v2.0/keys"})
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	e.cfg.Provider, e.cfg.Issuer, e.cfg.Tenants = "oidc", srv.URL, nil
	v := e.verifier(t)
	ctx := context.Background()

	id, err := v.Verify(ctx, e.mint(t, TokenSpec{Claims: map[string]any{"iss": srv.URL}}))
	if err != nil {
		t.Fatal(err)
	}
	if id.Issuer != srv.URL || id.OID != DevObjectID {
		t.Errorf("identity %+v", *id)
	}
	_, err = v.Verify(ctx, e.mint(t, TokenSpec{}))
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonWrongIssuer {
		t.Fatalf("Entra issuer under provider oidc: %v, want wrong_issuer", err)
	}
}

func TestNewVerifierRejectsBadConfig(t *testing.T) {
	e := newEnv(t)
	for name, change := range map[string]func(*config.Identity){
		"unbounded skew": func(c *config.Identity) {
			c.ClockSkew = config.Duration(time.Hour)
		},
		"no audience":              func(c *config.Identity) { c.Audiences = nil },
		"no tenant":                func(c *config.Identity) { c.Tenants = nil },
		"graph without a resolver": func(c *config.Identity) { c.Groups = "graph" },
	} {
		cfg := e.cfg
		change(&cfg)
		if _, err := NewVerifier(context.Background(), cfg); err == nil {
			t.Errorf("%s: NewVerifier accepted it", name)
		}
	}
}
