package layers

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// RandomTensor draws one parameter for a random-weight test model (the tiny
// writers of every family) from a generator seeded by seed and the
// tensor's name, so every tensor is reproducible on its own.
func RandomTensor(s Param, seed int64) *ts.Tensor {
	h := fnv.New64a()
	h.Write([]byte(s.Name))
	rng := rand.New(rand.NewSource(seed ^ int64(h.Sum64())))
	n := int64(1)
	for _, d := range s.Shape {
		n *= d
	}
	fanIn := float64(s.Shape[len(s.Shape)-1])
	if s.Kind == KindConv {
		fanIn = float64(s.Shape[1] * s.Shape[2] * s.Shape[3])
	}
	v := make([]float32, n)
	for i := range v {
		z := rng.NormFloat64()
		var x float64
		switch s.Kind {
		case KindLinear, KindConv:
			x = z / math.Sqrt(fanIn)
		case KindBias, KindLNB:
			x = 0.1 * z
		case KindLNW, KindRMS:
			x = 1 + 0.1*z
		case KindEmbed:
			x = z
		case KindPos:
			x = 0.5 * z
		}
		v[i] = float32(x)
	}
	return ts.MustOfSlice(v).MustView(s.Shape, true)
}

// WriteRandom writes a random-weight checkpoint of params (RandomTensor
// with seed, stored in kind: f32 or bf16) to the safetensors file path.
func WriteRandom(path string, params []Param, seed int64, kind gotch.DType) error {
	var tensors []tensorio.Named
	defer func() {
		for _, t := range tensors {
			t.Tensor.MustDrop()
		}
	}()
	err := torch.Run("random weights", false, func() error {
		for _, s := range params {
			t := RandomTensor(s, seed)
			if kind == gotch.BFloat16 {
				t = t.MustTotype(gotch.BFloat16, true)
			}
			tensors = append(tensors, tensorio.Named{Name: s.Name, Tensor: t})
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tensorio.Write(path, tensors, map[string]string{"format": "pt"})
}

// WriteJSONFiles writes each value as indented JSON to dir/name: the
// config files of a model directory.
func WriteJSONFiles(dir string, files map[string]any) error {
	for name, v := range files {
		raw, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), append(raw, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}
