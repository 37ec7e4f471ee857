#!/usr/bin/env bash
# gen-proto.sh regenerates the Go code of schemas/*.proto into schemas/gen.
#   scripts/gen-proto.sh            # write into the repository
#   scripts/gen-proto.sh OUTDIR     # write into OUTDIR/gen (used by the staleness test)
# Installs the pinned protoc plugins into $(go env GOPATH)/bin when missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/schemas}"
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0

command -v protoc >/dev/null || { echo "gen-proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
gobin="$(go env GOBIN)"; [[ -n "$gobin" ]] || gobin="$(go env GOPATH)/bin"

have_version() { # binary wanted-version
  [[ -x "$gobin/$1" ]] || return 1
  go version -m "$gobin/$1" 2>/dev/null | awk '$1=="mod"{print $3}' | grep -qx "$2"
}
have_version protoc-gen-go "$PROTOC_GEN_GO_VERSION" ||
  GOFLAGS= go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
have_version protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" ||
  GOFLAGS= go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

mkdir -p "$out/gen/m3gatev1"
cd "$root/schemas"
PATH="$gobin:$PATH" protoc -I . \
  --go_out="$out/gen" --go_opt=paths=source_relative --go_opt=Mm3gate.proto=github.com/m3gate/m3gate/schemas/gen/m3gatev1 \
  --go-grpc_out="$out/gen" --go-grpc_opt=paths=source_relative --go-grpc_opt=Mm3gate.proto=github.com/m3gate/m3gate/schemas/gen/m3gatev1 \
  m3gate.proto
# paths=source_relative puts the files next to the .proto name; move them into the package folder.
mv -f "$out/gen/m3gate.pb.go" "$out/gen/m3gatev1/m3gate.pb.go"
mv -f "$out/gen/m3gate_grpc.pb.go" "$out/gen/m3gatev1/m3gate_grpc.pb.go"
