package train

import (
	"fmt"
	"os"
	"strings"

	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm"
)

// TextAttention is the PEFT target_modules regex of the reference: the
// language model's self-attention projections only (not the vision tower's).
func TextAttention(mods []string) lora.Targets {
	return lora.Targets{IsRegex: true, Regex: `model\.text_model\.layers\.\d+\.self_attn\.(` + strings.Join(mods, "|") + `)`}
}

// trainableAdapter is a LoRA adapter attached to a model for training.
type trainableAdapter struct {
	a   *lora.Adapter
	set *lora.Set
}

// attachAdapter loads dir (or creates a fresh adapter from cfg when dir is
// ""), attaches it to m, activates it and marks A and B trainable.
func attachAdapter(m *mllm.Model, dir string, cfg lora.Config, seed int64) (*trainableAdapter, error) {
	var a *lora.Adapter
	var err error
	if dir != "" {
		a, err = lora.Load(dir, "train")
	} else {
		a, err = lora.New("train", cfg, m.Linears(), seed)
	}
	if err != nil {
		return nil, err
	}
	s := lora.NewSet(m.Linears(), lora.SetOptions{})
	if err := s.Add(a); err != nil {
		return nil, err
	}
	if err := s.Activate(a.Name); err != nil {
		s.Detach()
		return nil, err
	}
	for _, p := range a.Parameters() {
		p.MustRequiresGrad_(true)
	}
	return &trainableAdapter{a: a, set: s}, nil
}

// params names A and B as PEFT's state dict does, in Parameters order.
func (t *trainableAdapter) params() []namedParam {
	var out []namedParam
	for _, mod := range t.a.Modules() {
		l := t.a.Layers[mod]
		out = append(out,
			namedParam{"base_model.model." + mod + ".lora_A.weight", l.A},
			namedParam{"base_model.model." + mod + ".lora_B.weight", l.B})
	}
	return out
}

// save writes the adapter in PEFT format, naming baseModel in the config.
func (t *trainableAdapter) save(dir, baseModel string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save adapter: %w", err)
	}
	t.a.Config.BaseModel, t.a.Config.InferenceMode = baseModel, true
	return t.a.Save(dir)
}

// writeAtomic writes a file through a temporary name and a rename.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
