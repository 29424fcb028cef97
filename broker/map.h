// SPDX-License-Identifier: Apache-2.0
//
// An open-addressing hash map from uint64 keys to pointers (linear probing, backward-shift
// deletion, so no tombstones), hashed with xxh3. Used for connections by id, campaigns by id
// and subscription lists by campaign. Not thread safe: each map belongs to one shard. The
// caller bounds how many entries it inserts; the map itself grows by doubling at 70% load.
#ifndef NEXUS_BROKER_MAP_H
#define NEXUS_BROKER_MAP_H

#include <stddef.h>
#include <stdint.h>

struct map_slot {
    uint64_t key;
    void *val; /* NULL marks an empty slot: values are never NULL */
};

struct map {
    struct map_slot *slots;
    uint32_t mask; /* capacity - 1 */
    uint32_t count;
};

/* Initializes an empty map (no allocation until the first insert). */
void map_init(struct map *m);
void map_free(struct map *m);

/* Returns the value for key, or NULL. */
void *map_get(const struct map *m, uint64_t key);

/* Inserts or replaces key → val (val != NULL). Returns 0 or -ENOMEM. */
int map_put(struct map *m, uint64_t key, void *val);

/* Removes key. Returns the removed value or NULL. */
void *map_del(struct map *m, uint64_t key);

/* Iteration: for (uint32_t i = 0; i <= m->mask && m->slots; i++) if (m->slots[i].val) ... */

#endif
