// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/map_test.c: unit tests for broker/map.h, the open-addressing uint64 -> pointer map
// (linear probing, backward-shift deletion, xxh3-hashed keys). Besides the plain put/get/del
// contract, every test can check the table's structural invariant directly: an entry sits at or
// after its home slot and no empty slot lies between the two (what backward-shift deletion must
// preserve, since there are no tombstones), keys are unique, `count` matches the occupied slots
// and the load stays at or below 70%. Probe chains are built on purpose from keys whose xxh3 home
// slots collide, including chains that wrap around the end of the table, and a randomized model
// check with a fixed seed compares the map against a plain reference array after every operation.
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "broker/map.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

// The home slot of key, computed the way map.c does (xxh3 of the key's 8 bytes, masked).
static uint32_t map_test_home(const struct map *m, uint64_t key)
{
    return (uint32_t)XXH3_64bits(&key, sizeof(key)) & m->mask;
}

// A non-NULL value that identifies key, so a value stored under the wrong key is caught.
static void *map_test_val(uint64_t key)
{
    return (void *)(uintptr_t)((key * 0x9e3779b97f4a7c15ull) | 1u);
}

// A second, different value for the same key (replacement tests).
static void *map_test_val2(uint64_t key)
{
    return (void *)(uintptr_t)((key * 0xc2b2ae3d27d4eb4full) | 2u);
}

// splitmix64: a small PRNG with a fixed seed, so failures reproduce.
static uint64_t map_test_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Checks the table's structure (see the file comment). Cost O(capacity * probe length).
static void map_test_check_structure(const struct map *m)
{
    if (!m->slots) {
        assert_int_equal(m->count, 0);
        return;
    }
    uint32_t cap = m->mask + 1;
    assert_true(cap >= 16);
    assert_int_equal(cap & (cap - 1), 0); // a power of two
    assert_true((uint64_t)m->count * 10 <= (uint64_t)cap * 7);
    uint32_t occupied = 0;
    for (uint32_t i = 0; i <= m->mask; i++) {
        const struct map_slot *s = &m->slots[i];
        if (!s->val)
            continue;
        occupied++;
        // No hole between the home slot and the slot the entry sits in.
        for (uint32_t j = map_test_home(m, s->key); j != i; j = (j + 1) & m->mask) {
            assert_non_null(m->slots[j].val);
            assert_true(m->slots[j].key != s->key); // unique keys
        }
        // The lookup finds this very slot's value.
        assert_ptr_equal(map_get(m, s->key), s->val);
    }
    assert_int_equal(occupied, m->count);
}

// Fills keys[0..n-1] with the first n keys, searching upward from start, whose home slot in a
// 16-slot table is homes[k % nhomes]. The map's 16-slot first allocation holds 11 entries
// before it grows, which is the table these keys are laid out for.
static void map_test_keys_with_homes(uint64_t *keys, uint32_t n, const uint32_t *homes,
                                     uint32_t nhomes, uint64_t start)
{
    struct map probe = {.slots = NULL, .mask = 15, .count = 0};
    uint64_t k = start;
    for (uint32_t i = 0; i < n; i++) {
        while (map_test_home(&probe, k) != homes[i % nhomes])
            k++;
        keys[i] = k++;
    }
}

static void test_empty(void **state)
{
    (void)state;
    struct map m;
    map_init(&m);
    assert_null(m.slots);
    assert_int_equal(m.count, 0);
    assert_null(map_get(&m, 0));
    assert_null(map_get(&m, 1));
    assert_null(map_get(&m, UINT64_MAX));
    assert_null(map_del(&m, 0));
    assert_null(map_del(&m, 42));
    assert_int_equal(m.count, 0);
    // Iterating an empty map (per map.h) visits nothing.
    uint32_t seen = 0;
    for (uint32_t i = 0; i <= m.mask && m.slots; i++)
        if (m.slots[i].val)
            seen++;
    assert_int_equal(seen, 0);
    // Freeing a map that never allocated is fine and leaves it empty and usable.
    map_free(&m);
    assert_null(m.slots);
    assert_int_equal(m.count, 0);
    assert_int_equal(m.mask, 0);
    assert_null(map_get(&m, 7));
    assert_int_equal(map_put(&m, 7, map_test_val(7)), 0);
    assert_ptr_equal(map_get(&m, 7), map_test_val(7));
    map_free(&m);
    map_free(&m); // twice: the first free reset it
    assert_null(m.slots);
}

