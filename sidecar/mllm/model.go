package mllm

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/mllm/llama"
	"github.com/m3gate/m3gate/sidecar/mllm/siglip"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

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

	vision    *siglip.Encoder
	connector *Connector
	text      *llama.Model
	params    *layers.Params
	closed    bool
}

// build declares the modules of m.Config and returns every tensor they
// expect, in checkpoint order.
func (m *Model) build() []layers.Param {
	c := m.Config
	p := layers.NewParams()
	m.vision = siglip.New(p, c.Vision, "model.vision_model.")
	m.connector = newConnector(p, "model.connector.modality_projection.proj", c)
	m.text = llama.New(p, c.Text, "model.text_model.", "lm_head", c.TieWordEmbeddings)
	m.params = p
	return p.List
}

// Close frees the weights now instead of when the garbage collector gets
// to them; the model cannot be used afterwards.
func (m *Model) Close() {
	if m.closed {
		return
	}
	m.closed = true
	m.params.Drop()
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
func (m *Model) Linears() map[string]*Linear { return m.params.Linears }

// LoadOptions configures Load.
type LoadOptions struct {
	// DType is the compute dtype: gotch.Float (the default, weights converted
	// to f32) or gotch.BFloat16 (the checkpoint's dtype for SmolVLM).
	DType gotch.DType
	// SkipTokenizer loads no tokenizer.json even when present.
	SkipTokenizer bool
	// WidenBF16 converts a bf16 checkpoint's Linear weights and token
	// embeddings to f32 at load under f32 compute on the CPU. Without it
	// they stay bf16 in memory, half the memory and half the memory
	// traffic of a decode step, and are widened as they are used: the
	// same values (bf16 → f32 is exact), so the same results up to f32
	// summation order. (Everything else, and every other case, is
	// converted to the compute dtype at load.)
	WidenBF16 bool
	// BF16Products runs the many-row products of f32 compute on the CPU
	// (the vision tower, prompts) in bf16, about twice as fast on CPUs
	// with avx512_bf16 (see layers.Linear.BF16Products); decode steps
	// stay f32. It changes results slightly (within the 0.02 rule of the
	// rating-word probabilities on the parity tests): opt-in, the
	// sidecar's dtype "mixed". Load refuses it on a CPU without
	// avx512_bf16 or amx_bf16, where the products would be slower.
	BF16Products bool
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
	if err := m.loadFiles(dir, opts); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// loadFiles reads the tokenizer and the generation and processor configs
// of the model directory dir.
func (m *Model) loadFiles(dir string, opts LoadOptions) (err error) {
	cfg := m.Config
	if !opts.SkipTokenizer {
		tp := filepath.Join(dir, "tokenizer.json")
		if _, err := os.Stat(tp); err == nil {
			if m.Tokenizer, err = LoadTokenizer(tp); err != nil {
				return err
			}
			if id, ok := m.Tokenizer.TokenID("<image>"); ok && id != cfg.ImageTokenID {
				return fmt.Errorf("load %s: tokenizer's <image> is id %d but config image_token_id is %d", dir, id, cfg.ImageTokenID)
			}
		}
	}
	if m.Generation, err = loadGenerationConfig(dir); err != nil {
		return err
	}
	m.Processor, err = loadProcessorConfig(dir, cfg)
	return err
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
	// Refused before anything is read.
	if opts.BF16Products {
		if kind != gotch.Float || torch.IsCUDA(dev) {
			return nil, fmt.Errorf("load weights: bf16 products are for f32 compute on the CPU")
		}
		if !torch.HasBF16Products() {
			return nil, fmt.Errorf("load weights: bf16 products: this CPU has no avx512_bf16 or amx_bf16, where they would be slower than f32")
		}
	}
	ck, err := tensorio.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	defer ck.Close()
	m := &Model{Config: cfg, DType: kind, Device: dev}
	m.build()
	var tied []string
	if cfg.TieWordEmbeddings {
		tied = []string{"lm_head.weight"}
	}
	as := func(s layers.Param, info tensorio.Info) gotch.DType {
		if keepBF16(info, s, kind, dev, opts) {
			return gotch.BFloat16
		}
		return kind
	}
	m.params.MapEmbeddings = true // read in place (layers.Params)
	if err := m.params.Load(ck, dev, as, tied...); err != nil {
		return nil, fmt.Errorf("load weights %s: %w", path, err)
	}
	if err := torch.Run("load weights", false, func() error {
		m.text.Bind(kind, dev)
		return nil
	}); err != nil {
		m.params.Drop()
		return nil, err
	}
	if opts.BF16Products {
		for _, l := range m.params.Linears {
			l.BF16Products = true
		}
	}
	return m, nil
}

// keepBF16 reports whether the checkpoint tensor info of spec stays bf16
// under compute dtype kind on dev (see LoadOptions.WidenBF16).
func keepBF16(info tensorio.Info, spec layers.Param, kind gotch.DType, dev gotch.Device, opts LoadOptions) bool {
	return !opts.WidenBF16 && kind == gotch.Float && !torch.IsCUDA(dev) && info.DType == "BF16" &&
		(spec.Kind == layers.KindLinear || spec.Kind == layers.KindEmbed)
}
