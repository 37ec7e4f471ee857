package tensorio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/sidecar/tensorio/header"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// rawBytes returns a copy of a CPU tensor's contiguous data bytes.
func rawBytes(t *testing.T, x *ts.Tensor) []byte {
	t.Helper()
	c, err := x.Contiguous(false)
	if err != nil {
		t.Fatal(err)
	}
	n := int(c.Numel()) * int(c.DType().Size())
	if n == 0 {
		return []byte{}
	}
	p, err := c.DataPtr()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(unsafe.Slice((*byte)(p), n))
}

// tensorOf builds a tensor of kind from raw little-endian bytes.
func tensorOf(t *testing.T, b []byte, shape []int64, kind gotch.DType) *ts.Tensor {
	t.Helper()
	x, err := fromBytes(b, shape, kind)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func f32Bytes(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		kind  gotch.DType
		dtype DType
		shape []int64
	}{
		{"f32 matrix", gotch.Float, F32, []int64{3, 5}},
		{"f16 vector", gotch.Half, F16, []int64{7}},
		{"bf16 3d", gotch.BFloat16, BF16, []int64{2, 3, 4}},
		{"i64 vector", gotch.Int64, I64, []int64{9}},
		{"f32 scalar", gotch.Float, F32, []int64{}},
		{"bf16 empty", gotch.BFloat16, BF16, []int64{0, 3}},
	}
	dir := t.TempDir()
	var named []Named
	want := map[string][]byte{}
	for i, tc := range tests {
		numel := int64(1)
		for _, s := range tc.shape {
			numel *= s
		}
		b := randomBytes(uint64(i), int(numel)*int(tc.kind.Size()))
		x := tensorOf(t, b, tc.shape, tc.kind)
		named = append(named, Named{tc.name, x})
		want[tc.name] = b
	}
	meta := map[string]string{"format": "pt", "note": "ünïcode \"quoted\""}
	path := filepath.Join(dir, "m.safetensors")
	if err := Write(path, named, meta); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(raw); n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.Metadata(), meta; !reflect.DeepEqual(got, want) {
		t.Errorf("Metadata() = %v, want %v", got, want)
	}
	var wantNames []string
	for _, tc := range tests {
		wantNames = append(wantNames, tc.name)
	}
	slices.Sort(wantNames)
	if got := c.Names(); !reflect.DeepEqual(got, wantNames) {
		t.Errorf("Names() = %v, want %v", got, wantNames)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info, ok := c.Info(tc.name)
			if !ok {
				t.Fatal("Info: not found")
			}
			if got, want := info, (Info{tc.name, tc.dtype, tc.shape, path}); !reflect.DeepEqual(got, want) {
				t.Errorf("Info = %+v, want %+v", got, want)
			}
			x, err := c.Tensor(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := x.DType(), tc.kind; got != want {
				t.Errorf("dtype = %v, want %v", got, want)
			}
			if got, want := x.MustSize(), tc.shape; !reflect.DeepEqual(got, want) {
				t.Errorf("shape = %v, want %v", got, want)
			}
			if got, want := rawBytes(t, x), want[tc.name]; !bytes.Equal(got, want) {
				t.Errorf("data differs: got %x, want %x", got, want)
			}
		})
	}
	// Data layout follows the given order.
	h, err := header.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, e := range h.Entries {
		if e.End > e.Begin {
			order = append(order, e.Name)
		}
	}
	if got, want := order, []string{"f32 matrix", "f16 vector", "bf16 3d", "i64 vector", "f32 scalar"}; !reflect.DeepEqual(got, want) {
		t.Errorf("data order = %v, want %v", got, want)
	}
}

