package imageproc

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/image/webp"
)

// blockColors are the colours of the 3×2 block test pattern, row-major:
// A B C on top, D E F below.
var blockColors = map[byte]color.RGBA{
	'A': {255, 0, 0, 255}, 'B': {0, 255, 0, 255}, 'C': {0, 0, 255, 255},
	'D': {255, 255, 0, 255}, 'E': {0, 255, 255, 255}, 'F': {255, 0, 255, 255},
}

const block = 16 // block side in pixels (a multiple of the JPEG MCU)

// blockImage draws a grid of solid blocks; rows are strings of block letters.
func blockImage(rows ...string) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, block*len(rows[0]), block*len(rows)))
	for r, row := range rows {
		for c := range len(row) {
			col := blockColors[row[c]]
			for y := r * block; y < (r+1)*block; y++ {
				for x := c * block; x < (c+1)*block; x++ {
					img.SetRGBA(x, y, col)
				}
			}
		}
	}
	return img
}

// readBlocks returns the letter of the colour nearest to each block centre.
func readBlocks(t *testing.T, img image.Image) []string {
	t.Helper()
	b := img.Bounds()
	var rows []string
	for y := block / 2; y < b.Dy(); y += block {
		var row []byte
		for x := block / 2; x < b.Dx(); x += block {
			r, g, bb, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
			best, bestD := byte('?'), uint32(1<<31)
			for k, c := range blockColors {
				d := sq(r>>8, uint32(c.R)) + sq(g>>8, uint32(c.G)) + sq(bb>>8, uint32(c.B))
				if d < bestD {
					best, bestD = k, d
				}
			}
			if bestD > 3*40*40 {
				t.Fatalf("pixel (%d,%d) = %d,%d,%d is no block colour", x, y, r>>8, g>>8, bb>>8)
			}
			row = append(row, best)
		}
		rows = append(rows, string(row))
	}
	return rows
}

func sq(a, b uint32) uint32 {
	d := int64(a) - int64(b)
	return uint32(d * d)
}

func encodeJPEG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// withExif inserts an APP1 Exif segment holding IFD0 Orientation = o right
// after the JPEG's SOI marker, in the given byte order.
func withExif(jpg []byte, o uint16, bo binary.ByteOrder) []byte {
	tiff := make([]byte, 8+2+12+4)
	if bo == binary.LittleEndian {
		copy(tiff, "II")
	} else {
		copy(tiff, "MM")
	}
	bo.PutUint16(tiff[2:], 42)
	bo.PutUint32(tiff[4:], 8)
	bo.PutUint16(tiff[8:], 1)       // one entry
	bo.PutUint16(tiff[10:], 0x0112) // Orientation
	bo.PutUint16(tiff[12:], 3)      // SHORT
	bo.PutUint32(tiff[14:], 1)      // count
	bo.PutUint16(tiff[18:], o)      // value, left-justified
	seg := append([]byte("Exif\x00\x00"), tiff...)
	app1 := []byte{0xff, 0xe1, 0, 0}
	binary.BigEndian.PutUint16(app1[2:], uint16(len(seg)+2))
	app1 = append(app1, seg...)
	out := append([]byte{}, jpg[:2]...)
	out = append(out, app1...)
	return append(out, jpg[2:]...)
}

func TestExifOrientation(t *testing.T) {
	src := encodeJPEG(t, blockImage("ABC", "DEF"))
	// The stored pixels are ABC/DEF; the table gives what an upright display
	// shows for each EXIF orientation (the stored image is the display
	// transformed by the orientation, so Decode undoes it).
	tests := []struct {
		orientation uint16
		want        []string
	}{
		{1, []string{"ABC", "DEF"}},
		{2, []string{"CBA", "FED"}},     // mirrored horizontally
		{3, []string{"FED", "CBA"}},     // rotated 180°
		{4, []string{"DEF", "ABC"}},     // mirrored vertically
		{5, []string{"AD", "BE", "CF"}}, // transposed
		{6, []string{"DA", "EB", "FC"}}, // rotate 90° clockwise to display
		{7, []string{"FC", "EB", "DA"}}, // transverse
		{8, []string{"CF", "BE", "AD"}}, // rotate 90° counter-clockwise
		{9, []string{"ABC", "DEF"}},     // invalid value: ignored
		{0, []string{"ABC", "DEF"}},     // invalid value: ignored
	}
	for _, tc := range tests {
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			img, err := Decode(withExif(src, tc.orientation, bo), 0)
			if err != nil {
				t.Fatalf("orientation %d: %v", tc.orientation, err)
			}
			if got, want := strings.Join(readBlocks(t, img), "/"), strings.Join(tc.want, "/"); got != want {
				t.Errorf("orientation %d (%v): got %s, want %s", tc.orientation, bo, got, want)
			}
		}
	}
	// Truncated or malformed EXIF never fails the decode.
	bad := withExif(src, 6, binary.LittleEndian)
	bad[4+2+6+4] = 0xff // corrupt the IFD offset
	if _, err := Decode(bad, 0); err != nil {
		t.Errorf("malformed EXIF: %v", err)
	}
}

