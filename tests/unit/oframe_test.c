// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/oframe_test.c: unit tests for broker/oframe.h, the reference-counted frames whose
// count is biased toward the owning shard (`local`, plain) with one collective reference in the
// atomic `shared`. The header's functions are static inline, so this file compiles them with
// free() routed to a counting hook (a macro around the #include): each frame carries its id in
// its data, and the hook records how many times each id was freed before really freeing it.
// Tests can therefore assert that a frame is not freed while references remain and is freed
// exactly once when the last goes, on top of ASan/LSan catching a double free, a use after free
// or a leak in the sanitizer build. The true count is shared + local - (local > 0) (header);
// tests check it after each step. Threads: oframe_self is 0 for the owner "shard", 1..3 for
// other shards, -1 (its initial value in every new thread) outside shards. Worker threads never
// call cmocka assertions; they count errors, checked by the main thread after joining.
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

// oframe.h frees with free(); route its calls (and only its calls) to the counting hook.
static void oframe_test_free(void *p);
#define free(p) oframe_test_free(p)
#include "broker/oframe.h"
#undef free

// Ids: frames of the concurrency test use 0..OT_IDS-1; single-threaded tests use low ids and
// reset the counters first.
#define OT_FRAMES  200000u
#define OT_WORKERS 3u
#define OT_IDS     (OT_FRAMES * (1u + OT_WORKERS))
#define OT_MAGIC   0x6f6672616d65ull // "oframe"

static atomic_uchar oframe_test_frees[OT_IDS];
static atomic_ulong oframe_test_free_total;
static atomic_ulong oframe_test_double_frees;

static uint32_t oframe_test_id(const struct oframe *f)
{
    uint32_t id;
    memcpy(&id, f->data, sizeof(id));
    return id;
}

static void oframe_test_free(void *p)
{
    struct oframe *f = p;
    uint32_t id = oframe_test_id(f);
    if (id < OT_IDS && atomic_fetch_add(&oframe_test_frees[id], 1) != 0)
        atomic_fetch_add(&oframe_test_double_frees, 1);
    atomic_fetch_add(&oframe_test_free_total, 1);
    free(p);
}

static void oframe_test_reset(void)
{
    for (uint32_t i = 0; i < 64; i++)
        atomic_store(&oframe_test_frees[i], 0);
    atomic_store(&oframe_test_free_total, 0);
    atomic_store(&oframe_test_double_frees, 0);
}

// A frame of 16 data bytes: the id, then a marker derived from it (checked by holders, so a
// frame freed and reused under a holder shows up even without ASan).
static struct oframe *oframe_test_new(uint32_t id)
{
    struct oframe *f = oframe_alloc(16);
    if (!f)
        return NULL;
    uint64_t mark = OT_MAGIC ^ ((uint64_t)id * 0x9e3779b97f4a7c15ull);
    memcpy(f->data, &id, sizeof(id));
    memcpy(f->data + 8, &mark, sizeof(mark));
    return f;
}

static bool oframe_test_intact(const struct oframe *f, uint32_t id)
{
    uint64_t mark;
    memcpy(&mark, f->data + 8, sizeof(mark));
    return oframe_test_id(f) == id && mark == (OT_MAGIC ^ ((uint64_t)id * 0x9e3779b97f4a7c15ull)) &&
           f->len == 16;
}

// The true count (header), read by the owner (the only thread that may read `local`).
static unsigned oframe_test_true_count(const struct oframe *f)
{
    unsigned s = atomic_load(&f->shared);
    return s + f->local - (f->local > 0);
}

static unsigned oframe_test_freed(uint32_t id)
{
    return atomic_load(&oframe_test_frees[id]);
}

// --- single-threaded ------------------------------------------------------------------------

static int oframe_test_setup(void **state)
{
    (void)state;
    oframe_test_reset();
    oframe_self = 0; // the test thread plays shard 0
    return 0;
}

static int oframe_test_teardown(void **state)
{
    (void)state;
    oframe_self = -1;
    return 0;
}

