package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

// File names of a PEFT adapter directory.
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"
	legacyFile  = "adapter_model.bin"
	keyPrefix   = "base_model.model."
)

// Layer is one module's low-rank update: Δy = Scale·(x·Aᵀ)·Bᵀ.
type Layer struct {
	A     *ts.Tensor // [r, in]
	B     *ts.Tensor // [out, r]
	Scale float64

	mu           sync.Mutex // guards the cast cache
	castKind     gotch.DType
	castA, castB *ts.Tensor
}

// cast returns A and B in dtype kind, caching the conversion unless the
// weights may change (training).
func (l *Layer) cast(kind gotch.DType, cache bool) (*ts.Tensor, *ts.Tensor) {
	if l.A.DType() == kind {
		return l.A, l.B
	}
	if !cache {
		return l.A.MustTotype(kind, false), l.B.MustTotype(kind, false)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.castA == nil || l.castKind != kind {
		l.castA = l.A.MustDetach(false).MustTotype(kind, true)
		l.castB = l.B.MustDetach(false).MustTotype(kind, true)
		l.castKind = kind
	}
	return l.castA, l.castB
}

func (l *Layer) dropCache() {
	l.mu.Lock()
	l.castA, l.castB = nil, nil
	l.mu.Unlock()
}

// Adapter is one loaded or new LoRA adapter.
type Adapter struct {
	// Name identifies the adapter in a Set (for example the aspect).
	Name   string
	Config Config
	// Layers maps base-model module names (as mllm.Model.Linears names
	// them) to their update.
	Layers map[string]*Layer
	// Saved holds modules_to_save tensors: full replacement parameters keyed
	// by base-model parameter name. A Set refuses adapters that have them
	// unless SetOptions.IgnoreSavedModules is set.
	Saved map[string]*ts.Tensor
	extra map[string]json.RawMessage
}

// Modules returns the adapted module names, sorted.
func (a *Adapter) Modules() []string {
	out := make([]string, 0, len(a.Layers))
	for m := range a.Layers {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Parameters returns every A and B tensor (modules sorted, A before B) for
// an optimiser; New marks them requires_grad.
func (a *Adapter) Parameters() []*ts.Tensor {
	var out []*ts.Tensor
	for _, m := range a.Modules() {
		out = append(out, a.Layers[m].A, a.Layers[m].B)
	}
	return out
}

// knownConfigKeys are the adapter_config.json keys Config decodes.
var knownConfigKeys = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("json"), ",")[0]; tag != "" && tag != "-" {
			m[tag] = true
		}
	}
	return m
}()

