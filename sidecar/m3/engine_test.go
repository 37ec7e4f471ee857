package m3

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/imageproc"
	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// engineFixture writes a tiny model, a LoRA adapter with non-zero B for
// "quality" and a predictor for "quality" into a temp dir.
func engineFixture(t *testing.T) (modelDir, adapterDir, predPath string) {
	t.Helper()
	root := t.TempDir()
	modelDir = filepath.Join(root, "model")
	if err := mllm.WriteTiny(modelDir, "tiny", 7); err != nil {
		t.Fatal(err)
	}
	m, err := mllm.Load(modelDir, mllm.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := lora.DefaultConfig()
	cfg.R, cfg.LoraAlpha = 4, 8
	a, err := lora.New("quality", cfg, m.Linears(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := torch.Run("init adapter", false, func() error {
		for _, l := range a.Layers {
			l.B.MustUniform_(-0.5, 0.5)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	adapterDir = filepath.Join(root, "adapter")
	if err := a.Save(adapterDir); err != nil {
		t.Fatal(err)
	}
	predPath = filepath.Join(root, "quality.safetensors")
	if err := tinyPredictor(t, m).Save(predPath); err != nil {
		t.Fatal(err)
	}
	return modelDir, adapterDir, predPath
}

func pngBytes(t *testing.T, w, h int, c color.Color) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestEngine(t *testing.T) {
	modelDir, adapterDir, predPath := engineFixture(t)
	ctx := context.Background()
	e := NewEngine()
	var stages []string
	err := e.Load(ctx, schemas.LoadRequest{
		ModelDir: modelDir, Family: "idefics3", Threads: 1,
		Adapters:   map[string]string{"quality": adapterDir},
		Predictors: map[string]string{"quality": predPath},
	}, func(p schemas.LoadProgress) { stages = append(stages, p.Stage) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(stages, ","); got != "model,model,adapter,predictor,ready" {
		t.Errorf("load stages %s", got)
	}
	if info := e.Info(); info.Family != "idefics3" || info.Device != "cpu" || len(info.AdapterAspects) != 1 || len(info.PredictorAspects) != 1 {
		t.Errorf("info %+v", info)
	}
	if got, want := e.Info().Details["blas"], torch.BLAS(); got != want || got == "" {
		t.Errorf("info blas %q, want the loaded library %q", got, want)
	}
	imgPath := filepath.Join(t.TempDir(), "blue.png")
	if err := os.WriteFile(imgPath, pngBytes(t, 40, 30, color.RGBA{0, 0, 255, 255}), 0o644); err != nil {
		t.Fatal(err)
	}
	p := schemas.AspectPrompt{Round1: testPrompts.Round1, Round2: testPrompts.Round2}
	opts := schemas.ScoreOptions{
		Aspects:      []string{"quality", "correspondence"},
		Prompts:      map[string]schemas.AspectPrompt{"quality": p, "correspondence": p},
		MaxNewTokens: 4,
	}
	items := []schemas.ScoreItem{
		{Data: pngBytes(t, 64, 64, color.RGBA{200, 10, 10, 255}), Prompt: "a red square"},
		{Data: []byte("not an image at all"), Prompt: "x"},
		{Path: imgPath, Prompt: "a blue square"},
		{Path: filepath.Join(t.TempDir(), "missing.png"), Prompt: "x"},
	}
	res, err := e.Score(ctx, items, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(items) {
		t.Fatalf("got %d results for %d items", len(res), len(items))
	}
	for _, i := range []int{0, 2} {
		r := res[i]
		if r.Error != "" || r.Index != i {
			t.Fatalf("item %d: %+v", i, r)
		}
		q, c := r.Aspects["quality"], r.Aspects["correspondence"]
		if q.Source != schemas.SourcePredictor || c.Source != schemas.SourceWordProbs {
			t.Errorf("item %d: sources %q %q", i, q.Source, c.Source)
		}
		for _, a := range []schemas.AspectResult{q, c} {
			if math.IsNaN(a.MOS) || a.MOS < 0 || a.MOS > 5 || a.Rating == "" || len(a.WordProbs) != 5 {
				t.Errorf("item %d: bad result %+v", i, a)
			}
		}
	}
	if !strings.Contains(res[1].Error, "unrecognised format") {
		t.Errorf("corrupt image: error %q", res[1].Error)
	}
	if !strings.Contains(res[3].Error, "missing.png") {
		t.Errorf("missing file: error %q", res[3].Error)
	}

	// The adapter changes the quality pass: the same image rated with the
	// base model (no adapter for correspondence) differs from quality.
	// Both aspects use identical prompts, so only the adapter differs.
	if q, c := res[0].Aspects["quality"], res[0].Aspects["correspondence"]; q.WordProbs["good"] == c.WordProbs["good"] {
		t.Errorf("the quality adapter changed nothing: %v vs %v", q.WordProbs, c.WordProbs)
	}

	if _, err := e.Score(ctx, items[:1], schemas.ScoreOptions{Aspects: []string{"authenticity"}}); err == nil || !strings.Contains(err.Error(), "no prompts") {
		t.Errorf("aspect without prompts: %v", err)
	}
	loaded := e.model
	if err := e.Unload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := loaded.EncodeImage(mllm.Pixels{}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("model after Unload: %v, want it closed", err)
	}
	if _, err := e.Score(ctx, items[:1], opts); err != schemas.ErrNotLoaded {
		t.Errorf("score after unload: %v", err)
	}
}

func TestEngineLoadErrors(t *testing.T) {
	modelDir, adapterDir, _ := engineFixture(t)
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	// A predictor whose input width is not the model's vocabulary.
	m, err := mllm.Load(modelDir, mllm.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := tinyPredictor(t, m)
	cfg := p.Config()
	cfg.InputDim = 17
	wrong, err := newPredictorWithConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Save(bad); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  schemas.LoadRequest
		want string
	}{
		{"missing dir", schemas.LoadRequest{ModelDir: "/nonexistent"}, "does not exist"},
		{"family", schemas.LoadRequest{ModelDir: modelDir, Family: "llava"}, "unknown model family"},
		{"device gpu", schemas.LoadRequest{ModelDir: modelDir, Device: "gpu"}, `device "gpu": want cpu, cuda or cuda:N`},
		{"device cuda:x", schemas.LoadRequest{ModelDir: modelDir, Device: "cuda:x"}, "want cpu, cuda or cuda:N"},
		{"dtype", schemas.LoadRequest{ModelDir: modelDir, DType: "int4"}, "dtype"},
		{"option", schemas.LoadRequest{ModelDir: modelDir, Options: map[string]string{"colour": "red"}}, "unknown option"},
		{"adapter", schemas.LoadRequest{ModelDir: modelDir, Adapters: map[string]string{"quality": "/nonexistent"}}, "load adapter quality"},
		{"predictor width", schemas.LoadRequest{ModelDir: modelDir, Predictors: map[string]string{"quality": bad}}, "17-wide"},
		{"adapter ok, predictor missing", schemas.LoadRequest{ModelDir: modelDir, Adapters: map[string]string{"quality": adapterDir}, Predictors: map[string]string{"quality": "/nonexistent.safetensors"}}, "load predictor quality"},
	}
	if !torch.CUDABuild() { // this project's CPU-only libtorch
		for _, d := range []string{"cuda", "cuda:1"} {
			tests = append(tests, struct {
				name string
				req  schemas.LoadRequest
				want string
			}{"device " + d, schemas.LoadRequest{ModelDir: modelDir, Device: d},
				"this m3gate-sidecar was built against a CPU-only libtorch; rebuild with LIBTORCH=/path/to/libtorch-cuda, see README 'GPU build'"})
		}
	}
	for _, tt := range tests {
		e := NewEngine()
		err := e.Load(context.Background(), tt.req, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if _, err := e.Score(context.Background(), nil, schemas.ScoreOptions{Aspects: []string{"quality"}}); err != schemas.ErrNotLoaded {
			t.Errorf("%s: a failed load left a model loaded", tt.name)
		}
	}
}

// TestEngineDeviceCPU: device "cpu" (and "CPU") scores exactly as the
// default device, adapter and predictor included, and is reported as
// "cpu".
func TestEngineDeviceCPU(t *testing.T) {
	modelDir, adapterDir, predPath := engineFixture(t)
	ctx := context.Background()
	p := schemas.AspectPrompt{Round1: testPrompts.Round1, Round2: testPrompts.Round2}
	opts := schemas.ScoreOptions{
		Aspects:      []string{"quality", "correspondence"},
		Prompts:      map[string]schemas.AspectPrompt{"quality": p, "correspondence": p},
		MaxNewTokens: 3,
	}
	items := []schemas.ScoreItem{{Data: pngBytes(t, 48, 40, color.RGBA{30, 200, 90, 255}), Prompt: "a green field"}}
	var runs []schemas.ItemResult
	for _, dev := range []string{"", "cpu", "CPU"} {
		e := NewEngine()
		err := e.Load(ctx, schemas.LoadRequest{
			ModelDir: modelDir, Threads: 1, Device: dev,
			Adapters:   map[string]string{"quality": adapterDir},
			Predictors: map[string]string{"quality": predPath},
		}, nil)
		if err != nil {
			t.Fatalf("device %q: %v", dev, err)
		}
		if got := e.Info().Device; got != "cpu" {
			t.Errorf("device %q: Info().Device = %q, want cpu", dev, got)
		}
		res, err := e.Score(ctx, items, opts)
		if err != nil || res[0].Error != "" {
			t.Fatalf("device %q: %v %+v", dev, err, res)
		}
		runs = append(runs, res[0])
	}
	for i := 1; i < len(runs); i++ {
		for _, a := range opts.Aspects {
			got, want := runs[i].Aspects[a], runs[0].Aspects[a]
			if got.MOS != want.MOS || got.Description != want.Description || got.Rating != want.Rating || got.Source != want.Source {
				t.Errorf("run %d %s: %+v, default device gave %+v", i, a, got, want)
			}
			for w, pw := range want.WordProbs {
				if got.WordProbs[w] != pw {
					t.Errorf("run %d %s: P(%s) = %v, default device %v", i, a, w, got.WordProbs[w], pw)
				}
			}
		}
	}
	if runs[0].Aspects["quality"].Source != schemas.SourcePredictor {
		t.Errorf("quality scored by %q, want the predictor", runs[0].Aspects["quality"].Source)
	}
}

// TestEngineDeviceCUDA runs only where libtorch sees a GPU: scoring on
// cuda:0 (adapter and predictor included) matches the CPU.
func TestEngineDeviceCUDA(t *testing.T) {
	if !torch.CUDAAvailable() {
		t.Skip("no GPU visible to libtorch")
	}
	modelDir, adapterDir, predPath := engineFixture(t)
	ctx := context.Background()
	p := schemas.AspectPrompt{Round1: testPrompts.Round1, Round2: testPrompts.Round2}
	opts := schemas.ScoreOptions{Aspects: []string{"quality"}, Prompts: map[string]schemas.AspectPrompt{"quality": p}, MaxNewTokens: 3}
	items := []schemas.ScoreItem{{Data: pngBytes(t, 48, 40, color.RGBA{30, 200, 90, 255}), Prompt: "a green field"}}
	var got []schemas.AspectResult
	for _, dev := range []string{"cpu", "cuda"} {
		e := NewEngine()
		if err := e.Load(ctx, schemas.LoadRequest{ModelDir: modelDir, Device: dev,
			Adapters: map[string]string{"quality": adapterDir}, Predictors: map[string]string{"quality": predPath}}, nil); err != nil {
			t.Fatalf("device %s: %v", dev, err)
		}
		if want := map[string]string{"cpu": "cpu", "cuda": "cuda:0"}[dev]; e.Info().Device != want {
			t.Errorf("device %s: Info().Device = %q, want %q", dev, e.Info().Device, want)
		}
		res, err := e.Score(ctx, items, opts)
		if err != nil || res[0].Error != "" {
			t.Fatalf("device %s: %v %+v", dev, err, res)
		}
		got = append(got, res[0].Aspects["quality"])
	}
	if d := math.Abs(got[0].MOS - got[1].MOS); d > 1e-4 {
		t.Errorf("MOS on the CPU %v, on cuda:0 %v", got[0].MOS, got[1].MOS)
	}
	for w, pc := range got[0].WordProbs {
		if d := math.Abs(pc - got[1].WordProbs[w]); d > 1e-4 {
			t.Errorf("P(%s) on the CPU %v, on cuda:0 %v", w, pc, got[1].WordProbs[w])
		}
	}
}

// TestEngineImageSplittingFromProcessorConfig: without the image_splitting
// option the model's preprocessor_config.json decides (do_image_splitting),
// and split mode resizes to its size.longest_edge, not 4 tiles; the option
// overrides do_image_splitting either way.
func TestEngineImageSplittingFromProcessorConfig(t *testing.T) {
	modelDir := filepath.Join(t.TempDir(), "model")
	if err := mllm.WriteTiny(modelDir, "tiny", 7); err != nil {
		t.Fatal(err)
	}
	m, err := mllm.Load(modelDir, mllm.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	S := m.Config.Vision.ImageSize
	m.Close()
	cfgPath := filepath.Join(modelDir, "preprocessor_config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc["do_image_splitting"] = true
	doc["size"] = map[string]int{"longest_edge": 3 * S}
	raw, _ = json.Marshal(doc)
	if err := os.WriteFile(cfgPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	// A 6S×S image: resized to 3S wide, so 3 tiles (4S would give 4).
	img := image.NewRGBA(image.Rect(0, 0, 6*S, S))
	tests := []struct {
		name      string
		options   map[string]string
		wantSplit bool
		wantTiles int
	}{
		{"processor config", nil, true, 3 + 1},
		{"option off", map[string]string{OptionImageSplitting: "false"}, false, 1},
		{"option on", map[string]string{OptionImageSplitting: "true"}, true, 3 + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewEngine()
			if err := e.Load(context.Background(), schemas.LoadRequest{ModelDir: modelDir, Threads: 1, Options: tt.options}, nil); err != nil {
				t.Fatal(err)
			}
			defer e.Unload(context.Background())
			if e.image.Split != tt.wantSplit || e.image.LongestEdge != 3*S || e.image.Size != S {
				t.Errorf("image options %+v, want split %v, longest edge %d, size %d", e.image, tt.wantSplit, 3*S, S)
			}
			p, err := imageproc.Preprocess(img, e.image)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(p.Tiles); got != tt.wantTiles {
				t.Errorf("%d tiles, want %d", got, tt.wantTiles)
			}
		})
	}
}

// TestEngineMixed: dtype "mixed" loads with bf16 products (reported as
// "mixed" and as bf16 products on the model's layers) where the CPU has
// bf16 instructions, and is refused with the cause where it does not or
// the device is a GPU.
func TestEngineMixed(t *testing.T) {
	modelDir, _, _ := engineFixture(t)
	e := NewEngine()
	err := e.Load(context.Background(), schemas.LoadRequest{ModelDir: modelDir, DType: DTypeMixed, Threads: 1}, nil)
	if !torch.HasBF16Products() {
		if err == nil || !strings.Contains(err.Error(), "avx512_bf16") {
			t.Fatalf("mixed on a CPU without bf16 instructions: error %v, want one naming avx512_bf16", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Info().DType; got != DTypeMixed {
		t.Errorf("info dtype %q, want %q", got, DTypeMixed)
	}
	for name, l := range e.model.Linears() {
		if !l.BF16Products {
			t.Errorf("layer %s runs without bf16 products", name)
		}
	}
	if err := NewEngine().Load(context.Background(), schemas.LoadRequest{ModelDir: modelDir, DType: DTypeMixed, Device: "cuda"}, nil); err == nil {
		t.Error("mixed on a GPU device: no error")
	}
	f := newMiniCPMFixture(t)
	req := schemas.LoadRequest{ModelDir: f.model, Family: FamilyMiniCPMV25, DType: DTypeMixed, Threads: 1}
	if err := NewEngine().Load(context.Background(), req, nil); err == nil || !strings.Contains(err.Error(), "idefics3 family") {
		t.Errorf("mixed for MiniCPM-V: error %v, want one saying it is for idefics3", err)
	}
}
