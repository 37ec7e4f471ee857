// Package cli implements the m3gate command line: a cobra root command with
// one file per top-level subcommand. Each subcommand file defines a
// constructor newXxxCmd(app *App) *cobra.Command that root.go registers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/config"
)

// ConfigEnv names the config file when --config is not given.
const ConfigEnv = "M3GATE_CONFIG"

// DefaultConfigFile is the config file read when --config is not given and
// it exists in the working directory.
const DefaultConfigFile = "config.yaml"

// Exit codes of m3gate.
const (
	ExitOK          = 0
	ExitError       = 1   // the command failed
	ExitUsage       = 2   // bad flags or arguments
	ExitInterrupted = 130 // stopped by SIGINT or SIGTERM (ctx cancelled)
)

// App is the state shared by all subcommands: I/O streams, environment and
// the effective configuration (loaded before any subcommand runs).
type App struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Env is the process environment as KEY=VALUE pairs (os.Environ()).
	Env []string

	// ConfigFlag is the value of --config ("" when not given).
	ConfigFlag string
	// ConfigPath is the file the configuration was loaded from; "" means
	// built-in defaults plus environment overrides.
	ConfigPath string
	// Config is the effective configuration.
	Config config.Config
	// Logger logs to Stderr with the configured level and format.
	Logger *slog.Logger
}

// Getenv returns the value of the environment variable key in a.Env.
func (a *App) Getenv(key string) string {
	v, _ := lookupEnv(a.Env, key)
	return v
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		kv := env[i]
		if len(kv) > len(key) && kv[len(key)] == '=' && kv[:len(key)] == key {
			return kv[len(key)+1:], true
		}
	}
	return "", false
}

// ProfileFile is the profile `m3gate model fetch m3-agiqa` writes; when it
// exists and no config file is named, it is read instead of
// DefaultConfigFile.
const ProfileFile = "models/m3-agiqa/config.yaml"

// loadConfig resolves --config (default: the M3-AGIQA profile when fetched,
// else ./config.yaml when present) and loads it.
func (a *App) loadConfig() error {
	path, from := a.ConfigFlag, "--config"
	if path == "" {
		if p, set := lookupEnv(a.Env, ConfigEnv); set {
			if p == "" {
				return fmt.Errorf("$%s is set but empty: name a config file or unset it", ConfigEnv)
			}
			path, from = p, "$"+ConfigEnv
		} else {
			if st, err := os.Stat(ProfileFile); err == nil && !st.IsDir() {
				path = ProfileFile
				fmt.Fprintf(a.Stderr, "m3gate: using the M3-AGIQA profile %s (--config config.yaml for the default settings)\n", ProfileFile)
			}
		}
	}
	if path == "" {
		if st, err := os.Stat(DefaultConfigFile); err == nil && !st.IsDir() {
			path = DefaultConfigFile
		}
	}
	if path != "" && path != DefaultConfigFile && path != ProfileFile {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("config file %s (from %s): %w", path, from, err)
		}
	}
	c, err := config.Load(path, a.Env)
	if err != nil {
		return err
	}
	a.ConfigPath = path
	a.Config = c
	a.Logger = NewLogger(c.Log, a.Stderr)
	return nil
}

// NewRootCmd builds the m3gate command tree bound to app.
func NewRootCmd(app *App) *cobra.Command {
	root := &cobra.Command{
		Use:   "m3gate",
		Short: "Score AI-generated images with M3-AGIQA and gate ComfyUI generations",
		Long: `m3gate scores AI-generated images with M3-AGIQA (multimodal, multi-round,
multi-aspect quality assessment) and gates ComfyUI generations: images that
score below a threshold are filtered out or re-generated with a new seed.

Configuration comes from --config, else $M3GATE_CONFIG, else ./config.yaml
when present, else built-in defaults; M3GATE_<SECTION>_<KEY> environment
variables override it.`,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
		SilenceErrors:     true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return app.loadConfig()
		},
	}
	root.SetIn(app.Stdin)
	root.SetOut(app.Stdout)
	root.SetErr(app.Stderr)
	root.PersistentFlags().StringVar(&app.ConfigFlag, "config", "",
		"config file (default $M3GATE_CONFIG, else ./config.yaml if present, else built-in defaults)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &UsageError{Err: err}
	})
	root.AddCommand(
		newScoreCmd(app),
		newServeCmd(app),
		newWorkerCmd(app),
		newRunCmd(app),
		newDistillCmd(app),
		newFinetuneCmd(app),
		newTrainPredictorCmd(app),
		newEvalCmd(app),
		newReportCmd(app),
		newModelCmd(app),
		newDataCmd(app),
		newConfigCmd(app),
	)
	return root
}

// Execute runs m3gate with args (without the program name) and returns the
// process exit code. Errors are printed to stderr.
func Execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env []string) int {
	app := &App{Stdin: stdin, Stdout: stdout, Stderr: stderr, Env: env}
	root := NewRootCmd(app)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var exitErr *ExitCodeError
	switch {
	case errors.As(err, &exitErr):
		// A subprocess already reported its own error on our stderr.
		if exitErr.Err != nil {
			fmt.Fprintf(stderr, "m3gate: %v\n", exitErr.Err)
		}
		return exitErr.Code
	}
	fmt.Fprintf(stderr, "m3gate: %v\n", err)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return ExitInterrupted
	}
	var ue *UsageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		fmt.Fprintln(stderr, "Run 'm3gate --help' for usage.")
		return ExitUsage
	}
	return ExitError
}
