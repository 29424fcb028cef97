// SPDX-License-Identifier: Apache-2.0
//
// Implementation of dedup.h. One shard only.
//
// Generation g carries the tag g % 255 + 1 (0 marks a never-used slot); live_tags has the bits
// of the live generations' tags, so "is this slot in use" is one bit test and a generation
// dies by clearing its bit. A tag comes back 255 generations later, so slots and overflow
// marks left by a dead generation must be gone by then: each new generation sweeps the next
// few buckets (a full pass takes at most 255 - 2 * DEDUP_GENS generations) and clears the
// tags that are not live. Buckets hold keys by linear probing: a key goes to the first free
// slot from its home bucket on, and each full bucket it passes is marked (ovf) with its
// generation, so a lookup goes on to the next bucket only while that mark is live. A bucket's
// 10 fingerprints are compared at once (SSE2 where there is one); a matching one is a
// duplicate only if its slot is live and its whole key, read from the ring, is equal, so a
// fingerprint collision (about 1 check in 10,000) costs one more read, never a wrong answer.
//
// The ring holds the whole keys in the order accepted. A live key's place is never written
// again while it lives: the ring has room for more keys than the live generations hold, and
// everything written after a live key belongs to a live generation too (generations die
// oldest first). The table starts small and grows, rehashing the live keys oldest generation
// first (which keeps that order in the new ring), up to 1.5 times the keys it may hold, so
// most keys sit in their home bucket (a full table's bucket holds 6.7 on average).
#include "broker/dedup.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "broker/check.h"

#define DEDUP_TAGS       255u /* tags 1..255 */
#define DEDUP_NB_MIN     4u   /* buckets of a new table (40 keys) */
#define DEDUP_SWEEP_GENS (DEDUP_TAGS - 2 * DEDUP_GENS)
#define DEDUP_RING_MAX   (1u << 24) /* a ring place is 24 bits */

/* The generations' counts and times sit just before the buckets (dedup.h). */
#define DEDUP_GENS_BYTES ((sizeof(struct dedup_gens) + 63) & ~(size_t)63)

static inline struct dedup_gens *gens(const struct dedup *d)
{
    return (struct dedup_gens *)(void *)((uint8_t *)d->b - DEDUP_GENS_BYTES);
}

static inline uint8_t gen_tag(uint32_t g)
{
    return (uint8_t)(g % DEDUP_TAGS + 1);
}

static inline bool tag_live(const struct dedup *d, uint8_t t)
{
    return (d->live_tags[t >> 6] >> (t & 63)) & 1;
}

static inline void tag_set(struct dedup *d, uint8_t t, bool on)
{
    uint64_t bit = 1ull << (t & 63);
    d->live_tags[t >> 6] = on ? d->live_tags[t >> 6] | bit : d->live_tags[t >> 6] & ~bit;
}

/* Generations back from the current one (0: current); meaningful for live tags. */
static inline uint32_t tag_age(const struct dedup *d, uint8_t t)
{
    return (gen_tag(d->cur) + DEDUP_TAGS - t) % DEDUP_TAGS;
}

static inline uint32_t home(const struct dedup *d, uint64_t key)
{
    return (uint32_t)(((key >> 32) * (uint64_t)d->nb) >> 32);
}

static inline uint32_t ring_pos(const struct dedup_bucket *bk, uint32_t s)
{
    return bk->ring_lo[s] | (uint32_t)bk->ring_hi[s] << 16;
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t p = 1;
    while (p < n && p < DEDUP_RING_MAX)
        p *= 2;
    return p;
}

/* Ring places a table of nb buckets needs: more than the keys it may hold before it grows
 * (2/3 full), or than the generations may hold once it cannot grow. */
static uint32_t ring_for(const struct dedup *d, uint32_t nb)
{
    uint64_t keys_max = (uint64_t)d->gen_keys * DEDUP_GENS;
    return pow2_at_least(nb >= d->nb_max ? keys_max : (uint64_t)nb * DEDUP_SLOTS * 2 / 3 + 1);
}

void dedup_init(struct dedup *d, uint32_t entries_max)
{
    memset(d, 0, sizeof(*d));
    d->entries_max = entries_max ? entries_max : 1;
    d->gen_keys = (d->entries_max + DEDUP_GENS - 1) / DEDUP_GENS;
    if (d->gen_keys > DEDUP_RING_MAX / DEDUP_GENS)
        d->gen_keys = DEDUP_RING_MAX / DEDUP_GENS;
    /* Room for 1.5 times the keys that may be live: 2/3 full at most. */
    uint64_t keys_max = (uint64_t)d->gen_keys * DEDUP_GENS;
    d->nb_max = (uint32_t)((3 * keys_max + 2 * DEDUP_SLOTS - 1) / (2 * DEDUP_SLOTS));
}

static void drop_table(struct dedup *d)
{
    free(gens(d));
    free(d->ring);
    d->b = NULL;
    d->ring = NULL;
    d->nb = d->ring_cap = d->ring_next = 0;
    d->sweep = 0;
}

