// Package supervisor runs m3gate-sidecar, the model process, as a
// hashicorp/go-plugin child: it starts it, waits for the handshake, drives
// Load with a stall timeout (and retries a failed load with backoff),
// exposes readiness backed by a heartbeat, restarts a crashed process with
// a new go-plugin client and exponential backoff, kills a process that
// stays busy too long, and shuts it down cleanly.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/m3gate/m3gate/schemas"
)

// Errors of the supervisor. Request errors wrap them; match with errors.Is.
var (
	// ErrProcessDied fails requests that were in flight when the model
	// process died.
	ErrProcessDied = errors.New("model process died")
	// ErrBusyTimeout fails a request that ran past Config.BusyTimeout; the
	// model process is killed and restarted.
	ErrBusyTimeout = errors.New("model process exceeded the busy timeout and was killed")
	// ErrNotReady fails a request when the model is not ready in time or
	// failed to load.
	ErrNotReady = errors.New("model not ready")
	// ErrClosed fails requests after Close.
	ErrClosed = errors.New("supervisor closed")
	// ErrLoadStalled is the cause of a load that made no progress for
	// Config.LoadStallTimeout.
	ErrLoadStalled = errors.New("model load stalled")
	// ErrUnresponsive is the cause of the unresponsive state: the model
	// process has not answered a heartbeat for Config.HeartbeatTimeout.
	ErrUnresponsive = errors.New("model process does not answer")
)

// Config says how to run the sidecar.
type Config struct {
	// Path of the m3gate-sidecar binary.
	Path string
	// Args are extra command-line arguments of the sidecar (e.g. --max-batch 8).
	Args []string
	// Env is extra environment of the sidecar, "KEY=value".
	Env []string
	// Load is the model the sidecar loads after every start.
	Load schemas.LoadRequest
	// SocketDir is the folder below which each sidecar process gets a
	// folder for its go-plugin socket; stale ones are removed at each
	// start. Default $TMPDIR/m3gate-sockets-<uid>.
	SocketDir string
	// StartTimeout bounds the go-plugin handshake. Default 1 minute.
	StartTimeout time.Duration
	// LoadStallTimeout is how long Load may go without a progress message
	// before the process is killed and restarted. Default 2 minutes.
	LoadStallTimeout time.Duration
	// ReadyTimeout is how long a request waits for the model to become ready
	// (e.g. during a restart). Default 2 minutes.
	ReadyTimeout time.Duration
	// BusyTimeout is how long one request may run in the model process
	// before the process counts as hung and is killed; the process's own
	// report of how long its current work has run counts too, so work a
	// client abandoned is timed until it ends. Default 10 minutes.
	BusyTimeout time.Duration
	// HeartbeatInterval is how often the ready process is asked for its
	// status; HeartbeatTimeout is how long it may go without answering
	// before it counts as unresponsive (not ready) until it answers again.
	// Defaults 2 s and 10 s.
	HeartbeatInterval, HeartbeatTimeout time.Duration
	// BackoffMin and BackoffMax bound the delay between restarts, which
	// doubles after each failure and resets once the process has been ready
	// for BackoffReset, and between retries of a load that failed (the
	// model directory may come back). Defaults 250 ms, 30 s, 1 minute.
	BackoffMin, BackoffMax, BackoffReset time.Duration
	// Logger receives the supervisor's log and the sidecar's (hclog JSON on
	// its stderr). Nil discards them.
	Logger hclog.Logger
	// OnState, if set, is called on every state change with the new state
	// and the error that caused it (nil when none). Calls are serialised and
	// must return quickly.
	OnState func(state schemas.State, err error)
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.StartTimeout, time.Minute)
	def(&c.LoadStallTimeout, 2*time.Minute)
	def(&c.ReadyTimeout, 2*time.Minute)
	def(&c.BusyTimeout, 10*time.Minute)
	def(&c.HeartbeatInterval, 2*time.Second)
	def(&c.HeartbeatTimeout, 10*time.Second)
	def(&c.BackoffMin, 250*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	def(&c.BackoffReset, time.Minute)
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Supervisor owns the model process. Its methods are safe for concurrent use.
type Supervisor struct {
	cfg Config
	log hclog.Logger

	mu       sync.Mutex
	state    schemas.State
	err      error
	progress schemas.LoadProgress
	gen      *generation   // the ready process, nil otherwise
	changed  chan struct{} // closed and replaced on every state change
	stateMu  sync.Mutex    // serialises OnState calls

	restarts atomic.Int64
	closing  chan struct{}
	closeOne sync.Once
	done     chan struct{}
}

// generation is one run of the sidecar process with its go-plugin client.
type generation struct {
	client     *plugin.Client
	scorer     schemas.Scorer
	pid        int
	dead       chan struct{} // closed when the process has exited
	sockDir    string        // the process's go-plugin socket folder ("" when none)
	killedBusy atomic.Bool
	killing    atomic.Bool // set when kill starts

	mu     sync.Mutex
	timers map[*time.Timer]struct{} // busy timers of the requests in flight
}

func (g *generation) track(t *time.Timer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timers == nil {
		g.timers = map[*time.Timer]struct{}{}
	}
	g.timers[t] = struct{}{}
}

func (g *generation) untrack(t *time.Timer) {
	t.Stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.timers, t)
}

