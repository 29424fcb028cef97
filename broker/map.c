// SPDX-License-Identifier: Apache-2.0
//
// Implementation of map.h. One shard only.
#include "broker/map.h"

#include <errno.h>
#include <stdlib.h>
/* Header-only: the 8-byte hashes of the hot path inline instead of calling the library. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* First allocation: 16 slots; small maps stay in one or two cache lines' worth of pages. */
#define MAP_CAPACITY_MIN 16u

static inline uint32_t map_home(const struct map *m, uint64_t key)
{
    return (uint32_t)XXH3_64bits(&key, sizeof(key)) & m->mask;
}

void map_init(struct map *m)
{
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}

void map_free(struct map *m)
{
    free(m->slots);
    map_init(m);
}

void *map_get(const struct map *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    for (uint32_t i = map_home(m, key);; i = (i + 1) & m->mask) {
        const struct map_slot *s = &m->slots[i];
        if (!s->val)
            return NULL;
        if (s->key == key)
            return s->val;
    }
}

static int map_grow(struct map *m)
{
    uint32_t cap = m->slots ? (m->mask + 1) * 2 : MAP_CAPACITY_MIN;
    if (cap == 0)
        return -ENOMEM;
    struct map_slot *ns = calloc(cap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    struct map old = *m;
    m->slots = ns;
    m->mask = cap - 1;
    m->count = 0;
    if (old.slots) {
        for (uint32_t i = 0; i <= old.mask; i++)
            if (old.slots[i].val)
                map_put(m, old.slots[i].key, old.slots[i].val);
        free(old.slots);
    }
    return 0;
}

int map_put(struct map *m, uint64_t key, void *val)
{
    if (!m->slots || (uint64_t)(m->count + 1) * 10 > (uint64_t)(m->mask + 1) * 7) {
        int r = map_grow(m);
        if (r < 0)
            return r;
    }
    for (uint32_t i = map_home(m, key);; i = (i + 1) & m->mask) {
        struct map_slot *s = &m->slots[i];
        if (!s->val) {
            s->key = key;
            s->val = val;
            m->count++;
            return 0;
        }
        if (s->key == key) {
            s->val = val;
            return 0;
        }
    }
}

void *map_del(struct map *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    uint32_t i = map_home(m, key);
    for (;; i = (i + 1) & m->mask) {
        if (!m->slots[i].val)
            return NULL;
        if (m->slots[i].key == key)
            break;
    }
    void *val = m->slots[i].val;
    /* Backward-shift: move later entries of the probe run into the hole. */
    uint32_t hole = i;
    for (uint32_t j = (i + 1) & m->mask; m->slots[j].val; j = (j + 1) & m->mask) {
        uint32_t home = map_home(m, m->slots[j].key);
        /* Move j into hole if home is not cyclically within (hole, j]. */
        if (((j - home) & m->mask) >= ((j - hole) & m->mask)) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].val = NULL;
    m->slots[hole].key = 0;
    m->count--;
    return val;
}
