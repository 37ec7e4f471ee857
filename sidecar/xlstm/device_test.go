package xlstm

import (
	"errors"
	"math/rand"
	"slices"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// TestDeviceZeroIsCPU: the zero gotch.Device builds a CPU predictor that
// predicts exactly as one built on gotch.CPU (gotch itself aborts the
// process on a zero Device).
func TestDeviceZeroIsCPU(t *testing.T) {
	c := smallConfig()
	p0, err := New(c, 3, gotch.Device{})
	if err != nil {
		t.Fatal(err)
	}
	p1, err := New(c, 3, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	if p0.Device() != gotch.CPU {
		t.Errorf("Device() = %+v, want gotch.CPU", p0.Device())
	}
	x := randTensor(rand.New(rand.NewSource(1)), 1, 2, 5, int64(c.InputDim))
	y0, err := p0.Predict(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	y1, err := p1.Predict(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(y0, y1) {
		t.Errorf("zero Device predicts %v, gotch.CPU %v", y0, y1)
	}
}

// TestDeviceCUDAOnCPUOnlyBuild: a CUDA predictor on this CPU-only libtorch
// is a clear error, not a crash.
func TestDeviceCUDAOnCPUOnlyBuild(t *testing.T) {
	if torch.CUDABuild() {
		t.Skip("this is a CUDA build of libtorch")
	}
	if _, err := New(smallConfig(), 3, gotch.CudaBuilder(0)); !errors.Is(err, torch.ErrNoCUDA) {
		t.Errorf("New on cuda:0: %v, want torch.ErrNoCUDA", err)
	}
}
