// Package tensorio reads and writes safetensors checkpoints (one file or a
// sharded model.safetensors.index.json) as gotch tensors, and loads PyTorch
// .pt/.ckpt state dicts through gotch's pickle loader.
//
// Files are memory-mapped read-only. A tensor is built by one copy from the
// mapping into libtorch memory, after which the mapped pages of that tensor are
// released from the process (madvise MADV_DONTNEED; the kernel page cache
// keeps them), so loading a whole checkpoint holds one copy of it in memory,
// not two. The supported dtypes are F32, F16, BF16 and I64; the byte order is
// the host's, which must be little-endian as the format requires.
package tensorio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/m3gate/m3gate/sidecar/tensorio/header"
	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// DType is a safetensors dtype name as written in a header ("F32", "BF16", ...).
type DType = header.DType

// The dtypes this package reads and writes; any other is rejected by name.
const (
	F32  = header.F32
	F16  = header.F16
	BF16 = header.BF16
	I64  = header.I64
)

// IndexName is the file name of a sharded checkpoint's index.
const IndexName = header.IndexName

// Info describes one tensor of a checkpoint.
type Info struct {
	Name  string
	DType DType
	Shape []int64
	// File is the path of the .safetensors file that holds the tensor.
	File string
}

// KindOf returns the gotch dtype of a safetensors dtype; ok is false for an
// unsupported one.
func KindOf(d DType) (kind gotch.DType, ok bool) {
	switch d {
	case F32:
		return gotch.Float, true
	case F16:
		return gotch.Half, true
	case BF16:
		return gotch.BFloat16, true
	case I64:
		return gotch.Int64, true
	}
	return gotch.Float, false
}

// DTypeOf returns the safetensors dtype of a gotch dtype, or an error naming
// an unsupported one.
func DTypeOf(kind gotch.DType) (DType, error) {
	switch kind {
	case gotch.Float:
		return F32, nil
	case gotch.Half:
		return F16, nil
	case gotch.BFloat16:
		return BF16, nil
	case gotch.Int64:
		return I64, nil
	}
	return "", fmt.Errorf("unsupported dtype %v (supported: F32, F16, BF16, I64)", kind)
}

// shard is one mapped .safetensors file.
type shard struct {
	path string
	data []byte // the read-only mapping; nil for an empty file
	hdr  *header.Header
}

type ref struct {
	sh *shard
	e  header.Entry
}

// Checkpoint is an open safetensors checkpoint. Its methods are safe for
// concurrent use.
type Checkpoint struct {
	mu      sync.RWMutex
	closed  bool
	shards  []*shard
	entries map[string]ref
	names   []string
	meta    map[string]string
}

// Open opens a safetensors checkpoint: a .safetensors file, a
// model.safetensors.index.json, or a directory holding either (the index
// first, then model.safetensors, then a directory's only .safetensors file).
// Files are mmapped; the headers are validated before Open returns.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if st.IsDir() {
		resolved, err := resolveDir(path)
		if err != nil {
			return nil, err
		}
		path = resolved
	}
	if strings.HasSuffix(path, ".json") {
		return openIndex(path)
	}
	return openFile(path)
}

// resolveDir picks the checkpoint file of a directory.
func resolveDir(dir string) (string, error) {
	for _, name := range []string{IndexName, "model.safetensors"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return "", fmt.Errorf("open checkpoint %s: %w", dir, err)
	}
	switch len(files) {
	case 0:
		return "", fmt.Errorf("open checkpoint %s: no %s and no .safetensors file in the directory", dir, IndexName)
	case 1:
		return files[0], nil
	}
	return "", fmt.Errorf("open checkpoint %s: %d .safetensors files but no %s to say how they fit together", dir, len(files), IndexName)
}

// openFile opens a single .safetensors file.
func openFile(path string) (*Checkpoint, error) {
	sh, err := mapShard(path)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{shards: []*shard{sh}, entries: map[string]ref{}, meta: map[string]string{}}
	for _, e := range sh.hdr.Entries {
		c.entries[e.Name] = ref{sh, e}
	}
	for k, v := range sh.hdr.Metadata {
		c.meta[k] = v
	}
	c.finish()
	return c, nil
}

