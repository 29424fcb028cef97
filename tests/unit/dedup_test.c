// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/dedup_test.c: unit tests for broker/dedup.h, the per-campaign duplicate window.
// The documented semantics: a hash accepted at time t is a duplicate until the window has
// passed (an entry exactly window_ns old still counts; a duplicate is not recorded, so it does
// not extend the window), and at most entries_max entries are remembered, the oldest
// forgotten first. Tests cover the window, the FIFO bound, growth of the table up to (and never
// past) the bound, hashes chosen to collide in the index (so expiry and eviction delete from the
// middle of probe runs), dedup_key, and a randomized model check with a fixed seed against a
// plain reference of those semantics, for power-of-two and other entries_max values (the config
// accepts any value in 16..2^24). Runs that could loop forever go to a forked child with an
// alarm, so a hang is reported as a failure.
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
#include <unistd.h>

#include <cmocka.h>

#include "broker/dedup.h"

#define MS         1000000LL /* ns */
#define BIG_WINDOW (1LL << 60)

// splitmix64: a small PRNG with a fixed seed, so failures reproduce.
static uint64_t dedup_test_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The i-th test hash (i >= 0): nonzero, distinct for distinct i, spread over all bits.
static uint64_t dedup_test_hash(uint64_t i)
{
    uint64_t s = i;
    return dedup_test_rand(&s) | (1ull << 63);
}

// The table's size fields stay within the bound: used after every operation of the tests below.
static void dedup_test_check_bounds(const struct dedup *d)
{
    assert_true(d->count <= d->cap);
    assert_true(d->cap <= d->cap_max);
    if (d->cap) {
        assert_non_null(d->fifo_hash);
        assert_non_null(d->fifo_ns);
        assert_non_null(d->index);
        assert_true(d->head < d->cap);
        // The index: a power of two of slots (its probe wraps with the mask), at least 2 * cap.
        assert_int_equal((d->index_mask + 1) & d->index_mask, 0);
        assert_true((uint64_t)d->index_mask + 1 >= 2 * (uint64_t)d->cap);
    }
}

static void test_init_free_empty(void **state)
{
    (void)state;
    struct dedup d;
    memset(&d, 0xa5, sizeof(d)); // init must not depend on prior contents
    dedup_init(&d, 1024);
    assert_int_equal(d.cap_max, 1024);
    assert_int_equal(d.cap, 0);
    assert_int_equal(d.count, 0);
    assert_null(d.fifo_hash); // nothing allocated until the first insert
    assert_null(d.index);
    dedup_free(&d); // freeing an unused table is fine
    assert_int_equal(d.cap_max, 1024);
    assert_int_equal(d.cap, 0);
    assert_null(d.fifo_hash);
    // The bound is exactly what was configured, even below the first table size (64).
    dedup_init(&d, 16);
    assert_int_equal(d.cap_max, 16);
    dedup_free(&d);
}

static void test_window(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 1024);
    const int64_t w = 3000 * MS, t0 = 1000 * MS;
    const uint64_t a = dedup_test_hash(1), b = dedup_test_hash(2);

    assert_false(dedup_check_insert(&d, a, t0, w)); // new
    assert_int_equal(d.count, 1);
    assert_true(dedup_check_insert(&d, a, t0, w)); // same instant
    assert_true(dedup_check_insert(&d, a, t0 + 1, w));
    assert_false(dedup_check_insert(&d, b, t0 + 1, w)); // another hash is not a duplicate
    assert_true(dedup_check_insert(&d, b, t0 + 2, w));
    assert_true(dedup_check_insert(&d, a, t0 + w / 2, w));
    assert_int_equal(d.count, 2); // duplicates are not recorded
    assert_true(dedup_check_insert(&d, a, t0 + w - 1, w));
    assert_true(dedup_check_insert(&d, a, t0 + w, w)); // exactly window_ns old: still inside
    // Past the window: accepted again, although it was seen as a duplicate at t0 + w (a
    // duplicate does not extend the window).
    assert_false(dedup_check_insert(&d, a, t0 + w + 1, w));
    // b (accepted at t0 + 1) is still inside its window at t0 + w + 1...
    assert_true(dedup_check_insert(&d, b, t0 + w + 1, w));
    // ...and has left it one nanosecond later, when a (re-accepted at t0 + w + 1) has not.
    assert_false(dedup_check_insert(&d, b, t0 + w + 2, w));
    assert_true(dedup_check_insert(&d, a, t0 + w + 2, w));
    assert_true(dedup_check_insert(&d, a, t0 + 2 * w + 1, w));
    assert_false(dedup_check_insert(&d, a, t0 + 2 * w + 2, w));
    dedup_test_check_bounds(&d);
    dedup_free(&d);
}

