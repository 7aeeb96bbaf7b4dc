// Package approvals holds commands that policy says need a person's
// consent, asks approvers, and records every step.
//
// A Request is created by Service.Hold, which blocks the caller (the
// protocol processor, for one session) until an approver decides, the
// request's Timeout passes (it expires), or the caller's context ends (it
// is cancelled: the client went away). Every step of a request (requested,
// refused attempts, the decision) is a Step the caller records in the
// session's audit, in order.
//
// Approvers decide through Service.Decide, reached over the HTTP JSON API
// and a small web page served by Service.Handler, or through the
// `vigil approvals` command that calls that API. They authenticate with
// their own Entra access token (Authorization: Bearer), checked by the
// Service's identity.Verifier. An approver must match one of the grants
// the policy named (identity.Match) and is never the requester: the same
// object id, or the same app id when either side is an app-only identity.
// Refused attempts are stored as "refused" steps.
//
// State lives in a Store shared by every replica:
//
//   - FileStore (NewFileStore): one JSON file in a directory, for one
//     machine. Writers take an exclusive flock(2) on a lock file beside it
//     and replace the file atomically, so goroutines and processes on the
//     same machine may share it. Other processes notice changes by polling
//     (Options.PollInterval).
//   - PostgresStore (NewPostgresStore): vigil's own schema vigil_approvals,
//     created and migrated by vigil (numbered migrations, a schema_version
//     table, an advisory lock so that replicas starting together migrate
//     once). A decision is a single UPDATE ... WHERE status = 'pending', so
//     two approvers racing cannot both win. Replicas notice changes through
//     LISTEN/NOTIFY on the channel vigil_approvals, and also by polling in
//     case a notification is lost while the listening connection is down.
//
// Window scope: an approved request with Scope "window" covers the same
// statement text from the same requester (object id, or app id) on the
// same connection until Decided + Window; Service.Covered answers that
// question before a new hold is made.
//
// A webhook (Options.Webhook) receives a JSON POST when a request is
// created and when it ends, shaped for Slack and Microsoft Teams incoming
// webhooks: {"text": "..."} plus a structured "vigil" object. Deliveries
// run on their own goroutine with a timeout and retries and never block a
// hold.
package approvals
