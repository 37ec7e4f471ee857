package torch

import (
	"testing"

	"github.com/sugarme/gotch"
)

// TestSetMalloc: after SetMalloc a 16 MiB tensor comes from the heap, not
// from an mmap of its own (which at glibc's defaults it does: the system
// then faults in and zeroes its pages on every allocation).
func TestSetMalloc(t *testing.T) {
	t.Setenv("GLIBC_TUNABLES", "")
	t.Setenv("MALLOC_MMAP_THRESHOLD_", "")
	t.Setenv("MALLOC_TRIM_THRESHOLD_", "")
	alloc := func() int64 {
		var grew int64
		err := Run("alloc", false, func() error {
			before := mmappedBytes()
			x := Zeros([]int64{4 << 20}, gotch.Float, gotch.CPU) // 16 MiB
			grew = mmappedBytes() - before
			x.Free()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return grew
	}
	changed, err := SetMalloc()
	if err != nil || !changed {
		t.Fatalf("SetMalloc: changed %v, error %v", changed, err)
	}
	if grew := alloc(); grew != 0 {
		t.Errorf("a 16 MiB tensor after SetMalloc: mmapped bytes grew by %d, want 0 (from the heap)", grew)
	}
	t.Setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
	if changed, err := SetMalloc(); changed || err != nil {
		t.Errorf("with malloc tunables in the environment: changed %v, error %v; want it left alone", changed, err)
	}
}
