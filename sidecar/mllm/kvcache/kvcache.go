// Package kvcache is the key/value cache of a decoder-only text model: per
// layer keys and values for a batch of left-padded sequences, a validity
// flag per slot and each sequence's next position.
//
// A Cache is immutable: a forward pass returns a new cache (Append gives
// its bookkeeping, Reserve and Put fill in K and V) and leaves the old one
// valid, so a prefix can be continued several ways.
//
// Keys and values live in preallocated buffers with room to spare: a
// forward pass from the cache that last wrote a buffer (its tail owner)
// writes the new slots in place, and its K and V are views of the
// buffer's first slots, so a decode step copies one token's keys and
// values instead of the whole cache. Continuing any other cache (an older
// one, a Clone) copies into new buffers first, so every cache keeps
// seeing exactly its own slots.
package kvcache

import (
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Cache holds the keys and values of every text layer for a batch of
// sequences.
type Cache struct {
	K, V    []*ts.Tensor // per layer [B, nKV, T, hd]
	Valid   [][]bool     // [B][T]: false for padding slots
	NextPos []int64      // per sequence, the position of its next token

	st *store // the buffers K and V are views of; nil when they own their tensors
}

// store is one batch's key and value buffers, shared by the caches whose
// K and V are views of it.
type store struct {
	k, v  []*ts.Tensor // per layer [B, nKV, cap, hd]
	cap   int
	owner *Cache // the cache whose slots end where the buffer's writes do
	refs  int    // caches holding views
}

// release drops one cache's hold on s and frees the buffers with the last.
func (s *store) release() {
	s.refs--
	if s.refs == 0 {
		torch.Drop(s.k...)
		torch.Drop(s.v...)
		s.k, s.v = nil, nil
	}
}

// Spec describes the buffers of a model's cache.
type Spec struct {
	Layers, KVHeads, HeadDim int
	DType                    gotch.DType
	Device                   gotch.Device
}

// Reserve readies next (from c.Append, tq new slots per sequence) for
// Put: it shares c's buffers when c owns their tail and they have room,
// or allocates buffers with room to spare and copies c's keys and values
// in. c may be nil (a fresh prefill).
func (c *Cache) Reserve(next *Cache, tq int, spec Spec) {
	past := c.Len()
	need := past + tq
	next.K, next.V = make([]*ts.Tensor, spec.Layers), make([]*ts.Tensor, spec.Layers)
	if c != nil && c.st != nil && c.st.owner == c && c.st.cap >= need {
		next.st = c.st
		c.st.owner = next
		c.st.refs++
		return
	}
	st := &store{cap: need + max(128, need/2), owner: next, refs: 1}
	shape := []int64{int64(next.Batch()), int64(spec.KVHeads), int64(st.cap), int64(spec.HeadDim)}
	for l := 0; l < spec.Layers; l++ {
		k := ts.MustZeros(shape, spec.DType, spec.Device)
		v := ts.MustZeros(shape, spec.DType, spec.Device)
		if past > 0 {
			kr, vr := torch.Borrow(k).Narrow(2, 0, int64(past)), torch.Borrow(v).Narrow(2, 0, int64(past))
			kr.CopyFrom(torch.Borrow(c.K[l]))
			vr.CopyFrom(torch.Borrow(c.V[l]))
			torch.FreeRaw(kr, vr)
		}
		st.k, st.v = append(st.k, k), append(st.v, v)
	}
	if c != nil {
		torch.Keep(c.K...)
		torch.Keep(c.V...)
	}
	next.st = st
}

// Put writes layer l's new keys and values k, v [B, nKV, tq, hd] after
// the past slots of next (readied by Reserve) and returns all its keys
// and values, past and new: views that next owns (do not free them).
func (next *Cache) Put(l int, k, v torch.Raw) (kAll, vAll torch.Raw) {
	st := next.st
	n := int64(next.Len())
	tq := k.Size()[2]
	for _, p := range []struct {
		buf *ts.Tensor
		src torch.Raw
	}{{st.k[l], k}, {st.v[l], v}} {
		dst := torch.Borrow(p.buf).Narrow(2, n-tq, tq)
		dst.CopyFrom(p.src)
		dst.Free()
	}
	next.K[l] = torch.Borrow(st.k[l]).Narrow(2, 0, n).Wrap()
	next.V[l] = torch.Borrow(st.v[l]).Narrow(2, 0, n).Wrap()
	return torch.Borrow(next.K[l]), torch.Borrow(next.V[l])
}

// Len is the number of cache slots (padding included).
func (c *Cache) Len() int {
	if c == nil || len(c.Valid) == 0 {
		return 0
	}
	return len(c.Valid[0])
}

// Batch is the number of sequences.
func (c *Cache) Batch() int {
	if c == nil {
		return 0
	}
	return len(c.Valid)
}

// device is where the cache's tensors live (the CPU for an empty cache).
func (c *Cache) device() gotch.Device {
	if c == nil || len(c.K) == 0 {
		return gotch.CPU
	}
	return torch.TensorDevice(c.K[0])
}

// Append returns the positions of new tokens marked valid ([B][Tq], false
// = a padding slot, which gets position 1) after c (nil for a fresh
// prefill), and the bookkeeping of the cache that holds them: validity
// and next positions, with no K or V yet (the forward pass appends one
// per layer).
func (c *Cache) Append(valid [][]bool) (pos [][]int64, next *Cache) {
	b, tq := len(valid), len(valid[0])
	next = &Cache{Valid: make([][]bool, b), NextPos: make([]int64, b)}
	pos = make([][]int64, b)
	for i := 0; i < b; i++ {
		var p int64
		var row []bool
		if c != nil {
			p = c.NextPos[i]
			row = append(row, c.Valid[i]...)
		}
		pos[i] = make([]int64, tq)
		for j := 0; j < tq; j++ {
			if valid[i][j] {
				pos[i][j] = p
				p++
			} else {
				pos[i][j] = 1
			}
		}
		next.Valid[i] = append(row, valid[i]...)
		next.NextPos[i] = p
	}
	return pos, next
}

// HasPadding reports whether any slot of any sequence is hidden.
func (c *Cache) HasPadding() bool {
	for _, row := range c.Valid {
		for _, ok := range row {
			if !ok {
				return true
			}
		}
	}
	return false
}

// Free frees the cache's keys and values now (buffers shared with other
// caches once the last of them is freed). Caches that share its K and V
// tensors (a Clone) become unusable too; caches made from it by a forward
// pass, Select or Join do not share them.
func (c *Cache) Free() {
	if c == nil {
		return
	}
	torch.Drop(c.K...)
	torch.Drop(c.V...)
	if c.st != nil {
		c.st.release()
		c.st = nil
	}
}

// Clone returns an independent copy of the cache's bookkeeping; the tensors
// are shared, which is safe because a forward pass writes only into
// buffers the cache it continues owns the tail of (never a Clone).
func (c *Cache) Clone() *Cache {
	if c == nil {
		return nil
	}
	out := &Cache{K: append([]*ts.Tensor(nil), c.K...), V: append([]*ts.Tensor(nil), c.V...), NextPos: append([]int64(nil), c.NextPos...), st: c.st}
	if c.st != nil {
		c.st.refs++
	}
	for _, v := range c.Valid {
		out.Valid = append(out.Valid, append([]bool(nil), v...))
	}
	return out
}

// Select returns a cache of the sequences at the given batch indices (an
// index may repeat, e.g. to continue one prefix several ways in a batch).
func (c *Cache) Select(idx ...int) (out *Cache, err error) {
	defer torch.Recover(&err, "select cache")
	for _, i := range idx {
		if i < 0 || i >= c.Batch() {
			return nil, fmt.Errorf("select cache: index %d outside batch of %d", i, c.Batch())
		}
	}
	ix := make([]int64, len(idx))
	for i, v := range idx {
		ix[i] = int64(v)
	}
	it := torch.ToDevice(ts.MustOfSlice(ix), c.device(), true)
	out = &Cache{}
	for l := range c.K {
		out.K = append(out.K, c.K[l].MustIndexSelect(0, it, false))
		out.V = append(out.V, c.V[l].MustIndexSelect(0, it, false))
	}
	torch.Drop(it)
	for _, i := range idx {
		out.Valid = append(out.Valid, append([]bool(nil), c.Valid[i]...))
		out.NextPos = append(out.NextPos, c.NextPos[i])
	}
	return out, nil
}

// Join stacks caches of possibly different lengths into one batch,
// left-padding the shorter ones with hidden slots.
func Join(caches ...*Cache) (out *Cache, err error) {
	defer torch.Recover(&err, "join caches")
	if len(caches) == 0 {
		return nil, fmt.Errorf("join caches: none given")
	}
	maxT := 0
	for _, c := range caches {
		if c == nil || len(c.K) != len(caches[0].K) {
			return nil, fmt.Errorf("join caches: caches come from different models")
		}
		maxT = max(maxT, c.Len())
	}
	out = &Cache{}
	for l := range caches[0].K {
		var ks, vs, padded []*ts.Tensor
		for _, c := range caches {
			pad := int64(maxT - c.Len())
			k, v := c.K[l], c.V[l]
			if pad > 0 {
				sz := k.MustSize()
				z := ts.MustZeros([]int64{sz[0], sz[1], pad, sz[3]}, k.DType(), torch.TensorDevice(k))
				k = ts.MustCat([]*ts.Tensor{z, k}, 2)
				v = ts.MustCat([]*ts.Tensor{z, v}, 2)
				torch.Drop(z)
				padded = append(padded, k, v)
			}
			ks, vs = append(ks, k), append(vs, v)
		}
		out.K = append(out.K, ts.MustCat(ks, 0))
		out.V = append(out.V, ts.MustCat(vs, 0))
		torch.Drop(padded...)
		torch.Keep(ks...)
		torch.Keep(vs...)
	}
	for _, c := range caches {
		pad := maxT - c.Len()
		for i := range c.Valid {
			row := make([]bool, pad, maxT)
			out.Valid = append(out.Valid, append(row, c.Valid[i]...))
			out.NextPos = append(out.NextPos, c.NextPos[i])
		}
	}
	return out, nil
}
