// SPDX-License-Identifier: Apache-2.0
//
// Outgoing frames, encoded once and shared by reference. A delivered event is built once on
// the campaign's owning shard and handed by pointer to every subscriber connection on every
// shard; each holder owns one reference and the last to let go frees it. The payload bytes are
// immutable after creation, so any shard may read them; the reference count is the only field
// written by more than one shard (relaxed increments, acq_rel decrement, as usual for refcounts).
// Event frames also carry the routing facts a subscriber shard matches on (campaign, sequence,
// parsed type, user id), pointing into the frame bytes.
#ifndef NEXUS_BROKER_OFRAME_H
#define NEXUS_BROKER_OFRAME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "codec/evtype.h"

struct oframe {
    atomic_uint refs;
    uint32_t len; /* bytes of data, length prefix included */
    bool is_event;
    int64_t campaign_id;
    uint64_t sequence;
    int64_t ts_ns;          /* broker acceptance time (delivery latency metrics) */
    struct evtype type;     /* offsets into type_str */
    const char *type_str;   /* inside data */
    const uint8_t *user_id; /* inside data, or NULL */
    uint32_t user_id_len;
    uint64_t skip_conn_id; /* delivered to it directly: its subscriptions skip this frame */
    uint64_t skip_conn_id2;
    bool terminal; /* lifecycle terminal event for the connection it is sent to */
    uint8_t data[];
};

/* Allocates a frame of len bytes with one reference. Returns NULL if out of memory. */
static inline struct oframe *oframe_alloc(uint32_t len)
{
    struct oframe *f = malloc(sizeof(*f) + len);
    if (!f)
        return NULL;
    atomic_init(&f->refs, 1);
    f->len = len;
    f->is_event = false;
    f->campaign_id = 0;
    f->sequence = 0;
    f->ts_ns = 0;
    f->type_str = NULL;
    f->user_id = NULL;
    f->user_id_len = 0;
    f->skip_conn_id = 0;
    f->skip_conn_id2 = 0;
    f->terminal = false;
    return f;
}

static inline void oframe_ref(struct oframe *f, unsigned n)
{
    atomic_fetch_add_explicit(&f->refs, n, memory_order_relaxed);
}

static inline void oframe_unref(struct oframe *f)
{
    if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1)
        free(f);
}

#endif
