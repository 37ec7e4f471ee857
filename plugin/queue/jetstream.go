package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Embedded is a JetStream server running inside this process, keeping its
// streams in files under a data directory so that queued jobs survive a
// restart.
type Embedded struct {
	srv *server.Server
}

// EmbeddedConfig configures an embedded server.
type EmbeddedConfig struct {
	// Dir is the data directory of the file store (created if missing).
	Dir string
	// Listen is the host:port clients (workers) connect to. Keep it on
	// loopback unless other machines must reach it. Port 0 picks a free one.
	Listen string
	// TLS, when set, makes the listener require TLS.
	TLS *tls.Config
}

// StartEmbedded starts a JetStream server with a file store under cfg.Dir
// and waits until it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded queue: no data directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded queue: %w", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded queue: listen %q: %w", cfg.Listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("embedded queue: listen %q: bad port", cfg.Listen)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	if host == "" {
		host = "127.0.0.1"
	}
	opts := &server.Options{
		ServerName: "m3gate-embedded",
		Host:       host,
		Port:       p,
		JetStream:  true,
		StoreDir:   cfg.Dir,
		NoSigs:     true,
		NoLog:      true,
		// The HTTP monitor stays off; nothing but the client port listens.
		HTTPPort: 0,
	}
	if cfg.TLS != nil {
		opts.TLSConfig = cfg.TLS
		opts.TLS = true
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded queue: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded queue: server on %s not ready after 30s (port taken?)", cfg.Listen)
	}
	return &Embedded{srv: srv}, nil
}

// URL is the nats:// URL clients connect to.
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// Server returns the running server, for in-process connections.
func (e *Embedded) Server() *server.Server { return e.srv }

// Shutdown stops the server and waits until it is down; the file store
// keeps every queued job.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// ClientConfig says how to reach the JetStream servers.
type ClientConfig struct {
	// URL is one or more comma-separated nats:// or tls:// URLs.
	URL string
	// InProcess connects to an embedded server without a socket (URL is
	// then ignored).
	InProcess *Embedded
	// Name identifies the connection in server monitoring.
	Name string
	// Credentials is a NATS .creds file (JWT and NKey seed).
	Credentials string
	// TLSCA, TLSCert and TLSKey are PEM files: the CA that signs the
	// servers' certificates, and this client's certificate and key.
	TLSCA, TLSCert, TLSKey string
	// Settings are the queue's names and limits.
	Settings Settings
	// OnReconnect, if set, is called after every reconnect.
	OnReconnect func()
}

// Client is a connection to JetStream with the queue's stream, result
// bucket and image store in place.
type Client struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	set        Settings
	stream     jetstream.Stream
	results    jetstream.KeyValue
	images     jetstream.ObjectStore
	reconnects atomic.Int64

	mu        sync.Mutex
	listeners []func() // called after every reconnect
}

// onReconnect registers f to be called after every reconnect.
func (c *Client) onReconnect(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listeners = append(c.listeners, f)
}

