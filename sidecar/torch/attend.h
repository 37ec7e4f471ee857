// attend.h declares the C wrapper of attend.cpp for cgo.
#ifndef M3GATE_TORCH_ATTEND_H
#define M3GATE_TORCH_ATTEND_H
#ifdef __cplusplus
extern "C" {
#endif
// m3_attend sets *out to a new tensor softmax(q·kᵀ·scale + mask)·v for q
// [B, H, R, hd] (contiguous, R <= 64), k and v [B, H, T, hd] (last
// dimension contiguous) and mask [B, 1, R, T] (additive, contiguous) or
// NULL, all f32 on the CPU without autograd, on a CPU with AVX2 and FMA
// (the caller checks: m3_rows_linear_supported). It returns 0, 1 when the
// arguments are not of that kind (the caller uses libtorch instead), or -1
// on a libtorch error, with the message copied into err (errlen bytes).
int m3_attend(void *q, void *k, void *v, void *mask, double scale, void **out, char *err, int errlen);
#ifdef __cplusplus
}
#endif
#endif
