package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/vigilaudit/vigil/config"
)

// Graph resolution bounds.
const (
	defaultGraphTTL      = 10 * time.Minute
	defaultGraphMaxStale = time.Hour
	graphMaxPages        = 50
	graphMaxEntries      = 10000
	graphMaxBody         = 4 << 20
)

// GraphConfig is how vigil reaches Microsoft Graph with its own client
// credentials to resolve group membership.
type GraphConfig struct {
	// Tenant is vigil's tenant; identities of other tenants cannot be
	// resolved and are refused.
	Tenant string
	// ClientID and ClientSecret are vigil's app registration; it needs the
	// GroupMember.Read.All application permission.
	ClientID     string
	ClientSecret config.Secret
	// Authority issues Graph tokens; default https://login.microsoftonline.com.
	Authority string
	// URL is Graph's base URL; default https://graph.microsoft.com.
	URL string
	// TTL is how long a membership is used before it is looked up again
	// (default 10m). A group removal takes effect within TTL.
	TTL time.Duration
	// MaxStale is how long past TTL a membership is still used while Graph
	// cannot be reached (default 1h); past it the identity is refused.
	MaxStale time.Duration
	// HTTPClient defaults to a client with a 10 second timeout.
	HTTPClient *http.Client
	// Now defaults to time.Now.
	Now func() time.Time
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// GraphResolver resolves the transitive group membership of service
// principals and users through Microsoft Graph. Memberships are cached
// per object id and looked up at most once per TTL; concurrent lookups of
// one identity share one request. It is safe for concurrent use.
type GraphResolver struct {
	cfg GraphConfig

	mu       sync.Mutex
	cache    map[string]*graphEntry // by tid/oid
	token    string
	tokenExp time.Time
	tokenMu  sync.Mutex // one token request at a time
}

type graphEntry struct {
	groups    []string
	fetchedAt time.Time
	triedAt   time.Time
	inflight  chan struct{} // closed when a running lookup ends
	err       error         // of the last lookup, nil after a success
}

var _ GroupResolver = (*GraphResolver)(nil)

// NewGraphResolver returns a resolver for cfg. It does no network I/O.
func NewGraphResolver(cfg GraphConfig) (*GraphResolver, error) {
	if cfg.Tenant == "" || cfg.ClientID == "" || cfg.ClientSecret.Reveal() == "" {
		return nil, fmt.Errorf("identity: graph: tenant, client id and client secret are required")
	}
	cfg.Authority = strings.TrimRight(or(cfg.Authority, "https://login.microsoftonline.com"), "/")
	cfg.URL = strings.TrimRight(or(cfg.URL, "https://graph.microsoft.com"), "/")
	if cfg.TTL <= 0 {
		cfg.TTL = defaultGraphTTL
	}
	if cfg.MaxStale <= 0 {
		cfg.MaxStale = defaultGraphMaxStale
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: fetchTimeout}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &GraphResolver{cfg: cfg, cache: map[string]*graphEntry{}}, nil
}

// Groups returns the ids of the groups id is a transitive member of.
// Group ids, not display names, are returned: display names are neither
// unique nor protected.
func (g *GraphResolver) Groups(ctx context.Context, id *Identity) ([]string, error) {
	if id.OID == "" {
		return nil, fmt.Errorf("identity: graph: the token has no oid")
	}
	if !strings.EqualFold(id.TID, g.cfg.Tenant) {
		return nil, fmt.Errorf("identity: graph: tenant %s is not vigil's tenant %s",
			id.TID, g.cfg.Tenant)
	}
	key := strings.ToLower(id.TID + "/" + id.OID)
	for {
		g.mu.Lock()
		e := g.cache[key]
		now := g.cfg.Now()
		if e != nil && e.inflight == nil && !e.fetchedAt.IsZero() &&
			now.Sub(e.fetchedAt) < g.cfg.TTL {
			groups := e.groups
			g.mu.Unlock()
			return groups, nil
		}
		if e != nil && e.inflight != nil {
			wait := e.inflight
			g.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("identity: graph: %w", ctx.Err())
			}
		}
		if e != nil && e.err != nil && now.Sub(e.triedAt) < keyFailureRetry {
			// Graph failed moments ago: do not ask again for every token.
			groups, err := g.staleOrErr(e, now)
			g.mu.Unlock()
			return groups, err
		}
		if e == nil {
			g.evict(now)
			e = &graphEntry{}
			g.cache[key] = e
		}
		e.inflight = make(chan struct{})
		e.triedAt = now
		g.mu.Unlock()
		return g.lookup(ctx, id, e)
	}
}

// lookup asks Graph, records the answer in e and wakes the waiters. While
// Graph fails, a membership at most MaxStale past its TTL is still used.
func (g *GraphResolver) lookup(ctx context.Context, id *Identity,
	e *graphEntry) ([]string, error) {
	groups, err := g.memberOf(ctx, id)

	g.mu.Lock()
	defer g.mu.Unlock()
	close(e.inflight)
	e.inflight = nil
	now := g.cfg.Now()
	if err == nil {
		e.groups, e.fetchedAt, e.err = groups, now, nil
		return groups, nil
	}
	e.err = err
	g.cfg.Log.Warn("identity: graph lookup failed", "oid", id.OID, "err", err)
	return g.staleOrErr(e, now)
}

