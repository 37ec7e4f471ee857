// Package xlstm is M3-AGIQA's quality predictor: Linear(vocab → 512), an
// xLSTM block stack computed exactly as NX-AI xlstm 1.0.6 computes it
// (mLSTM and sLSTM blocks, post-blocks LayerNorm), mean pooling over
// positions and a regression head Linear(512→128) → ReLU → Linear(128→1).
// It loads and saves the reference checkpoints' state-dict layout.
package xlstm

import (
	"fmt"
	"math/rand"
	"strings"
	"sync"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	ts "github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Predictor is the xLSTM quality predictor. Its parameters live in an
// nn.VarStore under their checkpoint names, so gotch's optimisers (for
// example nn.DefaultAdamWConfig().Build(p.VarStore(), lr)) train it.
// A Predictor is safe for concurrent forwards; loading or training it while
// forwards run is not.
type Predictor struct {
	cfg    Config
	device gotch.Device
	vs     *nn.VarStore
	names  []string
	params map[string]*ts.Tensor

	mu       sync.Mutex
	training bool
	fused    *WLMHead
	fusedFor *ts.Tensor
}

// Param is one named parameter of a Predictor.
type Param struct {
	Name   string
	Tensor *ts.Tensor
}

// New builds a predictor with fresh weights on device: Xavier-uniform W and
// head with zero bias, the stack initialised as xlstm 1.0.6 initialises it.
// The same seed gives the same weights.
func New(cfg Config, seed int64, device gotch.Device) (*Predictor, error) {
	cfg = cfg.normalized()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewSource(seed))
	vals := map[string]*ts.Tensor{}
	for _, sp := range cfg.specs() {
		t, err := ts.OfSlice(sp.values(rng))
		if err != nil {
			return nil, fmt.Errorf("xlstm: init %s: %w", sp.name, err)
		}
		vals[sp.name] = t.MustView(sp.shape, true)
	}
	return build(cfg, vals, device)
}

// build wraps tensors (already checked against cfg.specs) into a Predictor.
func build(cfg Config, vals map[string]*ts.Tensor, device gotch.Device) (*Predictor, error) {
	if err := torch.CheckDevice(device); err != nil {
		return nil, fmt.Errorf("xlstm: %w", err)
	}
	if !torch.IsCUDA(device) {
		device = gotch.CPU // the zero Device is the CPU (gotch aborts on it)
	}
	p := &Predictor{cfg: cfg, device: device, vs: nn.NewVarStore(device), params: map[string]*ts.Tensor{}}
	for _, sp := range cfg.specs() {
		src, ok := vals[sp.name]
		if !ok {
			return nil, fmt.Errorf("xlstm: missing parameter %s", sp.name)
		}
		t := src.MustTotype(gotch.Float, false).MustTo(device, true).MustContiguous(true)
		parts := strings.Split(sp.name, ".")
		path := p.vs.Root()
		for _, seg := range parts[:len(parts)-1] {
			path = path.Sub(seg)
		}
		v, err := path.Add(parts[len(parts)-1], t, true)
		if err != nil {
			return nil, fmt.Errorf("xlstm: add %s: %w", sp.name, err)
		}
		p.names = append(p.names, sp.name)
		p.params[sp.name] = v
	}
	return p, nil
}

// Config returns the predictor's sizes.
func (p *Predictor) Config() Config { return p.cfg }

// Device returns the device holding the parameters.
func (p *Predictor) Device() gotch.Device { return p.device }

// VarStore returns the nn.VarStore that holds the trainable parameters.
func (p *Predictor) VarStore() *nn.VarStore { return p.vs }

// Parameters returns every parameter (requires_grad set) in checkpoint order.
func (p *Predictor) Parameters() []Param {
	out := make([]Param, len(p.names))
	for i, n := range p.names {
		out[i] = Param{Name: n, Tensor: p.params[n]}
	}
	return out
}