// ReadConfig parses an adapter_config.json.
func ReadConfig(path string) (Config, map[string]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Config{}, nil, fmt.Errorf("parse %s: %w", path, err)
	}
	extra := map[string]json.RawMessage{}
	for k, v := range raw {
		if !knownConfigKeys[k] {
			extra[k] = v
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, extra, nil
}

// Load reads a PEFT adapter directory (adapter_config.json and
// adapter_model.safetensors, or the legacy adapter_model.bin) into CPU
// float32 tensors. Keys base_model.model.<module>.lora_A.weight [r, in] and
// lora_B.weight [out, r] (an adapter name between lora_X and weight is
// accepted) give the layers; with modules_to_save other keys are the saved
// modules. Every adapted module must match target_modules.
func Load(dir, name string) (*Adapter, error) {
	a, err := load(dir, name)
	if err != nil {
		return nil, fmt.Errorf("load adapter %s: %w", name, err)
	}
	return a, nil
}

func load(dir, name string) (*Adapter, error) {
	cfg, extra, err := ReadConfig(filepath.Join(dir, ConfigFile))
	if err != nil {
		return nil, err
	}
	tensors, err := readWeights(dir)
	if err != nil {
		return nil, err
	}
	match, _ := cfg.TargetModules.Matcher()
	a := &Adapter{Name: name, Config: cfg, Layers: map[string]*Layer{}, Saved: map[string]*ts.Tensor{}, extra: extra}
	names := make([]string, 0, len(tensors))
	for k := range tensors {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		t := tensors[k]
		rest := strings.TrimPrefix(k, keyPrefix)
		module, which, ok := splitLoraKey(rest)
		if !ok {
			if strings.Contains(rest, "lora_") {
				return nil, fmt.Errorf("tensor %s: unsupported LoRA tensor (only lora_A/lora_B weights)", k)
			}
			if len(cfg.ModulesToSave) == 0 {
				return nil, fmt.Errorf("tensor %s is not a LoRA weight and modules_to_save is empty", k)
			}
			a.Saved[strings.Replace(rest, ".modules_to_save.default.", ".", 1)] = t
			continue
		}
		if !match(module) {
			return nil, fmt.Errorf("module %s has LoRA weights but does not match target_modules", module)
		}
		l := a.Layers[module]
		if l == nil {
			l = &Layer{Scale: cfg.Scaling(module)}
			a.Layers[module] = l
		}
		ft, err := t.Totype(gotch.Float, false)
		if err != nil {
			return nil, fmt.Errorf("tensor %s: %w", k, err)
		}
		if which == "A" {
			l.A = ft
		} else {
			l.B = ft
		}
	}
	if len(a.Layers) == 0 {
		return nil, fmt.Errorf("no lora_A/lora_B tensors in %s", dir)
	}
	for _, m := range a.Modules() {
		if err := checkLayer(m, a.Layers[m], cfg.Rank(m)); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func readWeights(dir string) (map[string]*ts.Tensor, error) {
	st := filepath.Join(dir, WeightsFile)
	if _, err := os.Stat(st); err == nil {
		ck, err := tensorio.Open(st)
		if err != nil {
			return nil, err
		}
		defer ck.Close()
		out := map[string]*ts.Tensor{}
		for _, n := range ck.Names() {
			t, err := ck.Tensor(n)
			if err != nil {
				return nil, err
			}
			out[n] = t
		}
		return out, nil
	}
	bin := filepath.Join(dir, legacyFile)
	if _, err := os.Stat(bin); err == nil {
		return tensorio.LoadPT(bin)
	}
	return nil, fmt.Errorf("no %s or %s in %s", WeightsFile, legacyFile, dir)
}

// splitLoraKey splits "<module>.lora_A.weight" (or
// "<module>.lora_A.<adapter>.weight") into module and "A"/"B".
func splitLoraKey(k string) (module, which string, ok bool) {
	if !strings.HasSuffix(k, ".weight") {
		return "", "", false
	}
	for _, w := range []string{"A", "B"} {
		tag := ".lora_" + w + "."
		i := strings.LastIndex(k, tag)
		if i < 0 {
			continue
		}
		tail := k[i+len(tag):]
		if tail == "weight" || (strings.Count(tail, ".") == 1 && strings.HasSuffix(tail, ".weight")) {
			return k[:i], w, true
		}
	}
	return "", "", false
}

func checkLayer(module string, l *Layer, rank int) error {
	if l.A == nil || l.B == nil {
		return fmt.Errorf("module %s: lora_A and lora_B must both be present", module)
	}
	as, bs := l.A.MustSize(), l.B.MustSize()
	if len(as) != 2 || len(bs) != 2 {
		return fmt.Errorf("module %s: lora_A %v and lora_B %v must be matrices", module, as, bs)
	}
	if as[0] != bs[1] {
		return fmt.Errorf("module %s: lora_A %v and lora_B %v disagree on the rank", module, as, bs)
	}
	if int(as[0]) != rank {
		return fmt.Errorf("module %s: rank %d, adapter_config says %d", module, as[0], rank)
	}
	return nil
}

// Fit checks that every adapted module exists among linears with matching
// shapes (A [r, in], B [out, r] against W [out, in]), naming the first module
// that does not fit.
func (a *Adapter) Fit(linears map[string]*mllm.Linear) error {
	for _, m := range a.Modules() {
		lin, ok := linears[m]
		if !ok || lin == nil || lin.W == nil {
			return fmt.Errorf("adapter %s: module %s is not a linear layer of the base model", a.Name, m)
		}
		ws := lin.W.MustSize()
		l := a.Layers[m]
		as, bs := l.A.MustSize(), l.B.MustSize()
		if as[1] != ws[1] || bs[0] != ws[0] {
			return fmt.Errorf("adapter %s: module %s: lora_A %v / lora_B %v do not fit weight %v", a.Name, m, as, bs, ws)
		}
	}
	return nil
}

// New creates a trainable adapter on every linear whose name matches
// cfg.TargetModules, initialised as PEFT does: A Kaiming-uniform (a = √5,
// that is U(±1/√in)), B zeros; both requires_grad, float32, on each base
// weight's device. The same seed gives the same A.
func New(name string, cfg Config, linears map[string]*mllm.Linear, seed int64) (*Adapter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new adapter %s: %w", name, err)
	}
	match, _ := cfg.TargetModules.Matcher()
	var mods []string
	for m, l := range linears {
		if l != nil && l.W != nil && match(m) {
			mods = append(mods, m)
		}
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("new adapter %s: target_modules match no linear layer", name)
	}
	sort.Strings(mods)
	rng := rand.New(rand.NewSource(seed))
	a := &Adapter{Name: name, Config: cfg, Layers: map[string]*Layer{}, Saved: map[string]*ts.Tensor{}}
	for _, m := range mods {
		w := linears[m].W
		ws := w.MustSize()
		out, in := ws[0], ws[1]
		r := int64(cfg.Rank(m))
		bound := 1 / math.Sqrt(float64(in))
		av := make([]float32, r*in)
		for i := range av {
			av[i] = float32((rng.Float64()*2 - 1) * bound)
		}
		dev := w.MustDevice()
		A := ts.MustOfSlice(av).MustView([]int64{r, in}, true).MustTo(dev, true).MustSetRequiresGrad(true, true)
		B := ts.MustZeros([]int64{out, r}, gotch.Float, dev).MustSetRequiresGrad(true, true)
		a.Layers[m] = &Layer{A: A, B: B, Scale: cfg.Scaling(m)}
	}
	return a, nil
}

// Save writes the adapter in PEFT format to dir: adapter_config.json and
// adapter_model.safetensors with base_model.model.<module>.lora_A.weight and
// lora_B.weight (plus saved modules), float32.
func (a *Adapter) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save adapter %s: %w", a.Name, err)
	}
	cfg := a.Config
	if cfg.PeftType == "" {
		cfg.PeftType = "LORA"
	}
	if cfg.Bias == "" {
		cfg.Bias = "none"
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("save adapter %s: %w", a.Name, err)
	}
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	for k, v := range a.extra {
		m[k] = v
	}
	if s := strings.TrimSpace(string(cfg.LayersToTransform)); s == "" {
		m["layers_to_transform"] = json.RawMessage("null")
	}
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("save adapter %s: %w", a.Name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("save adapter %s: %w", a.Name, err)
	}
	var named []tensorio.Named
	cpu := func(t *ts.Tensor) *ts.Tensor {
		return t.MustDetach(false).MustTo(gotch.CPU, true).MustTotype(gotch.Float, true).MustContiguous(true)
	}
	for _, mod := range a.Modules() {
		l := a.Layers[mod]
		named = append(named,
			tensorio.Named{Name: keyPrefix + mod + ".lora_A.weight", Tensor: cpu(l.A)},
			tensorio.Named{Name: keyPrefix + mod + ".lora_B.weight", Tensor: cpu(l.B)})
	}
	saved := make([]string, 0, len(a.Saved))
	for k := range a.Saved {
		saved = append(saved, k)
	}
	sort.Strings(saved)
	for _, k := range saved {
		named = append(named, tensorio.Named{Name: keyPrefix + k, Tensor: a.Saved[k].MustContiguous(false)})
	}
	if err := tensorio.Write(filepath.Join(dir, WeightsFile), named, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("save adapter %s: %w", a.Name, err)
	}
	return nil
}
