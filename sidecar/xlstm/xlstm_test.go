package xlstm

import (
	"math"
	"math/rand"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	ts "github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

const refPath = "testdata/ref_small.safetensors"

func randTensor(rng *rand.Rand, scale float64, shape ...int64) *ts.Tensor {
	v := make([]float32, numel(shape))
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return ts.MustOfSlice(v).MustView(shape, true)
}

func values(t *ts.Tensor) []float64 { return float64s(t) }

func maxDiff(t *testing.T, got, want []float64) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("len %d, want %d", len(got), len(want))
	}
	m := 0.0
	for i := range got {
		if math.IsNaN(got[i]) || math.IsInf(got[i], 0) {
			t.Fatalf("value %d is %v", i, got[i])
		}
		if d := math.Abs(got[i] - want[i]); d > m {
			m = d
		}
	}
	return m
}

func fixtureTensor(t *testing.T, name string) *ts.Tensor {
	t.Helper()
	ck, err := tensorio.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	x, err := ck.TensorAs(name, gotch.Float)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func smallConfig() Config {
	c := DefaultConfig(48)
	c.EmbeddingDim = 32
	c.NumHeads = 2
	c.SLSTMHeads = 2
	c.ContextLength = 64
	c.HeadHidden = 16
	return c
}

// TestReferenceFixture loads the state dict written by scripts/ref_xlstm.py
// (a plain-torch re-implementation of xlstm 1.0.6) and matches its outputs.
func TestReferenceFixture(t *testing.T) {
	for _, path := range []string{refPath, "testdata/ref_small.ckpt"} {
		t.Run(filepath.Ext(path), func(t *testing.T) {
			p, err := Load(path, gotch.CPU)
			if err != nil {
				t.Fatal(err)
			}
			c := p.Config()
			if c.EmbeddingDim != 32 || c.InputDim != 48 || c.NumBlocks != 4 || c.NumHeads != 2 || c.SLSTMHeads != 2 ||
				len(c.SLSTMAt) != 1 || c.SLSTMAt[0] != 1 || c.InnerDim() != 64 || c.FFNDim() != 64 || c.HeadHidden != 128 {
				t.Fatalf("inferred config %+v", c)
			}
			x := fixtureTensor(t, "input.x")
			var out, stack *ts.Tensor
			gradMode(false, func() {
				out, err = p.Forward(x, nil)
				if err == nil {
					stack, err = p.Stack((&scope{}).linear(x, p.w(keyW+"weight"), p.w(keyW+"bias")))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if d := maxDiff(t, values(stack), values(fixtureTensor(t, "expected.stack"))); d > 1e-4 {
				t.Errorf("stack output differs from the reference by %g", d)
			}
			if d := maxDiff(t, values(out), values(fixtureTensor(t, "expected.out"))); d > 1e-4 {
				t.Errorf("prediction differs from the reference by %g", d)
			}
			// Right padding with lengths: item 1 uses its first 7 positions only.
			got, err := p.Predict(x, []int{12, 7})
			if err != nil {
				t.Fatal(err)
			}
			wantShort := values(fixtureTensor(t, "expected.out_short"))
			if d := math.Abs(got[1] - wantShort[0]); d > 1e-4 {
				t.Errorf("masked item: got %v, want %v", got[1], wantShort[0])
			}
			full := values(fixtureTensor(t, "expected.out"))
			if d := math.Abs(got[0] - full[0]); d > 1e-4 {
				t.Errorf("unpadded item changed with lengths: %v vs %v", got[0], full[0])
			}
		})
	}
}

// TestVanillaLayout: a checkpoint saved with the vanilla sLSTM backend
// ([NH, 4·DH, DH] kernel, [gate, head, d] bias) loads to the same model.
func TestVanillaLayout(t *testing.T) {
	ck, err := tensorio.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	sd := map[string]*ts.Tensor{}
	for _, n := range ck.Names() {
		if strings.HasPrefix(n, "model.") {
			sd[n], _ = ck.TensorAs(n, gotch.Float)
		}
	}
	const NH, DH = 2, 16
	rk := "model.xlstm_pooler.xlstm_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"
	bk := "model.xlstm_pooler.xlstm_stack.blocks.1.xlstm.slstm_cell._bias_"
	// vanilla int[h, g·DH+o, j] = cuda[h, j, g·DH+o]; bias [g, h, d].
	sd[rk] = sd[rk].MustTranspose(1, 2, false).MustContiguous(true)
	sd[bk] = sd[bk].MustView([]int64{NH, 4, DH}, false).MustPermute([]int64{1, 0, 2}, true).MustContiguous(true).MustView([]int64{4 * NH * DH}, true)
	p, err := FromStateDict(sd, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Predict(fixtureTensor(t, "input.x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(t, got, values(fixtureTensor(t, "expected.out"))); d > 1e-4 {
		t.Errorf("vanilla layout differs by %g", d)
	}
}

// mlstmRecurrent is the step-by-step recurrent mLSTM cell in float64:
// C_t = f·C + i·k vᵀ, n_t = f·n + i·k (k scaled by 1/√DH), stabilised by m,
// h_t = qᵀC / (max(|qᵀn|, exp(−m)) + 1e-6). The stabiliser starts at −∞
// (m_1 = ĩ_1), the exact recurrent twin of the parallel form; xlstm's own
// step function starts m at 0, which changes the exp(−m) floor.
func mlstmRecurrent(q, k, v, ig, fg []float64, B, NH, S, DH int) []float64 {
	out := make([]float64, B*NH*S*DH)
	idx := func(b, h, s, d int) int { return ((b*NH+h)*S+s)*DH + d }
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			C := make([]float64, DH*DH)
			n := make([]float64, DH)
			m := math.Inf(-1)
			for s := 0; s < S; s++ {
				it := ig[(b*NH+h)*S+s]
				ft := fg[(b*NH+h)*S+s]
				lf := -math.Log1p(math.Exp(-ft))
				mNew := it
				if !math.IsInf(m, -1) {
					mNew = math.Max(lf+m, it)
				}
				fa := 0.0
				if !math.IsInf(m, -1) {
					fa = math.Exp(lf + m - mNew)
				}
				ia := math.Exp(it - mNew)
				for i := 0; i < DH; i++ {
					ki := k[idx(b, h, s, i)] / math.Sqrt(float64(DH))
					n[i] = fa*n[i] + ia*ki
					for j := 0; j < DH; j++ {
						C[i*DH+j] = fa*C[i*DH+j] + ia*ki*v[idx(b, h, s, j)]
					}
				}
				m = mNew
				qn := 0.0
				for i := 0; i < DH; i++ {
					qn += q[idx(b, h, s, i)] * n[i]
				}
				den := math.Max(math.Abs(qn), math.Exp(-m)) + 1e-6
				for j := 0; j < DH; j++ {
					num := 0.0
					for i := 0; i < DH; i++ {
						num += q[idx(b, h, s, i)] * C[i*DH+j]
					}
					out[idx(b, h, s, j)] = num / den
				}
			}
		}
	}
	return out
}

func TestMLSTMParallelMatchesRecurrent(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	const B, NH, S, DH = 2, 3, 40, 8
	for _, gateScale := range []float64{1, 6} {
		q := randTensor(rng, 1, B, NH, S, DH)
		k := randTensor(rng, 1, B, NH, S, DH)
		v := randTensor(rng, 1, B, NH, S, DH)
		ig := randTensor(rng, gateScale, B, NH, S)
		fg := randTensor(rng, gateScale, B, NH, S).MustAddScalar(ts.FloatScalar(2), true)
		want := mlstmRecurrent(values(q), values(k), values(v), values(ig), values(fg), B, NH, S, DH)
		// The parallel form in float64 must match within 1e-4 absolute.
		f64 := func(x *ts.Tensor) *ts.Tensor { return x.MustTotype(gotch.Double, false) }
		got64 := values((&scope{}).mlstmParallel(f64(q), f64(k), f64(v), f64(ig), f64(fg)))
		if d := maxDiff(t, got64, want); d > 1e-4 {
			t.Errorf("gate scale %g: float64 parallel and recurrent differ by %g", gateScale, d)
		}
		got := values((&scope{}).mlstmParallel(q, k, v, ig, fg))
		// float32 parallel form against float64 recurrence: 1e-4 relative
		// to the output's scale (the normaliser floor exp(−m) lets |h| grow).
		scale := 1.0
		for _, w := range want {
			scale = math.Max(scale, math.Abs(w))
		}
		if d := maxDiff(t, got, want); d > 1e-4*scale {
			t.Errorf("gate scale %g: parallel and recurrent differ by %g (output scale %g)", gateScale, d, scale)
		}
		t.Logf("gate scale %g: max diff %g, output scale %g", gateScale, maxDiff(t, got, want), scale)
	}
}

// TestSLSTMTwoSteps unrolls two sLSTM steps by hand in float64.
func TestSLSTMTwoSteps(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	const S, B, NH, DH = 2, 1, 2, 2
	wxT := randTensor(rng, 1.5, S, NH, B, 4*DH)
	rT := randTensor(rng, 0.8, NH, DH, 4*DH)
	got := values((&scope{}).slstmCell(wxT, rT)) // [NH, B=1, S, DH]
	wx, r := values(wxT), values(rT)
	W := func(s, h, g, d int) float64 { return wx[((s*NH+h)*4+g)*DH+d] }
	R := func(h, j, g, o int) float64 { return r[(h*DH+j)*4*DH+g*DH+o] }
	sig := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	logsig := func(x float64) float64 { return -math.Log1p(math.Exp(-x)) }
	for h := 0; h < NH; h++ {
		for d := 0; d < DH; d++ {
			// step 1 from zero state: m = ĩ, i = 1, c = tanh(z̃), n = 1.
			i1, z1, o1 := W(0, h, 0, d), W(0, h, 2, d), W(0, h, 3, d)
			m1 := i1
			c1 := math.Tanh(z1)
			n1 := 1.0
			y1 := sig(o1) * c1 / n1
			_ = m1
			if e := math.Abs(got[(h*S+0)*DH+d] - y1); e > 1e-5 {
				t.Errorf("step 1 h%d d%d: got %v want %v", h, d, got[(h*S+0)*DH+d], y1)
			}
		}
		// step 2 needs y1 of the whole head.
		y1 := make([]float64, DH)
		c1 := make([]float64, DH)
		m1 := make([]float64, DH)
		for d := 0; d < DH; d++ {
			c1[d] = math.Tanh(W(0, h, 2, d))
			y1[d] = sig(W(0, h, 3, d)) * c1[d]
			m1[d] = W(0, h, 0, d)
		}
		for d := 0; d < DH; d++ {
			raw := [4]float64{}
			for g := 0; g < 4; g++ {
				raw[g] = W(1, h, g, d)
				for j := 0; j < DH; j++ {
					raw[g] += y1[j] * R(h, j, g, d)
				}
			}
			lfm := m1[d] + logsig(raw[1])
			m2 := math.Max(raw[0], lfm)
			ia := math.Exp(raw[0] - m2)
			fa := math.Exp(lfm - m2)
			c2 := fa*c1[d] + ia*math.Tanh(raw[2])
			n2 := fa*1 + ia
			y2 := sig(raw[3]) * c2 / n2
			if e := math.Abs(got[(h*S+1)*DH+d] - y2); e > 1e-5 {
				t.Errorf("step 2 h%d d%d: got %v want %v", h, d, got[(h*S+1)*DH+d], y2)
			}
		}
	}
}

// TestLongSequencesFinite: 2048 steps with large pre-activations stay finite
// (the stabiliser keeps exp arguments ≤ 0).
func TestLongSequencesFinite(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	wx := randTensor(rng, 40, 2048, 2, 1, 16)
	r := randTensor(rng, 3, 2, 4, 16)
	for i, v := range values((&scope{}).slstmCell(wx, r)) {
		if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > 1+1e-5 {
			t.Fatalf("sLSTM y[%d] = %v", i, v)
		}
	}
	c := smallConfig()
	c.ContextLength = 2048
	p, err := New(c, 7, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	x := randTensor(rng, 50, 1, 2048, int64(c.InputDim))
	out, err := p.Predict(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	if math.IsNaN(out[0]) || math.IsInf(out[0], 0) {
		t.Fatalf("prediction %v", out[0])
	}
	gates := randTensor(rng, 30, 1, 2, 2048)
	qkv := randTensor(rng, 5, 1, 2, 2048, 8)
	for i, v := range values((&scope{}).mlstmParallel(qkv, qkv, qkv, gates, gates)) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("mLSTM h[%d] = %v", i, v)
		}
	}
}

func TestSaveReload(t *testing.T) {
	c := smallConfig()
	p, err := New(c, 11, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pred.safetensors")
	if err := p.Save(path); err != nil {
		t.Fatal(err)
	}
	q, err := Load(path, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	if q.Config().ContextLength != c.ContextLength || q.Config().HeadHidden != c.HeadHidden {
		t.Fatalf("config after reload %+v", q.Config())
	}
	x := randTensor(rand.New(rand.NewSource(4)), 2, 2, 9, int64(c.InputDim))
	a, err := p.Predict(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := q.Predict(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("item %d: %v before save, %v after reload", i, a[i], b[i])
		}
	}
	// Same seed, same weights; another seed, other weights.
	p2, _ := New(c, 11, gotch.CPU)
	p3, _ := New(c, 12, gotch.CPU)
	c2, _ := p2.Predict(x, nil)
	c3, _ := p3.Predict(x, nil)
	if c2[0] != a[0] || c3[0] == a[0] {
		t.Errorf("seeded init not deterministic: %v %v %v", a[0], c2[0], c3[0])
	}
}

func TestWLMHeadShortcut(t *testing.T) {
	c := smallConfig()
	c.InputDim = 40000 // more than one 16384-row chunk of lm_head
	p, err := New(c, 5, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(6))
	const H = 24
	lm := randTensor(rng, 0.5, int64(c.InputDim), H)
	hidden := randTensor(rng, 1, 2, 10, H)
	lmT := lm.MustT(false)
	logits := hidden.MustMatmul(lmT, false)
	runtime.KeepAlive(lmT)
	want, err := p.Predict(logits, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, training := range []bool{false, true} {
		p.SetTraining(training)
		for rep := 0; rep < 2; rep++ { // second call uses the cached fused matrix
			got, err := p.PredictHidden(hidden, lm, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxDiff(t, got, want); d > 1e-4 {
				t.Errorf("training=%v: shortcut differs from literal path by %g", training, d)
			}
		}
	}
	// A bf16 head (the MLLM's dtype) against the literal path on the same
	// rounded values.
	p.SetTraining(false)
	lmBF := lm.MustTotype(gotch.BFloat16, false)
	lmBFT := lmBF.MustTotype(gotch.Float, false).MustT(true)
	wantBF, err := p.Predict(hidden.MustMatmul(lmBFT, false), nil)
	runtime.KeepAlive(lmBFT)
	if err != nil {
		t.Fatal(err)
	}
	gotBF, err := p.PredictHidden(hidden, lmBF, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(t, gotBF, wantBF); d > 1e-4 {
		t.Errorf("bf16 head: shortcut differs by %g", d)
	}
	if _, err := p.ForwardHidden(hidden, randTensor(rng, 1, 7, H), nil); err == nil || !strings.Contains(err.Error(), "lm_head shape") {
		t.Errorf("wrong lm_head accepted: %v", err)
	}
}

// TestGradientsFlow: one MSE loss reaches every parameter, and AdamW built
// from the VarStore changes the weights.
func TestGradientsFlow(t *testing.T) {
	c := smallConfig()
	p, err := New(c, 9, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTraining(true)
	rng := rand.New(rand.NewSource(8))
	x := randTensor(rng, 2, 1, 10, int64(c.InputDim))
	target := ts.MustOfSlice([]float32{3.5})
	var loss *ts.Tensor
	gradMode(true, func() {
		out, err := p.Forward(x, nil)
		if err != nil {
			t.Fatal(err)
		}
		loss = out.MustSub(target, false).MustSquare(true).MustMean(gotch.Float, true)
		loss.MustBackward()
		runtime.KeepAlive(target)
		runtime.KeepAlive(out)
	})
	for _, prm := range p.Parameters() {
		g := prm.Tensor.MustGrad(false)
		s := 0.0
		for _, v := range values(g) {
			s += math.Abs(v)
		}
		if s == 0 || math.IsNaN(s) {
			t.Errorf("gradient of %s is %v", prm.Name, s)
		}
	}
	opt, err := nn.DefaultAdamWConfig().Build(p.VarStore(), 1e-2)
	if err != nil {
		t.Fatal(err)
	}
	before := values(p.w(keyW + "weight"))
	if err := opt.Step(); err != nil {
		t.Fatal(err)
	}
	after := values(p.w(keyW + "weight"))
	if maxDiff(t, after, before) == 0 {
		t.Error("AdamW step left model.W unchanged")
	}
}

func TestBadInput(t *testing.T) {
	c := smallConfig()
	p, err := New(c, 1, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	cases := []struct {
		name    string
		x       *ts.Tensor
		lengths []int
		want    string
	}{
		{"width", randTensor(rng, 1, 1, 4, 7), nil, "width 7"},
		{"rank", randTensor(rng, 1, 4, 48), nil, "must be [batch, seq"},
		{"context", randTensor(rng, 1, 1, 65, 48), nil, "exceeds context length"},
		{"lengths count", randTensor(rng, 1, 2, 4, 48), []int{4}, "1 lengths for batch 2"},
		{"length range", randTensor(rng, 1, 1, 4, 48), []int{5}, "outside 1..4"},
	}
	for _, tc := range cases {
		if _, err := p.Forward(tc.x, tc.lengths); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	bad := c
	bad.SLSTMAt = []int{9}
	if _, err := New(bad, 1, gotch.CPU); err == nil {
		t.Error("slstm_at outside the stack accepted")
	}
}

func TestLoadRefusesMismatch(t *testing.T) {
	ck, err := tensorio.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	base := map[string]*ts.Tensor{}
	for _, n := range ck.Names() {
		if strings.HasPrefix(n, "model.") {
			base[n], _ = ck.TensorAs(n, gotch.Float)
		}
	}
	clone := func() map[string]*ts.Tensor {
		m := map[string]*ts.Tensor{}
		for k, v := range base {
			m[k] = v
		}
		return m
	}
	missing := clone()
	delete(missing, "model.xlstm_pooler.xlstm_stack.blocks.2.xlstm.learnable_skip")
	wrong := clone()
	wrong["model.xlstm_pooler.xlstm_stack.blocks.0.xlstm.proj_down.weight"] = ts.MustZeros([]int64{32, 63}, gotch.Float, gotch.CPU)
	extra := clone()
	extra["model.xlstm_pooler.xlstm_stack.blocks.0.xlstm.mystery"] = ts.MustZeros([]int64{3}, gotch.Float, gotch.CPU)
	for _, tc := range []struct {
		sd   map[string]*ts.Tensor
		want string
	}{
		{missing, "blocks.2.xlstm.learnable_skip"},
		{wrong, "blocks.0.xlstm.proj_down.weight has shape [32 63]"},
		{extra, "blocks.0.xlstm.mystery"},
		{map[string]*ts.Tensor{"foo": base["model.W.weight"]}, "not an xLSTM predictor"},
	} {
		if _, err := FromStateDict(tc.sd, gotch.CPU); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err %v, want %q", err, tc.want)
		}
	}
}

// TestGradModeRestored: Predict turns autograd off only while it runs.
func TestGradModeRestored(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := smallConfig()
	p, err := New(c, 1, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	setGrad(true)
	if _, err := p.Predict(randTensor(rand.New(rand.NewSource(1)), 1, 1, 5, 48), nil); err != nil {
		t.Fatal(err)
	}
	if !setGrad(true) {
		t.Error("grad mode left disabled after Predict")
	}
}

// TestSLSTMNativeMatchesTensorPath: the Go-loop recurrence used for
// inference equals the tensor-op recurrence used for training.
func TestSLSTMNativeMatchesTensorPath(t *testing.T) {
	rng := rand.New(rand.NewSource(12))
	for _, scale := range []float64{1, 20} {
		wx := randTensor(rng, scale, 300, 3, 2, 4*8)
		r := randTensor(rng, 0.7, 3, 8, 4*8)
		if !useNativeSLSTM(wx, r) {
			t.Fatal("native path not chosen for CPU float32 inputs without grad")
		}
		got := values((&scope{}).slstmNative(wx, r))
		want := values((&scope{}).slstmCell(wx, r))
		if d := maxDiff(t, got, want); d > 1e-5 {
			t.Errorf("scale %g: native and tensor sLSTM differ by %g", scale, d)
		}
	}
	rg := randTensor(rng, 1, 2, 8, 32).MustSetRequiresGrad(true, true)
	if useNativeSLSTM(randTensor(rng, 1, 4, 2, 1, 32), rg) {
		t.Error("native path chosen although the kernel needs gradients")
	}
}

// TestReferenceGradients: autograd through our forward (tensor sLSTM path)
// gives the gradients torch computes for the reference implementation.
func TestReferenceGradients(t *testing.T) {
	p, err := Load(refPath, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	x := fixtureTensor(t, "input.x")
	lw := fixtureTensor(t, "loss.w")
	gradMode(true, func() {
		out, err := p.Forward(x, nil)
		if err != nil {
			t.Fatal(err)
		}
		weighted := out.MustMul(lw, false)
		loss := weighted.MustSum(gotch.Float, false)
		loss.MustBackward()
		runtime.KeepAlive(out)
		runtime.KeepAlive(weighted)
		runtime.KeepAlive(lw)
	})
	for _, prm := range p.Parameters() {
		want := values(fixtureTensor(t, "grad."+prm.Name))
		got := values(prm.Tensor.MustGrad(false))
		scale := 1e-3
		for _, w := range want {
			scale = math.Max(scale, math.Abs(w))
		}
		if d := maxDiff(t, got, want); d > 1e-4*math.Max(1, scale) {
			t.Errorf("%s: gradient differs by %g (scale %g)", prm.Name, d, scale)
		}
	}
}

// gradMode runs fn as one torch.Run pass with autograd on or off.
func gradMode(on bool, fn func()) {
	if err := torch.Run("test", on, func() error { fn(); return nil }); err != nil {
		panic(err)
	}
}
