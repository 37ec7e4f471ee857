package review

import (
	"bytes"
	"image"
	"image/png"
	"testing"
)

// BenchmarkThumbnail measures the daemon's per-image cost of a review-page
// thumbnail: decode a 1024×1024 PNG (a typical SDXL output) and scale it
// to 320 px. It reports the thumbnail's size, which bounds the memory of
// the daemon's ring (RecentImages of them).
func BenchmarkThumbnail(b *testing.B) {
	img := image.NewNRGBA(image.Rect(0, 0, 1024, 1024))
	for i := range img.Pix {
		img.Pix[i] = byte(i*7 + i/4096)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	var size int
	b.ReportAllocs()
	for b.Loop() {
		th, err := Thumbnail(data, ThumbSide)
		if err != nil {
			b.Fatal(err)
		}
		size = len(th)
	}
	b.ReportMetric(float64(size), "thumb-bytes")
}
