package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/schemas/api"
)

// The hardening tests run the real daemon and the real sidecar on the tiny
// model and attack them as a web page or a hostile local client would.

func testPNG(t *testing.T) []byte {
	t.Helper()
	var img bytes.Buffer
	pic := image.NewNRGBA(image.Rect(0, 0, 48, 32))
	for i := range pic.Pix {
		pic.Pix[i] = byte(i * 7)
	}
	if err := png.Encode(&img, pic); err != nil {
		t.Fatal(err)
	}
	return img.Bytes()
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon never ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send posts body with headers and returns the status and answer.
func send(t *testing.T, method, url, ctype string, body []byte, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func scorePath(t *testing.T, base, path string) (int, string) {
	t.Helper()
	b, _ := json.Marshal(api.ScoreRequest{Images: []api.Image{{Path: path}}, Prompt: "a cat"})
	return send(t, "POST", base+api.PathScore, "application/json", b, nil)
}

// TestDaemonImagePaths: a path in a request is refused unless the
// operator allowed paths; then only regular files under daemon.path_roots
// are read (by the daemon), never a FIFO, a device, a symlink out of the
// roots or a secret elsewhere, and no answer echoes a file's bytes or tells
// whether a file exists outside the roots.
func TestDaemonImagePaths(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "ok.png"), testPNG(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo.png"), 0o600); err != nil {
		t.Fatal(err)
	}
	elsewhere := t.TempDir()
	secret := filepath.Join(elsewhere, "secret.png")
	os.WriteFile(secret, []byte("TOPSECRET-4242 not an image"), 0o644)
	os.Symlink(secret, filepath.Join(root, "secret-link.png"))
	os.Symlink("/dev/zero", filepath.Join(root, "zero.png"))
	os.WriteFile(filepath.Join(root, "big.png"), make([]byte, 2<<20), 0o644)
	os.WriteFile(filepath.Join(root, "junk.png"), []byte("JUNKBYTES-in-root"), 0o644)

	// Off by default: not even a file under a root is read.
	cmd, base, _ := startDaemonEnv(t, "M3GATE_DAEMON_PATH_ROOTS="+root)
	waitReady(t, base)
	if code, body := scorePath(t, base, filepath.Join(root, "ok.png")); code != 400 || !strings.Contains(body, "daemon.allow_paths is off") {
		t.Errorf("paths off: got %d %s", code, body)
	}
	cmd.Process.Kill()
	cmd.Wait()

	_, base, _ = startDaemonEnv(t, "M3GATE_DAEMON_ALLOW_PATHS=true", "M3GATE_DAEMON_PATH_ROOTS="+root, "M3GATE_DAEMON_MAX_IMAGE_BYTES=1048576")
	waitReady(t, base)
	code, body := scorePath(t, base, filepath.Join(root, "ok.png"))
	var ans api.ScoreResponse
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || len(ans.Results) != 1 || ans.Results[0].Error != "" {
		t.Fatalf("file under a root: got %d %s", code, body)
	}
	if q := ans.Results[0].Aspects["quality"]; q.Rating == "" || q.MOS < 0 || q.MOS > 5 {
		t.Errorf("file under a root scored %+v", q)
	}

	refused := "not a readable file under daemon.path_roots"
	tests := []struct {
		name, path string
		want       string
	}{
		{"secret elsewhere", secret, refused},
		{"missing elsewhere", filepath.Join(elsewhere, "nothing.png"), refused},
		{"missing under root", filepath.Join(root, "nothing.png"), refused},
		{"/etc/shadow", "/etc/shadow", refused},
		{"/proc/self/environ", "/proc/self/environ", refused},
		{"dot-dot out of the root", root + "/../" + filepath.Base(elsewhere) + "/secret.png", refused},
		{"symlink out of the root", filepath.Join(root, "secret-link.png"), refused},
		{"symlink to /dev/zero", filepath.Join(root, "zero.png"), refused},
		{"FIFO under the root", filepath.Join(root, "fifo.png"), "not a regular file"},
		{"over max_image_bytes", filepath.Join(root, "big.png"), "over daemon.max_image_bytes (1048576)"},
		{"relative", "ok.png", "not absolute"},
	}
	for _, tt := range tests {
		start := time.Now()
		code, body := scorePath(t, base, tt.path)
		if code != 400 || !strings.Contains(body, tt.want) {
			t.Errorf("%s: got %d %s, want 400 containing %q", tt.name, code, body, tt.want)
		}
		if strings.Contains(body, "TOPSECRET") || strings.Contains(body, "root:") || strings.Contains(body, "PATH=") {
			t.Errorf("%s: the answer shows file contents: %s", tt.name, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: answered after %s", tt.name, d)
		}
	}
	// A file under the root that is not an image fails that image only; its
	// bytes are never shown.
	code, body = scorePath(t, base, filepath.Join(root, "junk.png"))
	if code != 200 || !strings.Contains(body, "unrecognised format (supported") || strings.Contains(body, "JUNKBYTES") || strings.Contains(body, "4a 55 4e") {
		t.Errorf("junk file under the root: got %d %s", code, body)
	}
	// Many FIFO requests leave nothing stuck: the daemon still scores.
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() { defer wg.Done(); scorePath(t, base, filepath.Join(root, "fifo.png")) }()
	}
	wg.Wait()
	if code, body := scorePath(t, base, filepath.Join(root, "ok.png")); code != 200 {
		t.Errorf("after 30 FIFO requests: %d %s", code, body)
	}
}

// TestDaemonCrossSiteAndRebinding: a web page's cross-site POST (text/plain
// or JSON with a foreign Origin), a request naming a foreign Host (DNS
// rebinding) on every route including the websocket, and a request
// without the configured token are all refused; the node pack's and m3gate
// run's requests (no Origin, token sent) pass, and the token never shows
// in the daemon's log.
func TestDaemonCrossSiteAndRebinding(t *testing.T) {
	const token = "tok-7f3a9c-never-logged"
	_, base, logs := startDaemonEnv(t, "M3GATE_DAEMON_TOKEN="+token, "M3GATE_LOG_LEVEL=debug",
		"M3GATE_DAEMON_ALLOWED_ORIGINS=http://127.0.0.1:8188", "M3GATE_COMFYUI_SERVERS=http://127.0.0.1:1")
	waitReady(t, base)
	u, _ := url.Parse(base)
	auth := map[string]string{"Authorization": "Bearer " + token}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{"Authorization": "Bearer " + token}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	img, _ := json.Marshal(api.ScoreRequest{Images: []api.Image{{Data: testPNG(t)}}, Prompt: "a cat"})
	reroll, _ := json.Marshal(api.RerollRequest{Prompt: json.RawMessage(`{"3":{"class_type":"KSampler","inputs":{"seed":1}},"9":{"class_type":"M3Reroll","inputs":{}}}`), NodeID: "9", Attempt: 1, MaxTries: 3})

	tests := []struct {
		name, method, path, ctype string
		body                      []byte
		hdr                       map[string]string
		code                      int
		want                      string
	}{
		{"no token", "POST", api.PathScore, "application/json", img, nil, 401, "bearer token"},
		{"wrong token", "POST", api.PathScore, "application/json", img, map[string]string{"Authorization": "Bearer nope"}, 401, "bearer token"},
		{"text/plain cross-site reroll", "POST", api.PathReroll, "text/plain", reroll, with(map[string]string{"Origin": "http://evil.example"}), 403, "may not call the daemon"},
		{"text/plain reroll, no Origin", "POST", api.PathReroll, "text/plain", reroll, auth, 415, "unsupported content type"},
		{"JSON cross-site score", "POST", api.PathScore, "application/json", img, with(map[string]string{"Origin": "http://evil.example"}), 403, "daemon.allowed_origins"},
		{"null origin", "POST", api.PathScore, "application/json", img, with(map[string]string{"Origin": "null"}), 403, "origin"},
		{"no content type", "POST", api.PathScore, "", img, auth, 415, "no Content-Type"},
		{"rebinding host on score", "POST", api.PathScore, "application/json", img, with(map[string]string{"Host": "evil.example:" + u.Port()}), 403, "is not this daemon's name"},
		{"rebinding host on metrics", "GET", "/metrics", "", nil, with(map[string]string{"Host": "evil.example"}), 403, "daemon.allowed_hosts"},
		{"rebinding host on healthz", "GET", "/healthz", "", nil, map[string]string{"Host": "rebind.evil.example"}, 403, "not this daemon's name"},
		{"healthz without token", "GET", "/healthz", "", nil, nil, 200, "ok"},
		{"metrics without token", "GET", "/metrics", "", nil, nil, 401, "bearer token"},
		{"allowed origin scores", "POST", api.PathScore, "application/json", img, with(map[string]string{"Origin": "http://127.0.0.1:8188"}), 200, `"results"`},
		{"same origin scores", "POST", api.PathScore, "application/json", img, with(map[string]string{"Origin": base}), 200, `"results"`},
		{"localhost host scores", "POST", api.PathScore, "application/json", img, with(map[string]string{"Host": "localhost:" + u.Port()}), 200, `"results"`},
		{"pack request scores", "POST", api.PathScore, "application/json", img, auth, 200, `"results"`},
	}
	for _, tt := range tests {
		code, body := send(t, tt.method, base+tt.path, tt.ctype, tt.body, tt.hdr)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: got %d %s, want %d containing %q", tt.name, code, body, tt.code, tt.want)
		}
	}

	// The websocket: a rebinding Host or a foreign Origin is refused before
	// the upgrade; the token opens it.
	ws := "ws://" + u.Host + api.PathEvents
	dial := func(h http.Header) int {
		c, resp, err := websocket.DefaultDialer.Dial(ws, h)
		if err == nil {
			c.Close()
			return resp.StatusCode
		}
		if resp == nil {
			t.Fatalf("websocket dial: %v", err)
		}
		return resp.StatusCode
	}
	if c := dial(http.Header{"Authorization": {"Bearer " + token}, "Host": {"evil.example"}}); c != 403 {
		t.Errorf("websocket with rebinding Host: %d, want 403", c)
	}
	if c := dial(http.Header{"Authorization": {"Bearer " + token}, "Origin": {"http://evil.example"}}); c != 403 {
		t.Errorf("websocket from a foreign origin: %d, want 403", c)
	}
	if c := dial(http.Header{}); c != 401 {
		t.Errorf("websocket without token: %d, want 401", c)
	}
	if c := dial(http.Header{"Authorization": {"Bearer " + token}}); c != http.StatusSwitchingProtocols {
		t.Errorf("websocket with token: %d, want 101", c)
	}
	if strings.Contains(logs(), token) {
		t.Errorf("the daemon logged its token:\n%s", logs())
	}
}

