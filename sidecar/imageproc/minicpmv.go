package imageproc

import (
	"fmt"
	"image"
	"math"
)

// MiniCPM-V 2.5 slicing, as the model's remote code (`slice_image`,
// `find_best_resize`, `get_refine_size`, `split_to_patches`) does it:
//
//   - ratio = w·h/scale², multiple = min(ceil(ratio), maxSlices); with
//     multiple ≤ 1 the image is only resized (upscaling allowed) to an area
//     near scale² with sides that are multiples of the patch size;
//   - otherwise the source image is downscaled the same way, and the grid
//     (cols, rows) with cols·rows ∈ {multiple−1, multiple, multiple+1} (1
//     and counts above maxSlices excluded) minimising |log(w/h) −
//     log(cols/rows)| is chosen, ties keeping the first; the image is
//     resized to the refined size and cut into cols×rows equal cells,
//     row-major;
//   - sizes round with Python's round (half to even) and truncate with int();
//     resizes are PIL's BICUBIC on 8-bit RGB.

// SliceOptions configures MiniCPM-V slicing.
type SliceOptions struct {
	// MaxSlices is max_slice_nums (9 by default; 4 for the AIGIQA-20K
	// adapter).
	MaxSlices int
	// ScaleResolution is the side of the area each slice aims at (448).
	ScaleResolution int
	// PatchSize is the vision patch size (14).
	PatchSize int
	// NeverSplit resizes only.
	NeverSplit bool
}

func (o SliceOptions) withDefaults() (SliceOptions, error) {
	if o.MaxSlices == 0 {
		o.MaxSlices = 9
	}
	if o.ScaleResolution == 0 {
		o.ScaleResolution = 448
	}
	if o.PatchSize == 0 {
		o.PatchSize = 14
	}
	if o.MaxSlices < 1 || o.ScaleResolution < 1 || o.PatchSize < 1 {
		return o, fmt.Errorf("slice options %+v: every value must be positive", o)
	}
	return o, nil
}

// Slices is an image cut the MiniCPM-V way.
type Slices struct {
	// Source is the whole image resized; it always comes first.
	Source *image.RGBA
	// Cols and Rows are the grid; 0 when the image was not split.
	Cols, Rows int
	// Cells are the grid's cells, row-major.
	Cells []*image.RGBA
}

// Images returns the source followed by the cells, the order the model
// encodes them in.
func (s *Slices) Images() []*image.RGBA {
	return append([]*image.RGBA{s.Source}, s.Cells...)
}

// pyRound is Python 3's round(): half to even.
func pyRound(x float64) float64 { return math.RoundToEven(x) }

// ensureDivide is max(round(length/patch)·patch, patch).
func ensureDivide(length float64, patch int) int {
	return max(int(pyRound(length/float64(patch)))*patch, patch)
}

// BestResize is find_best_resize: when the area exceeds scale² (or
// upscaling is allowed) the size is scaled to an area near scale² keeping
// the aspect ratio, then each side is rounded to a multiple of patch.
func BestResize(width, height float64, scale, patch int, allowUpscale bool) (int, int) {
	if width*height > float64(scale*scale) || allowUpscale {
		r := width / height
		height = math.Trunc(float64(scale) / math.Sqrt(r))
		width = math.Trunc(height * r)
	}
	return ensureDivide(width, patch), ensureDivide(height, patch)
}

// RefineSize is get_refine_size: the size the image is resized to before
// it is cut into cols×rows cells of a patch-aligned size.
func RefineSize(width, height, cols, rows, scale, patch int, allowUpscale bool) (int, int) {
	rw := ensureDivide(float64(width), cols)
	rh := ensureDivide(float64(height), rows)
	gw, gh := BestResize(float64(rw)/float64(cols), float64(rh)/float64(rows), scale, patch, allowUpscale)
	return gw * cols, gh * rows
}

