// Package imageproc decodes images and turns them into the normalised
// float32 pixel tiles an Idefics3/SmolVLM vision encoder takes, following the
// Hugging Face Idefics3 image processor (PIL Lanczos resampling, rescale,
// normalise, optional tiling). It is pure Go; sidecar/mllm turns its slices
// into tensors.
package imageproc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"strconv"

	"golang.org/x/image/webp"
)

// DefaultMaxPixels is the pixel limit Decode applies when given maxPixels
// <= 0. It is PIL's MAX_IMAGE_PIXELS (about 89.5 Mpx).
const DefaultMaxPixels = 89_478_485

// Budgets Decode applies from the header, before decoding.
const (
	// MaxAspect is the largest ratio of the longer side to the shorter one:
	// an 89M×1 strip is no picture, and the preprocessing would spend
	// minutes resampling it.
	MaxAspect = 20
	// MaxDecodedBytes bounds the memory of the decoder's output (pixels ×
	// bytes per pixel of the image's colour model): 8-bit images up to
	// DefaultMaxPixels fit; 16-bit ones of more than ~48 Mpx do not.
	MaxDecodedBytes = 384 << 20
	// ReduceAbove is the longest edge above which Decode box-reduces the
	// image by an integer factor while converting it, to a longest edge in
	// (ReduceAbove/2, ReduceAbove]: the preprocessing never resizes from more
	// than MaxImageSize, so the full-size copy would only cost memory.
	ReduceAbove = 2 * MaxImageSize
)

// Format is an image container format Decode recognises.
type Format string

// Formats Decode recognises. Only JPEG, PNG, WebP and GIF are decoded; BMP and
// TIFF are recognised so the error can name them.
const (
	JPEG Format = "JPEG"
	PNG  Format = "PNG"
	WebP Format = "WebP"
	GIF  Format = "GIF"
	BMP  Format = "BMP"
	TIFF Format = "TIFF"
)

// Sniff names the format of encoded image data from its magic bytes, or
// returns "" when it is not recognised.
func Sniff(data []byte) Format {
	switch {
	case bytes.HasPrefix(data, []byte{0xff, 0xd8, 0xff}):
		return JPEG
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		return PNG
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return WebP
	case bytes.HasPrefix(data, []byte("GIF87a")), bytes.HasPrefix(data, []byte("GIF89a")):
		return GIF
	case bytes.HasPrefix(data, []byte("BM")):
		return BMP
	case bytes.HasPrefix(data, []byte("II*\x00")), bytes.HasPrefix(data, []byte("MM\x00*")):
		return TIFF
	}
	return ""
}

