package metrics

import (
	"fmt"
	"math"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Logistic holds the five parameters β1..β5 of the VQEG mapping
// f(x) = β1·(0.5 − 1/(1+exp(β2·(x−β3)))) + β4·x + β5.
type Logistic [5]float64

// Apply evaluates the mapping at x.
func (b Logistic) Apply(x float64) float64 {
	return b[0]*(0.5-sigm(b[1]*(x-b[2]))) + b[3]*x + b[4]
}

// sigm is 1/(1+exp(z)), written to avoid overflow.
func sigm(z float64) float64 {
	if z > 0 {
		e := math.Exp(-z)
		return e / (1 + e)
	}
	return 1 / (1 + math.Exp(z))
}

// ApplyAll maps every element of x.
func (b Logistic) ApplyAll(x []float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = b.Apply(v)
	}
	return out
}

// InitLogistic returns the starting point of the fit: β1 = ±(max y − min y)
// (the sign of the linear correlation), β2 = 1/std(x), β3 = mean(x), β4 = 0,
// β5 = mean(y). It is also what testdata/ref_metrics.py hands to scipy.
func InitLogistic(x, y []float64) Logistic {
	n := float64(len(x))
	var mx, my float64
	miny, maxy := math.Inf(1), math.Inf(-1)
	for i := range x {
		mx += x[i]
		my += y[i]
		miny = math.Min(miny, y[i])
		maxy = math.Max(maxy, y[i])
	}
	mx /= n
	my /= n
	var vx float64
	for _, v := range x {
		vx += (v - mx) * (v - mx)
	}
	sd := math.Sqrt(vx / n)
	b2 := 1.0
	if sd > 0 {
		b2 = 1 / sd
	}
	sign := 1.0
	if r, err := iqa.PLCC(x, y); err == nil && r < 0 {
		sign = -1
	}
	return Logistic{sign * (maxy - miny), b2, mx, 0, my}
}

// maxIter bounds the Levenberg–Marquardt iterations of FitLogistic;
// bootstrapIter those of each bootstrap resample, which starts at the
// full-data optimum (along an ill-posed valley the PLCC hardly moves).
const (
	maxIter       = 5000
	bootstrapIter = 20
)

// FitLogistic fits the 5-parameter logistic mapping x → y by least squares
// with Levenberg–Marquardt (analytic Jacobian), starting at InitLogistic.
func FitLogistic(x, y []float64) (Logistic, error) {
	if err := iqa.CheckPairs(x, y); err != nil {
		return Logistic{}, fmt.Errorf("fit logistic: %w", err)
	}
	if len(x) < 5 {
		return Logistic{}, fmt.Errorf("fit logistic: need at least 5 pairs, have %d", len(x))
	}
	return fitFrom(x, y, InitLogistic(x, y), maxIter), nil
}

// fitFrom runs Levenberg–Marquardt from b. It stops when a step no longer
// improves the sum of squares, when 50 iterations together improve it by
// less than 1e-10 relative (ill-posed data whose optimum lies at infinity
// crawls along a valley), or after maxIter iterations.
func fitFrom(x, y []float64, b Logistic, maxIter int) Logistic {
	sse := sseOf(b, x, y)
	checkpoint := sse
	lambda := 1e-3
	var jtj [5][5]float64
	var jtr [5]float64
	for iter := 0; iter < maxIter; iter++ {
		jtj = [5][5]float64{}
		jtr = [5]float64{}
		for i := range x {
			s := sigm(b[1] * (x[i] - b[2]))
			ds := s * (1 - s)
			g := [5]float64{0.5 - s, b[0] * ds * (x[i] - b[2]), -b[0] * ds * b[1], x[i], 1}
			r := y[i] - b.Apply(x[i])
			for p := 0; p < 5; p++ {
				jtr[p] += g[p] * r
				for q := 0; q <= p; q++ {
					jtj[p][q] += g[p] * g[q]
				}
			}
		}
		for p := 0; p < 5; p++ {
			for q := p + 1; q < 5; q++ {
				jtj[p][q] = jtj[q][p]
			}
		}
		improved := false
		for tries := 0; tries < 60; tries++ {
			a := jtj
			for p := 0; p < 5; p++ {
				a[p][p] += lambda * math.Max(jtj[p][p], 1e-12)
			}
			d, ok := solve5(a, jtr)
			if !ok {
				lambda *= 10
				continue
			}
			var nb Logistic
			for p := range nb {
				nb[p] = b[p] + d[p]
			}
			nsse := sseOf(nb, x, y)
			if nsse < sse {
				b, sse = nb, nsse
				lambda = math.Max(lambda/10, 1e-15)
				improved = true
				break
			}
			lambda *= 10
			if lambda > 1e15 {
				break
			}
		}
		if !improved {
			break
		}
		if iter%50 == 49 {
			if checkpoint-sse <= 1e-10*sse {
				break
			}
			checkpoint = sse
		}
	}
	return b
}

func sseOf(b Logistic, x, y []float64) float64 {
	var s float64
	for i := range x {
		d := y[i] - b.Apply(x[i])
		s += d * d
	}
	if math.IsNaN(s) {
		return math.Inf(1)
	}
	return s
}

// solve5 solves a·d = r by Gaussian elimination with partial pivoting.
func solve5(a [5][5]float64, r [5]float64) ([5]float64, bool) {
	const n = 5
	for c := 0; c < n; c++ {
		p := c
		for i := c + 1; i < n; i++ {
			if math.Abs(a[i][c]) > math.Abs(a[p][c]) {
				p = i
			}
		}
		if a[p][c] == 0 || math.IsNaN(a[p][c]) {
			return r, false
		}
		a[c], a[p] = a[p], a[c]
		r[c], r[p] = r[p], r[c]
		for i := c + 1; i < n; i++ {
			f := a[i][c] / a[c][c]
			for k := c; k < n; k++ {
				a[i][k] -= f * a[c][k]
			}
			r[i] -= f * r[c]
		}
	}
	var d [5]float64
	for i := n - 1; i >= 0; i-- {
		s := r[i]
		for k := i + 1; k < n; k++ {
			s -= a[i][k] * d[k]
		}
		d[i] = s / a[i][i]
	}
	for _, v := range d {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return d, false
		}
	}
	return d, true
}

// FittedPLCC fits the logistic mapping of x to y and returns the PLCC of
// the mapped x with y, and the mapping.
func FittedPLCC(x, y []float64) (float64, Logistic, error) {
	b, err := FitLogistic(x, y)
	if err != nil {
		return math.NaN(), b, err
	}
	r, err := iqa.PLCC(b.ApplyAll(x), y)
	if err != nil {
		return math.NaN(), b, fmt.Errorf("fitted %w", err)
	}
	return r, b, nil
}
