package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// fakeScorer answers each image "img-N" with MOS N/10 and the image text as
// description. With gate set, every call waits for it (or for its ctx).
type fakeScorer struct {
	gate     chan struct{}
	inFlight atomic.Int32
	calls    atomic.Int32
	err      error
	state    schemas.State
	mu       sync.Mutex
	got      []schemas.ScoreRequest
}

func (f *fakeScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	f.calls.Add(1)
	f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	f.mu.Lock()
	f.got = append(f.got, req)
	f.mu.Unlock()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	out := make([]schemas.ItemResult, len(req.Items))
	for i, it := range req.Items {
		text := string(it.Data)
		if it.Path != "" {
			text = it.Path
		}
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(text), "img-"))
		if err != nil {
			out[i] = schemas.ItemResult{Index: i, Error: "decode image: unknown format"}
			continue
		}
		out[i] = schemas.ItemResult{Index: i, Aspects: map[string]schemas.AspectResult{}}
		for _, a := range req.Options.Aspects {
			mos := float64(n%50) / 10
			out[i].Aspects[a] = schemas.AspectResult{MOS: mos, Rating: iqa.RatingWord(mos), Description: text, Source: schemas.SourcePredictor,
				WordProbs: map[string]float64{"good": 0.5, "bad": 0.5}, Timings: map[string]time.Duration{"generate": 1500 * time.Microsecond}}
		}
	}
	return out, nil
}

func (f *fakeScorer) State() schemas.State {
	if f.state == "" {
		return schemas.StateReady
	}
	return f.state
}

func (f *fakeScorer) Restarts() int { return 2 }

func newTestServer(t *testing.T, f *fakeScorer, mod func(*Config)) (*Server, *httptest.Server) {
	t.Helper()
	cfg := Config{Scorer: f, QueueSize: 16}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); ts.Close() })
	return s, ts
}

func postJSON(t *testing.T, url string, body any) (*http.Response, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestScoreJSON(t *testing.T) {
	f := &fakeScorer{}
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "a.png"), []byte("img-7"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, ts := newTestServer(t, f, func(c *Config) {
		c.Defaults.MaxNewTokens = 77
		c.AllowPaths, c.PathRoots = true, []string{root}
	})
	resp, body := postJSON(t, ts.URL+"/v1/score", map[string]any{
		"images":  []map[string]string{{"data": b64("img-31")}, {"path": filepath.Join(root, "a.png")}, {"data": b64("garbage")}},
		"prompt":  "a cat",
		"aspects": []string{"quality", "correspondence"},
	})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got api.ScoreResponse
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Results) != 3 {
		t.Fatalf("got %d results", len(got.Results))
	}
	q := got.Results[0].Aspects["quality"]
	if q.MOS != 3.1 || q.Rating != "good" || q.Source != "predictor" || q.TimingsMS["generate"] != 1.5 || q.WordProbs["good"] != 0.5 {
		t.Errorf("image 0 quality: got %+v", q)
	}
	if got.Results[1].Aspects["correspondence"].Description != "img-7" {
		t.Errorf("image 1 (by path): got %+v", got.Results[1])
	}
	if got.Results[2].Error == "" || got.Results[2].Aspects != nil {
		t.Errorf("image 2: want a per-image error, got %+v", got.Results[2])
	}
	// The wire format names every field the node pack reads.
	for _, key := range []string{`"index":0`, `"error":""`, `"mos":3.1`, `"rating":"good"`, `"word_probs":{`, `"source":"predictor"`, `"timings_ms":{"generate":1.5}`} {
		if !bytes.Contains(body, []byte(key)) {
			t.Errorf("response lacks %s: %s", key, body)
		}
	}
	req := f.got[0]
	// The daemon read the file; the model process gets bytes, never a path.
	if req.Prompt != "a cat" || req.Options.MaxNewTokens != 77 || req.Items[1].Path != "" || string(req.Items[1].Data) != "img-7" {
		t.Errorf("scorer got %+v", req)
	}
}

