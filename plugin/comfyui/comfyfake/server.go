// Package comfyfake is a fake ComfyUI server for tests and demos. It speaks
// the protocol recorded from a real ComfyUI v0.3.64 (the transcripts in
// plugin/comfyui/testdata): the websocket with its initial status and
// per-prompt event sequence sent only to the prompt's client_id, binary
// preview frames, /prompt with the real validation errors, /history,
// /view, /upload/image, /object_info, /queue and /interrupt, and caching of
// an identical re-queued prompt. Images of SaveImage/PreviewImage nodes are
// PNGs computed from the seeds of the sampler nodes upstream (KSampler
// "seed", KSamplerAdvanced "noise_seed") by a function the test chooses.
//
// Stop and Start model killing and restarting the server: the queue,
// history, cache and temp files are lost, output files survive (they live on
// disk on a real server), and the address stays the same.
package comfyfake

import (
	"bytes"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/nodes"
)

// objectInfoJSON is the complete GET /object_info answer of a real
// ComfyUI v0.3.64 server (stock nodes and its bundled websocket_image_save),
// a copy of ../shared/fixtures/comfyui/object_info-v0.3.64.json: key order
// and every field as the server sent them, re-indented. The fake sends it
// back in the server's own encoding (Python's json.dumps).
//
//go:embed object_info.json
var objectInfoJSON []byte

// loadImageChoices is LoadImage's image input in objectInfoJSON (re-encoded
// like the server): the list of the input folder the recording saw. The
// fake lists its own input folder there, as the real LoadImage does.
const loadImageChoices = `"image": [["example.png"], {"image_upload": true}]`

// probeInfoJSON is the object_info of the QualityProbe research node of the
// recorded transcripts.
//
//go:embed probe_info.json
var probeInfoJSON []byte

// ImageFunc makes the image a sampler produces for a seed (batch item i
// gets seed+i).
type ImageFunc func(seed uint64) image.Image

// Server is a fake ComfyUI server.
type Server struct {
	opts options

	mu       sync.Mutex
	addr     string // fixed by the first Start
	hs       *http.Server
	gen      *generation
	files    map[fileKey][]byte // "disk": input, output and temp files
	counters map[string]int
	classes  map[string]classInfo
	rawInfo  map[string]json.RawMessage
	// infoOrder is the order of the classes in /object_info: stock
	// classes as the real server lists them, then the extra ones.
	infoOrder []string
	// pyInfo holds each class's /object_info entry as the server encodes it.
	pyInfo  map[string][]byte
	handler http.Handler
	prompts int // prompts executed over the server's life (not reset by restarts)
}

type fileKey struct{ typ, subfolder, name string }

type options struct {
	image     ImageFunc
	stepDelay time.Duration
	maxSteps  int
	previews  bool
	failSeed  func(seed uint64) bool
	probe     bool
	extra     map[string]json.RawMessage
	addr      string
}

// Option configures a Server.
type Option func(*options)

// WithImageFunc sets how images are made from sampler seeds (default: a
// 32×32 image whose brightness is seed mod 256).
func WithImageFunc(f ImageFunc) Option { return func(o *options) { o.image = f } }

// WithStepDelay makes every sampler step take d (default 0), so that tests
// can act while a prompt runs.
func WithStepDelay(d time.Duration) Option { return func(o *options) { o.stepDelay = d } }

// WithMaxSteps caps the progress steps a sampler reports (default 3).
func WithMaxSteps(n int) Option { return func(o *options) { o.maxSteps = n } }

// WithPreviews turns on binary preview frames during sampling (default on).
func WithPreviews(on bool) Option { return func(o *options) { o.previews = on } }

// WithFailSeed makes sampler nodes raise (execution_error) for the seeds
// where f is true.
func WithFailSeed(f func(seed uint64) bool) Option { return func(o *options) { o.failSeed = f } }

// WithQualityProbe adds the QualityProbe node of the recorded transcripts'
// probe pack: it scores an IMAGE batch by mean brightness, broadcasts a
// "quality_probe.score" event and a binary text frame, shows
// {"scores","passed"} on the node, raises ValueError when its "fail" input
// is true, and is never cached. With it the fake replays the transcripts'
// scenarios message for message.
func WithQualityProbe() Option { return func(o *options) { o.probe = true } }

