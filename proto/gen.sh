#!/bin/sh
# Regenerates the Go code beside vigil's .proto files (make proto). First
# installs protoc-gen-go and protoc-gen-go-grpc into bin/ when they are
# missing or of another version; protoc itself comes from the system
# (Debian: protobuf-compiler, which make deps installs).
# Usage: proto/gen.sh [tools]   (tools: install the plugins only)
set -eu
cd "$(dirname "$0")/.."

go=${GO:-go}
bin=$PWD/bin
# protoc-gen-go at the version of the runtime in go.mod, so that the code
# it writes matches what it links against.
gen_go=$($go list -m -f '{{.Version}}' google.golang.org/protobuf)
gen_grpc=v1.6.2

# need installs module@version as bin/name unless bin/name --version
# already reports that version.
need() {
	case "$("$bin/$1" --version 2>/dev/null)" in
	*" $3" | *" ${3#v}") return 0 ;;
	esac
	echo "proto: installing $1 $3"
	GOBIN=$bin $go install "$2@$3"
}
need protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$gen_go"
need protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$gen_grpc"
[ "${1:-}" = tools ] && exit 0

if ! command -v protoc >/dev/null 2>&1; then
	echo "proto: protoc is not on PATH; run 'make deps' (Debian: protobuf-compiler)" >&2
	exit 1
fi
# Keep this command in step with the one in proto/proto_test.go.
PATH=$bin:$PATH protoc -I proto \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	$(cd proto && find vigil -name '*.proto' | sort)
echo "proto: regenerated"
