package m3

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// Source values say where a result's MOS came from.
const (
	// SourcePredictor: the aspect's xLSTM predictor.
	SourcePredictor = "predictor"
	// SourceWordProbs: the expectation over the rating-word probabilities
	// (no predictor configured for the aspect).
	SourceWordProbs = "word_probs"
)

// AdapterSwitch selects which LoRA adapter the model runs with; "" is the
// bare base model. sidecar/lora's adapter set implements it.
type AdapterSwitch interface {
	Activate(name string) error
}

// Aspect is one aspect to score: its questions, the adapter to run it with
// ("" for none) and its predictor (nil: MOS from the rating-word
// probabilities).
type Aspect struct {
	Name      string
	Prompts   Prompts
	Adapter   string
	Predictor *xlstm.Predictor
}

// Options tunes scoring.
type Options struct {
	// MaxNewTokens bounds the round-1 description (default 128).
	MaxNewTokens int
	// MaxSeqLen truncates the predictor's input on the right (default 512).
	MaxSeqLen int
	// SkipDescription rates without generating a description (the
	// assistant's round-1 turn is left empty): faster, less faithful.
	SkipDescription bool
	// Literal feeds the predictor the vocabulary-wide logits instead of the
	// fused W·lm_head shortcut (for checking; slower).
	Literal bool
	// Uncached recomputes the whole three-message prefix instead of
	// extending the cached image + round-1 prefix (for checking).
	Uncached bool
}

func (o Options) withDefaults() Options {
	if o.MaxNewTokens <= 0 {
		o.MaxNewTokens = 128
	}
	if o.MaxSeqLen <= 0 {
		o.MaxSeqLen = 512
	}
	return o
}

// Item is one image to score with its generation prompt.
type Item struct {
	Pixels mllm.Pixels
	Prompt string
}

// Timings are the wall-clock durations of one aspect's stages. Encode is
// the image's share of the batch's vision pass.
type Timings struct {
	Encode, Describe, Rate, Predict time.Duration
}

// Result is one aspect's score of one image.
type Result struct {
	Aspect      string
	MOS         float64 // 0–5
	Rating      string  // the most probable rating word
	WordProbs   map[string]float64
	Description string
	Source      string // SourcePredictor or SourceWordProbs
	Timings     Timings
}

// Scorer runs M3-AGIQA on a loaded MLLM.
type Scorer struct {
	model    *mllm.Model
	adapters AdapterSwitch
	wordIDs  [5]int64
	stops    []int64
}

// New prepares a scorer on model. adapters may be nil when no aspect uses
// an adapter.
func New(model *mllm.Model, adapters AdapterSwitch) (*Scorer, error) {
	if model == nil || model.Tokenizer == nil {
		return nil, fmt.Errorf("new scorer: the model has no tokenizer")
	}
	s := &Scorer{model: model, adapters: adapters}
	seen := map[int64]string{}
	for i, w := range RatingWords {
		// The answer follows "Assistant:", so the word comes with a space.
		ids, err := model.Tokenizer.Encode(" " + w)
		if err != nil || len(ids) == 0 {
			return nil, fmt.Errorf("new scorer: tokenize rating word %q: %v", w, err)
		}
		if prev, dup := seen[ids[0]]; dup {
			return nil, fmt.Errorf("new scorer: rating words %q and %q start with the same token %d", prev, w, ids[0])
		}
		seen[ids[0]] = w
		s.wordIDs[i] = ids[0]
	}
	if id, ok := model.Tokenizer.TokenID("<end_of_utterance>"); ok {
		s.stops = append(s.stops, id)
	}
	s.stops = append(s.stops, model.Generation.EOSTokenIDs...)
	if len(s.stops) == 0 {
		return nil, fmt.Errorf("new scorer: the tokenizer has no <end_of_utterance> and the generation config no eos token")
	}
	return s, nil
}

// Score scores every item on every aspect. The images are encoded once, in
// one vision batch; each aspect then runs its two rounds over the whole
// batch. The result is indexed [item][aspect].
func (s *Scorer) Score(ctx context.Context, items []Item, aspects []Aspect, opts Options) ([][]Result, error) {
	opts = opts.withDefaults()
	if len(items) == 0 {
		return nil, nil
	}
	if len(aspects) == 0 {
		return nil, fmt.Errorf("score: no aspects")
	}
	for _, a := range aspects {
		if err := a.Prompts.Validate(); err != nil {
			return nil, fmt.Errorf("score: aspect %s: %w", a.Name, err)
		}
		if a.Adapter != "" && s.adapters == nil {
			return nil, fmt.Errorf("score: aspect %s wants adapter %q but none are loaded", a.Name, a.Adapter)
		}
	}
	t0 := time.Now()
	px := make([]mllm.Pixels, len(items))
	for i, it := range items {
		px[i] = it.Pixels
	}
	feats, err := s.model.EncodeImages(px, false)
	if err != nil {
		return nil, fmt.Errorf("score: %w", err)
	}
	encode := time.Since(t0) / time.Duration(len(items))
	out := make([][]Result, len(items))
	for i := range out {
		out[i] = make([]Result, len(aspects))
	}
	// Aspects that run with the same adapter (all of them when there are
	// no adapters) share one batch: their conversations are decoded
	// together, which costs far less than one pass per aspect.
	for _, g := range groupByAdapter(aspects) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("score: %w", err)
		}
		group := make([]Aspect, len(g))
		for j, k := range g {
			group[j] = aspects[k]
		}
		res, err := s.scoreGroup(ctx, items, feats, group, opts)
		if err != nil {
			return nil, fmt.Errorf("score aspects %s: %w", names(group), err)
		}
		for i := range items {
			for j, k := range g {
				res[i][j].Timings.Encode = encode
				out[i][k] = res[i][j]
			}
		}
	}
	return out, nil
}

