// norm.cpp holds the text model's two per-layer element-wise blocks as one
// call each: RMSNorm (libtorch: square, mean, add, rsqrt, two products)
// and the rotary embedding (reshape, two narrows, negation, concatenation,
// two products and a sum). A decode step runs each about 60 times on a
// few rows, where every libtorch op costs far more in dispatch and
// allocation than its arithmetic; prefill rows go over libtorch's OpenMP
// threads. Both round exactly as the composed ops do (no fused
// multiply-adds: the pragma below), except that RMSNorm's sum of squares
// is added up in another order.
#pragma GCC optimize("fp-contract=off")
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <exception>

#include "kernel.h"
#include "norm.h"
#include "rowops.h"

namespace {

bool f32cpu(const at::Tensor &t) { return m3IsF32CPU(t) && t.is_contiguous(); }

// rowGrain is how many rows one OpenMP task takes: fewer rows than this
// (a decode step) run on the calling thread alone.
constexpr int64_t rowGrain = 16;

// rowStride is the distance between the rows of x's last dimension when
// its values are contiguous and its rows evenly spaced (a contiguous
// tensor, or a column block of one such as a joined product's query
// part), 0 otherwise.
int64_t rowStride(const at::Tensor &x) {
  if (x.dim() < 1 || x.stride(-1) != 1) return 0;
  int64_t rs = 0, want = 0;
  for (int64_t d = x.dim() - 2; d >= 0; d--) {
    if (x.size(d) == 1) continue;
    if (rs == 0) {
      rs = want = x.stride(d);
      if (rs < x.size(-1)) return 0;
    } else if (x.stride(d) != want) {
      return 0;
    }
    want *= x.size(d);
  }
  return rs == 0 ? x.size(-1) : rs;
}

}  // namespace

extern "C" {

int m3_rms_norm(void *xp, void *wp, double eps, void **out, char *err, int errlen) {
  try {
    const at::Tensor &x = *static_cast<at::Tensor *>(xp);
    const at::Tensor &w = *static_cast<at::Tensor *>(wp);
    if (at::GradMode::is_enabled() || !f32cpu(x) || !f32cpu(w) || x.dim() < 1 || w.dim() != 1) return 1;
    const int64_t D = x.size(-1);
    if (w.size(0) != D || D == 0) return 1;
    const int64_t rows = x.numel() / D;
    at::Tensor y = at::empty_like(x);
    const float *X = x.data_ptr<float>(), *W = w.data_ptr<float>();
    float *Y = y.data_ptr<float>();
    const float e = static_cast<float>(eps);
    at::parallel_for(0, rows, rowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) rmsRow(X + r * D, W, Y + r * D, D, e);
    });
    *out = new at::Tensor(y);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

int m3_rope(void *xp, void *cp, void *sp, long hd, void **out, char *err, int errlen) {
  try {
    const at::Tensor &x = *static_cast<at::Tensor *>(xp);
    const at::Tensor &c = *static_cast<at::Tensor *>(cp);
    const at::Tensor &s = *static_cast<at::Tensor *>(sp);
    if (at::GradMode::is_enabled() || !m3IsF32CPU(x) || !f32cpu(c) || !f32cpu(s) || hd <= 0 || hd % 2 != 0) return 1;
    if (c.sizes() != x.sizes() || s.sizes() != x.sizes() || x.dim() < 1 || x.size(-1) % hd != 0) return 1;
    const int64_t rs = rowStride(x);
    if (rs == 0 || x.numel() == 0) return 1;
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor y = at::empty(x.sizes(), x.options());
    const float *X = x.data_ptr<float>(), *C = c.data_ptr<float>(), *S = s.data_ptr<float>();
    float *Y = y.data_ptr<float>();
    at::parallel_for(0, rows, rowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) ropeRow(X + r * rs, C + r * D, S + r * D, Y + r * D, D, hd);
    });
    *out = new at::Tensor(y);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

}  // extern "C"
