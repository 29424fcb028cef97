// SPDX-License-Identifier: Apache-2.0
//
// The answer to a stats frame: every shard's counters, the core's own and those other layers
// registered (stats.h), with ring depths and the process's RSS. Runs on the shard of the
// connection that asked; it reads the other shards' counters as relaxed atomics only.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/conn.h"
#include "broker/shard.h"
#include "codec/stats.h"

void shard_stats_reply(struct conn *c, uint64_t corr)
{
    struct broker *b = c->shard->broker;
    struct codec_shard_stats st[CONFIG_SHARDS_MAX];
    memset(st, 0, sizeof(st));
    for (uint32_t i = 0; i < b->shard_count; i++) {
        struct shard_stats *x = &b->shards[i]->stats;
        struct codec_shard_stats *o = &st[i];
        o->shard_id = i;
#define LD(f) atomic_load_explicit(&x->f, memory_order_relaxed)
        o->connections = LD(connections);
        o->events_in = LD(events_in);
        o->events_out = LD(events_out);
        o->frames_in = LD(frames_in);
        o->frames_out = LD(frames_out);
        o->bytes_queued = LD(bytes_queued);
        o->slow_disconnects = LD(slow_disconnects);
        o->drops = LD(drops);
        o->duplicates = LD(duplicates);
        o->errors = LD(errors);
        o->campaigns = LD(campaigns);
        o->subscriptions = LD(subscriptions);
        o->paused_reads = LD(paused_reads);
#undef LD
        /* What other layers registered fills the frame fields they name. */
        for (int k = 0; k < stats_registered_count(); k++) {
            const struct stats_def *d = stats_registered(k);
            if (d->stats_frame_off != STATS_NO_FRAME_FIELD)
                *(uint64_t *)((char *)o + d->stats_frame_off) +=
                    atomic_load_explicit(&x->ext[k], memory_order_relaxed);
        }
        for (uint32_t src = 0; src < b->shard_count; src++)
            if (src != i)
                o->ring_depth +=
                    ring_depth(broker_ring(b, 0, src, i)) + ring_depth(broker_ring(b, 1, src, i));
    }
    uint8_t *buf = NULL;
    int n = codec_stats_reply_encode(&buf, corr, st, b->shard_count, shard_rss_bytes());
    if (n > 0) {
        struct oframe *f = oframe_alloc((uint32_t)n);
        if (f) {
            memcpy(f->data, buf, (size_t)n);
            conn_enqueue(c, f);
        }
    }
    free(buf);
}
