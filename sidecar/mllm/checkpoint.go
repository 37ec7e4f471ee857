package mllm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"unsafe"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// This file holds a minimal safetensors reader/writer with the same shape as
// sidecar/tensorio's contract (Open/Names/Info/TensorAs/Write), used until
// that package lands; swapping it is a change of this file only.

// tensorInfo describes one stored tensor.
type tensorInfo struct {
	Name  string
	DType string
	Shape []int64
	File  string
	begin int64
	end   int64
}

// checkpoint is an opened safetensors file or sharded index.
type checkpoint struct {
	infos map[string]tensorInfo
	files map[string]*os.File
	base  map[string]int64 // data start offset per file
}

// openCheckpoint opens dir/model.safetensors or dir/model.safetensors.index.json
// (or a file path of either kind).
func openCheckpoint(path string) (*checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var files []string
	if st.IsDir() {
		single := filepath.Join(path, "model.safetensors")
		index := filepath.Join(path, "model.safetensors.index.json")
		if _, err := os.Stat(single); err == nil {
			path = single
		} else if _, err := os.Stat(index); err == nil {
			path = index
		} else {
			return nil, fmt.Errorf("no model.safetensors or model.safetensors.index.json in %s", path)
		}
	}
	if filepath.Ext(path) == ".json" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		seen := map[string]bool{}
		for _, f := range idx.WeightMap {
			if !seen[f] {
				seen[f] = true
				files = append(files, filepath.Join(filepath.Dir(path), f))
			}
		}
		sort.Strings(files)
	} else {
		files = []string{path}
	}
	c := &checkpoint{infos: map[string]tensorInfo{}, files: map[string]*os.File{}, base: map[string]int64{}}
	for _, f := range files {
		if err := c.addFile(f); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *checkpoint) addFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	c.files[path] = f
	var hdr [8]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return fmt.Errorf("read %s header: %w", path, err)
	}
	n := int64(binary.LittleEndian.Uint64(hdr[:]))
	st, _ := f.Stat()
	if n <= 0 || 8+n > st.Size() {
		return fmt.Errorf("%s: header length %d does not fit the file of %d bytes", path, n, st.Size())
	}
	raw := make([]byte, n)
	if _, err := f.ReadAt(raw, 8); err != nil {
		return fmt.Errorf("read %s header: %w", path, err)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil {
		return fmt.Errorf("parse %s header: %w", path, err)
	}
	c.base[path] = 8 + n
	for name, v := range h {
		if name == "__metadata__" {
			continue
		}
		var e struct {
			DType   string  `json:"dtype"`
			Shape   []int64 `json:"shape"`
			Offsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(v, &e); err != nil || len(e.Offsets) != 2 {
			return fmt.Errorf("%s: bad entry for tensor %s", path, name)
		}
		size, ok := dtypeSize(e.DType)
		if !ok {
			return fmt.Errorf("%s: tensor %s has unsupported dtype %s", path, name, e.DType)
		}
		numel := int64(1)
		for _, d := range e.Shape {
			numel *= d
		}
		if e.Offsets[1]-e.Offsets[0] != numel*size || 8+n+e.Offsets[1] > st.Size() {
			return fmt.Errorf("%s: tensor %s data range does not match its shape", path, name)
		}
		c.infos[name] = tensorInfo{Name: name, DType: e.DType, Shape: e.Shape, File: path, begin: e.Offsets[0], end: e.Offsets[1]}
	}
	return nil
}

func dtypeSize(dt string) (int64, bool) {
	switch dt {
	case "F32":
		return 4, true
	case "F16", "BF16":
		return 2, true
	case "I64":
		return 8, true
	}
	return 0, false
}

func gotchDType(dt string) gotch.DType {
	switch dt {
	case "F16":
		return gotch.Half
	case "BF16":
		return gotch.BFloat16
	case "I64":
		return gotch.Int64
	}
	return gotch.Float
}

// Names returns the sorted tensor names.
func (c *checkpoint) Names() []string {
	out := make([]string, 0, len(c.infos))
	for k := range c.infos {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Info describes one tensor.
func (c *checkpoint) Info(name string) (tensorInfo, bool) {
	i, ok := c.infos[name]
	return i, ok
}

// TensorAs reads a tensor converted to kind.
func (c *checkpoint) TensorAs(name string, kind gotch.DType) (*ts.Tensor, error) {
	info, ok := c.infos[name]
	if !ok {
		return nil, fmt.Errorf("no tensor %s", name)
	}
	buf := make([]byte, info.end-info.begin)
	if _, err := c.files[info.File].ReadAt(buf, c.base[info.File]+info.begin); err != nil {
		return nil, fmt.Errorf("read tensor %s: %w", name, err)
	}
	t, err := ts.OfDataSize(buf, info.Shape, gotchDType(info.DType))
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	if t.DType() != kind {
		t2, err := t.Totype(kind, true)
		if err != nil {
			return nil, fmt.Errorf("convert %s: %w", name, err)
		}
		t = t2
	}
	return t, nil
}

// Close closes the files.
func (c *checkpoint) Close() error {
	for _, f := range c.files {
		f.Close()
	}
	return nil
}

// named is a tensor with its checkpoint name.
type named struct {
	Name   string
	Tensor *ts.Tensor
}

// writeSafetensors writes tensors in order to one safetensors file.
func writeSafetensors(path string, tensors []named, metadata map[string]string) error {
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		var dt string
		switch t.Tensor.DType() {
		case gotch.Float:
			dt = "F32"
		case gotch.BFloat16:
			dt = "BF16"
		case gotch.Half:
			dt = "F16"
		case gotch.Int64:
			dt = "I64"
		default:
			return fmt.Errorf("write %s: unsupported dtype %v", t.Name, t.Tensor.DType())
		}
		sz, _ := dtypeSize(dt)
		n := int64(t.Tensor.Numel()) * sz
		header[t.Name] = map[string]any{"dtype": dt, "shape": t.Tensor.MustSize(), "data_offsets": []int64{off, off + n}}
		off += n
	}
	hb, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var lb [8]byte
	binary.LittleEndian.PutUint64(lb[:], uint64(len(hb)))
	if _, err := f.Write(lb[:]); err != nil {
		return err
	}
	if _, err := f.Write(hb); err != nil {
		return err
	}
	for _, t := range tensors {
		c := t.Tensor.MustContiguous(false)
		sz, _ := dtypeSize(map[gotch.DType]string{gotch.Float: "F32", gotch.BFloat16: "BF16", gotch.Half: "F16", gotch.Int64: "I64"}[c.DType()])
		n := int64(c.Numel()) * sz
		if n > 0 {
			data := unsafe.Slice((*byte)(c.MustDataPtr()), n)
			_, err := f.Write(data)
			runtime.KeepAlive(c)
			if err != nil {
				return err
			}
		}
	}
	return f.Close()
}
