package mllm

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/m3gate/m3gate/sidecar/mllm/llama"
	"github.com/m3gate/m3gate/sidecar/mllm/siglip"
)

// VisionConfig is the SigLIP vision tower's part of an Idefics3 config.json.
type VisionConfig = siglip.Config

// TextConfig is the Llama text model's part of an Idefics3 config.json.
type TextConfig = llama.Config

// Config is an Idefics3 (SmolVLM) config.json. Fields the file omits take
// the Hugging Face defaults (Idefics3Config, Idefics3VisionConfig,
// LlamaConfig).
type Config struct {
	Architectures     []string     `json:"architectures,omitempty"`
	ModelType         string       `json:"model_type"`
	ImageTokenID      int64        `json:"image_token_id"`
	ScaleFactor       int          `json:"scale_factor"`
	TieWordEmbeddings bool         `json:"tie_word_embeddings"`
	PadTokenID        *int64       `json:"pad_token_id,omitempty"`
	TorchDType        string       `json:"torch_dtype,omitempty"`
	Vision            VisionConfig `json:"vision_config"`
	Text              TextConfig   `json:"text_config"`
}

// DefaultConfig returns the Hugging Face defaults of Idefics3Config.
func DefaultConfig() Config {
	return Config{
		ModelType:    "idefics3",
		ImageTokenID: 128257,
		ScaleFactor:  2,
		Vision: VisionConfig{
			HiddenSize: 1152, IntermediateSize: 3072, NumHiddenLayers: 12, NumAttentionHeads: 16,
			NumChannels: 3, ImageSize: 224, PatchSize: 32, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6,
		},
		Text: TextConfig{
			VocabSize: 32000, HiddenSize: 4096, IntermediateSize: 11008, NumHiddenLayers: 32,
			NumAttentionHeads: 32, HiddenAct: "silu", RMSNormEps: 1e-6, RopeTheta: 10000,
			MaxPositionEmbeddings: 2048,
		},
	}
}

// Families lists the model families this package implements.
func Families() []string { return []string{"idefics3"} }

// ParseConfig decodes config.json bytes over the defaults and validates them.
func ParseConfig(raw []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(raw, &c); err != nil {
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	if c.Text.NumKeyValueHeads == 0 {
		c.Text.NumKeyValueHeads = c.Text.NumAttentionHeads
	}
	if c.Text.HeadDim == 0 && c.Text.NumAttentionHeads > 0 {
		c.Text.HeadDim = c.Text.HiddenSize / c.Text.NumAttentionHeads
	}
	return c, c.Validate()
}

// LoadConfig reads and validates a config.json file.
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

// Validate checks that the config describes a model this package can run.
func (c Config) Validate() error {
	if c.ModelType != "" && c.ModelType != "idefics3" && c.ModelType != "smolvlm" {
		return fmt.Errorf("model_type %q is not idefics3", c.ModelType)
	}
	v, t := c.Vision, c.Text
	pos := map[string]int{
		"vision_config.hidden_size": v.HiddenSize, "vision_config.intermediate_size": v.IntermediateSize,
		"vision_config.num_hidden_layers": v.NumHiddenLayers, "vision_config.num_attention_heads": v.NumAttentionHeads,
		"vision_config.image_size": v.ImageSize, "vision_config.patch_size": v.PatchSize, "vision_config.num_channels": v.NumChannels,
		"text_config.vocab_size": t.VocabSize, "text_config.hidden_size": t.HiddenSize,
		"text_config.intermediate_size": t.IntermediateSize, "text_config.num_hidden_layers": t.NumHiddenLayers,
		"text_config.num_attention_heads": t.NumAttentionHeads, "text_config.num_key_value_heads": t.NumKeyValueHeads,
		"scale_factor": c.ScaleFactor,
	}
	for k, n := range pos {
		if n <= 0 {
			return fmt.Errorf("%s must be positive, got %d", k, n)
		}
	}
	if v.HiddenSize%v.NumAttentionHeads != 0 {
		return fmt.Errorf("vision hidden_size %d is not a multiple of num_attention_heads %d", v.HiddenSize, v.NumAttentionHeads)
	}
	if v.ImageSize%v.PatchSize != 0 {
		return fmt.Errorf("vision image_size %d is not a multiple of patch_size %d", v.ImageSize, v.PatchSize)
	}
	if (v.ImageSize/v.PatchSize)%c.ScaleFactor != 0 {
		return fmt.Errorf("patches per side %d is not a multiple of scale_factor %d", v.ImageSize/v.PatchSize, c.ScaleFactor)
	}
	if t.NumAttentionHeads%t.NumKeyValueHeads != 0 {
		return fmt.Errorf("text num_attention_heads %d is not a multiple of num_key_value_heads %d", t.NumAttentionHeads, t.NumKeyValueHeads)
	}
	if t.HeadDim%2 != 0 {
		return fmt.Errorf("text head_dim %d is odd", t.HeadDim)
	}
	switch v.HiddenAct {
	case "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu":
	default:
		return fmt.Errorf("vision hidden_act %q is not supported", v.HiddenAct)
	}
	if t.HiddenAct != "silu" {
		return fmt.Errorf("text hidden_act %q is not supported (silu only)", t.HiddenAct)
	}
	if len(t.RopeScaling) > 0 && string(t.RopeScaling) != "null" {
		var rs map[string]any
		_ = json.Unmarshal(t.RopeScaling, &rs)
		typ, _ := rs["rope_type"].(string)
		if typ == "" {
			typ, _ = rs["type"].(string)
		}
		if typ != "default" {
			return fmt.Errorf("text rope_scaling %s is not supported", string(t.RopeScaling))
		}
	}
	if c.ImageTokenID < 0 || c.ImageTokenID >= int64(t.VocabSize) {
		return fmt.Errorf("image_token_id %d is outside the vocabulary of %d", c.ImageTokenID, t.VocabSize)
	}
	return nil
}

// ImageSeqLen is the number of image tokens one tile becomes.
func (c Config) ImageSeqLen() int {
	n := c.Vision.ImageSize / c.Vision.PatchSize
	return n * n / (c.ScaleFactor * c.ScaleFactor)
}
