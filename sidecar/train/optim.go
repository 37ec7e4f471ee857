package train

import (
	"fmt"
	"math"
	"slices"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// namedParam is one trainable tensor under its checkpoint name.
type namedParam struct {
	name string
	t    *ts.Tensor
}

// adamW is AdamW as torch.optim.AdamW computes it (decoupled weight decay,
// bias-corrected moments), written out so that its state (step and both
// moments) can be saved and restored exactly; gotch's optimiser keeps its
// moments inside libtorch where they cannot be checkpointed.
type adamW struct {
	params       []namedParam
	m, v         []*ts.Tensor
	step         int64
	beta1, beta2 float64
	eps, wd      float64
}

func newAdamW(params []namedParam, wd float64) *adamW {
	o := &adamW{params: params, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: wd}
	for _, p := range params {
		o.m = append(o.m, p.t.MustZerosLike(false))
		o.v = append(o.v, p.t.MustZerosLike(false))
	}
	return o
}

// zeroGrad clears every parameter's gradient.
func (o *adamW) zeroGrad() {
	for _, p := range o.params {
		p.t.ZeroGrad()
	}
}

// clipGradNorm scales the gradients so that their global L2 norm is at most
// maxNorm (torch.nn.utils.clip_grad_norm_), returning the norm before
// clipping. maxNorm <= 0 only measures.
func (o *adamW) clipGradNorm(maxNorm float64) (total float64, err error) {
	err = torch.Run("clip gradients", false, func() error {
		var grads []*ts.Tensor
		for _, p := range o.params {
			if g := p.t.MustGrad(false); g.MustDefined() {
				grads = append(grads, g)
			}
		}
		defer torch.Drop(grads...)
		sq := 0.0
		for _, g := range grads {
			n := scalar(g.MustNorm(false))
			sq += n * n
		}
		total = math.Sqrt(sq)
		if maxNorm > 0 {
			if coef := maxNorm / (total + 1e-6); coef < 1 {
				c := ts.FloatScalar(coef)
				for _, g := range grads {
					g.MustMulScalar_(c)
				}
				torch.KeepScalars(c)
			}
		}
		return nil
	})
	return total, err
}

// stepLR applies one AdamW update with learning rate lr.
func (o *adamW) stepLR(lr float64) error {
	o.step++
	bc1 := 1 - math.Pow(o.beta1, float64(o.step))
	bc2 := 1 - math.Pow(o.beta2, float64(o.step))
	f := ts.FloatScalar
	decay, b1, nb1, b2, nb2 := f(1-lr*o.wd), f(o.beta1), f(1-o.beta1), f(o.beta2), f(1-o.beta2)
	sbc2, eps, rate := f(math.Sqrt(bc2)), f(o.eps), f(lr/bc1)
	defer torch.KeepScalars(decay, b1, nb1, b2, nb2, sbc2, eps, rate)
	return torch.Run("optimiser step", false, func() error {
		for i, p := range o.params {
			g := p.t.MustGrad(false)
			if !g.MustDefined() {
				torch.Drop(g)
				continue
			}
			if o.wd != 0 {
				p.t.MustMulScalar_(decay)
			}
			m, v := o.m[i], o.v[i]
			m.MustMulScalar_(b1)
			gm := g.MustMulScalar(nb1, false)
			m.MustAdd_(gm)
			v.MustMulScalar_(b2)
			gv := g.MustSquare(false).MustMulScalar(nb2, true)
			v.MustAdd_(gv)
			denom := v.MustSqrt(false).MustDivScalar(sbc2, true).MustAddScalar(eps, true)
			upd := m.MustDiv(denom, false).MustMulScalar(rate, true)
			p.t.MustSub_(upd)
			torch.Drop(gm, gv, denom, upd, g)
		}
		return nil
	})
}

// stateTensors returns the moments under "exp_avg.NAME" / "exp_avg_sq.NAME".
func (o *adamW) stateTensors() []tensorio.Named {
	var out []tensorio.Named
	for i, p := range o.params {
		out = append(out,
			tensorio.Named{Name: "exp_avg." + p.name, Tensor: o.m[i].MustDetach(false).MustContiguous(true)},
			tensorio.Named{Name: "exp_avg_sq." + p.name, Tensor: o.v[i].MustDetach(false).MustContiguous(true)})
	}
	return out
}

// loadState restores moments written by stateTensors and the step count.
func (o *adamW) loadState(path string, step int64) error {
	ck, err := tensorio.Open(path)
	if err != nil {
		return fmt.Errorf("load optimiser state: %w", err)
	}
	defer ck.Close()
	for i, p := range o.params {
		for j, pre := range []string{"exp_avg.", "exp_avg_sq."} {
			t, err := ck.TensorAs(pre+p.name, gotch.Float)
			if err != nil {
				return fmt.Errorf("load optimiser state %s: %w", path, err)
			}
			if !slices.Equal(t.MustSize(), p.t.MustSize()) {
				return fmt.Errorf("load optimiser state %s: %s%s has shape %v, want %v", path, pre, p.name, t.MustSize(), p.t.MustSize())
			}
			t = torch.ToDevice(t, torch.TensorDevice(p.t), true)
			if j == 0 {
				o.m[i] = t
			} else {
				o.v[i] = t
			}
		}
	}
	o.step = step
	return nil
}

// cosineLR is the learning rate at optimiser step (0-based) of total steps:
// linear warmup over the first warmup steps ((step+1)/warmup · base; Hugging
// Face's schedule starts at 0 and so wastes the first step), then Hugging
// Face's cosine decay base·½(1+cos(π·(step−warmup)/(total−warmup))).
func cosineLR(base float64, step, warmup, total int) float64 {
	if warmup > 0 && step < warmup {
		return base * float64(step+1) / float64(warmup)
	}
	if total <= warmup {
		return base
	}
	progress := float64(step-warmup) / float64(total-warmup)
	progress = math.Min(math.Max(progress, 0), 1)
	return base * 0.5 * (1 + math.Cos(math.Pi*progress))
}

// copyParamsFrom overwrites params with same-named tensors of a checkpoint.
func copyParamsFrom(params []namedParam, path string) error {
	ck, err := tensorio.Open(path)
	if err != nil {
		return err
	}
	defer ck.Close()
	for _, p := range params {
		t, err := ck.TensorAs(p.name, gotch.Float)
		if err != nil {
			return fmt.Errorf("restore %s: %w", p.name, err)
		}
		if !slices.Equal(t.MustSize(), p.t.MustSize()) {
			return fmt.Errorf("restore %s: shape %v, want %v", p.name, t.MustSize(), p.t.MustSize())
		}
		err = torch.Run("restore "+p.name, false, func() error { p.t.Copy_(t); return nil })
		torch.Drop(t)
		if err != nil {
			return err
		}
	}
	return nil
}

// scalar reads a one-element tensor's value, copying it to the CPU first
// when it lives on a GPU, and frees the tensor.
func scalar(t *ts.Tensor) float64 {
	return torch.Float64s(t, true)[0]
}
