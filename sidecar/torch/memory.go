package torch

/*
#include <stdlib.h>
#include "memory.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// FromMemory returns a CPU tensor of kind and shape over data, without
// copying: the tensor reads and writes data itself, which must hold
// exactly its bytes and outlive it (and every view of it). It is how a
// weight stays in its file mapping (see tensorio.Checkpoint.Map).
func FromMemory(data []byte, shape []int64, kind gotch.DType) (*ts.Tensor, error) {
	n := int64(kind.Size())
	for _, d := range shape {
		n *= d
	}
	if n != int64(len(data)) || n == 0 {
		return nil, fmt.Errorf("tensor over memory: %d bytes for a %v tensor of shape %v", len(data), kind, shape)
	}
	if uintptr(unsafe.Pointer(&data[0]))%uintptr(kind.Size()) != 0 {
		return nil, fmt.Errorf("tensor over memory: data not aligned to its %d-byte elements", kind.Size())
	}
	dims := make([]C.long, len(shape))
	for i, d := range shape {
		dims[i] = C.long(d)
	}
	var out unsafe.Pointer
	var msg [256]C.char
	var dp *C.long
	if len(dims) > 0 {
		dp = &dims[0]
	}
	if C.m3_from_memory(unsafe.Pointer(&data[0]), dp, C.int(len(dims)), C.int(kind.CInt()), &out, &msg[0], C.int(len(msg))) != 0 {
		return nil, errors.New("tensor over memory: " + C.GoString(&msg[0]))
	}
	return ts.New(lib.Ctensor(out)), nil
}
