package llama

import (
	"sync/atomic"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// MLP is Llama's SwiGLU feed-forward block: Down(silu(Gate·x) ⊙ Up·x).
type MLP struct {
	Gate, Up, Down *layers.Linear
	// GateUp is Gate and Up declared as one product (layers.Fused).
	GateUp *layers.Fused
}

// Forward applies the block to h (which stays the caller's).
func (m *MLP) Forward(h torch.Raw) torch.Raw {
	p := m.GateUp.ForwardRaw(h)
	gate, up := p[0], p[1]
	act := gate.Silu()
	g := act.Mul(up)
	torch.FreeRaw(up, gate, act)
	o := m.Down.ForwardRaw(g)
	g.Free()
	return o
}

// DecoderLayer is one pre-norm Llama block: x + Attn(InNorm(x)), then
// x + MLP(PostNorm(x)).
type DecoderLayer struct {
	InNorm, PostNorm layers.RMSNorm
	Attn             Attention
	MLP              MLP
}

// Forward runs the block on the residual stream x, which it consumes
// (frees), and returns the new stream; the new keys and values go to kv
// (see Attention.Forward, also for pack).
func (l *DecoderLayer) Forward(x torch.Raw, rot *Rotation, mask torch.Raw, kv KV, pack *Packing) (out torch.Raw) {
	h := l.InNorm.ForwardRaw(x)
	a := l.Attn.Forward(h, rot, mask, kv, pack)
	x1 := x.Add(a)
	torch.FreeRaw(x, h, a)
	h = l.PostNorm.ForwardRaw(x1)
	o := l.MLP.Forward(h)
	out = x1.Add(o)
	torch.FreeRaw(x1, h, o)
	return out
}

// decodeStep runs the block for a decode step (one new token per
// sequence, x [D] or [B, 1, D], consumed on success) as one call,
// torch.DecodeLayer, writing the new keys and values into layer li's
// buffers of next (after Reserve); ok is false, with x and next
// untouched, when the call does not take this layer (an adapter on one of
// its products, parts not joined, not f32 on the CPU): the caller then
// runs Forward.
func (l *DecoderLayer) decodeStep(x torch.Raw, rot *Rotation, mask torch.Raw, next *kvcache.Cache, li int) (out torch.Raw, ok bool) {
	qkv, qkvB, ok1 := l.Attn.QKV.Plain()
	gu, guB, ok2 := l.MLP.GateUp.Plain()
	if !ok1 || !ok2 || guB != nil || l.Attn.O.Delta != nil || l.MLP.Down.Delta != nil || l.MLP.Down.B != nil ||
		l.PostNorm.Eps != l.InNorm.Eps {
		return x, false
	}
	d := torch.Decoder{
		InNorm: torch.Borrow(l.InNorm.W), QKV: torch.Borrow(qkv), QKVBias: borrowOpt(qkvB),
		O: torch.Borrow(l.Attn.O.W), OBias: borrowOpt(l.Attn.O.B), PostNorm: torch.Borrow(l.PostNorm.W),
		GateUp: torch.Borrow(gu), Down: torch.Borrow(l.MLP.Down.W),
		Eps: l.InNorm.Eps, Heads: l.Attn.Heads, KVHeads: l.Attn.KVHeads, HeadDim: l.Attn.HeadDim,
	}
	k, v, n := next.Buffers(li)
	y, ok, err := torch.DecodeLayer(&d, x, k, v, n, mask,
		torch.Borrow(rot.cosQ), torch.Borrow(rot.sinQ), torch.Borrow(rot.cosK), torch.Borrow(rot.sinK))
	if err != nil {
		panic(err) // torch.Run returns it as the pass's error
	}
	if !ok {
		return x, false
	}
	next.Wrote(li)
	x.Free()
	decodeSteps.Add(1)
	return y, true
}

// decodeSteps counts the layers decodeStep ran, for tests that check
// which path a step took.
var decodeSteps atomic.Int64

// borrowOpt is torch.Borrow of t, or a zero Raw for nil.
func borrowOpt(t *ts.Tensor) torch.Raw {
	if t == nil {
		return torch.Raw{}
	}
	return torch.Borrow(t)
}
