#!/usr/bin/env bash
# run.sh is `make run`: scripts/run.sh BIN [ARGS...] runs BIN/m3gate ARGS,
# or without ARGS scores the example images (examples/prompts.jsonl).
#
# A command that needs the model (score, serve, run) without --model and
# without M3GATE_MODEL_DIR uses model.dir; when that folder does not exist,
# a tiny model with random weights is generated once into build/demo-model
# and used instead, with a banner saying its scores are meaningless.
set -euo pipefail

bin="$1"
shift
demo=build/demo-model

banner() {
  echo "=============================================================================="
  echo " DEMO MODEL: $demo has RANDOM weights, so these scores and"
  echo " descriptions mean nothing; they only show that the whole path works."
  echo " For real scores fetch SmolVLM-256M-Instruct (about 1 GB) into model.dir:"
  echo "     bin/m3gate model fetch smolvlm-256m"
  echo " then run 'make run' again (or set model.dir / M3GATE_MODEL_DIR to a model)."
  echo "=============================================================================="
}

# needs_model reports whether the command line "$@" loads model.dir.
needs_model() {
  case "${1:-}" in score | serve | run) ;; *) return 1 ;; esac
  [[ -z "${M3GATE_MODEL_DIR:-}" ]] || return 1
  local a
  for a in "$@"; do
    case "$a" in --model | --model=*) return 1 ;; esac
  done
}

examples=false
if (($# == 0)); then
  examples=true
  set -- score --prompts-file examples/prompts.jsonl
fi
if ! needs_model "$@"; then
  exec "$bin/m3gate" "$@"
fi

dir=$("$bin/m3gate" config print | awk '/^model:/ {m=1; next} /^[^ ]/ {m=0}
  m && $1 == "dir:" {sub(/^ *dir: */, ""); gsub(/^"|"$/, ""); print; exit}')
if [[ -n "$dir" && -d "$dir" ]]; then
  if $examples; then
    echo "m3gate: scoring examples/ with the model in $dir"
  fi
  exec "$bin/m3gate" "$@"
fi
if [[ ! -f "$demo/config.json" ]]; then
  echo "m3gate: no model in '$dir' (model.dir); generating a tiny random-weight demo model in $demo (once)"
  rm -rf "$demo" "$demo.tmp"
  # Written under a temporary name and renamed when complete; its own
  # message would name the temporary folder.
  "$bin/m3gate" model tiny --family idefics3 --size tiny --out "$demo.tmp" >/dev/null
  mv "$demo.tmp" "$demo"
fi
banner
rc=0
M3GATE_MODEL_DIR="$demo" "$bin/m3gate" "$@" || rc=$?
banner
exit "$rc"
