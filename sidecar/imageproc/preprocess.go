package imageproc

import (
	"errors"
	"fmt"
	"image"
	"math"
)

// MaxImageSize is the Hugging Face Idefics3 processor's absolute cap on the
// longest edge after the first resize (MAX_IMAGE_SIZE, "4k").
const MaxImageSize = 4096

// Options configures Preprocess. The zero value gives SmolVLM's settings for
// a single 512×512 image.
type Options struct {
	// Size is the tile side S in pixels (preprocessor_config
	// max_image_size.longest_edge; 512 for SmolVLM, 384 for SmolVLM-2.2B).
	// 0 means 512.
	Size int
	// Split enables do_image_splitting: the image becomes Rows×Cols tiles of
	// Size×Size plus a global Size×Size image (see Preprocess).
	Split bool
	// LongestEdge is the processor's size.longest_edge, the first resize of
	// the split mode (2048 for SmolVLM, so up to 4×4 tiles). 0 means 4×Size.
	// It is not used without Split.
	LongestEdge int
	// Mean and Std normalise each channel: (x − Mean)/Std. nil means 0.5 for
	// every channel (SmolVLM's image_mean and image_std).
	Mean, Std []float32
	// Rescale multiplies the uint8 values before normalising; 0 means 1/255.
	Rescale float64
	// MaxPixels is the decompression-bomb limit Load passes to Decode; <= 0
	// means DefaultMaxPixels.
	MaxPixels int64
}

// Pixels is a preprocessed image.
type Pixels struct {
	// Tiles are the vision encoder's input images, each 3×Size×Size float32
	// in CHW layout (channel planes R, G, B; rows top to bottom). With Split
	// and an image larger than one tile, Tiles holds Rows×Cols crops in
	// row-major order followed by the global image (the whole image resized
	// to Size×Size) last, as the Hugging Face processor orders them.
	// Otherwise it holds the single global image.
	Tiles [][]float32
	// Rows and Cols count the crops; both 0 when the image was not split
	// (no Split, or it fits one tile), which the Idefics3 prompt renders as
	// the single-image form (<global-img> only).
	Rows, Cols int
	// Size is the tile side S.
	Size int
}

// withDefaults fills the zero fields of o and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if o.Size == 0 {
		o.Size = 512
	}
	if o.Size < 1 || o.Size > MaxImageSize {
		return o, fmt.Errorf("tile size %d is outside 1..%d", o.Size, MaxImageSize)
	}
	if o.LongestEdge == 0 {
		o.LongestEdge = 4 * o.Size
	}
	if o.LongestEdge < 1 {
		return o, fmt.Errorf("longest edge %d is not positive", o.LongestEdge)
	}
	if o.Mean == nil {
		o.Mean = []float32{0.5, 0.5, 0.5}
	}
	if o.Std == nil {
		o.Std = []float32{0.5, 0.5, 0.5}
	}
	if len(o.Mean) != 3 || len(o.Std) != 3 {
		return o, fmt.Errorf("mean and std need 3 values each, got %d and %d", len(o.Mean), len(o.Std))
	}
	for _, s := range o.Std {
		if s == 0 || math.IsNaN(float64(s)) {
			return o, errors.New("std must be non-zero")
		}
	}
	if o.Rescale == 0 {
		o.Rescale = 1.0 / 255
	}
	return o, nil
}

// Load decodes image data (Decode with opts.MaxPixels) and preprocesses it.
func Load(data []byte, opts Options) (*Pixels, error) {
	img, err := Decode(data, opts.MaxPixels)
	if err != nil {
		return nil, err
	}
	return Preprocess(img, opts)
}

