package torch

/*
#include <malloc.h>

static int m3_mallopt(int mmap_threshold, int trim_threshold) {
	return mallopt(M_MMAP_THRESHOLD, mmap_threshold) && mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

static size_t m3_mmapped_bytes(void) {
	struct mallinfo2 mi = mallinfo2();
	return mi.hblkhd;
}
*/
import "C"

import (
	"fmt"
	"os"
	"strings"
)

// MallocMmapThreshold and MallocTrimThreshold are the glibc malloc
// settings the sidecar runs with (SetMalloc). libtorch takes every tensor
// from malloc. At glibc's defaults a block over 128 KiB is its own mmap —
// and the threshold only rises as such blocks are freed — while the heap
// returns its free top to the system past 128 KiB: the vision tower's
// 12 MB activations and attention scores came fresh from the kernel each
// time, faulted in and zeroed page by page, and the system's share of a
// vision pass reached 29 % (perf). Served from a heap that keeps what it
// had, the 256M vision encode took 0.95–1.09 s against 1.49–1.89 s with
// bf16 products, and 1.37–1.40 against 1.49–1.77 s in f32
// (BenchmarkVisionEncode256M, GLIBC_TUNABLES alternating), for the same
// peak RSS: the heap holds about one pass's working set, which the next
// pass reuses.
const (
	MallocMmapThreshold = 32 << 20  // glibc's largest: blocks up to 32 MiB come from the heap
	MallocTrimThreshold = 256 << 20 // free heap top kept before it is returned
)

// SetMalloc sets glibc malloc's mmap and trim thresholds to
// MallocMmapThreshold and MallocTrimThreshold, unless the environment
// sets malloc tunables (GLIBC_TUNABLES with glibc.malloc, or the
// MALLOC_*_ variables). It reports whether it changed them.
func SetMalloc() (bool, error) {
	if strings.Contains(os.Getenv("GLIBC_TUNABLES"), "glibc.malloc.") ||
		os.Getenv("MALLOC_MMAP_THRESHOLD_") != "" || os.Getenv("MALLOC_TRIM_THRESHOLD_") != "" {
		return false, nil
	}
	if C.m3_mallopt(C.int(MallocMmapThreshold), C.int(MallocTrimThreshold)) == 0 {
		return false, fmt.Errorf("set malloc thresholds: mallopt refused")
	}
	return true, nil
}

// SetMemory applies the sidecar's memory settings, Go's (SetCollector)
// and the C heap's (SetMalloc): the sidecar calls it first thing, and so
// do the benchmarks. An error means only that malloc kept its defaults
// (slower, not wrong).
func SetMemory() error {
	SetCollector()
	_, err := SetMalloc()
	return err
}

// mmappedBytes is the C heap's bytes in blocks of their own mmap.
func mmappedBytes() int64 { return int64(C.m3_mmapped_bytes()) }
