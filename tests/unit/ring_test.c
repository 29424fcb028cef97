// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/ring_test.c: single-threaded unit tests for ring/spsc.h. One thread plays both
// producer and consumer, which the threading rule allows because the calls never overlap; the
// two-thread behaviour is exercised by ring_stress_test.c. Programmer-error aborts are checked
// in a forked child so the test process survives them.
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "ring/spsc.h"

#if defined(__SANITIZE_ADDRESS__)
#define RING_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RING_TEST_ASAN 1
#endif
#endif
#ifndef RING_TEST_ASAN
#define RING_TEST_ASAN 0
#endif

// A message whose every field is derived from `i`, so a copy that mixes up slots or fields is
// caught by ring_test_check_msg.
static struct ring_msg ring_test_msg(uint64_t i)
{
    struct ring_msg m = {
        .kind = (uint32_t)i,
        .aux = (uint32_t)(i >> 32) ^ 0xa5a5a5a5u,
        .ptr = (void *)(uintptr_t)(i * 8 + 8),
        .arg = i,
    };
    return m;
}

static void ring_test_check_msg(const struct ring_msg *m, uint64_t i)
{
    struct ring_msg want = ring_test_msg(i);
    assert_int_equal(m->kind, want.kind);
    assert_int_equal(m->aux, want.aux);
    assert_ptr_equal(m->ptr, want.ptr);
    assert_int_equal(m->arg, want.arg);
}

// Pushes messages first..first+n-1 one at a time; every push must succeed.
static void ring_test_push_range(struct ring *r, uint64_t first, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct ring_msg m = ring_test_msg(first + i);
        assert_int_equal(ring_push(r, &m), 0);
    }
}

// Runs fn(arg) in a forked child and returns true when the child died of SIGABRT, which is how
// the ring reports programmer errors. The child's stderr goes to /dev/null so the expected
// assertion message does not clutter the test log.
static bool ring_test_aborts(void (*fn)(uint32_t), uint32_t arg)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDERR_FILENO);
        fn(arg);
        _exit(0); // returned: no abort
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void ring_test_create_capacity(uint32_t capacity)
{
    ring_destroy(ring_create(capacity));
}

static void ring_test_consume_too_many(uint32_t published)
{
    struct ring *r = ring_create(8);
    if (r == NULL)
        _exit(2);
    for (uint32_t i = 0; i < published; i++) {
        struct ring_msg m = ring_test_msg(i);
        (void)ring_push(r, &m);
    }
    ring_publish(r);
    // One more message, staged but not published: consume must not release it either.
    struct ring_msg extra = ring_test_msg(published);
    (void)ring_push(r, &extra);
    ring_consume(r, published + 1);
    ring_destroy(r);
}

static void test_create_destroy(void **state)
{
    (void)state;
    struct ring *r = ring_create(16);
    assert_non_null(r);
    assert_int_equal(ring_capacity(r), 16);
    assert_int_equal(ring_depth(r), 0);
    assert_int_equal(ring_free_slots(r), 16);
    assert_true(ring_empty_consumer(r));
    struct ring_msg out;
    assert_int_equal(ring_pop_batch(r, &out, 1), 0);
    ring_destroy(r);
    ring_destroy(NULL); // like free(NULL)
}

static void test_capacity_validation(void **state)
{
    (void)state;
    // Powers of two are accepted, including the degenerate one-slot ring.
    const uint32_t good[] = {1, 2, 4, 1024, 65536};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct ring *r = ring_create(good[i]);
        assert_non_null(r);
        assert_int_equal(ring_capacity(r), good[i]);
        assert_int_equal(ring_free_slots(r), good[i]);
        ring_destroy(r);
    }
    // Anything else is a programmer error.
    const uint32_t bad[] = {0, 3, 6, 1000, 1025, UINT32_MAX, (UINT32_C(1) << 31) + 1};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_true(ring_test_aborts(ring_test_create_capacity, bad[i]));
    // The check itself must not abort on a good capacity (guards the helper above).
    assert_false(ring_test_aborts(ring_test_create_capacity, 8));
}

