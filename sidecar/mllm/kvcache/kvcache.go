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
//
// K and V are raw libtorch handles (torch.Raw), not gotch tensors: a decode
// step makes one view per layer for each, and as *ts.Tensor those 60
// views cost gotch's Go-side bookkeeping and collector garbage every step.
// Free releases them; a cache that becomes unreachable unfreed is freed by
// a finalizer, as gotch's tensors are, so a forgotten cache costs memory
// until the next collection rather than for good.
package kvcache

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Cache holds the keys and values of every text layer for a batch of
// sequences.
type Cache struct {
	K, V    []torch.Raw // per layer [B, nKV, T, hd], owned by the cache
	Valid   [][]bool    // [B][T]: false for padding slots
	NextPos []int64     // per sequence, the position of its next token

	st *store // the buffers K and V are views of; nil when they own their tensors
	id uint64 // names the cache as a store's owner without keeping it reachable
}

var lastID atomic.Uint64

// newCache returns an empty cache with its id and its finalizer.
func newCache() *Cache {
	c := &Cache{id: lastID.Add(1)}
	runtime.SetFinalizer(c, (*Cache).Free)
	return c
}

// store is one batch's key and value buffers, shared by the caches whose
// K and V are views of it.
type store struct {
	k, v  []torch.Raw // per layer [B, nKV, cap, hd]
	cap   int
	owner uint64       // the id of the cache whose slots end where the buffer's writes do
	refs  atomic.Int32 // caches holding views (finalizers release from their own goroutine)
}

