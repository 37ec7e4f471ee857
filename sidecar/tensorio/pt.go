package tensorio

import (
	"fmt"
	"io"
	"reflect"
	"unsafe"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/pickle"
	"github.com/sugarme/gotch/ts"
)

// LoadPT loads a PyTorch state dict saved with torch.save (.pt, .ckpt, .bin;
// the zip format of torch ≥ 1.6) through gotch's pickle loader. When the
// top-level object is a dict with a "state_dict" entry that is itself a dict
// (Lightning-style checkpoints), that entry is loaded. Every value of the
// state dict must be a tensor. Tensors come back on the CPU in their saved
// dtype, contiguous.
func LoadPT(path string) (out map[string]*ts.Tensor, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("load %s: pickle loader failed: %v", path, r)
		}
	}()
	obj, err := pickle.LoadWithUnpickler(path, newUnpickler)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	entries, ok := dictEntries(obj)
	if !ok {
		return nil, fmt.Errorf("load %s: top-level object is %T, not a dict", path, obj)
	}
	for _, kv := range entries {
		if k, _ := kv[0].(string); k == "state_dict" {
			if inner, ok := dictEntries(kv[1]); ok {
				entries = inner
			}
			break
		}
	}
	out = make(map[string]*ts.Tensor, len(entries))
	for _, kv := range entries {
		name, ok := kv[0].(string)
		if !ok {
			return nil, fmt.Errorf("load %s: state dict key %v is %T, not a string", path, kv[0], kv[0])
		}
		st, ok := kv[1].(*pickle.StorageTensor)
		if !ok {
			return nil, fmt.Errorf("load %s: %q is %T, not a tensor", path, name, kv[1])
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("load %s: duplicate key %q", path, name)
		}
		t, err := storageTensor(st)
		if err != nil {
			return nil, fmt.Errorf("load %s: tensor %q: %w", path, name, err)
		}
		out[name] = t
	}
	return out, nil
}

// newUnpickler is gotch's unpickler plus the storage class gotch's own
// table lacks (torch.BFloat16Storage).
func newUnpickler(r io.Reader) pickle.Unpickler {
	u := pickle.NewUnpickler(r)
	u.FindClass = func(module, name string) (any, error) {
		if module == "torch" && name == "BFloat16Storage" {
			return &pickle.BFloat16StorageClass{}, nil
		}
		return nil, fmt.Errorf("class not found: %s.%s", module, name)
	}
	return u
}

// dictEntries returns the key/value pairs of a pickled dict or OrderedDict.
func dictEntries(obj any) ([][2]any, bool) {
	switch d := obj.(type) {
	case *pickle.Dict:
		out := make([][2]any, 0, len(*d))
		for _, e := range *d {
			out = append(out, [2]any{e.Key, e.Value})
		}
		return out, true
	case *pickle.OrderedDict:
		out := make([][2]any, 0, d.Len())
		for el := d.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*pickle.OrderedDictEntry)
			out = append(out, [2]any{e.Key, e.Value})
		}
		return out, true
	}
	return nil, false
}

// storageTensor builds a contiguous CPU tensor from a pickled storage view.
func storageTensor(st *pickle.StorageTensor) (*ts.Tensor, error) {
	kind := st.Source.DType()
	data := reflect.ValueOf(st.Source.GetData())
	if data.Kind() != reflect.Slice {
		return nil, fmt.Errorf("storage data is %v, not a slice", data.Kind())
	}
	n := data.Len()
	numel := int64(1)
	for _, s := range st.Size {
		numel *= s
	}
	if numel == 0 {
		t, err := ts.Zeros(st.Size, kind, gotch.CPU)
		return t, cleanErr(err)
	}
	if n == 0 {
		return nil, fmt.Errorf("storage is empty but shape %v has %d elements", st.Size, numel)
	}
	elem := int(data.Type().Elem().Size())
	if elem != int(kind.Size()) {
		return nil, fmt.Errorf("storage elements of %d bytes do not match dtype %v", elem, kind)
	}
	// Check that the strided view stays inside the storage.
	last := st.StorageOffset
	for i, s := range st.Size {
		if i >= len(st.Stride) || st.Stride[i] < 0 {
			return nil, fmt.Errorf("bad stride %v for shape %v", st.Stride, st.Size)
		}
		last += (s - 1) * st.Stride[i]
	}
	if len(st.Stride) != len(st.Size) || st.StorageOffset < 0 || last >= int64(n) {
		return nil, fmt.Errorf("view (offset %d, shape %v, stride %v) is outside a storage of %d elements", st.StorageOffset, st.Size, st.Stride, n)
	}
	b := unsafe.Slice((*byte)(data.UnsafePointer()), n*elem)
	if len(st.Size) == 0 { // a scalar; gotch cannot pass an empty size to AsStrided
		off := int(st.StorageOffset) * elem
		return fromBytes(b[off:off+elem], []int64{}, kind)
	}
	flat, err := fromBytes(b, []int64{int64(n)}, kind)
	if err != nil {
		return nil, err
	}
	v, err := flat.AsStrided(st.Size, st.Stride, []int64{st.StorageOffset}, true)
	if err != nil {
		return nil, cleanErr(err)
	}
	t, err := v.Contiguous(true)
	return t, cleanErr(err)
}
