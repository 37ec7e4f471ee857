package lora

import (
	"math/rand"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/sugarme/gotch"
)

// TestTinyModelLogits runs adapters on the project's tiny Idefics3 model:
// the default targets pick only text self-attention projections; a fresh
// adapter (B = 0) leaves the logits unchanged; merged and unmerged logits
// agree within 1e-5; switching back to the base model restores them.
func TestTinyModelLogits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := mllm.WriteTiny(dir, "tiny", 7); err != nil {
		t.Fatal(err)
	}
	m, err := mllm.Load(dir, mllm.LoadOptions{DType: gotch.Float, SkipTokenizer: true})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(3))
	vocab := int64(m.Config.Text.VocabSize)
	toks := make([]int64, 12)
	for i := range toks {
		toks[i] = rng.Int63n(vocab - 1)
	}
	logits := func() []float64 {
		out, _, err := m.Prefill([]mllm.Sequence{{Tokens: toks}}, mllm.ForwardOptions{Logits: mllm.LogitsAll})
		if err != nil {
			t.Fatal(err)
		}
		return vals(out.Logits)
	}
	base := logits()

	lin := m.Linears()
	cfg := DefaultConfig()
	cfg.R, cfg.LoraAlpha = 4, 8
	a, err := New("quality", cfg, lin, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range a.Modules() {
		if !strings.Contains(mod, "text_model") || !strings.Contains(mod, "self_attn") {
			t.Errorf("default targets picked %s", mod)
		}
	}
	if len(a.Modules()) == 0 || len(a.Modules())%4 != 0 {
		t.Fatalf("modules %v", a.Modules())
	}
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	_ = s.Activate("quality")
	if d := maxAbs(logits(), base); d != 0 {
		t.Errorf("B = 0 adapter changed the logits by %g", d)
	}
	for _, mod := range a.Modules() {
		l := a.Layers[mod]
		l.B = randT(rng, 0.5, l.B.MustSize()...)
	}
	unmerged := logits()
	if d := maxAbs(unmerged, base); d < 1e-3 {
		t.Fatalf("adapter barely changed the logits (%g); test is vacuous", d)
	}
	if err := s.Merge(); err != nil {
		t.Fatal(err)
	}
	if d := maxAbs(logits(), unmerged); d > 1e-5 {
		t.Errorf("merged and unmerged logits differ by %g", d)
	}
	_ = s.Activate("")
	if d := maxAbs(logits(), base); d > 1e-5 {
		t.Errorf("base logits after unmerge differ by %g", d)
	}
}