// Decode decodes a JPEG, PNG, WebP or GIF (first frame) image into an
// opaque *image.RGBA: the JPEG EXIF orientation is applied, transparency is
// composited on white, and grayscale, paletted, YCbCr and CMYK images are
// converted to RGB. The pixel count, the aspect ratio (MaxAspect) and the
// decoded size (MaxDecodedBytes) are checked from the header before
// anything is decoded, so decompression bombs over maxPixels (<= 0 means
// DefaultMaxPixels) are refused without allocating their pixels. An image
// whose longest edge is over ReduceAbove is box-reduced while it is
// converted (see ReduceAbove); smaller images keep their exact pixels.
func Decode(data []byte, maxPixels int64) (image.Image, error) {
	if maxPixels <= 0 {
		maxPixels = DefaultMaxPixels
	}
	if len(data) == 0 {
		return nil, errors.New("decode image: no data")
	}
	f := Sniff(data)
	var (
		decodeConfig func([]byte) (image.Config, error)
		decode       func([]byte) (image.Image, error)
	)
	switch f {
	case JPEG:
		decodeConfig = func(b []byte) (image.Config, error) { return jpeg.DecodeConfig(bytes.NewReader(b)) }
		decode = func(b []byte) (image.Image, error) { return jpeg.Decode(bytes.NewReader(b)) }
	case PNG:
		decodeConfig = func(b []byte) (image.Config, error) { return png.DecodeConfig(bytes.NewReader(b)) }
		decode = func(b []byte) (image.Image, error) { return png.Decode(bytes.NewReader(b)) }
	case WebP:
		decodeConfig = func(b []byte) (image.Config, error) { return webp.DecodeConfig(bytes.NewReader(b)) }
		decode = func(b []byte) (image.Image, error) { return webp.Decode(bytes.NewReader(b)) }
	case GIF:
		decodeConfig = func(b []byte) (image.Config, error) { return gif.DecodeConfig(bytes.NewReader(b)) }
		decode = decodeGIF
	case BMP, TIFF:
		return nil, fmt.Errorf("decode image: unsupported format %s (supported: JPEG, PNG, WebP, GIF)", f)
	default:
		n := min(len(data), 8)
		return nil, fmt.Errorf("decode image: unrecognised format (first bytes % x; supported: JPEG, PNG, WebP, GIF)", data[:n])
	}
	cfg, err := decodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s header: %w", f, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("decode %s: image has zero size (%d×%d)", f, cfg.Width, cfg.Height)
	}
	px := int64(cfg.Width) * int64(cfg.Height)
	if px > maxPixels {
		return nil, fmt.Errorf("decode %s: image is %d×%d = %s Mpx, over the limit of %d pixels (%s Mpx)",
			f, cfg.Width, cfg.Height, mpx(px), maxPixels, mpx(maxPixels))
	}
	long, short := max(cfg.Width, cfg.Height), min(cfg.Width, cfg.Height)
	if long > MaxAspect*short {
		return nil, fmt.Errorf("decode %s: image is %d×%d, an aspect ratio over the limit of %d:1", f, cfg.Width, cfg.Height, MaxAspect)
	}
	if n := px * bytesPerPixel(cfg.ColorModel); n > MaxDecodedBytes {
		return nil, fmt.Errorf("decode %s: image is %d×%d and would take %d MiB decoded, over the limit of %d MiB", f, cfg.Width, cfg.Height, n>>20, MaxDecodedBytes>>20)
	}
	img, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", f, err)
	}
	b := img.Bounds()
	if b.Dx() <= 0 || b.Dy() <= 0 {
		return nil, fmt.Errorf("decode %s: image has zero size (%d×%d)", f, b.Dx(), b.Dy())
	}
	var out *image.RGBA
	if k := reduction(b.Dx(), b.Dy()); k > 1 {
		out = reduce(img, k)
	} else {
		out = toRGB(img)
	}
	if f == JPEG {
		if o := jpegOrientation(data); o > 1 {
			out = orient(out, o)
		}
	}
	return out, nil
}

// mpx formats a pixel count in megapixels.
func mpx(px int64) string {
	return strconv.FormatFloat(float64(px)/1e6, 'f', -1, 64)
}

// decodeGIF returns the first frame on the GIF's logical screen (parts of the
// screen the frame does not cover are transparent, so white after toRGB).
func decodeGIF(b []byte) (image.Image, error) {
	cfg, err := gif.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	frame, err := gif.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	screen := image.Rect(0, 0, cfg.Width, cfg.Height)
	if frame.Bounds() == screen {
		return frame, nil
	}
	canvas := image.NewNRGBA(screen)
	draw.Draw(canvas, frame.Bounds().Intersect(screen), frame, frame.Bounds().Min, draw.Src)
	return canvas, nil
}

// bytesPerPixel is the memory per pixel of the decoder's output for an
// image of colour model m.
func bytesPerPixel(m color.Model) int64 {
	switch m {
	case color.GrayModel, color.AlphaModel:
		return 1
	case color.Gray16Model, color.Alpha16Model:
		return 2
	case color.YCbCrModel, color.NYCbCrAModel:
		return 3 // up to 4:4:4 (+ alpha for WebP: 4:2:0 planes, below that)
	case color.RGBA64Model, color.NRGBA64Model:
		return 8
	}
	if _, ok := m.(color.Palette); ok {
		return 1
	}
	return 4 // RGBA, NRGBA, CMYK
}

// reduction is the integer factor that brings the longest edge of a w×h
// image to at most ReduceAbove (1: keep it).
func reduction(w, h int) int {
	long := max(w, h)
	if long <= ReduceAbove {
		return 1
	}
	return (long + ReduceAbove - 1) / ReduceAbove
}