// SetTraining switches training mode. In training mode ForwardHidden
// recomputes W·lm_head on every call so gradients reach W; otherwise the
// fused matrix is computed once per lm_head tensor and cached.
func (p *Predictor) SetTraining(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.training = on
	p.fused, p.fusedFor = nil, nil
}

func (p *Predictor) w(name string) *ts.Tensor { return p.params[name] }

// checkInput validates x [B, S, D] against width d and lengths.
func (p *Predictor) checkInput(x *ts.Tensor, d int, lengths []int, what string) (B, S int64, err error) {
	if x == nil {
		return 0, 0, fmt.Errorf("xlstm: %s is nil", what)
	}
	if ok, _ := x.Defined(); !ok {
		return 0, 0, fmt.Errorf("xlstm: %s is undefined", what)
	}
	sz, err := x.Size()
	if err != nil {
		return 0, 0, fmt.Errorf("xlstm: %s: %w", what, err)
	}
	if len(sz) != 3 {
		return 0, 0, fmt.Errorf("xlstm: %s must be [batch, seq, %d], got shape %v", what, d, sz)
	}
	if sz[2] != int64(d) {
		return 0, 0, fmt.Errorf("xlstm: %s width %d, want %d", what, sz[2], d)
	}
	B, S = sz[0], sz[1]
	if B == 0 || S == 0 {
		return 0, 0, fmt.Errorf("xlstm: %s is empty (shape %v)", what, sz)
	}
	if p.cfg.ContextLength > 0 && S > int64(p.cfg.ContextLength) {
		return 0, 0, fmt.Errorf("xlstm: sequence length %d exceeds context length %d (truncate on the right)", S, p.cfg.ContextLength)
	}
	dev, err := x.Device()
	if err != nil || !torch.SameDevice(dev, p.device) {
		return 0, 0, fmt.Errorf("xlstm: %s is on %v, predictor on %v", what, dev, p.device)
	}
	if lengths != nil {
		if len(lengths) != int(B) {
			return 0, 0, fmt.Errorf("xlstm: %d lengths for batch %d", len(lengths), B)
		}
		for i, l := range lengths {
			if l < 1 || l > int(S) {
				return 0, 0, fmt.Errorf("xlstm: length %d of item %d outside 1..%d", l, i, S)
			}
		}
	}
	return B, S, nil
}

// Forward scores x [B, S, InputDim] (the MLLM's vocabulary logits) and
// returns [B] predicted MOS. lengths gives each item's real length when the
// batch is right-padded (nil: every position is real); the stack is causal,
// so padding after an item's end does not change its result and pooling
// averages real positions only. Autograd follows the caller's grad mode.
func (p *Predictor) Forward(x *ts.Tensor, lengths []int) (*ts.Tensor, error) {
	if _, _, err := p.checkInput(x, p.cfg.InputDim, lengths, "input"); err != nil {
		return nil, err
	}
	s := &scope{}
	xf := s.Hold(x.MustTotype(gotch.Float, false))
	e := s.linear(xf, p.w(keyW+"weight"), p.w(keyW+"bias"))
	out := p.fromEmbedded(s, e, lengths)
	s.End(out)
	torch.Keep(x)
	return out, nil
}

// ForwardLogits is Forward on vocabulary logits [B, S, V]: the literal
// reference path, kept for checking the W·lm_head shortcut.
func (p *Predictor) ForwardLogits(logits *ts.Tensor, lengths []int) (*ts.Tensor, error) {
	return p.Forward(logits, lengths)
}

// Stack runs only the xLSTM block stack (with its final norm) on
// e [B, S, EmbeddingDim] and returns [B, S, EmbeddingDim].
func (p *Predictor) Stack(e *ts.Tensor) (*ts.Tensor, error) {
	if _, _, err := p.checkInput(e, p.cfg.EmbeddingDim, nil, "embedded input"); err != nil {
		return nil, err
	}
	s := &scope{}
	out := p.stack(s, s.Hold(e.MustTotype(gotch.Float, false)))
	s.End(out)
	torch.Keep(e)
	return out, nil
}

