package llama

import (
	"math"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Rope is Llama's rotary position embedding: the inverse frequencies (f32,
// as Hugging Face's LlamaRotaryEmbedding).
type Rope struct {
	headDim       int
	dtype         gotch.DType
	device        gotch.Device
	invFreq       []float32
	heads, kvHead int
}

// NewRope precomputes the rotary tables of c in dtype on dev.
func NewRope(c Config, kind gotch.DType, dev gotch.Device) *Rope {
	hd := c.HeadDim
	r := &Rope{headDim: hd, dtype: kind, device: dev, heads: c.NumAttentionHeads, kvHead: c.NumKeyValueHeads}
	r.invFreq = make([]float32, hd/2)
	for i := range r.invFreq {
		e := float32(2*i) / float32(hd)
		r.invFreq[i] = float32(1.0 / math.Pow(c.RopeTheta, float64(e)))
	}
	return r
}

// Tables returns cos and sin [B, T, heads·hd] for the given positions
// (angles in f32, duplicated over both halves of each head); for one
// token of one sequence they are vectors [heads·hd] (Model.Forward's
// single-token mode).
func (r *Rope) Tables(pos [][]int64, heads int) (cos, sin *ts.Tensor) {
	hd := r.headDim
	half := hd / 2
	b, tq := len(pos), len(pos[0])
	w := heads * hd
	cv := make([]float32, b*tq*w)
	sv := make([]float32, b*tq*w)
	for i := 0; i < b; i++ {
		for j := 0; j < tq; j++ {
			row := (i*tq + j) * w
			p := float32(pos[i][j])
			for k := 0; k < half; k++ {
				a := float64(p * r.invFreq[k])
				c, s := float32(math.Cos(a)), float32(math.Sin(a))
				for h := 0; h < heads; h++ {
					o := row + h*hd
					cv[o+k], cv[o+k+half] = c, c
					sv[o+k], sv[o+k+half] = s, s
				}
			}
		}
	}
	shape := []int64{int64(b), int64(tq), int64(w)}
	if b*tq == 1 {
		shape = []int64{int64(w)}
	}
	cos = torch.ToDevice(ts.MustOfSlice(cv).MustView(shape, true), r.device, true)
	sin = torch.ToDevice(ts.MustOfSlice(sv).MustView(shape, true), r.device, true)
	if r.dtype != gotch.Float {
		cos = cos.MustTotype(r.dtype, true)
		sin = sin.MustTotype(r.dtype, true)
	}
	return cos, sin
}

// At returns the rotations of one forward pass's positions.
func (r *Rope) At(pos [][]int64) *Rotation {
	a := &Rotation{r: r}
	a.cosQ, a.sinQ = r.Tables(pos, r.heads)
	a.cosK, a.sinK = r.Tables(pos, r.kvHead)
	return a
}

// Rotation applies the rotary embedding at fixed positions to queries and
// keys.
type Rotation struct {
	r                      *Rope
	cosQ, sinQ, cosK, sinK *ts.Tensor
}

// Query rotates queries [B, T, heads·hd] (or [heads·hd]); x stays the
// caller's.
func (a *Rotation) Query(x torch.Raw) torch.Raw {
	return applyRope(x, torch.Borrow(a.cosQ), torch.Borrow(a.sinQ), int64(a.r.headDim))
}

// Key rotates keys [B, T, kvHeads·hd] (or [kvHeads·hd]); x stays the
// caller's.
func (a *Rotation) Key(x torch.Raw) torch.Raw {
	return applyRope(x, torch.Borrow(a.cosK), torch.Borrow(a.sinK), int64(a.r.headDim))
}

// Drop frees the tables.
func (a *Rotation) Drop() {
	for _, t := range []*ts.Tensor{a.cosQ, a.sinQ, a.cosK, a.sinK} {
		t.MustDrop()
	}
}

// ApplyRope is x·cos + rotate_half(x)·sin with x [B, T, heads·hd] (or
// [heads·hd]) and heads of hd dimensions: rotate_half(x) is, per head,
// (-x[hd/2:], x[:hd/2]), built from views, a negation and one
// concatenation (exact).
func ApplyRope(x, cos, sin *ts.Tensor, hd int) *ts.Tensor {
	defer torch.Keep(x, cos, sin)
	return applyRope(torch.Borrow(x), torch.Borrow(cos), torch.Borrow(sin), int64(hd)).Wrap()
}

// applyRope is ApplyRope on torch.Raw handles; x stays the caller's.
// f32 on the CPU goes through torch.Rope, one call instead of nine ops
// with the same result.
func applyRope(x, cos, sin torch.Raw, hd int64) torch.Raw {
	if y, ok, err := torch.Rope(x, cos, sin, hd); err != nil {
		panic(err)
	} else if ok {
		return y
	}
	return composedRope(x, cos, sin, hd)
}

// composedRope is applyRope in libtorch's ops.
func composedRope(x, cos, sin torch.Raw, hd int64) torch.Raw {
	sz := x.Size()
	heads := append(append([]int64(nil), sz[:len(sz)-1]...), sz[len(sz)-1]/hd, hd)
	xh := x.Reshape(heads...)
	half := hd / 2
	lo, hi := xh.Narrow(-1, 0, half), xh.Narrow(-1, half, half)
	neg := hi.Neg()
	rh := torch.Cat(-1, neg, lo)
	r := rh.View(sz...)
	torch.FreeRaw(xh, lo, hi, neg, rh)
	rs := r.Mul(sin)
	xc := x.Mul(cos)
	out := xc.Add(rs)
	torch.FreeRaw(r, rs, xc)
	return out
}
