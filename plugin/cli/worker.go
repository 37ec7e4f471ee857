package cli

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/supervisor"
)

// newWorkerCmd builds `m3gate worker`: score jobs from the queue.
func newWorkerCmd(app *App) *cobra.Command {
	var url, name, model string
	cmd := &cobra.Command{
		Use:   "worker --queue nats://HOST:4222",
		Short: "Score jobs from the NATS JetStream queue with a local model process",
		Long: `worker starts its own model process (m3gate-sidecar, on model.device) and
scores the jobs that m3gate serve and m3gate run publish to the queue: it pulls
up to scoring.batch_size jobs at a time from the durable consumer all workers
share, keeps long jobs alive while scoring, records one result per job and
acks only then. Jobs it could not score because its model process restarted
go back to the queue after queue.nak_delay. Run one worker per GPU.

SIGINT or SIGTERM drains the worker: it finishes the jobs it holds, takes no
new ones, stops its model process and exits 0.`,
		Example: `  m3gate worker --queue nats://10.0.0.1:4222
  m3gate worker --queue nats://n1:4222,nats://n2:4222,nats://n3:4222 --name gpu4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWorker(cmd.Context(), app, url, name, model)
		},
	}
	cmd.Flags().StringVar(&url, "queue", "", "NATS URL(s), comma-separated (default queue.url; embedded means queue.listen)")
	cmd.Flags().StringVar(&name, "name", "", "worker name in results and metrics (default host-pid)")
	cmd.Flags().StringVar(&model, "model", "", "model directory (default model.dir)")
	return cmd
}

func runWorker(ctx context.Context, app *App, url, name, model string) error {
	cfg := app.Config
	if url == "" && cfg.Queue.URL == "" {
		return &UsageError{Err: fmt.Errorf("worker: %w", errNoQueue)}
	}
	load, err := serveLoadRequest(cfg.Model, model)
	if err != nil {
		return err
	}
	bin, err := LocateSidecar(app.Env, cfg.Sidecar.Path)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name: "m3gate", Level: hclog.LevelFromString(cfg.Log.Level),
		JSONFormat: cfg.Log.Format == "json", Output: app.Stderr,
	})
	client, err := connectQueue(ctx, cfg.Queue, url, "m3gate worker", nil)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer client.Close()
	sup, err := supervisor.Start(supervisor.Config{
		Path:             bin,
		Args:             []string{"--max-batch", strconv.Itoa(max(1, cfg.Scoring.BatchSize)), "--log-level", cfg.Log.Level},
		Load:             load,
		StartTimeout:     cfg.Sidecar.StartTimeout,
		LoadStallTimeout: cfg.Sidecar.LoadStallTimeout,
		BusyTimeout:      cfg.Sidecar.BusyTimeout,
		BackoffMax:       cfg.Sidecar.RestartBackoffMax,
		ReadyTimeout:     cfg.Queue.AckWait,
		Logger:           logger.Named("supervisor"),
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := sup.Close(cctx); err != nil {
			logger.Error("stop model process", "error", err)
		}
	}()
	// Take jobs only once the model is loaded.
	if err := sup.WaitReady(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("worker: %w", err)
	}
	w, err := newQueueWorker(ctx, app, client, sup, name, logger)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	fmt.Fprintf(app.Stderr, "m3gate worker ready: model %s, sidecar pid %d, batches of %d\n", load.ModelDir, sup.Pid(), max(1, cfg.Scoring.BatchSize))
	if err := w.Run(ctx); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	st := w.Stats()
	fmt.Fprintf(app.Stderr, "m3gate worker drained: %d scored, %d failed, %d duplicates, %d handed back, %d redelivered\n",
		st.Scored, st.Failed, st.Duplicates, st.Naks, st.Redelivered)
	return nil
}