// BestGrid returns the grid slice_image chooses for a width×height image,
// or (0, 0) when the image is not split.
func BestGrid(width, height int, o SliceOptions) (cols, rows int, err error) {
	if o, err = o.withDefaults(); err != nil {
		return 0, 0, err
	}
	if width < 1 || height < 1 {
		return 0, 0, fmt.Errorf("slice %dx%d image: empty", width, height)
	}
	ratio := float64(width) * float64(height) / float64(o.ScaleResolution*o.ScaleResolution)
	multiple := min(int(math.Ceil(ratio)), o.MaxSlices)
	if multiple <= 1 || o.NeverSplit {
		return 0, 0, nil
	}
	logRatio := math.Log(float64(width) / float64(height))
	best := [2]int{1, 1}
	minErr := math.Inf(1)
	for _, n := range []int{multiple - 1, multiple, multiple + 1} {
		if n == 1 || n > o.MaxSlices {
			continue
		}
		for m := 1; m <= n; m++ {
			if n%m != 0 {
				continue
			}
			e := math.Abs(logRatio - math.Log(float64(m)/float64(n/m)))
			if e < minErr {
				best, minErr = [2]int{m, n / m}, e
			}
		}
	}
	return best[0], best[1], nil
}

// SliceMiniCPMV cuts img as MiniCPM-V 2.5's slice_image does.
func SliceMiniCPMV(img image.Image, o SliceOptions) (*Slices, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	rgb := toRGBA(img)
	w, h := rgb.Rect.Dx(), rgb.Rect.Dy()
	cols, rows, err := BestGrid(w, h, o)
	if err != nil {
		return nil, err
	}
	if cols == 0 {
		sw, sh := BestResize(float64(w), float64(h), o.ScaleResolution, o.PatchSize, true)
		return &Slices{Source: resizeBicubic(rgb, sw, sh)}, nil
	}
	sw, sh := BestResize(float64(w), float64(h), o.ScaleResolution, o.PatchSize, false)
	out := &Slices{Source: resizeBicubic(rgb, sw, sh), Cols: cols, Rows: rows}
	rw, rh := RefineSize(w, h, cols, rows, o.ScaleResolution, o.PatchSize, true)
	refined := resizeBicubic(rgb, rw, rh)
	cw, ch := rw/cols, rh/rows
	for r := range rows {
		for c := range cols {
			cell := image.NewRGBA(image.Rect(0, 0, cw, ch))
			for y := range ch {
				src := refined.Pix[refined.PixOffset(refined.Rect.Min.X+c*cw, refined.Rect.Min.Y+r*ch+y):]
				copy(cell.Pix[y*cell.Stride:y*cell.Stride+4*cw], src[:4*cw])
			}
			out.Cells = append(out.Cells, cell)
		}
	}
	return out, nil
}

// toRGBA returns img as an *image.RGBA with its origin at (0, 0).
func toRGBA(img image.Image) *image.RGBA {
	if r, ok := img.(*image.RGBA); ok && r.Rect.Min == (image.Point{}) {
		return r
	}
	b := img.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := range b.Dy() {
		for x := range b.Dx() {
			out.Set(x, y, img.At(b.Min.X+x, b.Min.Y+y))
		}
	}
	return out
}

// NormaliseCHW returns a slice's pixels as float32 in C×H×W order,
// preprocessed as MiniCPM-V does (torchvision ToTensor, then Normalize with
// mean = std = 0.5): float32(u8)/255 in float32, then (x − 0.5)/0.5.
func NormaliseCHW(img *image.RGBA) []float32 {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	out := make([]float32, 3*w*h)
	for y := range h {
		row := img.Pix[img.PixOffset(img.Rect.Min.X, img.Rect.Min.Y+y):]
		for x := range w {
			for c := range 3 {
				v := float32(row[4*x+c]) / 255
				out[c*w*h+y*w+x] = (v - 0.5) / 0.5
			}
		}
	}
	return out
}
