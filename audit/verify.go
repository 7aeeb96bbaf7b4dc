package audit

// Verification: `vigil audit verify` reads a Source and checks every
// session's chain and every checkpoint. JournalSource reads the local
// journal; the package audit/es implements Source over Elasticsearch.

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Checkpoint is a signed statement of the heads of the journal's sessions.
// The journal writes one every Options.CheckpointInterval, empty ones too,
// and one at a clean Close. Seq numbers checkpoints from 1 without a gap;
// Prev is the hex SHA-256 of the previous checkpoint's Raw bytes (64 zeros
// for the first), so checkpoints form a chain of their own.
type Checkpoint struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Prev string    `json:"prev"`
	// Heads are the heads of every session with an event since the previous
	// checkpoint and of every session still open, sorted by session id.
	Heads []Head `json:"heads"`
	// Open is the number of sessions open when the checkpoint was written.
	Open int `json:"open"`
	// Final is set on the checkpoint a clean Close writes: no session is
	// open and nothing follows until the next Open.
	Final bool `json:"final,omitempty"`
	// Recovery is set on the checkpoint of a start after an unclean end.
	Recovery *Recovery `json:"recovery,omitempty"`
	// Key is the signer's public key, base64 (standard encoding, 32 bytes).
	Key string `json:"key"`
	// Signature is the base64 Ed25519 signature over Raw. It is not part
	// of Raw.
	Signature string `json:"signature"`
	// Raw is the signed canonical bytes as stored (the JSON object holding
	// every field above except Signature).
	Raw json.RawMessage `json:"-"`

	// Segment and Offset say where a journal checkpoint starts; empty for
	// other sources.
	Segment string `json:"-"`
	Offset  int64  `json:"-"`
}

// Head is the last event of one session at the time of a checkpoint.
type Head struct {
	Session string `json:"session"`
	Seq     uint64 `json:"seq"`
	Hash    string `json:"hash"`
	// Ended is set when that event is the session's end.
	Ended bool `json:"ended,omitempty"`
	// Connection is the session's connection, so that a store holding only
	// some connections' sessions (Elasticsearch gets those with
	// export: siem) can be verified for those.
	Connection string `json:"connection,omitempty"`
}

// Source is what Verify reads: the local journal (JournalSource) or
// Elasticsearch (package audit/es).
type Source interface {
	// Sessions returns every session id stored.
	Sessions(ctx context.Context) ([]string, error)
	// Records returns one session's records in the order stored (seq order
	// expected; Verify reports any other order).
	Records(ctx context.Context, session string) ([]Record, error)
	// Checkpoints returns every checkpoint, oldest first, with Raw set.
	Checkpoints(ctx context.Context) ([]Checkpoint, error)
}

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// Session limits the chain checks to one session; checkpoints are still
	// checked, and only their heads of that session are compared.
	Session string
	// PublicKey is the key checkpoints must be signed with. When nil, the
	// key named in the checkpoints is used, which proves only that they
	// were all signed by one key: pass the key from `vigil audit pubkey`
	// to prove they were signed by this vigil.
	PublicKey ed25519.PublicKey
	// Progress, when set, is called after each session with the number of
	// sessions checked and the total.
	Progress func(done, total int)
	// Connections, when set, are the only connections whose sessions the
	// source is expected to hold: checkpoint heads of other connections'
	// sessions are not looked for. A head without a connection (written
	// before heads named one) is always looked for.
	Connections []string
}