// progressed restarts the busy timers of the requests in flight: the
// process just finished a piece of work.
func (g *generation) progressed(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for t := range g.timers {
		if t.Stop() {
			t.Reset(d)
		}
	}
}

// gone reports whether the process has exited or is being killed.
func (g *generation) gone() bool { return g.killing.Load() || isClosed(g.dead) }

// Start checks cfg and starts supervising: it returns at once while the
// sidecar starts and loads in the background (see State and WaitReady).
func Start(cfg Config) (*Supervisor, error) {
	if cfg.Path == "" {
		return nil, errors.New("supervisor: no sidecar path")
	}
	if _, err := exec.LookPath(cfg.Path); err != nil {
		return nil, fmt.Errorf("supervisor: sidecar %s: %w", cfg.Path, err)
	}
	if err := cfg.Load.Validate(); err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	cfg.defaults()
	s := &Supervisor{
		cfg:     cfg,
		log:     cfg.Logger,
		state:   schemas.StateStarting,
		changed: make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// State returns the current state.
func (s *Supervisor) State() schemas.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Err returns the error behind the current state, or nil.
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Restarts returns how many times the sidecar was restarted.
func (s *Supervisor) Restarts() int { return int(s.restarts.Load()) }

// Pid returns the process id of the ready sidecar, or 0.
func (s *Supervisor) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == nil {
		return 0
	}
	return s.gen.pid
}

func (s *Supervisor) setState(st schemas.State, err error, gen *generation) {
	s.transition(nil, st, err, gen)
}

// transition sets the state; with when set, only if when(current state,
// current generation) holds under the lock. It reports whether it did.
func (s *Supervisor) transition(when func(schemas.State, *generation) bool, st schemas.State, err error, gen *generation) bool {
	s.mu.Lock()
	if when != nil && !when(s.state, s.gen) {
		s.mu.Unlock()
		return false
	}
	s.state, s.err, s.gen = st, err, gen
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if err != nil {
		s.log.Info("sidecar state", "state", st, "error", err)
	} else {
		s.log.Info("sidecar state", "state", st)
	}
	if s.cfg.OnState != nil {
		s.stateMu.Lock()
		s.cfg.OnState(st, err)
		s.stateMu.Unlock()
	}
	return true
}

// WaitReady waits until the model is ready. It fails at once when the model
// failed to load (ErrNotReady wrapping the cause) or the supervisor is
// closed, and when ctx ends.
func (s *Supervisor) WaitReady(ctx context.Context) error {
	_, err := s.ready(ctx)
	return err
}

func (s *Supervisor) ready(ctx context.Context) (*generation, error) {
	for {
		s.mu.Lock()
		st, err, gen, ch := s.state, s.err, s.gen, s.changed
		s.mu.Unlock()
		switch st {
		case schemas.StateReady:
			if !gen.gone() {
				return gen, nil
			}
			// The process died or is being killed; the run loop is about
			// to notice and change the state.
		case schemas.StateError:
			return nil, fmt.Errorf("%w: %w", ErrNotReady, err)
		case schemas.StateStopped:
			return nil, ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Score scores req in the model process. It waits up to
// Config.ReadyTimeout for readiness; a request in flight when the process
// dies fails with ErrProcessDied, one running past Config.BusyTimeout with
// ErrBusyTimeout. Cancelling ctx returns at once.
func (s *Supervisor) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	gen, err := s.waitForRequest(ctx)
	if err != nil {
		return nil, err
	}
	var rs []schemas.ItemResult
	err = s.call(ctx, gen, func(ctx context.Context) error {
		var err error
		rs, err = gen.scorer.Score(ctx, req)
		return err
	})
	return rs, err
}

// Status returns the sidecar's own status when it is up, else the
// supervisor's view (state, error, last load progress).
func (s *Supervisor) Status(ctx context.Context) (schemas.Status, error) {
	s.mu.Lock()
	st := schemas.Status{State: s.state, Progress: s.progress}
	if s.err != nil {
		st.Error = s.err.Error()
	}
	gen := s.gen
	s.mu.Unlock()
	if gen == nil {
		return st, nil
	}
	var remote schemas.Status
	err := s.call(ctx, gen, func(ctx context.Context) error {
		var err error
		remote, err = gen.scorer.Status(ctx)
		return err
	})
	if err != nil {
		return st, err
	}
	return remote, nil
}

func (s *Supervisor) waitForRequest(ctx context.Context) (*generation, error) {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	gen, err := s.ready(wctx)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w after %s (state %s)", ErrNotReady, s.cfg.ReadyTimeout, s.State())
	}
	return gen, err
}

// call runs f against gen with the request's ctx, cancelled early when the
// process dies, under the busy timeout. The model process works through its
// queue one batch at a time, so a request's timer restarts whenever the
// process answers any request: it fires only when the work in progress has
// run for BusyTimeout, not when a request merely waited in the queue.
func (s *Supervisor) call(ctx context.Context, gen *generation, f func(context.Context) error) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-gen.dead:
			cancel()
		case <-s.closing:
			cancel()
		case <-stop:
		}
	}()
	busy := time.AfterFunc(s.cfg.BusyTimeout, func() {
		s.log.Error("sidecar busy too long; killing it", "pid", gen.pid, "busy_timeout", s.cfg.BusyTimeout)
		gen.killedBusy.Store(true)
		gen.kill()
	})
	gen.track(busy)
	defer gen.untrack(busy)

	err := f(cctx)
	switch {
	case err == nil:
		gen.progressed(s.cfg.BusyTimeout)
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case gen.killedBusy.Load():
		return fmt.Errorf("%w (after %s)", ErrBusyTimeout, s.cfg.BusyTimeout)
	case isClosed(s.closing):
		return ErrClosed
	case s.died(gen, err):
		return fmt.Errorf("%w (pid %d): %v", ErrProcessDied, gen.pid, err)
	}
	gen.progressed(s.cfg.BusyTimeout) // an error answer is progress too
	return err
}

