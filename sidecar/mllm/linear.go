package mllm

import "github.com/sugarme/gotch/ts"

// LinearDelta is an adapter added to a Linear layer's output (LoRA).
type LinearDelta interface {
	// Forward returns a tensor shaped like the layer's output, or nil for
	// "no change".
	Forward(x *ts.Tensor) *ts.Tensor
}

// Linear is y = x·Wᵀ (+ B) plus, when Delta is set, Delta.Forward(x) added
// to y. One Linear exists per Hugging Face nn.Linear module.
type Linear struct {
	W     *ts.Tensor  // [out, in]
	B     *ts.Tensor  // nil when the layer has no bias
	Delta LinearDelta // nil: no adapter
}

// Forward applies the layer to x [..., in] and returns [..., out]. A
// single row (a decode step at batch 1) goes through a matrix-vector
// product: BLAS gemm with one row packs the whole weight matrix first and
// runs about 1.7× slower here than gemv.
func (l *Linear) Forward(x *ts.Tensor) *ts.Tensor {
	var y *ts.Tensor
	sz := x.MustSize()
	if len(sz) == 1 { // a vector: one gemv
		y = l.W.MustMv(x, false)
		if l.B != nil {
			y = y.MustAdd(l.B, true)
		}
	} else if in := sz[len(sz)-1]; int64(x.Numel()) == in {
		out := append(append([]int64(nil), sz[:len(sz)-1]...), l.W.MustSize()[0])
		y = l.W.MustMv(x.MustReshape([]int64{in}, false), false)
		if l.B != nil {
			y = y.MustAdd(l.B, true)
		}
		y = y.MustView(out, true)
	} else {
		b := l.B
		if b == nil {
			b = ts.None
		}
		y = ts.MustLinear(x, l.W, b)
	}
	if l.Delta != nil {
		if d := l.Delta.Forward(x); d != nil {
			y = y.MustAdd(d, true)
		}
	}
	return y
}
