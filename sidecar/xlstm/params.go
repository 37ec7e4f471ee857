package xlstm

import (
	"fmt"
	"math"
	"math/rand"
)

// Checkpoint key prefixes of the reference predictor (M3-AGIQA's
// MiniCPMIQA_xLSTMHeader: model.W, model.xlstm_pooler.xlstm_stack, model.fc).
const (
	keyW     = "model.W."
	keyStack = "model.xlstm_pooler.xlstm_stack."
	keyFC    = "model.fc."
)

// initKind says how New fills a parameter (xlstm 1.0.6's reset_parameters
// for the stack, Xavier-uniform and zero bias for W and the head).
type initKind int

const (
	initZeros initKind = iota
	initOnes
	initNormal       // N(0, std)
	initXavier       // Xavier-uniform over [out, in]
	initConvWeight   // PyTorch Conv1d default: U(±1/sqrt(fan_in))
	initConvBias     // same bound
	initLinspace     // linspace(a, b, n)
	initPowerlawBias // sLSTM powerlaw_blockdependent bias, cuda layout
)

type spec struct {
	name  string
	shape []int64
	kind  initKind
	std   float64 // initNormal
	a, b  float64 // initLinspace; a = block ratio for initPowerlawBias
	fanIn int     // conv inits
}

func blockKey(i int, rest string) string {
	return fmt.Sprintf("%sblocks.%d.%s", keyStack, i, rest)
}

// specs lists every parameter in checkpoint order with its shape and init.
func (c Config) specs() []spec {
	E := int64(c.EmbeddingDim)
	K := int64(c.ConvKernel)
	smallStd := math.Sqrt(2 / (5 * float64(c.EmbeddingDim)))
	wangStd := 2 / float64(c.NumBlocks) / math.Sqrt(float64(c.EmbeddingDim))
	convBound := 1 / math.Sqrt(float64(c.ConvKernel))
	var s []spec
	s = append(s,
		spec{name: keyW + "weight", shape: []int64{E, int64(c.InputDim)}, kind: initXavier},
		spec{name: keyW + "bias", shape: []int64{E}, kind: initZeros},
	)
	for i := 0; i < c.NumBlocks; i++ {
		s = append(s, spec{name: blockKey(i, "xlstm_norm.weight"), shape: []int64{E}, kind: initZeros})
		if c.IsSLSTM(i) {
			NH := int64(c.SLSTMHeads)
			DH := E / NH
			F := int64(c.FFNDim())
			ratio := 0.0
			if c.NumBlocks > 1 {
				ratio = float64(i) / float64(c.NumBlocks-1)
			}
			s = append(s,
				spec{name: blockKey(i, "xlstm.conv1d.conv.weight"), shape: []int64{E, 1, K}, kind: initConvWeight, fanIn: c.ConvKernel, std: convBound},
				spec{name: blockKey(i, "xlstm.conv1d.conv.bias"), shape: []int64{E}, kind: initConvBias, std: convBound},
				spec{name: blockKey(i, "xlstm.fgate.weight"), shape: []int64{NH, DH, DH}, kind: initNormal, std: smallStd},
				spec{name: blockKey(i, "xlstm.igate.weight"), shape: []int64{NH, DH, DH}, kind: initNormal, std: smallStd},
				spec{name: blockKey(i, "xlstm.zgate.weight"), shape: []int64{NH, DH, DH}, kind: initNormal, std: smallStd},
				spec{name: blockKey(i, "xlstm.ogate.weight"), shape: []int64{NH, DH, DH}, kind: initNormal, std: smallStd},
				spec{name: blockKey(i, "xlstm.slstm_cell._recurrent_kernel_"), shape: []int64{NH, DH, 4 * DH}, kind: initZeros},
				spec{name: blockKey(i, "xlstm.slstm_cell._bias_"), shape: []int64{NH * 4 * DH}, kind: initPowerlawBias, a: ratio, b: float64(NH)},
				spec{name: blockKey(i, "xlstm.group_norm.weight"), shape: []int64{E}, kind: initZeros},
				spec{name: blockKey(i, "ffn_norm.weight"), shape: []int64{E}, kind: initZeros},
				spec{name: blockKey(i, "ffn.proj_up.weight"), shape: []int64{2 * F, E}, kind: initNormal, std: smallStd},
				spec{name: blockKey(i, "ffn.proj_down.weight"), shape: []int64{E, F}, kind: initNormal, std: wangStd},
			)
			continue
		}
		I := int64(c.InnerDim())
		NH := int64(c.NumHeads)
		bs := int64(c.QKVBlockSize)
		s = append(s,
			spec{name: blockKey(i, "xlstm.proj_up.weight"), shape: []int64{2 * I, E}, kind: initNormal, std: smallStd},
			spec{name: blockKey(i, "xlstm.q_proj.weight"), shape: []int64{I / bs, bs, bs}, kind: initNormal, std: smallStd},
			spec{name: blockKey(i, "xlstm.k_proj.weight"), shape: []int64{I / bs, bs, bs}, kind: initNormal, std: smallStd},
			spec{name: blockKey(i, "xlstm.v_proj.weight"), shape: []int64{I / bs, bs, bs}, kind: initNormal, std: smallStd},
			spec{name: blockKey(i, "xlstm.conv1d.conv.weight"), shape: []int64{I, 1, K}, kind: initConvWeight, std: convBound},
			spec{name: blockKey(i, "xlstm.conv1d.conv.bias"), shape: []int64{I}, kind: initConvBias, std: convBound},
			spec{name: blockKey(i, "xlstm.mlstm_cell.igate.weight"), shape: []int64{NH, 3 * I}, kind: initZeros},
			spec{name: blockKey(i, "xlstm.mlstm_cell.igate.bias"), shape: []int64{NH}, kind: initNormal, std: 0.1},
			spec{name: blockKey(i, "xlstm.mlstm_cell.fgate.weight"), shape: []int64{NH, 3 * I}, kind: initZeros},
			spec{name: blockKey(i, "xlstm.mlstm_cell.fgate.bias"), shape: []int64{NH}, kind: initLinspace, a: 3, b: 6},
			spec{name: blockKey(i, "xlstm.mlstm_cell.outnorm.weight"), shape: []int64{I}, kind: initZeros},
			spec{name: blockKey(i, "xlstm.learnable_skip"), shape: []int64{I}, kind: initOnes},
			spec{name: blockKey(i, "xlstm.proj_down.weight"), shape: []int64{E, I}, kind: initNormal, std: wangStd},
		)
	}
	H := int64(c.HeadHidden)
	s = append(s,
		spec{name: keyStack + "post_blocks_norm.weight", shape: []int64{E}, kind: initZeros},
		spec{name: keyFC + "0.weight", shape: []int64{H, E}, kind: initXavier},
		spec{name: keyFC + "0.bias", shape: []int64{H}, kind: initZeros},
		spec{name: keyFC + "2.weight", shape: []int64{1, H}, kind: initXavier},
		spec{name: keyFC + "2.bias", shape: []int64{1}, kind: initZeros},
	)
	return s
}

