package cli

import "github.com/spf13/cobra"

// newModelFetchCmd builds `m3gate model fetch`.
func newModelFetchCmd(app *App) *cobra.Command {
	return notImplementedCmd("fetch NAME|REPO", "Download a model directory from the Hugging Face Hub", 3)
}