// died reports whether err comes from gen's process dying: it has exited,
// or exits shortly after a transport failure.
func (s *Supervisor) died(gen *generation, err error) bool {
	select {
	case <-gen.dead:
		return true
	default:
	}
	if !errors.Is(err, schemas.ErrUnavailable) && !errors.Is(err, context.Canceled) {
		return false
	}
	select {
	case <-gen.dead:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Close stops the sidecar (gracefully, then by force) and the supervisor.
// Requests in flight fail with ErrClosed. It waits until the process is gone
// or ctx ends.
func (s *Supervisor) Close(ctx context.Context) error {
	s.closeOne.Do(func() { close(s.closing) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the supervision loop.
func (s *Supervisor) run() {
	defer close(s.done)
	backoff := s.cfg.BackoffMin
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.restarts.Add(1)
			s.setState(schemas.StateRestarting, lastErr, nil)
			s.log.Warn("restarting sidecar", "in", backoff, "restarts", s.restarts.Load())
			select {
			case <-time.After(backoff):
			case <-s.closing:
				s.setState(schemas.StateStopped, nil, nil)
				return
			}
			backoff = min(2*backoff, s.cfg.BackoffMax)
		}
		if isClosed(s.closing) {
			s.setState(schemas.StateStopped, nil, nil)
			return
		}
		s.setState(schemas.StateStarting, nil, nil)
		gen, err := s.start()
		if err != nil {
			lastErr = err
			s.log.Error("sidecar start failed", "error", err)
			continue
		}
		s.setState(schemas.StateLoading, nil, nil)
		if err := s.load(gen); err != nil {
			lastErr = err
			select {
			case <-gen.dead:
				continue
			default:
			}
			if errors.Is(err, ErrLoadStalled) || errors.Is(err, schemas.ErrUnavailable) {
				gen.kill()
				continue
			}
			if isClosed(s.closing) {
				s.shutdown(gen)
				s.setState(schemas.StateStopped, nil, nil)
				return
			}
			// The model cannot load (bad files, a missing directory, no
			// scorer): a restart will not fix it. Keep the process for
			// Status, fail requests fast, and retry the load with backoff:
			// the files may come back.
			s.setState(schemas.StateError, err, nil)
			switch err := s.retryLoad(gen); {
			case errors.Is(err, ErrClosed):
				s.shutdown(gen)
				s.setState(schemas.StateStopped, nil, nil)
				return
			case err != nil:
				lastErr = err
				gen.kill()
				continue
			}
		}
		readyAt := time.Now()
		s.setState(schemas.StateReady, nil, gen)
		beating := make(chan struct{})
		go s.heartbeat(gen, beating)
		select {
		case <-gen.dead:
			lastErr = fmt.Errorf("%w (pid %d)", ErrProcessDied, gen.pid)
			if gen.killedBusy.Load() {
				lastErr = fmt.Errorf("%w (pid %d)", ErrBusyTimeout, gen.pid)
			}
			close(beating)
			gen.cleanup()
			if time.Since(readyAt) >= s.cfg.BackoffReset {
				backoff = s.cfg.BackoffMin
			}
		case <-s.closing:
			close(beating)
			s.shutdown(gen)
			s.setState(schemas.StateStopped, nil, nil)
			return
		}
	}
}

// retryLoad retries Load on gen, which failed to load, with backoff until
// it succeeds (nil). It returns ErrClosed when the supervisor closes, and
// another error when the process died or must be restarted; a load that
// fails again only updates the error state.
func (s *Supervisor) retryLoad(gen *generation) error {
	delay := s.cfg.BackoffMin
	for {
		select {
		case <-gen.dead:
			return fmt.Errorf("%w while in error state", ErrProcessDied)
		case <-s.closing:
			return ErrClosed
		case <-time.After(delay):
		}
		delay = min(2*delay, s.cfg.BackoffMax)
		err := s.load(gen)
		switch {
		case err == nil:
			s.log.Info("model loaded on retry", "pid", gen.pid)
			return nil
		case isClosed(s.closing):
			return ErrClosed
		case isClosed(gen.dead), errors.Is(err, ErrLoadStalled), errors.Is(err, schemas.ErrUnavailable):
			return err
		}
		if prev := s.Err(); prev == nil || prev.Error() != err.Error() {
			s.setState(schemas.StateError, err, nil)
		}
		s.log.Debug("load retry failed", "error", err, "next_in", delay)
	}
}

// heartbeat asks gen for its status every HeartbeatInterval until stop is
// closed. A process that has not answered for HeartbeatTimeout (dead,
// stopped, frozen) turns the state from ready to unresponsive, and its
// next answer turns it back. A process that reports work running for
// longer than BusyTimeout is killed as hung, whether or not the client
// that asked for the work is still waiting.
func (s *Supervisor) heartbeat(gen *generation, stop <-chan struct{}) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HeartbeatTimeout)
		st, err := gen.scorer.Status(ctx)
		cancel()
		if gen.gone() {
			return
		}
		if err == nil {
			last = time.Now()
			s.transition(func(cur schemas.State, g *generation) bool {
				return g == gen && cur == schemas.StateUnresponsive
			}, schemas.StateReady, nil, gen)
			if st.Busy > s.cfg.BusyTimeout {
				s.log.Error("sidecar busy too long; killing it", "pid", gen.pid, "busy", st.Busy, "busy_timeout", s.cfg.BusyTimeout)
				gen.killedBusy.Store(true)
				gen.kill()
				return
			}
			continue
		}
		if since := time.Since(last); since >= s.cfg.HeartbeatTimeout {
			s.transition(func(cur schemas.State, g *generation) bool {
				return g == gen && cur == schemas.StateReady
			}, schemas.StateUnresponsive, fmt.Errorf("%w for %s: %v", ErrUnresponsive, since.Round(time.Millisecond), err), gen)
		}
	}
}

