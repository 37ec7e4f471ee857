package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/config"
)

// newConfigCmd builds `m3gate config` with print.
func newConfigCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Configuration tools",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "print",
		Short: "Print the effective configuration (file + environment overrides) as YAML",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := app.Config
			if c.Daemon.Token != "" {
				c.Daemon.Token = "(set, not shown)" // the token is never printed or logged
			}
			b, err := config.Marshal(c)
			if err != nil {
				return fmt.Errorf("config print: %w", err)
			}
			src := app.ConfigPath
			if src == "" {
				src = "built-in defaults"
			}
			fmt.Fprintf(app.Stdout, "# effective m3gate configuration (from %s + environment)\n", src)
			_, err = app.Stdout.Write(b)
			return err
		},
	})
	return cmd
}
