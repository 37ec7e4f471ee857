package layers

import (
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
)

// TestMapEmbeddings: with MapEmbeddings an embedding table that keeps the
// file's dtype is read in place from a mapping of its own (one per table,
// released by Drop) and holds the same values as a copied one, after the
// checkpoint is closed; other tensors, and a table converted to another
// dtype, are copied.
func TestMapEmbeddings(t *testing.T) {
	declare := func() (*Params, *ts.Tensor, *Linear) {
		p := NewParams()
		var emb *ts.Tensor
		p.Add("embed.weight", KindEmbed, &emb, 50, 16)
		return p, emb, p.Linear("proj", 16, 8, true)
	}
	dir := t.TempDir()
	for _, stored := range []gotch.DType{gotch.Float, gotch.BFloat16} {
		path := filepath.Join(dir, stored.String()+".safetensors")
		p0, _, _ := declare()
		if err := WriteRandom(path, p0.List, 3, stored); err != nil {
			t.Fatal(err)
		}
		load := func(mapped bool) *Params {
			p, _, _ := declare()
			p.MapEmbeddings = mapped
			ck, err := tensorio.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			as := func(s Param, info tensorio.Info) gotch.DType {
				if s.Kind == KindEmbed {
					return stored // kept as stored
				}
				return gotch.Float
			}
			if stored == gotch.BFloat16 {
				as = func(Param, tensorio.Info) gotch.DType { return gotch.Float } // widened: a copy
			}
			if err := p.Load(ck, gotch.CPU, as); err != nil {
				t.Fatal(err)
			}
			ck.Close() // the mapped table outlives the checkpoint
			return p
		}
		mapped, copied := load(true), load(false)
		wantMaps := 1
		if stored == gotch.BFloat16 {
			wantMaps = 0
		}
		if len(mapped.mappings) != wantMaps || len(copied.mappings) != 0 {
			t.Errorf("%v: %d and %d mappings, want %d and 0", stored, len(mapped.mappings), len(copied.mappings), wantMaps)
		}
		for i := range mapped.List {
			a, b := *mapped.List[i].Dst, *copied.List[i].Dst
			if a.DType() != b.DType() || !a.MustEqual(b, false) {
				t.Errorf("%v: %s differs between the mapped and the copied load", stored, mapped.List[i].Name)
			}
		}
		// A lookup reads the mapped rows.
		emb := *mapped.List[0].Dst
		ids := ts.MustOfSlice([]int64{0, 49, 7})
		got, want := ts.MustEmbedding(emb, ids, -1, false, false), ts.MustEmbedding(*copied.List[0].Dst, ids, -1, false, false)
		if !got.MustEqual(want, false) {
			t.Errorf("%v: looked-up rows differ", stored)
		}
		got.MustDrop()
		want.MustDrop()
		ids.MustDrop()
		mapped.Drop()
		copied.Drop()
		if mapped.mappings != nil {
			t.Errorf("%v: Drop left the mappings", stored)
		}
	}
}
