package mllm

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// layerNorm is an nn.LayerNorm with weight and bias.
type layerNorm struct {
	W, B *ts.Tensor
	Eps  float64
}

func (n *layerNorm) forward(x *ts.Tensor) *ts.Tensor {
	d := n.W.MustSize()
	return ts.MustLayerNorm(x, d, n.W, n.B, n.Eps, false)
}

type visionLayer struct {
	LN1, LN2     layerNorm
	Q, K, V, Out *Linear
	FC1, FC2     *Linear
}

type textLayer struct {
	InNorm, PostNorm *ts.Tensor
	Q, K, V, O       *Linear
	Gate, Up, Down   *Linear
}

// Model is an Idefics3 (SmolVLM) model: SigLIP vision encoder, pixel-shuffle
// connector and Llama text model, with its tokenizer.
type Model struct {
	Config     Config
	Tokenizer  *Tokenizer // nil when the directory has no tokenizer.json
	Generation GenerationConfig
	Processor  ProcessorConfig
	DType      gotch.DType
	// Device holds the weights; every tensor a forward pass creates is
	// made on it (gotch.CPU or a CUDA device, never the zero Device).
	Device gotch.Device

	patchW, patchB, posEmb *ts.Tensor
	vision                 []visionLayer
	postLN                 layerNorm
	connector              *Linear
	embed                  *ts.Tensor
	text                   []textLayer
	norm                   *ts.Tensor
	lmHead                 *Linear
	linears                map[string]*Linear

	rotQ, rotK *ts.Tensor // block-diagonal rotate_half matrices
	rotHead    *ts.Tensor // one head's rotate_half matrix
	invFreq    []float32
	closed     bool
}

// paramSpec names one checkpoint tensor, its shape and where it goes.
type paramSpec struct {
	Name  string
	Shape []int64
	Kind  string // "linear", "bias", "lnw", "lnb", "rms", "embed", "conv", "pos"
	dst   **ts.Tensor
}

