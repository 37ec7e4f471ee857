package torch

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestLinearSoftmax proves gotch runs real libtorch math: a Linear layer and a
// softmax, checked against values worked out by hand.
func TestLinearSoftmax(t *testing.T) {
	// x = [1, 2]; W = [[1, 0], [0, 1], [1, 1]]; b = [0, 0, -1]
	// y = W x + b = [1, 2, 2]; softmax(y) = [1, e, e] / (1 + 2e).
	x := ts.MustOfSlice([]float32{1, 2}).MustView([]int64{1, 2}, true)
	w := ts.MustOfSlice([]float32{1, 0, 0, 1, 1, 1}).MustView([]int64{3, 2}, true)
	b := ts.MustOfSlice([]float32{0, 0, -1})
	y, err := ts.Linear(x, w, b)
	if err != nil {
		t.Fatal(err)
	}
	p := y.MustSoftmax(-1, gotch.Float, true)
	got := p.Float64Values()
	e := math.E
	want := []float64{1 / (1 + 2*e), e / (1 + 2*e), e / (1 + 2*e)}
	if len(got) != len(want) {
		t.Fatalf("got %d values, want %d", len(got), len(want))
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-6 {
			t.Errorf("softmax[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestSetThreads(t *testing.T) {
	// With OpenMP, libtorch's thread count is per OS thread once that
	// thread has run torch (later threads take the last count set): the
	// goroutine must not move between SetThreads and Threads.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer SetThreads(0)
	for _, n := range []int{1, 2} {
		if err := SetThreads(n); err != nil {
			t.Fatal(err)
		}
		if got := Threads(); got != n {
			t.Errorf("Threads() = %d after SetThreads(%d)", got, n)
		}
	}
	if err := SetThreads(5000); err == nil {
		t.Error("SetThreads(5000) succeeded, want an error")
	}
}

func TestRunGradMode(t *testing.T) {
	w := ts.MustOfSlice([]float32{1, 2}).MustSetRequiresGrad(true, false)
	two := ts.FloatScalar(2)
	defer KeepScalars(two)
	var inside, after bool
	Run("outer", false, func() error {
		inside = w.MustMulScalar(two, false).MustRequiresGrad()
		Run("inner", true, func() error {
			after = w.MustMulScalar(two, false).MustRequiresGrad()
			return nil
		})
		// The inner call restored "off".
		if w.MustMulScalar(two, false).MustRequiresGrad() {
			t.Error("grad mode not restored to off after a nested Run(true)")
		}
		return nil
	})
	if inside {
		t.Error("Run(false): result requires grad")
	}
	if !after {
		t.Error("Run(true) nested: result does not require grad")
	}
	Run("on", true, func() error {
		if !w.MustMulScalar(two, false).MustRequiresGrad() {
			t.Error("grad mode not on inside Run(true)")
		}
		return nil
	})
}

// TestRunErrors: fn's error comes back as it is; a panic comes back as an
// error naming the pass, and the thread's grad mode is restored after it.
// (gotch's Must* calls end the process on a libtorch error rather than
// panic, so callers check shapes first.)
func TestRunErrors(t *testing.T) {
	want := errors.New("boom")
	if err := Run("pass", false, func() error { return want }); err != want {
		t.Errorf("Run returned %v, want fn's error", err)
	}
	a := ts.MustOnes([]int64{2, 3}, gotch.Float, gotch.CPU)
	b := ts.MustOnes([]int64{4, 5}, gotch.Float, gotch.CPU)
	var prev bool
	err := Run("outer", true, func() error {
		err := Run("matmul", false, func() error {
			if a.MustSize()[1] != b.MustSize()[0] {
				panic(fmt.Sprintf("shapes %v and %v", a.MustSize(), b.MustSize()))
			}
			return nil
		})
		prev = SetGradEnabled(true) // what the inner Run restored
		return err
	})
	if err == nil || err.Error() != "matmul: shapes [2 3] and [4 5]" {
		t.Errorf("shape mismatch: error %v, want one starting with the pass name", err)
	}
	if !prev {
		t.Error("grad mode not restored after a panic")
	}
	Drop(a, b, nil, ts.None)
	if a.Ctensor() != nil || b.Ctensor() != nil {
		t.Error("Drop left a tensor allocated")
	}
	Drop(a) // a second Drop is a no-op
}
