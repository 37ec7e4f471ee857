package lora

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

// SetOptions tune a Set.
type SetOptions struct {
	// Params are the base model's named parameters (HF names, as PEFT's
	// modules_to_save keys use them). When set, an adapter's saved modules
	// replace those parameters while it is active (the originals are kept
	// and restored on switching away).
	Params map[string]*ts.Tensor
	// IgnoreSavedModules accepts adapters with modules_to_save tensors
	// without Params and leaves those modules at their base weights
	// (results then differ from PEFT's). Without either, such adapters are
	// refused.
	IgnoreSavedModules bool
}

// Set holds several adapters attached to one model's linear layers. Exactly
// one adapter (or none: the base model) is active; its update is added to
// each targeted layer's output at run time through mllm.Linear.Delta.
// Switching the active adapter is cheap and reloads nothing. Activate,
// Merge and Unmerge must not run while a forward pass is in flight.
type Set struct {
	mu       sync.RWMutex
	linears  map[string]*mllm.Linear
	opts     SetOptions
	adapters map[string]*Adapter
	hooked   map[string]*hook
	active   string
	merged   string // adapter folded into the base weights, "" when none
	training bool
	// swapped holds the original values of parameters replaced by the
	// active adapter's saved modules.
	swapped map[string]*ts.Tensor
}

// NewSet prepares a set for a model's linear layers (mllm.Model.Linears()).
func NewSet(linears map[string]*mllm.Linear, opts SetOptions) *Set {
	return &Set{linears: linears, opts: opts, adapters: map[string]*Adapter{}, hooked: map[string]*hook{}}
}

// hook is the LinearDelta installed on one layer.
type hook struct {
	set    *Set
	module string
}

// Forward returns Scale·(x·Aᵀ)·Bᵀ for the active adapter, or nil.
func (h *hook) Forward(x *ts.Tensor) *ts.Tensor {
	s := h.set
	s.mu.RLock()
	name, merged, training := s.active, s.merged, s.training
	a := s.adapters[name]
	s.mu.RUnlock()
	if a == nil || name == merged {
		return nil
	}
	l := a.Layers[h.module]
	if l == nil {
		return nil
	}
	A, B := l.cast(x.DType(), !training)
	in := x
	if training && a.Config.LoraDropout > 0 {
		in = ts.MustDropout(x, a.Config.LoraDropout, true)
	}
	// Every operand stays referenced until its op returns: gotch v0.9.1 can
	// finalize a tensor whose C handle is in use by a running op.
	ax := ts.MustLinear(in, A, ts.None)
	d := ts.MustLinear(ax, B, ts.None)
	scale := ts.FloatScalar(l.Scale)
	out := d.MustMulScalar(scale, false)
	torch.KeepScalars(scale)
	if in != x {
		torch.Drop(in)
	}
	torch.Drop(ax, d)
	torch.Keep(x, A, B)
	return out
}

// Add attaches an adapter under a.Name after checking that it fits the base
// model (every module present, shapes matching); A and B move to each base
// weight's device. The active adapter does not change.
func (s *Set) Add(a *Adapter) error {
	if a == nil || a.Name == "" {
		return fmt.Errorf("add adapter: adapter has no name")
	}
	if err := a.Fit(s.linears); err != nil {
		return err
	}
	if len(a.Saved) > 0 && s.opts.Params != nil {
		keys := make([]string, 0, len(a.Saved))
		for k := range a.Saved {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, ok := s.opts.Params[k]
			if !ok || p == nil {
				return fmt.Errorf("adapter %s: saved module tensor %s is not a parameter of the base model", a.Name, k)
			}
			if ps, ss := p.MustSize(), a.Saved[k].MustSize(); !slices.Equal(ps, ss) {
				return fmt.Errorf("adapter %s: saved module tensor %s has shape %v, base parameter %v", a.Name, k, ss, ps)
			}
		}
	} else if len(a.Saved) > 0 && !s.opts.IgnoreSavedModules {
		keys := make([]string, 0, len(a.Saved))
		for k := range a.Saved {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return fmt.Errorf("adapter %s: modules_to_save tensors (%s, ... %d in all) replace base weights: pass the base parameters in SetOptions.Params, or set IgnoreSavedModules to use only the LoRA layers", a.Name, keys[0], len(keys))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.adapters[a.Name]; dup {
		return fmt.Errorf("add adapter %s: name already in use", a.Name)
	}
	for _, m := range a.Modules() {
		lin := s.linears[m]
		if lin.Delta != nil {
			if h, ok := lin.Delta.(*hook); !ok || h.set != s {
				return fmt.Errorf("add adapter %s: module %s already has another adapter hook", a.Name, m)
			}
		}
	}
	for _, m := range a.Modules() {
		lin := s.linears[m]
		l := a.Layers[m]
		dev := lin.W.MustDevice()
		if ad := l.A.MustDevice(); ad != dev && (ad.IsCuda() || dev.IsCuda()) {
			l.A = l.A.MustTo(dev, false)
			l.B = l.B.MustTo(dev, false)
		}
		if _, ok := s.hooked[m]; !ok {
			h := &hook{set: s, module: m}
			s.hooked[m] = h
			lin.Delta = h
		}
	}
	s.adapters[a.Name] = a
	return nil
}

// Load reads the PEFT adapter in dir and adds it under name.
func (s *Set) Load(name, dir string) error {
	a, err := Load(dir, name)
	if err != nil {
		return err
	}
	return s.Add(a)
}

// Remove detaches an adapter (unmerging it first when merged).
func (s *Set) Remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.adapters[name]; !ok {
		return fmt.Errorf("remove adapter %s: not loaded", name)
	}
	if s.merged == name {
		if err := s.unmergeLocked(); err != nil {
			return fmt.Errorf("remove adapter %s: %w", name, err)
		}
	}
	delete(s.adapters, name)
	if s.active == name {
		s.active = ""
		if err := s.restoreLocked(); err != nil {
			return fmt.Errorf("remove adapter %s: %w", name, err)
		}
	}
	return nil
}

// Detach unmerges, removes every hook and forgets all adapters. An error
// says the base weights could not be restored.
func (s *Set) Detach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := errors.Join(s.unmergeLocked(), s.restoreLocked())
	for m, h := range s.hooked {
		if lin := s.linears[m]; lin != nil && lin.Delta == h {
			lin.Delta = nil
		}
	}
	s.hooked = map[string]*hook{}
	s.adapters = map[string]*Adapter{}
	s.active = ""
	if err != nil {
		return fmt.Errorf("detach adapters: %w", err)
	}
	return nil
}

