package identity

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/vigilaudit/vigil/config"
)

// maxClockSkew is the largest clock skew NewVerifier accepts, the same
// bound the configuration loader applies.
const maxClockSkew = 5 * time.Minute

// fetchTimeout bounds one request for discovery documents or keys.
const fetchTimeout = 10 * time.Second

// Entra token versions as written in the ver claim, and as in
// identity.versions.
const (
	entraV1 = "1.0"
	entraV2 = "2.0"
)

// Option changes how NewVerifier builds a verifier.
type Option func(*options)

type options struct {
	client   *http.Client
	cooldown time.Duration
	now      func() time.Time
	log      *slog.Logger
	groups   GroupResolver
}

// WithHTTPClient sets the client used for discovery and key fetches. The
// default is a client with a 10 second timeout.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithKeyCooldown sets the least time between two key fetches caused by
// an unknown kid (default DefaultKeyCooldown). Tests use a short one.
func WithKeyCooldown(d time.Duration) Option { return func(o *options) { o.cooldown = d } }

// WithClock sets the clock that exp and nbf are checked against.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithLogger sets the logger for key fetches and group resolution.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithGroupResolver sets how group membership is resolved when the
// configuration says `groups: graph`. It is required then.
func WithGroupResolver(r GroupResolver) Option { return func(o *options) { o.groups = r } }

// GroupResolver finds the groups an identity is a transitive member of,
// for app-only tokens (which carry no groups claim) and for tokens whose
// groups were replaced by an overage marker. Implementations are safe for
// concurrent use.
type GroupResolver interface {
	Groups(ctx context.Context, id *Identity) ([]string, error)
}

// EntraVerifier checks Microsoft Entra v1 and v2 access tokens, or the
// tokens of one plain OIDC issuer, with go-oidc. It is safe for
// concurrent use; build one per configuration and share it.
type EntraVerifier struct {
	cfg     config.Identity
	opts    options
	skew    time.Duration
	keysV1  *keySet // Entra: {authority}/common/discovery/keys
	keysV2  *keySet // Entra: {authority}/common/discovery/v2.0/keys
	oidcKey *keySet // provider oidc: the issuer's jwks_uri
}

var _ Verifier = (*EntraVerifier)(nil)

// NewVerifier returns a verifier for cfg. For provider "entra" it does no
// network I/O: keys are fetched from cfg.Authority on first use. For
// provider "oidc" it fetches cfg.Issuer's discovery document now and
// fails if the issuer cannot be reached or names another issuer.
func NewVerifier(ctx context.Context, cfg config.Identity,
	opts ...Option) (*EntraVerifier, error) {
	o := options{
		client:   &http.Client{Timeout: fetchTimeout},
		cooldown: DefaultKeyCooldown,
		now:      time.Now,
		log:      slog.Default(),
	}
	for _, opt := range opts {
		opt(&o)
	}
	skew := time.Duration(cfg.ClockSkew)
	if skew < 0 || skew > maxClockSkew {
		return nil, fmt.Errorf("identity: clock skew %s: want between 0s and %s", skew, maxClockSkew)
	}
	if len(cfg.Audiences) == 0 {
		return nil, fmt.Errorf("identity: no accepted audience is configured")
	}
	if cfg.Groups == "graph" && o.groups == nil {
		return nil, fmt.Errorf("identity: groups: graph needs a group resolver")
	}
	v := &EntraVerifier{cfg: cfg, opts: o, skew: skew}

	switch cfg.Provider {
	case "", "entra":
		if len(cfg.Tenants) == 0 {
			return nil, fmt.Errorf("identity: provider entra needs at least one allowed tenant")
		}
		authority := strings.TrimRight(cfg.Authority, "/")
		if authority == "" {
			authority = "https://login.microsoftonline.com"
		}
		v.keysV1 = newKeySet(authority+"/common/discovery/keys", &o)
		v.keysV2 = newKeySet(authority+"/common/discovery/v2.0/keys", &o)
	case "oidc":
		jwksURL, err := discoverJWKS(ctx, cfg.Issuer, o.client)
		if err != nil {
			return nil, err
		}
		v.oidcKey = newKeySet(jwksURL, &o)
	default:
		return nil, fmt.Errorf("identity: provider %q: want entra or oidc", cfg.Provider)
	}
	return v, nil
}

