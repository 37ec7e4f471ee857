package review

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/gif" // decode GIF images
	"image/jpeg"
	_ "image/png" // decode PNG images

	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // decode WebP images
)

// ThumbSide is the longest side, in pixels, of the thumbnails Thumbnail
// makes by default: twice the 160 CSS pixels a card shows, for sharp
// thumbnails on high-density screens.
const ThumbSide = 320

// MaxThumbPixels bounds the images Thumbnail decodes (width × height):
// larger ones get no thumbnail rather than costing the daemon gigabytes.
const MaxThumbPixels = 64 << 20

// ErrTooLarge is returned for images over MaxThumbPixels.
var ErrTooLarge = errors.New("image too large for a thumbnail")

// Thumbnail decodes an image (PNG, JPEG, GIF, WebP) and returns it scaled
// down to at most side pixels on its longest side (never up), flattened
// onto white and encoded as JPEG. The size is checked from the header
// before the pixels are decoded.
func Thumbnail(data []byte, side int) ([]byte, error) {
	if side <= 0 {
		side = ThumbSide
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("thumbnail: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("thumbnail: image is %dx%d", cfg.Width, cfg.Height)
	}
	if int64(cfg.Width)*int64(cfg.Height) > MaxThumbPixels {
		return nil, fmt.Errorf("thumbnail: %dx%d: %w", cfg.Width, cfg.Height, ErrTooLarge)
	}
	src, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("thumbnail: %w", err)
	}
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	if w > side || h > side {
		if w >= h {
			w, h = side, max(1, h*side/w)
		} else {
			w, h = max(1, w*side/h), side
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	xdraw.CatmullRom.Scale(dst, dst.Bounds(), src, b, xdraw.Over, nil)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: 80}); err != nil {
		return nil, fmt.Errorf("thumbnail: %w", err)
	}
	return buf.Bytes(), nil
}

// DataURL returns a JPEG as a data: URL.
func DataURL(jpegData []byte) string {
	return "data:image/jpeg;base64," + base64.StdEncoding.EncodeToString(jpegData)
}
