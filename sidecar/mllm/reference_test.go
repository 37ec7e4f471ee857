package mllm

import (
	"encoding/json"
	"flag"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"
)

var updateRef = flag.Bool("update-ref", false, "rerun scripts/ref_idefics3.py and rewrite testdata/ref_idefics3_tiny.json")

// refScript is the Python reference (a variable so a test can point it at
// a deliberately broken copy).
var refScript = "../../scripts/ref_idefics3.py"

const refFixture = "testdata/ref_idefics3_tiny.json"

// formulaPixels is the test image the Python reference builds too:
// pixel[c, y, x] = 0.9·sin(0.37·x + 0.23·y + 1.1·c).
func formulaPixels(size int) Pixels {
	v := make([]float32, 3*size*size)
	for c := 0; c < 3; c++ {
		for y := 0; y < size; y++ {
			for x := 0; x < size; x++ {
				v[(c*size+y)*size+x] = float32(0.9 * math.Sin(0.37*float64(x)+0.23*float64(y)+1.1*float64(c)))
			}
		}
	}
	return Pixels{Tiles: [][]float32{v}, Size: size}
}

type refOutput struct {
	IDs      []int64     `json:"ids"`
	Features [][]float32 `json:"features"`
	Logits   [][]float32 `json:"logits"`
}

// refIDs is the fixed prompt of the reference: a chat turn with the image.
func refIDs(t *testing.T, m *Model, f *ImageFeatures) []int64 {
	seq, err := m.EncodeChat([]Message{UserMessage("Rate the quality: 'a cat, HDR' — ok?", true)}, true, []*ImageFeatures{f})
	if err != nil {
		t.Fatal(err)
	}
	return seq.Tokens
}

func runRefScript(t *testing.T, dir string, ids []int64) refOutput {
	t.Helper()
	in := filepath.Join(t.TempDir(), "ids.json")
	out := filepath.Join(t.TempDir(), "out.json")
	raw, _ := json.Marshal(map[string]any{"ids": ids})
	if err := os.WriteFile(in, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", refScript, dir, in, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ref_idefics3.py: %v\n%s", err, b)
	}
	var r refOutput
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func pythonHasTorch() bool {
	return exec.Command("/usr/bin/python3", "-c", "import torch").Run() == nil
}

// compareRef checks the Go forward pass of the tiny model against a
// reference output within 1e-4.
func compareRef(t *testing.T, m *Model, ref refOutput) {
	t.Helper()
	f, err := m.EncodeImage(formulaPixels(m.Config.Vision.ImageSize))
	if err != nil {
		t.Fatal(err)
	}
	gotF := floats(f.Tokens)
	var wantF []float32
	for _, r := range ref.Features {
		wantF = append(wantF, r...)
	}
	if d := maxAbsDiff(gotF, wantF); d > 1e-4 {
		t.Errorf("image features differ from the reference by %g", d)
	}
	out, _, err := m.Prefill([]Sequence{{Tokens: ref.IDs, Images: []*ImageFeatures{f}}}, ForwardOptions{Logits: LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	got := floats(out.Logits)
	var want []float32
	for _, r := range ref.Logits {
		want = append(want, r...)
	}
	d := maxAbsDiff(got, want)
	t.Logf("logits: max |go-ref| = %.2g over %d values", d, len(want))
	if d > 1e-4 {
		t.Errorf("logits differ from the reference by %g (%d values)", d, len(want))
	}
}

// TestReferenceFixture compares against the committed outputs of
// scripts/ref_idefics3.py on the seeded tiny model.
func TestReferenceFixture(t *testing.T) {
	m := loadTiny(t, 0)
	if *updateRef {
		f, err := m.EncodeImage(formulaPixels(m.Config.Vision.ImageSize))
		if err != nil {
			t.Fatal(err)
		}
		ref := runRefScript(t, tinyModelDir(t), refIDs(t, m, f))
		raw, _ := json.Marshal(ref)
		if err := os.WriteFile(refFixture, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(refFixture)
	if err != nil {
		t.Fatal(err)
	}
	var ref refOutput
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	f, _ := m.EncodeImage(formulaPixels(m.Config.Vision.ImageSize))
	if ids := refIDs(t, m, f); !equalIDs(ids, ref.IDs) {
		t.Fatalf("the tiny model's prompt encodes to %v, the fixture has %v (tokenizer changed? rerun with -update-ref)", ids, ref.IDs)
	}
	compareRef(t, m, ref)
}

// TestReferenceScript reruns the Python reference when /usr/bin/python3
// has torch.
func TestReferenceScript(t *testing.T) {
	if testing.Short() || !pythonHasTorch() {
		t.Skip("needs /usr/bin/python3 with torch")
	}
	m := loadTiny(t, 0)
	f, _ := m.EncodeImage(formulaPixels(m.Config.Vision.ImageSize))
	compareRef(t, m, runRefScript(t, tinyModelDir(t), refIDs(t, m, f)))
}

func equalIDs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReferenceScriptBF16 runs the Python reference on a bf16 checkpoint
// (its own BF16 decoding) against the Go model loaded as f32.
func TestReferenceScriptBF16(t *testing.T) {
	if testing.Short() || !pythonHasTorch() {
		t.Skip("needs /usr/bin/python3 with torch")
	}
	dir := filepath.Join(t.TempDir(), "bf16")
	if err := WriteTinyWith(dir, TinyOptions{Size: "tiny", Seed: tinySeed, DType: gotch.BFloat16}); err != nil {
		t.Fatal(err)
	}
	m, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := m.EncodeImage(formulaPixels(m.Config.Vision.ImageSize))
	compareRef(t, m, runRefScript(t, dir, refIDs(t, m, f)))
}