func TestTensorAsConverts(t *testing.T) {
	dir := t.TempDir()
	vals := []float32{1.5, -2.25, 0, 61440, 3.140625}
	x := tensorOf(t, f32Bytes(vals...), []int64{5}, gotch.Float)
	path := filepath.Join(dir, "a.safetensors")
	if err := Write(path, []Named{{"x", x}}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tests := []struct {
		kind gotch.DType
	}{{gotch.Float}, {gotch.Double}, {gotch.BFloat16}, {gotch.Half}}
	for _, tc := range tests {
		y, err := c.TensorAs("x", tc.kind)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := y.DType(), tc.kind; got != want {
			t.Errorf("TensorAs(%v) dtype = %v", want, got)
		}
		back, err := y.Totype(gotch.Float, false)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 5)
		back.MustCopyData(got, 5)
		// All values are exactly representable in every target dtype.
		if !reflect.DeepEqual(got, vals) {
			t.Errorf("TensorAs(%v) values = %v, want %v", tc.kind, got, vals)
		}
	}
	if _, err := c.Tensor("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Tensor(nope) err = %v, want an error naming it", err)
	}
	c.Close()
	if _, err := c.Tensor("x"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Tensor after Close err = %v, want closed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestShardedBF16 writes a 3-shard BF16 checkpoint and compares every value,
// converted to F32 by libtorch, bit-exactly with bf16 bits << 16 computed in Go.
func TestShardedBF16(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	type tensorSpec struct {
		name  string
		shape []int64
		bits  []uint16
	}
	var specs []tensorSpec
	var named []Named
	for i, shape := range [][]int64{{64, 32}, {33}, {16, 16, 4}, {100}, {8, 64}, {1}} {
		numel := int64(1)
		for _, s := range shape {
			numel *= s
		}
		bits := make([]uint16, numel)
		b := make([]byte, 2*numel)
		for j := range bits {
			bits[j] = uint16(r.Uint32())
			if j < 8 { // special values: ±0, ±inf, NaN, smallest subnormal
				bits[j] = []uint16{0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x0001, 0x3f80, 0xbf80}[j]
			}
			binary.LittleEndian.PutUint16(b[2*j:], bits[j])
		}
		name := "model.layers." + string(rune('a'+i)) + ".weight"
		specs = append(specs, tensorSpec{name, shape, bits})
		named = append(named, Named{name, tensorOf(t, b, shape, gotch.BFloat16)})
	}
	// Sizes 4096, 66, 2048, 200, 1024, 2 bytes; a 2500-byte limit gives
	// [a] (larger than the limit, alone), [b c d], [e f].
	if err := WriteSharded(dir, named, 2500, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	var base []string
	for _, f := range files {
		base = append(base, filepath.Base(f))
	}
	if got, want := base, []string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("shard files = %v, want %v", got, want)
	}
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.Metadata(), map[string]string{"format": "pt", "total_size": "7436"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Metadata() = %v, want %v", got, want)
	}
	wantShard := []string{"model-00001-of-00003", "model-00002-of-00003", "model-00002-of-00003", "model-00002-of-00003", "model-00003-of-00003", "model-00003-of-00003"}
	for i, s := range specs {
		info, ok := c.Info(s.name)
		if !ok {
			t.Fatalf("%s missing", s.name)
		}
		if got, want := filepath.Base(info.File), wantShard[i]+".safetensors"; got != want {
			t.Errorf("%s in %s, want %s", s.name, got, want)
		}
		if info.DType != BF16 {
			t.Errorf("%s dtype %s, want BF16", s.name, info.DType)
		}
		x, err := c.TensorAs(s.name, gotch.Float)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := x.MustSize(), s.shape; !reflect.DeepEqual(got, want) {
			t.Errorf("%s shape %v, want %v", s.name, got, want)
		}
		got := make([]float32, len(s.bits))
		x.MustCopyData(got, uint(len(got)))
		for j, b := range s.bits {
			if g, w := math.Float32bits(got[j]), uint32(b)<<16; g != w {
				t.Fatalf("%s[%d] = %#08x, want %#08x (bf16 %#04x << 16)", s.name, j, g, w, b)
			}
		}
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	f := tensorOf(t, f32Bytes(1, 2), []int64{2}, gotch.Float)
	d, err := f.Totype(gotch.Double, false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		tensors []Named
		want    string
	}{
		{"duplicate", []Named{{"a", f}, {"a", f}}, `duplicate tensor name "a"`},
		{"f64", []Named{{"a", f}, {"d", d}}, `tensor "d": unsupported dtype`},
		{"nil", []Named{{"a", nil}}, `tensor "a" is nil`},
		{"empty name", []Named{{"", f}}, "empty name"},
		{"reserved", []Named{{"__metadata__", f}}, "reserved"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".safetensors")
			err := Write(path, tc.tensors, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Write err = %v, want one naming %s and containing %q", err, path, tc.want)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("failed Write left %s behind", path)
			}
		})
	}
	if err := WriteSharded(dir, []Named{{"a", f}}, 0, nil); err == nil {
		t.Error("WriteSharded with limit 0 succeeded")
	}
}

