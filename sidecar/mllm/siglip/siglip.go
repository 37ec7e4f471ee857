// Package siglip is the SigLIP vision encoder as Idefics3 (SmolVLM) uses
// it: a patch convolution with learned position embeddings, pre-norm
// encoder layers (multi-head attention and a GELU MLP) and a final
// LayerNorm.
//
// Functions here panic on a libtorch error (gotch's Must* calls); callers
// run them under torch.Run, which turns the panic into an error.
package siglip

import (
	"fmt"
	"math"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Config is a SigLIP vision tower's config (Idefics3's vision_config).
type Config struct {
	HiddenSize        int     `json:"hidden_size"`
	IntermediateSize  int     `json:"intermediate_size"`
	NumHiddenLayers   int     `json:"num_hidden_layers"`
	NumAttentionHeads int     `json:"num_attention_heads"`
	NumChannels       int     `json:"num_channels"`
	ImageSize         int     `json:"image_size"`
	PatchSize         int     `json:"patch_size"`
	HiddenAct         string  `json:"hidden_act"`
	LayerNormEps      float64 `json:"layer_norm_eps"`
	ModelType         string  `json:"model_type,omitempty"`
}

// Attention is SigLIP's multi-head self-attention (no mask).
type Attention struct {
	Q, K, V, Out *layers.Linear
	// QKV is Q, K and V declared as one product (layers.Fused).
	QKV   *layers.Fused
	Heads int
}

// attentionChunk is how many queries AttendChunked takes at a time: 256
// queries × 1024 keys × 12 heads of f32 scores is 12 MB, within this
// machine's L3 cache (measured on 512² images: 256 and 512 run about as
// fast, both ~1.6× the one-shot attention; 64 is slower again).
const attentionChunk = 256

// Forward attends over the patches of h [N, P, D].
func (a *Attention) Forward(h *ts.Tensor) *ts.Tensor {
	defer torch.Keep(h)
	hr := torch.Borrow(h)
	sz := h.MustSize()
	n, np, d := sz[0], sz[1], sz[2]
	heads := int64(a.Heads)
	hd := d / heads
	ps := a.QKV.ForwardRaw(hr)
	split := func(p torch.Raw) torch.Raw {
		p4 := p.View(n, np, heads, hd)
		t := p4.Transpose(1, 2)
		torch.FreeRaw(p, p4)
		return t
	}
	q, k, v := split(ps[0]), split(ps[1]), split(ps[2])
	o := layers.AttendChunked(q, k, v, 1/math.Sqrt(float64(hd)), attentionChunk)
	torch.FreeRaw(q, k, v)
	ot := o.Transpose(1, 2)
	or := ot.Reshape(n, np, d)
	torch.FreeRaw(o, ot)
	out := a.Out.ForwardRaw(or)
	or.Free()
	return out.Wrap()
}

// MLP is SigLIP's feed-forward block: FC2(gelu(FC1·x)).
type MLP struct {
	FC1, FC2 *layers.Linear
	// Approximate is the GELU approximation: "tanh" or "none".
	Approximate string
}

// Forward applies the block to h. Without autograd GELU runs in place:
// FC1's output is 12.6 MB for a 512² image, and a second one raised a
// vision pass's peak memory by as much.
func (m *MLP) Forward(h *ts.Tensor) *ts.Tensor {
	g := m.FC1.Forward(h)
	if torch.GradEnabled() {
		g = g.MustGelu(m.Approximate, true)
	} else {
		torch.Borrow(g).GeluInPlace(m.Approximate)
		torch.Keep(g)
	}
	o := m.FC2.Forward(g)
	g.MustDrop()
	return o
}

// EncoderLayer is one pre-norm encoder block: x + Attn(LN1(x)), then
// x + MLP(LN2(x)).
type EncoderLayer struct {
	LN1, LN2 layers.LayerNorm
	Attn     Attention
	MLP      MLP
}

// Forward runs the block on x [N, P, D], which it consumes (frees).
func (l *EncoderLayer) Forward(x *ts.Tensor) *ts.Tensor {
	h := l.LN1.Forward(x)
	a := l.Attn.Forward(h)
	h.MustDrop()
	x = x.MustAdd(a, true)
	a.MustDrop()
	h = l.LN2.Forward(x)
	o := l.MLP.Forward(h)
	x = x.MustAdd(o, true)
	layers.Drop(h, o)
	return x
}

