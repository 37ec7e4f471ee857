// memory.h declares the C wrapper of memory.cpp for cgo.
#ifndef M3GATE_TORCH_MEMORY_H
#define M3GATE_TORCH_MEMORY_H
#ifdef __cplusplus
extern "C" {
#endif
// m3_from_memory sets *out to a new CPU tensor of scalar type kind (a
// c10::ScalarType) and the given shape (dims entries) over the memory at
// data, which it neither copies nor frees. Returns 0, or -1 on a libtorch
// error (message in err).
int m3_from_memory(void *data, const long *shape, int dims, int kind, void **out, char *err, int errlen);
#ifdef __cplusplus
}
#endif
#endif
