package comfyui

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Client talks to one ComfyUI server: HTTP calls, and (after Connect) a
// websocket that is kept up with ping/pong deadlines and reconnected with
// exponential backoff under the same client id, so that events of prompts
// queued by this client keep flowing to it.
type Client struct {
	base *url.URL
	id   string
	http *http.Client
	opts options

	mu        sync.Mutex
	subs      map[*Subscription]struct{}
	connected bool
	downSince time.Time // when the websocket dropped (zero while up)
	started   bool
	closed    bool
	cancel    context.CancelFunc
	done      chan struct{}
	out       chan []byte // text messages for the current connection's writer
}

type options struct {
	clientID        string
	httpClient      *http.Client
	pingInterval    time.Duration
	pongWait        time.Duration
	writeWait       time.Duration
	minBackoff      time.Duration
	maxBackoff      time.Duration
	previewMetadata bool
	historyPoll     time.Duration
	downTimeout     time.Duration
	log             *slog.Logger
}

// Option configures a Client.
type Option func(*options)

// WithClientID sets the websocket client id (default: "m3gate-" + random
// hex). Reusing an id that another socket holds drops that socket.
func WithClientID(id string) Option { return func(o *options) { o.clientID = id } }

// WithHTTPClient sets the HTTP client used for API calls and the dial.
func WithHTTPClient(h *http.Client) Option { return func(o *options) { o.httpClient = h } }

// WithPing sets how often the client pings and how long it waits for any
// frame (a pong included) before it declares the connection dead.
func WithPing(interval, pongWait time.Duration) Option {
	return func(o *options) { o.pingInterval, o.pongWait = interval, pongWait }
}

// WithBackoff sets the reconnect backoff bounds (doubling from min to max,
// with jitter).
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = min, max }
}

// WithPreviewMetadata sets whether the client announces
// supports_preview_metadata (binary event 4 instead of 1). Default true.
func WithPreviewMetadata(on bool) Option { return func(o *options) { o.previewMetadata = on } }

// WithHistoryPoll sets how long WaitPrompt waits without hearing about its
// prompt before it checks /history and /queue itself (default 5 s).
func WithHistoryPoll(d time.Duration) Option { return func(o *options) { o.historyPoll = d } }

// WithDownTimeout makes WaitPrompt give up with ErrServerDown once the
// websocket has been down (and /history unreachable) for d (default 0:
// wait forever).
func WithDownTimeout(d time.Duration) Option { return func(o *options) { o.downTimeout = d } }

// WithLogger sets the logger for connection changes (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// New returns a client of the server at baseURL ("http://host:8188"). It
// does not connect; call Connect for the websocket.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil {
		return nil, fmt.Errorf("comfyui url %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("comfyui url %q: scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("comfyui url %q: no host", baseURL)
	}
	o := options{
		pingInterval:    10 * time.Second,
		pongWait:        30 * time.Second,
		writeWait:       10 * time.Second,
		minBackoff:      100 * time.Millisecond,
		maxBackoff:      5 * time.Second,
		previewMetadata: true,
		historyPoll:     5 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	if o.clientID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.clientID = "m3gate-" + hex.EncodeToString(b[:])
	}
	if o.httpClient == nil {
		o.httpClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.pongWait <= o.pingInterval {
		o.pongWait = 3 * o.pingInterval
	}
	u.RawQuery, u.Fragment = "", ""
	return &Client{base: u, id: o.clientID, http: o.httpClient, opts: o, subs: map[*Subscription]struct{}{}}, nil
}

// ID returns the websocket client id sent as client_id with every prompt.
func (c *Client) ID() string { return c.id }

// URL returns the server's base URL.
func (c *Client) URL() string { return c.base.String() }

// DownFor returns how long the websocket has been down (0 while it is up
// or before Connect).
func (c *Client) DownFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connected || c.downSince.IsZero() {
		return 0
	}
	return time.Since(c.downSince)
}

// Connected reports whether the websocket is currently up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