// TestWriteNonContiguous checks that a transposed view is written in its
// logical (row-major) order.
func TestWriteNonContiguous(t *testing.T) {
	x := tensorOf(t, f32Bytes(1, 2, 3, 4, 5, 6), []int64{2, 3}, gotch.Float)
	xt, err := x.Transpose(0, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "t.safetensors")
	if err := Write(path, []Named{{"xt", xt}}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	y, err := c.Tensor("xt")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rawBytes(t, y), f32Bytes(1, 4, 2, 5, 3, 6); !bytes.Equal(got, want) {
		t.Errorf("transposed data = %x, want %x", got, want)
	}
	if got, want := y.MustSize(), []int64{3, 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("shape = %v, want %v", got, want)
	}
}

// TestConcurrentTensors loads tensors from several goroutines at once (the
// mapped pages are released after each copy while others read neighbours).
func TestConcurrentTensors(t *testing.T) {
	var named []Named
	want := map[string][]byte{}
	for i := range 12 {
		b := randomBytes(uint64(100+i), 4*(1000+i*37))
		name := fmt.Sprintf("t%02d", i)
		named = append(named, Named{name, tensorOf(t, b, []int64{int64(1000 + i*37)}, gotch.Float)})
		want[name] = b
	}
	path := filepath.Join(t.TempDir(), "c.safetensors")
	if err := Write(path, named, nil); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4*len(named))
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range named {
				name := named[(k+g*3)%len(named)].Name
				x, err := c.Tensor(name)
				if err != nil {
					errs <- err
					return
				}
				n := int(x.Numel()) * 4
				got := make([]float32, x.Numel())
				x.MustCopyData(got, x.Numel())
				if !bytes.Equal(f32Bytes(got...), want[name]) || n != len(want[name]) {
					errs <- fmt.Errorf("%s: data differs", name)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLargeTensorChunked: a tensor larger than copyChunk (here 3.2 chunks,
// not a whole number of pages) reads back byte for byte, and reading it
// raises the peak RSS by about the tensor, not by the tensor and its
// mapped file pages together (which copying it in one piece did).
func TestLargeTensorChunked(t *testing.T) {
	const n = (copyChunk*16/5)/4 + 3 // f32 values
	want := randomBytes(11, 4*n)
	small := f32Bytes(1, 2, 3)
	path := filepath.Join(t.TempDir(), "big.safetensors")
	if err := Write(path, []Named{
		{Name: "a", Tensor: tensorOf(t, small, []int64{3}, gotch.Float)},
		{Name: "big", Tensor: tensorOf(t, want, []int64{n}, gotch.Float)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	ck, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	// Reset the peak to the current RSS (Linux: clear_refs 5).
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
	before, err := testenv.ProcStatusKB(0, "VmHWM")
	if err != nil {
		t.Skip(err)
	}
	x, err := ck.Tensor("big")
	if err != nil {
		t.Fatal(err)
	}
	after, err := testenv.ProcStatusKB(0, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	grew := after - before
	if got := rawBytes(t, x); !bytes.Equal(got, want) {
		t.Fatal("the large tensor's bytes differ from what was written")
	}
	if a, err := ck.Tensor("a"); err != nil || !bytes.Equal(rawBytes(t, a), small) {
		t.Fatalf("the tensor before it: %v", err)
	}
	size := int64(4*n) >> 10
	t.Logf("peak RSS grew %d KB reading a %d KB tensor", grew, size)
	if grew > size+2*(copyChunk>>10) {
		t.Errorf("peak RSS grew %d KB reading a %d KB tensor: more than the tensor and two chunks", grew, size)
	}
}