// Connect connects to JetStream and creates the job stream, the result
// bucket and the image store where they do not exist yet.
func Connect(ctx context.Context, cfg ClientConfig) (*Client, error) {
	cfg.Settings.defaults()
	c := &Client{set: cfg.Settings}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectHandler(func(*nats.Conn) {
			c.reconnects.Add(1)
			if cfg.OnReconnect != nil {
				cfg.OnReconnect()
			}
			c.mu.Lock()
			ls := slices.Clone(c.listeners)
			c.mu.Unlock()
			for _, f := range ls {
				f()
			}
		}),
	}
	if cfg.Credentials != "" {
		opts = append(opts, nats.UserCredentials(cfg.Credentials))
	}
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		tc, err := ClientTLS(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	url := cfg.URL
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess.srv))
		url = ""
	} else if url == "" {
		return nil, errors.New("queue: no NATS URL")
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("queue: connect to NATS at %s: %w", url, err)
	}
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := c.ensure(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// ClientTLS builds a TLS configuration from PEM files: ca verifies the
// servers, cert and key (both or neither) identify the client.
func ClientTLS(ca, cert, key string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("queue: tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("queue: tls ca %s: no PEM certificate", ca)
		}
		tc.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("queue: tls cert and key go together")
	}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("queue: tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc, nil
}

// ensure creates or updates the job stream, the result bucket and the
// image store. The settings of the last process to start win.
func (c *Client) ensure(ctx context.Context) error {
	s := c.set
	var err error
	c.stream, err = c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        s.Stream,
		Description: "m3gate score jobs (one per image)",
		Subjects:    []string{s.Subject()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     s.MaxJobs,
		MaxMsgSize:  64 << 10,
		Duplicates:  s.Duplicates,
		Replicas:    s.Replicas,
	})
	if err != nil {
		return fmt.Errorf("queue: job stream %s: %w", s.Stream, err)
	}
	c.results, err = c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.Results,
		Description: "m3gate score results by job id",
		History:     1,
		TTL:         s.ResultTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
	})
	if err != nil {
		return fmt.Errorf("queue: result bucket %s: %w", s.Results, err)
	}
	c.images, err = c.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      s.Images,
		Description: "m3gate images of queued score jobs",
		TTL:         s.ResultTTL,
		MaxBytes:    s.MaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
	})
	if err != nil {
		return fmt.Errorf("queue: image store %s: %w", s.Images, err)
	}
	return nil
}

// Settings returns the queue settings in effect (defaults filled in).
func (c *Client) Settings() Settings { return c.set }

// Connected reports whether the connection is up.
func (c *Client) Connected() bool { return c.nc.IsConnected() }

// Reconnects counts reconnections since Connect.
func (c *Client) Reconnects() int { return int(c.reconnects.Load()) }

// Close drains the connection (pending publishes and acks are flushed)
// and closes it.
func (c *Client) Close() error {
	if c.nc.IsClosed() {
		return nil
	}
	if !c.nc.IsConnected() {
		c.nc.Close()
		return nil
	}
	done := make(chan struct{})
	c.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := c.nc.Drain(); err != nil {
		c.nc.Close()
		return nil
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.nc.Close()
	}
	return nil
}

// Info is the state of the work queue as the servers see it.
type Info struct {
	// Pending is the number of jobs no worker holds yet.
	Pending uint64
	// InFlight is the number of jobs workers hold and have not acked.
	InFlight int
	// Redelivered is the number of held jobs that were delivered before.
	Redelivered int
	// Waiting is the number of open pull requests (idle workers).
	Waiting int
}

// Info asks the servers for the work queue's state.
func (c *Client) Info(ctx context.Context) (Info, error) {
	cons, err := c.stream.Consumer(ctx, c.set.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// No worker started yet: every job in the stream is pending.
		si, err := c.stream.Info(ctx)
		if err != nil {
			return Info{}, fmt.Errorf("queue info: %w", err)
		}
		return Info{Pending: si.State.Msgs}, nil
	}
	if err != nil {
		return Info{}, fmt.Errorf("queue info: %w", err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("queue info: %w", err)
	}
	return Info{Pending: ci.NumPending, InFlight: ci.NumAckPending, Redelivered: ci.NumRedelivered, Waiting: ci.NumWaiting}, nil
}

// result reads the recorded result of job id; ok is false when there is none.
func (c *Client) result(ctx context.Context, id string) (Result, bool, error) {
	e, err := c.results.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, false, err
	}
	var r Result
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return Result{}, false, fmt.Errorf("result %s: %w", id, err)
	}
	return r, true, nil
}

// transient reports whether a NATS error may go away by retrying: no
// connection, no JetStream answer yet, a full stream.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrConnectionClosed) {
		return false
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, ErrQueueFull) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream not available yet (cluster electing a leader).
		return apiErr.Code == 503
	}
	return strings.Contains(err.Error(), "timeout")
}

// fullError maps the stream's "maximum messages exceeded" refusal onto
// ErrQueueFull.
func fullError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum messages") {
		return fmt.Errorf("%w: %v", ErrQueueFull, err)
	}
	return err
}

// retry runs op until it succeeds, fails for good, or ctx ends, backing
// off from 50 ms to 2 s between tries.
func retry(ctx context.Context, op func(ctx context.Context) error) error {
	wait := 50 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(octx)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			if err != nil && ctx.Err() != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}