static void test_alloc_on_shard(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(1);
    assert_non_null(f);
    assert_int_equal(f->owner, 0);
    assert_int_equal(f->local, 1);
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_true_count(f), 1);
    assert_int_equal(f->len, 16);
    assert_false(f->is_event);
    assert_false(f->terminal);
    assert_null(f->type_str);
    assert_null(f->user_id);
    assert_int_equal(f->skip_conn_id, 0);
    assert_int_equal(f->skip_conn_id2, 0);
    assert_true(oframe_test_intact(f, 1));
    assert_int_equal(oframe_test_freed(1), 0);
    oframe_unref(f); // the only reference: freed
    assert_int_equal(oframe_test_freed(1), 1);
    assert_int_equal(atomic_load(&oframe_test_free_total), 1);
}

static void test_owner_ref_unref(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(2);
    assert_non_null(f);
    oframe_ref(f, 5);
    assert_int_equal(f->local, 6); // the owner's references stay local
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_true_count(f), 6);
    oframe_ref(f, 1);
    assert_int_equal(oframe_test_true_count(f), 7);
    for (unsigned left = 7; left > 1; left--) {
        assert_int_equal(oframe_test_true_count(f), left);
        oframe_unref(f);
        assert_int_equal(oframe_test_freed(2), 0);
        assert_int_equal(atomic_load(&f->shared), 1);
    }
    assert_int_equal(f->local, 1);
    assert_int_equal(oframe_test_true_count(f), 1); // just before the last unref
    assert_true(oframe_test_intact(f, 2));
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(2), 1);
    assert_int_equal(atomic_load(&oframe_test_double_frees), 0);
}

// A frame built outside any shard has no local part: every reference is shared, and a shard
// thread's references to it are shared too.
static void test_alloc_outside_shard(void **state)
{
    (void)state;
    oframe_self = -1;
    struct oframe *f = oframe_test_new(3);
    assert_non_null(f);
    assert_int_equal(f->owner, -1);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 1);
    oframe_ref(f, 2);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 3);
    oframe_share(f); // not an owner's local reference: nothing to move
    assert_int_equal(atomic_load(&f->shared), 3);
    oframe_self = 2; // a shard thread takes and drops references: all shared
    oframe_ref(f, 1);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 4);
    oframe_unref(f);
    oframe_unref(f);
    oframe_self = -1;
    oframe_unref(f);
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_freed(3), 0);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(3), 1);
}

// oframe_share moves one local reference into shared: the true count is unchanged, and the
// shared one can be dropped through the shared path later.
static void test_share_keeps_count(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(4);
    assert_non_null(f);
    oframe_ref(f, 3); // local 4
    oframe_share(f);
    assert_int_equal(f->local, 3);
    assert_int_equal(atomic_load(&f->shared), 2);
    assert_int_equal(oframe_test_true_count(f), 4);
    oframe_share(f);
    assert_int_equal(f->local, 2);
    assert_int_equal(atomic_load(&f->shared), 3);
    assert_int_equal(oframe_test_true_count(f), 4);
    // Another shard drops the two shared references (same thread, another oframe_self).
    oframe_self = 1;
    oframe_share(f); // not the owner: nothing moves
    assert_int_equal(atomic_load(&f->shared), 3);
    assert_int_equal(f->local, 2);
    oframe_unref(f);
    oframe_unref(f);
    oframe_self = 0;
    assert_int_equal(f->local, 2);
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_true_count(f), 2);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(4), 0);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(4), 1);
}

// The owner shares its only local reference: local drops to 0 and the collective reference
// goes, leaving exactly the one shared reference, whose holder frees the frame.
static void test_share_last_local(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(5);
    assert_non_null(f);
    oframe_share(f);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_true_count(f), 1);
    assert_int_equal(oframe_test_freed(5), 0);
    // With local at 0, a reference the owner takes (it holds the shared one that came back) is
    // shared: a local count restarting from 0 would lack the collective reference.
    oframe_ref(f, 1);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 2);
    oframe_share(f); // nothing local to move
    assert_int_equal(atomic_load(&f->shared), 2);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(5), 0);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(5), 1);
}

