package mllm

import (
	"fmt"
	"math"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Pixels is one preprocessed image as sidecar/imageproc produces it: Tiles
// are 3×Size×Size CHW normalised planes; with Rows·Cols > 0 the first
// Rows·Cols tiles are the split tiles in row-major order and the last one
// is the global image, otherwise there is a single tile.
type Pixels struct {
	Tiles      [][]float32
	Rows, Cols int
	Size       int
}

// ImageFeatures are the connector outputs of one image: Tokens is
// [tiles·ImageSeqLen, text hidden], in the order its image tokens appear
// in the prompt, on the model's Device. The text model puts row i at the
// i-th image token of the prompt.
type ImageFeatures struct {
	Tokens     *ts.Tensor
	Rows, Cols int
}

// NumTokens is the number of <image> tokens the image takes in a prompt.
func (f *ImageFeatures) NumTokens() int { return int(f.Tokens.MustSize()[0]) }

// EncodeImage runs the vision encoder and connector on one image.
func (m *Model) EncodeImage(p Pixels) (*ImageFeatures, error) {
	f, err := m.EncodeImages([]Pixels{p}, false)
	if err != nil {
		return nil, err
	}
	return f[0], nil
}

// EncodeImages encodes several images in one vision batch. grad keeps
// autograd on (for training); inference passes false.
func (m *Model) EncodeImages(ps []Pixels, grad bool) (out []*ImageFeatures, err error) {
	if err := m.usable(); err != nil {
		return nil, err
	}
	v := m.Config.Vision
	s := v.ImageSize
	var flat []float32
	var counts []int
	for i, p := range ps {
		if err := m.checkPixels(p); err != nil {
			return nil, fmt.Errorf("encode image %d: %w", i, err)
		}
		for _, t := range p.Tiles {
			flat = append(flat, t...)
		}
		counts = append(counts, len(p.Tiles))
	}
	n := len(flat) / (v.NumChannels * s * s)
	err = torch.Run("encode image", grad, func() error {
		px := torch.ToDevice(ts.MustOfSlice(flat).MustView([]int64{int64(n), int64(v.NumChannels), int64(s), int64(s)}, true), m.Device, true)
		feats := m.encodeTiles(px) // [n, seq, D]
		torch.Drop(px)
		d := feats.MustSize()[2]
		start := int64(0)
		seq := int64(m.Config.ImageSeqLen())
		for i, c := range counts {
			t := feats.MustNarrow(0, start, int64(c), false).MustReshape([]int64{int64(c) * seq, d}, true)
			out = append(out, &ImageFeatures{Tokens: t, Rows: ps[i].Rows, Cols: ps[i].Cols})
			start += int64(c)
		}
		torch.Drop(feats)
		return nil
	})
	return out, err
}

// checkPixels checks one image's tiles against the vision config.
func (m *Model) checkPixels(p Pixels) error {
	v := m.Config.Vision
	s := v.ImageSize
	if len(p.Tiles) == 0 {
		return fmt.Errorf("no tiles")
	}
	if p.Size != s {
		return fmt.Errorf("tile size %d, the model wants %d", p.Size, s)
	}
	want := 1
	if p.Rows*p.Cols > 0 {
		want = p.Rows*p.Cols + 1
	}
	if len(p.Tiles) != want {
		return fmt.Errorf("%d tiles for %d×%d split, want %d", len(p.Tiles), p.Rows, p.Cols, want)
	}
	for j, t := range p.Tiles {
		if len(t) != v.NumChannels*s*s {
			return fmt.Errorf("tile %d has %d values, want %d", j, len(t), v.NumChannels*s*s)
		}
	}
	return nil
}

// visionChunk is the most tiles one vision forward pass takes: it bounds
// the activations (a 4×4 split image has 17 tiles).
const visionChunk = 8

// encodeTiles runs the vision encoder and the connector on tiles
// [n, C, S, S], at most visionChunk at a time, and returns [n, seq, D].
func (m *Model) encodeTiles(px *ts.Tensor) *ts.Tensor {
	n := px.MustSize()[0]
	var parts []*ts.Tensor
	for start := int64(0); start < n; start += visionChunk {
		c := min(visionChunk, n-start)
		chunk := px.MustNarrow(0, start, c, false)
		v := m.vision.Forward(chunk)
		parts = append(parts, m.connector.Forward(v))
		torch.Drop(chunk, v)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	out := ts.MustCat(parts, 0)
	torch.Drop(parts...)
	return out
}

// Connector is Idefics3's modality projection: pixel shuffle (Scale×Scale
// neighbouring patches become one token) and a Linear to the text width.
type Connector struct {
	Proj  *Linear
	Scale int64
}

func newConnector(p *layers.Params, name string, c Config) *Connector {
	s := c.ScaleFactor
	return &Connector{Proj: p.Linear(name, c.Vision.HiddenSize*s*s, c.Text.HiddenSize, false), Scale: int64(s)}
}

// Forward maps vision features [N, P, Dv] to text-space rows [N, P/s², D].
func (c *Connector) Forward(x *ts.Tensor) *ts.Tensor {
	s := pixelShuffle(x, c.Scale)
	out := c.Proj.Forward(s)
	torch.Drop(s)
	return out
}

// pixelShuffle merges s×s neighbouring patches into one token:
// out[b, i·(W/s)+j, (m·s+k)·D+d] = x[b, (i·s+m)·W + (j·s+k), d].
func pixelShuffle(x *ts.Tensor, s int64) *ts.Tensor {
	sz := x.MustSize()
	b, seq, d := sz[0], sz[1], sz[2]
	h := int64(math.Round(math.Sqrt(float64(seq))))
	w := h
	defer torch.Keep(x)
	x = x.MustView([]int64{b, h, w / s, d * s}, false)
	x = x.MustPermute([]int64{0, 2, 1, 3}, true)
	x = x.MustReshape([]int64{b, w / s, h / s, d * s * s}, true)
	x = x.MustPermute([]int64{0, 2, 1, 3}, true)
	return x.MustReshape([]int64{b, seq / (s * s), d * s * s}, true)
}
