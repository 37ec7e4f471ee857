package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m3gate/m3gate/schemas"
)

// TestServeBusyPortFailsBeforeLoading: serve binds before it starts the
// model process, so a busy port fails at once and starts nothing.
func TestServeBusyPortFailsBeforeLoading(t *testing.T) {
	env, pidFile := fakeSidecarEnv(t, "")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env = append(env, "M3GATE_MODEL_DIR="+fakeModelDir(t))
	code, _, errOut := run(t, env, "", "serve", "--listen", busy.Addr().String(), "--device", "cpu", "--threads", "2")
	if code != ExitError || !strings.Contains(errOut, "serve: listen on "+busy.Addr().String()) || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("code %d, stderr:\n%s", code, errOut)
	}
	if _, err := os.Stat(pidFile); err == nil {
		t.Errorf("the model process was started before the bind failed")
	}
}

// TestServeDeviceThreadsFlags: --device and --threads override model.device
// and model.threads; a negative thread count is a usage error.
func TestServeDeviceThreadsFlags(t *testing.T) {
	code, _, errOut := run(t, []string{"M3GATE_SIDECAR=/nonexistent"}, "", "serve", "--threads", "-1")
	if code != ExitUsage || !strings.Contains(errOut, "serve: --threads -1: want 0 (one per core) or more") {
		t.Errorf("code %d, stderr:\n%s", code, errOut)
	}
	code, out, _ := run(t, nil, "", "serve", "--help")
	if code != ExitOK || !strings.Contains(out, "--device string") || !strings.Contains(out, "--threads int") {
		t.Errorf("serve --help lacks --device/--threads:\n%s", out)
	}
}

// TestServeDeviceThreadsReachTheModel: the model process is loaded with
// the device and thread count of the flags.
func TestServeDeviceThreadsReachTheModel(t *testing.T) {
	env, _ := fakeSidecarEnv(t, "")
	loadFile := filepath.Join(t.TempDir(), "load.json")
	t.Setenv(scoreTestLoadEnv, loadFile)
	env = append(env, "M3GATE_MODEL_DIR="+fakeModelDir(t), "M3GATE_MODEL_THREADS=7")
	t.Chdir(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- Execute(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--device", "cuda:1", "--threads", "3"}, strings.NewReader(""), &bytes.Buffer{}, &errb, env)
	}()
	var load schemas.LoadRequest
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(loadFile); err == nil && json.Unmarshal(b, &load) == nil {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("the model process was never loaded; stderr:\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != ExitOK {
		t.Errorf("serve exit %d; stderr:\n%s", code, errb.String())
	}
	if load.Device != "cuda:1" || load.Threads != 3 {
		t.Errorf("loaded with device %q, threads %d; want cuda:1 and 3 (the flags)", load.Device, load.Threads)
	}
}
