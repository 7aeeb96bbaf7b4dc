package policy

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// Input is the document a policy sees as `input`. README.md shows it in
// full. The caller fills it per command; Decide does not modify it.
type Input struct {
	Identity   *identity.Identity `json:"identity"`
	Connection ConnectionInput    `json:"connection"`
	Session    SessionInput       `json:"session"`
	Command    CommandInput       `json:"command"`
}

// ConnectionInput describes the configured connection the session uses.
type ConnectionInput struct {
	Name         string `json:"name"`
	Type         string `json:"type"` // "postgres"
	Database     string `json:"database,omitempty"`
	UpstreamUser string `json:"upstream_user,omitempty"`
	// Grant is the grant that let the session in, "group:billing-agents".
	Grant string `json:"grant"`
}

// SessionInput describes the client session.
type SessionInput struct {
	ID          string    `json:"id"`
	Client      string    `json:"client,omitempty"` // host:port
	Application string    `json:"application,omitempty"`
	Opened      time.Time `json:"opened,omitzero"`
}

// CommandInput is the command being judged.
type CommandInput struct {
	// Protocol is the wire protocol: "postgres".
	Protocol string `json:"protocol"`
	// Message is the protocol request, as in audit.Command: "query",
	// "parse", "execute", "function_call".
	Message string `json:"message,omitempty"`
	// SQL is the exact text the client sent.
	SQL        string            `json:"sql"`
	Parameters []audit.Parameter `json:"parameters,omitempty"`
	// Function is the OID a fast-path FunctionCall names (message
	// "function_call"); SQL is then empty.
	Function uint32 `json:"function,omitempty"`
	// Statements are the parsed statements of SQL, in order (Analyze).
	Statements []Statement `json:"statements"`
	// ParseError is set, to the parser's message, when SQL could not be
	// parsed; Statements is then empty. The default policy denies.
	ParseError string `json:"parse_error,omitempty"`
}

// Decision is the policy's answer for one command. Decisions may be shared
// through the cache: callers must not modify one.
type Decision struct {
	// Allow says the command may run (after approval, when Approval is set).
	Allow bool `json:"allow"`
	// Reasons explain a denial or a hold, for the client and the audit log.
	Reasons []string `json:"reasons,omitempty"`
	// Rules names the rules that fired, "deny_delete_without_where".
	Rules []string `json:"rules,omitempty"`
	// Mask lists the result columns or values to mask.
	Mask []MaskRule `json:"mask,omitempty"`
	// Approval, when set and Allow is true, holds the command until one of
	// the approvers allows it.
	Approval *Approval `json:"approval,omitempty"`
	// Revision is the bundle revision that decided.
	Revision string `json:"revision"`
}

// MaskRule says which result values to mask and how. Column (and Table, when
// set) select result columns by name; Detector selects values by their
// shape. With both set, only the values of those columns that the detector
// recognises are masked; with Column empty, every column is scanned.
type MaskRule struct {
	Column   string `json:"column,omitempty"`
	Table    string `json:"table,omitempty"`
	Detector string `json:"detector,omitempty"` // one of Detectors
	Strategy string `json:"strategy"`           // one of Strategies
}

// Approval says who may approve a held command and for how long it waits.
type Approval struct {
	// Approvers are grants ("group:dba") whose members may approve.
	Approvers []string `json:"approvers"`
	// Timeout is how long the command is held before it is denied.
	Timeout time.Duration `json:"timeout"`
	// Scope is "once" (the approval lets this execution run) or "window"
	// (it also covers the same statement from the same identity on the
	// same connection for Window).
	Scope string `json:"scope"`
	// Window is how long a "window" approval covers repeats (default 10m).
	Window time.Duration `json:"window,omitempty"`
}

