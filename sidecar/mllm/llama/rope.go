package llama

import (
	"math"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Rope is Llama's rotary position embedding: the inverse frequencies (f32,
// as Hugging Face's LlamaRotaryEmbedding) and the rotate_half matrices.
type Rope struct {
	headDim       int
	dtype         gotch.DType
	device        gotch.Device
	invFreq       []float32
	rotQ, rotK    *ts.Tensor // block-diagonal rotate_half over all query / key heads
	rotHead       *ts.Tensor // one head's rotate_half matrix
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
	r.rotQ = torch.ToDevice(rotateHalfMatrix(c.NumAttentionHeads, hd, kind), dev, true)
	r.rotK = torch.ToDevice(rotateHalfMatrix(c.NumKeyValueHeads, hd, kind), dev, true)
	r.rotHead = torch.ToDevice(rotateHalfMatrix(1, hd, kind), dev, true)
	return r
}

// Close frees the rotate_half matrices.
func (r *Rope) Close() {
	for _, t := range []*ts.Tensor{r.rotQ, r.rotK, r.rotHead} {
		t.MustDrop()
	}
}

// rotateHalfMatrix returns R with x·R = rotate_half(x) applied per head:
// for each head block, out[j] = -x[j+d/2] for j < d/2 and x[j-d/2] above.
func rotateHalfMatrix(heads, hd int, kind gotch.DType) *ts.Tensor {
	n := heads * hd
	r := make([]float32, n*n)
	half := hd / 2
	for h := 0; h < heads; h++ {
		o := h * hd
		for j := 0; j < half; j++ {
			r[(o+j+half)*n+o+j] = -1
			r[(o+j)*n+o+j+half] = 1
		}
	}
	t := ts.MustOfSlice(r).MustView([]int64{int64(n), int64(n)}, true)
	if kind != gotch.Float {
		t = t.MustTotype(kind, true)
	}
	return t
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
	return applyRope(x, torch.Borrow(a.cosQ), torch.Borrow(a.sinQ), torch.Borrow(a.r.rotQ), torch.Borrow(a.r.rotHead))
}

// Key rotates keys [B, T, kvHeads·hd] (or [kvHeads·hd]); x stays the
// caller's.
func (a *Rotation) Key(x torch.Raw) torch.Raw {
	return applyRope(x, torch.Borrow(a.cosK), torch.Borrow(a.sinK), torch.Borrow(a.r.rotK), torch.Borrow(a.r.rotHead))
}

// Drop frees the tables.
func (a *Rotation) Drop() {
	for _, t := range []*ts.Tensor{a.cosQ, a.sinQ, a.cosK, a.sinK} {
		t.MustDrop()
	}
}

// ApplyRope is x·cos + rotate_half(x)·sin with x [B, T, heads·hd].
// rotate_half is a matmul with a signed permutation (exact): with the
// heads·hd-wide block-diagonal rot for short inputs (one op, decode steps),
// per head with the hd-wide rotHead for long ones (prefill), where the wide
// matmul would cost more than the two extra view ops.
func ApplyRope(x, cos, sin, rot, rotHead *ts.Tensor) *ts.Tensor {
	defer torch.Keep(x, cos, sin, rot, rotHead)
	var rh torch.Raw
	if rotHead != nil {
		rh = torch.Borrow(rotHead)
	}
	return applyRope(torch.Borrow(x), torch.Borrow(cos), torch.Borrow(sin), torch.Borrow(rot), rh).Wrap()
}

// applyRope is ApplyRope on torch.Raw handles (rotHead: a zero Raw for
// none); x stays the caller's.
func applyRope(x, cos, sin, rot, rotHead torch.Raw) torch.Raw {
	var r torch.Raw
	sz := x.Size()
	if rotHead.Defined() && len(sz) == 3 && sz[0]*sz[1] > 8 {
		hd := rotHead.Size()[0]
		x4 := x.View(sz[0], sz[1], sz[2]/hd, hd)
		r4 := x4.Matmul(rotHead)
		r = r4.View(sz...)
		torch.FreeRaw(x4, r4)
	} else {
		r = x.Matmul(rot)
	}
	rs := r.Mul(sin)
	xc := x.Mul(cos)
	out := xc.Add(rs)
	torch.FreeRaw(r, rs, xc)
	return out
}