static void test_put_get_replace(void **state)
{
    (void)state;
    struct map m;
    map_init(&m);
    assert_int_equal(map_put(&m, 1, map_test_val(1)), 0);
    assert_non_null(m.slots);
    assert_int_equal(m.mask, 15); // first allocation: 16 slots
    assert_int_equal(m.count, 1);
    assert_ptr_equal(map_get(&m, 1), map_test_val(1));
    assert_null(map_get(&m, 2));
    assert_null(map_get(&m, 0));

    assert_int_equal(map_put(&m, 2, map_test_val(2)), 0);
    assert_int_equal(m.count, 2);
    assert_ptr_equal(map_get(&m, 1), map_test_val(1));
    assert_ptr_equal(map_get(&m, 2), map_test_val(2));

    // Replacing keeps the count and changes only that key's value.
    assert_int_equal(map_put(&m, 1, map_test_val2(1)), 0);
    assert_int_equal(m.count, 2);
    assert_ptr_equal(map_get(&m, 1), map_test_val2(1));
    assert_ptr_equal(map_get(&m, 2), map_test_val(2));
    assert_int_equal(map_put(&m, 1, map_test_val2(1)), 0); // same value again
    assert_int_equal(m.count, 2);

    // The extreme keys are ordinary keys (0 is not a sentinel: emptiness is val == NULL).
    assert_int_equal(map_put(&m, 0, map_test_val(0)), 0);
    assert_int_equal(map_put(&m, UINT64_MAX, map_test_val(UINT64_MAX)), 0);
    assert_int_equal(m.count, 4);
    assert_ptr_equal(map_get(&m, 0), map_test_val(0));
    assert_ptr_equal(map_get(&m, UINT64_MAX), map_test_val(UINT64_MAX));
    assert_int_equal(map_put(&m, 0, map_test_val2(0)), 0);
    assert_int_equal(m.count, 4);
    assert_ptr_equal(map_get(&m, 0), map_test_val2(0));
    map_test_check_structure(&m);
    map_free(&m);
    assert_null(m.slots);
    assert_int_equal(m.count, 0);
}

static void test_delete(void **state)
{
    (void)state;
    struct map m;
    map_init(&m);
    for (uint64_t k = 0; k < 8; k++)
        assert_int_equal(map_put(&m, k, map_test_val(k)), 0);
    assert_int_equal(m.count, 8);

    // Deleting returns the value, and the key is gone afterwards; the others stay.
    assert_ptr_equal(map_del(&m, 3), map_test_val(3));
    assert_int_equal(m.count, 7);
    assert_null(map_get(&m, 3));
    assert_null(map_del(&m, 3)); // a second delete finds nothing
    assert_int_equal(m.count, 7);
    for (uint64_t k = 0; k < 8; k++)
        if (k != 3)
            assert_ptr_equal(map_get(&m, k), map_test_val(k));

    // Deleting a key never inserted changes nothing.
    assert_null(map_del(&m, 1000));
    assert_int_equal(m.count, 7);

    // Key 0 deletes like any other.
    assert_ptr_equal(map_del(&m, 0), map_test_val(0));
    assert_null(map_get(&m, 0));
    assert_int_equal(m.count, 6);

    // Re-inserting a deleted key works and returns the new value.
    assert_int_equal(map_put(&m, 3, map_test_val2(3)), 0);
    assert_ptr_equal(map_get(&m, 3), map_test_val2(3));
    assert_int_equal(m.count, 7);

    // Deleting everything leaves every slot empty.
    for (uint64_t k = 1; k < 8; k++)
        assert_non_null(map_del(&m, k));
    assert_int_equal(m.count, 0);
    for (uint32_t i = 0; i <= m.mask; i++)
        assert_null(m.slots[i].val);
    for (uint64_t k = 0; k < 8; k++)
        assert_null(map_get(&m, k));
    map_free(&m);
}

