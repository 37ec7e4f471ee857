package lora

import (
	"encoding/json"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

func randT(rng *rand.Rand, scale float64, shape ...int64) *ts.Tensor {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64() * scale)
	}
	return ts.MustOfSlice(v).MustView(shape, true)
}

// vals copies values out, keeping every tensor alive while it is read.
func vals(t *ts.Tensor) []float64 {
	c := t.MustDetach(false).MustTo(gotch.CPU, true).MustTotype(gotch.Double, true).MustContiguous(true)
	out := make([]float64, c.Numel())
	c.MustCopyData(out, c.Numel())
	runtime.KeepAlive(c)
	runtime.KeepAlive(t)
	return out
}

const pfx = "model.text_model.layers."

// testLinears is a tiny two-layer "model": attention q/k/v/o and an MLP
// projection, some with bias, as mllm.Linear instances.
func testLinears(rng *rand.Rand) map[string]*mllm.Linear {
	m := map[string]*mllm.Linear{}
	for l := 0; l < 2; l++ {
		base := pfx + string(rune('0'+l)) + "."
		m[base+"self_attn.q_proj"] = &mllm.Linear{W: randT(rng, 0.5, 12, 8)}
		m[base+"self_attn.k_proj"] = &mllm.Linear{W: randT(rng, 0.5, 4, 8)}
		m[base+"self_attn.v_proj"] = &mllm.Linear{W: randT(rng, 0.5, 4, 8), B: randT(rng, 0.1, 4)}
		m[base+"self_attn.o_proj"] = &mllm.Linear{W: randT(rng, 0.5, 8, 12)}
		m[base+"mlp.up_proj"] = &mllm.Linear{W: randT(rng, 0.5, 16, 8)}
	}
	return m
}

func inputFor(rng *rand.Rand, l *mllm.Linear) *ts.Tensor {
	return randT(rng, 1, 2, 3, l.W.MustSize()[1])
}

// outputs runs every linear on fixed inputs.
func outputs(lin map[string]*mllm.Linear, xs map[string]*ts.Tensor) map[string][]float64 {
	out := map[string][]float64{}
	for k, l := range lin {
		out[k] = vals(l.Forward(xs[k]))
	}
	return out
}

func maxAbs(a, b []float64) float64 {
	m := 0.0
	for i := range a {
		m = math.Max(m, math.Abs(a[i]-b[i]))
	}
	return m
}

func testConfig(r int, alpha float64) Config {
	c := DefaultConfig()
	c.R, c.LoraAlpha, c.LoraDropout = r, alpha, 0
	return c
}

// randomizeB gives B random values so the adapter changes outputs.
func randomizeB(rng *rand.Rand, a *Adapter) {
	for _, m := range a.Modules() {
		l := a.Layers[m]
		l.B = randT(rng, 0.3, l.B.MustSize()...).MustSetRequiresGrad(true, true)
	}
}

func setup(t *testing.T) (*rand.Rand, map[string]*mllm.Linear, map[string]*ts.Tensor) {
	rng := rand.New(rand.NewSource(1))
	lin := testLinears(rng)
	xs := map[string]*ts.Tensor{}
	for k, l := range lin {
		xs[k] = inputFor(rng, l)
	}
	return rng, lin, xs
}

func TestMergedEqualsUnmerged(t *testing.T) {
	rng, lin, xs := setup(t)
	base := outputs(lin, xs)
	a, err := New("quality", testConfig(4, 8), lin, 3)
	if err != nil {
		t.Fatal(err)
	}
	randomizeB(rng, a)
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate("quality"); err != nil {
		t.Fatal(err)
	}
	unmerged := outputs(lin, xs)
	if err := s.Merge(); err != nil {
		t.Fatal(err)
	}
	merged := outputs(lin, xs)
	changed := false
	for k := range base {
		if d := maxAbs(merged[k], unmerged[k]); d > 1e-5 {
			t.Errorf("%s: merged and unmerged differ by %g", k, d)
		}
		if maxAbs(unmerged[k], base[k]) > 1e-3 {
			changed = true
		}
	}
	if !changed {
		t.Fatal("adapter changed nothing; test is vacuous")
	}
	s.Unmerge()
	if err := s.Activate(""); err != nil {
		t.Fatal(err)
	}
	for k, v := range outputs(lin, xs) {
		if d := maxAbs(v, base[k]); d > 1e-5 {
			t.Errorf("%s: after unmerge the base differs by %g", k, d)
		}
	}
}

