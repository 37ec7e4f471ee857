# env.sh exports the cgo flags that build gotch against libtorch. Source it:
#   source scripts/env.sh && go test ./sidecar/...
# The Makefile exports the same values; keep the two in step.
_m3root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${LIBTORCH:-}" ]]; then
  export CGO_CFLAGS="-I$LIBTORCH/include"
  export CGO_CXXFLAGS="-I$LIBTORCH/include -I$LIBTORCH/include/torch/csrc/api/include"
  export CGO_LDFLAGS="-L$LIBTORCH/lib -Wl,--no-as-needed -Wl,-rpath,$LIBTORCH/lib"
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  export CGO_CXXFLAGS="-I/usr/include/torch/csrc/api/include -include $_m3root/scripts/toolchain/gotch_v091_torch113_compat.h"
  export CGO_LDFLAGS="-L$_m3root/build/cuda-stubs"
fi
# libtorch's OpenMP pool and OpenBLAS's pool busy-wait against each other
# unless waiting threads sleep.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
unset _m3root
