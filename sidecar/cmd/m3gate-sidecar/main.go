// Command m3gate-sidecar is m3gate's model process. Started by the m3gate
// daemon through hashicorp/go-plugin (the magic cookie is set), it serves the
// scorer contract of package schemas over gRPC. Started by hand, it runs
// offline jobs: `m3gate-sidecar model tiny --family idefics3 --out DIR`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/cmd/m3gate-sidecar/internal/stdioguard"
	"github.com/m3gate/m3gate/sidecar/service"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// subcommand is one offline job: it gets the arguments after its command
// words; its result goes to stdout, progress to stderr.
type subcommand func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// subcommands are the offline jobs, by their command words.
var subcommands = map[string]subcommand{
	"model tiny":      modelTiny,
	"finetune":        finetune,
	"train-predictor": trainPredictor,
}

func main() {
	if err := torch.SetMemory(); err != nil {
		fmt.Fprintln(os.Stderr, "m3gate-sidecar:", err) // slower, not wrong
	}
	if schemas.IsPluginProcess() {
		os.Exit(servePlugin(os.Args[1:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runOffline(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "m3gate-sidecar:", err)
		os.Exit(1)
	}
}

// runOffline dispatches an offline subcommand by its longest matching
// command words.
func runOffline(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	for n := min(2, len(args)); n >= 1; n-- {
		if f, ok := subcommands[strings.Join(args[:n], " ")]; ok {
			return f(ctx, args[n:], stdout, stderr)
		}
	}
	names := make([]string, 0, len(subcommands))
	for k := range subcommands {
		names = append(names, k)
	}
	sort.Strings(names)
	if len(args) == 0 {
		return fmt.Errorf("no subcommand (this binary is normally started by m3gate); subcommands: %s", strings.Join(names, ", "))
	}
	return fmt.Errorf("unknown subcommand %q; subcommands: %s", strings.Join(args, " "), strings.Join(names, ", "))
}

// servePlugin serves the scorer through go-plugin until the host closes the
// connection or dies. stdout is already redirected by stdioguard.
func servePlugin(args []string) int {
	fs := flag.NewFlagSet("m3gate-sidecar", flag.ContinueOnError)
	maxBatch := fs.Int("max-batch", 8, "most images per engine call when batching requests")
	level := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	parentPoll := fs.Duration("parent-poll", 500*time.Millisecond, "how often to check that the parent lives")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "m3gate-sidecar",
		Level:      hclog.LevelFromString(*level),
		JSONFormat: true,
		Output:     os.Stderr, // the real stderr: go-plugin swaps os.Stderr for a pipe later
	})
	if !stdioguard.Active {
		logger.Warn("stdout guard inactive: stray output may break the handshake")
	}
	ppid := os.Getppid()
	if v := os.Getenv(schemas.ParentPIDEnv); v != "" {
		// The host says who it is: if we are already someone else's child,
		// it died while we were starting.
		if want, err := strconv.Atoi(v); err == nil && want != ppid {
			logger.Warn("parent process died before the handshake; exiting", "parent_pid", want)
			return 1
		}
	}
	go watchParent(logger, ppid, *parentPoll)

	svc := service.New(engine, service.Config{MaxBatch: *maxBatch, Logger: logger.Named("service")})
	defer svc.Close()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: schemas.Handshake,
		Plugins:         schemas.PluginMap(svc),
		GRPCServer:      schemas.NewGRPCServer,
		Logger:          logger,
	})
	logger.Info("host closed the connection; exiting")
	return 0
}

// watchParent exits the process when its parent dies (the host was killed):
// the sidecar is then re-parented and its parent pid changes.
func watchParent(logger hclog.Logger, ppid int, every time.Duration) {
	if ppid <= 1 {
		return
	}
	for range time.Tick(every) {
		if os.Getppid() != ppid {
			logger.Warn("parent process died; exiting", "parent_pid", ppid)
			os.Exit(1)
		}
	}
}
