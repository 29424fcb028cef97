// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/dedup_test.c: unit tests for broker/dedup.h, the per-campaign duplicate window.
// The documented guarantee (dedup.h): a key accepted at t, with n keys accepted after it and
// checked at t + e, is a duplicate while e / window + n / (entries * 15/16) < 1; it is new
// again once e > window * 16/15 or n >= 16 * ceil(entries / 16); a duplicate is not recorded
// (it does not extend the window). Tests cover the window, the entry bound, growth up to (and
// never past) the size bound, freeing when everything expired, the reuse of generation tags
// (a key from 255 generations ago must not come back), keys that share their home bucket
// (long overflow runs, expired from the middle), restoring a window with past times,
// dedup_key, and a randomized check with fixed seeds against a reference that knows, for each
// check, whether the guarantee requires "duplicate", requires "new", or allows either. Runs
// that could loop forever go to a forked child with an alarm, so a hang is a failure.
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

// Keys the table may hold at most: 16 generations of ceil(entries / 16).
static uint32_t dedup_test_keys_max(uint32_t entries)
{
    return DEDUP_GENS * ((entries + DEDUP_GENS - 1) / DEDUP_GENS);
}

// The size fields stay within the bounds: used after the operations of the tests below.
static bool dedup_test_bounds_ok(const struct dedup *d)
{
    if (d->keys > dedup_test_keys_max(d->entries_max) || d->live > DEDUP_GENS ||
        d->nb > d->nb_max || (d->nb && !d->b) || (!d->nb && d->b))
        return false;
    // Never more than 2/3 full once grown: room for 1.5 times the keys it may hold.
    if (3ull * dedup_test_keys_max(d->entries_max) >
        2ull * d->nb_max * DEDUP_SLOTS + 2 * DEDUP_SLOTS)
        return false;
    // The ring has a place for every live key.
    if (d->b && (d->keys > d->ring_cap || (d->ring_cap & (d->ring_cap - 1))))
        return false;
    // The buckets, the generations' counts and times before them (192 bytes), the ring.
    return dedup_bytes(d) == (d->b ? 192 + (uint64_t)d->nb * 64 + (uint64_t)d->ring_cap * 8 : 0);
}

static void test_init_free_empty(void **state)
{
    (void)state;
    struct dedup d;
    memset(&d, 0xa5, sizeof(d)); // init must not depend on prior contents
    dedup_init(&d, 1024);
    assert_int_equal(d.entries_max, 1024);
    assert_int_equal(d.keys, 0);
    assert_null(d.b); // nothing allocated until the first key
    assert_int_equal(dedup_bytes(&d), 0);
    dedup_free(&d); // freeing an unused table is fine
    assert_int_equal(d.entries_max, 1024);
    assert_null(d.b);
    assert_int_equal(sizeof(struct dedup_bucket), 64); // one cache line
    // A small bound is kept too (16 keys, one per generation).
    dedup_init(&d, 16);
    assert_int_equal(d.gen_keys, 1);
    assert_false(dedup_check_insert(&d, dedup_test_hash(1), 0, MS));
    assert_true(dedup_check_insert(&d, dedup_test_hash(1), 1, MS));
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
    assert_null(d.b);
}

static void test_window(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 1024);
    const int64_t w = 3000 * MS, t0 = 1000 * MS;
    const uint64_t a = dedup_test_hash(1), b = dedup_test_hash(2);

    assert_false(dedup_check_insert(&d, a, t0, w)); // new
    assert_int_equal(d.keys, 1);
    assert_true(dedup_check_insert(&d, a, t0, w)); // same instant
    assert_true(dedup_check_insert(&d, a, t0 + 1, w));
    assert_false(dedup_check_insert(&d, b, t0 + 1, w)); // another key is not a duplicate
    assert_true(dedup_check_insert(&d, b, t0 + 2, w));
    assert_true(dedup_check_insert(&d, a, t0 + w / 2, w));
    assert_int_equal(d.keys, 2); // duplicates are not recorded
    assert_true(dedup_check_insert(&d, a, t0 + w - 1, w));
    assert_true(dedup_check_insert(&d, a, t0 + w, w)); // exactly window_ns old: still inside
    // Past window * 16/15 both are gone (and the duplicate checks did not extend a's window).
    assert_false(dedup_check_insert(&d, a, t0 + w + w / 15 + 2, w));
    assert_false(dedup_check_insert(&d, b, t0 + w + w / 15 + 3, w));
    assert_true(dedup_check_insert(&d, a, t0 + w + w / 15 + 4, w));
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);

    // Keys at a steady low rate: each is a duplicate for its whole window, and new again
    // after window * 16/15.
    dedup_init(&d, 1024);
    const int64_t step = w / 100;
    for (int64_t i = 0; i < 1000; i++) {
        int64_t now = t0 + i * step;
        assert_false(dedup_check_insert(&d, dedup_test_hash(1000 + (uint64_t)i), now, w));
        for (int64_t back = 0; back * step <= w && back <= i; back += 7)
            assert_true(
                dedup_check_insert(&d, dedup_test_hash(1000 + (uint64_t)(i - back)), now, w));
        assert_true(dedup_test_bounds_ok(&d));
    }
    dedup_free(&d);
}

