// attend.cpp is attention for a few queries against a KV cache (a decode
// step): softmax(q·kᵀ·scale + mask)·v in one call. Through libtorch the
// same is about ten ops per layer (two batched BLAS products, the scale,
// the mask, the softmax, layout copies), each paying dispatch and an
// allocation, for a few thousand multiply-adds: this walks each (batch,
// KV head) pair once on libtorch's OpenMP threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <exception>

#include "attend.h"
#include "heads.h"
#include "kernel.h"

namespace {

constexpr int64_t kMaxQueries = 64;

}  // namespace

extern "C" {

int m3_attend(void *qp, void *kp, void *vp, void *mp, double scale, void **out, char *err, int errlen) {
  try {
    const at::Tensor &q = *static_cast<at::Tensor *>(qp);
    const at::Tensor &k = *static_cast<at::Tensor *>(kp);
    const at::Tensor &v = *static_cast<at::Tensor *>(vp);
    const at::Tensor *m = static_cast<at::Tensor *>(mp);
    auto f32cpu = [](const at::Tensor &t) { return m3IsF32CPU(t) && t.dim() == 4; };
    if (at::GradMode::is_enabled() || !f32cpu(q) || !f32cpu(k) || !f32cpu(v) || (m && !f32cpu(*m))) return 1;
    const int64_t B = q.size(0), H = q.size(1), R = q.size(2), hd = q.size(3), T = k.size(2);
    if (!q.is_contiguous() || R > kMaxQueries || T == 0) return 1;
    for (const at::Tensor *t : {&k, &v})
      if (t->size(0) != B || t->size(1) != H || t->size(2) != T || t->size(3) != hd || t->stride(3) != 1) return 1;
    if (m && (!m->is_contiguous() || m->size(0) != B || m->size(1) != 1 || m->size(2) != R || m->size(3) != T))
      return 1;
    at::Tensor o = at::empty({B, H, R, hd}, q.options());
    const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
    const float *M = m ? m->data_ptr<float>() : nullptr;
    float *O = o.data_ptr<float>();
    const float sc = static_cast<float>(scale);
    eachPair(B * H, R * T, [&](int64_t p, float *scores) {
      const int64_t b = p / H, h = p % H;
      head(Q + p * R * hd, K + b * k.stride(0) + h * k.stride(1), k.stride(2), V + b * v.stride(0) + h * v.stride(1),
           v.stride(2), M ? M + b * R * T : nullptr, O + p * R * hd, R, T, hd, sc, scores);
    });
    *out = new at::Tensor(o);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

}  // extern "C"
