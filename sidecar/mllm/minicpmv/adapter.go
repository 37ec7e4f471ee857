package minicpmv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// AdapterTargets is the target_modules regex of MiniCPM-V's LoRA
// fine-tuning script as M3-AGIQA ran it: the LLM's self-attention
// projections only.
const AdapterTargets = `llm\..*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)`

// AdapterModulesToSave are the whole modules that script trains and saves
// with the adapter (--tune_vision): the vision tower, the resampler and the
// token embeddings.
var AdapterModulesToSave = []string{"vpm", "resampler", "embed_tokens"}

// WriteTinyAdapter writes a random adapter for the tiny model in modelDir
// into dir, in the exact layout PEFT writes for M3-AGIQA's adapters:
// adapter_config.json (r, alpha, the target regex, modules_to_save) and
// adapter_model.safetensors with base_model.model.<module>.lora_A.weight /
// lora_B.weight for every LLM q/k/v/o projection and
// base_model.model.<parameter> for every tensor of the saved modules (the
// base's values, perturbed so that the adapter visibly changes them).
// Different seeds give different adapters.
func WriteTinyAdapter(dir, modelDir string, seed int64) error {
	cfg, err := LoadConfig(filepath.Join(modelDir, "config.json"))
	if err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	ck, err := tensorio.Open(modelDir)
	if err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	defer ck.Close()
	const r = 8
	m := &Model{Config: cfg}
	var out []tensorio.Named
	err = torch.Run("minicpmv", false, func() error {
		params := m.build()
		for name := range m.params.Linears {
			if !strings.HasPrefix(name, "llm.") || !strings.Contains(name, ".self_attn.") {
				continue
			}
			var in, o int64
			for _, p := range params {
				if p.Name == name+".weight" {
					o, in = p.Shape[0], p.Shape[1]
				}
			}
			a := layers.RandomTensor(pseudo(name+".lora_A", layers2D(r, in)), seed)
			half := ts.FloatScalar(0.5)
			b := layers.RandomTensor(pseudo(name+".lora_B", layers2D(o, r)), seed).MustMulScalar(half, true)
			torch.KeepScalars(half)
			out = append(out, tensorio.Named{Name: "base_model.model." + name + ".lora_A.weight", Tensor: a},
				tensorio.Named{Name: "base_model.model." + name + ".lora_B.weight", Tensor: b})
		}
		for _, p := range params {
			saved := strings.HasPrefix(p.Name, "vpm.") || strings.HasPrefix(p.Name, "resampler.") || p.Name == "llm.model.embed_tokens.weight"
			if !saved {
				continue
			}
			base, err := ck.TensorAs(p.Name, gotch.Float)
			if err != nil {
				return err
			}
			noise := layers.RandomTensor(pseudo(p.Name+".saved", p.Shape), seed).MustMulScalar(ts.FloatScalar(0.05), true)
			out = append(out, tensorio.Named{Name: "base_model.model." + p.Name, Tensor: base.MustAdd(noise, true)})
			noise.MustDrop()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	if err := tensorio.Write(filepath.Join(dir, "adapter_model.safetensors"), out, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	for _, t := range out {
		t.Tensor.MustDrop()
	}
	conf := map[string]any{
		"peft_type": "LORA", "r": r, "lora_alpha": r, "lora_dropout": 0.05, "bias": "none",
		"target_modules": AdapterTargets, "modules_to_save": AdapterModulesToSave,
		"base_model_name_or_path": "openbmb/MiniCPM-Llama3-V-2_5", "task_type": nil, "inference_mode": true,
		"fan_in_fan_out": false, "use_rslora": false, "use_dora": false, "rank_pattern": map[string]int{},
		"alpha_pattern": map[string]float64{}, "layers_to_transform": nil, "layer_replication": nil,
		"init_lora_weights": true, "layers_pattern": nil, "megatron_config": nil, "megatron_core": "megatron.core",
		"loftq_config": map[string]any{}, "revision": nil,
	}
	raw, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("write tiny adapter: %w", err)
	}
	return nil
}

// pseudo describes a random tensor for randomTensor.
func pseudo(name string, shape []int64) layers.Param {
	kind := "linear"
	if strings.HasSuffix(name, ".saved") {
		kind = "embed"
	}
	return layers.Param{Name: name, Shape: shape, Kind: kind}
}

func layers2D(a, b int64) []int64 { return []int64{a, b} }
