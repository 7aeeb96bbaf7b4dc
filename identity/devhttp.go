package identity

import (
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// maxSpecSize bounds the body of POST /dev/token.
const maxSpecSize = 64 << 10

// Handler serves Entra's discovery and key paths for the issuer's tenant,
// and the dev-only token endpoint:
//
//	GET  /{tenant}/v2.0/.well-known/openid-configuration   v2 discovery
//	GET  /{tenant}/.well-known/openid-configuration        v1 discovery
//	GET  /common/discovery/v2.0/keys, /common/discovery/keys
//	GET  /{tenant}/discovery/v2.0/keys, /{tenant}/discovery/keys
//	POST /dev/token                                         mint a token
//
// POST /dev/token exists only in the dev issuer (Entra has nothing like
// it): its body is a TokenSpec in JSON, and it answers
// {"token_type":"Bearer","expires_in":N,"access_token":"..."}. URLs in the
// discovery documents are built from the request's Host.
func (d *DevIssuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", d.serveDiscovery)
	mux.HandleFunc("GET /{tenant}/.well-known/openid-configuration", d.serveDiscovery)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", d.serveKeys)
	mux.HandleFunc("GET /{tenant}/discovery/keys", d.serveKeys)
	mux.HandleFunc("POST /dev/token", d.serveToken)
	return mux
}

func (d *DevIssuer) knownTenant(t string, common bool) bool {
	return strings.EqualFold(t, d.tenant) || (common && t == "common")
}

func (d *DevIssuer) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("tenant")
	if !d.knownTenant(t, false) {
		writeOAuthError(w, http.StatusBadRequest, "invalid_tenant",
			"tenant "+t+" is not the dev issuer's tenant "+d.tenant)
		return
	}
	base := baseURL(r)
	v2 := strings.Contains(r.URL.Path, "/v2.0/")
	doc := map[string]any{
		"token_endpoint_auth_methods_supported": []string{
			"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported": []string{
			"code", "id_token", "code id_token", "token id_token", "token"},
		"scopes_supported":    []string{"openid", "profile", "email", "offline_access"},
		"tenant_region_scope": nil,
		"cloud_instance_name": "microsoftonline.com",
	}
	if v2 {
		doc["issuer"] = "https://login.microsoftonline.com/" + t + "/v2.0"
		doc["jwks_uri"] = base + "/" + t + "/discovery/v2.0/keys"
		doc["token_endpoint"] = base + "/" + t + "/oauth2/v2.0/token"
		doc["authorization_endpoint"] = base + "/" + t + "/oauth2/v2.0/authorize"
	} else {
		doc["issuer"] = "https://sts.windows.net/" + t + "/"
		doc["jwks_uri"] = base + "/common/discovery/keys"
		doc["token_endpoint"] = base + "/" + t + "/oauth2/token"
		doc["authorization_endpoint"] = base + "/" + t + "/oauth2/authorize"
	}
	writeJSON(w, http.StatusOK, doc)
}

// jwk is one key as Entra publishes it: no alg, and a non-standard
// issuer field.
type jwk struct {
	Kty    string   `json:"kty"`
	Use    string   `json:"use"`
	Kid    string   `json:"kid"`
	X5t    string   `json:"x5t"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	X5c    []string `json:"x5c"`
	Issuer string   `json:"issuer"`
}

func (d *DevIssuer) serveKeys(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("tenant")
	if !d.knownTenant(t, true) {
		writeOAuthError(w, http.StatusBadRequest, "invalid_tenant",
			"tenant "+t+" is not the dev issuer's tenant "+d.tenant)
		return
	}
	iss := "https://login.microsoftonline.com/{tenantid}/v2.0"
	if t != "common" {
		iss = "https://login.microsoftonline.com/" + t + "/v2.0"
	}
	pub := d.key.PublicKey
	k := jwk{
		Kty:    "RSA",
		Use:    "sig",
		Kid:    d.kid,
		X5t:    d.kid,
		N:      base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		E:      base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
		X5c:    []string{base64.StdEncoding.EncodeToString(d.cert)},
		Issuer: iss,
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": []jwk{k}})
}

func (d *DevIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	var spec TokenSpec
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxSpecSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request",
			"the body must be a token spec in JSON: "+err.Error())
		return
	}
	tok, err := d.Mint(spec)
	if err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	var exp struct {
		Exp int64 `json:"exp"`
		Aud any   `json:"aud"`
		TID any   `json:"tid"`
		Ver any   `json:"ver"`
	}
	_ = decodeSegment(strings.Split(tok, ".")[1], &exp)
	d.log.Info("identity: dev issuer minted a token",
		"ver", exp.Ver, "tid", exp.TID, "aud", exp.Aud, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":   "Bearer",
		"expires_in":   max(0, exp.Exp-d.now().Unix()),
		"access_token": tok,
	})
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeOAuthError answers as Entra's endpoints do on failure.
func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]any{
		"error":             code,
		"error_description": desc,
		"timestamp":         time.Now().UTC().Format(time.DateTime + "Z"),
	})
}
