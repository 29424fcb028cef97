// SPDX-License-Identifier: Apache-2.0
//
// Log-bucketed latency histogram (see hist.h for the bucket layout and its error bound).
// Owned by one thread at a time; no locks.
#include "bench/hist.h"

#include <string.h>

static uint32_t bucket_of(uint64_t v)
{
    if (v < HIST_SUB)
        return (uint32_t)v;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* v in [2^e, 2^(e+1)) */
    if (e >= HIST_EXP_MAX)
        return HIST_BUCKETS - 1;
    uint32_t shift = e - HIST_SUB_BITS;
    return HIST_SUB + shift * HIST_SUB + (uint32_t)((v >> shift) - HIST_SUB);
}

/* The middle of bucket i: at most half a bucket width (1/256 of the value) from any member. */
static uint64_t value_of(uint32_t i)
{
    if (i < HIST_SUB)
        return i;
    uint32_t shift = (i - HIST_SUB) / HIST_SUB;
    uint64_t sub = (uint64_t)((i - HIST_SUB) % HIST_SUB) + HIST_SUB;
    uint64_t lo = sub << shift;
    return lo + ((1ull << shift) >> 1);
}

void hist_reset(struct hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t value_ns)
{
    h->buckets[bucket_of(value_ns)]++;
    h->count++;
    h->sum_ns += (long double)value_ns;
    if (value_ns > h->max_ns)
        h->max_ns = value_ns;
    if (value_ns < h->min_ns)
        h->min_ns = value_ns;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
    for (uint32_t i = 0; i < HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum_ns += src->sum_ns;
    if (src->max_ns > dst->max_ns)
        dst->max_ns = src->max_ns;
    if (src->min_ns < dst->min_ns)
        dst->min_ns = src->min_ns;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q <= 0)
        return h->min_ns;
    if (q >= 1)
        return h->max_ns;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = value_of(i);
            if (v > h->max_ns)
                v = h->max_ns;
            if (v < h->min_ns)
                v = h->min_ns;
            return v;
        }
    }
    return h->max_ns;
}

double hist_mean(const struct hist *h)
{
    return h->count ? (double)(h->sum_ns / (long double)h->count) : 0.0;
}