// start launches a new sidecar process with a new go-plugin client and
// waits for its handshake.
func (s *Supervisor) start() (*generation, error) {
	cmd := exec.Command(s.cfg.Path, s.cfg.Args...)
	cmd.Env = append([]string(nil), s.cfg.Env...)
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", schemas.ParentPIDEnv, os.Getpid()))
	sockDir, err := newSocketDir(s.socketBase())
	if err != nil {
		s.log.Warn("no private socket folder; the sidecar uses the temp folder", "error", err)
		sockDir = ""
	} else {
		cmd.Env = append(cmd.Env, socketEnv(sockDir))
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  schemas.Handshake,
		Plugins:          schemas.PluginMap(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     s.cfg.StartTimeout,
		Logger:           s.log.Named("sidecar"),
		GRPCDialOptions:  schemas.DialOptions(),
	})
	gen := &generation{client: client, dead: make(chan struct{}), sockDir: sockDir}
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		gen.removeSocketDir()
		return nil, fmt.Errorf("start sidecar %s: %w", s.cfg.Path, err)
	}
	if cmd.Process != nil {
		gen.pid = cmd.Process.Pid
	}
	go gen.watch()
	raw, err := rpc.Dispense(schemas.PluginName)
	if err != nil {
		gen.kill()
		return nil, fmt.Errorf("dispense %s: %w", schemas.PluginName, err)
	}
	scorer, ok := raw.(schemas.Scorer)
	if !ok {
		gen.kill()
		return nil, fmt.Errorf("dispense %s: got %T, not a scorer", schemas.PluginName, raw)
	}
	gen.scorer = scorer
	s.log.Info("sidecar started", "pid", gen.pid)
	return gen, nil
}

