// rows.h is the decode products' kernel (see linear.cpp): y = x·Wᵀ (+ b)
// for a few rows of x, streaming W once on libtorch's OpenMP threads.
// linear.cpp wraps it for one product, layer.cpp runs a decoder layer's
// products with it.
#ifndef M3GATE_TORCH_ROWS_H
#define M3GATE_TORCH_ROWS_H
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "kernel.h"

namespace {

// kMaxRows is the most rows of x the kernel takes (run groups them by
// four); more go to BLAS's gemm.
constexpr int kMaxRows = 8;

// block computes Y[m, n..n+R) for m < M: R rows of W, each W vector
// feeding M fused multiply-adds.
// load8 reads 8 weights as f32: plain loads for f32, bf16 widened
// exactly (a bf16 is the top half of the f32 with the same value).
__attribute__((target("avx2,fma"))) inline __m256 load8(const float *w) { return _mm256_loadu_ps(w); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t *w) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline float widen(float w) { return w; }
inline float widen(uint16_t w) {
  const uint32_t u = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <int M, int R, typename WT>
__attribute__((target("avx2,fma"))) inline void block(const float *X, const WT *W, const float *B, float *Y,
                                                      int64_t K, int64_t N, int64_t n) {
  __m256 acc[R][M];
  for (int r = 0; r < R; r++)
    for (int m = 0; m < M; m++) acc[r][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 x[M];
    for (int m = 0; m < M; m++) x[m] = _mm256_loadu_ps(X + m * K + k);
    for (int r = 0; r < R; r++) {
      const __m256 w = load8(W + (n + r) * K + k);
      for (int m = 0; m < M; m++) acc[r][m] = _mm256_fmadd_ps(w, x[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; r++) {
    const WT *w = W + (n + r) * K;
    for (int m = 0; m < M; m++) {
      float s = m3Hsum8(acc[r][m]);
      for (int64_t j = k; j < K; j++) s += widen(w[j]) * X[m * K + j];
      if (B) s += B[n + r];
      Y[m * N + n + r] = s;
    }
  }
}

// rows computes Y[m, n] for m < M, n in [n0, n1), one row of W at a time:
// a single sequential stream per thread is what the hardware prefetcher
// follows best (measured on 49152×576 f32, 2 threads: 21.7 GB/s for 3
// rows, against 14.3 GB/s reading 4 rows of W at once and 12.2 with 2).
template <int M, typename WT>
__attribute__((target("avx2,fma"))) void rows(const float *X, const WT *W, const float *B, float *Y,
                                               int64_t K, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n++) block<M, 1>(X, W, B, Y, K, N, n);
}

template <typename WT>
using rowsFn = void (*)(const float *, const WT *, const float *, float *, int64_t, int64_t, int64_t, int64_t);

// forRows is the kernel for M rows. More than 4 rows run as several
// passes (their accumulators would not fit AVX2's 16 registers).
template <typename WT>
rowsFn<WT> forRows(int M) {
  switch (M) {
    case 1: return rows<1, WT>;
    case 2: return rows<2, WT>;
    case 3: return rows<3, WT>;
    case 4: return rows<4, WT>;
  }
  return nullptr;
}

// run computes y for each group of up to 4 rows of x. libtorch's threads
// take W's rows in turn from a shared counter, guided: each takes a
// share of what is left (a quarter of it between two threads), at least
// about 64 KB of f32 weights. A static split into one half per thread
// left the first thread done waiting whenever the other had been held
// up (woken late, preempted by another thread of the process: a 256M
// decode step went from 32–34 / 37–41 ms to 29–31 / 36–37 ms for one /
// three sequences with fixed 64 KB chunks); fixed chunks, though, break
// each thread's sequential stream every 64 KB, which the hardware
// prefetcher follows worse (a whole 256M step's products, three rows,
// measured standalone: 19.2–20.1 ms with fixed 64 KB chunks, 17.4–17.7
// guided, 17.6–17.9 with fixed 256 KB ones, whose last chunks balance
// worse on the small matrices).
template <typename WT>
void run(const float *X, const WT *W, const float *B, float *Y, int64_t M, int64_t K, int64_t N) {
  const int64_t minRows = std::max<int64_t>(1, 16384 / K);
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), (N + minRows - 1) / minRows);
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const int rm = static_cast<int>(std::min<int64_t>(4, M - m0));
    rowsFn<WT> f = forRows<WT>(rm);
    const float *Xm = X + m0 * K;
    float *Ym = Y + m0 * N;
    std::atomic<int64_t> next{0};
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      int64_t n0 = next.load(std::memory_order_relaxed), n1;
      for (;;) {
        do {
          if (n0 >= N) return;
          n1 = std::min(N, n0 + std::max(minRows, (N - n0) / (2 * workers)));
        } while (!next.compare_exchange_weak(n0, n1, std::memory_order_relaxed));
        f(Xm, W, B, Ym, K, N, n0, n1);
        n0 = next.load(std::memory_order_relaxed);
      }
    });
  }
}

}  // namespace
#endif
