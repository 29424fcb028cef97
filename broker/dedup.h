// SPDX-License-Identifier: Apache-2.0
//
// Duplicate suppression for one campaign (docs/DESIGN.md §2.4): remembers the keys of the
// (event_id, event_type) pairs accepted within a time window, bounded in entries. Keys are
// 64-bit xxh3 hashes of the pair, kept whole (a false match would drop a new event as a
// duplicate: two different pairs collide with probability about n/2^64 for n keys compared).
// Owned by the campaign's shard.
//
// Generations instead of a FIFO: keys are stamped with the generation they were accepted in,
// and a generation is forgotten all at once, without touching its keys, when its newest key is
// older than the window or when DEDUP_GENS newer generations exist. A new generation starts
// when the current one holds `entries / DEDUP_GENS` keys or is window / (DEDUP_GENS - 1) old.
// A hash table of cache-line buckets holds, per key, a 16-bit fingerprint, the generation tag
// and the key's place in a ring where the whole keys are appended in the order accepted. A
// check reads one bucket (rarely two), and a whole key only when a fingerprint matches; an
// insert writes that bucket and the ring's tail; nothing is ever deleted: a slot whose
// generation is gone is free. So a check costs the same at any rate and window: one cache
// line read at random, about 10 bytes per key (18 in all, with the ring).
//
// Guarantee, for a key accepted at t, with n keys accepted after it, checked at t + e (clock
// not going back): it is a duplicate while
//     e / window + n / (entries * 15/16) < 1,
// since it is forgotten by count only once 15 newer generations ended, each after
// window / 15 or entries / 16 keys. It is new again once e > window * 16/15 or
// n >= DEDUP_GENS * ceil(entries / DEDUP_GENS). In between it may be either. At a steady rate
// every generation ends the same way, so a key is recognised for the whole window below
// 15/16 * entries / window keys per second and for 15/16 * entries keys above. At most
// DEDUP_GENS * ceil(entries / DEDUP_GENS) keys are held. When every generation has expired
// (no new key for a window), the table is freed.
#ifndef NEXUS_BROKER_DEDUP_H
#define NEXUS_BROKER_DEDUP_H

#include <stdbool.h>
#include <stdint.h>

#define DEDUP_GENS  16 /* generations alive at most */
#define DEDUP_SLOTS 10 /* keys per bucket: 10 * (2 + 1 + 3) + 1 + 3 = 64 bytes */

/* A bucket holds what a check reads for 10 keys: a 16-bit fingerprint, a generation tag and
 * where the whole key is in the ring (ring_lo | ring_hi << 16). */
struct dedup_bucket {
    uint16_t fp[DEDUP_SLOTS]; /* the key's low 16 bits (the bucket comes from its high bits) */
    uint8_t tag[DEDUP_SLOTS]; /* generation tag of the key; 0 or a dead generation's: free */
    uint8_t ovf; /* a key whose home is this bucket went on to the next one in generation ovf */
    uint8_t ring_hi[DEDUP_SLOTS];
    uint8_t pad[3];
    uint16_t ring_lo[DEDUP_SLOTS];
};

struct dedup {
    struct dedup_bucket *b; /* NULL until the first key, and after everything expired */
    uint64_t *ring;         /* whole keys in the order accepted, ring_cap of them */
    uint32_t ring_cap, ring_next;
    uint32_t nb, nb_max; /* buckets now and at most */
    uint32_t gen_keys;   /* keys per generation: ceil(entries_max / DEDUP_GENS) */
    uint32_t entries_max;
    uint32_t keys;  /* keys of the live generations */
    uint32_t cur;   /* number of the current generation */
    uint32_t live;  /* live generations: cur - live + 1 .. cur */
    uint32_t sweep; /* next bucket the tag sweep visits */
    int64_t cur_first_ns;
    uint64_t live_tags[4]; /* bit t: tag t is a live generation's */
};

/* Keys and newest key's time of generation g at [g % DEDUP_GENS]; kept just before the
 * buckets, in the same allocation (a campaign without keys has neither). */
struct dedup_gens {
    uint32_t count[DEDUP_GENS];
    int64_t last_ns[DEDUP_GENS];
};

void dedup_init(struct dedup *d, uint32_t entries_max);
void dedup_free(struct dedup *d);

/* Remembers `key` as accepted at now_ns, unless it is already remembered within the window
 * ending at now_ns (see the guarantee above). Returns true if it is a duplicate (nothing
 * recorded), false if it was new (recorded; on allocation failure it is simply not
 * remembered). Also the way to restore a window: call it for each key with the time it was
 * accepted, oldest first. */
bool dedup_check_insert(struct dedup *d, uint64_t key, int64_t now_ns, int64_t window_ns);

/* Brings into cache what dedup_check_insert(d, key, ...) will read and write first: the key's
 * home bucket, the generations' counts and the ring's tail. A hint only. */
void dedup_prefetch(const struct dedup *d, uint64_t key);

/* Bytes the table holds now. */
uint64_t dedup_bytes(const struct dedup *d);

/* Hash of an (event_id, event_type) pair. */
uint64_t dedup_key(const void *event_id, uint32_t id_len, const void *event_type,
                   uint32_t type_len);

#endif
