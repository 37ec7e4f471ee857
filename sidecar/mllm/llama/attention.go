package llama

import (
	"math"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Attention is Llama's self-attention: grouped-query heads (query head h
// reads key/value head h / (heads/kvHeads)) with rotary positions.
type Attention struct {
	Q, K, V, O *layers.Linear
	// QKV is Q, K and V declared as one product (layers.Fused).
	QKV                     *layers.Fused
	Heads, KVHeads, HeadDim int
}

// KV stores one layer's keys and values of the new tokens, k and v [B,
// nKV, Tq, hd] (which stay the caller's), in the cache being built and
// returns those of past and new tokens [B, nKV, T+Tq, hd], owned by that
// cache.
type KV func(k, v torch.Raw) (kAll, vAll torch.Raw)

// Forward attends from h [B, Tq, D] (or [D] in single-token mode, or the
// packed [N, D] of pack when pack is not nil) over the past tokens and the
// new ones, rotated by rot, storing the new keys and values through kv;
// mask is [B, 1, nrep·Tq, T+Tq] or a zero Raw. It returns the output
// projection (new, packed like h); h and mask stay the caller's.
func (a *Attention) Forward(h torch.Raw, rot *Rotation, mask torch.Raw, kv KV, pack *Packing) torch.Raw {
	nkv, hd := int64(a.KVHeads), int64(a.HeadDim)
	p := a.QKV.ForwardRaw(h)
	qp, kp, vp := p[0], p[1], p[2]
	if pack != nil {
		qu, ku, vu := pack.unpack(qp), pack.unpack(kp), pack.unpack(vp)
		torch.FreeRaw(qp, kp, vp)
		qp, kp, vp = qu, ku, vu
	}
	q := rot.Query(qp)
	kr := rot.Key(kp)
	torch.FreeRaw(qp, kp)
	sz := q.Size()
	B, Tq := int64(1), int64(1)
	if len(sz) == 3 {
		B, Tq = sz[0], sz[1]
	}
	var k, v torch.Raw
	if Tq == 1 { // [B, 1, nKV·hd] is already laid out as [B, nKV, 1, hd]
		k, v = kr.View(B, nkv, 1, hd), vp.View(B, nkv, 1, hd)
	} else {
		k4, v4 := kr.View(B, Tq, nkv, hd), vp.View(B, Tq, nkv, hd)
		k, v = k4.Transpose(1, 2), v4.Transpose(1, 2)
		torch.FreeRaw(k4, v4)
	}
	torch.FreeRaw(kr, vp)
	kAll, vAll := kv(k, v)
	torch.FreeRaw(k, v)
	o := gqaAttention(q, kAll, vAll, mask, a.KVHeads, a.Heads/a.KVHeads, a.HeadDim, 1/math.Sqrt(float64(hd)))
	if pack != nil {
		op := pack.pack(o)
		o.Free()
		o = op
	}
	out := a.O.ForwardRaw(o)
	torch.FreeRaw(q, o)
	return out
}

// gqaAttention computes softmax(q·kᵀ·scale + mask)·v with grouped KV heads
// without copying K/V per query head: q [B, Tq, H·hd] is regrouped to
// [B, nKV, nrep·Tq, hd] (query head h uses KV head h / nrep) so the KV
// tensors [B, nKV, T, hd] broadcast as they are. mask is [B, 1, nrep·Tq, T]
// or a zero Raw. Returns [B, Tq, H·hd] (a new tensor).
func gqaAttention(q, k, v, mask torch.Raw, nkv, nrep, hd int, scale float64) torch.Raw {
	NKV, NR, HD := int64(nkv), int64(nrep), int64(hd)
	if q.Dim() == 1 { // single-token mode: q [H·hd] → [1, nKV, nrep, hd] and back
		qv := q.View(1, NKV, NR, HD)
		o := attendFew(qv, k, v, mask, scale)
		out := o.View(NKV * NR * HD)
		torch.FreeRaw(qv, o)
		return out
	}
	sz := q.Size()
	B, Tq := sz[0], sz[1]
	if Tq == 1 { // one query: the regrouping is a view
		qv := q.View(B, NKV, NR, HD)
		o := attendFew(qv, k, v, mask, scale)
		out := o.View(B, 1, NKV*NR*HD)
		torch.FreeRaw(qv, o)
		return out
	}
	q5 := q.View(B, Tq, NKV, NR, HD)
	qp := q5.Permute(0, 2, 3, 1, 4)
	qg := qp.Reshape(B, NKV, NR*Tq, HD)
	torch.FreeRaw(q5, qp)
	o := layers.SDPARaw(qg, k, v, mask, scale)
	qg.Free()
	o5 := o.View(B, NKV, NR, Tq, HD)
	op := o5.Permute(0, 3, 1, 2, 4)
	out := op.Reshape(B, Tq, NKV*NR*HD)
	torch.FreeRaw(o, o5, op)
	return out
}

// attendFew is layers.SDPARaw for a decode step's few queries, through
// torch.AttendFew (one call instead of about ten libtorch ops and two BLAS
// products per layer) where it takes the tensors.
func attendFew(q, k, v, mask torch.Raw, scale float64) torch.Raw {
	o, ok, err := torch.AttendFew(q, k, v, mask, scale)
	if err != nil {
		panic(err) // torch.Run returns it as the pass's error
	}
	if ok {
		return o
	}
	return layers.SDPARaw(q, k, v, mask, scale)
}
