// Package layers holds the building blocks the model families of
// sidecar/mllm share: the Linear layer (with its adapter hook), LayerNorm,
// RMSNorm, scaled dot-product attention, and Params, the list of
// checkpoint tensors a model's modules declare when they are built.
//
// Every function here calls gotch's Must* operations and so panics on a
// libtorch error; callers run them under torch.Run, which turns the panic
// into an error. Functions keep their tensor arguments reachable until
// they return and free their temporaries (see torch.Run on gotch's
// finalizers); they never free an argument unless their doc says so.
package layers

import (
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// LinearDelta is an adapter added to a Linear layer's output (LoRA).
type LinearDelta interface {
	// Forward returns a new tensor shaped like the layer's output (the
	// Linear frees it once added), or nil for "no change".
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
	defer torch.Keep(x)
	var y *ts.Tensor
	sz := x.MustSize()
	if len(sz) == 1 { // a vector: one gemv
		y = l.W.MustMv(x, false)
		if l.B != nil {
			y = y.MustAdd(l.B, true)
		}
	} else if in := sz[len(sz)-1]; int64(x.Numel()) == in {
		out := append(append([]int64(nil), sz[:len(sz)-1]...), l.W.MustSize()[0])
		row := x.MustReshape([]int64{in}, false)
		y = l.W.MustMv(row, false)
		Drop(row)
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
			Drop(d)
		}
	}
	return y
}

// LayerNorm is an nn.LayerNorm with weight and bias.
type LayerNorm struct {
	W, B *ts.Tensor
	Eps  float64
}

// Forward normalises x over its last dimension.
func (n *LayerNorm) Forward(x *ts.Tensor) *ts.Tensor {
	defer torch.Keep(x)
	d := n.W.MustSize()
	return ts.MustLayerNorm(x, d, n.W, n.B, n.Eps, false)
}

// RMSNorm is Llama's RMSNorm: computed in f32, cast back, times weight.
type RMSNorm struct {
	W   *ts.Tensor
	Eps float64
}

// Forward normalises x over its last dimension.
func (n *RMSNorm) Forward(x *ts.Tensor) *ts.Tensor {
	defer torch.Keep(x)
	h := x
	kind := x.DType()
	if kind != gotch.Float {
		h = x.MustTotype(gotch.Float, false)
	}
	eps := ts.FloatScalar(n.Eps)
	v := h.MustSquare(false).MustMeanDim([]int64{-1}, true, gotch.Float, true).MustAddScalar(eps, true).MustRsqrt(true)
	torch.KeepScalars(eps)
	h = h.MustMul(v, kind != gotch.Float)
	Drop(v)
	if kind != gotch.Float {
		h = h.MustTotype(kind, true)
	}
	return h.MustMul(n.W, true)
}

// MaskedScore is the additive attention mask value of a hidden key:
// finite, so a query with no visible key (a padding slot) gives finite
// garbage instead of NaN, and exp underflows to exactly 0 next to any
// visible key.
const MaskedScore = -1e9

// SDPA is softmax(q·kᵀ·scale + mask)·v with the scores and softmax in f32
// (as Hugging Face's eager attention) whatever the model dtype; mask is
// f32 or ts.None.
func SDPA(q, k, v, mask *ts.Tensor, scale []float64) *ts.Tensor {
	defer torch.Keep(q, k, v, mask)
	kind := q.DType()
	if kind == gotch.Float {
		return ts.MustScaledDotProductAttention(q, k, v, mask, 0, false, scale)
	}
	qf, kf, vf := q.MustTotype(gotch.Float, false), k.MustTotype(gotch.Float, false), v.MustTotype(gotch.Float, false)
	o := ts.MustScaledDotProductAttention(qf, kf, vf, mask, 0, false, scale)
	Drop(qf, kf, vf)
	return o.MustTotype(kind, true)
}

// Drop frees intermediates now (and keeps them alive until here); see
// torch.Drop.
func Drop(ts ...*ts.Tensor) { torch.Drop(ts...) }
