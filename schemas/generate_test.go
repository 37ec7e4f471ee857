package schemas

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates the Go code of m3gate.proto into a
// temporary directory and fails when the committed code differs.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		t.Skip("protoc not installed")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "../scripts/gen-proto.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-proto.sh: %v\n%s", err, b)
	}
	for _, name := range []string{"m3gate.pb.go", "m3gate_grpc.pb.go"} {
		got, err := os.ReadFile(filepath.Join("gen", "m3gatev1", name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(out, "gen", "m3gatev1", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("schemas/gen/m3gatev1/%s is stale: run scripts/gen-proto.sh and commit", name)
		}
	}
}
