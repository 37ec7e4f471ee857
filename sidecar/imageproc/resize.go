package imageproc

import (
	"image"
	"math"
)

// Resampling follows PIL's Image.resize with Image.LANCZOS (Pillow 9.x
// libImaging/Resample.c) on 8-bit RGB, so that outputs match PIL exactly:
//
//   - a separable filter, horizontal pass first (only over the source rows the
//     vertical pass needs), then vertical, each pass rounding to uint8;
//   - Lanczos with a = 3: sinc(x)·sinc(x/3) on [−3, 3), support scaled by
//     the downscale factor (antialiasing), never below 1;
//   - per output pixel, taps from round(center ± support) clamped to the image,
//     weights normalised to sum 1 and then converted to 22-bit fixed point
//     (rounded half away from zero), accumulated in integers from 2^21 and
//     shifted right by 22 with clipping to 0..255.
//
// The choice of uint8 with PIL's rounding (over float32) is deliberate: the
// Hugging Face processor resizes PIL images, so every pass is quantised to
// uint8 there too, and the Idefics3 split mode chains several resizes.

const precisionBits = 32 - 8 - 2

const lanczosSupport = 3.0

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	x *= math.Pi
	return math.Sin(x) / x
}

func lanczos(x float64) float64 {
	if -3 <= x && x < 3 {
		return sinc(x) * sinc(x/3)
	}
	return 0
}

// bicubic is PIL's bicubic_filter (Keys' cubic with a = −0.5, support 2).
func bicubic(x float64) float64 {
	const a = -0.5
	if x < 0 {
		x = -x
	}
	if x < 1 {
		return ((a+2)*x-(a+3))*x*x + 1
	}
	if x < 2 {
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// filter is one of PIL's resampling filters: its kernel and support.
type filter struct {
	fn      func(float64) float64
	support float64
}

var (
	filterLanczos = filter{lanczos, lanczosSupport}
	filterBicubic = filter{bicubic, 2}
)

// coeffs are the fixed-point filter taps of one resampling pass.
type coeffs struct {
	ksize  int
	bounds []int   // per output pixel: first input index, tap count
	k      []int32 // outSize × ksize
}

// precompute builds the taps for resampling inSize pixels (box in0..in1) to
// outSize pixels, as PIL's precompute_coeffs and normalize_coeffs_8bpc.
func precompute(f filter, inSize int, in0, in1 float64, outSize int) coeffs {
	scale := (in1 - in0) / float64(outSize)
	filterscale := max(scale, 1.0)
	support := f.support * filterscale
	ksize := int(math.Ceil(support))*2 + 1
	c := coeffs{ksize: ksize, bounds: make([]int, 2*outSize), k: make([]int32, outSize*ksize)}
	w := make([]float64, ksize)
	for xx := range outSize {
		center := in0 + (float64(xx)+0.5)*scale
		ss := 1.0 / filterscale
		xmin := int(center - support + 0.5) // C's (int) truncates toward zero
		if xmin < 0 {
			xmin = 0
		}
		xmax := int(center + support + 0.5)
		if xmax > inSize {
			xmax = inSize
		}
		xmax -= xmin
		var ww float64
		for x := 0; x < xmax; x++ {
			w[x] = f.fn((float64(x+xmin) - center + 0.5) * ss)
			ww += w[x]
		}
		k := c.k[xx*ksize : (xx+1)*ksize]
		for x := 0; x < xmax; x++ {
			v := w[x]
			if ww != 0 {
				v /= ww
			}
			if v < 0 {
				k[x] = int32(-0.5 + v*(1<<precisionBits))
			} else {
				k[x] = int32(0.5 + v*(1<<precisionBits))
			}
		}
		c.bounds[2*xx], c.bounds[2*xx+1] = xmin, xmax
	}
	return c
}

func clip8(ss int64) uint8 {
	v := ss >> precisionBits
	switch {
	case v < 0:
		return 0
	case v > 255:
		return 255
	}
	return uint8(v)
}

// resizeLanczos resizes an opaque RGBA image (alpha ignored, output alpha
// 255) to w×h with PIL-exact Lanczos resampling. It returns src itself when
// the size is unchanged, as PIL returns a copy.
func resizeLanczos(src *image.RGBA, w, h int) *image.RGBA {
	return resample(src, w, h, filterLanczos)
}

// resizeBicubic is resizeLanczos with PIL's Image.BICUBIC filter.
func resizeBicubic(src *image.RGBA, w, h int) *image.RGBA {
	return resample(src, w, h, filterBicubic)
}

// resample resizes src to w×h with filter f, as PIL's ImagingResample on
// 8-bit RGB.
func resample(src *image.RGBA, w, h int, f filter) *image.RGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	if sw == w && sh == h {
		return src
	}
	horiz := precompute(f, sw, 0, float64(sw), w)
	vert := precompute(f, sh, 0, float64(sh), h)
	img := src
	if w != sw {
		// Only the source rows the vertical pass reads.
		first := vert.bounds[0]
		last := vert.bounds[2*h-2] + vert.bounds[2*h-1]
		if h == sh {
			first, last = 0, sh
		} else {
			for i := range h {
				vert.bounds[2*i] -= first
			}
		}
		tmp := image.NewRGBA(image.Rect(0, 0, w, last-first))
		for yy := 0; yy < last-first; yy++ {
			in := src.Pix[src.PixOffset(src.Rect.Min.X, src.Rect.Min.Y+yy+first):]
			out := tmp.Pix[yy*tmp.Stride:]
			for xx := range w {
				xmin, n := horiz.bounds[2*xx], horiz.bounds[2*xx+1]
				k := horiz.k[xx*horiz.ksize:]
				s0, s1, s2 := int64(1<<(precisionBits-1)), int64(1<<(precisionBits-1)), int64(1<<(precisionBits-1))
				for x := range n {
					p := 4 * (x + xmin)
					kv := int64(k[x])
					s0 += int64(in[p]) * kv
					s1 += int64(in[p+1]) * kv
					s2 += int64(in[p+2]) * kv
				}
				out[4*xx], out[4*xx+1], out[4*xx+2], out[4*xx+3] = clip8(s0), clip8(s1), clip8(s2), 255
			}
		}
		img = tmp
	}
	if h == sh {
		return img
	}
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	acc := make([]int64, 3*w)
	for yy := range h {
		ymin, n := vert.bounds[2*yy], vert.bounds[2*yy+1]
		k := vert.k[yy*vert.ksize:]
		for i := range acc {
			acc[i] = 1 << (precisionBits - 1)
		}
		for y := range n {
			in := img.Pix[img.PixOffset(img.Rect.Min.X, img.Rect.Min.Y+ymin+y):]
			kv := int64(k[y])
			for xx := range w {
				acc[3*xx] += int64(in[4*xx]) * kv
				acc[3*xx+1] += int64(in[4*xx+1]) * kv
				acc[3*xx+2] += int64(in[4*xx+2]) * kv
			}
		}
		row := out.Pix[yy*out.Stride:]
		for xx := range w {
			row[4*xx], row[4*xx+1], row[4*xx+2], row[4*xx+3] = clip8(acc[3*xx]), clip8(acc[3*xx+1]), clip8(acc[3*xx+2]), 255
		}
	}
	return out
}
