package torch

import (
	"sync/atomic"
	"unsafe"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// Raw is a libtorch tensor handle without gotch's Go-side bookkeeping.
// Every *ts.Tensor that gotch makes costs about 15 µs whatever the op (a
// 100 KB Go allocation, a name in a global map, a finalizer), ten times
// the op itself for the small tensors of a decode step; a Raw costs
// nothing beyond the C++ op. Hot loops (the text model's layers) run on
// Raw and turn only their results into *ts.Tensor (Wrap).
//
// A Raw has one owner, who frees it with Free; there is no finalizer. A
// Raw from Borrow belongs to its *ts.Tensor and must not be freed (and
// that tensor must stay reachable while the Raw is used). Ops panic on a
// libtorch error, like gotch's Must* ops: run them under Run.
type Raw struct{ c lib.Ctensor }

// liveRaw counts Raw handles made and not yet freed or wrapped.
var liveRaw atomic.Int64

// LiveRaw is the number of Raw handles made (by ops, Share and
// RowsLinearRaw) and not yet freed or handed to gotch with Wrap: a count
// that grows across passes is a leak.
func LiveRaw() int64 { return liveRaw.Load() }

// Borrow returns t's handle; t keeps ownership (keep t reachable).
func Borrow(t *ts.Tensor) Raw { return Raw{lib.Ctensor(t.Ctensor())} }

// Wrap hands r to gotch: the *ts.Tensor owns it from now on.
func (r Raw) Wrap() *ts.Tensor {
	liveRaw.Add(-1)
	return ts.New(r.c)
}

// Share returns a new handle on r's storage (a shallow clone), owned by
// the caller: r may be freed while the new handle lives.
func (r Raw) Share() Raw {
	liveRaw.Add(1)
	return Raw{lib.AtShallowClone(r.c)}
}

// Free releases r. Freeing a zero Raw does nothing.
func (r Raw) Free() {
	if r.c != nil {
		liveRaw.Add(-1)
		lib.AtFree(r.c)
	}
}

// FreeRaw frees each of rs.
func FreeRaw(rs ...Raw) {
	for _, r := range rs {
		r.Free()
	}
}

// Defined reports whether r holds a tensor.
func (r Raw) Defined() bool { return r.c != nil }

// Dim is r's number of dimensions.
func (r Raw) Dim() int { return int(lib.AtDim(r.c)) }

// Size is r's shape.
func (r Raw) Size() []int64 {
	sz := make([]int64, r.Dim())
	if len(sz) > 0 {
		lib.AtShape(r.c, unsafe.Pointer(&sz[0]))
	}
	return sz
}

// DType is r's element type.
func (r Raw) DType() gotch.DType { return gotch.CKind2DType(lib.AtScalarType(r.c)) }

// result checks the last libtorch call and returns its output.
func result(out lib.Ctensor) Raw {
	if err := ts.TorchErr(); err != nil {
		panic(err)
	}
	if out != nil {
		liveRaw.Add(1)
	}
	return Raw{out}
}

// unary runs a one-operand op of gotch's generated C API on r.
func unary(op func(*lib.Ctensor, lib.Ctensor), r Raw) Raw {
	var out lib.Ctensor
	op(&out, r.c)
	return result(out)
}

// binary runs a two-operand op of gotch's generated C API on r and o.
func binary(op func(*lib.Ctensor, lib.Ctensor, lib.Ctensor), r, o Raw) Raw {
	var out lib.Ctensor
	op(&out, r.c, o.c)
	return result(out)
}

// Add is r + o.
func (r Raw) Add(o Raw) Raw { return binary(lib.AtgAdd, r, o) }

// Mul is r ⊙ o.
func (r Raw) Mul(o Raw) Raw { return binary(lib.AtgMul, r, o) }

// AddScalar is r + v.
func (r Raw) AddScalar(v float64) Raw {
	s := lib.AtsFloat(v)
	defer lib.AtsFree(s)
	var out lib.Ctensor
	lib.AtgAddScalar(&out, r.c, s)
	return result(out)
}

// MulScalar is r·v.
func (r Raw) MulScalar(v float64) Raw {
	s := lib.AtsFloat(v)
	defer lib.AtsFree(s)
	var out lib.Ctensor
	lib.AtgMulScalar(&out, r.c, s)
	return result(out)
}

// Matmul is torch.matmul(r, o).
func (r Raw) Matmul(o Raw) Raw { return binary(lib.AtgMatmul, r, o) }

// Mv is the matrix-vector product r·v.
func (r Raw) Mv(v Raw) Raw { return binary(lib.AtgMv, r, v) }

// Linear is r·wᵀ + b (b may be a zero Raw: no bias).
func (r Raw) Linear(w, b Raw) Raw {
	var out lib.Ctensor
	bc := b.c
	if bc == nil {
		bc = lib.Ctensor(ts.None.Ctensor())
	}
	lib.AtgLinear(&out, r.c, w.c, bc)
	return result(out)
}

// withDims runs an op of gotch's generated C API that takes a list of
// dimensions or sizes on r.
func withDims(op func(*lib.Ctensor, lib.Ctensor, []int64, int), r Raw, dims []int64) Raw {
	var out lib.Ctensor
	op(&out, r.c, dims, len(dims))
	return result(out)
}

// View is r viewed as shape.
func (r Raw) View(shape ...int64) Raw { return withDims(lib.AtgView, r, shape) }

// Reshape is r reshaped to shape (a view when possible).
func (r Raw) Reshape(shape ...int64) Raw { return withDims(lib.AtgReshape, r, shape) }

// Transpose swaps dimensions d0 and d1 (a view).
func (r Raw) Transpose(d0, d1 int64) Raw {
	var out lib.Ctensor
	lib.AtgTranspose(&out, r.c, d0, d1)
	return result(out)
}

// Permute reorders r's dimensions (a view).
func (r Raw) Permute(dims ...int64) Raw { return withDims(lib.AtgPermute, r, dims) }

// Select is r indexed at index along dim (a view).
func (r Raw) Select(dim, index int64) Raw {
	var out lib.Ctensor
	lib.AtgSelect(&out, r.c, dim, index)
	return result(out)
}

// Narrow is r's slice [start, start+length) along dim (a view).
func (r Raw) Narrow(dim, start, length int64) Raw {
	var out lib.Ctensor
	lib.AtgNarrow(&out, r.c, dim, start, length)
	return result(out)
}

// Neg is -r.
func (r Raw) Neg() Raw { return unary(lib.AtgNeg, r) }

// Silu is x·sigmoid(x).
func (r Raw) Silu() Raw { return unary(lib.AtgSilu, r) }

// GeluInPlace applies GELU (approximate "tanh" or "none") to r in place.
func (r Raw) GeluInPlace(approximate string) {
	var out lib.Ctensor
	lib.AtgGelu_(&out, r.c, approximate)
	result(out).Free() // a second handle on r's storage
}

// Square is r².
func (r Raw) Square() Raw { return unary(lib.AtgSquare, r) }

// Rsqrt is 1/√r.
func (r Raw) Rsqrt() Raw { return unary(lib.AtgRsqrt, r) }

// MeanLast is the mean over the last dimension, kept, in kind.
func (r Raw) MeanLast(kind gotch.DType) Raw {
	var out lib.Ctensor
	lib.AtgMeanDim(&out, r.c, []int64{-1}, 1, 1, kind.CInt())
	return result(out)
}

// Totype is r converted to kind.
func (r Raw) Totype(kind gotch.DType) Raw {
	var out lib.Ctensor
	lib.AtgTotype(&out, r.c, kind.CInt())
	return result(out)
}

// CopyFrom copies src into r in place (broadcasting src).
func (r Raw) CopyFrom(src Raw) {
	lib.AtCopy_(r.c, src.c)
	result(nil)
}

// Softmax is the softmax over dim, computed in kind.
func (r Raw) Softmax(dim int64, kind gotch.DType) Raw {
	var out lib.Ctensor
	lib.AtgSoftmax(&out, r.c, dim, kind.CInt())
	return result(out)
}

// Cat concatenates rs along dim.
func Cat(dim int64, rs ...Raw) Raw {
	cs := make([]lib.Ctensor, len(rs))
	for i, r := range rs {
		cs[i] = r.c
	}
	var out lib.Ctensor
	lib.AtgCat(&out, cs, len(cs), dim)
	return result(out)
}

// SDPA is softmax(q·kᵀ·scale + mask)·v (mask: a zero Raw for none), one
// libtorch call.
func SDPA(q, k, v, mask Raw, scale float64) Raw {
	mc := mask.c
	if mc == nil {
		mc = lib.Ctensor(ts.None.Ctensor())
	}
	var out lib.Ctensor
	lib.AtgScaledDotProductAttention(&out, q.c, k.c, v.c, mc, 0, 0, scale, 0)
	return result(out)
}

// Device is where r's storage lives (the CPU, or a CUDA device).
func (r Raw) Device() gotch.Device {
	var d gotch.Device
	d = d.OfCInt(int32(lib.AtDevice(r.c)))
	result(nil)
	if IsCUDA(d) {
		return d
	}
	return gotch.CPU
}

// Zeros is a new tensor of zeros of the given shape, kind and device.
func Zeros(shape []int64, kind gotch.DType, device gotch.Device) Raw {
	var out lib.Ctensor
	lib.AtgZeros(&out, shape, len(shape), kind.CInt(), int32(device.CInt()))
	return result(out)
}

// Int64s is a new 1-D int64 tensor of vals on device.
func Int64s(vals []int64, device gotch.Device) Raw {
	t := ToDevice(ts.MustOfSlice(vals), device, true)
	r := Borrow(t).Share()
	Drop(t)
	return r
}

// IndexCopyInPlace copies the rows of src into r at the indices idx (an
// int64 tensor on r's device) along dim, in place.
func (r Raw) IndexCopyInPlace(dim int64, idx, src Raw) {
	var out lib.Ctensor
	lib.AtgIndexCopy_(&out, r.c, dim, idx.c, src.c)
	result(out).Free() // a second handle on r's storage
}

// IndexSelect is r's entries at the indices idx (an int64 tensor on r's
// device) along dim (a copy).
func (r Raw) IndexSelect(dim int64, idx Raw) Raw {
	var out lib.Ctensor
	lib.AtgIndexSelect(&out, r.c, dim, idx.c)
	return result(out)
}
