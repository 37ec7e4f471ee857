package iqa

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// ErrConstant is returned when a correlation is undefined because one
// vector has no variance.
var ErrConstant = errors.New("constant input: correlation undefined")

// CheckPairs reports why x and y cannot be compared: different lengths,
// fewer than 2 pairs, or a value that is not finite.
func CheckPairs(x, y []float64) error {
	if len(x) != len(y) {
		return fmt.Errorf("length mismatch: %d predictions, %d scores", len(x), len(y))
	}
	if len(x) < 2 {
		return fmt.Errorf("need at least 2 pairs, have %d", len(x))
	}
	for i := range x {
		if math.IsNaN(x[i]) || math.IsInf(x[i], 0) || math.IsNaN(y[i]) || math.IsInf(y[i], 0) {
			return fmt.Errorf("pair %d is not finite (%v, %v)", i, x[i], y[i])
		}
	}
	return nil
}

// PLCC returns Pearson's linear correlation coefficient of x and y.
func PLCC(x, y []float64) (float64, error) {
	if err := CheckPairs(x, y); err != nil {
		return math.NaN(), fmt.Errorf("plcc: %w", err)
	}
	return pearson(x, y)
}

// pearson is PLCC without the input check.
func pearson(x, y []float64) (float64, error) {
	n := float64(len(x))
	var mx, my float64
	for i := range x {
		mx += x[i]
		my += y[i]
	}
	mx /= n
	my /= n
	var sxy, sxx, syy float64
	for i := range x {
		dx, dy := x[i]-mx, y[i]-my
		sxy += dx * dy
		sxx += dx * dx
		syy += dy * dy
	}
	if sxx == 0 || syy == 0 {
		return math.NaN(), ErrConstant
	}
	r := sxy / math.Sqrt(sxx*syy)
	return math.Max(-1, math.Min(1, r)), nil
}

// Ranks returns the 1-based ranks of v, ties getting the average of the
// ranks they span.
func Ranks(v []float64) []float64 {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return v[idx[a]] < v[idx[b]] })
	r := make([]float64, len(v))
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && v[idx[j+1]] == v[idx[i]] {
			j++
		}
		avg := float64(i+j)/2 + 1
		for k := i; k <= j; k++ {
			r[idx[k]] = avg
		}
		i = j + 1
	}
	return r
}

// SRCC returns Spearman's rank correlation coefficient (Pearson on average
// ranks, so ties are handled as scipy.stats.spearmanr does).
func SRCC(x, y []float64) (float64, error) {
	if err := CheckPairs(x, y); err != nil {
		return math.NaN(), fmt.Errorf("srcc: %w", err)
	}
	r, err := pearson(Ranks(x), Ranks(y))
	if err != nil {
		return math.NaN(), fmt.Errorf("srcc: %w", err)
	}
	return r, nil
}

// KRCC returns Kendall's tau-b, which corrects for ties in either vector.
// It uses Knight's O(n log n) algorithm (sort by x then y, count
// discordant pairs as merge-sort swaps on y), as scipy does.
func KRCC(x, y []float64) (float64, error) {
	if err := CheckPairs(x, y); err != nil {
		return math.NaN(), fmt.Errorf("krcc: %w", err)
	}
	n := len(x)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool {
		if x[idx[a]] != x[idx[b]] {
			return x[idx[a]] < x[idx[b]]
		}
		return y[idx[a]] < y[idx[b]]
	})
	pairs := func(k int64) int64 { return k * (k - 1) / 2 }
	// Ties in x (n1) and joint ties in x and y (n3).
	var n1, n3 int64
	for i := 0; i < n; {
		j := i
		for j+1 < n && x[idx[j+1]] == x[idx[i]] {
			j++
		}
		n1 += pairs(int64(j - i + 1))
		for a := i; a <= j; {
			b := a
			for b+1 <= j && y[idx[b+1]] == y[idx[a]] {
				b++
			}
			n3 += pairs(int64(b - a + 1))
			a = b + 1
		}
		i = j + 1
	}
	ys := make([]float64, n)
	for i, k := range idx {
		ys[i] = y[k]
	}
	swaps := mergeCount(ys, make([]float64, n))
	// Ties in y, now that ys is sorted.
	var n2 int64
	for i := 0; i < n; {
		j := i
		for j+1 < n && ys[j+1] == ys[i] {
			j++
		}
		n2 += pairs(int64(j - i + 1))
		i = j + 1
	}
	n0 := pairs(int64(n))
	den := math.Sqrt(float64(n0-n1) * float64(n0-n2))
	if den == 0 {
		return math.NaN(), fmt.Errorf("krcc: %w", ErrConstant)
	}
	num := float64(n0-n1-n2+n3) - 2*float64(swaps)
	return num / den, nil
}

// mergeCount sorts v ascending and returns the number of strict
// inversions (pairs i<j with v[i] > v[j]).
func mergeCount(v, buf []float64) int64 {
	n := len(v)
	if n < 2 {
		return 0
	}
	m := n / 2
	c := mergeCount(v[:m], buf[:m]) + mergeCount(v[m:], buf[m:])
	i, j, k := 0, m, 0
	for i < m && j < n {
		if v[j] < v[i] {
			buf[k] = v[j]
			c += int64(m - i)
			j++
		} else {
			buf[k] = v[i]
			i++
		}
		k++
	}
	k += copy(buf[k:], v[i:m])
	copy(buf[k:], v[j:n])
	copy(v, buf[:n])
	return c
}

// RMSE returns the root mean squared difference of x and y.
func RMSE(x, y []float64) (float64, error) {
	if err := CheckPairs(x, y); err != nil {
		return math.NaN(), fmt.Errorf("rmse: %w", err)
	}
	var s float64
	for i := range x {
		d := x[i] - y[i]
		s += d * d
	}
	return math.Sqrt(s / float64(len(x))), nil
}
