package xlstm

import (
	"math"
	"runtime"
	"sync"

	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// useNativeSLSTM reports whether the sLSTM recurrence can run in plain Go:
// float32 on the CPU with no gradient needed. Each gotch op costs tens of
// microseconds of bookkeeping, which dominates a 512-step loop of small ops.
func useNativeSLSTM(wx, r *ts.Tensor) bool {
	dev, err := wx.Device()
	if err != nil || dev.IsCuda() || wx.DType() != gotch.Float || r.DType() != gotch.Float {
		return false
	}
	return !wx.MustRequiresGrad() && !r.MustRequiresGrad()
}

func float32sOf(t *ts.Tensor) []float32 {
	c := t.MustDetach(false).MustContiguous(true)
	out := make([]float32, c.Numel())
	if err := torch.CopyOut(c, out); err != nil {
		panic(err)
	}
	torch.Drop(c)
	torch.Keep(t)
	return out
}

// logSigmoid is log σ(x), stable for large |x|.
func logSigmoid(x float64) float64 {
	if x >= 0 {
		return -math.Log1p(math.Exp(-x))
	}
	return x - math.Log1p(math.Exp(x))
}

// slstmNative is slstmCell computed with Go loops (same layouts, same
// formulas); heads and batch items run in parallel.
func (s *scope) slstmNative(wx, r *ts.Tensor) *ts.Tensor {
	sz := wx.MustSize()
	S, NH, B, G := int(sz[0]), int(sz[1]), int(sz[2]), int(sz[3])
	DH := G / 4
	wxv := float32sOf(wx)
	rv := float32sOf(r)
	out := make([]float32, NH*B*S*DH)
	var wg sync.WaitGroup
	jobs := make(chan [2]int)
	workers := min(runtime.GOMAXPROCS(0), NH*B)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw := make([]float32, G)
			y := make([]float32, DH)
			c := make([]float64, DH)
			n := make([]float64, DH)
			m := make([]float64, DH)
			for job := range jobs {
				h, b := job[0], job[1]
				for t := 0; t < S; t++ {
					base := ((t*NH+h)*B + b) * G
					copy(raw, wxv[base:base+G])
					if t > 0 {
						for j := 0; j < DH; j++ {
							yj := y[j]
							if yj == 0 {
								continue
							}
							row := rv[(h*DH+j)*G : (h*DH+j+1)*G]
							for o, rv := range row {
								raw[o] += yj * rv
							}
						}
					}
					ob := ((h*B+b)*S + t) * DH
					for d := 0; d < DH; d++ {
						i, f, z, o := float64(raw[d]), float64(raw[DH+d]), float64(raw[2*DH+d]), float64(raw[3*DH+d])
						if t == 0 {
							m[d], c[d], n[d] = i, math.Tanh(z), 1
						} else {
							lfm := m[d] + logSigmoid(f)
							mn := math.Max(i, lfm)
							ig := math.Exp(i - mn)
							fg := math.Exp(lfm - mn)
							c[d] = fg*c[d] + ig*math.Tanh(z)
							n[d] = fg*n[d] + ig
							m[d] = mn
						}
						yd := float32(1 / (1 + math.Exp(-o)) * c[d] / n[d])
						y[d] = yd
						out[ob+d] = yd
					}
				}
			}
		}()
	}
	for h := 0; h < NH; h++ {
		for b := 0; b < B; b++ {
			jobs <- [2]int{h, b}
		}
	}
	close(jobs)
	wg.Wait()
	t := s.Hold(s.Hold(ts.MustOfSlice(out)).MustView([]int64{int64(NH), int64(B), int64(S), int64(DH)}, false))
	return t
}
