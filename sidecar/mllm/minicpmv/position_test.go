package minicpmv

import (
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"strings"
	"testing"
)

const python = "/usr/bin/python3"

func needTorch(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Python with torch; skipped with -short")
	}
	if err := exec.Command(python, "-c", "import torch, numpy").Run(); err != nil {
		t.Skipf("skipping: %s cannot import torch and numpy (%v); install python3-torch python3-numpy", python, err)
	}
}

// TestPositionIDsMatchTorch runs the 2.5 code's bucketing in torch for
// many lengths (the slices a 448-scale slicing produces and others) and
// compares every id.
func TestPositionIDsMatchTorch(t *testing.T) {
	needTorch(t)
	lengths := []int{1, 7, 16, 17, 64, 100, 500, 1024, 1026, 1035, 1064, 1089, 1121, 1300, 2048, 4900}
	script := `import json, sys, torch
out = {}
for L in json.loads(sys.argv[1]):
    b = torch.arange(1 / 70, 1.0, 1 / 70)
    f = torch.arange(0, 1 - 1e-6, 1 / torch.tensor(L))
    out[str(L)] = torch.bucketize(f, b, right=True).tolist()
print(json.dumps(out))`
	arg, _ := json.Marshal(lengths)
	raw, err := exec.Command(python, "-c", script, string(arg)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want map[string][]int64
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	naive := 0
	for _, L := range lengths {
		got := PositionIDs(L, 70)
		w := want[fmt.Sprint(L)]
		if len(got) != len(w) {
			t.Errorf("L=%d: %d ids, torch %d", L, len(got), len(w))
			continue
		}
		for i := range got {
			if got[i] != w[i] {
				t.Errorf("L=%d: id %d = %d, torch %d", L, i, got[i], w[i])
				break
			}
			if int64(70*i/L) != w[i] {
				naive++
			}
		}
	}
	// the integer formula floor(70·i/L) is wrong somewhere: the point of
	// following torch's float32 arithmetic.
	if naive == 0 {
		t.Error("floor(70·i/L) agrees with torch everywhere: the test lengths do not exercise the float32 quirk")
	}
	t.Logf("%d ids differ from floor(70·i/L)", naive)
}

func TestSinCos2DMatchesNumpy(t *testing.T) {
	needTorch(t)
	script := `import json, numpy as np
def one(dim, pos):
    om = np.arange(dim // 2, dtype=np.float32); om /= dim / 2.0; om = 1.0 / 10000 ** om
    out = np.einsum("hw,d->hwd", pos, om)
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1)
g = np.stack(np.meshgrid(np.arange(5, dtype=np.float32), np.arange(3, dtype=np.float32)), axis=0)
e = np.concatenate([one(16, g[0]), one(16, g[1])], axis=-1)
print(json.dumps(e.reshape(-1).astype(float).tolist()))`
	raw, err := exec.Command(python, "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []float64
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(raw))), &want); err != nil {
		t.Fatal(err)
	}
	got := SinCos2D(32, 3, 5)
	if len(got) != len(want) {
		t.Fatalf("%d values, numpy %d", len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); d > 1e-6 {
			t.Fatalf("value %d = %g, numpy %g", i, got[i], want[i])
		}
	}
}
