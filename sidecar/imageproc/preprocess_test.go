package imageproc

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testImage is a deterministic RGB image with smooth gradients, sharp edges
// and noise, so resampling differences show.
func testImage(w, h int, seed uint64) *image.RGBA {
	r := rand.New(rand.NewPCG(seed, 3))
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			v := [3]int{x * 255 / max(w-1, 1), y * 255 / max(h-1, 1), 0}
			if (x/7+y/5)%2 == 0 {
				v[2] = 230
			}
			for c := range 3 {
				v[c] = min(255, max(0, v[c]+int(r.IntN(41))-20))
			}
			img.SetRGBA(x, y, color.RGBA{uint8(v[0]), uint8(v[1]), uint8(v[2]), 255})
		}
	}
	return img
}

func TestLanczosMatchesPIL(t *testing.T) {
	if err := exec.Command(python, "-c", "import PIL").Run(); err != nil {
		t.Skipf("skipping: %s cannot import PIL (%v); install python3-pil", python, err)
	}
	tests := []struct {
		name       string
		inW, inH   int
		outW, outH int
	}{
		{"downscale 3x", 150, 120, 50, 40},
		{"downscale fractional", 200, 150, 64, 47},
		{"upscale", 37, 23, 100, 70},
		{"to square 512", 300, 40, 512, 512},
		{"width only", 90, 60, 45, 60},
		{"height only", 90, 60, 90, 31},
		{"tiny to larger", 1, 1, 5, 3},
		{"large factor", 640, 20, 16, 20},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := testImage(tc.inW, tc.inH, uint64(i))
			in := filepath.Join(dir, fmt.Sprintf("in%d.png", i))
			if err := os.WriteFile(in, encodePNG(t, src), 0o644); err != nil {
				t.Fatal(err)
			}
			prefix := filepath.Join(dir, fmt.Sprintf("out%d", i))
			size := fmt.Sprintf("%dx%d", tc.outW, tc.outH)
			if out, err := exec.Command(python, filepath.Join("testdata", "pil_resize.py"), in, prefix, size).CombinedOutput(); err != nil {
				t.Fatalf("pil_resize.py: %v\n%s", err, out)
			}
			data, err := os.ReadFile(prefix + "-" + size + ".png")
			if err != nil {
				t.Fatal(err)
			}
			ref, err := Decode(data, 0)
			if err != nil {
				t.Fatal(err)
			}
			got := resizeLanczos(src, tc.outW, tc.outH)
			if got.Bounds() != ref.Bounds() {
				t.Fatalf("bounds %v, PIL %v", got.Bounds(), ref.Bounds())
			}
			want := ref.(*image.RGBA)
			var diff, maxDiff int
			for i := range got.Pix {
				d := int(got.Pix[i]) - int(want.Pix[i])
				if d != 0 {
					diff++
					maxDiff = max(maxDiff, d, -d)
				}
			}
			t.Logf("%d of %d bytes differ from PIL (max %d)", diff, len(got.Pix), maxDiff)
			// Bit-exact is expected; allow stray ±1 from libm differences in
			// sin() between Go and C, never more.
			if maxDiff > 1 || diff > len(got.Pix)/1000 {
				t.Errorf("%d of %d bytes differ from PIL, max difference %d", diff, len(got.Pix), maxDiff)
			}
		})
	}
}

const python = "/usr/bin/python3"

func TestSplitSize(t *testing.T) {
	tests := []struct {
		name                       string
		height, width, longest, sz int
		wantH, wantW               int
	}{
		// 1000×600 (w×h): longest edge 2048, short int(1228.8)=1228; then
		// width 2048 stays, height 1228 rounds up to 1536: 3 rows × 4 cols.
		{"landscape", 600, 1000, 2048, 512, 1536, 2048},
		{"portrait", 1000, 600, 2048, 512, 2048, 1536},
		{"square upsampled", 512, 512, 2048, 512, 2048, 2048},
		// 300×200 with longest edge 512: 512×342 (341 made even) → 512×512.
		{"fits one tile", 200, 300, 512, 512, 512, 512},
		// 5000×100: 2048×40 → 2048×512.
		{"panorama", 100, 5000, 2048, 512, 512, 2048},
		{"so400m tiles", 1000, 1000, 1536, 384, 1536, 1536},
		// 10000×10 with longest edge 8192: 8192×8 capped to 4096×4 → 4096×512.
		{"capped at 4096", 10, 10000, 8192, 512, 512, 4096},
		{"one pixel", 1, 1, 2048, 512, 2048, 2048},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, w := SplitSize(tc.height, tc.width, tc.longest, tc.sz)
			if got, want := [2]int{h, w}, [2]int{tc.wantH, tc.wantW}; got != want {
				t.Errorf("SplitSize(%d, %d, %d, %d) = %v, want %v", tc.height, tc.width, tc.longest, tc.sz, got, want)
			}
		})
	}
}

