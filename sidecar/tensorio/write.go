package tensorio

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/m3gate/m3gate/sidecar/tensorio/header"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Named is a tensor with its checkpoint name.
type Named struct {
	Name   string
	Tensor *ts.Tensor
}

// planned is a tensor's place in a file being written.
type planned struct {
	name  string
	dtype DType
	shape []int64
	size  int64
	t     *ts.Tensor
}

// plan checks the tensors (supported dtype, unique non-empty names) and
// records their shapes and sizes.
func plan(tensors []Named) ([]planned, error) {
	out := make([]planned, 0, len(tensors))
	seen := map[string]bool{}
	for i, n := range tensors {
		if n.Name == "" {
			return nil, fmt.Errorf("tensor %d has an empty name", i)
		}
		if n.Name == "__metadata__" {
			return nil, fmt.Errorf("tensor name %q is reserved", n.Name)
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("duplicate tensor name %q", n.Name)
		}
		seen[n.Name] = true
		if n.Tensor == nil {
			return nil, fmt.Errorf("tensor %q is nil", n.Name)
		}
		d, err := DTypeOf(n.Tensor.DType())
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", n.Name, err)
		}
		shape, err := n.Tensor.Size()
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", n.Name, cleanErr(err))
		}
		size, ok := header.ByteSize(d, shape)
		if !ok {
			return nil, fmt.Errorf("tensor %q: shape %v overflows", n.Name, shape)
		}
		out = append(out, planned{name: n.Name, dtype: d, shape: shape, size: size, t: n.Tensor})
	}
	return out, nil
}

// encodeHeader lays tensors out back to back in order and renders the header.
func encodeHeader(ps []planned, metadata map[string]string) ([]byte, error) {
	entries := make([]header.Entry, len(ps))
	var off int64
	for i, p := range ps {
		entries[i] = header.Entry{Name: p.name, DType: p.dtype, Shape: p.shape, Begin: off, End: off + p.size}
		off += p.size
	}
	return header.Encode(entries, metadata)
}

// Write writes tensors (in the given order) to one safetensors file at path,
// with metadata as __metadata__ (omitted when empty). Tensors on another
// device or non-contiguous are copied to contiguous CPU memory one at a time.
// The file is written under a temporary name and renamed into place.
func Write(path string, tensors []Named, metadata map[string]string) error {
	ps, err := plan(tensors)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := writeFile(path, ps, metadata); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writeFile(path string, ps []planned, metadata map[string]string) (err error) {
	hdr, err := encodeHeader(ps, metadata)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
	if _, err = f.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err = f.Write(hdr); err != nil {
		return err
	}
	for _, p := range ps {
		if err = writeTensorData(f, p); err != nil {
			return fmt.Errorf("tensor %q: %w", p.name, err)
		}
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// writeTensorData writes a tensor's raw bytes from libtorch memory.
func writeTensorData(f *os.File, p planned) error {
	if p.size == 0 {
		return nil
	}
	t := p.t
	dev, err := t.Device()
	if err != nil {
		return cleanErr(err)
	}
	if dev.IsCuda() {
		if t, err = t.To(gotch.CPU, false); err != nil {
			return cleanErr(err)
		}
		defer t.MustDrop()
	}
	c, err := t.Contiguous(false)
	if err != nil {
		return cleanErr(err)
	}
	defer c.MustDrop()
	ptr, err := c.DataPtr()
	if err != nil {
		return cleanErr(err)
	}
	if ptr == nil {
		return errors.New("tensor has no data")
	}
	_, err = f.Write(unsafe.Slice((*byte)(ptr), p.size))
	return err
}

// WriteSharded writes tensors (in the given order) to
// dir/model-0000i-of-0000n.safetensors, starting a new shard whenever the
// next tensor would push the current one past maxShardBytes of tensor data
// (a tensor larger than the limit gets a shard of its own), plus
// dir/model.safetensors.index.json with metadata.total_size (the sum of the
// tensors' data bytes) and the weight_map. metadata goes into every shard's
// __metadata__. dir is created if missing. It always writes an index, even
// for one shard.
func WriteSharded(dir string, tensors []Named, maxShardBytes int64, metadata map[string]string) error {
	if maxShardBytes <= 0 {
		return fmt.Errorf("write sharded %s: max shard size %d is not positive", dir, maxShardBytes)
	}
	ps, err := plan(tensors)
	if err != nil {
		return fmt.Errorf("write sharded %s: %w", dir, err)
	}
	var groups [][]planned
	var cur []planned
	var curSize, total int64
	for _, p := range ps {
		if len(cur) > 0 && curSize+p.size > maxShardBytes {
			groups = append(groups, cur)
			cur, curSize = nil, 0
		}
		cur = append(cur, p)
		curSize += p.size
		total += p.size
	}
	if len(cur) > 0 || len(groups) == 0 {
		groups = append(groups, cur)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write sharded %s: %w", dir, err)
	}
	weightMap := map[string]string{}
	for i, g := range groups {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(groups))
		if err := writeFile(filepath.Join(dir, name), g, metadata); err != nil {
			return fmt.Errorf("write sharded %s: %s: %w", dir, name, err)
		}
		for _, p := range g {
			weightMap[p.name] = name
		}
	}
	idx := struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{map[string]any{"total_size": total}, weightMap}
	js, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("write sharded %s: %w", dir, err)
	}
	tmp := filepath.Join(dir, "."+header.IndexName+".tmp")
	if err := os.WriteFile(tmp, append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write sharded %s: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, header.IndexName)); err != nil {
		return fmt.Errorf("write sharded %s: %w", dir, err)
	}
	return nil
}
