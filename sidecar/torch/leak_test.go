package torch

import (
	"runtime/debug"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/internal/testenv"
)

// BenchmarkOpRSS runs b.N tiny ops, each result freed at once, and reports
// how much the resident set grows per op: the floor under any pass's
// memory, whatever the caller frees. (gotch v0.9.1's generated ops
// allocate their result slot with C.malloc(0) and never free it; the
// ring of malloc0.c serves those slots, so this should stay near 0.) Run
// it as
//
//	go test -run '^$' -bench OpRSS -benchtime 2000000x ./sidecar/torch/
func BenchmarkOpRSS(b *testing.B) {
	x := ts.MustOnes([]int64{4}, gotch.Float, gotch.CPU)
	defer Drop(x)
	for i := 0; i < 1000; i++ { // warm up the allocator
		Drop(x.MustAdd(x, false))
	}
	debug.FreeOSMemory()
	start := rssKB(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Drop(x.MustAdd(x, false))
	}
	b.StopTimer()
	debug.FreeOSMemory() // the Go heap's own high-water mark is not the leak
	b.ReportMetric(float64(rssKB(b)-start)*1024/float64(b.N), "RSS-B/op")
}

func rssKB(b *testing.B) int64 {
	kb, err := testenv.ProcStatusKB(0, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	return kb
}