// reduce converts img to an opaque *image.RGBA of ceil(w/k)×ceil(h/k)
// pixels, each the mean of a k×k block (partial at the right and bottom
// edges). A YCbCr image (JPEG) is reduced straight from its planes, so its
// full-size RGB copy is never made.
func reduce(img image.Image, k int) *image.RGBA {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	ow, oh := (w+k-1)/k, (h+k-1)/k
	out := image.NewRGBA(image.Rect(0, 0, ow, oh))
	sum := make([]uint32, 3*ow)
	cnt := make([]uint32, ow)
	var src *image.RGBA
	yc, isYCbCr := img.(*image.YCbCr)
	if !isYCbCr {
		src = toRGB(img)
	}
	for oy := range oh {
		clear(sum)
		clear(cnt)
		for y := oy * k; y < min((oy+1)*k, h); y++ {
			for x := range w {
				var r, g, bb uint8
				if isYCbCr {
					yi := yc.YOffset(b.Min.X+x, b.Min.Y+y)
					ci := yc.COffset(b.Min.X+x, b.Min.Y+y)
					r, g, bb = color.YCbCrToRGB(yc.Y[yi], yc.Cb[ci], yc.Cr[ci])
				} else {
					p := src.Pix[y*src.Stride+4*x:]
					r, g, bb = p[0], p[1], p[2]
				}
				o := x / k
				sum[3*o] += uint32(r)
				sum[3*o+1] += uint32(g)
				sum[3*o+2] += uint32(bb)
				cnt[o]++
			}
		}
		row := out.Pix[oy*out.Stride:]
		for o := range ow {
			c := cnt[o]
			row[4*o] = uint8((sum[3*o] + c/2) / c)
			row[4*o+1] = uint8((sum[3*o+1] + c/2) / c)
			row[4*o+2] = uint8((sum[3*o+2] + c/2) / c)
			row[4*o+3] = 255
		}
	}
	return out
}

// toRGB converts any image to an opaque *image.RGBA with origin (0, 0),
// compositing transparent pixels on white. An *image.RGBA or *image.NRGBA
// with origin (0, 0) is converted in place (the decoder's output is ours),
// so a large image is not held twice.
func toRGB(img image.Image) *image.RGBA {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	var out *image.RGBA
	switch src := img.(type) {
	case *image.RGBA:
		if b.Min == (image.Point{}) {
			out = src
		}
	case *image.NRGBA:
		if b.Min == (image.Point{}) {
			out = &image.RGBA{Pix: src.Pix, Stride: src.Stride, Rect: src.Rect}
		}
	}
	if out == nil {
		out = image.NewRGBA(image.Rect(0, 0, w, h))
	}
	switch src := img.(type) {
	case *image.YCbCr:
		for y := range h {
			row := out.Pix[y*out.Stride:]
			for x := range w {
				yi := src.YOffset(b.Min.X+x, b.Min.Y+y)
				ci := src.COffset(b.Min.X+x, b.Min.Y+y)
				r, g, bb := color.YCbCrToRGB(src.Y[yi], src.Cb[ci], src.Cr[ci])
				row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = r, g, bb, 255
			}
		}
	case *image.Gray:
		for y := range h {
			row := out.Pix[y*out.Stride:]
			in := src.Pix[src.PixOffset(b.Min.X, b.Min.Y+y):]
			for x := range w {
				v := in[x]
				row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = v, v, v, 255
			}
		}
	case *image.RGBA:
		for y := range h {
			row := out.Pix[y*out.Stride:]
			in := src.Pix[src.PixOffset(b.Min.X, b.Min.Y+y):]
			for x := range w {
				bg := 255 - in[4*x+3] // premultiplied: v + 255·(1−a)
				row[4*x], row[4*x+1], row[4*x+2], row[4*x+3] = in[4*x]+bg, in[4*x+1]+bg, in[4*x+2]+bg, 255
			}
		}
	case *image.NRGBA:
		for y := range h {
			row := out.Pix[y*out.Stride:]
			in := src.Pix[src.PixOffset(b.Min.X, b.Min.Y+y):]
			for x := range w {
				a := uint32(in[4*x+3])
				for c := range 3 {
					// v·a/255 + 255·(255−a)/255, rounded.
					row[4*x+c] = uint8((uint32(in[4*x+c])*a + 255*(255-a) + 127) / 255)
				}
				row[4*x+3] = 255
			}
		}
	default:
		for y := range h {
			row := out.Pix[y*out.Stride:]
			for x := range w {
				r, g, bb, a := img.At(b.Min.X+x, b.Min.Y+y).RGBA() // premultiplied, 16-bit
				bg := 0xffff - a
				row[4*x] = uint8((r + bg + 128) / 257)
				row[4*x+1] = uint8((g + bg + 128) / 257)
				row[4*x+2] = uint8((bb + bg + 128) / 257)
				row[4*x+3] = 255
			}
		}
	}
	return out
}