// specs builds the module skeleton of cfg and returns every tensor it
// expects, in checkpoint order.
func (m *Model) specs() []paramSpec {
	c := m.Config
	v, t := c.Vision, c.Text
	var out []paramSpec
	add := func(name string, kind string, dst **ts.Tensor, shape ...int64) {
		out = append(out, paramSpec{Name: name, Shape: shape, Kind: kind, dst: dst})
	}
	m.linears = map[string]*Linear{}
	lin := func(name string, in, o int, bias bool) *Linear {
		l := &Linear{}
		m.linears[name] = l
		add(name+".weight", "linear", &l.W, int64(o), int64(in))
		if bias {
			add(name+".bias", "bias", &l.B, int64(o))
		}
		return l
	}
	ln := func(name string, d int, n *layerNorm, eps float64) {
		n.Eps = eps
		add(name+".weight", "lnw", &n.W, int64(d))
		add(name+".bias", "lnb", &n.B, int64(d))
	}
	vp := "model.vision_model."
	np := int64(v.ImageSize / v.PatchSize)
	add(vp+"embeddings.patch_embedding.weight", "conv", &m.patchW, int64(v.HiddenSize), int64(v.NumChannels), int64(v.PatchSize), int64(v.PatchSize))
	add(vp+"embeddings.patch_embedding.bias", "bias", &m.patchB, int64(v.HiddenSize))
	add(vp+"embeddings.position_embedding.weight", "pos", &m.posEmb, np*np, int64(v.HiddenSize))
	m.vision = make([]visionLayer, v.NumHiddenLayers)
	for i := range m.vision {
		l := &m.vision[i]
		p := fmt.Sprintf("%sencoder.layers.%d.", vp, i)
		l.K = lin(p+"self_attn.k_proj", v.HiddenSize, v.HiddenSize, true)
		l.V = lin(p+"self_attn.v_proj", v.HiddenSize, v.HiddenSize, true)
		l.Q = lin(p+"self_attn.q_proj", v.HiddenSize, v.HiddenSize, true)
		l.Out = lin(p+"self_attn.out_proj", v.HiddenSize, v.HiddenSize, true)
		ln(p+"layer_norm1", v.HiddenSize, &l.LN1, v.LayerNormEps)
		l.FC1 = lin(p+"mlp.fc1", v.HiddenSize, v.IntermediateSize, true)
		l.FC2 = lin(p+"mlp.fc2", v.IntermediateSize, v.HiddenSize, true)
		ln(p+"layer_norm2", v.HiddenSize, &l.LN2, v.LayerNormEps)
	}
	ln(vp+"post_layernorm", v.HiddenSize, &m.postLN, v.LayerNormEps)
	s := c.ScaleFactor
	m.connector = lin("model.connector.modality_projection.proj", v.HiddenSize*s*s, t.HiddenSize, false)
	tp := "model.text_model."
	add(tp+"embed_tokens.weight", "embed", &m.embed, int64(t.VocabSize), int64(t.HiddenSize))
	m.text = make([]textLayer, t.NumHiddenLayers)
	hd := t.HeadDim
	for i := range m.text {
		l := &m.text[i]
		p := fmt.Sprintf("%slayers.%d.", tp, i)
		l.Q = lin(p+"self_attn.q_proj", t.HiddenSize, t.NumAttentionHeads*hd, t.AttentionBias)
		l.K = lin(p+"self_attn.k_proj", t.HiddenSize, t.NumKeyValueHeads*hd, t.AttentionBias)
		l.V = lin(p+"self_attn.v_proj", t.HiddenSize, t.NumKeyValueHeads*hd, t.AttentionBias)
		l.O = lin(p+"self_attn.o_proj", t.NumAttentionHeads*hd, t.HiddenSize, t.AttentionBias)
		l.Gate = lin(p+"mlp.gate_proj", t.HiddenSize, t.IntermediateSize, t.MLPBias)
		l.Up = lin(p+"mlp.up_proj", t.HiddenSize, t.IntermediateSize, t.MLPBias)
		l.Down = lin(p+"mlp.down_proj", t.IntermediateSize, t.HiddenSize, t.MLPBias)
		add(p+"input_layernorm.weight", "rms", &l.InNorm, int64(t.HiddenSize))
		add(p+"post_attention_layernorm.weight", "rms", &l.PostNorm, int64(t.HiddenSize))
	}
	add(tp+"norm.weight", "rms", &m.norm, int64(t.HiddenSize))
	if c.TieWordEmbeddings {
		m.lmHead = &Linear{}
		m.linears["lm_head"] = m.lmHead
	} else {
		m.lmHead = lin("lm_head", t.HiddenSize, t.VocabSize, false)
	}
	return out
}

// Close frees the weights now instead of when the garbage collector gets
// to them; the model cannot be used afterwards.
func (m *Model) Close() {
	if m.closed {
		return
	}
	m.closed = true
	seen := map[*ts.Tensor]bool{}
	drop := func(ts ...*ts.Tensor) {
		for _, t := range ts {
			if t != nil && !seen[t] {
				seen[t] = true
				t.MustDrop()
			}
		}
	}
	for _, l := range m.linears {
		drop(l.W, l.B)
	}
	for _, l := range m.vision {
		drop(l.LN1.W, l.LN1.B, l.LN2.W, l.LN2.B)
	}
	for _, l := range m.text {
		drop(l.InNorm, l.PostNorm)
	}
	drop(m.patchW, m.patchB, m.posEmb, m.postLN.W, m.postLN.B, m.embed, m.norm, m.rotQ, m.rotK, m.rotHead)
}

func (m *Model) usable() error {
	if m.closed {
		return fmt.Errorf("model is closed")
	}
	return nil
}

// Linears maps Hugging Face module names (such as
// "model.text_model.layers.3.self_attn.q_proj") to the model's Linear
// layers, for adapters.
func (m *Model) Linears() map[string]*Linear { return m.linears }

// LoadOptions configures Load.
type LoadOptions struct {
	// DType is the compute dtype: gotch.Float (the default, weights converted
	// to f32) or gotch.BFloat16 (the checkpoint's dtype for SmolVLM).
	DType gotch.DType
	// SkipTokenizer loads no tokenizer.json even when present.
	SkipTokenizer bool
	// Device is where the weights live and the model runs: the zero
	// value or gotch.CPU for the CPU, gotch.CudaBuilder(n) for a GPU
	// (torch.ParseDevice reads "cpu", "cuda", "cuda:N"). A CUDA device
	// on a CPU-only libtorch is an error wrapping torch.ErrNoCUDA.
	Device gotch.Device
}

