// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/deadline_test.c: unit tests for handlers/deadline.h, the intrusive min-heap of
// deadlines. The nodes live inside test records (not at offset 0, so deadline_entry is
// exercised), and every test checks the heap's own invariant (each node at its recorded index,
// no node due before its parent) from outside, so the checks hold in release builds too, where
// the library's NX_ASSERT_DEBUG walk is compiled out. A randomized test compares the heap with
// a plain array after every operation. Programmer-error aborts are checked in a forked child.
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "handlers/deadline.h"

// A record that embeds a node after other fields, as a request does.
struct item {
    uint64_t tag;
    char pad[13];
    struct deadline_node node;
    bool in_heap; // the test's own view, for the model check
};

static struct item *item_of(struct deadline_node *n)
{
    return deadline_entry(n, struct item, node);
}

static void items_init(struct item *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        memset(&v[i], 0, sizeof(v[i]));
        v[i].tag = i;
        deadline_node_init(&v[i].node);
    }
}

// splitmix64: a fixed-seed generator, so every run sees the same sequence on every libc.
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rng_below(uint32_t n)
{
    return (uint32_t)(rng_next() % n);
}

// The heap invariant, checked through the public struct: count matches, every node records its
// index, no node is due before its parent.
static void check_heap(const struct deadline_heap *h)
{
    assert_int_equal(deadline_count(h), h->len);
    assert_true(h->len <= h->cap);
    for (uint32_t i = 0; i < h->len; i++) {
        assert_non_null(h->v[i]);
        assert_int_equal(h->v[i]->idx, i);
        if (i > 0)
            assert_true(h->v[(i - 1) / 2]->due_ns <= h->v[i]->due_ns);
    }
    if (h->len)
        assert_ptr_equal(deadline_min(h), h->v[0]);
    else
        assert_null(deadline_min(h));
}

static void push_due(struct deadline_heap *h, struct item *it, int64_t due)
{
    deadline_update(h, &it->node, due); // not in a heap: only stores the due time
    assert_int_equal(it->node.idx, DEADLINE_NONE);
    assert_int_equal(deadline_push(h, &it->node), 0);
    assert_int_not_equal(it->node.idx, DEADLINE_NONE);
    it->in_heap = true;
}

