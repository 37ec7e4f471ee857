package cli

import "github.com/spf13/cobra"

// newServeCmd builds `m3gate serve`: the daemon with its HTTP/WS API.
func newServeCmd(app *App) *cobra.Command {
	return notImplementedCmd("serve", "Run the m3gate daemon (HTTP/WS API for the ComfyUI node pack)", 6)
}