// jpegOrientation returns the EXIF Orientation (1–8) from a JPEG's APP1 Exif
// segment, or 1 when there is none or it cannot be read. Only IFD0 is
// consulted, as PIL's exif_transpose does.
func jpegOrientation(data []byte) int {
	p := 2 // after SOI
	for p+4 <= len(data) {
		if data[p] != 0xff {
			return 1
		}
		marker := data[p+1]
		if marker == 0xff { // fill byte
			p++
			continue
		}
		if marker == 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker == 0x01 {
			p += 2
			continue
		}
		if marker == 0xda || marker == 0xd9 { // start of scan / end of image
			return 1
		}
		n := int(binary.BigEndian.Uint16(data[p+2:]))
		if n < 2 || p+2+n > len(data) {
			return 1
		}
		seg := data[p+4 : p+2+n]
		if marker == 0xe1 && bytes.HasPrefix(seg, []byte("Exif\x00\x00")) {
			return exifOrientation(seg[6:])
		}
		p += 2 + n
	}
	return 1
}

// exifOrientation reads tag 0x0112 from IFD0 of a TIFF-structured EXIF block.
func exifOrientation(t []byte) int {
	if len(t) < 8 {
		return 1
	}
	var bo binary.ByteOrder
	switch string(t[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 1
	}
	if bo.Uint16(t[2:]) != 42 {
		return 1
	}
	ifd := int64(bo.Uint32(t[4:]))
	if ifd < 8 || ifd+2 > int64(len(t)) {
		return 1
	}
	count := int64(bo.Uint16(t[ifd:]))
	for i := range count {
		e := ifd + 2 + 12*i
		if e+12 > int64(len(t)) {
			return 1
		}
		if bo.Uint16(t[e:]) != 0x0112 {
			continue
		}
		typ, n := bo.Uint16(t[e+2:]), bo.Uint32(t[e+4:])
		var v int
		switch {
		case typ == 3 && n >= 1: // SHORT, stored in the value field
			v = int(bo.Uint16(t[e+8:]))
		case typ == 4 && n >= 1: // LONG, tolerated
			v = int(bo.Uint32(t[e+8:]))
		default:
			return 1
		}
		if v < 1 || v > 8 {
			return 1
		}
		return v
	}
	return 1
}

// orient applies an EXIF orientation (2–8) so the image displays upright,
// as PIL's ImageOps.exif_transpose does: 2 mirror, 3 rotate 180°, 4 flip,
// 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate 90°
// counter-clockwise.
func orient(src *image.RGBA, o int) *image.RGBA {
	w, h := src.Rect.Dx(), src.Rect.Dy()
	ow, oh := w, h
	if o >= 5 {
		ow, oh = h, w
	}
	// from maps an output pixel to its source pixel.
	var from func(x, y int) (int, int)
	switch o {
	case 2:
		from = func(x, y int) (int, int) { return w - 1 - x, y }
	case 3:
		from = func(x, y int) (int, int) { return w - 1 - x, h - 1 - y }
	case 4:
		from = func(x, y int) (int, int) { return x, h - 1 - y }
	case 5:
		from = func(x, y int) (int, int) { return y, x }
	case 6:
		from = func(x, y int) (int, int) { return y, h - 1 - x }
	case 7:
		from = func(x, y int) (int, int) { return w - 1 - y, h - 1 - x }
	case 8:
		from = func(x, y int) (int, int) { return w - 1 - y, x }
	default:
		return src
	}
	out := image.NewRGBA(image.Rect(0, 0, ow, oh))
	for y := range oh {
		for x := range ow {
			sx, sy := from(x, y)
			copy(out.Pix[y*out.Stride+4*x:y*out.Stride+4*x+4], src.Pix[sy*src.Stride+4*sx:])
		}
	}
	return out
}
