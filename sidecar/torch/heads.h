// heads.h is the decode attention kernel (see attend.cpp): one (sequence,
// KV head) pair's few queries against its cached keys and values.
// attend.cpp wraps it for one layer's attention, layer.cpp runs it inside
// a decoder layer.
#ifndef M3GATE_TORCH_HEADS_H
#define M3GATE_TORCH_HEADS_H
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernel.h"

namespace {

// softmaxRows turns each of the R rows of T scores into probabilities:
// exp(s - max) / Σ, the exponentials eight at a time through SLEEF where
// the process has it (m3SleefExp, as libtorch's softmax computes them).
__attribute__((target("avx2,fma"))) void softmaxRows(float *scores, int64_t R, int64_t T) {
  const M3Exp8 ex = m3SleefExp();
  for (int64_t r = 0; r < R; r++) {
    float *sr = scores + r * T;
    float mx = -INFINITY;
    for (int64_t t = 0; t < T; t++) mx = std::max(mx, sr[t]);
    float sum = 0;
    int64_t t = 0;
    if (ex) {
      const __m256 m = _mm256_set1_ps(mx);
      __m256 acc = _mm256_setzero_ps();
      for (; t + 8 <= T; t += 8) {
        const __m256 e = ex(_mm256_sub_ps(_mm256_loadu_ps(sr + t), m));
        _mm256_storeu_ps(sr + t, e);
        acc = _mm256_add_ps(acc, e);
      }
      alignas(32) float part[8];
      _mm256_store_ps(part, acc);
      sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    }
    for (; t < T; t++) {
      sr[t] = std::exp(sr[t] - mx);
      sum += sr[t];
    }
    const float inv = 1.0f / sum;
    for (t = 0; t < T; t++) sr[t] *= inv;
  }
}

// headScalar computes the R query rows of one (batch, KV head) pair: q
// and o are [R, hd] contiguous, k and v [T, hd] with row stride ks and
// vs, mask [R, T] contiguous or null; scores holds R·T floats. It serves
// head dimensions that are not a multiple of 8.
void headScalar(const float *q, const float *k, int64_t ks, const float *v, int64_t vs, const float *mask, float *o,
                int64_t R, int64_t T, int64_t hd, float scale, float *scores) {
  for (int64_t r = 0; r < R; r++) {
    const float *qr = q + r * hd;
    for (int64_t t = 0; t < T; t++) {
      const float *kt = k + t * ks;
      float s = 0;
      for (int64_t d = 0; d < hd; d++) s += qr[d] * kt[d];
      s *= scale;
      if (mask) s += mask[r * T + t];
      scores[r * T + t] = s;
    }
  }
  softmaxRows(scores, R, T);
  for (int64_t r = 0; r < R; r++) {
    const float *sr = scores + r * T;
    float *or_ = o + r * hd;
    std::fill(or_, or_ + hd, 0.f);
    for (int64_t t = 0; t < T; t++) {
      const float *vt = v + t * vs;
      for (int64_t d = 0; d < hd; d++) or_[d] += sr[t] * vt[d];
    }
  }
}

// kAhead is how many key rows ahead scores8 prefetches.
constexpr int64_t kAhead = 8;

// scores8 writes the scaled, masked scores of query rows r0..r0+N of q
// against every key: each key row is loaded once for the N rows, whose
// dot products run as independent 8-wide chains (a scalar dot product is
// one chain of hd dependent multiply-adds per key).
template <int N>
__attribute__((target("avx2,fma"))) void scores8(const float *q, const float *k, int64_t ks, const float *v,
                                                 int64_t vs, const float *mask, int64_t r0, int64_t T, int64_t hd,
                                                 float scale, float *scores) {
  for (int64_t t = 0; t < T; t++) {
    const float *kt = k + t * ks;
    // The first pass asks for the key row kAhead on and this slot's value
    // row now, so that their memory latency overlaps the arithmetic.
    if (r0 == 0) {
      const char *kp = reinterpret_cast<const char *>(kt + kAhead * ks), *vp = reinterpret_cast<const char *>(v + t * vs);
      for (int64_t c = 0; c < hd * 4; c += 64) {
        if (t + kAhead < T) _mm_prefetch(kp + c, _MM_HINT_T0);
        _mm_prefetch(vp + c, _MM_HINT_T0);
      }
    }
    __m256 acc[N];
    for (int i = 0; i < N; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
      const __m256 kv = _mm256_loadu_ps(kt + d);
      for (int i = 0; i < N; i++) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (r0 + i) * hd + d), kv, acc[i]);
    }
    for (int i = 0; i < N; i++) {
      float s = m3Hsum8(acc[i]) * scale;
      if (mask) s += mask[(r0 + i) * T + t];
      scores[(r0 + i) * T + t] = s;
    }
  }
}

