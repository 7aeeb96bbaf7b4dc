// Package proto holds vigil's own protobuf schemas and the Go code
// generated from them:
//
//   - vigil/audit/v1 (package auditv1): the audit journal's lines, Record
//     and CheckpointLine, and the Event they carry.
//   - vigil/approvals/v1 (package approvalsv1): the approvals API's bodies
//     and a service mirroring its HTTP routes.
//
// The wire forms are the JSON journal and the HTTP JSON API; these
// schemas describe them, field for field, so that protojson reads a
// journal line or an API body directly. This package's tests keep them
// honest: they read a real journal and real API values strictly (an
// unknown field fails), compare the schemas with the Go types, and check
// that the generated code is current. Regenerate with `make proto`.
package proto