// A steady rate above entries * 15/16 per window: generations end by count, and each key is
// recognised until 15/16 * entries newer keys arrived (well inside the window here).
static void test_steady_high_rate(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 1024);
    const int64_t w = 3000 * MS, step = 100000; // 10,000 keys a second: 960 keys in 96 ms
    for (int64_t i = 0; i < 20000; i++) {
        int64_t now = (int64_t)i * step;
        assert_false(dedup_check_insert(&d, dedup_test_hash(50000 + (uint64_t)i), now, w));
        if (i % 97 == 0)
            for (int64_t back = 1; back <= 959 && back <= i; back += 13)
                assert_true(
                    dedup_check_insert(&d, dedup_test_hash(50000 + (uint64_t)(i - back)), now, w));
    }
    assert_true(d.keys <= 1024);
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
}

// Nothing new for longer than the window: everything is forgotten and the table freed; the
// next key starts a small one.
static void test_expiry_frees(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 4096);
    for (uint64_t i = 0; i < 3000; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), (int64_t)i, 10 * MS));
    uint64_t full = dedup_bytes(&d);
    assert_true(full >= 3000 * 8 * 3 / 2);
    // 18 bytes per key at most once grown: a bucket line per 6.7 keys, and the ring.
    assert_true(full <= 192 + (uint64_t)d.nb_max * 64 + 4096 * 8);
    assert_true(full <= 18ull * 4096);
    assert_int_equal(d.keys, 3000);
    int64_t later = 3000 + 10 * MS + 10 * MS / 15 + 1;
    assert_false(dedup_check_insert(&d, dedup_test_hash(0), later, 10 * MS)); // forgotten
    assert_int_equal(d.keys, 1);
    assert_true(dedup_bytes(&d) <= 192 + 4 * 64 + 32 * 8); // a new, small table
    for (uint64_t i = 1; i < 3000; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), later, 10 * MS));
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
}

// Many keys at one instant: the entry bound. At least the newest 15/16 of entries are
// remembered, nothing past 16 * ceil(entries / 16), and the table never passes its bound.
static void test_entry_bound(void **state)
{
    (void)state;
    const uint32_t sizes[] = {16, 100, 1000, 4096};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        uint32_t e = sizes[k], kmax = dedup_test_keys_max(e);
        struct dedup d;
        dedup_init(&d, e);
        for (uint64_t i = 0; i < 5ull * e; i++) {
            assert_false(dedup_check_insert(&d, dedup_test_hash(i), 7, BIG_WINDOW));
            assert_true(d.keys <= kmax);
            assert_true(dedup_test_bounds_ok(&d));
        }
        uint64_t n = 5ull * e, keep = (uint64_t)e * 15 / 16;
        for (uint64_t j = n - keep; j < n; j++)
            assert_true(dedup_check_insert(&d, dedup_test_hash(j), 8, BIG_WINDOW));
        for (uint64_t j = 0; j + kmax < n; j++) // forgotten, so accepted (and recorded) again
            assert_false(dedup_check_insert(&d, dedup_test_hash(j), 9, BIG_WINDOW));
        assert_true(dedup_test_bounds_ok(&d));
        dedup_free(&d);
    }
}

// Generation tags come back after 255 generations: a key accepted once, long forgotten, must
// not look alive when its tag does (the sweep clears dead tags before that). Generations turn
// over by time here with a key in each, so the table is never freed in between.
static void test_tag_reuse(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 64 * 1024);
    const int64_t w = 15000; // a generation per 1000 ns
    const uint64_t old = dedup_test_hash(424242);
    int64_t now = 0;
    // Fill a table big enough that the sweep takes many generations per pass.
    for (uint64_t i = 0; i < 2000; i++)
        assert_false(dedup_check_insert(&d, dedup_test_hash(i), now, w));
    assert_false(dedup_check_insert(&d, old, now, w));
    uint32_t born = d.cur;
    for (uint64_t g = 0; g < 3 * 255; g++) {
        now += 1000;
        assert_false(dedup_check_insert(&d, dedup_test_hash(10000 + g), now, w));
        if (d.cur - born == 255 || d.cur - born == 510) { // its tag is the current one again
            assert_false(dedup_check_insert(&d, old, now, w));
            assert_true(dedup_check_insert(&d, old, now, w)); // now recorded, once
        }
        assert_true(d.b != NULL);
        assert_true(dedup_test_bounds_ok(&d));
    }
    dedup_free(&d);
}

