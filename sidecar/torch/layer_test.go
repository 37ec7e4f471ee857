package torch

import (
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestDecodeLayerDeclines: arguments the kernel does not take leave it
// with ok false and the cache's buffers untouched (the caller then runs
// the layer's ops and writes them itself), while the same layer with
// fitting arguments runs and writes its new token's slot. The layer's
// results are checked against its ops in package llama
// (TestDecodeStepMatchesLayers).
func TestDecodeLayerDeclines(t *testing.T) {
	if !kernelsOK {
		t.Skip("this CPU has no AVX2/FMA: DecodeLayer always declines")
	}
	ManualSeed(3)
	const D, H, KV, hd, I, capacity, n = 32, 4, 2, 8, 48, 6, 5
	randn := func(shape ...int64) *ts.Tensor { return ts.MustRandn(shape, gotch.Float, gotch.CPU) }
	ws := map[string]*ts.Tensor{
		"in": randn(D), "qkv": randn((H+2*KV)*hd, D), "o": randn(D, H*hd), "post": randn(D),
		"gu": randn(2*I, D), "down": randn(D, I),
	}
	defer func() {
		for _, w := range ws {
			w.MustDrop()
		}
	}()
	layer := func() *Decoder {
		return &Decoder{InNorm: Borrow(ws["in"]), QKV: Borrow(ws["qkv"]), O: Borrow(ws["o"]), PostNorm: Borrow(ws["post"]),
			GateUp: Borrow(ws["gu"]), Down: Borrow(ws["down"]), Eps: 1e-5, Heads: H, KVHeads: KV, HeadDim: hd}
	}
	run := func(t *testing.T, b int64, d *Decoder, x *ts.Tensor, n int64, wantOK bool) {
		k := ts.MustZeros([]int64{b, KV, capacity, hd}, gotch.Float, gotch.CPU)
		v := ts.MustZeros([]int64{b, KV, capacity, hd}, gotch.Float, gotch.CPU)
		cq, sq := randn(b, 1, H*hd), randn(b, 1, H*hd)
		ck, sk := randn(b, 1, KV*hd), randn(b, 1, KV*hd)
		defer Drop(k, v, cq, sq, ck, sk)
		var y Raw
		var ok bool
		err := Run("decode layer", false, func() (err error) { // autograd off, as in a decode step
			y, ok, err = DecodeLayer(d, Borrow(x), Borrow(k), Borrow(v), n, Raw{}, Borrow(cq), Borrow(sq), Borrow(ck), Borrow(sk))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok != wantOK {
			t.Fatalf("ok = %v, want %v", ok, wantOK)
		}
		written := k.MustAbs(false).MustSum(gotch.Float, true).Float64Values()[0] + v.MustAbs(false).MustSum(gotch.Float, true).Float64Values()[0]
		if !ok && written != 0 {
			t.Errorf("declined but wrote the cache (sum |k|+|v| = %g)", written)
		}
		if ok {
			if written == 0 {
				t.Error("ran but wrote nothing to the cache")
			}
			slot := k.MustNarrow(2, n-1, 1, false)
			if s := slot.MustAbs(false).MustSum(gotch.Float, true).Float64Values()[0]; s == 0 {
				t.Errorf("the new token's keys are not in slot %d", n-1)
			}
			slot.MustDrop()
			y.Wrap().MustDrop()
		}
	}
	t.Run("fits", func(t *testing.T) {
		x := randn(3, 1, D)
		defer x.MustDrop()
		run(t, 3, layer(), x, n, true)
	})
	t.Run("autograd on", func(t *testing.T) {
		x := randn(3, 1, D)
		defer x.MustDrop()
		y, ok, err := DecodeLayer(layer(), Borrow(x), Borrow(x), Borrow(x), n, Raw{}, Raw{}, Raw{}, Raw{}, Raw{})
		if ok || err != nil {
			t.Fatalf("DecodeLayer with autograd on = %v, %v; want it declined", ok, err)
		}
		y.Free()
	})
	t.Run("too many sequences", func(t *testing.T) {
		x := randn(9, 1, D)
		defer x.MustDrop()
		run(t, 9, layer(), x, n, false)
	})
	t.Run("bf16 stream", func(t *testing.T) {
		x := randn(3, 1, D).MustTotype(gotch.BFloat16, true)
		defer x.MustDrop()
		run(t, 3, layer(), x, n, false)
	})
	t.Run("slot past the buffer", func(t *testing.T) {
		x := randn(3, 1, D)
		defer x.MustDrop()
		run(t, 3, layer(), x, capacity+1, false)
	})
	t.Run("heads that do not match the product", func(t *testing.T) {
		x := randn(3, 1, D)
		defer x.MustDrop()
		d := layer()
		d.Heads = 2
		run(t, 3, d, x, n, false)
	})
	if raw := LiveRaw(); raw != 0 {
		t.Errorf("%d raw handles left", raw)
	}
}
