package torch

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// ErrNoCUDA is returned for a CUDA device when the libtorch this binary was
// built against has no CUDA support (Debian's CPU-only libtorch).
var ErrNoCUDA = errors.New("this m3gate-sidecar was built against a CPU-only libtorch; rebuild with LIBTORCH=/path/to/libtorch-cuda, see README 'GPU build'")

// ParseDevice parses a device name: "cpu" (or "", the default), "cuda"
// (the first GPU) or "cuda:N". Anything else, "gpu" and "cuda:x" among
// them, is an error naming the accepted forms. ParseDevice only parses:
// CheckDevice says whether this build can use the device.
func ParseDevice(s string) (gotch.Device, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	switch name {
	case "", "cpu":
		return gotch.CPU, nil
	case "cuda":
		return gotch.CudaBuilder(0), nil
	}
	if idx, ok := strings.CutPrefix(name, "cuda:"); ok {
		n, err := strconv.ParseUint(idx, 10, 16)
		if err == nil {
			return gotch.CudaBuilder(uint(n)), nil
		}
	}
	return gotch.Device{}, fmt.Errorf("device %q: want cpu, cuda or cuda:N", s)
}

// DeviceName is the inverse of ParseDevice: "cpu" or "cuda:N". The zero
// gotch.Device is the CPU.
func DeviceName(d gotch.Device) string {
	if IsCUDA(d) {
		return "cuda:" + strconv.Itoa(d.Value)
	}
	return "cpu"
}

// IsCUDA reports whether d is a CUDA device. Unlike gotch's Device.IsCuda
// it treats the zero Device as the CPU.
func IsCUDA(d gotch.Device) bool { return d.Name == "CUDA" }

// CUDAAvailable reports whether libtorch can use a GPU: it was built with
// CUDA and the driver sees at least one device.
func CUDAAvailable() bool { return gotch.CUDA.IsAvailable() }

// CUDADeviceCount is the number of GPUs libtorch sees (0 on a CPU-only
// build).
func CUDADeviceCount() int { return int(gotch.CUDA.DeviceCount()) }

// CheckDevice returns nil when models can run on d. For a CUDA device it
// needs a CUDA libtorch (else ErrNoCUDA) and a GPU of that index, and it
// turns TF32 off for cuDNN convolutions and cuBLAS matrix products so that
// float32 results match the CPU's (libtorch's default lets cuDNN round
// convolution inputs to TF32).
func CheckDevice(d gotch.Device) error {
	if !IsCUDA(d) {
		if d.Name != "" && d.Name != "CPU" {
			return fmt.Errorf("device %q: unknown device type", d.Name)
		}
		return nil
	}
	if d.Value < 0 {
		return fmt.Errorf("device cuda:%d: negative index", d.Value)
	}
	if !CUDAAvailable() {
		if !CUDABuild() {
			return fmt.Errorf("device %s: %w", DeviceName(d), ErrNoCUDA)
		}
		return fmt.Errorf("device %s: libtorch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)", DeviceName(d))
	}
	if n := CUDADeviceCount(); d.Value >= n {
		return fmt.Errorf("device %s: only %d GPU(s) visible (cuda:0 to cuda:%d)", DeviceName(d), n, n-1)
	}
	if err := SetAllowTF32(false, false); err != nil {
		return fmt.Errorf("device %s: %w", DeviceName(d), err)
	}
	return nil
}

// CUDABuild reports whether libtorch's CUDA library is loaded into this
// process, which tells a CPU-only build (Debian's libtorch, CUDA libraries
// replaced by empty link stubs) from a CUDA build on a machine without a
// usable GPU.
func CUDABuild() bool {
	maps, err := os.ReadFile("/proc/self/maps")
	return err == nil && bytes.Contains(maps, []byte("libtorch_cuda"))
}

// TensorDevice is the device t lives on, normalised so that it compares
// equal to ParseDevice's result (gotch reports the CPU as {CPU 1}, not
// gotch.CPU's {CPU -1}).
func TensorDevice(t *ts.Tensor) gotch.Device {
	d := t.MustDevice()
	if IsCUDA(d) {
		return d
	}
	return gotch.CPU
}

// SameDevice reports whether a and b name the same device (the zero
// Device is the CPU).
func SameDevice(a, b gotch.Device) bool {
	if IsCUDA(a) != IsCUDA(b) {
		return false
	}
	return !IsCUDA(a) || a.Value == b.Value
}

// ToDevice returns t on device d: t itself when it is already there (no
// copy, so the CPU path is untouched), else a copy, deleting t when del.
func ToDevice(t *ts.Tensor, d gotch.Device, del bool) *ts.Tensor {
	if SameDevice(TensorDevice(t), d) {
		return t
	}
	if !IsCUDA(d) {
		d = gotch.CPU
	}
	return t.MustTo(d, del)
}

// ToCPU is ToDevice(t, gotch.CPU, del): the copy Go code makes before
// reading a tensor's values.
func ToCPU(t *ts.Tensor, del bool) *ts.Tensor { return ToDevice(t, gotch.CPU, del) }
