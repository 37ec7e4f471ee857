// Package openmp sets how libtorch's OpenMP workers wait between parallel
// regions before libgomp reads it. libgomp reads OMP_WAIT_POLICY and
// GOMP_SPINCOUNT once, when the dynamic loader starts it, before any Go
// code runs; so when neither is set, this package's init re-executes the
// sidecar with GOMP_SPINCOUNT=SpinCount (the same program, arguments and
// open files; the process keeps its PID, so go-plugin's host sees nothing
// but a few milliseconds). A value the user set is kept.
//
// Why a short spin: a decode step runs about 300 small parallel regions
// (one per product, norm and attention) a few tens of microseconds apart.
// Workers that sleep at once (OMP_WAIT_POLICY=PASSIVE) are woken through
// the kernel for every region: a 256M decode step took 25–27 ms that way
// against 18.5–20 ms with workers that spin a little first. libgomp's
// default spin (300,000 iterations, about a millisecond) keeps them awake
// through the Go code and single-threaded work between a vision pass's
// products as well, where the waiting worker takes the core from the
// threads doing that work: the vision pass then ran 1.4–1.9 s against
// 1.43–1.5 s with 1,000 iterations (README, performance section).
package openmp

import (
	"os"
	"strings"
	"syscall"
)

// SpinCount is the GOMP_SPINCOUNT the sidecar runs with unless told
// otherwise: about 20–60 µs of spinning before a worker sleeps.
const SpinCount = "1000"

// Env is environ with GOMP_SPINCOUNT=SpinCount added, and whether it was
// added: nothing is changed when the environment already says how
// OpenMP workers wait (OMP_WAIT_POLICY or GOMP_SPINCOUNT).
func Env(environ []string) ([]string, bool) {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "OMP_WAIT_POLICY=") || strings.HasPrefix(kv, "GOMP_SPINCOUNT=") {
			return environ, false
		}
	}
	return append(append([]string(nil), environ...), "GOMP_SPINCOUNT="+SpinCount), true
}

func init() {
	env, changed := Env(os.Environ())
	if !changed {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return // runs, with libgomp's default wait
	}
	// Exec returns only on failure; the sidecar then runs as it is.
	_ = syscall.Exec(self, os.Args, env)
}
