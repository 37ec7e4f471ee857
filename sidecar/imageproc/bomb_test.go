package imageproc

import (
	"bytes"
	"compress/zlib"
	"image"
	"image/color"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/m3gate/m3gate/internal/testenv"
)

// rawPNG writes a non-interlaced PNG of w×h pixels of colour type ct
// (0 gray, 2 RGB, 6 RGBA) and bit depth bits, whose row y (filter byte
// excluded) is row(y); the deflate stream is written as the rows come,
// so huge images cost only their compressed size.
func rawPNG(w, h int, ct, bits byte, row func(y int, buf []byte)) []byte {
	return testenv.RawPNG(w, h, ct, bits, zlib.BestSpeed, row)
}

var (
	bombOnce sync.Once
	bomb     []byte
)

// bigRGBPNG is a 9400×9400 8-bit RGB PNG (88 Mpx, just under the pixel
// limit) of a horizontal ramp: a few hundred KB that decode to 353 MB.
func bigRGBPNG() []byte {
	bombOnce.Do(func() {
		bomb = rawPNG(9400, 9400, 2, 8, func(y int, buf []byte) {
			if y > 0 {
				return // every row is the same ramp
			}
			for x := range 9400 {
				buf[3*x], buf[3*x+1], buf[3*x+2] = byte(x/37), byte(255-x/37), 128
			}
		})
	})
	return bomb
}

func TestDecodeRefusesAspectAndBudgetBombs(t *testing.T) {
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		// 89M×1: under the pixel limit, 50 s of resampling before.
		{"89Mx1 strip", rawPNG(89_000_000, 1, 0, 8, nil), "aspect ratio"},
		{"1x2000 strip", rawPNG(1, 2000, 2, 8, nil), "aspect ratio"},
		// 16-bit RGBA 7500²: 56 Mpx but 450 MB decoded.
		{"16-bit 7500²", rawPNG(7500, 7500, 6, 16, nil), "MiB decoded"},
	} {
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		_, err := Decode(c.data, 0)
		runtime.ReadMemStats(&ms1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error naming %q", c.name, err, c.want)
		}
		if alloc := ms1.TotalAlloc - ms0.TotalAlloc; alloc > 16<<20 {
			t.Errorf("%s: refusing it allocated %d MB", c.name, alloc>>20)
		}
	}
	// 20:1 is still a picture.
	if img, err := Decode(rawPNG(2000, 100, 2, 8, nil), 0); err != nil || img.Bounds().Dx() != 2000 {
		t.Errorf("20:1 image: %v", err)
	}
}

// A 9400² PNG (88 Mpx, under the pixel limit) is decoded once, converted
// in place and box-reduced by 2 to 4700²: the decoder's 353 MB are not
// copied again (before: 353 MB more for the RGB copy, 4.3 GB in the
// sidecar).
func TestDecodeReducesHugeImageWithinBudget(t *testing.T) {
	data := bigRGBPNG()
	t.Logf("%d KB PNG of 9400×9400", len(data)>>10)
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	img, err := Decode(data, 0)
	runtime.ReadMemStats(&ms1)
	if err != nil {
		t.Fatal(err)
	}
	alloc := ms1.TotalAlloc - ms0.TotalAlloc
	t.Logf("allocated %d MB decoding it", alloc>>20)
	if decoded := uint64(9400 * 9400 * 4); alloc > decoded+decoded/4+32<<20 {
		t.Errorf("decoding allocated %d MB: more than the decoder's %d MB plus the reduced copy", alloc>>20, decoded>>20)
	}
	if b := img.Bounds(); b.Dx() != 4700 || b.Dy() != 4700 {
		t.Fatalf("reduced size %v, want 4700×4700", b)
	}
	// Output pixel x is the mean of source pixels 2x and 2x+1.
	for _, x := range []int{0, 100, 4699} {
		got := color.RGBAModel.Convert(img.At(x, 17)).(color.RGBA)
		r := (uint32(2*x/37) + uint32((2*x+1)/37) + 1) / 2
		if uint32(got.R) != r || got.B != 128 || got.A != 255 {
			t.Errorf("pixel %d: got %v, want R %d B 128", x, got, r)
		}
	}
	p, err := Preprocess(img, Options{Size: 512})
	if err != nil || len(p.Tiles) != 1 {
		t.Fatalf("preprocess: %v", err)
	}
}

func TestReduceYCbCrMatchesRGB(t *testing.T) {
	yc := image.NewYCbCr(image.Rect(0, 0, 9, 5), image.YCbCrSubsampleRatio420)
	for i := range yc.Y {
		yc.Y[i] = byte(i * 13)
	}
	for i := range yc.Cb {
		yc.Cb[i], yc.Cr[i] = byte(100+i*7), byte(200-i*5)
	}
	a := reduce(yc, 2)
	b := reduce(toRGB(yc), 2)
	if a.Bounds() != image.Rect(0, 0, 5, 3) || !bytes.Equal(a.Pix, b.Pix) {
		t.Errorf("YCbCr reduce %v differs from RGB reduce %v", a.Pix, b.Pix)
	}
}
