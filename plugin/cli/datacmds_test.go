package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/distill/distillfake"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

// sharedAGIQA3K returns the shared AGIQA-3K folder or skips.
func sharedAGIQA3K(t *testing.T) string {
	return filepath.Join(testenv.SharedData(t, "agiqa-3k/data.csv"), "agiqa-3k")
}

// TestDataConvertDistillEval runs the data commands end to end on 32
// shared AGIQA-3K images: convert, distill against a fake Gemini teacher
// (interrupting nothing; resume is covered in plugin/distill), and eval.
func TestDataConvertDistillEval(t *testing.T) {
	src := sharedAGIQA3K(t)
	work := t.TempDir()
	manifest := filepath.Join(work, "a3k.jsonl")
	code, out, errOut := run(t, nil, "", "data", "convert", "--format", "agiqa-3k",
		"--in", filepath.Join(src, "data.csv"), "--images", filepath.Join(src, "images"), "--out", manifest)
	if code != ExitOK || !strings.Contains(out, "wrote 2682 records") {
		t.Fatalf("convert: code %d\n%s\n%s", code, out, errOut)
	}

	fake := distillfake.NewGemini()
	defer fake.Close()
	fake.SetKey("gem-key-XYZ")
	conv := filepath.Join(work, "conv.jsonl")
	env := []string{"GEMINI_API_KEY=gem-key-XYZ"}
	code, out, errOut = run(t, env, "", "distill", "--manifest", manifest, "--format", "gemini",
		"--endpoint", fake.Endpoint(), "--model", "gemini-1.5-pro", "--limit", "32", "--concurrency", "4",
		"--out", conv, "--price-prompt", "0.001", "--price-completion", "0.002")
	if code != ExitOK {
		t.Fatalf("distill: code %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "32 items: 0 cached, 32 fetched") || fake.Calls() != 32 {
		t.Errorf("distill summary:\n%s (fake calls %d)", out, fake.Calls())
	}
	if strings.Contains(out+errOut, "gem-key-XYZ") {
		t.Error("key printed")
	}
	rep := &labels.Report{}
	convs, err := labels.ReadConversations(conv, rep)
	if err != nil || len(convs) != 64 || len(rep.Problems) != 0 {
		t.Fatalf("conversations: %v, %d, %v", err, len(convs), rep.Problems)
	}
	// Rerun: everything from the cache.
	code, out, _ = run(t, env, "", "distill", "--manifest", manifest, "--format", "gemini",
		"--endpoint", fake.Endpoint(), "--model", "gemini-1.5-pro", "--limit", "32", "--out", conv)
	if code != ExitOK || !strings.Contains(out, "32 cached") || fake.Calls() != 32 {
		t.Errorf("rerun: code %d calls %d\n%s", code, fake.Calls(), out)
	}
	// Missing key: a clear error naming the variable.
	code, _, errOut = run(t, nil, "", "distill", "--manifest", manifest, "--format", "gemini",
		"--endpoint", fake.Endpoint(), "--model", "m", "--out", filepath.Join(work, "x.jsonl"))
	if code != ExitError || !strings.Contains(errOut, "GEMINI_API_KEY") {
		t.Errorf("missing key: code %d %s", code, errOut)
	}

	// Eval: predictions = MOS with a monotone distortion.
	m, _, err := dataset.ReadManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	preds := filepath.Join(work, "preds.jsonl")
	var sb strings.Builder
	for _, r := range m.Records[:200] {
		q := r.MOS[iqa.Quality]
		fmt.Fprintf(&sb, `{"image":%q,"aspect":"quality","predicted":%v,"mos":%v,"source":%q}`+"\n", r.Name, q*q, q, r.Source)
	}
	os.WriteFile(preds, []byte(sb.String()), 0o644)
	evalDir := filepath.Join(work, "eval")
	code, out, errOut = run(t, nil, "", "eval", "--predictions", preds, "--out", evalDir, "--bootstrap", "50")
	if code != ExitOK {
		t.Fatalf("eval: code %d\n%s\n%s", code, out, errOut)
	}
	var report struct {
		Results []struct {
			SRCC, KRCC float64
			N          int
		}
	}
	b, _ := os.ReadFile(filepath.Join(evalDir, "report.json"))
	if err := json.Unmarshal(b, &report); err != nil || len(report.Results) != 1 || report.Results[0].N != 200 {
		t.Fatalf("report.json: %v %s", err, b)
	}
	// A monotone map keeps ranks: SRCC and KRCC are exactly 1.
	if report.Results[0].SRCC != 1 || report.Results[0].KRCC != 1 {
		t.Errorf("monotone predictions: %+v", report.Results[0])
	}
	for _, f := range []string{"predictions.csv", "scatter_quality.png"} {
		if _, err := os.Stat(filepath.Join(evalDir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestDataConvertProblemsExitCode(t *testing.T) {
	td, _ := filepath.Abs("../dataset/testdata")
	out := filepath.Join(t.TempDir(), "m.jsonl")
	args := []string{"data", "convert", "--format", "agiqa-3k", "--in", filepath.Join(td, "agiqa3k_broken.csv"), "--images", filepath.Join(td, "images"), "--out", out}
	code, _, errOut := run(t, nil, "", args...)
	if code != ExitError || !strings.Contains(errOut, "agiqa3k_broken.csv:11: missing-image") || !strings.Contains(errOut, "8 problems") {
		t.Errorf("code %d\n%s", code, errOut)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("manifest written despite problems")
	}
	code, _, _ = run(t, nil, "", append(args, "--allow-missing")...)
	if code != ExitError {
		t.Errorf("--allow-missing with parse problems: code %d", code)
	}
	code, stdout, _ := run(t, nil, "", append(args, "--allow-problems")...)
	if code != ExitOK || !strings.Contains(stdout, "wrote 2 records") {
		t.Errorf("--allow-problems: code %d %s", code, stdout)
	}
	code, _, _ = run(t, nil, "", "data", "convert", "--format", "koniq", "--in", "x", "--out", "y")
	if code != ExitUsage {
		t.Errorf("bad format: code %d", code)
	}
}

func TestDataConvertSplitsAndEvalWithManifest(t *testing.T) {
	td, _ := filepath.Abs("../dataset/testdata")
	work := t.TempDir()
	manifest := filepath.Join(work, "m.jsonl")
	code, out, errOut := run(t, nil, "", "data", "convert", "--format", "agiqa-1k", "--in", filepath.Join(td, "agiqa1k_small.csv"),
		"--out", manifest, "--test-fraction", "0.5", "--seed", "3", "--split-by-prompt=false")
	if code != ExitOK || !strings.Contains(out, "3 train, 3 test") {
		t.Fatalf("convert: %d\n%s\n%s", code, out, errOut)
	}
	m, _, err := dataset.ReadManifest(manifest)
	if err != nil || len(m.Records) != 6 {
		t.Fatalf("manifest: %v", err)
	}
	preds := filepath.Join(work, "p.csv")
	var sb strings.Builder
	sb.WriteString("image,aspect,predicted\n")
	for i, r := range m.Records {
		fmt.Fprintf(&sb, "%s,quality,%v\n", r.Image, r.MOS[iqa.Quality]+0.01*float64(i%2))
	}
	os.WriteFile(preds, []byte(sb.String()), 0o644)
	code, out, errOut = run(t, nil, "", "eval", "--predictions", preds, "--manifest", manifest, "--out", filepath.Join(work, "ev"), "--bootstrap", "0")
	if code != ExitOK || !strings.Contains(out, "quality") {
		t.Fatalf("eval: %d\n%s\n%s", code, out, errOut)
	}
	b, _ := os.ReadFile(filepath.Join(work, "ev", "predictions.csv"))
	if !strings.Contains(string(b), "dreamStudio") || !strings.Contains(string(b), "deepai") {
		t.Errorf("sources not filled from the manifest:\n%s", b)
	}
	code, _, errOut = run(t, nil, "", "eval", "--predictions", preds, "--out", filepath.Join(work, "ev2"))
	if code != ExitError || !strings.Contains(errOut, "no mos column (looked for mos, gt, gt_mos, mos_gt, label, target; name it with --mos-col NAME); the header has: image, aspect, predicted") {
		t.Errorf("eval without manifest: %d %s", code, errOut)
	}
}

// TestEvalReproducesScipy runs m3gate eval on the metrics package's
// predictions file and compares report.json with the values scipy computed
// for the same vectors (plugin/metrics/testdata/ref_metrics.py).
func TestEvalReproducesScipy(t *testing.T) {
	td, _ := filepath.Abs("../metrics/testdata")
	out := filepath.Join(t.TempDir(), "ev")
	code, stdout, errOut := run(t, nil, "", "eval", "--predictions", filepath.Join(td, "predictions.jsonl"), "--out", out, "--bootstrap", "0")
	if code != ExitOK {
		t.Fatalf("eval: %d\n%s\n%s", code, stdout, errOut)
	}
	var ref struct {
		Cases []struct {
			Name                   string
			SRCC, PLCC, KRCC, RMSE float64
			PLCCFitted             float64 `json:"plcc_fitted"`
		}
	}
	b, _ := os.ReadFile(filepath.Join(td, "ref_metrics.json"))
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Results []struct {
			Aspect                 string
			SRCC, PLCC, KRCC, RMSE float64
			PLCCFitted             float64 `json:"plcc_fitted"`
		}
	}
	b, _ = os.ReadFile(filepath.Join(out, "report.json"))
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Results) != 2 {
		t.Fatalf("report.json: %v\n%s", err, b)
	}
	caseOf := map[string]string{"quality": "other_scale", "correspondence": "sigmoid_pred"}
	matched := 0
	for _, r := range rep.Results {
		for _, c := range ref.Cases {
			if c.Name != caseOf[r.Aspect] {
				continue
			}
			matched++
			if c.SRCC == 0 || r.SRCC == 0 {
				t.Fatalf("%s: empty values %+v %+v", r.Aspect, r, c)
			}
			d := []float64{r.SRCC - c.SRCC, r.PLCC - c.PLCC, r.KRCC - c.KRCC, r.RMSE - c.RMSE}
			for i, v := range d {
				if v > 1e-9 || v < -1e-9 {
					t.Errorf("%s metric %d differs from scipy by %g", r.Aspect, i, v)
				}
			}
			if v := r.PLCCFitted - c.PLCCFitted; v > 1e-4 || v < -1e-4 {
				t.Errorf("%s fitted PLCC differs from scipy by %g", r.Aspect, v)
			}
		}
	}
	if matched != 2 {
		t.Errorf("compared %d aspects with scipy, want 2", matched)
	}
}
