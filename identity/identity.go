// Package identity checks the access tokens agents present and turns them
// into an Identity that vigil records and matches against grants.
//
// Tokens are Microsoft Entra v1 or v2 access tokens (or tokens of a plain
// OIDC issuer), verified with github.com/coreos/go-oidc/v3: RS256
// signature, issuer per token version, tenant, audience, exp and nbf with a
// bounded skew. The raw token is never stored or logged.
//
// Main types: EntraVerifier (NewVerifier) implements Verifier and refuses
// tokens with an *Error whose Reason is machine-readable; GraphResolver
// resolves group membership through Microsoft Graph for `groups: graph`;
// DevIssuer is a local issuer shaped like Entra for trials and tests
// (`vigil dev issuer`). Token shapes follow Microsoft's access token
// claims reference; keys follow RFC 7517.
package identity

import (
	"context"
	"time"

	"github.com/vigilaudit/vigil/config"
)

// Identity is who presented a token: the claims vigil keeps. It is safe to
// record; it holds no secret.
type Identity struct {
	OID   string `json:"oid,omitempty"`
	TID   string `json:"tid,omitempty"`
	Sub   string `json:"sub,omitempty"`
	AppID string `json:"appid,omitempty"` // azp (v2) or appid (v1)
	// IDType is the idtyp claim: "app" for app-only tokens, "user" otherwise.
	IDType string `json:"idtyp,omitempty"`
	Name   string `json:"name,omitempty"`
	UPN    string `json:"upn,omitempty"` // upn, or preferred_username
	// MIResourceID is xms_mirid, the managed identity's Azure resource id.
	MIResourceID string   `json:"xms_mirid,omitempty"`
	Roles        []string `json:"roles,omitempty"`
	Groups       []string `json:"groups,omitempty"`
	// GroupsOverage is set when the token carried an overage marker
	// (_claim_names) instead of its groups and they were not resolved
	// (identity.groups is token): Groups is then incomplete, and group
	// grants do not match.
	GroupsOverage bool `json:"groups_overage,omitempty"`
	// UTI is the token's unique id, so an auditor can ask Entra about it.
	UTI       string    `json:"uti,omitempty"`
	Version   string    `json:"ver,omitempty"`
	Issuer    string    `json:"iss,omitempty"`
	Audience  string    `json:"aud,omitempty"`
	ExpiresAt time.Time `json:"exp,omitzero"`
}

// Principal names the identity for people: the UPN, the name, the app id
// or the object id, whichever is present first.
func (i *Identity) Principal() string {
	for _, s := range []string{i.UPN, i.Name, i.AppID, i.OID, i.Sub} {
		if s != "" {
			return s
		}
	}
	return "unknown"
}

// Verifier checks a raw token and returns the identity it carries.
// Implementations are safe for concurrent use.
type Verifier interface {
	Verify(ctx context.Context, rawToken string) (*Identity, error)
}

// Match returns the first grant in grants that id satisfies.
func Match(grants config.Grants, id *Identity) (config.Grant, bool) {
	for _, g := range grants {
		if matches(g, id) {
			return g, true
		}
	}
	return config.Grant{}, false
}

func matches(g config.Grant, id *Identity) bool {
	switch g.Kind {
	case "group":
		return contains(id.Groups, g.Value)
	case "role":
		return contains(id.Roles, g.Value)
	case "app":
		return id.AppID != "" && id.AppID == g.Value
	case "oid":
		return id.OID != "" && id.OID == g.Value
	}
	return false
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}