// load drives Load on gen; the call is cancelled (ErrLoadStalled) when no
// progress arrives for LoadStallTimeout, and when the supervisor closes.
func (s *Supervisor) load(gen *generation) error {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stall := time.AfterFunc(s.cfg.LoadStallTimeout, func() { cancel(ErrLoadStalled) })
	defer stall.Stop()
	go func() {
		select {
		case <-s.closing:
			cancel(ErrClosed)
		case <-gen.dead:
			cancel(ErrProcessDied)
		case <-ctx.Done():
		}
	}()
	err := gen.scorer.Load(ctx, s.cfg.Load, func(p schemas.LoadProgress) {
		stall.Reset(s.cfg.LoadStallTimeout)
		s.mu.Lock()
		s.progress = p
		s.mu.Unlock()
	})
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
		if errors.Is(cause, ErrLoadStalled) {
			return fmt.Errorf("%w: no progress for %s", ErrLoadStalled, s.cfg.LoadStallTimeout)
		}
		return fmt.Errorf("load: %w", cause)
	}
	return err
}

// watch closes dead when the process exits.
func (g *generation) watch() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		if g.client.Exited() {
			g.removeSocketDir()
			close(g.dead)
			return
		}
	}
}

// removeSocketDir removes the socket folder of an exited process (its
// socket stays behind when it was killed).
func (g *generation) removeSocketDir() {
	if g.sockDir != "" {
		os.RemoveAll(g.sockDir)
	}
}

// socketBase is the folder of the sidecars' socket folders.
func (s *Supervisor) socketBase() string {
	if s.cfg.SocketDir != "" {
		return s.cfg.SocketDir
	}
	return socketBase()
}

// kill ends the process at once (SIGKILL) and releases the client.
func (g *generation) kill() {
	g.killing.Store(true)
	if g.pid > 0 {
		_ = syscall.Kill(g.pid, syscall.SIGKILL)
	}
	g.client.Kill()
}

// cleanup releases the client of a process that has exited.
func (g *generation) cleanup() { g.client.Kill() }

// shutdown stops the process gracefully (go-plugin's Kill: a Shutdown RPC,
// then SIGKILL after 2 s) and waits for it to exit.
func (s *Supervisor) shutdown(gen *generation) {
	gen.client.Kill()
	select {
	case <-gen.dead:
	case <-time.After(5 * time.Second):
		gen.kill()
	}
	s.log.Info("sidecar stopped", "pid", gen.pid)
}
