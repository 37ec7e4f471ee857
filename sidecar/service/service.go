// Package service implements the sidecar side of the m3gate contract
// (schemas.Scorer) on top of an Engine: one work queue serialises all model
// work (load, score, unload), batches compatible score requests and runs a
// request of more than MaxBatch images in chunks, taking turns with the
// requests that wait, so one large request cannot starve small ones.
package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/m3gate/m3gate/schemas"
)

// Engine is the model the service drives. Every method is called from the
// service's single worker goroutine, never concurrently.
type Engine interface {
	// Load loads the model, calling progress for each step; a Load replaces
	// any model already loaded.
	Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error
	// Score scores items (each holds encoded image bytes in Data and its
	// generation prompt in Prompt) with opts. It returns one result per item,
	// in order; a failure of one image goes in that result's Error.
	Score(ctx context.Context, items []schemas.ScoreItem, opts schemas.ScoreOptions) ([]schemas.ItemResult, error)
	// Unload frees the model.
	Unload(ctx context.Context) error
	// Info describes the loaded model.
	Info() schemas.ModelInfo
}

// PromptChecker is implemented by engines that bound what a request may ask
// of the model (such as its prompt length in tokens). CheckPrompts is called
// from the worker goroutine before a request's first image runs; an error
// wrapping schemas.ErrInvalid fails the whole request.
type PromptChecker interface {
	CheckPrompts(items []schemas.ScoreItem, opts schemas.ScoreOptions) error
}

// GPUMemoryReporter is implemented by engines that know their GPU memory use.
type GPUMemoryReporter interface {
	// GPUMemory returns the bytes in use and the device's total bytes.
	GPUMemory() (used, total int64)
}

// Config tunes the service.
type Config struct {
	// MaxBatch is the most images one Engine.Score call receives: requests
	// are merged up to it, and a larger request runs in chunks of MaxBatch
	// that take turns with the other waiting requests. 0 means 8.
	MaxBatch int
	// Logger receives the service's log; nil discards it.
	Logger hclog.Logger
}

// Service implements schemas.Scorer over an Engine.
type Service struct {
	engine   Engine
	maxBatch int
	log      hclog.Logger

	mu       sync.Mutex
	queue    []*job
	resume   []*job        // score jobs with a chunk running and images left
	wake     chan struct{} // signalled when the queue gains a job
	closed   bool
	state    schemas.State
	progress schemas.LoadProgress
	loadErr  string
	busy     time.Time // when the engine call in progress started; zero when idle
	done     chan struct{}
	stop     chan struct{}
}

var _ schemas.Scorer = (*Service)(nil)

type jobKind int

const (
	jobLoad jobKind = iota
	jobScore
	jobUnload
)

type job struct {
	kind jobKind
	ctx  context.Context

	// load
	load     schemas.LoadRequest
	progress chan schemas.LoadProgress

	// score
	key     string
	items   []schemas.ScoreItem
	opts    schemas.ScoreOptions
	results []schemas.ItemResult
	next    int  // items before next have been handed to the engine
	running int  // chunks handed out and not yet finished
	checked bool // CheckPrompts passed
	failed  bool // err is set; chunks still queued are dropped

	err  error
	done chan struct{} // closed by the worker when err/results are set
}

// chunk is a run of one score job's items in a batch.
type chunk struct {
	job      *job
	off, end int
}

func (c chunk) items() []schemas.ScoreItem { return c.job.items[c.off:c.end] }

// New starts a service over engine. Close stops it.
func New(engine Engine, cfg Config) *Service {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 8
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Service{
		engine:   engine,
		maxBatch: cfg.MaxBatch,
		log:      cfg.Logger,
		wake:     make(chan struct{}, 1),
		state:    schemas.StateIdle,
		done:     make(chan struct{}),
		stop:     make(chan struct{}),
	}
	go s.work()
	return s
}

// Close stops the worker after the job in progress; queued jobs fail.
func (s *Service) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.mu.Unlock()
	<-s.done
}

// ErrClosed is returned for work submitted to or left in a closed service.
var ErrClosed = errors.New("scoring service closed")

