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
func (s *scope) mlstmParallel(q, k, v, ig, fg *ts.Tensor) *ts.Tensor {
	sz := q.MustSize()
	S, DH := sz[2], sz[3]
	dev := q.MustDevice()
	lf := s.Hold(s.Hold(fg.MustLogSigmoid(false)).MustUnsqueeze(-1, false))    // [B,NH,S,1]
	cs := s.Hold(lf.MustCumsum(2, q.DType(), false))                           // [B,NH,S,1]
	fmat := s.Hold(cs.MustSub(s.Hold(cs.MustTranspose(-2, -1, false)), false)) // [B,NH,S,S]: F_t − F_s
	fmat = s.Hold(fmat.MustWhereScalarother(s.onesBool(S, dev), s.Float(negInf), false))
	logD := s.Hold(fmat.MustAdd(s.Hold(ig.MustUnsqueeze(-2, false)), false)) // + ig_s
	m, idx := logD.MustMaxDim(-1, true, false)                               // [B,NH,S,1]
	s.Hold(m)
	s.Hold(idx)
	D := s.Hold(s.Hold(logD.MustSub(m, false)).MustExp(false))
	ks := s.Hold(k.MustDivScalar(s.Float(math.Sqrt(float64(DH))), false))
	qk := s.Hold(q.MustMatmul(s.Hold(ks.MustTranspose(-2, -1, false)), false))
	C := s.Hold(qk.MustMul(D, false))
	sum := s.Hold(s.Hold(C.MustSumDimIntlist([]int64{-1}, true, C.DType(), false)).MustAbs(false))
	norm := s.Hold(sum.MustMaximum(s.Hold(s.Hold(m.MustNeg(false)).MustExp(false)), false))
	Cn := s.Hold(C.MustDiv(s.Hold(norm.MustAddScalar(s.Float(cellEps), false)), false))
	return s.Hold(Cn.MustMatmul(v, false))
}

// slstmCell runs the sLSTM recurrence (xlstm 1.0.6, cuda backend layout).
// wx: [S, NH, B, 4·DH] input pre-activations, per head the gates i, f, z, o
// (DH each) with the bias already added; r: [NH, DH, 4·DH] with
// R[h, j, g·DH+o]. Per step: raw = wx_t + y_{t−1}·R; m = ĩ on the first
// step, else max(ĩ, m + logσ(f̃)); i = exp(ĩ − m), f = exp(m_old + logσ(f̃) − m),
// c = f·c + i·tanh(z̃), n = f·n + i, y = σ(õ)·c/n.
// Returns y for every step: [NH, B, S, DH]. Ops are fused (baddbmm,
// addcmul) because every gotch op has a fixed cost and this loop runs S times.
func (s *scope) slstmCell(wx, r *ts.Tensor) *ts.Tensor {
	sz := wx.MustSize()
	S, DH := sz[0], sz[3]/4
	steps := wx.MustUnbind(0, false) // S × [NH, B, 4DH], reachable through steps
	one := s.Float(1)
	var y, c, n, m *ts.Tensor
	ys := make([]*ts.Tensor, 0, S)
	// Each step's tensors live in their own scope, freed once the next step
	// (the last user of c, n, m) is done; the outputs y live in s.
	var prev *scope
	for t := int64(0); t < S; t++ {
		st := &scope{}
		raw := st.Hold(steps[t])
		if t > 0 {
			raw = st.Hold(raw.MustBaddbmm(y, r, one, one, false)) // + y·R per head
		}
		g := st.HoldAll(raw.MustSplit(DH, -1, false))
		ir, fr, zr, or := g[0], g[1], g[2], g[3]
		zt := st.Hold(zr.MustTanh(false))
		so := st.Hold(or.MustSigmoid(false))
		if t == 0 {
			// Zero state: m = ĩ, so i = 1 and the forget term multiplies zeros.
			m = ir
			c = zt
			n = st.Hold(zt.MustOnesLike(false))
			y = s.Hold(so.MustMul(c, false))
		} else {
			lfm := st.Hold(st.Hold(fr.MustLogSigmoid(false)).MustAdd(m, false))
			mNew := st.Hold(ir.MustMaximum(lfm, false))
			ig := st.Hold(st.Hold(ir.MustSub(mNew, false)).MustExp(false))
			fg := st.Hold(st.Hold(lfm.MustSub(mNew, false)).MustExp(false))
			c = st.Hold(st.Hold(fg.MustMul(c, false)).MustAddcmul(ig, zt, false))
			n = st.Hold(ig.MustAddcmul(fg, n, false))
			m = mNew
			y = s.Hold(st.Hold(so.MustMul(c, false)).MustDiv(n, false))
		}
		ys = append(ys, y)
		if prev != nil {
			prev.End()
		}
		prev = st
	}
	out := s.Hold(ts.MustStack(ys, 2)) // [NH,B,S,DH]
	prev.End()
	return out
}