// A shared reference that comes back to the owner may be dropped with oframe_unref while the
// owner still has local references (it then takes the local path): the count stays right.
static void test_shared_ref_returns_to_owner(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(6);
    assert_non_null(f);
    oframe_ref(f, 2); // local 3
    oframe_share(f);  // one reference leaves through a ring...
    oframe_share(f);  // ...and another
    assert_int_equal(f->local, 1);
    assert_int_equal(atomic_load(&f->shared), 3);
    assert_int_equal(oframe_test_true_count(f), 3);
    // Both come back and the owner drops them: the first takes the local path (local 1 -> 0,
    // dropping the collective reference), the second the shared one.
    oframe_unref(f);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 2);
    assert_int_equal(oframe_test_true_count(f), 2);
    oframe_unref(f);
    assert_int_equal(oframe_test_true_count(f), 1);
    assert_int_equal(oframe_test_freed(6), 0);
    oframe_unref(f); // the owner's own last reference, now a shared one
    assert_int_equal(oframe_test_freed(6), 1);
    assert_int_equal(atomic_load(&oframe_test_double_frees), 0);
}

// --- two threads ----------------------------------------------------------------------------

struct oframe_test_peer {
    struct oframe *f;
    int self;          // oframe_self to set in the thread, or -2 to leave it
    int self_at_start; // what the thread found
    unsigned refs;     // extra references to take before dropping
    unsigned drops;    // references to drop
    unsigned shared_before, shared_after, local_after;
};

static void *oframe_test_peer_main(void *arg)
{
    struct oframe_test_peer *p = arg;
    p->self_at_start = oframe_self;
    if (p->self != -2)
        oframe_self = p->self;
    if (p->refs)
        oframe_ref(p->f, p->refs);
    p->shared_before = atomic_load(&p->f->shared);
    for (unsigned i = 0; i + 1 < p->drops; i++)
        oframe_unref(p->f);
    if (p->drops) {
        p->shared_after = atomic_load(&p->f->shared);
        p->local_after = p->f->local; // the owner is not running: safe to read here
        oframe_unref(p->f);
    }
    return NULL;
}

static void oframe_test_run_peer(struct oframe_test_peer *p)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, oframe_test_peer_main, p), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
}

// A thread that is not a shard starts with oframe_self = -1; its references to a shard's frame
// are shared, and the owner's local ones are untouched.
static void test_reference_outside_shard_thread(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(7);
    assert_non_null(f);
    oframe_ref(f, 1); // local 2
    struct oframe_test_peer p = {.f = f, .self = -2, .refs = 2, .drops = 1};
    oframe_test_run_peer(&p);
    assert_int_equal(p.self_at_start, -1);
    assert_int_equal(p.shared_before, 3); // 1 collective + 2 of the peer
    assert_int_equal(p.local_after, 2);
    assert_int_equal(f->local, 2);
    assert_int_equal(atomic_load(&f->shared), 2); // the peer still holds one
    assert_int_equal(oframe_test_true_count(f), 3);
    oframe_unref(f);
    oframe_unref(f); // the owner's last: its collective reference goes, the peer's remains
    assert_int_equal(oframe_test_freed(7), 0);
    assert_int_equal(atomic_load(&f->shared), 1);
    p = (struct oframe_test_peer){.f = f, .self = -2, .drops = 1};
    oframe_test_run_peer(&p);
    assert_int_equal(oframe_test_freed(7), 1);
}

