package torch

import (
	"math"
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

func TestGradMode(t *testing.T) {
	w := ts.MustOfSlice([]float32{1, 2}).MustSetRequiresGrad(true, false)
	var inside, after bool
	WithGrad(false, func() {
		inside = w.MustMulScalar(ts.FloatScalar(2), false).MustRequiresGrad()
		WithGrad(true, func() {
			after = w.MustMulScalar(ts.FloatScalar(2), false).MustRequiresGrad()
		})
		// The inner call restored "off".
		if w.MustMulScalar(ts.FloatScalar(2), false).MustRequiresGrad() {
			t.Error("grad mode not restored to off after a nested WithGrad(true)")
		}
	})
	if inside {
		t.Error("WithGrad(false): result requires grad")
	}
	if !after {
		t.Error("WithGrad(true) nested: result does not require grad")
	}
	WithGrad(true, func() {
		if !w.MustMulScalar(ts.FloatScalar(2), false).MustRequiresGrad() {
			t.Error("grad mode not on inside WithGrad(true)")
		}
	})
}
