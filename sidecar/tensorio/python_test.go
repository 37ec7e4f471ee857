package tensorio

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

const python = "/usr/bin/python3"

var (
	torchOnce sync.Once
	torchErr  error
)

// needTorch skips the test when /usr/bin/python3 cannot import torch.
func needTorch(t *testing.T) {
	t.Helper()
	torchOnce.Do(func() {
		torchErr = exec.Command(python, "-c", "import torch").Run()
	})
	if torchErr != nil {
		t.Skipf("skipping: %s cannot import torch (%v); install python3-torch", python, torchErr)
	}
}

// runPython runs a testdata script and returns its stdout.
func runPython(t *testing.T, script string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(python, append([]string{filepath.Join("testdata", script)}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	return out
}

// refTensor is a tensor as the Python scripts describe it.
type refTensor struct {
	DType  string          `json:"dtype"`
	Shape  []int64         `json:"shape"`
	Values json.RawMessage `json:"values"`
}

// floats returns the reference values as float32 (they are exact float32
// values printed as float64).
func (r refTensor) floats(t *testing.T) []float32 {
	var f64 []float64
	if err := json.Unmarshal(r.Values, &f64); err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(f64))
	for i, v := range f64 {
		out[i] = float32(v)
	}
	return out
}

func (r refTensor) ints(t *testing.T) []int64 {
	var v []int64
	if err := json.Unmarshal(r.Values, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// checkAgainst compares a tensor with a reference: shape and values
// (floating tensors compared after exact conversion to F32).
func checkAgainst(t *testing.T, name string, x *ts.Tensor, ref refTensor, isInt bool) {
	t.Helper()
	if got, want := x.MustSize(), ref.Shape; !reflect.DeepEqual(got, want) {
		t.Errorf("%s: shape %v, want %v", name, got, want)
	}
	n := int(x.Numel())
	if isInt {
		got := make([]int64, n)
		if n > 0 {
			x.MustCopyData(got, uint(n))
		}
		if want := ref.ints(t); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: values %v, want %v", name, got, want)
		}
		return
	}
	f, err := x.Totype(gotch.Float, false)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n)
	if n > 0 {
		f.MustCopyData(got, uint(n))
	}
	if want := ref.floats(t); !reflect.DeepEqual(got, want) {
		t.Errorf("%s: values %v, want %v", name, got, want)
	}
}

func TestPythonWritesGoReads(t *testing.T) {
	needTorch(t)
	dir := t.TempDir()
	file, expPath := filepath.Join(dir, "py.safetensors"), filepath.Join(dir, "expected.json")
	runPython(t, "ref_write.py", file, expPath)
	var want map[string]refTensor
	raw, err := os.ReadFile(expPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	c, err := Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.Metadata(), map[string]string{"source": "python", "format": "pt"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Metadata() = %v, want %v", got, want)
	}
	if got, want := len(c.Names()), len(want); got != want {
		t.Errorf("%d tensors, want %d", got, want)
	}
	for name, ref := range want {
		info, ok := c.Info(name)
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if got, want := string(info.DType), ref.DType; got != want {
			t.Errorf("%s: dtype %s, want %s", name, got, want)
		}
		x, err := c.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		checkAgainst(t, name, x, ref, ref.DType == "I64")
	}
}

func TestGoWritesPythonReads(t *testing.T) {
	needTorch(t)
	f32 := tensorOf(t, f32Bytes(1, -2.5, 3.25, 1e-3, 7, 1e4), []int64{2, 3}, gotch.Float)
	bf16, err := f32.Totype(gotch.BFloat16, false)
	if err != nil {
		t.Fatal(err)
	}
	f16, err := f32.Totype(gotch.Half, false)
	if err != nil {
		t.Fatal(err)
	}
	i64 := ts.MustOfSlice([]int64{5, -6, 1 << 50})
	named := []Named{{"f32", f32}, {"bf16", bf16}, {"f16", f16}, {"i64", i64}}
	file := filepath.Join(t.TempDir(), "go.safetensors")
	if err := Write(file, named, map[string]string{"writer": "m3gate"}); err != nil {
		t.Fatal(err)
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(runPython(t, "ref_read.py", file), &got); err != nil {
		t.Fatal(err)
	}
	if got, want := string(got["__metadata__"]), `{"writer": "m3gate"}`; got != want {
		t.Errorf("python read metadata %s, want %s", got, want)
	}
	for _, n := range named {
		var ref refTensor
		if err := json.Unmarshal(got[n.Name], &ref); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		checkAgainst(t, n.Name, n.Tensor, ref, n.Name == "i64")
	}
}

func TestLoadPT(t *testing.T) {
	needTorch(t)
	dir := t.TempDir()
	plain, nested, expPath := filepath.Join(dir, "sd.pt"), filepath.Join(dir, "model.ckpt"), filepath.Join(dir, "expected.json")
	runPython(t, "ref_pt.py", plain, nested, expPath)
	var want map[string]refTensor
	raw, err := os.ReadFile(expPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]gotch.DType{"torch.float32": gotch.Float, "torch.float16": gotch.Half, "torch.bfloat16": gotch.BFloat16, "torch.int64": gotch.Int64}
	for _, path := range []string{plain, nested} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			got, err := LoadPT(path)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := len(got), len(want); g != w {
				t.Errorf("%d tensors, want %d", g, w)
			}
			for name, ref := range want {
				x, ok := got[name]
				if !ok {
					t.Errorf("%s missing", name)
					continue
				}
				if g, w := x.DType(), kinds[ref.DType]; g != w {
					t.Errorf("%s: dtype %v, want %v", name, g, w)
				}
				checkAgainst(t, name, x, ref, ref.DType == "torch.int64")
			}
		})
	}
}

func TestLoadPTErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pt")
	os.WriteFile(garbage, []byte("this is not a pickle"), 0o644)
	tests := []struct {
		name, path string
	}{
		{"garbage", garbage},
		{"missing", filepath.Join(dir, "absent.pt")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadPT(tc.path); err == nil {
				t.Errorf("LoadPT(%s) succeeded", tc.path)
			}
		})
	}
}
