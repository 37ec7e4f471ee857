package minicpmv

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/m3gate/m3gate/sidecar/mllm/llama"
)

// VisionConfig is the Idefics2-style SigLIP tower's vision_config.
type VisionConfig struct {
	HiddenSize        int     `json:"hidden_size"`
	IntermediateSize  int     `json:"intermediate_size"`
	NumHiddenLayers   int     `json:"num_hidden_layers"`
	NumAttentionHeads int     `json:"num_attention_heads"`
	NumChannels       int     `json:"num_channels"`
	ImageSize         int     `json:"image_size"`
	PatchSize         int     `json:"patch_size"`
	HiddenAct         string  `json:"hidden_act"`
	LayerNormEps      float64 `json:"layer_norm_eps"`
	ModelType         string  `json:"model_type,omitempty"`
}

// SliceConfig is MiniCPMVSliceConfig.
type SliceConfig struct {
	PatchSize       int    `json:"patch_size"`
	MaxSliceNums    int    `json:"max_slice_nums"`
	ScaleResolution int    `json:"scale_resolution"`
	ModelType       string `json:"model_type,omitempty"`
}

// Config is MiniCPM-Llama3-V-2.5's config.json (MiniCPMVConfig). Fields the
// file omits take the remote code's defaults: query_num 64, image_size 448,
// drop_vision_last_layer true (the real file sets false), slice_config
// absent = no slicing (max_slice_nums 1), scale_resolution 448,
// vision_config = SigLIP-so400m when absent and Idefics2VisionConfig's
// defaults for fields it omits, LlamaConfig's defaults for the text model.
type Config struct {
	// Text is the Llama-3 text model, whose keys MiniCPMVConfig (a
	// LlamaConfig) keeps at the top level.
	Text                llama.Config `json:"-"`
	TieWordEmbeddings   bool         `json:"tie_word_embeddings"`
	Architectures       []string     `json:"architectures,omitempty"`
	ModelType           string       `json:"model_type"`
	Version             float64      `json:"version,omitempty"`
	QueryNum            int          `json:"query_num"`
	ImageSize           int          `json:"image_size"`
	PatchSize           int          `json:"patch_size"`
	DropVisionLastLayer bool         `json:"drop_vision_last_layer"`
	BatchVisionInput    bool         `json:"batch_vision_input"`
	SliceMode           bool         `json:"slice_mode"`
	Slice               SliceConfig  `json:"slice_config"`
	Vision              VisionConfig `json:"vision_config"`
	TorchDType          string       `json:"torch_dtype,omitempty"`
	BOSTokenID          *int64       `json:"bos_token_id,omitempty"`
	EOSTokenID          any          `json:"eos_token_id,omitempty"`
}