// Keys that share their home bucket form one overflow run (it wraps at the table's end, and
// is rehashed as the table grows); a generation expires from its front and the rest stays
// findable through it, and new keys reuse the freed slots.
static void test_shared_home(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 4096); // 256 keys per generation: generations turn over by time only here
    uint64_t h[200];
    for (uint64_t i = 0; i < 200; i++)
        h[i] = 0xfffffff000000000ull | (i + 1); // same top 32 bits: the last bucket is home
    const int64_t w = 15 * 1000;                // a generation per 1000 ns
    // One key per 100 ns: generation k (1..10) holds h[10(k-1)] .. h[10k-1], accepted from
    // 1000(k-1) to 1000(k-1) + 900.
    for (uint64_t i = 0; i < 100; i++)
        assert_false(dedup_check_insert(&d, h[i], (int64_t)i * 100, w));
    assert_int_equal(d.live, 10);
    for (uint64_t i = 0; i < 100; i++)
        assert_true(dedup_check_insert(&d, h[i], 9900, w));
    // One nanosecond after generation 1's newest key (900) left the window: it is gone.
    int64_t t = 900 + w + 1;
    for (uint64_t i = 10; i < 100; i++)
        assert_true(dedup_check_insert(&d, h[i], t, w));
    assert_int_equal(d.live, 9);
    for (uint64_t i = 0; i < 10; i++)
        assert_false(dedup_check_insert(&d, h[i], t, w)); // accepted again, recorded at t
    for (uint64_t i = 100; i < 200; i++)
        assert_false(dedup_check_insert(&d, h[i], t, w));
    for (uint64_t i = 0; i < 200; i++)
        assert_true(dedup_check_insert(&d, h[i], t, w));
    assert_int_equal(d.keys, 200);
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
}

// Keys with the same home bucket and the same fingerprint differ only in the whole key: one
// accepted is no duplicate of another, and each is found after the table grew.
static void test_fingerprint_collisions(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 1024);
    uint64_t h[300];
    for (uint64_t i = 0; i < 300; i++)
        h[i] = 0x1234567800000000ull | i << 16 | 0xbeef;
    for (uint64_t i = 0; i < 300; i += 2)
        assert_false(dedup_check_insert(&d, h[i], 5, MS));
    for (uint64_t i = 0; i < 300; i++)
        assert_int_equal(dedup_check_insert(&d, h[i], 6, MS), i % 2 == 0);
    for (uint64_t i = 0; i < 300; i++)
        assert_true(dedup_check_insert(&d, h[i], 7, MS));
    assert_int_equal(d.keys, 300);
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
}

// Many tables at once, as on a shard with many busy campaigns: their memory comes from shared
// chunks (dedup.c), and each table keeps its own keys while others grow, expire and go.
static void test_many_tables(void **state)
{
    (void)state;
    enum { T = 300, K = 700 };
    static struct dedup d[T];
    for (uint32_t t = 0; t < T; t++)
        dedup_init(&d[t], 4096);
    for (uint64_t k = 0; k < K; k++) // interleaved: the tables grow side by side
        for (uint32_t t = 0; t < T; t++)
            assert_false(dedup_check_insert(&d[t], dedup_test_hash(t * 100000 + k), 1, MS));
    for (uint32_t t = 0; t < T; t++) {
        assert_int_equal(d[t].keys, K);
        assert_true(dedup_test_bounds_ok(&d[t]));
        for (uint64_t k = 0; k < K; k += 3)
            assert_true(dedup_check_insert(&d[t], dedup_test_hash(t * 100000 + k), 2, MS));
        assert_false(dedup_check_insert(&d[t], dedup_test_hash((t + 1) * 100000 + K), 2, MS));
    }
    for (uint32_t t = 0; t < T; t += 2) // half of them go: freed, or expired
        if (t % 4)
            dedup_free(&d[t]);
        else
            assert_false(dedup_check_insert(&d[t], dedup_test_hash(7), 3 * MS, MS));
    for (uint32_t t = 1; t < T; t += 2)
        for (uint64_t k = 0; k < K; k += 5)
            assert_true(dedup_check_insert(&d[t], dedup_test_hash(t * 100000 + k), 2, MS));
    for (uint32_t t = 0; t < T; t++)
        dedup_free(&d[t]);
}

