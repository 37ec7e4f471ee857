package torch

// The link flags route every malloc, free and realloc of the binary's own
// C objects (gotch's cgo stubs among them; not libtorch's shared libraries)
// through malloc0.c, which serves gotch's never-freed malloc(0) result
// slots from a fixed ring instead of leaking 32 bytes per operation.

/*
#cgo LDFLAGS: -Wl,--wrap=malloc -Wl,--wrap=free -Wl,--wrap=realloc
unsigned long m3_zero_ring_used(void);
*/
import "C"

// ZeroAllocs returns how many zero-size C allocations (gotch's result
// slots) the ring has served; they would otherwise each leak 32 bytes.
func ZeroAllocs() uint64 { return uint64(C.m3_zero_ring_used()) }
