package minicpmv

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// testImage is a deterministic textured image.
func testImage(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, color.RGBA{
				uint8(128 + 120*math.Sin(0.05*float64(x)+0.02*float64(y))),
				uint8(128 + 120*math.Cos(0.03*float64(x*y%97))),
				uint8((x*7 + y*3) % 256), 255})
		}
	}
	return img
}

// tinyModel writes the tiny model once per test binary.
func tinyModel(t *testing.T, kind gotch.DType) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := WriteTiny(dir, TinyOptions{Seed: 7, DType: kind}); err != nil {
		t.Fatal(err)
	}
	return dir
}

type refOut struct {
	Grid        []int       `json:"grid"`
	Sizes       [][2]int    `json:"sizes"`
	TgtSizes    [][2]int    `json:"tgt_sizes"`
	PositionIDs []int64     `json:"position_ids"`
	Vision      [][]float64 `json:"vision"`
	Resampler   []float64   `json:"resampler"`
	Embeds      []float64   `json:"embeds"`
	Logits      []float64   `json:"logits"`
	Vocab       int         `json:"vocab"`
	Greedy      []int64     `json:"greedy"`
	Beam        []int64     `json:"beam"`
}

func runReference(t *testing.T, dir, imgPath string, req map[string]any) refOut {
	t.Helper()
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import torch, numpy, PIL").Run(); err != nil {
		t.Skipf("skipping: %s cannot import torch, numpy, PIL (python3-torch python3-numpy python3-pil)", py)
	}
	in := filepath.Join(t.TempDir(), "in.json")
	out := filepath.Join(t.TempDir(), "out.json")
	raw, _ := json.Marshal(req)
	if err := os.WriteFile(in, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join("..", "..", "..", "scripts", "ref_minicpmv.py")
	if b, err := exec.Command(py, script, dir, imgPath, in, out).CombinedOutput(); err != nil {
		t.Fatalf("ref_minicpmv.py: %v\n%s", err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r refOut
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func maxDiff(a []float64, b []float64) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(a[i]-b[i]))
	}
	return d
}

