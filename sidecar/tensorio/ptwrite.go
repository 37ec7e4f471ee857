package tensorio

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sugarme/gotch"
)

// WriteCheckpoint writes tensors as a Lightning-style checkpoint in
// torch.save's zip format (torch ≥ 1.6): a dict
// {"epoch": epoch, "global_step": step, "state_dict": OrderedDict(name →
// tensor)}, each tensor a float32 storage rebuilt with
// torch._utils._rebuild_tensor_v2. torch.load reads it, and so does
// LoadPT. Tensors are written contiguous, on the CPU, in float32.
func WriteCheckpoint(path string, tensors []Named, epoch, step int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("write %s: %v", path, r)
		}
	}()
	stem := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	if stem == "" || strings.ContainsAny(stem, "/\\") {
		stem = "archive"
	}
	var p pickler
	p.proto()
	p.emptyDict()
	p.mark()
	p.str("epoch")
	p.int(epoch)
	p.str("global_step")
	p.int(step)
	p.str("state_dict")
	p.global("collections", "OrderedDict")
	p.emptyTuple()
	p.reduce()
	p.mark()
	var storages [][]byte
	for i, nt := range tensors {
		t := nt.Tensor
		if t.DType() != gotch.Float {
			t = t.MustTotype(gotch.Float, false)
		}
		shape := t.MustSize()
		vals := t.MustContiguous(false).Float64Values()
		buf := make([]byte, 4*len(vals))
		for j, v := range vals {
			binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(float32(v)))
		}
		storages = append(storages, buf)
		p.str(nt.Name)
		p.global("torch._utils", "_rebuild_tensor_v2")
		p.mark()
		// persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)
		p.mark()
		p.str("storage")
		p.global("torch", "FloatStorage")
		p.str(strconv.Itoa(i))
		p.str("cpu")
		p.int(len(vals))
		p.tuple()
		p.binpersid()
		p.int(0) // storage offset
		p.ints(shape)
		strides := make([]int64, len(shape))
		acc := int64(1)
		for d := len(shape) - 1; d >= 0; d-- {
			strides[d] = acc
			acc *= shape[d]
		}
		p.ints(strides)
		p.b.WriteByte(0x89) // NEWFALSE: requires_grad
		p.global("collections", "OrderedDict")
		p.emptyTuple()
		p.reduce() // backward hooks
		p.tuple()
		p.reduce()
	}
	p.b.WriteString("u") // SETITEMS into the OrderedDict
	p.b.WriteString("u") // SETITEMS into the top dict
	p.b.WriteString(".")

	f, err := os.Create(path + ".tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(path + ".tmp")
	zw := zip.NewWriter(f)
	put := func(name string, data []byte) error {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: stem + "/" + name, Method: zip.Store})
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	if err := put("data.pkl", p.b.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := put("byteorder", []byte("little")); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	for i, s := range storages {
		if err := put("data/"+strconv.Itoa(i), s); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := put("version", []byte("3\n")); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}

// pickler writes the pickle protocol-2 opcodes torch.save uses.
type pickler struct{ b bytes.Buffer }

func (p *pickler) proto()      { p.b.Write([]byte{0x80, 2}) }
func (p *pickler) emptyDict()  { p.b.WriteByte('}') }
func (p *pickler) emptyTuple() { p.b.WriteByte(')') }
func (p *pickler) mark()       { p.b.WriteByte('(') }
func (p *pickler) tuple()      { p.b.WriteByte('t') }
func (p *pickler) reduce()     { p.b.WriteByte('R') }
func (p *pickler) binpersid()  { p.b.WriteByte('Q') }

func (p *pickler) global(module, name string) {
	p.b.WriteByte('c')
	p.b.WriteString(module + "\n" + name + "\n")
}

// str writes BINUNICODE.
func (p *pickler) str(s string) {
	p.b.WriteByte('X')
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(s)))
	p.b.Write(n[:])
	p.b.WriteString(s)
}

// int writes BININT (or LONG1 beyond 32 bits).
func (p *pickler) int(v int) {
	if v >= math.MinInt32 && v <= math.MaxInt32 {
		p.b.WriteByte('J')
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(int32(v)))
		p.b.Write(n[:])
		return
	}
	p.b.Write([]byte{0x8a, 8})
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(v))
	p.b.Write(n[:])
}

// ints writes a tuple of ints.
func (p *pickler) ints(vs []int64) {
	p.mark()
	for _, v := range vs {
		p.int(int(v))
	}
	p.tuple()
}