// discoverJWKS reads the issuer's discovery document with go-oidc, which
// checks that the document names the same issuer.
func discoverJWKS(ctx context.Context, issuer string, client *http.Client) (string, error) {
	ctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, client), fetchTimeout)
	defer cancel()
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return "", fmt.Errorf("identity: discovery of %s: %w", issuer, err)
	}
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.Claims(&doc); err != nil || doc.JWKSURI == "" {
		return "", fmt.Errorf("identity: discovery of %s: no jwks_uri", issuer)
	}
	return doc.JWKSURI, nil
}

// Verify checks rawToken and returns the identity it carries. A refused
// token yields an *Error whose Reason and Message say which check failed.
func (v *EntraVerifier) Verify(ctx context.Context, rawToken string) (*Identity, error) {
	// Read the header and claims unverified: they only choose the issuer
	// and the keys; everything is checked again after the signature.
	h, unverified, err := parseUnverified(rawToken)
	if err != nil {
		return nil, err
	}
	if h.Alg != "RS256" {
		return nil, refuse(ReasonUnsupportedAlgorithm,
			"token algorithm %q is not accepted (want RS256)", clip(h.Alg))
	}
	issuer, keys, rerr := v.issuerFor(&unverified)
	if rerr != nil {
		return nil, rerr
	}
	if unverified.Issuer != issuer {
		return nil, refuse(ReasonWrongIssuer,
			"token issuer %q is not accepted (want %q)", clip(unverified.Issuer), issuer)
	}

	// Signature and issuer, by go-oidc. Audience and times are checked
	// below, against a list and with a bounded skew, which go-oidc does
	// not offer.
	ver := oidc.NewVerifier(issuer, keys, &oidc.Config{
		SkipClientIDCheck:    true,
		SkipExpiryCheck:      true,
		SupportedSigningAlgs: []string{oidc.RS256},
		Now:                  v.opts.now,
	})
	rep := &sigReport{}
	tok, err := ver.Verify(context.WithValue(ctx, sigReportKey{}, rep), rawToken)
	if err != nil {
		if rep.err != nil {
			return nil, rep.err
		}
		return nil, refuseErr(ReasonMalformed, err, "token was refused")
	}
	var c claims
	if err := tok.Claims(&c); err != nil {
		return nil, refuseErr(ReasonMalformed, err, "token claims are not valid")
	}
	if c.TID != unverified.TID || c.Issuer != issuer {
		return nil, refuse(ReasonWrongIssuer, "token issuer and tenant do not agree")
	}

	// Audience, then times.
	aud, ok := v.audience(c.Audience)
	if !ok {
		return nil, refuse(ReasonWrongAudience, "token audience %s is not accepted",
			clip(strings.Join(c.Audience, ", ")))
	}
	if err := v.checkTimes(&c); err != nil {
		return nil, err
	}

	id := newIdentity(&c, aud)
	if err := v.resolveGroups(ctx, id, &c); err != nil {
		return nil, err
	}
	return id, nil
}

