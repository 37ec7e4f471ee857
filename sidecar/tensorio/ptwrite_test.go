package tensorio

import (
	"encoding/json"
	"math"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch/ts"
)

// TestWriteCheckpointRoundTrip writes a Lightning-style checkpoint and reads
// it back with LoadPT and with Python's torch.load.
func TestWriteCheckpointRoundTrip(t *testing.T) {
	a := ts.MustOfSlice([]float32{1, -2.5, 3, 4, 5, 6}).MustView([]int64{2, 3}, true)
	b := ts.MustOfSlice([]float32{0.125}).MustView([]int64{1}, true)
	c := ts.MustOfSlice([]float64{7, 8, 9, 10}).MustView([]int64{2, 1, 2}, true)
	path := filepath.Join(t.TempDir(), "best-epoch=3.ckpt")
	in := []Named{{"model.W.weight", a}, {"model.fc.0.bias", b}, {"model.x", c}}
	if err := WriteCheckpoint(path, in, 3, 42); err != nil {
		t.Fatal(err)
	}
	sd, err := LoadPT(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd) != 3 {
		t.Fatalf("%d tensors read back", len(sd))
	}
	for _, n := range in {
		got := sd[n.Name]
		if got == nil {
			t.Fatalf("%s missing", n.Name)
		}
		if g, w := got.MustSize(), n.Tensor.MustSize(); len(g) != len(w) {
			t.Fatalf("%s: shape %v, want %v", n.Name, g, w)
		}
		gv, wv := got.Float64Values(), n.Tensor.Float64Values()
		for i := range wv {
			if gv[i] != wv[i] {
				t.Fatalf("%s[%d] = %g, want %g", n.Name, i, gv[i], wv[i])
			}
		}
	}
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import torch").Run(); err != nil {
		t.Skipf("skipping the torch.load check: %s cannot import torch", py)
	}
	out, err := exec.Command(py, "-c", `import json, sys, torch
ck = torch.load(sys.argv[1], map_location="cpu")
print(json.dumps({"epoch": ck["epoch"], "step": ck["global_step"], "keys": list(ck["state_dict"].keys()),
  "w": ck["state_dict"]["model.W.weight"].tolist(), "x": list(ck["state_dict"]["model.x"].shape)}))`, path).CombinedOutput()
	if err != nil {
		t.Fatalf("torch.load: %v\n%s", err, out)
	}
	var got struct {
		Epoch, Step int
		Keys        []string
		W           [][]float64
		X           []int
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Epoch != 3 || got.Step != 42 || len(got.Keys) != 3 || got.Keys[0] != "model.W.weight" || got.W[0][1] != -2.5 || len(got.X) != 3 || math.Abs(got.W[1][2]-6) > 0 {
		t.Errorf("torch.load read %+v", got)
	}
}
