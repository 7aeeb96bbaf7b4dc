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
// takes everything queued, writes it with one write and makes it durable
// with one fdatasync (group commit), so one sync covers the events of every
// session waiting at that moment. The PostgreSQL processor syncs before a server answer reaches the
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
// event record:
//
//	{"hash":"<64 hex>","prev":"<64 hex>","event":<the event's JSON>}
//
// hash = SHA-256(prev || event bytes), where prev is the hash of the
// session's previous event, and for seq 1 the genesis: 32 zero bytes. The
// events of a session appear in the files in seq order; sessions
// interleave. A Record keeps the bytes as stored (json.RawMessage). A
// session's end event restates its seq (Session.Events) and the hash
// before it (Session.LastHash).
//
// The segment being written is preallocated: the writer fills it with
// zeros a chunk at a time (4 MiB, or MaxSegmentSize when smaller) and
// fsyncs them whenever the write position comes within a quarter chunk of
// their end, never past MaxSegmentSize plus one chunk. Records are then
// written in place at the logical end and made durable with fdatasync,
// which need not commit the file's size (on ext4 about 0.12 ms instead of
// 0.19 ms for an append and fsync). A batch larger than 1 MiB is written
// and synced in pieces of at most 1 MiB. Writing zeros, not fallocate: an
// unwritten extent would still cost a metadata commit. When preallocation
// fails (a full disk, a file size limit) the writer writes on without it,
// and fails closed only when the records themselves cannot be written. On
// rotation and on a clean Close the segment is truncated to its last
// record and fsynced, so a finished segment has no zero tail.
//
// The logical end of a segment is the end of its last whole record: a 0
// byte where a record would start, or in a line (no record holds one: JSON
// escapes it), marks it. Every reader stops there, reading the zeros
// neither as a line nor as damage: Open, ReadSessions, ReadSession,
// ReadRecords, JournalSource, and package audit/es's reader, which leaves
// the zeros as not yet written.
//
// # Checkpoints
//
// Every Options.CheckpointInterval, also when nothing happened, and at a
// clean Close (Final set), the writer appends a checkpoint line through the
// same queue, so it is ordered with the events it covers:
//
//	{"checkpoint":{"seq":N,"time":...,"prev":"<64 hex>","heads":[...],
//	 "open":K,"final":true,"key":"<base64>"},"sig":"<base64>"}
//
// The heads are the last seq and hash of every session with an event since
// the previous checkpoint and of every open session (Ended marks a head
// that is the session's end). Checkpoints are numbered from 1 and prev is
// SHA-256 of the previous checkpoint's bytes, so they chain. sig is the
// Ed25519 signature over the checkpoint object's bytes as stored, with the
// key in the file KeyFile (checkpoint-key.ed25519: a PKCS#8 PEM, mode 0600,
// created by the first Open). `vigil audit pubkey` prints its public key.
// The readers skip checkpoint lines.
//
// # Recovery
//
// A crash leaves the newest segment ending in its zero-filled tail, maybe
// after part of a record. A power loss can even keep some pages of the
// last write and not others, so bytes of that write can follow zeros; but
// that write was at most 1 MiB and everything before it was synced, so a
// crash's damage lies within 1 MiB of the first 0 byte after the last
// whole record. Open cuts the tail back to the last whole record, with a
// warning (a torn record, or the zero tail of a segment not closed
// cleanly), and preallocates on from there. Damage followed by whole
// records, non-zero bytes more than 1 MiB past the zeros, or a record
// whose hash does not match its bytes, is not a crash's doing: Open and
// the readers return a *CorruptError naming the segment and the byte
// offset. (A reader that finds such bytes while the writer writes checks
// that the zeros it saw are still zeros; if not, the writer wrote on, and
// the read ends where it saw the zeros.)
//
// Open then replays the journal from its last checkpoint, continues the
// checkpoint chain from it, and records an end event for every session
// still open: reason ReasonCrash, or ReasonStopped when the journal ended
// in a final checkpoint. A crash thus leaves no session without an end once
// vigil is back.
//
// # Reading and verifying
//
// ReadSessions, ReadSession and ReadRecords read the files without the
// writer's lock, so `vigil audit` works while vigil runs. VerifyChain checks
// one session's links. Verify checks a whole Source (JournalSource, or
// Elasticsearch in package audit/es): chains, seq gaps and order, session
// ends, checkpoint signatures and chain, and that every head a checkpoint
// names is stored, so an edited, removed, reordered or added event, a
// removed session or tail, and a removed or forged checkpoint are each
// reported as a Problem. What cannot be shown: events after the newest
// checkpoint of a running journal (at most one interval), and anything
// re-signed by someone who holds the private key; compare with a public
// key kept elsewhere (VerifyOptions.PublicKey). And a journal whose tail
// was removed looks, to the next Open, like a crash: Open ends the sessions
// that seem open and signs a new checkpoint over what is left. That
// checkpoint carries a Recovery, which Verify reports as a "recovered"
// warning, so every such start stays on the record; an external copy of
// the checkpoints (the Elasticsearch export) shows what the tail held.
package audit
