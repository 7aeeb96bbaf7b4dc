package approvals

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/config"
	"github.com/vigilaudit/vigil/identity"
)

// Statuses of a request. Only StatusPending changes, and only once.
const (
	StatusPending   = "pending"
	StatusApproved  = "approved"
	StatusDenied    = "denied"
	StatusExpired   = "expired"
	StatusCancelled = "cancelled"
)

// Scopes of an approval.
const (
	// ScopeOnce: the approval lets this one execution run.
	ScopeOnce = "once"
	// ScopeWindow: the approval also covers the same statement text from
	// the same requester on the same connection for Request.Window.
	ScopeWindow = "window"
)

// Kinds of steps.
const (
	StepRequested = "requested"
	StepApproved  = "approved"
	StepDenied    = "denied"
	StepRefused   = "refused"
	StepExpired   = "expired"
	StepCancelled = "cancelled"
)

// Errors callers branch on. Compare with errors.Is.
var (
	// ErrNotFound: no request has that id.
	ErrNotFound = errors.New("approvals: no such request")
	// ErrNotPending: the request was already decided, expired or cancelled.
	ErrNotPending = errors.New("approvals: request is not pending")
	// ErrSelfApproval: the approver counts as the requester (same object
	// id, or the same application with one side acting as itself); the
	// wrapping error says which.
	ErrSelfApproval = errors.New("approvals: the approver counts as the requester")
	// ErrNotApprover: the approver matches none of the request's approvers.
	ErrNotApprover = errors.New("approvals: not one of the request's approvers")
	// ErrReasonRequired: a denial needs a reason.
	ErrReasonRequired = errors.New("approvals: a denial needs a reason")
)

// Request is one command held for approval. The fields above Status are
// set by the caller of Hold (ID and Created are filled in when empty) and
// never change; Status, Decider, Reason and Decided are set once, by the
// decision.
type Request struct {
	// ID is short, unguessable and URL-safe (16 base32 characters).
	ID         string             `json:"id"`
	Created    time.Time          `json:"created"`
	SessionID  string             `json:"session_id"`
	CommandSeq uint64             `json:"command_seq"`
	Connection string             `json:"connection"`
	Requester  *identity.Identity `json:"requester"`
	// Grant is the grant that let the requester's session in.
	Grant      string            `json:"grant,omitempty"`
	SQL        string            `json:"sql"`
	Parameters []audit.Parameter `json:"parameters,omitempty"`
	// Reasons are the policy's reasons for the hold.
	Reasons []string `json:"reasons,omitempty"`
	// Approvers are grants ("group:dba", "role:Db.Admin", "oid:...",
	// "app:...") whose holders may decide.
	Approvers []string `json:"approvers"`
	// Timeout is how long the request waits before it expires.
	Timeout time.Duration `json:"-"`
	// Scope is ScopeOnce (the default when empty) or ScopeWindow.
	Scope string `json:"scope"`
	// Window is how long a window approval covers repeats.
	Window time.Duration `json:"-"`

	Status  string             `json:"status"`
	Decider *identity.Identity `json:"decider,omitempty"`
	// Reason is the decider's reason, or why the request expired or was
	// cancelled.
	Reason  string    `json:"reason,omitempty"`
	Decided time.Time `json:"decided,omitzero"`
}

// requestFields is Request without its JSON methods.
type requestFields Request

// MarshalJSON writes Timeout and Window as Go duration strings ("15m0s").
func (r Request) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		requestFields
		Timeout string `json:"timeout"`
		Window  string `json:"window,omitempty"`
	}{requestFields(r), r.Timeout.String(), durationOrEmpty(r.Window)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Request) UnmarshalJSON(b []byte) error {
	w := struct {
		*requestFields
		Timeout string `json:"timeout"`
		Window  string `json:"window,omitempty"`
	}{requestFields: (*requestFields)(r)}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var err error
	if r.Timeout, err = parseDuration(w.Timeout); err != nil {
		return fmt.Errorf("approvals: request timeout: %w", err)
	}
	if r.Window, err = parseDuration(w.Window); err != nil {
		return fmt.Errorf("approvals: request window: %w", err)
	}
	return nil
}

func durationOrEmpty(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

// Deadline is when the request expires if nobody decides.
func (r *Request) Deadline() time.Time { return r.Created.Add(r.Timeout) }

// Pending reports whether the request still waits for a decision.
func (r *Request) Pending() bool { return r.Status == StatusPending }

// clone returns a deep enough copy for callers to keep: the slices and
// identities are shared, and never modified after creation.
func (r *Request) clone() *Request {
	c := *r
	return &c
}

// Step is one event in a request's life, in the order it happened.
type Step struct {
	// Kind is one of StepRequested, StepApproved, StepDenied, StepRefused,
	// StepExpired, StepCancelled.
	Kind string `json:"kind"`
	// Actor is the requester (requested), the approver (approved, denied,
	// refused), or nil (expired, cancelled).
	Actor  *identity.Identity `json:"actor,omitempty"`
	Reason string             `json:"reason,omitempty"`
	Time   time.Time          `json:"time"`
}

// NewID returns a fresh request id, for a caller that must name a request
// before Hold stores it.
func NewID() string { return newID() }

// newID returns 80 random bits in lower-case base32 without padding.
func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("approvals: crypto/rand failed: " + err.Error())
	}
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// validID reports whether id has the shape newID makes, so that ids from
// URLs are checked before they reach a store.
func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// requesterKey is who a window approval belongs to: the object id, or the
// app id when the identity has none.
func requesterKey(id *identity.Identity) string {
	if id == nil {
		return ""
	}
	if id.OID != "" {
		return "oid:" + id.OID
	}
	if id.AppID != "" {
		return "app:" + id.AppID
	}
	return ""
}

// appOnly reports whether id is an application acting as itself, not a
// person signed in through an application.
func appOnly(id *identity.Identity) bool {
	if id.IDType != "" {
		return id.IDType == "app"
	}
	return id.UPN == "" && id.Name == ""
}

// isSelf reports whether approver is the requester: the same object id,
// or the same app id when either is an app-only identity (a person signed
// in through the agent's own app is treated as the agent).
func isSelf(requester, approver *identity.Identity) bool {
	return selfReason(requester, approver) != ""
}

// selfReason says why approver counts as the requester, or "" when it
// does not; see isSelf.
func selfReason(requester, approver *identity.Identity) string {
	if requester == nil || approver == nil {
		return ""
	}
	if requester.OID != "" && requester.OID == approver.OID {
		return "same object id (" + approver.OID + ")"
	}
	if requester.AppID == "" || requester.AppID != approver.AppID {
		return ""
	}
	switch {
	case appOnly(approver):
		return "same application (" + approver.AppID + "), acting as itself"
	case appOnly(requester):
		return "same application (" + approver.AppID + "), which made the request " +
			"acting as itself"
	}
	return ""
}

// approverGrant returns the first of grants that id holds. Grants that do
// not parse are skipped: they name nobody.
func approverGrant(grants []string, id *identity.Identity) (config.Grant, bool) {
	parsed := make(config.Grants, 0, len(grants))
	for _, s := range grants {
		g, err := config.ParseGrant(s)
		if err != nil {
			continue
		}
		parsed = append(parsed, g)
	}
	return identity.Match(parsed, id)
}
