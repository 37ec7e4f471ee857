package mllm

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// TestPixelShuffleIndexPermutation checks
// out[b, i·(n/s)+j, (m·s+k)·D+d] = x[b, (i·s+m)·n + (j·s+k), d] built by hand.
func TestPixelShuffleIndexPermutation(t *testing.T) {
	for _, tc := range []struct{ b, n, d, s int }{{1, 4, 2, 2}, {2, 6, 3, 3}, {1, 8, 5, 4}} {
		seq := tc.n * tc.n
		v := make([]float32, tc.b*seq*tc.d)
		for i := range v {
			v[i] = float32(i)
		}
		got := floats(pixelShuffle(tensorOf(v, int64(tc.b), int64(seq), int64(tc.d)), int64(tc.s)))
		ns := tc.n / tc.s
		w := tc.d * tc.s * tc.s
		for b := 0; b < tc.b; b++ {
			for i := 0; i < ns; i++ {
				for j := 0; j < ns; j++ {
					for m := 0; m < tc.s; m++ {
						for k := 0; k < tc.s; k++ {
							for d := 0; d < tc.d; d++ {
								src := v[(b*seq+(i*tc.s+m)*tc.n+(j*tc.s+k))*tc.d+d]
								dst := got[(b*ns*ns+i*ns+j)*w+(m*tc.s+k)*tc.d+d]
								if src != dst {
									t.Fatalf("%+v: out[%d,%d,%d] = %g, want %g", tc, b, i*ns+j, (m*tc.s+k)*tc.d+d, dst, src)
								}
							}
						}
					}
				}
			}
		}
	}
}

// TestBF16MatchesF32: a bf16 checkpoint computed in bf16 gives the logits
// of its f32 conversion within bf16 tolerance.
func TestBF16MatchesF32(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bf16")
	if err := WriteTinyWith(dir, TinyOptions{Size: "tiny", Seed: tinySeed, DType: gotch.BFloat16}); err != nil {
		t.Fatal(err)
	}
	ck, err := tensorio.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := ck.Info("lm_head.weight"); info.DType != "BF16" {
		t.Fatalf("lm_head stored as %s, want BF16", info.DType)
	}
	ck.Close()
	var logits [][]float32
	for _, kind := range []gotch.DType{gotch.BFloat16, gotch.Float} {
		m, err := Load(dir, LoadOptions{DType: kind, WidenBF16: true})
		if err != nil {
			t.Fatal(err)
		}
		if m.text.EmbedTokens.DType() != kind {
			t.Fatalf("weights loaded as %v, want %v", m.text.EmbedTokens.DType(), kind)
		}
		seqs := prompts(t, m, 1, true)
		out, _, err := m.Prefill(seqs, ForwardOptions{Logits: LogitsAll})
		if err != nil {
			t.Fatal(err)
		}
		if out.Logits.DType() != gotch.Float {
			t.Errorf("logits dtype %v, want f32", out.Logits.DType())
		}
		logits = append(logits, floats(out.Logits))
	}
	scale := 0.0
	for _, v := range logits[1] {
		scale = math.Max(scale, math.Abs(float64(v)))
	}
	d := maxAbsDiff(logits[0], logits[1])
	t.Logf("bf16 vs f32: max diff %.3g, max |logit| %.3g", d, scale)
	if d > 0.05*scale {
		t.Errorf("bf16 logits differ from f32 by %g (max |logit| %g)", d, scale)
	}
	if d == 0 {
		t.Error("bf16 and f32 logits are identical: the bf16 path did not run in bf16")
	}
}

