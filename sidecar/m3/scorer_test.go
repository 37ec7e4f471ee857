package m3

import (
	"context"
	"math"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

var (
	tinyOnce  sync.Once
	tinyModel *mllm.Model
	tinyErr   error
)

// loadTiny writes the tiny Idefics3 model once per test binary and loads it.
func loadTiny(t testing.TB) *mllm.Model {
	t.Helper()
	tinyOnce.Do(func() {
		dir, err := tempDir()
		if err != nil {
			tinyErr = err
			return
		}
		if tinyErr = mllm.WriteTiny(dir, "tiny", 7); tinyErr != nil {
			return
		}
		tinyModel, tinyErr = mllm.Load(dir, mllm.LoadOptions{})
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyModel
}

// randomPixels is a normalised random image of the model's tile size.
func randomPixels(m *mllm.Model, seed int64) mllm.Pixels {
	s := m.Config.Vision.ImageSize
	r := rand.New(rand.NewSource(seed))
	tile := make([]float32, 3*s*s)
	for i := range tile {
		tile[i] = r.Float32()*2 - 1
	}
	return mllm.Pixels{Tiles: [][]float32{tile}, Size: s}
}

var testPrompts = Prompts{
	Round1: "Take a close look at this AI-generated image. It's original prompt is: '{prompt}'. Could you please help to analyze the image's quality?",
	Round2: "Now based on your analysis, could you please help to rate the image based on it's overall quality? Please give me one word from the list [bad, poor, fair, good, excellent].",
}

var corrPrompts = Prompts{
	Round1: "Please closely examine this AI-generated image and provide a detailed analysis of how well it aligns with the original prompt: '{prompt}'.",
	Round2: "Based on your analysis, could you please rate the image's alignment with its original prompt? Choose one word from the following list: [bad, poor, fair, good, excellent].",
}

func tinyPredictor(t testing.TB, m *mllm.Model) *xlstm.Predictor {
	t.Helper()
	cfg := xlstm.DefaultConfig(m.Config.Text.VocabSize)
	cfg.EmbeddingDim, cfg.NumHeads, cfg.SLSTMHeads, cfg.HeadHidden = 32, 2, 2, 16
	p, err := xlstm.New(cfg, 3, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestScoreTiny(t *testing.T) {
	m := loadTiny(t)
	s, err := New(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	items := []Item{
		{Pixels: randomPixels(m, 1), Prompt: "a red apple on a table"},
		{Pixels: randomPixels(m, 2), Prompt: "statue of a man, baroque style"},
		{Pixels: randomPixels(m, 3), Prompt: "sushi"},
	}
	pred := tinyPredictor(t, m)
	aspects := []Aspect{
		{Name: "quality", Prompts: testPrompts, Predictor: pred},
		{Name: "correspondence", Prompts: corrPrompts},
	}
	opts := Options{MaxNewTokens: 6}
	ctx := context.Background()
	first, err := s.Score(ctx, items, aspects, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(items) {
		t.Fatalf("got %d results, want %d", len(first), len(items))
	}
	for i, rs := range first {
		if len(rs) != len(aspects) {
			t.Fatalf("item %d: got %d aspects, want %d", i, len(rs), len(aspects))
		}
		for j, r := range rs {
			if r.Aspect != aspects[j].Name {
				t.Errorf("item %d: aspect %q, want %q", i, r.Aspect, aspects[j].Name)
			}
			if math.IsNaN(r.MOS) || r.MOS < 0 || r.MOS > 5 {
				t.Errorf("item %d %s: MOS %v outside 0..5", i, r.Aspect, r.MOS)
			}
			sum := 0.0
			for _, p := range r.WordProbs {
				if !(p >= 0 && p <= 1) {
					t.Errorf("item %d %s: word probability %v", i, r.Aspect, p)
				}
				sum += p
			}
			if len(r.WordProbs) != 5 || sum > 1+1e-5 {
				t.Errorf("item %d %s: word probs %v (sum %v)", i, r.Aspect, r.WordProbs, sum)
			}
			wantSrc := SourceWordProbs
			if aspects[j].Predictor != nil {
				wantSrc = SourcePredictor
			}
			if r.Source != wantSrc {
				t.Errorf("item %d %s: source %q, want %q", i, r.Aspect, r.Source, wantSrc)
			}
			if r.Source == SourceWordProbs {
				// MOS is the expectation over the normalised word probabilities.
				e := 0.0
				for k, w := range iqa.RatingWords {
					e += r.WordProbs[w] / sum * float64(k+1)
				}
				if want := (e - 1) * 1.25; math.Abs(r.MOS-want) > 1e-9 {
					t.Errorf("item %d %s: MOS %v, want %v", i, r.Aspect, r.MOS, want)
				}
			}
		}
	}

	// Determinism: the same call gives the same results.
	second, err := s.Score(ctx, items, aspects, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The cached-prefix path equals recomputing the whole prefix, and the
	// W·lm_head shortcut equals the literal logits path.
	uncached, err := s.Score(ctx, items, aspects, Options{MaxNewTokens: 6, Uncached: true, Literal: true})
	if err != nil {
		t.Fatal(err)
	}
	// One at a time equals the batch (padding changes nothing).
	single, err := s.Score(ctx, items[1:2], aspects, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range items {
		for j := range aspects {
			a := first[i][j]
			if b := second[i][j]; a.MOS != b.MOS || a.Description != b.Description || a.Rating != b.Rating {
				t.Errorf("item %d %s: second run %v/%q, first %v/%q", i, a.Aspect, b.MOS, b.Description, a.MOS, a.Description)
			}
			u := uncached[i][j]
			if u.Description != a.Description {
				t.Errorf("item %d %s: uncached description %q, cached %q", i, a.Aspect, u.Description, a.Description)
			}
			if math.Abs(u.MOS-a.MOS) > 1e-4 {
				t.Errorf("item %d %s: uncached/literal MOS %v, cached/shortcut %v", i, a.Aspect, u.MOS, a.MOS)
			}
			for w, p := range a.WordProbs {
				if math.Abs(u.WordProbs[w]-p) > 1e-4 {
					t.Errorf("item %d %s: uncached p(%s) %v, cached %v", i, a.Aspect, w, u.WordProbs[w], p)
				}
			}
		}
	}
	// Aspects that share an adapter run as one batch; each alone gives the
	// same result.
	for j := range aspects {
		alone, err := s.Score(ctx, items, aspects[j:j+1], opts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range items {
			a, b := first[i][j], alone[i][0]
			if b.Description != a.Description || math.Abs(a.MOS-b.MOS) > 1e-4 || b.Aspect != a.Aspect {
				t.Errorf("item %d %s: scored alone %v/%q, with the other aspect %v/%q", i, a.Aspect, b.MOS, b.Description, a.MOS, a.Description)
			}
		}
	}
	for j := range aspects {
		a, b := first[1][j], single[0][j]
		if b.Description != a.Description || math.Abs(a.MOS-b.MOS) > 1e-4 {
			t.Errorf("%s: alone %v/%q, in a batch %v/%q", a.Aspect, b.MOS, b.Description, a.MOS, a.Description)
		}
	}
}

func TestScoreErrors(t *testing.T) {
	m := loadTiny(t)
	s, err := New(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	item := []Item{{Pixels: randomPixels(m, 1), Prompt: "x"}}
	tests := []struct {
		name    string
		items   []Item
		aspects []Aspect
	}{
		{"no aspects", item, nil},
		{"empty round 2", item, []Aspect{{Name: "quality", Prompts: Prompts{Round1: "q {prompt}"}}}},
		{"adapter without set", item, []Aspect{{Name: "quality", Prompts: testPrompts, Adapter: "quality"}}},
		{"wrong tile size", []Item{{Pixels: mllm.Pixels{Tiles: [][]float32{{1, 2, 3}}, Size: 1}}}, []Aspect{{Name: "quality", Prompts: testPrompts}}},
	}
	for _, tt := range tests {
		if _, err := s.Score(context.Background(), tt.items, tt.aspects, Options{MaxNewTokens: 2}); err == nil {
			t.Errorf("%s: got no error", tt.name)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Score(ctx, item, []Aspect{{Name: "quality", Prompts: testPrompts}}, Options{MaxNewTokens: 4}); err == nil {
		t.Error("cancelled context: got no error")
	}
}

func newPredictorWithConfig(cfg xlstm.Config) (*xlstm.Predictor, error) {
	return xlstm.New(cfg, 5, gotch.CPU)
}

// TestSharedPrefix checks where the aspects of one item stop sharing
// their round-1 prompt: after the image, at the first token where any two
// differ; nothing is shared for one aspect or when Uncached.
func TestSharedPrefix(t *testing.T) {
	m := loadTiny(t)
	s, err := New(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	items := []Item{{Pixels: randomPixels(m, 1), Prompt: "a red apple"}, {Pixels: randomPixels(m, 2), Prompt: "sushi"}}
	feats, err := m.EncodeImages([]mllm.Pixels{items[0].Pixels, items[1].Pixels}, false)
	if err != nil {
		t.Fatal(err)
	}
	authPrompts := testPrompts
	authPrompts.Round1 = strings.Replace(testPrompts.Round1, "quality?", "authenticity, how real it looks?", 1)
	group := []Aspect{{Name: "quality", Prompts: testPrompts}, {Name: "correspondence", Prompts: corrPrompts}, {Name: "authenticity", Prompts: authPrompts}}
	for _, tt := range []struct {
		name   string
		group  []Aspect
		opts   Options
		shares bool
	}{
		{"three aspects", group, Options{}, true},
		{"quality and authenticity", []Aspect{group[0], group[2]}, Options{}, true},
		{"one aspect", group[:1], Options{}, false},
		{"uncached", group, Options{Uncached: true}, false},
	} {
		g := &groupRun{s: s, items: items, feats: feats, group: tt.group, opts: tt.opts, n: len(items) * len(tt.group)}
		if err := g.encodeRoundOne(); err != nil {
			t.Fatal(err)
		}
		shared := g.sharedPrefix()
		if !tt.shares {
			if shared != nil {
				t.Errorf("%s: shared %v, want nothing", tt.name, shared)
			}
			continue
		}
		if len(shared) != len(items) {
			t.Fatalf("%s: shared %v, want one length per item", tt.name, shared)
		}
		mm := len(tt.group)
		for i, n := range shared {
			seqs := g.prefix[i*mm : (i+1)*mm]
			lastImg := -1
			for j, id := range seqs[0].Tokens {
				if id == m.Config.ImageTokenID {
					lastImg = j
				}
			}
			if n <= lastImg {
				t.Errorf("%s item %d: shares %d tokens, the image ends at %d", tt.name, i, n, lastImg)
			}
			differ := false
			for _, sq := range seqs {
				if !slices.Equal(sq.Tokens[:n], seqs[0].Tokens[:n]) {
					t.Errorf("%s item %d: the first %d tokens are not shared", tt.name, i, n)
				}
				differ = differ || sq.Tokens[n] != seqs[0].Tokens[n]
			}
			if !differ {
				t.Errorf("%s item %d: all prompts still agree at token %d", tt.name, i, n)
			}
		}
		if tt.name == "quality and authenticity" && len(shared) > 0 {
			// These two share their text up to the aspect's name: more
			// than all three do.
			g3 := &groupRun{s: s, items: items, feats: feats, group: group, n: len(items) * len(group)}
			if err := g3.encodeRoundOne(); err != nil {
				t.Fatal(err)
			}
			if all := g3.sharedPrefix(); all[0] >= shared[0] {
				t.Errorf("three aspects share %d tokens, quality and authenticity %d: want fewer", all[0], shared[0])
			}
		}
		g.free()
	}
	for _, f := range feats {
		torch.Drop(f.Tokens)
	}
}

// TestScoreReusesDescriptions: when a description's text tokenizes back
// to the tokens the model generated (as a trained model's words do; here
// the head is restricted to whole words), round 2 continues the
// generation's cache instead of running the description again, and gives
// what running the whole prompt again gives: the same rating words,
// word probabilities and predictor MOS (which reads the description's
// hidden states as the decode steps computed them).
func TestScoreReusesDescriptions(t *testing.T) {
	dir := t.TempDir()
	if err := mllm.WriteTiny(dir, "tiny", 7); err != nil {
		t.Fatal(err)
	}
	m, err := mllm.Load(dir, mllm.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeWords(t, m)
	s, err := New(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	items := []Item{
		{Pixels: randomPixels(m, 1), Prompt: "a red apple on a table"},
		{Pixels: randomPixels(m, 2), Prompt: "sushi"},
	}
	aspects := []Aspect{
		{Name: "quality", Prompts: testPrompts, Predictor: tinyPredictor(t, m)},
		{Name: "correspondence", Prompts: corrPrompts},
	}
	const tokens = 12
	ctx := context.Background()
	got, err := s.Score(ctx, items, aspects, Options{MaxNewTokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	// Words never stop: every sequence fed tokens-1 tokens back, all kept.
	if n, want := s.reused.Load(), int64(len(items)*len(aspects)*(tokens-1)); n != want {
		t.Errorf("round 2 kept %d description tokens, want %d", n, want)
	}
	want, err := s.Score(ctx, items, aspects, Options{MaxNewTokens: tokens, Uncached: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.reused.Load() != int64(len(items)*len(aspects)*(tokens-1)) {
		t.Error("the uncached run reused description tokens")
	}
	for i := range items {
		for j := range aspects {
			g, w := got[i][j], want[i][j]
			if g.Description != w.Description || len(strings.Fields(g.Description)) < tokens-2 {
				t.Fatalf("item %d %s: descriptions %q and %q", i, g.Aspect, g.Description, w.Description)
			}
			if g.Rating != w.Rating || math.Abs(g.MOS-w.MOS) > 1e-4 {
				t.Errorf("item %d %s: reused %s %.6f, from scratch %s %.6f", i, g.Aspect, g.Rating, g.MOS, w.Rating, w.MOS)
			}
			for word, p := range w.WordProbs {
				if math.Abs(g.WordProbs[word]-p) > 1e-4 {
					t.Errorf("item %d %s: P(%s) reused %.6f, from scratch %.6f", i, g.Aspect, word, g.WordProbs[word], p)
				}
			}
		}
	}
}

// sharpenWords multiplies the LM-head rows of the rating words by f:
// random weights spread the probability over the whole vocabulary and
// give the five words nearly equal shares (the tiny model's two most
// probable lie within 0.001), where a trained model puts most of it on
// the words, peaked; sharpened, the words take clear, different shares,
// and every error in their logits counts f times.
func sharpenWords(t *testing.T, s *Scorer, f float32) {
	t.Helper()
	rows := make([]float32, s.model.Config.Text.VocabSize)
	for i := range rows {
		rows[i] = 1
	}
	for _, id := range s.wordIDs {
		rows[id] = f
	}
	scaleHeadRows(t, s.model, rows)
}

// TestMixedKeepsRatings checks the "results unchanged" rule on the opt-in
// mixed dtype (bf16 products for the image and the prompts, f32
// otherwise), for an f32 and a bf16 checkpoint (SmolVLM's dtype, whose
// weights bf16 products use as they are): on every item × aspect the
// rating-word probabilities stay within 0.02 of f32's, and the rating
// word is the same wherever that bound allows no other. The rating words'
// head rows are sharpened 5× (sharpenWords). Not a proof for every model:
// sharpened 25×, the same model's probabilities moved by up to 0.02–0.08
// (sensitivity grows with how peaked the words are), which is why mixed
// is opt-in and f32 the default.
func TestMixedKeepsRatings(t *testing.T) {
	if !torch.HasBF16Products() {
		t.Skip("this CPU has no bf16 matrix instructions (Load refuses mixed: TestBF16Products)")
	}
	for _, dt := range []gotch.DType{gotch.Float, gotch.BFloat16} {
		t.Run(dt.String(), func(t *testing.T) { testMixedKeepsRatings(t, dt) })
	}
}

func testMixedKeepsRatings(t *testing.T, dt gotch.DType) {
	dir := t.TempDir()
	if err := mllm.WriteTinyWith(dir, mllm.TinyOptions{Size: "tiny", Seed: 7, DType: dt}); err != nil {
		t.Fatal(err)
	}
	items := []Item{
		{Prompt: "a red apple on a table"}, {Prompt: "statue of a man, baroque style"},
		{Prompt: "sushi"}, {Prompt: "a lighthouse at dusk, oil painting"},
	}
	aspects := []Aspect{
		{Name: "quality", Prompts: testPrompts},
		{Name: "correspondence", Prompts: corrPrompts},
	}
	var res [2][][]Result
	for i, mixed := range []bool{false, true} {
		m, err := mllm.Load(dir, mllm.LoadOptions{BF16Products: mixed})
		if err != nil {
			t.Fatal(err)
		}
		for k := range items {
			items[k].Pixels = randomPixels(m, int64(k+1))
		}
		s, err := New(m, nil)
		if err != nil {
			t.Fatal(err)
		}
		sharpenWords(t, s, 5)

		if res[i], err = s.Score(context.Background(), items, aspects, Options{MaxNewTokens: 8}); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	// Each probability moves by at most worst, so the most probable word
	// can change only where f32's two most probable are within 2·worst.
	worst, moved := 0.0, 0
	for i := range items {
		for j := range aspects {
			f32, mixed := res[0][i][j], res[1][i][j]
			if mixed.Description != f32.Description {
				moved++
			}
			for _, w := range iqa.RatingWords {
				d := math.Abs(mixed.WordProbs[w] - f32.WordProbs[w])
				worst = math.Max(worst, d)
				if d > 0.02 {
					t.Errorf("item %d %s: P(%s) mixed %.4f, f32 %.4f", i, f32.Aspect, w, mixed.WordProbs[w], f32.WordProbs[w])
				}
			}
		}
	}
	compared := 0
	for i := range items {
		for j := range aspects {
			f32, mixed := res[0][i][j], res[1][i][j]
			probs := make([]float64, 0, len(iqa.RatingWords))
			for _, w := range iqa.RatingWords {
				probs = append(probs, f32.WordProbs[w])
			}
			slices.Sort(probs)
			if probs[len(probs)-1]-probs[len(probs)-2] > 2*worst {
				compared++
				if mixed.Rating != f32.Rating {
					t.Errorf("item %d %s: rating %s mixed, %s f32", i, f32.Aspect, mixed.Rating, f32.Rating)
				}
			}
		}
	}
	if compared < len(items)*len(aspects)/2 {
		t.Errorf("only %d of %d ratings had a margin over 2·%.4f to compare", compared, len(items)*len(aspects), worst)
	}
	t.Logf("max |P mixed - P f32| = %.4f; %d of %d ratings compared; %d descriptions differ", worst, compared, len(items)*len(aspects), moved)
}
