package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"strings"
	"time"
)

// Fixed identifiers of the dev issuer. They are obviously not real Entra
// ids, so that a dev token can never be mistaken for a real one.
const (
	// DevTenant is the dev issuer's default tenant id.
	DevTenant = "deadbeef-0000-4000-8000-00000000d0e5"
	// DevAPIAppID is vigil's API app (client) id in dev tokens: the
	// default audience of v2 tokens, which Entra always sets to the GUID.
	DevAPIAppID = "deadbeef-0000-4000-8000-0000000000a1"
	// DevAudience is the App ID URI form of vigil's API app: the default
	// audience of v1 tokens.
	DevAudience = "api://vigil"
	// DevClientID is the calling app's client id (azp, appid) by default.
	DevClientID = "deadbeef-0000-4000-8000-0000000000c1"
	// DevObjectID is the caller's object id (oid) by default.
	DevObjectID = "deadbeef-0000-4000-8000-0000000000f1"
	// AzureCLIClientID is the Azure CLI's client id: the azp (appid) of
	// the tokens people get with `az account get-access-token`, and the
	// dev issuer's default for user tokens, so that a person is never
	// taken for the agent's own application.
	AzureCLIClientID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
)

// DevUserObjectID is the default object id of a dev user token: a
// GUID-shaped hash (RFC 9562 version 8) of who, the UPN (compared
// lower-case) or else the display name. The same person always gets the
// same id, and different people different ids.
func DevUserObjectID(who string) string {
	sum := sha256.Sum256([]byte("vigil-dev-user\x00" + who))
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// devMIResourceID is the default xms_mirid of v1 (managed identity)
// tokens.
const devMIResourceID = "/subscriptions/deadbeef-0000-4000-8000-000000000000" +
	"/resourcegroups/vigil-dev/providers/Microsoft.ManagedIdentity" +
	"/userAssignedIdentities/dev-agent"

// DevIssuer is a local token issuer shaped like Microsoft Entra, for
// trials and tests: it serves Entra's discovery documents and key sets
// and mints v1 and v2 access tokens whose iss is the real Entra issuer of
// its tenant, so that pointing identity.authority at it is the only
// change a configuration needs.
//
// It is for development only: anyone who can reach its handler can mint
// tokens it signs. It is safe for concurrent use.
type DevIssuer struct {
	tenant string
	key    *rsa.PrivateKey
	cert   []byte // DER of a self-signed certificate for key
	kid    string // base64url SHA-1 of cert, as Entra's kid and x5t
	now    func() time.Time
	log    *slog.Logger
}

// DevOption changes how NewDevIssuer builds a dev issuer.
type DevOption func(*devOptions)

type devOptions struct {
	keyFile string
	key     *rsa.PrivateKey
	now     func() time.Time
	log     *slog.Logger
}

// WithDevKeyFile keeps the signing key and its certificate in a PEM file:
// loaded when the file exists, created (mode 0600) otherwise, so that the
// key and kid survive restarts and tokens minted before stay valid.
func WithDevKeyFile(path string) DevOption { return func(o *devOptions) { o.keyFile = path } }

// WithDevKey signs with key instead of a freshly generated one.
func WithDevKey(key *rsa.PrivateKey) DevOption { return func(o *devOptions) { o.key = key } }

// WithDevClock sets the clock for iat, nbf and exp.
func WithDevClock(now func() time.Time) DevOption { return func(o *devOptions) { o.now = now } }

// WithDevLogger sets the logger for minted tokens (never the tokens).
func WithDevLogger(l *slog.Logger) DevOption { return func(o *devOptions) { o.log = l } }

// NewDevIssuer returns a dev issuer for tenant (DevTenant when empty)
// with an RSA-2048 signing key.
func NewDevIssuer(tenant string, opts ...DevOption) (*DevIssuer, error) {
	o := devOptions{now: time.Now, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if tenant == "" {
		tenant = DevTenant
	}
	if strings.ContainsAny(tenant, "/?#") {
		return nil, fmt.Errorf("identity: dev issuer: tenant %q is not a tenant id", tenant)
	}
	d := &DevIssuer{tenant: tenant, now: o.now, log: o.log}

	var err error
	switch {
	case o.keyFile != "":
		d.key, d.cert, err = loadOrCreateKey(o.keyFile, o.key)
	case o.key != nil:
		d.key = o.key
		d.cert, err = selfSign(o.key)
	default:
		d.key, d.cert, err = newKey()
	}
	if err != nil {
		return nil, err
	}
	sum := sha1.Sum(d.cert)
	d.kid = base64.RawURLEncoding.EncodeToString(sum[:])
	return d, nil
}

// Tenant returns the issuer's tenant id.
func (d *DevIssuer) Tenant() string { return d.tenant }

// KeyID returns the kid (and x5t) of the signing key.
func (d *DevIssuer) KeyID() string { return d.kid }

// PublicKey returns the public half of the signing key.
func (d *DevIssuer) PublicKey() *rsa.PublicKey { return &d.key.PublicKey }

func newKey() (*rsa.PrivateKey, []byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: dev issuer: generating key: %w", err)
	}
	cert, err := selfSign(key)
	return key, cert, err
}

// selfSign makes the certificate served in x5c. go-jose checks that x5t
// and x5c match the key, so they must be real.
func selfSign(key *rsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, fmt.Errorf("identity: dev issuer: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "vigil dev issuer (not for production)"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("identity: dev issuer: certificate: %w", err)
	}
	return der, nil
}

// loadOrCreateKey reads a PEM file holding a PKCS#8 private key and its
// certificate, or creates it.
func loadOrCreateKey(path string, given *rsa.PrivateKey) (*rsa.PrivateKey, []byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, cert := given, []byte(nil)
		if key == nil {
			key, cert, err = newKey()
		} else {
			cert, err = selfSign(key)
		}
		if err != nil {
			return nil, nil, err
		}
		return key, cert, saveKey(path, key, cert)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("identity: dev issuer: %w", err)
	}

	var key *rsa.PrivateKey
	var cert []byte
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("identity: dev issuer: %s: %w", path, err)
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, nil, fmt.Errorf("identity: dev issuer: %s: want an RSA key", path)
			}
			key = rk
		case "CERTIFICATE":
			cert = blk.Bytes
		}
	}
	if key == nil {
		return nil, nil, fmt.Errorf("identity: dev issuer: %s holds no PRIVATE KEY block", path)
	}
	if cert == nil || !certMatches(cert, key) {
		if cert, err = selfSign(key); err != nil {
			return nil, nil, err
		}
		if err := saveKey(path, key, cert); err != nil {
			return nil, nil, err
		}
	}
	return key, cert, nil
}

