package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestAbandonedRequestCountedCancelled: a client that leaves before its
// answer is counted as cancelled in /metrics, not as 200.
func TestAbandonedRequestCountedCancelled(t *testing.T) {
	f := &fakeScorer{gate: make(chan struct{})}
	defer close(f.gate)
	_, ts := newTestServer(t, f, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/score", strings.NewReader(`{"images":[{"data":"`+b64("img-1")+`"}]}`))
	req.Header.Set("Content-Type", "application/json")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	for f.inFlight.Load() != 1 {
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	<-done
	want := `m3gate_http_requests_total{code="cancelled",route="score"} 1`
	deadline := time.Now().Add(2 * time.Second)
	for {
		m := getBody(t, ts.URL+"/metrics")
		if strings.Contains(m, want) {
			if strings.Contains(m, `code="200",route="score"`) {
				t.Errorf("the abandoned request is also counted as 200:\n%s", m)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %s:\n%s", want, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSubscriberCap: past MaxSubscribers a websocket is refused with 503.
func TestSubscriberCap(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.MaxSubscribers = 2 })
	ws := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/events"
	for i := range 2 {
		c, _, err := websocket.DefaultDialer.Dial(ws, nil)
		if err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		defer c.Close()
		c.ReadMessage() // the first state event: the subscription is live
	}
	_, resp, err := websocket.DefaultDialer.Dial(ws, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third subscriber: %v %v, want 503", err, resp)
	}
	if m := getBody(t, ts.URL+"/metrics"); !strings.Contains(m, `m3gate_http_refused_total{reason="subscribers"} 1`) {
		t.Errorf("refusal not counted:\n%s", m)
	}
}

// TestChunkedBodyBudget: a body without Content-Length is charged to the
// in-flight budget as it arrives and refused with 429 past it.
func TestChunkedBodyBudget(t *testing.T) {
	f := &fakeScorer{}
	_, ts := newTestServer(t, f, func(c *Config) { c.MaxInflightBytes = 1 << 20 })
	// A raw connection sends a chunked body past the budget from one
	// goroutine while the test reads the answer on another. The server
	// answers 429, half-closes and later closes with the rest of the body
	// unread, which resets the connection: a writer still sending then
	// sees its write reset (CI did, with a single goroutine that flushed
	// before reading), but the answer already sits in the receive queue.
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(conn)
		fmt.Fprintf(w, "POST /v1/score HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", strings.TrimPrefix(ts.URL, "http://"))
		chunk := func(b string) { fmt.Fprintf(w, "%x\r\n%s\r\n", len(b), b) }
		chunk(`{"images":[{"data":"`)
		for range 20 { // 1.25 MiB: past the 1 MiB budget
			chunk(strings.Repeat("A", 64<<10))
		}
		wrote <- w.Flush()
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(b), "too many request bytes in flight") {
		t.Errorf("got %d %s, want 429", resp.StatusCode, b)
	}
	if f.calls.Load() != 0 {
		t.Error("the refused request reached the scorer")
	}
	if err := <-wrote; err != nil {
		t.Logf("the writer saw %v after the refusal", err)
	}
}

// TestRerollRefusesTrailingData: data after the JSON object is an error,
// not ignored.
func TestRerollRefusesTrailingData(t *testing.T) {
	rq := &fakeRequeuer{}
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Requeuer, c.ComfyUIServers = rq, []string{"http://comfy-a.example:8188"} })
	resp, err := http.Post(ts.URL+"/v1/reroll", "application/json", strings.NewReader(`{"prompt":{},"node_id":"1","attempt":1,"max_tries":2} trailing`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "data after the JSON object") {
		t.Errorf("got %d %s", resp.StatusCode, b)
	}
}

// TestReviewPageToken: with a token, the review page's shell loads
// without it, its data needs the token as Authorization, and its
// websocket may offer the token as the subprotocol bearer.<base64url>.
func TestReviewPageToken(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Token = "page-tok" })
	for _, tc := range []struct {
		path, auth string
		want       int
	}{{"/", "", 200}, {"/v1/recent", "", 401}, {"/v1/recent", "Bearer nope", 401}, {"/v1/recent", "Bearer page-tok", 200}} {
		req, _ := http.NewRequest("GET", ts.URL+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s with %q: %d, want %d", tc.path, tc.auth, resp.StatusCode, tc.want)
		}
	}
	ws := "ws" + strings.TrimPrefix(ts.URL, "http") + "/v1/events"
	for _, tc := range []struct {
		token string
		want  int
	}{{"nope", 401}, {"page-tok", http.StatusSwitchingProtocols}} {
		d := websocket.Dialer{Subprotocols: []string{wsProtocol, "bearer." + base64.RawURLEncoding.EncodeToString([]byte(tc.token))}}
		c, resp, err := d.Dial(ws, nil)
		if err == nil {
			if c.Subprotocol() != wsProtocol {
				t.Errorf("answered subprotocol %q, want %q (never the token)", c.Subprotocol(), wsProtocol)
			}
			c.Close()
		}
		if resp == nil || resp.StatusCode != tc.want {
			t.Errorf("websocket with token %q: %v %v, want %d", tc.token, resp, err, tc.want)
		}
	}
}
