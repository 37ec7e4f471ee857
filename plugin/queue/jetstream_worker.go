package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
)

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Name identifies the worker in results (default "worker").
	Name string
	// Scorer scores batches (the worker's model process).
	Scorer Scorer
	// Defaults fill what a job leaves out: aspects, max_new_tokens, and
	// the conversation prompts and options of every request.
	Defaults schemas.ScoreOptions
	// BatchSize is the most jobs scored together (scoring.batch_size).
	// Default 1.
	BatchSize int
	// FetchWait is how long an idle worker's pull request waits for a job
	// before it checks for shutdown. Default 1 s.
	FetchWait time.Duration
	// Logger; nil discards.
	Logger hclog.Logger
}

// Worker pulls score jobs from the durable consumer shared by all
// workers, scores them in batches and records one result per job.
type Worker struct {
	c    *Client
	cfg  WorkerConfig
	cons jetstream.Consumer
	log  hclog.Logger

	scored, failed, duplicates, naks, redelivered atomic.Int64
}

// NewWorker creates (or updates) the workers' durable pull consumer.
func NewWorker(ctx context.Context, c *Client, cfg WorkerConfig) (*Worker, error) {
	if cfg.Scorer == nil {
		return nil, errors.New("queue worker: no scorer")
	}
	if cfg.Name == "" {
		cfg.Name = "worker"
	}
	cfg.BatchSize = max(cfg.BatchSize, 1)
	if cfg.FetchWait <= 0 {
		cfg.FetchWait = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := c.set
	cons, err := c.stream.CreateOrUpdateConsumer(ctx, consumerConfig(s))
	if err != nil {
		return nil, fmt.Errorf("queue worker: consumer %s: %w", s.Consumer, err)
	}
	return &Worker{c: c, cfg: cfg, cons: cons, log: cfg.Logger}, nil
}

// lost reports whether the servers answer that the job stream or the
// workers' consumer does not exist (a pull on a missing consumer gets no
// responders).
func (w *Worker) lost(ctx context.Context) bool {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := w.c.js.Consumer(ictx, w.c.set.Stream, w.c.set.Consumer)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// recreate creates the stream, buckets and the consumer again.
func (w *Worker) recreate(ctx context.Context) error {
	if err := w.c.ensure(ctx); err != nil {
		return err
	}
	cons, err := w.c.stream.CreateOrUpdateConsumer(ctx, consumerConfig(w.c.set))
	if err != nil {
		return err
	}
	w.cons = cons
	return nil
}

func consumerConfig(s Settings) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       s.Consumer,
		Description:   "m3gate workers",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.AckWait,
		MaxDeliver:    s.MaxDeliver,
		MaxAckPending: s.MaxAckPending,
		FilterSubject: s.Subject(),
		Replicas:      s.Replicas,
	}
}

// WorkerStats are a worker's counts since it started.
type WorkerStats struct {
	// Scored counts results recorded with scores; Failed results recorded
	// with an error.
	Scored, Failed int64
	// Duplicates counts jobs whose result another delivery had already
	// recorded; they were acked without a second result.
	Duplicates int64
	// Naks counts jobs handed back with a delay (model process restarting).
	Naks int64
	// Redelivered counts jobs received that had been delivered before.
	Redelivered int64
}

// Stats returns the worker's counts.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{Scored: w.scored.Load(), Failed: w.failed.Load(), Duplicates: w.duplicates.Load(), Naks: w.naks.Load(), Redelivered: w.redelivered.Load()}
}

// Run pulls and scores jobs until ctx ends. It then drains: the batch in
// hand is scored, recorded and acked (with a fresh context), nothing new
// is taken, and Run returns nil.
func (w *Worker) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		msgs, err := w.fetch()
		if err != nil && w.lost(ctx) {
			// The servers lost the queue (restarted without their store):
			// create it again.
			if rerr := w.recreate(ctx); rerr != nil {
				err = fmt.Errorf("%w; recreate: %v", err, rerr)
			} else {
				continue
			}
		}
		if err != nil {
			w.log.Warn("fetch jobs", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if len(msgs) > 0 {
			w.process(context.WithoutCancel(ctx), msgs)
		}
	}
	return nil
}