func certMatches(der []byte, key *rsa.PrivateKey) bool {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return false
	}
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	return ok && pub.Equal(&key.PublicKey)
}

func saveKey(path string, key *rsa.PrivateKey, cert []byte) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity: dev issuer: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert})...)
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("identity: dev issuer: saving key: %w", err)
	}
	return nil
}

// TokenSpec says what token Mint makes. Zero fields take Entra-like
// defaults; see each field.
type TokenSpec struct {
	// Version is "v1" (a managed identity's token) or "v2" (an app-only
	// token of a service principal); default "v2".
	Version string `json:"version,omitempty"`
	// Tenant is the tid (and the tenant in iss); default the issuer's.
	Tenant string `json:"tenant,omitempty"`
	// Audience is aud; default DevAPIAppID for v2, DevAudience for v1.
	Audience string `json:"audience,omitempty"`
	// AppID is azp (v2) or appid (v1); default DevClientID, or
	// AzureCLIClientID for a user token.
	AppID string `json:"app_id,omitempty"`
	// OID is the caller's object id; default DevObjectID, or for a user
	// token DevUserObjectID of the UPN (lower-case) or else the Name.
	OID string `json:"oid,omitempty"`
	// Roles are app roles (omitted when empty, as Entra does).
	Roles []string `json:"roles,omitempty"`
	// Groups are group object ids. Entra puts groups in user tokens only;
	// the dev issuer writes them whenever they are given.
	Groups []string `json:"groups,omitempty"`
	// Name and UPN make a user token (idtyp "user"; upn in v1,
	// preferred_username in v2).
	Name string `json:"name,omitempty"`
	UPN  string `json:"upn,omitempty"`
	// MIResourceID is xms_mirid of v1 tokens; default a dev resource id.
	MIResourceID string `json:"xms_mirid,omitempty"`
	// ExpiresIn is the lifetime from now; default 60 to 90 minutes for v2
	// (random, as Entra) and 24 hours for v1. In JSON, a Go duration
	// string: "expires_in": "90m".
	ExpiresIn time.Duration `json:"-"`
	// ExpiresAt, when set, is exp and wins over ExpiresIn.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// NotBefore is nbf; default now.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Claims are set last, over the claims above; a null value removes a
	// claim. Tests use it to forge odd tokens.
	Claims map[string]any `json:"claims,omitempty"`
	// Header fields are set over the JOSE header (typ, alg, kid, x5t); a
	// null value removes one. The token is still signed with RS256.
	Header map[string]any `json:"header,omitempty"`
	// SigningKey, when set, signs instead of the issuer's key while the
	// header keeps the issuer's kid. Not available over HTTP.
	SigningKey *rsa.PrivateKey `json:"-"`
}

