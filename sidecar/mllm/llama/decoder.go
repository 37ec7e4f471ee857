package llama

import (
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
