// Package envoy holds vigil's Envoy bootstrap configurations, one YAML file
// per protocol (postgres.yaml, ...), and the test that checks each of them
// against go-control-plane's generated types (envoy v1.40.0 and contrib):
// every field must exist, every typed_config must name a registered type,
// and every message must pass its protoc-gen-validate rules.
//
// The package has no code; it exists so `go test ./...` checks the
// configurations operators copy.
package envoy