// tokenSpecFields is TokenSpec without its JSON methods.
type tokenSpecFields TokenSpec

// MarshalJSON writes ExpiresIn as a duration string.
func (s TokenSpec) MarshalJSON() ([]byte, error) {
	w := struct {
		tokenSpecFields
		ExpiresIn string `json:"expires_in,omitempty"`
	}{tokenSpecFields: tokenSpecFields(s)}
	if s.ExpiresIn != 0 {
		w.ExpiresIn = s.ExpiresIn.String()
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads ExpiresIn as a duration string. Unknown fields are
// an error, so that a misspelt field does not silently mint another token.
func (s *TokenSpec) UnmarshalJSON(b []byte) error {
	w := struct {
		*tokenSpecFields
		ExpiresIn string `json:"expires_in,omitempty"`
	}{tokenSpecFields: (*tokenSpecFields)(s)}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	if w.ExpiresIn != "" {
		d, err := time.ParseDuration(w.ExpiresIn)
		if err != nil {
			return fmt.Errorf("expires_in: want a duration such as 90m: %w", err)
		}
		s.ExpiresIn = d
	}
	return nil
}

// Mint returns a signed access token as spec describes, with the claims
// and headers Entra puts in tokens of that version.
func (d *DevIssuer) Mint(spec TokenSpec) (string, error) {
	hdr, cl, err := d.shape(spec)
	if err != nil {
		return "", err
	}
	for k, v := range spec.Header {
		setOrDelete(hdr, k, v)
	}
	for k, v := range spec.Claims {
		setOrDelete(cl, k, v)
	}
	key := d.key
	if spec.SigningKey != nil {
		key = spec.SigningKey
	}
	return signRS256(key, hdr, cl)
}

// shape builds the header and claims of a token before overrides.
func (d *DevIssuer) shape(spec TokenSpec) (hdr, cl map[string]any, err error) {
	now := d.now().Truncate(time.Second)
	tid := or(spec.Tenant, d.tenant)
	nbf := now
	if !spec.NotBefore.IsZero() {
		nbf = spec.NotBefore
	}
	exp := spec.ExpiresAt
	if exp.IsZero() {
		exp = now.Add(spec.ExpiresIn)
	}

	// A user token is a person's, signed in through the Azure CLI: it
	// must not share the agent's object id or application.
	user := spec.Name != "" || spec.UPN != ""
	oid, appID := or(spec.OID, DevObjectID), or(spec.AppID, DevClientID)
	if user {
		oid = or(spec.OID, DevUserObjectID(or(strings.ToLower(spec.UPN), spec.Name)))
		appID = or(spec.AppID, AzureCLIClientID)
	}

	hdr = map[string]any{"typ": "JWT", "alg": "RS256", "kid": d.kid}
	cl = map[string]any{
		"tid": tid,
		"oid": oid,
		"iat": now.Unix(),
		"nbf": nbf.Unix(),
		"aio": opaque(48),
		"rh":  opaque(32),
		"uti": opaque(16),
	}
	cl["sub"] = pairwise(cl["oid"].(string), tid)
	if len(spec.Roles) > 0 {
		cl["roles"] = spec.Roles
	}
	if len(spec.Groups) > 0 {
		cl["groups"] = spec.Groups
	}
	cl["idtyp"] = "app"
	if user {
		cl["idtyp"] = "user"
	}
	if spec.Name != "" {
		cl["name"] = spec.Name
	}

	switch or(spec.Version, "v2") {
	case "v1":
		hdr["x5t"] = d.kid
		iss := "https://sts.windows.net/" + tid + "/"
		cl["ver"] = entraV1
		cl["iss"], cl["idp"] = iss, iss
		cl["aud"] = or(spec.Audience, DevAudience)
		cl["appid"] = appID
		cl["appidacr"] = "2"
		cl["xms_tcdt"] = now.Add(-365 * 24 * time.Hour).Unix()
		if !user {
			cl["xms_mirid"] = or(spec.MIResourceID, devMIResourceID)
		}
		if spec.UPN != "" {
			cl["upn"] = spec.UPN
		}
		if spec.ExpiresAt.IsZero() && spec.ExpiresIn == 0 {
			exp = now.Add(24 * time.Hour)
		}
	case "v2":
		cl["ver"] = entraV2
		cl["iss"] = "https://login.microsoftonline.com/" + tid + "/v2.0"
		cl["aud"] = or(spec.Audience, DevAPIAppID)
		cl["azp"] = appID
		cl["azpacr"] = "1"
		if spec.UPN != "" {
			cl["preferred_username"] = spec.UPN
		}
		if spec.ExpiresAt.IsZero() && spec.ExpiresIn == 0 {
			exp = now.Add(time.Duration(3600+mrand.IntN(1801)) * time.Second)
		}
	default:
		return nil, nil, fmt.Errorf("identity: dev issuer: version %q: want v1 or v2", spec.Version)
	}
	cl["exp"] = exp.Unix()
	return hdr, cl, nil
}

func setOrDelete(m map[string]any, k string, v any) {
	if v == nil {
		delete(m, k)
		return
	}
	m[k] = v
}

func signRS256(key *rsa.PrivateKey, hdr, cl map[string]any) (string, error) {
	h, err := json.Marshal(hdr)
	if err != nil {
		return "", fmt.Errorf("identity: dev issuer: header: %w", err)
	}
	c, err := json.Marshal(cl)
	if err != nil {
		return "", fmt.Errorf("identity: dev issuer: claims: %w", err)
	}
	signed := base64.RawURLEncoding.EncodeToString(h) + "." +
		base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("identity: dev issuer: signing: %w", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// opaque returns n random bytes in base64url, like Entra's aio, rh, uti.
func opaque(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// pairwise derives a stable, opaque sub from the object id and tenant.
func pairwise(oid, tid string) string {
	sum := sha256.Sum256([]byte("vigil-dev-sub\x00" + oid + "\x00" + tid))
	return base64.RawURLEncoding.EncodeToString(sum[:])[:43]
}
