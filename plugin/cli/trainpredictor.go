package cli

import "github.com/spf13/cobra"

// newTrainPredictorCmd builds `m3gate train-predictor`: train the xLSTM
// predictor, run by the m3gate-sidecar binary.
func newTrainPredictorCmd(app *App) *cobra.Command {
	return sidecarJobCmd(app, "train-predictor", "Train the xLSTM score predictor for one aspect",
		`Train the xLSTM score predictor of one aspect. The inputs are the final
hidden states of the three-message prefix (round 1 with the image, the
description, the round-2 question) of the MLLM with the aspect's LoRA
adapter: teacher descriptions for training, the model's own greedy
descriptions for validation (as the paper), truncated to --max-len and
cached on disk so a rerun does not recompute them. MSE on raw MOS, AdamW;
the checkpoint with the best validation SRCC is kept (OUT/best.safetensors),
per-epoch metrics go to OUT/metrics.jsonl, --resume continues after the last
finished epoch. Runs in the m3gate-sidecar binary; all flags are passed
through (m3gate train-predictor --help lists them).

  m3gate train-predictor --model DIR --adapter adapters/quality \
      --data conversations.jsonl --images DIR --labels data.csv \
      --aspect quality --out predictors/quality [--epochs 20 --lr 1e-5
      --weight-decay 1e-5 --max-len 512 --resume]`)
}