// fetch takes up to BatchSize jobs: what is there at once, else it waits
// up to FetchWait for one and then takes what else is there.
func (w *Worker) fetch() ([]jetstream.Msg, error) {
	n := w.cfg.BatchSize
	msgs, err := collect(w.cons.FetchNoWait(n))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	msgs, err = collect(w.cons.Fetch(1, jetstream.FetchMaxWait(w.cfg.FetchWait)))
	if err != nil || len(msgs) == 0 || n == 1 {
		return msgs, err
	}
	more, err := collect(w.cons.FetchNoWait(n - 1))
	if err != nil {
		w.log.Debug("fetch more jobs", "error", err)
	}
	return append(msgs, more...), nil
}

func collect(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var out []jetstream.Msg
	for m := range b.Messages() {
		out = append(out, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		return out, err
	}
	return out, nil
}

// held is one job in hand.
type held struct {
	msg        jetstream.Msg
	job        Job
	deliveries int
	image      []byte
}

// process scores msgs and records, acks or naks every one of them.
func (w *Worker) process(ctx context.Context, msgs []jetstream.Msg) {
	// Keep every job alive while the batch runs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(max(w.c.set.AckWait/3, 50*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// Images are fetched concurrently; the order of the batch is kept.
	adm := make([]*held, len(msgs))
	var aw sync.WaitGroup
	for i, m := range msgs {
		aw.Add(1)
		go func() {
			defer aw.Done()
			if h, ok := w.admit(ctx, m); ok {
				adm[i] = h
			}
		}()
	}
	aw.Wait()
	var jobs []*held
	for _, h := range adm {
		if h != nil {
			jobs = append(jobs, h)
		}
	}
	for _, g := range w.group(jobs) {
		w.scoreGroup(ctx, g)
	}
}

// admit decodes a message and settles what needs no scoring: a malformed
// job, a job already recorded, a job out of deliveries, a missing image.
func (w *Worker) admit(ctx context.Context, m jetstream.Msg) (*held, bool) {
	h := &held{msg: m, deliveries: 1}
	if md, err := m.Metadata(); err == nil {
		h.deliveries = int(md.NumDelivered)
	}
	if h.deliveries > 1 {
		w.redelivered.Add(1)
	}
	if err := json.Unmarshal(m.Data(), &h.job); err != nil || h.job.Validate() != nil {
		// Without a valid id there is nowhere to record a result.
		w.log.Error("malformed job dropped", "data", truncate(string(m.Data()), 200), "error", err)
		_ = m.TermWithReason("malformed job")
		return nil, false
	}
	// A job delivered before may have its result already (its worker died
	// between recording and acking): ack it without scoring it again.
	if h.deliveries > 1 {
		if _, ok, err := w.c.result(ctx, h.job.ID); err == nil && ok {
			w.duplicates.Add(1)
			w.ack(ctx, h)
			return nil, false
		}
	}
	if h.deliveries >= w.c.set.MaxDeliver && w.c.set.MaxDeliver > 1 {
		w.record(ctx, h, Result{Error: fmt.Sprintf("job failed on %d deliveries (its scoring kept failing or killing the worker or the model process); giving up", h.deliveries-1)})
		return nil, false
	}
	img, err := w.c.images.GetBytes(ctx, h.job.Image)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		w.record(ctx, h, Result{Error: fmt.Sprintf("image object %s of job %s is missing (expired or deleted)", h.job.Image, h.job.ID)})
		return nil, false
	case err != nil:
		w.log.Warn("get image", "job", h.job.ID, "error", err)
		w.nak(h)
		return nil, false
	case h.job.ImageSize > 0 && len(img) != h.job.ImageSize:
		w.record(ctx, h, Result{Error: fmt.Sprintf("image object of job %s has %d bytes, the job says %d", h.job.ID, len(img), h.job.ImageSize)})
		return nil, false
	}
	h.image = img
	return h, true
}

// group splits jobs into requests with equal options; a redelivered job
// is scored on its own, so that a job that kills the model process does
// not take its batch-mates down with it again.
func (w *Worker) group(jobs []*held) [][]*held {
	var out [][]*held
	idx := map[string]int{}
	for _, h := range jobs {
		if h.deliveries > 1 {
			out = append(out, []*held{h})
			continue
		}
		key := strings.Join(h.job.Aspects, ",") + "|" + strconv.Itoa(h.job.MaxNewTokens)
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], h)
	}
	return out
}

