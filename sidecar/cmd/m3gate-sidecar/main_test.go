package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/m3gate/m3gate/schemas"
)

// TestMain runs the real main when go-plugin starts the test binary as the
// sidecar (the magic cookie is set).
func TestMain(m *testing.M) {
	if schemas.IsPluginProcess() {
		main()
		return
	}
	os.Exit(m.Run())
}

func startSidecar(t *testing.T) schemas.Scorer {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  schemas.Handshake,
		Plugins:          schemas.PluginMap(nil),
		Cmd:              exec.Command(exe, "--max-batch", "4"),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		GRPCDialOptions:  schemas.DialOptions(),
		Logger:           hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug}),
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	raw, err := rpc.Dispense(schemas.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(schemas.Scorer)
}

// TestServesContract starts this binary's main through go-plugin (AutoMTLS,
// gRPC) and checks status, the message limits and the load error.
func TestServesContract(t *testing.T) {
	s := startSidecar(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != schemas.StateIdle || st.Memory.RSSBytes <= 0 {
		t.Errorf("status before load: got %+v", st)
	}
	// 50 MB crosses the gRPC limits and reaches the service, which refuses
	// it only because no model is loaded.
	big := bytes.Repeat([]byte{0x89}, 50<<20)
	_, err = s.Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: big}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}})
	if !errors.Is(err, schemas.ErrNotLoaded) {
		t.Errorf("50 MB score before load: got %v, want ErrNotLoaded", err)
	}
	err = s.Load(ctx, schemas.LoadRequest{ModelDir: "/nonexistent-m3gate-model", Family: "idefics3"}, nil)
	if err == nil {
		t.Fatal("load of a missing model succeeded")
	}
	if !strings.Contains(err.Error(), "/nonexistent-m3gate-model does not exist") {
		t.Errorf("load: got %v, want an error naming the missing directory", err)
	}
	st, _ = s.Status(ctx)
	if st.State != schemas.StateError || st.Error == "" {
		t.Errorf("status after failed load: got %+v", st)
	}
}

func TestRunOffline(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "no subcommand"},
		{[]string{"frobnicate"}, `unknown subcommand "frobnicate"`},
		{[]string{"model", "tiny"}, "--out is required"},
		{[]string{"model", "tiny", "--out", "/tmp/x", "--size", "huge"}, `--size "huge"`},
		{[]string{"model", "tiny", "--bogus"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		err := runOffline(context.Background(), tt.args, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("runOffline(%q): got %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

// TestDeviceFlagParsing: a device name that is not cpu, cuda or cuda:N
// stops both commands before anything is loaded.
func TestDeviceFlagParsing(t *testing.T) {
	for _, dev := range []string{"gpu", "cuda:x"} {
		args := []string{"--model", "m", "--data", "d.jsonl", "--out", t.TempDir(), "--device", dev}
		for name, run := range map[string]func(context.Context, []string, io.Writer, io.Writer) error{
			"finetune": finetune, "train-predictor": trainPredictor,
		} {
			err := run(context.Background(), args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "--device") || !strings.Contains(err.Error(), "want cpu, cuda or cuda:N") {
				t.Errorf("%s --device %s: %v, want an error naming --device and the accepted forms", name, dev, err)
			}
		}
	}
}
