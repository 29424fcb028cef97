// SPDX-License-Identifier: Apache-2.0
//
// Outgoing frames, encoded once and shared by reference. A delivered event is built once on
// the campaign's owning shard and handed by pointer to every subscriber connection on every
// shard; each holder owns one reference and the last to let go frees it. The payload bytes are
// immutable after creation, so any shard may read them; the reference count is the only field
// written by more than one shard.
//
// The count is biased towards the shard that built the frame (its owner), which takes most
// references (one per local subscriber, one for the campaign history) and drops most of them
// (one per send completion): the owner counts its references in a plain `local` field, and all
// of them together hold a single reference in the atomic `shared` count, which other shards use
// directly (relaxed increments, acq_rel decrement). A reference handed to another shard through
// a ring is moved from local to shared first (oframe_share). The true count is
// shared + local - (local > 0), and every path keeps it, so a shared reference that comes back
// to the owner may be dropped either way. A locked read-modify-write per delivery was ~10% of
// fanout-10.
// Event frames also carry the routing facts a subscriber shard matches on (campaign, sequence,
// parsed type, user id), pointing into the frame bytes.
#ifndef NEXUS_BROKER_OFRAME_H
#define NEXUS_BROKER_OFRAME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "broker/check.h"
#include "codec/evtype.h"

/* The shard index of the calling thread (-1 outside shard threads: every reference taken
 * there is shared). Set once by each shard thread. */
extern _Thread_local int oframe_self;

struct oframe {
    atomic_uint shared; /* references of other threads, plus one for all of the owner's */
    uint32_t local;     /* the owner's references (its thread only) */
    int32_t owner;      /* oframe_self of the thread that built the frame */
    uint32_t len;       /* bytes of data, length prefix included */
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
    bool raw;      /* WebSocket (conn_ws.c): bytes sent as they are, not a Nexus frame */
    uint8_t data[];
};

/* Allocates a frame of len bytes with one reference. Returns NULL if out of memory. */
static inline struct oframe *oframe_alloc(uint32_t len)
{
    struct oframe *f = malloc(sizeof(*f) + len);
    if (!f)
        return NULL;
    atomic_init(&f->shared, 1);
    f->owner = oframe_self;
    f->local = oframe_self >= 0 ? 1 : 0;
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
    f->raw = false;
    return f;
}

static inline void oframe_release_shared(struct oframe *f)
{
    unsigned before = atomic_fetch_sub_explicit(&f->shared, 1, memory_order_acq_rel);
    NX_ASSERT(before > 0); /* a reference dropped twice */
    if (before == 1)
        free(f);
}

/* Takes n more references for the calling thread. */
static inline void oframe_ref(struct oframe *f, unsigned n)
{
    if (f->owner == oframe_self && f->local) {
        NX_ASSERT(f->local + n >= f->local); /* no wrap */
        f->local += n;
    } else {
        /* Only a holder may take more: the frame must be alive when we add. */
        unsigned before = atomic_fetch_add_explicit(&f->shared, n, memory_order_relaxed);
        NX_ASSERT(before > 0);
    }
}

/* Drops one reference of the calling thread. */
static inline void oframe_unref(struct oframe *f)
{
    if (f->owner == oframe_self && f->local) {
        if (--f->local == 0)
            oframe_release_shared(f); /* the owner's last: its collective reference goes */
    } else {
        oframe_release_shared(f);
    }
}

/* Turns one of the calling thread's references into one another thread may drop (before the
 * frame goes through a ring). */
static inline void oframe_share(struct oframe *f)
{
    if (f->owner == oframe_self && f->local) {
        atomic_fetch_add_explicit(&f->shared, 1, memory_order_relaxed);
        oframe_unref(f);
    }
}

#endif
