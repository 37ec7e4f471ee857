package torch

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// Calling libtorch safely through gotch v0.9.1 takes four things, and Run
// and the helpers below are the one place that provides them:
//
//   - Grad mode is thread-local in libtorch, and a goroutine moves between
//     OS threads: a pass runs on the one pass thread (Run) with the mode it needs
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

// GCMemoryLimit is the soft limit on the Go runtime's memory the sidecar
// runs with when GOMEMLIMIT is not set. Under GCPercent alone the garbage
// of gotch's per-tensor allocations piles up to four times the live Go
// heap between collections: the 256M model's peak RSS while decoding three
// sequences was 1.58–1.59 GB, and 1.37–1.38 GB with this limit at the same
// speed (BenchmarkDecodeBatch3256M, two runs each; at 64 MiB the collector
// runs almost without pause and a step takes 45–50 ms instead of 27–30).
const GCMemoryLimit = 128 << 20

// SetCollector sets the Go collector to GCPercent and GCMemoryLimit, each
// unless GOGC or GOMEMLIMIT sets it (see SetMemory).
func SetCollector() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(GCMemoryLimit)
	}
}

// Run runs fn as one libtorch pass: on the pass thread (below), with
// autograd on or off (the thread's previous mode is restored afterwards,
// also when fn panics), a panic returned as an error wrapped with what.
// Runs nest: a Run inside a pass runs in place, and an inner Run restores
// the outer mode. Passes from different goroutines take turns. fn must not
// wait on another goroutine's Run (that one waits for fn's pass to end).
//
// Every pass runs on one OS thread for the life of the process, because
// libgomp (libtorch's OpenMP) keeps a separate pool of worker threads for
// each thread that starts parallel work: passes spread over the Go
// runtime's threads made a pool per thread, the idle pools' workers spun
// against the busy one, and with more workers than cores libgomp shortens
// every worker's spin before it sleeps, so each of a decode step's 200
// parallel products woke a sleeping worker (a 256M decode step: 30 ms
// spread, 22 ms on one thread; BenchmarkDecode256M).
func Run(what string, grad bool, fn func() error) (err error) {
	onPassThread(func() { err = runHere(what, grad, fn) })
	return err
}

// runHere is Run on the calling, already locked, thread.
func runHere(what string, grad bool, fn func() error) (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer Recover(&err, what)
	prev := SetGradEnabled(grad)
	defer SetGradEnabled(prev)
	return fn()
}

// onPassThread runs fn on the pass thread (see Run): in place when the
// caller is on it already, else handed over, waiting for it to end.
func onPassThread(fn func()) {
	if tid := passes.tid.Load(); tid != 0 && int64(syscall.Gettid()) == tid {
		fn()
		return
	}
	passes.once.Do(startPassThread)
	p := pass{fn: fn, done: make(chan bool, 1)}
	passes.work <- p
	if exited := <-p.done; exited {
		// fn called runtime.Goexit (t.FailNow in a test): end the
		// caller's goroutine as it would have ended before.
		runtime.Goexit()
	}
}

// pass is one Run handed to the pass thread; done says whether fn ended by
// runtime.Goexit instead of returning.
type pass struct {
	fn   func()
	done chan bool
}

var passes struct {
	once sync.Once
	work chan pass
	tid  atomic.Int64 // the pass thread's OS thread id, once started
}

// startPassThread starts the goroutine that owns the pass thread: locked
// to it for good, running one pass at a time.
func startPassThread() {
	passes.work = make(chan pass)
	started := make(chan struct{})
	go passLoop(started)
	<-started
}

func passLoop(started chan struct{}) {
	runtime.LockOSThread() // never unlocked: the thread is the pass thread
	passes.tid.Store(int64(syscall.Gettid()))
	if started != nil {
		close(started)
	}
	for p := range passes.work {
		returned := false
		func() {
			defer func() {
				if !returned {
					// runtime.Goexit ends this goroutine and, locked,
					// its thread: a new one takes over the passes.
					go passLoop(nil)
				}
				p.done <- !returned
			}()
			p.fn()
			returned = true
		}()
	}
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
	if err := CopyOut(c, out); err != nil {
		panic(err)
	}
	Drop(c)
	if del {
		Drop(t)
	} else {
		Keep(t)
	}
	return out
}

// CopyOut copies t's values into dst, which must hold t.Numel() elements of
// t's element type (copied from the device, in row-major order, when t is
// on a GPU or not contiguous). gotch's CopyData checks its destination
// element by element through reflection, about 30 ns each: 4–5 ms per
// decode step for three sequences' logits.
func CopyOut[T float32 | float64 | int64](t *ts.Tensor, dst []T) error {
	var want gotch.DType
	switch any(dst).(type) {
	case []float32:
		want = gotch.Float
	case []float64:
		want = gotch.Double
	case []int64:
		want = gotch.Int64
	}
	if got := t.DType(); got != want {
		return fmt.Errorf("copy out: tensor is %v, destination %v", got, want)
	}
	if n := t.Numel(); uint(len(dst)) != n {
		return fmt.Errorf("copy out: tensor has %d values, destination %d", n, len(dst))
	}
	if len(dst) == 0 {
		return nil
	}
	lib.AtCopyData(lib.Ctensor(t.Ctensor()), unsafe.Pointer(&dst[0]), uint(len(dst)), want.Size())
	Keep(t)
	return ts.TorchErr()
}
