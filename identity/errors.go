package identity

import "fmt"

// Reason is the machine-readable cause of a refused token. It is recorded
// in the audit (auth_failed events) and is stable across releases.
type Reason string

// Reasons a token is refused.
const (
	// ReasonMalformed: the token is not a well-formed JWT, or lacks a claim
	// vigil needs (tid, ver, exp, ...).
	ReasonMalformed Reason = "malformed"
	// ReasonUnsupportedAlgorithm: the token is not signed with RS256 (this
	// includes "none" and HS256).
	ReasonUnsupportedAlgorithm Reason = "unsupported_algorithm"
	// ReasonBadSignature: the signature does not verify, or the signing key
	// is not among the issuer's keys.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonKeysUnavailable: the issuer's keys could not be fetched.
	ReasonKeysUnavailable Reason = "keys_unavailable"
	// ReasonVersionNotAccepted: the token version is not in identity.versions.
	ReasonVersionNotAccepted Reason = "version_not_accepted"
	// ReasonTenantNotAllowed: the tid claim is not in identity.tenants.
	ReasonTenantNotAllowed Reason = "tenant_not_allowed"
	// ReasonWrongIssuer: iss is not the issuer of the token's tenant and
	// version (or of the configured OIDC issuer).
	ReasonWrongIssuer Reason = "wrong_issuer"
	// ReasonWrongAudience: no aud value is in identity.audiences.
	ReasonWrongAudience Reason = "wrong_audience"
	// ReasonExpired: exp is in the past by more than the clock skew.
	ReasonExpired Reason = "expired"
	// ReasonNotYetValid: nbf is in the future by more than the clock skew.
	ReasonNotYetValid Reason = "not_yet_valid"
	// ReasonGroupsUnavailable: identity.groups is graph and the group
	// membership could not be resolved. The token itself may be valid.
	ReasonGroupsUnavailable Reason = "groups_unavailable"
)

// Error is why a token was refused. Message is meant for the client (the
// PostgreSQL processor sends it in a FATAL error) and names the check that
// failed, such as "token expired at 2026-12-04T10:00:00Z"; it never holds
// the token. Err, when set, is the underlying cause (a network error, a
// go-oidc error) and is meant for logs, not for the client.
type Error struct {
	Reason  Reason
	Message string
	Err     error
}

// Error returns "identity: " followed by the message and the cause.
func (e *Error) Error() string {
	if e.Err != nil {
		return "identity: " + e.Message + ": " + e.Err.Error()
	}
	return "identity: " + e.Message
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.Err }

func refuse(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Message: fmt.Sprintf(format, args...)}
}

func refuseErr(r Reason, err error, format string, args ...any) *Error {
	return &Error{Reason: r, Message: fmt.Sprintf(format, args...), Err: err}
}