// scoreGroup scores jobs with equal options as one request.
func (w *Worker) scoreGroup(ctx context.Context, g []*held) {
	opts := w.cfg.Defaults
	if a := g[0].job.Aspects; len(a) > 0 {
		opts.Aspects = slices.Clone(a)
	}
	if n := g[0].job.MaxNewTokens; n > 0 {
		opts.MaxNewTokens = n
	}
	req := schemas.ScoreRequest{Options: opts}
	for _, h := range g {
		req.Items = append(req.Items, schemas.ScoreItem{Data: h.image, Prompt: h.job.Prompt})
	}
	if err := req.Validate(); err != nil {
		for _, h := range g {
			w.record(ctx, h, Result{Error: err.Error()})
		}
		return
	}
	res, err := w.cfg.Scorer.Score(ctx, req)
	switch {
	case err == nil && len(res) == len(g):
	case err == nil:
		err = fmt.Errorf("model process answered %d results for %d images", len(res), len(g))
		fallthrough
	case modelDown(err):
		w.log.Warn("model process unavailable; jobs handed back", "jobs", len(g), "delay", w.c.set.NakDelay, "error", err)
		for _, h := range g {
			w.nak(h)
		}
		return
	case len(g) > 1:
		// One image may have failed the whole request: score one by one.
		for _, h := range g {
			w.scoreGroup(ctx, []*held{h})
		}
		return
	default:
		w.record(ctx, g[0], Result{Error: err.Error()})
		return
	}
	var rw sync.WaitGroup
	for i, h := range g {
		r := res[i]
		if r.Index >= 0 && r.Index < len(g) {
			h = g[r.Index]
		}
		rw.Add(1)
		go func() {
			defer rw.Done()
			w.record(ctx, h, Result{Error: r.Error, Aspects: r.Aspects, Passed: Gate(h.job.Thresholds, h.job.Mode, r.Aspects, r.Error)})
		}()
	}
	rw.Wait()
}

// modelDown reports whether a scoring error is the model process's state,
// not the request's: it died, hung, is restarting or was closed.
func modelDown(err error) bool {
	return errors.Is(err, supervisor.ErrProcessDied) || errors.Is(err, supervisor.ErrBusyTimeout) ||
		errors.Is(err, supervisor.ErrNotReady) || errors.Is(err, supervisor.ErrClosed) ||
		errors.Is(err, schemas.ErrNotLoaded) || errors.Is(err, context.DeadlineExceeded)
}

// record stores r as the result of h's job unless one is recorded
// already, then acks the job and deletes its image.
func (w *Worker) record(ctx context.Context, h *held, r Result) {
	r.ID, r.Worker, r.Deliveries, r.Scored = h.job.ID, w.cfg.Name, h.deliveries, time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		w.log.Error("encode result", "job", h.job.ID, "error", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, w.c.set.AckWait)
	defer cancel()
	dup := false
	err = retry(rctx, func(ctx context.Context) error {
		_, err := w.c.results.Create(ctx, h.job.ID, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			dup = true
			return nil
		}
		return err
	})
	if err != nil {
		// Not recorded: leave the job unacked; it comes back after AckWait.
		w.log.Error("record result; the job will be redelivered", "job", h.job.ID, "error", err)
		return
	}
	switch {
	case dup:
		w.duplicates.Add(1)
	case r.Error != "":
		w.failed.Add(1)
	default:
		w.scored.Add(1)
	}
	w.ack(ctx, h)
}

// ack acks h's job (waiting for the server's confirmation) and deletes its
// image; both are retried briefly.
func (w *Worker) ack(ctx context.Context, h *held) {
	actx, cancel := context.WithTimeout(ctx, w.c.set.AckWait)
	defer cancel()
	if err := retry(actx, func(ctx context.Context) error { return h.msg.DoubleAck(ctx) }); err != nil {
		w.log.Warn("ack job; it will be redelivered and found recorded", "job", h.job.ID, "error", err)
	}
	if err := w.c.images.Delete(actx, h.job.Image); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		w.log.Debug("delete image", "job", h.job.ID, "error", err)
	}
}

func (w *Worker) nak(h *held) {
	w.naks.Add(1)
	if err := h.msg.NakWithDelay(w.c.set.NakDelay); err != nil {
		w.log.Warn("nak job", "job", h.job.ID, "error", err)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
