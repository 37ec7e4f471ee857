// layer.cpp is one Llama decoder layer for a decode step (one new token
// per sequence, a few sequences) in one call: RMSNorm, the joined
// query/key/value product, the rotary embedding, the new keys and values
// written into the cache's buffers, attention over the cache, the output
// product and the residual, RMSNorm, the joined gate/up product, SiLU
// times up, the down product and the residual. Composed from Go, the same
// layer is about 25 libtorch ops, whose dispatch, allocation and cgo
// crossings cost a 256M model's decode step (30 layers) about 3–4 ms of
// serial time on top of its ~17 ms of weight streaming; here the only
// work between the products' parallel regions is the few rows'
// element-wise arithmetic. The blocks are the ones the separate kernels
// run (rows.h, heads.h, rowops.h) and the SiLU is libtorch's own where
// its SLEEF library is loaded, so results equal the composed layer's bit
// for bit (up to the SiLU's exponential without SLEEF).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <exception>
#include <memory>

#include "heads.h"
#include "kernel.h"
#include "layer.h"
#include "rowops.h"
#include "rows.h"

namespace {

// product runs y = x·Wᵀ (+ b) for M rows through the rows kernel, W f32
// or bf16.
void product(const float *X, const at::Tensor &w, const float *B, float *Y, int64_t M) {
  const int64_t N = w.size(0), K = w.size(1);
  if (w.scalar_type() == at::kBFloat16)
    run(X, reinterpret_cast<const uint16_t *>(w.data_ptr()), B, Y, M, K, N);
  else
    run(X, w.data_ptr<float>(), B, Y, M, K, N);
}

// matrix says whether w is a weight the rows kernel streams: [rows, cols]
// contiguous f32 or bf16 on the CPU without autograd.
bool matrix(const at::Tensor *w, int64_t rows, int64_t cols) {
  return w && w->defined() && w->device().is_cpu() && !w->requires_grad() &&
         (w->scalar_type() == at::kFloat || w->scalar_type() == at::kBFloat16) && w->is_contiguous() &&
         w->dim() == 2 && w->size(0) == rows && w->size(1) == cols;
}

// vec says whether t is a contiguous f32 CPU tensor of n values (NULL
// passes when optional).
bool vec(const at::Tensor *t, int64_t n, bool optional) {
  if (!t) return optional;
  return m3IsF32CPU(*t) && t->is_contiguous() && t->numel() == n;
}

// siluTimes writes silu(gate)·up for n values: with SLEEF's exponential
// eight at a time as libtorch's vectorised SiLU computes it (x / (1 +
// exp(-x)), so the results are libtorch's bit for bit), else with the C
// library's.
__attribute__((target("avx2,fma"))) void siluTimes(const float *gate, const float *up, float *out, int64_t n) {
  int64_t i = 0;
  if (M3Exp8 ex = m3SleefExp()) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
      const __m256 x = _mm256_loadu_ps(gate + i);
      const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, ex(_mm256_xor_ps(x, sign))));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
  }
  for (; i < n; i++) {
    const float s = gate[i] / (1.0f + std::exp(-gate[i]));
    out[i] = s * up[i];
  }
}

}  // namespace

