package metrics

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// TestEvaluateKnownValues evaluates prediction files (JSONL and CSV with
// the same rows) built from the scipy reference vectors and checks the
// report against scipy's values.
func TestEvaluateKnownValues(t *testing.T) {
	ref := map[string]refCase{}
	for _, c := range loadRef(t) {
		ref[c.Name] = c
	}
	want := map[string]refCase{"quality": ref["other_scale"], "correspondence": ref["sigmoid_pred"]}
	for _, file := range []string{"testdata/predictions.jsonl", "testdata/predictions.csv"} {
		preds, err := ReadPredictions(file)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := Evaluate(preds, EvalOptions{Bootstrap: 200, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Results) != 2 {
			t.Fatalf("%s: %d results", file, len(rep.Results))
		}
		for _, res := range rep.Results {
			w := want[res.Aspect]
			if res.N != len(w.X) || math.Abs(res.SRCC-w.SRCC) > 1e-9 || math.Abs(res.PLCC-w.PLCC) > 1e-9 ||
				math.Abs(res.KRCC-w.KRCC) > 1e-9 || math.Abs(res.RMSE-w.RMSE) > 1e-9 || math.Abs(res.PLCCFitted-*w.PLCCFitted) > 1e-4 {
				t.Errorf("%s %s: %+v, want scipy %+v", file, res.Aspect, res, w)
			}
			for name, ci := range res.CI {
				point := map[string]float64{"srcc": res.SRCC, "plcc": res.PLCC, "krcc": res.KRCC, "rmse": res.RMSE, "plcc_fitted": res.PLCCFitted}[name]
				if !(ci.Lo < point && point < ci.Hi) || (name != "rmse" && ci.Hi-ci.Lo > 0.5) {
					t.Errorf("%s %s: CI %v around %v", res.Aspect, name, ci, point)
				}
			}
			if len(res.CI) != 5 {
				t.Errorf("%s: CIs %v", res.Aspect, res.CI)
			}
		}
	}
}

func TestBootstrapSeeded(t *testing.T) {
	c := loadRef(t)[0]
	a, err := Bootstrap(c.X, c.Y, iqa.SRCC, BootstrapOptions{N: 300, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Bootstrap(c.X, c.Y, iqa.SRCC, BootstrapOptions{N: 300, Seed: 1})
	d, _ := Bootstrap(c.X, c.Y, iqa.SRCC, BootstrapOptions{N: 300, Seed: 2})
	if a != b {
		t.Errorf("same seed, different intervals %v %v", a, b)
	}
	if a == d {
		t.Errorf("different seeds, same interval %v", a)
	}
	narrow, _ := Bootstrap(c.X, c.Y, iqa.SRCC, BootstrapOptions{N: 300, Seed: 1, Level: 0.5})
	if !(narrow.Hi-narrow.Lo < a.Hi-a.Lo) {
		t.Errorf("50%% interval %v not narrower than 95%% %v", narrow, a)
	}
	// All resamples undefined: constant x.
	if _, err := Bootstrap([]float64{1, 1, 1}, []float64{1, 2, 3}, iqa.SRCC, BootstrapOptions{N: 10}); err == nil {
		t.Error("constant input: no error")
	}
}

func TestReadPredictionsBad(t *testing.T) {
	_, err := ReadPredictions("testdata/predictions_bad.jsonl")
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"3 bad lines", "predictions_bad.jsonl:2: needs predicted and mos", "predictions_bad.jsonl:3:", "predictions_bad.jsonl:4: no image"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q: %v", s, err)
		}
	}
	_, err = ReadPredictions("testdata/predictions_bad.csv")
	if err == nil || !strings.Contains(err.Error(), "predictions_bad.csv:3:") {
		t.Errorf("csv error = %v", err)
	}
}

func TestWriteOutputs(t *testing.T) {
	preds, err := ReadPredictions("testdata/predictions.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Evaluate(preds, EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("M3GATE_PLOT_DIR") // set to keep the files for a look
	if dir == "" {
		dir = t.TempDir()
	}
	files, err := rep.WriteOutputs(dir, preds)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 {
		t.Fatalf("files %v", files)
	}
	var back EvalReport
	b, _ := os.ReadFile(filepath.Join(dir, "report.json"))
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 2 || back.Results[1].SRCC != rep.Results[1].SRCC {
		t.Errorf("report.json: %v %+v", err, back)
	}
	f, _ := os.Open(filepath.Join(dir, "predictions.csv"))
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(rows) != len(preds)+1 || rows[0][5] != "predicted_fitted" || rows[1][5] == "" {
		t.Errorf("predictions.csv: %v, %d rows, %v", err, len(rows), rows[:2])
	}
	b, _ = os.ReadFile(filepath.Join(dir, "scatter_quality.png"))
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != plotW || img.Bounds().Dy() != plotH {
		t.Errorf("size %v", img.Bounds())
	}
	// Each source's colour appears in the image.
	for i := 0; i < 3; i++ {
		c := palette[i]
		found := false
		for y := 0; y < plotH && !found; y++ {
			for x := 0; x < plotW; x++ {
				r, g, bl, _ := img.At(x, y).RGBA()
				if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B {
					found = true
					break
				}
			}
		}
		if !found {
			t.Errorf("colour %v of source %d not drawn", c, i)
		}
	}
}

// BenchmarkEvaluate3000 is one aspect of a 3,000-image test set with 1,000
// bootstrap resamples (the default of m3gate eval).
func BenchmarkEvaluate3000(b *testing.B) {
	preds := make([]Prediction, 3000)
	for i := range preds {
		mos := 5 * float64(i) / 3000
		preds[i] = Prediction{Image: "x", Aspect: "quality", MOS: mos, Predicted: 2.5 + 2*math.Tanh(mos-2.5) + 0.3*math.Sin(float64(i)*1.7)}
	}
	for b.Loop() {
		if _, err := Evaluate(preds, EvalOptions{Bootstrap: 1000, Seed: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBootstrapWarmFitMatchesFullFit checks the shortcut of the fitted-PLCC
// bootstrap (bootstrapIter iterations from the full-data optimum) against
// full fits from the usual initialisation.
func TestBootstrapWarmFitMatchesFullFit(t *testing.T) {
	for _, c := range loadRef(t) {
		if c.PLCCFitted == nil {
			continue
		}
		b, err := FitLogistic(c.X, c.Y)
		if err != nil {
			t.Fatal(err)
		}
		opts := BootstrapOptions{N: 50, Seed: 3}
		warm, err := Bootstrap(c.X, c.Y, func(x, y []float64) (float64, error) {
			return iqa.PLCC(fitFrom(x, y, b, bootstrapIter).ApplyAll(x), y)
		}, opts)
		if err != nil {
			t.Fatal(err)
		}
		full, err := Bootstrap(c.X, c.Y, func(x, y []float64) (float64, error) {
			r, _, err := FittedPLCC(x, y)
			return r, err
		}, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: warm %v full %v", c.Name, warm, full)
		if math.Abs(warm.Lo-full.Lo) > 1e-3 || math.Abs(warm.Hi-full.Hi) > 1e-3 {
			t.Errorf("%s: warm-start CI %v, full-fit CI %v", c.Name, warm, full)
		}
	}
}

func TestReadPredictionsWithLookup(t *testing.T) {
	dir := t.TempDir()
	jl := filepath.Join(dir, "p.jsonl")
	os.WriteFile(jl, []byte(`{"image":"a.jpg","aspect":"quality","predicted":3.1}
{"image":"b.jpg","aspect":"quality","predicted":2.0,"mos":1.5}
`), 0o644)
	cs := filepath.Join(dir, "p.csv")
	os.WriteFile(cs, []byte("image,aspect,predicted,mos\na.jpg,quality,3.1,\nb.jpg,quality,2.0,1.5\n"), 0o644)
	lookup := func(image, aspect string) (float64, string, bool) {
		if image == "a.jpg" && aspect == "quality" {
			return 4.2, "sd1.5", true
		}
		if image == "b.jpg" {
			return 9, "glide", true
		}
		return 0, "", false
	}
	for f, badLine := range map[string]string{jl: ":1:", cs: ":2:"} {
		preds, err := ReadPredictionsWith(f, lookup)
		if err != nil {
			t.Fatal(err)
		}
		if preds[0].MOS != 4.2 || preds[0].Source != "sd1.5" || preds[1].MOS != 1.5 || preds[1].Source != "glide" {
			t.Errorf("%s: %+v", f, preds)
		}
		if _, err := ReadPredictions(f); err == nil {
			t.Errorf("%s: missing mos accepted without lookup", f)
		}
		none := func(string, string) (float64, string, bool) { return 0, "", false }
		if _, err := ReadPredictionsWith(f, none); err == nil || !strings.Contains(err.Error(), badLine) {
			t.Errorf("%s: unknown image err = %v", f, err)
		}
	}
}

// TestReadScoreOutput reads `m3gate score --json` lines as predictions, the
// true MOS coming from the manifest.
func TestReadScoreOutput(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "scores.jsonl")
	os.WriteFile(f, []byte(`{"image":"a.jpg","prompt":"x","aspects":{"quality":{"mos":3.5,"rating":"good","source":"predictor"},"correspondence":{"mos":1.25,"rating":"poor","source":"word_probs"}}}
{"image":"b.jpg","aspects":{"quality":{"mos":2}}}
`), 0o644)
	truth := map[string]float64{"a.jpg/quality": 4, "a.jpg/correspondence": 1, "b.jpg/quality": 2.5}
	lookup := func(image, aspect string) (float64, string, bool) {
		m, ok := truth[image+"/"+aspect]
		return m, "gen", ok
	}
	got, err := ReadPredictionsWith(f, lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := []Prediction{
		{Image: "a.jpg", Aspect: "correspondence", Predicted: 1.25, MOS: 1, Source: "gen"},
		{Image: "a.jpg", Aspect: "quality", Predicted: 3.5, MOS: 4, Source: "gen"},
		{Image: "b.jpg", Aspect: "quality", Predicted: 2, MOS: 2.5, Source: "gen"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d predictions %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("prediction %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := ReadPredictions(f); err == nil || !strings.Contains(err.Error(), "needs --manifest") {
		t.Errorf("without a manifest: err = %v", err)
	}
	os.WriteFile(f, []byte(`{"image":"c.jpg","error":"decode image: unrecognised format"}`+"\n"), 0o644)
	if _, err := ReadPredictionsWith(f, lookup); err == nil || !strings.Contains(err.Error(), "c.jpg was not scored") {
		t.Errorf("failed image: err = %v", err)
	}
}
