// Package server is the m3gate daemon's HTTP API: POST /v1/score, POST
// /v1/reroll, GET /healthz, /readyz, /v1/status, /metrics and the
// /v1/events websocket.
// It scores through the Scorer interface (satisfied by
// *supervisor.Supervisor) and re-queues ComfyUI prompts through Requeuer, so
// it is testable on its own.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/review"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// Scorer scores images; *supervisor.Supervisor implements it.
type Scorer interface {
	// Score scores req; cancelling ctx returns at once.
	Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error)
	// State is the model process's state.
	State() schemas.State
	// Restarts counts restarts of the model process.
	Restarts() int
}

// StatusReporter is implemented by scorers that can describe the model
// process (load progress, memory, model info); *supervisor.Supervisor does.
// GET /v1/status answers it when the Scorer implements it.
type StatusReporter interface {
	Status(ctx context.Context) (schemas.Status, error)
}

// Config configures a Server.
type Config struct {
	// Scorer does the scoring (required).
	Scorer Scorer
	// Requeuer re-queues prompts on ComfyUI for /v1/reroll; nil answers 501.
	Requeuer Requeuer
	// ComfyUIServers are the configured ComfyUI servers (comfyui.servers):
	// a reroll goes to the server the node pack names, or to the first of
	// these when it names none.
	ComfyUIServers []string
	// QueueSize is how many score requests may be admitted at once (running
	// or waiting); more get 429 with Retry-After. Default 16.
	QueueSize int
	// MaxImageBytes bounds one image (decoded data or a file read).
	// Default 32 MiB.
	MaxImageBytes int64
	// MaxImages bounds the images of one request. Default 64.
	MaxImages int
	// MaxBodyBytes bounds a score request body. Default: MaxImages x
	// MaxImageBytes as base64, plus 1 MiB for the rest of the request.
	MaxBodyBytes int64
	// MaxInflightBytes bounds the request-body bytes held at once across
	// requests; past it a request is refused with 429. Default 512 MiB.
	MaxInflightBytes int64
	// BodyTimeout bounds the reading of one body. Default 2 minutes.
	BodyTimeout time.Duration
	// MinUploadRate is the slowest a body may arrive, bytes/s averaged
	// after its first 5 s; slower bodies are cut off with 408. 0: none.
	MinUploadRate int64
	// MaxNewTokens is the largest max_new_tokens a request may ask for.
	// Default 4096.
	MaxNewTokens int64
	// Token, when set, must be sent as "Authorization: Bearer <token>" on
	// every route but /healthz and /readyz.
	Token string
	// ListenHost is the host the daemon listens on; a Host header may name
	// it besides IP addresses, localhost and AllowedHosts.
	ListenHost string
	// AllowedHosts are further host names a Host header may carry.
	AllowedHosts []string
	// AllowedOrigins are browser origins besides the daemon's own that may
	// send state-changing requests and open the websocket.
	AllowedOrigins []string
	// AllowPaths lets JSON score requests name image files by path, read by
	// the daemon itself from under PathRoots.
	AllowPaths bool
	// PathRoots are the directories image paths must lie in.
	PathRoots []string
	// MaxSubscribers bounds the open /v1/events websockets. Default 256.
	MaxSubscribers int
	// RequestTimeout bounds one score request, queueing included; 0: none.
	RequestTimeout time.Duration
	// Defaults fills what a score request leaves out (aspects, prompts,
	// max_new_tokens). Without aspects there, the default is "quality".
	Defaults schemas.ScoreOptions
	// Registry receives the metrics; nil creates a private one.
	Registry *prometheus.Registry
	// Gate is the configured gate the review page starts its what-if
	// sliders from (scoring.thresholds, scoring.gate).
	Gate review.Gate
	// RecentImages is how many recently scored images (scores and a
	// thumbnail each) the daemon keeps for the review page. Default 256.
	RecentImages int
	// SeedFunc picks rerolled seeds; nil is nodes.DeriveSeed.
	SeedFunc nodes.SeedFunc
	// Logger; nil discards.
	Logger hclog.Logger
}

