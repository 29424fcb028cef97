// SPDX-License-Identifier: Apache-2.0
//
// Duplicate suppression for one campaign (docs/DESIGN.md §2.4): remembers the (event_id,
// event_type) pairs accepted within a time window, bounded in entries. Keys are 64-bit xxh3 hashes
// of the pair, so an entry costs 16 bytes plus its index slot; two different pairs collide with
// probability about n/2^64 for n live entries (for the default 8192 entries, ~4e-16), which we
// accept and document. When the table is full the oldest entry is forgotten first, so the
// effective window is min(window, entries / emit rate). Owned by the campaign's shard.
#ifndef NEXUS_BROKER_DEDUP_H
#define NEXUS_BROKER_DEDUP_H

#include <stdbool.h>
#include <stdint.h>

struct dedup {
    uint64_t *fifo_hash; /* insertion order, a ring of cap entries */
    int64_t *fifo_ns;
    uint32_t head, count, cap, cap_max;
    uint64_t *index; /* open addressing of hashes (0 = empty), 2 * cap slots */
    uint32_t index_mask;
};

void dedup_init(struct dedup *d, uint32_t entries_max);
void dedup_free(struct dedup *d);

/* Checks (hash) against the window ending at now_ns and records it if new. Returns true if it
 * is a duplicate (nothing recorded), false if it was new (recorded; on allocation failure it
 * is simply not remembered). */
bool dedup_check_insert(struct dedup *d, uint64_t hash, int64_t now_ns, int64_t window_ns);

/* Hash of an (event_id, event_type) pair. */
uint64_t dedup_key(const void *event_id, uint32_t id_len, const void *event_type,
                   uint32_t type_len);

#endif