// Load reads an Idefics3 model directory: config.json, model.safetensors
// (or a sharded index), tokenizer.json and generation_config.json.
func Load(dir string, opts LoadOptions) (*Model, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	m, err := LoadWeights(cfg, dir, opts)
	if err != nil {
		return nil, err
	}
	if !opts.SkipTokenizer {
		tp := filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(tp); err == nil {
			if m.Tokenizer, err = LoadTokenizer(tp); err != nil {
				return nil, err
			}
			if id, ok := m.Tokenizer.TokenID("<image>"); ok && id != cfg.ImageTokenID {
				return nil, fmt.Errorf("load %s: tokenizer's <image> is id %d but config image_token_id is %d", dir, id, cfg.ImageTokenID)
			}
		}
	}
	m.Generation, err = loadGenerationConfig(dir)
	if err != nil {
		return nil, err
	}
	m.Processor, err = loadProcessorConfig(dir, cfg)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// LoadWeights builds the model of cfg from the safetensors checkpoint at
// path (a directory, a .safetensors file or an index). Every checkpoint
// tensor must map onto one module tensor with the same shape.
func LoadWeights(cfg Config, path string, opts LoadOptions) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	dev := gotch.CPU
	if torch.IsCUDA(opts.Device) {
		dev = opts.Device
	}
	if err := torch.CheckDevice(opts.Device); err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	kind := opts.DType
	if kind != gotch.BFloat16 && kind != gotch.Half {
		kind = gotch.Float
	}
	ck, err := tensorio.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	defer ck.Close()
	m := &Model{Config: cfg, DType: kind, Device: dev}
	specs := m.specs()
	want := map[string]bool{}
	var missing, shape []string
	for _, s := range specs {
		want[s.Name] = true
		info, ok := ck.Info(s.Name)
		if !ok {
			missing = append(missing, s.Name)
			continue
		}
		if !equalShape(info.Shape, s.Shape) {
			shape = append(shape, fmt.Sprintf("%s has shape %v, want %v", s.Name, info.Shape, s.Shape))
		}
	}
	var unexpected []string
	for _, n := range ck.Names() {
		if !want[n] && !(cfg.TieWordEmbeddings && n == "lm_head.weight") {
			unexpected = append(unexpected, n)
		}
	}
	if len(missing)+len(shape)+len(unexpected) > 0 {
		var parts []string
		if len(missing) > 0 {
			parts = append(parts, "missing tensors: "+listNames(missing))
		}
		if len(unexpected) > 0 {
			parts = append(parts, "unexpected tensors: "+listNames(unexpected))
		}
		if len(shape) > 0 {
			parts = append(parts, "mis-shaped tensors: "+listNames(shape))
		}
		return nil, fmt.Errorf("load weights %s: %s", path, strings.Join(parts, "; "))
	}
	for _, s := range specs {
		t, err := ck.TensorAs(s.Name, kind)
		if err != nil {
			return nil, fmt.Errorf("load weights %s: %w", path, err)
		}
		if torch.IsCUDA(dev) {
			if t, err = toDeviceErr(t, dev); err != nil {
				return nil, fmt.Errorf("load weights %s: %s: %w", path, s.Name, err)
			}
		}
		*s.dst = t
	}
	if cfg.TieWordEmbeddings {
		m.lmHead.W = m.embed
	}
	m.initRope()
	return m, nil
}

func listNames(names []string) string {
	sort.Strings(names)
	if len(names) > 8 {
		return strings.Join(names[:8], ", ") + fmt.Sprintf(" (and %d more)", len(names)-8)
	}
	return strings.Join(names, ", ")
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// toDeviceErr copies a freshly loaded (CPU) tensor to dev and frees the
// CPU copy, returning gotch's error (out of GPU memory) instead of a panic.
func toDeviceErr(t *ts.Tensor, dev gotch.Device) (*ts.Tensor, error) {
	out, err := t.To(dev, true)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// onDevice moves a tensor built from Go values (ids, masks, position
// tables) to the model's device; on the CPU it is returned as it is.
func (m *Model) onDevice(t *ts.Tensor) *ts.Tensor {
	return torch.ToDevice(t, m.Device, true)
}