// openIndex opens a sharded checkpoint from its index file.
func openIndex(path string) (_ *Checkpoint, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	idx, err := header.ParseIndex(raw)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	var files []string
	seenFile := map[string]bool{}
	for _, f := range idx.WeightMap {
		if !seenFile[f] {
			seenFile[f] = true
			files = append(files, f)
		}
	}
	sort.Strings(files)
	c := &Checkpoint{entries: map[string]ref{}, meta: map[string]string{}}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, f := range files {
		sh, err := mapShard(filepath.Join(dir, f))
		if err != nil {
			return nil, fmt.Errorf("open checkpoint %s: %w", path, err)
		}
		c.shards = append(c.shards, sh)
		for _, e := range sh.hdr.Entries {
			if prev, dup := c.entries[e.Name]; dup {
				return nil, fmt.Errorf("open checkpoint %s: tensor %q is in two shards, %s and %s", path, e.Name, prev.sh.path, sh.path)
			}
			want, listed := idx.WeightMap[e.Name]
			if !listed {
				return nil, fmt.Errorf("open checkpoint %s: tensor %q of shard %s is not in the index's weight_map", path, e.Name, sh.path)
			}
			if want != f {
				return nil, fmt.Errorf("open checkpoint %s: tensor %q is in shard %s but the index puts it in %s", path, e.Name, sh.path, want)
			}
			c.entries[e.Name] = ref{sh, e}
		}
		for k, v := range sh.hdr.Metadata {
			if _, ok := c.meta[k]; !ok {
				c.meta[k] = v
			}
		}
	}
	var missing []string
	for name := range idx.WeightMap {
		if _, ok := c.entries[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		name := missing[0]
		return nil, fmt.Errorf("open checkpoint %s: tensor %q is missing from shard %s named by the index (%d missing in all)", path, name, filepath.Join(dir, idx.WeightMap[name]), len(missing))
	}
	for k, v := range idx.Metadata {
		c.meta[k] = v
	}
	c.finish()
	return c, nil
}

func (c *Checkpoint) finish() {
	c.names = make([]string, 0, len(c.entries))
	for n := range c.entries {
		c.names = append(c.names, n)
	}
	sort.Strings(c.names)
}

// mapShard maps a file read-only and parses its header.
func mapShard(path string) (*shard, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	var data []byte
	if size := st.Size(); size > 0 {
		if int64(int(size)) != size {
			return nil, fmt.Errorf("%s: file of %d bytes is too large to map", path, size)
		}
		data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("mmap %s: %w", path, err)
		}
	}
	hdr, err := header.Parse(data)
	if err != nil {
		if data != nil {
			syscall.Munmap(data)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &shard{path: path, data: data, hdr: hdr}, nil
}

// Names returns the tensor names, sorted.
func (c *Checkpoint) Names() []string {
	return append([]string(nil), c.names...)
}

// Info returns the dtype, shape and file of a tensor.
func (c *Checkpoint) Info(name string) (Info, bool) {
	r, ok := c.entries[name]
	if !ok {
		return Info{}, false
	}
	return Info{Name: name, DType: r.e.DType, Shape: append([]int64{}, r.e.Shape...), File: r.sh.path}, true
}

// Metadata returns the checkpoint's metadata: a file's __metadata__; for a
// sharded checkpoint the shards' __metadata__ (the first shard in file order
// wins on conflicts) overlaid by the index's "metadata" (total_size as its
// JSON text). The map is a copy.
func (c *Checkpoint) Metadata() map[string]string {
	m := make(map[string]string, len(c.meta))
	for k, v := range c.meta {
		m[k] = v
	}
	return m
}

// Tensor returns a tensor in the checkpoint's dtype, on the CPU. Each call
// makes a new tensor (one copy out of the mapping).
func (c *Checkpoint) Tensor(name string) (*ts.Tensor, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r, kind, start, end, err := c.locate(name)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	t, err := fromMapping(r.sh.data, start, end, r.e.Shape, kind)
	if err != nil {
		return nil, fmt.Errorf("tensor %q in %s: %w", name, r.sh.path, err)
	}
	return t, nil
}

// locate is tensor name's entry, kind and byte range in its shard's
// mapping; the caller holds c.mu.
func (c *Checkpoint) locate(name string) (r ref, kind gotch.DType, start, end int64, err error) {
	if c.closed {
		return r, kind, 0, 0, errors.New("checkpoint is closed")
	}
	r, ok := c.entries[name]
	if !ok {
		return r, kind, 0, 0, errors.New("not in the checkpoint")
	}
	kind, _ = KindOf(r.e.DType)
	return r, kind, r.sh.hdr.DataStart + r.e.Begin, r.sh.hdr.DataStart + r.e.End, nil
}

// copyChunk is how much of a large tensor fromMapping copies before it
// releases those mapped pages.
const copyChunk = 8 << 20

// fromMapping copies data[start:end] into a new CPU tensor and releases
// the mapped pages it read. A large tensor is copied copyChunk bytes at a
// time, each chunk's pages released as soon as it is copied: copied in one
// piece, the whole mapped range and the tensor were resident together, so
// loading peaked one largest tensor above the weights (113 MB for
// SmolVLM-256M's f32 embeddings, 1 GB for an 8B model's bf16 ones).
func fromMapping(data []byte, start, end int64, shape []int64, kind gotch.DType) (*ts.Tensor, error) {
	if end-start <= copyChunk {
		t, err := fromBytes(data[start:end], shape, kind)
		if err == nil {
			release(data, start, end)
		}
		return t, err
	}
	if _, err := holds(end-start, shape, kind); err != nil {
		return nil, err
	}
	t, err := ts.Empty(shape, kind, gotch.CPU)
	if err != nil {
		return nil, cleanErr(err)
	}
	p, err := t.DataPtr()
	if err != nil {
		t.MustDrop()
		return nil, cleanErr(err)
	}
	dst := unsafe.Slice((*byte)(p), end-start)
	for off := start; off < end; off += copyChunk {
		stop := min(off+copyChunk, end)
		copy(dst[off-start:stop-start], data[off:stop])
		release(data, off, stop)
	}
	return t, nil
}

// Mapping is a tensor's bytes in a private mapping of its file, for a
// tensor that reads them in place (torch.FromMemory): only the pages a
// pass touches become resident, as file pages the kernel may drop and
// re-read. Writes (none are expected) stay private to the process.
// Replacing the file by a rename keeps the mapped file; overwriting or
// truncating it in place changes or (truncated) faults the tensor, as for
// any mapped model.
type Mapping struct {
	Data []byte // the tensor's bytes
	all  []byte // the whole mapping, page-aligned
}

// Unmap releases the mapping; nothing may read Data afterwards.
// Unmapping twice does nothing.
func (m *Mapping) Unmap() error {
	if m == nil || m.all == nil {
		return nil
	}
	err := syscall.Munmap(m.all)
	m.all, m.Data = nil, nil
	return err
}

// Map maps the bytes of tensor name (in the checkpoint's dtype) on their
// own, privately, independent of the checkpoint's mapping and of Close.
func (c *Checkpoint) Map(name string) (*Mapping, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r, kind, start, end, err := c.locate(name)
	if err != nil {
		return nil, fmt.Errorf("map tensor %q: %w", name, err)
	}
	if _, err := holds(end-start, r.e.Shape, kind); err != nil {
		return nil, fmt.Errorf("map tensor %q in %s: %w", name, r.sh.path, err)
	}
	if end == start {
		return nil, fmt.Errorf("map tensor %q in %s: no bytes", name, r.sh.path)
	}
	f, err := os.Open(r.sh.path)
	if err != nil {
		return nil, fmt.Errorf("map tensor %q: %w", name, err)
	}
	defer f.Close()
	base := start &^ (pageSize - 1)
	if int64(int(end-base)) != end-base {
		return nil, fmt.Errorf("map tensor %q: %d bytes are too many to map", name, end-base)
	}
	all, err := syscall.Mmap(int(f.Fd()), base, int(end-base), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("map tensor %q in %s: %w", name, r.sh.path, err)
	}
	return &Mapping{Data: all[start-base:], all: all}, nil
}

// TensorAs returns a tensor converted to kind (for example BF16 to
// gotch.Float, which is exact), on the CPU.
func (c *Checkpoint) TensorAs(name string, kind gotch.DType) (*ts.Tensor, error) {
	t, err := c.Tensor(name)
	if err != nil {
		return nil, err
	}
	if t.DType() == kind {
		return t, nil
	}
	out, err := t.Totype(kind, true)
	if err != nil {
		return nil, fmt.Errorf("tensor %q to %v: %w", name, kind, cleanErr(err))
	}
	return out, nil
}

// Close unmaps the files. Tensors already returned stay valid. Close is
// idempotent.
func (c *Checkpoint) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, sh := range c.shards {
		if sh.data != nil {
			if err := syscall.Munmap(sh.data); err != nil {
				errs = append(errs, fmt.Errorf("unmap %s: %w", sh.path, err))
			}
			sh.data = nil
		}
	}
	return errors.Join(errs...)
}

var pageSize = int64(os.Getpagesize())

// release drops the mapped pages covering data[start:end] from the process's
// resident set; the contents stay in the page cache and are re-read on the
// next access, so this is only a memory hint.
func release(data []byte, start, end int64) {
	start &^= pageSize - 1
	if end-start < pageSize {
		return
	}
	_ = syscall.Madvise(data[start:end], syscall.MADV_DONTNEED)
}

// holds checks that n bytes are exactly a kind tensor of shape and
// returns its element count.
func holds(n int64, shape []int64, kind gotch.DType) (int64, error) {
	numel := int64(1)
	for _, s := range shape {
		numel *= s
	}
	if numel*int64(kind.Size()) != n {
		return 0, fmt.Errorf("%d bytes do not hold %v %v", n, kind, shape)
	}
	return numel, nil
}

// fromBytes copies raw little-endian element bytes into a new CPU tensor.
func fromBytes(b []byte, shape []int64, kind gotch.DType) (*ts.Tensor, error) {
	numel, err := holds(int64(len(b)), shape, kind)
	if err != nil {
		return nil, err
	}
	if numel == 0 {
		t, err := ts.Zeros(shape, kind, gotch.CPU)
		return t, cleanErr(err)
	}
	dims := shape
	if len(dims) == 0 {
		dims = []int64{1}
	}
	ct := lib.AtTensorOfData(unsafe.Pointer(&b[0]), dims, uint(len(dims)), kind.Size(), int(kind.CKind()))
	if err := ts.TorchErr(); err != nil {
		return nil, cleanErr(err)
	}
	t := ts.New(ct)
	if len(shape) == 0 {
		// gotch's Reshape cannot take an empty shape; squeeze [1] to [].
		s, err := t.Squeeze(true)
		return s, cleanErr(err)
	}
	return t, nil
}

// cleanErr keeps the first line of a gotch error (they carry a Go stack trace).
func cleanErr(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return errors.New(strings.TrimSpace(msg[:i]))
	}
	return err
}
