package m3

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// BenchmarkSoakTiny scores b.N images one by one (two aspects, one with an
// xLSTM predictor, 16-token descriptions) on the tiny model with the
// memory settings the sidecar runs with (torch.SetMemory), and
// reports the resident set size
// after the first image, at b.N/2 and at the end (as it is, and settled
// after a collection), with the number of live libtorch tensors: memory that stays flat shows that each pass
// frees what it made. Run it as
//
//	go test -run '^$' -bench SoakTiny -benchtime 1000x ./sidecar/m3/
func BenchmarkSoakTiny(b *testing.B) {
	m := loadTiny(b)
	if err := torch.SetMemory(); err != nil {
		b.Fatal(err)
	}
	s, err := New(m, nil)
	if err != nil {
		b.Fatal(err)
	}
	aspects := []Aspect{
		{Name: "quality", Prompts: testPrompts, Predictor: tinyPredictor(b, m)},
		{Name: "correspondence", Prompts: corrPrompts},
	}
	ctx := context.Background()
	score := func(i int) {
		items := []Item{{Pixels: randomPixels(m, int64(i)), Prompt: "statue of a man, baroque style"}}
		if _, err := s.Score(ctx, items, aspects, Options{MaxNewTokens: 16}); err != nil {
			b.Fatal(err)
		}
	}
	score(-1) // warm up: libtorch's and BLAS's one-time allocations
	var rss, settled [3]float64
	var live [3]int
	mark := func(k int) {
		rss[k], live[k] = rssMB(b), liveTensors()
		heap := heapMB()
		made := atomic.LoadInt64(&ts.TensorCount)
		// settled: after a collection has returned free Go heap pages to
		// the OS (gotch makes every tensor carry a 100 KB Go allocation,
		// so the Go heap's high-water mark moves RSS the most)
		debug.FreeOSMemory()
		settled[k] = rssMB(b)
		b.Logf("after %d images: RSS %.1f MB (%.1f MB settled), %d live tensors, %d raw handles, %d made so far, Go heap %.1f MB",
			[]int{1, b.N / 2, b.N}[k], rss[k], settled[k], live[k], torch.LiveRaw(), made, heap)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		score(i)
		switch i + 1 {
		case 1:
			mark(0)
		case b.N / 2:
			mark(1)
		}
	}
	b.StopTimer()
	mark(2)
	b.ReportMetric(rss[0], "RSS-start-MB")
	b.ReportMetric(rss[1], "RSS-mid-MB")
	b.ReportMetric(rss[2], "RSS-end-MB")
	b.ReportMetric(settled[0], "settled-RSS-start-MB")
	b.ReportMetric(settled[2], "settled-RSS-end-MB")
	b.ReportMetric(float64(live[2]), "live-tensors-end")
}

// rssMB is this process's resident set size (VmRSS) in MB.
func rssMB(b *testing.B) float64 {
	kb, err := testenv.ProcStatusKB(0, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	return float64(kb) / 1024
}

func heapMB() float64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}
