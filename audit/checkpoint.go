package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// KeyFile is the name, inside the journal directory, of the Ed25519 key
// that signs checkpoints: a PKCS#8 "PRIVATE KEY" PEM block, mode 0600,
// created by the first Open.
const KeyFile = "checkpoint-key.ed25519"

// DefaultCheckpointInterval is how often the journal writes a checkpoint
// when Options.CheckpointInterval is zero.
const DefaultCheckpointInterval = 10 * time.Second

// End reasons the journal itself writes on session end events.
const (
	// ReasonCrash ends a session that a crash left without an end: the next
	// Open finds it open and records its end.
	ReasonCrash = "vigil restarted after a crash"
	// ReasonStopped ends a session that was still open when vigil stopped
	// cleanly (its Close wrote a final checkpoint listing it as open).
	ReasonStopped = "vigil stopped while the session was open"
)

// LoadKey reads the checkpoint signing key of the journal in dir.
func LoadKey(dir string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit: checkpoint key %s: not a PRIVATE KEY PEM block", KeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint key %s: %w", KeyFile, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit: checkpoint key %s: not an Ed25519 key", KeyFile)
	}
	return ek, nil
}

// loadOrCreateKey returns the key in dir, creating it (mode 0600) when the
// file does not exist.
func loadOrCreateKey(dir string) (ed25519.PrivateKey, bool, error) {
	k, err := LoadKey(dir)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	_, k, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, false, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	path := filepath.Join(dir, KeyFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	return k, true, nil
}

// PublicKeyPEM encodes pub as a PKIX "PUBLIC KEY" PEM block, the form
// `vigil audit pubkey` prints and `vigil audit verify --pubkey` reads.
func PublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey reads an Ed25519 public key as a PKIX "PUBLIC KEY" PEM
// block or as the base64 of its 32 bytes (a checkpoint's Key).
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("audit: public key: %w", err)
		}
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, errors.New("audit: public key: not an Ed25519 key")
		}
		return ek, nil
	}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, errors.New("audit: public key: want a PUBLIC KEY PEM block " +
			"or the base64 of 32 bytes")
	}
	return ed25519.PublicKey(raw), nil
}

// headState is what the journal keeps about a session between checkpoints:
// its head, and who and where for an end event the journal may write.
type headState struct {
	seq    uint64
	hash   [sha256.Size]byte
	ended  bool
	opened time.Time
	base   Event // the who and where fields of the session's first event seen
}

// noteHead updates the journal's view of a session after its event ev was
// queued with hash; j.mu is held.
func (j *Journal) noteHead(ev *Event, hash [sha256.Size]byte) {
	h := j.heads[ev.SessionID]
	if h == nil {
		h = &headState{}
		j.heads[ev.SessionID] = h
	}
	if !hasBase(&h.base) {
		h.base = baseOf(ev)
	}
	h.seq, h.hash = ev.Seq, hash
	h.ended = ev.Kind == KindSessionEnd
	if ev.Seq == 1 {
		h.opened = ev.Time
		if ev.Session != nil && !ev.Session.Opened.IsZero() {
			h.opened = ev.Session.Opened
		}
	}
	j.dirty[ev.SessionID] = struct{}{}
}

// baseOf copies the fields that say who and where.
func baseOf(ev *Event) Event {
	return Event{Connection: ev.Connection, Protocol: ev.Protocol, Identity: ev.Identity,
		Grant: ev.Grant, Client: ev.Client, Upstream: ev.Upstream,
		UpstreamUser: ev.UpstreamUser, Database: ev.Database}
}

// hasBase reports whether ev says who and where.
func hasBase(ev *Event) bool { return ev.Connection != "" || ev.Identity != nil }

// checkpointBody is the signed part of a checkpoint, in its canonical field
// order.
type checkpointBody struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Prev  string    `json:"prev"`
	Heads []Head    `json:"heads"`
	Open  int       `json:"open"`
	Final bool      `json:"final,omitempty"`
	Key   string    `json:"key"`
	// Recovery is set on the checkpoint a start after an unclean end writes.
	Recovery *Recovery `json:"recovery,omitempty"`
}