// Server serves the daemon API. Create it with New.
type Server struct {
	cfg            Config
	log            hclog.Logger
	slots          chan struct{}
	hub            *hub
	metrics        *metrics
	mux            *http.ServeMux
	budget         *budget
	roots          []string // PathRoots with symlinks resolved
	allowedHosts   []string // lower case
	allowedOrigins []string // lower case, no trailing slash
	aborting       context.Context
	abort          context.CancelFunc
	feed           *feed        // recent score events for the review page
	latency        atomic.Int64 // moving average of score latency, ns
	nextID         atomic.Uint64
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Scorer == nil {
		return nil, errors.New("server: no scorer")
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 16
	}
	if cfg.MaxImageBytes <= 0 {
		cfg.MaxImageBytes = 32 << 20
	}
	if cfg.MaxImages <= 0 {
		cfg.MaxImages = 64
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = int64(cfg.MaxImages)*((cfg.MaxImageBytes+2)/3*4+4<<10) + 1<<20
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = 512 << 20
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 2 * time.Minute
	}
	if cfg.MaxNewTokens <= 0 {
		cfg.MaxNewTokens = 4096
	}
	if cfg.MaxSubscribers <= 0 {
		cfg.MaxSubscribers = 256
	}
	if len(cfg.Defaults.Aspects) == 0 {
		cfg.Defaults.Aspects = []string{iqa.Quality}
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, slots: make(chan struct{}, cfg.QueueSize), hub: newHub(cfg.MaxSubscribers),
		feed: newFeed(cfg.RecentImages), budget: &budget{max: cfg.MaxInflightBytes}}
	s.aborting, s.abort = context.WithCancel(context.Background())
	for _, h := range cfg.AllowedHosts {
		s.allowedHosts = append(s.allowedHosts, strings.ToLower(h))
	}
	for _, o := range cfg.AllowedOrigins {
		s.allowedOrigins = append(s.allowedOrigins, strings.TrimSuffix(strings.ToLower(o), "/"))
	}
	for _, root := range cfg.PathRoots {
		real, err := filepath.EvalSymlinks(root)
		if err != nil {
			return nil, fmt.Errorf("server: path root %s: %w", root, err)
		}
		s.roots = append(s.roots, real)
	}
	if cfg.AllowPaths && len(s.roots) == 0 {
		return nil, errors.New("server: paths allowed but no path roots")
	}
	m, err := newMetrics(cfg.Registry, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.mux = http.NewServeMux()
	s.handle("POST /v1/score", "score", s.score)
	s.handle("POST /v1/reroll", "reroll", s.reroll)
	s.handle("GET /healthz", "healthz", s.healthz)
	s.handle("GET /readyz", "readyz", s.readyz)
	s.handle("GET /v1/events", "events", s.events)
	s.handle("GET /v1/status", "status", s.status)
	s.registerPage()
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	return s, nil
}

// Handler returns the HTTP handler of the API, with the Host, token and
// Origin checks in front of every route.
func (s *Server) Handler() http.Handler { return s.guard(s.mux) }

// Close disconnects every websocket subscriber.
func (s *Server) Close() { s.hub.close() }

// Abort ends the requests in flight: a body being read is cut off and a
// request waiting for its scores is answered 503 (the daemon is shutting
// down). Call it when the shutdown grace period has passed.
func (s *Server) Abort() { s.abort() }

// errShuttingDown is the cause of requests ended by Abort.
var errShuttingDown = errors.New("the daemon is shutting down; retry against its next start")

// PublishState pushes a model-process state change to /v1/events
// subscribers; wire it to supervisor.Config.OnState.
func (s *Server) PublishState(state schemas.State, err error) {
	ev := api.StateEvent{State: string(state)}
	if err != nil {
		ev.Error = err.Error()
	}
	s.hub.publish(api.Event{Type: api.EventState, Data: ev})
}

// QueueDepth is the number of score requests admitted and not finished.
func (s *Server) QueueDepth() int { return len(s.slots) }

// handle registers h with request counting.
func (s *Server) handle(pattern, route string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h(rw, r)
		code := strconv.Itoa(rw.code)
		if !rw.wrote && r.Context().Err() != nil {
			code = "cancelled" // the client left before its answer
		}
		s.metrics.requests.WithLabelValues(route, code).Inc()
	})
}

// statusWriter records the status code; it passes Hijack through for
// websockets.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	w.code, w.wrote = code, true
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	st := s.cfg.Scorer.State()
	code := http.StatusOK
	if st != schemas.StateReady {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"ready": st == schemas.StateReady, "state": st, "restarts": s.cfg.Scorer.Restarts()})
}

