package llama

import (
	"math"
	"math/rand"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

func tensorOf(v []float32, shape ...int64) *ts.Tensor {
	return ts.MustOfSlice(v).MustView(shape, true)
}

func randTensor(seed int64, shape ...int64) *ts.Tensor {
	rng := rand.New(rand.NewSource(seed))
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return tensorOf(v, shape...)
}

func floats(t *ts.Tensor) []float32 {
	c := t.MustTotype(gotch.Float, false).MustContiguous(true)
	out := make([]float32, c.Numel())
	c.MustCopyData(out, c.Numel())
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestAttentionMatchesExplicitFormula: the fused GQA attention equals
// softmax(QKᵀ/√d + mask)·V computed head by head with head h reading KV
// head h / nrep.
func TestAttentionMatchesExplicitFormula(t *testing.T) {
	t.Run("prefill", func(t *testing.T) { testAttention(t, 3) })
	t.Run("decode", func(t *testing.T) { testAttention(t, 1) })
}

func testAttention(t *testing.T, Tq int) {
	const B, T, nkv, nrep, hd = 2, 5, 2, 3, 4
	H := nkv * nrep
	q := randTensor(1, B, int64(Tq), int64(H*hd))
	k := randTensor(2, B, nkv, T, hd)
	v := randTensor(3, B, nkv, T, hd)
	// causal mask over the last Tq of T slots, plus a hidden slot 0 in batch 1
	mv := make([]float32, B*nrep*Tq*T)
	hidden := func(b, j, key int) bool { return key > T-Tq+j || (b == 1 && key == 0) }
	for b := 0; b < B; b++ {
		for r := 0; r < nrep; r++ {
			for j := 0; j < Tq; j++ {
				for key := 0; key < T; key++ {
					if hidden(b, j, key) {
						mv[((b*nrep+r)*Tq+j)*T+key] = layers.MaskedScore
					}
				}
			}
		}
	}
	mask := tensorOf(mv, B, 1, int64(nrep*Tq), T)
	got := floats(gqaAttention(torch.Borrow(q), torch.Borrow(k), torch.Borrow(v), torch.Borrow(mask), nkv, nrep, hd, 1/math.Sqrt(hd)).Wrap())
	qv, kv, vv := floats(q), floats(k), floats(v)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			g := h / nrep
			for j := 0; j < Tq; j++ {
				scores := make([]float64, T)
				mx := math.Inf(-1)
				for key := 0; key < T; key++ {
					if hidden(b, j, key) {
						scores[key] = math.Inf(-1)
						continue
					}
					s := 0.0
					for d := 0; d < hd; d++ {
						s += float64(qv[(b*Tq+j)*H*hd+h*hd+d]) * float64(kv[((b*nkv+g)*T+key)*hd+d])
					}
					scores[key] = s / math.Sqrt(hd)
					mx = math.Max(mx, scores[key])
				}
				sum := 0.0
				for key := range scores {
					scores[key] = math.Exp(scores[key] - mx)
					sum += scores[key]
				}
				for d := 0; d < hd; d++ {
					want := 0.0
					for key := 0; key < T; key++ {
						want += scores[key] / sum * float64(vv[((b*nkv+g)*T+key)*hd+d])
					}
					if gv := got[(b*Tq+j)*H*hd+h*hd+d]; math.Abs(float64(gv)-want) > 1e-5 {
						t.Fatalf("b%d h%d q%d d%d: fused %g, explicit %g", b, h, j, d, gv, want)
					}
				}
			}
		}
	}
}

