package mllm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/generate"
	"github.com/m3gate/m3gate/sidecar/mllm/llama"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// GenerateOptions configures Generate; see generate.Options.
type GenerateOptions = generate.Options

// Generation is the result of Generate; see generate.Result.
type Generation = generate.Result

// Generate continues from cache, whose last forward pass returned last
// ([B, V] logits, f32), sampling up to MaxTokens tokens per sequence. It
// checks ctx before every decode step.
func (m *Model) Generate(ctx context.Context, cache *KVCache, last *ts.Tensor, opts GenerateOptions) (*Generation, error) {
	if opts.MaxTokens <= 0 {
		return nil, fmt.Errorf("generate: max tokens must be positive, got %d", opts.MaxTokens)
	}
	if err := m.usable(); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	if cache == nil || last == nil {
		return nil, fmt.Errorf("generate: nil cache or logits")
	}
	b, vocab := cache.Batch(), m.Config.Text.VocabSize
	if sz := last.MustSize(); len(sz) != 2 || sz[0] != int64(b) || sz[1] != int64(vocab) {
		return nil, fmt.Errorf("generate: logits shape %v, want [%d %d]", sz, b, vocab)
	}
	return generate.Run(ctx, textDecoder{m.text}, cache, last, opts)
}

// textDecoder is a Llama text model as generate.Run drives it: each decode
// step is one torch.Run (inference mode, panics as errors).
type textDecoder struct{ text *llama.Model }

// DecodeStep implements generate.Decoder.
func (d textDecoder) DecodeStep(cache *KVCache, tokens []int64) (logits *ts.Tensor, next *KVCache, err error) {
	err = torch.Run("decode step", false, func() error {
		logits, next = d.text.Step(cache, tokens)
		return nil
	})
	return logits, next, err
}

// DecodeStepHidden implements generate.HiddenDecoder.
func (d textDecoder) DecodeStepHidden(cache *KVCache, tokens []int64) (logits, hidden *ts.Tensor, next *KVCache, err error) {
	err = torch.Run("decode step", false, func() error {
		logits, hidden, next = d.text.StepHidden(cache, tokens)
		return nil
	})
	return logits, hidden, next, err
}

var _ generate.HiddenDecoder = textDecoder{}

// GenerationConfig is the part of generation_config.json the runtime uses.
type GenerationConfig struct {
	BOSTokenID  int64
	EOSTokenIDs []int64
	PadTokenID  int64
}

func loadGenerationConfig(dir string) (GenerationConfig, error) {
	g := GenerationConfig{}
	raw, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if os.IsNotExist(err) {
		return g, nil
	}
	if err != nil {
		return g, fmt.Errorf("load generation config: %w", err)
	}
	var doc struct {
		BOS *int64 `json:"bos_token_id"`
		EOS any    `json:"eos_token_id"`
		Pad *int64 `json:"pad_token_id"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return g, fmt.Errorf("load generation config: %w", err)
	}
	if doc.BOS != nil {
		g.BOSTokenID = *doc.BOS
	}
	if doc.Pad != nil {
		g.PadTokenID = *doc.Pad
	}
	switch e := doc.EOS.(type) {
	case float64:
		g.EOSTokenIDs = []int64{int64(e)}
	case []any:
		for _, v := range e {
			if f, ok := v.(float64); ok {
				g.EOSTokenIDs = append(g.EOSTokenIDs, int64(f))
			}
		}
	}
	return g, nil
}
