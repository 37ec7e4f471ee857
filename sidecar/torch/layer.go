package torch

/*
#include <stdlib.h>
#include "layer.h"
*/
import "C"

import "unsafe"

// Decoder is one Llama decoder layer's weights for DecodeLayer, as
// borrowed handles: the norms' weights, the joined query/key/value
// product [(H+2·nKV)·hd, D], the output product [D, H·hd], the joined
// gate/up product [2·I, D] (gate rows first) and the down product [D, I];
// QKVBias and OBias may be zero Raws.
type Decoder struct {
	InNorm, QKV, QKVBias, O, OBias, PostNorm, GateUp, Down Raw
	Eps                                                    float64
	Heads, KVHeads, HeadDim                                int
}

// DecodeLayer runs layer d for one new token per sequence, x [D] or
// [B, 1, D] with B at most 8 (which stays the caller's), in one call, and
// returns the new residual stream (x's shape). The new token's keys and
// values go to slot n-1 of k and v [B, nKV, cap, hd] (a cache's buffers),
// and attention reads their slots 0..n-1 under mask [B, 1, H/nKV, n] or
// a zero Raw; cosQ, sinQ and cosK, sinK are the new tokens' rotary
// tables ([B, 1, H·hd] and [B, 1, nKV·hd], or vectors). ok is false, and
// nothing is written, when it does not take these tensors (not f32 on
// the CPU, autograd on, other shapes, bf16 norms, no AVX2): the caller
// then runs the layer's ops. It runs the kernels those ops run
// (RowsLinear, AttendFew, RMSNorm, Rope), so results equal theirs bit
// for bit where DecodeLayerExact, else up to the SiLU's exponential.
func DecodeLayer(d *Decoder, x, k, v Raw, n int64, mask, cosQ, sinQ, cosK, sinK Raw) (y Raw, ok bool, err error) {
	if !kernelsOK {
		return Raw{}, false, nil
	}
	L := C.m3_decoder{
		in_norm: unsafe.Pointer(d.InNorm.c), qkv_w: unsafe.Pointer(d.QKV.c), qkv_b: unsafe.Pointer(d.QKVBias.c),
		o_w: unsafe.Pointer(d.O.c), o_b: unsafe.Pointer(d.OBias.c), post_norm: unsafe.Pointer(d.PostNorm.c),
		gate_up_w: unsafe.Pointer(d.GateUp.c), down_w: unsafe.Pointer(d.Down.c),
		eps: C.double(d.Eps), heads: C.long(d.Heads), kv_heads: C.long(d.KVHeads), head_dim: C.long(d.HeadDim),
	}
	var out unsafe.Pointer
	var msg [256]C.char
	rc := C.m3_decode_layer(&L, unsafe.Pointer(x.c), unsafe.Pointer(k.c), unsafe.Pointer(v.c), C.long(n), unsafe.Pointer(mask.c),
		unsafe.Pointer(cosQ.c), unsafe.Pointer(sinQ.c), unsafe.Pointer(cosK.c), unsafe.Pointer(sinK.c), &out, &msg[0], C.int(len(msg)))
	return kernelResult("decode layer", rc, out, msg[:])
}

// DecodeLayerExact reports whether DecodeLayer's SiLU is libtorch's own
// (its SLEEF exponential, found in the process), which makes its results
// those of the layer's ops bit for bit.
func DecodeLayerExact() bool { return C.m3_decode_layer_exact() == 1 }
