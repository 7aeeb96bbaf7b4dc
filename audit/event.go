package audit

import (
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// Kind names what an event records.
type Kind string

// Event kinds. Every session's events start with KindSessionStart (seq 1)
// and, when the session ends cleanly, end with KindSessionEnd.
const (
	KindSessionStart Kind = "session_start"
	KindAuthFailed   Kind = "auth_failed"
	KindCommand      Kind = "command"
	KindResult       Kind = "result"
	KindApproval     Kind = "approval"
	KindSessionEnd   Kind = "session_end"
)

// Event is one entry of the audit journal. Events are data, not log lines:
// they go to the journal and never through slog.
//
// SessionID, Seq and Time are filled by the Recorder; the caller fills the
// rest. Fields that do not apply to a kind stay empty.
type Event struct {
	SessionID string    `json:"session_id"`
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Kind      Kind      `json:"kind"`

	// Who and where: repeated on every event so that each one stands alone
	// in a search index.
	Connection   string             `json:"connection"`
	Protocol     string             `json:"protocol,omitempty"`
	Identity     *identity.Identity `json:"identity,omitempty"`
	Grant        string             `json:"grant,omitempty"`
	Client       string             `json:"client,omitempty"` // client address, host:port
	Upstream     string             `json:"upstream,omitempty"`
	UpstreamUser string             `json:"upstream_user,omitempty"`
	Database     string             `json:"database,omitempty"`

	Command *Command `json:"command,omitempty"` // KindCommand
	// Decision is the policy's verdict on the command (KindCommand).
	Decision *Decision `json:"decision,omitempty"`
	Result   *Result   `json:"result,omitempty"`   // KindResult
	Approval *Approval `json:"approval,omitempty"` // KindApproval
	Session  *Session  `json:"session,omitempty"`  // KindSessionStart, KindSessionEnd
	// Reason says why a login failed (KindAuthFailed) or why a session
	// ended abnormally.
	Reason string `json:"reason,omitempty"`
	// ReasonCode is the machine form of Reason for a failed login:
	// "expired", "wrong_audience", "no_grant", ...
	ReasonCode string `json:"reason_code,omitempty"`
}

// Command is a statement or protocol request the client sent.
type Command struct {
	// Message is the protocol request: "query" (simple protocol), "execute"
	// (extended protocol), "function_call", "copy_in".
	Message string `json:"message"`
	// SQL is the exact statement text. For a simple query holding several
	// statements, each statement is its own command; Index and Count say
	// which one it is.
	SQL   string `json:"sql,omitempty"`
	Index int    `json:"index,omitempty"` // 1-based, within the query string
	Count int    `json:"count,omitempty"` // statements in the query string
	// Statement and Portal are the extended-protocol names ("" is unnamed).
	Statement string `json:"statement,omitempty"`
	Portal    string `json:"portal,omitempty"`
	// Parameters are the bound values in order ($1 first). Empty when the
	// connection records statements only; ParameterCount still says how
	// many there were.
	Parameters     []Parameter `json:"parameters,omitempty"`
	ParameterCount int         `json:"parameter_count,omitempty"`
	// Function is the called function's OID for a FunctionCall.
	Function uint32 `json:"function,omitempty"`
}

// Parameter is one bound value, rendered by its format code.
type Parameter struct {
	// Format is "text" or "binary".
	Format string `json:"format"`
	Null   bool   `json:"null,omitempty"`
	// Value is the text value, or for binary values a hex string "\\x...".
	Value string `json:"value,omitempty"`
	// TypeOID is the parameter type when the client or server named it.
	TypeOID uint32 `json:"type_oid,omitempty"`
}

// Result is the outcome of one command.
type Result struct {
	// Command is the seq of the KindCommand event this result belongs to.
	Command uint64 `json:"command"`
	// Status is "ok", "error", "skipped" (the server never ran it because
	// an earlier command of the same batch failed) or "aborted" (the
	// connection ended before an answer).
	Status   string  `json:"status"`
	Tag      string  `json:"tag,omitempty"` // command tag, "INSERT 0 1"
	Rows     int64   `json:"rows,omitempty"`
	SQLState string  `json:"sqlstate,omitempty"`
	Message  string  `json:"message,omitempty"` // error message
	Duration float64 `json:"duration_ms"`
	// Masked summarises the values rewritten on their way to the client.
	Masked []Masked `json:"masked,omitempty"`
}

// Result statuses.
const (
	StatusOK      = "ok"
	StatusError   = "error"
	StatusSkipped = "skipped"
	StatusAborted = "aborted"
	// StatusDenied: vigil refused the command; the server never ran it.
	StatusDenied = "denied"
)

// Decision is what the policy said about a command.
type Decision struct {
	Allowed bool     `json:"allowed"`
	Rules   []string `json:"rules,omitempty"`
	Reasons []string `json:"reasons,omitempty"`
	// Revision identifies the policy bundle that decided.
	Revision string `json:"revision,omitempty"`
	// Mask lists the masking the policy asked for, as "column:strategy"
	// or "detector:strategy".
	Mask []string `json:"mask,omitempty"`
	// Hold is set when the command waited for a human approval.
	Hold bool `json:"hold,omitempty"`
}

// Masked counts the values vigil rewrote in one column of a result.
type Masked struct {
	Column   string `json:"column"`
	Strategy string `json:"strategy"`
	// Rule is the column rule or the detector that matched.
	Rule   string `json:"rule"`
	Values int64  `json:"values"`
}

// Approval is one step of a command's approval.
type Approval struct {
	// Command is the seq of the command waiting for approval.
	Command   uint64 `json:"command"`
	RequestID string `json:"request_id"`
	// Step is requested, approved, denied, refused (an attempt by someone
	// not allowed to decide), expired, cancelled, or covered (an open
	// window approval let the command run without a new request).
	Step   string             `json:"step"`
	Actor  *identity.Identity `json:"actor,omitempty"`
	Reason string             `json:"reason,omitempty"`
	// Approvers are the grants that may decide (on the requested step).
	Approvers []string `json:"approvers,omitempty"`
}

// Session describes the session as a whole, on its start and end events.
type Session struct {
	Opened time.Time `json:"opened"`
	Closed time.Time `json:"closed,omitzero"`
	// Commands is the number of command events; on session end.
	Commands int `json:"commands,omitempty"`
	// Events is the number of the session's events, this end included (so
	// its seq), and LastHash the hash of the event before it: on session
	// end, filled by the journal. They restate the end's place in the hash
	// chain inside the hashed bytes, so a search index holding only the
	// end event still shows how long the session was.
	Events   uint64 `json:"events,omitempty"`
	LastHash string `json:"last_hash,omitempty"`
	// Application is the client's application_name, if it sent one.
	Application string `json:"application,omitempty"`
	// ClientUser is the user name the client asked for at startup.
	ClientUser string `json:"client_user,omitempty"`
}
