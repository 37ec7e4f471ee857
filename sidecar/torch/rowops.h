// rowops.h is the text model's per-row element-wise blocks (see norm.cpp):
// RMSNorm of one row and the rotary embedding of one row's heads. They
// round exactly as libtorch's composed ops do (no fused multiply-adds),
// except that RMSNorm's sum of squares is added up in another order;
// norm.cpp wraps them as ops, layer.cpp runs them inside a decoder layer.
#ifndef M3GATE_TORCH_ROWOPS_H
#define M3GATE_TORCH_ROWOPS_H
#include <cmath>
#include <cstdint>

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace {

// rmsRow writes x·rsqrt(mean(x²) + e)·w for one row x of D values into y.
inline void rmsRow(const float *xr, const float *W, float *yr, int64_t D, float e) {
  float ss[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; j++) ss[j] += xr[d + j] * xr[d + j];
  float s = ((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7]));
  for (; d < D; d++) s += xr[d] * xr[d];
  const float v = 1.0f / std::sqrt(s * (1.0f / static_cast<float>(D)) + e);
  for (d = 0; d < D; d++) {
    const float h = xr[d] * v;
    yr[d] = h * W[d];
  }
}

// ropeRow writes x·cos + rotate_half(x)·sin for one row x of D values
// (heads of hd, even) into y (not x), with that row's cos and sin.
inline void ropeRow(const float *xr, const float *C, const float *S, float *Y, int64_t D, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < D; i += hd, xr += hd) {
    for (int64_t j = 0; j < hd; j++) {
      const float rot = j < half ? -xr[j + half] : xr[j - half];
      const float a = xr[j] * C[i + j];
      const float b = rot * S[i + j];
      Y[i + j] = a + b;
    }
  }
}

}  // namespace

#pragma GCC pop_options
#endif