// ParseConfig reads a config.json document and fills in the defaults.
func ParseConfig(raw []byte) (Config, error) {
	var probe struct {
		Vision json.RawMessage `json:"vision_config"`
		Slice  json.RawMessage `json:"slice_config"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return Config{}, fmt.Errorf("parse config.json: %w", err)
	}
	c := Config{
		QueryNum: 64, ImageSize: 448, PatchSize: 14, DropVisionLastLayer: true, BatchVisionInput: true, SliceMode: true,
		Slice: SliceConfig{PatchSize: 14, MaxSliceNums: 9, ScaleResolution: 448},
		Text: llama.Config{VocabSize: 32000, HiddenSize: 4096, IntermediateSize: 11008, NumHiddenLayers: 32,
			NumAttentionHeads: 32, HiddenAct: "silu", RMSNormEps: 1e-6, RopeTheta: 10000, MaxPositionEmbeddings: 2048},
	}
	if len(probe.Vision) == 0 || string(probe.Vision) == "null" {
		c.Vision = VisionConfig{HiddenSize: 1152, ImageSize: 980, IntermediateSize: 4304, NumAttentionHeads: 16, NumHiddenLayers: 27, PatchSize: 14, ModelType: "idefics2"}
	} else {
		c.Vision = VisionConfig{HiddenSize: 768, IntermediateSize: 3072, NumHiddenLayers: 12, NumAttentionHeads: 12, ImageSize: 224, PatchSize: 32}
	}
	c.Vision.NumChannels, c.Vision.HiddenAct, c.Vision.LayerNormEps = 3, "gelu_pytorch_tanh", 1e-6
	if err := json.Unmarshal(raw, &c); err != nil {
		return Config{}, fmt.Errorf("parse config.json: %w", err)
	}
	if len(probe.Slice) == 0 || string(probe.Slice) == "null" {
		c.Slice.MaxSliceNums = 1 // MiniCPMVSliceConfig(max_slice_nums=1)
	}
	if err := json.Unmarshal(raw, &c.Text); err != nil {
		return Config{}, fmt.Errorf("parse config.json: %w", err)
	}
	if c.Text.NumKeyValueHeads == 0 {
		c.Text.NumKeyValueHeads = c.Text.NumAttentionHeads
	}
	if c.Text.HeadDim == 0 && c.Text.NumAttentionHeads > 0 {
		c.Text.HeadDim = c.Text.HiddenSize / c.Text.NumAttentionHeads
	}
	return c, c.Validate()
}

// LoadConfig reads a model directory's config.json.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	c, err := ParseConfig(raw)
	if err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	return c, nil
}

// ResamplerHeads is the resampler's head count: hidden_size // 128.
func (c Config) ResamplerHeads() int { return c.Text.HiddenSize / 128 }

// Validate checks that the shapes are usable.
func (c Config) Validate() error {
	v, t := c.Vision, c.Text
	switch {
	case v.HiddenSize <= 0 || v.NumAttentionHeads <= 0 || v.HiddenSize%v.NumAttentionHeads != 0:
		return fmt.Errorf("vision_config: hidden_size %d must be a positive multiple of num_attention_heads %d", v.HiddenSize, v.NumAttentionHeads)
	case v.PatchSize <= 0 || v.ImageSize < v.PatchSize:
		return fmt.Errorf("vision_config: image_size %d and patch_size %d", v.ImageSize, v.PatchSize)
	case v.HiddenAct != "gelu_pytorch_tanh":
		return fmt.Errorf("vision_config: hidden_act %q is not supported (gelu_pytorch_tanh)", v.HiddenAct)
	case t.HiddenSize < 128 || t.HiddenSize%128 != 0:
		return fmt.Errorf("hidden_size %d: the resampler needs a positive multiple of 128 (heads = hidden_size // 128)", t.HiddenSize)
	case t.NumAttentionHeads <= 0 || t.HiddenSize%t.NumAttentionHeads != 0:
		return fmt.Errorf("hidden_size %d is not a multiple of num_attention_heads %d", t.HiddenSize, t.NumAttentionHeads)
	case t.NumKeyValueHeads <= 0 || t.NumAttentionHeads%t.NumKeyValueHeads != 0:
		return fmt.Errorf("num_attention_heads %d is not a multiple of num_key_value_heads %d", t.NumAttentionHeads, t.NumKeyValueHeads)
	case t.HiddenAct != "silu":
		return fmt.Errorf("hidden_act %q is not supported (silu)", t.HiddenAct)
	case c.QueryNum <= 0:
		return fmt.Errorf("query_num %d must be positive", c.QueryNum)
	case c.Slice.MaxSliceNums < 1 || c.Slice.ScaleResolution < c.Slice.PatchSize:
		return fmt.Errorf("slice_config: max_slice_nums %d, scale_resolution %d", c.Slice.MaxSliceNums, c.Slice.ScaleResolution)
	case t.VocabSize <= 0 || t.NumHiddenLayers <= 0:
		return fmt.Errorf("vocab_size %d and num_hidden_layers %d must be positive", t.VocabSize, t.NumHiddenLayers)
	}
	return nil
}