// enqueue adds j to the queue.
func (s *Service) enqueue(j *job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.queue = append(s.queue, j)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// remove drops j from the queue if it is still waiting there; it reports
// whether it did (false: the worker has taken all of it).
func (s *Service) remove(j *job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drop(j)
}

// drop removes j from the queue and from resume; s.mu is held.
func (s *Service) drop(j *job) bool {
	found := false
	for _, q := range []*[]*job{&s.queue, &s.resume} {
		for i, x := range *q {
			if x == j {
				*q = append((*q)[:i], (*q)[i+1:]...)
				found = true
				break
			}
		}
	}
	return found
}

// QueueDepth returns the number of jobs waiting (not running).
func (s *Service) QueueDepth() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Load implements schemas.Scorer.
func (s *Service) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error {
	if err := req.Validate(); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	j := &job{kind: jobLoad, ctx: ctx, load: req, progress: make(chan schemas.LoadProgress, 16), done: make(chan struct{})}
	if err := s.enqueue(j); err != nil {
		return err
	}
	for {
		select {
		case p := <-j.progress:
			if progress != nil {
				progress(p)
			}
		case <-j.done:
			for {
				select {
				case p := <-j.progress:
					if progress != nil {
						progress(p)
					}
				default:
					return j.err
				}
			}
		case <-ctx.Done():
			s.remove(j)
			return ctx.Err()
		}
	}
}

// Unload implements schemas.Scorer.
func (s *Service) Unload(ctx context.Context) error {
	j := &job{kind: jobUnload, ctx: ctx, done: make(chan struct{})}
	if err := s.enqueue(j); err != nil {
		return err
	}
	select {
	case <-j.done:
		return j.err
	case <-ctx.Done():
		s.remove(j)
		return ctx.Err()
	}
}

// Status implements schemas.Scorer.
func (s *Service) Status(ctx context.Context) (schemas.Status, error) {
	s.mu.Lock()
	st := schemas.Status{State: s.state, Progress: s.progress, Error: s.loadErr, QueueDepth: len(s.queue)}
	if !s.busy.IsZero() {
		st.Busy = time.Since(s.busy)
	}
	s.mu.Unlock()
	if st.State == schemas.StateReady {
		st.Model = s.engine.Info()
	}
	st.Memory.RSSBytes = residentBytes()
	if g, ok := s.engine.(GPUMemoryReporter); ok {
		st.Memory.GPUBytes, st.Memory.GPUTotalBytes = g.GPUMemory()
	}
	return st, nil
}

// Score implements schemas.Scorer: it validates the request, reads images
// given by path, queues the rest and waits for its batch. A request whose ctx
// ends leaves the queue at once.
func (s *Service) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("score: %w", err)
	}
	s.mu.Lock()
	state, loadErr := s.state, s.loadErr
	s.mu.Unlock()
	switch state {
	case schemas.StateIdle:
		return nil, fmt.Errorf("score: %w", schemas.ErrNotLoaded)
	case schemas.StateError:
		return nil, fmt.Errorf("score: %w (last load failed: %s)", schemas.ErrNotLoaded, loadErr)
	}

	results := make([]schemas.ItemResult, len(req.Items))
	var items []schemas.ScoreItem
	var slots []int // slots[k]: index in req.Items of items[k]
	for i, it := range req.Items {
		results[i].Index = i
		if it.Prompt == "" {
			it.Prompt = req.Prompt
		}
		if it.Path != "" {
			b, err := os.ReadFile(it.Path)
			if err != nil {
				results[i].Error = fmt.Sprintf("read image: %v", err)
				continue
			}
			it.Data, it.Path = b, ""
		}
		items = append(items, it)
		slots = append(slots, i)
	}
	if len(items) == 0 {
		return results, nil
	}

	j := &job{kind: jobScore, ctx: ctx, key: req.Options.Key(), items: items, opts: req.Options, results: make([]schemas.ItemResult, len(items)), done: make(chan struct{})}
	if err := s.enqueue(j); err != nil {
		return nil, err
	}
	select {
	case <-j.done:
	case <-ctx.Done():
		s.remove(j)
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if j.err != nil {
		return nil, j.err
	}
	for k, r := range j.results {
		r.Index = slots[k]
		results[slots[k]] = r
	}
	return results, nil
}

// work is the single worker: it runs queued jobs one at a time.
func (s *Service) work() {
	defer close(s.done)
	for {
		first, batch := s.next()
		if first == nil {
			select {
			case <-s.wake:
				continue
			case <-s.stop:
				s.failQueued()
				return
			}
		}
		switch first.kind {
		case jobLoad:
			s.running(func() { s.runLoad(first) })
		case jobUnload:
			s.running(func() { s.runUnload(first) })
		case jobScore:
			if batch = s.check(batch); len(batch) > 0 {
				s.running(func() { s.runScore(batch) })
			}
		}
	}
}

// running runs f with the service marked busy (Status reports for how long).
func (s *Service) running(f func()) {
	s.mu.Lock()
	s.busy = time.Now()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.busy = time.Time{}
		s.mu.Unlock()
	}()
	f()
}

// next takes the first live job from the queue. For a score job it returns
// the job's next chunk of at most maxBatch images, filled up with later
// score jobs of the same options: whole jobs that fit, and a chunk of a job
// that could never fit whole. A job with images left after its chunk waits
// in resume until the next call and then goes to the back of the queue, so
// every request that arrived while its chunk ran takes its turn first. Jobs
// whose ctx already ended are dropped.
func (s *Service) next() (*job, []chunk) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, s.resume...)
	s.resume = s.resume[:0]
	for len(s.queue) > 0 && s.queue[0].ctx.Err() != nil {
		s.queue = s.queue[1:]
	}
	if len(s.queue) == 0 {
		return nil, nil
	}
	first := s.queue[0]
	s.queue = s.queue[1:]
	if first.kind != jobScore {
		return first, nil
	}
	var batch []chunk
	n := 0
	take := func(j *job, k int) {
		batch = append(batch, chunk{job: j, off: j.next, end: j.next + k})
		j.next += k
		j.running++
		n += k
		if j.next < len(j.items) {
			s.resume = append(s.resume, j)
		}
	}
	take(first, min(s.maxBatch, len(first.items)-first.next))
	rest := s.queue[:0]
	for _, j := range s.queue {
		left := len(j.items) - j.next
		if n < s.maxBatch && j.kind == jobScore && j.key == first.key && j.ctx.Err() == nil {
			if n+left <= s.maxBatch {
				take(j, left)
				continue
			}
			if len(j.items) > s.maxBatch {
				take(j, s.maxBatch-n)
				continue
			}
		}
		rest = append(rest, j)
	}
	s.queue = rest
	return first, batch
}

