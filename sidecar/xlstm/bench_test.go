package xlstm

import (
	"math/rand"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/sugarme/gotch"
)

// BenchmarkPredictorForward scores one sequence at the paper's sizes
// (4 blocks, width 512, sLSTM at 1, 4 heads, S = 512) through the
// W·lm_head shortcut with SmolVLM-256M's LM head (vocab 49280, hidden 576),
// fused once outside the loop. It reports the median time per forward.
func BenchmarkPredictorForward(b *testing.B) {
	const V, H, S = 49280, 576, 512
	p, err := New(DefaultConfig(V), 1, gotch.CPU)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(2))
	lm := randTensor(rng, 0.02, V, H)
	hidden := randTensor(rng, 1, 1, S, H)
	if _, err := p.PredictHidden(hidden, lm, nil); err != nil { // fuses and caches W·lm_head
		b.Fatal(err)
	}
	times := make([]time.Duration, 0, b.N)
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := p.PredictHidden(hidden, lm, nil); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(t0))
	}
	b.StopTimer()
	// Process CPU time per forward: less sensitive than wall time when other
	// jobs share the machine.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
