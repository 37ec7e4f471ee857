// tf32.h declares the C wrappers of tf32.cpp for cgo.
#ifndef M3GATE_TORCH_TF32_H
#define M3GATE_TORCH_TF32_H
#ifdef __cplusplus
extern "C" {
#endif
int m3_set_allow_tf32(int cudnn, int cublas);
int m3_allow_tf32_cudnn();
int m3_allow_tf32_cublas();
#ifdef __cplusplus
}
#endif
#endif