// TestBF16StorageMatchesWidened: a bf16 checkpoint under f32 compute keeps
// its Linear weights and embeddings in bf16 (half the memory) and gives
// the logits, hidden states and greedy tokens of the same checkpoint
// widened to f32 at load, up to f32 summation order.
func TestBF16StorageMatchesWidened(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bf16")
	if err := WriteTinyWith(dir, TinyOptions{Size: "tiny", Seed: tinySeed, DType: gotch.BFloat16}); err != nil {
		t.Fatal(err)
	}
	type run struct {
		logits, hidden []float32
		tokens         [][]int64
	}
	var runs []run
	for _, widen := range []bool{false, true} {
		m, err := Load(dir, LoadOptions{WidenBF16: widen})
		if err != nil {
			t.Fatal(err)
		}
		want := gotch.BFloat16
		if widen {
			want = gotch.Float
		}
		q := m.Linears()["model.text_model.layers.0.self_attn.q_proj"]
		if q == nil || q.W.DType() != want || m.text.EmbedTokens.DType() != want {
			t.Fatalf("widen %v: weights stored as %v, want %v", widen, q.W.DType(), want)
		}
		if m.DType != gotch.Float {
			t.Fatalf("widen %v: compute dtype %v, want f32", widen, m.DType)
		}
		seqs := prompts(t, m, 2, true)
		out, cache, err := m.Prefill(seqs, ForwardOptions{Logits: LogitsAll, Hidden: true})
		if err != nil {
			t.Fatal(err)
		}
		last, c2, err := m.Prefill(seqs, ForwardOptions{})
		if err != nil {
			t.Fatal(err)
		}
		g, err := m.Generate(context.Background(), c2, last.Logits, GenerateOptions{MaxTokens: 8})
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run{floats(out.Logits), floats(out.Hidden), g.Tokens})
		cache.Free()
		m.Close()
	}
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"logits", runs[0].logits, runs[1].logits}, {"hidden states", runs[0].hidden, runs[1].hidden}} {
		scale := 0.0
		for _, v := range c.want {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		if d := maxAbsDiff(c.got, c.want); d > 1e-5*(1+scale) {
			t.Errorf("%s: bf16 storage differs from widened by %g (max |value| %g)", c.name, d, scale)
		}
	}
	if fmt.Sprint(runs[0].tokens) != fmt.Sprint(runs[1].tokens) {
		t.Errorf("greedy tokens: bf16 storage %v, widened %v", runs[0].tokens, runs[1].tokens)
	}
}

func TestTokenizerSpecialTokensAndRoundTrip(t *testing.T) {
	m := loadTiny(t, 0)
	tk := m.Tokenizer
	for _, s := range append(append([]string{}, leadingSpecial...), SpecialTokens()...) {
		ids, err := tk.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		id, ok := tk.TokenID(s)
		if !ok || len(ids) != 1 || ids[0] != id {
			t.Errorf("%s encodes to %v, want the single id %d", s, ids, id)
		}
		ids, _ = tk.Encode("x" + s + "y")
		if len(ids) != 3 || ids[1] != id {
			t.Errorf("x%sy encodes to %v, want [x %d y]", s, ids, id)
		}
	}
	for _, s := range []string{
		"Please closely examine this AI-generated image: 'a cat, HDR lighting'.",
		"ünïcödé — 日本語のプロンプト 🙂🎨 Ελληνικά\ttab  two  spaces\n\nnew lines",
		"<|im_start|>User:<image>Rate it.<end_of_utterance>\nAssistant: good",
		" good", "", "1024×512 ½ €",
	} {
		ids, err := tk.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := tk.Decode(ids, false)
		if err != nil {
			t.Fatal(err)
		}
		if back != s {
			t.Errorf("decode(encode(%q)) = %q", s, back)
		}
	}
	if ids, _ := tk.Encode("2025"); len(ids) != 4 {
		t.Errorf("digits are not split one by one (SmolLM2's Digits pre-tokenizer): 2025 → %v", ids)
	}
	ids, _ := tk.Encode("<|im_start|>User: hi<end_of_utterance>")
	if s, _ := tk.Decode(ids, true); s != "User: hi" {
		t.Errorf("decode skipping special tokens = %q", s)
	}
	if _, err := tk.Decode([]int64{-1}, false); err == nil {
		t.Error("negative id: no error")
	}
	if _, err := LoadTokenizer(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("missing tokenizer.json: no error")
	}
}

func TestChatTemplateRendering(t *testing.T) {
	got := RenderChat([]Message{
		UserMessage("Describe it.", true),
		AssistantMessage("A cat."),
		{Role: "user", Content: []Part{{Text: "Rate "}, {Image: true}, {Text: "."}}},
	}, true)
	want := "<|im_start|>User:<image>Describe it.<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\nUser: Rate <image>.<end_of_utterance>\nAssistant:"
	if got != want {
		t.Errorf("RenderChat:\n got %q\nwant %q", got, want)
	}
	if got := ImagePrompt(2, 0, 0); got != "<fake_token_around_image><global-img><image><image><fake_token_around_image>" {
		t.Errorf("single image prompt %q", got)
	}
	want = "<fake_token_around_image><row_1_col_1><image><fake_token_around_image><row_1_col_2><image>\n" +
		"<fake_token_around_image><row_2_col_1><image><fake_token_around_image><row_2_col_2><image>\n" +
		"\n<fake_token_around_image><global-img><image><fake_token_around_image>"
	if got := ImagePrompt(1, 2, 2); got != want {
		t.Errorf("split image prompt\n got %q\nwant %q", got, want)
	}
}