// Preprocess turns an image into normalised vision-encoder tiles, following
// the Hugging Face Idefics3 image processor with PIL Lanczos resampling:
//
// Without Split the image is resized straight to Size×Size (aspect ratio not
// kept), which is the processor's global image.
//
// With Split: (1) the longest edge is resized to LongestEdge keeping the
// aspect ratio (the other side truncated, then rounded up to even; capped at
// MaxImageSize); (2) each side is resized up to a multiple of Size
// (resize_for_vision_encoder); (3) if the result is larger than Size×Size it
// is cut into Size×Size crops, row-major, and the global image is that
// result resized to Size×Size; otherwise it is the only tile.
//
// Then every tile becomes float32(u8·Rescale), normalised as (x − Mean)/Std,
// in CHW layout. Transparent pixels are composited on white first (the
// processor composites after resizing; the difference is confined to
// semi-transparent edges) and grayscale becomes RGB (the processor resizes
// one-channel images in PIL "P" mode, which is nearest-neighbour).
func Preprocess(img image.Image, opts Options) (*Pixels, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("preprocess: %w", err)
	}
	if img == nil {
		return nil, errors.New("preprocess: nil image")
	}
	b := img.Bounds()
	if b.Dx() <= 0 || b.Dy() <= 0 {
		return nil, fmt.Errorf("preprocess: image has zero size (%d×%d)", b.Dx(), b.Dy())
	}
	rgb := toRGB(img)
	S := o.Size
	px := &Pixels{Size: S}
	if !o.Split {
		px.Tiles = [][]float32{normalise(resizeLanczos(rgb, S, S), o)}
		return px, nil
	}
	h, w := SplitSize(b.Dy(), b.Dx(), o.LongestEdge, S)
	fw, fh := firstSize(b.Dx(), b.Dy(), o.LongestEdge)
	first := resizeLanczos(rgb, fw, fh)
	work := resizeLanczos(first, w, h)
	if h > S || w > S {
		px.Rows, px.Cols = h/S, w/S
		for r := range px.Rows {
			for c := range px.Cols {
				tile := work.SubImage(image.Rect(c*S, r*S, (c+1)*S, (r+1)*S)).(*image.RGBA)
				px.Tiles = append(px.Tiles, normalise(tile, o))
			}
		}
		work = resizeLanczos(work, S, S)
	}
	px.Tiles = append(px.Tiles, normalise(work, o))
	return px, nil
}

// firstSize is the processor's first resize of the split mode: the longest
// edge to longestEdge keeping the aspect ratio (the short side truncated and
// rounded up to even, at least 1), then scaled below MaxImageSize. It
// returns width, height.
func firstSize(width, height, longestEdge int) (int, int) {
	aspect := float64(width) / float64(height)
	if width >= height {
		width = longestEdge
		height = int(float64(width) / aspect)
		if height%2 != 0 {
			height++
		}
	} else {
		height = longestEdge
		width = int(float64(height) * aspect)
		if width%2 != 0 {
			width++
		}
	}
	height, width = max(height, 1), max(width, 1)
	aspect = float64(width) / float64(height)
	if width >= height && width > MaxImageSize {
		width = MaxImageSize
		height = int(float64(width) / aspect)
	} else if height > width && height > MaxImageSize {
		height = MaxImageSize
		width = int(float64(height) * aspect)
	}
	return max(width, 1), max(height, 1)
}

// SplitSize returns the height and width, multiples of size, that the split
// mode resizes an image of the given height and width to before cutting
// tiles: firstSize then resize_for_vision_encoder. Rows = height/size and
// Cols = width/size when either exceeds size.
func SplitSize(height, width, longestEdge, size int) (int, int) {
	w, h := firstSize(width, height, longestEdge)
	aspect := float64(w) / float64(h)
	ceilTo := func(v int) int { return (v + size - 1) / size * size }
	if w >= h {
		w = ceilTo(w)
		h = int(float64(w) / aspect)
		h = ceilTo(h)
	} else {
		h = ceilTo(h)
		w = int(float64(h) * aspect)
		w = ceilTo(w)
	}
	return max(h, size), max(w, size)
}

// normalise turns an RGB tile into float32 CHW: float32(u8·rescale) then
// (x − mean)/std per channel.
func normalise(img *image.RGBA, o Options) []float32 {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	out := make([]float32, 3*w*h)
	var lut [3][256]float32
	for c := range 3 {
		for v := range 256 {
			x := float32(float64(v) * o.Rescale)
			lut[c][v] = (x - o.Mean[c]) / o.Std[c]
		}
	}
	plane := w * h
	for y := range h {
		row := img.Pix[img.PixOffset(img.Rect.Min.X, img.Rect.Min.Y+y):]
		for x := range w {
			i := y*w + x
			out[i] = lut[0][row[4*x]]
			out[plane+i] = lut[1][row[4*x+1]]
			out[2*plane+i] = lut[2][row[4*x+2]]
		}
	}
	return out
}