// Share, hand to shard 1's thread, which drops it; the owner drops last (and the reverse).
static void test_share_drop_on_other_shard(void **state)
{
    (void)state;
    struct oframe *f = oframe_test_new(8);
    assert_non_null(f);
    oframe_ref(f, 1);
    oframe_share(f);
    struct oframe_test_peer p = {.f = f, .self = 1, .refs = 3, .drops = 4};
    oframe_test_run_peer(&p);
    assert_int_equal(p.shared_before, 5); // 1 collective + 1 shared + 3 taken on shard 1
    assert_int_equal(p.shared_after, 2);  // before the peer's last drop
    assert_int_equal(p.local_after, 1);
    assert_int_equal(oframe_test_freed(8), 0);
    assert_int_equal(oframe_test_true_count(f), 1);
    oframe_unref(f);
    assert_int_equal(oframe_test_freed(8), 1);

    // The owner drops its local reference first; the other shard frees.
    f = oframe_test_new(9);
    assert_non_null(f);
    oframe_ref(f, 1);
    oframe_share(f);
    oframe_unref(f);
    assert_int_equal(f->local, 0);
    assert_int_equal(atomic_load(&f->shared), 1);
    assert_int_equal(oframe_test_freed(9), 0);
    p = (struct oframe_test_peer){.f = f, .self = 1, .drops = 1};
    oframe_test_run_peer(&p);
    assert_int_equal(p.shared_before, 1);
    assert_int_equal(oframe_test_freed(9), 1);

    // A frame built on shard 1 and dropped by shard 0 (this thread): shard 1's reference is
    // shared before it leaves, so shard 0 drops it through the shared path.
    struct oframe *g = NULL;
    oframe_self = 1;
    g = oframe_test_new(10);
    assert_non_null(g);
    assert_int_equal(g->owner, 1);
    oframe_share(g);
    assert_int_equal(g->local, 0);
    oframe_self = 0;
    oframe_ref(g, 1);
    assert_int_equal(g->local, 0);
    assert_int_equal(atomic_load(&g->shared), 2);
    oframe_unref(g);
    oframe_unref(g);
    assert_int_equal(oframe_test_freed(10), 1);
    assert_int_equal(atomic_load(&oframe_test_double_frees), 0);
}

// --- concurrency ----------------------------------------------------------------------------

// A bounded single-producer single-consumer queue of frame pointers.
#define OT_QCAP 512u
struct oframe_test_queue {
    _Alignas(64) atomic_uint head;
    _Alignas(64) atomic_uint tail;
    struct oframe *slot[OT_QCAP];
};

static bool oframe_test_qpush(struct oframe_test_queue *q, struct oframe *f)
{
    unsigned t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (t - atomic_load_explicit(&q->head, memory_order_acquire) == OT_QCAP)
        return false;
    q->slot[t % OT_QCAP] = f;
    atomic_store_explicit(&q->tail, t + 1, memory_order_release);
    return true;
}

static bool oframe_test_qpop(struct oframe_test_queue *q, struct oframe **f)
{
    unsigned h = atomic_load_explicit(&q->head, memory_order_relaxed);
    if (h == atomic_load_explicit(&q->tail, memory_order_acquire))
        return false;
    *f = q->slot[h % OT_QCAP];
    atomic_store_explicit(&q->head, h + 1, memory_order_release);
    return true;
}

// Messages to a worker: a frame, or this sentinel (no frame) to stop.
static struct oframe oframe_test_stop;

static struct oframe_test_queue oframe_test_to_worker[OT_WORKERS];
static struct oframe_test_queue oframe_test_to_owner[OT_WORKERS];
static atomic_uint oframe_test_workers_done;
static atomic_ulong oframe_test_errors;
static atomic_ulong oframe_test_allocs;
static uint8_t oframe_test_owner_held[OT_IDS]; // owner thread only

static void oframe_test_error(void)
{
    atomic_fetch_add(&oframe_test_errors, 1);
}

// Checks a frame a thread holds `held` references to: intact, not freed, and the shared count
// covers them (for another shard's frame, all its references are shared).
static void oframe_test_check_held_foreign(const struct oframe *f, unsigned held)
{
    uint32_t id = oframe_test_id(f);
    if (id >= OT_IDS || !oframe_test_intact(f, id) || oframe_test_freed(id) != 0 ||
        atomic_load(&f->shared) < held)
        oframe_test_error();
}

// The owner's drop of a frame it holds references to: the true count covers them all.
static void oframe_test_owner_drop(struct oframe *f)
{
    uint32_t id = oframe_test_id(f);
    if (id >= OT_IDS || !oframe_test_intact(f, id) || oframe_test_freed(id) != 0)
        oframe_test_error();
    if (f->owner == oframe_self) {
        if (oframe_test_true_count(f) < oframe_test_owner_held[id] ||
            oframe_test_owner_held[id] == 0)
            oframe_test_error();
        oframe_test_owner_held[id]--;
    } else {
        oframe_test_check_held_foreign(f, 1);
    }
    oframe_unref(f);
}

