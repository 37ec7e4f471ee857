package torch

/*
#cgo CXXFLAGS: -std=c++17 -O3 -fopenmp
#cgo LDFLAGS: -fopenmp
#include <stdlib.h>
#include "linear.h"
*/
import "C"

import (
	"errors"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
	"golang.org/x/sys/cpu"
)

// MaxRowsLinear is the most rows RowsLinear computes; more rows go to
// BLAS's gemm, which pays off from there.
const MaxRowsLinear = 8

// kernelsOK says whether this CPU runs the package's kernels (RowsLinear,
// AttendFew): AVX2 and FMA.
var kernelsOK = C.m3_rows_linear_supported() == 1

// RowsLinear returns x·Wᵀ (+ b) for x [..., K] of at most MaxRowsLinear
// rows, w [N, K] and b [N] (or nil), computed by a kernel that streams W
// once for all rows (BLAS's gemm packs W first and costs about twice
// that for a few rows; gemv reads W once per row). It returns nil, nil
// when the tensors are not f32, contiguous, CPU, grad-free and within
// that size, or the CPU lacks AVX2/FMA: the caller then uses libtorch's
// linear. Results equal libtorch's up to float32 summation order.
func RowsLinear(x, w, b *ts.Tensor) (*ts.Tensor, error) {
	defer Keep(x, w, b)
	var br Raw
	if b != nil {
		br = Borrow(b)
	}
	y, ok, err := RowsLinearRaw(Borrow(x), Borrow(w), br)
	if !ok || err != nil {
		return nil, err
	}
	return y.Wrap(), nil
}

// RowsLinearRaw is RowsLinear on Raw handles (b: a zero Raw for no bias);
// ok is false when the kernel does not take these tensors.
func RowsLinearRaw(x, w, b Raw) (y Raw, ok bool, err error) {
	if !kernelsOK {
		return Raw{}, false, nil
	}
	var out unsafe.Pointer
	var msg [256]C.char
	rc := C.m3_rows_linear(unsafe.Pointer(x.c), unsafe.Pointer(w.c), unsafe.Pointer(b.c), &out, &msg[0], C.int(len(msg)))
	return kernelResult("rows linear", rc, out, msg[:])
}

// kernelResult is the result of one of this package's kernel wrappers
// (linear.cpp, attend.cpp, norm.cpp): rc 0 with a new tensor in out, 1 when the
// kernel does not take the arguments, else an error with the wrapper's
// message in msg.
func kernelResult(what string, rc C.int, out unsafe.Pointer, msg []C.char) (Raw, bool, error) {
	switch rc {
	case 0:
		liveRaw.Add(1)
		return Raw{lib.Ctensor(out)}, true, nil
	case 1:
		return Raw{}, false, nil
	default:
		return Raw{}, false, errors.New(what + ": " + C.GoString(&msg[0]))
	}
}

// HasBF16Products reports whether this CPU has bf16 matrix instructions
// (avx512_bf16 or amx_bf16), with which libtorch's bf16 products (oneDNN)
// run about twice as fast as f32 ones; without them they are slower.
func HasBF16Products() bool {
	return cpu.X86.HasAVX512BF16 || cpu.X86.HasAMXBF16
}