// WithAddr sets the address the first Start listens on (default
// 127.0.0.1:0, a free port).
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithNodeClass registers a node class by its /object_info entry (the
// object under the class name), e.g. a custom sampler. The fake executes
// unknown classes as no-ops; their seed/noise_seed inputs still drive the
// images made downstream.
func WithNodeClass(class string, info json.RawMessage) Option {
	return func(o *options) {
		if o.extra == nil {
			o.extra = map[string]json.RawMessage{}
		}
		o.extra[class] = info
	}
}

// DefaultImage is the default ImageFunc: a 32×32 gray image of brightness
// seed mod 256 with a faint diagonal pattern.
func DefaultImage(seed uint64) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, 32, 32))
	v := uint8(seed % 256)
	for y := 0; y < 32; y++ {
		for x := 0; x < 32; x++ {
			p := v
			if (x+y)%8 == 0 && v < 255 {
				p = v + 1
			}
			i := img.PixOffset(x, y)
			img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = p, p, p, 255
		}
	}
	return img
}

// New returns a stopped fake server; call Start, or mount Handler on an
// httptest.Server.
func New(opts ...Option) *Server {
	o := options{image: DefaultImage, maxSteps: 3, previews: true}
	for _, f := range opts {
		f(&o)
	}
	s := &Server{opts: o, files: map[fileKey][]byte{}, counters: map[string]int{}, addr: o.addr}
	s.rawInfo, s.pyInfo = map[string]json.RawMessage{}, map[string][]byte{}
	add := func(what string, doc []byte) {
		classes, err := orderedObject(doc)
		if err != nil {
			panic(fmt.Sprintf("comfyfake: %s: %v", what, err)) // build-time data or a test's option
		}
		for _, c := range classes {
			py, err := nodes.PythonJSON(c.raw)
			if err != nil {
				panic(fmt.Sprintf("comfyfake: %s: class %s: %v", what, c.key, err))
			}
			if _, dup := s.rawInfo[c.key]; !dup {
				s.infoOrder = append(s.infoOrder, c.key)
			}
			s.rawInfo[c.key], s.pyInfo[c.key] = c.raw, py
		}
	}
	add("embedded object_info.json", objectInfoJSON)
	if !bytes.Contains(s.pyInfo["LoadImage"], []byte(loadImageChoices)) {
		panic("comfyfake: embedded object_info.json: LoadImage lacks " + loadImageChoices)
	}
	if o.probe {
		add("embedded probe_info.json", probeInfoJSON)
	}
	extra := make([]string, 0, len(o.extra))
	for k := range o.extra {
		extra = append(extra, k)
	}
	sort.Strings(extra)
	for _, k := range extra {
		b, _ := json.Marshal(map[string]json.RawMessage{k: o.extra[k]})
		add("WithNodeClass "+k, b)
	}
	s.classes = parseClasses(s.rawInfo)
	// The input folder the recorded server had: LoadImage lists it.
	s.files[fileKey{"input", "", "example.png"}] = examplePNG()
	s.gen = newGeneration(s)
	s.handler = s.routes()
	return s
}

// Handler returns the server's HTTP handler (every route also under /api).
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens (on WithAddr's address, or a free port on 127.0.0.1, the
// first time; on the same address after a Stop) and serves until Stop.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hs != nil {
		return errors.New("comfyfake: already started")
	}
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the old socket may linger briefly
		ln, err = net.Listen("tcp", addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("comfyfake: listen %s: %w", addr, err)
	}
	s.addr = ln.Addr().String()
	if s.gen == nil {
		s.gen = newGeneration(s)
	}
	s.hs = &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	go s.hs.Serve(ln)
	return nil
}

// URL returns "http://127.0.0.1:PORT" (empty before the first Start).
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr == "" {
		return ""
	}
	return "http://" + s.addr
}

