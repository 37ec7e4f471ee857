// kernel.h is what the package's C++ kernels (linear.cpp, attend.cpp,
// norm.cpp) share.
#ifndef M3GATE_TORCH_KERNEL_H
#define M3GATE_TORCH_KERNEL_H
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <immintrin.h>

#include <cstring>

// m3IsF32CPU says whether t is a defined f32 tensor on the CPU outside
// autograd: what every kernel here takes (each adds its own layout rules).
inline bool m3IsF32CPU(const at::Tensor &t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && !t.requires_grad();
}

// m3CopyErr copies msg into err (errlen bytes, always terminated): how a
// wrapper hands a libtorch error back to Go.
inline void m3CopyErr(const char *msg, char *err, int errlen) {
  if (errlen <= 0) return;
  std::strncpy(err, msg, errlen - 1);
  err[errlen - 1] = 0;
}
// m3Hsum8 is the sum of v's eight lanes (the decode products' and the
// attention's reduction).
__attribute__((target("avx2,fma"))) inline float m3Hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// M3Exp8 is an 8-wide exponential.
using M3Exp8 = __m256 (*)(__m256);

// m3SleefExp is SLEEF's AVX2 exponential (the one libtorch's vectorised
// ops call, from the library its CPU build loads), found once, or null
// when the process has none.
inline M3Exp8 m3SleefExp() {
  static const M3Exp8 f = reinterpret_cast<M3Exp8>(dlsym(RTLD_DEFAULT, "Sleef_expf8_u10avx2"));
  return f;
}
#endif