// queueCheckpoint appends a signed checkpoint to the pending bytes: the
// heads of every session with an event since the last checkpoint and of
// every open session. j.mu is held and the journal can take records.
func (j *Journal) queueCheckpoint(final bool) error {
	body := checkpointBody{Seq: j.cpSeq + 1, Time: time.Now().UTC(),
		Prev: hex.EncodeToString(j.cpPrev[:]), Heads: []Head{}, Final: final, Key: j.keyID,
		Recovery: j.recovery}
	j.recovery = nil
	for _, id := range slices.Sorted(maps.Keys(j.heads)) {
		h := j.heads[id]
		_, dirty := j.dirty[id]
		if !h.ended {
			body.Open++
		} else if !dirty {
			continue
		}
		body.Heads = append(body.Heads, Head{Session: id, Seq: h.seq,
			Hash: hex.EncodeToString(h.hash[:]), Ended: h.ended, Connection: h.base.Connection})
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("audit: encode checkpoint: %w", err)
	}
	sig := ed25519.Sign(j.key, raw)

	line := make([]byte, 0, len(raw)+120)
	line = append(line, checkpointPrefix...)
	line = append(line, raw...)
	line = append(line, `,"sig":"`...)
	line = base64.StdEncoding.AppendEncode(line, sig)
	line = append(line, "\"}\n"...)
	j.pending = append(j.pending, line...)
	j.queued++
	j.wake.Broadcast()

	j.cpSeq, j.cpPrev = body.Seq, sha256.Sum256(raw)
	for id, h := range j.heads {
		if h.ended {
			delete(j.heads, id)
		}
	}
	clear(j.dirty)
	return nil
}

// Checkpoint queues a checkpoint now and waits until it is durable. The
// journal also writes one every Options.CheckpointInterval on its own.
func (j *Journal) Checkpoint() error {
	j.mu.Lock()
	if err := j.unavailable(); err != nil {
		j.mu.Unlock()
		return err
	}
	if err := j.queueCheckpoint(false); err != nil {
		j.mu.Unlock()
		return err
	}
	t := j.queued
	j.mu.Unlock()
	return j.waitTicket(t)
}

// ticker writes a checkpoint every interval until the journal closes.
func (j *Journal) ticker(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-j.stop:
			return
		}
		j.mu.Lock()
		if j.unavailable() == nil {
			if err := j.queueCheckpoint(false); err != nil {
				j.log.Error("audit journal: checkpoint not written", "err", err)
			}
		}
		j.mu.Unlock()
	}
}

// loadState finds the journal's last checkpoint and replays the records
// after it, so that the checkpoint chain goes on from there and j.heads
// holds the sessions left without an end: those the checkpoint lists as
// open and those begun after it. stopped reports that the journal ends in
// the final checkpoint of a clean Close. A journal without checkpoints is
// replayed from its first record.
func (j *Journal) loadState(segs []int) (stopped bool, err error) {
	var last *Checkpoint
	from := 0
	for i := len(segs) - 1; i >= 0 && last == nil; i-- {
		_, err := scanSegment(filepath.Join(j.dir, segmentName(segs[i])), visitor{
			checkpoint: func(cp Checkpoint) error { last = &cp; return nil }})
		if err != nil {
			return false, err
		}
		from = i
	}
	if last != nil {
		j.cpSeq, j.cpPrev, stopped = last.Seq, sha256.Sum256(last.Raw), last.Final
		for _, h := range last.Heads {
			hash, err := decodeHash(h.Hash)
			if err != nil {
				return false, &CorruptError{Segment: last.Segment, Offset: last.Offset,
					Err: fmt.Errorf("checkpoint %d: head of %s: %w", last.Seq, h.Session, err)}
			}
			if !h.Ended {
				j.heads[h.Session] = &headState{seq: h.Seq, hash: hash}
			}
		}
	}

	// Replay what follows the checkpoint.
	after := func(seg string, off int64) bool {
		return last == nil || seg != last.Segment || off > last.Offset
	}
	err = scanSegments(j.dir, segs[from:], visitor{
		record: func(rec Record) error {
			if !after(rec.Segment, rec.Offset) {
				return nil
			}
			var ev Event
			if err := json.Unmarshal(rec.Event, &ev); err != nil {
				return &CorruptError{Segment: rec.Segment, Offset: rec.Offset, Err: err}
			}
			hash, _ := decodeHash(rec.Hash) // checked by the scan
			// Sessions that ended after the checkpoint stay, marked ended
			// and dirty: the next checkpoint must vouch for their last
			// events, or verify finds them covered by none.
			j.noteHead(&ev, hash)
			stopped = false
			return nil
		},
		checkpoint: func(cp Checkpoint) error {
			if after(cp.Segment, cp.Offset) {
				return &CorruptError{Segment: cp.Segment, Offset: cp.Offset,
					Err: errors.New("a checkpoint after the last one")}
			}
			return nil
		},
	})
	if err != nil {
		return false, err
	}
	return stopped, j.findBases(segs[:from+1])
}

