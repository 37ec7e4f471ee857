package train

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// TestAdamWMatchesTorch replays fixed gradients through clipGradNorm and
// stepLR and compares with torch.optim.AdamW + clip_grad_norm_
// (testdata/adamw_ref.py, torch 1.13, float64).
func TestAdamWMatchesTorch(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "adamw_ref.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		P0, Q0, P, Q, Lrs, Norms []float64
		Grads                    [][2][]float64
		WD, Clip                 float64
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	mk := func(v []float64, shape ...int64) *ts.Tensor {
		return ts.MustOfSlice(v).MustView(shape, true).MustSetRequiresGrad(true, true)
	}
	p, q := mk(ref.P0, 3, 4), mk(ref.Q0, 5)
	o := newAdamW([]namedParam{{"p", p}, {"q", q}}, ref.WD)
	for i, g := range ref.Grads {
		o.zeroGrad()
		err := torch.Run("backward", true, func() error {
			// loss = Σ p·gp + Σ q·gq has gradients gp and gq.
			gp := ts.MustOfSlice(g[0]).MustView([]int64{3, 4}, true)
			gq := ts.MustOfSlice(g[1])
			loss := p.MustMul(gp, false).MustSum(gotch.Double, true).MustAdd(q.MustMul(gq, false).MustSum(gotch.Double, true), true)
			return loss.Backward()
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := o.clipGradNorm(ref.Clip)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(got-ref.Norms[i]) > 1e-9 {
			t.Errorf("step %d: grad norm %v, want %v", i, got, ref.Norms[i])
		}
		if err := o.stepLR(ref.Lrs[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name      string
		got, want []float64
	}{{"p", p.MustDetach(false).Float64Values(true), ref.P}, {"q", q.MustDetach(false).Float64Values(true), ref.Q}} {
		for i := range c.want {
			if math.Abs(c.got[i]-c.want[i]) > 1e-10 {
				t.Fatalf("%s[%d] = %.15g, torch %.15g", c.name, i, c.got[i], c.want[i])
			}
		}
	}
}