// One probe run: 11 keys (the most the 16-slot table holds) all homed at slot 13, so the run
// occupies slots 13..15 and wraps to 0..7. Deleting any one of them must shift the rest back
// so that all stay reachable; the slot layout is checked exactly.
static void test_chain_wrap_single_home(void **state)
{
    (void)state;
    const uint32_t home = 13;
    uint64_t keys[11];
    map_test_keys_with_homes(keys, 11, &home, 1, 1000);
    for (uint32_t victim = 0; victim < 11; victim++) {
        struct map m;
        map_init(&m);
        for (uint32_t i = 0; i < 11; i++)
            assert_int_equal(map_put(&m, keys[i], map_test_val(keys[i])), 0);
        assert_int_equal(m.mask, 15); // no growth: the layout below depends on it
        for (uint32_t i = 0; i < 11; i++)
            assert_int_equal(m.slots[(home + i) & 15].key, keys[i]);
        assert_ptr_equal(map_del(&m, keys[victim]), map_test_val(keys[victim]));
        assert_int_equal(m.count, 10);
        // The entries after the victim moved up by one; the last slot of the run is empty.
        uint32_t pos = 0;
        for (uint32_t i = 0; i < 11; i++) {
            if (i == victim)
                continue;
            assert_int_equal(m.slots[(home + pos) & 15].key, keys[i]);
            pos++;
        }
        assert_null(m.slots[(home + 10) & 15].val);
        for (uint32_t i = 0; i < 11; i++)
            assert_ptr_equal(map_get(&m, keys[i]), i == victim ? NULL : map_test_val(keys[i]));
        map_test_check_structure(&m);
        map_free(&m);
    }
}

