package mllm

import (
	"context"
	"fmt"
	"testing"

	"github.com/sugarme/gotch/ts"
)

// prompts returns n chat prompts of different lengths, with an image each
// when withImage is set.
func prompts(t *testing.T, m *Model, n int, withImage bool) []Sequence {
	t.Helper()
	texts := []string{"Rate the quality.", "Please closely examine this AI-generated image, ok?", "Hi — ünïcödé 日本 🙂 and a longer prompt: 'a cat, HDR lighting'"}
	var out []Sequence
	for i := 0; i < n; i++ {
		var imgs []*ImageFeatures
		if withImage {
			f, err := m.EncodeImage(testPixels(int64(10+i), m.Config.Vision.ImageSize))
			if err != nil {
				t.Fatal(err)
			}
			imgs = append(imgs, f)
		}
		seq, err := m.EncodeChat([]Message{UserMessage(texts[i%len(texts)], withImage)}, true, imgs)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, seq)
	}
	return out
}

// generateCached prefills seqs and generates greedily with the cache.
func generateCached(t *testing.T, m *Model, seqs []Sequence, n int) *Generation {
	t.Helper()
	out, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: n, KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestCachedGenerationEqualsRecompute: tokens exactly and logits within
// 1e-4 of recomputing every full sequence without a cache; batched runs
// equal single-sequence runs.
func TestCachedGenerationEqualsRecompute(t *testing.T) {
	m := loadTiny(t, 0)
	const steps = 8
	for _, tc := range []struct {
		batch int
		image bool
	}{{1, false}, {1, true}, {3, false}, {3, true}} {
		t.Run(fmt.Sprintf("batch%d_image%v", tc.batch, tc.image), func(t *testing.T) {
			seqs := prompts(t, m, tc.batch, tc.image)
			g := generateCached(t, m, seqs, steps)
			var full []Sequence
			for i, s := range seqs {
				if len(g.Tokens[i]) == 0 {
					t.Fatalf("sequence %d generated nothing", i)
				}
				toks := append(append([]int64{}, s.Tokens...), g.Tokens[i][:len(g.Tokens[i])-1]...)
				full = append(full, Sequence{Tokens: toks, Images: s.Images})
			}
			out, _, err := m.Prefill(full, ForwardOptions{Logits: LogitsAll})
			if err != nil {
				t.Fatal(err)
			}
			all := out.Logits
			vocab := int64(m.Config.Text.VocabSize)
			worst := 0.0
			for i, s := range seqs {
				for st, tok := range g.Tokens[i] {
					p := int64(out.Pad[i] + len(s.Tokens) - 1 + st)
					want := all.MustSelect(0, int64(i), false).MustSelect(0, p, true)
					got := g.Logits[st].MustSelect(0, int64(i), false)
					d := maxAbsDiff(floats(got), floats(want))
					worst = max(worst, d)
					if d > 1e-4 {
						t.Errorf("seq %d step %d: cached logits differ from recomputed by %g", i, st, d)
					}
					if am := argmax(floats(want)); am != tok {
						t.Errorf("seq %d step %d: cached generation chose %d, recomputation argmax is %d", i, st, tok, am)
					}
					_ = vocab
				}
			}
			t.Logf("max |cached-recomputed| = %.2g", worst)
			if tc.batch > 1 {
				for i, s := range seqs {
					one := generateCached(t, m, []Sequence{s}, steps)
					if !equalIDs(one.Tokens[0], g.Tokens[i]) {
						t.Errorf("seq %d: batched generation %v, alone %v", i, g.Tokens[i], one.Tokens[0])
					}
					for st := range one.Tokens[0] {
						if d := maxAbsDiff(floats(one.Logits[st]), floats(g.Logits[st].MustSelect(0, int64(i), false))); d > 1e-4 {
							t.Errorf("seq %d step %d: batched logits differ from alone by %g", i, st, d)
						}
					}
				}
			}
		})
	}
}

func argmax(v []float32) int64 {
	b := 0
	for i := range v {
		if v[i] > v[b] {
			b = i
		}
	}
	return int64(b)
}

// TestPrefixCacheReuse: one cached prefix extended several ways equals
// prefilling each full prompt, and extending does not change the prefix.
func TestPrefixCacheReuse(t *testing.T) {
	m := loadTiny(t, 0)
	f, err := m.EncodeImage(testPixels(3, m.Config.Vision.ImageSize))
	if err != nil {
		t.Fatal(err)
	}
	prefix, err := m.EncodeChat([]Message{UserMessage("Analyse the quality.", true)}, true, []*ImageFeatures{f})
	if err != nil {
		t.Fatal(err)
	}
	_, cache, err := m.Prefill([]Sequence{prefix}, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	snapshot := cache.Clone()
	conts := []string{" The image is sharp.", " Blurry.<end_of_utterance>\nUser: Rate it."}
	var extended []*ts.Tensor
	for _, c := range conts {
		ids, err := m.Tokenizer.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := m.Extend(cache, []Sequence{{Tokens: ids}}, ForwardOptions{Logits: LogitsAll, Hidden: true})
		if err != nil {
			t.Fatal(err)
		}
		extended = append(extended, out.Logits)
		full := Sequence{Tokens: append(append([]int64{}, prefix.Tokens...), ids...), Images: prefix.Images}
		want, _, err := m.Prefill([]Sequence{full}, ForwardOptions{Logits: LogitsAll})
		if err != nil {
			t.Fatal(err)
		}
		tail := want.Logits.MustNarrow(1, int64(len(prefix.Tokens)), int64(len(ids)), false)
		if d := maxAbsDiff(floats(out.Logits), floats(tail)); d > 1e-4 {
			t.Errorf("extend %q: differs from full prefill by %g", c, d)
		}
		if out.Hidden == nil {
			t.Errorf("extend %q: no hidden states returned", c)
		}
	}
	if cache.Len() != snapshot.Len() || cache.NextPos[0] != snapshot.NextPos[0] {
		t.Errorf("extending changed the prefix cache: len %d→%d", snapshot.Len(), cache.Len())
	}
	// a batch of the same prefix continued both ways at once
	two, err := cache.Select(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []Sequence
	for _, c := range conts {
		ids, _ := m.Tokenizer.Encode(c)
		seqs = append(seqs, Sequence{Tokens: ids})
	}
	out, _, err := m.Extend(two, seqs, ForwardOptions{Logits: LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	for i := range conts {
		n := extended[i].MustSize()[1]
		got := out.Logits.MustSelect(0, int64(i), false).MustNarrow(0, int64(out.Pad[i]), n, true)
		if d := maxAbsDiff(floats(got), floats(extended[i].MustSelect(0, 0, false))); d > 1e-4 {
			t.Errorf("batched continuation %d differs from single by %g", i, d)
		}
	}
}

// TestJoinCaches: caches of different lengths joined into one batch decode
// like each alone.
func TestJoinCaches(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 2, false)
	var caches []*KVCache
	var lasts []*ts.Tensor
	for _, s := range seqs {
		out, c, err := m.Prefill([]Sequence{s}, ForwardOptions{})
		if err != nil {
			t.Fatal(err)
		}
		caches = append(caches, c)
		lasts = append(lasts, out.Logits)
	}
	joined, err := JoinCaches(caches...)
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Generate(context.Background(), joined, ts.MustCat(lasts, 0), GenerateOptions{MaxTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range caches {
		one, err := m.Generate(context.Background(), c, lasts[i], GenerateOptions{MaxTokens: 6})
		if err != nil {
			t.Fatal(err)
		}
		if !equalIDs(one.Tokens[0], g.Tokens[i]) {
			t.Errorf("seq %d: joined %v, alone %v", i, g.Tokens[i], one.Tokens[0])
		}
	}
}

// TestSamplingAndStops: sampling is reproducible from the seed, differs
// across seeds, and a stop token ends a sequence.
func TestSamplingAndStops(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 1, false)
	out, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gen := func(seed int64, stops []int64) *Generation {
		g, err := m.Generate(ctx, cache, out.Logits, GenerateOptions{MaxTokens: 12, Temperature: 1.5, TopP: 0.95, Seed: seed, StopTokens: stops})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a, b := gen(1, nil), gen(1, nil)
	if !equalIDs(a.Tokens[0], b.Tokens[0]) {
		t.Errorf("same seed gave %v and %v", a.Tokens[0], b.Tokens[0])
	}
	differ := false
	for s := int64(2); s < 6 && !differ; s++ {
		differ = !equalIDs(gen(s, nil).Tokens[0], a.Tokens[0])
	}
	if !differ {
		t.Errorf("different seeds all gave %v", a.Tokens[0])
	}
	if len(a.Tokens[0]) != 12 {
		t.Fatalf("max tokens 12 gave %d tokens", len(a.Tokens[0]))
	}
	stop := a.Tokens[0][4]
	c := gen(1, []int64{stop})
	idx := 0
	for a.Tokens[0][idx] != stop {
		idx++
	}
	if !c.Stopped[0] || len(c.Tokens[0]) != idx+1 || c.Tokens[0][idx] != stop {
		t.Errorf("stop token %d: got %v (stopped %v), want %v", stop, c.Tokens[0], c.Stopped[0], a.Tokens[0][:idx+1])
	}
	if c.Cache.Len() != cache.Len()+idx {
		t.Errorf("cache after stop holds %d slots, want prompt %d + %d", c.Cache.Len(), cache.Len(), idx)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Generate(ctx2, cache, out.Logits, GenerateOptions{MaxTokens: 3}); err == nil {
		t.Error("cancelled context: no error")
	}
	if _, err := m.Generate(ctx, cache, out.Logits, GenerateOptions{}); err == nil {
		t.Error("max tokens 0: no error")
	}
}

// TestSingleTokenExtend: extending by exactly one token (the vector path
// of a batch-1 step) returns [1, 1, ·] outputs equal to a full prefill.
func TestSingleTokenExtend(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 1, true)
	_, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok := []int64{42}
	out, next, err := m.Extend(cache, []Sequence{{Tokens: tok}}, ForwardOptions{Logits: LogitsAll, Hidden: true})
	if err != nil {
		t.Fatal(err)
	}
	if sz := out.Logits.MustSize(); len(sz) != 3 || sz[0] != 1 || sz[1] != 1 {
		t.Errorf("logits shape %v, want [1 1 V]", sz)
	}
	if sz := out.Hidden.MustSize(); len(sz) != 3 || sz[1] != 1 || sz[2] != int64(m.Config.Text.HiddenSize) {
		t.Errorf("hidden shape %v", sz)
	}
	full := Sequence{Tokens: append(append([]int64{}, seqs[0].Tokens...), tok...), Images: seqs[0].Images}
	want, _, err := m.Prefill([]Sequence{full}, ForwardOptions{Logits: LogitsLast})
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(floats(out.Logits), floats(want.Logits)); d > 1e-4 {
		t.Errorf("single-token extend differs from prefill by %g", d)
	}
	if next.Len() != cache.Len()+1 || next.NextPos[0] != cache.NextPos[0]+1 {
		t.Errorf("cache after one token: len %d pos %d", next.Len(), next.NextPos[0])
	}
	one, _, err := m.Prefill([]Sequence{{Tokens: tok}}, ForwardOptions{})
	if err != nil || one.Logits.MustSize()[0] != 1 {
		t.Errorf("one-token prefill: %v", err)
	}
}

// TestCacheContinuationsStayApart: caches share preallocated buffers, and
// a forward pass writes in place only from the cache that last wrote them.
// Continuing an older cache, or a Clone, must copy: every continuation
// still equals prefilling its whole prompt.
func TestCacheContinuationsStayApart(t *testing.T) {
	m := loadTiny(t, 0)
	enc := func(s string) []int64 {
		ids, err := m.Tokenizer.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	prefix := enc("Describe the quality of this picture, please.")
	a, b, c, d := enc(" It is sharp."), enc(" Blurry and dark."), enc(" Rate it."), enc(" Noisy.")
	extend := func(cache *KVCache, ids []int64) (*Output, *KVCache) {
		out, next, err := m.Extend(cache, []Sequence{{Tokens: ids}}, ForwardOptions{Logits: LogitsLast})
		if err != nil {
			t.Fatal(err)
		}
		return out, next
	}
	check := func(name string, got *Output, parts ...[]int64) {
		var all []int64
		for _, p := range parts {
			all = append(all, p...)
		}
		want, _, err := m.Prefill([]Sequence{{Tokens: all}}, ForwardOptions{Logits: LogitsLast})
		if err != nil {
			t.Fatal(err)
		}
		if diff := maxAbsDiff(floats(got.Logits), floats(want.Logits)); diff > 1e-4 {
			t.Errorf("%s: differs from prefilling the whole prompt by %g", name, diff)
		}
	}
	_, p, err := m.Prefill([]Sequence{{Tokens: prefix}}, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, ca := extend(p, a)          // in place: p owns its buffers' tail
	_, cb := extend(p, b)          // p no longer does: copies
	_, cd := extend(ca.Clone(), d) // a clone never writes in place
	oac, _ := extend(ca, c)        // ca still owns the tail: in place
	obc, _ := extend(cb, c)
	odc, _ := extend(cd, c)
	check("prefix+a+c", oac, prefix, a, c)
	check("prefix+b+c", obc, prefix, b, c)
	check("prefix+a+d+c", odc, prefix, a, d, c)
}

// TestGenerateHiddenAndRewind: the hidden states a generation keeps equal
// a prefill's at the same positions, and a generation cache rewound to
// part of each description and extended equals prefilling the prompt,
// that part and the extension: the scorer's round 2 continues a
// description this way instead of running it again.
func TestGenerateHiddenAndRewind(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 3, true) // different lengths: left padding
	out, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Stop sequence 1 early on its own third token, so that the others'
	// later steps give it padding slots.
	probe, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	stop := probe.Tokens[1][2]
	g, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: 6, KeepHidden: true, StopTokens: []int64{stop}})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Hidden) == 0 || len(g.Hidden) != max(len(g.Tokens[0]), len(g.Tokens[1]), len(g.Tokens[2]))-1 {
		t.Fatalf("%d hidden steps for tokens %v", len(g.Hidden), g.Tokens)
	}
	if !g.Stopped[1] {
		t.Fatalf("sequence 1 did not stop on %d: %v", stop, g.Tokens[1])
	}
	fed := make([][]int64, len(seqs)) // the tokens the generation cache holds
	var full []Sequence
	for i, s := range seqs {
		fed[i] = g.Tokens[i][:len(g.Tokens[i])-1]
		full = append(full, Sequence{Tokens: append(append([]int64{}, s.Tokens...), fed[i]...), Images: s.Images})
	}
	ref, _, err := m.Prefill(full, ForwardOptions{Logits: LogitsNone, Hidden: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range seqs {
		for j := range fed[i] {
			want := ref.Hidden.MustSelect(0, int64(i), false).MustSelect(0, int64(ref.Pad[i]+len(s.Tokens)+j), true)
			got := g.Hidden[j].MustSelect(0, int64(i), false)
			if d := maxAbsDiff(floats(got), floats(want)); d > 1e-4 {
				t.Errorf("seq %d token %d: kept hidden state differs from the prefill's by %g", i, j, d)
			}
		}
	}

	// Keep 0, 1 and all of the fed tokens, then continue with the same text.
	cont, err := m.Tokenizer.Encode("<end_of_utterance>\nUser: Rate it.")
	if err != nil {
		t.Fatal(err)
	}
	keep := make([]int, len(seqs))
	var tails, want []Sequence
	for i, s := range seqs {
		n := []int{0, 1, len(fed[2])}[i]
		n = min(n, len(fed[i]))
		keep[i] = len(s.Tokens) + n
		tails = append(tails, Sequence{Tokens: cont})
		want = append(want, Sequence{Tokens: append(append(append([]int64{}, s.Tokens...), fed[i][:n]...), cont...), Images: s.Images})
	}
	before := floats(g.Cache.K[0].Share().Wrap())
	back, err := g.Cache.Rewind(keep)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Free()
	got, _, err := m.Extend(back, tails, ForwardOptions{Logits: LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	// The rewound cache continued in place; the generation's own keys
	// are untouched.
	if d := maxAbsDiff(floats(g.Cache.K[0].Share().Wrap()), before); d != 0 {
		t.Errorf("extending the rewound cache changed the generation cache's keys by %g", d)
	}
	exp, _, err := m.Prefill(want, ForwardOptions{Logits: LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	for i := range seqs {
		for j := range cont {
			a := got.Logits.MustSelect(0, int64(i), false).MustSelect(0, int64(got.Pad[i]+j), true)
			b := exp.Logits.MustSelect(0, int64(i), false).MustSelect(0, int64(exp.Pad[i]+len(want[i].Tokens)-len(cont)+j), true)
			if d := maxAbsDiff(floats(a), floats(b)); d > 1e-4 {
				t.Errorf("seq %d (kept %d) continuation token %d: logits differ from a fresh prefill by %g", i, keep[i], j, d)
			}
		}
	}
	if _, err := g.Cache.Rewind([]int{0, 0}); err == nil {
		t.Error("rewinding with the wrong number of lengths: no error")
	}
	if _, err := g.Cache.Rewind([]int{0, int(g.Cache.NextPos[1]) + 1, 0}); err == nil {
		t.Error("keeping more tokens than a sequence holds: no error")
	}
}
