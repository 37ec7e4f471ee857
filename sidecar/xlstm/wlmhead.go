package xlstm

import (
	"fmt"

	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// WLMHead is model.W folded into the MLLM's bias-free LM head:
// M = W·lm_head [EmbeddingDim, hidden] and W's bias, so that
// W·(lm_head·h) + b = M·h + b and the vocabulary-wide logits never exist.
type WLMHead struct {
	M    *ts.Tensor // [EmbeddingDim, hidden]
	Bias *ts.Tensor // [EmbeddingDim]
	// Vocab and Hidden are lm_head's shape.
	Vocab, Hidden int
}

// FuseLMHead computes W·lm_head for lmHead [V, H] (any float dtype; V must
// equal Config.InputDim). Autograd follows the caller's grad mode, so in
// training the result carries gradients back to W.
func (p *Predictor) FuseLMHead(lmHead *ts.Tensor) (*WLMHead, error) {
	if lmHead == nil {
		return nil, fmt.Errorf("xlstm: lm_head is nil")
	}
	sz, err := lmHead.Size()
	if err != nil {
		return nil, fmt.Errorf("xlstm: lm_head: %w", err)
	}
	if len(sz) != 2 || sz[0] != int64(p.cfg.InputDim) || sz[1] == 0 {
		return nil, fmt.Errorf("xlstm: lm_head shape %v, want [%d, hidden]", sz, p.cfg.InputDim)
	}
	// Sum over vocabulary chunks so that a bf16 head (128k × 4096 for
	// Llama-3) is never converted to float32 as a whole.
	const chunk = 16384
	w := p.w(keyW + "weight")
	var m *ts.Tensor
	for start := int64(0); start < sz[0]; start += chunk {
		n := min(chunk, sz[0]-start)
		s := &scope{}
		lm := s.Hold(s.Hold(s.Hold(lmHead.MustNarrow(0, start, n, false)).MustTo(p.device, false)).MustTotype(gotch.Float, false))
		part := s.Hold(s.Hold(w.MustNarrow(1, start, n, false)).MustMatmul(lm, false))
		if m != nil {
			s.Hold(m)
			part = s.Hold(m.MustAdd(part, false))
		}
		s.End(part)
		m = part
	}
	torch.Keep(lmHead)
	return &WLMHead{M: m, Bias: p.w(keyW + "bias"), Vocab: int(sz[0]), Hidden: int(sz[1])}, nil
}

// ForwardFused scores final normed hidden states hidden [B, S, H] through a
// fused W·lm_head; it equals Forward(hidden·lm_headᵀ) up to rounding.
func (p *Predictor) ForwardFused(hidden *ts.Tensor, f *WLMHead, lengths []int) (*ts.Tensor, error) {
	if f == nil {
		return nil, fmt.Errorf("xlstm: fused W·lm_head is nil")
	}
	if _, _, err := p.checkInput(hidden, f.Hidden, lengths, "hidden states"); err != nil {
		return nil, err
	}
	s := &scope{}
	h := s.Hold(hidden.MustTotype(gotch.Float, false))
	e := s.linear(h, f.M, f.Bias)
	out := p.fromEmbedded(s, e, lengths)
	s.End(out)
	torch.Keep(hidden, f.M, f.Bias)
	return out, nil
}

// ForwardHidden scores hidden [B, S, H] given the MLLM's lm_head [V, H]
// through the fused matrix. Outside training mode the fused matrix is
// computed once (without autograd) and reused while the same lm_head tensor
// is passed; in training mode it is recomputed each call so W gets gradients.
func (p *Predictor) ForwardHidden(hidden, lmHead *ts.Tensor, lengths []int) (*ts.Tensor, error) {
	p.mu.Lock()
	training := p.training
	f := p.fused
	if training || p.fusedFor != lmHead {
		f = nil
	}
	p.mu.Unlock()
	if f == nil {
		var err error
		if training {
			f, err = p.FuseLMHead(lmHead)
		} else {
			if rerr := torch.Run("fuse lm head", false, func() error { f, err = p.FuseLMHead(lmHead); return nil }); rerr != nil {
				return nil, rerr
			}
		}
		if err != nil {
			return nil, err
		}
		if !training {
			p.mu.Lock()
			p.fused, p.fusedFor = f, lmHead
			p.mu.Unlock()
		}
	}
	return p.ForwardFused(hidden, f, lengths)
}

// Predict is Forward without autograd, returning one score per item.
func (p *Predictor) Predict(x *ts.Tensor, lengths []int) ([]float64, error) {
	var out *ts.Tensor
	var err error
	if rerr := torch.Run("predict", false, func() error { out, err = p.Forward(x, lengths); return nil }); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return float64s(out), nil
}

// PredictHidden is ForwardHidden without autograd, one score per item.
func (p *Predictor) PredictHidden(hidden, lmHead *ts.Tensor, lengths []int) ([]float64, error) {
	var out *ts.Tensor
	var err error
	if rerr := torch.Run("predict", false, func() error { out, err = p.ForwardHidden(hidden, lmHead, lengths); return nil }); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return float64s(out), nil
}

// float64s copies a tensor's values out; see torch.Float64s.
func float64s(t *ts.Tensor) []float64 { return torch.Float64s(t, false) }
