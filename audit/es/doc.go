// Package es exports vigil's audit journal to Elasticsearch 8 and reads it
// back.
//
// A Shipper follows the journal (a Source; JournalSource reads the segment
// files) from a durable cursor kept in audit.dir and writes every event, as
// an ECS document (Document), into a data stream (logs-vigil.audit-default
// by default) with the bulk API's create action and the id
// "<session_id>:<seq>", through the official client's esutil.BulkIndexer.
// Signed checkpoints are shipped too, with the id
// "checkpoint:<key id>:<seq>" and their signed bytes verbatim in
// event.original. Start runs a Shipper for `vigil gateway` and `vigil
// extproc`, for the sessions of connections with export: siem; Lag and
// Handler report its progress.
//
// A 409 on create means the event is already stored (a replay after a
// crash between the acknowledgement and the cursor write) and counts as
// shipped. 429, 5xx and connection failures are
// retried with capped exponential backoff and jitter, only for the items
// that failed; nothing is lost and nothing is stored twice. Any other item
// failure (a 400 mapping error, a 403) stops the cursor in front of that
// event: the Shipper logs it at Error with the operator action, reports it
// in Lag, and retries it at the slowest backoff until it is stored.
//
// Reader answers `vigil audit sessions | show | verify` from the data
// stream with the audit package's types (it is an audit.Source): each
// event's canonical bytes are kept verbatim in event.original and its chain
// hashes in event.hash and vigil.prev_hash, so a verification against
// Elasticsearch checks the same bytes as one against the journal; the
// same holds for checkpoints and their signatures.
//
// Setup installs the ILM policy, the index template (ECS mappings plus
// vigil.*) and the data stream, and imports the Kibana saved objects (a data
// view, two saved searches, a dashboard) shipped in assets/.
//
// References: Elasticsearch bulk API and data streams (8.x), Elastic Common
// Schema 8.x, Kibana saved objects import API.
package es
