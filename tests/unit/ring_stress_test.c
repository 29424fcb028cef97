// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/ring_stress_test.c: two-thread stress test for ring/spsc.h. A producer thread
// pushes consecutive uint64 counters through a small ring in randomly sized batches (sometimes
// one ring_push, sometimes several batches per ring_publish) while a consumer thread drains it
// with randomly sized ring_pop_batch calls and peek-then-partial-consume calls. The consumer
// checks that every counter arrives exactly once, in order, with all four fields intact. The
// threads own their side of the ring; results travel back through `struct stress` and are
// asserted on the main thread after both are joined (cmocka's asserts are not thread-safe).
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <cmocka.h>

#include "ring/spsc.h"

// Small on purpose: the ring is full or empty most of the time, so the cached-index refresh
// and the wrap of the slot position run millions of times.
#define STRESS_CAPACITY 1024
// 10^8 items: about 1 s in an -O2 build and about 3 s in the ASan+UBSan -O0 build on two cores,
// so the sanitizer build needs no smaller count. Overridable with -DSTRESS_ITEMS=... for slower
// checkers (ThreadSanitizer) run by hand.
#ifndef STRESS_ITEMS
#define STRESS_ITEMS UINT64_C(100000000)
#endif
// Batch sizes are drawn uniformly from [1, max]. The producer's max stays well below the
// capacity so a batch usually fits; the consumer's is a quarter of the ring.
#define STRESS_PUSH_BATCH_MAX 64
#define STRESS_POP_BATCH_MAX  256
// Spins (with a CPU pause hint) before a waiting side yields its core. With both threads on
// two cores spinning wins; yielding keeps a loaded or one-core machine from stalling.
#define STRESS_SPINS_BEFORE_YIELD 64
// A side that has waited past this deadline gives up, so a lost publish or a stuck cached index
// fails the test with a message instead of hanging until ctest's 300 s timeout. Well above
// the sanitizer build's few seconds, below the 120 s budget a sanitizer run is allowed.
#ifndef STRESS_DEADLINE_S
#define STRESS_DEADLINE_S 100.0
#endif

#if defined(__x86_64__) || defined(__i386__)
#define STRESS_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define STRESS_CPU_RELAX() __asm__ volatile("yield" ::: "memory")
#else
#define STRESS_CPU_RELAX() ((void)0)
#endif

struct stress {
    struct ring *ring;
    uint64_t items;
    // Set by whichever side gives up first, so the other does not wait forever.
    atomic_bool stop;
    double deadline_s;     // CLOCK_MONOTONIC seconds
    atomic_bool timed_out; // a waiting side passed deadline_s

    // Written by the consumer thread, read by the main thread after join.
    uint64_t received;
    bool mismatch;
    uint64_t mismatch_expected;
    struct ring_msg mismatch_got;
    bool extra_items; // the ring was not empty after the last expected item
    uint64_t consumer_waits;

    // Written by the producer thread, read by the main thread after join.
    uint64_t sent;
    uint64_t producer_waits;
};

static struct ring_msg stress_msg(uint64_t i)
{
    struct ring_msg m = {
        .kind = (uint32_t)i,
        .aux = (uint32_t)(i >> 32) ^ 0x5a5a5a5au,
        .ptr = (void *)(uintptr_t)(i + 1),
        .arg = i,
    };
    return m;
}

static bool stress_msg_ok(const struct ring_msg *m, uint64_t i)
{
    struct ring_msg want = stress_msg(i);
    return m->kind == want.kind && m->aux == want.aux && m->ptr == want.ptr && m->arg == want.arg;
}