// Entries that leave the window are forgotten, which frees their room.
static void test_window_expiry_empties_table(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 256);
    const int64_t w = 200; // all 200 insertions fit in it
    for (uint64_t i = 0; i < 200; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), (int64_t)i, w));
    assert_int_equal(d.count, 200);
    // At time 350 the entries of times < 150 have left the window (350 - t > 200).
    assert_false(dedup_check_insert(&d, dedup_test_hash(1000), 350, w));
    assert_int_equal(d.count, 51); // times 150..199, plus the new one
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(dedup_check_insert(&d, dedup_test_hash(i), 350, w), i >= 150);
    // The expired ones were inserted again by the loop just above.
    assert_int_equal(d.count, 201);
    dedup_test_check_bounds(&d);
    dedup_free(&d);
}

// Full table: the oldest entry is forgotten first, whatever the window.
static void test_fifo_bound(void **state)
{
    (void)state;
    enum { N = 1024 };
    struct dedup d;
    dedup_init(&d, N);
    for (uint64_t i = 0; i <= N; i++) { // N + 1 distinct hashes
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), (int64_t)i, BIG_WINDOW));
        dedup_test_check_bounds(&d);
        assert_int_equal(d.count, i < N ? i + 1 : N);
    }
    assert_int_equal(d.cap, N);
    assert_int_equal(d.count, N);
    // Hashes 1..N are remembered (checked newest first: a duplicate is not recorded, so the
    // checks do not disturb the table).
    for (uint64_t i = N; i >= 1; i--)
        assert_true(dedup_check_insert(&d, dedup_test_hash(i), N + 1, BIG_WINDOW));
    assert_int_equal(d.count, N);
    // Hash 0, the oldest, was forgotten: it is new, and inserting it forgets hash 1.
    assert_false(dedup_check_insert(&d, dedup_test_hash(0), N + 2, BIG_WINDOW));
    assert_false(dedup_check_insert(&d, dedup_test_hash(1), N + 3, BIG_WINDOW));
    assert_true(dedup_check_insert(&d, dedup_test_hash(0), N + 4, BIG_WINDOW));
    assert_true(dedup_check_insert(&d, dedup_test_hash(3), N + 4, BIG_WINDOW));
    assert_false(dedup_check_insert(&d, dedup_test_hash(2), N + 5, BIG_WINDOW));
    assert_int_equal(d.count, N);
    assert_int_equal(d.cap, N);
    dedup_test_check_bounds(&d);
    dedup_free(&d);
}

