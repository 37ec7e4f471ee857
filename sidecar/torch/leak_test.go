package torch

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
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
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
