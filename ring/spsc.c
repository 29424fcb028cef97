// SPDX-License-Identifier: Apache-2.0
//
// ring/spsc.c: the single-producer single-consumer ring declared in spsc.h. It owns the ring's
// memory layout (which field sits on which cache line), the index arithmetic and the atomics;
// the memory-ordering argument is in spsc.h's file comment. Threading rule: the producer
// functions touch only the producer's line and the shared `tail`/`head`; the consumer functions
// only the consumer's line and the shared indices; each private field has exactly one thread
// that reads and writes it.
#include "ring/spsc.h"

#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Distance kept between fields written by different threads. A cache line is 64 bytes on every
// CPU we run on, but Intel's adjacent-line prefetcher fetches lines in 128-byte pairs and
// Apple/Neoverse parts with 128-byte lines exist, so 64-byte separation can still ping-pong;
// 128 is the value folly and crossbeam settled on for the same structure. The cost is 640
// bytes of header per ring.
#define RING_CACHE_LINE_BYTES 128

// Programmer errors (a bad capacity, consuming more than was published, a second producer or
// consumer corrupting the indices) abort with file and line in every build type, NDEBUG or not.
#define RING_ASSERT(cond) ((cond) ? (void)0 : ring_assert_fail(#cond, __FILE__, __LINE__))

static _Noreturn void ring_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "%s:%d: ring assertion failed: %s\n", file, line, expr);
    abort();
}

struct ring {
    // Read-only after ring_create(); read by both sides, so it may be shared by both caches.
    alignas(RING_CACHE_LINE_BYTES) uint32_t capacity;
    uint32_t mask; // capacity - 1

    // Next message to consume. Written by the consumer (release), read by the producer
    // (acquire) when its cached copy says the ring is full, and by ring_depth() (relaxed).
    alignas(RING_CACHE_LINE_BYTES) _Atomic uint64_t head;

    // Consumer-private: its own copy of `head` (so it never reads the shared line to learn its
    // own position) and its cached copy of `tail`, never newer than the real one.
    alignas(RING_CACHE_LINE_BYTES) uint64_t cons_head;
    uint64_t cons_tail_cache;

    // One past the last published message. Written by the producer (release) in
    // ring_publish(), read by the consumer (acquire) and by ring_depth() (relaxed).
    alignas(RING_CACHE_LINE_BYTES) _Atomic uint64_t tail;

    // Producer-private: next slot to stage into, the last value stored into `tail` (so publish
    // can skip a store when nothing was staged without reading the shared line), and its cached
    // copy of `head`, never newer than the real one.
    alignas(RING_CACHE_LINE_BYTES) uint64_t prod_tail;
    uint64_t prod_tail_published;
    uint64_t prod_head_cache;

    alignas(RING_CACHE_LINE_BYTES) struct ring_msg slots[];
};

_Static_assert(
    offsetof(struct ring, head) - offsetof(struct ring, capacity) >= RING_CACHE_LINE_BYTES &&
        offsetof(struct ring, cons_head) - offsetof(struct ring, head) >= RING_CACHE_LINE_BYTES &&
        offsetof(struct ring, tail) - offsetof(struct ring, cons_head) >= RING_CACHE_LINE_BYTES &&
        offsetof(struct ring, prod_tail) - offsetof(struct ring, tail) >= RING_CACHE_LINE_BYTES &&
        offsetof(struct ring, slots) - offsetof(struct ring, prod_tail) >= RING_CACHE_LINE_BYTES,
    "fields written by different threads must not share a cache line");
_Static_assert(offsetof(struct ring, slots) % RING_CACHE_LINE_BYTES == 0,
               "the slot array must start on a cache line");
_Static_assert(sizeof(void *) != 8 || sizeof(struct ring_msg) == 24,
               "struct ring_msg is 24 bytes on LP64");
// A lock-based 64-bit atomic would make the ring blocking and is a sign of a platform we have
// not checked; fail the build rather than quietly lose the lock-free property.
_Static_assert((sizeof(long) == 8 ? ATOMIC_LONG_LOCK_FREE : ATOMIC_LLONG_LOCK_FREE) == 2,
               "uint64_t atomics must be lock-free");

struct ring *ring_create(uint32_t capacity)
{
    // Every nonzero power of two in uint32_t is <= RING_CAPACITY_MAX, so this is the whole check.
    RING_ASSERT(capacity != 0 && (capacity & (capacity - 1)) == 0);

    size_t header_bytes = offsetof(struct ring, slots);
    if ((size_t)capacity > (SIZE_MAX - header_bytes) / sizeof(struct ring_msg))
        return NULL; // only reachable where size_t is 32 bits
    size_t bytes = header_bytes + (size_t)capacity * sizeof(struct ring_msg);

    // posix_memalign rather than aligned_alloc: C11's aligned_alloc wants the size to be a
    // multiple of the alignment, which the slot array is not in general.
    void *mem = NULL;
    if (posix_memalign(&mem, RING_CACHE_LINE_BYTES, bytes) != 0)
        return NULL;

    struct ring *r = mem;
    r->capacity = capacity;
    r->mask = capacity - 1;
    atomic_init(&r->head, 0);
    r->cons_head = 0;
    r->cons_tail_cache = 0;
    atomic_init(&r->tail, 0);
    r->prod_tail = 0;
    r->prod_tail_published = 0;
    r->prod_head_cache = 0;
    // The slots stay uninitialised: the consumer reads only slots the producer wrote first.
    return r;
}

