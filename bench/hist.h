// SPDX-License-Identifier: Apache-2.0
//
// A log-bucketed latency histogram in the style of HdrHistogram: values below 128 ns get a
// bucket each; above, every power of two is split into 128 linear sub-buckets, so a reported
// value (the middle of its bucket) is within 1/256 (0.4%) of every value the bucket holds,
// inside the 1% the benchmark promises. Values from 0 to 2^44 ns (about 4.9 hours) are
// resolved; larger ones land in the last bucket (max stays exact).
//
// A histogram has no locks: each worker thread owns one, and the main thread merges them after
// the workers have stopped.
#ifndef NEXUS_BENCH_HIST_H
#define NEXUS_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB      (1u << HIST_SUB_BITS)
/* 2^44 ns: no benchmark run lasts that long, so nothing real is clamped. */
#define HIST_EXP_MAX 44
#define HIST_BUCKETS (HIST_SUB + (HIST_EXP_MAX - HIST_SUB_BITS) * HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t min_ns;
    uint64_t max_ns;
    long double sum_ns;
    uint64_t buckets[HIST_BUCKETS];
};

/* Empties h. */
void hist_reset(struct hist *h);

/* Records one value in nanoseconds. */
void hist_record(struct hist *h, uint64_t value_ns);

/* Adds every count of src to dst. */
void hist_merge(struct hist *dst, const struct hist *src);

/* The value at quantile q (0..1, e.g. 0.999): the representative value of the bucket holding
 * the ceil(q * count)-th smallest sample, clamped to [min, max]. 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

/* Mean in nanoseconds, 0 when empty. */
double hist_mean(const struct hist *h);

#endif