// Returns from the workers: shard 0's own frames coming back, and frames built by the workers.
static void oframe_test_owner_drain(void)
{
    for (unsigned k = 0; k < OT_WORKERS; k++) {
        struct oframe *f;
        while (oframe_test_qpop(&oframe_test_to_owner[k], &f)) {
            if (f->owner == oframe_self)
                oframe_test_owner_held[oframe_test_id(f)]++; // it holds the returned one now
            oframe_test_owner_drop(f);
        }
    }
}

static void oframe_test_owner_send(unsigned k, struct oframe *f)
{
    while (!oframe_test_qpush(&oframe_test_to_worker[k], f)) {
        oframe_test_owner_drain(); // a worker may be waiting for room to return a frame
        sched_yield();
    }
}

// Shard 0: builds OT_FRAMES frames, each with 1..3 local references (subscribers on shard 0)
// and a shared one for each of a varying subset of workers; its own references are dropped
// some frames later (a window of pending frames), concurrently with the workers' drops.
#define OT_PENDING 64u
static void *oframe_test_owner_main(void *arg)
{
    (void)arg;
    oframe_self = 0;
    struct oframe *pending[OT_PENDING] = {0};
    for (uint32_t i = 0; i < OT_FRAMES; i++) {
        struct oframe *f = oframe_test_new(i);
        if (!f) {
            oframe_test_error();
            break;
        }
        atomic_fetch_add(&oframe_test_allocs, 1);
        unsigned local = 1 + i % 3;
        if (local > 1)
            oframe_ref(f, local - 1);
        unsigned mask = (i * 5 + 3) % 8; // which workers get it (sometimes none)
        unsigned sent = 0;
        for (unsigned k = 0; k < OT_WORKERS; k++) {
            if (!(mask & (1u << k)))
                continue;
            oframe_ref(f, 1);
            oframe_share(f);
            sent++;
        }
        oframe_test_owner_held[i] = (uint8_t)local;
        if (f->local != local || oframe_test_true_count(f) != local + sent)
            oframe_test_error();
        for (unsigned k = 0; k < OT_WORKERS; k++)
            if (mask & (1u << k))
                oframe_test_owner_send(k, f);
        // Drop the references of the frame built OT_PENDING frames ago.
        struct oframe *old = pending[i % OT_PENDING];
        if (old) {
            uint32_t oid = oframe_test_id(old);
            unsigned n = oframe_test_owner_held[oid];
            for (unsigned r = 0; r < n; r++)
                oframe_test_owner_drop(old);
        }
        pending[i % OT_PENDING] = f;
        if (i % 16 == 0)
            oframe_test_owner_drain();
    }
    for (unsigned k = 0; k < OT_WORKERS; k++)
        oframe_test_owner_send(k, &oframe_test_stop);
    for (unsigned s = 0; s < OT_PENDING; s++) {
        struct oframe *old = pending[s];
        if (!old)
            continue;
        unsigned n = oframe_test_owner_held[oframe_test_id(old)];
        for (unsigned r = 0; r < n; r++)
            oframe_test_owner_drop(old);
    }
    while (atomic_load(&oframe_test_workers_done) < OT_WORKERS) {
        oframe_test_owner_drain();
        sched_yield();
    }
    oframe_test_owner_drain();
    return NULL;
}

static void oframe_test_worker_return(unsigned k, struct oframe *f)
{
    while (!oframe_test_qpush(&oframe_test_to_owner[k], f))
        sched_yield();
}

