package imageproc

import (
	"encoding/json"
	"fmt"
	"image"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSliceMiniCPMVMatchesReference compares the grid, every slice's size
// and every slice's pixels with scripts/ref_minicpmv_slice.py (the model's
// remote-code algorithm in Python with PIL's BICUBIC) over aspect ratios
// from a thin strip to a tall banner, small images that are upscaled, and
// max_slice_nums 9 and 4.
func TestSliceMiniCPMVMatchesReference(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Python reference; skipped with -short")
	}
	if err := exec.Command(python, "-c", "import PIL").Run(); err != nil {
		t.Skipf("skipping: %s cannot import PIL (%v); install python3-pil", python, err)
	}
	script := filepath.Join("..", "..", "scripts", "ref_minicpmv_slice.py")
	tests := []struct {
		w, h, maxSlices int
	}{
		{512, 512, 9}, {1024, 1024, 9}, {1024, 768, 9}, {768, 1024, 9}, {1344, 448, 9},
		{2000, 300, 9}, {300, 1400, 9}, {200, 150, 9}, {449, 449, 9}, {1000, 700, 4},
		{1536, 1024, 4}, {640, 960, 9}, {896, 448, 9}, {333, 777, 9},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%dx%d/max%d", tc.w, tc.h, tc.maxSlices), func(t *testing.T) {
			src := testImage(tc.w, tc.h, uint64(100+i))
			in := filepath.Join(dir, fmt.Sprintf("in%d.png", i))
			if err := os.WriteFile(in, encodePNG(t, src), 0o644); err != nil {
				t.Fatal(err)
			}
			prefix := filepath.Join(dir, fmt.Sprintf("out%d", i))
			if out, err := exec.Command(python, script, in, prefix, fmt.Sprint(tc.maxSlices)).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", script, err, out)
			}
			raw, err := os.ReadFile(prefix + ".json")
			if err != nil {
				t.Fatal(err)
			}
			var ref struct {
				Grid  []int    `json:"grid"`
				Sizes [][2]int `json:"sizes"`
			}
			if err := json.Unmarshal(raw, &ref); err != nil {
				t.Fatal(err)
			}
			got, err := SliceMiniCPMV(src, SliceOptions{MaxSlices: tc.maxSlices})
			if err != nil {
				t.Fatal(err)
			}
			wantCols, wantRows := 0, 0
			if ref.Grid != nil {
				wantCols, wantRows = ref.Grid[0], ref.Grid[1]
			}
			if got.Cols != wantCols || got.Rows != wantRows {
				t.Fatalf("grid %dx%d, reference %dx%d", got.Cols, got.Rows, wantCols, wantRows)
			}
			imgs := got.Images()
			if len(imgs) != len(ref.Sizes) {
				t.Fatalf("%d slices, reference %d", len(imgs), len(ref.Sizes))
			}
			for k, im := range imgs {
				w, h := im.Rect.Dx(), im.Rect.Dy()
				if [2]int{w, h} != ref.Sizes[k] {
					t.Fatalf("slice %d is %dx%d, reference %v", k, w, h, ref.Sizes[k])
				}
				if w%14 != 0 || h%14 != 0 {
					t.Errorf("slice %d is %dx%d: not a multiple of the patch size", k, w, h)
				}
				want, err := os.ReadFile(fmt.Sprintf("%s.%d.rgb", prefix, k))
				if err != nil {
					t.Fatal(err)
				}
				diff, maxDiff := compareRGB(im, want)
				if maxDiff > 1 || diff > len(want)/1000 {
					t.Errorf("slice %d: %d of %d bytes differ from PIL, max %d", k, diff, len(want), maxDiff)
				}
			}
		})
	}
}

func compareRGB(im *image.RGBA, rgb []byte) (diff, maxDiff int) {
	w, h := im.Rect.Dx(), im.Rect.Dy()
	for y := range h {
		for x := range w {
			for c := range 3 {
				d := int(im.Pix[im.PixOffset(x, y)+c]) - int(rgb[3*(y*w+x)+c])
				if d != 0 {
					diff++
					maxDiff = max(maxDiff, d, -d)
				}
			}
		}
	}
	return diff, maxDiff
}

func TestBestGridTable(t *testing.T) {
	for _, tc := range []struct {
		w, h, max        int
		cols, rows       int
		srcW, srcH       int
		refineW, refineH int
	}{
		// 512²: ratio 1.31 → multiple 2, candidates 2 and 3; 1×2 and 2×1
		// tie at |log 2|, the first (1, 2) wins; each 512×256 cell is
		// upscaled to 630×322 (int(448/√2) = 316 → 322, 632 → 630).
		{512, 512, 9, 1, 2, 448, 448, 630, 644},
		{448, 448, 9, 0, 0, 448, 448, 0, 0},
		{1344, 448, 9, 3, 1, 770, 252, 1344, 448},
	} {
		cols, rows, err := BestGrid(tc.w, tc.h, SliceOptions{MaxSlices: tc.max})
		if err != nil {
			t.Fatal(err)
		}
		if cols != tc.cols || rows != tc.rows {
			t.Errorf("%dx%d: grid %dx%d, want %dx%d", tc.w, tc.h, cols, rows, tc.cols, tc.rows)
		}
		sw, sh := BestResize(float64(tc.w), float64(tc.h), 448, 14, cols == 0)
		if sw != tc.srcW || sh != tc.srcH {
			t.Errorf("%dx%d: source %dx%d, want %dx%d", tc.w, tc.h, sw, sh, tc.srcW, tc.srcH)
		}
		if cols > 0 {
			rw, rh := RefineSize(tc.w, tc.h, cols, rows, 448, 14, true)
			if rw != tc.refineW || rh != tc.refineH {
				t.Errorf("%dx%d: refine %dx%d, want %dx%d", tc.w, tc.h, rw, rh, tc.refineW, tc.refineH)
			}
		}
	}
	if _, _, err := BestGrid(0, 10, SliceOptions{}); err == nil {
		t.Error("empty image: no error")
	}
}
