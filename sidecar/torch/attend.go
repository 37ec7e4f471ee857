package torch

/*
#include <stdlib.h>
#include "attend.h"
*/
import "C"

import "unsafe"

// AttendFew returns softmax(q·kᵀ·scale + mask)·v for a few queries against
// a KV cache in one call: q [B, H, R, hd] with R at most 64, k and v
// [B, H, T, hd] (views of a cache buffer will do: only the last dimension
// must be contiguous), mask [B, 1, R, T] additive or a zero Raw. ok is
// false when it does not take these tensors (not f32 on the CPU, autograd
// on, other shapes, no AVX2): the caller then uses libtorch's attention.
// Results equal libtorch's up to float32 summation order.
func AttendFew(q, k, v, mask Raw, scale float64) (o Raw, ok bool, err error) {
	if !kernelsOK {
		return Raw{}, false, nil
	}
	var out unsafe.Pointer
	var msg [256]C.char
	rc := C.m3_attend(unsafe.Pointer(q.c), unsafe.Pointer(k.c), unsafe.Pointer(v.c), unsafe.Pointer(mask.c), C.double(scale), &out, &msg[0], C.int(len(msg)))
	return kernelResult("attend", rc, out, msg[:])
}
