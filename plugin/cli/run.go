package cli

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/pipeline"
	"github.com/m3gate/m3gate/schemas/api"
)

// newRunCmd builds `m3gate run`: queue, watch, score and reroll ComfyUI prompts.
func newRunCmd(app *App) *cobra.Command {
	var (
		servers, thresholds, seedNodes []string
		aspects                        []string
		count, maxTries, parallel      int
		mode, out, prompt, daemon      string
		queueURL                       string
		keepRejected, resume           bool
		randSeed                       uint64
	)
	cmd := &cobra.Command{
		Use:   "run WORKFLOW.json",
		Short: "Queue a ComfyUI workflow, score its images and reroll failures",
		Long: `Run an API-format ComfyUI workflow ("Save (API Format)" in ComfyUI) on one or
more ComfyUI servers until --count images pass the quality gate. Every try
gets fresh seeds on the sampler nodes (every seed/noise_seed input, or the
nodes named with --seed-node); each output image is scored by the m3gate
daemon (m3gate serve) against the workflow's positive prompt; a job whose
image falls below a threshold is rerolled, up to --max-tries prompts.

Accepted images are written to --out as PNG with their scores, seed, attempt
and prompt id in an iTXt (UTF-8) chunk "m3gate"; results.jsonl gets one line per image,
accepted or not. A ComfyUI restart during the run is survived: prompts the
server lost are queued again; a server unreachable for long hands its jobs to
the others. With --resume, a run into the same --out continues an earlier one.`,
		Example: `  m3gate run workflow_api.json --server http://127.0.0.1:8188 --count 4 --threshold quality=3.5 --max-tries 5 --out out/
  m3gate run wf.json --server http://gpu1:8188 --server http://gpu2:8188 --count 100 \
      --threshold quality=3.5 --threshold correspondence=3 --mode any --out night/`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return &UsageError{Err: fmt.Errorf("run: %w", err)}
			}
			wf, err := comfyui.ParseWorkflow(data)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("run: %s: %w", args[0], err)}
			}
			sc := app.Config.Scoring
			if !cmd.Flags().Changed("server") {
				servers = app.Config.ComfyUI.Servers
			}
			th := map[string]float64{}
			if cmd.Flags().Changed("threshold") {
				if th, err = pipeline.ParseThresholds(thresholds); err != nil {
					return &UsageError{Err: fmt.Errorf("run: %w", err)}
				}
			}
			if !cmd.Flags().Changed("aspects") {
				aspects = nil
				if len(th) == 0 {
					aspects = sc.Aspects
					for _, a := range sc.Aspects {
						if v, ok := sc.Thresholds[a]; ok {
							th[a] = v
						}
					}
				}
			}
			if !cmd.Flags().Changed("mode") {
				mode = sc.Gate
			}
			m, err := pipeline.ParseMode(mode)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("run: %w", err)}
			}
			if !cmd.Flags().Changed("max-tries") {
				maxTries = sc.MaxRerolls + 1
			}
			if daemon == "" {
				daemon = app.Getenv(api.EnvDaemonURL)
			}
			if daemon == "" {
				daemon = daemonURL(app.Config.Daemon.Listen)
			}
			var copts []comfyui.Option
			if lo, hi := app.Config.ComfyUI.ReconnectMin, app.Config.ComfyUI.ReconnectMax; lo > 0 && hi >= lo {
				copts = append(copts, comfyui.WithBackoff(lo, hi))
			}
			// The progress bar and the log lines share stderr: log lines go
			// above the bar, never onto its line; no bar off a terminal.
			status := newStatusLine(app.Stderr)
			defer status.Clear()
			logger := NewLogger(app.Config.Log, status)
			copts = append(copts, comfyui.WithLogger(logger))
			var scorer pipeline.Scorer
			if queueURL != "" || app.Config.Queue.URL != "" {
				qs, err := newRunQueueScorer(cmd.Context(), app, queueURL, pipeline.Gate{Thresholds: th, Mode: m})
				if err != nil {
					return fmt.Errorf("run: %w", err)
				}
				defer qs.Close()
				scorer = qs
			} else {
				// Without a daemon every image would be made for nothing:
				// check it before queueing anything.
				// daemon.token is also set by $M3GATE_DAEMON_TOKEN (config env).
				ds := &pipeline.DaemonScorer{URL: daemon, Token: app.Config.Daemon.Token}
				if err := ds.Ping(cmd.Context(), daemonStartWait); err != nil {
					return fmt.Errorf("run: %w", err)
				}
				scorer = ds
			}
			cfg := pipeline.Config{
				Workflow: wf, Servers: servers, Count: count, MaxTries: maxTries,
				Gate:    pipeline.Gate{Thresholds: th, Mode: m},
				Aspects: aspects, SeedNodes: seedNodes, Prompt: prompt, OutDir: out, KeepRejected: keepRejected, Resume: resume,
				Scorer:   scorer,
				Progress: barWriter{status}, Parallel: parallel, RandSeed: randSeed,
				ClientOptions: copts, Log: logger,
			}
			start := time.Now()
			sum, err := pipeline.Run(cmd.Context(), cfg)
			status.Clear()
			if sum != nil {
				fmt.Fprintf(app.Stdout, "accepted %d/%d images in %s (%d prompts, %d rejected, %d failed, %d resubmitted after a server restart, %d resumed)\n",
					len(sum.Accepted), count, time.Since(start).Round(time.Second), sum.Prompts, sum.Rejected, sum.Failed, sum.Resubmitted, sum.Resumed)
				for _, f := range sum.Accepted {
					fmt.Fprintln(app.Stdout, f)
				}
			}
			if err != nil {
				if strings.HasPrefix(err.Error(), "run: ") {
					return err
				}
				return fmt.Errorf("run: %w", err)
			}
			if !sum.Complete(count) {
				return &ExitCodeError{Code: 1, Err: fmt.Errorf("run: only %d of %d images passed the gate (%s); %d jobs used all %d tries",
					len(sum.Accepted), count, describeGate(cfg.Gate), sum.Exhausted, maxTries)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&servers, "server", nil, "ComfyUI base URL (repeatable; default comfyui.servers from the config)")
	f.IntVar(&count, "count", 1, "number of accepted images wanted")
	f.StringArrayVar(&thresholds, "threshold", nil, "minimum MOS per aspect, e.g. quality=3.5 (repeatable; default scoring.thresholds)")
	f.StringSliceVar(&aspects, "aspects", nil, "aspects to score (default: the thresholded ones, or scoring.aspects)")
	f.StringVar(&mode, "mode", "", "gate mode: all thresholds must pass, or any (default scoring.gate)")
	f.IntVar(&maxTries, "max-tries", 0, "prompts per job before giving up (default scoring.max_rerolls+1)")
	f.StringVar(&out, "out", "m3gate-out", "output folder for accepted images and results.jsonl")
	f.StringArrayVar(&seedNodes, "seed-node", nil, "node id whose seed is rerolled (repeatable; default every seed input)")
	f.StringVar(&prompt, "prompt", "", "prompt text to score against (default: the text feeding the sampler's positive input)")
	f.StringVar(&daemon, "daemon", "", "m3gate daemon URL (default $M3GATE_URL, else http://<daemon.listen>)")
	f.StringVar(&queueURL, "queue", "", "publish score jobs to a NATS JetStream queue instead of the daemon: nats://URL or embedded (default queue.url)")
	f.IntVar(&parallel, "parallel", 2, "prompts in flight per server")
	f.BoolVar(&keepRejected, "keep-rejected", false, "also write rejected images, under OUT/rejected")
	f.BoolVar(&resume, "resume", false, "count images already accepted in OUT (per its results.jsonl) toward --count")
	f.Uint64Var(&randSeed, "rand-seed", 0, "seed of the seed generator, for reproducible runs (0: random)")
	return cmd
}

// daemonStartWait is how long `m3gate run` waits for a daemon that does
// not answer yet (one started just before) before giving up.
const daemonStartWait = 5 * time.Second

// daemonURL turns the daemon's listen address into a URL to call.
func daemonURL(listen string) string {
	if strings.Contains(listen, "://") {
		return listen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func describeGate(g pipeline.Gate) string {
	if len(g.Thresholds) == 0 {
		return "no thresholds"
	}
	keys := make([]string, 0, len(g.Thresholds))
	for k := range g.Thresholds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s≥%g", k, g.Thresholds[k])
	}
	return string(g.Mode) + " of " + strings.Join(parts, ", ")
}