void ring_destroy(struct ring *r)
{
    free(r);
}

uint32_t ring_capacity(const struct ring *r)
{
    return r->capacity;
}

// Copies `n` messages from `src` into the slots starting at counter `at`, in at most two runs
// (the second when the run crosses the end of the array).
static void ring_copy_in(struct ring *r, uint64_t at, const struct ring_msg *src, uint32_t n)
{
    uint32_t start = (uint32_t)(at & r->mask);
    uint32_t first = r->capacity - start;
    if (first > n)
        first = n;
    memcpy(&r->slots[start], src, (size_t)first * sizeof(*src));
    memcpy(&r->slots[0], src + first, (size_t)(n - first) * sizeof(*src));
}

// Copies `n` messages starting at counter `at` out of the slots into `dst`; see ring_copy_in.
static void ring_copy_out(const struct ring *r, uint64_t at, struct ring_msg *dst, uint32_t n)
{
    uint32_t start = (uint32_t)(at & r->mask);
    uint32_t first = r->capacity - start;
    if (first > n)
        first = n;
    memcpy(dst, &r->slots[start], (size_t)first * sizeof(*dst));
    memcpy(dst + first, &r->slots[0], (size_t)(n - first) * sizeof(*dst));
}

// --- producer side ----------------------------------------------------------------------------

// Free slots according to the producer's cached copy of `head`: a lower bound.
static uint32_t ring_prod_free_cached(const struct ring *r)
{
    return r->capacity - (uint32_t)(r->prod_tail - r->prod_head_cache);
}

// Reloads `head` (acquire: the consumer's reads of the slots it released happen before we
// overwrite them) and returns the exact free count as of that load.
static uint32_t ring_prod_refresh(struct ring *r)
{
    r->prod_head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
    // `head` can only move towards `prod_tail`; anything else means a second producer or
    // consumer, or a consume() of unpublished slots that slipped past its own check.
    RING_ASSERT(r->prod_tail - r->prod_head_cache <= r->capacity);
    return ring_prod_free_cached(r);
}

uint32_t ring_free_slots(struct ring *r)
{
    return ring_prod_refresh(r);
}

int ring_push(struct ring *r, const struct ring_msg *m)
{
    if (ring_prod_free_cached(r) == 0 && ring_prod_refresh(r) == 0)
        return -EAGAIN;
    r->slots[r->prod_tail & r->mask] = *m;
    r->prod_tail++;
    return 0;
}

uint32_t ring_push_many(struct ring *r, const struct ring_msg *m, uint32_t n)
{
    if (n == 0)
        return 0;
    uint32_t free_slots = ring_prod_free_cached(r);
    if (free_slots < n)
        free_slots = ring_prod_refresh(r);
    if (n > free_slots)
        n = free_slots;
    if (n == 0)
        return 0;
    ring_copy_in(r, r->prod_tail, m, n);
    r->prod_tail += n;
    return n;
}

void ring_publish(struct ring *r)
{
    // Skipping the store when nothing is staged keeps an idle producer from invalidating the
    // consumer's copy of the `tail` line.
    if (r->prod_tail == r->prod_tail_published)
        return;
    r->prod_tail_published = r->prod_tail;
    atomic_store_explicit(&r->tail, r->prod_tail, memory_order_release);
}

// --- consumer side ----------------------------------------------------------------------------

// Visible messages according to the consumer's cached copy of `tail`: a lower bound.
static uint32_t ring_cons_avail_cached(const struct ring *r)
{
    return (uint32_t)(r->cons_tail_cache - r->cons_head);
}

// Reloads `tail` (acquire: the producer's writes to the published slots happen before our
// reads) and returns the exact visible count as of that load.
static uint32_t ring_cons_refresh(struct ring *r)
{
    r->cons_tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    RING_ASSERT(r->cons_tail_cache - r->cons_head <= r->capacity);
    return ring_cons_avail_cached(r);
}

uint32_t ring_peek_batch(struct ring *r, struct ring_msg *out, uint32_t max)
{
    uint32_t avail = ring_cons_avail_cached(r);
    if (avail < max)
        avail = ring_cons_refresh(r);
    uint32_t n = avail < max ? avail : max;
    if (n == 0)
        return 0;
    ring_copy_out(r, r->cons_head, out, n);
    return n;
}

void ring_consume(struct ring *r, uint32_t n)
{
    if (n == 0)
        return;
    if (ring_cons_avail_cached(r) < n)
        ring_cons_refresh(r);
    RING_ASSERT(n <= ring_cons_avail_cached(r));
    r->cons_head += n;
    atomic_store_explicit(&r->head, r->cons_head, memory_order_release);
}

uint32_t ring_pop_batch(struct ring *r, struct ring_msg *out, uint32_t max)
{
    uint32_t n = ring_peek_batch(r, out, max);
    ring_consume(r, n);
    return n;
}

bool ring_empty_consumer(struct ring *r)
{
    if (ring_cons_avail_cached(r) != 0)
        return false;
    return ring_cons_refresh(r) == 0;
}

// --- any thread -------------------------------------------------------------------------------

uint32_t ring_depth(const struct ring *r)
{
    // Relaxed: a metric needs no ordering with the slots. The two loads are not one snapshot,
    // so `head` may have passed the `tail` we read, or `tail` may be more than a ring ahead of
    // an old `head`; clamp instead of returning nonsense.
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (tail <= head)
        return 0;
    if (tail - head > r->capacity)
        return r->capacity;
    return (uint32_t)(tail - head);
}
