package llama

import (
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
)

// MLP is Llama's SwiGLU feed-forward block: Down(silu(Gate·x) ⊙ Up·x).
type MLP struct {
	Gate, Up, Down *layers.Linear
}

// Forward applies the block to h.
func (m *MLP) Forward(h *ts.Tensor) *ts.Tensor {
	up := m.Up.Forward(h)
	g := m.Gate.Forward(h).MustSilu(true).MustMul(up, true)
	o := m.Down.Forward(g)
	layers.Drop(up, g)
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
// (frees), and returns the new stream with the keys and values of past
// and new tokens (see Attention.Forward).
func (l *DecoderLayer) Forward(x *ts.Tensor, rot *Rotation, mask, pastK, pastV *ts.Tensor) (out, k, v *ts.Tensor) {
	h := l.InNorm.Forward(x)
	a, k, v := l.Attn.Forward(h, rot, mask, pastK, pastV)
	x = x.MustAdd(a, true)
	layers.Drop(h, a)
	h = l.PostNorm.Forward(x)
	o := l.MLP.Forward(h)
	x = x.MustAdd(o, true)
	layers.Drop(h, o)
	return x, k, v
}