// Problem kinds reported by Verify. Only ProblemSessionOpen, and
// ProblemMissingCheckpoint on a live journal, can be warnings.
const (
	// A record's hash does not match its bytes (edited in place).
	ProblemHashMismatch = "hash_mismatch"
	// A record's prev is not the hash of the event before it (an edited
	// record re-hashed, or one put in from elsewhere).
	ProblemChainBroken = "chain_broken"
	// Seq numbers skip: events were removed.
	ProblemSeqGap = "seq_gap"
	// Records are not stored in seq order.
	ProblemReordered = "reordered"
	// The same seq is stored twice.
	ProblemDuplicate = "duplicate"
	// A record names another session than the one it was read for.
	ProblemWrongSession = "wrong_session"
	// A session end whose events or last_hash disagree with its place.
	ProblemEndMismatch = "end_mismatch"
	// A checkpoint names a head the session does not reach: its last
	// events were removed.
	ProblemMissingTail = "missing_tail"
	// A checkpoint names a head whose hash, or end, differs from the
	// stored event of that seq: the session was rewritten.
	ProblemHeadMismatch = "head_mismatch"
	// A checkpoint names a session that is not stored.
	ProblemMissingSession = "missing_session"
	// A session without an end that the journal says is still open (live
	// journal), or that vigil stopped with open: a warning.
	ProblemSessionOpen = "session_open"
	// A session without an end that nothing says is open: cut short.
	ProblemSessionTruncated = "session_truncated"
	// Events no checkpoint vouches for although one should: stored before
	// a checkpoint that does not name them, or after the final one.
	ProblemNotCovered = "not_covered"
	// A checkpoint whose signature fails, or signed by another key.
	ProblemBadSignature = "bad_signature"
	// Checkpoint seq numbers skip, or a checkpoint's prev is not the hash
	// of the one before: checkpoints were removed or replaced.
	ProblemCheckpointChain = "checkpoint_chain"
	// The journal is not held by a running vigil yet does not end in the
	// final checkpoint of a clean stop: its last checkpoints were removed,
	// or vigil crashed and was not started again (starting it recovers).
	ProblemMissingCheckpoint = "missing_checkpoint"
	// vigil started on a journal that did not end with a clean stop (a
	// warning): a crash does that, and so does removing the journal's
	// tail with its final checkpoint; only the second is tampering.
	ProblemRecovered = "recovered"
	// A record or checkpoint cannot be read at all.
	ProblemCorrupt = "corrupt"
)

// Problem is one finding of Verify.
type Problem struct {
	Session string `json:"session,omitempty"`
	Seq     uint64 `json:"seq,omitempty"`
	Kind    string `json:"kind"`
	Detail  string `json:"detail"`
	// Warning marks a finding that is not evidence of tampering (a session
	// still open while the journal is live).
	Warning bool `json:"warning,omitempty"`
}

// Report is the outcome of Verify.
type Report struct {
	Sessions    int       `json:"sessions"`
	Records     int       `json:"records"`
	Checkpoints int       `json:"checkpoints"`
	Problems    []Problem `json:"problems"`
}

// OK reports whether Verify found no problem other than warnings.
func (r *Report) OK() bool {
	for _, p := range r.Problems {
		if !p.Warning {
			return false
		}
	}
	return true
}

// LiveSource is implemented by a Source that can tell whether a writer is
// running on it. Verify treats a Source without it as live: it cannot tell
// a crash, or a removed final checkpoint, from a journal still being
// written.
type LiveSource interface {
	Live(ctx context.Context) (bool, error)
}

// Verify checks src: every session's hash chain, seq numbers and order;
// every checkpoint's signature and the chain of checkpoints; that every
// session head a checkpoint names is stored (so that dropping a session,
// or its last events, shows); and that every session has an end, or is
// open according to the newest checkpoint on a live journal. It returns an
// error only when src cannot be read; what it finds is in the Report.
func Verify(ctx context.Context, src Source, opts VerifyOptions) (*Report, error) {
	v := &verifier{opts: opts, rep: &Report{Problems: []Problem{}},
		claims: map[string][]claim{}}

	// Checkpoints: signatures and chain, then what they claim.
	cps, err := src.Checkpoints(ctx)
	if err != nil {
		return v.readFailure(err)
	}
	v.rep.Checkpoints = len(cps)
	v.checkCheckpoints(cps)

	// Is a writer running? A source that cannot tell counts as live.
	v.live = true
	if ls, ok := src.(LiveSource); ok {
		if v.live, err = ls.Live(ctx); err != nil {
			return nil, err
		}
	}

	// Sessions: those stored, and those a checkpoint names.
	ids, err := src.Sessions(ctx)
	if err != nil {
		return v.readFailure(err)
	}
	stored := map[string]bool{}
	for _, id := range ids {
		stored[id] = true
	}
	for _, id := range slices.Sorted(maps.Keys(v.claims)) {
		if !stored[id] && v.inScope(id) {
			c := v.newest(id)
			v.add(id, c.head.Seq, ProblemMissingSession, fmt.Sprintf(
				"checkpoint %d names seq %d of this session; no event of it is stored",
				c.cp, c.head.Seq))
		}
	}
	var scope []string
	for _, id := range ids {
		if v.inScope(id) {
			scope = append(scope, id)
		}
	}
	for i, id := range scope {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		recs, err := src.Records(ctx, id)
		if err != nil {
			if rep, rerr := v.readFailure(err); rerr != nil {
				return rep, rerr
			}
			continue
		}
		v.rep.Sessions++
		v.rep.Records += len(recs)
		v.checkSession(id, recs)
		if opts.Progress != nil {
			opts.Progress(i+1, len(scope))
		}
	}

	v.checkTail(len(ids) > 0)
	return v.rep, nil
}