// Shard k (1..3): receives frames, sometimes takes and drops extra references, sometimes sends
// the reference back to shard 0, otherwise drops it; also builds frames of its own now and then
// and sends them to shard 0, dropping its local reference concurrently with shard 0's drop.
static void *oframe_test_worker_main(void *arg)
{
    unsigned k = (unsigned)(uintptr_t)arg;
    oframe_self = (int)k + 1;
    uint32_t own = 0;
    for (;;) {
        struct oframe *f;
        if (!oframe_test_qpop(&oframe_test_to_worker[k], &f)) {
            sched_yield();
            continue;
        }
        if (f == &oframe_test_stop)
            break;
        oframe_test_check_held_foreign(f, 1);
        uint32_t id = oframe_test_id(f);
        if (id % 4 == k) {
            oframe_ref(f, 2); // e.g. two subscribers on this shard
            oframe_test_check_held_foreign(f, 3);
            oframe_unref(f);
            oframe_unref(f);
        }
        if (id % 5 == k)
            oframe_test_worker_return(k, f);
        else
            oframe_unref(f);
        if (id % 7 == k && own < OT_FRAMES) {
            uint32_t gid = OT_FRAMES * (k + 1) + own++;
            struct oframe *g = oframe_test_new(gid);
            if (!g) {
                oframe_test_error();
                continue;
            }
            atomic_fetch_add(&oframe_test_allocs, 1);
            oframe_ref(g, 1);
            oframe_share(g);
            if (g->local != 1 || atomic_load(&g->shared) != 2)
                oframe_test_error();
            oframe_test_worker_return(k, g);
            oframe_unref(g); // races with shard 0's drop of the shared one
        }
    }
    atomic_fetch_add(&oframe_test_workers_done, 1);
    return NULL;
}

static void test_concurrent_fanout(void **state)
{
    (void)state;
    oframe_self = -1;
    for (uint32_t i = 0; i < OT_IDS; i++)
        atomic_store(&oframe_test_frees[i], 0);
    atomic_store(&oframe_test_free_total, 0);
    atomic_store(&oframe_test_double_frees, 0);
    atomic_store(&oframe_test_errors, 0);
    atomic_store(&oframe_test_allocs, 0);
    atomic_store(&oframe_test_workers_done, 0);
    memset(oframe_test_owner_held, 0, sizeof(oframe_test_owner_held));
    for (unsigned k = 0; k < OT_WORKERS; k++) {
        atomic_store(&oframe_test_to_worker[k].head, 0);
        atomic_store(&oframe_test_to_worker[k].tail, 0);
        atomic_store(&oframe_test_to_owner[k].head, 0);
        atomic_store(&oframe_test_to_owner[k].tail, 0);
    }
    pthread_t owner, workers[OT_WORKERS];
    assert_int_equal(pthread_create(&owner, NULL, oframe_test_owner_main, NULL), 0);
    for (unsigned k = 0; k < OT_WORKERS; k++)
        assert_int_equal(
            pthread_create(&workers[k], NULL, oframe_test_worker_main, (void *)(uintptr_t)k), 0);
    assert_int_equal(pthread_join(owner, NULL), 0);
    for (unsigned k = 0; k < OT_WORKERS; k++)
        assert_int_equal(pthread_join(workers[k], NULL), 0);

    assert_int_equal(atomic_load(&oframe_test_errors), 0);
    assert_int_equal(atomic_load(&oframe_test_double_frees), 0);
    unsigned long allocs = atomic_load(&oframe_test_allocs);
    assert_true(allocs > OT_FRAMES); // the workers built some too
    assert_int_equal(atomic_load(&oframe_test_free_total), allocs);
    // Every frame built was freed exactly once, and no id beyond those built was.
    for (uint32_t i = 0; i < OT_FRAMES; i++)
        assert_int_equal(oframe_test_freed(i), 1);
    unsigned long worker_frames = 0;
    for (uint32_t i = OT_FRAMES; i < OT_IDS; i++) {
        unsigned n = oframe_test_freed(i);
        assert_true(n <= 1);
        worker_frames += n;
    }
    assert_int_equal(worker_frames, allocs - OT_FRAMES);
    for (uint32_t i = 0; i < OT_FRAMES; i++)
        assert_int_equal(oframe_test_owner_held[i], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_alloc_on_shard, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_owner_ref_unref, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_outside_shard, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_share_keeps_count, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_share_last_local, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_shared_ref_returns_to_owner, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_reference_outside_shard_thread, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test_setup_teardown(test_share_drop_on_other_shard, oframe_test_setup,
                                        oframe_test_teardown),
        cmocka_unit_test(test_concurrent_fanout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
