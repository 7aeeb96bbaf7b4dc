package es

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/vigilaudit/vigil/audit"
	"github.com/vigilaudit/vigil/identity"
)

// ECSVersion is the Elastic Common Schema version the documents follow.
const ECSVersion = "8.11.0"

// Document is one audit event as stored in Elasticsearch: ECS fields for
// what ECS names, vigil.* for the rest. The event's canonical bytes are in
// Event.Original, verbatim; they, not the other fields, are what a reader
// decodes and a verifier hashes.
type Document struct {
	Timestamp   time.Time `json:"@timestamp"`
	ECS         ecs       `json:"ecs"`
	Event       Event     `json:"event"`
	User        *User     `json:"user,omitempty"`
	Source      *Endpoint `json:"source,omitempty"`
	Destination *Endpoint `json:"destination,omitempty"`
	Vigil       Vigil     `json:"vigil"`
}

type ecs struct {
	Version string `json:"version"`
}

// Event is ECS event.*.
type Event struct {
	Kind     string   `json:"kind"`               // "event"; "state" for a checkpoint
	Category []string `json:"category,omitempty"` // authentication, session, database, iam
	Type     []string `json:"type"`               // start, end, access, info, error
	Action   string   `json:"action"`             // the vigil kind: session_start, command, ...
	Outcome  string   `json:"outcome"`            // success, failure, unknown
	Sequence uint64   `json:"sequence"`           // seq within the session
	Hash     string   `json:"hash"`               // hex chain hash; a checkpoint's SHA-256
	Original string   `json:"original"`           // the canonical bytes
	Dataset  string   `json:"dataset"`            // vigil.audit
	Reason   string   `json:"reason,omitempty"`
	// Duration is the command's duration in nanoseconds (results only).
	Duration int64 `json:"duration,omitempty"`
}

// User is ECS user.*: who presented the token.
type User struct {
	ID     string   `json:"id,omitempty"`     // Entra object id (or sub)
	Name   string   `json:"name,omitempty"`   // the principal: UPN, name or app id
	Domain string   `json:"domain,omitempty"` // tenant id
	Roles  []string `json:"roles,omitempty"`  // app roles
}

// Endpoint is ECS source.* or destination.*.
type Endpoint struct {
	Address string `json:"address,omitempty"` // as recorded, host:port
	IP      string `json:"ip,omitempty"`
	Port    int    `json:"port,omitempty"`
}

// Vigil is vigil.*: every event field ECS has no place for.
type Vigil struct {
	SessionID    string             `json:"session_id,omitempty"`
	PrevHash     string             `json:"prev_hash,omitempty"`
	Connection   string             `json:"connection,omitempty"`
	Protocol     string             `json:"protocol,omitempty"`
	Grant        string             `json:"grant,omitempty"`
	UpstreamUser string             `json:"upstream_user,omitempty"`
	Database     string             `json:"database,omitempty"`
	Identity     *identity.Identity `json:"identity,omitempty"`
	Command      *audit.Command     `json:"command,omitempty"`
	Decision     *audit.Decision    `json:"decision,omitempty"`
	Result       *audit.Result      `json:"result,omitempty"`
	Approval     *audit.Approval    `json:"approval,omitempty"`
	Session      *audit.Session     `json:"session,omitempty"`
	Reason       string             `json:"reason,omitempty"`
	ReasonCode   string             `json:"reason_code,omitempty"`
	Checkpoint   *Checkpoint        `json:"checkpoint,omitempty"`
}

// Checkpoint is vigil.checkpoint: the fields of a signed checkpoint, for
// search. The signed bytes are in event.original, verbatim; the reader
// decodes them, not these fields.
type Checkpoint struct {
	Seq       uint64       `json:"seq"`
	Prev      string       `json:"prev"`
	Key       string       `json:"key"`
	Signature string       `json:"signature"`
	Open      int          `json:"open"`
	Final     bool         `json:"final,omitempty"`
	Heads     []audit.Head `json:"heads"`
}

// DocumentID is the Elasticsearch _id of an event: "<session_id>:<seq>".
func DocumentID(sessionID string, seq uint64) string {
	return sessionID + ":" + strconv.FormatUint(seq, 10)
}

// CheckpointID is the Elasticsearch _id of a checkpoint:
// "checkpoint:<key id>:<seq>". The key id (16 hex digits of SHA-256 over
// the signer's key as written in the checkpoint) keeps apart the
// checkpoints of several vigil replicas shipping into one data stream, each
// with its own journal and key.
func CheckpointID(cp *audit.Checkpoint) string {
	sum := sha256.Sum256([]byte(cp.Key))
	return "checkpoint:" + hex.EncodeToString(sum[:8]) + ":" + strconv.FormatUint(cp.Seq, 10)
}

