package queue

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m3gate/m3gate/plugin/pipeline"
	"github.com/m3gate/m3gate/schemas"
)

// PipelineScorer scores the images of `m3gate run` through the queue; it
// implements pipeline.Scorer. The gate's thresholds travel with every job.
type PipelineScorer struct {
	// Producer publishes the jobs.
	Producer *Producer
	// Gate is the run's gate, recorded with every result.
	Gate pipeline.Gate
}

var _ pipeline.Scorer = (*PipelineScorer)(nil)

// Score implements pipeline.Scorer.
func (s *PipelineScorer) Score(ctx context.Context, images []pipeline.Image, prompt string, aspects []string) ([]pipeline.Scores, error) {
	req := schemas.ScoreRequest{Prompt: prompt, Options: schemas.ScoreOptions{Aspects: aspects}}
	for _, im := range images {
		req.Items = append(req.Items, schemas.ScoreItem{Data: im.Data})
	}
	res, err := s.Producer.ScoreJobs(ctx, req, s.Gate.Thresholds, string(s.Gate.Mode))
	if err != nil {
		return nil, err
	}
	out := make([]pipeline.Scores, len(res))
	for i, r := range res {
		sc := pipeline.Scores{Error: r.Error, Aspects: make(map[string]pipeline.AspectScore, len(r.Aspects))}
		for k, a := range r.Aspects {
			sc.Aspects[k] = pipeline.AspectScore{MOS: a.MOS, Rating: a.Rating, WordProbs: a.WordProbs, Description: a.Description, Source: a.Source}
		}
		out[i] = sc
	}
	return out, nil
}

// Collector exports the queue's state to Prometheus: jobs pending and in
// flight, held jobs that were redelivered, idle workers (from the
// servers, read at most once a second), and results per worker and
// redeliveries as the producer counts them (the whole fleet's with
// ProducerConfig.WatchAll).
type Collector struct {
	p *Producer

	mu   sync.Mutex
	at   time.Time
	info Info
	err  error

	pending, inFlight, redelivered, waiting, up *prometheus.Desc
	results, redeliveries, jobsWaiting          *prometheus.Desc
}

// NewCollector returns a collector for p's queue.
func NewCollector(p *Producer) *Collector {
	return &Collector{
		p:            p,
		pending:      prometheus.NewDesc("m3gate_queue_depth", "Score jobs in the queue that no worker holds yet.", nil, nil),
		inFlight:     prometheus.NewDesc("m3gate_queue_in_flight", "Score jobs workers hold and have not acked.", nil, nil),
		redelivered:  prometheus.NewDesc("m3gate_queue_redelivered", "Held score jobs that had been delivered before.", nil, nil),
		waiting:      prometheus.NewDesc("m3gate_queue_idle_pulls", "Open pull requests of idle workers.", nil, nil),
		up:           prometheus.NewDesc("m3gate_queue_up", "1 when the queue's servers answered the last info request.", nil, nil),
		results:      prometheus.NewDesc("m3gate_queue_results_total", "Results recorded since this process started, by the worker that recorded them (rate = per-worker throughput).", []string{"worker"}, nil),
		redeliveries: prometheus.NewDesc("m3gate_queue_redeliveries_total", "Deliveries beyond the first of the finished jobs counted in m3gate_queue_results_total.", nil, nil),
		jobsWaiting:  prometheus.NewDesc("m3gate_queue_producer_waiting", "Jobs this producer published and awaits.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.inFlight, c.redelivered, c.waiting, c.up, c.results, c.redeliveries, c.jobsWaiting} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if time.Since(c.at) > time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.info, c.err = c.p.c.Info(ctx)
		cancel()
		c.at = time.Now()
	}
	info, err := c.info, c.err
	c.mu.Unlock()
	up := 1.0
	if err != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	if err == nil {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.Pending))
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(info.InFlight))
		ch <- prometheus.MustNewConstMetric(c.redelivered, prometheus.GaugeValue, float64(info.Redelivered))
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(info.Waiting))
	}
	st := c.p.Stats()
	for w, n := range st.ByWorker {
		ch <- prometheus.MustNewConstMetric(c.results, prometheus.CounterValue, float64(n), w)
	}
	ch <- prometheus.MustNewConstMetric(c.redeliveries, prometheus.CounterValue, float64(st.Redeliveries))
	ch <- prometheus.MustNewConstMetric(c.jobsWaiting, prometheus.GaugeValue, float64(st.Waiting))
}
