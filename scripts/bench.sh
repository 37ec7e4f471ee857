#!/usr/bin/env bash
# bench.sh runs the performance benchmarks on this machine and prints their
# medians: the SmolVLM-256M-shaped model (vision encode, prefill of 64 image
# + 150 text tokens, decode tokens/s, peak RSS), whole-image scoring, the
# xLSTM predictor, safetensors loading and image preprocessing. The
# 256M-shaped model (random weights, about 1 GB) is written once into
# build/bench-256m. Run it through `make bench` (which sets the cgo flags).
# Results also go to build/bench.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/bench-256m
if [[ ! -f $model/config.json ]]; then
  echo "bench: writing the 256M-shaped model to $model (once)"
  rm -rf "$model.tmp"
  bin/m3gate-sidecar model tiny --family idefics3 --size 256m --out "$model.tmp"
  mv "$model.tmp" "$model"
fi
export MLLM_BENCH_256M_DIR=$PWD/$model
count=${BENCH_COUNT:-5}
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -m); go test -bench, medians over ${count} runs"
  go test -run '^$' -bench '256M$' -benchtime "${count}x" ./sidecar/mllm/
  go test -run '^$' -bench 'Score256M|ScoreBatch4x256M' -benchtime 3x ./sidecar/m3/
  go test -run '^$' -bench PredictorForward -benchtime "${count}x" ./sidecar/xlstm/
  go test -run '^$' -bench 'OpenLarge' -benchtime 3x ./sidecar/tensorio/
  go test -run '^$' -bench 'Preprocess' -benchtime 10x ./sidecar/imageproc/
} 2>&1 | tee build/bench.txt
