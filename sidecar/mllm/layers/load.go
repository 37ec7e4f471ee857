package layers

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Load fills the declared tensors from checkpoint ck, which must hold
// every one of them with its declared shape and nothing else (apart from
// the names in extra, such as an LM head tied to the embeddings). Each
// tensor is converted to the dtype as gives for it, one at a time, and
// moved to dev; then the layers declared by Fuse are joined. On error
// nothing stays loaded.
func (p *Params) Load(ck *tensorio.Checkpoint, dev gotch.Device, as func(Param, tensorio.Info) gotch.DType, extra ...string) error {
	if err := p.check(ck, extra); err != nil {
		return err
	}
	for _, s := range p.List {
		info, _ := ck.Info(s.Name)
		kind := as(s, info)
		if stored, _ := tensorio.KindOf(info.DType); p.MapEmbeddings && s.Kind == KindEmbed && !torch.IsCUDA(dev) && stored == kind {
			if t, err := p.mapTensor(ck, s, kind); err == nil {
				*s.Dst = t
				continue
			} // else copied, as any tensor (a misaligned one, say)
		}
		t, err := ck.TensorAs(s.Name, kind)
		if err == nil && torch.IsCUDA(dev) {
			t, err = t.To(dev, true) // To frees the CPU copy either way
		}
		if err != nil {
			p.Drop() // the tensors loaded so far
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		*s.Dst = t
	}
	if err := torch.Run("join fused layers", false, func() error {
		for _, f := range p.fused {
			f.join()
		}
		return nil
	}); err != nil {
		p.Drop()
		return err
	}
	return nil
}

// mapTensor is tensor s of ck read in place from its own mapping of the
// file (kept until Drop).
func (p *Params) mapTensor(ck *tensorio.Checkpoint, s Param, kind gotch.DType) (*ts.Tensor, error) {
	mp, err := ck.Map(s.Name)
	if err != nil {
		return nil, err
	}
	t, err := torch.FromMemory(mp.Data, s.Shape, kind)
	if err != nil {
		mp.Unmap()
		return nil, err
	}
	p.mappings = append(p.mappings, mp)
	return t, nil
}

// check compares the checkpoint's tensors with the declared ones.
func (p *Params) check(ck *tensorio.Checkpoint, extra []string) error {
	want := map[string]bool{}
	var missing, shape, unexpected []string
	for _, s := range p.List {
		want[s.Name] = true
		info, ok := ck.Info(s.Name)
		if !ok {
			missing = append(missing, s.Name)
			continue
		}
		if !slices.Equal(info.Shape, s.Shape) {
			shape = append(shape, fmt.Sprintf("%s has shape %v, want %v", s.Name, info.Shape, s.Shape))
		}
	}
	for _, n := range ck.Names() {
		if !want[n] && !slices.Contains(extra, n) {
			unexpected = append(unexpected, n)
		}
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "missing tensors: "+listNames(missing))
	}
	if len(unexpected) > 0 {
		parts = append(parts, "unexpected tensors: "+listNames(unexpected))
	}
	if len(shape) > 0 {
		parts = append(parts, "mis-shaped tensors: "+listNames(shape))
	}
	if len(parts) > 0 {
		return fmt.Errorf("%s", strings.Join(parts, "; "))
	}
	return nil
}

func listNames(names []string) string {
	sort.Strings(names)
	if len(names) > 8 {
		return strings.Join(names[:8], ", ") + fmt.Sprintf(" (and %d more)", len(names)-8)
	}
	return strings.Join(names, ", ")
}