// check runs the engine's PromptChecker on the jobs of batch that start
// here and drops the chunks of jobs it refuses.
func (s *Service) check(batch []chunk) []chunk {
	pc, ok := s.engine.(PromptChecker)
	if !ok {
		return batch
	}
	out := batch[:0]
	for _, c := range batch {
		j := c.job
		if !j.checked {
			if err := pc.CheckPrompts(j.items, j.opts); err != nil {
				s.finish(c, nil, fmt.Errorf("score: %w", err))
				continue
			}
			j.checked = true
		}
		out = append(out, c)
	}
	return out
}

// finish records the outcome of chunk c (its results, or err for the whole
// job) and completes the job once nothing of it is queued or running.
func (s *Service) finish(c chunk, results []schemas.ItemResult, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := c.job
	j.running--
	if j.failed {
		return
	}
	if err != nil {
		j.err, j.failed = err, true
		s.drop(j)
		close(j.done)
		return
	}
	copy(j.results[c.off:c.end], results)
	if j.next == len(j.items) && j.running == 0 {
		close(j.done)
	}
}

func (s *Service) failQueued() {
	s.mu.Lock()
	q := append(s.queue, s.resume...)
	s.queue, s.resume = nil, nil
	for _, j := range q {
		j.err, j.failed = ErrClosed, true
		close(j.done)
	}
	s.mu.Unlock()
}

func (s *Service) setState(st schemas.State, p *schemas.LoadProgress, loadErr string) {
	s.mu.Lock()
	s.state = st
	if p != nil {
		s.progress = *p
	}
	s.loadErr = loadErr
	s.mu.Unlock()
}

func (s *Service) runLoad(j *job) {
	defer close(j.done)
	s.setState(schemas.StateLoading, &schemas.LoadProgress{Stage: "start"}, "")
	s.log.Info("loading model", "family", j.load.Family, "model_dir", j.load.ModelDir, "device", j.load.Device)
	err := s.engine.Load(j.ctx, j.load, func(p schemas.LoadProgress) {
		s.mu.Lock()
		s.progress = p
		s.mu.Unlock()
		select {
		case j.progress <- p:
		case <-j.ctx.Done():
		}
	})
	if err != nil {
		j.err = fmt.Errorf("load %s model: %w", j.load.Family, err)
		s.setState(schemas.StateError, nil, j.err.Error())
		s.log.Error("load failed", "error", j.err)
		return
	}
	final := schemas.LoadProgress{Stage: schemas.StageDone}
	s.mu.Lock()
	final.DoneBytes, final.TotalBytes = s.progress.TotalBytes, s.progress.TotalBytes
	s.mu.Unlock()
	s.setState(schemas.StateReady, &final, "")
	select {
	case j.progress <- final:
	case <-j.ctx.Done():
	}
	s.log.Info("model ready", "family", j.load.Family)
}

func (s *Service) runUnload(j *job) {
	defer close(j.done)
	if err := s.engine.Unload(j.ctx); err != nil {
		j.err = fmt.Errorf("unload: %w", err)
		return
	}
	s.setState(schemas.StateIdle, &schemas.LoadProgress{}, "")
}

// runScore runs one engine call for the batch. The call's ctx ends when the
// ctx of every member has ended, so a batch whose callers all left stops
// (the engine checks it between decode steps).
func (s *Service) runScore(batch []chunk) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	alive := len(batch)
	var items []schemas.ScoreItem
	for _, c := range batch {
		items = append(items, c.items()...)
		stop := context.AfterFunc(c.job.ctx, func() {
			mu.Lock()
			alive--
			if alive == 0 {
				cancel()
			}
			mu.Unlock()
		})
		defer stop()
	}
	results, err := s.engine.Score(ctx, items, batch[0].job.opts)
	if err == nil && len(results) != len(items) {
		err = fmt.Errorf("engine returned %d results for %d images", len(results), len(items))
	}
	if err != nil && ctx.Err() != nil {
		s.log.Info("score stopped: every caller left", "images", len(items))
	}
	off := 0
	for _, c := range batch {
		n := c.end - c.off
		if err != nil {
			s.finish(c, nil, err)
		} else {
			s.finish(c, results[off:off+n], nil)
		}
		off += n
	}
}

// residentBytes reads the process's resident set size from /proc; 0 where
// that is unavailable.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
