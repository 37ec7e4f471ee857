// Package torch is the one place that talks to libtorch through cgo directly,
// for the few process-wide settings gotch does not expose (intra-op threads,
// grad mode, the TF32 switches in tf32.cpp), and the one parser of device
// names ("cpu", "cuda", "cuda:N") with the check that this build can use
// the device. Everything else uses gotch's ts and nn packages.
package torch

/*
#cgo CXXFLAGS: -std=c++17
#include <stdint.h>
#include "tf32.h"
// at_set_num_threads and at_get_num_threads are defined in gotch's libtch,
// which every binary that imports gotch links.
void at_set_num_threads(int n_threads);
int at_get_num_threads();
int at_grad_set_enabled(int b);
void at_manual_seed(int64_t seed);
*/
import "C"

import (
	"fmt"
	"runtime"

	_ "github.com/sugarme/gotch/libtch" // links the symbols declared above
)

// SetThreads sets libtorch's intra-op thread count. n <= 0 means one thread
// per core, the default.
func SetThreads(n int) error {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	if n > 1024 {
		return fmt.Errorf("set threads: %d is more than 1024", n)
	}
	// The count is per OS thread once a thread has run torch (later
	// threads start from the last count set): set it where passes run
	// and on the caller's thread.
	C.at_set_num_threads(C.int(n))
	onPassThread(func() { C.at_set_num_threads(C.int(n)) })
	return nil
}

// Threads returns libtorch's intra-op thread count on the thread that runs
// passes (see Run).
func Threads() int {
	n := 0
	onPassThread(func() { n = int(C.at_get_num_threads()) })
	return n
}

// SetGradEnabled turns libtorch's autograd on or off for the calling OS
// thread and returns the previous mode. (gotch v0.9.1's GradSetEnabled reads
// the C int result as a 64-bit value and so misreports the previous mode;
// this reads it correctly.) Grad mode is thread-local: use Run, which
// pins the goroutine to its thread, unless the caller already did.
func SetGradEnabled(on bool) (prev bool) {
	b := C.int(0)
	if on {
		b = 1
	}
	return C.at_grad_set_enabled(b) != 0
}

// GradEnabled reports whether autograd is on for the calling OS thread
// (see SetGradEnabled).
func GradEnabled() bool {
	on := SetGradEnabled(false)
	SetGradEnabled(on)
	return on
}

// ManualSeed seeds libtorch's global random generator (dropout masks,
// random initialisation), so that runs repeat.
func ManualSeed(seed int64) { C.at_manual_seed(C.int64_t(seed)) }

// SetAllowTF32 turns TF32 (10-bit mantissa) arithmetic for float32 on or
// off on CUDA: cudnn for cuDNN convolutions (libtorch's default is on),
// cublas for matrix products (default off since libtorch 1.12). The
// switches are process-wide and harmless on a CPU-only build, where
// nothing reads them.
func SetAllowTF32(cudnn, cublas bool) error {
	if C.m3_set_allow_tf32(cbool(cudnn), cbool(cublas)) != 0 {
		return fmt.Errorf("set allow tf32: libtorch refused")
	}
	return nil
}

// AllowTF32 reports libtorch's current TF32 switches for cuDNN
// convolutions and cuBLAS matrix products.
func AllowTF32() (cudnn, cublas bool) {
	return C.m3_allow_tf32_cudnn() == 1, C.m3_allow_tf32_cublas() == 1
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
