// Package e2e holds the end-to-end tests of the ComfyUI integration (issue
// 7): the real `m3gate serve` daemon supervising the real m3gate-sidecar on
// a generated tiny model, the real `m3gate run` process, and the fake
// ComfyUI server of package comfyfake in the test process (the only fake:
// ComfyUI cannot run here). The package has test files only; it lives apart
// from plugin/cli because it drives the built binaries as a user would and
// needs none of the cli package's internals.
//
// The tests need the sidecar binary: `make test` sets
// M3GATE_SIDECAR=$PWD/bin/m3gate-sidecar. Without it they skip. bin/m3gate
// is built from source into a temporary folder unless $M3GATE names one.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"io"
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
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
	"github.com/m3gate/m3gate/schemas/api"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// binaries returns the m3gate and m3gate-sidecar binaries and a tiny
// random-weight model, made once per test run (testenv). It skips the test
// when $M3GATE_SIDECAR is unset.
func binaries(t testing.TB) (m3gate, sidecar, model string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	sidecar = testenv.RequireSidecar(t)
	return testenv.M3gate(t), sidecar, testenv.TinyModel(t, sidecar)
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a started child process.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer
	done           chan struct{}
	err            error
}

// childEnv is the environment of the processes under test: ours without
// M3GATE_* overrides, so that their config.yaml alone configures them.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "M3GATE_") {
			env = append(env, kv)
		}
	}
	return env
}

// startProc starts bin args in dir. A cleanup kills it if the test did not
// stop it.
func startProc(t *testing.T, name, dir, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = childEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit by itself and returns its exit code.
func (p *proc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		t.Fatalf("%s still running after %v\nstdout:\n%s\nstderr:\n%s", p.name, within, p.stdout.String(), p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and waits for the process to exit.
func (p *proc) stop(t *testing.T, within time.Duration) int {
	t.Helper()
	if !p.exited() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("SIGTERM %s: %v", p.name, err)
		}
	}
	return p.wait(t, within)
}

// children returns the live child processes of pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cpid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" && f[0] != "X" {
			out = append(out, cpid)
		}
	}
	return out
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

// checkNoLeaks registers a cleanup (run after every other cleanup of the
// test) that fails the test when a child process of the test is still
// running.
func checkNoLeaks(t *testing.T) {
	t.Cleanup(func() {
		if kids := children(os.Getpid()); len(kids) > 0 {
			t.Errorf("child processes still running after the test: %v", kids)
			for _, k := range kids {
				syscall.Kill(k, syscall.SIGKILL)
			}
		}
	})
}

// daemon is a running `m3gate serve` with its model process.
type daemon struct {
	*proc
	dir     string // working directory, holding config.yaml
	url     string
	sidecar int // pid of the m3gate-sidecar child
}

// writeConfig writes dir/config.yaml: the tiny model, quality only, short
// descriptions, the daemon on listen, the given ComfyUI servers.
func writeConfig(t *testing.T, dir, model, sidecar, listen string, servers ...string) {
	t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "model:\n  dir: %q\n  max_new_tokens: 4\n", model)
	sb.WriteString("scoring:\n  aspects: [quality]\n  thresholds:\n    quality: 2.5\n")
	sb.WriteString("comfyui:\n  servers:\n")
	for _, s := range servers {
		fmt.Fprintf(&sb, "    - %q\n", s)
	}
	sb.WriteString("  reconnect_min: 50ms\n  reconnect_max: 500ms\n")
	fmt.Fprintf(&sb, "daemon:\n  listen: %q\n  request_timeout: 1m\n", listen)
	fmt.Fprintf(&sb, "sidecar:\n  path: %q\n", sidecar)
	sb.WriteString("log:\n  level: warn\n")
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

var listenLine = regexp.MustCompile(`listening on http://(\S+)`)

// startDaemon writes a config.yaml naming the fake ComfyUI server and runs
// `m3gate serve` with it on a free port; once it listens, config.yaml is
// rewritten with the port taken, so that `m3gate run` in the same folder
// finds the daemon through daemon.listen. It returns when /readyz answers
// 200. A cleanup stops it with SIGTERM and checks that the daemon and its
// sidecar exit.
func startDaemon(t *testing.T, comfyURL string) *daemon {
	t.Helper()
	_, sidecar, model := binaries(t)
	dir := t.TempDir()
	writeConfig(t, dir, model, sidecar, "127.0.0.1:0", comfyURL)
	d := &daemon{dir: dir}
	d.start(t)
	writeConfig(t, dir, model, sidecar, strings.TrimPrefix(d.url, "http://"), comfyURL)
	return d
}

