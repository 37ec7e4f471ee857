package mllm

import (
	"context"
	"testing"
)

// BenchmarkDecodeStepTiny measures the per-step overhead of a decode step
// on the tiny model (2 layers, negligible arithmetic): mostly gotch's
// per-op bookkeeping.
func BenchmarkDecodeStepTiny(b *testing.B) {
	m := loadTiny(b, 0)
	seq, err := m.EncodeChat([]Message{UserMessage("Rate the quality.", false)}, true, nil)
	if err != nil {
		b.Fatal(err)
	}
	out, cache, err := m.Prefill([]Sequence{seq}, ForwardOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: 17}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*16), "µs/step")
}