func TestPreprocessSplitTiles(t *testing.T) {
	// A 4×3-block image (w×h) whose blocks are solid colours; with tile size
	// 16 and longest edge 64 it splits into exactly one block per tile.
	rows := []string{"ABCD", "EFAB", "CDEF"}
	img := blockImage(rows...)
	px, err := Preprocess(img, Options{Size: block, Split: true, LongestEdge: 4 * block})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := [3]int{px.Rows, px.Cols, px.Size}, [3]int{3, 4, block}; got != want {
		t.Fatalf("rows, cols, size = %v, want %v", got, want)
	}
	if got, want := len(px.Tiles), 3*4+1; got != want {
		t.Fatalf("%d tiles, want %d", got, want)
	}
	for i, tile := range px.Tiles {
		if got, want := len(tile), 3*block*block; got != want {
			t.Fatalf("tile %d has %d values, want %d", i, got, want)
		}
	}
	// Tiles are row-major crops: tile r*cols+c is block (r, c). Check its
	// centre pixel (CHW: plane c, index y*S+x), de-normalised.
	for r := range 3 {
		for c := range 4 {
			tile := px.Tiles[r*4+c]
			want := blockColors[rows[r][c]]
			i := (block/2)*block + block/2
			for ch, v := range []uint8{want.R, want.G, want.B} {
				got := (tile[ch*block*block+i]*0.5 + 0.5) * 255
				if math.Abs(float64(got)-float64(v)) > 0.01 {
					t.Errorf("tile (%d,%d) channel %d = %.2f, want %d", r, c, ch, got, v)
				}
			}
		}
	}
	// The global image is last: the 64×48 image squeezed to 16×16, so its
	// top-left region comes from block A and its bottom-right from F.
	global := px.Tiles[len(px.Tiles)-1]
	if got := global[0]*0.5 + 0.5; math.Abs(float64(got)-1) > 0.02 { // A is red: R plane 1
		t.Errorf("global top-left R = %.3f, want 1", got)
	}
	if got := global[2*block*block+block*block-1]*0.5 + 0.5; math.Abs(float64(got)-1) > 0.02 { // F magenta: B plane 1
		t.Errorf("global bottom-right B = %.3f, want 1", got)
	}
}

func TestPreprocessSingle(t *testing.T) {
	// A uniform image stays uniform through Lanczos (weights sum to 1), so
	// every output value is the normalised input value.
	img := image.NewRGBA(image.Rect(0, 0, 40, 30))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = 0, 128, 255, 255
	}
	tests := []struct {
		name string
		opts Options
		want [3]float32
	}{
		// float32(v·(1/255)) then (x − 0.5)/0.5.
		{"defaults", Options{}, [3]float32{(float32(0.0/255) - 0.5) / 0.5, (float32(128.0/255) - 0.5) / 0.5, (float32(255.0/255) - 0.5) / 0.5}},
		{"imagenet", Options{Size: 8, Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}},
			[3]float32{(0 - 0.485) / 0.229, (float32(128.0/255) - 0.456) / 0.224, (1 - 0.406) / 0.225}},
		{"no normalisation", Options{Size: 4, Mean: []float32{0, 0, 0}, Std: []float32{1, 1, 1}, Rescale: 1}, [3]float32{0, 128, 255}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			px, err := Preprocess(img, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			S := tc.opts.Size
			if S == 0 {
				S = 512
			}
			if got, want := [4]int{len(px.Tiles), px.Rows, px.Cols, px.Size}, [4]int{1, 0, 0, S}; got != want {
				t.Fatalf("tiles, rows, cols, size = %v, want %v", got, want)
			}
			tile := px.Tiles[0]
			if got, want := len(tile), 3*S*S; got != want {
				t.Fatalf("tile has %d values, want %d", got, want)
			}
			for i, v := range tile {
				if want := tc.want[i/(S*S)]; v != want {
					t.Fatalf("value %d (channel %d) = %v, want %v", i, i/(S*S), v, want)
				}
			}
		})
	}
}