// decode reads the value of data.vigil.decision. Anything of the wrong shape
// is an error, so that a broken policy denies.
func decode(v any) (*Decision, error) {
	doc, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("policy: decision is %T, want an object", v)
	}
	d := &Decision{}
	var err error
	if a, ok := doc["allow"]; ok {
		if d.Allow, ok = a.(bool); !ok {
			return nil, fmt.Errorf("policy: decision.allow is %T, want a boolean", a)
		}
	}
	if d.Reasons, err = stringList(doc, "reasons"); err != nil {
		return nil, err
	}
	if d.Rules, err = stringList(doc, "rules"); err != nil {
		return nil, err
	}
	if d.Mask, err = maskList(doc["mask"]); err != nil {
		return nil, err
	}
	if a, ok := doc["approval"]; ok && a != nil {
		if d.Approval, err = approval(a); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// stringList reads an array or set of strings; a missing key is empty.
func stringList(doc map[string]any, key string) ([]string, error) {
	raw, ok := doc[key]
	if !ok || raw == nil {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("policy: decision.%s is %T, want an array of strings", key, raw)
	}
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, ok := x.(string)
		if !ok {
			return nil, fmt.Errorf("policy: decision.%s holds %T, want strings", key, x)
		}
		out = append(out, s)
	}
	return out, nil
}

func maskList(raw any) ([]MaskRule, error) {
	if raw == nil {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("policy: decision.mask is %T, want an array", raw)
	}
	out := make([]MaskRule, 0, len(list))
	for _, x := range list {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("policy: decision.mask holds %T, want objects", x)
		}
		var r MaskRule
		for key, dst := range map[string]*string{"column": &r.Column, "table": &r.Table,
			"detector": &r.Detector, "strategy": &r.Strategy} {
			if v, ok := m[key]; ok {
				if *dst, ok = v.(string); !ok {
					return nil, fmt.Errorf("policy: decision.mask %s is %T, want a string",
						key, v)
				}
			}
		}
		if !validStrategy(r.Strategy) {
			return nil, fmt.Errorf("policy: decision.mask strategy %q: want one of %v",
				r.Strategy, Strategies)
		}
		if r.Detector != "" && !validDetector(r.Detector) {
			return nil, fmt.Errorf("policy: decision.mask detector %q: want one of %v",
				r.Detector, Detectors)
		}
		if r.Column == "" && r.Detector == "" {
			return nil, fmt.Errorf("policy: decision.mask rule names neither column nor detector")
		}
		out = append(out, r)
	}
	return out, nil
}

// approval reads {approvers, timeout, scope}; timeout is a Go duration
// string ("15m") or a number of seconds.
func approval(raw any) (*Approval, error) {
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("policy: decision.approval is %T, want an object", raw)
	}
	a := &Approval{Scope: "once", Timeout: 15 * time.Minute}
	var err error
	if a.Approvers, err = stringList(m, "approvers"); err != nil {
		return nil, err
	}
	if len(a.Approvers) == 0 {
		return nil, fmt.Errorf("policy: decision.approval names no approvers")
	}
	switch t := m["timeout"].(type) {
	case nil:
	case string:
		if a.Timeout, err = time.ParseDuration(t); err != nil {
			return nil, fmt.Errorf("policy: decision.approval.timeout: %w", err)
		}
	case json.Number:
		secs, err := t.Float64()
		if err != nil {
			return nil, fmt.Errorf("policy: decision.approval.timeout: %w", err)
		}
		a.Timeout = time.Duration(secs * float64(time.Second))
	default:
		return nil, fmt.Errorf("policy: decision.approval.timeout is %T, "+
			"want a duration string or seconds", t)
	}
	if s, ok := m["scope"].(string); ok {
		a.Scope = s
	}
	switch a.Scope {
	case "once":
	case "window":
		a.Window = 10 * time.Minute
		if w, ok := m["window"].(string); ok {
			if a.Window, err = time.ParseDuration(w); err != nil {
				return nil, fmt.Errorf("policy: decision.approval.window: %w", err)
			}
		}
	default:
		return nil, fmt.Errorf("policy: decision.approval.scope %q: want once or window", a.Scope)
	}
	return a, nil
}
