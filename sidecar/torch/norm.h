// norm.h declares the C wrappers of norm.cpp for cgo.
#ifndef M3GATE_TORCH_NORM_H
#define M3GATE_TORCH_NORM_H
#ifdef __cplusplus
extern "C" {
#endif
// m3_rms_norm sets *out to a new tensor x·rsqrt(mean(x², -1) + eps)·w for
// x [..., D] and w [D], both contiguous f32 on the CPU without autograd.
// It returns 0, 1 when the arguments are not of that kind (the caller
// uses libtorch), or -1 on a libtorch error (message in err).
int m3_rms_norm(void *x, void *w, double eps, void **out, char *err, int errlen);
// m3_rope sets *out to a new tensor x·cos + rotate_half(x)·sin for x, cos
// and sin of one shape [..., heads·hd], contiguous f32 on the CPU without
// autograd, rotate_half per head of hd (even) values. Returns as above.
int m3_rope(void *x, void *cos, void *sin, long hd, void **out, char *err, int errlen);
#ifdef __cplusplus
}
#endif
#endif