// xorshift32: cheap, deterministic per seed, good enough to vary batch sizes.
static uint32_t stress_rand(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

static double stress_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Called by a side that found the ring full (producer) or empty (consumer).
static void stress_wait(struct stress *s, uint32_t *spins)
{
    if (++*spins < STRESS_SPINS_BEFORE_YIELD) {
        STRESS_CPU_RELAX();
        return;
    }
    *spins = 0;
    sched_yield();
    if (stress_now_s() > s->deadline_s) {
        atomic_store_explicit(&s->timed_out, true, memory_order_relaxed);
        atomic_store_explicit(&s->stop, true, memory_order_relaxed);
    }
}

static void *stress_producer(void *arg)
{
    struct stress *s = arg;
    struct ring *r = s->ring;
    struct ring_msg batch[STRESS_PUSH_BATCH_MAX];
    uint32_t rng = 0x9e3779b9u;
    uint64_t next = 0;
    uint32_t spins = 0;

    while (next < s->items) {
        uint32_t rnd = stress_rand(&rng);
        uint32_t want = 1 + rnd % STRESS_PUSH_BATCH_MAX;
        if (want > s->items - next)
            want = (uint32_t)(s->items - next);
        for (uint32_t i = 0; i < want; i++)
            batch[i] = stress_msg(next + i);

        uint32_t done = 0;
        while (done < want) {
            uint32_t n;
            if (want - done == 1)
                n = ring_push(r, &batch[done]) == 0 ? 1 : 0;
            else
                n = ring_push_many(r, batch + done, want - done);
            done += n;
            if (n == 0) {
                // Full: make what is staged visible, or the consumer can never free a slot.
                ring_publish(r);
                s->producer_waits++;
                if (atomic_load_explicit(&s->stop, memory_order_relaxed)) {
                    s->sent = next + done;
                    return NULL;
                }
                stress_wait(s, &spins);
            }
        }
        next += want;
        // Three batches in four are published at once; the fourth rides with the next one, so
        // a publish covering several push_many calls is exercised too.
        if ((rnd >> 8) & 3)
            ring_publish(r);
    }
    ring_publish(r);
    s->sent = next;
    return NULL;
}

// Checks out[0..n) against the counters starting at `expected`; records the first mismatch.
static bool stress_check(struct stress *s, const struct ring_msg *out, uint32_t n,
                         uint64_t expected)
{
    for (uint32_t i = 0; i < n; i++) {
        if (expected + i >= s->items || !stress_msg_ok(&out[i], expected + i)) {
            s->mismatch = true;
            s->mismatch_expected = expected + i;
            s->mismatch_got = out[i];
            atomic_store_explicit(&s->stop, true, memory_order_relaxed);
            return false;
        }
    }
    return true;
}

static void *stress_consumer(void *arg)
{
    struct stress *s = arg;
    struct ring *r = s->ring;
    struct ring_msg out[STRESS_POP_BATCH_MAX];
    uint32_t rng = 0x7f4a7c15u;
    uint64_t expected = 0;
    uint32_t spins = 0;

    while (expected < s->items) {
        uint32_t rnd = stress_rand(&rng);
        uint32_t max = 1 + rnd % STRESS_POP_BATCH_MAX;
        bool partial = ((rnd >> 12) & 7) == 0;
        uint32_t n = partial ? ring_peek_batch(r, out, max) : ring_pop_batch(r, out, max);
        if (n == 0) {
            s->consumer_waits++;
            if (atomic_load_explicit(&s->stop, memory_order_relaxed))
                break;
            stress_wait(s, &spins);
            continue;
        }
        if (!stress_check(s, out, n, expected))
            break;
        if (partial) {
            // Release only the first half (at least one); the rest must come back, unchanged
            // and in order, on the next peek or pop.
            uint32_t keep = n / 2;
            ring_consume(r, n - keep);
            n -= keep;
        }
        expected += n;
    }
    s->received = expected;
    if (!s->mismatch && expected == s->items) {
        // The producer sent exactly `items`; anything still visible is a duplicate or ghost.
        // It has published its last batch before we could read the last item, so one check
        // after that suffices.
        s->extra_items = !ring_empty_consumer(r);
    }
    return NULL;
}

static void test_two_thread_stress(void **state)
{
    (void)state;
    struct stress s = {.items = STRESS_ITEMS};
    atomic_init(&s.stop, false);
    atomic_init(&s.timed_out, false);
    s.ring = ring_create(STRESS_CAPACITY);
    assert_non_null(s.ring);

    printf("ring stress: %" PRIu64 " items through a %u-slot ring\n", s.items,
           (unsigned)STRESS_CAPACITY);
    double start_s = stress_now_s();
    s.deadline_s = start_s + STRESS_DEADLINE_S;
    pthread_t producer;
    pthread_t consumer;
    assert_int_equal(pthread_create(&consumer, NULL, stress_consumer, &s), 0);
    assert_int_equal(pthread_create(&producer, NULL, stress_producer, &s), 0);
    assert_int_equal(pthread_join(producer, NULL), 0);
    assert_int_equal(pthread_join(consumer, NULL), 0);
    double elapsed_s = stress_now_s() - start_s;

    printf("ring stress: %.2f s, %.1f M items/s, producer waits %" PRIu64
           ", consumer waits %" PRIu64 "\n",
           elapsed_s, (double)s.received / elapsed_s / 1e6, s.producer_waits, s.consumer_waits);
    if (s.mismatch)
        printf("ring stress: expected item %" PRIu64 ", got kind=%" PRIu32 " aux=%" PRIu32
               " ptr=%p arg=%" PRIu64 "\n",
               s.mismatch_expected, s.mismatch_got.kind, s.mismatch_got.aux, s.mismatch_got.ptr,
               s.mismatch_got.arg);
    if (atomic_load(&s.timed_out))
        printf("ring stress: not done by the %.0f s deadline: sent %" PRIu64 ", received %" PRIu64
               "\n",
               (double)STRESS_DEADLINE_S, s.sent, s.received);
    assert_false(atomic_load(&s.timed_out));
    assert_false(s.mismatch);
    assert_int_equal(s.sent, s.items);
    assert_int_equal(s.received, s.items);
    assert_false(s.extra_items);
    // Both threads are joined, so this thread may act as either side now.
    assert_int_equal(ring_depth(s.ring), 0);
    assert_true(ring_empty_consumer(s.ring));
    assert_int_equal(ring_free_slots(s.ring), STRESS_CAPACITY);
    ring_destroy(s.ring);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_thread_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
