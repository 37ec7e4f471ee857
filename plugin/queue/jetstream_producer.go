package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/m3gate/m3gate/schemas"
)

// Producer publishes score jobs and waits for their results. Its Score
// method has the daemon's scorer shape (server.Scorer), so `m3gate serve`
// scores through the queue without knowing it.
type Producer struct {
	c      *Client
	name   string
	prefix string // job ids are prefix.N
	seq    atomic.Uint64
	// PollInterval is how often a waiting job also reads its result
	// directly, in case the result watcher missed it across a reconnect.
	poll time.Duration
	// MaxImageBytes bounds one image (read from a path or given as data).
	maxImage int

	mu      sync.Mutex
	waiters map[string]chan Result
	done    map[string]int // results seen per worker
	redeliv int            // deliveries beyond the first, summed over results seen
	closed  chan struct{}
	stopped chan struct{}
	life    context.Context // ends at Close; the result watcher lives in it
	end     context.CancelFunc
	rewatch chan struct{} // signalled on reconnect: the watcher is gone with the server's state
	fleet   bool          // count every result in the bucket, not only our own
	watched string        // the watcher's key filter
}

// ProducerConfig configures a Producer.
type ProducerConfig struct {
	// Name identifies the producer in job ids and results (default
	// "producer"); characters outside A-Z a-z 0-9 - _ become "_".
	Name string
	// PollInterval: see Producer. Default 15 s.
	PollInterval time.Duration
	// MaxImageBytes bounds one image. Default 64 MiB.
	MaxImageBytes int
	// WatchAll makes the producer watch every result recorded in the
	// queue, so that Stats (and the Collector) count the whole fleet's
	// results per worker, not only this producer's.
	WatchAll bool
}

// NewProducer starts a producer on c: it watches the result bucket for the
// results of its own jobs until Close.
func NewProducer(ctx context.Context, c *Client, cfg ProducerConfig) (*Producer, error) {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 15 * time.Second
	}
	if cfg.MaxImageBytes <= 0 {
		cfg.MaxImageBytes = 64 << 20
	}
	name := sanitize(cfg.Name)
	if name == "" {
		name = "producer"
	}
	p := &Producer{
		c: c, name: name, prefix: name + "." + nuid.Next(), poll: cfg.PollInterval, maxImage: cfg.MaxImageBytes, fleet: cfg.WatchAll,
		waiters: map[string]chan Result{}, done: map[string]int{},
		closed: make(chan struct{}), stopped: make(chan struct{}), rewatch: make(chan struct{}, 1),
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.watched = p.prefix + ".*"
	if p.fleet {
		p.watched = ">"
	}
	p.life, p.end = context.WithCancel(context.Background())
	w, err := c.results.Watch(p.life, p.watched, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		p.end()
		return nil, fmt.Errorf("queue: watch results: %w", err)
	}
	c.onReconnect(func() {
		select {
		case p.rewatch <- struct{}{}:
		default:
		}
	})
	go p.watch(w)
	return p, nil
}

// Close stops watching for results; waiting Score calls fail.
func (p *Producer) Close() {
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	<-p.stopped
	p.end()
}

// watch delivers results to their waiters. After a reconnect (the server
// may have restarted and forgotten the watcher) or when the watcher stops,
// it starts a new watcher and reads the results of every waiting job once,
// so that a result recorded in between is not missed.
func (p *Producer) watch(w jetstream.KeyWatcher) {
	defer close(p.stopped)
	for {
		updates := w.Updates()
	loop:
		for {
			select {
			case <-p.closed:
				w.Stop()
				return
			case <-p.rewatch:
				w.Stop()
				break loop
			case e, ok := <-updates:
				if !ok {
					break loop
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				var r Result
				if json.Unmarshal(e.Value(), &r) == nil {
					p.seen(r)
					p.deliver(e.Key(), r)
				}
			}
		}
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
			select {
			case <-p.closed:
				return
			case <-time.After(wait):
			}
			nw, err := p.c.results.Watch(p.life, p.watched, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
			if err == nil {
				w = nw
				break
			}
		}
		p.sweep()
	}
}

// sweep reads the results of every waiting job.
func (p *Producer) sweep() {
	p.mu.Lock()
	ids := make([]string, 0, len(p.waiters))
	for id := range p.waiters {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(p.life, 5*time.Second)
		r, ok, err := p.c.result(ctx, id)
		cancel()
		if err == nil && ok {
			p.deliver(id, r)
		}
	}
}

// deliver hands r to the waiter of job id, once.
func (p *Producer) deliver(id string, r Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch, ok := p.waiters[id]
	if !ok {
		return
	}
	delete(p.waiters, id)
	if !p.fleet {
		p.count(r)
	}
	ch <- r
}

// seen counts a result of any producer in fleet mode.
func (p *Producer) seen(r Result) {
	if !p.fleet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.count(r)
}

// count adds r to the stats; p.mu is held.
func (p *Producer) count(r Result) {
	p.done[r.Worker]++
	p.redeliv += max(r.Deliveries-1, 0)
}

// Submitted is a published job whose result can be awaited.
type Submitted struct {
	// ID is the job id.
	ID string
	ch chan Result
}

// NewID returns a fresh job id of this producer.
func (p *Producer) NewID() string {
	return p.prefix + "." + strconv.FormatUint(p.seq.Add(1), 10)
}

// Submit stores image in the object store and publishes job (its ID, if
// empty, is set to NewID; Image and ImageSize are filled in). Publishing is
// retried while the servers are unreachable or the queue is full, with the
// same Nats-Msg-Id, so a job is queued at most once; ctx bounds the
// retries.
func (p *Producer) Submit(ctx context.Context, job Job, image []byte) (*Submitted, error) {
	if job.ID == "" {
		job.ID = p.NewID()
	}
	if len(image) == 0 {
		return nil, fmt.Errorf("job %s: empty image", job.ID)
	}
	if len(image) > p.maxImage {
		return nil, fmt.Errorf("job %s: image of %d bytes is over the %d-byte limit", job.ID, len(image), p.maxImage)
	}
	job.Image, job.ImageSize = job.ID, len(image)
	job.Producer = p.name
	if job.Submitted.IsZero() {
		job.Submitted = time.Now().UTC()
	}
	if err := job.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", job.ID, err)
	}
	p.mu.Lock()
	ch, ok := p.waiters[job.ID]
	if !ok { // a repeated id shares the first one's waiter
		ch = make(chan Result, 1)
		p.waiters[job.ID] = ch
	}
	p.mu.Unlock()
	s := &Submitted{ID: job.ID, ch: ch}
	err = retry(ctx, func(ctx context.Context) error {
		_, err := p.c.images.PutBytes(ctx, job.Image, image)
		return err
	})
	if err != nil {
		p.forget(job.ID)
		return nil, fmt.Errorf("job %s: store image: %w", job.ID, err)
	}
	set := p.c.set
	err = retry(ctx, func(ctx context.Context) error {
		msg := &nats.Msg{Subject: set.Subject(), Data: body, Header: nats.Header{}}
		_, err := p.c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(job.ID), jetstream.WithExpectStream(set.Stream))
		return fullError(err)
	})
	if err != nil {
		p.forget(job.ID)
		return nil, fmt.Errorf("job %s: publish: %w", job.ID, err)
	}
	return s, nil
}