// issuerFor returns the issuer a token must come from and the keys that
// must have signed it. For Entra both depend on the token's version and
// tenant, which must be accepted by the configuration.
func (v *EntraVerifier) issuerFor(c *claims) (string, *keySet, *Error) {
	if v.oidcKey != nil {
		if len(v.cfg.Tenants) > 0 && !v.tenantAllowed(c.TID) {
			return "", nil, refuse(ReasonTenantNotAllowed,
				"token tenant %q is not allowed", clip(c.TID))
		}
		return v.cfg.Issuer, v.oidcKey, nil
	}

	var name string
	switch c.Ver {
	case entraV1:
		name = "v1"
	case entraV2:
		name = "v2"
	case "":
		return "", nil, refuse(ReasonMalformed, "token has no ver claim")
	default:
		return "", nil, refuse(ReasonVersionNotAccepted,
			"token version %q is not accepted", clip(c.Ver))
	}
	if len(v.cfg.Versions) > 0 && !slices.Contains(v.cfg.Versions, name) {
		return "", nil, refuse(ReasonVersionNotAccepted,
			"%s tokens are not accepted (accepted: %s)", name, strings.Join(v.cfg.Versions, ", "))
	}
	if c.TID == "" {
		return "", nil, refuse(ReasonMalformed, "token has no tid claim")
	}
	if !v.tenantAllowed(c.TID) {
		return "", nil, refuse(ReasonTenantNotAllowed,
			"token tenant %s is not allowed", clip(c.TID))
	}
	if name == "v1" {
		return "https://sts.windows.net/" + c.TID + "/", v.keysV1, nil
	}
	return "https://login.microsoftonline.com/" + c.TID + "/v2.0", v.keysV2, nil
}

func (v *EntraVerifier) tenantAllowed(tid string) bool {
	return tid != "" && slices.ContainsFunc(v.cfg.Tenants, func(t string) bool {
		return strings.EqualFold(t, tid)
	})
}

// audience returns the first aud value that is exactly one of the
// configured audiences. No normalisation: "api://vigil/" is not
// "api://vigil".
func (v *EntraVerifier) audience(aud []string) (string, bool) {
	for _, a := range aud {
		if slices.Contains(v.cfg.Audiences, a) {
			return a, true
		}
	}
	return "", false
}

// checkTimes checks exp and nbf against the clock, each allowed to be off
// by at most the configured skew.
func (v *EntraVerifier) checkTimes(c *claims) *Error {
	now := v.opts.now()
	if c.Expiry == nil {
		return refuse(ReasonMalformed, "token has no exp claim")
	}
	exp := time.Time(*c.Expiry)
	if now.After(exp.Add(v.skew)) {
		return refuse(ReasonExpired, "token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if c.NotBef != nil {
		nbf := time.Time(*c.NotBef)
		if now.Add(v.skew).Before(nbf) {
			return refuse(ReasonNotYetValid, "token is not valid before %s",
				nbf.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// resolveGroups fills id.Groups from Microsoft Graph when the
// configuration says so: for app-only tokens, which carry no groups, and
// for overage tokens. A failure refuses the token rather than letting it
// through without groups.
func (v *EntraVerifier) resolveGroups(ctx context.Context, id *Identity, c *claims) *Error {
	if v.cfg.Groups != "graph" || (len(c.Groups) > 0 && !c.overage()) {
		return nil
	}
	groups, err := v.opts.groups.Groups(ctx, id)
	if err != nil {
		v.opts.log.Warn("identity: group membership lookup failed",
			"oid", id.OID, "tid", id.TID, "err", err)
		return refuseErr(ReasonGroupsUnavailable, err,
			"group membership of %s could not be resolved", id.Principal())
	}
	id.Groups = groups
	id.GroupsOverage = false
	return nil
}

func newIdentity(c *claims, aud string) *Identity {
	id := &Identity{
		OID:           c.OID,
		TID:           c.TID,
		Sub:           c.Subject,
		AppID:         c.AZP,
		IDType:        c.IDType,
		Name:          c.Name,
		UPN:           c.UPN,
		MIResourceID:  c.MIRID,
		Roles:         c.Roles,
		Groups:        c.Groups,
		GroupsOverage: c.overage(),
		UTI:           c.UTI,
		Version:       c.Ver,
		Issuer:        c.Issuer,
		Audience:      aud,
		ExpiresAt:     time.Time(*c.Expiry),
	}
	if id.AppID == "" {
		id.AppID = c.AppID
	}
	if id.UPN == "" {
		id.UPN = c.Preferred
	}
	return id
}

// clip shortens untrusted text before it is quoted in a message.
func clip(s string) string {
	const max = 80
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
