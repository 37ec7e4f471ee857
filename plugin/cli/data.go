package cli

import "github.com/spf13/cobra"

// newDataCmd builds `m3gate data` and its subcommands.
func newDataCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Dataset tools",
	}
	cmd.AddCommand(notImplementedCmd("convert", "Convert a dataset's labels into m3gate's manifest", 5))
	return cmd
}
