package metrics

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Interval is a confidence interval.
type Interval struct {
	Lo float64 `json:"lo"`
	Hi float64 `json:"hi"`
}

// BootstrapOptions configure Bootstrap.
type BootstrapOptions struct {
	// N is the number of resamples (default 1000).
	N int
	// Seed seeds the resampling; the same seed gives the same interval.
	Seed uint64
	// Level is the confidence level (default 0.95).
	Level float64
}

func (o BootstrapOptions) withDefaults() BootstrapOptions {
	if o.N <= 0 {
		o.N = 1000
	}
	if o.Level <= 0 || o.Level >= 1 {
		o.Level = 0.95
	}
	return o
}

// Metric is a function of paired vectors such as SRCC.
type Metric func(x, y []float64) (float64, error)

// Bootstrap returns the percentile bootstrap confidence interval of metric
// over pairs resampled with replacement. Resamples on which the metric is
// undefined (e.g. all pairs identical) are skipped; more than half of them
// undefined is an error.
func Bootstrap(x, y []float64, metric Metric, opts BootstrapOptions) (Interval, error) {
	if err := iqa.CheckPairs(x, y); err != nil {
		return Interval{}, fmt.Errorf("bootstrap: %w", err)
	}
	opts = opts.withDefaults()
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6d3361677161)) // "m3agqa"
	n := len(x)
	bx := make([]float64, n)
	by := make([]float64, n)
	vals := make([]float64, 0, opts.N)
	for r := 0; r < opts.N; r++ {
		for i := 0; i < n; i++ {
			k := rng.IntN(n)
			bx[i], by[i] = x[k], y[k]
		}
		v, err := metric(bx, by)
		if err != nil || math.IsNaN(v) {
			continue
		}
		vals = append(vals, v)
	}
	if len(vals)*2 < opts.N {
		return Interval{}, fmt.Errorf("bootstrap: metric undefined on %d of %d resamples", opts.N-len(vals), opts.N)
	}
	sort.Float64s(vals)
	a := (1 - opts.Level) / 2
	return Interval{Lo: quantile(vals, a), Hi: quantile(vals, 1-a)}, nil
}

// quantile returns the q-quantile of sorted v by linear interpolation
// (numpy's default).
func quantile(v []float64, q float64) float64 {
	pos := q * float64(len(v)-1)
	i := int(math.Floor(pos))
	if i >= len(v)-1 {
		return v[len(v)-1]
	}
	f := pos - float64(i)
	return v[i] + f*(v[i+1]-v[i])
}
