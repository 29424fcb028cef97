// SPDX-License-Identifier: Apache-2.0
//
// Implementation of dedup.h. One shard only. Tables start small (64 entries) and double up to
// entries_max, so a campaign with little traffic costs little.
#include "broker/dedup.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "broker/check.h"

#define DEDUP_CAP_MIN 64u

void dedup_init(struct dedup *d, uint32_t entries_max)
{
    memset(d, 0, sizeof(*d));
    d->cap_max = entries_max ? entries_max : 1; /* exactly the configured bound */
}

void dedup_free(struct dedup *d)
{
    free(d->fifo_hash);
    free(d->fifo_ns);
    free(d->index);
    uint32_t m = d->cap_max;
    dedup_init(d, m);
}

uint64_t dedup_key(const void *event_id, uint32_t id_len, const void *event_type, uint32_t type_len)
{
    /* The type's hash is seeded with the id's: the pair hashes as one value, and ("ab","c")
     * differs from ("a","bc"). */
    uint64_t h = XXH3_64bits_withSeed(event_type, type_len, XXH3_64bits(event_id, id_len));
    return h ? h : 1; /* 0 marks an empty index slot */
}

static bool index_find(const struct dedup *d, uint64_t h, uint32_t *slot)
{
    for (uint32_t i = (uint32_t)h & d->index_mask;; i = (i + 1) & d->index_mask) {
        if (d->index[i] == h) {
            *slot = i;
            return true;
        }
        if (d->index[i] == 0) {
            *slot = i;
            return false;
        }
    }
}

static void index_delete(struct dedup *d, uint64_t h)
{
    uint32_t i;
    if (!index_find(d, h, &i))
        return;
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & d->index_mask; d->index[j]; j = (j + 1) & d->index_mask) {
        uint32_t home = (uint32_t)d->index[j] & d->index_mask;
        if (((j - home) & d->index_mask) >= ((j - hole) & d->index_mask)) {
            d->index[hole] = d->index[j];
            hole = j;
        }
    }
    d->index[hole] = 0;
}

static void pop_oldest(struct dedup *d)
{
    index_delete(d, d->fifo_hash[d->head]);
    d->head = (d->head + 1) % d->cap;
    d->count--;
}

static int grow(struct dedup *d)
{
    uint32_t ncap = d->cap ? d->cap * 2 : DEDUP_CAP_MIN;
    if (ncap > d->cap_max)
        ncap = d->cap_max;
    /* The index is a power of two of at least 2 * cap slots (load at most 50%), whatever
     * cap_max is: linear probing masks with index_mask, which must be 2^k - 1 to reach every
     * slot (with --dedup-entries 100 a mask of 199 reached 32 slots and probing never ended). */
    uint32_t islots = 2;
    while (islots < 2 * ncap)
        islots *= 2;
    uint64_t *nh = malloc(sizeof(uint64_t) * ncap);
    int64_t *nn = malloc(sizeof(int64_t) * ncap);
    uint64_t *ni = calloc(islots, sizeof(uint64_t));
    if (!nh || !nn || !ni) {
        free(nh);
        free(nn);
        free(ni);
        return -1;
    }
    for (uint32_t k = 0; k < d->count; k++) {
        uint32_t src = (d->head + k) % d->cap;
        nh[k] = d->fifo_hash[src];
        nn[k] = d->fifo_ns[src];
    }
    free(d->fifo_hash);
    free(d->fifo_ns);
    free(d->index);
    d->fifo_hash = nh;
    d->fifo_ns = nn;
    d->index = ni;
    d->cap = ncap;
    d->head = 0;
    d->index_mask = islots - 1;
    NX_ASSERT((islots & d->index_mask) == 0 && islots >= 2 * ncap);
    for (uint32_t k = 0; k < d->count; k++) {
        uint32_t slot;
        if (!index_find(d, nh[k], &slot))
            d->index[slot] = nh[k];
    }
    return 0;
}

bool dedup_check_insert(struct dedup *d, uint64_t h, int64_t now_ns, int64_t window_ns)
{
    /* Forget what has left the window. */
    while (d->count && now_ns - d->fifo_ns[d->head] > window_ns)
        pop_oldest(d);
    uint32_t slot;
    if (d->cap && index_find(d, h, &slot))
        return true;
    if (d->count == d->cap) {
        if (d->cap < d->cap_max) {
            if (grow(d) < 0)
                return false;
        } else {
            pop_oldest(d); /* full: the oldest entry goes first */
        }
    }
    index_find(d, h, &slot);
    d->index[slot] = h;
    uint32_t tail = (d->head + d->count) % d->cap;
    d->fifo_hash[tail] = h;
    d->fifo_ns[tail] = now_ns;
    d->count++;
    return false;
}