func (p *Producer) forget(id string) {
	p.mu.Lock()
	delete(p.waiters, id)
	p.mu.Unlock()
}

// Wait waits for the result of s, reading it directly every PollInterval
// in case the watcher missed it.
func (p *Producer) Wait(ctx context.Context, s *Submitted) (Result, error) {
	t := time.NewTicker(p.poll)
	defer t.Stop()
	for {
		select {
		case r := <-s.ch:
			return r, nil
		case <-ctx.Done():
			p.forget(s.ID)
			return Result{}, fmt.Errorf("job %s: wait for result: %w", s.ID, ctx.Err())
		case <-p.closed:
			return Result{}, fmt.Errorf("job %s: %w", s.ID, errClosed)
		case <-t.C:
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, ok, err := p.c.result(gctx, s.ID)
			cancel()
			if err == nil && ok {
				p.deliver(s.ID, r)
				return r, nil
			}
		}
	}
}

var errClosed = errors.New("producer closed")

// Score publishes one job per item of req and waits for all results; it
// has the shape of server.Scorer. Items given by path are read here (the
// worker may run elsewhere). The request's prompts and conversation
// options are the worker's; aspects and max_new_tokens travel with the job.
func (p *Producer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	return p.ScoreJobs(ctx, req, nil, "")
}

// ScoreJobs is Score with gate thresholds carried by every job.
func (p *Producer) ScoreJobs(ctx context.Context, req schemas.ScoreRequest, thresholds map[string]float64, mode string) ([]schemas.ItemResult, error) {
	subs := make([]*Submitted, len(req.Items))
	for i, it := range req.Items {
		data := it.Data
		if data == nil && it.Path != "" {
			var err error
			if data, err = readBounded(it.Path, p.maxImage); err != nil {
				return nil, fmt.Errorf("%w: image %d: %v", schemas.ErrInvalid, i, err)
			}
		}
		prompt := it.Prompt
		if prompt == "" {
			prompt = req.Prompt
		}
		job := Job{Prompt: prompt, Aspects: req.Options.Aspects, MaxNewTokens: req.Options.MaxNewTokens, Thresholds: thresholds, Mode: mode}
		s, err := p.Submit(ctx, job, data)
		if err != nil {
			return nil, err
		}
		subs[i] = s
	}
	out := make([]schemas.ItemResult, len(subs))
	for i, s := range subs {
		r, err := p.Wait(ctx, s)
		if err != nil {
			for _, rest := range subs[i+1:] {
				p.forget(rest.ID)
			}
			return nil, err
		}
		out[i] = r.Item(i)
	}
	return out, nil
}

// State is ready while connected to NATS and restarting while
// reconnecting (server.Scorer).
func (p *Producer) State() schemas.State {
	select {
	case <-p.closed:
		return schemas.StateStopped
	default:
	}
	if p.c.Connected() {
		return schemas.StateReady
	}
	return schemas.StateRestarting
}

// Restarts counts reconnections to NATS (server.Scorer).
func (p *Producer) Restarts() int { return p.c.Reconnects() }

// Stats are a producer's counts of results seen.
type Stats struct {
	// ByWorker counts results per worker name: of this producer's jobs, or
	// of every job with ProducerConfig.WatchAll.
	ByWorker map[string]int
	// Redeliveries sums deliveries beyond the first over those results.
	Redeliveries int
	// Waiting counts jobs published and not finished.
	Waiting int
}

// Stats returns the producer's counts.
func (p *Producer) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Stats{ByWorker: make(map[string]int, len(p.done)), Redeliveries: p.redeliv, Waiting: len(p.waiters)}
	for k, v := range p.done {
		st.ByWorker[k] = v
	}
	return st
}

// Client returns the producer's connection.
func (p *Producer) Client() *Client { return p.c }

func readBounded(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%s is over the %d-byte limit", path, limit)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}

// sanitize keeps A-Z a-z 0-9 - _ and turns anything else into "_".
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}
