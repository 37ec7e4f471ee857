package mllm

import (
	"fmt"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Sequence is one prompt of a batch: token ids and the features of the
// images whose <image> tokens it contains, in order.
type Sequence struct {
	Tokens []int64
	Images []*ImageFeatures
}

// LogitsMode says which logits a forward pass returns.
type LogitsMode int

const (
	// LogitsLast returns the logits of each sequence's last token, [B, V].
	LogitsLast LogitsMode = iota
	// LogitsAll returns logits at every position, [B, T, V].
	LogitsAll
	// LogitsNone returns no logits (use Hidden).
	LogitsNone
)

// ForwardOptions configures Prefill and Extend.
type ForwardOptions struct {
	Logits LogitsMode
	// Hidden also returns the final normed hidden states [B, T, D].
	Hidden bool
	// Grad keeps autograd on (LoRA training); inference leaves it false.
	Grad bool
}

// Output is the result of a forward pass. Sequences shorter than the
// longest of the call are left-padded: Pad[b] slots at the start of the
// time axis of Logits (LogitsAll) and Hidden belong to no token.
type Output struct {
	Logits *ts.Tensor // f32, on the model's Device
	Hidden *ts.Tensor // on the model's Device
	Pad    []int
}

// Prefill runs a fresh batch of prompts and returns the output and the KV
// cache that holds them.
func (m *Model) Prefill(seqs []Sequence, opts ForwardOptions) (*Output, *KVCache, error) {
	return m.forward(nil, seqs, opts)
}

// Extend continues cache with more tokens per sequence (len(seqs) must be
// the cache's batch). The given cache stays valid and unchanged.
func (m *Model) Extend(cache *KVCache, seqs []Sequence, opts ForwardOptions) (*Output, *KVCache, error) {
	if cache == nil {
		return nil, nil, fmt.Errorf("extend: nil cache")
	}
	return m.forward(cache, seqs, opts)
}

// batch is a left-padded batch of sequences as the text model takes it.
type batch struct {
	ids    []int64  // [B·T], padding slots hold a token that is no image
	valid  [][]bool // [B][T]
	isImg  []bool   // [B·T]: the slot holds the image token
	anyImg bool
	pad    []int
	b, t   int
}

// checkSequences validates a batch against the vocabulary and its images.
func (m *Model) checkSequences(seqs []Sequence) error {
	if len(seqs) == 0 {
		return fmt.Errorf("forward: no sequences")
	}
	vocab := int64(m.Config.Text.VocabSize)
	for i, s := range seqs {
		if len(s.Tokens) == 0 {
			return fmt.Errorf("forward: sequence %d has no tokens", i)
		}
		nimg := 0
		for _, id := range s.Tokens {
			if id < 0 || id >= vocab {
				return fmt.Errorf("forward: sequence %d: token id %d outside the vocabulary of %d", i, id, vocab)
			}
			if id == m.Config.ImageTokenID {
				nimg++
			}
		}
		nfeat := 0
		for _, f := range s.Images {
			nfeat += f.NumTokens()
		}
		if nimg != nfeat {
			return fmt.Errorf("forward: sequence %d has %d image tokens but its images give %d feature rows", i, nimg, nfeat)
		}
	}
	return nil
}

// leftPad lays checked sequences out as one left-padded batch.
func (m *Model) leftPad(seqs []Sequence) *batch {
	tq := 0
	for _, s := range seqs {
		tq = max(tq, len(s.Tokens))
	}
	b := len(seqs)
	padID := int64(0)
	if padID == m.Config.ImageTokenID {
		padID = 1
	}
	bt := &batch{ids: make([]int64, b*tq), valid: make([][]bool, b), isImg: make([]bool, b*tq), pad: make([]int, b), b: b, t: tq}
	for i, s := range seqs {
		pad := tq - len(s.Tokens)
		bt.pad[i] = pad
		bt.valid[i] = make([]bool, tq)
		for j := 0; j < tq; j++ {
			bt.ids[i*tq+j] = padID
			if j >= pad {
				id := s.Tokens[j-pad]
				bt.ids[i*tq+j] = id
				bt.valid[i][j] = true
				if id == m.Config.ImageTokenID {
					bt.isImg[i*tq+j] = true
					bt.anyImg = true
				}
			}
		}
	}
	return bt
}

// embed returns the input embeddings [B, T, D] of a batch: token
// embeddings, with the image tokens' rows replaced by the images' feature
// rows in order.
func (m *Model) embed(seqs []Sequence, bt *batch) *ts.Tensor {
	x := m.text.Embed(bt.ids, bt.b, bt.t)
	if !bt.anyImg {
		return x
	}
	var rows []*ts.Tensor
	for _, s := range seqs {
		for _, f := range s.Images {
			rows = append(rows, f.Tokens)
		}
	}
	return m.text.Splice(x, bt.isImg, rows)
}

func (m *Model) forward(cache *KVCache, seqs []Sequence, opts ForwardOptions) (out *Output, next *KVCache, err error) {
	if err := m.checkSequences(seqs); err != nil {
		return nil, nil, err
	}
	if err := m.usable(); err != nil {
		return nil, nil, err
	}
	if cache != nil && cache.Batch() != len(seqs) {
		return nil, nil, fmt.Errorf("forward: %d sequences for a cache of batch %d", len(seqs), cache.Batch())
	}
	bt := m.leftPad(seqs)
	out = &Output{Pad: bt.pad}
	err = torch.Run("forward", opts.Grad, func() error {
		var h *ts.Tensor
		h, next = m.text.Forward(m.embed(seqs, bt), bt.valid, cache)
		if h.Dim() == 1 { // single-token mode
			h = h.MustView([]int64{1, 1, -1}, true)
		}
		switch opts.Logits {
		case LogitsLast:
			last := h.MustSelect(1, int64(bt.t-1), false)
			out.Logits = m.text.Logits(last)
			torch.Drop(last)
		case LogitsAll:
			out.Logits = m.text.Logits(h)
		}
		if opts.Hidden {
			out.Hidden = h
		} else {
			torch.Drop(h)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, next, nil
}