// rss reads a /proc/PID/status field (VmRSS, VmHWM) in KiB.
func rss(t *testing.T, pid int, field string) int64 {
	t.Helper()
	kb, err := testenv.ProcStatusKB(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return kb
}

// TestDaemonLargeBodiesBounded: eight concurrent 40 MB JSON bodies against
// a 64 MiB in-flight budget: the bodies past the budget are refused with
// 429 before they are read, the daemon's peak RSS stays bounded, and the
// daemon still scores afterwards.
func TestDaemonLargeBodiesBounded(t *testing.T) {
	cmd, base, _ := startDaemonEnv(t, "M3GATE_DAEMON_MAX_INFLIGHT_BYTES=67108864", "M3GATE_DAEMON_MAX_IMAGE_BYTES=33554432")
	waitReady(t, base)
	pid := cmd.Process.Pid
	before := rss(t, pid, "VmRSS")

	raw := make([]byte, 30<<20) // one 30 MiB "image", 40 MiB as base64
	for i := range raw {
		raw[i] = byte(i)
	}
	body := []byte(`{"prompt":"x","images":[{"data":"` + base64.StdEncoding.EncodeToString(raw) + `"}]}`)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(base+api.PathScore, "application/json", bytes.NewReader(body))
			code := 0
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	peak := rss(t, pid, "VmHWM")
	t.Logf("8 x %d MB bodies: statuses %v; daemon RSS %d MiB before, peak %d MiB", len(body)>>20, codes, before>>10, peak>>10)
	if codes[http.StatusTooManyRequests] < 6 {
		t.Errorf("statuses %v: want at least 6 of 8 refused with 429 (budget 64 MiB, bodies 40 MiB)", codes)
	}
	// Unbounded, eight bodies held at once (body + decoded) take over 600 MiB.
	if peak-before > 300<<10 {
		t.Errorf("daemon peak RSS grew %d MiB over %d MiB", (peak-before)>>10, before>>10)
	}
	b, _ := json.Marshal(api.ScoreRequest{Images: []api.Image{{Data: testPNG(t)}}})
	if code, body := send(t, "POST", base+api.PathScore, "application/json", b, nil); code != 200 {
		t.Errorf("after the large bodies: %d %s", code, body)
	}
}

// slowUpload opens a raw connection and starts a score request whose
// body arrives a few bytes a second; it returns the connection.
func slowUpload(t *testing.T, base string, length int) net.Conn {
	t.Helper()
	u, _ := url.Parse(base)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /v1/score HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"images\":[{\"data\":\"", u.Host, length)
	go func() {
		for {
			time.Sleep(300 * time.Millisecond)
			if _, err := c.Write([]byte("AAAA")); err != nil {
				return
			}
		}
	}()
	return c
}