// rewriteCheckpoint copies the tiny model directory with its tensors edited.
func rewriteCheckpoint(t *testing.T, edit func([]tensorio.Named) []tensorio.Named) string {
	t.Helper()
	src := tinyModelDir(t)
	dir := t.TempDir()
	for _, f := range []string{"config.json", "tokenizer.json", "generation_config.json"} {
		raw, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), raw, 0o644)
	}
	ck, err := tensorio.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var tensors []tensorio.Named
	for _, n := range ck.Names() {
		tt, err := ck.TensorAs(n, gotch.Float)
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, tensorio.Named{Name: n, Tensor: tt})
	}
	if err := tensorio.Write(filepath.Join(dir, "model.safetensors"), edit(tensors), nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadErrorsNameTheTensor(t *testing.T) {
	const victim = "model.text_model.layers.1.self_attn.k_proj.weight"
	for _, tc := range []struct {
		name string
		edit func([]tensorio.Named) []tensorio.Named
		want []string
	}{
		{"missing", func(in []tensorio.Named) (out []tensorio.Named) {
			for _, n := range in {
				if n.Name != victim {
					out = append(out, n)
				}
			}
			return out
		}, []string{"missing tensors", victim}},
		{"unexpected", func(in []tensorio.Named) []tensorio.Named {
			return append(in, tensorio.Named{Name: "model.text_model.layers.9.extra.weight", Tensor: ts.MustZeros([]int64{2}, gotch.Float, gotch.CPU)})
		}, []string{"unexpected tensors", "model.text_model.layers.9.extra.weight"}},
		{"misshaped", func(in []tensorio.Named) []tensorio.Named {
			for i, n := range in {
				if n.Name == victim {
					in[i].Tensor = ts.MustZeros([]int64{3, 64}, gotch.Float, gotch.CPU)
				}
			}
			return in
		}, []string{"mis-shaped", victim, "[3 64]", "[32 64]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(rewriteCheckpoint(t, tc.edit), LoadOptions{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := Load(t.TempDir(), LoadOptions{}); err == nil {
		t.Error("empty directory: no error")
	}
}

// TestShardedCheckpoint loads the tiny weights split over two files with
// an index and gets the same logits.
func TestShardedCheckpoint(t *testing.T) {
	src := tinyModelDir(t)
	dir := t.TempDir()
	for _, f := range []string{"config.json", "tokenizer.json"} {
		raw, _ := os.ReadFile(filepath.Join(src, f))
		os.WriteFile(filepath.Join(dir, f), raw, 0o644)
	}
	ck, err := tensorio.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	var shards [2][]tensorio.Named
	wm := map[string]string{}
	for i, n := range ck.Names() {
		tt, _ := ck.TensorAs(n, gotch.Float)
		shards[i%2] = append(shards[i%2], tensorio.Named{Name: n, Tensor: tt})
		wm[n] = []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i%2]
	}
	ck.Close()
	for i, s := range shards {
		if err := tensorio.Write(filepath.Join(dir, []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i]), s, nil); err != nil {
			t.Fatal(err)
		}
	}
	idx := `{"metadata": {}, "weight_map": {`
	first := true
	for k, v := range wm {
		if !first {
			idx += ","
		}
		first = false
		idx += `"` + k + `": "` + v + `"`
	}
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(idx+"}}"), 0o644)
	a, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := loadTiny(t, 0)
	seq := prompts(t, b, 1, false)
	oa, _, err := a.Prefill(seq, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ob, _, _ := b.Prefill(seq, ForwardOptions{})
	if d := maxAbsDiff(floats(oa.Logits), floats(ob.Logits)); d != 0 {
		t.Errorf("sharded checkpoint logits differ by %g", d)
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(`{"model_type":"idefics3","image_token_id":5,"scale_factor":4,
	 "vision_config":{"hidden_size":768,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":12,"image_size":512,"patch_size":16},
	 "text_config":{"vocab_size":100,"hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,"rope_theta":100000}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vision.LayerNormEps != 1e-6 || c.Vision.HiddenAct != "gelu_pytorch_tanh" || c.Vision.NumChannels != 3 {
		t.Errorf("vision defaults: %+v", c.Vision)
	}
	if c.Text.HeadDim != 64 || c.Text.HiddenAct != "silu" || c.TieWordEmbeddings || c.ImageSeqLen() != 64 {
		t.Errorf("text defaults: %+v, image seq %d", c.Text, c.ImageSeqLen())
	}
	for _, bad := range []string{
		`{"text_config":{"num_attention_heads":9,"num_key_value_heads":4}}`,
		`{"model_type":"llava"}`,
		`{"text_config":{"hidden_act":"gelu"}}`,
		`{"text_config":{"rope_scaling":{"rope_type":"yarn","factor":4}}}`,
		`{not json`,
	} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("config %s: no error", bad)
		}
	}
}

// scaleDelta is a test adapter: Forward returns x·Aᵀ scaled.
type scaleDelta struct{ A *ts.Tensor }

func (d scaleDelta) Forward(x *ts.Tensor) *ts.Tensor { return ts.MustLinear(x, d.A, ts.None) }

// TestLinearDeltaAndGrad: an adapter changes the output, a zero adapter
// does not, and gradients flow to adapter parameters with Grad on.
func TestLinearDeltaAndGrad(t *testing.T) {
	m := loadTiny(t, 0)
	seq := prompts(t, m, 1, true)
	base, _, err := m.Prefill(seq, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const name = "model.text_model.layers.0.self_attn.q_proj"
	l := m.Linears()[name]
	if l == nil {
		t.Fatalf("no Linear %s; have %d linears", name, len(m.Linears()))
	}
	want := 6*m.Config.Vision.NumHiddenLayers + 1 + 7*m.Config.Text.NumHiddenLayers + 1
	if len(m.Linears()) != want {
		t.Errorf("%d linears, want %d", len(m.Linears()), want)
	}
	sz := l.W.MustSize()
	l.Delta = scaleDelta{ts.MustZeros(sz, gotch.Float, gotch.CPU)}
	zero, _, _ := m.Prefill(seq, ForwardOptions{})
	if d := maxAbsDiff(floats(zero.Logits), floats(base.Logits)); d != 0 {
		t.Errorf("zero adapter changed logits by %g", d)
	}
	a := randTensor(5, sz...).MustMulScalar(ts.FloatScalar(0.1), true).MustSetRequiresGrad(true, true)
	l.Delta = scaleDelta{a}
	defer func() { l.Delta = nil }()
	out, _, err := m.Prefill(seq, ForwardOptions{Grad: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(floats(out.Logits), floats(base.Logits)); d == 0 {
		t.Error("adapter did not change logits")
	}
	var g []float32
	err = torch.Run("backward", true, func() error {
		if !out.Logits.MustRequiresGrad() {
			t.Fatal("logits with Grad on do not require grad")
		}
		out.Logits.MustSum(gotch.Float, false).MustBackward()
		g = floats(a.MustGrad(false))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	nz := false
	for _, v := range g {
		nz = nz || v != 0
	}
	if !nz {
		t.Error("no gradient reached the adapter")
	}
	inf, _, _ := m.Prefill(seq, ForwardOptions{})
	if inf.Logits.MustRequiresGrad() {
		t.Error("inference logits require grad")
	}
}

func TestWriteTinyFiles(t *testing.T) {
	dir := tinyModelDir(t)
	for _, f := range []string{"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
		"processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s", f)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	for _, k := range []string{`"vision_config"`, `"text_config"`, `"scale_factor"`, `"image_token_id"`, `"num_key_value_heads"`, `"rope_theta"`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("config.json lacks %s", k)
		}
	}
	fi, _ := os.Stat(filepath.Join(dir, "model.safetensors"))
	if fi.Size() > 8<<20 {
		t.Errorf("tiny model.safetensors is %d bytes", fi.Size())
	}
	// deterministic in the seed
	again := filepath.Join(t.TempDir(), "again")
	if err := WriteTiny(again, "tiny", tinySeed); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(again, "model.safetensors"))
	if string(a) != string(b) {
		t.Error("same seed wrote different weights")
	}
	if err := WriteTiny(t.TempDir(), "huge", 1); err == nil {
		t.Error("unknown size: no error")
	}
	c, err := TinyConfig("256m")
	if err != nil {
		t.Fatal(err)
	}
	if c.Text.VocabSize != 49280 || c.Vision.HiddenSize != 768 || c.ScaleFactor != 4 || c.ImageSeqLen() != 64 || c.Text.NumHiddenLayers != 30 {
		t.Errorf("256m config %+v", c)
	}
}

func TestForwardInputErrors(t *testing.T) {
	m := loadTiny(t, 0)
	img, _ := m.EncodeImage(testPixels(1, m.Config.Vision.ImageSize))
	for name, seqs := range map[string][]Sequence{
		"empty":         {},
		"no tokens":     {{}},
		"bad id":        {{Tokens: []int64{int64(m.Config.Text.VocabSize)}}},
		"missing image": {{Tokens: []int64{m.Config.ImageTokenID}}},
		"extra image":   {{Tokens: []int64{1}, Images: []*ImageFeatures{img}}},
	} {
		if _, _, err := m.Prefill(seqs, ForwardOptions{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := m.EncodeImage(Pixels{Size: 64}); err == nil {
		t.Error("no tiles: no error")
	}
	if _, err := m.EncodeImage(testPixels(1, 32)); err == nil {
		t.Error("wrong size: no error")
	}
}

// TestSplitImageChunks: a split image of 3×3 tiles + global (more tiles
// than one vision pass takes) encodes like its tiles one by one, in order.
func TestSplitImageChunks(t *testing.T) {
	m := loadTiny(t, 0)
	s := m.Config.Vision.ImageSize
	var tiles [][]float32
	for i := 0; i < 10; i++ {
		tiles = append(tiles, testPixels(int64(100+i), s).Tiles[0])
	}
	f, err := m.EncodeImage(Pixels{Tiles: tiles, Rows: 3, Cols: 3, Size: s})
	if err != nil {
		t.Fatal(err)
	}
	seq := m.Config.ImageSeqLen()
	if f.NumTokens() != 10*seq || f.Rows != 3 || f.Cols != 3 {
		t.Fatalf("%d tokens, rows %d cols %d", f.NumTokens(), f.Rows, f.Cols)
	}
	all := floats(f.Tokens)
	d := m.Config.Text.HiddenSize
	for i, tile := range tiles {
		one, err := m.EncodeImage(Pixels{Tiles: [][]float32{tile}, Size: s})
		if err != nil {
			t.Fatal(err)
		}
		if diff := maxAbsDiff(floats(one.Tokens), all[i*seq*d:(i+1)*seq*d]); diff > 1e-5 {
			t.Errorf("tile %d differs by %g", i, diff)
		}
	}
	text, err := m.ExpandImages("<image>", []*ImageFeatures{f})
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := m.Tokenizer.Encode(text)
	n := 0
	for _, id := range ids {
		if id == m.Config.ImageTokenID {
			n++
		}
	}
	if n != f.NumTokens() {
		t.Errorf("split prompt has %d image tokens for %d feature rows", n, f.NumTokens())
	}
	if _, _, err := m.Prefill([]Sequence{{Tokens: ids, Images: []*ImageFeatures{f}}}, ForwardOptions{}); err != nil {
		t.Error(err)
	}
}

func TestClosedModel(t *testing.T) {
	m, err := Load(tinyModelDir(t), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	m.Close()
	if _, err := m.EncodeImage(testPixels(1, m.Config.Vision.ImageSize)); err == nil {
		t.Error("encode after Close: no error")
	}
	if _, _, err := m.Prefill([]Sequence{{Tokens: []int64{1}}}, ForwardOptions{}); err == nil {
		t.Error("prefill after Close: no error")
	}
}

// TestHiddenOutputs: the returned hidden states are the final normed ones
// (lm_head of them gives the logits), LogitsNone returns hidden only, and
// LogitsLast is the last position of LogitsAll.
func TestHiddenOutputs(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 2, true)
	all, _, err := m.Prefill(seqs, ForwardOptions{Logits: LogitsAll, Hidden: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(floats(m.text.Head.Forward(all.Hidden)), floats(all.Logits)); d > 1e-5 {
		t.Errorf("lm_head(hidden) differs from logits by %g", d)
	}
	none, _, err := m.Prefill(seqs, ForwardOptions{Logits: LogitsNone, Hidden: true})
	if err != nil {
		t.Fatal(err)
	}
	if none.Logits != nil || none.Hidden == nil {
		t.Errorf("LogitsNone: logits %v, hidden %v", none.Logits != nil, none.Hidden != nil)
	}
	last, _, _ := m.Prefill(seqs, ForwardOptions{})
	tq := all.Logits.MustSize()[1]
	if d := maxAbsDiff(floats(last.Logits), floats(all.Logits.MustSelect(1, tq-1, false))); d > 1e-5 {
		t.Errorf("LogitsLast differs from the last of LogitsAll by %g", d)
	}
	if sz := last.Logits.MustSize(); len(sz) != 2 || sz[0] != 2 || sz[1] != int64(m.Config.Text.VocabSize) {
		t.Errorf("LogitsLast shape %v", sz)
	}
}

// TestTokenizerConcurrent: concurrent Encode/Decode give the serial results.
func TestTokenizerConcurrent(t *testing.T) {
	tk := loadTiny(t, 0).Tokenizer
	texts := []string{"Rate the image quality, 日本 🙂", "<|im_start|>User:<image>Describe 2025.<end_of_utterance>\n", " good excellent poor"}
	want := make([][]int64, len(texts))
	for i, s := range texts {
		want[i], _ = tk.Encode(s)
	}
	errs := make(chan string, 64)
	done := make(chan bool)
	for g := 0; g < 8; g++ {
		go func(g int) {
			for r := 0; r < 50; r++ {
				i := (g + r) % len(texts)
				ids, err := tk.Encode(texts[i])
				if err != nil || !equalIDs(ids, want[i]) {
					errs <- texts[i]
				}
				if s, _ := tk.Decode(ids, false); s != texts[i] {
					errs <- "decode " + texts[i]
				}
			}
			done <- true
		}(g)
	}
	for g := 0; g < 8; g++ {
		<-done
	}
	close(errs)
	for e := range errs {
		t.Errorf("concurrent mismatch: %q", e)
	}
}

// TestConcurrentForward: passes from several goroutines at once give the
// serial results.
func TestConcurrentForward(t *testing.T) {
	m := loadTiny(t, 0)
	seqs := prompts(t, m, 3, true)
	want := make([][]float32, len(seqs))
	for i, s := range seqs {
		out, _, err := m.Prefill([]Sequence{s}, ForwardOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = floats(out.Logits)
	}
	got := make([][][]float32, 4)
	errc := make(chan error, 4)
	for g := range got {
		go func(g int) {
			for i, s := range seqs {
				out, _, err := m.Prefill([]Sequence{s}, ForwardOptions{})
				if err != nil {
					errc <- err
					return
				}
				got[g] = append(got[g], floats(out.Logits))
				_ = i
			}
			errc <- nil
		}(g)
	}
	for range got {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for g := range got {
		for i := range seqs {
			if d := maxAbsDiff(got[g][i], want[i]); d != 0 {
				t.Errorf("goroutine %d seq %d differs by %g", g, i, d)
			}
		}
	}
}

func TestProcessorConfig(t *testing.T) {
	m := loadTiny(t, 0)
	p := m.Processor
	if p.Size != 64 || p.ImageSeqLen != 4 || p.Split || p.Mean[0] != 0.5 || p.Std[2] != 0.5 || math.Abs(p.RescaleFactor-1.0/255) > 1e-12 {
		t.Errorf("processor config %+v", p)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "processor_config.json"), []byte(`{"image_seq_len": 64}`), 0o644)
	if _, err := loadProcessorConfig(dir, m.Config); err == nil || !strings.Contains(err.Error(), "image_seq_len 64") {
		t.Errorf("mismatched image_seq_len: %v", err)
	}
}

// liveTensors is the set of gotch tensors not yet freed (by name).
func liveTensors() map[string]bool {
	out := map[string]bool{}
	for _, n := range regexp.MustCompile(`tensor_\d+`).FindAllString(ts.CheckCMemLeak(), -1) {
		out[n] = true
	}
	return out
}

// TestCloseFreesWeights: Close frees every weight tensor and the rotary
// tables now, and a Load that fails after reading the weights (here on a
// corrupt generation_config.json) frees what it loaded.
func TestCloseFreesWeights(t *testing.T) {
	m := loadTiny(t, 0)
	var weights []*ts.Tensor
	for _, p := range m.params.List {
		weights = append(weights, *p.Dst)
	}
	m.Close()
	for i, w := range weights {
		if w.Ctensor() != nil {
			t.Fatalf("%s still allocated after Close", m.params.List[i].Name)
		}
	}

	dir := t.TempDir()
	src := tinyModelDir(t)
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json"} {
		raw, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), raw, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte("{not json"), 0o644)
	before := liveTensors()
	if _, err := Load(dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "generation config") {
		t.Fatalf("corrupt generation_config.json: %v", err)
	}
	leaked := 0
	for n := range liveTensors() {
		if !before[n] {
			leaked++
		}
	}
	if leaked > 0 {
		t.Errorf("a failed Load left %d of its %d tensors allocated", leaked, len(weights))
	}
}

// TestBF16Products: with LoadOptions.BF16Products the image features and
// a prompt's logits stay within bf16 rounding of the f32 model's (and do
// differ: the bf16 products ran), while a decode step — a few rows — is
// computed exactly as in f32. Load refuses the option where it cannot
// pay: bf16 compute, and CPUs without bf16 instructions.
func TestBF16Products(t *testing.T) {
	dir := tinyModelDir(t)
	if _, err := Load(dir, LoadOptions{DType: gotch.BFloat16, BF16Products: true}); err == nil {
		t.Error("bf16 products with bf16 compute: no error")
	}
	if !torch.HasBF16Products() {
		if _, err := Load(dir, LoadOptions{BF16Products: true}); err == nil || !strings.Contains(err.Error(), "avx512_bf16") {
			t.Errorf("bf16 products on a CPU without bf16 instructions: error %v, want one naming avx512_bf16", err)
		}
		t.Skip("this CPU has no bf16 matrix instructions")
	}
	exact, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close()
	mixed, err := Load(dir, LoadOptions{BF16Products: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mixed.Close()
	px := testPixels(5, exact.Config.Vision.ImageSize)
	var feats [2]*ImageFeatures
	var logits [2][]float32
	var caches [2]*KVCache
	for i, m := range []*Model{exact, mixed} {
		f, err := m.EncodeImage(px)
		if err != nil {
			t.Fatal(err)
		}
		feats[i] = f
		seq, err := m.EncodeChat([]Message{UserMessage("Rate the quality of this image, please.", true)}, true, []*ImageFeatures{f})
		if err != nil {
			t.Fatal(err)
		}
		out, c, err := m.Prefill([]Sequence{seq}, ForwardOptions{Logits: LogitsAll})
		if err != nil {
			t.Fatal(err)
		}
		logits[i], caches[i] = floats(out.Logits), c
	}
	within := func(name string, got, want []float32, rel float64) {
		t.Helper()
		scale := 0.0
		for _, v := range want {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		d := maxAbsDiff(got, want)
		t.Logf("%s: max |bf16 products - f32| = %.3g (max |value| %.3g)", name, d, scale)
		if d > rel*scale {
			t.Errorf("%s: bf16 products differ from f32 by %g, more than %g of the largest value %g", name, d, rel, scale)
		}
		if d == 0 {
			t.Errorf("%s: bf16 products give exactly the f32 values: the bf16 path did not run", name)
		}
	}
	within("image features", floats(feats[1].Tokens), floats(feats[0].Tokens), 0.05)
	within("prompt logits", logits[1], logits[0], 0.05)
	// A decode step on the same cache: the few-row kernel, exact.
	var step [2][]float32
	for i, m := range []*Model{exact, mixed} {
		var l *ts.Tensor
		err := torch.Run("step", false, func() error {
			var next *KVCache
			l, next = m.text.Step(caches[0], []int64{42})
			next.Free()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		step[i] = floats(l)
	}
	if d := maxAbsDiff(step[1], step[0]); d != 0 {
		t.Errorf("a decode step differs by %g with bf16 products; want exactly the f32 logits", d)
	}
}