void dedup_free(struct dedup *d)
{
    if (d->b)
        free(gens(d));
    free(d->ring);
    dedup_init(d, d->entries_max);
}

uint64_t dedup_bytes(const struct dedup *d)
{
    return d->b ? DEDUP_GENS_BYTES + (uint64_t)d->nb * sizeof(struct dedup_bucket) +
                      (uint64_t)d->ring_cap * 8
                : 0;
}

uint64_t dedup_key(const void *event_id, uint32_t id_len, const void *event_type, uint32_t type_len)
{
    /* The type's hash is seeded with the id's: the pair hashes as one value, and ("ab","c")
     * differs from ("a","bc"). */
    uint64_t h = XXH3_64bits_withSeed(event_type, type_len, XXH3_64bits(event_id, id_len));
    return h ? h : 1; /* kept nonzero, as callers and logged keys expect */
}

/* The oldest live generation dies: its keys are free slots from now on. */
static void kill_oldest(struct dedup *d)
{
    uint32_t g = d->cur - d->live + 1;
    tag_set(d, gen_tag(g), false);
    d->keys -= gens(d)->count[g % DEDUP_GENS];
    d->live--;
}

/* Forgets the generations whose newest key is older than the window; frees the table when
 * none is left. */
static void expire(struct dedup *d, int64_t now, int64_t window)
{
    while (d->live && now - gens(d)->last_ns[(d->cur - d->live + 1) % DEDUP_GENS] > window)
        kill_oldest(d);
    if (!d->live && d->b)
        drop_table(d);
}

/* Clears dead tags in the next buckets, so that no tag outlives the 255 generations after
 * which it is reused (see the top of the file). */
static void sweep(struct dedup *d)
{
    uint32_t n = d->nb / DEDUP_SWEEP_GENS + 1;
    for (uint32_t k = 0; k < n && k < d->nb; k++) {
        struct dedup_bucket *bk = &d->b[d->sweep];
        for (uint32_t s = 0; s < DEDUP_SLOTS; s++)
            if (!tag_live(d, bk->tag[s]))
                bk->tag[s] = 0;
        if (!tag_live(d, bk->ovf))
            bk->ovf = 0;
        d->sweep = d->sweep + 1 < d->nb ? d->sweep + 1 : 0;
    }
}

/* Starts a new generation when the current one is full or old enough (or there is none). */
static void maybe_advance(struct dedup *d, int64_t now, int64_t window)
{
    int64_t span = window / (DEDUP_GENS - 1);
    struct dedup_gens *gs = gens(d);
    if (d->live && gs->count[d->cur % DEDUP_GENS] < d->gen_keys &&
        now - d->cur_first_ns < (span > 0 ? span : 1))
        return;
    if (d->live == DEDUP_GENS)
        kill_oldest(d);
    d->cur++;
    d->live++;
    uint32_t i = d->cur % DEDUP_GENS;
    gs->count[i] = 0;
    d->cur_first_ns = gs->last_ns[i] = now;
    tag_set(d, gen_tag(d->cur), true);
    if (d->b)
        sweep(d);
}

/* Puts key with tag t, whose whole key is at ring place pos, in the first free slot from its
 * home bucket on, marking the full buckets it passes. Returns false if the table has no free
 * slot (it cannot happen below the load bound; the key is then not remembered). */
static bool place(struct dedup *d, uint64_t key, uint8_t t, uint32_t pos)
{
    uint32_t b = home(d, key);
    for (uint32_t n = 0; n < d->nb; n++) {
        struct dedup_bucket *bk = &d->b[b];
        for (uint32_t s = 0; s < DEDUP_SLOTS; s++)
            if (!tag_live(d, bk->tag[s])) {
                bk->fp[s] = (uint16_t)key;
                bk->tag[s] = t;
                bk->ring_lo[s] = (uint16_t)pos;
                bk->ring_hi[s] = (uint8_t)(pos >> 16);
                return true;
            }
        /* Full: the mark keeps the newest generation that went past (a rehash places older
         * keys first, but a later insert may pass with a newer one). */
        if (!tag_live(d, bk->ovf) || tag_age(d, t) < tag_age(d, bk->ovf))
            bk->ovf = t;
        b = b + 1 < d->nb ? b + 1 : 0;
    }
    return false;
}

/* Rebuilds the table with nb buckets and a ring of ring_cap places, keeping the live keys
 * (oldest generation first, so the new ring keeps their order). 0, or -1 when out of memory
 * (the old table stays). */
