package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/m3gate/m3gate/plugin/config"
	"github.com/m3gate/m3gate/plugin/pipeline"
	"github.com/m3gate/m3gate/plugin/queue"
	"github.com/m3gate/m3gate/plugin/supervisor"
)

// queueSettings maps the config's queue section onto the queue's settings.
func queueSettings(q config.Queue) queue.Settings {
	return queue.Settings{
		AckWait: q.AckWait, MaxAckPending: q.MaxAckPending, MaxDeliver: q.MaxDeliver,
		NakDelay: q.NakDelay, MaxJobs: int64(q.MaxJobs), Replicas: q.Replicas,
	}
}

// queueDataDir is the embedded server's file store: queue.data_dir, else
// the user cache directory's m3gate/queue.
func queueDataDir(q config.Queue) (string, error) {
	if q.DataDir != "" {
		return q.DataDir, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("queue data directory: set queue.data_dir (%w)", err)
	}
	return filepath.Join(dir, "m3gate", "queue"), nil
}

// connectQueue connects to the configured queue: to url (queue.url when
// empty; "embedded" means the embedded server's queue.listen address), or
// in-process to emb.
func connectQueue(ctx context.Context, q config.Queue, url, name string, emb *queue.Embedded) (*queue.Client, error) {
	if url == "" {
		url = q.URL
	}
	if url == "embedded" {
		url = "nats://" + q.Listen
	}
	return queue.Connect(ctx, queue.ClientConfig{
		URL: url, InProcess: emb, Name: name, Credentials: q.Credentials,
		TLSCA: q.TLSCA, TLSCert: q.TLSCert, TLSKey: q.TLSKey, Settings: queueSettings(q),
	})
}

// serveQueue is the queue side of `m3gate serve`: the embedded server
// (with queue.url: embedded), the producer the HTTP API scores through,
// its metrics, and a worker on the daemon's own model process.
type serveQueue struct {
	emb      *queue.Embedded
	client   *queue.Client
	producer *queue.Producer
	registry *prometheus.Registry
	cancel   context.CancelFunc
	worker   sync.WaitGroup
}

// startServeQueue starts the queue side of serve when a queue is
// configured (url overrides queue.url); it returns nil without one.
func startServeQueue(ctx context.Context, app *App, url string, sup *supervisor.Supervisor, logger hclog.Logger) (*serveQueue, error) {
	cfg := app.Config
	if url == "" {
		url = cfg.Queue.URL
	}
	if url == "" {
		return nil, nil
	}
	q := &serveQueue{registry: prometheus.NewRegistry()}
	if url == "embedded" {
		dir, err := queueDataDir(cfg.Queue)
		if err != nil {
			return nil, err
		}
		if q.emb, err = queue.StartEmbedded(queue.EmbeddedConfig{Dir: dir, Listen: cfg.Queue.Listen}); err != nil {
			return nil, err
		}
		fmt.Fprintf(app.Stderr, "m3gate queue: embedded JetStream server on %s (file store %s)\n", q.emb.URL(), dir)
	}
	var err error
	if q.client, err = connectQueue(ctx, cfg.Queue, url, "m3gate serve", q.emb); err != nil {
		q.Close()
		return nil, err
	}
	host, _ := os.Hostname()
	if q.producer, err = queue.NewProducer(ctx, q.client, queue.ProducerConfig{Name: "serve-" + host, WatchAll: true}); err != nil {
		q.Close()
		return nil, err
	}
	q.registry.MustRegister(queue.NewCollector(q.producer))
	w, err := newQueueWorker(ctx, app, q.client, sup, "", logger)
	if err != nil {
		q.Close()
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	q.cancel = cancel
	q.worker.Add(1)
	go func() {
		defer q.worker.Done()
		_ = w.Run(wctx)
	}()
	return q, nil
}

// Close drains the daemon's worker, then closes the producer, the
// connection and the embedded server. It accepts nil.
func (q *serveQueue) Close() {
	if q == nil {
		return
	}
	if q.cancel != nil {
		q.cancel()
		q.worker.Wait()
	}
	if q.producer != nil {
		q.producer.Close()
	}
	if q.client != nil {
		q.client.Close()
	}
	if q.emb != nil {
		q.emb.Shutdown()
	}
}

// newQueueWorker makes a worker scoring with sup, batches of
// scoring.batch_size, the daemon's default score options.
func newQueueWorker(ctx context.Context, app *App, c *queue.Client, sup *supervisor.Supervisor, name string, logger hclog.Logger) (*queue.Worker, error) {
	defaults, err := serveDefaults(app.Config)
	if err != nil {
		return nil, err
	}
	if name == "" {
		host, _ := os.Hostname()
		name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return queue.NewWorker(ctx, c, queue.WorkerConfig{
		Name: name, Scorer: sup, Defaults: defaults, BatchSize: app.Config.Scoring.BatchSize, Logger: logger.Named("worker"),
	})
}

// runQueueScorer is `m3gate run`'s scorer with a queue: jobs go to the
// queue (url overrides queue.url) with the run's gate.
type runQueueScorer struct {
	*queue.PipelineScorer
	client *queue.Client
}

func newRunQueueScorer(ctx context.Context, app *App, url string, gate pipeline.Gate) (*runQueueScorer, error) {
	c, err := connectQueue(ctx, app.Config.Queue, url, "m3gate run", nil)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	p, err := queue.NewProducer(ctx, c, queue.ProducerConfig{Name: fmt.Sprintf("run-%s-%d", host, os.Getpid())})
	if err != nil {
		c.Close()
		return nil, err
	}
	return &runQueueScorer{PipelineScorer: &queue.PipelineScorer{Producer: p, Gate: gate}, client: c}, nil
}

// Close closes the producer and its connection.
func (s *runQueueScorer) Close() {
	s.Producer.Close()
	s.client.Close()
}

var errNoQueue = errors.New("no queue: pass --queue nats://host:4222 or set queue.url in config.yaml")
