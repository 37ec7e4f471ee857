package iqa

import (
	"errors"
	"math"
	"testing"
)

func TestKRCCMatchesNaive(t *testing.T) {
	for n := 2; n < 40; n++ {
		x := make([]float64, n)
		y := make([]float64, n)
		for i := range x {
			x[i] = float64((i * 7) % 5)
			y[i] = float64((i*i + 3*n) % 6)
		}
		if x[0] == x[1] && n == 2 {
			continue
		}
		got, err := KRCC(x, y)
		want := krccNaive(x, y)
		if err != nil || math.Abs(got-want) > 1e-12 {
			t.Errorf("n=%d: KRCC = %v (%v), naive %v", n, got, err, want)
		}
	}
}

func TestRanksTies(t *testing.T) {
	got := Ranks([]float64{3, 1, 3, 2, 3})
	want := []float64{4, 1, 4, 2, 4}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Ranks = %v, want %v", got, want)
		}
	}
}

// TestSRCC checks Spearman's coefficient against scipy.stats.spearmanr
// (ties averaged).
func TestSRCC(t *testing.T) {
	for _, tc := range []struct {
		a, b []float64
		want float64
	}{
		{[]float64{1, 2, 3, 4, 5}, []float64{5, 6, 7, 8, 7}, 0.8207826816681233},
		{[]float64{1, 2, 2, 3}, []float64{1, 3, 2, 4}, 0.9486832980505139},
		{[]float64{3, 1, 2}, []float64{1, 3, 2}, -1},
		{[]float64{1, 2, 3, 4}, []float64{1, 8, 27, 64}, 1},
	} {
		got, err := SRCC(tc.a, tc.b)
		if err != nil || math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("SRCC(%v, %v) = %v, %v; want %v", tc.a, tc.b, got, err, tc.want)
		}
	}
}

func TestBadPairs(t *testing.T) {
	for _, tc := range []struct {
		name string
		x, y []float64
	}{
		{"length", []float64{1, 2, 3}, []float64{1, 2}},
		{"short", []float64{1}, []float64{1}},
		{"nan", []float64{1, math.NaN(), 3}, []float64{1, 2, 3}},
		{"inf", []float64{1, 2, 3}, []float64{1, math.Inf(1), 3}},
	} {
		for name, fn := range map[string]func(x, y []float64) (float64, error){"srcc": SRCC, "plcc": PLCC, "krcc": KRCC, "rmse": RMSE} {
			if _, err := fn(tc.x, tc.y); err == nil {
				t.Errorf("%s %s: no error", name, tc.name)
			}
		}
	}
	for name, fn := range map[string]func(x, y []float64) (float64, error){"srcc": SRCC, "plcc": PLCC, "krcc": KRCC} {
		if _, err := fn([]float64{1, 1, 1}, []float64{1, 2, 3}); !errors.Is(err, ErrConstant) {
			t.Errorf("constant %s err = %v", name, err)
		}
	}
}

func BenchmarkKRCC(b *testing.B) {
	c := make([]float64, 3000)
	d := make([]float64, 3000)
	for i := range c {
		c[i] = math.Sin(float64(i))
		d[i] = math.Cos(float64(i) * 0.7)
	}
	for b.Loop() {
		KRCC(c, d)
	}
}

// krccNaive is the O(n²) definition of tau-b.
func krccNaive(x, y []float64) float64 {
	var conc, disc, tieX, tieY float64
	for i := range x {
		for j := i + 1; j < len(x); j++ {
			dx, dy := x[i]-x[j], y[i]-y[j]
			switch {
			case dx == 0 && dy == 0:
			case dx == 0:
				tieX++
			case dy == 0:
				tieY++
			case (dx > 0) == (dy > 0):
				conc++
			default:
				disc++
			}
		}
	}
	return (conc - disc) / math.Sqrt((conc+disc+tieX)*(conc+disc+tieY))
}
