package audit

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// ErrSessionNotFound is wrapped by ReadSession and ReadRecords when the
// journal holds no event of the session.
var ErrSessionNotFound = errors.New("audit: session not found")

// Filter selects sessions for ReadSessions. Zero fields select everything.
type Filter struct {
	// Identity matches, ignoring case, the identity's principal, oid,
	// appid, upn, name or sub.
	Identity string
	// Connection is the connection name, exactly.
	Connection string
	// Since and Until select the sessions that were open at some time in
	// [Since, Until]: closed at or after Since (or still open), opened at or
	// before Until.
	Since, Until time.Time
}

// SessionSummary describes one session of the journal.
type SessionSummary struct {
	ID           string             `json:"session_id"`
	Connection   string             `json:"connection"`
	Protocol     string             `json:"protocol,omitempty"`
	Identity     *identity.Identity `json:"identity,omitempty"`
	Grant        string             `json:"grant,omitempty"`
	Client       string             `json:"client,omitempty"`
	Upstream     string             `json:"upstream,omitempty"`
	UpstreamUser string             `json:"upstream_user,omitempty"`
	Database     string             `json:"database,omitempty"`
	Application  string             `json:"application,omitempty"`
	Opened       time.Time          `json:"opened"`
	// Closed is the session end's time; zero while the session has no end
	// event (still open, or cut short by a crash).
	Closed     time.Time `json:"closed,omitzero"`
	DurationMS float64   `json:"duration_ms,omitempty"` // when Closed is set
	Commands   int       `json:"commands"`              // command events
	Events     int       `json:"events"`
	LastSeq    uint64    `json:"last_seq"`
	// AuthFailed is the reason of the session's auth_failed event, if any.
	AuthFailed string `json:"auth_failed,omitempty"`
	// EndReason is why the session ended abnormally, from its end event.
	EndReason string `json:"end_reason,omitempty"`
}

