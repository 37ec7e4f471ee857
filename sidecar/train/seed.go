package train

/*
#include <stdint.h>
// at_manual_seed is defined in gotch's libtch, which this package links.
void at_manual_seed(int64_t seed);
int at_grad_set_enabled(int b);
*/
import "C"

import (
	"fmt"
	"runtime"

	_ "github.com/sugarme/gotch/libtch" // links at_manual_seed
)

// manualSeed seeds libtorch's global generator (dropout masks), so that a
// resumed run draws the same masks as an uninterrupted one.
func manualSeed(seed int64) { C.at_manual_seed(C.int64_t(seed)) }

// withGrad runs fn with libtorch's autograd switched on or off. Grad mode is
// per OS thread, so the goroutine stays on one thread meanwhile and the
// previous mode is restored after; panics of Must* calls become errors.
func withGrad(on bool, fn func() error) (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("libtorch: %v", r)
		}
	}()
	prev := setGradEnabled(on)
	defer setGradEnabled(prev)
	return fn()
}

// setGradEnabled sets this OS thread's grad mode and returns the previous
// one. gotch v0.9.1's GradSetEnabled reads the C int result as a Go int (8
// bytes) and so always reports false; this reads it correctly.
func setGradEnabled(on bool) bool {
	b := C.int(0)
	if on {
		b = 1
	}
	return C.at_grad_set_enabled(b) == 1
}
