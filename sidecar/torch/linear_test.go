package torch

import (
	"fmt"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestRowsLinearMatchesLinear compares the few-rows kernel with libtorch's
// linear over row counts, odd and even widths (the vector loop's tails)
// and with and without bias.
func TestRowsLinearMatchesLinear(t *testing.T) {
	if !kernelsOK {
		t.Skip("this CPU has no AVX2/FMA: RowsLinear always defers to libtorch")
	}
	ManualSeed(1)
	for _, m := range []int64{1, 2, 3, 4, 5, 8} {
		for _, k := range []int64{1, 7, 8, 16, 23, 576} {
			for _, bias := range []bool{false, true} {
				name := fmt.Sprintf("m%d_k%d_bias%v", m, k, bias)
				t.Run(name, func(t *testing.T) {
					const n = 37
					x := ts.MustRandn([]int64{m, 1, k}, gotch.Float, gotch.CPU)
					w := ts.MustRandn([]int64{n, k}, gotch.Float, gotch.CPU)
					var b *ts.Tensor
					bb := ts.None
					if bias {
						b = ts.MustRandn([]int64{n}, gotch.Float, gotch.CPU)
						bb = b
					}
					got, err := RowsLinear(x, w, b)
					if err != nil || got == nil {
						t.Fatalf("RowsLinear = %v, %v; want a tensor", got, err)
					}
					want := ts.MustLinear(x, w, bb)
					if g, w := got.MustSize(), want.MustSize(); fmt.Sprint(g) != fmt.Sprint(w) {
						t.Fatalf("shape %v, want %v", g, w)
					}
					diff := got.MustSub(want, false).MustAbs(true).MustMax(true).Float64Values()[0]
					scale := want.MustAbs(false).MustMax(true).Float64Values()[0]
					if diff > 1e-5*(1+scale) {
						t.Errorf("max |RowsLinear - linear| = %g (max |y| %g)", diff, scale)
					}
					Drop(x, w, b, got, want)
				})
			}
		}
	}
}

// TestRowsLinearManyChunks compares the kernel with libtorch's linear on
// weights the threads share out in many guided chunks (output widths that
// the chunk sizes do not divide), on every core: each output must be
// computed once, from its own row of W.
func TestRowsLinearManyChunks(t *testing.T) {
	if !kernelsOK {
		t.Skip("this CPU has no AVX2/FMA: RowsLinear always defers to libtorch")
	}
	if err := SetThreads(0); err != nil {
		t.Fatal(err)
	}
	ManualSeed(3)
	for _, m := range []int64{1, 3} {
		for _, nk := range [][2]int64{{4099, 576}, {1001, 64}, {30, 16384}} {
			n, k := nk[0], nk[1]
			x := ts.MustRandn([]int64{m, k}, gotch.Float, gotch.CPU)
			w := ts.MustRandn([]int64{n, k}, gotch.Float, gotch.CPU)
			got, err := RowsLinear(x, w, nil)
			if err != nil || got == nil {
				t.Fatalf("m %d n %d k %d: RowsLinear = %v, %v; want a tensor", m, n, k, got, err)
			}
			want := ts.MustLinear(x, w, ts.None)
			diff := got.MustSub(want, false).MustAbs(true).MustMax(true).Float64Values()[0]
			scale := want.MustAbs(false).MustMax(true).Float64Values()[0]
			if diff > 1e-5*(1+scale) {
				t.Errorf("m %d n %d k %d: max |RowsLinear - linear| = %g (max |y| %g)", m, n, k, diff, scale)
			}
			Drop(x, w, got, want)
		}
	}
}

// TestRowsLinearBF16Weights checks the kernel on bf16 weights under f32
// inputs against libtorch's linear on the same weights widened to f32
// (exact), so only the summation order differs.
func TestRowsLinearBF16Weights(t *testing.T) {
	if !kernelsOK {
		t.Skip("this CPU has no AVX2/FMA: RowsLinear always defers to libtorch")
	}
	ManualSeed(2)
	for _, m := range []int64{1, 3, 6} {
		for _, k := range []int64{5, 16, 576} {
			x := ts.MustRandn([]int64{m, k}, gotch.Float, gotch.CPU)
			w := ts.MustRandn([]int64{41, k}, gotch.Float, gotch.CPU).MustTotype(gotch.BFloat16, true)
			b := ts.MustRandn([]int64{41}, gotch.Float, gotch.CPU)
			got, err := RowsLinear(x, w, b)
			if err != nil || got == nil {
				t.Fatalf("m %d k %d: RowsLinear = %v, %v; want a tensor", m, k, got, err)
			}
			wide := w.MustTotype(gotch.Float, false)
			want := ts.MustLinear(x, wide, b)
			diff := got.MustSub(want, false).MustAbs(true).MustMax(true).Float64Values()[0]
			scale := want.MustAbs(false).MustMax(true).Float64Values()[0]
			if diff > 1e-5*(1+scale) {
				t.Errorf("m %d k %d: max |RowsLinear - linear| = %g (max |y| %g)", m, k, diff, scale)
			}
			Drop(x, w, b, got, wide, want)
		}
	}
}

// TestRowsLinearDefers checks that what the kernel does not take is left
// to libtorch (nil, nil) rather than computed wrongly.
func TestRowsLinearDefers(t *testing.T) {
	w := ts.MustRandn([]int64{5, 8}, gotch.Float, gotch.CPU)
	cases := map[string]*ts.Tensor{
		"too many rows":  ts.MustRandn([]int64{MaxRowsLinear + 1, 8}, gotch.Float, gotch.CPU),
		"non-contiguous": ts.MustRandn([]int64{8, 3}, gotch.Float, gotch.CPU).MustT(true),
		"f64":            ts.MustRandn([]int64{2, 8}, gotch.Double, gotch.CPU),
		"bf16 inputs":    ts.MustRandn([]int64{2, 8}, gotch.Float, gotch.CPU).MustTotype(gotch.BFloat16, true),
	}
	for name, x := range cases {
		got, err := RowsLinear(x, w, nil)
		if got != nil || err != nil {
			t.Errorf("%s: RowsLinear = %v, %v; want nil, nil", name, got, err)
		}
	}
	if got, err := RowsLinear(ts.MustRandn([]int64{2, 7}, gotch.Float, gotch.CPU), w, nil); got != nil || err != nil {
		t.Errorf("width mismatch: RowsLinear = %v, %v; want nil, nil (libtorch reports it)", got, err)
	}
}

// BenchmarkRowsLinear and BenchmarkLinearGemm time one MLP-sized layer
// (1536×576, SmolVLM-256M's gate projection) at 3 rows through the kernel
// and through libtorch's linear (BLAS gemm).
func BenchmarkRowsLinear(b *testing.B) { benchLinear(b, true) }
func BenchmarkLinearGemm(b *testing.B) { benchLinear(b, false) }

func benchLinear(b *testing.B, rows bool) {
	x := ts.MustRandn([]int64{3, 576}, gotch.Float, gotch.CPU)
	w := ts.MustRandn([]int64{1536, 576}, gotch.Float, gotch.CPU)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var y *ts.Tensor
		if rows {
			var err error
			if y, err = RowsLinear(x, w, nil); err != nil || y == nil {
				b.Fatal(err)
			}
		} else {
			y = ts.MustLinear(x, w, ts.None)
		}
		y.MustDrop()
	}
}

// BenchmarkRowsLinearStream times the kernel on weights far larger than
// the caches (49152×576 f32, an LM head's size: 113 MB) for one and three
// rows, in GB/s of weights read: how close a decode step's products come
// to the memory's bandwidth.
func BenchmarkRowsLinearStream(b *testing.B) {
	if err := SetThreads(0); err != nil {
		b.Fatal(err)
	}
	w := ts.MustRandn([]int64{49152, 576}, gotch.Float, gotch.CPU)
	defer w.MustDrop()
	for _, m := range []int64{1, 3} {
		b.Run(fmt.Sprintf("rows=%d", m), func(b *testing.B) {
			x := ts.MustRandn([]int64{m, 576}, gotch.Float, gotch.CPU)
			defer x.MustDrop()
			b.SetBytes(49152 * 576 * 4)
			for i := 0; i < b.N; i++ {
				y, err := RowsLinear(x, w, nil)
				if err != nil || y == nil {
					b.Fatal(err)
				}
				y.MustDrop()
			}
		})
	}
}
