package cli

import "github.com/spf13/cobra"

// newRunCmd builds `m3gate run`: queue, watch, score and reroll ComfyUI prompts.
func newRunCmd(app *App) *cobra.Command {
	return notImplementedCmd("run WORKFLOW", "Queue a ComfyUI workflow, score its images and reroll failures", 7)
}
