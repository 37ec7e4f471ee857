package cli

import "github.com/spf13/cobra"

// newFinetuneCmd builds `m3gate finetune`: train LoRA adapters per aspect.
func newFinetuneCmd(app *App) *cobra.Command {
	return notImplementedCmd("finetune", "Fine-tune a LoRA adapter of the local MLLM for one aspect", 5)
}
