#!/usr/bin/env bash
# check.sh runs the static checks CI runs before the tests (.ci/run):
#   gofmt, go vet, staticcheck (staticcheck.conf), generated files being
#   current (schemas/gen from m3gate.proto, the node registry's JSON and the
#   Python pack's node_defs.json), and go.mod/go.sum being tidy.
# Every check runs; the script fails at the end if any failed.
# staticcheck is the pinned version scripts/setup.sh installs into
# $M3GATE_TOOLS_BIN (default ~/.cache/m3gate/bin); without it, go run
# builds the same version.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
STATICCHECK_MODULE_VERSION=v0.8.2
toolsbin="${M3GATE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/m3gate/bin}"

failed=()
check() { # name command...
  echo "check: $1"
  if ! "${@:2}"; then
    failed+=("$1")
  fi
}

gofmt_clean() {
  local out
  out=$(gofmt -l $(git ls-files '*.go'))
  [[ -z "$out" ]] || { echo "not gofmt'd:"; echo "$out"; return 1; }
}

staticcheck_run() {
  if [[ -x "$toolsbin/staticcheck" ]]; then
    "$toolsbin/staticcheck" ./...
  else
    go run "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_MODULE_VERSION" ./...
  fi
}

proto_current() {
  command -v protoc >/dev/null || { echo "protoc not installed (scripts/setup.sh installs it)"; return 1; }
  local tmp rc=0
  tmp=$(mktemp -d)
  bash scripts/gen-proto.sh "$tmp" || { rm -rf "$tmp"; return 1; }
  for f in m3gate.pb.go m3gate_grpc.pb.go; do
    cmp -s "$tmp/gen/m3gatev1/$f" "schemas/gen/m3gatev1/$f" ||
      { echo "schemas/gen/m3gatev1/$f is stale: run scripts/gen-proto.sh"; rc=1; }
  done
  rm -rf "$tmp"
  return $rc
}

check gofmt gofmt_clean
check "go vet" go vet ./...
check "staticcheck $STATICCHECK_MODULE_VERSION" staticcheck_run
check "generated gRPC code" proto_current
check "generated node files" scripts/gen-nodes.sh -check
check "go mod tidy" go mod tidy -diff

if ((${#failed[@]})); then
  echo "check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check: ok"
