package identity

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilaudit/vigil/config"
)

// fakeGraph answers as Entra's token endpoint and Microsoft Graph do, for
// the few calls the resolver makes.
type fakeGraph struct {
	srv     *httptest.Server
	tokens  atomic.Int64 // token requests
	lookups atomic.Int64 // transitiveMemberOf pages served
	down    atomic.Bool
	badLink atomic.Bool // send a nextLink to another host
	members map[string][]string
}

const graphSecret = "s3cret"

func newFakeGraph(t *testing.T) *fakeGraph {
	f := &fakeGraph{members: map[string][]string{
		"servicePrincipals/" + DevObjectID: {"g-sp-1", "g-sp-2"},
		"users/user-1":                     {"g-user-1", "g-user-2"},
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", func(w http.ResponseWriter, r *http.Request) {
		f.tokens.Add(1)
		if r.PathValue("tenant") != DevTenant || r.FormValue("grant_type") != "client_credentials" ||
			r.FormValue("client_id") != "vigil" || r.FormValue("client_secret") != graphSecret ||
			r.FormValue("scope") != f.srv.URL+"/.default" {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "bad client")
			return
		}
		writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": 3599,
			"access_token": "graph-token"})
	})
	mux.HandleFunc("GET /v1.0/{kind}/{oid}/transitiveMemberOf/microsoft.graph.group",
		func(w http.ResponseWriter, r *http.Request) {
			f.lookups.Add(1)
			if r.Header.Get("Authorization") != "Bearer graph-token" {
				http.Error(w, `{"error":{"code":"InvalidAuthenticationToken"}}`, 401)
				return
			}
			if f.down.Load() {
				http.Error(w, `{"error":{"code":"ServiceUnavailable"}}`, 503)
				return
			}
			groups, ok := f.members[r.PathValue("kind")+"/"+r.PathValue("oid")]
			if !ok {
				http.Error(w, `{"error":{"code":"Request_ResourceNotFound"}}`, 404)
				return
			}
			// One group per page, to exercise @odata.nextLink.
			i := 0
			if r.URL.Query().Get("$skiptoken") == "1" {
				i = 1
			}
			page := map[string]any{"value": []map[string]any{
				{"@odata.type": "#microsoft.graph.group", "id": groups[i]}}}
			if i == 0 {
				base := f.srv.URL
				if f.badLink.Load() {
					base = "http://127.0.0.1:1"
				}
				page["@odata.nextLink"] = base + r.URL.Path + "?$skiptoken=1"
			}
			writeJSON(w, 200, page)
		})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func graphEnv(t *testing.T) (*env, *fakeGraph, *EntraVerifier) {
	e := newEnv(t)
	g := newFakeGraph(t)
	r, err := NewGraphResolver(GraphConfig{
		Tenant: DevTenant, ClientID: "vigil", ClientSecret: config.Secret(graphSecret),
		Authority: g.srv.URL, URL: g.srv.URL, TTL: 10 * time.Minute, MaxStale: time.Hour,
		Now: e.clock.Now, Log: quietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Groups = "graph"
	return e, g, e.verifier(t, WithGroupResolver(r))
}

func TestGraphGroups(t *testing.T) {
	e, g, v := graphEnv(t)
	ctx := context.Background()
	sp := e.mint(t, TokenSpec{})
	verify := func(tok string) *Identity {
		t.Helper()
		id, err := v.Verify(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	// A service principal's app-only token has no groups: Graph has them.
	id := verify(sp)
	if !slices.Equal(id.Groups, []string{"g-sp-1", "g-sp-2"}) {
		t.Fatalf("groups %v", id.Groups)
	}
	if gr, ok := Match(config.Grants{{Kind: "group", Value: "g-sp-2"}}, id); !ok {
		t.Errorf("group grant did not match; got %v", gr)
	}
	if g.tokens.Load() != 1 || g.lookups.Load() != 2 {
		t.Fatalf("%d token requests, %d pages; want 1 and 2", g.tokens.Load(), g.lookups.Load())
	}

	// Within the TTL the cache answers; past it Graph is asked again.
	verify(sp)
	if g.lookups.Load() != 2 {
		t.Fatalf("%d pages after a cached lookup, want 2", g.lookups.Load())
	}
	e.clock.Add(10 * time.Minute)
	verify(sp)
	if g.tokens.Load() != 1 || g.lookups.Load() != 4 {
		t.Fatalf("%d token requests, %d pages after the TTL; want 1 and 4",
			g.tokens.Load(), g.lookups.Load())
	}

	// An overage user token is resolved through /users, never ignored.
	id = verify(e.mint(t, TokenSpec{UPN: "u@example.test", OID: "user-1",
		Claims: map[string]any{
			"_claim_names":   map[string]any{"groups": "src1"},
			"_claim_sources": map[string]any{"src1": map[string]any{"endpoint": "http://x"}},
		}}))
	if !slices.Equal(id.Groups, []string{"g-user-1", "g-user-2"}) || id.GroupsOverage {
		t.Fatalf("overage: groups %v, overage %v", id.Groups, id.GroupsOverage)
	}

	// A token that carries its groups needs no lookup.
	before := g.lookups.Load()
	id = verify(e.mint(t, TokenSpec{UPN: "u@example.test", OID: "user-2", Groups: []string{"x"}}))
	if !slices.Equal(id.Groups, []string{"x"}) || g.lookups.Load() != before {
		t.Fatalf("groups %v, %d lookups", id.Groups, g.lookups.Load()-before)
	}
}

func TestGraphFailures(t *testing.T) {
	e, g, v := graphEnv(t)
	ctx := context.Background()
	sp := e.mint(t, TokenSpec{})
	if _, err := v.Verify(ctx, sp); err != nil {
		t.Fatal(err)
	}

	// Graph down: the cached membership serves up to TTL+MaxStale.
	g.down.Store(true)
	e.clock.Add(30 * time.Minute)
	sp = e.mint(t, TokenSpec{})
	if id, err := v.Verify(ctx, sp); err != nil || len(id.Groups) != 2 {
		t.Fatalf("stale membership: %v, %v", id, err)
	}
	// Right after a failure, tokens do not each cause a Graph request.
	before := g.lookups.Load()
	for range 20 {
		_, _ = v.Verify(ctx, sp)
	}
	if n := g.lookups.Load() - before; n != 0 {
		t.Fatalf("%d Graph requests right after a failure, want 0", n)
	}
	e.clock.Add(time.Hour)
	sp = e.mint(t, TokenSpec{})
	_, err := v.Verify(ctx, sp)
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason != ReasonGroupsUnavailable {
		t.Fatalf("membership past MaxStale with Graph down: %v, want groups_unavailable", err)
	}

	// Unknown principal: refused, never let through with no groups.
	g.down.Store(false)
	_, err = v.Verify(ctx, e.mint(t, TokenSpec{OID: "nobody"}))
	if !errors.As(err, &ie) || ie.Reason != ReasonGroupsUnavailable {
		t.Fatalf("unknown principal: %v, want groups_unavailable", err)
	}

	// A nextLink to another host is not followed with vigil's token.
	g.badLink.Store(true)
	g.members["servicePrincipals/other"] = []string{"a", "b"}
	_, err = v.Verify(ctx, e.mint(t, TokenSpec{OID: "other"}))
	if !errors.As(err, &ie) || ie.Reason != ReasonGroupsUnavailable ||
		!strings.Contains(err.Error(), "refusing nextLink") {
		t.Fatalf("nextLink elsewhere: %v, want groups_unavailable", err)
	}
}

func TestGraphOtherTenant(t *testing.T) {
	r, err := NewGraphResolver(GraphConfig{Tenant: DevTenant, ClientID: "c",
		ClientSecret: "s", URL: "http://127.0.0.1:1", Authority: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Groups(context.Background(), &Identity{OID: "o", TID: "another"})
	if err == nil || !strings.Contains(err.Error(), "not vigil's tenant") {
		t.Fatalf("other tenant: %v", err)
	}
}
