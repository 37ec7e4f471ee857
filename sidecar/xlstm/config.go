package xlstm

import (
	"fmt"
	"math"
	"sort"
)

// Config sizes a predictor. The zero value is not usable; start from
// DefaultConfig and change fields.
type Config struct {
	// InputDim is the width of the features fed to model.W: the MLLM's
	// vocabulary size for the logits path.
	InputDim int `json:"input_dim"`
	// EmbeddingDim is the width of the xLSTM block stack (512 in the paper).
	EmbeddingDim int `json:"embedding_dim"`
	// NumBlocks is the number of xLSTM blocks.
	NumBlocks int `json:"num_blocks"`
	// SLSTMAt lists the block indices that are sLSTM blocks; all others are mLSTM.
	SLSTMAt []int `json:"slstm_at"`
	// NumHeads is the number of mLSTM cell heads.
	NumHeads int `json:"num_heads"`
	// SLSTMHeads is the number of sLSTM heads.
	SLSTMHeads int `json:"slstm_heads"`
	// ConvKernel is the causal depthwise convolution's kernel size.
	ConvKernel int `json:"conv1d_kernel_size"`
	// QKVBlockSize is the block size of the block-diagonal q/k/v projections.
	QKVBlockSize int `json:"qkv_proj_blocksize"`
	// ProjFactor is the mLSTM up-projection factor (inner width rounded up to
	// a multiple of 64).
	ProjFactor float64 `json:"proj_factor"`
	// FFNProjFactor is the sLSTM feed-forward factor (rounded up to a
	// multiple of 64).
	FFNProjFactor float64 `json:"ffn_proj_factor"`
	// ContextLength is the longest sequence accepted; 0 means no limit.
	// xlstm 1.0.6 cannot run sequences longer than its context length.
	ContextLength int `json:"context_length"`
	// HeadHidden is the hidden width of the regression head (128).
	HeadHidden int `json:"head_hidden"`
}

// Norm epsilon and the mLSTM normaliser epsilon of xlstm 1.0.6.
const (
	normEps = 1e-5
	cellEps = 1e-6
)

// DefaultConfig returns the paper's predictor for an MLLM with the given
// vocabulary size: 4 blocks of width 512, sLSTM at block 1, 4 heads,
// context length 512.
func DefaultConfig(inputDim int) Config {
	return Config{
		InputDim:      inputDim,
		EmbeddingDim:  512,
		NumBlocks:     4,
		SLSTMAt:       []int{1},
		NumHeads:      4,
		SLSTMHeads:    4,
		ConvKernel:    4,
		QKVBlockSize:  4,
		ProjFactor:    2.0,
		FFNProjFactor: 1.3,
		ContextLength: 512,
		HeadHidden:    128,
	}
}

// roundUp64 is xlstm's UpProjConfigMixin: ceil(factor·dim/64)·64.
func roundUp64(factor float64, dim int) int {
	v := factor * float64(dim) / 64
	// Guard against 1.375·512/64 = 11.000000001 style rounding.
	return int(math.Ceil(v-1e-9)) * 64
}

// InnerDim is the mLSTM inner width (up-projection output per branch).
func (c Config) InnerDim() int { return roundUp64(c.ProjFactor, c.EmbeddingDim) }

// FFNDim is the sLSTM feed-forward inner width.
func (c Config) FFNDim() int { return roundUp64(c.FFNProjFactor, c.EmbeddingDim) }

// IsSLSTM reports whether block i is an sLSTM block.
func (c Config) IsSLSTM(i int) bool {
	for _, j := range c.SLSTMAt {
		if j == i {
			return true
		}
	}
	return false
}

// Validate checks that the sizes fit together.
func (c Config) Validate() error {
	switch {
	case c.InputDim <= 0:
		return fmt.Errorf("xlstm config: input_dim %d must be positive", c.InputDim)
	case c.EmbeddingDim <= 0:
		return fmt.Errorf("xlstm config: embedding_dim %d must be positive", c.EmbeddingDim)
	case c.NumBlocks <= 0:
		return fmt.Errorf("xlstm config: num_blocks %d must be positive", c.NumBlocks)
	case c.ConvKernel <= 0:
		return fmt.Errorf("xlstm config: conv1d_kernel_size %d must be positive", c.ConvKernel)
	case c.HeadHidden <= 0:
		return fmt.Errorf("xlstm config: head_hidden %d must be positive", c.HeadHidden)
	case c.ContextLength < 0:
		return fmt.Errorf("xlstm config: context_length %d is negative", c.ContextLength)
	}
	seen := map[int]bool{}
	for _, j := range c.SLSTMAt {
		if j < 0 || j >= c.NumBlocks {
			return fmt.Errorf("xlstm config: slstm_at index %d outside 0..%d", j, c.NumBlocks-1)
		}
		if seen[j] {
			return fmt.Errorf("xlstm config: slstm_at index %d repeated", j)
		}
		seen[j] = true
	}
	hasM := len(c.SLSTMAt) < c.NumBlocks
	if hasM {
		inner := c.InnerDim()
		switch {
		case c.ProjFactor <= 0:
			return fmt.Errorf("xlstm config: proj_factor %g must be positive", c.ProjFactor)
		case c.NumHeads <= 0 || inner%c.NumHeads != 0:
			return fmt.Errorf("xlstm config: num_heads %d must divide the mLSTM inner width %d", c.NumHeads, inner)
		case c.QKVBlockSize <= 0 || inner%c.QKVBlockSize != 0:
			return fmt.Errorf("xlstm config: qkv_proj_blocksize %d must divide the mLSTM inner width %d", c.QKVBlockSize, inner)
		}
	}
	if len(c.SLSTMAt) > 0 {
		switch {
		case c.SLSTMHeads <= 0 || c.EmbeddingDim%c.SLSTMHeads != 0:
			return fmt.Errorf("xlstm config: slstm_heads %d must divide embedding_dim %d", c.SLSTMHeads, c.EmbeddingDim)
		case c.FFNProjFactor <= 0:
			return fmt.Errorf("xlstm config: ffn_proj_factor %g must be positive", c.FFNProjFactor)
		}
	}
	return nil
}

func (c Config) normalized() Config {
	s := append([]int(nil), c.SLSTMAt...)
	sort.Ints(s)
	c.SLSTMAt = s
	return c
}