func TestZeroBChangesNothing(t *testing.T) {
	_, lin, xs := setup(t)
	base := outputs(lin, xs)
	a, err := New("fresh", testConfig(4, 16), lin, 5)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate("fresh"); err != nil {
		t.Fatal(err)
	}
	for k, v := range outputs(lin, xs) {
		if d := maxAbs(v, base[k]); d != 0 {
			t.Errorf("%s: B = 0 adapter changed the output by %g", k, d)
		}
	}
	// PEFT init: A uniform within ±1/√in, B zero, both trainable.
	for _, m := range a.Modules() {
		l := a.Layers[m]
		bound := 1 / math.Sqrt(float64(l.A.MustSize()[1]))
		for _, v := range vals(l.A) {
			if math.Abs(v) > bound || v == 0 {
				t.Fatalf("%s: A value %v outside ±%v", m, v, bound)
			}
		}
		if !l.A.MustRequiresGrad() || !l.B.MustRequiresGrad() {
			t.Errorf("%s: A/B not trainable", m)
		}
	}
}

// handDelta computes scale·x·Aᵀ·Bᵀ + x·Wᵀ + b by loops in float64.
func handLinear(x, w, b, A, B []float64, rows, in, out, r int, scale float64) []float64 {
	y := make([]float64, rows*out)
	for i := 0; i < rows; i++ {
		ax := make([]float64, r)
		for k := 0; k < r; k++ {
			for j := 0; j < in; j++ {
				ax[k] += A[k*in+j] * x[i*in+j]
			}
		}
		for o := 0; o < out; o++ {
			s := 0.0
			for j := 0; j < in; j++ {
				s += w[o*in+j] * x[i*in+j]
			}
			if b != nil {
				s += b[o]
			}
			d := 0.0
			for k := 0; k < r; k++ {
				d += B[o*r+k] * ax[k]
			}
			y[i*out+o] = s + scale*d
		}
	}
	return y
}

func TestScaling(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   func() Config
		scale float64
	}{
		{"alpha/r", func() Config { return testConfig(4, 12) }, 3},
		{"rslora alpha/sqrt(r)", func() Config { c := testConfig(4, 12); c.UseRSLoRA = true; return c }, 6},
		{"alpha_pattern", func() Config {
			c := testConfig(4, 12)
			c.AlphaPattern = map[string]float64{"v_proj": 2}
			return c
		}, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng, lin, xs := setup(t)
			a, err := New("x", tc.cfg(), lin, 7)
			if err != nil {
				t.Fatal(err)
			}
			randomizeB(rng, a)
			s := NewSet(lin, SetOptions{})
			if err := s.Add(a); err != nil {
				t.Fatal(err)
			}
			_ = s.Activate("x")
			mod := pfx + "1.self_attn.v_proj"
			l := lin[mod]
			if got := a.Layers[mod].Scale; got != tc.scale {
				t.Fatalf("scale %v, want %v", got, tc.scale)
			}
			want := handLinear(vals(xs[mod]), vals(l.W), vals(l.B), vals(a.Layers[mod].A), vals(a.Layers[mod].B), 6, 8, 4, 4, tc.scale)
			if d := maxAbs(vals(l.Forward(xs[mod])), want); d > 1e-5 {
				t.Errorf("output differs from the hand computation by %g", d)
			}
		})
	}
}

func TestTargetModules(t *testing.T) {
	var list, re Config
	if err := json.Unmarshal([]byte(`{"r":4,"lora_alpha":8,"target_modules":["q_proj","v_proj"]}`), &list); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(`{"r":4,"lora_alpha":8,"target_modules":"model\\..*layers\\.\\d+\\.self_attn\\.(q_proj|o_proj)"}`), &re); err != nil {
		t.Fatal(err)
	}
	if list.TargetModules.IsRegex || !re.TargetModules.IsRegex {
		t.Fatalf("parsed %+v / %+v", list.TargetModules, re.TargetModules)
	}
	lm, _ := list.TargetModules.Matcher()
	rm, err := re.TargetModules.Matcher()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		module       string
		list, regexp bool
	}{
		{"model.text_model.layers.0.self_attn.q_proj", true, true},
		{"model.text_model.layers.0.self_attn.v_proj", true, false},
		{"model.text_model.layers.0.self_attn.o_proj", false, true},
		{"q_proj", true, false},
		{"model.text_model.layers.0.self_attn.xq_proj", false, false},
		{"model.text_model.layers.0.self_attn.q_proj.extra", false, false},
		{"vision.layers.0.self_attn.q_proj", true, false}, // fullmatch needs the "model." start
	} {
		if got := lm(tc.module); got != tc.list {
			t.Errorf("list match %s = %v, want %v", tc.module, got, tc.list)
		}
		if got := rm(tc.module); got != tc.regexp {
			t.Errorf("regex match %s = %v, want %v", tc.module, got, tc.regexp)
		}
	}
	_, lin, _ := setup(t)
	a, err := New("r", re, lin, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(a.Modules(), ",")
	want := pfx + "0.self_attn.o_proj," + pfx + "0.self_attn.q_proj," + pfx + "1.self_attn.o_proj," + pfx + "1.self_attn.q_proj"
	if got != want {
		t.Errorf("regex selected %s, want %s", got, want)
	}
	bad := re
	bad.TargetModules = Targets{IsRegex: true, Regex: "(?<=x)q"}
	if _, err := New("bad", bad, lin, 1); err == nil || !strings.Contains(err.Error(), "target_modules regex") {
		t.Errorf("bad regex: %v", err)
	}
}

