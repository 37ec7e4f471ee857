package train

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"testing"
)

// tinyPredictor returns options for a short run on the tiny model: 8
// training and 4 validation records of the shared data, a small predictor.
func tinyPredictor(t testing.TB, out string) PredictorOptions {
	t.Helper()
	dir := sharedAGIQA(t)
	data := subset(t, dir, map[string]int{"train": 8, "test": 4}, "quality")
	o := DefaultPredictorOptions()
	o.Model, o.Data, o.Images, o.Labels, o.Out = tinyModelDir(t), data, filepath.Join(dir, "images"), filepath.Join(dir, "data.csv"), out
	o.Aspect = "quality"
	o.GenMaxTokens = 4
	// One mLSTM block keeps the tests fast: the paper's 4-block stack with
	// its step-by-step sLSTM takes about 10× longer here.
	o.EmbeddingDim, o.Heads, o.HeadHidden, o.Blocks = 32, 2, 16, 1
	o.Epochs, o.LR = 4, 3e-3
	return o
}

func TestTrainPredictor(t *testing.T) {
	skipShort(t)
	o := tinyPredictor(t, t.TempDir())
	o.Cache = filepath.Join(t.TempDir(), "features")
	res, err := TrainPredictor(context.Background(), o, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epochs != 4 || len(res.TrainLoss) != 4 || res.Computed != 12 {
		t.Fatalf("got %d epochs (%d losses), %d features computed; want 4, 4, 12", res.Epochs, len(res.TrainLoss), res.Computed)
	}
	t.Logf("train mse %.4f, val srcc %.4f, best %.4f at epoch %d", res.TrainLoss, res.ValSRCC, res.BestSRCC, res.BestEpoch)
	if !(res.TrainLoss[3] < res.TrainLoss[0]*0.8) {
		t.Errorf("training MSE did not fall: %v", res.TrainLoss)
	}
	best := math.Inf(-1)
	for _, s := range res.ValSRCC {
		if !math.IsNaN(s) {
			best = math.Max(best, s)
		}
	}
	if (res.BestSRCC != best && !(math.IsNaN(res.BestSRCC) && math.IsInf(best, -1))) || res.BestEpoch < 1 {
		t.Errorf("best srcc %v at epoch %d, want the max of %v", res.BestSRCC, res.BestEpoch, res.ValSRCC)
	}
	// A second run with the same cache computes nothing.
	o2 := o
	o2.Out, o2.Epochs = t.TempDir(), 1
	res2, err := TrainPredictor(context.Background(), o2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Computed != 0 {
		t.Errorf("rerun computed %d feature items, want 0 (cached)", res2.Computed)
	}
}

// TestTrainPredictorResume stops a run during epoch 3 of 4, resumes it and
// compares the final predictor with an uninterrupted run's.
func TestTrainPredictorResume(t *testing.T) {
	skipShort(t)
	cache := filepath.Join(t.TempDir(), "features")
	full := tinyPredictor(t, t.TempDir())
	full.Cache = cache
	full.ValDescription = DescStudent
	if _, err := TrainPredictor(context.Background(), full, nil); err != nil {
		t.Fatal(err)
	}
	half := full
	half.Out = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	half.onEpoch = func(e int) {
		if e == 2 {
			cancel()
		}
	}
	res, err := TrainPredictor(ctx, half, nil)
	if !errors.Is(err, context.Canceled) || res.Epochs != 2 {
		t.Fatalf("interrupted run: err %v after %d epochs, want context.Canceled after 2", err, res.Epochs)
	}
	half.onEpoch = nil
	half.Resume = true
	res, err = TrainPredictor(context.Background(), half, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epochs != 4 || len(res.TrainLoss) != 2 {
		t.Fatalf("resumed run: %d epochs (%d this run), want 4 (2)", res.Epochs, len(res.TrainLoss))
	}
	a := readAll(t, filepath.Join(full.Out, "last.safetensors"))
	b := readAll(t, filepath.Join(half.Out, "last.safetensors"))
	worst := 0.0
	for name, va := range a {
		vb := b[name]
		if len(vb) != len(va) {
			t.Fatalf("%s: %d vs %d values", name, len(va), len(vb))
		}
		for i := range va {
			worst = math.Max(worst, math.Abs(va[i]-vb[i]))
		}
	}
	if worst > 1e-6 {
		t.Errorf("resumed predictor differs from the uninterrupted one by %g", worst)
	}
}
