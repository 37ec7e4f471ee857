package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/m3gate/m3gate/plugin/server"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// The producer is the daemon's scorer.
var _ server.Scorer = (*Producer)(nil)

// hashScorer scores an image by a hash of its bytes and prompt: an
// independent, deterministic stand-in for the model in the unit tests
// (the end-to-end tests in plugin/e2e use the real model process). Images
// starting with "corrupt" fail on their own; images starting with "crash"
// fail the whole request as a dying model process does.
type hashScorer struct {
	calls   atomic.Int64
	mu      sync.Mutex
	batches []int
	delay   time.Duration
}

func hashMOS(data []byte, prompt string) float64 {
	h := sha256.Sum256(append(append([]byte{}, data...), prompt...))
	return float64(binary.BigEndian.Uint16(h[:2])) / 65535 * 5
}

func (s *hashScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	s.calls.Add(1)
	s.mu.Lock()
	s.batches = append(s.batches, len(req.Items))
	s.mu.Unlock()
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	out := make([]schemas.ItemResult, len(req.Items))
	for i, it := range req.Items {
		if bytes.HasPrefix(it.Data, []byte("crash")) {
			return nil, fmt.Errorf("score: %w", supervisor.ErrProcessDied)
		}
		out[i].Index = i
		if bytes.HasPrefix(it.Data, []byte("corrupt")) {
			out[i].Error = "decode image: unknown format"
			continue
		}
		out[i].Aspects = map[string]schemas.AspectResult{}
		for _, a := range req.Options.Aspects {
			m := hashMOS(it.Data, it.Prompt+a)
			out[i].Aspects[a] = schemas.AspectResult{MOS: m, Rating: iqa.RatingWord(m), Source: schemas.SourceWordProbs}
		}
	}
	return out, nil
}

func startServer(t *testing.T, dir string) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