// claim is one checkpoint's head of a session.
type claim struct {
	cp    uint64 // the checkpoint's seq
	head  Head
	open  bool // named open by the newest checkpoint
	final bool // by the final checkpoint of a clean stop
}

type verifier struct {
	opts VerifyOptions
	rep  *Report
	live bool

	// From the checkpoints whose signature holds.
	claims map[string][]claim
	last   *Checkpoint // the newest checkpoint, nil when none
}

func (v *verifier) inScope(id string) bool {
	return v.opts.Session == "" || v.opts.Session == id
}

func (v *verifier) add(session string, seq uint64, kind, detail string) {
	v.rep.Problems = append(v.rep.Problems, Problem{Session: session, Seq: seq,
		Kind: kind, Detail: detail})
}

func (v *verifier) warn(session string, seq uint64, kind, detail string) {
	v.rep.Problems = append(v.rep.Problems, Problem{Session: session, Seq: seq,
		Kind: kind, Detail: detail, Warning: true})
}

// readFailure turns a *CorruptError from the source into a problem; other
// errors are returned.
func (v *verifier) readFailure(err error) (*Report, error) {
	var ce *CorruptError
	if !errors.As(err, &ce) {
		return nil, err
	}
	v.add("", 0, ProblemCorrupt, ce.Error())
	return v.rep, nil
}

// newest returns the claim with the highest seq on a session.
func (v *verifier) newest(id string) claim {
	var best claim
	for _, c := range v.claims[id] {
		if c.head.Seq >= best.head.Seq {
			best = c
		}
	}
	return best
}

// checkCheckpoints checks each checkpoint's key and signature and its link
// to the one before, and collects the heads of those whose signature holds.
func (v *verifier) checkCheckpoints(cps []Checkpoint) {
	pub := v.opts.PublicKey
	prevSeq, prev := uint64(0), [sha256.Size]byte{}
	for i := range cps {
		cp := &cps[i]
		if pub == nil {
			pub, _ = decodeKey(cp.Key)
		}
		if r := cp.Recovery; r != nil {
			v.rep.Problems = append(v.rep.Problems, Problem{Seq: cp.Seq,
				Kind: ProblemRecovered, Warning: true, Detail: fmt.Sprintf(
					"checkpoint %d: vigil started on a journal that did not end with a clean "+
						"stop (after checkpoint %d; %d bytes cut, %d sessions ended): a crash "+
						"does this, and so does removing the journal's tail", cp.Seq, r.After,
					r.Cut, r.Ended)})
		}
		if signed := v.checkSignature(cp, pub); signed {
			for _, h := range cp.Heads {
				if h.Connection != "" && len(v.opts.Connections) > 0 &&
					!slices.Contains(v.opts.Connections, h.Connection) {
					continue
				}
				v.claims[h.Session] = append(v.claims[h.Session], claim{cp: cp.Seq, head: h})
			}
		}
		switch {
		case cp.Seq != prevSeq+1:
			v.add("", cp.Seq, ProblemCheckpointChain, fmt.Sprintf(
				"checkpoint %d follows checkpoint %d", cp.Seq, prevSeq))
		case cp.Prev != hex.EncodeToString(prev[:]):
			v.add("", cp.Seq, ProblemCheckpointChain, fmt.Sprintf(
				"checkpoint %d does not chain to checkpoint %d: its prev is not that "+
					"checkpoint's hash", cp.Seq, prevSeq))
		}
		prevSeq, prev = cp.Seq, sha256.Sum256(cp.Raw)
	}
	if len(cps) == 0 {
		return
	}
	v.last = &cps[len(cps)-1]
	for _, h := range v.last.Heads {
		cs := v.claims[h.Session]
		if n := len(cs); n > 0 && cs[n-1].cp == v.last.Seq && !h.Ended {
			cs[n-1].open, cs[n-1].final = true, v.last.Final
		}
	}
}

// checkSignature reports whether cp is signed by pub; it adds the problem
// when not.
func (v *verifier) checkSignature(cp *Checkpoint, pub ed25519.PublicKey) bool {
	sig, err := base64.StdEncoding.DecodeString(cp.Signature)
	key, kerr := decodeKey(cp.Key)
	switch {
	case pub == nil || kerr != nil:
		v.add("", cp.Seq, ProblemBadSignature, fmt.Sprintf(
			"checkpoint %d: no usable public key", cp.Seq))
	case !key.Equal(pub):
		v.add("", cp.Seq, ProblemBadSignature, fmt.Sprintf(
			"checkpoint %d is signed by another key (%s) than %s", cp.Seq, cp.Key,
			base64.StdEncoding.EncodeToString(pub)))
	case err != nil || !ed25519.Verify(pub, cp.Raw, sig):
		v.add("", cp.Seq, ProblemBadSignature, fmt.Sprintf(
			"checkpoint %d: the signature does not match its bytes", cp.Seq))
	default:
		return true
	}
	return false
}