func (c *Client) wsURL() string {
	u := *c.base
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
	u.RawQuery = url.Values{"clientId": {c.id}}.Encode()
	return u.String()
}

func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: http.ProxyFromEnvironment}
	if c.http.Jar != nil {
		d.Jar = c.http.Jar
	}
	conn, resp, err := d.DialContext(ctx, c.wsURL(), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", c.wsURL(), err)
	}
	return conn, nil
}

// Connect opens the websocket and keeps it open until Close: when it drops,
// subscribers get *Disconnected, the client redials with backoff and, once
// back and registered by the server (its first message arrived),
// subscribers get *Reconnected. Connect fails if the first dial fails; it
// returns once the server's first status message has arrived (at most 10 s
// after the handshake), so that prompts queued next have their events
// delivered.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("comfyui client closed")
	}
	if c.started {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	conn, err := c.dial(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	c.mu.Lock()
	if c.started || c.closed {
		c.mu.Unlock()
		conn.Close()
		return nil
	}
	c.started = true
	rctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.done = make(chan struct{})
	done := c.done
	c.mu.Unlock()
	ready := make(chan struct{})
	go c.supervise(rctx, conn, sync.OnceFunc(func() { close(ready) }))
	// The server sends its status (with our sid) once it has registered the
	// socket; from then on our prompts' events reach us.
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
	case <-done:
		return errors.New("connect: client closed")
	case <-t.C:
		c.opts.log.Warn("comfyui sent no status after connecting", "server", c.base.String())
	case <-ctx.Done():
		return fmt.Errorf("connect: %w", ctx.Err())
	}
	return nil
}

// Close closes the websocket, stops reconnecting and ends every
// subscription.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cancel, done := c.cancel, c.done
	subs := c.subs
	c.subs = map[*Subscription]struct{}{}
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	for s := range subs {
		s.end()
	}
	return nil
}

// supervise runs one connection at a time (one reader, one writer
// goroutine each) and redials when it drops.
func (c *Client) supervise(ctx context.Context, conn *websocket.Conn, markReady func()) {
	defer close(c.done)
	attempts := 0
	for {
		err := c.serve(ctx, conn, attempts, markReady)
		c.mu.Lock()
		c.connected = false
		c.downSince = time.Now()
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		c.opts.log.Warn("comfyui websocket dropped", "server", c.base.String(), "err", err)
		c.broadcast(&Disconnected{Err: err})
		attempts = 0
		for {
			attempts++
			if !sleepCtx(ctx, backoff(c.opts.minBackoff, c.opts.maxBackoff, attempts)) {
				return
			}
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			conn, err = c.dial(dctx)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			c.opts.log.Debug("comfyui redial failed", "server", c.base.String(), "attempt", attempts, "err", err)
		}
		c.opts.log.Info("comfyui websocket reconnected", "server", c.base.String(), "attempts", attempts)
	}
}

