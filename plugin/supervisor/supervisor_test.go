package supervisor

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// startTest supervises the test binary as the plugin (testScorer).
func startTest(t *testing.T, mod func(*Config)) *Supervisor {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Path:         exe,
		Env:          []string{"SUPERVISOR_TEST_PLUGIN=1"},
		Load:         schemas.LoadRequest{ModelDir: "/m", Family: "test", Options: map[string]string{}},
		BackoffMin:   20 * time.Millisecond,
		BackoffMax:   200 * time.Millisecond,
		ReadyTimeout: 20 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	sup, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sup.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return sup
}

func req(prompt string, data []byte) schemas.ScoreRequest {
	return schemas.ScoreRequest{Prompt: prompt, Items: []schemas.ScoreItem{{Data: data}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pidOf asks the process that answers for its pid.
func pidOf(t *testing.T, sup *Supervisor) int {
	t.Helper()
	rs, err := sup.Score(ctxT(t, 20*time.Second), req("pid", []byte{1}))
	if err != nil {
		t.Fatalf("score: %v", err)
	}
	pid, err := strconv.Atoi(rs[0].Aspects["quality"].Description)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

var (
	bigPNGOnce sync.Once
	bigPNG     []byte
)

// largePNG returns a valid PNG of more than 50 MB: 3700×3700 random RGBA
// pixels in stored (uncompressed) deflate blocks.
func largePNG(t testing.TB) []byte {
	bigPNGOnce.Do(func() { bigPNG = noisePNG(3700, 3700) })
	if len(bigPNG) < 50<<20 {
		t.Fatalf("test PNG is only %d bytes", len(bigPNG))
	}
	return bigPNG
}

// noisePNG encodes a w×h RGBA image of random pixels without compression.
func noisePNG(w, h int) []byte {
	rng := rand.NewChaCha8([32]byte{1})
	return testenv.RawPNG(w, h, 6, 8, zlib.NoCompression, func(_ int, buf []byte) { rng.Read(buf) })
}

func TestNoisePNGDecodes(t *testing.T) {
	cfg, err := png.DecodeConfig(bytes.NewReader(noisePNG(5, 3)))
	if err != nil || cfg.Width != 5 || cfg.Height != 3 {
		t.Fatalf("got %+v, %v", cfg, err)
	}
	if _, err := png.Decode(bytes.NewReader(noisePNG(17, 9))); err != nil {
		t.Fatal(err)
	}
}

// settle waits until the goroutine count drops to want or below.
func settleGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutine leak: %d goroutines, want <= %d\n%s", runtime.NumGoroutine(), want, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func noChildren(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(children(os.Getpid())) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("child processes left: %v", children(os.Getpid()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestScoreRoundTripLargeImageAndStatus(t *testing.T) {
	sup := startTest(t, nil)
	if err := sup.WaitReady(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	img := largePNG(t)
	rs, err := sup.Score(ctxT(t, 60*time.Second), req("x", img))
	if err != nil {
		t.Fatalf("score %d-byte PNG: %v", len(img), err)
	}
	sum := sha256.Sum256(img)
	if got, want := rs[0].Aspects["quality"].Description, hex.EncodeToString(sum[:]); got != want {
		t.Errorf("the model process saw different bytes: sha256 %s, want %s", got, want)
	}
	st, err := sup.Status(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != schemas.StateReady || st.Model.Details["pid"] != strconv.Itoa(sup.Pid()) {
		t.Errorf("status: got %+v (pid %d)", st, sup.Pid())
	}
}

func TestSIGKILLDuringRequestRestarts(t *testing.T) {
	before := runtime.NumGoroutine()
	var states []schemas.State
	var mu sync.Mutex
	sup := startTest(t, func(c *Config) {
		c.OnState = func(s schemas.State, err error) { mu.Lock(); states = append(states, s); mu.Unlock() }
	})
	first := pidOf(t, sup)

	errc := make(chan error, 1)
	go func() {
		_, err := sup.Score(ctxT(t, 20*time.Second), req("block", []byte{1}))
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the request reach the process
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrProcessDied) || !strings.Contains(err.Error(), "model process died") {
			t.Fatalf("in-flight request: got %v, want ErrProcessDied", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight request did not fail after the process died")
	}

	second := pidOf(t, sup) // waits for the automatic restart
	if second == first {
		t.Errorf("answered by the killed process %d", first)
	}
	if got := sup.Restarts(); got != 1 {
		t.Errorf("restarts: got %d, want 1", got)
	}
	if alive(first) {
		t.Errorf("killed process %d still alive", first)
	}
	if kids := children(os.Getpid()); len(kids) != 1 || kids[0] != second {
		t.Errorf("children: got %v, want only %d", kids, second)
	}
	if err := sup.Close(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if sup.State() != schemas.StateStopped {
		t.Errorf("state after close: %s", sup.State())
	}
	mu.Lock()
	got := fmt.Sprint(states)
	mu.Unlock()
	if want := "[starting loading ready restarting starting loading ready stopped]"; got != want {
		t.Errorf("state changes: got %s, want %s", got, want)
	}
	noChildren(t)
	settleGoroutines(t, before)
	if _, err := sup.Score(ctxT(t, time.Second), req("x", []byte{1})); !errors.Is(err, ErrClosed) {
		t.Errorf("score after close: got %v, want ErrClosed", err)
	}
}

func TestBusyTimeoutKillsAndRestarts(t *testing.T) {
	sup := startTest(t, func(c *Config) { c.BusyTimeout = 300 * time.Millisecond })
	first := pidOf(t, sup)
	start := time.Now()
	_, err := sup.Score(ctxT(t, 20*time.Second), req("block", []byte{1}))
	if !errors.Is(err, ErrBusyTimeout) {
		t.Fatalf("got %v, want ErrBusyTimeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("busy request took %s to fail", d)
	}
	if second := pidOf(t, sup); second == first {
		t.Errorf("still served by the killed process %d", first)
	}
	if alive(first) {
		t.Errorf("hung process %d still alive", first)
	}
	if sup.Restarts() != 1 {
		t.Errorf("restarts: got %d, want 1", sup.Restarts())
	}
}

// TestBusyTimeoutCountsWorkNotQueueing: four requests of 200 ms each, served
// one at a time, take 800 ms together; with a 400 ms busy timeout none is
// killed, because the process answers one every 200 ms.
func TestBusyTimeoutCountsWorkNotQueueing(t *testing.T) {
	sup := startTest(t, func(c *Config) { c.BusyTimeout = 400 * time.Millisecond })
	first := pidOf(t, sup)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := sup.Score(ctxT(t, 20*time.Second), req("serial:200ms", []byte{1}))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("queued request: %v", err)
		}
	}
	if sup.Restarts() != 0 || pidOf(t, sup) != first {
		t.Errorf("the process was killed while it kept answering (restarts %d)", sup.Restarts())
	}
}

func TestCancelledRequestReturnsAtOnce(t *testing.T) {
	sup := startTest(t, nil)
	first := pidOf(t, sup)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := sup.Score(ctx, req("block", []byte{1}))
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("cancelled request still waiting")
	}
	if got := pidOf(t, sup); got != first || sup.Restarts() != 0 {
		t.Errorf("cancelling a request disturbed the process: pid %d (was %d), restarts %d", got, first, sup.Restarts())
	}
}

func TestLoadStallRestarts(t *testing.T) {
	sup := startTest(t, func(c *Config) {
		c.Load.Options["stall"] = "1"
		c.LoadStallTimeout = 300 * time.Millisecond
		c.ReadyTimeout = 200 * time.Millisecond
	})
	deadline := time.Now().Add(10 * time.Second)
	for sup.Restarts() < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sup.Restarts() < 1 {
		t.Fatal("a stalled load was not restarted")
	}
	if err := sup.Err(); !errors.Is(err, ErrLoadStalled) {
		t.Errorf("error: got %v, want ErrLoadStalled", err)
	}
	_, err := sup.Score(ctxT(t, 5*time.Second), req("x", []byte{1}))
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "after 200ms") {
		t.Errorf("score while never ready: got %v, want ErrNotReady after the ready timeout", err)
	}
}

func TestLoadDeadlineMovesWithProgress(t *testing.T) {
	// 15 steps of 40 ms take 600 ms, three times the stall timeout.
	sup := startTest(t, func(c *Config) {
		c.Load.Options["slow_steps"] = "15"
		c.LoadStallTimeout = 200 * time.Millisecond
	})
	// A request made during the load waits for readiness.
	if _, err := sup.Score(ctxT(t, 20*time.Second), req("x", []byte{1})); err != nil {
		t.Fatal(err)
	}
	if sup.Restarts() != 0 {
		t.Errorf("a load that kept making progress was restarted %d times", sup.Restarts())
	}
}

func TestLoadFailureFailsFast(t *testing.T) {
	sup := startTest(t, func(c *Config) { c.Load.Options["fail"] = "1" })
	err := sup.WaitReady(ctxT(t, 20*time.Second))
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "open /m: file does not exist") {
		t.Fatalf("WaitReady: got %v, want ErrNotReady naming the cause", err)
	}
	start := time.Now()
	if _, err := sup.Score(ctxT(t, 20*time.Second), req("x", []byte{1})); !errors.Is(err, ErrNotReady) {
		t.Errorf("score: got %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("score waited %s on a model that cannot load", d)
	}
	if sup.Restarts() != 0 {
		t.Errorf("a load error caused %d restarts", sup.Restarts())
	}
}

func TestBadConfig(t *testing.T) {
	if _, err := Start(Config{Path: "/nonexistent/m3gate-sidecar", Load: schemas.LoadRequest{ModelDir: "/m", Family: "f"}}); err == nil {
		t.Error("missing binary: no error")
	}
	if _, err := Start(Config{Path: os.Args[0]}); !errors.Is(err, schemas.ErrInvalid) {
		t.Errorf("empty load request: got %v", err)
	}
}

// TestRealSidecar drives the real m3gate-sidecar binary on a model from
// $M3GATE_TEST_MODEL_DIR or `model tiny`: a full score, and a 50 MB PNG
// passes its gRPC limits.
func TestRealSidecar(t *testing.T) {
	sidecarBin := realSidecar(t)
	modelDir := os.Getenv("M3GATE_TEST_MODEL_DIR")
	if modelDir == "" {
		modelDir = testenv.TinyModel(t, sidecarBin)
	}
	sup, err := Start(Config{Path: sidecarBin, Load: schemas.LoadRequest{ModelDir: modelDir, Family: "idefics3", Device: "cpu", DType: "f32"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close(context.Background())
	err = sup.WaitReady(ctxT(t, 5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	png.Encode(&buf, img)
	rs, err := sup.Score(ctxT(t, 5*time.Minute), schemas.ScoreRequest{
		Prompt:  "a red apple",
		Items:   []schemas.ScoreItem{{Data: buf.Bytes()}, {Data: largePNG(t)}},
		Options: schemas.ScoreOptions{Aspects: []string{"quality", "correspondence"}, MaxNewTokens: 4, Prompts: defaultPrompts(t, "quality", "correspondence")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("got %d results", len(rs))
	}
	for _, a := range []string{"quality", "correspondence"} {
		r, ok := rs[0].Aspects[a]
		if !ok || rs[0].Error != "" {
			t.Fatalf("image 0: no %s result (error %q)", a, rs[0].Error)
		}
		if math.IsNaN(r.MOS) || r.MOS < 0 || r.MOS > 5 || iqa.RatingWord(r.MOS) == "" {
			t.Errorf("%s: mos %v out of range", a, r.MOS)
		}
		var sum float64
		for _, p := range r.WordProbs {
			sum += p
		}
		if len(r.WordProbs) != 5 || sum <= 0 || sum > 1+1e-6 {
			t.Errorf("%s: word probs %v", a, r.WordProbs)
		}
	}
}

// defaultPrompts returns the default conversation prompts of aspects.
func defaultPrompts(t *testing.T, aspects ...string) map[string]schemas.AspectPrompt {
	t.Helper()
	out := make(map[string]schemas.AspectPrompt, len(aspects))
	for _, a := range aspects {
		pp, err := dataset.LookupPrompts(a, "")
		if err != nil {
			t.Fatal(err)
		}
		out[a] = schemas.AspectPrompt{Round1: pp.Round1, Round2: pp.Round2}
	}
	return out
}

// startDaemon runs the test binary as a daemon supervising the real sidecar
// and returns it with the sidecar's pid.
func startDaemon(t *testing.T) (*exec.Cmd, int) {
	t.Helper()
	sidecarBin := realSidecar(t)
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SUPERVISOR_TEST_DAEMON=1", "SIDECAR_BIN="+sidecarBin)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("daemon: %v", err)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "sidecar %d", &pid); err != nil || pid <= 0 || !alive(pid) {
		t.Fatalf("daemon said %q", line)
	}
	return cmd, pid
}

func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("sidecar %d still running %s later", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDaemonSIGTERMStopsSidecar(t *testing.T) {
	cmd, pid := startDaemon(t)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
	waitGone(t, pid, time.Second) // Close waited for it already
}

func TestDaemonSIGKILLSidecarExits(t *testing.T) {
	cmd, pid := startDaemon(t)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitGone(t, pid, 5*time.Second)
}

// TestBusyTimeoutOutlivesAbandonedRequest: work the model cannot stop keeps
// its busy timer after the client left; the hung process is killed then,
// not the next innocent request.
func TestBusyTimeoutOutlivesAbandonedRequest(t *testing.T) {
	sup := startTest(t, func(c *Config) {
		c.BusyTimeout = 400 * time.Millisecond
		c.HeartbeatInterval = 50 * time.Millisecond
	})
	first := pidOf(t, sup)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := sup.Score(ctx, req("stuck:1h", []byte{1})); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("abandoned request: got %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(first) {
		if time.Now().After(deadline) {
			t.Fatal("the process still works on the abandoned request past the busy timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := sup.Err(); err != nil && !errors.Is(err, ErrBusyTimeout) {
		t.Errorf("cause: got %v, want ErrBusyTimeout", err)
	}
	if second := pidOf(t, sup); second == first {
		t.Errorf("still served by the killed process %d", first)
	}
}

// TestLoadRetriedAfterFailure: a load that fails is retried with backoff;
// the model becomes ready once the cause is gone, without a restart.
func TestLoadRetriedAfterFailure(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "fail")
	os.WriteFile(flag, nil, 0o644)
	sup := startTest(t, func(c *Config) { c.Load.Options["fail_while"] = flag })
	if err := sup.WaitReady(ctxT(t, 20*time.Second)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("WaitReady while the load fails: got %v", err)
	}
	os.Remove(flag)
	waitState(t, sup, schemas.StateReady, 10*time.Second)
	if _, err := sup.Score(ctxT(t, 20*time.Second), req("x", []byte{1})); err != nil {
		t.Fatal(err)
	}
	if sup.Restarts() != 0 {
		t.Errorf("restarts: %d", sup.Restarts())
	}
}

// TestFrozenProcessIsNotReady: a SIGSTOPped process misses its heartbeats
// and is not ready until SIGCONT.
func TestFrozenProcessIsNotReady(t *testing.T) {
	sup := startTest(t, func(c *Config) {
		c.HeartbeatInterval = 50 * time.Millisecond
		c.HeartbeatTimeout = 300 * time.Millisecond
	})
	pid := pidOf(t, sup)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	waitState(t, sup, schemas.StateUnresponsive, 5*time.Second)
	if err := sup.Err(); !errors.Is(err, ErrUnresponsive) {
		t.Errorf("cause: got %v", err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	waitState(t, sup, schemas.StateReady, 5*time.Second)
	if got := pidOf(t, sup); got != pid || sup.Restarts() != 0 {
		t.Errorf("after SIGCONT: pid %d (was %d), restarts %d", got, pid, sup.Restarts())
	}
}

func waitState(t *testing.T, sup *Supervisor, want schemas.State, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for sup.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("state %s (%v) after %s, want %s", sup.State(), sup.Err(), within, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
