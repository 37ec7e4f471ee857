package minicpmv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
)

// TinyOptions configures WriteTiny.
type TinyOptions struct {
	Seed  int64
	DType gotch.DType // gotch.Float (default) or gotch.BFloat16 for the safetensors
}

// tinyConfigJSON is the tiny model's config.json: the real file's field
// names, with scale_resolution, the vision tower's layer_norm_eps,
// hidden_act and num_channels, and batch_vision_input left out so that
// their defaults are exercised.
func tinyConfigJSON(vocab int) map[string]any {
	return map[string]any{
		"architectures": []string{"MiniCPMV"}, "model_type": "minicpmv", "version": 2.5,
		"attention_bias": false, "hidden_act": "silu", "hidden_size": 256, "intermediate_size": 512,
		"max_position_embeddings": 2048, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
		"rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false, "vocab_size": vocab,
		"query_num": 16, "image_size": 448, "patch_size": 14, "drop_vision_last_layer": false, "slice_mode": true,
		"slice_config":  map[string]any{"max_slice_nums": 9, "model_type": "minicpmv"},
		"vision_config": map[string]any{"hidden_size": 32, "image_size": 980, "intermediate_size": 64, "model_type": "idefics2", "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 14},
		"torch_dtype":   "float32",
	}
}

// WriteTiny writes a tiny random MiniCPM-Llama3-V-2.5 model directory to
// dir, in the real key layout (vpm.*, resampler.*, llm.model.*,
// llm.lm_head.weight) and config field names: config.json,
// model.safetensors, tokenizer.json (Llama-3 layout, the family's special
// tokens), tokenizer_config.json and generation_config.json. Weights are
// deterministic in the seed.
func WriteTiny(dir string, o TinyOptions) (err error) {
	tok, vocab, err := TinyTokenizerJSON()
	if err != nil {
		return err
	}
	nv := (len(vocab) + 63) / 64 * 64
	raw, _ := json.Marshal(tinyConfigJSON(nv))
	cfg, err := ParseConfig(raw)
	if err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	if o.DType != 0 && o.DType != gotch.Float && o.DType != gotch.BFloat16 {
		return fmt.Errorf("write tiny model: dtype %v not supported (f32 or bf16)", o.DType)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	m := &Model{Config: cfg}
	if err := layers.WriteRandom(filepath.Join(dir, "model.safetensors"), m.build(), o.Seed, o.DType); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	conf := tinyConfigJSON(nv)
	if o.DType == gotch.BFloat16 {
		conf["torch_dtype"] = "bfloat16"
	}
	files := map[string]any{
		"config.json": conf,
		"generation_config.json": map[string]any{
			"bos_token_id": vocab[BOS], "eos_token_id": []int{vocab[EndOfText], vocab[EOT]},
		},
		"tokenizer_config.json": map[string]any{
			"bos_token": BOS, "eos_token": EOT, "unk_token": Unk, "model_max_length": 2048,
			"tokenizer_class": "MiniCPMVTokenizerFast",
		},
	}
	if err := layers.WriteJSONFiles(dir, files); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tok, 0o644); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	return nil
}
