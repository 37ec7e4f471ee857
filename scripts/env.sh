# env.sh exports the cgo flags that build gotch against libtorch. Source it:
#   source scripts/env.sh && go test ./sidecar/...
# The Makefile sources it for every recipe (BASH_ENV).
#
# The flags name only paths that do not depend on where the repository is
# checked out: Go keys its build cache on the cgo flags, so a flag holding the
# checkout path would recompile gotch's C++ layer (minutes) for every clone.
# The compat header and the empty CUDA link stubs are therefore copied into a
# per-user toolchain folder (created here when missing, cheap when present).
_m3root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${LIBTORCH:-}" ]]; then
  export CGO_CFLAGS="-I$LIBTORCH/include"
  export CGO_CXXFLAGS="-I$LIBTORCH/include -I$LIBTORCH/include/torch/csrc/api/include"
  export CGO_LDFLAGS="-L$LIBTORCH/lib -Wl,--no-as-needed -Wl,-rpath,$LIBTORCH/lib"
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  _m3tc="${M3GATE_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/m3gate/toolchain}"
  _m3hdr="$_m3root/scripts/toolchain/gotch_v091_torch113_compat.h"
  if [[ ! -f "$_m3tc/gotch_v091_torch113_compat.h" ]] || ! cmp -s "$_m3hdr" "$_m3tc/gotch_v091_torch113_compat.h"; then
    mkdir -p "$_m3tc/cuda-stubs"
    cp "$_m3hdr" "$_m3tc/gotch_v091_torch113_compat.h"
  fi
  for _m3lib in cuda cudart cublas cudnn caffe2_nvrtc nvrtc-builtins nvrtc nvToolsExt c10_cuda torch_cuda; do
    [[ -f "$_m3tc/cuda-stubs/lib$_m3lib.so" ]] || { mkdir -p "$_m3tc/cuda-stubs"; echo '/* empty stub */' >"$_m3tc/cuda-stubs/lib$_m3lib.so"; }
  done
  export CGO_CXXFLAGS="-I/usr/include/torch/csrc/api/include -include $_m3tc/gotch_v091_torch113_compat.h"
  export CGO_LDFLAGS="-L$_m3tc/cuda-stubs"
  unset _m3tc _m3hdr _m3lib
fi
# OpenMP workers spin about 1,000 iterations before they sleep, as the
# sidecar runs them (sidecar/cmd/m3gate-sidecar/internal/openmp), so that
# tests and benchmarks that run libtorch in their own process wait as the
# sidecar does. A wait policy or spin count already set is kept.
if [[ -z "${OMP_WAIT_POLICY:-}" && -z "${GOMP_SPINCOUNT:-}" ]]; then
  export GOMP_SPINCOUNT=1000
fi
unset _m3root
