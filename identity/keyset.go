package identity

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key fetching bounds.
const (
	// DefaultKeyCooldown is the least time between two key fetches caused
	// by tokens with an unknown kid.
	DefaultKeyCooldown = 5 * time.Minute
	// keyMaxAge is how long fetched keys are used before they are fetched
	// again even though every kid is known, so that a key the issuer has
	// withdrawn stops verifying.
	keyMaxAge = 24 * time.Hour
	// keyFailureRetry bounds the wait after a failed fetch, so that an
	// issuer outage at start-up does not lock vigil out for a whole
	// cool-down.
	keyFailureRetry = 15 * time.Second
	// maxJWKSSize bounds the key document read from the issuer.
	maxJWKSSize = 1 << 20
)

var rs256Only = []jose.SignatureAlgorithm{jose.RS256}

// keySet is an oidc.KeySet over one JWKS URL. It caches the keys by kid
// and fetches them again when a token names a kid it does not know, but at
// most once per cool-down, so that a flood of tokens with made-up kids
// causes at most one fetch per cool-down. One fetch runs at a time.
// It is safe for concurrent use.
type keySet struct {
	url      string
	client   *http.Client
	cooldown time.Duration
	now      func() time.Time
	log      *slog.Logger

	sem chan struct{} // holds a token while a fetch runs

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	fetchedAt time.Time // last successful fetch
	triedAt   time.Time // last attempt
	lastErr   error     // error of the last attempt, nil after a success
}

func newKeySet(url string, o *options) *keySet {
	return &keySet{
		url:      url,
		client:   o.client,
		cooldown: o.cooldown,
		now:      o.now,
		log:      o.log,
		sem:      make(chan struct{}, 1),
	}
}

// sigReport carries the keySet's typed error past go-oidc, which formats
// KeySet errors with %v and so drops their type.
type sigReport struct{ err *Error }

type sigReportKey struct{}

// VerifySignature implements oidc.KeySet: it checks the RS256 signature
// of jwt against the key named by its kid and returns the payload.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, err := k.verify(ctx, jwt)
	if err != nil {
		if rep, ok := ctx.Value(sigReportKey{}).(*sigReport); ok {
			rep.err = err
		}
		return nil, err
	}
	return payload, nil
}

func (k *keySet) verify(ctx context.Context, jwt string) ([]byte, *Error) {
	jws, err := jose.ParseSigned(jwt, rs256Only)
	if err != nil {
		return nil, refuseErr(ReasonUnsupportedAlgorithm, err, "token is not signed with RS256")
	}
	if len(jws.Signatures) != 1 {
		return nil, refuse(ReasonMalformed, "token must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID

	keys, fresh := k.lookup(kid)
	if len(keys) == 0 || !fresh {
		ferr := k.refresh(ctx, kid)
		// Look again whatever refresh said: a concurrent caller may have
		// fetched the keys while this one waited its turn, and then the
		// cool-down refuses this one a fetch of its own.
		keys, _ = k.lookup(kid)
		if ferr != nil && len(keys) == 0 {
			return nil, ferr
		}
	}
	if len(keys) == 0 {
		return nil, refuse(ReasonBadSignature,
			"token signing key %q is not among the issuer's keys", kid)
	}
	for i := range keys {
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, nil
		}
	}
	return nil, refuse(ReasonBadSignature, "token signature does not verify with key %q", kid)
}

// lookup returns the cached keys that may have signed a token with this
// kid (all of them when kid is empty) and whether the cache is still
// within its maximum age.
func (k *keySet) lookup(kid string) (keys []jose.JSONWebKey, fresh bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, key := range k.keys {
		if kid == "" || key.KeyID == kid {
			keys = append(keys, key)
		}
	}
	fresh = !k.fetchedAt.IsZero() && k.now().Sub(k.fetchedAt) < keyMaxAge
	return keys, fresh
}

// refresh fetches the keys again if the cool-down allows it. It returns
// nil when the keys were fetched (by this call or by a concurrent one
// while it waited), and otherwise an error that says why kid cannot be
// verified.
func (k *keySet) refresh(ctx context.Context, kid string) *Error {
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return refuseErr(ReasonKeysUnavailable, ctx.Err(), "gave up waiting for the issuer's keys")
	}
	defer func() { <-k.sem }()

	// Another caller may have fetched while this one waited; and the
	// cool-down decides whether a fetch is allowed at all.
	k.mu.Lock()
	now := k.now()
	wait := k.cooldown
	if k.lastErr != nil {
		wait = min(wait, keyFailureRetry)
	}
	tried := !k.triedAt.IsZero()
	if tried && now.Sub(k.triedAt) < wait {
		lastErr := k.lastErr
		k.mu.Unlock()
		if lastErr != nil {
			return refuseErr(ReasonKeysUnavailable, lastErr,
				"the issuer's keys could not be fetched")
		}
		return refuse(ReasonBadSignature,
			"token signing key %q is not among the issuer's keys", kid)
	}
	k.triedAt = now
	k.mu.Unlock()

	keys, err := k.fetch(ctx)

	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastErr = err
	if err != nil {
		k.log.Warn("identity: fetching signing keys failed", "url", k.url, "err", err)
		return refuseErr(ReasonKeysUnavailable, err, "the issuer's keys could not be fetched")
	}
	k.keys = keys
	k.fetchedAt = now
	k.log.Debug("identity: fetched signing keys", "url", k.url, "keys", len(keys))
	return nil
}

// fetch downloads the JWKS and keeps its RSA signing keys. The request
// is detached from the caller's cancellation (the result serves every
// waiting caller) but bounded by the HTTP client's timeout.
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("identity: keys request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("identity: keys: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, fmt.Errorf("identity: keys: reading %s: %w", k.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("identity: keys: %s answered %s", k.url, resp.Status)
	}
	if len(body) > maxJWKSSize {
		return nil, fmt.Errorf("identity: keys: %s sent more than %d bytes", k.url, maxJWKSSize)
	}
	return parseJWKS(body)
}

// parseJWKS keeps the RSA keys meant for signatures. go-jose checks that
// x5t and x5c, when present, match the key. Keys it cannot read are
// skipped rather than failing the set, as RFC 7517 section 5 asks.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("identity: keys: not a JWKS: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil {
			continue
		}
		if _, ok := key.Key.(*rsa.PublicKey); !ok || (key.Use != "" && key.Use != "sig") {
			continue
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("identity: keys: the JWKS holds no RSA signing key")
	}
	return keys, nil
}