func TestScoreMultipart(t *testing.T) {
	f := &fakeScorer{}
	_, ts := newTestServer(t, f, nil)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, img := range []string{"img-10", "img-42"} {
		w, _ := mw.CreateFormFile("image", img+".png")
		w.Write([]byte(img))
	}
	mw.WriteField("prompt", "a dog")
	mw.WriteField("aspects", "quality, authenticity")
	mw.Close()
	resp, err := http.Post(ts.URL+"/v1/score", mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got api.ScoreResponse
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	if len(got.Results) != 2 || got.Results[1].Aspects["authenticity"].MOS != 4.2 || got.Results[0].Aspects["quality"].MOS != 1.0 {
		t.Errorf("got %+v", got.Results)
	}
	if f.got[0].Prompt != "a dog" || fmt.Sprint(f.got[0].Options.Aspects) != "[quality authenticity]" {
		t.Errorf("scorer got %+v", f.got[0])
	}
}

func TestScoreBadRequests(t *testing.T) {
	f := &fakeScorer{}
	_, ts := newTestServer(t, f, func(c *Config) {
		c.MaxImages = 2
		c.MaxBodyBytes = 1 << 10
		c.AllowPaths, c.PathRoots = true, []string{t.TempDir()}
		c.Defaults.Prompts = map[string]schemas.AspectPrompt{"quality": {Round1: "a", Round2: "b"}, "q": {Round1: "c", Round2: "d"}, "correspondence": {Round1: "e", Round2: "f"}}
	})
	tests := []struct {
		name, ctype, body string
		code              int
		want              string
	}{
		{"no images", "application/json", `{"images":[],"prompt":"x"}`, 400, "no images"},
		{"bad base64", "application/json", `{"images":[{"data":"!!"}]}`, 400, "not base64"},
		{"relative path", "application/json", `{"images":[{"path":"a.png"}]}`, 400, "not absolute"},
		{"both", "application/json", `{"images":[{"data":"aGk=","path":"/a"}]}`, 400, "not both"},
		{"unknown field", "application/json", `{"imgs":[]}`, 400, "unknown field"},
		{"too many", "application/json", `{"images":[{"path":"/a"},{"path":"/b"},{"path":"/c"}]}`, 400, "at most 2"},
		{"repeated aspect", "application/json", `{"images":[{"data":"aGk="}],"aspects":["q","q"]}`, 400, "repeated"},
		{"unknown aspect", "application/json", `{"images":[{"data":"aGk="}],"aspects":["beauty"]}`, 400, `unknown aspect \"beauty\" (known: quality, correspondence, q)`},
		{"correspondence without prompt", "application/json", `{"images":[{"data":"aGk="}],"aspects":["correspondence"]}`, 400, `prompt is empty: correspondence needs the generation prompt`},
		{"correspondence with blank prompt", "application/json", `{"images":[{"data":"aGk="}],"prompt":"  ","aspects":["quality","correspondence"]}`, 400, `set \"prompt\"`},
		{"one image without prompt", "application/json", `{"images":[{"data":"aGk=","prompt":"a cat"},{"data":"aGk="}],"aspects":["correspondence"]}`, 400, "images[1].prompt"},
		{"multipart without prompt", "multipart/form-data; boundary=XX", "--XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\npng\r\n--XX\r\nContent-Disposition: form-data; name=\"aspects\"\r\n\r\ncorrespondence\r\n--XX--\r\n", 400, "prompt is empty"},
		{"path outside roots", "application/json", `{"images":[{"path":"/etc/passwd"}]}`, 400, "not a readable file under daemon.path_roots"},
		{"content type", "text/plain", `hello`, 415, "unsupported content type"},
		{"no content type", "", `{"images":[{"data":"aGk="}]}`, 415, "no Content-Type"},
		{"trailing garbage", "application/json", `{"images":[{"data":"aGk="}]} {"x":1}`, 400, "data after the JSON object"},
		{"max_new_tokens over the bound", "application/json", `{"images":[{"data":"aGk="}],"max_new_tokens":4097}`, 400, "max_new_tokens 4097 is out of range 1..4096"},
		{"max_new_tokens over 32 bits", "application/json", `{"images":[{"data":"aGk="}],"max_new_tokens":4294967297}`, 400, "max_new_tokens 4294967297 is out of range"},
		{"max_new_tokens negative", "application/json", `{"images":[{"data":"aGk="}],"max_new_tokens":-1}`, 400, "out of range"},
		{"too big", "application/json", `{"images":[{"data":"` + strings.Repeat("A", 2000) + `"}]}`, 413, "over the 1024-byte limit"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("POST", ts.URL+"/v1/score", strings.NewReader(tt.body))
		if tt.ctype != "" {
			req.Header.Set("Content-Type", tt.ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.want) {
			t.Errorf("%s: got %d %s, want %d containing %q", tt.name, resp.StatusCode, b, tt.code, tt.want)
		}
	}
	if n := f.calls.Load(); n != 0 {
		t.Errorf("bad requests reached the scorer %d times", n)
	}
}

func TestScoreErrorsMapToStatus(t *testing.T) {
	tests := []struct {
		err  error
		code int
	}{
		{fmt.Errorf("%w (pid 7): EOF", supervisor.ErrProcessDied), http.StatusBadGateway},
		{fmt.Errorf("%w: load: %w", supervisor.ErrNotReady, schemas.ErrNoScorer), http.StatusServiceUnavailable},
		{supervisor.ErrBusyTimeout, http.StatusGatewayTimeout},
		{errors.New("boom"), http.StatusInternalServerError},
	}
	for _, tt := range tests {
		_, ts := newTestServer(t, &fakeScorer{err: tt.err}, nil)
		resp, body := postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]string{{"data": b64("img-1")}}})
		if resp.StatusCode != tt.code || !strings.Contains(string(body), tt.err.Error()) {
			t.Errorf("%v: got %d %s, want %d with the message", tt.err, resp.StatusCode, body, tt.code)
		}
	}
}