// Names returns the attached adapters' names, sorted.
func (s *Set) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.adapters))
	for n := range s.adapters {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Adapter returns an attached adapter by name.
func (s *Set) Adapter(name string) (*Adapter, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.adapters[name]
	return a, ok
}

// Activate selects the adapter applied from now on; "" selects the base
// model. A merged adapter other than name is unmerged first.
func (s *Set) Activate(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name != "" {
		if _, ok := s.adapters[name]; !ok {
			return fmt.Errorf("activate adapter %s: not loaded (have %v)", name, s.namesLocked())
		}
	}
	if s.merged != "" && s.merged != name {
		if err := s.unmergeLocked(); err != nil {
			return fmt.Errorf("activate adapter %s: %w", name, err)
		}
	}
	if name != s.active {
		s.active = ""
		if err := s.restoreLocked(); err != nil {
			return fmt.Errorf("activate adapter %s: %w", name, err)
		}
		if a := s.adapters[name]; a != nil && s.opts.Params != nil && len(a.Saved) > 0 {
			if err := s.swapInLocked(a); err != nil {
				return fmt.Errorf("activate adapter %s: %w", name, err)
			}
		}
	}
	s.active = name
	return nil
}

// swapInLocked copies a's saved modules into the base parameters, keeping
// the originals.
func (s *Set) swapInLocked(a *Adapter) error {
	s.swapped = map[string]*ts.Tensor{}
	return torch.Run("swap in adapter "+a.Name, false, func() error {
		for k, v := range a.Saved {
			p := s.opts.Params[k]
			orig := p.MustDetach(false).MustZerosLike(true)
			orig.Copy_(p)
			s.swapped[k] = orig
			src := v.MustTo(p.MustDevice(), false).MustTotype(p.DType(), true)
			p.Copy_(src)
			torch.Drop(src)
		}
		return nil
	})
}

// restoreLocked puts back the parameters replaced by swapInLocked.
func (s *Set) restoreLocked() error {
	if len(s.swapped) == 0 {
		return nil
	}
	err := torch.Run("restore parameters", false, func() error {
		for k, orig := range s.swapped {
			s.opts.Params[k].Copy_(orig)
			torch.Drop(orig)
		}
		return nil
	})
	s.swapped = nil
	return err
}

// Active returns the active adapter's name ("" for the base model).
func (s *Set) Active() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.active
}

// SetTraining turns LoRA dropout on (training) or off.
// Cached dtype conversions of A and B are dropped, since training changes
// the weights in place.
func (s *Set) SetTraining(on bool) {
	s.mu.Lock()
	s.training = on
	for _, a := range s.adapters {
		for _, l := range a.Layers {
			l.dropCache()
		}
	}
	s.mu.Unlock()
}

// Merge folds the active adapter into the base weights, W += Scale·B·A,
// so forwards skip the extra matmuls. Activate of another adapter (or
// Unmerge) subtracts it again; rounding of W's dtype applies.
func (s *Set) Merge() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active == "" {
		return fmt.Errorf("merge: no active adapter")
	}
	if s.merged == s.active {
		return nil
	}
	if err := s.unmergeLocked(); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	if err := s.apply(s.adapters[s.active], 1); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	s.merged = s.active
	return nil
}

// Unmerge restores the base weights if an adapter is merged.
func (s *Set) Unmerge() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unmergeLocked()
}

// Merged returns the merged adapter's name, "" when none.
func (s *Set) Merged() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.merged
}

func (s *Set) unmergeLocked() error {
	if s.merged == "" {
		return nil
	}
	var err error
	if a := s.adapters[s.merged]; a != nil {
		err = s.apply(a, -1)
	}
	s.merged = ""
	return err
}

// apply adds sign·Scale·B·A to every adapted weight in place, without
// autograd, computing the product in float32.
func (s *Set) apply(a *Adapter, sign float64) error {
	return torch.Run("merge adapter "+a.Name, false, func() error {
		for _, m := range a.Modules() {
			l := a.Layers[m]
			w := s.linears[m].W
			b := l.B.MustDetach(false).MustTotype(gotch.Float, true)
			af := l.A.MustDetach(false).MustTotype(gotch.Float, true)
			scale := ts.FloatScalar(sign * l.Scale)
			delta := b.MustMatmul(af, false).MustMulScalar(scale, true)
			torch.KeepScalars(scale)
			if w.DType() == gotch.Float {
				w.MustAdd_(delta)
			} else {
				wf := w.MustTotype(gotch.Float, false)
				sum := wf.MustAdd(delta, false)
				nw := sum.MustTotype(w.DType(), false)
				w.Copy_(nw)
				torch.Drop(wf, sum, nw)
			}
			torch.Drop(b, af, delta)
		}
		return nil
	})
}

func (s *Set) namesLocked() []string {
	out := make([]string, 0, len(s.adapters))
	for n := range s.adapters {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
