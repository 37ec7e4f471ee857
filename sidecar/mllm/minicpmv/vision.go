package minicpmv

import (
	"fmt"
	"image"
	"math"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/imageproc"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Resampler is MiniCPM-V 2.5's perceiver resampler: learned queries attend
// once over the vision features (keys carry 2-D sin-cos positions of the
// slice's own patch grid), then ln_post and a projection.
type Resampler struct {
	Query              *ts.Tensor // [Q, E]
	KV                 *layers.Linear
	InW, InB           *ts.Tensor // packed q/k/v projection [3E, E], [3E]
	Out                *layers.Linear
	LNQ, LNKV, LNPost  layers.LayerNorm
	Proj               *ts.Tensor // [E, E], applied as x @ proj
	Queries, Dim, Head int
}

func newResampler(p *layers.Params, prefix string, queries, dim, kvDim, heads int) *Resampler {
	r := &Resampler{Queries: queries, Dim: dim, Head: heads}
	p.Add(prefix+"query", layers.KindPos, &r.Query, int64(queries), int64(dim))
	if kvDim != dim {
		r.KV = p.Linear(prefix+"kv_proj", kvDim, dim, false)
	}
	p.Add(prefix+"attn.in_proj_weight", layers.KindLinear, &r.InW, int64(3*dim), int64(dim))
	p.Add(prefix+"attn.in_proj_bias", layers.KindBias, &r.InB, int64(3*dim))
	r.Out = p.Linear(prefix+"attn.out_proj", dim, dim, true)
	p.LayerNorm(&r.LNQ, prefix+"ln_q", dim, 1e-6)
	p.LayerNorm(&r.LNKV, prefix+"ln_kv", dim, 1e-6)
	p.LayerNorm(&r.LNPost, prefix+"ln_post", dim, 1e-6)
	p.Add(prefix+"proj", layers.KindLinear, &r.Proj, int64(dim), int64(dim))
	return r
}

// Forward resamples features x [B, P, Dv] of B slices whose patch grids are
// sizes[b] = (rows, cols) (rows·cols ≤ P; keys past a slice's own patches
// are hidden) into [B, Q, E].
func (r *Resampler) Forward(x *ts.Tensor, sizes [][2]int) *ts.Tensor {
	sz := x.MustSize()
	b, np := sz[0], sz[1]
	e := int64(r.Dim)
	kind, dev := x.DType(), torch.TensorDevice(x)
	kv := x
	if r.KV != nil {
		kv = r.KV.Forward(x)
	}
	kvn := r.LNKV.Forward(kv)
	if kv != x {
		kv.MustDrop()
	}
	// positions: the (2.5) sin-cos table of at least 70×70, cut to each
	// slice's grid, zero past it; key padding mask past each slice's length
	maxH, maxW := 70, 70
	for _, s := range sizes {
		maxH, maxW = max(maxH, s[0]), max(maxW, s[1])
	}
	table := SinCos2D(r.Dim, maxH, maxW)
	pos := make([]float32, int(b)*int(np)*r.Dim)
	mask := make([]float32, int(b)*int(np))
	for i, s := range sizes {
		n := 0
		for row := range s[0] {
			for col := range s[1] {
				copy(pos[(i*int(np)+n)*r.Dim:(i*int(np)+n+1)*r.Dim], table[(row*maxW+col)*r.Dim:(row*maxW+col+1)*r.Dim])
				n++
			}
		}
		for k := n; k < int(np); k++ {
			mask[i*int(np)+k] = layers.MaskedScore
		}
	}
	posT := torch.ToDevice(ts.MustOfSlice(pos).MustView([]int64{b, np, e}, true).MustTotype(kind, true), dev, true)
	key := kvn.MustAdd(posT, false)
	posT.MustDrop()
	q := r.LNQ.Forward(r.Query) // [Q, E]
	wq, wk, wv := r.InW.MustNarrow(0, 0, e, false), r.InW.MustNarrow(0, e, e, false), r.InW.MustNarrow(0, 2*e, e, false)
	bq, bk, bv := r.InB.MustNarrow(0, 0, e, false), r.InB.MustNarrow(0, e, e, false), r.InB.MustNarrow(0, 2*e, e, false)
	heads := int64(r.Head)
	hd := e / heads
	qq := ts.MustLinear(q, wq, bq).MustView([]int64{1, int64(r.Queries), heads, hd}, true).MustTranspose(1, 2, true).MustExpand([]int64{b, heads, int64(r.Queries), hd}, false, true)
	kk := ts.MustLinear(key, wk, bk).MustView([]int64{b, np, heads, hd}, true).MustTranspose(1, 2, true)
	vv := ts.MustLinear(kvn, wv, bv).MustView([]int64{b, np, heads, hd}, true).MustTranspose(1, 2, true)
	maskT := torch.ToDevice(ts.MustOfSlice(mask).MustView([]int64{b, 1, 1, np}, true).MustTotype(kind, true), dev, true)
	o := layers.SDPA(qq, kk, vv, maskT, []float64{1 / math.Sqrt(float64(hd))})
	layers.Drop(q, qq, kk, vv, key, kvn, maskT, wq, wk, wv, bq, bk, bv)
	o = o.MustTranspose(1, 2, true).MustReshape([]int64{b, int64(r.Queries), e}, true)
	out := r.Out.Forward(o)
	o.MustDrop()
	n := r.LNPost.Forward(out)
	out.MustDrop()
	res := n.MustMatmul(r.Proj, true)
	return res
}

// ImageFeatures are one image's resampled slices, ready to be spliced into
// the text embeddings at its placeholder.
type ImageFeatures struct {
	// Rows holds one [Q, E] tensor per slice: the source image first, then
	// the cells row-major.
	Rows []*ts.Tensor
	// Cols and RowsGrid are the slicing grid (0 when not split).
	Cols, RowsGrid int
	// Sizes are the slices' patch grids (rows, cols).
	Sizes [][2]int
	// PositionIDs are the vision position ids every slice used.
	PositionIDs []int64
}

// Placeholder returns the prompt text that stands for this image.
func (f *ImageFeatures) Placeholder(queryNum int) string {
	return Placeholder(queryNum, f.Cols, f.RowsGrid)
}

// Drop frees the feature tensors.
func (f *ImageFeatures) Drop() {
	for _, r := range f.Rows {
		r.MustDrop()
	}
	f.Rows = nil
}

// EncodeImage slices img (imageproc.SliceMiniCPMV with maxSlices and the
// config's scale resolution; 0 = the config's max_slice_nums), runs the
// slices through the vision tower as one padded batch (as the 2.5 code
// does: every slice is padded to the longest, nothing is masked, position
// ids are bucketed over the longest length) and resamples them.
func (m *Model) EncodeImage(img image.Image, maxSlices int) (*ImageFeatures, error) {
	if err := m.usable(); err != nil {
		return nil, fmt.Errorf("encode image: %w", err)
	}
	if maxSlices <= 0 {
		maxSlices = m.Config.Slice.MaxSliceNums
	}
	v := m.Config.Vision
	sl, err := imageproc.SliceMiniCPMV(img, imageproc.SliceOptions{MaxSlices: maxSlices, ScaleResolution: m.Config.Slice.ScaleResolution, PatchSize: v.PatchSize})
	if err != nil {
		return nil, fmt.Errorf("encode image: %w", err)
	}
	imgs := sl.Images()
	p := v.PatchSize
	sizes := make([][2]int, len(imgs))
	np := 0
	for i, im := range imgs {
		sizes[i] = [2]int{im.Rect.Dy() / p, im.Rect.Dx() / p}
		np = max(np, sizes[i][0]*sizes[i][1])
	}
	// patches in (c, ky, kx) order, row-major over the slice; padding is 0
	// (the normalised value the reference pads with)
	pp := 3 * p * p
	buf := make([]float32, len(imgs)*np*pp)
	for i, im := range imgs {
		px := imageproc.NormaliseCHW(im)
		h, w := im.Rect.Dy(), im.Rect.Dx()
		cols := w / p
		for pr := range sizes[i][0] {
			for pc := range cols {
				dst := buf[(i*np+pr*cols+pc)*pp:]
				for c := range 3 {
					for ky := range p {
						row := px[c*h*w+(pr*p+ky)*w+pc*p:]
						copy(dst[(c*p+ky)*p:(c*p+ky+1)*p], row[:p])
					}
				}
			}
		}
	}
	pos := PositionIDs(np, v.ImageSize/p)
	f := &ImageFeatures{Cols: sl.Cols, RowsGrid: sl.Rows, Sizes: sizes, PositionIDs: pos}
	err = torch.Run("minicpmv", false, func() error {
		b := int64(len(imgs))
		patches := torch.ToDevice(ts.MustOfSlice(buf).MustView([]int64{b, int64(np), int64(pp)}, true), m.Device, true)
		if m.DType != gotch.Float {
			patches = patches.MustTotype(m.DType, true)
		}
		e := m.Vision
		wconv := e.PatchW.MustView([]int64{int64(v.HiddenSize), int64(pp)}, false)
		x := ts.MustLinear(patches, wconv, e.PatchB)
		layers.Drop(patches, wconv)
		ids := torch.ToDevice(ts.MustOfSlice(pos), m.Device, true)
		pe := ts.MustEmbedding(e.PosEmb, ids, -1, false, false)
		ids.MustDrop()
		x = x.MustAdd(pe, true)
		pe.MustDrop()
		for i := range e.Layers {
			x = e.Layers[i].Forward(x)
		}
		feats := e.PostLN.Forward(x)
		x.MustDrop()
		res := m.Resampler.Forward(feats, sizes)
		feats.MustDrop()
		for i := range imgs {
			f.Rows = append(f.Rows, res.MustSelect(0, int64(i), false).MustContiguous(true))
		}
		res.MustDrop()
		return nil
	})
	if err != nil {
		f.Drop()
		return nil, fmt.Errorf("encode image: %w", err)
	}
	return f, nil
}
