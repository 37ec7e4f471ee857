package minicpmv

import (
	"strings"
	"testing"
)

// realConfig is MiniCPM-Llama3-V-2.5's config.json as published (the
// auto_map and a few bookkeeping fields left out).
const realConfig = `{
  "architectures": ["MiniCPMV"], "attention_bias": false, "attention_dropout": 0.0, "batch_vision_input": true,
  "bos_token_id": 128000, "drop_vision_last_layer": false, "eos_token_id": 128001, "hidden_act": "silu",
  "hidden_size": 4096, "image_size": 448, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 8192, "mm_use_im_start_end": true, "model_type": "minicpmv", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "patch_size": 14, "pretraining_tp": 1, "query_num": 96,
  "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 500000.0,
  "slice_config": {"max_slice_nums": 9, "patch_size": 14, "model_type": "minicpmv"}, "slice_mode": true,
  "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.40.0", "use_cache": true,
  "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "idefics2",
    "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14},
  "vocab_size": 128256, "version": 2.5
}`

func TestParseRealConfig(t *testing.T) {
	c, err := ParseConfig([]byte(realConfig))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"query_num", c.QueryNum, 96},
		{"drop_vision_last_layer", c.DropVisionLastLayer, false},
		{"scale_resolution (absent: 448)", c.Slice.ScaleResolution, 448},
		{"max_slice_nums", c.Slice.MaxSliceNums, 9},
		{"vision eps (absent: 1e-6)", c.Vision.LayerNormEps, 1e-6},
		{"vision act (absent)", c.Vision.HiddenAct, "gelu_pytorch_tanh"},
		{"vision layers", c.Vision.NumHiddenLayers, 27},
		{"vision patch", c.Vision.PatchSize, 14},
		{"rope theta", c.Text.RopeTheta, 500000.0},
		{"kv heads", c.Text.NumKeyValueHeads, 8},
		{"vocab", c.Text.VocabSize, 128256},
		{"rms eps", c.Text.RMSNormEps, 1e-5},
		{"resampler heads", c.ResamplerHeads(), 32},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(`{"hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 300, "vision_config": {"hidden_size": 32, "num_attention_heads": 4, "image_size": 980, "patch_size": 14}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.DropVisionLastLayer || c.Slice.MaxSliceNums != 1 || c.QueryNum != 64 || c.Text.NumKeyValueHeads != 4 ||
		c.Vision.NumHiddenLayers != 12 || c.Vision.IntermediateSize != 3072 || c.Text.RMSNormEps != 1e-6 || c.Text.RopeTheta != 10000 {
		t.Errorf("defaults not applied: %+v", c)
	}
	for _, bad := range []struct{ doc, want string }{
		{`{"hidden_size": 200, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 300}`, "multiple of 128"},
		{`{"hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 300, "hidden_act": "gelu"}`, "hidden_act"},
		{`{"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 3, "num_hidden_layers": 2, "vocab_size": 300}`, "num_key_value_heads"},
		{`{"hidden_size": "x"}`, "parse config.json"},
	} {
		if _, err := ParseConfig([]byte(bad.doc)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err %v, want %q", bad.doc, err, bad.want)
		}
	}
}
