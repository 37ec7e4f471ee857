package xlstm

import (
	"math"

	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

// The helpers below use gotch's Must* calls: callers validate shapes first
// (gotch's Must* ends the process on a libtorch error).
//
// scope holds every tensor made during one pass until the pass ends (see
// torch.Scope and torch.Run on gotch's finalizers); its methods are the
// predictor's building blocks.
type scope struct{ torch.Scope }

func (s *scope) linear(x, w, b *ts.Tensor) *ts.Tensor {
	if b == nil {
		b = ts.None
	}
	return s.Hold(ts.MustLinear(x, w, b))
}

// residualNorm is xlstm's LayerNorm: weight 1 + w, no bias, eps 1e-5.
func (s *scope) residualNorm(x, w *ts.Tensor) *ts.Tensor {
	d := w.MustSize()[0]
	scale := s.Hold(w.MustAddScalar(s.Float(1), false))
	return s.Hold(ts.MustLayerNorm(x, []int64{d}, scale, ts.None, normEps, false))
}

// headNorm is xlstm's MultiHeadLayerNorm on x [B, S, NH, DH]: each head's
// features are normalised separately at each step, then scaled by 1 + w
// (w [NH·DH]). Returns [B, S, NH·DH].
func (s *scope) headNorm(x, w *ts.Tensor, nh int64) *ts.Tensor {
	sz := x.MustSize()
	dh := sz[3]
	n := s.Hold(ts.MustLayerNorm(x, []int64{dh}, ts.None, ts.None, normEps, false))
	scale := s.Hold(s.Hold(w.MustAddScalar(s.Float(1), false)).MustView([]int64{nh, dh}, false))
	return s.Hold(s.Hold(n.MustMul(scale, false)).MustReshape([]int64{sz[0], sz[1], nh * dh}, false))
}

// headwise is LinearHeadwiseExpand: x [B, S, NH·I] with w [NH, O, I] gives
// y[..., h, o] = Σ_d x[..., h, d]·w[h, o, d], reshaped to [B, S, NH·O].
func (s *scope) headwise(x, w *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	ws := w.MustSize()
	nh, o, in := ws[0], ws[1], ws[2]
	xh := s.Hold(s.Hold(x.MustReshape([]int64{sz[0] * sz[1], nh, in}, false)).MustTranspose(0, 1, false)) // [NH, BS, I]
	y := s.Hold(xh.MustMatmul(s.Hold(w.MustTranspose(1, 2, false)), false))                               // [NH, BS, O]
	return s.Hold(s.Hold(y.MustTranspose(0, 1, false)).MustReshape([]int64{sz[0], sz[1], nh * o}, false))
}

// causalConv is CausalConv1d: depthwise conv padded K-1 and cut to the first
// S outputs, y[t] = b + Σ_k w[k]·x[t-K+1+k]. x [B, S, F], w [F, 1, K].
func (s *scope) causalConv(x, w, b *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	f := sz[2]
	k := w.MustSize()[2]
	xt := s.Hold(x.MustTranspose(1, 2, false))
	y := s.Hold(ts.MustConv1d(xt, w, b, []int64{1}, []int64{k - 1}, []int64{1}, f))
	return s.Hold(s.Hold(y.MustNarrow(2, 0, sz[1], false)).MustTranspose(1, 2, false))
}

// setGrad sets the calling thread's grad mode and returns the previous one.
func setGrad(on bool) bool { return torch.SetGradEnabled(on) }

var negInf = math.Inf(-1)

func (s *scope) onesBool(n int64, dev gotch.Device) *ts.Tensor {
	return s.Hold(s.Hold(ts.MustOnes([]int64{n, n}, gotch.Bool, dev)).MustTril(0, false))
}
