package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/schemas/api"
)

// The daemon tests run the real binaries: `m3gate serve` supervising the
// real m3gate-sidecar on a generated tiny model, made once per test run by
// testenv ($M3GATE and $M3GATE_SIDECAR name prebuilt ones).

func daemonBinaries(t *testing.T) (m3gate, sidecarBin, model string) {
	t.Helper()
	if testing.Short() {
		t.Skip("daemon end-to-end test; skipped with -short")
	}
	m3gate, sidecarBin = testenv.M3gate(t), testenv.Sidecar(t)
	return m3gate, sidecarBin, testenv.TinyModel(t, sidecarBin)
}

func TestMain(m *testing.M) { testenv.Main(m) }

var listenLine = regexp.MustCompile(`listening on http://(\S+)`)

// startDaemon runs `m3gate serve` on a free port and returns it with its
// base URL.
func startDaemon(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	cmd, base, _ := startDaemonEnv(t)
	return cmd, base
}

// startDaemonEnv runs `m3gate serve` with extra environment (config
// overrides such as M3GATE_DAEMON_ALLOW_PATHS=true) and returns it, its
// base URL and a func returning its log so far.
func startDaemonEnv(t *testing.T, env ...string) (*exec.Cmd, string, func() string) {
	t.Helper()
	m3gate, sidecarBin, model := daemonBinaries(t)
	cmd := exec.Command(m3gate, "serve", "--listen", "127.0.0.1:0", "--model", model)
	cmd.Env = append(os.Environ(), "M3GATE_SIDECAR="+sidecarBin, "M3GATE_LOG_LEVEL=warn", "M3GATE_SCORING_ASPECTS=quality")
	cmd.Env = append(cmd.Env, env...)
	cmd.Dir = t.TempDir()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	var logs bytes.Buffer
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	getLogs := func() string {
		mu.Lock()
		defer mu.Unlock()
		return logs.String()
	}
	select {
	case a := <-addr:
		return cmd, "http://" + a, getLogs
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not start:\n%s", getLogs())
	}
	return nil, "", nil
}

// sidecarOf finds the daemon's m3gate-sidecar child.
func sidecarOf(t *testing.T, daemon int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(daemon) && strings.Contains(s, "(m3gate-sidecar)") && f[0] != "Z" {
				return pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no m3gate-sidecar child of the daemon")
	return 0
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func waitExit(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("sidecar %d still running %s later", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDaemonScoresAndStopsOnSIGTERM: the real daemon becomes ready, scores
// a multipart upload with the tiny model, and SIGTERM stops it and its
// model process.
func TestDaemonScoresAndStopsOnSIGTERM(t *testing.T) {
	cmd, base := startDaemon(t)
	sc := sidecarOf(t, cmd.Process.Pid)
	waitReady(t, base)

	var img bytes.Buffer
	pic := image.NewNRGBA(image.Rect(0, 0, 48, 32))
	for i := range pic.Pix {
		pic.Pix[i] = byte(i * 13)
	}
	png.Encode(&img, pic)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	w, _ := mw.CreateFormFile("image", "a.png")
	w.Write(img.Bytes())
	mw.WriteField("prompt", "a red apple")
	mw.WriteField("aspects", "quality")
	mw.WriteField("max_new_tokens", "3")
	mw.Close()
	resp, err := http.Post(base+"/v1/score", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got api.ScoreResponse
	if resp.StatusCode != 200 || json.Unmarshal(raw, &got) != nil || len(got.Results) != 1 {
		t.Fatalf("score: %d %s", resp.StatusCode, raw)
	}
	root := loadSchema(t)
	if err := validate(root, root["$defs"].(map[string]any)["score_response"].(map[string]any), decodeNumbers(t, raw), "score_response"); err != nil {
		t.Errorf("real answer breaks schemas/daemon_api.schema.json: %v\n%s", err, raw)
	}
	q, ok := got.Results[0].Aspects["quality"]
	if !ok || q.MOS < 0 || q.MOS > 5 || q.Rating == "" || len(q.WordProbs) != 5 {
		t.Errorf("quality result: %+v (error %q)", q, got.Results[0].Error)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); err != nil && !(ok && ee.ExitCode() == 130) {
			t.Errorf("daemon exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
	waitExit(t, sc, time.Second)
}

// TestDaemonSIGKILLSidecarExits: a daemon killed with SIGKILL cannot stop
// its model process; the sidecar notices and exits on its own.
func TestDaemonSIGKILLSidecarExits(t *testing.T) {
	cmd, _ := startDaemon(t)
	sc := sidecarOf(t, cmd.Process.Pid)
	cmd.Process.Kill()
	cmd.Wait()
	waitExit(t, sc, 5*time.Second)
}
