package torch

import (
	"fmt"
	"runtime"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Calling libtorch safely through gotch v0.9.1 takes four things, and Run
// and the helpers below are the one place that provides them:
//
//   - Grad mode is thread-local in libtorch, and a goroutine moves between
//     OS threads: a pass runs on one locked thread with the mode it needs
//     (threads libtorch did not start can begin with grad off, so it is set
//     explicitly either way) and restores the previous mode after.
//   - a panic in a pass (a bug, or one of gotch's helpers that panics)
//     must not take the process down: Run returns it as an error. (gotch's
//     generated Must* ops end the process on a libtorch error through
//     log.Fatal, which nothing can catch: code checks shapes and ids before
//     it calls them.)
//   - gotch frees a tensor's C memory from a Go finalizer once the
//     *ts.Tensor is unreachable. A tensor whose last Go use is as an
//     operand of an op becomes unreachable while the C++ op still runs on
//     it, so a collection in that window frees it under the op. Code
//     therefore keeps every operand reachable until the op has returned:
//     model weights are reachable from their model, a receiver consumed
//     with del=true is kept by gotch itself, and every other temporary is
//     freed with Drop (or held with Keep) after its last use, which both
//     keeps it alive until then and returns its memory now rather than at
//     the next collection. Scalars (ts.FloatScalar) have the same finalizer
//     and are kept the same way.
//   - Large results (KV caches, hidden states) are freed explicitly when
//     the pass that made them ends, so memory does not wait on the
//     collector.

// GCPercent is the Go collector's target the sidecar runs with when GOGC
// is not set (benchmarks use it too). gotch attaches a 100 KB Go
// allocation to every tensor so that the collector notices the C memory
// behind it, and the collector's cost grows with that garbage: on the tiny
// model, 300 scored images (BenchmarkSoakTiny, /usr/bin/time, two runs
// each) take 18.9–19.8 s at 400 against 23.6–25.9 s at Go's default of
// 100, for a peak RSS of 0.69–0.75 GB against 0.38 GB. Speed is chosen;
// the text model's Raw handles keep most of a pass off gotch's books.
const GCPercent = 400

// Run runs fn as one libtorch pass: on a locked OS thread, with autograd
// on or off (the thread's previous mode is restored afterwards, also when
// fn panics), a panic returned as an error wrapped with what. Runs nest (an inner Run restores the outer mode).
func Run(what string, grad bool, fn func() error) (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer Recover(&err, what)
	prev := SetGradEnabled(grad)
	defer SetGradEnabled(prev)
	return fn()
}

// Recover turns a panic into an error wrapped with what; use it deferred: defer torch.Recover(&err, "select cache").
func Recover(err *error, what string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: %v", what, r)
	}
}

// Keep keeps tensors reachable until the call: put it after the last op
// that reads them (or defer it) so that gotch's finalizer cannot free them
// while that op runs.
func Keep(ts ...*ts.Tensor) { runtime.KeepAlive(ts) }

// KeepScalars is Keep for scalars.
func KeepScalars(sc ...*ts.Scalar) { runtime.KeepAlive(sc) }

// Drop frees tensors now (nil and ts.None are skipped, a tensor already
// freed is left alone), which also keeps them reachable until here.
func Drop(list ...*ts.Tensor) {
	for _, t := range list {
		if t != nil && t != ts.None && t.Ctensor() != nil {
			t.MustDrop()
		}
	}
}

// Float64s copies t's values out as float64, through a CPU, float64,
// contiguous copy that it frees (gotch's Float64Values leaves its copy to
// the finalizer, which can free it while the copy is still being read).
// With del it frees t too.
func Float64s(t *ts.Tensor, del bool) []float64 {
	c := t.MustDetach(false).MustTo(gotch.CPU, true).MustTotype(gotch.Double, true).MustContiguous(true)
	out := make([]float64, c.Numel())
	if len(out) > 0 {
		c.MustCopyData(out, c.Numel())
	}
	Drop(c)
	if del {
		Drop(t)
	} else {
		Keep(t)
	}
	return out
}
