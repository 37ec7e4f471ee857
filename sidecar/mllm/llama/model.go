package llama

import (
	"fmt"
	"runtime"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Model is a Llama text model: embeddings, decoder layers, final norm and
// LM head.
type Model struct {
	Config      Config
	EmbedTokens *ts.Tensor // [vocab, D]
	Layers      []DecoderLayer
	Norm        layers.RMSNorm
	Head        *layers.Linear // shares EmbedTokens when the embeddings are tied
	// DType and Device are the weights' dtype and device (set by Bind).
	DType  gotch.DType
	Device gotch.Device

	tied bool
	rope *Rope
}

// New declares the model of c in p: the decoder under prefix (such as
// "model.text_model." or "llm.model.": embed_tokens, layers.N.…, norm)
// and the LM head as the Linear head (such as "lm_head"), which has no
// tensor of its own when tie is set. Load the tensors, then call Bind.
func New(p *layers.Params, c Config, prefix, head string, tie bool) *Model {
	m := &Model{Config: c, tied: tie}
	hd := c.HeadDim
	p.Add(prefix+"embed_tokens.weight", layers.KindEmbed, &m.EmbedTokens, int64(c.VocabSize), int64(c.HiddenSize))
	m.Layers = make([]DecoderLayer, c.NumHiddenLayers)
	for i := range m.Layers {
		l := &m.Layers[i]
		lp := fmt.Sprintf("%slayers.%d.", prefix, i)
		l.Attn = Attention{
			Q:     p.Linear(lp+"self_attn.q_proj", c.HiddenSize, c.NumAttentionHeads*hd, c.AttentionBias),
			K:     p.Linear(lp+"self_attn.k_proj", c.HiddenSize, c.NumKeyValueHeads*hd, c.AttentionBias),
			V:     p.Linear(lp+"self_attn.v_proj", c.HiddenSize, c.NumKeyValueHeads*hd, c.AttentionBias),
			O:     p.Linear(lp+"self_attn.o_proj", c.NumAttentionHeads*hd, c.HiddenSize, c.AttentionBias),
			Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads, HeadDim: hd,
		}
		l.MLP = MLP{
			Gate: p.Linear(lp+"mlp.gate_proj", c.HiddenSize, c.IntermediateSize, c.MLPBias),
			Up:   p.Linear(lp+"mlp.up_proj", c.HiddenSize, c.IntermediateSize, c.MLPBias),
			Down: p.Linear(lp+"mlp.down_proj", c.IntermediateSize, c.HiddenSize, c.MLPBias),
		}
		l.Attn.QKV = p.Fuse(l.Attn.Q, l.Attn.K, l.Attn.V)
		l.MLP.GateUp = p.Fuse(l.MLP.Gate, l.MLP.Up)
		p.RMSNorm(&l.InNorm, lp+"input_layernorm.weight", c.HiddenSize, c.RMSNormEps)
		p.RMSNorm(&l.PostNorm, lp+"post_attention_layernorm.weight", c.HiddenSize, c.RMSNormEps)
	}
	p.RMSNorm(&m.Norm, prefix+"norm.weight", c.HiddenSize, c.RMSNormEps)
	if tie {
		m.Head = &layers.Linear{}
		p.Linears[head] = m.Head
	} else {
		m.Head = p.Linear(head, c.HiddenSize, c.VocabSize, false)
	}
	return m
}

// Bind finishes a model whose tensors are loaded (in dtype kind on dev):
// it ties the head to the embeddings when asked and builds the rotary
// tables.
func (m *Model) Bind(kind gotch.DType, dev gotch.Device) {
	m.DType, m.Device = kind, dev
	if m.tied {
		m.Head.W = m.EmbedTokens
	}
	m.rope = NewRope(m.Config, kind, dev)
}

// Embed looks up ids, b rows of t tokens, and returns [b, t, D].
func (m *Model) Embed(ids []int64, b, t int) *ts.Tensor {
	it := torch.ToDevice(ts.MustOfSlice(ids).MustView([]int64{int64(b), int64(t)}, true), m.Device, true)
	x := ts.MustEmbedding(m.EmbedTokens, it, -1, false, false)
	torch.Drop(it)
	if x.DType() != m.DType { // a bf16 table under f32 compute
		x = x.MustTotype(m.DType, true)
	}
	return x
}

// Splice returns embeddings x [B, T, D] (which it consumes) with the
// slots where at [B·T] is set replaced, in order, by the rows of rows
// (each [n, D], converted to the model's dtype and device): the way a
// family puts its image embeddings at its image tokens.
func (m *Model) Splice(x *ts.Tensor, at []bool, rows []*ts.Tensor) *ts.Tensor {
	defer torch.Keep(rows...)
	var src, made []*ts.Tensor
	for _, r := range rows {
		t := r
		if t.DType() != m.DType {
			t = t.MustTotype(m.DType, false)
		}
		t = torch.ToDevice(t, m.Device, t != r)
		if t != r {
			made = append(made, t)
		}
		src = append(src, t)
	}
	all := ts.MustCat(src, 0)
	torch.Drop(made...)
	sz := x.MustSize()
	mk := torch.ToDevice(ts.MustOfSlice(at).MustView([]int64{sz[0], sz[1], 1}, true), m.Device, true)
	out := x.MustMaskedScatter(mk, all, true)
	torch.Drop(mk, all)
	return out
}

// Forward runs the decoder layers on embeddings x [B, Tq, D] whose tokens
// are marked valid (false = padding), after cache (nil for a fresh
// prefill); it frees x. It returns the final normed hidden states and the
// new cache.
// For one token of one sequence (a decode step at batch 1) the hidden
// state is a vector [D]: the residual stream stays a vector, so every
// Linear is one gemv op and no op is spent on reshapes (gotch charges
// ~26 µs per op).
func (m *Model) Forward(x *ts.Tensor, valid [][]bool, cache *kvcache.Cache) (*ts.Tensor, *kvcache.Cache) {
	c := m.Config
	b, tq := len(valid), len(valid[0])
	pos, next := cache.Append(valid)
	mask := m.mask(next, cache.Len(), tq)
	if b*tq == 1 {
		xv := x.MustView([]int64{int64(c.HiddenSize)}, false)
		torch.Drop(x)
		x = xv
	}
	rot := m.rope.At(pos)
	var mr torch.Raw
	if mask != ts.None {
		mr = torch.Borrow(mask)
	}
	xr := torch.Borrow(x).Share()
	torch.Drop(x)
	// Inference on a batch with padding among its new tokens runs the
	// layers' per-token ops on the valid tokens only (see Packing).
	var pack *Packing
	if !torch.GradEnabled() && !noPacking {
		pack = newPacking(valid, m)
	}
	if pack != nil {
		xp := pack.pack(xr)
		xr.Free()
		xr = xp
	}
	// Inference writes the new keys and values into the cache's buffers;
	// with autograd on (LoRA training) they are concatenated instead, as
	// an in-place write would change tensors the backward pass reads.
	inPlace := !torch.GradEnabled()
	if inPlace {
		cache.Reserve(next, tq, kvcache.Spec{Layers: len(m.Layers), KVHeads: c.NumKeyValueHeads, HeadDim: c.HeadDim, DType: m.DType, Device: m.Device})
	} else {
		next.K, next.V = make([]torch.Raw, len(m.Layers)), make([]torch.Raw, len(m.Layers))
	}
	// A decode step runs each layer as one call (decodeStep) where it can.
	fast := inPlace && tq == 1 && pack == nil && !noDecodeStep
	for li := range m.Layers {
		kv := func(k, v torch.Raw) (torch.Raw, torch.Raw) {
			if inPlace {
				return next.Put(li, k, v)
			}
			kAll, vAll := k.Share(), v.Share()
			if cache != nil {
				kAll, vAll = torch.Cat(2, cache.K[li], k), torch.Cat(2, cache.V[li], v)
			}
			next.K[li], next.V[li] = kAll, vAll
			return kAll, vAll
		}
		if fast {
			if y, ok := m.Layers[li].decodeStep(xr, rot, mr, next, li); ok {
				xr = y
				continue
			}
		}
		xr = m.Layers[li].Forward(xr, rot, mr, kv, pack)
	}
	// cache's finalizer must not free its keys and values while the
	// layers read them (the copy into new buffers, or the concatenation).
	runtime.KeepAlive(cache)
	rot.Drop()
	torch.Drop(mask)
	hr := m.Norm.ForwardRaw(xr)
	xr.Free()
	if pack != nil {
		hu := pack.unpack(hr)
		hr.Free()
		hr = hu
		pack.free()
	}
	return hr.Wrap(), next
}

// noPacking turns packing off, for tests that compare the packed and the
// padded layouts.
var noPacking bool

// noDecodeStep runs decode steps through the layers' ops, for tests that
// compare them with decodeStep.
var noDecodeStep bool

// mask is the additive attention mask [B, 1, nrep·Tq, past+Tq] of the
// cache next after tq new tokens: a key is visible when valid and not
// later than the query's slot. It is ts.None when every key is visible (one
// new token, no padding).
func (m *Model) mask(next *kvcache.Cache, past, tq int) *ts.Tensor {
	if tq == 1 && !next.HasPadding() {
		return ts.None
	}
	b := next.Batch()
	nrep := m.Config.NumAttentionHeads / m.Config.NumKeyValueHeads
	total := past + tq
	mv := make([]float32, b*nrep*tq*total)
	for i := 0; i < b; i++ {
		for r := 0; r < nrep; r++ {
			for j := 0; j < tq; j++ {
				row := ((i*nrep+r)*tq + j) * total
				for k := 0; k < total; k++ {
					if !next.Valid[i][k] || k > past+j {
						mv[row+k] = layers.MaskedScore
					}
				}
			}
		}
	}
	t := ts.MustOfSlice(mv).MustView([]int64{int64(b), 1, int64(nrep * tq), int64(total)}, true)
	return torch.ToDevice(t, m.Device, true)
}

// Logits applies the LM head to hidden states and returns f32 logits.
func (m *Model) Logits(h *ts.Tensor) *ts.Tensor {
	return m.Head.Forward(h).MustTotype(gotch.Float, true)
}

// Step feeds one token per sequence of cache (a negative token is a
// hidden padding slot: the sequence has finished) and returns the next
// logits [B, V] (f32, on the model's device) and the extended cache.
func (m *Model) Step(cache *kvcache.Cache, tokens []int64) (logits *ts.Tensor, next *kvcache.Cache) {
	logits, _, next = m.step(cache, tokens, false)
	return logits, next
}

// StepHidden is Step that also returns the fed tokens' final normed
// hidden states [B, D] (the LM head's input), as Forward's would be.
func (m *Model) StepHidden(cache *kvcache.Cache, tokens []int64) (logits, hidden *ts.Tensor, next *kvcache.Cache) {
	return m.step(cache, tokens, true)
}

func (m *Model) step(cache *kvcache.Cache, tokens []int64, keep bool) (logits, hidden *ts.Tensor, next *kvcache.Cache) {
	b := len(tokens)
	ids := make([]int64, b)
	valid := make([][]bool, b)
	for i, t := range tokens {
		valid[i] = []bool{t >= 0}
		if t >= 0 {
			ids[i] = t
		}
	}
	h, next := m.Forward(m.Embed(ids, b, 1), valid, cache)
	if h.Dim() == 1 { // single-token mode
		logits = m.Head.Forward(h).MustView([]int64{1, -1}, true)
		if keep {
			hidden = h.MustView([]int64{1, -1}, false)
		}
		torch.Drop(h)
	} else {
		last := h.MustSelect(1, 0, true)
		logits = m.Head.Forward(last)
		if keep {
			hidden = last
		} else {
			torch.Drop(last)
		}
	}
	if logits.DType() != gotch.Float {
		logits = logits.MustTotype(gotch.Float, true)
	}
	return logits, hidden, next
}
