// Package torch is the one place that talks to libtorch through cgo directly,
// for the few process-wide settings gotch does not expose (intra-op threads).
// Everything else uses gotch's ts and nn packages.
package torch

/*
// at_set_num_threads and at_get_num_threads are defined in gotch's libtch,
// which every binary that imports gotch links.
void at_set_num_threads(int n_threads);
int at_get_num_threads();
*/
import "C"

import (
	"fmt"
	"runtime"

	_ "github.com/sugarme/gotch/libtch" // links the symbols declared above
)

// SetThreads sets libtorch's intra-op thread count. n <= 0 means one thread
// per core, the default.
func SetThreads(n int) error {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	if n > 1024 {
		return fmt.Errorf("set threads: %d is more than 1024", n)
	}
	C.at_set_num_threads(C.int(n))
	return nil
}

// Threads returns libtorch's current intra-op thread count.
func Threads() int {
	return int(C.at_get_num_threads())
}
