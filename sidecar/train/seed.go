package train

import (
	"github.com/m3gate/m3gate/sidecar/torch"
)

// manualSeed seeds libtorch's global generator (dropout masks), so that a
// resumed run draws the same masks as an uninterrupted one.
func manualSeed(seed int64) { torch.ManualSeed(seed) }

// setGradEnabled sets this OS thread's grad mode and returns the previous one.
func setGradEnabled(on bool) bool { return torch.SetGradEnabled(on) }
