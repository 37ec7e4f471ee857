package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/config"
	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/review"
	"github.com/m3gate/m3gate/plugin/server"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// newServeCmd builds `m3gate serve`: the daemon with its HTTP/WS API.
func newServeCmd(app *App) *cobra.Command {
	var listen, model, queueURL, device string
	var threads int
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the m3gate daemon (HTTP/WS API for the ComfyUI node pack)",
		Long: `serve runs the m3gate daemon: it starts the model process (m3gate-sidecar),
loads the configured model and answers the node pack and pipelines on
daemon.listen:

  POST /v1/score    images (multipart "image" fields or JSON base64/paths) → scores
  POST /v1/reroll   re-queue a ComfyUI prompt with new seeds
  GET  /healthz, /readyz, /v1/status, /metrics (Prometheus), websocket /v1/events
  GET  /            the review page: scored images, what-if thresholds, status

A crashed model process is restarted automatically. SIGINT or SIGTERM stops
the daemon and the model process.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("device") {
				app.Config.Model.Device = device
			}
			if cmd.Flags().Changed("threads") {
				if threads < 0 {
					return &UsageError{Err: fmt.Errorf("serve: --threads %d: want 0 (one per core) or more", threads)}
				}
				app.Config.Model.Threads = threads
			}
			return runServe(cmd.Context(), app, listen, model, queueURL)
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "cpu, cuda or cuda:N (default model.device)")
	cmd.Flags().IntVar(&threads, "threads", 0, "libtorch intra-op threads, 0 = one per core (default model.threads)")
	cmd.Flags().StringVar(&queueURL, "queue", "", "score through a NATS JetStream queue: embedded or nats://URL (default queue.url; see m3gate worker)")
	cmd.Flags().StringVar(&listen, "listen", "", "host:port to listen on (default daemon.listen)")
	cmd.Flags().StringVar(&model, "model", "", "model directory (default model.dir)")
	return cmd
}

// runServe runs the daemon until ctx ends (SIGINT/SIGTERM), then stops the
// HTTP server, the websockets and the model process.
func runServe(ctx context.Context, app *App, listen, model, queueURL string) error {
	cfg := app.Config
	if listen == "" {
		listen = cfg.Daemon.Listen
	}
	load, err := serveLoadRequest(cfg.Model, model)
	if err != nil {
		return err
	}
	bin, err := LocateSidecar(app.Env, cfg.Sidecar.Path)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defaults, err := serveDefaults(cfg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "m3gate",
		Level:      hclog.LevelFromString(cfg.Log.Level),
		JSONFormat: cfg.Log.Format == "json",
		Output:     app.Stderr,
	})

	// Bind first: a busy port fails at once, before the model process
	// starts and loads.
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", listen, err)
	}
	defer lis.Close()

	// The server publishes the supervisor's state changes; the supervisor
	// starts first, so the callback finds the server through a pointer.
	var srvPtr atomic.Pointer[server.Server]
	sup, err := supervisor.Start(supervisor.Config{
		Path:             bin,
		Args:             []string{"--max-batch", strconv.Itoa(max(1, cfg.Scoring.BatchSize)), "--log-level", cfg.Log.Level},
		Load:             load,
		StartTimeout:     cfg.Sidecar.StartTimeout,
		LoadStallTimeout: cfg.Sidecar.LoadStallTimeout,
		BusyTimeout:      cfg.Sidecar.BusyTimeout,
		BackoffMax:       cfg.Sidecar.RestartBackoffMax,
		ReadyTimeout:     cfg.Daemon.RequestTimeout,
		Logger:           logger.Named("supervisor"),
		OnState: func(st schemas.State, err error) {
			if s := srvPtr.Load(); s != nil {
				s.PublishState(st, err)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := sup.Close(cctx); err != nil {
			logger.Error("stop model process", "error", err)
		}
	}()

	// With a queue, requests become jobs and the model process works
	// queue jobs like any worker.
	q, err := startServeQueue(ctx, app, queueURL, sup, logger)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer q.Close()
	var scorer server.Scorer = sup
	var registry *prometheus.Registry
	if q != nil {
		scorer, registry = q.producer, q.registry
	}

	srv, err := server.New(server.Config{
		Scorer:         scorer,
		Registry:       registry,
		Requeuer:       &comfyRequeuer{clients: map[string]*comfyui.Client{}},
		ComfyUIServers: cfg.ComfyUI.Servers,
		QueueSize:      cfg.Daemon.QueueSize,
		RequestTimeout: cfg.Daemon.RequestTimeout,
		Defaults:       defaults,
		Gate:           review.Gate{Thresholds: cfg.Scoring.Thresholds, Mode: cfg.Scoring.Gate},
		Logger:         logger.Named("http"),

		MaxImageBytes:    int64(cfg.Daemon.MaxImageBytes),
		MaxImages:        cfg.Daemon.MaxImages,
		MaxInflightBytes: int64(cfg.Daemon.MaxInflightBytes),
		BodyTimeout:      cfg.Daemon.BodyTimeout,
		MinUploadRate:    int64(cfg.Daemon.MinUploadRate),
		MaxNewTokens:     config.MaxNewTokensMax,
		Token:            cfg.Daemon.Token,
		ListenHost:       listenHost(listen),
		AllowedHosts:     cfg.Daemon.AllowedHosts,
		AllowedOrigins:   cfg.Daemon.AllowedOrigins,
		AllowPaths:       cfg.Daemon.AllowPaths,
		PathRoots:        cfg.Daemon.PathRoots,
		MaxSubscribers:   cfg.Daemon.MaxSubscribers,
	})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	srvPtr.Store(srv)
	defer srv.Close()

	// Bodies get their own deadlines (daemon.body_timeout, min_upload_rate)
	// per request; headers must arrive quickly; idle keep-alives are closed.
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(lis) }()
	fmt.Fprintf(app.Stderr, "m3gate daemon listening on http://%s (model %s, sidecar %s)\n", lis.Addr(), load.ModelDir, bin)
	if !loopbackOnly(listen) && cfg.Daemon.Token == "" {
		const warn = "listening beyond loopback without a token: every machine that reaches this port can score images and queue prompts on ComfyUI; set daemon.token (or $M3GATE_DAEMON_TOKEN) and send it from the node pack"
		logger.Warn(warn, "listen", listen)
		fmt.Fprintf(app.Stderr, "WARNING: %s\n", warn)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down", "grace", cfg.Daemon.ShutdownGrace)
	srv.Close() // websockets are hijacked: Shutdown does not wait for them
	// Requests in flight get the grace period to finish; then the rest are
	// answered 503 (Abort) and given a moment to write it.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Daemon.ShutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		logger.Warn("requests still in flight after the grace period: answering them 503")
		srv.Abort()
		actx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := hs.Shutdown(actx); err != nil {
			hs.Close()
		}
	}
	return nil
}

// listenHost is the host part of a listen address.
func listenHost(listen string) string {
	h, _, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	return h
}

// loopbackOnly reports whether a listen address is reachable only from
// this machine.
func loopbackOnly(listen string) bool {
	h := listenHost(listen)
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// serveLoadRequest builds the model process's Load from the config, with
// absolute paths (the sidecar does not share our working directory).
func serveLoadRequest(m config.Model, modelFlag string) (schemas.LoadRequest, error) {
	dir := m.Dir
	if modelFlag != "" {
		dir = modelFlag
	}
	if dir == "" {
		return schemas.LoadRequest{}, &UsageError{Err: errors.New("serve: no model directory: set model.dir in config.yaml or pass --model DIR")}
	}
	dir = abs(dir)
	if err := checkModelDir(dir); err != nil {
		return schemas.LoadRequest{}, fmt.Errorf("serve: model directory %s %w\n%s", dir, err, modelHelp)
	}
	req := schemas.LoadRequest{ModelDir: dir, Family: m.Family, Device: m.Device, DType: m.DType, Threads: m.Threads}
	req.Options = loadOptions(m)
	for a, p := range m.Adapters {
		if req.Adapters == nil {
			req.Adapters = map[string]string{}
		}
		req.Adapters[a] = abs(p)
	}
	for a, p := range m.Predictors {
		if req.Predictors == nil {
			req.Predictors = map[string]string{}
		}
		req.Predictors[a] = abs(p)
	}
	return req, nil
}

// serveDefaults are the score options a request leaves out: the configured
// aspects, max_new_tokens, and the default conversation prompts of every
// aspect.
func serveDefaults(cfg config.Config) (schemas.ScoreOptions, error) {
	o := schemas.ScoreOptions{Aspects: cfg.Scoring.Aspects, MaxNewTokens: cfg.Model.MaxNewTokens, Prompts: map[string]schemas.AspectPrompt{}}
	for _, a := range iqa.Aspects {
		pp, err := dataset.LookupPrompts(a, "")
		if err != nil {
			return o, err
		}
		o.Prompts[a] = schemas.AspectPrompt{Round1: pp.Round1, Round2: pp.Round2}
	}
	return o, nil
}

// comfyRequeuer queues rerolled prompts on ComfyUI servers, with one
// client per server it was asked for (at most maxRequeueClients kept). A
// server is used only once it has shown that it is a ComfyUI with the
// node pack (GET /object_info/M3Reroll), so that a reroll never posts a
// prompt to some other service.
type comfyRequeuer struct {
	mu      sync.Mutex
	clients map[string]*comfyui.Client
}

const maxRequeueClients = 32

func (r *comfyRequeuer) client(ctx context.Context, server string) (*comfyui.Client, error) {
	r.mu.Lock()
	c, ok := r.clients[server]
	r.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := comfyui.New(server)
	if err != nil {
		return nil, err
	}
	if _, err := c.ObjectInfo(ctx, nodes.ClassReroll); errors.Is(err, comfyui.ErrNotFound) {
		return nil, fmt.Errorf("%s is not a ComfyUI with the m3gate node pack (no %s in GET /object_info)", server, nodes.ClassReroll)
	} else if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if len(r.clients) < maxRequeueClients {
		r.clients[server] = c
	}
	r.mu.Unlock()
	return c, nil
}

func (r *comfyRequeuer) Requeue(ctx context.Context, server string, prompt, extraPNGInfo json.RawMessage, clientID string) (string, error) {
	c, err := r.client(ctx, server)
	if err != nil {
		return "", err
	}
	w, err := comfyui.ParseWorkflow(prompt)
	if err != nil {
		return "", err
	}
	req := comfyui.PromptRequest{Prompt: w, ClientID: clientID}
	if len(bytes.TrimSpace(extraPNGInfo)) > 0 {
		var extra map[string]any
		dec := json.NewDecoder(bytes.NewReader(extraPNGInfo))
		dec.UseNumber()
		if err := dec.Decode(&extra); err != nil {
			return "", fmt.Errorf("extra_pnginfo: %w", err)
		}
		req.ExtraData = map[string]any{"extra_pnginfo": extra}
	}
	resp, err := c.QueuePrompt(ctx, req)
	if err != nil {
		return "", err
	}
	return resp.PromptID, nil
}

// loadOptions are the family options a LoadRequest carries: model.options
// plus Idefics3's image_splitting.
func loadOptions(m config.Model) map[string]string {
	out := map[string]string{}
	for k, v := range m.Options {
		out[k] = v
	}
	// model.image_splitting overrides the model's own do_image_splitting
	// (SmolVLM's says true: up to 17 tiles, far slower than one image).
	if _, set := out["image_splitting"]; !set && (m.Family == "" || m.Family == "idefics3") {
		out["image_splitting"] = strconv.FormatBool(m.ImageSplitting)
	}
	// The prompt limit, when it is not the default the model process
	// applies by itself (idefics3; minicpmv25 bounds its own max_length).
	if _, set := out["max_prompt_tokens"]; !set && m.MaxPromptTokens > 0 && m.MaxPromptTokens != config.Default().Model.MaxPromptTokens && (m.Family == "" || m.Family == "idefics3") {
		out["max_prompt_tokens"] = strconv.Itoa(m.MaxPromptTokens)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