// One run made of keys with different homes (13, 14, 15, 0, 1, interleaved), so backward shift
// must move some entries into the hole and leave others (those whose home lies after the hole)
// where they are. Every single deletion, then every deletion order prefix from a PRNG, must
// keep the structural invariant and every remaining key reachable.
static void test_chain_mixed_homes(void **state)
{
    (void)state;
    const uint32_t homes[] = {13, 14, 13, 15, 0, 13, 1, 0, 14, 15, 1};
    uint64_t keys[11];
    map_test_keys_with_homes(keys, 11, homes, 11, 5000);
    uint64_t seed = 42;
    for (uint32_t round = 0; round < 200; round++) {
        struct map m;
        map_init(&m);
        for (uint32_t i = 0; i < 11; i++)
            assert_int_equal(map_put(&m, keys[i], map_test_val(keys[i])), 0);
        assert_int_equal(m.mask, 15);
        map_test_check_structure(&m);
        // A deletion order: round r < 11 starts with key r; then a shuffle.
        uint32_t order[11];
        for (uint32_t i = 0; i < 11; i++)
            order[i] = i;
        for (uint32_t i = 10; i > 0; i--) {
            uint32_t j = (uint32_t)(map_test_rand(&seed) % (i + 1));
            uint32_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        if (round < 11) {
            for (uint32_t i = 0; i < 11; i++)
                if (order[i] == round) {
                    order[i] = order[0];
                    order[0] = round;
                }
        }
        bool present[11];
        for (uint32_t i = 0; i < 11; i++)
            present[i] = true;
        for (uint32_t d = 0; d < 11; d++) {
            uint32_t v = order[d];
            assert_ptr_equal(map_del(&m, keys[v]), map_test_val(keys[v]));
            present[v] = false;
            assert_int_equal(m.count, 10 - d);
            map_test_check_structure(&m);
            for (uint32_t i = 0; i < 11; i++)
                assert_ptr_equal(map_get(&m, keys[i]), present[i] ? map_test_val(keys[i]) : NULL);
        }
        map_free(&m);
    }
}

// 100k keys in three families: sequential small keys, keys whose low 16 bits are all zero
// (identical low bits), and the extremes 0 and UINT64_MAX. All survive repeated growth; then
// half are deleted and the rest stay reachable.
#define MAP_TEST_MANY 100000u
static uint64_t map_test_many_key(uint32_t i)
{
    if (i == 0)
        return 0;
    if (i == 1)
        return UINT64_MAX;
    if (i % 2)
        return (uint64_t)i << 16; // low 16 bits collide
    return (uint64_t)i + 1;       // small sequential keys (distinct from the family above)
}

static void test_many_keys_growth(void **state)
{
    (void)state;
    struct map m;
    map_init(&m);
    uint32_t grows = 0, last_mask = 0;
    for (uint32_t i = 0; i < MAP_TEST_MANY; i++) {
        uint64_t k = map_test_many_key(i);
        assert_int_equal(map_put(&m, k, map_test_val(k)), 0);
        assert_int_equal(m.count, i + 1);
        if (m.mask != last_mask) {
            grows++;
            last_mask = m.mask;
            // Right after growth every key so far is still there.
            for (uint32_t j = 0; j <= i; j++)
                assert_ptr_equal(map_get(&m, map_test_many_key(j)),
                                 map_test_val(map_test_many_key(j)));
        }
    }
    // The first allocation (16 slots), then doubling at 70% load up to 2^18, the smallest power
    // of two that holds 100k entries at that load.
    assert_int_equal(m.mask + 1, 1u << 18);
    assert_int_equal(grows, 15);
    assert_true((uint64_t)m.count * 10 <= (uint64_t)(m.mask + 1) * 7);
    map_test_check_structure(&m);
    for (uint32_t i = 0; i < MAP_TEST_MANY; i++) {
        uint64_t k = map_test_many_key(i);
        assert_ptr_equal(map_get(&m, k), map_test_val(k));
    }
    // Keys never inserted are absent.
    assert_null(map_get(&m, 1));
    assert_null(map_get(&m, (uint64_t)(MAP_TEST_MANY + 1) << 16));
    assert_null(map_get(&m, UINT64_MAX - 1));

    // Delete every third key, check everything.
    uint32_t left = MAP_TEST_MANY;
    for (uint32_t i = 0; i < MAP_TEST_MANY; i += 3) {
        uint64_t k = map_test_many_key(i);
        assert_ptr_equal(map_del(&m, k), map_test_val(k));
        left--;
    }
    assert_int_equal(m.count, left);
    for (uint32_t i = 0; i < MAP_TEST_MANY; i++) {
        uint64_t k = map_test_many_key(i);
        assert_ptr_equal(map_get(&m, k), i % 3 == 0 ? NULL : map_test_val(k));
    }
    map_test_check_structure(&m);
    map_free(&m);
    assert_null(m.slots);
    assert_int_equal(m.count, 0);
}

// Iteration as map.h describes it visits every key exactly once, with its value.
static void test_iterate(void **state)
{
    (void)state;
    enum { N = 5000 };
    static uint8_t seen[N];
    memset(seen, 0, sizeof(seen));
    struct map m;
    map_init(&m);
    // Keys 7*i, i in [0, N); then delete those with i % 5 == 0.
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(map_put(&m, (uint64_t)i * 7, map_test_val((uint64_t)i * 7)), 0);
    for (uint32_t i = 0; i < N; i += 5)
        assert_non_null(map_del(&m, (uint64_t)i * 7));
    uint32_t visited = 0;
    for (uint32_t i = 0; i <= m.mask && m.slots; i++) {
        if (!m.slots[i].val)
            continue;
        uint64_t k = m.slots[i].key;
        assert_int_equal(k % 7, 0);
        assert_true(k / 7 < N);
        assert_true(k / 7 % 5 != 0); // deleted keys are not visited
        assert_ptr_equal(m.slots[i].val, map_test_val(k));
        assert_int_equal(seen[k / 7], 0);
        seen[k / 7] = 1;
        visited++;
    }
    assert_int_equal(visited, m.count);
    assert_int_equal(visited, N - N / 5);
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(seen[i], i % 5 != 0);
    map_free(&m);
}

// Randomized model check: a fixed-seed sequence of put / replace / delete / get over a small key
// universe (so operations hit present keys often and probe runs form and break constantly),
// compared against a plain array after every operation. The universe is built from keys whose
// home slots collide in small tables, plus 0 and UINT64_MAX.
#define MAP_TEST_UNIVERSE 600u
static void map_model_run(uint64_t seed, uint32_t ops, uint32_t universe)
{
    uint64_t keys[MAP_TEST_UNIVERSE];
    void *model[MAP_TEST_UNIVERSE];
    assert_true(universe <= MAP_TEST_UNIVERSE);
    // Two thirds of the universe: keys homed at one of 4 adjacent slots of a 16-slot table
    // (and so clustered in the low bits of larger tables too); the rest: random keys.
    const uint32_t homes[] = {14, 15, 0, 1};
    uint32_t clustered = universe * 2 / 3;
    map_test_keys_with_homes(keys, clustered, homes, 4, 1);
    uint64_t s = seed;
    for (uint32_t i = clustered; i < universe; i++)
        keys[i] = map_test_rand(&s);
    keys[clustered] = 0;
    keys[clustered + 1] = UINT64_MAX;
    for (uint32_t i = 0; i < universe; i++)
        model[i] = NULL;

    struct map m;
    map_init(&m);
    uint32_t count = 0;
    for (uint32_t op = 0; op < ops; op++) {
        uint64_t r = map_test_rand(&s);
        uint32_t i = (uint32_t)((r >> 8) % universe);
        uint64_t k = keys[i];
        // Phases bias toward inserting or deleting so the size sweeps up and down.
        bool filling = (op / 4096) % 2 == 0;
        uint32_t kind = (uint32_t)(r & 0xff);
        uint32_t put_share = filling ? 150 : 80;
        if (kind < put_share) {
            void *v = (r & 0x100) ? map_test_val(k) : map_test_val2(k);
            assert_int_equal(map_put(&m, k, v), 0);
            if (!model[i])
                count++;
            model[i] = v;
        } else if (kind < 230) {
            assert_ptr_equal(map_del(&m, k), model[i]);
            if (model[i])
                count--;
            model[i] = NULL;
        } else {
            assert_ptr_equal(map_get(&m, k), model[i]);
        }
        assert_int_equal(m.count, count);
        // Full comparison after every operation (small universe), structure now and then.
        for (uint32_t j = 0; j < universe; j++)
            assert_ptr_equal(map_get(&m, keys[j]), model[j]);
        if (op % 512 == 0)
            map_test_check_structure(&m);
    }
    map_test_check_structure(&m);
    // Iteration agrees with the model.
    uint32_t visited = 0;
    for (uint32_t i = 0; i <= m.mask && m.slots; i++) {
        if (!m.slots[i].val)
            continue;
        visited++;
        bool found = false;
        for (uint32_t j = 0; j < universe; j++)
            if (keys[j] == m.slots[i].key) {
                assert_ptr_equal(m.slots[i].val, model[j]);
                found = true;
            }
        assert_true(found);
    }
    assert_int_equal(visited, count);
    map_free(&m);
}

static void test_model_small(void **state)
{
    (void)state;
    // 24 keys: the map stays at 16..64 slots, where the clustered keys share probe runs.
    map_model_run(1, 100000, 24);
}

static void test_model_large(void **state)
{
    (void)state;
    map_model_run(0x5eed, 60000, MAP_TEST_UNIVERSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_put_get_replace),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_chain_wrap_single_home),
        cmocka_unit_test(test_chain_mixed_homes),
        cmocka_unit_test(test_many_keys_growth),
        cmocka_unit_test(test_iterate),
        cmocka_unit_test(test_model_small),
        cmocka_unit_test(test_model_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