func values(t *testing.T, run func() []float64) []float64 {
	t.Helper()
	var out []float64
	if err := torch.Run("minicpmv", false, func() error { out = run(); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMatchesReference compares the Go forward pass on the tiny model with
// scripts/ref_minicpmv.py (float64, plain torch) for images that are not
// sliced, sliced 2×1 and sliced into a taller grid: slicing grid and
// sizes, vision position ids, resampler output of every slice, merged
// embeddings (through the logits), logits at every position, greedy tokens
// and the reference's beam search (3 beams, repetition penalty 1.2).
func TestMatchesReference(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Python reference; skipped with -short")
	}
	dir := tinyModel(t, gotch.Float)
	m, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tc := range []struct {
		name string
		w, h int
		gen  int
	}{
		{"small", 300, 200, 6},
		{"2x1", 700, 500, 6},
		{"tall", 400, 1300, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := testImage(tc.w, tc.h)
			var buf bytes.Buffer
			if err := png.Encode(&buf, img); err != nil {
				t.Fatal(err)
			}
			imgPath := filepath.Join(t.TempDir(), "img.png")
			if err := os.WriteFile(imgPath, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := m.EncodeImage(img, 9)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Drop()
			parts := Render([]Message{{"user", "Please closely examine this AI-generated image: 'statue of a man'."}}, f.Placeholder(m.Config.QueryNum), true)
			ids, err := m.Tokenizer.EncodeParts(parts)
			if err != nil {
				t.Fatal(err)
			}
			ref := runReference(t, dir, imgPath, map[string]any{
				"ids": ids, "im_start": m.ids.imStart, "im_end": m.ids.imEnd, "max_slices": 9,
				"gen_tokens": tc.gen, "eos": m.ids.terminators, "num_beams": 3, "repetition_penalty": 1.2,
			})
			wantCols, wantRows := 0, 0
			if ref.Grid != nil {
				wantCols, wantRows = ref.Grid[0], ref.Grid[1]
			}
			if f.Cols != wantCols || f.RowsGrid != wantRows {
				t.Fatalf("grid %dx%d, reference %dx%d", f.Cols, f.RowsGrid, wantCols, wantRows)
			}
			if !slices.Equal(f.Sizes, ref.TgtSizes) {
				t.Fatalf("patch grids %v, reference %v", f.Sizes, ref.TgtSizes)
			}
			if !slices.Equal(f.PositionIDs, ref.PositionIDs) {
				t.Fatalf("position ids differ from the reference")
			}
			var res []float64
			for _, r := range f.Rows {
				res = append(res, values(t, func() []float64 { return torch.ToCPU(r, false).Float64Values() })...)
			}
			if len(res) != len(ref.Resampler) {
				t.Fatalf("%d resampler values, reference %d", len(res), len(ref.Resampler))
			}
			if d := maxDiff(res, ref.Resampler); d > 1e-4 {
				t.Errorf("resampler output differs by %g", d)
			} else {
				t.Logf("resampler max diff %.2g over %d slices", d, len(f.Rows))
			}
			out, cache, err := m.Prefill(ids, f)
			if err != nil {
				t.Fatal(err)
			}
			defer out.Drop()
			logits, err := m.Logits(out.Hidden)
			if err != nil {
				t.Fatal(err)
			}
			got := values(t, func() []float64 { return torch.ToCPU(logits, true).Float64Values() })
			if len(got) != len(ref.Logits) {
				t.Fatalf("%d logits, reference %d", len(got), len(ref.Logits))
			}
			scale := 0.0
			for _, v := range ref.Logits {
				scale = math.Max(scale, math.Abs(v))
			}
			if d := maxDiff(got, ref.Logits); d > 1e-4*math.Max(1, scale) {
				t.Errorf("logits differ by %g (max |logit| %g)", d, scale)
			} else {
				t.Logf("logits at %d positions: max diff %.2g (max |logit| %.3g)", len(ids), d, scale)
			}
			if tc.gen == 0 {
				return
			}
			greedy, err := m.Describe(context.Background(), cache, out.Last, DecodeOptions{MaxTokens: tc.gen})
			if err != nil {
				t.Fatal(err)
			}
			want := ref.Greedy
			if n := len(want); n > 0 && isIn(want[n-1], m.ids.terminators) {
				want = want[:n-1]
			}
			if !slices.Equal(greedy, want) {
				t.Errorf("greedy %v, reference %v", greedy, want)
			}
			bm, err := m.Describe(context.Background(), cache, out.Last, DecodeOptions{MaxTokens: tc.gen, NumBeams: 3, RepetitionPenalty: 1.2})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(bm, ref.Beam) {
				t.Errorf("beam %v, reference %v", bm, ref.Beam)
			}
		})
	}
}

// TestBF16CloseToF32 loads the tiny model written in bf16 and compares its
// logits with the f32 model's: close (bf16 rounding), not identical.
func TestBF16CloseToF32(t *testing.T) {
	f32, err := Load(tinyModel(t, gotch.Float), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f32.Close()
	bdir := tinyModel(t, gotch.BFloat16)
	b16, err := Load(bdir, LoadOptions{DType: gotch.BFloat16})
	if err != nil {
		t.Fatal(err)
	}
	defer b16.Close()
	img := testImage(500, 400)
	logits := func(m *Model) []float64 {
		f, err := m.EncodeImage(img, 9)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Drop()
		ids, err := m.Tokenizer.EncodeParts(Render([]Message{{"user", "Rate the image."}}, f.Placeholder(m.Config.QueryNum), true))
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := m.Prefill(ids, f)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Drop()
		return values(t, func() []float64 { return torch.ToCPU(out.Last, false).Float64Values() })
	}
	a, b := logits(f32), logits(b16)
	scale := 0.0
	for _, v := range a {
		scale = math.Max(scale, math.Abs(v))
	}
	d := maxDiff(a, b)
	t.Logf("bf16 vs f32 last-position logits: max diff %.3g, max |logit| %.3g", d, scale)
	if d > 0.1*scale {
		t.Errorf("bf16 logits differ from f32 by %g (max |logit| %g)", d, scale)
	}
	if d == 0 {
		t.Error("bf16 and f32 logits are identical: the bf16 path did not run in bf16")
	}
}