// values8 adds Σ_t p[t]·v[t, d0..d0+8·NV) into o[d0..): NV 8-wide
// accumulators held in registers over the keys.
template <int NV>
__attribute__((target("avx2,fma"))) void values8(const float *p, const float *v, int64_t vs, int64_t T, int64_t d0,
                                                 float *o) {
  __m256 acc[NV];
  for (int j = 0; j < NV; j++) acc[j] = _mm256_setzero_ps();
  for (int64_t t = 0; t < T; t++) {
    const __m256 pt = _mm256_set1_ps(p[t]);
    const float *vt = v + t * vs + d0;
    for (int j = 0; j < NV; j++) acc[j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * j), acc[j]);
  }
  for (int j = 0; j < NV; j++) _mm256_storeu_ps(o + d0 + 8 * j, acc[j]);
}

// head is headScalar with AVX2 for hd a multiple of 8: the scores of up
// to four rows per pass over the keys, then each row's weighted sum of
// the values, 64 dimensions at a time.
__attribute__((target("avx2,fma"))) void head(const float *q, const float *k, int64_t ks, const float *v, int64_t vs,
                                              const float *mask, float *o, int64_t R, int64_t T, int64_t hd,
                                              float scale, float *scores) {
  if (hd % 8 != 0) {
    headScalar(q, k, ks, v, vs, mask, o, R, T, hd, scale, scores);
    return;
  }
  int64_t r0 = 0;
  for (; r0 + 4 <= R; r0 += 4) scores8<4>(q, k, ks, v, vs, mask, r0, T, hd, scale, scores);
  switch (R - r0) {
    case 3: scores8<3>(q, k, ks, v, vs, mask, r0, T, hd, scale, scores); break;
    case 2: scores8<2>(q, k, ks, v, vs, mask, r0, T, hd, scale, scores); break;
    case 1: scores8<1>(q, k, ks, v, vs, mask, r0, T, hd, scale, scores); break;
  }
  softmaxRows(scores, R, T);
  for (int64_t r = 0; r < R; r++) {
    const float *sr = scores + r * T;
    float *or_ = o + r * hd;
    int64_t d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) values8<8>(sr, v, vs, T, d0, or_);
    switch ((hd - d0) / 8) {
      case 7: values8<7>(sr, v, vs, T, d0, or_); break;
      case 6: values8<6>(sr, v, vs, T, d0, or_); break;
      case 5: values8<5>(sr, v, vs, T, d0, or_); break;
      case 4: values8<4>(sr, v, vs, T, d0, or_); break;
      case 3: values8<3>(sr, v, vs, T, d0, or_); break;
      case 2: values8<2>(sr, v, vs, T, d0, or_); break;
      case 1: values8<1>(sr, v, vs, T, d0, or_); break;
    }
  }
}

// eachPair runs f(p, scores) for the (sequence, KV head) pairs 0..P on
// libtorch's threads, scores a scratch of n floats per thread (head's).
template <typename F>
void eachPair(int64_t P, int64_t n, const F &f) {
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> scores(n);
    for (int64_t p = p0; p < p1; p++) f(p, scores.data());
  });
}

}  // namespace
#endif
