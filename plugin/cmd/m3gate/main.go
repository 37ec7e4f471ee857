// Command m3gate is the CLI and daemon of m3gate: it scores AI-generated
// images with M3-AGIQA and gates ComfyUI generations. The model runs in the
// m3gate-sidecar process; this binary is pure Go.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/m3gate/m3gate/plugin/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Environ())
	stop()
	os.Exit(code)
}
