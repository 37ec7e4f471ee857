package train

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// tinyFinetune returns options for a short run on the tiny model and a
// subset of the shared data (4 training, 2 validation conversations).
func tinyFinetune(t testing.TB, out string) FinetuneOptions {
	t.Helper()
	dir := sharedAGIQA(t)
	data := subset(t, dir, map[string]int{"train": 4, "test": 2}, "quality")
	o := DefaultFinetuneOptions()
	o.Model, o.Data, o.Images, o.Out = tinyModelDir(t), data, filepath.Join(dir, "images"), out
	o.Aspect = "quality"
	o.LoRA.R, o.LoRA.LoraAlpha = 8, 16
	o.BatchSize, o.GradAccum = 2, 2
	o.LR, o.WarmupRatio = 5e-3, 0.1
	o.Epochs = 5 // 2 micro-batches per epoch, 2 per step: 5 steps
	o.SaveEvery, o.Keep = 2, 0
	return o
}

func TestFinetuneLossFalls(t *testing.T) {
	skipShort(t)
	o := tinyFinetune(t, t.TempDir())
	o.Epochs = 12 // 12 steps over the same 4 conversations
	o.LoRA.LoraDropout = 0
	o.LR = 2e-2
	res, err := Finetune(context.Background(), o, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 12 || len(res.Losses) != 12 {
		t.Fatalf("steps: got %d (%d losses), want 12", res.Steps, len(res.Losses))
	}
	mean := func(v []float64) float64 {
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	first, last := mean(res.Losses[:3]), mean(res.Losses[9:])
	t.Logf("losses %.4f", res.Losses)
	if !(last < first*0.9) {
		t.Errorf("training loss did not fall: first 3 steps %.4f, last 3 %.4f", first, last)
	}
	if math.IsNaN(res.ValLoss) || res.ValAcc < 0 || res.ValAcc > 1 {
		t.Errorf("validation: loss %v, accuracy %v", res.ValLoss, res.ValAcc)
	}
	// The final adapter is a PEFT directory the lora package loads.
	m := loadTiny(t)
	ad, err := attachAdapter(m, o.Out, defaultLoRA(), 0)
	if err != nil {
		t.Fatalf("load final adapter: %v", err)
	}
	if got, want := len(ad.a.Layers), 4*m.Config.Text.NumHiddenLayers; got != want {
		t.Errorf("adapted modules: got %d, want %d (q/k/v/o of the text layers only)", got, want)
	}
}

// TestFinetuneResume stops a run after 3 of 5 steps, resumes it and
// compares the final adapter with an uninterrupted run's.
func TestFinetuneResume(t *testing.T) {
	skipShort(t)
	full := uninterrupted(t)
	half := full
	half.Out = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	half.onStep = func(step int) {
		if step == 3 {
			cancel()
		}
	}
	res, err := Finetune(ctx, half, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: got %v, want context.Canceled", err)
	}
	if res.Steps != 3 {
		t.Fatalf("interrupted run: %d steps, want 3", res.Steps)
	}
	half.onStep = nil
	half.Resume = true
	res, err = Finetune(context.Background(), half, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 5 || len(res.Losses) != 2 {
		t.Fatalf("resumed run: %d steps (%d this run), want 5 (2)", res.Steps, len(res.Losses))
	}
	sameAdapter(t, full.Out, half.Out)
	// Resuming a finished run does nothing.
	res, err = Finetune(context.Background(), half, nil)
	if err != nil || len(res.Losses) != 0 || res.Steps != 5 {
		t.Errorf("resume of a finished run: err %v, %d new steps, step %d", err, len(res.Losses), res.Steps)
	}
}

// TestFinetuneResumeAfterKill drops the checkpoint a cancelled run writes
// on its way out, as a killed process never writes it: the run resumes
// from the periodic checkpoint (step 2 of 5) and still ends with the
// uninterrupted run's adapter.
func TestFinetuneResumeAfterKill(t *testing.T) {
	skipShort(t)
	full := uninterrupted(t)
	killed := full
	killed.Out = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	killed.onStep = func(step int) {
		if step == 3 {
			cancel()
		}
	}
	if _, err := Finetune(ctx, killed, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: got %v, want context.Canceled", err)
	}
	if err := os.RemoveAll(filepath.Join(killed.Out, "checkpoint-000003")); err != nil {
		t.Fatal(err)
	}
	// A checkpoint cut short (no trainer_state.json) is ignored.
	if err := os.MkdirAll(filepath.Join(killed.Out, "checkpoint-000004"), 0o755); err != nil {
		t.Fatal(err)
	}
	killed.onStep = nil
	killed.Resume = true
	res, err := Finetune(context.Background(), killed, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 5 || len(res.Losses) != 3 {
		t.Fatalf("resumed run: %d steps (%d this run), want 5 (3)", res.Steps, len(res.Losses))
	}
	sameAdapter(t, full.Out, killed.Out)
}

var (
	fullOnce sync.Once
	fullOpts FinetuneOptions
	fullErr  error
)

// uninterrupted runs tinyFinetune's 5 steps once per test binary and
// returns its options (Out holds the final adapter).
func uninterrupted(t *testing.T) FinetuneOptions {
	t.Helper()
	o := tinyFinetune(t, "")
	fullOnce.Do(func() {
		fullOpts = o
		fullOpts.Out = filepath.Join(testRoot, "finetune-full")
		_, fullErr = Finetune(context.Background(), fullOpts, nil)
	})
	if fullErr != nil {
		t.Fatal(fullErr)
	}
	o.Out = fullOpts.Out
	return o
}

// sameAdapter fails unless the adapters in dirs a and b agree within 1e-6.
func sameAdapter(t *testing.T, da, db string) {
	t.Helper()
	a := readAll(t, filepath.Join(da, lora.WeightsFile))
	b := readAll(t, filepath.Join(db, lora.WeightsFile))
	if len(a) != len(b) {
		t.Fatalf("tensors: %d vs %d", len(a), len(b))
	}
	worst := 0.0
	for name, va := range a {
		vb, ok := b[name]
		if !ok {
			t.Fatalf("resumed adapter lacks %s", name)
		}
		for i := range va {
			worst = math.Max(worst, math.Abs(va[i]-vb[i]))
		}
	}
	if worst > 1e-6 {
		t.Errorf("resumed adapter differs from the uninterrupted one by %g", worst)
	}
}

func readAll(t testing.TB, path string) map[string][]float64 {
	t.Helper()
	ck, err := tensorio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	out := map[string][]float64{}
	for _, n := range ck.Names() {
		x, err := ck.TensorAs(n, gotch.Double)
		if err != nil {
			// F64 is not a safetensors dtype here: read F32 and widen.
			x, err = ck.TensorAs(n, gotch.Float)
			if err != nil {
				t.Fatal(err)
			}
		}
		out[n] = x.MustTotype(gotch.Double, true).Float64Values(true)
	}
	return out
}

// testLog sends progress lines to t.Log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(string(p))
	return len(p), nil
}

// TestLossMatchesFullLogits checks the loss (lm_head on the labelled rows
// only) against log-softmax of the full [B, T, V] logits at every position
// whose next token is an assistant token.
func TestLossMatchesFullLogits(t *testing.T) {
	o := tinyFinetune(t, t.TempDir())
	o.LoRA.LoraDropout = 0
	f, _, err := newFinetuner(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	exs := f.microBatch(0)
	if len(exs) != 2 {
		t.Fatalf("micro-batch of %d, want 2", len(exs))
	}
	var got float64
	var n int
	err = torch.Run("test", false, func() error {
		loss, nn, _, err := f.forward(exs, false)
		if err != nil {
			return err
		}
		got, n = loss.Float64Values(true)[0], nn
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]mllm.Sequence, len(exs))
	for i, ex := range exs {
		ft, err := f.feats.get(ex.rec.Image)
		if err != nil {
			t.Fatal(err)
		}
		seqs[i] = mllm.Sequence{Tokens: ex.tokens, Images: []*mllm.ImageFeatures{ft}}
	}
	out, _, err := f.m.Prefill(seqs, mllm.ForwardOptions{Logits: mllm.LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	logp := out.Logits.MustLogSoftmax(-1, gotch.Double, false)
	want, wantN := 0.0, 0
	for b, ex := range exs {
		for pos := 0; pos+1 < len(ex.tokens); pos++ {
			if ex.labels[pos+1] == ignoreLabel {
				continue
			}
			want -= logp.MustFloat64Value([]int64{int64(b), int64(out.Pad[b] + pos), ex.tokens[pos+1]})
			wantN++
		}
	}
	if n != wantN || math.Abs(got-want) > 1e-4*math.Abs(want) {
		t.Errorf("loss %v over %d tokens, full-logits reference %v over %d", got, n, want, wantN)
	}
}

// TestFinetuneBF16 trains with bf16 base weights: the LoRA weights stay f32
// and still receive gradients through the bf16 forward.
func TestFinetuneBF16(t *testing.T) {
	skipShort(t)
	o := tinyFinetune(t, t.TempDir())
	o.DType, o.Epochs, o.LoRA.LoraDropout, o.LR = "bf16", 6, 0, 2e-2
	res, err := Finetune(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("losses %.4f", res.Losses)
	if n := len(res.Losses); n != 6 || !(res.Losses[n-1] < res.Losses[0]) {
		t.Errorf("bf16 losses %v: want 6 steps, falling", res.Losses)
	}
	ck, err := tensorio.Open(filepath.Join(o.Out, lora.WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	moved := false
	for _, n := range ck.Names() {
		info, _ := ck.Info(n)
		if info.DType != tensorio.F32 {
			t.Fatalf("%s is %s, want F32", n, info.DType)
		}
		if strings.HasSuffix(n, "lora_B.weight") {
			x, err := ck.TensorAs(n, gotch.Float)
			if err != nil {
				t.Fatal(err)
			}
			moved = moved || x.MustAbs(true).MustSum(gotch.Double, true).Float64Values(true)[0] > 0
		}
	}
	if !moved {
		t.Error("every lora_B is still zero: no gradient reached the adapter")
	}
}
