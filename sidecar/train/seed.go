package train

import (
	"fmt"
	"runtime"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// manualSeed seeds libtorch's global generator (dropout masks), so that a
// resumed run draws the same masks as an uninterrupted one.
func manualSeed(seed int64) { torch.ManualSeed(seed) }

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

// setGradEnabled sets this OS thread's grad mode and returns the previous one.
func setGradEnabled(on bool) bool { return torch.SetGradEnabled(on) }
