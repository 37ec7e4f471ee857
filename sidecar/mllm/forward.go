package mllm

import (
	"fmt"
	"math"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// maskedScore is the additive attention mask value of a hidden key: finite,
// so a query with no visible key (a padding slot) gives finite garbage
// instead of NaN, and exp underflows to exactly 0 next to any visible key.
const maskedScore = -1e9

// initRope precomputes the inverse frequencies (f32, as Hugging Face's
// LlamaRotaryEmbedding) and the block-diagonal rotate_half matrices.
func (m *Model) initRope() {
	t := m.Config.Text
	hd := t.HeadDim
	m.invFreq = make([]float32, hd/2)
	for i := range m.invFreq {
		e := float32(2*i) / float32(hd)
		m.invFreq[i] = float32(1.0 / math.Pow(t.RopeTheta, float64(e)))
	}
	m.rotQ = m.onDevice(rotateHalfMatrix(t.NumAttentionHeads, hd, m.DType))
	m.rotK = m.onDevice(rotateHalfMatrix(t.NumKeyValueHeads, hd, m.DType))
	m.rotHead = m.onDevice(rotateHalfMatrix(1, hd, m.DType))
}

// rotateHalfMatrix returns R with x·R = rotate_half(x) applied per head:
// for each head block, out[j] = -x[j+d/2] for j < d/2 and x[j-d/2] above.
func rotateHalfMatrix(heads, hd int, kind gotch.DType) *ts.Tensor {
	n := heads * hd
	r := make([]float32, n*n)
	half := hd / 2
	for h := 0; h < heads; h++ {
		o := h * hd
		for j := 0; j < half; j++ {
			r[(o+j+half)*n+o+j] = -1
			r[(o+j)*n+o+j+half] = 1
		}
	}
	t := ts.MustOfSlice(r).MustView([]int64{int64(n), int64(n)}, true)
	if kind != gotch.Float {
		t = t.MustTotype(kind, true)
	}
	return t
}

// ropeTables returns cos and sin [B, T, heads·hd] for the given positions
// (angles in f32, duplicated over both halves of each head).
func (m *Model) ropeTables(pos [][]int64, heads int) (cos, sin *ts.Tensor) {
	hd := m.Config.Text.HeadDim
	half := hd / 2
	b, tq := len(pos), len(pos[0])
	w := heads * hd
	cv := make([]float32, b*tq*w)
	sv := make([]float32, b*tq*w)
	for i := 0; i < b; i++ {
		for j := 0; j < tq; j++ {
			row := (i*tq + j) * w
			p := float32(pos[i][j])
			for k := 0; k < half; k++ {
				a := float64(p * m.invFreq[k])
				c, s := float32(math.Cos(a)), float32(math.Sin(a))
				for h := 0; h < heads; h++ {
					o := row + h*hd
					cv[o+k], cv[o+k+half] = c, c
					sv[o+k], sv[o+k+half] = s, s
				}
			}
		}
	}
	shape := []int64{int64(b), int64(tq), int64(w)}
	if b*tq == 1 {
		shape = []int64{int64(w)} // single-token mode, see textForward
	}
	cos = m.onDevice(ts.MustOfSlice(cv).MustView(shape, true))
	sin = m.onDevice(ts.MustOfSlice(sv).MustView(shape, true))
	if m.DType != gotch.Float {
		cos = cos.MustTotype(m.DType, true)
		sin = sin.MustTotype(m.DType, true)
	}
	return cos, sin
}

// applyRope is x·cos + rotate_half(x)·sin with x [B, T, heads·hd].
// rotate_half is a matmul with a signed permutation (exact): with the
// heads·hd-wide block-diagonal rot for short inputs (one op, decode steps),
// per head with the hd-wide rotHead for long ones (prefill), where the wide
// matmul would cost more than the two extra view ops.
func applyRope(x, cos, sin, rot, rotHead *ts.Tensor) *ts.Tensor {
	var r *ts.Tensor
	sz := x.MustSize()
	if rotHead != nil && len(sz) == 3 && sz[0]*sz[1] > 8 {
		hd := rotHead.MustSize()[0]
		r = x.MustView([]int64{sz[0], sz[1], sz[2] / hd, hd}, false).MustMatmul(rotHead, true).MustView(sz, true)
	} else {
		r = x.MustMatmul(rot, false)
	}
	r = r.MustMul(sin, true)
	return x.MustMul(cos, false).MustAdd(r, true)
}

// rmsNorm is Llama's RMSNorm: computed in f32, cast back, times weight.
func rmsNorm(x, w *ts.Tensor, eps float64) *ts.Tensor {
	h := x
	kind := x.DType()
	if kind != gotch.Float {
		h = x.MustTotype(gotch.Float, false)
	}
	v := h.MustSquare(false).MustMeanDim([]int64{-1}, true, gotch.Float, true).MustAddScalar(ts.FloatScalar(eps), true).MustRsqrt(true)
	h = h.MustMul(v, kind != gotch.Float)
	if kind != gotch.Float {
		h = h.MustTotype(kind, true)
	}
	return h.MustMul(w, true)
}

// visionForward runs the SigLIP encoder on pixels [N, C, S, S] and returns
// the post-layernormed patch features [N, P, D].
func (m *Model) visionForward(px *ts.Tensor) *ts.Tensor {
	v := m.Config.Vision
	p := int64(v.PatchSize)
	if px.DType() != m.DType {
		px = px.MustTotype(m.DType, false)
	}
	x := ts.MustConv2d(px, m.patchW, m.patchB, []int64{p, p}, []int64{0, 0}, []int64{1, 1}, 1)
	x = x.MustFlatten(2, -1, true).MustTranspose(1, 2, true) // [N, P, D] row-major patches
	// Position ids of a full tile are row·n+col. (Hugging Face derives
	// them by bucketizing f32 aranges; for n = 27, SmolVLM-Instruct's
	// 384/14, torch's AVX2 CPU arange makes row/column 10 reuse 9, while
	// CUDA's fused arange, where the model was trained, gives the identity:
	// the identity is kept.)
	x = x.MustAdd(m.posEmb, true)
	sz := x.MustSize()
	n, np, d := sz[0], sz[1], sz[2]
	heads := int64(v.NumAttentionHeads)
	hd := d / heads
	approx := "tanh"
	if v.HiddenAct == "gelu" {
		approx = "none"
	}
	split := func(t *ts.Tensor) *ts.Tensor {
		return t.MustView([]int64{n, np, heads, hd}, true).MustTranspose(1, 2, true)
	}
	for i := range m.vision {
		l := &m.vision[i]
		h := l.LN1.forward(x)
		q, k, vv := split(l.Q.Forward(h)), split(l.K.Forward(h)), split(l.V.Forward(h))
		h.MustDrop()
		a := sdpa(q, k, vv, ts.None, []float64{1 / math.Sqrt(float64(hd))})
		drop(q, k, vv)
		a = a.MustTranspose(1, 2, true).MustReshape([]int64{n, np, d}, true)
		o := l.Out.Forward(a)
		x = x.MustAdd(o, true)
		drop(a, o)
		h = l.LN2.forward(x)
		g := l.FC1.Forward(h).MustGelu(approx, true)
		o = l.FC2.Forward(g)
		x = x.MustAdd(o, true)
		drop(h, g, o)
	}
	return m.postLN.forward(x)
}

// pixelShuffle merges s×s neighbouring patches into one token:
// out[b, i·(W/s)+j, (m·s+k)·D+d] = x[b, (i·s+m)·W + (j·s+k), d].
func pixelShuffle(x *ts.Tensor, s int64) *ts.Tensor {
	sz := x.MustSize()
	b, seq, d := sz[0], sz[1], sz[2]
	h := int64(math.Round(math.Sqrt(float64(seq))))
	w := h
	x = x.MustView([]int64{b, h, w / s, d * s}, false)
	x = x.MustPermute([]int64{0, 2, 1, 3}, true)
	x = x.MustReshape([]int64{b, w / s, h / s, d * s * s}, true)
	x = x.MustPermute([]int64{0, 2, 1, 3}, true)
	return x.MustReshape([]int64{b, seq / (s * s), d * s * s}, true)
}

// KVCache holds the keys and values of every text layer for a batch of
// sequences. It is immutable: forward passes return a new cache and leave
// the old one valid, so a prefix can be reused by several continuations.
type KVCache struct {
	K, V    []*ts.Tensor // per layer [B, nKV, T, hd]
	Valid   [][]bool     // [B][T]: false for padding slots
	NextPos []int64      // per sequence, the position of its next token
}

// Len is the number of cache slots (padding included).
func (c *KVCache) Len() int {
	if c == nil || len(c.Valid) == 0 {
		return 0
	}
	return len(c.Valid[0])
}

// Batch is the number of sequences.
func (c *KVCache) Batch() int {
	if c == nil {
		return 0
	}
	return len(c.Valid)
}

// device is where the cache's tensors live (the CPU for an empty cache).
func (c *KVCache) device() gotch.Device {
	if c == nil || len(c.K) == 0 {
		return gotch.CPU
	}
	return torch.TensorDevice(c.K[0])
}

// Clone returns an independent copy of the cache's bookkeeping; the tensors
// are shared, which is safe because no forward pass writes into them.
func (c *KVCache) Clone() *KVCache {
	if c == nil {
		return nil
	}
	out := &KVCache{K: append([]*ts.Tensor(nil), c.K...), V: append([]*ts.Tensor(nil), c.V...), NextPos: append([]int64(nil), c.NextPos...)}
	for _, v := range c.Valid {
		out.Valid = append(out.Valid, append([]bool(nil), v...))
	}
	return out
}

// Select returns a cache of the sequences at the given batch indices (an
// index may repeat, e.g. to continue one prefix several ways in a batch).
func (c *KVCache) Select(idx ...int) (out *KVCache, err error) {
	defer recoverErr(&err, "select cache")
	for _, i := range idx {
		if i < 0 || i >= c.Batch() {
			return nil, fmt.Errorf("select cache: index %d outside batch of %d", i, c.Batch())
		}
	}
	ix := make([]int64, len(idx))
	for i, v := range idx {
		ix[i] = int64(v)
	}
	it := torch.ToDevice(ts.MustOfSlice(ix), c.device(), true)
	out = &KVCache{}
	for l := range c.K {
		out.K = append(out.K, c.K[l].MustIndexSelect(0, it, false))
		out.V = append(out.V, c.V[l].MustIndexSelect(0, it, false))
	}
	for _, i := range idx {
		out.Valid = append(out.Valid, append([]bool(nil), c.Valid[i]...))
		out.NextPos = append(out.NextPos, c.NextPos[i])
	}
	return out, nil
}

// JoinCaches stacks caches of possibly different lengths into one batch,
// left-padding the shorter ones with hidden slots.
func JoinCaches(caches ...*KVCache) (out *KVCache, err error) {
	defer recoverErr(&err, "join caches")
	if len(caches) == 0 {
		return nil, fmt.Errorf("join caches: none given")
	}
	maxT := 0
	for _, c := range caches {
		if c == nil || len(c.K) != len(caches[0].K) {
			return nil, fmt.Errorf("join caches: caches come from different models")
		}
		maxT = max(maxT, c.Len())
	}
	out = &KVCache{}
	for l := range caches[0].K {
		var ks, vs []*ts.Tensor
		for _, c := range caches {
			pad := int64(maxT - c.Len())
			k, v := c.K[l], c.V[l]
			if pad > 0 {
				sz := k.MustSize()
				z := ts.MustZeros([]int64{sz[0], sz[1], pad, sz[3]}, k.DType(), torch.TensorDevice(k))
				k = ts.MustCat([]*ts.Tensor{z, k}, 2)
				v = ts.MustCat([]*ts.Tensor{z, v}, 2)
			}
			ks, vs = append(ks, k), append(vs, v)
		}
		out.K = append(out.K, ts.MustCat(ks, 0))
		out.V = append(out.V, ts.MustCat(vs, 0))
	}
	for _, c := range caches {
		pad := maxT - c.Len()
		for i := range c.Valid {
			row := make([]bool, pad, maxT)
			out.Valid = append(out.Valid, append(row, c.Valid[i]...))
			out.NextPos = append(out.NextPos, c.NextPos[i])
		}
	}
	return out, nil
}

// textForward runs the Llama decoder on embeddings x [B, Tq, D] whose
// tokens are marked valid (false = padding), after cache (nil for a fresh
// prefill). It returns the final normed hidden states and the new cache.
func (m *Model) textForward(x *ts.Tensor, valid [][]bool, cache *KVCache) (*ts.Tensor, *KVCache) {
	t := m.Config.Text
	b, tq := len(valid), len(valid[0])
	past := cache.Len()
	total := past + tq
	nkv, hd := t.NumKeyValueHeads, t.HeadDim
	nrep := t.NumAttentionHeads / nkv
	// positions and cache bookkeeping
	next := &KVCache{Valid: make([][]bool, b), NextPos: make([]int64, b)}
	pos := make([][]int64, b)
	for i := 0; i < b; i++ {
		var p int64
		var row []bool
		if cache != nil {
			p = cache.NextPos[i]
			row = append(row, cache.Valid[i]...)
		}
		pos[i] = make([]int64, tq)
		for j := 0; j < tq; j++ {
			if valid[i][j] {
				pos[i][j] = p
				p++
			} else {
				pos[i][j] = 1
			}
		}
		next.Valid[i] = append(row, valid[i]...)
		next.NextPos[i] = p
	}
	// additive mask [B, 1, nrep·Tq, T]: key visible when valid and not later
	// than the query's slot
	needMask := tq > 1
	for i := 0; i < b && !needMask; i++ {
		for _, ok := range next.Valid[i] {
			if !ok {
				needMask = true
				break
			}
		}
	}
	mask := ts.None
	if needMask {
		mv := make([]float32, b*nrep*tq*total)
		for i := 0; i < b; i++ {
			for r := 0; r < nrep; r++ {
				for j := 0; j < tq; j++ {
					row := ((i*nrep+r)*tq + j) * total
					for k := 0; k < total; k++ {
						if !next.Valid[i][k] || k > past+j {
							mv[row+k] = maskedScore
						}
					}
				}
			}
		}
		mask = m.onDevice(ts.MustOfSlice(mv).MustView([]int64{int64(b), 1, int64(nrep * tq), int64(total)}, true))
	}
	// Single-token mode (one sequence, one new token: a decode step at
	// batch 1): the residual stream is a vector [D], so every Linear is one
	// gemv op and no op is spent on reshapes; gotch charges ~26 µs per op.
	single := b*tq == 1
	if single {
		x = x.MustView([]int64{int64(t.HiddenSize)}, false)
	}
	cosQ, sinQ := m.ropeTables(pos, t.NumAttentionHeads)
	cosK, sinK := m.ropeTables(pos, nkv)
	scale := []float64{1 / math.Sqrt(float64(hd))}
	B, Tq := int64(b), int64(tq)
	for li := range m.text {
		l := &m.text[li]
		h := rmsNorm(x, l.InNorm, t.RMSNormEps)
		qp, kp := l.Q.Forward(h), l.K.Forward(h)
		q := applyRope(qp, cosQ, sinQ, m.rotQ, m.rotHead)
		k := applyRope(kp, cosK, sinK, m.rotK, m.rotHead)
		v := l.V.Forward(h)
		drop(h, qp, kp)
		if Tq == 1 { // [B, 1, nKV·hd] is already laid out as [B, nKV, 1, hd]
			k = k.MustView([]int64{B, int64(nkv), 1, int64(hd)}, true)
			v = v.MustView([]int64{B, int64(nkv), 1, int64(hd)}, true)
		} else {
			k = k.MustView([]int64{B, Tq, int64(nkv), int64(hd)}, true).MustTranspose(1, 2, true)
			v = v.MustView([]int64{B, Tq, int64(nkv), int64(hd)}, true).MustTranspose(1, 2, true)
		}
		if cache != nil {
			kn, vn := k, v
			k = ts.MustCat([]*ts.Tensor{cache.K[li], kn}, 2)
			v = ts.MustCat([]*ts.Tensor{cache.V[li], vn}, 2)
			drop(kn, vn)
		}
		next.K = append(next.K, k)
		next.V = append(next.V, v)
		a := gqaAttention(q, k, v, mask, nkv, nrep, hd, scale)
		o := l.O.Forward(a)
		x = x.MustAdd(o, true)
		drop(q, a, o)
		h = rmsNorm(x, l.PostNorm, t.RMSNormEps)
		up := l.Up.Forward(h)
		g := l.Gate.Forward(h).MustSilu(true).MustMul(up, true)
		o = l.Down.Forward(g)
		x = x.MustAdd(o, true)
		drop(h, up, g, o)
	}
	return rmsNorm(x, m.norm, t.RMSNormEps), next // [D] in single-token mode
}

// gqaAttention computes softmax(q·kᵀ·scale + mask)·v with grouped KV heads
// without copying K/V per query head: q [B, Tq, H·hd] is regrouped to
// [B, nKV, nrep·Tq, hd] (query head h uses KV head h / nrep) so the KV
// tensors [B, nKV, T, hd] broadcast as they are. mask is [B, 1, nrep·Tq, T]
// or ts.None. Returns [B, Tq, H·hd].
func gqaAttention(q, k, v, mask *ts.Tensor, nkv, nrep, hd int, scale []float64) *ts.Tensor {
	if q.Dim() == 1 { // single-token mode: q [H·hd] → [1, nKV, nrep, hd] and back
		o := sdpa(q.MustView([]int64{1, int64(nkv), int64(nrep), int64(hd)}, false), k, v, mask, scale)
		return o.MustView([]int64{int64(nkv * nrep * hd)}, true)
	}
	sz := q.MustSize()
	B, Tq := sz[0], sz[1]
	if Tq == 1 { // one query: the regrouping is a view
		q = q.MustView([]int64{B, int64(nkv), int64(nrep), int64(hd)}, false)
		o := sdpa(q, k, v, mask, scale)
		return o.MustView([]int64{B, 1, int64(nkv * nrep * hd)}, true)
	}
	q = q.MustView([]int64{B, Tq, int64(nkv), int64(nrep), int64(hd)}, false).
		MustPermute([]int64{0, 2, 3, 1, 4}, true).
		MustReshape([]int64{B, int64(nkv), int64(nrep) * Tq, int64(hd)}, true)
	o := sdpa(q, k, v, mask, scale)
	return o.MustView([]int64{B, int64(nkv), int64(nrep), Tq, int64(hd)}, true).
		MustPermute([]int64{0, 3, 1, 2, 4}, true).
		MustReshape([]int64{B, Tq, int64(nkv * nrep * hd)}, true)
}

// sdpa is softmax(q·kᵀ·scale + mask)·v with the scores and softmax in f32
// (as Hugging Face's eager attention) whatever the model dtype; mask is
// f32 or ts.None.
func sdpa(q, k, v, mask *ts.Tensor, scale []float64) *ts.Tensor {
	kind := q.DType()
	if kind == gotch.Float {
		return ts.MustScaledDotProductAttention(q, k, v, mask, 0, false, scale)
	}
	o := ts.MustScaledDotProductAttention(q.MustTotype(gotch.Float, false), k.MustTotype(gotch.Float, false),
		v.MustTotype(gotch.Float, false), mask, 0, false, scale)
	return o.MustTotype(kind, true)
}

// drop frees intermediates now (and keeps them alive until here).
func drop(ts ...*ts.Tensor) {
	for _, t := range ts {
		t.MustDrop()
	}
}

// recoverErr turns a panic from gotch's Must* calls into an error.
func recoverErr(err *error, what string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: %v", what, r)
	}
}
