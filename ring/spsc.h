// SPDX-License-Identifier: Apache-2.0
//
// ring/spsc.h: the bounded lock-free single-producer single-consumer ring that carries messages
// between two shards, one ring per ordered pair (docs/DESIGN.md §6). It owns the slot array and the
// two indices; it does not own what a message points at (`ptr` is opaque: the protocol between the
// two shards says who frees it), and it knows nothing about waking a sleeping consumer. Threading
// rule: exactly one producer thread calls the producer functions and exactly one consumer thread
// calls the consumer functions, for the ring's whole life; ring_capacity() and ring_depth() may
// be called from any thread; ring_create() and ring_destroy() run while neither side uses it.
//
// Indices. `tail` (next slot to publish) and `head` (next slot to consume) are free-running
// uint64 counters; a slot is `counter & (capacity - 1)`, the fill level is `tail - head`. They
// never wrap: at 10^9 messages per second a uint64 lasts 584 years, so no code path has to reason
// about wrap-around (the subtraction would still be right modulo 2^64 if it did).
//
// Memory ordering, and why release/acquire is enough:
//  - Publish. The producer writes slots with plain stores, then ring_publish() stores `tail` with
//    memory_order_release. The consumer loads `tail` with memory_order_acquire before reading
//    slots. A release store that an acquire load reads from makes every write sequenced before
//    the store (the slot contents) visible after the load, so the consumer never sees a slot
//    that is not fully written. Staged (pushed, unpublished) slots are invisible because the
//    consumer bounds its reads by the `tail` it loaded, and `tail` has not moved.
//  - Release. The consumer reads slots with plain loads, then ring_consume() stores `head` with
//    memory_order_release; the producer loads `head` with memory_order_acquire before deciding
//    that a slot is free. So the consumer's reads of a slot happen before the producer's next
//    write to it: no slot is overwritten while it is being copied out.
//  - Cached indices. The producer keeps a private copy of `head` and the consumer a private copy
//    of `tail`, each on its owner's cache line, refreshed (with the acquire load above) only when
//    the copy says the ring is full (producer) or empty (consumer). A stale copy is always
//    conservative: `head` and `tail` only grow, so an old `head` understates the free space and
//    an old `tail` understates the visible items. The worst a stale copy does is report full or
//    empty a little early, never hand out a slot that is in use. Each copy is read and written by
//    one thread only, so it is a plain field, not an atomic.
//  - No seq_cst. Each index has one writer and one reader, and every question a side asks ("is
//    slot i written?", "is slot i free?") is answered by one release/acquire pair on one
//    variable. Nothing here needs a single total order over stores to different variables, which
//    is the only thing seq_cst adds. The place that does need it is outside the ring: the broker
//    lets a shard sleep and wakes it only when it is actually asleep, a Dekker-style handshake on
//    a separate `sleeping` flag (consumer: store sleeping=1, fence, check ring_empty_consumer();
//    producer: ring_publish(), fence, load sleeping). Release/acquire permits a store followed by
//    a load of a different variable to be reordered, which would lose a wake-up, so both sides
//    need an atomic_thread_fence(memory_order_seq_cst) there. That fence lives in the broker,
//    next to the flag; the ring does not pay for it on every publish.
//
// Layout. The shared indices and each side's private fields sit on their own cache lines (see
// RING_CACHE_LINE_BYTES in spsc.c), so a producer writing its fields does not invalidate the
// consumer's line and vice versa; the slot array follows, aligned to a line.
#ifndef NEXUS_RING_SPSC_H
#define NEXUS_RING_SPSC_H

#include <stdbool.h>
#include <stdint.h>

// The largest capacity ring_create() accepts: the largest power of two a uint32_t holds. The
// real bound is the shard configuration's ring size; this one only keeps `capacity` and every
// count derived from it inside uint32_t.
#define RING_CAPACITY_MAX (UINT32_C(1) << 31)

// One slot. All four fields are opaque to the ring and copied by value; 24 bytes on LP64, so a
// batch of 8 messages is 3 cache lines.
struct ring_msg {
    uint32_t kind;
    uint32_t aux;
    void *ptr;
    uint64_t arg;
};

struct ring;

// Creates an empty ring of `capacity` slots. `capacity` must be a power of two in
// [1, RING_CAPACITY_MAX]; anything else is a programmer error and aborts with file and line.
// Returns the ring, owned by the caller until ring_destroy(), or NULL when memory is exhausted.
struct ring *ring_create(uint32_t capacity);

// Frees `r` and its slots; NULL is a no-op. Messages still in the ring are dropped without
// looking at them: whoever owns what their `ptr` points at must drain the ring first.
void ring_destroy(struct ring *r);

// Returns the number of slots `r` was created with. Any thread.
uint32_t ring_capacity(const struct ring *r);

// --- producer side: one thread only --------------------------------------------------------

// Returns how many more messages the producer can push right now: capacity minus published
// messages not yet consumed minus staged ones. Refreshes the producer's cached copy of the
// consumer's index (one acquire load), so the answer is as fresh as the ring can give; the
// consumer may free more slots at any moment, never fewer.
uint32_t ring_free_slots(struct ring *r);

// Stages a copy of `*m` in the next free slot. Returns 0, or -EAGAIN when the ring is full (the
// caller's queue-full policy applies; nothing was staged). A staged message is invisible to the
// consumer until ring_publish().
int ring_push(struct ring *r, const struct ring_msg *m);

// Stages copies of the first messages of `m[0..n)`, in order, as many as fit. Returns how many
// were staged (0..n); the caller still owns m[returned..n). Invisible until ring_publish().
uint32_t ring_push_many(struct ring *r, const struct ring_msg *m, uint32_t n);

// Makes every staged message visible to the consumer with one release store. A no-op when
// nothing is staged.
void ring_publish(struct ring *r);

// --- consumer side: one thread only --------------------------------------------------------

// Copies up to `max` published, unconsumed messages, oldest first, into `out[0..max)`. Returns
// how many were copied. The slots stay owned by the consumer side until ring_consume(): a second
// peek returns the same messages again.
uint32_t ring_peek_batch(struct ring *r, struct ring_msg *out, uint32_t max);

// Releases the `n` oldest published messages back to the producer with one release store. `n`
// must not exceed the number of published, unconsumed messages (programmer error: aborts).
void ring_consume(struct ring *r, uint32_t n);

// ring_peek_batch() followed by ring_consume() of what it copied. Returns how many messages were
// copied into `out` and released.
uint32_t ring_pop_batch(struct ring *r, struct ring_msg *out, uint32_t max);

// Returns true when no published message is waiting. Loads the producer's index with acquire
// ordering when the consumer's cached copy says empty, so a false answer is exact and a true
// answer is as fresh as one load makes it (the broker's sleep check relies on that load).
bool ring_empty_consumer(struct ring *r);

// --- any thread ----------------------------------------------------------------------------

// Returns the number of published, unconsumed messages, for metrics: both indices are read with
// relaxed loads at slightly different instants, so the value is approximate (clamped to
// [0, capacity]) and must not drive control flow. Staged messages are not counted.
uint32_t ring_depth(const struct ring *r);

#endif // NEXUS_RING_SPSC_H
