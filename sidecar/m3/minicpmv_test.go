package m3

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"math"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/mllm/minicpmv"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

func texturedPNG(t *testing.T, w, h int, phase float64) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, color.RGBA{uint8(128 + 120*math.Sin(phase+0.05*float64(x))), uint8(128 + 120*math.Cos(0.04*float64(y))), uint8((x + y) % 256), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// miniCPMFixture writes the tiny model, two adapters in M3-AGIQA's PEFT
// layout (LoRA + modules_to_save) and a predictor for the tiny vocabulary.
type miniCPMFixture struct {
	model, quality, corr, predictor string
}

func newMiniCPMFixture(t *testing.T) miniCPMFixture {
	t.Helper()
	dir := t.TempDir()
	f := miniCPMFixture{model: filepath.Join(dir, "model"), quality: filepath.Join(dir, "quality"), corr: filepath.Join(dir, "corr"), predictor: filepath.Join(dir, "pred.safetensors")}
	if err := minicpmv.WriteTiny(f.model, minicpmv.TinyOptions{Seed: 3}); err != nil {
		t.Fatal(err)
	}
	if err := minicpmv.WriteTinyAdapter(f.quality, f.model, 11); err != nil {
		t.Fatal(err)
	}
	if err := minicpmv.WriteTinyAdapter(f.corr, f.model, 12); err != nil {
		t.Fatal(err)
	}
	cfg, err := minicpmv.LoadConfig(filepath.Join(f.model, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	xc := xlstm.DefaultConfig(cfg.Text.VocabSize)
	xc.EmbeddingDim, xc.NumHeads, xc.SLSTMHeads, xc.HeadHidden, xc.ContextLength = 32, 2, 2, 16, 512
	p, err := xlstm.New(xc, 5, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Save(f.predictor); err != nil {
		t.Fatal(err)
	}
	return f
}

var miniPrompts = map[string]schemas.AspectPrompt{
	"quality":        {Round1: "Please closely examine this AI-generated image and provide a detailed analysis of its overall quality. The original prompt for the image was: '{prompt}'.", Round2: "Based on your analysis, could you please rate the image's overall quality? Choose one word from the following list: [bad, poor, fair, good, excellent]."},
	"correspondence": {Round1: "Please closely examine this AI-generated image and provide a detailed analysis of its alignment with the original prompt. The original prompt for the image was: '{prompt}'.", Round2: "Based on your analysis, could you please rate the image's alignment with its original prompt? Choose one word from the following list: [bad, poor, fair, good, excellent]."},
}

func loadMini(t *testing.T, req schemas.LoadRequest) *Engine {
	t.Helper()
	e := NewEngine()
	req.Family = FamilyMiniCPMV25
	if err := e.Load(context.Background(), req, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Unload(context.Background()) })
	return e
}

func scoreMini(t *testing.T, e *Engine, items []schemas.ScoreItem, aspects ...string) []schemas.ItemResult {
	t.Helper()
	res, err := e.Score(context.Background(), items, schemas.ScoreOptions{Aspects: aspects, Prompts: miniPrompts, MaxNewTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Error != "" {
			t.Fatalf("item %d: %s", i, r.Error)
		}
	}
	return res
}

// TestMiniCPMEngine scores on the tiny MiniCPM-V 2.5 model with two
// M3-AGIQA-layout adapters (LoRA plus saved vision tower, resampler and
// embeddings) and a predictor, and checks: finite MOS from the predictor,
// word probabilities summing to at most 1, a description; the saved
// modules change the result; switching aspects in one engine gives each
// aspect exactly what an engine holding only that aspect's adapter gives
// (the swap restores the base); a batch of two equals the two scored
// alone; greedy and beam decoding are both available.
func TestMiniCPMEngine(t *testing.T) {
	if testing.Short() {
		t.Skip("scores with two engines and several adapters; skipped with -short")
	}
	f := newMiniCPMFixture(t)
	img1 := schemas.ScoreItem{Data: texturedPNG(t, 520, 400, 0), Prompt: "statue of a man"}
	img2 := schemas.ScoreItem{Data: texturedPNG(t, 300, 300, 1), Prompt: "a red apple"}
	both := loadMini(t, schemas.LoadRequest{ModelDir: f.model,
		Adapters:   map[string]string{"quality": f.quality, "correspondence": f.corr},
		Predictors: map[string]string{"quality": f.predictor}})
	if info := both.Info(); info.Family != FamilyMiniCPMV25 || len(info.AdapterAspects) != 2 {
		t.Fatalf("info %+v", info)
	}
	// correspondence, then quality, then correspondence again: the swap
	// in and out of saved modules must not leak between aspects
	r1 := scoreMini(t, both, []schemas.ScoreItem{img1}, "correspondence", "quality")
	r2 := scoreMini(t, both, []schemas.ScoreItem{img1, img2}, "quality", "correspondence")
	q := r1[0].Aspects["quality"]
	if q.Source != SourcePredictor || math.IsNaN(q.MOS) || q.MOS < 0 || q.MOS > 5 {
		t.Errorf("quality %+v: want a predictor MOS in [0, 5]", q)
	}
	c := r1[0].Aspects["correspondence"]
	if c.Source != SourceWordProbs || c.Description == "" {
		t.Errorf("correspondence %+v: want a word-probability MOS and a description", c)
	}
	sum := 0.0
	for _, p := range c.WordProbs {
		sum += p
	}
	if sum <= 0 || sum > 1+1e-6 || len(c.WordProbs) != 5 {
		t.Errorf("word probs %v sum to %g", c.WordProbs, sum)
	}
	for _, a := range []string{"quality", "correspondence"} {
		if d := math.Abs(r1[0].Aspects[a].MOS - r2[0].Aspects[a].MOS); d > 1e-5 {
			t.Errorf("%s: MOS %g after switching, %g before", a, r2[0].Aspects[a].MOS, r1[0].Aspects[a].MOS)
		}
	}
	onlyCorr := loadMini(t, schemas.LoadRequest{ModelDir: f.model, Adapters: map[string]string{"correspondence": f.corr}})
	alone := scoreMini(t, onlyCorr, []schemas.ScoreItem{img1}, "correspondence")[0].Aspects["correspondence"]
	if math.Abs(alone.MOS-c.MOS) > 1e-5 || alone.Description != c.Description {
		t.Errorf("correspondence with both adapters loaded: %g %q; alone: %g %q", c.MOS, c.Description, alone.MOS, alone.Description)
	}
	base := loadMini(t, schemas.LoadRequest{ModelDir: f.model})
	plain := scoreMini(t, base, []schemas.ScoreItem{img1}, "correspondence")[0].Aspects["correspondence"]
	if math.Abs(plain.MOS-c.MOS) < 1e-6 {
		t.Errorf("the adapter does not change the score (%g)", plain.MOS)
	}
	single := scoreMini(t, both, []schemas.ScoreItem{img2}, "quality", "correspondence")
	for _, a := range []string{"quality", "correspondence"} {
		if d := math.Abs(single[0].Aspects[a].MOS - r2[1].Aspects[a].MOS); d > 1e-5 {
			t.Errorf("%s: batch MOS %g, alone %g", a, r2[1].Aspects[a].MOS, single[0].Aspects[a].MOS)
		}
	}
	greedy := loadMini(t, schemas.LoadRequest{ModelDir: f.model, Options: map[string]string{OptionNumBeams: "1"}})
	if d := greedy.Info().Details["decode"]; d != "greedy" {
		t.Errorf("decode = %q", d)
	}
	scoreMini(t, greedy, []schemas.ScoreItem{img1}, "quality")
}

func TestMiniCPMOptions(t *testing.T) {
	for _, tc := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"max_slices": "0"}, "positive integer"},
		{map[string]string{"num_beams.quality": "3"}, "applies to every aspect"},
		{map[string]string{"image_splitting": "true"}, "unknown option"},
		{map[string]string{"repetition_penalty": "-1"}, "positive number"},
	} {
		_, _, err := parseFamilyOptions(tc.opts)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%v: err %v, want %q", tc.opts, err, tc.want)
		}
	}
	o, _, err := parseFamilyOptions(map[string]string{"max_slices": "9", "max_slices.quality": "4", "max_length.quality": "768"})
	if err != nil {
		t.Fatal(err)
	}
	if o.slices("quality") != 4 || o.slices("correspondence") != 9 || o.length("quality") != 768 || o.length("correspondence") != 512 {
		t.Errorf("per-aspect options: %+v", o)
	}
}