// staleOrErr returns the cached membership if it is at most MaxStale past
// its TTL, and the last lookup's error otherwise. Called with g.mu held.
func (g *GraphResolver) staleOrErr(e *graphEntry, now time.Time) ([]string, error) {
	if !e.fetchedAt.IsZero() && now.Sub(e.fetchedAt) < g.cfg.TTL+g.cfg.MaxStale {
		return e.groups, nil
	}
	return nil, e.err
}

// evict keeps the cache bounded: entries past TTL+MaxStale go first,
// then any, until there is room. Called with g.mu held.
func (g *GraphResolver) evict(now time.Time) {
	if len(g.cache) < graphMaxEntries {
		return
	}
	for k, e := range g.cache {
		if e.inflight == nil && now.Sub(e.fetchedAt) >= g.cfg.TTL+g.cfg.MaxStale {
			delete(g.cache, k)
		}
	}
	for k, e := range g.cache {
		if len(g.cache) < graphMaxEntries {
			return
		}
		if e.inflight == nil {
			delete(g.cache, k)
		}
	}
}

// memberOf pages through transitiveMemberOf, keeping groups only.
func (g *GraphResolver) memberOf(ctx context.Context, id *Identity) ([]string, error) {
	kind := "servicePrincipals"
	if id.IDType == "user" || id.UPN != "" {
		kind = "users"
	}
	next := g.cfg.URL + "/v1.0/" + kind + "/" + url.PathEscape(id.OID) +
		"/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999"
	groups := []string{}
	for page := 0; next != ""; page++ {
		if page == graphMaxPages {
			return nil, fmt.Errorf("identity: graph: more than %d pages of groups", graphMaxPages)
		}
		// Follow only links to the configured Graph: a nextLink elsewhere
		// would carry vigil's Graph token there.
		if !strings.HasPrefix(next, g.cfg.URL+"/") {
			return nil, fmt.Errorf("identity: graph: refusing nextLink outside %s", g.cfg.URL)
		}
		var body struct {
			Value []struct {
				ID   string `json:"id"`
				Type string `json:"@odata.type"`
			} `json:"value"`
			NextLink string `json:"@odata.nextLink"`
		}
		if err := g.get(ctx, next, &body); err != nil {
			return nil, err
		}
		for _, v := range body.Value {
			if v.ID != "" && (v.Type == "" || v.Type == "#microsoft.graph.group") {
				groups = append(groups, v.ID)
			}
		}
		next = body.NextLink
	}
	return groups, nil
}

func (g *GraphResolver) get(ctx context.Context, u string, out any) error {
	tok, err := g.accessToken(ctx)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("identity: graph: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	resp, err := g.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("identity: graph: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		g.mu.Lock()
		g.token = ""
		g.mu.Unlock()
	}
	return decodeResponse(resp, out)
}

// accessToken returns a cached Graph token, or gets one with the client
// credentials grant.
func (g *GraphResolver) accessToken(ctx context.Context) (string, error) {
	g.tokenMu.Lock()
	defer g.tokenMu.Unlock()
	g.mu.Lock()
	tok, exp := g.token, g.tokenExp
	g.mu.Unlock()
	if tok != "" && g.cfg.Now().Before(exp) {
		return tok, nil
	}

	form := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {g.cfg.ClientID},
		"client_secret": {g.cfg.ClientSecret.Reveal()},
		"scope":         {g.cfg.URL + "/.default"},
	}
	u := g.cfg.Authority + "/" + url.PathEscape(g.cfg.Tenant) + "/oauth2/v2.0/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("identity: graph token: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := g.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("identity: graph token: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := decodeResponse(resp, &body); err != nil {
		return "", fmt.Errorf("identity: graph token: %w", err)
	}
	if body.AccessToken == "" {
		return "", fmt.Errorf("identity: graph token: the answer holds no access_token")
	}
	// Renew five minutes early, and never cache for less than zero.
	life := max(time.Duration(body.ExpiresIn)*time.Second-5*time.Minute, 0)
	g.mu.Lock()
	g.token, g.tokenExp = body.AccessToken, g.cfg.Now().Add(life)
	g.mu.Unlock()
	return body.AccessToken, nil
}

// decodeResponse reads a JSON answer, or turns an error answer into an
// error carrying its status and a short part of its body.
func decodeResponse(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, graphMaxBody))
	if err != nil {
		return fmt.Errorf("identity: reading %s: %w", resp.Request.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("identity: %s answered %s: %s",
			resp.Request.URL.Path, resp.Status, clip(string(b)))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("identity: %s: %w", resp.Request.URL.Path, err)
	}
	return nil
}
