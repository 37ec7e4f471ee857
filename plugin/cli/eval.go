package cli

import "github.com/spf13/cobra"

// newEvalCmd builds `m3gate eval`: SRCC/PLCC/KRCC on a test split.
func newEvalCmd(app *App) *cobra.Command {
	return notImplementedCmd("eval", "Evaluate scores against a dataset's MOS (SRCC, PLCC, KRCC)", 5)
}
