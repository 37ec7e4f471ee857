package mllm

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// deviceRun is everything a model computes in one pass over the tiny
// model: image features, prefill logits (batch 2, one image each, padded),
// greedy decode logits and tokens, and a cache Select/Join round.
type deviceRun struct {
	feats, prefill, hidden []float32
	steps                  [][]float32
	tokens                 [][]int64
	joined                 []float32
}

func runOnDevice(t *testing.T, opts LoadOptions) (*Model, deviceRun) {
	t.Helper()
	m, err := Load(tinyModelDir(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	var r deviceRun
	seqs := prompts(t, m, 2, true)
	r.feats = floats(seqs[0].Images[0].Tokens)
	out, _, err := m.Prefill(seqs, ForwardOptions{Logits: LogitsAll, Hidden: true})
	if err != nil {
		t.Fatal(err)
	}
	r.prefill, r.hidden = floats(out.Logits), floats(out.Hidden)
	last, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Generate(context.Background(), cache, last.Logits, GenerateOptions{MaxTokens: 6, KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range g.Logits {
		r.steps = append(r.steps, floats(l))
	}
	r.tokens = g.Tokens
	// Select and JoinCaches make index and padding tensors of their own.
	one, err := g.Cache.Select(1)
	if err != nil {
		t.Fatal(err)
	}
	short, err := cache.Select(0)
	if err != nil {
		t.Fatal(err)
	}
	joined, err := JoinCaches(one, short)
	if err != nil {
		t.Fatal(err)
	}
	ext, _, err := m.Extend(joined, []Sequence{{Tokens: []int64{5}}, {Tokens: []int64{6, 7}}}, ForwardOptions{Logits: LogitsAll})
	if err != nil {
		t.Fatal(err)
	}
	r.joined = floats(ext.Logits)
	// Everything stayed on the model's device.
	devices := map[string]gotch.Device{"cache": g.Cache.K[0].Device(), "joined cache": joined.K[0].Device()}
	for name, x := range map[string]*ts.Tensor{"features": seqs[0].Images[0].Tokens, "logits": out.Logits,
		"hidden": out.Hidden, "extend logits": ext.Logits} {
		devices[name] = torch.TensorDevice(x)
	}
	for name, d := range devices {
		if !torch.SameDevice(d, m.Device) {
			t.Errorf("%s on %s, model on %s", name, torch.DeviceName(d), torch.DeviceName(m.Device))
		}
	}
	return m, r
}

// TestDeviceCPUExplicitEqualsDefault: LoadOptions.Device = gotch.CPU runs
// the very computation of the zero-value default, bit for bit, and
// Model.Device reports the CPU either way.
func TestDeviceCPUExplicitEqualsDefault(t *testing.T) {
	mDef, def := runOnDevice(t, LoadOptions{})
	mCPU, cpu := runOnDevice(t, LoadOptions{Device: gotch.CPU})
	for _, m := range []*Model{mDef, mCPU} {
		if m.Device != gotch.CPU {
			t.Errorf("Model.Device = %+v, want gotch.CPU", m.Device)
		}
		if d := torch.TensorDevice(m.text.EmbedTokens); d != gotch.CPU {
			t.Errorf("weights on %+v", d)
		}
	}
	same := func(name string, a, b []float32) {
		t.Helper()
		if len(a) == 0 || !slices.Equal(a, b) {
			t.Errorf("%s: explicit CPU differs from the default (max |diff| %g, %d values)", name, maxAbsDiff(a, b), len(a))
		}
	}
	same("image features", def.feats, cpu.feats)
	same("prefill logits", def.prefill, cpu.prefill)
	same("hidden", def.hidden, cpu.hidden)
	same("extend after join", def.joined, cpu.joined)
	if len(def.steps) != len(cpu.steps) {
		t.Fatalf("%d decode steps by default, %d with explicit CPU", len(def.steps), len(cpu.steps))
	}
	for i := range def.steps {
		same("decode step", def.steps[i], cpu.steps[i])
	}
	for i := range def.tokens {
		if !slices.Equal(def.tokens[i], cpu.tokens[i]) {
			t.Errorf("sequence %d: tokens %v by default, %v with explicit CPU", i, def.tokens[i], cpu.tokens[i])
		}
	}
}

// TestDeviceCUDAOnCPUOnlyBuild: asking for a GPU from this CPU-only
// libtorch fails at load with the rebuild message, before any weight is
// read.
func TestDeviceCUDAOnCPUOnlyBuild(t *testing.T) {
	if torch.CUDABuild() {
		t.Skip("this is a CUDA build of libtorch")
	}
	for _, name := range []string{"cuda", "cuda:1"} {
		d, err := torch.ParseDevice(name)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Load(tinyModelDir(t), LoadOptions{Device: d})
		if !errors.Is(err, torch.ErrNoCUDA) {
			t.Fatalf("Load on %s: %v, want torch.ErrNoCUDA", name, err)
		}
		if !strings.Contains(err.Error(), "rebuild with LIBTORCH=") {
			t.Errorf("Load on %s: error %q lacks the rebuild hint", name, err)
		}
	}
}

// TestDeviceCUDAMatchesCPU runs only where libtorch sees a GPU: the same
// passes on cuda:0 match the CPU's within float rounding (TF32 off).
func TestDeviceCUDAMatchesCPU(t *testing.T) {
	if !torch.CUDAAvailable() {
		t.Skip("no GPU visible to libtorch")
	}
	_, cpu := runOnDevice(t, LoadOptions{})
	m, gpu := runOnDevice(t, LoadOptions{Device: gotch.CudaBuilder(0)})
	if !torch.IsCUDA(m.Device) {
		t.Fatalf("Model.Device = %+v", m.Device)
	}
	near := func(name string, a, b []float32) {
		t.Helper()
		if d := maxAbsDiff(a, b); len(a) == 0 || d > 1e-4 {
			t.Errorf("%s: cuda:0 differs from the CPU by %g", name, d)
		}
	}
	near("image features", cpu.feats, gpu.feats)
	near("prefill logits", cpu.prefill, gpu.prefill)
	near("hidden", cpu.hidden, gpu.hidden)
	near("extend after join", cpu.joined, gpu.joined)
	for i := range cpu.steps {
		if i < len(gpu.steps) {
			near("decode step", cpu.steps[i], gpu.steps[i])
		}
	}
	for i := range cpu.tokens {
		if !slices.Equal(cpu.tokens[i], gpu.tokens[i]) {
			t.Errorf("sequence %d: tokens %v on the CPU, %v on cuda:0", i, cpu.tokens[i], gpu.tokens[i])
		}
	}
}
