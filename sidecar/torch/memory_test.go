package torch

import (
	le "encoding/binary"
	"math"
	"syscall"
	"testing"

	"github.com/sugarme/gotch"
)

// TestFromMemory: the tensor reads the memory it is made over, without a
// copy (a write through the tensor shows in the memory), and a size or
// alignment that does not fit is refused.
func TestFromMemory(t *testing.T) {
	mem, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mem)
	for i := 0; i < 6; i++ {
		le.LittleEndian.PutUint32(mem[4*i:], math.Float32bits(float32(i)+0.5))
	}
	x, err := FromMemory(mem[:24], []int64{2, 3}, gotch.Float)
	if err != nil {
		t.Fatal(err)
	}
	got := Float64s(x.MustSum(gotch.Double, false), true)[0]
	if want := 0.5 + 1.5 + 2.5 + 3.5 + 4.5 + 5.5; got != want {
		t.Errorf("sum %v, want %v", got, want)
	}
	x.MustMul_(x)
	if v := math.Float32frombits(le.LittleEndian.Uint32(mem[20:])); v != 30.25 {
		t.Errorf("memory after squaring through the tensor: %v, want 30.25", v)
	}
	Drop(x)
	if _, err := FromMemory(mem[:20], []int64{2, 3}, gotch.Float); err == nil {
		t.Error("20 bytes for six floats: no error")
	}
	if _, err := FromMemory(mem[2:26], []int64{2, 3}, gotch.Float); err == nil {
		t.Error("misaligned floats: no error")
	}
}
