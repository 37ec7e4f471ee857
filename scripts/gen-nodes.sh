#!/usr/bin/env bash
# gen-nodes.sh regenerates the files derived from the node registry in nodes/:
# schemas/nodes/*.schema.json, schemas/nodes/object_info.json and the Python
# pack's nodes/comfyui/m3gate/node_defs.json.
#   scripts/gen-nodes.sh           # write
#   scripts/gen-nodes.sh -check    # exit 1 when a committed file is stale
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source "$root/scripts/env.sh"
exec go run ./nodes/cmd/gennodes -root "$root" "$@"
