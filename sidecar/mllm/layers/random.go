package layers

import (
	"hash/fnv"
	"math"
	"math/rand"

	"github.com/sugarme/gotch/ts"
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