// writePEFT writes an adapter directory the way PEFT does.
func writePEFT(t *testing.T, dir, config string, tensors []tensorio.Named) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tensorio.Write(filepath.Join(dir, WeightsFile), tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

const peftConfig = `{
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "HuggingFaceTB/SmolVLM-256M-Instruct",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "lora_alpha": 16,
  "lora_dropout": 0.05,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 2,
  "rank_pattern": {},
  "revision": null,
  "target_modules": ["v_proj", "q_proj"],
  "task_type": "CAUSAL_LM",
  "use_rslora": false
}`

func TestLoadPEFTAndMismatch(t *testing.T) {
	rng, lin, xs := setup(t)
	q := pfx + "0.self_attn.q_proj"
	v := pfx + "1.self_attn.v_proj"
	good := []tensorio.Named{
		{Name: keyPrefix + q + ".lora_A.weight", Tensor: randT(rng, 0.3, 2, 8)},
		{Name: keyPrefix + q + ".lora_B.weight", Tensor: randT(rng, 0.3, 12, 2)},
		{Name: keyPrefix + v + ".lora_A.weight", Tensor: randT(rng, 0.3, 2, 8)},
		{Name: keyPrefix + v + ".lora_B.weight", Tensor: randT(rng, 0.3, 4, 2)},
	}
	dir := filepath.Join(t.TempDir(), "quality")
	writePEFT(t, dir, peftConfig, good)
	a, err := Load(dir, "quality")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Layers) != 2 || a.Layers[q].Scale != 8 {
		t.Fatalf("layers %v scale %v", a.Modules(), a.Layers[q].Scale)
	}
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	_ = s.Activate("quality")
	want := handLinear(vals(xs[q]), vals(lin[q].W), nil, vals(good[0].Tensor), vals(good[1].Tensor), 6, 8, 12, 2, 8)
	if d := maxAbs(vals(lin[q].Forward(xs[q])), want); d > 1e-5 {
		t.Errorf("loaded adapter output differs by %g", d)
	}

	// Save → load round trip keeps tensors and the PEFT config keys.
	out := filepath.Join(t.TempDir(), "copy")
	if err := a.Save(out); err != nil {
		t.Fatal(err)
	}
	b, err := Load(out, "copy")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range a.Modules() {
		if maxAbs(vals(a.Layers[m].A), vals(b.Layers[m].A)) != 0 || maxAbs(vals(a.Layers[m].B), vals(b.Layers[m].B)) != 0 {
			t.Errorf("%s changed in the round trip", m)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(out, ConfigFile))
	for _, key := range []string{`"init_lora_weights": true`, `"revision": null`, `"r": 2`, `"lora_alpha": 16`, `"target_modules": [`, `"peft_type": "LORA"`} {
		if !strings.Contains(string(raw), key) {
			t.Errorf("saved config lacks %s:\n%s", key, raw)
		}
	}
	ck, err := tensorio.Open(filepath.Join(out, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Join(ck.Names(), " ")
	ck.Close()
	if !strings.Contains(names, keyPrefix+q+".lora_A.weight") {
		t.Errorf("saved names %s", names)
	}

	// Refusals name the module.
	for _, tc := range []struct {
		name    string
		config  string
		tensors []tensorio.Named
		atAdd   bool
		want    string
	}{
		{"shape", peftConfig, []tensorio.Named{good[0], {Name: good[1].Name, Tensor: randT(rng, 1, 7, 2)}}, true, q + ": lora_A [2 8] / lora_B [7 2] do not fit weight [12 8]"},
		{"missing module", peftConfig, []tensorio.Named{
			{Name: keyPrefix + "model.text_model.layers.9.self_attn.q_proj.lora_A.weight", Tensor: good[0].Tensor},
			{Name: keyPrefix + "model.text_model.layers.9.self_attn.q_proj.lora_B.weight", Tensor: good[1].Tensor}}, true,
			"module model.text_model.layers.9.self_attn.q_proj is not a linear layer"},
		{"rank", peftConfig, []tensorio.Named{{Name: good[0].Name, Tensor: randT(rng, 1, 3, 8)}, {Name: good[1].Name, Tensor: randT(rng, 1, 12, 3)}}, false, q + ": rank 3, adapter_config says 2"},
		{"not targeted", peftConfig, []tensorio.Named{
			{Name: keyPrefix + pfx + "0.self_attn.k_proj.lora_A.weight", Tensor: good[0].Tensor},
			{Name: keyPrefix + pfx + "0.self_attn.k_proj.lora_B.weight", Tensor: randT(rng, 1, 4, 2)}}, false,
			"module " + pfx + "0.self_attn.k_proj has LoRA weights but does not match target_modules"},
		{"bias", strings.Replace(peftConfig, `"bias": "none"`, `"bias": "all"`, 1), good, false, `bias "all" is not supported`},
		{"half pair", peftConfig, good[:1], false, q + ": lora_A and lora_B must both be present"},
	} {
		d := filepath.Join(t.TempDir(), tc.name)
		writePEFT(t, d, tc.config, tc.tensors)
		a, err := Load(d, tc.name)
		if err == nil && tc.atAdd {
			err = NewSet(lin, SetOptions{}).Add(a)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}

	s.Detach()
	// modules_to_save tensors are kept but refused by a Set unless ignored.
	mts := strings.Replace(peftConfig, `"modules_to_save": null`, `"modules_to_save": ["lm_head"]`, 1)
	d := filepath.Join(t.TempDir(), "mts")
	writePEFT(t, d, mts, append(append([]tensorio.Named{}, good...), tensorio.Named{Name: keyPrefix + "lm_head.weight", Tensor: randT(rng, 1, 5, 8)}))
	m, err := Load(d, "mts")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Saved["lm_head.weight"]; !ok {
		t.Fatalf("saved modules %v", m.Saved)
	}
	if err := NewSet(lin, SetOptions{}).Add(m); err == nil || !strings.Contains(err.Error(), "modules_to_save") {
		t.Errorf("modules_to_save accepted: %v", err)
	}
	ig := NewSet(lin, SetOptions{IgnoreSavedModules: true})
	if err := ig.Add(m); err != nil {
		t.Errorf("IgnoreSavedModules: %v", err)
	}
	ig.Detach()

	// With the base parameters, the saved module replaces lm_head while the
	// adapter is active and the original comes back afterwards.
	head := randT(rng, 1, 5, 8)
	orig := vals(head)
	params := map[string]*ts.Tensor{"lm_head.weight": head}
	s2 := NewSet(lin, SetOptions{Params: params})
	if err := NewSet(lin, SetOptions{Params: map[string]*ts.Tensor{"lm_head.weight": randT(rng, 1, 5, 9)}}).Add(m); err == nil || !strings.Contains(err.Error(), "lm_head.weight has shape [5 8], base parameter [5 9]") {
		t.Errorf("saved shape mismatch: %v", err)
	}
	if err := NewSet(lin, SetOptions{Params: map[string]*ts.Tensor{}}).Add(m); err == nil || !strings.Contains(err.Error(), "lm_head.weight is not a parameter") {
		t.Errorf("saved name mismatch: %v", err)
	}
	if err := s2.Add(m); err != nil {
		t.Fatal(err)
	}
	_ = s2.Activate("mts")
	if d := maxAbs(vals(head), vals(m.Saved["lm_head.weight"])); d != 0 {
		t.Errorf("active adapter's lm_head differs from its saved module by %g", d)
	}
	_ = s2.Activate("")
	if d := maxAbs(vals(head), orig); d != 0 {
		t.Errorf("base lm_head not restored (%g)", d)
	}
}

// TestSwitchAdapters: several adapters attached at once; switching changes
// outputs without reloading, and a merged adapter is unmerged on switch.
func TestSwitchAdapters(t *testing.T) {
	rng, lin, xs := setup(t)
	base := outputs(lin, xs)
	s := NewSet(lin, SetOptions{})
	want := map[string]map[string][]float64{}
	for i, name := range []string{"quality", "correspondence", "authenticity"} {
		a, err := New(name, testConfig(2, 4), lin, int64(i))
		if err != nil {
			t.Fatal(err)
		}
		randomizeB(rng, a)
		if err := s.Add(a); err != nil {
			t.Fatal(err)
		}
		_ = s.Activate(name)
		want[name] = outputs(lin, xs)
	}
	if err := s.Add(&Adapter{Name: "quality"}); err == nil {
		t.Error("duplicate adapter name accepted")
	}
	for _, name := range []string{"correspondence", "quality", "authenticity", "quality"} {
		if err := s.Activate(name); err != nil {
			t.Fatal(err)
		}
		if name == "quality" {
			if err := s.Merge(); err != nil {
				t.Fatal(err)
			}
		}
		for k, v := range outputs(lin, xs) {
			if d := maxAbs(v, want[name][k]); d > 1e-5 {
				t.Errorf("%s %s: differs by %g (merged %q)", name, k, d, s.Merged())
			}
		}
	}
	if err := s.Activate("nope"); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("unknown adapter: %v", err)
	}
	s.Detach()
	for k, v := range outputs(lin, xs) {
		if d := maxAbs(v, base[k]); d > 1e-5 {
			t.Errorf("after detach %s differs from base by %g", k, d)
		}
		if lin[k].Delta != nil {
			t.Errorf("%s still hooked", k)
		}
	}
}

// TestTrainingGradients: a loss through the adapter reaches B (A's gradient
// is zero while B is zero, as in PEFT).
func TestTrainingGradients(t *testing.T) {
	rng, lin, xs := setup(t)
	c := testConfig(2, 4)
	c.LoraDropout = 0.1
	a, err := New("train", c, lin, 1)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	_ = s.Activate("train")
	s.SetTraining(true)
	q := pfx + "0.self_attn.q_proj"
	target := randT(rng, 1, 2, 3, 12)
	loss := lin[q].Forward(xs[q]).MustSub(target, true).MustSquare(true).MustMean(gotch.Float, true)
	loss.MustBackward()
	runtime.KeepAlive(target)
	g := vals(a.Layers[q].B.MustGrad(false))
	nz := 0.0
	for _, v := range g {
		nz += math.Abs(v)
	}
	if nz == 0 {
		t.Error("no gradient reached lora_B")
	}
	if len(a.Parameters()) != 2*len(a.Layers) {
		t.Errorf("%d parameters for %d layers", len(a.Parameters()), len(a.Layers))
	}
}

// TestGradModeRestored: Merge turns autograd off only while it runs (gotch's
// own GradSetEnabled misreports the previous state and would leave it off).
func TestGradModeRestored(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, lin, _ := setup(t)
	a, err := New("g", testConfig(2, 4), lin, 1)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	_ = s.Activate("g")
	torch.SetGradEnabled(true)
	if err := s.Merge(); err != nil {
		t.Fatal(err)
	}
	s.Unmerge()
	if !torch.SetGradEnabled(true) {
		t.Error("grad mode left disabled after Merge/Unmerge")
	}
}

// TestLegacyBin loads an adapter_model.bin written by torch.save.
func TestLegacyBin(t *testing.T) {
	a, err := Load("testdata/legacy_bin", "old")
	if err != nil {
		t.Fatal(err)
	}
	l := a.Layers[pfx+"0.self_attn.q_proj"]
	if l == nil || l.Scale != 2 {
		t.Fatalf("layers %v", a.Modules())
	}
	want := []float64{-1.1258398294448853, -1.152360200881958, -0.2505785822868347}
	if d := maxAbs(vals(l.A)[:3], want); d > 1e-7 {
		t.Errorf("A starts %v, want %v", vals(l.A)[:3], want)
	}
	_, lin, _ := setup(t)
	s := NewSet(lin, SetOptions{})
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	if err := s.Load("again", "testdata/legacy_bin"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Names(), ","); got != "again,old" {
		t.Errorf("names %s", got)
	}
}

// TestRankPattern: rank_pattern overrides r for matching modules (and the
// scale follows that rank).
func TestRankPattern(t *testing.T) {
	_, lin, _ := setup(t)
	c := testConfig(4, 16)
	c.RankPattern = map[string]int{`layers\.1\.self_attn\.q_proj`: 8}
	a, err := New("rp", c, lin, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		module string
		r      int64
		scale  float64
	}{
		{pfx + "1.self_attn.q_proj", 8, 2},
		{pfx + "0.self_attn.q_proj", 4, 4},
	} {
		l := a.Layers[tc.module]
		if got := l.A.MustSize()[0]; got != tc.r || l.Scale != tc.scale {
			t.Errorf("%s: rank %d scale %v, want %d %v", tc.module, got, l.Scale, tc.r, tc.scale)
		}
	}
}