// release drops one cache's hold on s and frees the buffers with the last.
func (s *store) release() {
	if s.refs.Add(-1) == 0 {
		torch.FreeRaw(s.k...)
		torch.FreeRaw(s.v...)
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
	next.K, next.V = make([]torch.Raw, spec.Layers), make([]torch.Raw, spec.Layers)
	if c != nil && c.st != nil && c.st.owner == c.id && c.st.cap >= need {
		next.st = c.st
		c.st.owner = next.id
		c.st.refs.Add(1)
		return
	}
	st := &store{cap: need + max(128, need/2), owner: next.id}
	st.refs.Store(1)
	shape := []int64{int64(next.Batch()), int64(spec.KVHeads), int64(st.cap), int64(spec.HeadDim)}
	for l := 0; l < spec.Layers; l++ {
		k := torch.Zeros(shape, spec.DType, spec.Device)
		v := torch.Zeros(shape, spec.DType, spec.Device)
		if past > 0 {
			kr, vr := k.Narrow(2, 0, int64(past)), v.Narrow(2, 0, int64(past))
			kr.CopyFrom(c.K[l])
			vr.CopyFrom(c.V[l])
			torch.FreeRaw(kr, vr)
		}
		st.k, st.v = append(st.k, k), append(st.v, v)
	}
	runtime.KeepAlive(c) // its finalizer must not free c.K, c.V under the copies
	next.st = st
}

// Put writes layer l's new keys and values k, v [B, nKV, tq, hd] after
// the past ones in next's buffers (after Reserve) and returns next's
// K[l], V[l] (see Wrote).
func (next *Cache) Put(l int, k, v torch.Raw) (kAll, vAll torch.Raw) {
	st := next.st
	n := int64(next.Len())
	tq := k.Size()[2]
	for _, p := range [][2]torch.Raw{{st.k[l], k}, {st.v[l], v}} {
		dst := p[0].Narrow(2, n-tq, tq)
		dst.CopyFrom(p[1])
		dst.Free()
	}
	return next.Wrote(l)
}

// Buffers returns layer l's key and value buffers [B, nKV, cap, hd] of
// next (after Reserve), which stay the cache's, and the number of slots n
// that next holds: a caller that writes the new tokens' keys and values
// itself puts them in the slots before n and then calls Wrote.
func (next *Cache) Buffers(l int) (k, v torch.Raw, n int64) {
	return next.st.k[l], next.st.v[l], int64(next.Len())
}

// Wrote records that layer l's new keys and values are in next's buffers
// and returns next's K[l], V[l] [B, nKV, T, hd]: views of the buffers'
// first T slots, owned by next.
func (next *Cache) Wrote(l int) (kAll, vAll torch.Raw) {
	st := next.st
	n := int64(next.Len())
	next.K[l] = st.k[l].Narrow(2, 0, n)
	next.V[l] = st.v[l].Narrow(2, 0, n)
	return next.K[l], next.V[l]
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

// Append returns the positions of new tokens marked valid ([B][Tq], false
// = a padding slot, which gets position 1) after c (nil for a fresh
// prefill), and the bookkeeping of the cache that holds them: validity
// and next positions, with no K or V yet (the forward pass appends one
// per layer).
func (c *Cache) Append(valid [][]bool) (pos [][]int64, next *Cache) {
	b, tq := len(valid), len(valid[0])
	next = newCache()
	next.Valid, next.NextPos = make([][]bool, b), make([]int64, b)
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
// caches once the last of them is freed). Other caches, a Clone among
// them, stay usable; each is freed on its own.
func (c *Cache) Free() {
	if c == nil {
		return
	}
	torch.FreeRaw(c.K...)
	torch.FreeRaw(c.V...)
	c.K, c.V = nil, nil
	if c.st != nil {
		c.st.release()
		c.st = nil
	}
}

// Clone returns an independent copy of the cache's bookkeeping with its own
// handles on the same keys and values, which is safe because a forward
// pass writes only into buffers the cache it continues owns the tail of
// (never a Clone). Free it on its own.
func (c *Cache) Clone() *Cache {
	if c == nil {
		return nil
	}
	out := newCache()
	out.NextPos, out.st = append([]int64(nil), c.NextPos...), c.st
	for l := range c.K {
		out.K, out.V = append(out.K, c.K[l].Share()), append(out.V, c.V[l].Share())
	}
	runtime.KeepAlive(c)
	if c.st != nil {
		c.st.refs.Add(1)
	}
	for _, v := range c.Valid {
		out.Valid = append(out.Valid, append([]bool(nil), v...))
	}
	return out
}

// Rewind returns a cache in which sequence i holds only its first keep[i]
// tokens: its later slots stay in place but are hidden, and its next
// token takes position keep[i], so continuing it equals continuing a
// cache that never held them. keep[i] may not exceed the tokens sequence
// i holds. The result shares c's keys and values as a Clone does, and
// takes over c's place as the owner of their buffers' tail: continuing it
// writes in place after all of c's slots (which c's views never reach),
// while continuing c afterwards copies, as continuing any non-owner does.
func (c *Cache) Rewind(keep []int) (*Cache, error) {
	if len(keep) != c.Batch() {
		return nil, fmt.Errorf("rewind cache: %d lengths for a batch of %d", len(keep), c.Batch())
	}
	for i, n := range keep {
		if n < 0 || int64(n) > c.NextPos[i] {
			return nil, fmt.Errorf("rewind cache: sequence %d holds %d tokens, cannot keep %d", i, c.NextPos[i], n)
		}
	}
	out := c.Clone()
	if c.st != nil && c.st.owner == c.id {
		c.st.owner = out.id
	}
	for i, n := range keep {
		seen := 0
		for j, ok := range out.Valid[i] {
			if !ok {
				continue
			}
			if seen >= n {
				out.Valid[i][j] = false
			}
			seen++
		}
		out.NextPos[i] = int64(n)
	}
	return out, nil
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
	out = newCache()
	if len(c.K) > 0 {
		it := torch.Int64s(ix, c.K[0].Device())
		for l := range c.K {
			out.K = append(out.K, c.K[l].IndexSelect(0, it))
			out.V = append(out.V, c.V[l].IndexSelect(0, it))
		}
		it.Free()
	}
	runtime.KeepAlive(c)
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
	out = newCache()
	for l := range caches[0].K {
		var ks, vs, padded []torch.Raw
		for _, c := range caches {
			pad := int64(maxT - c.Len())
			k, v := c.K[l], c.V[l]
			if pad > 0 {
				sz := k.Size()
				z := torch.Zeros([]int64{sz[0], sz[1], pad, sz[3]}, k.DType(), k.Device())
				k = torch.Cat(2, z, k)
				v = torch.Cat(2, z, v)
				z.Free()
				padded = append(padded, k, v)
			}
			ks, vs = append(ks, k), append(vs, v)
		}
		out.K = append(out.K, torch.Cat(0, ks...))
		out.V = append(out.V, torch.Cat(0, vs...))
		torch.FreeRaw(padded...)
	}
	runtime.KeepAlive(caches)
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
