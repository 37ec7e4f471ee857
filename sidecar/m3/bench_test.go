package m3

import (
	"context"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/m3gate/m3gate/sidecar/mllm"
)

// BenchmarkScore256M scores one image on two aspects (description of up to
// 128 tokens, rating, word-probability MOS) with a SmolVLM-256M-shaped
// model: the per-image cost of the product on this machine. The model
// directory comes from $MLLM_BENCH_256M_DIR (written by
// `m3gate model tiny --size 256m`); the benchmark is skipped without it.
// Random weights never emit the stop token, so every description runs the
// full 128 tokens: an upper bound for a real model.
func BenchmarkScore256M(b *testing.B)        { benchScore(b, 1) }
func BenchmarkScoreBatch4x256M(b *testing.B) { benchScore(b, 4) }

func benchScore(b *testing.B, n int) {
	dir := os.Getenv("MLLM_BENCH_256M_DIR")
	if dir == "" {
		b.Skip("set MLLM_BENCH_256M_DIR to a model written by `m3gate model tiny --size 256m`")
	}
	m, err := mllm.Load(dir, mllm.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	items := make([]Item, n)
	for i := range items {
		items[i] = Item{Pixels: randomPixels(m, int64(i)), Prompt: "statue of a man, baroque style"}
	}
	aspects := []Aspect{{Name: "quality", Prompts: testPrompts}, {Name: "correspondence", Prompts: testPrompts}}
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := s.Score(context.Background(), items, aspects, Options{MaxNewTokens: 128}); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	med := ds[len(ds)/2]
	b.ReportMetric(med.Seconds(), "median-s")
	b.ReportMetric(med.Seconds()/float64(n), "median-s/image")
}