// start runs `m3gate serve` in d.dir and waits until it is ready.
func (d *daemon) start(t *testing.T) {
	t.Helper()
	m3gate, _, _ := binaries(t)
	p := startProc(t, "m3gate serve", d.dir, m3gate, "serve")
	d.proc, d.url, d.sidecar = p, "", 0
	t.Cleanup(func() { d.shutdown(t) })
	deadline := time.Now().Add(60 * time.Second)
	for d.url == "" || !d.ready() {
		if d.url == "" {
			if m := listenLine.FindStringSubmatch(p.stderr.String()); m != nil {
				d.url = "http://" + m[1]
			}
		}
		if p.exited() {
			t.Fatalf("daemon exited during startup (%v):\n%s", p.err, p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready after 60s:\n%s", p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.findSidecar(t)
}

// findSidecar sets d.sidecar to the daemon's m3gate-sidecar child.
func (d *daemon) findSidecar(t *testing.T) {
	t.Helper()
	d.sidecar = 0
	for _, c := range children(d.cmd.Process.Pid) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.TrimSpace(string(b)) == "m3gate-sidecar" {
			d.sidecar = c
		}
	}
	if d.sidecar == 0 {
		t.Fatalf("ready daemon has no m3gate-sidecar child process")
	}
}

func (d *daemon) ready() bool {
	if d.url == "" {
		return false
	}
	resp, err := http.Get(d.url + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// shutdown stops the daemon with SIGTERM and checks that it and its model
// process are gone.
func (d *daemon) shutdown(t *testing.T) {
	if d.proc == nil || d.exited() {
		return
	}
	code := d.stop(t, 20*time.Second)
	if code != 0 && code != 130 {
		t.Errorf("daemon exit code %d after SIGTERM:\n%s", code, d.stderr.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.sidecar != 0 && processAlive(d.sidecar) {
		if time.Now().After(deadline) {
			syscall.Kill(d.sidecar, syscall.SIGKILL)
			t.Errorf("sidecar %d still running 5s after its daemon stopped", d.sidecar)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// score asks the daemon for the quality of one image, as the node pack and
// pipeline do.
func (d *daemon) score(t *testing.T, png []byte, prompt string) api.AspectScore {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"images": []map[string]string{{"data": base64.StdEncoding.EncodeToString(png)}}, "prompt": prompt, "aspects": []string{"quality"},
	})
	resp, err := http.Post(d.url+api.PathScore, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var ans api.ScoreResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &ans) != nil || len(ans.Results) != 1 || ans.Results[0].Error != "" {
		t.Fatalf("score: HTTP %d %s", resp.StatusCode, raw)
	}
	q, ok := ans.Results[0].Aspects["quality"]
	if !ok {
		t.Fatalf("score answer without quality: %s", raw)
	}
	return q
}

// seedImages is the fake's ImageFunc: a 64×64 picture whose colours and
// pattern depend on the seed; it records every seed it renders.
type seedImages struct {
	mu    sync.Mutex
	seeds []uint64
}

func (s *seedImages) image(seed uint64) image.Image {
	s.mu.Lock()
	s.seeds = append(s.seeds, seed)
	s.mu.Unlock()
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	r, g, b := uint8(seed), uint8(seed>>8), uint8(seed>>16)
	stripe := int(seed>>24)%7 + 2
	for y := 0; y < 64; y++ {
		for x := 0; x < 64; x++ {
			c := color.NRGBA{r + uint8(x*2), g + uint8(y*3), b, 255}
			if (x/stripe+y/stripe)%2 == 0 {
				c = color.NRGBA{255 - c.R, c.G / 2, 255 - c.B, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	return img
}

func (s *seedImages) rendered() map[uint64]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[uint64]int{}
	for _, sd := range s.seeds {
		out[sd]++
	}
	return out
}

// startFake starts the fake ComfyUI server on a free port of 127.0.0.1.
func startFake(t *testing.T, opts ...comfyfake.Option) (*comfyfake.Server, *seedImages) {
	t.Helper()
	imgs := &seedImages{}
	s := comfyfake.New(append([]comfyfake.Option{comfyfake.WithImageFunc(imgs.image)}, opts...)...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, imgs
}

// readWorkflow reads a testdata workflow.
func readWorkflow(t *testing.T, name string) (string, comfyui.Workflow) {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	wf, err := comfyui.ParseWorkflow(data)
	if err != nil {
		t.Fatal(err)
	}
	return path, wf
}

// samplerSeed returns the KSampler seed of a prompt the fake received.
func samplerSeed(t *testing.T, wf comfyui.Workflow) uint64 {
	t.Helper()
	for _, n := range wf {
		if n.ClassType == "KSampler" {
			if s, ok := comfyui.AsUint64(n.Inputs["seed"]); ok {
				return s
			}
		}
	}
	t.Fatalf("no KSampler seed in %v", wf)
	return 0
}

// history returns every prompt the fake ran since its last (re)start.
func history(t *testing.T, ctx context.Context, url string) map[string]comfyui.HistoryEntry {
	t.Helper()
	cl, err := comfyui.New(url)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	h, err := cl.HistoryAll(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readLines decodes a JSON-lines file.
func readLines[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v in %s", path, err, sc.Bytes())
		}
		out = append(out, v)
	}
	return out
}
