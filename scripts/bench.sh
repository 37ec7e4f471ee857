#!/usr/bin/env bash
# bench.sh measures m3gate's CPU scoring speed against plain torch on the
# same SmolVLM-256M-shaped checkpoint (random f32 weights, about 1 GB,
# written once into build/bench-256m by `m3gate-sidecar model tiny --size
# 256m`) and prints the side-by-side table of issue #12:
#
#   - m3gate: the go test -bench benchmarks of sidecar/mllm (vision +
#     connector, prefill of 64 image + 150 text tokens, decode at one and
#     three sequences) and sidecar/m3 (one image, three aspects, 64- and
#     128-token descriptions);
#   - plain torch: scripts/ref_idefics3.py bench (torch from Debian's
#     python3, OMP_WAIT_POLICY=PASSIVE, one thread per core as the sidecar);
#   - m3gate again on the same shapes in bf16 (the dtype SmolVLM ships in),
#     written once into build/bench-256m-bf16: decode and three aspects,
#     then vision, prefill and three aspects with model.dtype mixed (bf16
#     products, opt-in).
#
# The two run alternately, BENCH_ROUNDS rounds (default 2) of BENCH_COUNT
# iterations each (default 1), so that both see the same machine load; the
# table gives, per stage, the range of the per-round medians and of the
# per-round ratios (m3gate / plain torch: below 1 means m3gate is faster).
# BENCH_EXTRA=1 also runs the predictor, safetensors and preprocessing
# benchmarks. Run it through `make bench` (which builds and sets the cgo
# flags); raw output goes to build/bench/, the table to build/bench.txt.
# About 5 minutes per round on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/bench-256m
if [[ ! -f $model/config.json ]]; then
  echo "bench: writing the 256M-shaped model to $model (once)"
  rm -rf "$model.tmp"
  bin/m3gate-sidecar model tiny --family idefics3 --size 256m --out "$model.tmp"
  mv "$model.tmp" "$model"
fi
model16=build/bench-256m-bf16 # the same shapes in bf16, as SmolVLM ships
if [[ ! -f $model16/config.json ]]; then
  echo "bench: writing the bf16 256M-shaped model to $model16 (once)"
  rm -rf "$model16.tmp"
  bin/m3gate-sidecar model tiny --family idefics3 --size 256m --dtype bf16 --out "$model16.tmp"
  mv "$model16.tmp" "$model16"
fi
export MLLM_BENCH_256M_DIR=$PWD/$model
rounds=${BENCH_ROUNDS:-2}
count=${BENCH_COUNT:-1}
out=build/bench
rm -rf "$out" && mkdir -p "$out"
for ((r = 1; r <= rounds; r++)); do
  echo "bench: round $r of $rounds: m3gate stages"
  go test -run '^$' -bench '^Benchmark(VisionEncode|Prefill|Decode|DecodeBatch3)256M$' \
    -benchtime "${count}x" ./sidecar/mllm/ | tee "$out/go-$r.txt"
  echo "bench: round $r of $rounds: plain torch stages"
  OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 scripts/ref_idefics3.py bench "$model" "$count" | tee "$out/ref-$r.json"
  echo "bench: round $r of $rounds: m3gate, one image, three aspects"
  go test -run '^$' -bench '^BenchmarkScore3Aspects(64|128)Tok256M$' \
    -benchtime "${count}x" ./sidecar/m3/ | tee "$out/score-$r.txt"
  echo "bench: round $r of $rounds: m3gate on the bf16 checkpoint"
  MLLM_BENCH_256M_DIR=$PWD/$model16 go test -run '^$' -bench '^Benchmark(Decode|DecodeBatch3)256M$' \
    -benchtime "${count}x" ./sidecar/mllm/ | tee "$out/go16-$r.txt"
  MLLM_BENCH_256M_DIR=$PWD/$model16 go test -run '^$' -bench '^BenchmarkScore3Aspects(64|128)Tok256M$' \
    -benchtime "${count}x" ./sidecar/m3/ | tee "$out/score16-$r.txt"
  echo "bench: round $r of $rounds: m3gate, model.dtype mixed (bf16 products), on the bf16 checkpoint"
  MLLM_BENCH_DTYPE=mixed MLLM_BENCH_256M_DIR=$PWD/$model16 go test -run '^$' -bench '^Benchmark(VisionEncode|Prefill)256M$' \
    -benchtime "${count}x" ./sidecar/mllm/ | tee "$out/gomx-$r.txt"
  MLLM_BENCH_DTYPE=mixed MLLM_BENCH_256M_DIR=$PWD/$model16 go test -run '^$' -bench '^BenchmarkScore3Aspects(64|128)Tok256M$' \
    -benchtime "${count}x" ./sidecar/m3/ | tee "$out/scoremx-$r.txt"
done
/usr/bin/python3 - "$out" "$rounds" "$count" "$model" "$model16" <<'PY' | tee build/bench.txt
import json, os, re, sys, time
out, rounds, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
weights = os.path.getsize(os.path.join(sys.argv[4], "model.safetensors")) / 2**30
weights16 = os.path.getsize(os.path.join(sys.argv[5], "model.safetensors")) / 2**30

def metrics(path):
    """Benchmark name (no -N suffix) -> {unit: value} from go test output."""
    got = {}
    for line in open(path):
        f = line.split()
        if not f or not f[0].startswith("Benchmark"):
            continue
        name = re.sub(r"-\d+$", "", f[0])
        got[name] = {f[i + 1]: float(f[i]) for i in range(2, len(f) - 1, 2)}
    return got

def rng(xs, fmt):
    lo, hi = min(xs), max(xs)
    return fmt % lo if fmt % lo == fmt % hi else (fmt % lo) + "–" + (fmt % hi)