// TestAdmission64Into16 fires 64 concurrent requests at a queue of 16 while
// the scorer holds every call: exactly 16 are admitted and answered with
// their own results once released, 48 get 429 with Retry-After, and every
// request gets exactly one answer.
func TestAdmission64Into16(t *testing.T) {
	f := &fakeScorer{gate: make(chan struct{})}
	s, ts := newTestServer(t, f, nil)
	before := runtime.NumGoroutine()
	const n = 64
	type answer struct {
		i     int
		code  int
		retry string
		body  []byte
	}
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := json.Marshal(map[string]any{"images": []map[string]string{{"data": b64(fmt.Sprintf("img-%d", i))}}})
			resp, err := http.Post(ts.URL+"/v1/score", "application/json", bytes.NewReader(b))
			if err != nil {
				t.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- answer{i, resp.StatusCode, resp.Header.Get("Retry-After"), body}
		}()
	}
	// Wait until the 48 refusals are in and the 16 admitted ones reached the scorer.
	var refused []answer
	for len(refused) < n-16 {
		select {
		case a := <-answers:
			if a.code != http.StatusTooManyRequests {
				t.Fatalf("request %d answered %d before release: %s", a.i, a.code, a.body)
			}
			refused = append(refused, a)
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d refusals", len(refused))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.inFlight.Load() != 16 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := f.inFlight.Load(); got != 16 || s.QueueDepth() != 16 {
		t.Fatalf("in the scorer: %d, queue depth %d; want 16", got, s.QueueDepth())
	}
	for _, a := range refused {
		if a.retry == "" || !strings.Contains(string(a.body), "queue full") {
			t.Errorf("429 without Retry-After or reason: %q %s", a.retry, a.body)
		}
	}
	close(f.gate)
	wg.Wait()
	close(answers)
	seen := map[int]bool{}
	for _, a := range refused {
		seen[a.i] = true
	}
	ok := 0
	for a := range answers {
		if a.code != 200 {
			t.Errorf("request %d: %d %s", a.i, a.code, a.body)
			continue
		}
		var r api.ScoreResponse
		json.Unmarshal(a.body, &r)
		if d := r.Results[0].Aspects["quality"].Description; d != fmt.Sprintf("img-%d", a.i) {
			t.Errorf("request %d got the answer of %s", a.i, d)
		}
		if seen[a.i] {
			t.Errorf("request %d answered twice", a.i)
		}
		seen[a.i] = true
		ok++
	}
	if ok != 16 || len(seen) != n || f.calls.Load() != 16 {
		t.Errorf("ok %d, distinct answered %d, scorer calls %d; want 16, %d, 16", ok, len(seen), f.calls.Load(), n)
	}
	if s.QueueDepth() != 0 {
		t.Errorf("queue depth after: %d", s.QueueDepth())
	}
	// No handler goroutine is left behind once the connections close.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Errorf("goroutines: %d after, %d before", g, before)
	}
}

