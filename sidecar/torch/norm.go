package torch

/*
#include <stdlib.h>
#include "norm.h"
*/
import "C"

import "unsafe"

// RMSNorm returns x·rsqrt(mean(x², -1) + eps)·w in one call (libtorch:
// six ops) for x [..., D] and w [D], contiguous f32 on the CPU without
// autograd; ok is false for other tensors (the caller then composes
// libtorch's ops). Results equal the composed ops' up to the summation
// order of the squares.
func RMSNorm(x, w Raw, eps float64) (y Raw, ok bool, err error) {
	var out unsafe.Pointer
	var msg [256]C.char
	rc := C.m3_rms_norm(unsafe.Pointer(x.c), unsafe.Pointer(w.c), C.double(eps), &out, &msg[0], C.int(len(msg)))
	return kernelResult("rms norm", rc, out, msg[:])
}

// Rope returns x·cos + rotate_half(x)·sin in one call (libtorch: nine
// ops), rotate_half per head of hd values being (-x[hd/2:], x[:hd/2]),
// for x, cos and sin of one shape [..., heads·hd], f32 on the CPU without
// autograd, cos and sin contiguous and x's rows evenly spaced (contiguous,
// or a column block of a contiguous tensor); ok is false for other
// tensors. Results equal the
// composed ops' exactly.
func Rope(x, cos, sin Raw, hd int64) (y Raw, ok bool, err error) {
	var out unsafe.Pointer
	var msg [256]C.char
	rc := C.m3_rope(unsafe.Pointer(x.c), unsafe.Pointer(cos.c), unsafe.Pointer(sin.c), C.long(hd), &out, &msg[0], C.int(len(msg)))
	return kernelResult("rope", rc, out, msg[:])
}
