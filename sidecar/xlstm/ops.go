package xlstm

import (
	"math"
	"runtime"

	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

// The helpers below use gotch's Must* calls: callers validate shapes first
// (gotch's Must* ends the process on a libtorch error).
//
// scope works around a use-after-free in gotch v0.9.1: a *ts.Tensor whose
// last Go use is reading its C handle for an op can be finalized (its
// at::Tensor deleted) by the GC while that op is still running in C.
// Every tensor made during one pass is held by the scope until the pass
// ends, then released at once.
type scope struct {
	held    []*ts.Tensor
	scalars []*ts.Scalar // scalars have the same finalizer race
}

// f makes a float scalar held by the scope.
func (s *scope) f(v float64) *ts.Scalar {
	x := ts.FloatScalar(v)
	s.scalars = append(s.scalars, x)
	return x
}

// k holds t until the scope ends and returns it.
func (s *scope) k(t *ts.Tensor) *ts.Tensor {
	s.held = append(s.held, t)
	return t
}

// ks holds every tensor of ts.
func (s *scope) ks(list []*ts.Tensor) []*ts.Tensor {
	s.held = append(s.held, list...)
	return list
}

// end frees every held tensor except keep (the pass's results).
func (s *scope) end(keep ...*ts.Tensor) {
	for _, t := range s.held {
		kept := false
		for _, x := range keep {
			if x == t {
				kept = true
			}
		}
		if !kept {
			t.MustDrop()
		}
	}
	s.held = nil
	runtime.KeepAlive(s.scalars)
	s.scalars = nil
}

func (s *scope) linear(x, w, b *ts.Tensor) *ts.Tensor {
	if b == nil {
		b = ts.None
	}
	return s.k(ts.MustLinear(x, w, b))
}

// residualNorm is xlstm's LayerNorm: weight 1 + w, no bias, eps 1e-5.
func (s *scope) residualNorm(x, w *ts.Tensor) *ts.Tensor {
	d := w.MustSize()[0]
	scale := s.k(w.MustAddScalar(s.f(1), false))
	return s.k(ts.MustLayerNorm(x, []int64{d}, scale, ts.None, normEps, false))
}

// headNorm is xlstm's MultiHeadLayerNorm on x [B, S, NH, DH]: each head's
// features are normalised separately at each step, then scaled by 1 + w
// (w [NH·DH]). Returns [B, S, NH·DH].
func (s *scope) headNorm(x, w *ts.Tensor, nh int64) *ts.Tensor {
	sz := x.MustSize()
	dh := sz[3]
	n := s.k(ts.MustLayerNorm(x, []int64{dh}, ts.None, ts.None, normEps, false))
	scale := s.k(s.k(w.MustAddScalar(s.f(1), false)).MustView([]int64{nh, dh}, false))
	return s.k(s.k(n.MustMul(scale, false)).MustReshape([]int64{sz[0], sz[1], nh * dh}, false))
}

// headwise is LinearHeadwiseExpand: x [B, S, NH·I] with w [NH, O, I] gives
// y[..., h, o] = Σ_d x[..., h, d]·w[h, o, d], reshaped to [B, S, NH·O].
func (s *scope) headwise(x, w *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	ws := w.MustSize()
	nh, o, in := ws[0], ws[1], ws[2]
	xh := s.k(s.k(x.MustReshape([]int64{sz[0] * sz[1], nh, in}, false)).MustTranspose(0, 1, false)) // [NH, BS, I]
	y := s.k(xh.MustMatmul(s.k(w.MustTranspose(1, 2, false)), false))                               // [NH, BS, O]
	return s.k(s.k(y.MustTranspose(0, 1, false)).MustReshape([]int64{sz[0], sz[1], nh * o}, false))
}

// causalConv is CausalConv1d: depthwise conv padded K-1 and cut to the first
// S outputs, y[t] = b + Σ_k w[k]·x[t-K+1+k]. x [B, S, F], w [F, 1, K].
func (s *scope) causalConv(x, w, b *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	f := sz[2]
	k := w.MustSize()[2]
	xt := s.k(x.MustTranspose(1, 2, false))
	y := s.k(ts.MustConv1d(xt, w, b, []int64{1}, []int64{k - 1}, []int64{1}, f))
	return s.k(s.k(y.MustNarrow(2, 0, sz[1], false)).MustTranspose(1, 2, false))
}

// gradMode runs fn with autograd on or off on one OS thread (libtorch's
// grad mode is thread-local), then restores the thread's previous mode.
func gradMode(enabled bool, fn func()) { torch.WithGrad(enabled, fn) }

// setGrad sets the calling thread's grad mode and returns the previous one.
func setGrad(on bool) bool { return torch.SetGradEnabled(on) }

var negInf = math.Inf(-1)

func (s *scope) onesBool(n int64, dev gotch.Device) *ts.Tensor {
	return s.k(s.k(ts.MustOnes([]int64{n, n}, gotch.Bool, dev)).MustTril(0, false))
}