func (p *Predictor) fromEmbedded(s *scope, e *ts.Tensor, lengths []int) *ts.Tensor {
	h := p.stack(s, e)
	pooled := s.meanPool(h, lengths)
	y := s.Hold(s.linear(pooled, p.w(keyFC+"0.weight"), p.w(keyFC+"0.bias")).MustRelu(false))
	y = s.linear(y, p.w(keyFC+"2.weight"), p.w(keyFC+"2.bias"))
	return s.Hold(y.MustSqueezeDim(1, false))
}

// meanPool averages h [B, S, E] over positions (the first lengths[b] of
// item b when lengths is set).
func (s *scope) meanPool(h *ts.Tensor, lengths []int) *ts.Tensor {
	if lengths == nil {
		return s.Hold(h.MustMeanDim([]int64{1}, false, gotch.Float, false))
	}
	sz := h.MustSize()
	B, S := sz[0], sz[1]
	w := make([]float32, B*S)
	for b := int64(0); b < B; b++ {
		l := lengths[b]
		for i := 0; i < l; i++ {
			w[b*S+int64(i)] = 1 / float32(l)
		}
	}
	wt := s.Hold(s.Hold(s.Hold(ts.MustOfSlice(w)).MustView([]int64{B, S, 1}, false)).MustTo(h.MustDevice(), false))
	return s.Hold(s.Hold(h.MustMul(wt, false)).MustSumDimIntlist([]int64{1}, false, gotch.Float, false))
}

// stack runs the blocks, each in its own scope (its intermediates are
// freed when it ends), then the post-blocks norm.
func (p *Predictor) stack(s *scope, x *ts.Tensor) *ts.Tensor {
	for i := 0; i < p.cfg.NumBlocks; i++ {
		bs := &scope{}
		var y *ts.Tensor
		if p.cfg.IsSLSTM(i) {
			y = p.slstmBlock(bs, i, x)
		} else {
			y = p.mlstmBlock(bs, i, x)
		}
		bs.End(y)
		x = s.Hold(y)
	}
	return s.residualNorm(x, p.w(keyStack+"post_blocks_norm.weight"))
}

func (p *Predictor) bw(i int, rest string) *ts.Tensor { return p.params[blockKey(i, rest)] }

// mlstmBlock is x + mLSTMLayer(LayerNorm(x)).
func (p *Predictor) mlstmBlock(s *scope, i int, x *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	B, S := sz[0], sz[1]
	I := int64(p.cfg.InnerDim())
	NH := int64(p.cfg.NumHeads)
	DH := I / NH
	xn := s.residualNorm(x, p.bw(i, "xlstm_norm.weight"))
	up := s.linear(xn, p.bw(i, "xlstm.proj_up.weight"), nil)
	xm := s.Hold(up.MustNarrow(2, 0, I, false))
	z := s.Hold(up.MustNarrow(2, I, I, false))
	xc := s.Hold(s.causalConv(xm, p.bw(i, "xlstm.conv1d.conv.weight"), p.bw(i, "xlstm.conv1d.conv.bias")).MustSilu(false))
	q := s.headwise(xc, p.bw(i, "xlstm.q_proj.weight"))
	k := s.headwise(xc, p.bw(i, "xlstm.k_proj.weight"))
	v := s.headwise(xm, p.bw(i, "xlstm.v_proj.weight"))
	gin := s.Hold(ts.MustCat([]*ts.Tensor{q, k, v}, -1))
	ig := s.Hold(s.linear(gin, p.bw(i, "xlstm.mlstm_cell.igate.weight"), p.bw(i, "xlstm.mlstm_cell.igate.bias")).MustTranspose(1, 2, false)) // [B,NH,S]
	fg := s.Hold(s.linear(gin, p.bw(i, "xlstm.mlstm_cell.fgate.weight"), p.bw(i, "xlstm.mlstm_cell.fgate.bias")).MustTranspose(1, 2, false))
	heads := func(t *ts.Tensor) *ts.Tensor {
		return s.Hold(s.Hold(t.MustView([]int64{B, S, NH, DH}, false)).MustTranspose(1, 2, false))
	}
	h := s.mlstmParallel(heads(q), heads(k), heads(v), ig, fg) // [B,NH,S,DH]
	hn := s.headNorm(s.Hold(h.MustTranspose(1, 2, false)), p.bw(i, "xlstm.mlstm_cell.outnorm.weight"), NH)
	hs := s.Hold(hn.MustAdd(s.Hold(xc.MustMul(p.bw(i, "xlstm.learnable_skip"), false)), false))
	hs = s.Hold(hs.MustMul(s.Hold(z.MustSilu(false)), false))
	out := s.linear(hs, p.bw(i, "xlstm.proj_down.weight"), nil)
	return s.Hold(x.MustAdd(out, false))
}