// NewCheckpointDocument builds the document of one journal checkpoint.
// event.original holds cp.Raw, the signed bytes, verbatim; event.hash is
// their SHA-256, which the next checkpoint names as its prev.
func NewCheckpointDocument(cp *audit.Checkpoint) (*Document, error) {
	if len(cp.Raw) == 0 || cp.Seq == 0 {
		return nil, fmt.Errorf("es: checkpoint at %s:%d has no signed bytes or seq",
			cp.Segment, cp.Offset)
	}
	sum := sha256.Sum256(cp.Raw)
	return &Document{
		Timestamp: cp.Time.UTC(),
		ECS:       ecs{Version: ECSVersion},
		Event: Event{
			Kind:     "state",
			Type:     []string{"info"},
			Action:   "checkpoint",
			Outcome:  "success",
			Sequence: cp.Seq,
			Hash:     hex.EncodeToString(sum[:]),
			Original: string(cp.Raw),
			Dataset:  "vigil.audit",
		},
		Vigil: Vigil{Checkpoint: &Checkpoint{Seq: cp.Seq, Prev: cp.Prev, Key: cp.Key,
			Signature: cp.Signature, Open: cp.Open, Final: cp.Final, Heads: cp.Heads}},
	}, nil
}

// NewDocument builds the document of one journal record. It fails when the
// record's event bytes are not an audit.Event.
func NewDocument(rec audit.Record) (*Document, *audit.Event, error) {
	var ev audit.Event
	if err := json.Unmarshal(rec.Event, &ev); err != nil {
		return nil, nil, fmt.Errorf("es: decode event at %s:%d: %w", rec.Segment, rec.Offset, err)
	}
	if ev.SessionID == "" || ev.Seq == 0 {
		return nil, nil, fmt.Errorf("es: event at %s:%d has no session_id or seq",
			rec.Segment, rec.Offset)
	}
	d := &Document{
		Timestamp: ev.Time.UTC(),
		ECS:       ecs{Version: ECSVersion},
		Event: Event{
			Kind:     "event",
			Action:   string(ev.Kind),
			Sequence: ev.Seq,
			Hash:     rec.Hash,
			Original: string(rec.Event),
			Dataset:  "vigil.audit",
			Reason:   ev.Reason,
		},
		Source:      endpoint(ev.Client),
		Destination: endpoint(ev.Upstream),
		Vigil: Vigil{
			SessionID:    ev.SessionID,
			PrevHash:     rec.Prev,
			Connection:   ev.Connection,
			Protocol:     ev.Protocol,
			Grant:        ev.Grant,
			UpstreamUser: ev.UpstreamUser,
			Database:     ev.Database,
			Identity:     ev.Identity,
			Command:      ev.Command,
			Decision:     ev.Decision,
			Result:       ev.Result,
			Approval:     ev.Approval,
			Session:      ev.Session,
			Reason:       ev.Reason,
			ReasonCode:   ev.ReasonCode,
		},
	}
	d.Event.Category, d.Event.Type, d.Event.Outcome = classify(&ev)
	if ev.Result != nil {
		d.Event.Duration = int64(ev.Result.Duration * float64(time.Millisecond))
	}
	if id := ev.Identity; id != nil {
		d.User = &User{ID: id.OID, Name: id.Principal(), Domain: id.TID, Roles: id.Roles}
		if d.User.ID == "" {
			d.User.ID = id.Sub
		}
	}
	return d, &ev, nil
}

// classify gives an event its ECS categorisation.
func classify(ev *audit.Event) (category, typ []string, outcome string) {
	switch ev.Kind {
	case audit.KindSessionStart:
		return []string{"authentication", "session"}, []string{"start"}, "success"
	case audit.KindAuthFailed:
		return []string{"authentication"}, []string{"start"}, "failure"
	case audit.KindSessionEnd:
		if ev.Reason != "" {
			return []string{"session"}, []string{"end"}, "failure"
		}
		return []string{"session"}, []string{"end"}, "success"
	case audit.KindCommand:
		switch {
		case ev.Decision == nil:
			return []string{"database"}, []string{"access"}, "unknown"
		case !ev.Decision.Allowed:
			return []string{"database"}, []string{"access", "denied"}, "failure"
		}
		return []string{"database"}, []string{"access", "allowed"}, "unknown"
	case audit.KindResult:
		if ev.Result == nil {
			return []string{"database"}, []string{"info"}, "unknown"
		}
		switch ev.Result.Status {
		case audit.StatusOK:
			return []string{"database"}, []string{"info"}, "success"
		case audit.StatusError:
			return []string{"database"}, []string{"error"}, "failure"
		case audit.StatusDenied:
			return []string{"database"}, []string{"denied"}, "failure"
		}
		return []string{"database"}, []string{"info"}, "unknown"
	case audit.KindApproval:
		return []string{"iam"}, []string{"change"}, "unknown"
	}
	return []string{"session"}, []string{"info"}, "unknown"
}

// endpoint splits a recorded host:port; the raw value is kept in address.
func endpoint(addr string) *Endpoint {
	if addr == "" {
		return nil
	}
	e := &Endpoint{Address: addr}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if ip := net.ParseIP(host); ip != nil {
		e.IP = ip.String()
	}
	if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65536 {
		e.Port = p
	}
	return e
}
