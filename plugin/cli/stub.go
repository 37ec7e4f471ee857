package cli

import "github.com/spf13/cobra"

// notImplementedCmd returns a placeholder subcommand that accepts any
// arguments and flags and fails with NotImplementedError naming its issue.
// The subcommand's owner replaces it with the real command in its own file.
func notImplementedCmd(use, short string, issue int) *cobra.Command {
	cmd := &cobra.Command{
		Use:                use,
		Short:              short + " (not implemented yet)",
		Args:               cobra.ArbitraryArgs,
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return NotImplemented(commandName(cmd), issue)
	}
	return cmd
}

// commandName returns the command path without the root, e.g. "model tiny".
func commandName(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return cmd.Name()
	}
	path := cmd.CommandPath()
	root := cmd.Root().Name() + " "
	if len(path) > len(root) {
		return path[len(root):]
	}
	return path
}