// backoff returns min·2^(n−1) capped at max, with ±20 % jitter.
func backoff(min, max time.Duration, n int) time.Duration {
	d := float64(min) * math.Pow(2, float64(n-1))
	if d > float64(max) {
		d = float64(max)
	}
	d *= 0.8 + 0.4*mrand.Float64()
	return time.Duration(d)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// serve runs the reader and the writer goroutines of one connection until
// either fails or ctx ends. redials is 0 for the first connection;
// markReady is called when the server's first message arrives.
func (c *Client) serve(ctx context.Context, conn *websocket.Conn, redials int, markReady func()) error {
	out := make(chan []byte, 16)
	c.mu.Lock()
	c.connected = true
	c.downSince = time.Time{}
	c.out = out
	c.mu.Unlock()
	if c.opts.previewMetadata {
		if msg, err := EncodeMessage(TypeFeatureFlags, map[string]any{"supports_preview_metadata": true}); err == nil {
			out <- msg
		}
	}
	// Reconnected goes out when the server has registered the socket (its
	// first message), so a /history check made on it misses nothing.
	onFirst := func() {
		markReady()
		if redials > 0 {
			c.broadcast(&Reconnected{Attempts: redials})
		}
	}

	readErr := make(chan error, 1)
	stopWriter := make(chan struct{})
	writerDone := make(chan struct{})
	go func() { readErr <- c.readLoop(conn, onFirst) }()
	go func() { defer close(writerDone); c.writeLoop(conn, out, stopWriter) }()

	var err error
	readDone := false
	select {
	case err = <-readErr:
		readDone = true
	case <-ctx.Done():
		err = ctx.Err()
	}
	close(stopWriter)
	<-writerDone
	conn.Close()
	if !readDone {
		// The closed connection ends the reader. (Waiting only when ctx
		// ended would hang when the reader failed first and ctx ended
		// afterwards: its error was already taken.)
		<-readErr
	}
	c.mu.Lock()
	if c.out == out {
		c.out = nil
	}
	c.mu.Unlock()
	return err
}

func (c *Client) readLoop(conn *websocket.Conn, onFirst func()) error {
	conn.SetReadLimit(256 << 20)
	_ = conn.SetReadDeadline(time.Now().Add(c.opts.pongWait))
	conn.SetPongHandler(func(string) error {
		return conn.SetReadDeadline(time.Now().Add(c.opts.pongWait))
	})
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(c.opts.pongWait))
		if onFirst != nil {
			onFirst()
			onFirst = nil
		}
		var ev Event
		switch typ {
		case websocket.TextMessage:
			ev, err = DecodeMessage(data)
		case websocket.BinaryMessage:
			ev, err = DecodeBinary(data)
		default:
			continue
		}
		if err != nil {
			c.opts.log.Warn("comfyui: undecodable message", "server", c.base.String(), "err", err)
			continue
		}
		c.broadcast(ev)
	}
}

func (c *Client) writeLoop(conn *websocket.Conn, out <-chan []byte, stop <-chan struct{}) {
	t := time.NewTicker(c.opts.pingInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			_ = conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			return
		case msg := <-out:
			_ = conn.SetWriteDeadline(time.Now().Add(c.opts.writeWait))
			if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
				conn.Close() // the reader fails and the supervisor redials
				return
			}
		case <-t.C:
			if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.opts.writeWait)); err != nil {
				conn.Close()
				return
			}
		}
	}
}

// Send sends a JSON {type, data} message on the websocket (for custom
// server extensions). It fails when the socket is down.
func (c *Client) Send(ctx context.Context, typ string, data any) error {
	msg, err := EncodeMessage(typ, data)
	if err != nil {
		return err
	}
	c.mu.Lock()
	out := c.out
	c.mu.Unlock()
	if out == nil {
		return errors.New("send: websocket not connected")
	}
	select {
	case out <- msg:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Subscription receives every event of the client's websocket from the
// moment it was created, in order, without loss (its queue is unbounded:
// Close it when done).
type Subscription struct {
	c      *Client
	mu     sync.Mutex
	q      []Event
	notify chan struct{}
	ended  bool
}

// Subscribe starts a subscription to the websocket's events.
func (c *Client) Subscribe() *Subscription {
	s := &Subscription{c: c, notify: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.closed {
		s.ended = true
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	return s
}

// ErrClosed is returned by Subscription.Next after Close.
var ErrClosed = errors.New("comfyui subscription closed")

// Next returns the next event, waiting until one arrives, ctx ends or the
// subscription (or client) is closed.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.q) > 0 {
			ev := s.q[0]
			s.q[0] = nil
			s.q = s.q[1:]
			s.mu.Unlock()
			return ev, nil
		}
		ended := s.ended
		s.mu.Unlock()
		if ended {
			return nil, ErrClosed
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.end()
}

func (s *Subscription) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Subscription) push(ev Event) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.q = append(s.q, ev)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (c *Client) broadcast(ev Event) {
	c.mu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		s.push(ev)
	}
}
