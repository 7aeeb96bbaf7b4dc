// Package es8double is an in-memory HTTP double of the parts of
// Elasticsearch 8 and Kibana 8 that vigil uses, for tests. It answers the
// way a real 8.x node does: the X-Elastic-Product header on every
// Elasticsearch response (errors included), bulk requests answered 200 with
// a status per item, 409 version_conflict_engine_exception on a duplicate
// create, data streams that accept only create, the Elasticsearch error
// envelope for whole-request failures, and Kibana's kbn-xsrf check.
//
// Double is the Elasticsearch http.Handler; Kibana is the Kibana one;
// Server runs either on a loopback listener that can be taken down (refused
// connections) and brought back on the same address.
//
// Supported Elasticsearch API: GET /, PUT/DELETE _index_template/<n>,
// PUT/DELETE _ilm/policy/<n>, PUT/DELETE _data_stream/<n>, POST _bulk and
// <target>/_bulk (create, index, delete, update), <target>/_search and
// <target>/_count with term, terms, match, range, bool, exists and
// match_all queries, sort, size, from and search_after, and <target>/_refresh.
// Documents are visible to search at once. Index templates' mappings are
// enforced for the leaf types long, integer, short, byte, date, ip, boolean
// and keyword (a document that does not fit fails its item with 400
// document_parsing_exception, as 8.8+ does). Security is one API key: when
// Options.APIKey is set, a request without it is 401.
//
// Fault knobs (safe to call while requests run): SetUnavailable (503 no
// master), RejectRequests (whole-request 429), RejectItems (per-item 429),
// SetReadOnly (flood-stage block, per-item 429), SetLatency, and
// Server.Down/Up (connection refused).
//
// The shapes follow the reference responses in the team's shared es8
// directory; the package tests compare the double's answers with them.
package es8double
