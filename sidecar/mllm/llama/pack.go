package llama

import (
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Packing maps the valid new tokens of a padded batch [B, Tq] onto the
// rows of a packed [N, C] tensor. Every op of a decoder layer but the
// attention itself works on each token alone, so a batch of sequences of
// different lengths runs those ops (the projections and the MLP: nearly
// all of a prefill's arithmetic) on its N tokens only, not on B·Tq
// slots; the attention runs in the padded layout the cache and the mask
// use, its inputs unpacked with zeros in the padding slots (which the mask
// hides) and its output packed again.
type Packing struct {
	idx   torch.Raw // int64 [N]: slot b·Tq+t of each valid token
	b, tq int64
}

// newPacking returns the packing of valid [B][Tq], or nil when every slot
// is valid (nothing to gain) or there is one new token per sequence.
func newPacking(valid [][]bool, m *Model) *Packing {
	b, tq := len(valid), len(valid[0])
	if tq < 2 {
		return nil
	}
	var idx []int64
	for i, row := range valid {
		for j, ok := range row {
			if ok {
				idx = append(idx, int64(i*tq+j))
			}
		}
	}
	if len(idx) == b*tq || len(idx) == 0 {
		return nil
	}
	return &Packing{idx: torch.Int64s(idx, m.Device), b: int64(b), tq: int64(tq)}
}

// pack returns the valid rows of x [B, Tq, C] as [N, C]; x stays the
// caller's.
func (p *Packing) pack(x torch.Raw) torch.Raw {
	sz := x.Size()
	flat := x.View(p.b*p.tq, sz[len(sz)-1])
	out := flat.IndexSelect(0, p.idx)
	flat.Free()
	return out
}

// unpack returns x [N, C] spread over the slots of [B, Tq, C], zeros in
// the padding; x stays the caller's.
func (p *Packing) unpack(x torch.Raw) torch.Raw {
	c := x.Size()[1]
	out := torch.Zeros([]int64{p.b * p.tq, c}, x.DType(), x.Device())
	out.IndexCopyInPlace(0, p.idx, x)
	v := out.View(p.b, p.tq, c)
	out.Free()
	return v
}

// free releases the index.
func (p *Packing) free() {
	if p != nil {
		p.idx.Free()
	}
}