func TestPreprocessCHWLayout(t *testing.T) {
	// Identity geometry (8×8 to 8×8): the output is the input in CHW order.
	img := testImage(8, 8, 9)
	px, err := Preprocess(img, Options{Size: 8, Mean: []float32{0, 0, 0}, Std: []float32{1, 1, 1}, Rescale: 1})
	if err != nil {
		t.Fatal(err)
	}
	tile := px.Tiles[0]
	for y := range 8 {
		for x := range 8 {
			c := img.RGBAAt(x, y)
			for ch, v := range []uint8{c.R, c.G, c.B} {
				if got := tile[ch*64+y*8+x]; got != float32(v) {
					t.Fatalf("(%d,%d) channel %d = %v, want %d", x, y, ch, got, v)
				}
			}
		}
	}
}

func TestPreprocessErrors(t *testing.T) {
	img := testImage(4, 4, 1)
	tests := []struct {
		name string
		img  image.Image
		opts Options
		want string
	}{
		{"nil image", nil, Options{}, "nil image"},
		{"empty image", image.NewRGBA(image.Rect(0, 0, 0, 5)), Options{}, "zero size"},
		{"negative size", img, Options{Size: -1}, "tile size"},
		{"short mean", img, Options{Mean: []float32{0.5}}, "3 values"},
		{"zero std", img, Options{Std: []float32{1, 0, 1}}, "non-zero"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Preprocess(tc.img, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Preprocess err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Load(pngHeader(20000, 20000), Options{}); err == nil || !strings.Contains(err.Error(), "400 Mpx") {
		t.Errorf("Load of a bomb: err = %v", err)
	}
}

func BenchmarkPreprocess(b *testing.B) {
	img := testImage(1024, 768, 1)
	for _, split := range []bool{false, true} {
		b.Run(fmt.Sprintf("split=%v", split), func(b *testing.B) {
			for range b.N {
				if _, err := Preprocess(img, Options{Split: split}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPreprocessMatchesHFReference compares Preprocess bit-exactly with
// testdata/hf_idefics3_ref.py, a numpy/PIL re-statement of the Hugging Face
// Idefics3 processor's steps.
func TestPreprocessMatchesHFReference(t *testing.T) {
	if err := exec.Command(python, "-c", "import PIL, numpy").Run(); err != nil {
		t.Skipf("skipping: %s cannot import PIL and numpy (%v)", python, err)
	}
	tests := []struct {
		name          string
		w, h          int
		tile, longest int
		split         bool
	}{
		{"single", 300, 200, 128, 0, false},
		{"split landscape", 250, 150, 64, 256, true},
		{"split portrait", 90, 170, 64, 192, true},
		{"split fits one tile", 120, 80, 128, 128, true},
		{"split upsampled", 40, 40, 32, 96, true},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := testImage(tc.w, tc.h, uint64(40+i))
			in := filepath.Join(dir, fmt.Sprintf("hf%d.png", i))
			if err := os.WriteFile(in, encodePNG(t, src), 0o644); err != nil {
				t.Fatal(err)
			}
			prefix := filepath.Join(dir, fmt.Sprintf("hf%d", i))
			split := "0"
			if tc.split {
				split = "1"
			}
			cmd := exec.Command(python, filepath.Join("testdata", "hf_idefics3_ref.py"), in, prefix,
				fmt.Sprint(tc.tile), fmt.Sprint(tc.longest), split)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("hf_idefics3_ref.py: %v\n%s", err, out)
			}
			var meta struct{ Rows, Cols, Tiles int }
			raw, err := os.ReadFile(prefix + ".json")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &meta); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(prefix + ".f32")
			if err != nil {
				t.Fatal(err)
			}
			px, err := Preprocess(src, Options{Size: tc.tile, LongestEdge: tc.longest, Split: tc.split})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := [3]int{px.Rows, px.Cols, len(px.Tiles)}, [3]int{meta.Rows, meta.Cols, meta.Tiles}; got != want {
				t.Fatalf("rows, cols, tiles = %v, reference %v", got, want)
			}
			n := 3 * tc.tile * tc.tile
			if len(data) != 4*n*meta.Tiles {
				t.Fatalf("reference has %d bytes, want %d", len(data), 4*n*meta.Tiles)
			}
			for k, tile := range px.Tiles {
				for j, v := range tile {
					want := math.Float32frombits(binary.LittleEndian.Uint32(data[4*(k*n+j):]))
					if v != want {
						t.Fatalf("tile %d value %d = %v, reference %v", k, j, v, want)
					}
				}
			}
		})
	}
}
