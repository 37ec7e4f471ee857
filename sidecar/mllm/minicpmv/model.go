package minicpmv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/bpe"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/mllm/llama"
	"github.com/m3gate/m3gate/sidecar/mllm/siglip"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Model is MiniCPM-Llama3-V-2.5: the vision tower (vpm.*), the resampler
// (resampler.*) and the Llama-3 text model (llm.model.*, llm.lm_head).
type Model struct {
	Config    Config
	Tokenizer *bpe.Tokenizer // nil when the directory has no tokenizer.json
	DType     gotch.DType
	Device    gotch.Device

	Vision    *siglip.Encoder
	Resampler *Resampler
	Text      *llama.Model

	params *layers.Params
	closed bool
	ids    specialIDs
}

// specialIDs are the token ids the family's prompts use.
type specialIDs struct {
	imStart, imEnd, unk int64
	terminators         []int64
}

// LoadOptions configures Load.
type LoadOptions struct {
	// DType is the compute dtype: gotch.Float (the default; the real
	// shards are F32 and are kept so) or gotch.BFloat16 (converted while
	// loading, one tensor at a time: two copies never exist).
	DType gotch.DType
	// Device holds the weights (the zero value is the CPU).
	Device gotch.Device
	// SkipTokenizer loads no tokenizer.json.
	SkipTokenizer bool
}

// build declares every module of the model in a fresh Params and returns
// the checkpoint tensors in order.
func (m *Model) build() []layers.Param {
	c := m.Config
	p := layers.NewParams()
	m.params = p
	v := c.Vision
	vc := siglip.Config{HiddenSize: v.HiddenSize, IntermediateSize: v.IntermediateSize, NumHiddenLayers: v.NumHiddenLayers,
		NumAttentionHeads: v.NumAttentionHeads, NumChannels: v.NumChannels, ImageSize: v.ImageSize, PatchSize: v.PatchSize,
		HiddenAct: v.HiddenAct, LayerNormEps: v.LayerNormEps}
	if c.DropVisionLastLayer {
		// the remote code drops the last layer before the weights are
		// saved: the checkpoint does not hold it
		vc.NumHiddenLayers--
	}
	m.Vision = siglip.New(p, vc, "vpm.")
	m.Resampler = newResampler(p, "resampler.", c.QueryNum, c.Text.HiddenSize, v.HiddenSize, c.ResamplerHeads())
	m.Text = llama.New(p, c.Text, "llm.model.", "llm.lm_head", c.TieWordEmbeddings)
	return p.List
}

// Params returns the model's checkpoint tensors by name (adapters swap
// modules_to_save tensors through it).
func (m *Model) Params() []layers.Param { return m.params.List }

// Linears maps module names (such as "llm.model.layers.3.self_attn.q_proj")
// to the model's Linear layers, for LoRA adapters.
func (m *Model) Linears() map[string]*layers.Linear { return m.params.Linears }

// Close frees the weights now; the model cannot be used afterwards.
func (m *Model) Close() {
	if m.closed || m.params == nil {
		return
	}
	m.closed = true
	m.params.Drop()
}

// Load reads a MiniCPM-Llama3-V-2.5 model directory: config.json, the
// safetensors weights (one file or a sharded index) and tokenizer.json.
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
			if m.Tokenizer, err = bpe.Load(tp); err != nil {
				m.Close()
				return nil, err
			}
			if err := m.resolveIDs(); err != nil {
				m.Close()
				return nil, fmt.Errorf("load %s: %w", dir, err)
			}
		}
	}
	return m, nil
}

// resolveIDs looks up the family's special tokens in the tokenizer.
func (m *Model) resolveIDs() error {
	get := func(s string) (int64, error) {
		id, ok := m.Tokenizer.TokenID(s)
		if !ok {
			return 0, fmt.Errorf("tokenizer has no %s token (not a MiniCPM-V 2.5 tokenizer)", s)
		}
		if id >= int64(m.Config.Text.VocabSize) {
			return 0, fmt.Errorf("tokenizer's %s is id %d, past the model's vocab_size %d", s, id, m.Config.Text.VocabSize)
		}
		return id, nil
	}
	var err error
	if m.ids.imStart, err = get(ImStart); err != nil {
		return err
	}
	if m.ids.imEnd, err = get(ImEnd); err != nil {
		return err
	}
	if m.ids.unk, err = get(Unk); err != nil {
		return err
	}
	m.ids.terminators = nil
	for _, s := range Terminators {
		id, err := get(s)
		if err != nil {
			return err
		}
		m.ids.terminators = append(m.ids.terminators, id)
	}
	return nil
}

// TerminatorIDs are the ids that end a generated answer.
func (m *Model) TerminatorIDs() []int64 { return slices.Clone(m.ids.terminators) }

// LoadWeights builds the model of cfg from the safetensors checkpoint at
// path. Every checkpoint tensor must map onto one module tensor with the
// same shape; tensors are converted to the compute dtype one at a time.
func LoadWeights(cfg Config, path string, opts LoadOptions) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	if err := torch.CheckDevice(opts.Device); err != nil {
		return nil, fmt.Errorf("load weights: %w", err)
	}
	dev := gotch.CPU
	if torch.IsCUDA(opts.Device) {
		dev = opts.Device
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
	m.build()
	var tied []string
	if cfg.TieWordEmbeddings {
		tied = []string{"llm.lm_head.weight"}
	}
	as := func(layers.Param, tensorio.Info) gotch.DType { return kind }
	m.params.MapEmbeddings = true // read in place (layers.Params)
	if err := m.params.Load(ck, dev, as, tied...); err != nil {
		return nil, fmt.Errorf("load weights %s: %w", path, err)
	}
	if err := torch.Run("minicpmv", false, func() error {
		m.Text.Bind(kind, dev)
		return nil
	}); err != nil {
		m.params.Drop()
		return nil, err
	}
	return m, nil
}

func (m *Model) usable() error {
	if m.closed {
		return fmt.Errorf("model is closed")
	}
	return nil
}
