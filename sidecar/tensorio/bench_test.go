package tensorio

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// procStatusKB reads a "Vm…:  N kB" field of /proc/self/status.
func procStatusKB(field string) (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/self/status", field)
}

// BenchmarkOpenLarge opens a 256 MiB BF16 checkpoint (16 tensors) and loads
// every tensor, keeping them all alive, as a model load does. It reports
// throughput (warm page cache) and peak RSS growth during the load relative
// to the file size: about 1.0 means one copy (the tensors), 2.0 would mean
// the mapping and the tensors were both resident.
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
	fileMB := float64(st.Size()) / (1 << 20)
	var worst float64
	b.SetBytes(st.Size())
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		// Writing 5 to clear_refs resets VmHWM to the current RSS.
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			b.Skipf("cannot reset peak RSS: %v", err)
		}
		base, err := procStatusKB("VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c, err := Open(path)
		if err != nil {
			b.Fatal(err)
		}
		loaded := make([]*ts.Tensor, 0, tensors)
		for _, name := range c.Names() {
			x, err := c.Tensor(name)
			if err != nil {
				b.Fatal(err)
			}
			loaded = append(loaded, x)
		}
		c.Close()
		b.StopTimer()
		peak, err := procStatusKB("VmHWM")
		if err != nil {
			b.Fatal(err)
		}
		if r := float64(peak-base) / 1024 / fileMB; r > worst {
			worst = r
		}
		for _, x := range loaded {
			x.MustDrop()
		}
		b.StartTimer()
	}
	b.ReportMetric(worst, "peakRSS/file")
	b.ReportMetric(fileMB, "fileMB")
}
