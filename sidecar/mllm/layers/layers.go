// Package layers holds the building blocks the model families of
// sidecar/mllm share: the Linear layer (with its adapter hook), Fused
// (Linear layers that read one input run as one product), LayerNorm,
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
	"sync"

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
// to y. One Linear exists per Hugging Face nn.Linear module. W may be
// stored in bf16 under f32 compute (see mllm.LoadOptions): it is then
// widened as it is used, which gives the same values.
type Linear struct {
	W     *ts.Tensor  // [out, in]
	B     *ts.Tensor  // nil when the layer has no bias
	Delta LinearDelta // nil: no adapter
	// BF16Products runs the f32 products of more than
	// torch.MaxRowsLinear rows (vision, prompts) in bf16: x and W rounded
	// to bf16, libtorch's bf16 matrix product (oneDNN, f32 accumulation),
	// an f32 result, the bias added in f32. A bf16-stored W is used as it
	// is. Decode steps' few rows stay exact. See mllm.LoadOptions.
	BF16Products bool
}

// Forward applies the layer to x [..., in] and returns [..., out]. A
// single row (a decode step at batch 1) goes through a matrix-vector
// product: BLAS gemm with one row packs the whole weight matrix first and
// runs about 1.7× slower here than gemv. A few rows (up to
// torch.MaxRowsLinear) go through torch.RowsLinear, which reads the
// weights once for all of them.
func (l *Linear) Forward(x *ts.Tensor) *ts.Tensor {
	defer torch.Keep(x)
	return l.ForwardRaw(torch.Borrow(x)).Wrap()
}

// ForwardRaw is Forward on a torch.Raw: x stays the caller's, the result
// is new.
func (l *Linear) ForwardRaw(x torch.Raw) torch.Raw {
	w, b := torch.Borrow(l.W), torch.Raw{}
	if l.B != nil {
		b = torch.Borrow(l.B)
	}
	y, ok, err := torch.RowsLinearRaw(x, w, b)
	if err != nil {
		panic(err)
	}
	if !ok {
		if kind := x.DType(); l.BF16Products && kind == gotch.Float {
			y = bf16Product(x, w, b)
		} else if w.DType() != kind { // bf16 storage, f32 compute
			y = blasWidened(x, w, b, kind)
		} else {
			y = blas(x, w, b)
		}
	}
	return l.addDelta(x, y)
}

// addDelta returns y, the layer's product for x, with the adapter's
// output added (y itself without an adapter, or when it gives nothing;
// otherwise y is freed).
func (l *Linear) addDelta(x, y torch.Raw) torch.Raw {
	if l.Delta == nil {
		return y
	}
	xt := x.Share().Wrap()
	if d := l.Delta.Forward(xt); d != nil {
		sum := y.Add(torch.Borrow(d))
		y.Free()
		y = sum
		Drop(d)
	}
	Drop(xt)
	return y
}

// maxScratch bounds the reused buffer of blasWidened (bytes): SmolVLM's
// largest layer needs 9.4 MB; a larger weight (an 8B model's MLP, an LM
// head over all positions) is widened into a tensor of its own.
const maxScratch = 64 << 20

// scratch is the f32 buffer bf16-stored weights are widened into for
// BLAS products of many rows (prefill, vision): one allocation reused by
// every layer, where a fresh tensor per product had its pages faulted in
// and zeroed by the system each time.
var scratch struct {
	sync.Mutex
	buf  *ts.Tensor // 1-D, on the CPU (bf16 storage is CPU-only)
	kind gotch.DType
}

// blasWidened is blas with w widened to kind first.
func blasWidened(x, w, b torch.Raw, kind gotch.DType) torch.Raw {
	sz := w.Size()
	n := sz[0] * sz[1]
	if n*int64(kind.Size()) > maxScratch {
		wide := w.Totype(kind)
		defer wide.Free()
		return blas(x, wide, b)
	}
	scratch.Lock()
	defer scratch.Unlock()
	if scratch.buf == nil || scratch.kind != kind || scratch.buf.Numel() < uint(n) {
		if scratch.buf != nil {
			scratch.buf.MustDrop()
		}
		scratch.buf = ts.MustEmpty([]int64{n}, kind, gotch.CPU) // grows to the largest layer
		scratch.kind = kind
	}
	flat := torch.Borrow(scratch.buf).Narrow(0, 0, n)
	wide := flat.View(sz...)
	wide.CopyFrom(w)
	y := blas(x, wide, b)
	torch.FreeRaw(flat, wide)
	return y
}

