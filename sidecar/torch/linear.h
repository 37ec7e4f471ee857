// linear.h declares the C wrappers of linear.cpp for cgo.
#ifndef M3GATE_TORCH_LINEAR_H
#define M3GATE_TORCH_LINEAR_H
#ifdef __cplusplus
extern "C" {
#endif
// m3_rows_linear_supported reports whether this CPU runs the kernel (AVX2
// and FMA): 1 or 0.
int m3_rows_linear_supported();
// m3_rows_linear sets *out to a new tensor y = x·Wᵀ (+ b) for x [..., K]
// with at most 8 rows, W [N, K] (f32 or bf16) and b [N] or NULL, x and b
// f32, all contiguous and on the CPU. It returns 0, 1 when the arguments are not of that kind (the
// caller uses libtorch's linear instead), or -1 on a libtorch error, with
// the message copied into err (errlen bytes).
int m3_rows_linear(void *x, void *w, void *b, void **out, char *err, int errlen);
#ifdef __cplusplus
}
#endif
#endif
