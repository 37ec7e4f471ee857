package kvcache

import (
	"runtime"
	"testing"
	"time"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// filled returns a one-sequence cache of two layers holding two slots.
func filled(t *testing.T) *Cache {
	t.Helper()
	_, c := (*Cache)(nil).Append([][]bool{{true, true}})
	(*Cache)(nil).Reserve(c, 2, Spec{Layers: 2, KVHeads: 1, HeadDim: 4, DType: gotch.Float, Device: gotch.CPU})
	for l := 0; l < 2; l++ {
		k, v := torch.Zeros([]int64{1, 1, 2, 4}, gotch.Float, gotch.CPU), torch.Zeros([]int64{1, 1, 2, 4}, gotch.Float, gotch.CPU)
		c.Put(l, k, v)
		torch.FreeRaw(k, v)
	}
	return c
}

// TestCacheFree: Free releases every handle a cache holds, its buffers
// with the last cache on them; a cache nobody frees is released by its
// finalizer once unreachable.
func TestCacheFree(t *testing.T) {
	before := torch.LiveRaw()
	c := filled(t)
	d := c.Clone()
	if torch.LiveRaw() == before {
		t.Fatal("a filled cache holds no handles")
	}
	c.Free()
	c.Free() // twice is harmless
	if got := d.Len(); got != 2 {
		t.Errorf("the clone lost its slots with the original: Len %d", got)
	}
	d.Free()
	if got := torch.LiveRaw(); got != before {
		t.Errorf("%d handles left after Free, want %d", got, before)
	}

	func() { filled(t).Clone() }() // both unreachable, neither freed
	for i := 0; i < 50 && torch.LiveRaw() != before; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := torch.LiveRaw(); got != before {
		t.Errorf("%d handles left after unreachable caches were collected, want %d", got, before)
	}
}
