package cli

import "github.com/spf13/cobra"

// newDistillCmd builds `m3gate distill`: teacher descriptions from an online MLLM.
func newDistillCmd(app *App) *cobra.Command {
	return notImplementedCmd("distill", "Collect per-aspect descriptions from an online teacher MLLM", 5)
}