// Encoder is the vision tower: patch embedding, encoder layers, final
// LayerNorm.
type Encoder struct {
	Config         Config
	PatchW, PatchB *ts.Tensor // conv [D, C, p, p] and bias [D]
	PosEmb         *ts.Tensor // [patches, D]
	Layers         []EncoderLayer
	PostLN         layers.LayerNorm
}

// New declares the encoder of c under prefix (such as
// "model.vision_model.": embeddings.…, encoder.layers.N.…, post_layernorm).
func New(p *layers.Params, c Config, prefix string) *Encoder {
	e := &Encoder{Config: c}
	np := int64(c.ImageSize / c.PatchSize)
	p.Add(prefix+"embeddings.patch_embedding.weight", layers.KindConv, &e.PatchW, int64(c.HiddenSize), int64(c.NumChannels), int64(c.PatchSize), int64(c.PatchSize))
	p.Add(prefix+"embeddings.patch_embedding.bias", layers.KindBias, &e.PatchB, int64(c.HiddenSize))
	p.Add(prefix+"embeddings.position_embedding.weight", layers.KindPos, &e.PosEmb, np*np, int64(c.HiddenSize))
	approx := "tanh"
	if c.HiddenAct == "gelu" {
		approx = "none"
	}
	d := c.HiddenSize
	e.Layers = make([]EncoderLayer, c.NumHiddenLayers)
	for i := range e.Layers {
		l := &e.Layers[i]
		lp := fmt.Sprintf("%sencoder.layers.%d.", prefix, i)
		l.Attn.K = p.Linear(lp+"self_attn.k_proj", d, d, true)
		l.Attn.V = p.Linear(lp+"self_attn.v_proj", d, d, true)
		l.Attn.Q = p.Linear(lp+"self_attn.q_proj", d, d, true)
		l.Attn.Out = p.Linear(lp+"self_attn.out_proj", d, d, true)
		l.Attn.QKV = p.Fuse(l.Attn.Q, l.Attn.K, l.Attn.V)
		l.Attn.Heads = c.NumAttentionHeads
		p.LayerNorm(&l.LN1, lp+"layer_norm1", d, c.LayerNormEps)
		l.MLP = MLP{
			FC1:         p.Linear(lp+"mlp.fc1", d, c.IntermediateSize, true),
			FC2:         p.Linear(lp+"mlp.fc2", c.IntermediateSize, d, true),
			Approximate: approx,
		}
		p.LayerNorm(&l.LN2, lp+"layer_norm2", d, c.LayerNormEps)
	}
	p.LayerNorm(&e.PostLN, prefix+"post_layernorm", d, c.LayerNormEps)
	return e
}

// Embed is the patch embedding of pixels [N, C, S, S] in the weights'
// dtype: [N, P, D] row-major patches plus their position embeddings.
func (e *Encoder) Embed(px *ts.Tensor) *ts.Tensor {
	defer torch.Keep(px)
	p := int64(e.Config.PatchSize)
	in := px
	if kind := e.PatchW.DType(); px.DType() != kind {
		in = px.MustTotype(kind, false)
	}
	x := ts.MustConv2d(in, e.PatchW, e.PatchB, []int64{p, p}, []int64{0, 0}, []int64{1, 1}, 1)
	if in != px {
		torch.Drop(in)
	}
	x = x.MustFlatten(2, -1, true).MustTranspose(1, 2, true)
	// Position ids of a full tile are row·n+col. (Hugging Face derives
	// them by bucketizing f32 aranges; for n = 27, SmolVLM-Instruct's
	// 384/14, torch's AVX2 CPU arange makes row/column 10 reuse 9, while
	// CUDA's fused arange, where the model was trained, gives the identity:
	// the identity is kept.)
	return x.MustAdd(e.PosEmb, true)
}

// Forward runs the encoder on pixels [N, C, S, S] and returns the
// post-layernormed patch features [N, P, D].
func (e *Encoder) Forward(px *ts.Tensor) *ts.Tensor {
	x := e.Embed(px)
	for i := range e.Layers {
		x = e.Layers[i].Forward(x)
	}
	out := e.PostLN.Forward(x)
	torch.Drop(x)
	return out
}