static void test_create_out_of_memory(void **state)
{
    (void)state;
    fflush(NULL);
    if (RING_TEST_ASAN) {
        // ASan reserves terabytes of shadow address space, so RLIMIT_AS cannot be used; run a
        // child whose ASan allocator refuses anything above 64 MiB with NULL instead.
        pid_t apid = fork();
        assert_true(apid >= 0);
        if (apid == 0) {
            setenv("ASAN_OPTIONS", "allocator_may_return_null=1:max_allocation_size_mb=64", 1);
            execl("/proc/self/exe", "ring_test", "--oom-child", (char *)NULL);
            _exit(5);
        }
        int st = 0;
        assert_int_equal(waitpid(apid, &st, 0), apid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
        return;
    }
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        // Cap the address space a little above what the child already maps, then ask for a
        // ring of 2^24 slots (384 MiB): the allocation must fail and ring_create return NULL.
        long vm_pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f == NULL || fscanf(f, "%ld", &vm_pages) != 1)
            _exit(3);
        fclose(f);
        rlim_t limit = (rlim_t)vm_pages * (rlim_t)sysconf(_SC_PAGESIZE) + (64u << 20);
        struct rlimit rl = {.rlim_cur = limit, .rlim_max = limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(4);
        struct ring *r = ring_create(UINT32_C(1) << 24);
        _exit(r == NULL ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_push_until_full(void **state)
{
    (void)state;
    struct ring *r = ring_create(8);
    assert_non_null(r);
    for (uint32_t i = 0; i < 8; i++) {
        assert_int_equal(ring_free_slots(r), 8 - i);
        struct ring_msg m = ring_test_msg(i);
        assert_int_equal(ring_push(r, &m), 0);
    }
    struct ring_msg m = ring_test_msg(8);
    assert_int_equal(ring_push(r, &m), -EAGAIN);
    assert_int_equal(ring_free_slots(r), 0);
    // Staged-but-unpublished messages occupy their slots too: publishing frees nothing.
    ring_publish(r);
    assert_int_equal(ring_push(r, &m), -EAGAIN);
    assert_int_equal(ring_depth(r), 8);

    // Consuming one frees exactly one; the producer's stale cached index must be refreshed.
    struct ring_msg out;
    assert_int_equal(ring_pop_batch(r, &out, 1), 1);
    ring_test_check_msg(&out, 0);
    assert_int_equal(ring_push(r, &m), 0);
    struct ring_msg m9 = ring_test_msg(9);
    assert_int_equal(ring_push(r, &m9), -EAGAIN);
    ring_publish(r);

    struct ring_msg all[8];
    assert_int_equal(ring_pop_batch(r, all, 8), 8);
    for (uint32_t i = 0; i < 8; i++)
        ring_test_check_msg(&all[i], i + 1);
    assert_true(ring_empty_consumer(r));
    ring_destroy(r);
}

static void test_unpublished_invisible(void **state)
{
    (void)state;
    struct ring *r = ring_create(8);
    assert_non_null(r);
    ring_test_push_range(r, 0, 3);

    struct ring_msg out[8];
    assert_int_equal(ring_peek_batch(r, out, 8), 0);
    assert_int_equal(ring_pop_batch(r, out, 8), 0);
    assert_true(ring_empty_consumer(r));
    assert_int_equal(ring_depth(r), 0);
    assert_int_equal(ring_free_slots(r), 5);

    ring_publish(r);
    assert_false(ring_empty_consumer(r));
    assert_int_equal(ring_depth(r), 3);

    // A second batch staged after the first publish stays invisible while the first is seen.
    ring_test_push_range(r, 3, 2);
    assert_int_equal(ring_peek_batch(r, out, 8), 3);
    for (uint32_t i = 0; i < 3; i++)
        ring_test_check_msg(&out[i], i);
    ring_consume(r, 3);
    assert_true(ring_empty_consumer(r));
    assert_int_equal(ring_pop_batch(r, out, 8), 0);

    ring_publish(r);
    assert_int_equal(ring_pop_batch(r, out, 8), 2);
    ring_test_check_msg(&out[0], 3);
    ring_test_check_msg(&out[1], 4);
    // Publishing with nothing staged is a no-op.
    ring_publish(r);
    assert_true(ring_empty_consumer(r));
    ring_destroy(r);
}

static void test_batch_publish_consume(void **state)
{
    (void)state;
    struct ring *r = ring_create(16);
    assert_non_null(r);
    struct ring_msg in[10];
    for (uint32_t i = 0; i < 10; i++)
        in[i] = ring_test_msg(100 + i);
    assert_int_equal(ring_push_many(r, in, 10), 10);
    assert_int_equal(ring_push_many(r, in, 0), 0);
    ring_publish(r);

    // Peek does not release: two peeks see the same messages, and the producer's free space
    // does not grow.
    struct ring_msg out[16];
    assert_int_equal(ring_peek_batch(r, out, 4), 4);
    for (uint32_t i = 0; i < 4; i++)
        ring_test_check_msg(&out[i], 100 + i);
    assert_int_equal(ring_peek_batch(r, out, 4), 4);
    ring_test_check_msg(&out[0], 100);
    assert_int_equal(ring_free_slots(r), 6);
    assert_int_equal(ring_peek_batch(r, out, 0), 0);

    // Consume part of what was peeked; the next peek starts after it.
    ring_consume(r, 3);
    assert_int_equal(ring_free_slots(r), 9);
    assert_int_equal(ring_depth(r), 7);
    ring_consume(r, 0);
    assert_int_equal(ring_depth(r), 7);
    assert_int_equal(ring_peek_batch(r, out, 16), 7);
    for (uint32_t i = 0; i < 7; i++)
        ring_test_check_msg(&out[i], 103 + i);

    // Consuming messages that were published but never peeked is allowed.
    ring_consume(r, 7);
    assert_true(ring_empty_consumer(r));
    assert_int_equal(ring_free_slots(r), 16);
    ring_destroy(r);
}

static void test_consume_too_many_aborts(void **state)
{
    (void)state;
    // Releasing more than was published would hand the producer slots the consumer never read.
    assert_true(ring_test_aborts(ring_test_consume_too_many, 0));
    assert_true(ring_test_aborts(ring_test_consume_too_many, 5));
}

static void test_wrap_around(void **state)
{
    (void)state;
    // Indices are free-running uint64 counters that cannot wrap in practice (spsc.h), so what
    // wraps is the slot position: run many laps of a small ring with batch sizes that do not
    // divide the capacity, so batches straddle the end of the slot array at every offset.
    struct ring *r = ring_create(8);
    assert_non_null(r);
    uint64_t next_in = 0;
    uint64_t next_out = 0;
    struct ring_msg in[8];
    struct ring_msg out[8];
    for (uint32_t round = 0; round < 1000; round++) {
        uint32_t want_in = 1 + round % 7;
        for (uint32_t i = 0; i < want_in; i++)
            in[i] = ring_test_msg(next_in + i);
        uint32_t staged = ring_push_many(r, in, want_in);
        next_in += staged;
        ring_publish(r);
        assert_int_equal(ring_depth(r), next_in - next_out);

        uint32_t want_out = 1 + (round * 3) % 5;
        uint32_t got = ring_pop_batch(r, out, want_out);
        uint64_t visible = next_in - next_out;
        assert_int_equal(got, visible < want_out ? visible : want_out);
        for (uint32_t i = 0; i < got; i++)
            ring_test_check_msg(&out[i], next_out + i);
        next_out += got;
    }
    assert_true(next_out > 100 * 8); // many laps, so every slot offset was crossed
    uint32_t rest = ring_pop_batch(r, out, 8);
    for (uint32_t i = 0; i < rest; i++)
        ring_test_check_msg(&out[i], next_out + i);
    next_out += rest;
    assert_int_equal(next_out, next_in);
    assert_true(ring_empty_consumer(r));
    ring_destroy(r);
}

static void test_depth(void **state)
{
    (void)state;
    struct ring *r = ring_create(32);
    assert_non_null(r);
    ring_test_push_range(r, 0, 5);
    assert_int_equal(ring_depth(r), 0); // staged is not counted
    ring_publish(r);
    assert_int_equal(ring_depth(r), 5);
    ring_test_push_range(r, 5, 27);
    ring_publish(r);
    assert_int_equal(ring_depth(r), 32);
    struct ring_msg out[32];
    assert_int_equal(ring_peek_batch(r, out, 2), 2);
    assert_int_equal(ring_depth(r), 32); // peeked is not consumed
    ring_consume(r, 2);
    assert_int_equal(ring_depth(r), 30);
    assert_int_equal(ring_pop_batch(r, out, 32), 30);
    assert_int_equal(ring_depth(r), 0);
    ring_destroy(r);
}

static void test_push_many_partial(void **state)
{
    (void)state;
    struct ring *r = ring_create(8);
    assert_non_null(r);
    ring_test_push_range(r, 0, 6);
    struct ring_msg in[5];
    for (uint32_t i = 0; i < 5; i++)
        in[i] = ring_test_msg(6 + i);
    assert_int_equal(ring_push_many(r, in, 5), 2);
    assert_int_equal(ring_push_many(r, in + 2, 3), 0);
    assert_int_equal(ring_free_slots(r), 0);
    ring_publish(r);

    // After the consumer frees 2, a push_many of 3 stages exactly the 2 that fit; the
    // producer's cached head is stale (says full) and must be refreshed.
    struct ring_msg out[8];
    assert_int_equal(ring_pop_batch(r, out, 2), 2);
    assert_int_equal(ring_push_many(r, in + 2, 3), 2);
    ring_publish(r);
    assert_int_equal(ring_pop_batch(r, out, 8), 8);
    for (uint32_t i = 0; i < 8; i++)
        ring_test_check_msg(&out[i], 2 + i);
    assert_true(ring_empty_consumer(r));
    ring_destroy(r);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--oom-child") == 0) {
        // The ASan child of test_create_out_of_memory: 2^24 slots (384 MiB) must fail.
        struct ring *r = ring_create(UINT32_C(1) << 24);
        return r == NULL ? 0 : 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_destroy),
        cmocka_unit_test(test_capacity_validation),
        cmocka_unit_test(test_create_out_of_memory),
        cmocka_unit_test(test_push_until_full),
        cmocka_unit_test(test_unpublished_invisible),
        cmocka_unit_test(test_batch_publish_consume),
        cmocka_unit_test(test_consume_too_many_aborts),
        cmocka_unit_test(test_wrap_around),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_push_many_partial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
