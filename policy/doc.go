// Package policy decides, with Rego, what each command an agent sends may
// do: run, be denied, wait for approval, or have its results masked.
//
// Analyze turns a SQL string into Statements with PostgreSQL's own parser
// (github.com/pganalyze/pg_query_go/v6): command tag, tables read and
// written, functions, whether UPDATE or DELETE has a WHERE, and the
// statements nested in CTEs, EXPLAIN ANALYZE, PREPARE and COPY. No keyword
// is matched in the text.
//
// An Engine (New) evaluates the document data.vigil.decision of a bundle of
// Rego files with OPA embedded as a library
// (github.com/open-policy-agent/opa/v1/rego), on an Input holding the
// identity, connection, session and command. The query is prepared once per
// bundle and shared by all sessions; the bundle reloads when its files
// change, and a bundle that does not compile is refused while the last good
// one keeps deciding. Decisions are cached, keyed on the parts of the input
// the policy reads. Decide fails closed: any evaluation problem is an error.
//
// Detect and MaskValue are the value detectors and masking strategies the
// protocol processors apply to result rows as a Decision's MaskRules say.
//
// The default bundle (Bundle, directory bundle/) and its Rego tests are
// embedded; RunTests runs a bundle's tests (`vigil policy test`). README.md
// documents the input and output documents and the rule names.
package policy
