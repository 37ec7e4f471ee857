package cli

import "github.com/spf13/cobra"

// newFinetuneCmd builds `m3gate finetune`: LoRA fine-tuning of the local
// MLLM, run by the m3gate-sidecar binary (`m3gate-sidecar finetune ...`).
func newFinetuneCmd(app *App) *cobra.Command {
	return sidecarJobCmd(app, "finetune", "Fine-tune a LoRA adapter of the local MLLM for one aspect",
		`Fine-tune a LoRA adapter of the local MLLM on the two-round conversations
(describe, then rate), with the loss on the assistant tokens of both turns
only: AdamW, cosine schedule with linear warmup, gradient accumulation and
clipping, periodic PEFT checkpoints with optimiser state (--resume continues
exactly where a run stopped), validation loss and rating-word accuracy,
metrics in OUT/metrics.jsonl. Runs in the m3gate-sidecar binary; all flags
are passed through (m3gate finetune --help lists them).

  m3gate finetune --model DIR --data conversations.jsonl --images DIR \
      --aspect quality --out adapters/quality [--lora-r 64 --lora-alpha 64
      --lora-dropout 0.05 --lr 2e-6 --epochs 1 --batch-size 1 --grad-accum 8
      --warmup-ratio 0.01 --max-grad-norm 1 --save-every 500 --resume]`)
}

// sidecarJobCmd is a subcommand that the sidecar binary runs: every
// argument and flag after the command word is passed to
// `m3gate-sidecar WORD ...` unchanged, --help included.
func sidecarJobCmd(app *App, word, short, long string) *cobra.Command {
	return &cobra.Command{
		Use:                word + " [flags]",
		Short:              short,
		Long:               long,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return RunSidecar(cmd.Context(), app, append([]string{word}, args...)...)
		},
	}
}