func numel(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// values draws the initial values of one parameter from rng.
func (sp spec) values(rng *rand.Rand) []float32 {
	n := numel(sp.shape)
	v := make([]float32, n)
	switch sp.kind {
	case initZeros:
	case initOnes:
		for i := range v {
			v[i] = 1
		}
	case initNormal:
		for i := range v {
			v[i] = float32(rng.NormFloat64() * sp.std)
		}
	case initXavier:
		fanOut, fanIn := float64(sp.shape[0]), float64(sp.shape[1])
		bound := math.Sqrt(6 / (fanIn + fanOut))
		for i := range v {
			v[i] = float32((rng.Float64()*2 - 1) * bound)
		}
	case initConvWeight, initConvBias:
		for i := range v {
			v[i] = float32((rng.Float64()*2 - 1) * sp.std)
		}
	case initLinspace:
		for i := range v {
			if n == 1 {
				v[i] = float32(sp.a)
				continue
			}
			v[i] = float32(sp.a + (sp.b-sp.a)*float64(i)/float64(n-1))
		}
	case initPowerlawBias:
		// bias[h, g, d] (flat (h·4+g)·DH+d); only the forget slot g=1 is
		// non-zero: -(-5 + 12·(d/(DH-1))^(0.3+1.3·ratio)).
		nh := 1
		// shape is [NH·4·DH]; recover DH from the recurrent kernel's rule:
		// callers pass ratio in a; heads in b.
		if sp.b > 0 {
			nh = int(sp.b)
		}
		dh := n / (4 * nh)
		for h := 0; h < nh; h++ {
			for d := 0; d < dh; d++ {
				x := 0.0
				if dh > 1 {
					x = float64(d) / float64(dh-1)
				}
				v[(h*4+1)*dh+d] = float32(-(-5 + 12*math.Pow(x, 0.3+1.3*sp.a)))
			}
		}
	}
	return v
}
