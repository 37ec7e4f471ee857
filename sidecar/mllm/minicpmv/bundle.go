package minicpmv

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// BundleAspects are the aspects a tiny bundle has adapters and predictors
// for: all of them.
var BundleAspects = iqa.Aspects

// BundleLayout names the parts of an M3-AGIQA bundle under its directory:
// the base model, one adapter directory and one predictor checkpoint per
// aspect. `m3gate model fetch m3-agiqa` and WriteTinyBundle use it.
func BundleLayout(dir, aspect string) (model, adapter, predictor string) {
	return filepath.Join(dir, "base"), filepath.Join(dir, "adapters", aspect), filepath.Join(dir, "predictors", aspect+".ckpt")
}

// WriteTinyBundle writes a tiny model of this family plus, for every
// aspect of BundleAspects, an adapter in M3-AGIQA's PEFT layout and a
// predictor in the reference's Lightning checkpoint layout (a .ckpt whose
// state_dict holds model.W.*, model.xlstm_pooler.xlstm_stack.*,
// model.fc.*, with the sLSTM in the CUDA layout), laid out as BundleLayout
// says. The whole scoring path runs on it.
func WriteTinyBundle(dir string, o TinyOptions) error {
	modelDir, _, _ := BundleLayout(dir, "")
	if err := WriteTiny(modelDir, o); err != nil {
		return err
	}
	cfg, err := LoadConfig(filepath.Join(modelDir, "config.json"))
	if err != nil {
		return fmt.Errorf("write tiny bundle: %w", err)
	}
	for i, aspect := range BundleAspects {
		_, adapter, pred := BundleLayout(dir, aspect)
		if err := WriteTinyAdapter(adapter, modelDir, o.Seed+int64(100+i)); err != nil {
			return err
		}
		xc := xlstm.DefaultConfig(cfg.Text.VocabSize)
		xc.EmbeddingDim, xc.NumHeads, xc.SLSTMHeads, xc.HeadHidden, xc.ContextLength = 32, 2, 2, 16, 512
		p, err := xlstm.New(xc, o.Seed+int64(200+i), gotch.CPU)
		if err != nil {
			return fmt.Errorf("write tiny bundle: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(pred), 0o755); err != nil {
			return fmt.Errorf("write tiny bundle: %w", err)
		}
		var sd []tensorio.Named
		for _, n := range p.StateDict() {
			sd = append(sd, tensorio.Named{Name: n.Name, Tensor: n.Tensor})
		}
		// the frozen MLLM's tensors a Lightning checkpoint of the reference
		// also holds are not written: the loader ignores them anyway
		if err := torch.Run("minicpmv", false, func() error { return tensorio.WriteCheckpoint(pred, sd, 11, 1234) }); err != nil {
			return fmt.Errorf("write tiny bundle: %w", err)
		}
	}
	return nil
}
