package layers

import (
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// addConst is a LinearDelta adding a constant to every output.
type addConst float64

func (c addConst) Forward(x *ts.Tensor) *ts.Tensor {
	return ts.MustOnes([]int64{1}, gotch.Float, gotch.CPU).MustMulScalar(ts.FloatScalar(float64(c)), true)
}

// loadFused loads three projections of 16 inputs (12, 4 and 4 outputs,
// the shape of query, key and value) from path, declared as one Fused
// when fuse is set, the weights stored as kind.
func loadFused(t *testing.T, path string, fuse, bias bool, kind gotch.DType) (*Params, []*Linear, *Fused) {
	t.Helper()
	p := NewParams()
	parts := []*Linear{p.Linear("q", 16, 12, bias), p.Linear("k", 16, 4, bias), p.Linear("v", 16, 4, bias)}
	var f *Fused
	if fuse {
		f = p.Fuse(parts...)
	}
	ck, err := tensorio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	as := func(s Param, _ tensorio.Info) gotch.DType {
		if s.Kind == KindLinear {
			return kind
		}
		return gotch.Float // as the loaders keep biases
	}
	if err := p.Load(ck, gotch.CPU, as); err != nil {
		t.Fatal(err)
	}
	return p, parts, f
}

// TestFusedMatchesParts: a joined Fused gives each part's output as the
// separately loaded layers do (adapters included) for a decode step's
// vector, a few rows (torch.RowsLinear) and many (BLAS), f32 and bf16
// storage; the parts' weights are views into the joined matrix, so an
// in-place change of one (merging an adapter) reaches the joined product.
func TestFusedMatchesParts(t *testing.T) {
	dir := t.TempDir()
	for _, bias := range []bool{false, true} {
		for _, kind := range []gotch.DType{gotch.Float, gotch.BFloat16} {
			path := filepath.Join(dir, "w.safetensors")
			p0 := NewParams()
			p0.Linear("q", 16, 12, bias)
			p0.Linear("k", 16, 4, bias)
			p0.Linear("v", 16, 4, bias)
			if err := WriteRandom(path, p0.List, 7, kind); err != nil {
				t.Fatal(err)
			}
			pf, parts, f := loadFused(t, path, true, bias, kind)
			ps, sep, _ := loadFused(t, path, false, bias, kind)
			if !f.Joined() {
				t.Fatalf("bias %v, %v: not joined", bias, kind)
			}
			base := uintptr(f.w.MustDataPtr())
			var at uintptr
			for i, l := range parts {
				if got := uintptr(l.W.MustDataPtr()); got != base+at {
					t.Errorf("part %d's weight is not rows %d… of the joined matrix", i, at/uintptr(16*kind.Size()))
				}
				at += uintptr(l.W.MustSize()[0] * 16 * int64(kind.Size()))
			}
			parts[1].Delta, sep[1].Delta = addConst(0.5), addConst(0.5)
			check := func(what string) {
				t.Helper()
				for _, shape := range [][]int64{{16}, {3, 1, 16}, {2, 20, 16}} {
					x := randTensor(9, shape...)
					err := torch.Run("fused", false, func() error {
						got := f.ForwardRaw(torch.Borrow(x))
						for i, l := range sep {
							want := l.ForwardRaw(torch.Borrow(x))
							g, w := got[i].Wrap(), want.Wrap()
							if gs, ws := g.MustSize(), w.MustSize(); len(gs) != len(ws) || gs[len(gs)-1] != ws[len(ws)-1] {
								t.Errorf("%s %v part %d: shape %v, want %v", what, shape, i, gs, ws)
							} else if d := maxAbsDiff(floats(g), floats(w)); d > 1e-5 {
								t.Errorf("%s %v (bias %v, %v) part %d: differs by %g", what, shape, bias, kind, i, d)
							}
							Drop(g, w)
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			check("loaded")
			// Merging an adapter into k's weight changes the joined product.
			one := ts.MustOnes([]int64{4, 16}, kind, gotch.CPU)
			parts[1].W.MustAdd_(one)
			sep[1].W.MustAdd_(one)
			check("after an in-place change")
			pf.Drop()
			ps.Drop()
			if f.w != nil || f.b != nil {
				t.Errorf("Drop left the joined tensors")
			}
		}
	}
}

// TestFusedLeavesMismatchedParts: parts that cannot share one matrix (one
// has a bias, another not) stay separate and still give their outputs.
func TestFusedLeavesMismatchedParts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.safetensors")
	declare := func() (*Params, *Linear, *Linear) {
		p := NewParams()
		return p, p.Linear("a", 8, 4, true), p.Linear("b", 8, 4, false)
	}
	p0, _, _ := declare()
	if err := WriteRandom(path, p0.List, 3, gotch.Float); err != nil {
		t.Fatal(err)
	}
	p, a, b := declare()
	f := p.Fuse(a, b)
	ck, err := tensorio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if err := p.Load(ck, gotch.CPU, func(Param, tensorio.Info) gotch.DType { return gotch.Float }); err != nil {
		t.Fatal(err)
	}
	defer p.Drop()
	if f.Joined() {
		t.Fatal("joined parts with and without a bias")
	}
	x := randTensor(1, 5, 8)
	err = torch.Run("fused", false, func() error {
		got := f.ForwardRaw(torch.Borrow(x))
		for i, l := range []*Linear{a, b} {
			g, w := got[i].Wrap(), l.Forward(x)
			if d := maxAbsDiff(floats(g), floats(w)); d != 0 {
				t.Errorf("part %d differs by %g", i, d)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