// Stop kills the server: connections drop, the running prompt is
// abandoned, and queue, history, cache and temp files are lost.
func (s *Server) Stop() {
	s.mu.Lock()
	hs, gen := s.hs, s.gen
	s.hs, s.gen = nil, nil
	for k := range s.files {
		if k.typ == "temp" {
			delete(s.files, k)
		}
	}
	s.mu.Unlock()
	if hs != nil {
		hs.Close()
	}
	if gen != nil {
		gen.stop()
	}
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// PromptsExecuted returns how many prompts the server has run (executed or
// all-cached) over its life, restarts included.
func (s *Server) PromptsExecuted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prompts
}

// Clients returns the ids of the connected websockets.
func (s *Server) Clients() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == nil {
		return nil
	}
	var ids []string
	for id := range s.gen.clients {
		ids = append(ids, id)
	}
	return ids
}

// curGen returns the live generation, or nil while stopped.
func (s *Server) curGen() *generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// wsClient is one connected websocket: a writer goroutine drains out, a
// reader goroutine handles feature_flags.
type wsClient struct {
	id       string
	conn     *websocket.Conn
	out      chan wsFrame
	done     chan struct{}
	once     sync.Once
	metadata bool // supports_preview_metadata, guarded by Server.mu
}

type wsFrame struct {
	binary bool
	data   []byte
}

func (c *wsClient) close() {
	c.once.Do(func() {
		close(c.done)
		c.conn.Close()
	})
}

func (c *wsClient) send(f wsFrame) {
	select {
	case c.out <- f:
	case <-c.done:
	default:
		c.close() // a client this slow is dropped
	}
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	gen := s.curGen()
	if gen == nil {
		http.Error(w, "server stopped", http.StatusServiceUnavailable)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = randomHex(16)
	}
	c := &wsClient{id: sid, conn: conn, out: make(chan wsFrame, 4096), done: make(chan struct{})}
	s.mu.Lock()
	if s.gen != gen {
		s.mu.Unlock()
		conn.Close()
		return
	}
	if old, ok := gen.clients[sid]; ok {
		old.close()
	}
	gen.clients[sid] = c
	gen.wg.Add(1)
	first, _ := json.Marshal(map[string]any{"type": "status", "data": map[string]any{
		"status": map[string]any{"exec_info": map[string]any{"queue_remaining": gen.queueRemaining()}}, "sid": sid}})
	c.send(wsFrame{data: first})
	if gen.running != nil && gen.running.clientID == sid && gen.lastNode != "" {
		b, _ := json.Marshal(map[string]any{"type": "executing", "data": map[string]any{"node": gen.lastNode}})
		c.send(wsFrame{data: b})
	}
	s.mu.Unlock()

	go func() { // writer
		defer gen.wg.Done()
		for {
			select {
			case f := <-c.out:
				typ := websocket.TextMessage
				if f.binary {
					typ = websocket.BinaryMessage
				}
				_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := conn.WriteMessage(typ, f.data); err != nil {
					c.close()
					return
				}
			case <-c.done:
				return
			}
		}
	}()
	// reader (this goroutine): the default ping handler answers pings.
	defer func() {
		c.close()
		s.mu.Lock()
		if gen.clients[sid] == c {
			delete(gen.clients, sid)
		}
		s.mu.Unlock()
	}()
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			continue
		}
		var msg struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if json.Unmarshal(data, &msg) != nil || msg.Type != "feature_flags" {
			continue
		}
		var flags map[string]any
		_ = json.Unmarshal(msg.Data, &flags)
		s.mu.Lock()
		c.metadata, _ = flags["supports_preview_metadata"].(bool)
		s.mu.Unlock()
		reply, _ := json.Marshal(map[string]any{"type": "feature_flags", "data": serverFeatures})
		c.send(wsFrame{data: reply})
	}
}

var serverFeatures = map[string]any{"supports_preview_metadata": true, "max_upload_size": 104857600}

// trimAPI strips the /api prefix every route also has.
func trimAPI(p string) string {
	if strings.HasPrefix(p, "/api/") {
		return p[4:]
	}
	return p
}
