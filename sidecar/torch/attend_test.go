package torch

import (
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestAttendFewMatchesSDPA checks the kernel against libtorch's attention
// on cache-like inputs: keys and values as narrowed views of a larger
// buffer, with and without an additive mask that hides some slots.
func TestAttendFewMatchesSDPA(t *testing.T) {
	ManualSeed(3)
	for _, c := range []struct {
		b, h, r, hd, t int64
		masked         bool
	}{{1, 3, 3, 64, 1, false}, {3, 3, 3, 64, 217, false}, {3, 3, 3, 64, 217, true}, {2, 2, 5, 16, 9, true}, {1, 1, 1, 7, 4, false}, {1, 2, 11, 136, 33, true}} {
		err := Run("test", false, func() error {
			q := Borrow(ts.MustRandn([]int64{c.b, c.h, c.r, c.hd}, gotch.Float, gotch.CPU)).Share()
			kb := Borrow(ts.MustRandn([]int64{c.b, c.h, c.t + 50, c.hd}, gotch.Float, gotch.CPU)).Share()
			vb := Borrow(ts.MustRandn([]int64{c.b, c.h, c.t + 50, c.hd}, gotch.Float, gotch.CPU)).Share()
			k, v := kb.Narrow(2, 0, c.t), vb.Narrow(2, 0, c.t)
			var mask Raw
			if c.masked {
				mv := make([]float32, c.b*c.r*c.t)
				for i := range mv {
					if i%5 == 1 && int64(i)%c.t != 0 { // every row keeps slot 0
						mv[i] = -1e30
					}
				}
				mask = Borrow(ts.MustOfSlice(mv).MustView([]int64{c.b, 1, c.r, c.t}, true)).Share()
			}
			got, ok, err := AttendFew(q, k, v, mask, 0.125)
			if err != nil || !ok {
				t.Fatalf("%+v: AttendFew = %v, %v; want a result", c, ok, err)
			}
			want := SDPA(q, k, v, mask, 0.125)
			g, w := make([]float32, c.b*c.h*c.r*c.hd), make([]float32, c.b*c.h*c.r*c.hd)
			gt, wt := got.Wrap(), want.Wrap()
			if err := CopyOut(gt, g); err != nil {
				t.Fatal(err)
			}
			if err := CopyOut(wt, w); err != nil {
				t.Fatal(err)
			}
			worst := 0.0
			for i := range g {
				worst = max(worst, float64(abs32(g[i]-w[i])))
			}
			if worst > 1e-5 {
				t.Errorf("%+v: max |AttendFew - SDPA| = %g", c, worst)
			}
			FreeRaw(q, kb, vb, k, v, mask)
			Drop(gt, wt)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestAttendFewDefers: what the kernel does not take is left to libtorch.
func TestAttendFewDefers(t *testing.T) {
	mk := func(shape ...int64) Raw {
		return Borrow(ts.MustRandn(shape, gotch.Float, gotch.CPU)).Share()
	}
	q, k, v := mk(1, 2, 3, 8), mk(1, 2, 5, 8), mk(1, 2, 5, 8)
	defer FreeRaw(q, k, v)
	many, kt, f64 := mk(1, 2, 65, 8), k.Transpose(2, 3), q.Totype(gotch.Double)
	defer FreeRaw(many, kt, f64)
	short := mk(1, 2, 4, 8)
	defer short.Free()
	cases := map[string][3]Raw{
		"too many queries":       {many, k, v},
		"keys not row-major":     {q, kt, v},
		"f64 queries":            {f64, k, v},
		"keys and values differ": {q, k, short},
	}
	for name, c := range cases {
		o, ok, err := AttendFew(c[0], c[1], c[2], Raw{}, 1)
		if ok || err != nil {
			o.Free()
			t.Errorf("%s: AttendFew = %v, %v; want not taken", name, ok, err)
		}
	}
	// Autograd on: libtorch's attention builds the graph.
	Run("grad", true, func() error {
		o, ok, err := AttendFew(q, k, v, Raw{}, 1)
		if ok || err != nil {
			o.Free()
			t.Errorf("grad mode: AttendFew = %v, %v; want not taken", ok, err)
		}
		return nil
	})
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}

// BenchmarkAttendFew times a decode step's attention for three sequences
// (SmolVLM-256M: 3 KV heads of 64, 3 query heads each) over 250 cached
// slots, cycling through 60 layers' caches (55 MB, more than the
// last-level cache, as a decode step's weight stream leaves it): the
// reported time is one layer's.
func BenchmarkAttendFew(b *testing.B) {
	if !kernelsOK {
		b.Skip("this CPU has no AVX2/FMA")
	}
	if err := SetThreads(0); err != nil {
		b.Fatal(err)
	}
	const layers, B, H, R, hd, T, capacity = 60, 3, 3, 3, 64, 250, 400
	var q [layers]*ts.Tensor
	var kb, vb [layers]*ts.Tensor
	var k, v [layers]Raw
	for l := range q {
		q[l] = ts.MustRandn([]int64{B, H, R, hd}, gotch.Float, gotch.CPU)
		kb[l] = ts.MustRandn([]int64{B, H, capacity, hd}, gotch.Float, gotch.CPU)
		vb[l] = ts.MustRandn([]int64{B, H, capacity, hd}, gotch.Float, gotch.CPU)
		k[l], v[l] = Borrow(kb[l]).Narrow(2, 0, T), Borrow(vb[l]).Narrow(2, 0, T)
	}
	defer func() {
		for l := range q {
			Drop(q[l], kb[l], vb[l])
			FreeRaw(k[l], v[l])
		}
	}()
	err := Run("bench", false, func() error {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			l := i % layers
			o, ok, err := AttendFew(Borrow(q[l]), k[l], v[l], Raw{}, 0.125)
			if err != nil || !ok {
				b.Fatal(ok, err)
			}
			o.Free()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