// status answers the model process's status: state, load progress,
// memory, model info and the number of restarts.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	sr, ok := s.cfg.Scorer.(StatusReporter)
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{"state": s.cfg.Scorer.State(), "restarts": s.cfg.Scorer.Restarts()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := sr.Status(ctx)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("status: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, struct {
		schemas.Status
		Restarts   int `json:"restarts"`
		HTTPQueued int `json:"http_queue_depth"`
	}{st, s.cfg.Scorer.Restarts(), s.QueueDepth()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.ErrorResponse{Error: err.Error()})
}

// retryAfter estimates in whole seconds when a slot frees up.
func (s *Server) retryAfter() string {
	avg := time.Duration(s.latency.Load())
	secs := int(math.Ceil(avg.Seconds()))
	return strconv.Itoa(min(max(secs, 1), 60))
}

func (s *Server) observeLatency(d time.Duration) {
	for {
		old := s.latency.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/8
		}
		if s.latency.CompareAndSwap(old, next) {
			return
		}
	}
}

// statusFor maps a scoring error onto an HTTP status.
func statusFor(err error) int {
	switch {
	case errors.Is(err, schemas.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, supervisor.ErrNotReady), errors.Is(err, supervisor.ErrClosed), errors.Is(err, schemas.ErrNotLoaded), errors.Is(err, schemas.ErrNoScorer):
		return http.StatusServiceUnavailable
	case errors.Is(err, supervisor.ErrProcessDied):
		return http.StatusBadGateway
	case errors.Is(err, supervisor.ErrBusyTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// hub fans events out to websocket subscribers.
type hub struct {
	mu     sync.Mutex
	subs   map[chan api.Event]struct{}
	max    int
	closed bool
}

func newHub(max int) *hub { return &hub{subs: map[chan api.Event]struct{}{}, max: max} }

// subscribe returns a channel of events; it is closed when the subscriber
// falls behind by more than its buffer, or the hub closes. It refuses
// (nil, false) when the hub is closed or full.
func (h *hub) subscribe() (chan api.Event, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || len(h.subs) >= h.max {
		return nil, false
	}
	ch := make(chan api.Event, 64)
	h.subs[ch] = struct{}{}
	return ch, true
}

func (h *hub) unsubscribe(ch chan api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[ch]; ok {
		delete(h.subs, ch)
		close(ch)
	}
}

func (h *hub) publish(ev api.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- ev:
		default: // too slow: drop the subscriber rather than block scoring
			delete(h.subs, ch)
			close(ch)
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}

func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// metrics of the daemon.
type metrics struct {
	requests *prometheus.CounterVec
	stages   *prometheus.HistogramVec
	rejected prometheus.Counter
	refused  *prometheus.CounterVec
	scores   *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry, s *Server) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m3gate_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "m3gate_score_stage_seconds", Help: "Latency of score requests per stage (parse, score, total; sidecar_* from the model process).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"stage"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m3gate_score_rejected_total", Help: "Score requests refused with 429 because the queue was full.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "m3gate_http_refused_total", Help: "Requests refused by a guard: host, token, origin, budget (bytes in flight), subscribers.",
		}, []string{"reason"}),
		scores: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "m3gate_scores", Help: "Scores (MOS, 0..5) per aspect.",
			Buckets: prometheus.LinearBuckets(0.5, 0.5, 10),
		}, []string{"aspect"}),
	}
	cs := []prometheus.Collector{
		m.requests, m.stages, m.rejected, m.refused, m.scores,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "m3gate_http_inflight_bytes", Help: "Request-body bytes held now (bounded by daemon.max_inflight_bytes).",
		}, func() float64 { return float64(s.budget.inUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "m3gate_score_queue_depth", Help: "Score requests admitted and not finished.",
		}, func() float64 { return float64(s.QueueDepth()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "m3gate_score_queue_capacity", Help: "Most score requests admitted at once.",
		}, func() float64 { return float64(cap(s.slots)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "m3gate_sidecar_restarts_total", Help: "Restarts of the model process.",
		}, func() float64 { return float64(s.cfg.Scorer.Restarts()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "m3gate_sidecar_ready", Help: "1 when the model process is ready.",
		}, func() float64 {
			if s.cfg.Scorer.State() == schemas.StateReady {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "m3gate_events_subscribers", Help: "Connected /v1/events websockets.",
		}, func() float64 { return float64(s.hub.count()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
