package mllm

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// TinySizes lists the sizes WriteTiny accepts.
func TinySizes() []string { return []string{"tiny", "256m"} }

// TinyOptions configures WriteTinyWith.
type TinyOptions struct {
	Size  string // "tiny" or "256m"
	Seed  int64
	DType gotch.DType // gotch.Float (default) or gotch.BFloat16 for the safetensors
}

// WriteTiny writes a complete Idefics3 model directory with random weights
// (deterministic in seed) to dir: config.json, model.safetensors (f32),
// generation_config.json, preprocessor_config.json, processor_config.json,
// tokenizer.json (a byte-level BPE trained on a built-in corpus, with the
// family's special tokens), tokenizer_config.json and
// special_tokens_map.json. size "tiny" is a few hundred KB for tests;
// "256m" has exactly SmolVLM-256M-Instruct's shapes (about 1 GB).
func WriteTiny(dir, size string, seed int64) error {
	return WriteTinyWith(dir, TinyOptions{Size: size, Seed: seed})
}

// TinyConfig returns the config WriteTiny writes for size, with the image
// token id and vocabulary taken from the built-in tokenizer.
func TinyConfig(size string) (Config, error) {
	_, vocab, err := buildTokenizerJSON(tinyMerges)
	if err != nil {
		return Config{}, err
	}
	c := DefaultConfig()
	c.Architectures = []string{"Idefics3ForConditionalGeneration"}
	c.ImageTokenID = int64(vocab["<image>"])
	c.TorchDType = "float32"
	bos, pad := int64(vocab["<|im_start|>"]), int64(vocab["<|im_end|>"])
	c.PadTokenID = &pad
	switch size {
	case "tiny":
		c.ScaleFactor = 2
		c.Vision = VisionConfig{HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 2,
			NumChannels: 3, ImageSize: 64, PatchSize: 16, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6, ModelType: "idefics3_vision"}
		c.Text = TextConfig{VocabSize: (len(vocab) + 63) / 64 * 64, HiddenSize: 64, IntermediateSize: 128,
			NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2, HeadDim: 16, HiddenAct: "silu",
			RMSNormEps: 1e-5, RopeTheta: 100000, MaxPositionEmbeddings: 2048, ModelType: "llama"}
	case "256m":
		c.ScaleFactor = 4
		c.Vision = VisionConfig{HiddenSize: 768, IntermediateSize: 3072, NumHiddenLayers: 12, NumAttentionHeads: 12,
			NumChannels: 3, ImageSize: 512, PatchSize: 16, HiddenAct: "gelu_pytorch_tanh", LayerNormEps: 1e-6, ModelType: "idefics3_vision"}
		c.Text = TextConfig{VocabSize: 49280, HiddenSize: 576, IntermediateSize: 1536,
			NumHiddenLayers: 30, NumAttentionHeads: 9, NumKeyValueHeads: 3, HeadDim: 64, HiddenAct: "silu",
			RMSNormEps: 1e-5, RopeTheta: 100000, MaxPositionEmbeddings: 8192, ModelType: "llama"}
	default:
		return Config{}, fmt.Errorf("unknown tiny model size %q (want tiny or 256m)", size)
	}
	c.Text.BOSTokenID = &bos
	c.Text.PadTokenID = &pad
	c.Text.EOSTokenID = vocab["<end_of_utterance>"]
	return c, c.Validate()
}

const tinyMerges = 400

// WriteTinyWith is WriteTiny with options (bf16 weights).
func WriteTinyWith(dir string, opts TinyOptions) (err error) {
	defer torch.Recover(&err, "write tiny model")
	cfg, err := TinyConfig(opts.Size)
	if err != nil {
		return err
	}
	if opts.DType == gotch.BFloat16 {
		cfg.TorchDType = "bfloat16"
	} else if opts.DType != 0 && opts.DType != gotch.Float {
		return fmt.Errorf("write tiny model: dtype %v not supported (f32 or bf16)", opts.DType)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	tok, vocab, err := buildTokenizerJSON(tinyMerges)
	if err != nil {
		return err
	}
	m := &Model{Config: cfg}
	if err := layers.WriteRandom(filepath.Join(dir, "model.safetensors"), m.build(), opts.Seed, opts.DType); err != nil {
		return fmt.Errorf("write tiny model: %w", err)
	}
	eou := vocab["<end_of_utterance>"]
	files := map[string]any{
		"config.json": cfg,
		"generation_config.json": map[string]any{
			"_from_model_config": true, "bos_token_id": vocab["<|im_start|>"],
			"eos_token_id": eou, "pad_token_id": vocab["<|im_end|>"],
		},
		"preprocessor_config.json": map[string]any{
			"do_convert_rgb": true, "do_image_splitting": false, "do_normalize": true, "do_pad": true,
			"do_rescale": true, "do_resize": true, "image_mean": []float64{0.5, 0.5, 0.5},
			"image_std": []float64{0.5, 0.5, 0.5}, "image_processor_type": "Idefics3ImageProcessor",
			"max_image_size":  map[string]int{"longest_edge": cfg.Vision.ImageSize},
			"processor_class": "Idefics3Processor", "resample": 1, "rescale_factor": 1.0 / 255,
			"size": map[string]int{"longest_edge": cfg.Vision.ImageSize},
		},
		"processor_config.json": map[string]any{"image_seq_len": cfg.ImageSeqLen(), "processor_class": "Idefics3Processor"},
		"chat_template.json":    map[string]any{"chat_template": ChatTemplate},
		"tokenizer_config.json": map[string]any{
			"add_prefix_space": false, "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
			"pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "model_max_length": cfg.Text.MaxPositionEmbeddings,
			"chat_template": ChatTemplate, "clean_up_tokenization_spaces": false,
			"additional_special_tokens": SpecialTokens(), "tokenizer_class": "GPT2Tokenizer",
			"legacy": false, "processor_class": "Idefics3Processor",
		},
		"special_tokens_map.json": map[string]any{
			"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
			"unk_token": "<|endoftext|>", "additional_special_tokens": SpecialTokens(),
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