extern "C" {

int m3_decode_layer_exact() { return m3SleefExp() != nullptr ? 1 : 0; }

int m3_decode_layer(const m3_decoder *L, void *xp, void *kp, void *vp, long n, void *mp, void *cqp, void *sqp,
                    void *ckp, void *skp, void **out, char *err, int errlen) {
  try {
    auto T = [](void *p) { return static_cast<const at::Tensor *>(p); };
    const at::Tensor &x = *T(xp);
    const at::Tensor &kb = *T(kp), &vb = *T(vp);
    const at::Tensor *mask = T(mp);
    const int64_t H = L->heads, KV = L->kv_heads, hd = L->head_dim;
    if (at::GradMode::is_enabled() || !m3IsF32CPU(x) || !x.is_contiguous() || x.dim() < 1) return 1;
    if (H <= 0 || KV <= 0 || H % KV != 0 || hd <= 0 || hd % 2 != 0) return 1;
    const int64_t D = x.size(-1), B = D > 0 ? x.numel() / D : 0, nrep = H / KV;
    const int64_t Q = H * hd, KVW = KV * hd, NQKV = Q + 2 * KVW;
    if (B < 1 || B > kMaxRows || n < 1) return 1;
    const at::Tensor *gu = T(L->gate_up_w);
    if (!gu || !gu->defined() || gu->dim() != 2 || gu->size(0) % 2 != 0) return 1;
    const int64_t I = gu->size(0) / 2;
    if (!vec(T(L->in_norm), D, false) || !vec(T(L->post_norm), D, false) || !matrix(T(L->qkv_w), NQKV, D) ||
        !vec(T(L->qkv_b), NQKV, true) || !matrix(T(L->o_w), D, Q) || !vec(T(L->o_b), D, true) ||
        !matrix(gu, 2 * I, D) || !matrix(T(L->down_w), D, I))
      return 1;
    for (const at::Tensor *c : {&kb, &vb})
      if (!m3IsF32CPU(*c) || c->dim() != 4 || c->size(0) != B || c->size(1) != KV || c->size(2) < n ||
          c->size(3) != hd || c->stride(3) != 1)
        return 1;
    if (!vec(T(cqp), B * Q, false) || !vec(T(sqp), B * Q, false) || !vec(T(ckp), B * KVW, false) ||
        !vec(T(skp), B * KVW, false) || !vec(mask, B * nrep * n, true))
      return 1;

    // Scratch for the step's activations, a few rows each.
    std::unique_ptr<float[]> buf(new float[B * (D + NQKV + Q + 2 * I + I + D) + hd]);  // not zeroed
    float *h = buf.get(), *qkv = h + B * D, *att = qkv + B * NQKV, *gup = att + B * Q, *g = gup + B * 2 * I,
          *o = g + B * I, *tmp = o + B * D;
    at::Tensor y = at::empty_like(x);
    const float *X = x.data_ptr<float>();
    float *Y = y.data_ptr<float>();
    const float e = static_cast<float>(L->eps);
    auto bias = [&](void *p) { return p ? T(p)->data_ptr<float>() : nullptr; };

    // Attention block.
    const float *inW = T(L->in_norm)->data_ptr<float>();
    for (int64_t b = 0; b < B; b++) rmsRow(X + b * D, inW, h + b * D, D, e);
    product(h, *T(L->qkv_w), bias(L->qkv_b), qkv, B);
    const float *CQ = T(cqp)->data_ptr<float>(), *SQ = T(sqp)->data_ptr<float>();
    const float *CK = T(ckp)->data_ptr<float>(), *SK = T(skp)->data_ptr<float>();
    float *K = kb.data_ptr<float>(), *V = vb.data_ptr<float>();
    for (int64_t b = 0; b < B; b++) {
      float *row = qkv + b * NQKV;
      // The query rotated in place (through tmp, one head at a time),
      // the key rotated into its cache slot, the value copied there.
      for (int64_t i = 0; i < Q; i += hd) {
        ropeRow(row + i, CQ + b * Q + i, SQ + b * Q + i, tmp, hd, hd);
        std::copy(tmp, tmp + hd, row + i);
      }
      for (int64_t j = 0; j < KV; j++) {
        float *ks = K + b * kb.stride(0) + j * kb.stride(1) + (n - 1) * kb.stride(2);
        float *vs = V + b * vb.stride(0) + j * vb.stride(1) + (n - 1) * vb.stride(2);
        ropeRow(row + Q + j * hd, CK + b * KVW + j * hd, SK + b * KVW + j * hd, ks, hd, hd);
        std::copy(row + Q + KVW + j * hd, row + Q + KVW + (j + 1) * hd, vs);
      }
    }
    const float *M = mask ? mask->data_ptr<float>() : nullptr;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    eachPair(B * KV, nrep * n, [&](int64_t p, float *scores) {
      const int64_t b = p / KV, j = p % KV;
      head(qkv + b * NQKV + j * nrep * hd, K + b * kb.stride(0) + j * kb.stride(1), kb.stride(2),
           V + b * vb.stride(0) + j * vb.stride(1), vb.stride(2), M ? M + b * nrep * n : nullptr,
           att + b * Q + j * nrep * hd, nrep, n, hd, scale, scores);
    });
    product(att, *T(L->o_w), bias(L->o_b), o, B);
    for (int64_t i = 0; i < B * D; i++) Y[i] = X[i] + o[i];

    // MLP block.
    const float *postW = T(L->post_norm)->data_ptr<float>();
    for (int64_t b = 0; b < B; b++) rmsRow(Y + b * D, postW, h + b * D, D, e);
    product(h, *gu, nullptr, gup, B);
    for (int64_t b = 0; b < B; b++) siluTimes(gup + b * 2 * I, gup + b * 2 * I + I, g + b * I, I);
    product(g, *T(L->down_w), nullptr, o, B);
    for (int64_t i = 0; i < B * D; i++) Y[i] += o[i];
    *out = new at::Tensor(y);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

}  // extern "C"
