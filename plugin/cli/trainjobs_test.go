package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTrainJobsForwardToSidecar checks that finetune and train-predictor
// pass every argument, flags and --help included, to the sidecar binary
// and return its exit code.
func TestTrainJobsForwardToSidecar(t *testing.T) {
	dir := t.TempDir()
	bin := fakeSidecar(t, dir)
	log := filepath.Join(dir, "log")
	tests := []struct {
		args     []string
		exit     string
		wantCode int
	}{
		{[]string{"finetune", "--model", "m", "--data", "c.jsonl", "--lora-r", "8", "--resume"}, "0", 0},
		{[]string{"finetune", "--help"}, "0", 0},
		{[]string{"train-predictor", "--model", "m", "--epochs=3", "--val-description", "teacher"}, "0", 0},
		{[]string{"train-predictor", "--bogus"}, "2", 2},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			env := []string{"M3GATE_SIDECAR=" + bin, "FAKE_LOG=" + log, "FAKE_EXIT=" + tt.exit, "PATH=/usr/bin:/bin"}
			code, out, errOut := run(t, env, "", tt.args...)
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d (stderr %q)", code, tt.wantCode, errOut)
			}
			if out != "sidecar stdout\n" {
				t.Errorf("stdout = %q", out)
			}
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.Join(tt.args, "\n") + "\n"; string(b) != want {
				t.Errorf("sidecar saw %q, want %q", b, want)
			}
		})
	}
}