// TestRopeHandComputed: head_dim 4, theta 10000 → inverse frequencies 1
// and 1/100; dimension i pairs with i+2.
func TestRopeHandComputed(t *testing.T) {
	m := NewRope(Config{NumAttentionHeads: 2, NumKeyValueHeads: 1, HeadDim: 4, RopeTheta: 10000}, gotch.Float, gotch.CPU)
	x := []float32{1, 2, 3, 4, -1, 0.5, 2, -3}
	pos := []int64{0, 5, 17}
	xt := tensorOf(append(append(append([]float32{}, x...), x...), x...), 1, 3, 8)
	cos, sin := m.Tables([][]int64{pos}, 2)
	got := floats(ApplyRope(xt, cos, sin, 4))
	// rotate_half from views equals the product with its signed
	// permutation matrix (exact), on a longer input
	long := tensorOf(make([]float32, 10*8), 1, 10, 8).MustAdd(randTensor(9, 1, 10, 8), true)
	lpos := [][]int64{{0, 1, 2, 3, 4, 5, 6, 7, 8, 99}}
	lc, ls := m.Tables(lpos, 2)
	byMatrix := long.MustMul(lc, false).MustAdd(long.MustMatmul(rotateHalfMatrix(2, 4), false).MustMul(ls, true), true)
	if d := maxAbsDiff(floats(ApplyRope(long, lc, ls, 4)), floats(byMatrix)); d != 0 {
		t.Errorf("rotate_half from views and from the permutation matrix differ by %g", d)
	}
	for j, p := range pos {
		for h := 0; h < 2; h++ {
			a, b, c, d := float64(x[h*4]), float64(x[h*4+1]), float64(x[h*4+2]), float64(x[h*4+3])
			t0, t1 := float64(p), float64(p)/100
			want := []float64{
				a*math.Cos(t0) - c*math.Sin(t0),
				b*math.Cos(t1) - d*math.Sin(t1),
				c*math.Cos(t0) + a*math.Sin(t0),
				d*math.Cos(t1) + b*math.Sin(t1),
			}
			for i, w := range want {
				if g := got[j*8+h*4+i]; math.Abs(float64(g)-w) > 1e-5 {
					t.Errorf("pos %d head %d dim %d: got %g, want %g", p, h, i, g, w)
				}
			}
		}
	}
}

// rotateHalfMatrix returns R with x·R = rotate_half(x) applied per head:
// for each head block, out[j] = -x[j+d/2] for j < d/2 and x[j-d/2] above.
func rotateHalfMatrix(heads, hd int) *ts.Tensor {
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
	return tensorOf(r, int64(n), int64(n))
}

// TestRopeKernelMatchesComposed: the one-call kernel (torch.Rope) gives
// exactly libtorch's composed ops, for a decode step's vector and a
// prefill's rows, contiguous or a column block of a joined product's
// output (wide > 0: x is columns 192… of a [..., wide] tensor).
func TestRopeKernelMatchesComposed(t *testing.T) {
	m := NewRope(Config{NumAttentionHeads: 9, NumKeyValueHeads: 3, HeadDim: 64, RopeTheta: 100000}, gotch.Float, gotch.CPU)
	for _, c := range []struct {
		pos   [][]int64
		shape []int64
		wide  int64
	}{
		{[][]int64{{300}}, []int64{576}, 0},
		{[][]int64{{5}, {77}, {1}}, []int64{3, 1, 576}, 0},
		{[][]int64{make([]int64, 214)}, []int64{1, 214, 576}, 0},
		{[][]int64{{300}}, []int64{576}, 960},
		{[][]int64{{5}, {77}, {1}}, []int64{3, 1, 576}, 960},
		{[][]int64{make([]int64, 214), make([]int64, 214)}, []int64{2, 214, 576}, 960},
	} {
		for _, row := range c.pos {
			for i := range row {
				if len(row) > 1 {
					row[i] = int64(i)
				}
			}
		}
		cos, sin := m.Tables(c.pos, 9)
		x := randTensor(5, c.shape...)
		if c.wide > 0 {
			shape := append(append([]int64(nil), c.shape[:len(c.shape)-1]...), c.wide)
			x = randTensor(5, shape...).MustNarrow(-1, 192, 576, true)
			if len(c.shape) > 1 && x.MustIsContiguous() {
				t.Fatalf("%v: the column block is contiguous", c.shape)
			}
		}
		var got, want []float32
		err := torch.Run("rope", false, func() error {
			xr, cr, sr := torch.Borrow(x), torch.Borrow(cos), torch.Borrow(sin)
			y, ok, err := torch.Rope(xr, cr, sr, 64)
			if err != nil || !ok {
				t.Fatalf("%v: kernel ok %v, error %v", c.shape, ok, err)
			}
			got, want = floats(y.Wrap()), floats(composedRope(xr, cr, sr, 64).Wrap())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if d := maxAbsDiff(got, want); d != 0 {
			t.Errorf("%v (wide %d): kernel and composed ops differ by %g", c.shape, c.wide, d)
		}
	}
	// Rows that are not evenly spaced (a transposed tensor) are left to
	// the composed ops.
	cos, sin := m.Tables([][]int64{{0, 1}}, 9)
	x := randTensor(5, 576, 2).MustT(true).MustUnsqueeze(0, true)
	err := torch.Run("rope", false, func() error {
		_, ok, err := torch.Rope(torch.Borrow(x), torch.Borrow(cos), torch.Borrow(sin), 64)
		if err != nil || ok {
			t.Errorf("transposed rows: kernel ok %v, error %v; want it declined", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
