// Package audit records what every session did: events, the append-only
// journal on local disk that is vigil's source of truth, the per-session
// hash chain, and the readers behind `vigil audit`.
//
// A session's events are written in order through a Recorder, each with a
// gap-free seq starting at 1. Each event's canonical bytes (its JSON
// encoding) are stored verbatim, and its hash is SHA-256 over the previous
// event's hash and those bytes, so an edit, a removal or a reordering is
// detectable.
//
// # Writing
//
// Open takes the journal directory for one process (an flock on
// journal.lock) and starts a single writer goroutine. Journal.Begin starts a
// session and returns its Recorder; Recorder.Record appends without waiting;
// Recorder.Sync waits until the session's events are durable. The writer
// takes everything queued, writes it with one write and fsyncs once (group
// commit), so one fsync covers the events of every session waiting at that
// moment. The PostgreSQL processor syncs before a server answer reaches the
// client: no acknowledged command is lost in a crash.
//
// When a write or fsync fails, the journal fails closed: that call and every
// later Record, Sync, End and Begin return an error wrapping
// ErrJournalUnavailable, and nothing is dropped silently.
//
// # Storage
//
// The directory holds segment files named segment-00000001.jsonl,
// segment-00000002.jsonl, ...; the writer starts the next one when a batch
// would take the current one over Options.MaxSegmentSize. Each line is one
// record:
//
//	{"hash":"<64 hex>","prev":"<64 hex>","event":<the event's JSON>}
//
// hash = SHA-256(prev || event bytes), where prev is the hash of the
// session's previous event, and for seq 1 the genesis: 32 zero bytes. The
// events of a session appear in the files in seq order; sessions
// interleave. A Record keeps the bytes as stored (json.RawMessage).
//
// # Recovery
//
// A crash can leave the newest segment ending in part of a record. Open cuts
// such a torn tail back to the last whole record and logs a warning. Damage
// followed by whole records, or a record whose hash does not match its
// bytes, is not a crash's doing: Open and the readers return a
// *CorruptError naming the segment and the byte offset.
//
// # Reading
//
// ReadSessions, ReadSession and ReadRecords read the files without the
// writer's lock, so `vigil audit` works while vigil runs. VerifyChain checks
// one session's links; checking that no session or tail was dropped needs
// the signed checkpoints of a later version.
package audit
