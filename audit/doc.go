// Package audit records what every session did: events, the append-only
// journal on local disk that is vigil's source of truth, the per-session
// hash chain, and the readers behind `vigil audit`.
//
// A session's events are written in order through a Recorder, each with a
// gap-free seq starting at 1. Each event's canonical bytes (its JSON
// encoding) are stored verbatim, and its hash is SHA-256 over the previous
// event's hash and those bytes, so an edit, a removal or a reordering is
// detectable.
package audit
