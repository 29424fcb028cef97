// SPDX-License-Identifier: Apache-2.0
//
// The messages shards send each other through the SPSC rings (ring/spsc.h): their kinds and the
// payloads the core defines (emits on their way to their owner are struct emit_msg, in core.h,
// packed into a struct emit_chunk, shard.h).
// Whoever sends a message gives up what its ptr points at; the receiving shard frees it, or
// hands it back. Two classes travel on separate rings: requests (to a campaign's owner) may
// cause deliveries; deliveries never cause further ring traffic, so a shard always drains its
// delivery rings and the two classes cannot deadlock (docs/ARCHITECTURE.md).
#ifndef NEXUS_BROKER_MSG_H
#define NEXUS_BROKER_MSG_H

#include <stdint.h>

#include "broker/core.h"

enum msg_kind {
    MSG_EMIT_BATCH = 1, /* req: ptr = struct emit_chunk (shard.h): emits, in order */
    MSG_INTEREST,       /* req: ptr = struct interest_msg */
    MSG_DELIVER,        /* del: ptr = struct oframe (event) */
    MSG_TO_CONN,        /* del: ptr = struct oframe, arg = connection id */
    MSG_INTEREST_ACK,   /* del: ptr = struct interest_msg (status says whether it took) */
    MSG_CONN_GONE,      /* req: arg = connection id that closed (requests it held end) */
    MSG_HOOK_REQ,       /* req: for the handlers layer (aux: its own kind) */
    MSG_HOOK_DEL,       /* del: for the handlers layer (aux: its own kind) */
    MSG_REPLAY_PAUSE,   /* del: arg = connection id, ptr = subscription id (a number): the owner
                           paused that subscription's replay; ask for more once its connection's
                           queue is short (pubsub.c, "Paced replay") */
    MSG_REPLAY_MORE,    /* req: aux = asking shard, ptr = subscription id: go on with its replay */
};

/* Longest user id a subscription may filter on. */
#define SUB_USER_ID_BYTES_MAX 128

/* Subscription interest registered at a campaign's owner (or at every shard, for the
 * firehose). delta is +1 or -1; +1 is answered (MSG_INTEREST_ACK) so the subscribe_ack leaves
 * only once the owner routes the campaign's events to the subscriber's shard, or so the
 * subscriber learns that the owner refused it (status < 0: -ENOSPC at the campaign limit,
 * -ENOMEM). */
struct interest_msg {
    int64_t campaign_id; /* 0: firehose */
    int32_t delta;
    int32_t status; /* on the ack: 0, or -errno if the owner could not register it */
    uint32_t from_shard;
    uint64_t conn_id;
    uint64_t sub_id;
    uint64_t correlation;
    uint64_t from_seq; /* +1: replay the campaign from this sequence before the ack (0: none) */
    /* +1 only: a copy of the subscription's filter, kept by the owner (ownership moves) so it
     * can tell whether any subscription matches a request (no_handler, docs/DESIGN.md §3.1). */
    struct evpattern *patterns;
    uint32_t pattern_count;
    uint32_t user_id_len;
    char user_id[SUB_USER_ID_BYTES_MAX];
};

#endif
