package train

import (
	"os"
	"testing"
)

// BenchmarkFinetuneStep times one optimiser step (batch 2, no
// accumulation) of LoRA fine-tuning on the tiny model and reports items/s.
//
//	go test -run '^$' -bench FinetuneStep ./sidecar/train/
func BenchmarkFinetuneStep(b *testing.B) {
	o := tinyFinetune(b, b.TempDir())
	o.GradAccum = 1
	o.Epochs = 1000
	f, _, err := newFinetuner(o, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer f.close()
	f.lora.set.SetTraining(true)
	if _, _, _, _, err := f.step(0); err != nil { // warm the image features
		b.Fatal(err)
	}
	items := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, n, _, _, err := f.step(i + 1)
		if err != nil {
			b.Fatal(err)
		}
		items += n
	}
	b.ReportMetric(float64(items)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkFinetuneStep256m is BenchmarkFinetuneStep on a model directory
// with SmolVLM-256M's shapes, given by $M3GATE_BENCH_MODEL (for example
// from `m3gate-sidecar model tiny --size 256m`); skipped without it.
// Batch 1, LoRA r=64 on q/k/v/o, vision features cached.
func BenchmarkFinetuneStep256m(b *testing.B) {
	dir := os.Getenv("M3GATE_BENCH_MODEL")
	if dir == "" {
		b.Skip("set M3GATE_BENCH_MODEL to a model directory")
	}
	o := tinyFinetune(b, b.TempDir())
	o.Model = dir
	o.LoRA = defaultLoRA()
	o.BatchSize, o.GradAccum, o.Epochs, o.MaxTrain = 1, 1, 1000, 2
	f, _, err := newFinetuner(o, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer f.close()
	f.lora.set.SetTraining(true)
	for i := 0; i < 2; i++ { // encode both images once
		if _, _, _, _, err := f.step(i); err != nil {
			b.Fatal(err)
		}
	}
	items := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, n, _, _, err := f.step(i + 2)
		if err != nil {
			b.Fatal(err)
		}
		items += n
	}
	b.ReportMetric(float64(items)/b.Elapsed().Seconds(), "items/s")
}
