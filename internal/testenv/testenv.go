// Package testenv gives m3gate's tests what they need from their
// environment: the module root, the shared data folder beside it, and the
// m3gate and m3gate-sidecar binaries and a tiny random-weight model, made
// once per test binary.
//
// The binaries come from the environment when set ($M3GATE,
// $M3GATE_SIDECAR; `make test` sets the latter to bin/m3gate-sidecar) and
// are otherwise built from this module into a temporary folder (building
// the sidecar needs the cgo flags of scripts/env.sh). The shared data
// folder is $M3GATE_DATA, else ../shared/data beside the module root (the
// layout of /work and of a CI clone).
//
// It is pure Go and imports no other m3gate package, so tests on both
// sides of the plugin/sidecar wall may use it. Call Main from TestMain so
// the temporary folder is removed.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Environment variables that name prebuilt binaries and the data folder.
const (
	EnvM3gate  = "M3GATE"
	EnvSidecar = "M3GATE_SIDECAR"
	EnvData    = "M3GATE_DATA"
)

// Package paths of the two commands.
const (
	M3gatePkg  = "github.com/m3gate/m3gate/plugin/cmd/m3gate"
	SidecarPkg = "github.com/m3gate/m3gate/sidecar/cmd/m3gate-sidecar"
)

var (
	mu     sync.Mutex
	tmpDir string
	onces  = map[string]*once{}
)

// once is the memoised outcome of one expensive setup step.
type once struct {
	sync.Once
	path string
	err  error
}

// do runs fn once per key for the whole test binary and returns its
// outcome (an error is returned to every caller).
func do(key string, fn func(dir string) (string, error)) (string, error) {
	mu.Lock()
	o, ok := onces[key]
	if !ok {
		o = &once{}
		onces[key] = o
	}
	mu.Unlock()
	o.Do(func() {
		var dir string
		if dir, o.err = tempDir(); o.err == nil {
			o.path, o.err = fn(dir)
		}
	})
	return o.path, o.err
}

func tempDir() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if tmpDir == "" {
		d, err := os.MkdirTemp("", "m3gate-test-")
		if err != nil {
			return "", err
		}
		tmpDir = d
	}
	return tmpDir, nil
}

// Main runs the tests and removes what the package built, then exits with
// the tests' status. Use it as TestMain's last call.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// Cleanup removes the binaries and models built so far (Main calls it).
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
		tmpDir = ""
	}
	onces = map[string]*once{}
}

// ModuleRoot returns the folder holding m3gate's go.mod, found from the
// working directory upwards (a test runs in its package folder).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
		d = parent
	}
}

// DataDir returns the shared data folder: $M3GATE_DATA, else
// ../shared/data beside the module root. It may not exist.
func DataDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv(EnvData); d != "" {
		return abs(t, d)
	}
	return filepath.Join(filepath.Dir(ModuleRoot(t)), "shared", "data")
}

// SharedData returns DataDir, skipping the test when the file or folder
// rel (slash-separated, e.g. "agiqa-3k/data.csv") is not under it.
func SharedData(t testing.TB, rel string) string {
	t.Helper()
	dir := DataDir(t)
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
		t.Skipf("shared data %s not found under %s (set %s)", rel, dir, EnvData)
	}
	return dir
}

// Sidecar returns the m3gate-sidecar binary: $M3GATE_SIDECAR, or a build
// of sidecar/cmd/m3gate-sidecar made once per test binary.
func Sidecar(t testing.TB) string {
	t.Helper()
	return binary(t, EnvSidecar, SidecarPkg, "m3gate-sidecar")
}

// M3gate returns the m3gate binary: $M3GATE, or a build of
// plugin/cmd/m3gate made once per test binary.
func M3gate(t testing.TB) string {
	t.Helper()
	return binary(t, EnvM3gate, M3gatePkg, "m3gate")
}

// RequireSidecar returns $M3GATE_SIDECAR as an absolute path, and skips
// the test when it is unset: for the slow end-to-end tests, which run only
// where the sidecar was built beforehand (`make test`).
func RequireSidecar(t testing.TB) string {
	t.Helper()
	p := os.Getenv(EnvSidecar)
	if p == "" {
		t.Skipf("this test needs the real sidecar: set %s=$PWD/bin/m3gate-sidecar (`make test` does, after `make build`)", EnvSidecar)
	}
	return abs(t, p)
}

func binary(t testing.TB, env, pkg, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return abs(t, p)
	}
	root := ModuleRoot(t)
	p, err := do("build "+pkg, func(dir string) (string, error) {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s (source scripts/env.sh first): %v\n%s", pkg, err, b)
		}
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TinyModel returns a tiny random-weight Idefics3 model written once per
// test binary by `sidecar model tiny`.
func TinyModel(t testing.TB, sidecar string) string {
	t.Helper()
	p, err := do("tiny model", func(dir string) (string, error) {
		out := filepath.Join(dir, "tiny")
		if b, err := exec.Command(sidecar, "model", "tiny", "--family", "idefics3", "--size", "tiny", "--out", out).CombinedOutput(); err != nil {
			return "", fmt.Errorf("model tiny: %v\n%s", err, b)
		}
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// abs makes p absolute against the working directory; relative paths in
// the environment are meant from where `go test` was started, which for
// `make test` is the module root.
func abs(t testing.TB, p string) string {
	t.Helper()
	if filepath.IsAbs(p) {
		return p
	}
	if root, err := moduleRoot(); err == nil {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			return filepath.Join(root, p)
		}
	}
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// ProcStatusKB reads a kB field of /proc/PID/status (VmRSS, VmHWM, ...);
// pid 0 is this process.
func ProcStatusKB(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}