// PromptTokens is the length in tokens of the conversation an aspect with
// prompts p runs for genPrompt, without the image's tokens and without the
// description the model writes: the chat template, the round-1 question
// with the prompt filled in, and the round-2 question.
func (s *Scorer) PromptTokens(p Prompts, genPrompt string) (int, error) {
	img := &mllm.ImageFeatures{} // only its Rows and Cols are read
	seq, err := s.model.EncodeChat(ThreeMessages(p, genPrompt, ""), true, []*mllm.ImageFeatures{img})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range seq.Tokens {
		if id != s.model.Config.ImageTokenID {
			n++
		}
	}
	return n, nil
}

// groupByAdapter groups the indices of aspects by adapter, in order of
// first appearance.
func groupByAdapter(aspects []Aspect) [][]int {
	var groups [][]int
	at := map[string]int{}
	for k, a := range aspects {
		g, ok := at[a.Adapter]
		if !ok {
			g = len(groups)
			at[a.Adapter] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], k)
	}
	return groups
}

func names(aspects []Aspect) string {
	var n []string
	for _, a := range aspects {
		n = append(n, a.Name)
	}
	return strings.Join(n, ",")
}

// scoreGroup runs the two rounds of every item × aspect of group (aspects
// sharing one adapter) as one batch: sequence k is item k/m, aspect k%m
// for m aspects. The result is indexed [item][aspect of group].
func (s *Scorer) scoreGroup(ctx context.Context, items []Item, feats []*mllm.ImageFeatures, group []Aspect, opts Options) ([][]Result, error) {
	if s.adapters != nil {
		if err := s.adapters.Activate(group[0].Adapter); err != nil {
			return nil, err
		}
	}
	m := len(group)
	n := len(items) * m
	item := func(k int) int { return k / m }
	aspect := func(k int) Aspect { return group[k%m] }
	// Round 1: the image and the question; the assistant describes.
	t0 := time.Now()
	prefix := make([]mllm.Sequence, n)
	for k := range prefix {
		i := item(k)
		seq, err := s.model.EncodeChat(RoundOne(aspect(k).Prompts, items[i].Prompt), true, feats[i:i+1])
		if err != nil {
			return nil, err
		}
		prefix[k] = seq
	}
	pout, cache, err := s.model.Prefill(prefix, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
	if err != nil {
		return nil, err
	}
	desc := make([]string, n)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !opts.SkipDescription {
		gen, err := s.model.Generate(ctx, cache, pout.Logits, mllm.GenerateOptions{MaxTokens: opts.MaxNewTokens, StopTokens: s.stops})
		if err != nil {
			return nil, err
		}
		for i, toks := range gen.Tokens {
			if gen.Stopped[i] && len(toks) > 0 {
				toks = toks[:len(toks)-1]
			}
			text, err := s.model.Tokenizer.Decode(toks, true)
			if err != nil {
				return nil, err
			}
			// A description cut at the token limit can end inside a
			// multi-byte character; replace it as Hugging Face's decode does.
			desc[i] = strings.TrimSpace(strings.ToValidUTF8(text, "\uFFFD"))
		}
	}
	describe := time.Since(t0) / time.Duration(n)

	// Round 2: description and rating question, extending the cached prefix.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t1 := time.Now()
	full := make([]mllm.Sequence, n)
	cont := make([]mllm.Sequence, n)
	for k := range full {
		i := item(k)
		seq, err := s.model.EncodeChat(ThreeMessages(aspect(k).Prompts, items[i].Prompt, desc[k]), true, feats[i:i+1])
		if err != nil {
			return nil, err
		}
		p := prefix[k].Tokens
		if len(seq.Tokens) <= len(p) || !slices.Equal(seq.Tokens[:len(p)], p) {
			return nil, fmt.Errorf("item %d: the three-message prompt does not start with the round-1 prompt's tokens", i)
		}
		full[k] = seq
		cont[k] = mllm.Sequence{Tokens: seq.Tokens[len(p):]}
	}
	var hidden []*ts.Tensor // per sequence [1, S, H]
	var last *ts.Tensor     // [B, V]
	if opts.Uncached {
		o, _, err := s.model.Prefill(full, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
		if err != nil {
			return nil, err
		}
		last = o.Logits
		for k := range full {
			hidden = append(hidden, unpad(o.Hidden, k, o.Pad[k]))
		}
	} else {
		o, _, err := s.model.Extend(cache, cont, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
		if err != nil {
			return nil, err
		}
		last = o.Logits
		// gotch frees a tensor from its finalizer, possibly while an op
		// still runs on it: hold the collector, as model passes do.
		err = mllm.WithGradMode(false, func() error {
			for k := range cont {
				h := ts.MustCat([]*ts.Tensor{unpad(pout.Hidden, k, pout.Pad[k]), unpad(o.Hidden, k, o.Pad[k])}, 1)
				hidden = append(hidden, h)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	var pv []float64 // [B, 5]
	err = mllm.WithGradMode(false, func() error {
		probs := last.MustSoftmax(-1, gotch.Float, false)
		ids := torch.ToDevice(ts.MustOfSlice(s.wordIDs[:]), torch.TensorDevice(probs), true)
		pv = torch.ToCPU(probs.MustIndexSelect(1, ids, true), true).Float64Values()
		return nil
	})
	if err != nil {
		return nil, err
	}
	rate := time.Since(t1) / time.Duration(n)

	res := make([][]Result, len(items))
	for i := range res {
		res[i] = make([]Result, m)
	}
	for k := 0; k < n; k++ {
		i, a := item(k), aspect(k)
		wp := map[string]float64{}
		best, sum, expect := 0, 0.0, 0.0
		for w, word := range RatingWords {
			p := pv[k*len(RatingWords)+w]
			wp[word] = p
			sum += p
			expect += p * float64(w+1)
			if p > pv[k*len(RatingWords)+best] {
				best = w
			}
		}
		r := Result{Aspect: a.Name, Rating: RatingWords[best], WordProbs: wp, Description: desc[k], Source: SourceWordProbs}
		r.Timings.Describe, r.Timings.Rate = describe, rate
		if sum > 0 {
			r.MOS = (expect/sum - 1) * 5 / 4
		}
		if a.Predictor != nil {
			t2 := time.Now()
			mos, err := s.predict(a.Predictor, hidden[k], opts)
			if err != nil {
				return nil, fmt.Errorf("item %d: predictor: %w", i, err)
			}
			r.MOS, r.Source = clamp(mos, 0, 5), SourcePredictor
			r.Timings.Predict = time.Since(t2)
		}
		if math.IsNaN(r.MOS) || math.IsInf(r.MOS, 0) {
			return nil, fmt.Errorf("item %d: %s MOS is not finite", i, a.Name)
		}
		res[i][k%m] = r
	}
	return res, nil
}

// truncate cuts hidden states [1, S, H] to at most maxLen positions (the
// predictor's input is truncated on the right).
func truncate(h *ts.Tensor, maxLen int) *ts.Tensor {
	if s := h.MustSize()[1]; s > int64(maxLen) {
		return h.MustNarrow(1, 0, int64(maxLen), false)
	}
	return h
}

func (s *Scorer) predict(p *xlstm.Predictor, hidden *ts.Tensor, opts Options) (float64, error) {
	// A predictor trained on shorter inputs (train-predictor --max-len) sees
	// them truncated to its own context length, as in training.
	maxLen := opts.MaxSeqLen
	if cl := p.Config().ContextLength; cl > 0 && cl < maxLen {
		maxLen = cl
	}
	h := truncate(hidden, maxLen)
	lm := s.model.Linears()["lm_head"]
	if lm == nil {
		return 0, fmt.Errorf("the model has no lm_head")
	}
	// No autograd, and the collector held while the predictor's ops run
	// (see scoreAspect).
	var mos float64
	err := mllm.WithGradMode(false, func() error {
		var y *ts.Tensor
		var err error
		if opts.Literal {
			logits := h.MustTotype(gotch.Float, false).MustMatmul(lm.W.MustTotype(gotch.Float, false).MustT(true), true)
			y, err = p.ForwardLogits(logits, nil)
		} else {
			y, err = p.ForwardHidden(h, lm.W, nil)
		}
		if err != nil {
			return err
		}
		mos = torch.ToCPU(y, false).Float64Values()[0]
		return nil
	})
	return mos, err
}

// unpad returns item i of a left-padded [B, T, H] batch as [1, T-pad, H].
func unpad(h *ts.Tensor, i, pad int) *ts.Tensor {
	t := h.MustSize()[1]
	return h.MustNarrow(0, int64(i), 1, false).MustNarrow(1, int64(pad), t-int64(pad), true)
}

func clamp(v, lo, hi float64) float64 {
	return math.Max(lo, math.Min(hi, v))
}
