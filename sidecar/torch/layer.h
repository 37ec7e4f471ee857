// layer.h declares the C wrapper of layer.cpp for cgo.
#ifndef M3GATE_TORCH_LAYER_H
#define M3GATE_TORCH_LAYER_H
#ifdef __cplusplus
extern "C" {
#endif
// m3_decoder is one Llama decoder layer's weights (libtorch tensor
// handles; the biases may be NULL) and shape.
typedef struct {
  void *in_norm, *qkv_w, *qkv_b, *o_w, *o_b, *post_norm, *gate_up_w, *down_w;
  double eps;
  long heads, kv_heads, head_dim;
} m3_decoder;
// m3_decode_layer runs layer L for one new token of each of x's rows (a
// decode step, at most 8 sequences) and sets *out to the new residual
// stream (x's shape): the layer's keys and values of the new token go
// to slot n-1 of k and v [B, nKV, cap, hd], and attention reads slots
// 0..n-1 under mask [B, 1, nrep, n] (additive) or NULL; cos_q, sin_q
// [B, heads·hd] and cos_k, sin_k [B, nKV·hd] are the rotary tables of the
// new tokens. It returns 0, 1 when the arguments are not of the kinds it
// takes (the caller runs the layer's ops instead; nothing was written),
// or -1 on a libtorch error, with the message copied into err (errlen
// bytes). The caller checks that the CPU has AVX2 and FMA.
int m3_decode_layer(const m3_decoder *L, void *x, void *k, void *v, long n, void *mask, void *cos_q, void *sin_q,
                    void *cos_k, void *sin_k, void **out, char *err, int errlen);
// m3_decode_layer_exact reports whether m3_decode_layer's SiLU is
// libtorch's vectorised one (SLEEF's exponential found in the process),
// making its results those of libtorch's ops bit for bit: 1 or 0.
int m3_decode_layer_exact();
#ifdef __cplusplus
}
#endif
#endif