// Takes the minimum out and returns its record; the heap must not be empty.
static struct item *pop_min(struct deadline_heap *h)
{
    struct deadline_node *n = deadline_min(h);
    assert_non_null(n);
    uint32_t before = deadline_count(h);
    deadline_remove(h, n);
    assert_int_equal(deadline_count(h), before - 1);
    assert_int_equal(n->idx, DEADLINE_NONE);
    check_heap(h);
    struct item *it = item_of(n);
    it->in_heap = false;
    return it;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

// Pops everything and checks that the due times come out equal to `want` (sorted), each record
// exactly once.
static void pop_all_expect(struct deadline_heap *h, struct item *items, uint32_t n_items,
                           const int64_t *want, uint32_t n_want)
{
    assert_int_equal(deadline_count(h), n_want);
    bool *seen = calloc(n_items, 1);
    assert_non_null(seen);
    for (uint32_t i = 0; i < n_want; i++) {
        struct item *it = pop_min(h);
        assert_int_equal(it->node.due_ns, want[i]);
        uint64_t k = (uint64_t)(it - items);
        assert_true(k < n_items);
        assert_false(seen[k]);
        seen[k] = true;
    }
    assert_int_equal(deadline_count(h), 0);
    assert_null(deadline_min(h));
    free(seen);
}

static void test_empty(void **state)
{
    (void)state;
    struct deadline_heap h;
    deadline_heap_init(&h);
    assert_null(deadline_min(&h));
    assert_int_equal(deadline_count(&h), 0);
    check_heap(&h);
    deadline_heap_free(&h);
    deadline_heap_free(&h); // freed twice: init left it empty
    assert_null(h.v);
}

static void test_entry(void **state)
{
    (void)state;
    struct item v[3];
    items_init(v, 3);
    for (uint32_t i = 0; i < 3; i++) {
        assert_ptr_equal(item_of(&v[i].node), &v[i]);
        assert_int_equal(item_of(&v[i].node)->tag, i);
    }
    assert_int_equal(v[1].node.idx, DEADLINE_NONE);
    assert_int_equal(v[1].node.due_ns, 0);
}

static void test_push_random_pops_sorted(void **state)
{
    (void)state;
    enum { N = 1000 };
    static struct item v[N];
    int64_t want[N];
    items_init(v, N);
    rng_state = 1;
    struct deadline_heap h;
    deadline_heap_init(&h);
    for (uint32_t i = 0; i < N; i++) {
        // Negative, zero and large due times alike.
        int64_t due = (int64_t)(rng_next() % 2000001) - 1000000;
        want[i] = due;
        push_due(&h, &v[i], due);
        check_heap(&h);
    }
    qsort(want, N, sizeof(want[0]), cmp_i64);
    assert_true(want[0] < want[N - 1]); // the input really was spread out
    pop_all_expect(&h, v, N, want, N);
    deadline_heap_free(&h);
}

static void test_update_earlier_and_later(void **state)
{
    (void)state;
    struct item v[10];
    items_init(v, 10);
    struct deadline_heap h;
    deadline_heap_init(&h);
    for (uint32_t i = 0; i < 10; i++)
        push_due(&h, &v[9 - i], (int64_t)(10 - i) * 10); // v[k] due (k + 1) * 10
    assert_ptr_equal(item_of(deadline_min(&h)), &v[0]);

    // v[6] (due 70), from deep in the heap to the front.
    deadline_update(&h, &v[6].node, 5);
    check_heap(&h);
    assert_ptr_equal(item_of(deadline_min(&h)), &v[6]);
    assert_int_equal(deadline_min(&h)->due_ns, 5);

    // Then to the back: v[0] (due 10) is first again.
    deadline_update(&h, &v[6].node, 200);
    check_heap(&h);
    assert_ptr_equal(item_of(deadline_min(&h)), &v[0]);

    // The front node moved later, past some but not all others.
    deadline_update(&h, &v[0].node, 55);
    check_heap(&h);
    assert_ptr_equal(item_of(deadline_min(&h)), &v[1]);

    // An update to the same due time changes nothing.
    deadline_update(&h, &v[3].node, 40);
    check_heap(&h);

    const int64_t want[10] = {20, 30, 40, 50, 55, 60, 80, 90, 100, 200};
    assert_ptr_equal(pop_min(&h), &v[1]);
    assert_ptr_equal(pop_min(&h), &v[2]);
    assert_ptr_equal(pop_min(&h), &v[3]);
    assert_ptr_equal(pop_min(&h), &v[4]);
    assert_ptr_equal(pop_min(&h), &v[0]);
    pop_all_expect(&h, v, 10, want + 5, 5);
    deadline_heap_free(&h);
}

static void test_remove_middle(void **state)
{
    (void)state;
    enum { N = 100 };
    struct item v[N];
    items_init(v, N);
    struct deadline_heap h;
    deadline_heap_init(&h);
    for (uint32_t i = 0; i < N; i++)
        push_due(&h, &v[(i * 37) % N], (int64_t)((i * 37) % N) * 10); // v[k] due 10k
    // Remove by position in the array (interior nodes and leaves), then some by record.
    bool removed[N] = {false};
    const uint32_t positions[] = {50, 1, 33, 70, 2, 40};
    for (size_t k = 0; k < sizeof(positions) / sizeof(positions[0]); k++) {
        struct deadline_node *n = h.v[positions[k]];
        removed[item_of(n)->tag] = true;
        deadline_remove(&h, n);
        assert_int_equal(n->idx, DEADLINE_NONE);
        check_heap(&h);
    }
    const uint32_t records[] = {0, 99, 57};
    for (size_t k = 0; k < sizeof(records) / sizeof(records[0]); k++) {
        if (removed[records[k]])
            continue;
        removed[records[k]] = true;
        deadline_remove(&h, &v[records[k]].node);
        check_heap(&h);
    }
    int64_t want[N];
    uint32_t n_want = 0;
    for (uint32_t k = 0; k < N; k++)
        if (!removed[k])
            want[n_want++] = (int64_t)k * 10;
    assert_true(n_want <= N - 6);
    pop_all_expect(&h, v, N, want, n_want);
    deadline_heap_free(&h);
}

static void test_remove_absent(void **state)
{
    (void)state;
    struct item v[5];
    items_init(v, 5);
    struct deadline_heap h;
    deadline_heap_init(&h);
    for (uint32_t i = 0; i < 4; i++)
        push_due(&h, &v[i], 4 - (int64_t)i);
    struct deadline_node *before[4];
    memcpy(before, h.v, sizeof(before));

    // Never pushed.
    deadline_remove(&h, &v[4].node);
    assert_int_equal(deadline_count(&h), 4);
    assert_memory_equal(before, h.v, sizeof(before));
    assert_int_equal(v[4].node.idx, DEADLINE_NONE);

    // Removed once, then again.
    deadline_remove(&h, &v[1].node);
    assert_int_equal(deadline_count(&h), 3);
    memcpy(before, h.v, 3 * sizeof(before[0]));
    deadline_remove(&h, &v[1].node);
    assert_int_equal(deadline_count(&h), 3);
    assert_memory_equal(before, h.v, 3 * sizeof(before[0]));
    check_heap(&h);

    // Updating a node in no heap stores the due time and leaves the heap alone.
    deadline_update(&h, &v[4].node, -7);
    assert_int_equal(v[4].node.due_ns, -7);
    assert_int_equal(v[4].node.idx, DEADLINE_NONE);
    assert_int_equal(deadline_min(&h)->due_ns, 1);
    // Pushed now, it sorts by that time.
    assert_int_equal(deadline_push(&h, &v[4].node), 0);
    assert_ptr_equal(item_of(deadline_min(&h)), &v[4]);
    check_heap(&h);
    deadline_heap_free(&h);
}

static void test_equal_due(void **state)
{
    (void)state;
    enum { N = 300 };
    static struct item v[N];
    items_init(v, N);
    struct deadline_heap h;
    deadline_heap_init(&h);
    // Three groups of 100 equal due times (0, 1000, 2000), interleaved.
    for (uint32_t i = 0; i < N; i++)
        push_due(&h, &v[i], (int64_t)(i % 3) * 1000);
    check_heap(&h);
    // Updates and removals among equals.
    deadline_update(&h, &v[7].node, 0); // 1000 -> 0
    deadline_update(&h, &v[9].node, 0); // 0 -> 0
    check_heap(&h);
    deadline_remove(&h, &v[150].node); // a 0
    struct deadline_node *mid = h.v[h.len / 2];
    int64_t mid_due = mid->due_ns;
    deadline_remove(&h, mid);
    check_heap(&h);
    assert_int_equal(deadline_count(&h), N - 2);
    uint32_t count[3] = {0, 0, 0};
    int64_t prev = INT64_MIN;
    while (deadline_count(&h)) {
        struct item *it = pop_min(&h);
        assert_true(it->node.due_ns >= prev);
        prev = it->node.due_ns;
        assert_true(prev == 0 || prev == 1000 || prev == 2000);
        count[prev / 1000]++;
    }
    assert_int_equal(count[0], 100 - (mid_due == 0));
    assert_int_equal(count[1], 99 - (mid_due == 1000));
    assert_int_equal(count[2], 100 - (mid_due == 2000));
    assert_null(deadline_min(&h));
    deadline_heap_free(&h);
}

// The randomized model check: a pool of records, each in the heap or not, and the reference
// minimum computed by scanning the pool after every operation.
static void test_model(void **state)
{
    (void)state;
    enum { POOL = 512, OPS = 100000 };
    static struct item v[POOL];
    items_init(v, POOL);
    rng_state = 0x5eed;
    struct deadline_heap h;
    deadline_heap_init(&h);
    uint32_t in = 0, pushes = 0, removes = 0, updates = 0, absent_ops = 0;
    for (uint32_t op = 0; op < OPS; op++) {
        struct item *it = &v[rng_below(POOL)];
        // A narrow range of due times, so that ties are frequent.
        int64_t due = (int64_t)rng_below(4096) - 1024;
        switch (rng_below(3)) {
        case 0:
            if (it->in_heap) {
                deadline_update(&h, &it->node, due); // cannot push twice: update instead
                updates++;
                break;
            }
            it->node.due_ns = due;
            assert_int_equal(deadline_push(&h, &it->node), 0);
            it->in_heap = true;
            in++;
            pushes++;
            break;
        case 1:
            absent_ops += !it->in_heap;
            deadline_remove(&h, &it->node);
            assert_int_equal(it->node.idx, DEADLINE_NONE);
            in -= it->in_heap;
            it->in_heap = false;
            removes++;
            break;
        default:
            absent_ops += !it->in_heap;
            deadline_update(&h, &it->node, due);
            assert_int_equal(it->node.due_ns, due);
            updates++;
            break;
        }
        // The reference: the smallest due time among the records in the heap.
        bool any = false;
        int64_t ref = 0;
        for (uint32_t k = 0; k < POOL; k++)
            if (v[k].in_heap && (!any || v[k].node.due_ns < ref)) {
                ref = v[k].node.due_ns;
                any = true;
            }
        assert_int_equal(deadline_count(&h), in);
        struct deadline_node *m = deadline_min(&h);
        if (!any) {
            assert_null(m);
            continue;
        }
        assert_non_null(m);
        assert_int_equal(m->due_ns, ref);
        assert_true(item_of(m)->in_heap);
        check_heap(&h);
    }
    // Every kind of operation ran often, including on records in no heap.
    assert_true(pushes > OPS / 10 && removes > OPS / 10 && updates > OPS / 10);
    assert_true(absent_ops > OPS / 20);
    assert_true(in > POOL / 8);
    deadline_heap_free(&h);
}

static void test_growth(void **state)
{
    (void)state;
    enum { N = 1000 };
    static struct item v[N];
    int64_t want[N];
    items_init(v, N);
    rng_state = 42;
    struct deadline_heap h;
    deadline_heap_init(&h);
    assert_int_equal(h.cap, 0); // nothing allocated before the first push
    for (uint32_t i = 0; i < N; i++) {
        want[i] = (int64_t)rng_below(1u << 20);
        push_due(&h, &v[i], want[i]);
        // Starts at 64 and doubles: the smallest 64 * 2^k that holds them.
        uint32_t cap = 64;
        while (cap < i + 1)
            cap *= 2;
        assert_int_equal(h.cap, cap);
    }
    assert_int_equal(h.cap, 1024);
    check_heap(&h);
    qsort(want, N, sizeof(want[0]), cmp_i64);
    pop_all_expect(&h, v, N, want, N);
    deadline_heap_free(&h);
    assert_null(h.v);
    assert_int_equal(h.cap, 0);
}

// Runs fn(arg) in a forked child and returns true when the child died of SIGABRT (NX_ASSERT).
// The child's stderr goes to /dev/null so the expected message does not clutter the log.
static bool aborts(void (*fn)(int), int arg)
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

// arg 0: valid use; 1: push a node already in the heap; 2: remove a node whose index names
// another node's slot; 3: update such a node; 4: remove a node whose index is past the end.
static void misuse(int arg)
{
    struct item v[3];
    items_init(v, 3);
    struct deadline_heap h;
    deadline_heap_init(&h);
    for (uint32_t i = 0; i < 3; i++) {
        v[i].node.due_ns = i;
        if (deadline_push(&h, &v[i].node) < 0)
            _exit(2);
    }
    struct item stray;
    items_init(&stray, 1);
    switch (arg) {
    case 1:
        (void)deadline_push(&h, &v[1].node);
        break;
    case 2:
        stray.node.idx = 1;
        deadline_remove(&h, &stray.node);
        break;
    case 3:
        stray.node.idx = 2;
        deadline_update(&h, &stray.node, 0);
        break;
    case 4:
        stray.node.idx = 3;
        deadline_remove(&h, &stray.node);
        break;
    default:
        deadline_update(&h, &v[2].node, -1);
        deadline_remove(&h, &v[1].node);
        deadline_remove(&h, &stray.node);
        break;
    }
    deadline_heap_free(&h);
}

static void test_misuse_aborts(void **state)
{
    (void)state;
    assert_false(aborts(misuse, 0)); // guards the helper: valid use does not abort
    for (int arg = 1; arg <= 4; arg++)
        assert_true(aborts(misuse, arg));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_entry),
        cmocka_unit_test(test_push_random_pops_sorted),
        cmocka_unit_test(test_update_earlier_and_later),
        cmocka_unit_test(test_remove_middle),
        cmocka_unit_test(test_remove_absent),
        cmocka_unit_test(test_equal_due),
        cmocka_unit_test(test_model),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_misuse_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
