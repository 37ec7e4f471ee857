package llama

import (
	"math"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
)

// Attention is Llama's self-attention: grouped-query heads (query head h
// reads key/value head h / (heads/kvHeads)) with rotary positions.
type Attention struct {
	Q, K, V, O              *layers.Linear
	Heads, KVHeads, HeadDim int
}

// Forward attends from h [B, Tq, D] (or [D] in single-token mode) over
// pastK/pastV [B, nKV, T, hd] (nil for a fresh prefill) and the new
// tokens, rotated by rot; mask is [B, 1, nrep·Tq, T+Tq] or ts.None. It
// returns the output projection and the keys and values of past and new
// tokens, [B, nKV, T+Tq, hd], for the next cache.
func (a *Attention) Forward(h *ts.Tensor, rot *Rotation, mask, pastK, pastV *ts.Tensor) (out, k, v *ts.Tensor) {
	nkv, hd := a.KVHeads, a.HeadDim
	qp, kp := a.Q.Forward(h), a.K.Forward(h)
	q := rot.Query(qp)
	k = rot.Key(kp)
	v = a.V.Forward(h)
	layers.Drop(qp, kp)
	sz := h.MustSize()
	B, Tq := int64(1), int64(1)
	if len(sz) == 3 {
		B, Tq = sz[0], sz[1]
	}
	if Tq == 1 { // [B, 1, nKV·hd] is already laid out as [B, nKV, 1, hd]
		k = k.MustView([]int64{B, int64(nkv), 1, int64(hd)}, true)
		v = v.MustView([]int64{B, int64(nkv), 1, int64(hd)}, true)
	} else {
		k = k.MustView([]int64{B, Tq, int64(nkv), int64(hd)}, true).MustTranspose(1, 2, true)
		v = v.MustView([]int64{B, Tq, int64(nkv), int64(hd)}, true).MustTranspose(1, 2, true)
	}
	if pastK != nil {
		kn, vn := k, v
		k = ts.MustCat([]*ts.Tensor{pastK, kn}, 2)
		v = ts.MustCat([]*ts.Tensor{pastV, vn}, 2)
		layers.Drop(kn, vn)
	}
	scale := []float64{1 / math.Sqrt(float64(hd))}
	o := gqaAttention(q, k, v, mask, nkv, a.Heads/nkv, hd, scale)
	out = a.O.Forward(o)
	layers.Drop(q, o)
	return out, k, v
}

// gqaAttention computes softmax(q·kᵀ·scale + mask)·v with grouped KV heads
// without copying K/V per query head: q [B, Tq, H·hd] is regrouped to
// [B, nKV, nrep·Tq, hd] (query head h uses KV head h / nrep) so the KV
// tensors [B, nKV, T, hd] broadcast as they are. mask is [B, 1, nrep·Tq, T]
// or ts.None. Returns [B, Tq, H·hd].
func gqaAttention(q, k, v, mask *ts.Tensor, nkv, nrep, hd int, scale []float64) *ts.Tensor {
	if q.Dim() == 1 { // single-token mode: q [H·hd] → [1, nKV, nrep, hd] and back
		qv := q.MustView([]int64{1, int64(nkv), int64(nrep), int64(hd)}, false)
		o := layers.SDPA(qv, k, v, mask, scale)
		layers.Drop(qv)
		return o.MustView([]int64{int64(nkv * nrep * hd)}, true)
	}
	sz := q.MustSize()
	B, Tq := sz[0], sz[1]
	if Tq == 1 { // one query: the regrouping is a view
		qv := q.MustView([]int64{B, int64(nkv), int64(nrep), int64(hd)}, false)
		o := layers.SDPA(qv, k, v, mask, scale)
		layers.Drop(qv)
		return o.MustView([]int64{B, 1, int64(nkv * nrep * hd)}, true)
	}
	qg := q.MustView([]int64{B, Tq, int64(nkv), int64(nrep), int64(hd)}, false).
		MustPermute([]int64{0, 2, 3, 1, 4}, true).
		MustReshape([]int64{B, int64(nkv), int64(nrep) * Tq, int64(hd)}, true)
	o := layers.SDPA(qg, k, v, mask, scale)
	layers.Drop(qg)
	return o.MustView([]int64{B, int64(nkv), int64(nrep), Tq, int64(hd)}, true).
		MustPermute([]int64{0, 3, 1, 2, 4}, true).
		MustReshape([]int64{B, Tq, int64(nkv * nrep * hd)}, true)
}