func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("not an Ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// stored is one record with its decoded place.
type stored struct {
	rec     Record
	session string
	seq     uint64
	kind    Kind
	end     *Session
}

// checkSession checks one session's records, in the order stored.
func (v *verifier) checkSession(id string, recs []Record) {
	// Each record on its own: its bytes and its hash.
	var list []stored
	for _, rec := range recs {
		var h struct {
			SessionID string   `json:"session_id"`
			Seq       uint64   `json:"seq"`
			Kind      Kind     `json:"kind"`
			Session   *Session `json:"session"`
		}
		if err := json.Unmarshal(rec.Event, &h); err != nil {
			v.add(id, 0, ProblemCorrupt, fmt.Sprintf("%s: %v", where(rec), err))
			continue
		}
		if h.SessionID != id {
			v.add(id, h.Seq, ProblemWrongSession, fmt.Sprintf(
				"%s: the event belongs to session %s", where(rec), h.SessionID))
			continue
		}
		prev, perr := decodeHash(rec.Prev)
		hash, herr := decodeHash(rec.Hash)
		if perr != nil || herr != nil || chainHash(prev, rec.Event) != hash {
			v.add(id, h.Seq, ProblemHashMismatch, where(rec)+
				": the hash does not match the event's bytes")
		}
		list = append(list, stored{rec: rec, session: h.SessionID, seq: h.Seq, kind: h.Kind,
			end: h.Session})
	}
	if len(list) == 0 {
		return
	}

	// Order as stored, then the chain in seq order.
	for i := 1; i < len(list); i++ {
		if list[i].seq < list[i-1].seq {
			v.add(id, list[i].seq, ProblemReordered, fmt.Sprintf(
				"seq %d is stored after seq %d", list[i].seq, list[i-1].seq))
			break
		}
	}
	slices.SortStableFunc(list, func(a, b stored) int { return cmp.Compare(a.seq, b.seq) })
	list = v.checkLinks(id, list)

	// What the checkpoints say about the session.
	last := list[len(list)-1]
	bySeq := make(map[uint64]*stored, len(list))
	for i := range list {
		bySeq[list[i].seq] = &list[i]
	}
	v.checkClaims(id, last, bySeq)
	v.checkEnd(id, last)
	v.checkCovered(id, list)
}

// checkLinks checks seq numbers and prev links of records sorted by seq,
// and returns them without duplicates.
func (v *verifier) checkLinks(id string, list []stored) []stored {
	out := list[:0:0]
	var want uint64 = 1
	var prev [sha256.Size]byte // genesis
	for _, s := range list {
		switch {
		case s.seq < want:
			v.add(id, s.seq, ProblemDuplicate, fmt.Sprintf("seq %d is stored twice", s.seq))
			continue
		case s.seq > want:
			missing := fmt.Sprintf("seq %d is missing", want)
			if s.seq-1 > want {
				missing = fmt.Sprintf("seq %d to %d are missing", want, s.seq-1)
			}
			v.add(id, want, ProblemSeqGap, missing)
		case s.rec.Prev != hex.EncodeToString(prev[:]):
			what := fmt.Sprintf("the hash of seq %d", s.seq-1)
			if s.seq == 1 {
				what = "the genesis"
			}
			v.add(id, s.seq, ProblemChainBroken, fmt.Sprintf(
				"%s: prev is not %s", where(s.rec), what))
		}
		if s.kind == KindSessionEnd && s.end != nil && s.end.Events != 0 &&
			(s.end.Events != s.seq || s.end.LastHash != s.rec.Prev) {
			v.add(id, s.seq, ProblemEndMismatch, fmt.Sprintf(
				"the end says %d events after %s", s.end.Events, s.end.LastHash))
		}
		prev, _ = decodeHash(s.rec.Hash)
		want = s.seq + 1
		out = append(out, s)
	}
	return out
}

// checkClaims compares the heads the checkpoints name with the records.
func (v *verifier) checkClaims(id string, last stored, bySeq map[uint64]*stored) {
	tailReported := false
	for _, c := range v.claims[id] {
		s := bySeq[c.head.Seq]
		switch {
		case s == nil && c.head.Seq > last.seq:
			if !tailReported {
				n := v.newest(id)
				v.add(id, last.seq+1, ProblemMissingTail, fmt.Sprintf(
					"checkpoint %d names seq %d as the head; the session ends at seq %d",
					n.cp, n.head.Seq, last.seq))
				tailReported = true
			}
		case s == nil: // inside a gap, reported as seq_gap
		case s.rec.Hash != c.head.Hash:
			v.add(id, c.head.Seq, ProblemHeadMismatch, fmt.Sprintf(
				"checkpoint %d names hash %s for seq %d; the stored event's is %s",
				c.cp, c.head.Hash, c.head.Seq, s.rec.Hash))
		case c.head.Ended && s.kind != KindSessionEnd:
			v.add(id, c.head.Seq, ProblemHeadMismatch, fmt.Sprintf(
				"checkpoint %d names seq %d as the session's end; it is a %s event",
				c.cp, c.head.Seq, s.kind))
		}
	}
}

// checkEnd reports a session without an end. It is a warning when the
// newest checkpoint names the session open, or when the session began after
// it: the journal is live, or vigil stopped with the session open (a clean
// stop, or a crash; the next start records the end). Otherwise the session
// was cut short.
func (v *verifier) checkEnd(id string, last stored) {
	if last.kind == KindSessionEnd {
		return
	}
	n := v.newest(id)
	if n.head.Ended {
		return // the end was stored and is gone: reported as missing_tail
	}
	begunAfter := v.last == nil || n.head.Seq == 0
	switch {
	case v.live && (n.open || begunAfter):
		v.warn(id, last.seq, ProblemSessionOpen,
			"no session end yet: the session is open in a running journal")
	case n.open && n.final:
		v.warn(id, last.seq, ProblemSessionOpen, "no session end: vigil stopped cleanly "+
			"with the session open; its next start records the end")
	case !v.live && (n.open || begunAfter) && (v.last == nil || !v.last.Final):
		v.warn(id, last.seq, ProblemSessionOpen, "no session end: vigil stopped without "+
			"a clean close (a crash?); its next start records the end")
	default:
		v.add(id, last.seq, ProblemSessionTruncated, fmt.Sprintf(
			"the session has no end after seq %d and no checkpoint says it is open", last.seq))
	}
}

// checkCovered reports records no checkpoint names although one should:
// stored before the newest checkpoint (when the source gives places), or
// anywhere after a clean stop.
func (v *verifier) checkCovered(id string, list []stored) {
	if v.last == nil {
		return
	}
	covered := v.newest(id).head.Seq
	for _, s := range list {
		if s.seq <= covered {
			continue
		}
		switch {
		case before(s.rec, v.last):
			v.add(id, s.seq, ProblemNotCovered, fmt.Sprintf(
				"%s is stored before checkpoint %d, and no checkpoint names it",
				where(s.rec), v.last.Seq))
		case !v.live && v.last.Final:
			v.add(id, s.seq, ProblemNotCovered, fmt.Sprintf(
				"stored after the final checkpoint %d of a clean stop", v.last.Seq))
		default:
			continue
		}
		return
	}
}

// before reports whether rec is stored before cp, when both have a place.
func before(rec Record, cp *Checkpoint) bool {
	if rec.Segment == "" || cp.Segment == "" {
		return false
	}
	return cmp.Or(strings.Compare(rec.Segment, cp.Segment), cmp.Compare(rec.Offset, cp.Offset)) < 0
}

// checkTail checks that a journal no writer holds ends in a final
// checkpoint.
func (v *verifier) checkTail(anyRecords bool) {
	switch {
	case v.last == nil && !anyRecords:
	case v.last == nil && v.live:
		v.warn("", 0, ProblemMissingCheckpoint, "no checkpoint yet")
	case v.last == nil:
		v.add("", 0, ProblemMissingCheckpoint, "the journal holds events and no checkpoint")
	case !v.live && !v.last.Final:
		v.add("", v.last.Seq+1, ProblemMissingCheckpoint, fmt.Sprintf(
			"no vigil holds the journal and checkpoint %d is not the final one of a "+
				"clean stop: later checkpoints were removed, or vigil crashed and was not "+
				"started again (starting it recovers the journal)", v.last.Seq))
	}
}

// where names a record's place, when the source gives one.
func where(rec Record) string {
	if rec.Segment == "" {
		return "record"
	}
	return fmt.Sprintf("%s offset %d", rec.Segment, rec.Offset)
}
