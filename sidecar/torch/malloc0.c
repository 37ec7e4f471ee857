// malloc0.c: gotch v0.9.1 allocates the result slot of every tensor
// operation with C.malloc(0) and never frees it: 32 bytes per operation,
// about 1,000 operations per scored image on the tiny model, which made the
// sidecar's RSS grow without bound (~35 KB per request on the tiny model,
// ~0.45 MB on SmolVLM-256M). The binary is linked with --wrap=malloc/free/
// realloc (see malloc0.go): malloc(0) returns a slot of a fixed ring
// instead of the heap, so those results cost nothing, and free/realloc
// recognise ring slots. Every other size goes to the C library unchanged.
//
// A slot is read right after the operation that wrote it; it is handed out
// again only after m3ZeroSlots more malloc(0) calls, far more than can
// happen between a gotch call and its read.
#include <stddef.h>

void *__real_malloc(size_t n);
void __real_free(void *p);
void *__real_realloc(void *p, size_t n);

#define m3ZeroSlots 16384
#define m3ZeroSlotBytes 64 /* gotch writes up to a few result pointers */

static _Alignas(64) unsigned char m3_zero_ring[m3ZeroSlots][m3ZeroSlotBytes];
static unsigned long m3_zero_next;

static int m3_in_ring(const void *p) {
	const unsigned char *b = (const unsigned char *)p;
	return b >= &m3_zero_ring[0][0] && b < &m3_zero_ring[0][0] + sizeof m3_zero_ring;
}

void *__wrap_malloc(size_t n) {
	if (n == 0) {
		unsigned long i = __atomic_fetch_add(&m3_zero_next, 1, __ATOMIC_RELAXED);
		return m3_zero_ring[i % m3ZeroSlots];
	}
	return __real_malloc(n);
}

void __wrap_free(void *p) {
	if (m3_in_ring(p)) {
		return;
	}
	__real_free(p);
}

void *__wrap_realloc(void *p, size_t n) {
	if (m3_in_ring(p)) {
		return __wrap_malloc(n); // a zero-size block has nothing to copy
	}
	return __real_realloc(p, n);
}

// m3_zero_ring_used counts the malloc(0) calls served from the ring.
unsigned long m3_zero_ring_used(void) {
	return __atomic_load_n(&m3_zero_next, __ATOMIC_RELAXED);
}
