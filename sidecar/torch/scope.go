package torch

import (
	"runtime"

	"github.com/sugarme/gotch/ts"
)

// Scope holds every tensor and scalar one pass makes until the pass ends,
// then frees them at once: the bookkeeping form of Keep and Drop for code
// that builds many temporaries (sidecar/xlstm). Wrap each op's result in
// Hold; End frees everything but the pass's results.
type Scope struct {
	held    []*ts.Tensor
	scalars []*ts.Scalar
}

// Hold keeps t until End and returns it.
func (s *Scope) Hold(t *ts.Tensor) *ts.Tensor {
	s.held = append(s.held, t)
	return t
}

// HoldAll keeps every tensor of list until End and returns list.
func (s *Scope) HoldAll(list []*ts.Tensor) []*ts.Tensor {
	s.held = append(s.held, list...)
	return list
}

// Float makes a float scalar kept until End.
func (s *Scope) Float(v float64) *ts.Scalar {
	x := ts.FloatScalar(v)
	s.scalars = append(s.scalars, x)
	return x
}

// End frees every held tensor except keep (the pass's results) and lets
// the scalars go.
func (s *Scope) End(keep ...*ts.Tensor) {
	for _, t := range s.held {
		kept := false
		for _, x := range keep {
			if x == t {
				kept = true
			}
		}
		if !kept {
			Drop(t)
		}
	}
	s.held = nil
	runtime.KeepAlive(s.scalars)
	s.scalars = nil
}
