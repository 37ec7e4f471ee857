package llama

import (
	"fmt"
	"testing"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// TestDecodeStepMatchesLayers: decode steps run as one call per layer
// (decodeStep) give the logits and the cache (keys and values of every
// slot) of the same steps run through the layers' ops (bit for bit where
// torch.DecodeLayerExact), for one sequence
// (the single-token vector mode), a batch of equal prompts (no mask), and
// a ragged batch (a mask over its padding) in which one sequence finishes
// (a hidden padding slot) half-way.
func TestDecodeStepMatchesLayers(t *testing.T) {
	m := tinyModel(t)
	cases := []struct {
		name  string
		valid [][]bool
		steps [][]int64
	}{
		{"one sequence", ragged(5, 5), [][]int64{{3}, {7}, {11}, {2}}},
		{"equal batch", ragged(4, 4, 4, 4), [][]int64{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}},
		{"ragged batch", ragged(6, 6, 2, 4), [][]int64{{1, 2, 3}, {4, -1, 6}, {7, -1, 9}, {10, -1, 12}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run := func(fused bool) (logits [][]float32, k, v [][]float32, calls int64) {
				noDecodeStep = !fused
				defer func() { noDecodeStep = false }()
				before := decodeSteps.Load()
				err := torch.Run(fmt.Sprint("fused ", fused), false, func() error {
					x := randTensor(3, int64(len(c.valid)), int64(len(c.valid[0])), int64(m.Config.HiddenSize))
					h, cache := m.Forward(x, c.valid, nil)
					h.MustDrop()
					for _, toks := range c.steps {
						l, next := m.Step(cache, toks)
						logits = append(logits, floats(l))
						l.MustDrop()
						cache.Free()
						cache = next
					}
					for li := range m.Layers {
						k = append(k, rawFloats(cache.K[li]))
						v = append(v, rawFloats(cache.V[li]))
					}
					cache.Free()
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return logits, k, v, decodeSteps.Load() - before
			}
			wantL, wantK, wantV, n0 := run(false)
			gotL, gotK, gotV, n1 := run(true)
			if n0 != 0 {
				t.Errorf("the layers' ops path ran decodeStep %d times", n0)
			}
			if want := int64(len(c.steps) * len(m.Layers)); n1 != want {
				t.Fatalf("decodeStep ran %d layers, want %d", n1, want)
			}
			// The same kernels run either way: bit for bit the same results
			// where DecodeLayer's SiLU is libtorch's (SLEEF found).
			tol := 1e-5
			if torch.DecodeLayerExact() {
				tol = 0
			}
			for i := range wantL {
				if d := maxAbsDiff(gotL[i], wantL[i]); d > tol {
					t.Errorf("step %d: logits differ by %g", i, d)
				}
			}
			for li := range wantK {
				if d := maxAbsDiff(gotK[li], wantK[li]); d > tol {
					t.Errorf("layer %d: cached keys differ by %g", li, d)
				}
				if d := maxAbsDiff(gotV[li], wantV[li]); d > tol {
					t.Errorf("layer %d: cached values differ by %g", li, d)
				}
			}
			if raw := torch.LiveRaw(); raw != 0 {
				t.Errorf("%d raw handles left", raw)
			}
		})
	}
}

// TestDecodeStepLeavesAdapters: a layer with an adapter on one of its
// products runs through its ops (whose products add the adapter), the
// other layers as one call.
func TestDecodeStepLeavesAdapters(t *testing.T) {
	m := tinyModel(t)
	m.Layers[1].Attn.O.Delta = scaleDelta(0.5)
	defer func() { m.Layers[1].Attn.O.Delta = nil }()
	steps := func(fused bool) ([]float32, int64) {
		noDecodeStep = !fused
		defer func() { noDecodeStep = false }()
		before := decodeSteps.Load()
		var out []float32
		err := torch.Run("adapter", false, func() error {
			x := randTensor(5, 2, 3, int64(m.Config.HiddenSize))
			h, cache := m.Forward(x, ragged(3, 3, 3), nil)
			h.MustDrop()
			l, next := m.Step(cache, []int64{4, 9})
			out = floats(l)
			l.MustDrop()
			cache.Free()
			next.Free()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out, decodeSteps.Load() - before
	}
	want, _ := steps(false)
	got, calls := steps(true)
	if calls != 1 {
		t.Errorf("decodeStep ran %d layers, want 1 (layer 0)", calls)
	}
	if d := maxAbsDiff(got, want); d > 1e-5 {
		t.Errorf("logits differ by %g", d)
	}
}

// scaleDelta is an adapter that adds s·x (a layer whose input and output
// widths agree).
type scaleDelta float64

func (s scaleDelta) Forward(x *ts.Tensor) *ts.Tensor {
	return x.MustMulScalar(ts.FloatScalar(float64(s)), false)
}

var _ layers.LinearDelta = scaleDelta(0)

// rawFloats copies r's values.
func rawFloats(r torch.Raw) []float32 {
	t := r.Share().Wrap()
	defer t.MustDrop()
	return floats(t)
}
