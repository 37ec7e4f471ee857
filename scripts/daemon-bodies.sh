#!/usr/bin/env bash
# daemon-bodies.sh measures the daemon's peak memory under large request
# bodies: it starts `m3gate serve` (the binary in $M3GATE, default
# bin/m3gate) on the tiny model, posts N concurrent JSON score requests of
# one IMAGE_MB-MiB image each (base64), and prints the HTTP statuses and
# the peak RSS (VmHWM) of the daemon and of its model process. It repeats
# this REPS times with a fresh daemon and prints the medians. Extra config
# can be given as environment (M3GATE_DAEMON_MAX_INFLIGHT_BYTES=...).
#
#   scripts/daemon-bodies.sh                    # N=8 IMAGE_MB=30 REPS=3
#   N=8 IMAGE_MB=45 scripts/daemon-bodies.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${M3GATE:-bin/m3gate}")
sidecar=$(realpath "${M3GATE_SIDECAR:-bin/m3gate-sidecar}")
n=${N:-8}
mb=${IMAGE_MB:-30}
reps=${REPS:-3}
work=build/daemon-bodies
mkdir -p "$work"
if [[ ! -f $work/tiny/config.json ]]; then
  "$sidecar" model tiny --family idefics3 --size tiny --out "$work/tiny" >/dev/null
fi
body=$work/body-$mb.json
if [[ ! -f $body ]]; then
  python3 - "$mb" "$body" <<'PY'
import base64, os, sys
mb, out = int(sys.argv[1]), sys.argv[2]
with open(out, "w") as f:
    f.write('{"prompt":"x","images":[{"data":"')
    f.write(base64.b64encode(os.urandom(mb << 20)).decode())
    f.write('"}]}')
PY
fi
echo "# $(date -u +%FT%TZ) $bin: $n concurrent bodies of $(($(stat -c %s "$body") >> 20)) MiB (${mb} MiB images), $reps runs"
peaks_d=() peaks_s=()
for rep in $(seq "$reps"); do
  log=$work/serve.log
  # Run in $work, away from the checkout's config.yaml: built-in defaults.
  (cd "$work" && M3GATE_SIDECAR=$sidecar M3GATE_LOG_LEVEL=warn M3GATE_SCORING_ASPECTS=quality \
    exec "$bin" serve --listen 127.0.0.1:0 --model tiny 2>serve.log) &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  addr=""
  for _ in $(seq 300); do
    addr=$(grep -o 'listening on http://[^ ]*' "$log" | sed 's|listening on http://||' || true)
    [[ -n $addr ]] && curl -sf "http://$addr/readyz" >/dev/null && break
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "daemon did not start:"; cat "$log"; exit 1; }
  sc=$(pgrep -P "$pid" m3gate-sidecar | head -1)
  codes=$(for _ in $(seq "$n"); do
    curl -s -o /dev/null -w '%{http_code}\n' -H 'Content-Type: application/json' --data-binary @"$body" "http://$addr/v1/score" &
  done; wait)
  hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
  d=$(hwm "$pid") s=$(hwm "$sc")
  echo "run $rep: statuses $(echo "$codes" | sort | uniq -c | awk '{printf "%sx%s ", $1, $2}')daemon peak ${d} MiB, sidecar peak ${s} MiB"
  peaks_d+=("$d") peaks_s+=("$s")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  trap - EXIT
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median peak RSS: daemon $(median "${peaks_d[@]}") MiB, sidecar $(median "${peaks_s[@]}") MiB"