static int resize(struct dedup *d, uint32_t nb, uint32_t ring_cap)
{
    uint8_t *block = aligned_alloc(64, DEDUP_GENS_BYTES + (size_t)nb * sizeof(struct dedup_bucket));
    uint64_t *nring = malloc((size_t)ring_cap * sizeof(*nring));
    if (!block || !nring) {
        free(block);
        free(nring);
        return -1;
    }
    struct dedup_bucket *nbk = (struct dedup_bucket *)(void *)(block + DEDUP_GENS_BYTES);
    memset(nbk, 0, (size_t)nb * sizeof(*nbk));
    if (d->b)
        memcpy(block, gens(d), sizeof(struct dedup_gens));
    else
        memset(block, 0, sizeof(struct dedup_gens));
    struct dedup_bucket *old = d->b;
    uint64_t *oring = d->ring;
    uint32_t onb = d->nb;
    d->b = nbk;
    d->ring = nring;
    d->nb = nb;
    d->ring_cap = ring_cap;
    d->ring_next = 0;
    d->sweep = 0;
    for (uint32_t age = d->live; age-- > 0;) {
        uint8_t t = gen_tag(d->cur - age);
        for (uint32_t i = 0; i < onb; i++)
            for (uint32_t s = 0; s < DEDUP_SLOTS; s++) {
                if (old[i].tag[s] != t)
                    continue;
                uint64_t key = oring[ring_pos(&old[i], s)];
                NX_ASSERT(d->ring_next < ring_cap);
                d->ring[d->ring_next] = key;
                bool placed = place(d, key, t, d->ring_next++);
                NX_ASSERT(placed); /* the new table is larger than the live keys */
            }
    }
    d->ring_next &= ring_cap - 1;
    if (old)
        free((uint8_t *)old - DEDUP_GENS_BYTES);
    free(oring);
    return 0;
}

/* Bit s set: fp[s] == fp. */
static inline uint32_t fp_match(const struct dedup_bucket *bk, uint16_t fp)
{
#ifdef __SSE2__
    /* 16 lanes from 32 bytes (the last 6 are other fields, masked off), a byte each. */
    __m128i v = _mm_set1_epi16((short)fp);
    const uint8_t *p = (const uint8_t *)bk->fp;
    __m128i c0 = _mm_cmpeq_epi16(_mm_loadu_si128((const void *)p), v);
    __m128i c1 = _mm_cmpeq_epi16(_mm_loadu_si128((const void *)(p + 16)), v);
    return (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(c0, c1)) & ((1u << DEDUP_SLOTS) - 1);
#else
    uint32_t m = 0;
    for (uint32_t s = 0; s < DEDUP_SLOTS; s++)
        m |= (uint32_t)(bk->fp[s] == fp) << s;
    return m;
#endif
}

static bool lookup(const struct dedup *d, uint64_t key)
{
    uint32_t b = home(d, key);
    for (uint32_t n = 0; n < d->nb; n++) {
        const struct dedup_bucket *bk = &d->b[b];
        for (uint32_t m = fp_match(bk, (uint16_t)key); m; m &= m - 1) {
            uint32_t s = (uint32_t)__builtin_ctz(m);
            if (tag_live(d, bk->tag[s]) && d->ring[ring_pos(bk, s)] == key)
                return true;
        }
        if (!tag_live(d, bk->ovf))
            return false;
        b = b + 1 < d->nb ? b + 1 : 0;
    }
    return false;
}

void dedup_prefetch(const struct dedup *d, uint64_t key)
{
    if (!d->b)
        return;
    __builtin_prefetch(&d->b[home(d, key)], 1, 3);
    const struct dedup_gens *gs = gens(d);
    __builtin_prefetch(&gs->count[0], 1, 3);
    __builtin_prefetch(&gs->last_ns[(d->cur - d->live + 1) % DEDUP_GENS], 0, 3);
    __builtin_prefetch(&gs->last_ns[d->cur % DEDUP_GENS], 1, 3);
    __builtin_prefetch(&d->ring[d->ring_next], 1, 3);
}

bool dedup_check_insert(struct dedup *d, uint64_t key, int64_t now_ns, int64_t window_ns)
{
    expire(d, now_ns, window_ns);
    if (d->b && lookup(d, key))
        return true;
    uint32_t nb0 = DEDUP_NB_MIN < d->nb_max ? DEDUP_NB_MIN : d->nb_max;
    if (!d->b && resize(d, nb0, ring_for(d, nb0)) < 0)
        return false; /* no memory: not remembered */
    maybe_advance(d, now_ns, window_ns);
    /* At most 2/3 full, so that most keys stay in their home bucket. */
    if (3 * ((uint64_t)d->keys + 1) > 2 * (uint64_t)d->nb * DEDUP_SLOTS && d->nb < d->nb_max) {
        uint32_t nb = d->nb * 2 < d->nb_max ? d->nb * 2 : d->nb_max;
        resize(d, nb, ring_for(d, nb)); /* no memory: the table stays as it is */
    }
    /* Out of memory to grow: a key whose ring place would still be in use is not kept. */
    if (d->keys + 1 > d->ring_cap)
        return false;
    uint32_t pos = d->ring_next;
    if (!place(d, key, gen_tag(d->cur), pos))
        return false;
    d->ring[pos] = key;
    d->ring_next = (pos + 1) & (d->ring_cap - 1);
    uint32_t i = d->cur % DEDUP_GENS;
    struct dedup_gens *gs = gens(d);
    gs->count[i]++;
    d->keys++;
    if (now_ns > gs->last_ns[i])
        gs->last_ns[i] = now_ns;
    return false;
}