// The table starts at 64 entries and doubles only when full, never past entries_max, and the
// entries survive each growth (also when the FIFO ring has wrapped before growing).
static void test_growth_bounded(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 4096);
    uint32_t expect_cap = 64;
    for (uint64_t i = 0; i < 20000; i++) {
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), (int64_t)i, BIG_WINDOW));
        uint64_t n = i + 1;
        if (n > expect_cap && expect_cap < 4096)
            expect_cap *= 2;
        assert_int_equal(d.cap, expect_cap);
        assert_int_equal(d.count, n < 4096 ? n : 4096);
        dedup_test_check_bounds(&d);
        if ((n & (n - 1)) == 0 || n == 4097) { // around each growth
            uint64_t lo = n > 4096 ? n - 4096 : 0;
            for (uint64_t j = lo; j < n; j++)
                assert_true(dedup_check_insert(&d, dedup_test_hash(j), (int64_t)i, BIG_WINDOW));
        }
    }
    dedup_free(&d);

    // Wrap the ring first (a short window expires the head), then grow.
    dedup_init(&d, 1024);
    int64_t now = 0;
    for (uint64_t i = 0; i < 60; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), now++, 1000));
    assert_int_equal(d.cap, 64);
    now += 2000;                              // all 60 expire at the next check
    for (uint64_t i = 100; i < 100 + 64; i++) // fills the 64 slots, head in the middle
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), now, 1000));
    assert_int_equal(d.cap, 64);
    assert_true(d.head != 0);
    assert_false(dedup_check_insert(&d, dedup_test_hash(500), now, 1000)); // grows
    assert_int_equal(d.cap, 128);
    assert_int_equal(d.count, 65);
    for (uint64_t i = 100; i < 100 + 64; i++)
        assert_true(dedup_check_insert(&d, dedup_test_hash(i), now, 1000));
    for (uint64_t i = 0; i < 60; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), now, 1000));
    dedup_test_check_bounds(&d);
    dedup_free(&d);
}

// Hashes that share their low bits land in one probe run of the index; forgetting entries
// (by window, then by the FIFO bound) deletes from the front and middle of that run, and the
// rest must stay findable. The run starts near the end of the index so it wraps.
static void test_index_collisions(void **state)
{
    (void)state;
    for (uint64_t low = 0; low < 128; low += 7) {
        struct dedup d;
        dedup_init(&d, 64); // 64 entries, 128 index slots: all these hashes have home `low`
        uint64_t h[64];
        for (uint64_t i = 0; i < 64; i++)
            h[i] = ((i + 1) << 32) | low | (1ull << 63);
        for (uint64_t i = 0; i < 48; i++)
            assert_false(dedup_check_insert(&d, h[i], (int64_t)i * 10, 1000));
        assert_int_equal(d.cap, 64);
        // At 1205, times < 205 expire: i = 0..20 are forgotten.
        assert_false(dedup_check_insert(&d, h[48], 1205, 1000));
        for (uint64_t i = 21; i <= 48; i++)
            assert_true(dedup_check_insert(&d, h[i], 1205, 1000));
        for (uint64_t i = 0; i <= 20; i++)
            assert_false(dedup_check_insert(&d, h[i], 1205, 1000));
        // Now 49 entries; fill to 64 and beyond with a huge window: FIFO eviction of 21..
        for (uint64_t i = 49; i < 64; i++)
            assert_false(dedup_check_insert(&d, h[i], 1206, BIG_WINDOW));
        assert_int_equal(d.count, 64);
        // h[21] is now the oldest and still remembered; fresh hashes evict from there on.
        assert_true(dedup_check_insert(&d, h[21], 1207, BIG_WINDOW));
        for (uint64_t i = 0; i < 5; i++)
            assert_false(dedup_check_insert(&d, dedup_test_hash(i), 1207, BIG_WINDOW));
        // The 5 oldest (h[21]..h[25]) were forgotten; h[26].. remain.
        for (uint64_t i = 26; i < 64; i++)
            assert_true(dedup_check_insert(&d, h[i], 1208, BIG_WINDOW));
        for (uint64_t i = 0; i <= 20; i++)
            assert_true(dedup_check_insert(&d, h[i], 1208, BIG_WINDOW));
        for (uint64_t i = 21; i <= 25; i++)
            assert_false(dedup_check_insert(&d, h[i], 1208, BIG_WINDOW));
        assert_int_equal(d.count, 64);
        dedup_test_check_bounds(&d);
        dedup_free(&d);
    }
}