func connect(t *testing.T, url string, set Settings) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, ClientConfig{URL: url, Name: t.Name(), Settings: set})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newProducer(t *testing.T, c *Client, name string) *Producer {
	t.Helper()
	p, err := NewProducer(context.Background(), c, ProducerConfig{Name: name, PollInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// runWorker runs a worker until the returned stop function is called;
// stop returns its stats after it drained.
func runWorker(t *testing.T, c *Client, name string, sc Scorer, batch int) func() WorkerStats {
	t.Helper()
	w, err := NewWorker(context.Background(), c, WorkerConfig{Name: name, Scorer: sc, BatchSize: batch, FetchWait: 100 * time.Millisecond, Logger: testLogger(t),
		Defaults: schemas.ScoreOptions{Aspects: []string{"quality"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() WorkerStats {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker %s: %v", name, err)
			}
		})
		return w.Stats()
	}
	t.Cleanup(func() { stop() })
	return stop
}

func fastSettings() Settings {
	return Settings{AckWait: 2 * time.Second, NakDelay: 50 * time.Millisecond, MaxDeliver: 3}
}

func TestScoreThroughQueue(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	sc := &hashScorer{}
	stopA := runWorker(t, connect(t, e.URL(), set), "a", sc, 4)
	stopB := runWorker(t, connect(t, e.URL(), set), "b", sc, 4)
	p := newProducer(t, connect(t, e.URL(), set), "daemon")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := schemas.ScoreRequest{Prompt: "a fox", Options: schemas.ScoreOptions{Aspects: []string{"quality", "correspondence"}}}
	for i := range 10 {
		req.Items = append(req.Items, schemas.ScoreItem{Data: []byte(fmt.Sprintf("image %d", i))})
	}
	req.Items[3].Prompt = "a cat"
	req.Items[7].Data = []byte("corrupt 7")
	got, err := p.Score(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := (&hashScorer{}).Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{
		{Data: req.Items[0].Data, Prompt: "a fox"}, {Data: req.Items[3].Data, Prompt: "a cat"}}, Options: req.Options})
	if len(got) != 10 {
		t.Fatalf("got %d results, want 10", len(got))
	}
	for i, r := range got {
		if r.Index != i {
			t.Errorf("result %d has index %d", i, r.Index)
		}
	}
	for _, c := range []struct {
		i    int
		want schemas.ItemResult
	}{{0, want[0]}, {3, want[1]}} {
		for _, a := range req.Options.Aspects {
			if g, w := got[c.i].Aspects[a].MOS, c.want.Aspects[a].MOS; g != w {
				t.Errorf("image %d %s: MOS %v through the queue, %v locally", c.i, a, g, w)
			}
		}
	}
	if got[7].Error == "" || !strings.Contains(got[7].Error, "decode image") {
		t.Errorf("corrupt image: error %q, want the decode error", got[7].Error)
	}
	sa, sb := stopA(), stopB()
	if n := sa.Scored + sb.Scored; n != 9 {
		t.Errorf("workers scored %d images, want 9", n)
	}
	if n := sa.Failed + sb.Failed; n != 1 {
		t.Errorf("workers recorded %d errors, want 1", n)
	}
	sc.mu.Lock()
	maxBatch := 0
	for _, b := range sc.batches {
		maxBatch = max(maxBatch, b)
	}
	sc.mu.Unlock()
	if maxBatch > 4 || maxBatch < 2 {
		t.Errorf("largest batch %d, want 2..4 (batch size 4, 10 jobs queued at once)", maxBatch)
	}
	// The images are gone from the object store once their results are in.
	objs, err := p.c.images.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		t.Fatal(err)
	}
	if len(objs) != 0 {
		t.Errorf("%d image objects left after every job finished", len(objs))
	}
}

// TestPublishDeduplicated publishes the same job id twice: one job is
// queued and one result recorded.
func TestPublishDeduplicated(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	p := newProducer(t, connect(t, e.URL(), set), "p")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id := p.NewID()
	s1, err := p.Submit(ctx, Job{ID: id, Prompt: "x"}, []byte("img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Submit(ctx, Job{ID: id, Prompt: "x"}, []byte("img")); err != nil {
		t.Fatal(err)
	}
	info, err := p.c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pending != 1 {
		t.Fatalf("%d jobs queued after publishing one id twice, want 1", info.Pending)
	}
	stop := runWorker(t, connect(t, e.URL(), set), "w", &hashScorer{}, 2)
	r, err := p.Wait(ctx, s1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Error != "" || r.Worker != "w" || r.Deliveries != 1 {
		t.Errorf("result %+v", r)
	}
	if st := stop(); st.Scored != 1 || st.Duplicates != 0 {
		t.Errorf("worker stats %+v, want 1 scored, no duplicates", st)
	}
}

// TestPoisonJobBounded: a job that kills the model process every time ends
// with a recorded error after MaxDeliver deliveries; its batch-mates are
// scored.
func TestPoisonJobBounded(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	sc := &hashScorer{}
	stop := runWorker(t, connect(t, e.URL(), set), "w", sc, 4)
	p := newProducer(t, connect(t, e.URL(), set), "p")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := schemas.ScoreRequest{Prompt: "p", Options: schemas.ScoreOptions{Aspects: []string{"quality"}}, Items: []schemas.ScoreItem{
		{Data: []byte("good 1")}, {Data: []byte("crash me")}, {Data: []byte("good 2")}}}
	got, err := p.Score(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Error != "" || got[2].Error != "" {
		t.Errorf("batch-mates of the poison job failed: %+v %+v", got[0], got[2])
	}
	if !strings.Contains(got[1].Error, "giving up") {
		t.Errorf("poison job: error %q, want giving up", got[1].Error)
	}
	st := stop()
	// Deliveries 1 and 2 tried to score (and were handed back), the
	// third recorded the error without scoring.
	if st.Naks < 2 || st.Failed != 1 {
		t.Errorf("worker stats %+v: want ≥2 naks, 1 failure", st)
	}
	r, ok, err := p.c.result(ctx, got2ID(t, p))
	if err != nil || !ok || r.Deliveries != set.MaxDeliver {
		t.Errorf("poison result %+v (found %v, %v): want %d deliveries", r, ok, err, set.MaxDeliver)
	}
}

// got2ID is the id of the second job p published.
func got2ID(t *testing.T, p *Producer) string { return p.prefix + ".2" }

// TestWorkerDrains: cancelling a worker's context lets it finish the batch
// in hand; every job of it gets a result, and the rest stays queued.
func TestWorkerDrains(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	sc := &hashScorer{delay: 300 * time.Millisecond}
	p := newProducer(t, connect(t, e.URL(), set), "p")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var subs []*Submitted
	for i := range 6 {
		s, err := p.Submit(ctx, Job{Prompt: "x"}, []byte(fmt.Sprint("img", i)))
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	stop := runWorker(t, connect(t, e.URL(), set), "w", sc, 2)
	for sc.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	st := stop() // returns after the batch in hand
	if st.Scored != 2 {
		t.Errorf("drained worker scored %d jobs, want its batch of 2", st.Scored)
	}
	info, err := p.c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.InFlight != 0 || info.Pending != 4 {
		t.Errorf("after drain: %+v, want 4 pending and none in flight", info)
	}
	// A new worker finishes the rest.
	runWorker(t, connect(t, e.URL(), set), "w2", &hashScorer{}, 2)
	for _, s := range subs {
		if _, err := p.Wait(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServerRestartKeepsJobs restarts the embedded server (file store)
// between publishing and scoring: nothing is lost, and the producer and
// the worker reconnect on their own.
func TestServerRestartKeepsJobs(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(EmbeddedConfig{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	url := e.URL()
	set := fastSettings()
	p := newProducer(t, connect(t, url, set), "p")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var subs []*Submitted
	for i := range 20 {
		s, err := p.Submit(ctx, Job{Prompt: "x"}, []byte(fmt.Sprint("img", i)))
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	wc := connect(t, url, set)
	e.Shutdown()
	e2, err := StartEmbedded(EmbeddedConfig{Dir: dir, Listen: strings.TrimPrefix(url, "nats://")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e2.Shutdown)
	stop := runWorker(t, wc, "w", &hashScorer{}, 4)
	for _, s := range subs {
		r, err := p.Wait(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if r.Error != "" {
			t.Errorf("job %s: %s", s.ID, r.Error)
		}
	}
	if st := stop(); st.Scored != 20 {
		t.Errorf("worker scored %d, want 20", st.Scored)
	}
	if p.Restarts() == 0 {
		t.Errorf("producer did not count a reconnect")
	}
}

func TestCollector(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	p := newProducer(t, connect(t, e.URL(), set), "p")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := p.Submit(ctx, Job{Prompt: "x"}, []byte(fmt.Sprint("img", i))); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(p))
	if got := gaugeValue(t, reg, "m3gate_queue_depth"); got != 3 {
		t.Errorf("m3gate_queue_depth = %v, want 3", got)
	}
	if got := gaugeValue(t, reg, "m3gate_queue_producer_waiting"); got != 3 {
		t.Errorf("m3gate_queue_producer_waiting = %v, want 3", got)
	}
}

// gaugeValue gathers reg and returns the value of the gauge name.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// nopScorer answers every image at once with a fixed score: with it, the
// time per job is the queue's own cost.
type nopScorer struct{}

func (nopScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	out := make([]schemas.ItemResult, len(req.Items))
	for i := range out {
		out[i] = schemas.ItemResult{Index: i, Aspects: map[string]schemas.AspectResult{"quality": {MOS: 3, Rating: "good"}}}
	}
	return out, nil
}

// BenchmarkOverhead measures the queue's cost per job, end to end on an
// embedded server with a file store: image into the object store, publish
// with dedupe, fetch, image out, result into the bucket, ack, image
// deleted, result watched back by the producer. The scorer costs nothing.
// b.N jobs are in flight at once (up to 256).
func BenchmarkOverhead(b *testing.B) {
	for _, batch := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			e, err := StartEmbedded(EmbeddedConfig{Dir: b.TempDir(), Listen: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Shutdown()
			ctx := context.Background()
			set := Settings{}
			wc, err := Connect(ctx, ClientConfig{URL: e.URL(), Settings: set})
			if err != nil {
				b.Fatal(err)
			}
			defer wc.Close()
			w, err := NewWorker(ctx, wc, WorkerConfig{Scorer: nopScorer{}, BatchSize: batch, Defaults: schemas.ScoreOptions{Aspects: []string{"quality"}}})
			if err != nil {
				b.Fatal(err)
			}
			wctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { w.Run(wctx); close(done) }()
			defer func() { cancel(); <-done }()
			pc, err := Connect(ctx, ClientConfig{URL: e.URL(), Settings: set})
			if err != nil {
				b.Fatal(err)
			}
			defer pc.Close()
			p, err := NewProducer(ctx, pc, ProducerConfig{})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			img := bytes.Repeat([]byte{0x42}, 800) // a 16×16 PNG is about this size
			b.ResetTimer()
			start := time.Now()
			sem := make(chan struct{}, 256)
			var wg sync.WaitGroup
			for range b.N {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					s, err := p.Submit(ctx, Job{Prompt: "x"}, img)
					if err == nil {
						_, err = p.Wait(ctx, s)
					}
					if err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/job")
		})
	}
}

// TestWatchAllCountsFleet: a producer watching the whole queue (the
// daemon's, for /metrics) counts the results of another producer's jobs
// per worker.
func TestWatchAllCountsFleet(t *testing.T) {
	e := startServer(t, t.TempDir())
	set := fastSettings()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fleet, err := NewProducer(ctx, connect(t, e.URL(), set), ProducerConfig{Name: "daemon", WatchAll: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	own := newProducer(t, connect(t, e.URL(), set), "run")
	runWorker(t, connect(t, e.URL(), set), "w", &hashScorer{}, 2)
	for i := range 3 {
		s, err := own.Submit(ctx, Job{Prompt: "x"}, []byte(fmt.Sprint("img", i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := own.Wait(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for fleet.Stats().ByWorker["w"] < 3 {
		if ctx.Err() != nil {
			t.Fatalf("fleet producer counted %v, want w: 3", fleet.Stats().ByWorker)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := own.Stats().ByWorker["w"]; got != 3 {
		t.Errorf("own producer counted %d, want 3", got)
	}
}

// TestWorkerRecreatesLostQueue: a server that comes back without its store
// (a new, empty one on the same address) gets the queue back from the
// worker, which goes on scoring.
func TestWorkerRecreatesLostQueue(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	url := e.URL()
	set := fastSettings()
	stop := runWorker(t, connect(t, url, set), "w", &hashScorer{}, 2)
	e.Shutdown()
	e2 := startServer(t, t.TempDir()) // on a new port first: the worker must not see it yet
	e2.Shutdown()
	e3, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), Listen: strings.TrimPrefix(url, "nats://")})
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := newProducer(t, connect(t, url, set), "p")
	s, err := p.Submit(ctx, Job{Prompt: "x"}, []byte("img"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := p.Wait(ctx, s); err != nil || r.Worker != "w" {
		t.Fatalf("result %+v, %v", r, err)
	}
	stop()
}

// testLogger logs to the test's log.
func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
