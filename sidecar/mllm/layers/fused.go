package layers

import (
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Fused is Linear layers that read the same input (a block's query, key
// and value projections; its gate and up projections) run as one
// product. Once Params.Load has joined them, their weights (and biases)
// are row blocks of one matrix: each part keeps its own W, a view of its
// rows, for adapters, merging and saving, and memory is unchanged. One
// product instead of several packs the input for BLAS once, gives narrow
// products (a key projection's 192 columns) a wide one's speed, and costs
// a decode step one parallel region instead of several.
type Fused struct {
	Parts []*Linear
	w, b  *ts.Tensor // the joined weight and bias; nil until joined
	rows  []int64    // each part's output width
}

// Fuse declares parts (built by Linear on p) as one Fused, joined when p
// is loaded.
func (p *Params) Fuse(parts ...*Linear) *Fused {
	f := &Fused{Parts: parts}
	p.fused = append(p.fused, f)
	return f
}

// Joined reports whether the parts run as one product.
func (f *Fused) Joined() bool { return f.w != nil }

// Plain returns the joined weight and bias (nil without one) when the
// parts run as one product with no adapter on any of them; ok is false
// otherwise. The tensors stay f's.
func (f *Fused) Plain() (w, b *ts.Tensor, ok bool) {
	if f.w == nil {
		return nil, nil, false
	}
	for _, l := range f.Parts {
		if l.Delta != nil {
			return nil, nil, false
		}
	}
	return f.w, f.b, true
}

// ForwardRaw returns each part's output for x, as the parts' own
// ForwardRaw would (adapters included); x stays the caller's. The outputs
// of a joined Fused without adapters are column blocks of one result:
// views with x's leading shape that are not contiguous unless x is one
// row.
func (f *Fused) ForwardRaw(x torch.Raw) []torch.Raw {
	out := make([]torch.Raw, len(f.Parts))
	if f.w == nil {
		for i, l := range f.Parts {
			out[i] = l.ForwardRaw(x)
		}
		return out
	}
	all := Linear{W: f.w, B: f.b, BF16Products: f.Parts[0].BF16Products}
	y := all.ForwardRaw(x)
	var at int64
	for i, l := range f.Parts {
		out[i] = l.addDelta(x, y.Narrow(-1, at, f.rows[i]))
		at += f.rows[i]
	}
	y.Free()
	return out
}

// join makes the parts' weights row blocks of one matrix when they can
// share one: two-dimensional, one dtype, one device, one input width,
// all with a bias or none. Otherwise the parts stay separate.
func (f *Fused) join() {
	first := f.Parts[0]
	if first.W == nil || first.W.Dim() != 2 {
		return
	}
	kind, dev, in := first.W.DType(), torch.TensorDevice(first.W), first.W.MustSize()[1]
	for _, l := range f.Parts {
		if l.W == nil || l.W.Dim() != 2 || l.W.DType() != kind || torch.TensorDevice(l.W) != dev ||
			l.W.MustSize()[1] != in || (l.B == nil) != (first.B == nil) || (l.B != nil && l.B.DType() != first.B.DType()) {
			return
		}
	}
	f.rows = make([]int64, len(f.Parts))
	ws := make([]torch.Raw, len(f.Parts))
	var bs []torch.Raw
	for i, l := range f.Parts {
		f.rows[i] = l.W.MustSize()[0]
		ws[i] = torch.Borrow(l.W)
		if l.B != nil {
			bs = append(bs, torch.Borrow(l.B))
		}
	}
	w := torch.Cat(0, ws...)
	var b torch.Raw
	if bs != nil {
		b = torch.Cat(0, bs...)
	}
	var at int64
	for i, l := range f.Parts {
		l.W.MustDrop()
		l.W = w.Narrow(0, at, f.rows[i]).Wrap()
		if l.B != nil {
			l.B.MustDrop()
			l.B = b.Narrow(0, at, f.rows[i]).Wrap()
		}
		at += f.rows[i]
	}
	f.w = w.Wrap()
	if b.Defined() {
		f.b = b.Wrap()
	}
}

// drop frees the joined tensors (the parts' views are Params' to free).
func (f *Fused) drop() {
	if f.w != nil {
		f.w.MustDrop()
		f.w = nil
	}
	if f.b != nil {
		f.b.MustDrop()
		f.b = nil
	}
}