static void test_key(void **state)
{
    (void)state;
    // Stable, and a function of the bytes, not of where they are.
    char id1[] = "evt-0001", id2[] = "evt-0001";
    char ty1[] = "campaign.v1.started", ty2[] = "campaign.v1.started";
    uint64_t k = dedup_key(id1, 8, ty1, 19);
    assert_int_equal(dedup_key(id1, 8, ty1, 19), k);
    assert_int_equal(dedup_key(id2, 8, ty2, 19), k);
    assert_int_not_equal(k, 0);
    // Any change of the id or the type changes the key.
    assert_int_not_equal(dedup_key("evt-0002", 8, ty1, 19), k);
    assert_int_not_equal(dedup_key(id1, 8, "campaign.v1.stream", 18), k);
    assert_int_not_equal(dedup_key(id1, 7, ty1, 19), k); // shorter id
    assert_int_not_equal(dedup_key(id1, 8, ty1, 18), k); // shorter type
    // The boundary between id and type matters: the pair is not hashed as one concatenation.
    assert_int_not_equal(dedup_key("ab", 2, "c", 1), dedup_key("a", 1, "bc", 2));
    assert_int_not_equal(dedup_key("abc", 3, "", 0), dedup_key("", 0, "abc", 3));
    assert_int_not_equal(dedup_key("x", 1, "y", 1), dedup_key("y", 1, "x", 1)); // order matters
    assert_int_not_equal(dedup_key("a", 1, "", 0), dedup_key("a\0", 2, "", 0));
    // Never 0 (0 marks an empty index slot), and no collisions among many distinct pairs.
    enum { N = 20000 };
    static uint64_t keys[N];
    for (uint32_t i = 0; i < N; i++) {
        char id[32], type[32];
        int il = snprintf(id, sizeof(id), "id-%u", i % 200);
        int tl = snprintf(type, sizeof(type), "svc.v%u.started", i / 200);
        keys[i] = dedup_key(id, (uint32_t)il, type, (uint32_t)tl);
        assert_int_not_equal(keys[i], 0);
    }
    for (uint32_t i = 0; i < N; i++)
        for (uint32_t j = i + 1; j < N && j < i + 400; j++)
            assert_int_not_equal(keys[i], keys[j]);
    // Used with the table: the same pair is a duplicate, another type is not.
    struct dedup d;
    dedup_init(&d, 64);
    assert_false(dedup_check_insert(&d, dedup_key("e1", 2, "a.v1.started", 12), 0, MS));
    assert_true(dedup_check_insert(&d, dedup_key("e1", 2, "a.v1.started", 12), 1, MS));
    assert_false(dedup_check_insert(&d, dedup_key("e1", 2, "a.v1.success", 12), 2, MS));
    assert_false(dedup_check_insert(&d, dedup_key("e2", 2, "a.v1.started", 12), 3, MS));
    dedup_free(&d);
}

// --- model check ----------------------------------------------------------------------------

// A plain reference of the documented semantics: a FIFO of (hash, time), linear search.
struct dedup_model {
    uint64_t *hash;
    int64_t *ns;
    uint32_t head, count, bound;
};

static bool dedup_model_check_insert(struct dedup_model *m, uint64_t h, int64_t now, int64_t w)
{
    while (m->count && now - m->ns[m->head] > w) {
        m->head = (m->head + 1) % m->bound;
        m->count--;
    }
    for (uint32_t k = 0; k < m->count; k++)
        if (m->hash[(m->head + k) % m->bound] == h)
            return true;
    if (m->count == m->bound) {
        m->head = (m->head + 1) % m->bound;
        m->count--;
    }
    uint32_t tail = (m->head + m->count) % m->bound;
    m->hash[tail] = h;
    m->ns[tail] = now;
    m->count++;
    return false;
}

