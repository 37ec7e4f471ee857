package layers

import (
	"math"
	"math/rand"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

func tensorOf(v []float32, shape ...int64) *ts.Tensor {
	return ts.MustOfSlice(v).MustView(shape, true)
}

func randTensor(seed int64, shape ...int64) *ts.Tensor {
	rng := rand.New(rand.NewSource(seed))
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return tensorOf(v, shape...)
}

func floats(t *ts.Tensor) []float32 {
	c := t.MustTotype(gotch.Float, false).MustContiguous(true)
	out := make([]float32, c.Numel())
	c.MustCopyData(out, c.Numel())
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestRMSNormHandComputed(t *testing.T) {
	x := tensorOf([]float32{1, 2, 3, 4, 0, 0, 0, 2}, 2, 4)
	w := tensorOf([]float32{1, 0.5, 2, 1}, 4)
	got := floats((&RMSNorm{W: w, Eps: 1e-5}).Forward(x))
	r1 := math.Sqrt(7.5 + 1e-5) // mean of 1, 4, 9, 16
	r2 := math.Sqrt(1 + 1e-5)   // mean of 0, 0, 0, 4
	want := []float64{1 / r1, 2 / r1 * 0.5, 3 / r1 * 2, 4 / r1, 0, 0, 0, 2 / r2}
	for i := range want {
		if math.Abs(float64(got[i])-want[i]) > 1e-6 {
			t.Errorf("element %d: got %g, want %g", i, got[i], want[i])
		}
	}
	// bf16 input: normalised in f32, cast back, then times the weight
	gb := floats((&RMSNorm{W: w.MustTotype(gotch.BFloat16, false), Eps: 1e-5}).Forward(x.MustTotype(gotch.BFloat16, false)))
	for i := range want {
		if math.Abs(float64(gb[i])-want[i]) > 0.02 {
			t.Errorf("bf16 element %d: got %g, want %g", i, gb[i], want[i])
		}
	}
}

// TestLinearRowPaths: the matrix-vector path for one row equals the
// general path, with and without bias.
func TestLinearRowPaths(t *testing.T) {
	w := randTensor(1, 5, 4)
	for _, bias := range []*ts.Tensor{nil, randTensor(2, 5)} {
		l := &Linear{W: w, B: bias}
		x := randTensor(3, 3, 1, 4)
		all := floats(l.Forward(x))
		for i := int64(0); i < 3; i++ {
			row := x.MustNarrow(0, i, 1, false) // [1, 1, 4]
			y := l.Forward(row)
			if sz := y.MustSize(); len(sz) != 3 || sz[2] != 5 {
				t.Fatalf("one-row output shape %v", sz)
			}
			if d := maxAbsDiff(floats(y), all[i*5:(i+1)*5]); d > 1e-6 {
				t.Errorf("row %d (bias %v): mv path differs by %g", i, bias != nil, d)
			}
		}
	}
}

// TestAttendChunkedMatchesSDPA checks the chunked attention against
// libtorch's one-call attention, with chunks that do not divide the
// queries and a chunk as large as all of them.
func TestAttendChunkedMatchesSDPA(t *testing.T) {
	q, k, v := randTensor(1, 2, 3, 300, 16), randTensor(2, 2, 3, 300, 16), randTensor(3, 2, 3, 300, 16)
	want := floats(SDPA(q, k, v, ts.None, []float64{0.25}))
	for _, chunk := range []int64{64, 256, 300} {
		got := floats(AttendChunked(torch.Borrow(q), torch.Borrow(k), torch.Borrow(v), 0.25, chunk).Wrap())
		if len(got) != len(want) {
			t.Fatalf("chunk %d: %d values, want %d", chunk, len(got), len(want))
		}
		var worst float64
		for i := range got {
			worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
		}
		if worst > 1e-5 {
			t.Errorf("chunk %d: max |chunked - SDPA| = %g", chunk, worst)
		}
	}
	torch.Keep(q, k, v)
}

// TestRMSNormKernelMatchesComposed: the one-call kernel (torch.RMSNorm)
// equals libtorch's composed ops up to the summation order of the
// squares, for a decode step's vector, a few rows and a prefill's many
// rows (several OpenMP tasks), and a non-contiguous input falls back to
// the composed ops.
func TestRMSNormKernelMatchesComposed(t *testing.T) {
	n := &RMSNorm{W: randTensor(1, 576), Eps: 1e-5}
	for _, shape := range [][]int64{{576}, {3, 1, 576}, {2, 214, 576}, {1, 5, 13}} {
		if shape[len(shape)-1] != 576 {
			n = &RMSNorm{W: randTensor(2, 13), Eps: 1e-6}
		}
		x := randTensor(3, shape...)
		var got, want []float32
		err := torch.Run("rms", false, func() error {
			xr := torch.Borrow(x)
			y, ok, err := torch.RMSNorm(xr, torch.Borrow(n.W), n.Eps)
			if err != nil || !ok {
				t.Fatalf("%v: kernel ok %v, error %v", shape, ok, err)
			}
			c := n.composed(xr)
			got, want = floats(y.Wrap()), floats(c.Wrap())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if d := maxAbsDiff(got, want); d > 1e-5 {
			t.Errorf("%v: kernel and composed ops differ by %g", shape, d)
		}
	}
	x := randTensor(4, 576, 4).MustT(true) // [4, 576], not contiguous
	err := torch.Run("rms", false, func() error {
		if _, ok, err := torch.RMSNorm(torch.Borrow(x), torch.Borrow(n.W), 1e-5); ok || err != nil {
			t.Errorf("non-contiguous input: kernel ok %v, error %v; want it left to libtorch", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
