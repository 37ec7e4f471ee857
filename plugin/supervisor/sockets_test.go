package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mySocketDirs lists the socket folders of this process below base with
// the files in each.
func mySocketDirs(t *testing.T, base string) map[string][]string {
	t.Helper()
	ents, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), strconv.Itoa(os.Getpid())+"-") {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(base, e.Name(), "*"))
		out[e.Name()] = files
	}
	return out
}

// TestSocketFilesDoNotPileUp: the sidecar's go-plugin socket lives in a
// folder of its own, removed when the process dies (also by SIGKILL, which
// leaves the socket file behind) and on Close; folders of supervisors that
// no longer run are removed at start, those of running ones are kept.
func TestSocketFilesDoNotPileUp(t *testing.T) {
	base := filepath.Join(t.TempDir(), "socks")
	if err := os.MkdirAll(base, 0o700); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(base, strconv.Itoa(dead.Process.Pid)+"-123")
	live := filepath.Join(base, strconv.Itoa(os.Getppid())+"-456")
	for _, d := range []string{stale, live} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "plugin1"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sup := startTest(t, func(c *Config) { c.SocketDir = base })
	first := pidOf(t, sup)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale folder of dead process %d: %v, want removed", dead.Process.Pid, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("folder of running process %d: %v, want kept", os.Getppid(), err)
	}
	dirs := mySocketDirs(t, base)
	if len(dirs) != 1 {
		t.Fatalf("socket folders %v, want one", dirs)
	}
	var firstDir string
	for d, files := range dirs {
		firstDir = d
		if len(files) != 1 || !strings.HasPrefix(filepath.Base(files[0]), "plugin") {
			t.Errorf("folder %s holds %v, want the go-plugin socket", d, files)
		}
	}

	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		// A request may still reach the dying process: ask until the
		// restarted one answers.
		if rs, err := sup.Score(ctxT(t, 20*time.Second), req("pid", []byte{1})); err == nil && rs[0].Aspects["quality"].Description != strconv.Itoa(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no restarted process answers")
		}
		time.Sleep(20 * time.Millisecond)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		dirs = mySocketDirs(t, base)
		if _, ok := dirs[firstDir]; !ok && len(dirs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGKILL and restart: socket folders %v, want only the new process's", dirs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := sup.Close(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if dirs = mySocketDirs(t, base); len(dirs) != 0 {
		t.Errorf("after Close: socket folders %v, want none", dirs)
	}
}