// readStatus reads an HTTP answer's status line and body from c.
func readStatus(c net.Conn, within time.Duration) (int, string, error) {
	c.SetReadDeadline(time.Now().Add(within))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestDaemonSlowUploads: more slow uploads than queue slots do not block
// scoring (a slot is taken only once a body is complete), and uploads
// slower than daemon.min_upload_rate are cut off with 408.
func TestDaemonSlowUploads(t *testing.T) {
	_, base, _ := startDaemonEnv(t, "M3GATE_DAEMON_QUEUE_SIZE=2", "M3GATE_DAEMON_MIN_UPLOAD_RATE=1024")
	waitReady(t, base)
	var conns []net.Conn
	for range 6 {
		c := slowUpload(t, base, 1<<20)
		defer c.Close()
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	b, _ := json.Marshal(api.ScoreRequest{Images: []api.Image{{Data: testPNG(t)}}})
	start := time.Now()
	if code, body := send(t, "POST", base+api.PathScore, "application/json", b, nil); code != 200 {
		t.Fatalf("score while 6 uploads trickle: %d %s", code, body)
	}
	t.Logf("scored in %s while 6 uploads trickled into a 2-slot queue", time.Since(start).Round(time.Millisecond))
	for i, c := range conns {
		code, body, err := readStatus(c, 20*time.Second)
		if err != nil || code != http.StatusRequestTimeout || !strings.Contains(body, "too slowly") {
			t.Errorf("slow upload %d: got %d %q %v, want 408", i, code, body, err)
		}
	}
}

// TestDaemonSIGTERMAnswersInFlight: on SIGTERM a request that completes
// within daemon.shutdown_grace is answered normally; one still in flight
// when the grace ends gets a clear 503, not an empty reply.
func TestDaemonSIGTERMAnswersInFlight(t *testing.T) {
	cmd, base, _ := startDaemonEnv(t, "M3GATE_DAEMON_SHUTDOWN_GRACE=6s", "M3GATE_DAEMON_MIN_UPLOAD_RATE=0")
	waitReady(t, base)
	u, _ := url.Parse(base)

	// A body that completes half a second after SIGTERM.
	img, _ := json.Marshal(api.ScoreRequest{Images: []api.Image{{Data: testPNG(t)}}})
	quick, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer quick.Close()
	fmt.Fprintf(quick, "POST /v1/score HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", u.Host, len(img))
	quick.Write(img[:10])
	stuck := slowUpload(t, base, 1<<20) // never completes
	defer stuck.Close()
	time.Sleep(300 * time.Millisecond)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	quick.Write(img[10:])
	code, body, err := readStatus(quick, 10*time.Second)
	if err != nil || code != 200 || !strings.Contains(body, `"results"`) {
		t.Errorf("request completed within the grace: got %d %q %v, want 200", code, body, err)
	}
	code, body, err = readStatus(stuck, 10*time.Second)
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Errorf("request in flight after the grace: got %d %q %v, want a 503 saying the daemon is shutting down", code, body, err)
	}
}

// TestDaemonWarnsWithoutToken: listening beyond loopback without a token
// prints a loud warning at start; with a token it does not.
func TestDaemonWarnsWithoutToken(t *testing.T) {
	m3gate, sidecarBin, model := daemonBinaries(t)
	for _, tc := range []struct {
		token string
		warn  bool
	}{{"", true}, {"tok-x", false}} {
		cmd := exec.Command(m3gate, "serve", "--listen", "0.0.0.0:0", "--model", model)
		cmd.Env = append(os.Environ(), "M3GATE_SIDECAR="+sidecarBin, "M3GATE_LOG_LEVEL=warn", "M3GATE_DAEMON_TOKEN="+tc.token)
		cmd.Dir = t.TempDir()
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "listening on") {
				break
			}
		}
		// The warning follows the listening line; give it a moment.
		done := make(chan struct{})
		go func() {
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
			}
			close(done)
		}()
		time.Sleep(300 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		cmd.Wait()
		got := strings.Contains(out.String(), "WARNING: listening beyond loopback without a token")
		if got != tc.warn {
			t.Errorf("token %q: warning %v, want %v:\n%s", tc.token, got, tc.warn, out.String())
		}
		if tc.token != "" && strings.Contains(out.String(), tc.token) {
			t.Errorf("the token shows in the log:\n%s", out.String())
		}
	}
}