// TestSlowBodyTakesNoSlot: a body still arriving holds no queue slot, so
// a complete request is scored while it trickles; a full queue refuses a
// complete request with 429.
func TestSlowBodyTakesNoSlot(t *testing.T) {
	f := &fakeScorer{gate: make(chan struct{})}
	_, ts := newTestServer(t, f, func(c *Config) { c.QueueSize = 1 })
	pr, pw := io.Pipe() // a body that never ends
	defer pw.Close()
	go pw.Write([]byte(`{"images":[{"data":"`))
	go http.Post(ts.URL+"/v1/score", "application/json", pr)
	time.Sleep(50 * time.Millisecond)
	go http.Post(ts.URL+"/v1/score", "application/json", strings.NewReader(`{"images":[{"data":"`+b64("img-1")+`"}]}`))
	for f.inFlight.Load() != 1 {
		time.Sleep(2 * time.Millisecond)
	}
	resp, body := postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]string{{"data": b64("img-2")}}})
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("full queue: got %d %s, want 429", resp.StatusCode, body)
	}
	close(f.gate)
}

func TestCancelledClientFreesSlot(t *testing.T) {
	f := &fakeScorer{gate: make(chan struct{})}
	s, ts := newTestServer(t, f, func(c *Config) { c.QueueSize = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/score", strings.NewReader(`{"images":[{"data":"`+b64("img-1")+`"}]}`))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	for f.inFlight.Load() != 1 {
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	<-done
	deadline := time.Now().Add(2 * time.Second)
	for (s.QueueDepth() != 0 || f.inFlight.Load() != 0) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if s.QueueDepth() != 0 || f.inFlight.Load() != 0 {
		t.Fatalf("slot not freed: queue %d, in scorer %d", s.QueueDepth(), f.inFlight.Load())
	}
	close(f.gate)
	resp, body := postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]string{{"data": b64("img-2")}}})
	if resp.StatusCode != 200 {
		t.Errorf("next request: %d %s", resp.StatusCode, body)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	f := &fakeScorer{state: schemas.StateLoading}
	_, ts := newTestServer(t, f, nil)
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz: %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, `"state":"loading"`) {
		t.Errorf("readyz while loading: %d %s", code, body)
	}
	f.state = schemas.StateReady
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("readyz when ready: %d", code)
	}
	postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]string{{"data": b64("img-42")}}})
	_, m := get("/metrics")
	for _, want := range []string{
		`m3gate_http_requests_total{code="200",route="score"} 1`,
		`m3gate_http_requests_total{code="503",route="readyz"} 1`,
		`m3gate_score_stage_seconds_count{stage="score"} 1`,
		`m3gate_score_stage_seconds_count{stage="sidecar_generate"} 1`,
		`m3gate_scores_bucket{aspect="quality",le="4"} 0`,
		`m3gate_scores_bucket{aspect="quality",le="4.5"} 1`,
		`m3gate_score_queue_depth 0`,
		`m3gate_sidecar_restarts_total 2`,
		`m3gate_sidecar_ready 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// statusScorer adds Status to fakeScorer.
type statusScorer struct{ *fakeScorer }

func (statusScorer) Status(ctx context.Context) (schemas.Status, error) {
	return schemas.Status{State: schemas.StateLoading, Progress: schemas.LoadProgress{Stage: "weights", DoneBytes: 5, TotalBytes: 10},
		Memory: schemas.Memory{RSSBytes: 1 << 20}, Model: schemas.ModelInfo{Family: "idefics3"}}, nil
}

func TestStatus(t *testing.T) {
	s, err := New(Config{Scorer: statusScorer{&fakeScorer{}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`"state":"loading"`, `"stage":"weights"`, `"done_bytes":5`, `"rss_bytes":1048576`, `"family":"idefics3"`, `"restarts":2`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("status lacks %s: %s", want, b)
		}
	}
}

func TestEventsWebsocket(t *testing.T) {
	f := &fakeScorer{}
	s, ts := newTestServer(t, f, nil)
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	read := func() map[string]any {
		t.Helper()
		var ev map[string]any
		if err := conn.ReadJSON(&ev); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	if ev := read(); ev["type"] != "state" || ev["data"].(map[string]any)["state"] != "ready" {
		t.Errorf("first event: %v", ev)
	}
	s.PublishState(schemas.StateRestarting, supervisor.ErrProcessDied)
	if ev := read(); ev["type"] != "state" || ev["data"].(map[string]any)["error"] != "model process died" {
		t.Errorf("state event: %v", ev)
	}
	postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]string{{"data": b64("img-25")}}, "prompt": "p"})
	ev := read()
	data, _ := ev["data"].(map[string]any)
	if ev["type"] != "score" || data["prompt"] != "p" || !strings.Contains(fmt.Sprint(data["results"]), "mos:2.5") {
		t.Errorf("score event: %v", ev)
	}
	s.Close()
	if _, _, err := conn.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("after Close: got %v, want a going-away close", err)
	}
}

type fakeRequeuer struct {
	prompt, extra    json.RawMessage
	clientID, server string
	err              error
}

func (r *fakeRequeuer) Requeue(ctx context.Context, server string, prompt, extra json.RawMessage, clientID string) (string, error) {
	r.prompt, r.extra, r.clientID, r.server = prompt, extra, clientID, server
	return "prompt-123", r.err
}

// TestReroll speaks the node pack's contract (api.RerollRequest and
// api.RerollResponse) end to end.
func TestReroll(t *testing.T) {
	rq := &fakeRequeuer{}
	s, ts := newTestServer(t, &fakeScorer{}, func(c *Config) {
		c.Requeuer, c.ComfyUIServers = rq, []string{"http://comfy-a.example:8188"}
	})
	workflow, err := os.ReadFile(filepath.Join("testdata", "workflow_api.json"))
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var first api.Event
	conn.ReadJSON(&first)

	body := api.RerollRequest{
		Prompt: workflow, NodeID: "40", SeedNodes: []string{"3", "10"}, Attempt: 1, MaxTries: 3,
		Passed: 0, Wanted: 1, ClientID: "abc",
		ExtraPNGInfo: json.RawMessage(`{"workflow":{"nodes":[]},"m3gate":{"old":1}}`),
	}
	resp, raw := postJSON(t, ts.URL+"/v1/reroll", body)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, raw)
	}
	var got api.RerollResponse
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want3 := nodes.DeriveSeed("3", "seed", 156680208700286, 2)
	want10 := nodes.DeriveSeed("10", "noise_seed", 42, 2)
	if !got.Queued || got.PromptID != "prompt-123" || got.Attempt != 2 || got.Seeds["3.seed"] != want3 || got.Seeds["10.noise_seed"] != want10 || rq.clientID != "abc" ||
		rq.server != "http://comfy-a.example:8188" || got.Server != rq.server {
		t.Fatalf("got %+v (client %q)", got, rq.clientID)
	}
	var graph map[string]struct {
		Inputs map[string]json.RawMessage `json:"inputs"`
	}
	if err := json.Unmarshal(rq.prompt, &graph); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ node, input, want string }{
		{"3", "seed", strconv.FormatUint(want3, 10)},
		{"10", "noise_seed", strconv.FormatUint(want10, 10)},
		{"40", "attempt", "2"},
		{"20", "seed", "18446744073709551615"}, // not named: untouched, exact
	} {
		if g := string(graph[c.node].Inputs[c.input]); g != c.want {
			t.Errorf("queued prompt node %s %s: got %s, want %s", c.node, c.input, g, c.want)
		}
	}
	if strings.Contains(string(rq.extra), "m3gate") || !strings.Contains(string(rq.extra), `"workflow"`) {
		t.Errorf("extra_pnginfo queued: %s", rq.extra)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ev map[string]any
	if err := conn.ReadJSON(&ev); err != nil || ev["type"] != "reroll" {
		t.Errorf("reroll event: %v %v", ev, err)
	}
	_ = s

	for _, tt := range []struct {
		name string
		mod  func(*api.RerollRequest)
		code int
		want string
	}{
		{"exhausted", func(r *api.RerollRequest) { r.Attempt = 3 }, 409, "reached max_tries 3"},
		{"unknown seed node", func(r *api.RerollRequest) { r.SeedNodes = []string{"99"} }, 400, "is not in the prompt"},
		{"no seed input", func(r *api.RerollRequest) { r.SeedNodes = []string{"6"} }, 400, "no seed or noise_seed"},
		{"not a workflow", func(r *api.RerollRequest) { r.Prompt = json.RawMessage(`"x"`) }, 400, "not an API-format prompt"},
	} {
		b := body
		tt.mod(&b)
		resp, raw := postJSON(t, ts.URL+"/v1/reroll", b)
		if resp.StatusCode != tt.code || !strings.Contains(string(raw), tt.want) {
			t.Errorf("%s: got %d %s, want %d containing %q", tt.name, resp.StatusCode, raw, tt.code, tt.want)
		}
	}
	rq.err = errors.New("connection refused")
	if resp, raw := postJSON(t, ts.URL+"/v1/reroll", body); resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(raw), "connection refused") ||
		!strings.Contains(string(raw), "http://comfy-a.example:8188 (comfyui.servers[0]") {
		t.Errorf("ComfyUI down: got %d %s, want 502 naming comfyui.servers[0]", resp.StatusCode, raw)
	}
	body.ComfyUIURL = "http://127.0.0.1:8189"
	if resp, raw := postJSON(t, ts.URL+"/v1/reroll", body); resp.StatusCode != http.StatusBadGateway ||
		!strings.Contains(string(raw), "http://127.0.0.1:8189 (comfyui_url") || !strings.Contains(string(raw), "M3GATE_COMFYUI_URL") {
		t.Errorf("calling ComfyUI down: got %d %s, want 502 naming comfyui_url", resp.StatusCode, raw)
	}
}

// TestRerollTarget: a reroll goes to the ComfyUI server the node pack
// names when that is a configured server, a loopback address or the
// request's own source; comfyui.servers[0] only when it names none; any
// other host is refused before anything is queued.
func TestRerollTarget(t *testing.T) {
	workflow, err := os.ReadFile(filepath.Join("testdata", "workflow_api.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, sent string
		servers    []string
		code       int
		want       string // the server queued on, or a part of the error
	}{
		{"configured default", "", []string{"http://a.example:8188/"}, 200, "http://a.example:8188"},
		{"second configured server", "http://b.example:8188", []string{"http://a.example:8188", "http://b.example:8188"}, 200, "http://b.example:8188"},
		{"the calling server on loopback", "http://127.0.0.1:8189", []string{"http://a.example:8188"}, 200, "http://127.0.0.1:8189"},
		{"loopback by name", "http://localhost:8189", nil, 200, "http://localhost:8189"},
		{"IPv6 loopback", "http://[::1]:8189", nil, 200, "http://[::1]:8189"},
		{"listening on every address", "http://0.0.0.0:8190", nil, 200, "http://127.0.0.1:8190"},
		{"a third machine", "http://10.1.2.3:8188", []string{"http://a.example:8188"}, 403, "neither in comfyui.servers"},
		{"not a server URL", "http://127.0.0.1:8188/prompt?x=1", nil, 400, "want http(s)://host:port"},
		{"not http", "file:///etc/passwd", nil, 400, "want http(s)://host:port"},
		{"nothing to fall back on", "", nil, 501, "comfyui.servers is empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rq := &fakeRequeuer{}
			_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Requeuer, c.ComfyUIServers = rq, tt.servers })
			resp, raw := postJSON(t, ts.URL+"/v1/reroll", api.RerollRequest{Prompt: workflow, NodeID: "40", Attempt: 1, MaxTries: 3,
				ComfyUIURL: tt.sent})
			if resp.StatusCode != tt.code {
				t.Fatalf("HTTP %d %s, want %d", resp.StatusCode, raw, tt.code)
			}
			if tt.code != 200 {
				if !strings.Contains(string(raw), tt.want) || rq.server != "" {
					t.Errorf("refusal %s (queued on %q), want one containing %q", raw, rq.server, tt.want)
				}
				return
			}
			var got api.RerollResponse
			json.Unmarshal(raw, &got)
			if rq.server != tt.want || got.Server != tt.want {
				t.Errorf("queued on %q (answer says %q), want %q", rq.server, got.Server, tt.want)
			}
		})
	}
}

// TestPackContract: the node pack's score request (api.ScoreRequest) is
// accepted and the answer decodes as api.ScoreResponse.
func TestPackContract(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, nil)
	resp, raw := postJSON(t, ts.URL+api.PathScore, api.ScoreRequest{
		Images: []api.Image{{Data: []byte("img-12")}, {Data: []byte("img-40")}}, Prompt: "p", Aspects: []string{"quality"},
		Attempt: 2, Seed: new(uint64),
	})
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, raw)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var got api.ScoreResponse
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got.Results) != 2 || got.Results[1].Aspects["quality"].MOS != 4 || got.Results[0].Aspects["quality"].Rating != "poor" {
		t.Errorf("got %+v", got)
	}
}
