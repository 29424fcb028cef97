// SPDX-License-Identifier: Apache-2.0
//
// Per-shard statistics: the core's own counters (connections, frames, events, bytes, queues,
// delivery latency), and the counters other layers register for themselves (the Provider's
// request outcomes, the media rooms' gauges: stats_register). It owns the counter storage and
// the registry; metrics.c renders both for Prometheus and the stats frame carries both.
// Threading: a shard's counters are written by that shard's thread only and read by anyone
// (relaxed atomics: a plain load and store on x86, no locked read-modify-write on the hot path).
// The registry is written at start-up, before any shard starts, and read-only afterwards.
#ifndef NEXUS_BROKER_STATS_H
#define NEXUS_BROKER_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* 2^0 .. 2^23 µs (8.4 s) and one overflow bucket. */
#define SHARD_LATENCY_BUCKETS 25
/* Sampling 1 in 64 deliveries keeps the clock read off most of the hot path (at 1 in 16 it was
 * still ~1.5% of fanout-10) while giving thousands of samples per second under any real load. */
#define SHARD_LATENCY_SAMPLE 64

/* Counters other layers may register. The Provider and the media handlers use 11; 64 leaves
 * room for the layers still to come (accounts, the durable log) at 512 bytes per shard. */
#define STATS_EXT_MAX 64

struct shard_stats {
    atomic_uint_fast64_t connections, connections_total;
    atomic_uint_fast64_t frames_in, frames_out, events_in, events_out;
    atomic_uint_fast64_t bytes_in, bytes_out, bytes_queued;
    atomic_uint_fast64_t slow_disconnects, drops, duplicates, errors;
    atomic_uint_fast64_t campaigns, subscriptions, paused_reads;
    atomic_uint_fast64_t accept_errors, deadline_closes, campaigns_freed, memory_refusals;
    /* Delivery latency (acceptance on the owner to queueing on the subscriber's connection),
     * sampled 1 in SHARD_LATENCY_SAMPLE deliveries: bucket i counts samples < 2^i µs. */
    atomic_uint_fast64_t latency_us_bucket[SHARD_LATENCY_BUCKETS];
    atomic_uint_fast64_t latency_samples, latency_us_sum;
    /* CLOCK_MONOTONIC ns of the shard loop's last tick (every 100 ms while the loop turns):
     * /readyz and the systemd watchdog read it to tell a live shard from a stuck one. */
    atomic_uint_fast64_t heartbeat_ns;
    /* Registered counters, indexed by what stats_register returned. */
    atomic_uint_fast64_t ext[STATS_EXT_MAX];
};

static inline void stat_add(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void stat_sub(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

/* "Not in the stats frame" for stats_def.stats_frame_off. */
#define STATS_NO_FRAME_FIELD SIZE_MAX

/* A registered counter. Rows with the same name form one Prometheus family (their labels
 * differ); they must be registered one after the other. */
struct stats_def {
    const char *name;   /* Prometheus name, e.g. "nexus_requests_total" */
    const char *labels; /* extra labels, e.g. "outcome=\"success\"", or NULL */
    const char *help;
    int gauge; /* 1: gauge, 0: counter */
    /* offsetof(struct codec_shard_stats, field) of the stats frame field it fills, or
     * STATS_NO_FRAME_FIELD. */
    size_t stats_frame_off;
};

/* Registers a counter (def must outlive the broker). Start-up only, before broker_start.
 * Returns its index in shard_stats.ext, or -ENOSPC past STATS_EXT_MAX. */
int stats_register(const struct stats_def *def);

/* The registered counters, in registration order. */
const struct stats_def *stats_registered(int index);
int stats_registered_count(void);

#endif