// bf16Product is x·wᵀ (+ b) for f32 x with x and w rounded to bf16 (see
// Linear.BF16Products).
func bf16Product(x, w, b torch.Raw) torch.Raw {
	xb := x.Totype(gotch.BFloat16)
	defer xb.Free()
	wb := w
	if w.DType() != gotch.BFloat16 {
		wb = w.Totype(gotch.BFloat16)
		defer wb.Free()
	}
	yb := xb.Linear(wb, torch.Raw{})
	y := yb.Totype(gotch.Float)
	yb.Free()
	if b.Defined() {
		yy := y.Add(b)
		y.Free()
		y = yy
	}
	return y
}

// blas is x·wᵀ (+ b) through libtorch (BLAS): one gemv for a single row
// (gemm with one row packs the whole weight matrix first and runs about
// 1.7× slower here), gemm otherwise.
func blas(x, w, b torch.Raw) torch.Raw {
	sz := x.Size()
	in := sz[len(sz)-1]
	n := in
	for _, d := range sz[:len(sz)-1] {
		n *= d
	}
	if n != in { // more than one row
		return x.Linear(w, b)
	}
	row := x
	if len(sz) != 1 {
		row = x.View(in)
	}
	y := w.Mv(row)
	if row != x {
		row.Free()
	}
	if b.Defined() {
		yb := y.Add(b)
		y.Free()
		y = yb
	}
	if len(sz) != 1 {
		out := append(append([]int64(nil), sz[:len(sz)-1]...), w.Size()[0])
		yv := y.View(out...)
		y.Free()
		y = yv
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
	return n.ForwardRaw(torch.Borrow(x)).Wrap()
}

// ForwardRaw is Forward on a torch.Raw (x stays the caller's). f32 on the
// CPU goes through torch.RMSNorm, one call instead of six ops.
func (n *RMSNorm) ForwardRaw(x torch.Raw) torch.Raw {
	if y, ok, err := torch.RMSNorm(x, torch.Borrow(n.W), n.Eps); err != nil {
		panic(err)
	} else if ok {
		return y
	}
	return n.composed(x)
}

// composed is ForwardRaw in libtorch's ops.
func (n *RMSNorm) composed(x torch.Raw) torch.Raw {
	h := x
	kind := x.DType()
	if kind != gotch.Float {
		h = x.Totype(gotch.Float)
	}
	sq := h.Square()
	mean := sq.MeanLast(gotch.Float)
	plus := mean.AddScalar(n.Eps)
	v := plus.Rsqrt()
	torch.FreeRaw(sq, mean, plus)
	hv := h.Mul(v)
	v.Free()
	if h != x {
		h.Free()
	}
	if kind != gotch.Float {
		t := hv.Totype(kind)
		hv.Free()
		hv = t
	}
	out := hv.Mul(torch.Borrow(n.W))
	hv.Free()
	return out
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

// SDPARaw is SDPA on torch.Raw handles (mask: a zero Raw for none).
func SDPARaw(q, k, v, mask torch.Raw, scale float64) torch.Raw {
	if q.DType() == gotch.Float {
		return torch.SDPA(q, k, v, mask, scale)
	}
	kind := q.DType()
	qf, kf, vf := q.Totype(gotch.Float), k.Totype(gotch.Float), v.Totype(gotch.Float)
	o := torch.SDPA(qf, kf, vf, mask, scale)
	torch.FreeRaw(qf, kf, vf)
	out := o.Totype(kind)
	o.Free()
	return out
}

// AttendChunked is unmasked SDPA (q [..., Tq, hd], k and v [..., T, hd]),
// computed chunk queries at a time: the scores of a chunk (chunk × T per
// head) stay in the CPU's caches between the product, the softmax and the
// product with v, where the whole score tensor (Tq × T per head: 48 MB for
// SigLIP's 1024 patches and 12 heads) goes through memory three times.
// The scale is applied to q first. Returns a new tensor; non-f32 inputs
// go through SDPARaw.
func AttendChunked(q, k, v torch.Raw, scale float64, chunk int64) torch.Raw {
	sz := q.Size()
	tq := sz[len(sz)-2]
	if q.DType() != gotch.Float || tq <= chunk {
		return SDPARaw(q, k, v, torch.Raw{}, scale)
	}
	d := int64(len(sz) - 2) // the query dimension
	kt := k.Transpose(-2, -1)
	var outs []torch.Raw
	for at := int64(0); at < tq; at += chunk {
		n := min(chunk, tq-at)
		qc := q.Narrow(d, at, n)
		qs := qc.MulScalar(scale)
		s := qs.Matmul(kt)
		p := s.Softmax(-1, gotch.Float)
		outs = append(outs, p.Matmul(v))
		torch.FreeRaw(qc, qs, s, p)
	}
	o := torch.Cat(d, outs...)
	torch.FreeRaw(outs...)
	kt.Free()
	return o
}

// Drop frees intermediates now (and keeps them alive until here); see
// torch.Drop.
func Drop(ts ...*ts.Tensor) { torch.Drop(ts...) }