// slstmBlock is x + sLSTMLayer(LayerNorm(x)), then x + GatedFFN(LayerNorm(x)).
func (p *Predictor) slstmBlock(s *scope, i int, x *ts.Tensor) *ts.Tensor {
	sz := x.MustSize()
	B, S, E := sz[0], sz[1], sz[2]
	NH := int64(p.cfg.SLSTMHeads)
	DH := E / NH
	xn := s.residualNorm(x, p.bw(i, "xlstm_norm.weight"))
	xc := s.Hold(s.causalConv(xn, p.bw(i, "xlstm.conv1d.conv.weight"), p.bw(i, "xlstm.conv1d.conv.bias")).MustSilu(false))
	// xlstm 1.0.6: i, f, z, o = fgate(xc), igate(xc), zgate(x), ogate(x).
	gi := s.headwise(xc, p.bw(i, "xlstm.fgate.weight"))
	gf := s.headwise(xc, p.bw(i, "xlstm.igate.weight"))
	gz := s.headwise(xn, p.bw(i, "xlstm.zgate.weight"))
	gog := s.headwise(xn, p.bw(i, "xlstm.ogate.weight"))
	// [B,S,4,NH,DH] → [S,NH,B,4,DH] → [S,NH,B,4·DH], plus the bias (cuda
	// layout [NH,4,DH] flat).
	wx := s.Hold(ts.MustStack([]*ts.Tensor{gi, gf, gz, gog}, 2))
	wx = s.Hold(wx.MustView([]int64{B, S, 4, NH, DH}, false))
	wx = s.Hold(wx.MustPermute([]int64{1, 3, 0, 2, 4}, false))
	wx = s.Hold(wx.MustReshape([]int64{S, NH, B, 4 * DH}, false))
	bias := s.Hold(p.bw(i, "xlstm.slstm_cell._bias_").MustView([]int64{NH, 1, 4 * DH}, false))
	wx = s.Hold(s.Hold(wx.MustAdd(bias, false)).MustContiguous(false))
	rk := p.bw(i, "xlstm.slstm_cell._recurrent_kernel_")
	var y *ts.Tensor // [NH,B,S,DH]
	if useNativeSLSTM(wx, rk) {
		y = s.slstmNative(wx, rk)
	} else {
		y = s.slstmCell(wx, rk)
	}
	yn := s.headNorm(s.Hold(y.MustPermute([]int64{1, 2, 0, 3}, false)), p.bw(i, "xlstm.group_norm.weight"), NH)
	x = s.Hold(x.MustAdd(yn, false))
	// Gated feed-forward: GELU(first half, exact erf) ⊙ second half.
	F := int64(p.cfg.FFNDim())
	fn := s.residualNorm(x, p.bw(i, "ffn_norm.weight"))
	up := s.linear(fn, p.bw(i, "ffn.proj_up.weight"), nil)
	g := s.Hold(s.Hold(up.MustNarrow(2, 0, F, false)).MustGelu("none", false))
	u := s.Hold(up.MustNarrow(2, F, F, false))
	out := s.linear(s.Hold(g.MustMul(u, false)), p.bw(i, "ffn.proj_down.weight"), nil)
	return s.Hold(x.MustAdd(out, false))
}