func TestDecodeFormats(t *testing.T) {
	pattern := blockImage("ABC", "DEF")
	var gifBuf bytes.Buffer
	if err := gif.Encode(&gifBuf, pattern, &gif.Options{NumColors: 256, Quantizer: nil}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"jpeg", encodeJPEG(t, pattern)},
		{"png", encodePNG(t, pattern)},
		{"gif", gifBuf.Bytes()},
		{"png paletted", encodePNG(t, toPaletted(pattern))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Decode(tc.data, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(readBlocks(t, img), "/"), "ABC/DEF"; got != want {
				t.Errorf("blocks %s, want %s", got, want)
			}
			if _, ok := img.(*image.RGBA); !ok {
				t.Errorf("Decode returned %T, want *image.RGBA", img)
			}
		})
	}
}

func toPaletted(img image.Image) *image.Paletted {
	p := image.NewPaletted(img.Bounds(), palette.WebSafe)
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			p.Set(x, y, img.At(x, y))
		}
	}
	return p
}

func TestDecodeWebP(t *testing.T) {
	lossy, err := os.ReadFile(filepath.Join("testdata", "blue-purple-pink.lossy.webp"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := Decode(lossy, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := img.Bounds(), image.Rect(0, 0, 150, 100); got != want {
		t.Errorf("lossy webp bounds %v, want %v", got, want)
	}
	// Same pixels as x/image's decoder through the standard YCbCr→RGB.
	ref, _ := webp.Decode(bytes.NewReader(lossy))
	for _, p := range []image.Point{{0, 0}, {75, 50}, {149, 99}} {
		r, g, b, _ := ref.At(p.X, p.Y).RGBA()
		want := color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), 255}
		if got := img.At(p.X, p.Y).(color.RGBA); got != want {
			t.Errorf("lossy webp %v = %v, want %v", p, got, want)
		}
	}

	// A black drawing on a transparent background: composited on white,
	// every pixel becomes 255 − alpha.
	alpha, err := os.ReadFile(filepath.Join("testdata", "gopher-doc.with-alpha.lossless.webp"))
	if err != nil {
		t.Fatal(err)
	}
	img, err = Decode(alpha, 0)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := webp.Decode(bytes.NewReader(alpha))
	b := raw.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			a := color.NRGBAModel.Convert(raw.At(x, y)).(color.NRGBA).A
			v := 255 - a
			if got, want := img.At(x-b.Min.X, y-b.Min.Y).(color.RGBA), (color.RGBA{v, v, v, 255}); got != want {
				t.Fatalf("alpha webp (%d,%d) = %v, want %v (alpha %d)", x, y, got, want, a)
			}
		}
	}
}

func TestAlphaOnWhite(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 4, 1))
	img.SetNRGBA(0, 0, color.NRGBA{200, 100, 0, 255}) // opaque: unchanged
	img.SetNRGBA(1, 0, color.NRGBA{200, 100, 0, 0})   // transparent: white
	img.SetNRGBA(2, 0, color.NRGBA{0, 0, 0, 128})     // half black: grey
	img.SetNRGBA(3, 0, color.NRGBA{255, 0, 0, 51})    // 20% red
	got, err := Decode(encodePNG(t, img), 0)
	if err != nil {
		t.Fatal(err)
	}
	// want = round(v·a/255 + 255·(1 − a/255)).
	want := []color.RGBA{{200, 100, 0, 255}, {255, 255, 255, 255}, {127, 127, 127, 255}, {255, 204, 204, 255}}
	for x, w := range want {
		if g := got.At(x, 0).(color.RGBA); g != w {
			t.Errorf("pixel %d = %v, want %v", x, g, w)
		}
	}
}

