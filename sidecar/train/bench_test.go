package train

import (
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
