package train

import (
	"fmt"
	"os"

	"github.com/m3gate/m3gate/sidecar/imageproc"
	"github.com/m3gate/m3gate/sidecar/mllm"
)

// loadPixels reads an image file and preprocesses it as the scorer does
// (sidecar/imageproc, single global tile of size×size, no splitting).
func loadPixels(path string, size int) (mllm.Pixels, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return mllm.Pixels{}, fmt.Errorf("load image: %w", err)
	}
	p, err := imageproc.Load(data, imageproc.Options{Size: size})
	if err != nil {
		return mllm.Pixels{}, fmt.Errorf("load image %s: %w", path, err)
	}
	return mllm.Pixels{Tiles: p.Tiles, Rows: p.Rows, Cols: p.Cols, Size: p.Size}, nil
}
