// Package lora loads, applies, trains and saves LoRA adapters in Hugging
// Face PEFT's format (adapter_config.json + adapter_model.safetensors).
// Several adapters (one per aspect) attach to one model at once and apply
// unmerged through mllm.Linear's Delta hook, so a request switches aspect
// by activating another adapter; Merge folds the active one into the base
// weights for speed.
package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
)

// Config is PEFT's LoraConfig as stored in adapter_config.json. Fields PEFT
// writes that do not change inference (task_type, revision, ...) are kept
// in Extra so Save writes them back.
type Config struct {
	PeftType      string  `json:"peft_type"`
	R             int     `json:"r"`
	LoraAlpha     float64 `json:"lora_alpha"`
	TargetModules Targets `json:"target_modules"`
	LoraDropout   float64 `json:"lora_dropout"`
	// FanInFanOut is kept for round trips; like PEFT, it is ignored for
	// nn.Linear targets (PEFT warns and resets it to false for them).
	FanInFanOut bool `json:"fan_in_fan_out"`
	// ModulesToSave lists fully trained modules stored in the adapter file
	// (MiniCPM-V's finetune saves embed_tokens, resampler and vpm); they
	// load into Adapter.Saved.
	ModulesToSave []string           `json:"modules_to_save"`
	Bias          string             `json:"bias"`
	UseRSLoRA     bool               `json:"use_rslora"`
	UseDoRA       bool               `json:"use_dora"`
	RankPattern   map[string]int     `json:"rank_pattern"`
	AlphaPattern  map[string]float64 `json:"alpha_pattern"`
	// LayersToTransform is PEFT's layer filter; only nil (all layers) is
	// supported.
	LayersToTransform json.RawMessage `json:"layers_to_transform"`
	BaseModel         string          `json:"base_model_name_or_path"`
	TaskType          string          `json:"task_type"`
	InferenceMode     bool            `json:"inference_mode"`
}

// DefaultTargets selects the language model's self-attention q/k/v/o
// projections, not the vision tower's (a plain ["q_proj", ...] list would
// match both): Idefics3/SmolVLM name them model.text_model.layers.N...,
// MiniCPM-V llm.model.layers.N... (the reference's own regex).
const DefaultTargets = `(model\.text_model|llm)\..*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)`

// DefaultConfig is the M3-AGIQA reference setting: r = 64, alpha = 64,
// dropout 0.05 on the text model's self-attention q/k/v/o projections.
func DefaultConfig() Config {
	return Config{
		PeftType:      "LORA",
		R:             64,
		LoraAlpha:     64,
		TargetModules: Targets{IsRegex: true, Regex: DefaultTargets},
		LoraDropout:   0.05,
		Bias:          "none",
		TaskType:      "CAUSAL_LM",
	}
}

// Targets is PEFT's target_modules: a list of module-name suffixes or one
// regular expression that must match the whole module name.
type Targets struct {
	List  []string
	Regex string // used when IsRegex
	// IsRegex is set when target_modules was a JSON string.
	IsRegex bool
}

// UnmarshalJSON accepts a list, a string or null.
func (t *Targets) UnmarshalJSON(b []byte) error {
	*t = Targets{}
	s := strings.TrimSpace(string(b))
	if s == "null" {
		return nil
	}
	if strings.HasPrefix(s, "\"") {
		t.IsRegex = true
		return json.Unmarshal(b, &t.Regex)
	}
	return json.Unmarshal(b, &t.List)
}

// MarshalJSON writes a string for a regex and a sorted list otherwise.
func (t Targets) MarshalJSON() ([]byte, error) {
	if t.IsRegex {
		return json.Marshal(t.Regex)
	}
	if t.List == nil {
		return []byte("null"), nil
	}
	l := append([]string(nil), t.List...)
	sort.Strings(l)
	return json.Marshal(l)
}

// Matcher returns PEFT's check_target_module_exists for these targets: a
// regex must match the whole module name (re.fullmatch); a list entry
// matches the name itself or a dotted suffix of it.
func (t Targets) Matcher() (func(module string) bool, error) {
	if t.IsRegex {
		re, err := regexp.Compile(`^(?:` + t.Regex + `)$`)
		if err != nil {
			return nil, fmt.Errorf("target_modules regex %q: %w", t.Regex, err)
		}
		return re.MatchString, nil
	}
	list := append([]string(nil), t.List...)
	return func(module string) bool {
		for _, k := range list {
			if module == k || strings.HasSuffix(module, "."+k) {
				return true
			}
		}
		return false
	}, nil
}

// patternKey is PEFT's lookup in rank_pattern/alpha_pattern: the first key
// (in sorted order) k with re.match(".*\.k$", module).
func patternKey[V any](pattern map[string]V, module string) (V, bool) {
	keys := make([]string, 0, len(pattern))
	for k := range pattern {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		re, err := regexp.Compile(`^.*\.` + k + `$`)
		if err != nil {
			continue
		}
		if re.MatchString(module) || module == k {
			return pattern[k], true
		}
	}
	var zero V
	return zero, false
}

// Rank returns the rank of module (rank_pattern over r).
func (c Config) Rank(module string) int {
	if r, ok := patternKey(c.RankPattern, module); ok {
		return r
	}
	return c.R
}

// Scaling returns the factor applied to B·A for module: alpha/r, or
// alpha/√r with use_rslora (alpha from alpha_pattern when it names module).
func (c Config) Scaling(module string) float64 {
	alpha := c.LoraAlpha
	if a, ok := patternKey(c.AlphaPattern, module); ok {
		alpha = a
	}
	r := float64(c.Rank(module))
	if c.UseRSLoRA {
		return alpha / math.Sqrt(r)
	}
	return alpha / r
}

// Validate refuses settings this package cannot apply faithfully.
func (c Config) Validate() error {
	if c.PeftType != "" && !strings.EqualFold(c.PeftType, "LORA") {
		return fmt.Errorf("peft_type %q is not LORA", c.PeftType)
	}
	if c.R <= 0 {
		return fmt.Errorf("r = %d must be positive", c.R)
	}
	if c.Bias != "" && c.Bias != "none" {
		return fmt.Errorf("bias %q is not supported (only \"none\")", c.Bias)
	}
	if c.UseDoRA {
		return fmt.Errorf("use_dora is not supported")
	}
	if s := strings.TrimSpace(string(c.LayersToTransform)); s != "" && s != "null" {
		return fmt.Errorf("layers_to_transform %s is not supported", s)
	}
	if c.LoraDropout < 0 || c.LoraDropout >= 1 {
		return fmt.Errorf("lora_dropout %g outside [0, 1)", c.LoraDropout)
	}
	if _, err := c.TargetModules.Matcher(); err != nil {
		return err
	}
	return nil
}