// TestMiniCPMAdapterMergedEqualsUnmerged folds the active adapter's LoRA
// update into the base weights and checks that scores do not move.
func TestMiniCPMAdapterMergedEqualsUnmerged(t *testing.T) {
	f := newMiniCPMFixture(t)
	e := loadMini(t, schemas.LoadRequest{ModelDir: f.model, Adapters: map[string]string{"quality": f.quality}, Predictors: map[string]string{"quality": f.predictor}})
	item := schemas.ScoreItem{Data: texturedPNG(t, 400, 400, 2), Prompt: "statue of a man"}
	before := scoreMini(t, e, []schemas.ScoreItem{item}, "quality")[0].Aspects["quality"]
	fe := e.other.(*miniCPMEngine)
	if err := fe.adapters.Activate("quality"); err != nil {
		t.Fatal(err)
	}
	if err := fe.adapters.Merge(); err != nil {
		t.Fatal(err)
	}
	after := scoreMini(t, e, []schemas.ScoreItem{item}, "quality")[0].Aspects["quality"]
	if d := math.Abs(before.MOS - after.MOS); d > 1e-4 {
		t.Errorf("MOS %g unmerged, %g merged", before.MOS, after.MOS)
	}
	for w, p := range before.WordProbs {
		if d := math.Abs(p - after.WordProbs[w]); d > 1e-4 {
			t.Errorf("%s: probability %g unmerged, %g merged", w, p, after.WordProbs[w])
		}
	}
	if before.Description != after.Description {
		t.Errorf("description %q unmerged, %q merged", before.Description, after.Description)
	}
}

