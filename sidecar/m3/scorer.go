package m3

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/schemas/iqa"
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
	reused   atomic.Int64 // description tokens round 2 did not run again (for tests)
}

// New prepares a scorer on model. adapters may be nil when no aspect uses
// an adapter.
func New(model *mllm.Model, adapters AdapterSwitch) (*Scorer, error) {
	if model == nil || model.Tokenizer == nil {
		return nil, fmt.Errorf("new scorer: the model has no tokenizer")
	}
	s := &Scorer{model: model, adapters: adapters}
	seen := map[int64]string{}
	for i, w := range iqa.RatingWords {
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
	defer func() {
		for _, f := range feats {
			torch.Drop(f.Tokens)
		}
	}()
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
	g := &groupRun{s: s, items: items, feats: feats, group: group, opts: opts, n: len(items) * len(group)}
	defer g.free()
	if err := g.describe(ctx); err != nil {
		return nil, err
	}
	if err := g.continueWithRating(ctx); err != nil {
		return nil, err
	}
	if err := g.rate(); err != nil {
		return nil, err
	}
	return g.results()
}

// groupRun is one scoreGroup call's batch and what its steps produce.
// Sequence k is item k/m, aspect k%m for m aspects.
type groupRun struct {
	s     *Scorer
	items []Item
	feats []*mllm.ImageFeatures
	group []Aspect
	opts  Options
	n     int // sequences: items × aspects

	prefix       []mllm.Sequence  // round 1: image and question
	round1Last   *ts.Tensor       // its last logits [n, V]
	round1Hidden []*ts.Tensor     // per sequence, its hidden states [1, S, H]
	cache        *mllm.KVCache    // holding the round-1 prefix
	desc         []string         // the assistant's round-1 answers
	gen          *mllm.Generation // how they were generated (nil without descriptions)
	last         *ts.Tensor       // round 2's last logits [n, V]
	hidden       []*ts.Tensor     // per sequence, the whole conversation's hidden states [1, S, H]
	probs        []float64        // [n, 5] rating-word probabilities

	describeTime, rateTime time.Duration // per sequence

	owned  []*ts.Tensor    // freed by free
	caches []*mllm.KVCache // freed by free
}

func (g *groupRun) item(k int) int      { return k / len(g.group) }
func (g *groupRun) aspect(k int) Aspect { return g.group[k%len(g.group)] }

// free releases every tensor the run made, now: KV caches, hidden states
// and logits would otherwise wait for the collector.
func (g *groupRun) free() {
	for _, c := range g.caches {
		c.Free()
	}
	torch.Drop(g.owned...)
	torch.Drop(g.hidden...)
	torch.Drop(g.round1Hidden...)
	if g.gen != nil {
		torch.Drop(g.gen.Hidden...)
	}
}

// keep records tensors and caches for free.
func (g *groupRun) keep(c *mllm.KVCache, ts ...*ts.Tensor) {
	if c != nil {
		g.caches = append(g.caches, c)
	}
	g.owned = append(g.owned, ts...)
}

// describe runs round 1: the image and the question, then (unless
// SkipDescription) the assistant's description, generated.
func (g *groupRun) describe(ctx context.Context) error {
	t0 := time.Now()
	m := g.s.model
	if err := g.encodeRoundOne(); err != nil {
		return err
	}
	if err := g.prefillRoundOne(); err != nil {
		return err
	}
	cache := g.cache
	g.desc = make([]string, g.n)
	if err := ctx.Err(); err != nil {
		return err
	}
	if !g.opts.SkipDescription {
		gen, err := m.Generate(ctx, cache, g.round1Last, mllm.GenerateOptions{MaxTokens: g.opts.MaxNewTokens, StopTokens: g.s.stops, KeepHidden: !g.opts.Uncached})
		if err != nil {
			return err
		}
		g.gen = gen
		if gen.Cache != cache {
			g.keep(gen.Cache)
		}
		for k, toks := range gen.Tokens {
			if gen.Stopped[k] && len(toks) > 0 {
				toks = toks[:len(toks)-1]
			}
			text, err := m.Tokenizer.Decode(toks, true)
			if err != nil {
				return err
			}
			// A description cut at the token limit can end inside a
			// multi-byte character; replace it as Hugging Face's decode does.
			g.desc[k] = strings.TrimSpace(strings.ToValidUTF8(text, "\uFFFD"))
		}
	}
	g.describeTime = time.Since(t0) / time.Duration(g.n)
	return nil
}

// continueWithRating runs round 2's prompt: the description and the rating
// question after the round-1 prefix (extending its cache, or from scratch
// with Uncached), keeping the last logits and each conversation's hidden
// states.
func (g *groupRun) continueWithRating(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t1 := time.Now()
	defer func() { g.rateTime = time.Since(t1) / time.Duration(g.n) }()
	m := g.s.model
	full := make([]mllm.Sequence, g.n)
	cont := make([]mllm.Sequence, g.n)
	for k := range full {
		i := g.item(k)
		seq, err := m.EncodeChat(ThreeMessages(g.aspect(k).Prompts, g.items[i].Prompt, g.desc[k]), true, g.feats[i:i+1])
		if err != nil {
			return err
		}
		p := g.prefix[k].Tokens
		if len(seq.Tokens) <= len(p) || !slices.Equal(seq.Tokens[:len(p)], p) {
			return fmt.Errorf("item %d: the three-message prompt does not start with the round-1 prompt's tokens", i)
		}
		full[k] = seq
		cont[k] = mllm.Sequence{Tokens: seq.Tokens[len(p):]}
	}
	if g.opts.Uncached {
		o, c, err := m.Prefill(full, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
		if err != nil {
			return err
		}
		g.keep(c, o.Logits, o.Hidden)
		g.last = o.Logits
		return torch.Run("hidden states", false, func() error {
			for k := range full {
				g.hidden = append(g.hidden, unpad(o.Hidden, k, o.Pad[k]))
			}
			return nil
		})
	}
	base, took, err := g.reuseDescriptions(full)
	if err != nil {
		return err
	}
	if base != g.cache {
		g.keep(base)
	}
	for k := range cont {
		cont[k].Tokens = cont[k].Tokens[took[k]:]
	}
	o, c, err := m.Extend(base, cont, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
	if err != nil {
		return err
	}
	g.keep(c, o.Logits, o.Hidden)
	g.last = o.Logits
	return torch.Run("hidden states", false, func() error {
		var desc *ts.Tensor // [n, steps, H]: the descriptions' states, stacked once
		if slices.Max(took) > 0 {
			desc = ts.MustStack(g.gen.Hidden[:slices.Max(took)], 1)
			defer torch.Drop(desc)
		}
		for k := range cont {
			parts := []*ts.Tensor{g.round1Hidden[k]}
			if took[k] > 0 { // sequence k's first took[k] tokens, [1, took[k], H]
				parts = append(parts, desc.MustNarrow(0, int64(k), 1, false).MustNarrow(1, 0, int64(took[k]), true))
			}
			b := unpad(o.Hidden, k, o.Pad[k])
			g.hidden = append(g.hidden, ts.MustCat(append(parts, b), 1))
			torch.Drop(parts[1:]...)
			torch.Drop(b)
		}
		return nil
	})
}

// reuseDescriptions is where round 2 starts for the three-message prompts
// full: the generation's cache rewound, per sequence, to the longest start
// of its description that full spells with the very tokens the model
// generated (normally all of it; a description whose text tokenizes
// differently from how it was generated, or was cut inside a character,
// keeps the part before that), so that only the rest runs again. took[k]
// is the number of description tokens sequence k keeps. Without
// generated descriptions (or with Uncached) it is the round-1 cache and
// nothing is taken.
func (g *groupRun) reuseDescriptions(full []mllm.Sequence) (*mllm.KVCache, []int, error) {
	took := make([]int, g.n)
	if g.gen == nil || len(g.gen.Hidden) == 0 || g.gen.Cache == g.cache {
		return g.cache, took, nil
	}
	keep := make([]int, g.n)
	total := 0
	for k := range full {
		p := len(g.prefix[k].Tokens)
		toks := g.gen.Tokens[k]
		fed := toks[:max(len(toks)-1, 0)]                 // the last token was never fed
		rest := full[k].Tokens[p : len(full[k].Tokens)-1] // leave round 2 one token at least
		n := 0
		for n < len(fed) && n < len(rest) && fed[n] == rest[n] {
			n++
		}
		took[k], keep[k] = n, p+n
		total += n
	}
	g.s.reused.Add(int64(total))
	if total == 0 {
		return g.cache, took, nil
	}
	back, err := g.gen.Cache.Rewind(keep)
	if err != nil {
		return nil, nil, err
	}
	return back, took, nil
}

// encodeRoundOne tokenizes every sequence's round-1 prompt into prefix.
func (g *groupRun) encodeRoundOne() error {
	g.prefix = make([]mllm.Sequence, g.n)
	for k := range g.prefix {
		i := g.item(k)
		seq, err := g.s.model.EncodeChat(RoundOne(g.aspect(k).Prompts, g.items[i].Prompt), true, g.feats[i:i+1])
		if err != nil {
			return err
		}
		g.prefix[k] = seq
	}
	return nil
}

// minSharedPrefix is the shortest common start of an item's round-1
// prompts worth running once for all its aspects.
const minSharedPrefix = 8

// prefillRoundOne runs the round-1 prompts: round1Last, round1Hidden and
// the cache. The aspects of one item share the image and the text up to
// where their questions differ; that shared prefix runs once per item and
// its cache is forked to the item's aspects, which then run only their
// own tails. (Uncached, for checking, runs every prompt whole.)
func (g *groupRun) prefillRoundOne() error {
	m := g.s.model
	shared := g.sharedPrefix()
	if shared == nil {
		out, cache, err := m.Prefill(g.prefix, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
		if err != nil {
			return err
		}
		g.keep(cache, out.Logits, out.Hidden)
		g.round1Last, g.cache = out.Logits, cache
		return torch.Run("hidden states", false, func() error {
			for k := range g.prefix {
				g.round1Hidden = append(g.round1Hidden, unpad(out.Hidden, k, out.Pad[k]))
			}
			return nil
		})
	}
	heads := make([]mllm.Sequence, len(g.items))
	for i := range heads {
		p := g.prefix[i*len(g.group)]
		heads[i] = mllm.Sequence{Tokens: p.Tokens[:shared[i]], Images: p.Images}
	}
	ho, hc, err := m.Prefill(heads, mllm.ForwardOptions{Logits: mllm.LogitsNone, Hidden: true})
	if err != nil {
		return err
	}
	g.keep(hc, ho.Hidden)
	idx := make([]int, g.n)
	tails := make([]mllm.Sequence, g.n)
	for k := range idx {
		idx[k] = g.item(k)
		tails[k] = mllm.Sequence{Tokens: g.prefix[k].Tokens[shared[idx[k]]:]}
	}
	fork, err := hc.Select(idx...)
	if err != nil {
		return err
	}
	g.keep(fork)
	to, tc, err := m.Extend(fork, tails, mllm.ForwardOptions{Logits: mllm.LogitsLast, Hidden: true})
	if err != nil {
		return err
	}
	g.keep(tc, to.Logits, to.Hidden)
	g.round1Last, g.cache = to.Logits, tc
	return torch.Run("hidden states", false, func() error {
		for k := range tails {
			a, b := unpad(ho.Hidden, idx[k], ho.Pad[idx[k]]), unpad(to.Hidden, k, to.Pad[k])
			g.round1Hidden = append(g.round1Hidden, ts.MustCat([]*ts.Tensor{a, b}, 1))
			torch.Drop(a, b)
		}
		return nil
	})
}

// sharedPrefix is, per item, the length of the start its aspects' round-1
// prompts share (the image tokens included, one token at least left to
// each), or nil when nothing is worth sharing: one aspect, Uncached, or a
// common start shorter than minSharedPrefix or ending inside the image.
func (g *groupRun) sharedPrefix() []int {
	m := len(g.group)
	if m < 2 || g.opts.Uncached {
		return nil
	}
	img := g.s.model.Config.ImageTokenID
	out := make([]int, len(g.items))
	for i := range out {
		seqs := g.prefix[i*m : (i+1)*m]
		first := seqs[0].Tokens
		n := len(first) - 1
		for _, s := range seqs[1:] {
			n = min(n, len(s.Tokens)-1)
			for j := 0; j < n; j++ {
				if s.Tokens[j] != first[j] {
					n = j
					break
				}
			}
		}
		for _, s := range seqs {
			if slices.Contains(s.Tokens[n:], img) { // the image is not all shared
				return nil
			}
		}
		if n < minSharedPrefix {
			return nil
		}
		out[i] = n
	}
	return out
}

// rate reads the probabilities of the five rating words from round 2's
// last logits.
func (g *groupRun) rate() error {
	t := time.Now()
	defer func() { g.rateTime += time.Since(t) / time.Duration(g.n) }()
	return torch.Run("rating words", false, func() error {
		probs := g.last.MustSoftmax(-1, gotch.Float, false)
		ids := torch.ToDevice(ts.MustOfSlice(g.s.wordIDs[:]), torch.TensorDevice(probs), true)
		words := probs.MustIndexSelect(1, ids, true)
		torch.Drop(ids)
		g.probs = torch.Float64s(words, true)
		return nil
	})
}

// results assembles each sequence's Result: the rating word and MOS from
// the word probabilities, or the MOS of the aspect's predictor.
func (g *groupRun) results() ([][]Result, error) {
	m := len(g.group)
	res := make([][]Result, len(g.items))
	for i := range res {
		res[i] = make([]Result, m)
	}
	nw := len(iqa.RatingWords)
	for k := 0; k < g.n; k++ {
		i, a := g.item(k), g.aspect(k)
		r := ratingResult(a.Name, g.probs[k*nw:(k+1)*nw])
		r.Description = g.desc[k]
		r.Timings.Describe, r.Timings.Rate = g.describeTime, g.rateTime
		if a.Predictor != nil {
			t2 := time.Now()
			mos, err := g.s.predict(a.Predictor, g.hidden[k], g.opts)
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

// ratingResult is the result the rating-word probabilities p (in
// iqa.RatingWords order) give: the most probable word and the expected
// rating mapped onto 0–5.
func ratingResult(aspect string, p []float64) Result {
	wp := map[string]float64{}
	best, sum, expect := 0, 0.0, 0.0
	for w, word := range iqa.RatingWords {
		wp[word] = p[w]
		sum += p[w]
		expect += p[w] * float64(w+1)
		if p[w] > p[best] {
			best = w
		}
	}
	r := Result{Aspect: aspect, Rating: iqa.RatingWords[best], WordProbs: wp, Source: SourceWordProbs}
	if sum > 0 {
		r.MOS = (expect/sum - 1) * 5 / 4
	}
	return r
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
	if h != hidden {
		defer torch.Drop(h)
	}
	var mos float64
	err := torch.Run("predict", false, func() error {
		var y *ts.Tensor
		var err error
		if opts.Literal {
			w := lm.W.MustTotype(gotch.Float, false).MustT(true)
			logits := h.MustTotype(gotch.Float, false).MustMatmul(w, true)
			torch.Drop(w)
			y, err = p.ForwardLogits(logits, nil)
			torch.Drop(logits)
		} else {
			y, err = p.ForwardHidden(h, lm.W, nil)
		}
		if err != nil {
			return err
		}
		mos = torch.Float64s(y, true)[0]
		return nil
	})
	return mos, err
}

// unpad returns item i of a left-padded [B, T, H] batch as [1, T-pad, H].
func unpad(h *ts.Tensor, i, pad int) *ts.Tensor {
	defer torch.Keep(h)
	t := h.MustSize()[1]
	return h.MustNarrow(0, int64(i), 1, false).MustNarrow(1, int64(pad), t-int64(pad), true)
}

func clamp(v, lo, hi float64) float64 {
	return math.Max(lo, math.Min(hi, v))
}
