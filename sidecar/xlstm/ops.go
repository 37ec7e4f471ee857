package xlstm

import (
	"math"
	"runtime"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	ts "github.com/sugarme/gotch/ts"
)

// The helpers below use gotch's Must* calls: callers validate shapes first
// (gotch's Must* ends the process on a libtorch error).

func linear(x, w, b *ts.Tensor) *ts.Tensor {
	if b == nil {
		b = ts.None
	}
	return ts.MustLinear(x, w, b)
}

// residualNorm is xlstm's LayerNorm: weight 1 + w, no bias, eps 1e-5.
func residualNorm(x, w *ts.Tensor) *ts.Tensor {
	d := w.MustSize()[0]
	scale := w.MustAddScalar(ts.FloatScalar(1), false)
	return ts.MustLayerNorm(x, []int64{d}, scale, ts.None, normEps, false)
}

// headNorm is xlstm's MultiHeadLayerNorm on x [B, S, NH, DH]: each head's
// features are normalised separately at each step, then scaled by 1 + w
// (w [NH·DH]). Returns [B, S, NH·DH].
func headNorm(x, w *ts.Tensor, nh int64) *ts.Tensor {
	sz := x.MustSize()
	dh := sz[3]
	n := ts.MustLayerNorm(x, []int64{dh}, ts.None, ts.None, normEps, false)
	scale := w.MustAddScalar(ts.FloatScalar(1), false).MustView([]int64{nh, dh}, true)
	return n.MustMul(scale, true).MustReshape([]int64{sz[0], sz[1], nh * dh}, true)
}

// headwise is LinearHeadwiseExpand: x [B, S, NH·I] with w [NH, O, I] gives
// y[..., h, o] = Σ_d x[..., h, d]·w[h, o, d], reshaped to [B, S, NH·O].
func headwise(x, w *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	ws := w.MustSize()
	nh, o, in := ws[0], ws[1], ws[2]
	xh := x.MustReshape([]int64{sz[0] * sz[1], nh, in}, false).MustTranspose(0, 1, true) // [NH, BS, I]
	y := xh.MustMatmul(w.MustTranspose(1, 2, false), true)                               // [NH, BS, O]
	return y.MustTranspose(0, 1, true).MustReshape([]int64{sz[0], sz[1], nh * o}, true)
}

// causalConv is CausalConv1d: depthwise conv padded K-1 and cut to the first
// S outputs, y[t] = b + Σ_k w[k]·x[t-K+1+k]. x [B, S, F], w [F, 1, K].
func causalConv(x, w, b *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	f := sz[2]
	k := w.MustSize()[2]
	xt := x.MustTranspose(1, 2, false)
	y := ts.MustConv1d(xt, w, b, []int64{1}, []int64{k - 1}, []int64{1}, f)
	return y.MustNarrow(2, 0, sz[1], true).MustTranspose(1, 2, true)
}

// gradMode runs fn with autograd on or off on one OS thread (libtorch's
// grad mode is thread-local and goroutines move between threads), then
// restores the thread's previous mode.
func gradMode(enabled bool, fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev := setGrad(enabled)
	defer setGrad(prev)
	fn()
}

// setGrad sets the calling thread's grad mode and returns the previous one.
// gotch v0.9.1's GradSetEnabled reads libtorch's C int result as an 8-byte
// Go int, so its upper half is stack garbage and the "previous state" it
// reports is usually false; restoring that disables autograd on the thread
// for good. Only the low 32 bits are the real value.
func setGrad(on bool) bool {
	v := 0
	if on {
		v = 1
	}
	return int32(lib.AtGradSetEnabled(v)) == 1
}

func scalarF(v float64) *ts.Scalar { return ts.FloatScalar(v) }

var negInf = math.Inf(-1)

func onesBool(s int64, dev gotch.Device) *ts.Tensor {
	return ts.MustOnes([]int64{s, s}, gotch.Bool, dev).MustTril(0, true)
}
