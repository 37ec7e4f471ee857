package tensorio

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/internal/testenv"
)

// procStatusKB reads a "Vm…:  N kB" field of /proc/self/status.
func procStatusKB(field string) (int64, error) { return testenv.ProcStatusKB(0, field) }

// BenchmarkOpenLarge opens a 256 MiB BF16 checkpoint (16 tensors) and loads
// every tensor, keeping them all alive, as a model load does. It reports
// throughput (warm page cache) and peakRSS/file: the peak resident-set growth
// during one load, measured in a fresh process (this test binary re-run as
// TestLoadRSSChild, so no heap retained by earlier iterations is reused),
// relative to the file size. About 1.0 means one copy in memory (the
// tensors); 2.0 would mean the mapping and the tensors were both resident.
func BenchmarkOpenLarge(b *testing.B) {
	const tensors, perTensor = 16, 16 << 20 // bytes
	dir := b.TempDir()
	path := filepath.Join(dir, "large.safetensors")
	var named []Named
	for i := range tensors {
		x, err := ts.Ones([]int64{perTensor / 2 / 1024, 1024}, gotch.BFloat16, gotch.CPU)
		if err != nil {
			b.Fatal(err)
		}
		named = append(named, Named{fmt.Sprintf("layer.%02d.weight", i), x})
	}
	if err := Write(path, named, nil); err != nil {
		b.Fatal(err)
	}
	for _, n := range named {
		n.Tensor.MustDrop()
	}
	named = nil
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	b.ResetTimer()
	for range b.N {
		loaded, err := loadAll(path)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		for _, x := range loaded {
			x.MustDrop()
		}
		b.StartTimer()
	}
	b.StopTimer()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadRSSChild$", "-test.v")
	cmd.Env = append(os.Environ(), "TENSORIO_RSS_CHILD="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("child: %v\n%s", err, out)
	}
	var growthKB int64
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "peak-growth-kB "); ok {
			growthKB, _ = strconv.ParseInt(rest, 10, 64)
		}
	}
	if growthKB == 0 {
		b.Fatalf("child printed no measurement:\n%s", out)
	}
	b.ReportMetric(float64(growthKB)*1024/float64(st.Size()), "peakRSS/file")
}

// loadAll opens a checkpoint and loads every tensor.
func loadAll(path string) ([]*ts.Tensor, error) {
	c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []*ts.Tensor
	for _, name := range c.Names() {
		x, err := c.Tensor(name)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// TestLoadRSSChild is BenchmarkOpenLarge's fresh process: it loads the
// checkpoint named by TENSORIO_RSS_CHILD and prints the peak RSS growth.
func TestLoadRSSChild(t *testing.T) {
	path := os.Getenv("TENSORIO_RSS_CHILD")
	if path == "" {
		t.Skip("only run by BenchmarkOpenLarge")
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset peak RSS: %v", err)
	}
	base, err := procStatusKB("VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := loadAll(path)
	if err != nil {
		t.Fatal(err)
	}
	peak, err := procStatusKB("VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("peak-growth-kB %d\n", peak-base)
	runtime.KeepAlive(loaded)
}
