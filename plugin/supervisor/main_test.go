package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/schemas"
)

// The test binary doubles as two helper processes, chosen by environment:
//   - SUPERVISOR_TEST_PLUGIN=1: a go-plugin server of the scorer contract
//     backed by testScorer (a real process the tests can SIGKILL);
//   - SUPERVISOR_TEST_DAEMON=1: a minimal daemon that supervises the real
//     m3gate-sidecar, prints its pid and stops it on SIGTERM.
// The real sidecar binary comes from testenv.Sidecar.

func TestMain(m *testing.M) {
	switch {
	case os.Getenv("SUPERVISOR_TEST_PLUGIN") == "1":
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: schemas.Handshake,
			Plugins:         schemas.PluginMap(testScorer{}),
			GRPCServer:      schemas.NewGRPCServer,
			Logger:          hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: os.Stderr, Level: hclog.Warn}),
		})
		os.Exit(0)
	case os.Getenv("SUPERVISOR_TEST_DAEMON") == "1":
		os.Exit(testDaemon())
	}
	testenv.Main(m)
}

// realSidecar returns the real m3gate-sidecar (testenv.Sidecar).
func realSidecar(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("drives the real sidecar; skipped with -short")
	}
	return testenv.Sidecar(t)
}

// testScorer is the scorer of the helper plugin process. Its behaviour is
// steered by the request: Load option "stall" sends one progress message
// and hangs; "slow_steps"=N sends N progress messages 40 ms apart. Score
// prompt "block" blocks until cancelled; "serial:D" takes D, one request at
// a time; "stuck:D" works for D ignoring cancellation (Status reports it
// as busy); "pid" answers with the process id
// in the description; otherwise the description is the sha256 of the image.
type testScorer struct{}

var (
	serialMu sync.Mutex
	stuckMu  sync.Mutex
	stuckAt  time.Time // when the "stuck:" work in progress began
)

func (testScorer) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error {
	if f := req.Options["fail_while"]; f != "" {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("load: %s exists", f)
		}
	}
	if req.Options["fail"] != "" {
		return fmt.Errorf("open %s: %w", req.ModelDir, os.ErrNotExist)
	}
	if req.Options["stall"] != "" {
		progress(schemas.LoadProgress{Stage: "weights", DoneBytes: 1, TotalBytes: 10})
		<-ctx.Done()
		return ctx.Err()
	}
	n, _ := strconv.Atoi(req.Options["slow_steps"])
	for i := range n {
		select {
		case <-time.After(40 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		progress(schemas.LoadProgress{Stage: "weights", DoneBytes: int64(i + 1), TotalBytes: int64(n)})
	}
	progress(schemas.LoadProgress{Stage: schemas.StageDone})
	return nil
}

func (testScorer) Status(ctx context.Context) (schemas.Status, error) {
	stuckMu.Lock()
	var busy time.Duration
	if !stuckAt.IsZero() {
		busy = time.Since(stuckAt)
	}
	stuckMu.Unlock()
	return schemas.Status{State: schemas.StateReady, Busy: busy, Model: schemas.ModelInfo{Family: "test", Details: map[string]string{"pid": strconv.Itoa(os.Getpid())}}}, nil
}

func (testScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	if d, ok := strings.CutPrefix(req.Prompt, "serial:"); ok {
		// One at a time, like the real sidecar's work queue.
		serialMu.Lock()
		defer serialMu.Unlock()
		wait, _ := time.ParseDuration(d)
		time.Sleep(wait)
	}
	if d, ok := strings.CutPrefix(req.Prompt, "stuck:"); ok {
		wait, _ := time.ParseDuration(d)
		stuckMu.Lock()
		stuckAt = time.Now()
		stuckMu.Unlock()
		time.Sleep(wait)
		stuckMu.Lock()
		stuckAt = time.Time{}
		stuckMu.Unlock()
	}
	if req.Prompt == "block" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	out := make([]schemas.ItemResult, len(req.Items))
	for i, it := range req.Items {
		desc := strconv.Itoa(os.Getpid())
		if req.Prompt != "pid" {
			sum := sha256.Sum256(it.Data)
			desc = hex.EncodeToString(sum[:])
		}
		out[i] = schemas.ItemResult{Index: i, Aspects: map[string]schemas.AspectResult{}}
		for _, a := range req.Options.Aspects {
			out[i].Aspects[a] = schemas.AspectResult{MOS: 2.5, Rating: "fair", Description: desc, Source: schemas.SourceWordProbs}
		}
	}
	return out, nil
}

func (testScorer) Unload(ctx context.Context) error { return nil }

// testDaemon supervises the real sidecar at $SIDECAR_BIN, prints
// "sidecar <pid>" once the sidecar is up, and on SIGTERM closes the
// supervisor and exits.
func testDaemon() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	sup, err := Start(Config{
		Path: os.Getenv("SIDECAR_BIN"),
		Load: schemas.LoadRequest{ModelDir: "/nonexistent", Family: "idefics3"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The real sidecar either loads (engine wired) or reports a load error;
	// both leave the process running.
	for sup.State() != schemas.StateReady && sup.State() != schemas.StateError {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("sidecar %d\n", sidecarPid(sup))
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sup.Close(cctx); err != nil {
		return 1
	}
	return 0
}

// sidecarPid finds the sidecar among this process's children.
func sidecarPid(sup *Supervisor) int {
	if p := sup.Pid(); p > 0 {
		return p
	}
	kids := children(os.Getpid())
	if len(kids) == 1 {
		return kids[0]
	}
	return 0
}

// children lists the live (non-zombie) child processes of pid and, with
// zombies, counts as leaks too: it returns every process whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 {
			if pp, _ := strconv.Atoi(f[1]); pp == pid {
				out = append(out, p)
			}
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
