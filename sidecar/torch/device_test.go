package torch

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func TestParseDevice(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want gotch.Device
		name string // DeviceName(want)
	}{
		{"", gotch.CPU, "cpu"},
		{"cpu", gotch.CPU, "cpu"},
		{" CPU ", gotch.CPU, "cpu"},
		{"cuda", gotch.CudaBuilder(0), "cuda:0"},
		{"cuda:0", gotch.CudaBuilder(0), "cuda:0"},
		{"cuda:1", gotch.CudaBuilder(1), "cuda:1"},
		{"CUDA:3", gotch.CudaBuilder(3), "cuda:3"},
	} {
		got, err := ParseDevice(tc.in)
		if err != nil {
			t.Errorf("ParseDevice(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseDevice(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if n := DeviceName(got); n != tc.name {
			t.Errorf("DeviceName(ParseDevice(%q)) = %q, want %q", tc.in, n, tc.name)
		}
		if back, err := ParseDevice(DeviceName(got)); err != nil || back != got {
			t.Errorf("ParseDevice(DeviceName(%+v)) = %+v, %v", got, back, err)
		}
	}
	for _, in := range []string{"gpu", "cuda:x", "cuda:", "cuda:-1", "cuda:1.5", "cuda0", "mps", "cuda:99999999"} {
		_, err := ParseDevice(in)
		if err == nil {
			t.Errorf("ParseDevice(%q) succeeded, want an error", in)
			continue
		}
		if !strings.Contains(err.Error(), "want cpu, cuda or cuda:N") {
			t.Errorf("ParseDevice(%q) error %q does not name the accepted forms", in, err)
		}
	}
}

func TestDeviceNameZeroIsCPU(t *testing.T) {
	var zero gotch.Device
	if got := DeviceName(zero); got != "cpu" {
		t.Errorf("DeviceName(zero Device) = %q, want cpu", got)
	}
	if IsCUDA(zero) || IsCUDA(gotch.CPU) || !IsCUDA(gotch.CudaBuilder(2)) {
		t.Error("IsCUDA: zero/CPU must be false, cuda:2 true")
	}
}

// TestCheckDeviceCPUOnlyBuild runs on the project's CPU-only libtorch
// (Debian's, CUDA libraries stubbed out): CPU is usable and every CUDA
// device is refused with the rebuild message. On a CUDA build the test
// is skipped.
func TestCheckDeviceCPUOnlyBuild(t *testing.T) {
	if err := CheckDevice(gotch.CPU); err != nil {
		t.Fatalf("CheckDevice(cpu): %v", err)
	}
	if err := CheckDevice(gotch.Device{}); err != nil {
		t.Fatalf("CheckDevice(zero Device): %v", err)
	}
	if CUDABuild() {
		t.Skip("libtorch has CUDA here")
	}
	if n := CUDADeviceCount(); n != 0 {
		t.Errorf("CUDADeviceCount() = %d on a CPU-only build", n)
	}
	for _, d := range []gotch.Device{gotch.CudaBuilder(0), gotch.CudaBuilder(1)} {
		err := CheckDevice(d)
		if !errors.Is(err, ErrNoCUDA) {
			t.Fatalf("CheckDevice(%s) = %v, want ErrNoCUDA", DeviceName(d), err)
		}
		for _, part := range []string{"CPU-only libtorch", "LIBTORCH=", "GPU build", DeviceName(d)} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("CheckDevice(%s) error %q lacks %q", DeviceName(d), err, part)
			}
		}
	}
}

// TestAllowTF32 checks the switches reach libtorch's global context (they
// exist on CPU-only builds too, where nothing reads them).
func TestAllowTF32(t *testing.T) {
	cudnn0, cublas0 := AllowTF32()
	defer SetAllowTF32(cudnn0, cublas0)
	for _, tc := range []struct{ cudnn, cublas bool }{{true, false}, {false, true}, {false, false}, {true, true}} {
		if err := SetAllowTF32(tc.cudnn, tc.cublas); err != nil {
			t.Fatal(err)
		}
		if c, b := AllowTF32(); c != tc.cudnn || b != tc.cublas {
			t.Errorf("after SetAllowTF32(%v, %v): AllowTF32() = %v, %v", tc.cudnn, tc.cublas, c, b)
		}
	}
}

func TestToDeviceOnCPU(t *testing.T) {
	x := ts.MustOfSlice([]float32{1, 2, 3})
	if d := TensorDevice(x); d != gotch.CPU {
		t.Errorf("TensorDevice(cpu tensor) = %+v, want %+v", d, gotch.CPU)
	}
	// Already there: the same tensor comes back, no copy.
	for _, d := range []gotch.Device{gotch.CPU, {}, x.MustDevice()} {
		if got := ToDevice(x, d, false); got != x {
			t.Errorf("ToDevice(cpu tensor, %+v) made a copy", d)
		}
	}
	if got := ToCPU(x, false); got != x {
		t.Error("ToCPU(cpu tensor) made a copy")
	}
	if !SameDevice(gotch.CPU, gotch.Device{}) || !SameDevice(gotch.CPU, x.MustDevice()) ||
		SameDevice(gotch.CPU, gotch.CudaBuilder(0)) || SameDevice(gotch.CudaBuilder(0), gotch.CudaBuilder(1)) ||
		!SameDevice(gotch.CudaBuilder(1), gotch.CudaBuilder(1)) {
		t.Error("SameDevice gives a wrong answer")
	}
}

// TestCUDABuildDetection: the /proc/self/maps probe sees libtorch's
// libraries at all (else CUDABuild would be false everywhere), and a GPU
// is never available without libtorch's CUDA library loaded.
func TestCUDABuildDetection(t *testing.T) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	if !strings.Contains(string(maps), "libtorch_cpu") {
		t.Error("libtorch_cpu is not in /proc/self/maps: the CUDA build probe cannot work")
	}
	if CUDAAvailable() && !CUDABuild() {
		t.Error("CUDA is available but CUDABuild() is false")
	}
}

// TestCUDADevice runs only where libtorch sees a GPU.
func TestCUDADevice(t *testing.T) {
	if !CUDAAvailable() {
		t.Skip("no GPU visible to libtorch")
	}
	cuda := gotch.CudaBuilder(0)
	if err := SetAllowTF32(true, true); err != nil {
		t.Fatal(err)
	}
	if err := CheckDevice(cuda); err != nil {
		t.Fatalf("CheckDevice(cuda:0): %v", err)
	}
	if c, b := AllowTF32(); c || b {
		t.Errorf("after CheckDevice(cuda:0): TF32 cudnn=%v cublas=%v, want both off", c, b)
	}
	n := CUDADeviceCount()
	if err := CheckDevice(gotch.CudaBuilder(uint(n))); err == nil {
		t.Errorf("CheckDevice(cuda:%d) with %d GPUs succeeded", n, n)
	}
	x := ts.MustOfSlice([]float32{1, 2, 3})
	g := ToDevice(x, cuda, false)
	if d := TensorDevice(g); !SameDevice(d, cuda) {
		t.Fatalf("ToDevice(cuda:0) gave a tensor on %s", DeviceName(d))
	}
	back := ToCPU(g, false)
	if d := TensorDevice(back); d != gotch.CPU {
		t.Fatalf("ToCPU gave a tensor on %s", DeviceName(d))
	}
	if got := back.Float64Values(); got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Errorf("round trip through cuda:0: %v", got)
	}
}
