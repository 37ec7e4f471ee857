package layers

import (
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
)

// Param kinds say how a random-weight model (mllm.WriteTiny) initialises
// the tensor.
const (
	KindLinear = "linear" // a Linear's weight [out, in]
	KindBias   = "bias"   // any bias
	KindLNW    = "lnw"    // a LayerNorm's weight
	KindLNB    = "lnb"    // a LayerNorm's bias
	KindRMS    = "rms"    // an RMSNorm's weight
	KindEmbed  = "embed"  // a token embedding table
	KindConv   = "conv"   // a convolution's weight [out, in, kh, kw]
	KindPos    = "pos"    // a learned position embedding table
)

// Param names one checkpoint tensor, its shape, its kind and the module
// field that holds it once loaded.
type Param struct {
	Name  string
	Shape []int64
	Kind  string
	Dst   **ts.Tensor
}

// Params collects the parameters modules declare while they are built, in
// checkpoint order, and the Linear layers by Hugging Face module name.
type Params struct {
	List    []Param
	Linears map[string]*Linear
	// MapEmbeddings makes Load read token embedding tables on the CPU in
	// place from the checkpoint file (a private mapping each, released by
	// Drop) when they keep the file's dtype, instead of copying them: a
	// pass looks up a few rows, so only those pages become resident (the
	// 256M model's f32 table is 113 MB, an 8B model's bf16 one 1 GB).
	MapEmbeddings bool

	mappings []*tensorio.Mapping
	fused    []*Fused
}

// NewParams returns an empty collection.
func NewParams() *Params { return &Params{Linears: map[string]*Linear{}} }

// Add declares one tensor.
func (p *Params) Add(name, kind string, dst **ts.Tensor, shape ...int64) {
	p.List = append(p.List, Param{Name: name, Shape: shape, Kind: kind, Dst: dst})
}

// Linear declares the nn.Linear module name (in → out features) and
// returns its layer.
func (p *Params) Linear(name string, in, out int, bias bool) *Linear {
	l := &Linear{}
	p.Linears[name] = l
	p.Add(name+".weight", KindLinear, &l.W, int64(out), int64(in))
	if bias {
		p.Add(name+".bias", KindBias, &l.B, int64(out))
	}
	return l
}

// LayerNorm declares the nn.LayerNorm module name of width d into n.
func (p *Params) LayerNorm(n *LayerNorm, name string, d int, eps float64) {
	n.Eps = eps
	p.Add(name+".weight", KindLNW, &n.W, int64(d))
	p.Add(name+".bias", KindLNB, &n.B, int64(d))
}

// RMSNorm declares the RMSNorm weight tensor name (the full tensor name,
// ".weight" included) of width d into n.
func (p *Params) RMSNorm(n *RMSNorm, name string, d int, eps float64) {
	n.Eps = eps
	p.Add(name, KindRMS, &n.W, int64(d))
}

// Drop frees every loaded tensor once (a tensor two modules share, such as
// tied embeddings, is freed once).
func (p *Params) Drop() {
	seen := map[*ts.Tensor]bool{}
	for _, q := range p.List {
		if t := *q.Dst; t != nil && !seen[t] {
			seen[t] = true
			t.MustDrop()
		}
	}
	for _, f := range p.fused {
		f.drop()
	}
	// After the tensors that read them.
	for _, mp := range p.mappings {
		mp.Unmap()
	}
	p.mappings = nil
}
