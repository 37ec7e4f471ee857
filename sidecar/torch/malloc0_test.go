package torch

import (
	"testing"

	"github.com/sugarme/gotch/ts"
)

// gotch's result slots come from the ring (the link flags took effect), and
// tensors made through it hold their values.
func TestZeroAllocsServeGotchResults(t *testing.T) {
	before := ZeroAllocs()
	x := ts.MustOfSlice([]float32{1, 2, 3})
	var sum float64
	for range 100 {
		y := x.MustMulScalar(ts.FloatScalar(2), false)
		sum += y.MustSum(y.DType(), true).Float64Values()[0]
	}
	if got := ZeroAllocs() - before; got < 200 {
		t.Errorf("%d zero-size allocations from the ring for 200 tensor operations: the --wrap link flags did not apply", got)
	}
	if sum != 1200 {
		t.Errorf("sum %v, want 1200", sum)
	}
}
