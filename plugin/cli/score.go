package cli

import "github.com/spf13/cobra"

// newScoreCmd builds `m3gate score`: score images on the selected aspects.
func newScoreCmd(app *App) *cobra.Command {
	return notImplementedCmd("score IMAGE...", "Score images with M3-AGIQA on the configured aspects", 4)
}