// Runs `ops` random operations against both and returns 0, or the 1-based index of the first
// operation where they disagree (result, count, or a size bound). Uses no cmocka assertion so
// that it can run in a forked child. Hashes come from a universe of `universe` values, half of
// them sharing their low 16 bits (long probe runs in the index), half spread.
static uint64_t dedup_model_run(uint32_t entries_max, uint64_t seed, uint32_t ops,
                                uint32_t universe)
{
    uint32_t bound = entries_max;
    struct dedup_model m = {.bound = bound};
    m.hash = calloc(bound, sizeof(*m.hash));
    m.ns = calloc(bound, sizeof(*m.ns));
    uint64_t *hashes = calloc(universe, sizeof(*hashes));
    if (!m.hash || !m.ns || !hashes)
        abort();
    for (uint32_t i = 0; i < universe; i++)
        hashes[i] = i % 2 ? dedup_test_hash(seed * 1000003 + i)
                          : ((uint64_t)(i + 1) << 16) | 0x2a; // nonzero, low bits shared
    struct dedup d;
    dedup_init(&d, entries_max);
    uint64_t s = seed, bad = 0;
    int64_t now = 0;
    const int64_t w = 10000;
    for (uint32_t op = 0; op < ops && !bad; op++) {
        uint64_t r = dedup_test_rand(&s);
        // Phases of different rates: slow (the window bounds the table), fast (the FIFO bound
        // does), and standing still (only the bound).
        switch ((op / 2000) % 3) {
        case 0:
            now += (int64_t)(r % 400);
            break;
        case 1:
            now += (int64_t)(r % 8);
            break;
        default:
            break;
        }
        uint64_t h = hashes[(r >> 20) % universe];
        bool got = dedup_check_insert(&d, h, now, w);
        bool want = dedup_model_check_insert(&m, h, now, w);
        if (got != want || d.count != m.count || d.count > d.cap || d.cap > d.cap_max ||
            d.cap_max != bound)
            bad = op + 1;
    }
    dedup_free(&d);
    free(m.hash);
    free(m.ns);
    free(hashes);
    return bad;
}

static void test_model_pow2(void **state)
{
    (void)state;
    uint64_t bad;
    bad = dedup_model_run(64, 1, 60000, 300);
    if (bad)
        print_error("entries_max 64: mismatch at op %llu\n", (unsigned long long)bad);
    assert_int_equal(bad, 0);
    bad = dedup_model_run(16, 2, 30000, 300); // below the first table size
    if (bad)
        print_error("entries_max 16: mismatch at op %llu\n", (unsigned long long)bad);
    assert_int_equal(bad, 0);
    bad = dedup_model_run(512, 3, 60000, 2000);
    if (bad)
        print_error("entries_max 512: mismatch at op %llu\n", (unsigned long long)bad);
    assert_int_equal(bad, 0);
}

// entries_max values that are not powers of two are valid (--dedup-entries takes any value in
// 16..2^24) and must behave the same. Each runs in a child with an alarm: an index whose probe
// loop cannot terminate would otherwise hang the suite.
static void test_model_not_pow2(void **state)
{
    (void)state;
    const uint32_t sizes[] = {100, 1000, 3000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            alarm(10);
            uint64_t bad = dedup_model_run(sizes[i], 10 + i, 30000, sizes[i] * 3);
            if (bad)
                fprintf(stderr, "entries_max %u: mismatch at op %llu\n", sizes[i],
                        (unsigned long long)bad);
            _exit(bad ? 1 : 0);
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        if (WIFSIGNALED(st))
            print_error("entries_max %u: child killed by signal %d (%s)\n", sizes[i], WTERMSIG(st),
                        WTERMSIG(st) == SIGALRM ? "hung" : "crashed");
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_free_empty),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_window_expiry_empties_table),
        cmocka_unit_test(test_fifo_bound),
        cmocka_unit_test(test_growth_bounded),
        cmocka_unit_test(test_index_collisions),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_model_pow2),
        cmocka_unit_test(test_model_not_pow2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