func TestGrayAndCMYK(t *testing.T) {
	gray := image.NewGray(image.Rect(0, 0, 2, 1))
	gray.Pix[0], gray.Pix[1] = 0, 200
	img, err := Decode(encodePNG(t, gray), 0)
	if err != nil {
		t.Fatal(err)
	}
	for x, v := range []uint8{0, 200} {
		if got, want := img.At(x, 0).(color.RGBA), (color.RGBA{v, v, v, 255}); got != want {
			t.Errorf("gray pixel %d = %v, want %v", x, got, want)
		}
	}

	cmyk, err := os.ReadFile(filepath.Join("testdata", "cmyk.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	img, err = Decode(cmyk, 0)
	if err != nil {
		t.Fatal(err)
	}
	near := func(c color.RGBA, r, g, b uint8) bool {
		d := func(a, b uint8) int { return max(int(a)-int(b), int(b)-int(a)) }
		return d(c.R, r) <= 12 && d(c.G, g) <= 12 && d(c.B, b) <= 12
	}
	if c := img.At(2, 4).(color.RGBA); !near(c, 255, 0, 0) {
		t.Errorf("CMYK left half = %v, want red", c)
	}
	if c := img.At(13, 4).(color.RGBA); !near(c, 0, 255, 255) {
		t.Errorf("CMYK right half = %v, want cyan", c)
	}
}

// pngHeader crafts a PNG signature and IHDR chunk (no image data).
func pngHeader(w, h uint32) []byte {
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2 // 8-bit RGB
	chunk := make([]byte, 4, 4+4+13+4)
	binary.BigEndian.PutUint32(chunk, 13)
	chunk = append(chunk, "IHDR"...)
	chunk = append(chunk, ihdr...)
	crc := crc32.ChecksumIEEE(chunk[4:])
	chunk = binary.BigEndian.AppendUint32(chunk, crc)
	return append([]byte("\x89PNG\r\n\x1a\n"), chunk...)
}

// gifHeader crafts a GIF logical screen descriptor of w×h with no frames.
func gifHeader(w, h uint16) []byte {
	b := []byte("GIF89a")
	b = binary.LittleEndian.AppendUint16(b, w)
	b = binary.LittleEndian.AppendUint16(b, h)
	return append(b, 0, 0, 0, 0x3b)
}

func TestDecodeRefusesBadInput(t *testing.T) {
	good := encodePNG(t, blockImage("AB"))
	tests := []struct {
		name      string
		data      []byte
		maxPixels int64
		want      []string
	}{
		{"png bomb", pngHeader(20000, 20000), 0, []string{"20000×20000 = 400 Mpx", "over the limit of 89478485 pixels"}},
		{"png over a small limit", good, 100, []string{"32×16 = 0.000512 Mpx", "limit of 100 pixels"}},
		{"gif bomb", gifHeader(65535, 65535), 1_000_000, []string{"GIF", "65535×65535"}},
		{"png zero width", pngHeader(0, 10), 0, []string{"PNG header", "dimension"}},
		{"gif zero size", gifHeader(0, 0), 0, []string{"zero size (0×0)"}},
		{"truncated png", good[:len(good)-30], 0, []string{"decode PNG"}},
		{"corrupt jpeg", append(encodeJPEG(t, blockImage("AB"))[:200:200], 0xff, 0xd9), 0, []string{"decode JPEG"}},
		{"empty", nil, 0, []string{"no data"}},
		{"random bytes", []byte{0x13, 0x37, 0x42, 0x00, 0x99}, 0, []string{"unrecognised format", "13 37 42"}},
		{"bmp", append([]byte("BM"), make([]byte, 60)...), 0, []string{"unsupported format BMP"}},
		{"tiff", append([]byte("II*\x00"), make([]byte, 60)...), 0, []string{"unsupported format TIFF"}},
		{"webp garbage", append([]byte("RIFF\x10\x00\x00\x00WEBP"), make([]byte, 8)...), 0, []string{"WebP"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			img, err := Decode(tc.data, tc.maxPixels)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatalf("Decode succeeded with bounds %v", img.Bounds())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
				t.Errorf("refusing the input allocated %d bytes", alloc)
			}
		})
	}
}