rows = [  # stage, go benchmark, go unit, scale to display unit, ref key, ref scale, display format
    ("vision + connector, one 512² image (s)", "BenchmarkVisionEncode256M", "median-s", 1, "vision", 1, "%.2f"),
    ("prefill, 64 image + 150 text tokens (s)", "BenchmarkPrefill256M", "median-s", 1, "prefill", 1, "%.3f"),
    ("decode, one sequence (ms/token)", "BenchmarkDecode256M", "median-ms/step", 1, "decode_step", 1000, "%.0f"),
    ("decode, three sequences (ms/step)", "BenchmarkDecodeBatch3256M", "median-ms/step", 1, "decode_step_3", 1000, "%.0f"),
]
go = [metrics(os.path.join(out, "go-%d.txt" % r)) for r in range(1, rounds + 1)]
ref = [json.load(open(os.path.join(out, "ref-%d.json" % r))) for r in range(1, rounds + 1)]
sc = [metrics(os.path.join(out, "score-%d.txt" % r)) for r in range(1, rounds + 1)]
print("# %s, %d cores; %d alternating rounds of %d run(s); per-round medians, range over rounds" %
      (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.cpu_count(), rounds, count))
print("# plain torch: /usr/bin/python3 scripts/ref_idefics3.py bench (OMP_WAIT_POLICY=PASSIVE, %d threads)" % os.cpu_count())
print()
print("| stage | m3gate | plain torch | ratio |")
print("|---|---|---|---|")
for stage, b, unit, gs, key, rs, fmt in rows:
    g = [m[b][unit] * gs for m in go]
    p = [x[key] * rs for x in ref]
    print("| %s | %s | %s | %s |" % (stage, rng(g, fmt), rng(p, fmt), rng([a / c for a, c in zip(g, p)], "%.2f")))
rss = [max(m[b].get("peak-RSS-MB", 0) for b in m) / 1024 for m in go]
print("| peak RSS, stages (GB; weights %.2f GB) | %s (%s× weights) | | |" % (weights, rng(rss, "%.2f"), rng([x / weights for x in rss], "%.2f")))
for n in (64, 128):
    b = "BenchmarkScore3Aspects%dTok256M" % n
    print("| one image, 3 aspects, %d-token descriptions (s) | %s | | |" % (n, rng([m[b]["median-s"] for m in sc], "%.1f")))
    print("| … of which vision / describe / rate (s) | %s / %s / %s | | |" % tuple(
        rng([m[b][k] for m in sc], "%.2f") for k in ("vision-s/image", "describe-s/image", "rate-s/image")))
go16 = [metrics(os.path.join(out, "go16-%d.txt" % r)) for r in range(1, rounds + 1)]
sc16 = [metrics(os.path.join(out, "score16-%d.txt" % r)) for r in range(1, rounds + 1)]
print()
print("bf16 checkpoint (the dtype SmolVLM ships in; Linear weights stay bf16, f32 compute):")
print()
print("| stage | m3gate |")
print("|---|---|")
print("| decode, one sequence (ms/token) | %s |" % rng([m["BenchmarkDecode256M"]["median-ms/step"] for m in go16], "%.0f"))
print("| decode, three sequences (ms/step) | %s |" % rng([m["BenchmarkDecodeBatch3256M"]["median-ms/step"] for m in go16], "%.0f"))
rss16 = [max(m[b].get("peak-RSS-MB", 0) for b in m) / 1024 for m in go16]
print("| peak RSS, decode stages (GB; weights %.2f GB) | %s (%s× weights) |" % (weights16, rng(rss16, "%.2f"), rng([x / weights16 for x in rss16], "%.2f")))
for n in (64, 128):
    b = "BenchmarkScore3Aspects%dTok256M" % n
    print("| one image, 3 aspects, %d-token descriptions (s) | %s |" % (n, rng([m[b]["median-s"] for m in sc16], "%.1f")))
gomx = [metrics(os.path.join(out, "gomx-%d.txt" % r)) for r in range(1, rounds + 1)]
scmx = [metrics(os.path.join(out, "scoremx-%d.txt" % r)) for r in range(1, rounds + 1)]
print()
print("model.dtype: mixed (opt-in: bf16 products for the image and prompts, f32 otherwise) on the bf16 checkpoint;")
print("ratios against plain torch in f32 from the same rounds:")
print()
print("| stage | m3gate | ratio |")
print("|---|---|---|")
for stage, b, unit, gs, key, rs, fmt in rows[:2]:
    g = [m[b][unit] * gs for m in gomx]
    p = [x[key] * rs for x in ref]
    print("| %s | %s | %s |" % (stage, rng(g, fmt), rng([a / c for a, c in zip(g, p)], "%.2f")))
for n in (64, 128):
    b = "BenchmarkScore3Aspects%dTok256M" % n
    print("| one image, 3 aspects, %d-token descriptions (s) | %s | |" % (n, rng([m[b]["median-s"] for m in scmx], "%.1f")))
    print("| … of which vision / describe / rate (s) | %s / %s / %s | |" % tuple(
        rng([m[b][k] for m in scmx], "%.2f") for k in ("vision-s/image", "describe-s/image", "rate-s/image")))
PY
if [[ ${BENCH_EXTRA:-0} == 1 ]]; then
  {
    go test -run '^$' -bench 'Score256M|ScoreBatch4x256M' -benchtime 3x ./sidecar/m3/
    go test -run '^$' -bench PredictorForward -benchtime 5x ./sidecar/xlstm/
    go test -run '^$' -bench 'OpenLarge' -benchtime 3x ./sidecar/tensorio/
    go test -run '^$' -bench 'Preprocess' -benchtime 10x ./sidecar/imageproc/
  } 2>&1 | tee "$out/extra.txt"
fi