// findBases fills in who and where for the open sessions whose events
// after the checkpoint did not say, from an event in segs that does (read
// newest segment first, stopping when every session is found).
func (j *Journal) findBases(segs []int) error {
	missing := map[string]*headState{}
	for id, h := range j.heads {
		if !h.ended && !hasBase(&h.base) {
			missing[id] = h
		}
	}
	for i := len(segs) - 1; i >= 0 && len(missing) > 0; i-- {
		found := map[string]bool{}
		err := scanSegments(j.dir, segs[i:i+1], visitor{
			want: func(line []byte) bool { return missing[lineSession(line)] != nil },
			record: func(rec Record) error {
				var ev Event
				if err := json.Unmarshal(rec.Event, &ev); err != nil {
					return &CorruptError{Segment: rec.Segment, Offset: rec.Offset, Err: err}
				}
				if h := missing[ev.SessionID]; h != nil && hasBase(&ev) {
					h.base, found[ev.SessionID] = baseOf(&ev), true
					if ev.Seq == 1 {
						h.opened = ev.Time
						if ev.Session != nil && !ev.Session.Opened.IsZero() {
							h.opened = ev.Session.Opened
						}
					}
				}
				return nil
			},
		})
		if err != nil {
			return err
		}
		for id := range found {
			delete(missing, id)
		}
	}
	return nil
}

// endDangling records an end for every session loadState left open, with
// the reason ReasonStopped or ReasonCrash, then a checkpoint, and waits
// until they are durable. It runs in Open, after the writer started.
func (j *Journal) endDangling(stopped bool) error {
	j.mu.Lock()
	var ids []string
	for _, id := range slices.Sorted(maps.Keys(j.heads)) {
		if !j.heads[id].ended {
			ids = append(ids, id)
		}
	}
	if j.unclean {
		j.recovery = &Recovery{Reason: "the journal did not end with a clean stop",
			After: j.cpSeq, Cut: j.cut, Ended: len(ids)}
	}
	if len(ids) == 0 && len(j.dirty) == 0 && j.recovery == nil {
		j.mu.Unlock()
		return nil
	}
	reason := ReasonCrash
	if stopped {
		reason = ReasonStopped
	}
	now := time.Now().UTC()
	for _, id := range ids {
		h := j.heads[id]
		ev := h.base
		ev.SessionID, ev.Seq, ev.Time, ev.Kind, ev.Reason = id, h.seq+1, now, KindSessionEnd, reason
		ev.Session = endSession(&Session{Opened: h.opened, Closed: now}, ev.Seq, h.hash)
		canonical, err := json.Marshal(ev)
		if err != nil {
			j.mu.Unlock()
			return fmt.Errorf("audit: encode event: %w", err)
		}
		line, hash := encodeRecord(h.hash, canonical)
		j.pending = append(j.pending, line...)
		j.queued++
		j.noteHead(&ev, hash)
	}
	if err := j.queueCheckpoint(false); err != nil {
		j.mu.Unlock()
		return err
	}
	t := j.queued
	j.mu.Unlock()
	if err := j.waitTicket(t); err != nil {
		return err
	}
	switch {
	case !stopped:
		// A crash, or a journal whose tail (with its final checkpoint)
		// was removed: vigil cannot tell them apart, an operator can.
		j.log.Warn("audit journal: it did not end with a clean stop (a crash, or its tail "+
			"was removed); ended the sessions left open", "alert", true, "sessions", len(ids),
			"reason", reason)
	case len(ids) > 0:
		j.log.Warn("audit journal: ended the sessions left open", "sessions", len(ids),
			"reason", reason)
	default:
		j.log.Info("audit journal: a checkpoint now covers the sessions that ended after " +
			"the last one")
	}
	j.mu.Lock()
	j.dangling = ids
	j.mu.Unlock()
	return nil
}

// Recovery says, in the checkpoint written by a start after an unclean end
// (a crash, or a journal whose tail with its final checkpoint was
// removed), what that start found and did, so that verify reports every
// such start.
type Recovery struct {
	Reason string `json:"reason"`
	// After is the seq of the last checkpoint found, 0 when none.
	After uint64 `json:"after"`
	// Cut is how many bytes of a torn or zero-filled tail were cut from
	// the newest segment.
	Cut int64 `json:"cut,omitempty"`
	// Ended is how many sessions were found open and ended.
	Ended int `json:"ended"`
}

// Dangling returns the sessions Open found without an end and ended (a
// crash or a stop cut them), so that what waited on their behalf, such as
// a request for approval, can be ended too.
func (j *Journal) Dangling() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.dangling)
}

// lineSession returns the session id of a record line without decoding it:
// the first "session_id" string in the line, or "".
func lineSession(line []byte) string {
	const key = `"session_id":"`
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return ""
	}
	rest := line[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}