// TestMiniCPMRoundTwoReusesRoundOne: round 2 continues round 1's cache
// (the image and the question run once per aspect) and gives what
// prefilling its whole prompt gives: the same word probabilities, the same
// predictor MOS (which reads every position's hidden state) and the same
// description, with an adapter and with greedy and beam decoding.
func TestMiniCPMRoundTwoReusesRoundOne(t *testing.T) {
	if testing.Short() {
		t.Skip("scores twice with two engines; skipped with -short")
	}
	f := newMiniCPMFixture(t)
	img := schemas.ScoreItem{Data: texturedPNG(t, 520, 400, 0), Prompt: "statue of a man"}
	for _, beams := range []string{"1", "3"} {
		e := loadMini(t, schemas.LoadRequest{ModelDir: f.model,
			Adapters:   map[string]string{"quality": f.quality},
			Predictors: map[string]string{"quality": f.predictor},
			Options:    map[string]string{OptionNumBeams: beams}})
		score := func(reuse bool) schemas.ItemResult {
			noRoundOneReuse = !reuse
			defer func() { noRoundOneReuse = false }()
			return scoreMini(t, e, []schemas.ScoreItem{img}, "quality", "correspondence")[0]
		}
		want := score(false)
		before := roundOneReused.Load()
		got := score(true)
		if n := roundOneReused.Load() - before; n != 2 {
			t.Fatalf("beams %s: round 2 continued round 1 for %d of 2 aspects", beams, n)
		}
		for _, a := range []string{"quality", "correspondence"} {
			g, w := got.Aspects[a], want.Aspects[a]
			if g.Description != w.Description || g.Source != w.Source {
				t.Errorf("beams %s, %s: %q (%s) reusing, %q (%s) whole", beams, a, g.Description, g.Source, w.Description, w.Source)
			}
			if d := math.Abs(g.MOS - w.MOS); d > 1e-5 {
				t.Errorf("beams %s, %s: MOS %g reusing, %g whole", beams, a, g.MOS, w.MOS)
			}
			if len(g.WordProbs) != len(w.WordProbs) || len(w.WordProbs) == 0 {
				t.Errorf("beams %s, %s: %d word probabilities reusing, %d whole", beams, a, len(g.WordProbs), len(w.WordProbs))
			}
			for word, wp := range w.WordProbs {
				if d := math.Abs(g.WordProbs[word] - wp); d > 1e-5 {
					t.Errorf("beams %s, %s: %q probability %g reusing, %g whole", beams, a, word, g.WordProbs[word], wp)
				}
			}
		}
	}
}
