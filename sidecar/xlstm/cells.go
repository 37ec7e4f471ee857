package xlstm

import (
	"math"

	ts "github.com/sugarme/gotch/ts"
)

// mlstmParallel is xlstm 1.0.6's parallel_stabilized_simple.
// q, k, v: [B, NH, S, DH]; ig, fg: [B, NH, S] gate pre-activations.
// With F = cumsum(logσ(fg)), logD[t, s] = F_t − F_s + ig_s for s ≤ t,
// m_t = max_s logD[t, s], C = (q·kᵀ/√DH) ⊙ exp(logD − m),
// h = C·v / (max(|ΣC|, exp(−m)) + 1e-6). Returns [B, NH, S, DH].
func mlstmParallel(q, k, v, ig, fg *ts.Tensor) *ts.Tensor {
	sz := q.MustSize()
	S, DH := sz[2], sz[3]
	dev := q.MustDevice()
	lf := fg.MustLogSigmoid(false).MustUnsqueeze(-1, true)     // [B,NH,S,1]
	cs := lf.MustCumsum(2, q.DType(), true)                    // [B,NH,S,1]
	fmat := cs.MustSub(cs.MustTranspose(-2, -1, false), false) // [B,NH,S,S]: F_t − F_s
	mask := onesBool(S, dev)
	fmat = fmat.MustWhereScalarother(mask, scalarF(negInf), true)
	logD := fmat.MustAdd(ig.MustUnsqueeze(-2, false), true) // + ig_s
	m, _ := logD.MustMaxDim(-1, true, false)                // [B,NH,S,1]
	D := logD.MustSub(m, true).MustExp(true)
	ks := k.MustDivScalar(scalarF(math.Sqrt(float64(DH))), false)
	qk := q.MustMatmul(ks.MustTranspose(-2, -1, true), false)
	C := qk.MustMul(D, true)
	sum := C.MustSumDimIntlist([]int64{-1}, true, C.DType(), false).MustAbs(true)
	norm := sum.MustMaximum(m.MustNeg(false).MustExp(true), true)
	Cn := C.MustDiv(norm.MustAddScalar(scalarF(cellEps), true), true)
	return Cn.MustMatmul(v, true)
}

// slstmCell runs the sLSTM recurrence (xlstm 1.0.6, cuda backend layout).
// wx: [S, NH, B, 4·DH] input pre-activations, per head the gates i, f, z, o
// (DH each) with the bias already added; r: [NH, DH, 4·DH] with
// R[h, j, g·DH+o]. Per step: raw = wx_t + y_{t−1}·R; m = ĩ on the first
// step, else max(ĩ, m + logσ(f̃)); i = exp(ĩ − m), f = exp(m_old + logσ(f̃) − m),
// c = f·c + i·tanh(z̃), n = f·n + i, y = σ(õ)·c/n.
// Returns y for every step: [NH, B, S, DH]. Ops are fused (baddbmm,
// addcmul) because every gotch op has a fixed cost and this loop runs S times.
func slstmCell(wx, r *ts.Tensor) *ts.Tensor {
	sz := wx.MustSize()
	S, DH := sz[0], sz[3]/4
	steps := wx.MustUnbind(0, false) // S × [NH, B, 4DH]
	one := ts.FloatScalar(1)
	var y, c, n, m *ts.Tensor
	ys := make([]*ts.Tensor, 0, S)
	for t := int64(0); t < S; t++ {
		raw := steps[t]
		if t > 0 {
			raw = raw.MustBaddbmm(y, r, one, one, false) // + y·R per head
		}
		g := raw.MustSplit(DH, -1, false)
		ir, fr, zr, or := g[0], g[1], g[2], g[3]
		zt := zr.MustTanh(false)
		so := or.MustSigmoid(false)
		if t == 0 {
			// Zero state: m = ĩ, so i = 1 and the forget term multiplies zeros.
			m = ir
			c = zt
			n = zt.MustOnesLike(false)
			y = so.MustMul(c, true)
			ys = append(ys, y)
			continue
		}
		lfm := fr.MustLogSigmoid(false).MustAdd(m, true)
		mNew := ir.MustMaximum(lfm, false)
		ig := ir.MustSub(mNew, false).MustExp(true)
		fg := lfm.MustSub(mNew, true).MustExp(true)
		c = fg.MustMul(c, false).MustAddcmul(ig, zt, true)
		n = ig.MustAddcmul(fg, n, true)
		m = mNew
		y = so.MustMul(c, true).MustDiv(n, true)
		ys = append(ys, y)
	}
	return ts.MustStack(ys, 2) // [NH,B,S,DH]
}
