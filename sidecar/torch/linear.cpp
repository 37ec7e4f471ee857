// linear.cpp is a linear layer for a few rows (a decode step of a few
// sequences): y = x·Wᵀ (+ b) reading W once for all rows. BLAS's gemm
// packs W before multiplying, which for 2–8 rows costs about twice the
// time of streaming W (the memory-bound floor of a decode step), and gemv
// streams W once per row. The kernel keeps one AVX2 accumulator pair per
// row and splits W's rows over libtorch's own OpenMP threads
// (at::parallel_for), so it never competes with libtorch's pool.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <exception>

#include "kernel.h"
#include "linear.h"
#include "rows.h"

extern "C" {

int m3_rows_linear_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}

int m3_rows_linear(void *xp, void *wp, void *bp, void **out, char *err, int errlen) {
  try {
    const at::Tensor &x = *static_cast<at::Tensor *>(xp);
    const at::Tensor &w = *static_cast<at::Tensor *>(wp);
    const at::Tensor *b = static_cast<at::Tensor *>(bp);
    auto fits = [](const at::Tensor &t, bool bf16) {
      return t.defined() && t.device().is_cpu() &&
             (t.scalar_type() == at::kFloat || (bf16 && t.scalar_type() == at::kBFloat16)) && t.is_contiguous() &&
             !t.requires_grad();
    };
    if (!fits(x, false) || !fits(w, true) || w.dim() != 2 || x.dim() < 1 || (b && (!fits(*b, false) || b->dim() != 1)))
      return 1;
    const int64_t K = w.size(1), N = w.size(0);
    if (x.size(-1) != K || (b && b->size(0) != N) || x.numel() == 0) return 1;
    const int64_t M = x.numel() / K;
    if (M > kMaxRows) return 1;
    auto shape = x.sizes().vec();
    shape.back() = N;
    at::Tensor y = at::empty(shape, x.options());
    const float *X = x.data_ptr<float>();
    const float *B = b ? b->data_ptr<float>() : nullptr;
    float *Y = y.data_ptr<float>();
    if (w.scalar_type() == at::kBFloat16)
      run(X, reinterpret_cast<const uint16_t *>(w.data_ptr()), B, Y, M, K, N);
    else
      run(X, w.data_ptr<float>(), B, Y, M, K, N);
    *out = new at::Tensor(y);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

}  // extern "C"
