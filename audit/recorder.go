package audit

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Recorder writes the events of one session. It is safe for concurrent use:
// the two directions of a connection may record at the same time, and each
// event gets the next seq in the order the calls take the Recorder's lock.
type Recorder struct {
	j  *Journal
	id string

	mu     sync.Mutex
	next   uint64            // seq of the next event
	prev   [sha256.Size]byte // hash of the last event; zero before seq 1
	ticket uint64            // the journal ticket of the last event
	ended  bool
}

// Begin starts a session: it picks a new session id (a UUIDv7, so ids sort
// by creation time to the millisecond) and records ev as seq 1, without
// waiting for fsync. ev.Kind is the caller's (session_start, or auth_failed
// for a login refused before the session began).
func (j *Journal) Begin(ev Event) (*Recorder, error) {
	id, err := newSessionID(time.Now())
	if err != nil {
		return nil, err
	}
	r := &Recorder{j: j, id: id, next: 1}
	if _, err := r.Record(ev); err != nil {
		return nil, err
	}
	return r, nil
}

// ID returns the session id.
func (r *Recorder) ID() string { return r.id }

// Record fills ev's SessionID, Seq (the next one, gap-free) and Time (now,
// when zero), chains it to the session's previous event and appends it. It
// does not wait for fsync: call Sync before acting on the event's
// durability. After a journal failure it returns an error wrapping
// ErrJournalUnavailable; after End, one wrapping ErrSessionEnded.
func (r *Recorder) Record(ev Event) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return 0, fmt.Errorf("audit: session %s: %w", r.id, ErrSessionEnded)
	}
	return r.append(ev)
}

// append encodes and enqueues ev as the next event; r.mu is held. A failed
// append consumes no seq.
func (r *Recorder) append(ev Event) (uint64, error) {
	ev.SessionID = r.id
	ev.Seq = r.next
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	canonical, err := json.Marshal(ev)
	if err != nil {
		return 0, fmt.Errorf("audit: encode event: %w", err)
	}
	line, hash := encodeRecord(r.prev, canonical)
	ticket, err := r.j.enqueue(line, &ev, hash)
	if err != nil {
		return 0, err
	}
	r.prev, r.ticket = hash, ticket
	r.next++
	return ev.Seq, nil
}

// Sync returns when every event this Recorder recorded so far is durable.
// The journal's writer fsyncs once for all events queued at that moment, of
// every session (group commit). Sync returns an error wrapping
// ErrJournalUnavailable when the journal has failed, even if this session's
// events were written, and ctx's error when ctx ends first. After a clean
// Journal.Close it returns nil: Close made every recorded event durable.
func (r *Recorder) Sync(ctx context.Context) error {
	r.mu.Lock()
	t := r.ticket
	r.mu.Unlock()
	return r.j.wait(ctx, t)
}

// End records the session_end event (ev.Kind is set here) and waits until
// it, and so every earlier event of the session, is durable. Later Record
// and End calls fail with ErrSessionEnded. A failed End still ends the
// Recorder.
func (r *Recorder) End(ev Event) error {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return fmt.Errorf("audit: session %s: %w", r.id, ErrSessionEnded)
	}
	r.ended = true
	ev.Kind = KindSessionEnd
	ev.Session = endSession(ev.Session, r.next, r.prev)
	_, err := r.append(ev)
	t := r.ticket
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.j.wait(context.Background(), t)
}

// endSession returns the Session of an end event with seq: a copy of s (or
// a new one) with Events and LastHash set.
func endSession(s *Session, seq uint64, prev [sha256.Size]byte) *Session {
	var out Session
	if s != nil {
		out = *s
	}
	out.Events = seq
	out.LastHash = hex.EncodeToString(prev[:])
	return &out
}

// newSessionID returns a UUIDv7 (RFC 9562) string for time now: 48 bits of
// Unix milliseconds, then random bits.
func newSessionID(now time.Time) (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[6:]); err != nil {
		return "", fmt.Errorf("audit: session id: %w", err)
	}
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(now.UnixMilli()))
	copy(u[:6], ms[2:])
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // variant 10
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:]), nil
}