// ReadSessions summarises the sessions of the journal in dir that f
// selects, ordered by opening time. It reads without the writer's lock, so
// it works while vigil runs; a record the writer is still writing is left
// out. Damage in the journal is a *CorruptError.
func ReadSessions(dir string, f Filter) ([]SessionSummary, error) {
	byID := map[string]*SessionSummary{}
	err := scanJournal(dir, visitor{record: func(rec Record) error {
		var ev Event
		if err := json.Unmarshal(rec.Event, &ev); err != nil {
			return &CorruptError{Segment: rec.Segment, Offset: rec.Offset, Err: err}
		}
		s := byID[ev.SessionID]
		if s == nil {
			s = &SessionSummary{ID: ev.SessionID}
			byID[ev.SessionID] = s
		}
		s.Add(&ev)
		return nil
	}})
	if err != nil {
		return nil, err
	}
	out := make([]SessionSummary, 0, len(byID))
	for _, s := range byID {
		if !s.Closed.IsZero() {
			s.DurationMS = float64(s.Closed.Sub(s.Opened).Microseconds()) / 1000
		}
		if f.Match(s) {
			out = append(out, *s)
		}
	}
	slices.SortFunc(out, func(a, b SessionSummary) int {
		return cmp.Or(a.Opened.Compare(b.Opened), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

// Add folds one event of the session into the summary; every reader of
// sessions (the journal, Elasticsearch) builds summaries with it.
func (s *SessionSummary) Add(ev *Event) {
	s.Events++
	s.LastSeq = max(s.LastSeq, ev.Seq)
	fill(&s.Connection, ev.Connection)
	fill(&s.Protocol, ev.Protocol)
	fill(&s.Grant, ev.Grant)
	fill(&s.Client, ev.Client)
	fill(&s.Upstream, ev.Upstream)
	fill(&s.UpstreamUser, ev.UpstreamUser)
	fill(&s.Database, ev.Database)
	if s.Identity == nil {
		s.Identity = ev.Identity
	}
	if ev.Session != nil {
		fill(&s.Application, ev.Session.Application)
	}
	if ev.Seq == 1 {
		s.Opened = ev.Time
		if ev.Session != nil && !ev.Session.Opened.IsZero() {
			s.Opened = ev.Session.Opened
		}
	}
	switch ev.Kind {
	case KindCommand:
		s.Commands++
	case KindAuthFailed:
		fill(&s.AuthFailed, ev.Reason)
	case KindSessionEnd:
		s.Closed = ev.Time
		if ev.Session != nil && !ev.Session.Closed.IsZero() {
			s.Closed = ev.Session.Closed
		}
		s.EndReason = ev.Reason
	}
}

func fill(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// Match reports whether a whole session summary passes the filter.
func (f Filter) Match(s *SessionSummary) bool {
	if f.Connection != "" && s.Connection != f.Connection {
		return false
	}
	if f.Identity != "" && !matchIdentity(s.Identity, f.Identity) {
		return false
	}
	if !f.Since.IsZero() && !s.Closed.IsZero() && s.Closed.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && s.Opened.After(f.Until) {
		return false
	}
	return true
}

func matchIdentity(id *identity.Identity, want string) bool {
	if id == nil {
		return false
	}
	for _, v := range []string{id.Principal(), id.OID, id.AppID, id.UPN, id.Name, id.Sub} {
		if v != "" && strings.EqualFold(v, want) {
			return true
		}
	}
	return false
}

// ReadRecords returns the stored records of one session, in seq order, with
// their bytes exactly as written. Each record's hash has been checked
// against its bytes; the links between records are checked by VerifyChain.
func ReadRecords(dir, sessionID string) ([]Record, error) {
	if sessionID == "" {
		return nil, fmt.Errorf("%w: empty session id", ErrSessionNotFound)
	}
	quoted := []byte(`"session_id":"` + sessionID + `"`)
	type keyed struct {
		seq uint64
		rec Record
	}
	var recs []keyed
	err := scanJournal(dir, visitor{
		want: func(line []byte) bool { return bytes.Contains(line, quoted) },
		record: func(rec Record) error {
			var h struct {
				SessionID string `json:"session_id"`
				Seq       uint64 `json:"seq"`
			}
			if err := json.Unmarshal(rec.Event, &h); err != nil {
				return &CorruptError{Segment: rec.Segment, Offset: rec.Offset, Err: err}
			}
			if h.SessionID == sessionID {
				recs = append(recs, keyed{h.Seq, rec})
			}
			return nil
		}})
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrSessionNotFound, sessionID)
	}
	slices.SortStableFunc(recs, func(a, b keyed) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Record, len(recs))
	for i, k := range recs {
		out[i] = k.rec
	}
	return out, nil
}

// ReadSession returns the events of one session in seq order.
func ReadSession(dir, sessionID string) ([]Event, error) {
	recs, err := ReadRecords(dir, sessionID)
	if err != nil {
		return nil, err
	}
	evs := make([]Event, len(recs))
	for i, rec := range recs {
		if err := json.Unmarshal(rec.Event, &evs[i]); err != nil {
			return nil, &CorruptError{Segment: rec.Segment, Offset: rec.Offset, Err: err}
		}
	}
	return evs, nil
}

// VerifyChain checks one session's records, as ReadRecords returns them:
// seq runs 1, 2, 3... without a gap, every record names the same session,
// the first one's prev is the genesis (32 zero bytes) and every other's is
// the hash of the one before, and every hash matches its bytes. It returns
// the first problem found. It cannot see events missing after the last
// one; the signed checkpoints Verify checks are for that.
func VerifyChain(recs []Record) error {
	var prev [sha256.Size]byte
	var session string
	for i, rec := range recs {
		var h struct {
			SessionID string `json:"session_id"`
			Seq       uint64 `json:"seq"`
		}
		if err := json.Unmarshal(rec.Event, &h); err != nil {
			return fmt.Errorf("audit: record %d: %w", i+1, err)
		}
		if i == 0 {
			session = h.SessionID
		}
		switch {
		case h.SessionID != session:
			return fmt.Errorf("audit: session %s: seq %d belongs to session %s",
				session, h.Seq, h.SessionID)
		case h.Seq != uint64(i+1):
			return fmt.Errorf("audit: session %s: want seq %d, have %d", session, i+1, h.Seq)
		}
		p, err := decodeHash(rec.Prev)
		if err != nil || p != prev {
			return fmt.Errorf("audit: session %s: seq %d does not follow seq %d",
				session, h.Seq, i)
		}
		hash, err := decodeHash(rec.Hash)
		if err != nil || chainHash(prev, rec.Event) != hash {
			return fmt.Errorf("audit: session %s: seq %d: hash does not match its bytes",
				session, h.Seq)
		}
		prev = hash
	}
	return nil
}
