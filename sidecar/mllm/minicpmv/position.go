package minicpmv

import (
	"math"
)

// torchArangeF32 returns torch.arange(start, end, step) as libtorch 1.13's
// CPU kernel fills a float32 tensor on an AVX2 machine: the length is
// ceil((end−start)/step) in double precision; the elements are made in
// pairs of 8-wide vectors, each vector from its first element
// float32(start + step·i) computed in double, then base + k·step in double
// rounded to float32 (Vectorized<float>::arange), and the tail past the
// last full pair of vectors element by element, float32(start + step·i).
// The two formulas differ in the last bit for many elements, which moves
// some bucketed position ids by one; a plain float32(start + step·i) is
// wrong for most lengths. (An AVX-512 build uses 16-wide vectors; the
// reference and this code follow the AVX2 build Debian ships.)
func torchArangeF32(start, end, step float64) []float32 {
	n := int(math.Ceil((end - start) / step))
	if n <= 0 {
		return nil
	}
	const w = 8
	out := make([]float32, 0, n)
	i := 0
	for ; i+2*w <= n; i += w {
		base := float32(start + step*float64(i))
		for k := range w {
			out = append(out, float32(float64(base)+float64(k)*step))
		}
	}
	for ; i < n; i++ {
		out = append(out, float32(start+step*float64(i)))
	}
	return out
}

// bucketizeRight is torch.bucketize(x, boundaries, right=True): the number
// of boundaries ≤ x, compared in float32.
func bucketizeRight(x float32, boundaries []float32) int {
	lo, hi := 0, len(boundaries)
	for lo < hi {
		mid := (lo + hi) / 2
		if boundaries[mid] <= x {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// PositionIDs returns the vision position ids MiniCPM-Llama3-V-2.5 gives
// the patches of every slice in a batch whose longest slice has nPatches
// patches, on a table of perSide×perSide positions (70 for the 980/14
// SigLIP). The 2.5 code builds its patch mask as (B, 1, patches) and sets
// mask[i, :n] = True, which fills the whole row: every slice, padding
// included, is bucketed as ONE ROW of nPatches patches,
// bucketize(arange(0, 1−1e-6, 1/nPatches), arange(1/perSide, 1, 1/perSide),
// right=True), with torch's float32 arange (torchArangeF32).
func PositionIDs(nPatches, perSide int) []int64 {
	boundaries := torchArangeF32(1/float64(perSide), 1.0, 1/float64(perSide))
	step := float64(float32(1) / float32(nPatches)) // 1/tensor(n) is a float32 tensor
	frac := torchArangeF32(0, 1-1e-6, step)
	ids := make([]int64, len(frac))
	for i, f := range frac {
		ids[i] = int64(bucketizeRight(f, boundaries))
	}
	return ids
}

// SinCos2D returns the resampler's 2-D sin-cos position table for an h×w
// grid of width dim, row-major over (row, col), as
// get_2d_sincos_pos_embed(version 2.5) builds it in float32 numpy: the
// first half of the channels encodes the column, the second half the row;
// within each half, sin of pos·ω then cos, ω_i = 1/10000^(i/(dim/4)).
func SinCos2D(dim, h, w int) []float32 {
	half := dim / 2
	quarter := half / 2
	omega := make([]float32, quarter)
	for i := range omega {
		o := float32(i) / float32(half/2)
		omega[i] = float32(1 / math.Pow(10000, float64(o)))
	}
	out := make([]float32, h*w*dim)
	enc := func(dst []float32, pos float32) {
		for i, om := range omega {
			a := float64(pos * om)
			dst[i] = float32(math.Sin(a))
			dst[quarter+i] = float32(math.Cos(a))
		}
	}
	for r := range h {
		for c := range w {
			row := out[(r*w+c)*dim:]
			enc(row[:half], float32(c))
			enc(row[half:dim], float32(r))
		}
	}
	return out
}