// Restoring a window after a restart: keys replayed with the times they were accepted, then
// checked at the present; those inside the window are duplicates, older ones are not.
static void test_restore(void **state)
{
    (void)state;
    struct dedup d;
    dedup_init(&d, 8192);
    const int64_t w = 3000 * MS, now = 100000 * MS;
    for (uint64_t i = 0; i < 600; i++) // one every 10 ms up to `now`
        dedup_check_insert(&d, dedup_test_hash(i), now - 6000 * MS + (int64_t)i * 10 * MS, w);
    for (uint64_t i = 0; i < 600; i++) {
        int64_t age = 6000 * MS - (int64_t)i * 10 * MS;
        bool dup = dedup_check_insert(&d, dedup_test_hash(i), now, w);
        if (age <= w)
            assert_true(dup);
        else if (age > w + w / 15)
            assert_false(dup);
    }
    assert_true(dedup_test_bounds_ok(&d));
    dedup_free(&d);
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
    // Never 0, and no collisions among many distinct pairs.
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

// --- randomized check against the guarantee ------------------------------------------------

// The reference: for every key of the universe, when it was last accepted and how many keys
// had been accepted before it then.
struct dedup_ref {
    int64_t *at;    // time of the last acceptance, or INT64_MIN: never
    uint64_t *seq;  // accepted keys before it
    uint64_t total; // accepted keys
};

// Runs `ops` random checks and returns 0, or the 1-based index of the first one that breaks
// the guarantee (or a size bound). No cmocka assertion, so that it can run in a forked child.
// Keys come from a universe of `universe` values: a third spread, a third sharing their top 32
// bits (long runs in one home bucket), a third sharing their home bucket and their 16-bit
// fingerprint (only the whole key tells them apart); times advance in phases of different rates.
static uint64_t dedup_ref_run(uint32_t entries, uint64_t seed, uint32_t ops, uint32_t universe)
{
    struct dedup_ref m = {0};
    m.at = malloc(sizeof(*m.at) * universe);
    m.seq = calloc(universe, sizeof(*m.seq));
    uint64_t *keys = calloc(universe, sizeof(*keys));
    if (!m.at || !m.seq || !keys)
        abort();
    for (uint32_t i = 0; i < universe; i++) {
        m.at[i] = INT64_MIN;
        // Spread, sharing a home bucket, or sharing a home bucket and a fingerprint.
        keys[i] = i % 3 == 0   ? dedup_test_hash(seed * 1000003 + i)
                  : i % 3 == 1 ? (0x2aull << 32) | (i + 1)
                               : (0x2bull << 32) | (uint64_t)(i + 1) << 16 | 0x77;
    }
    struct dedup d;
    dedup_init(&d, entries);
    const double keep = (double)entries * 15 / 16;
    const uint32_t kmax = dedup_test_keys_max(entries);
    const int64_t w = 15000;
    uint64_t s = seed, bad = 0;
    int64_t now = 0;
    for (uint32_t op = 0; op < ops && !bad; op++) {
        uint64_t r = dedup_test_rand(&s);
        // Slow (the window bounds it), fast (the entry bound does), standing still, and a
        // rare long pause (everything expires, the table is freed).
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
        if (r % 9973 == 0)
            now += 2 * w;
        uint32_t i = (uint32_t)((r >> 20) % universe);
        bool got = dedup_check_insert(&d, keys[i], now, w);
        if (m.at[i] != INT64_MIN) {
            double e = (double)(now - m.at[i]);
            uint64_t n = m.total - m.seq[i] - 1;
            bool must_dup = e / (double)w + (double)n / keep < 1;
            bool must_new = e > (double)w * 16 / 15 || n >= kmax;
            if ((must_dup && !got) || (must_new && got))
                bad = op + 1;
        } else if (got) {
            bad = op + 1; // never accepted: a duplicate of nothing
        }
        if (!got) {
            m.at[i] = now;
            m.seq[i] = m.total++;
        }
        if (!dedup_test_bounds_ok(&d))
            bad = op + 1;
    }
    dedup_free(&d);
    free(m.at);
    free(m.seq);
    free(keys);
    return bad;
}

// Each size runs in a child with an alarm: a probe loop that cannot end would hang the suite.
static void test_reference(void **state)
{
    (void)state;
    const uint32_t sizes[] = {16, 64, 100, 512, 1000, 3000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            alarm(20);
            uint64_t bad = dedup_ref_run(sizes[k], 10 + k, 60000, sizes[k] * 3 + 50);
            if (bad)
                fprintf(stderr, "entries %u: guarantee broken at op %llu\n", sizes[k],
                        (unsigned long long)bad);
            _exit(bad ? 1 : 0);
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        if (WIFSIGNALED(st))
            print_error("entries %u: child killed by signal %d (%s)\n", sizes[k], WTERMSIG(st),
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
        cmocka_unit_test(test_steady_high_rate),
        cmocka_unit_test(test_expiry_frees),
        cmocka_unit_test(test_entry_bound),
        cmocka_unit_test(test_tag_reuse),
        cmocka_unit_test(test_shared_home),
        cmocka_unit_test(test_fingerprint_collisions),
        cmocka_unit_test(test_many_tables),
        cmocka_unit_test(test_restore),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
