package minicpmv

import (
	"context"
	"fmt"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/beam"
	"github.com/m3gate/m3gate/sidecar/mllm/generate"
	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Output is the result of a prefill.
type Output struct {
	// Hidden are the final normed hidden states [T, E].
	Hidden *ts.Tensor
	// Last are the logits at the last position [1, V] (f32), where
	// generation starts.
	Last *ts.Tensor
}

// Drop frees the output's tensors.
func (o *Output) Drop() {
	if o.Hidden != nil {
		o.Hidden.MustDrop()
	}
	if o.Last != nil {
		o.Last.MustDrop()
	}
}

// imageSlots marks the positions strictly between every <image> and its
// </image>: the k-th slice's resampler rows fill the k-th span.
func (m *Model) imageSlots(ids []int64, f *ImageFeatures) ([]bool, error) {
	at := make([]bool, len(ids))
	open, spans, n := -1, 0, 0
	for i, id := range ids {
		switch id {
		case m.ids.imStart:
			if open >= 0 {
				return nil, fmt.Errorf("nested %s at position %d", ImStart, i)
			}
			open = i
		case m.ids.imEnd:
			if open < 0 {
				return nil, fmt.Errorf("%s at position %d without %s", ImEnd, i, ImStart)
			}
			for j := open + 1; j < i; j++ {
				at[j] = true
				n++
			}
			open = -1
			spans++
		}
	}
	if open >= 0 {
		return nil, fmt.Errorf("%s at position %d is never closed", ImStart, open)
	}
	rows := 0
	if f != nil {
		rows = len(f.Rows) * m.Config.QueryNum
	}
	if n != rows {
		return nil, fmt.Errorf("the prompt has %d image positions in %d spans but the image has %d slices of %d queries", n, spans, rowsOf(f), m.Config.QueryNum)
	}
	return at, nil
}

func rowsOf(f *ImageFeatures) int {
	if f == nil {
		return 0
	}
	return len(f.Rows)
}

// Prefill runs ids (one sequence, its image placeholder spans filled with
// f's rows; f may be nil for a text-only prompt) through the text model
// and returns the hidden states, the last logits and the cache.
func (m *Model) Prefill(ids []int64, f *ImageFeatures) (*Output, *kvcache.Cache, error) {
	if err := m.usable(); err != nil {
		return nil, nil, fmt.Errorf("prefill: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil, fmt.Errorf("prefill: no tokens")
	}
	if err := m.inVocab(ids); err != nil {
		return nil, nil, fmt.Errorf("prefill: %w", err)
	}
	at, err := m.imageSlots(ids, f)
	if err != nil {
		return nil, nil, fmt.Errorf("prefill: %w", err)
	}
	out, cache, err := m.forward(ids, at, f, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("prefill: %w", err)
	}
	return out, cache, nil
}

// inVocab checks that every id is a token of the text model's vocabulary.
func (m *Model) inVocab(ids []int64) error {
	for i, id := range ids {
		if id < 0 || id >= int64(m.Config.Text.VocabSize) {
			return fmt.Errorf("token %d at position %d is outside the vocabulary (%d)", id, i, m.Config.Text.VocabSize)
		}
	}
	return nil
}

// forward runs ids after cache (nil for a fresh sequence), the positions
// marked in at (nil for none) holding f's rows, and returns their output
// and the extended cache.
func (m *Model) forward(ids []int64, at []bool, f *ImageFeatures, cache *kvcache.Cache) (*Output, *kvcache.Cache, error) {
	var out Output
	var next *kvcache.Cache
	err := torch.Run("minicpmv", false, func() error {
		t := len(ids)
		x := m.Text.Embed(ids, 1, t)
		if f != nil && len(f.Rows) > 0 && at != nil {
			x = m.Text.Splice(x, at, f.Rows)
		}
		valid := [][]bool{make([]bool, t)}
		for i := range valid[0] {
			valid[0][i] = true
		}
		var h *ts.Tensor
		h, next = m.Text.Forward(x, valid, cache)
		x.MustDrop()
		if h.Dim() == 1 {
			h = h.MustView([]int64{1, 1, -1}, true)
		}
		out.Hidden = h.MustSelect(0, 0, true)
		last := out.Hidden.MustNarrow(0, int64(t-1), 1, false)
		out.Last = m.Text.Logits(last)
		last.MustDrop()
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return &out, next, nil
}

// Extend runs the text tokens ids (no image) after cache, which stays
// valid (a cache is immutable), and returns their hidden states, the last
// logits and the extended cache: what Prefill of the whole sequence
// returns for its last len(ids) positions.
func (m *Model) Extend(cache *kvcache.Cache, ids []int64) (*Output, *kvcache.Cache, error) {
	if err := m.usable(); err != nil {
		return nil, nil, fmt.Errorf("extend: %w", err)
	}
	if len(ids) == 0 || cache.Batch() != 1 {
		return nil, nil, fmt.Errorf("extend: %d tokens after a cache of %d sequences (want tokens after one)", len(ids), cache.Batch())
	}
	if err := m.inVocab(ids); err != nil {
		return nil, nil, fmt.Errorf("extend: %w", err)
	}
	for i, id := range ids {
		if id == m.ids.imStart || id == m.ids.imEnd {
			return nil, nil, fmt.Errorf("extend: an image marker at position %d (images go in Prefill)", i)
		}
	}
	out, next, err := m.forward(ids, nil, nil, cache)
	if err != nil {
		return nil, nil, fmt.Errorf("extend: %w", err)
	}
	return out, next, nil
}

// Logits applies the LM head to hidden states (f32 result).
func (m *Model) Logits(h *ts.Tensor) (out *ts.Tensor, err error) {
	err = torch.Run("minicpmv", false, func() error {
		out = m.Text.Logits(h)
		return nil
	})
	return out, err
}

// decoder drives generate.Run and beam search over the text model.
type decoder struct{ m *Model }

// DecodeStep implements generate.Decoder.
func (d decoder) DecodeStep(cache *kvcache.Cache, tokens []int64) (logits *ts.Tensor, next *kvcache.Cache, err error) {
	err = torch.Run("minicpmv", false, func() error {
		logits, next = d.m.Text.Step(cache, tokens)
		return nil
	})
	return logits, next, err
}

var _ generate.Decoder = decoder{}

// DecodeOptions configures Describe.
type DecodeOptions struct {
	// MaxTokens bounds the description.
	MaxTokens int
	// NumBeams > 1 selects beam search (the reference's chat(sampling=
	// False): 3 beams, repetition penalty 1.2); 1 or 0 is greedy.
	NumBeams int
	// RepetitionPenalty applies to beam search (1 = none).
	RepetitionPenalty float64
}

// Describe continues a prefilled prompt (its cache and last logits) and
// returns the generated tokens, the terminator left out. ctx is checked
// before every decode step.
func (m *Model) Describe(ctx context.Context, cache *kvcache.Cache, last *ts.Tensor, o DecodeOptions) ([]int64, error) {
	if o.MaxTokens <= 0 {
		return nil, fmt.Errorf("describe: max tokens must be positive, got %d", o.MaxTokens)
	}
	if o.NumBeams <= 1 {
		g, err := generate.Run(ctx, decoder{m}, cache, last, generate.Options{MaxTokens: o.MaxTokens, StopTokens: m.ids.terminators})
		if err != nil {
			return nil, fmt.Errorf("describe: %w", err)
		}
		if g.Cache != cache {
			g.Cache.Free()
		}
		toks := g.Tokens[0]
		if n := len(toks); n > 0 && isIn(toks[n-1], m.ids.terminators) {
			toks = toks[:n-1]
		}
		return toks, nil
	}
	first, err := rowOf(last, 0)
	if err != nil {
		return nil, fmt.Errorf("describe: %w", err)
	}
	state := cache
	step := func(ctx context.Context, origins []int, tokens []int64) ([][]float32, error) {
		sel, err := state.Select(origins...)
		if err != nil {
			return nil, err
		}
		logits, next, err := decoder{m}.DecodeStep(sel, tokens)
		sel.Free()
		if err != nil {
			return nil, err
		}
		if state != cache { // the caches of earlier steps are this loop's own
			state.Free()
		}
		state = next
		rows := make([][]float32, len(tokens))
		for i := range rows {
			if rows[i], err = rowOf(logits, i); err != nil {
				return nil, err
			}
		}
		logits.MustDrop()
		return rows, nil
	}
	pen := o.RepetitionPenalty
	if pen == 0 {
		pen = 1
	}
	res, err := beam.Search(ctx, first, step, beam.Options{NumBeams: o.NumBeams, MaxTokens: o.MaxTokens, RepetitionPenalty: pen, EOS: m.ids.terminators})
	if state != cache {
		state.Free()
	}
	if err != nil {
		return nil, fmt.Errorf("describe: %w", err)
	}
	return res.Tokens, nil
}

// rowOf reads row i of f32 logits [B, V] into Go (via the CPU).
func rowOf(logits *ts.Tensor, i int) ([]float32, error) {
	var out []float32
	err := torch.Run("minicpmv", false, func() error {
		vals := torch.Float64s(logits.MustSelect(0, int64(i), false), true)
		out = make([]float32, len(vals))
		for j, v := range vals {
			out[j] = float32(v)
		}
		return nil
	})
	return out, err
}

func isIn(t int64, set []int64) bool {
	for _, s := range set {
		if s == t {
			return true
		}
	}
	return false
}
