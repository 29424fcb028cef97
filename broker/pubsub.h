// SPDX-License-Identifier: Apache-2.0
//
// Publish/subscribe on a shard (pubsub.c), both halves: the campaigns this shard owns (their
// sequence, duplicate window, and which shards hold subscriptions to them) and the
// subscriptions of this shard's connections (listed per campaign, plus the firehose list).
// The publishing functions handlers may call are core_publish and its kin in core.h; this
// header is private to broker/. Threading: everything here belongs to its shard's thread;
// other shards reach it through ring messages (msg.h).
#ifndef NEXUS_BROKER_PUBSUB_H
#define NEXUS_BROKER_PUBSUB_H

#include <stdbool.h>
#include <stdint.h>

#include "broker/core.h"
#include "broker/dedup.h"
#include "broker/msg.h"

struct conn;

/* The owner's summary of a subscription held by another shard. */
struct remote_sub {
    uint32_t shard;
    uint64_t sub_id;
    struct evpattern *patterns;
    uint32_t pattern_count;
    uint32_t user_id_len;
    char user_id[SUB_USER_ID_BYTES_MAX];
};

struct remote_subs {
    struct remote_sub *v;
    uint32_t count, cap;
};

/* A campaign, on its owning shard. */
struct campaign {
    int64_t id;
    uint64_t sequence;
    uint64_t released;      /* last sequence fanned out (with a log: once durable) */
    uint64_t interest_mask; /* bit per shard with interest > 0 */
    struct dedup dedup;
    struct remote_subs remote;
    void *slot; /* the handlers layer's per-campaign state (core_campaign_slot), or NULL */
    int64_t last_event_ns;
    uint32_t interest[]; /* subscriptions per shard */
};

struct sub {
    uint64_t id;
    struct conn *conn;
    int64_t campaign_id;    /* 0: all campaigns */
    uint32_t pattern_count; /* 0: every type */
    uint32_t user_id_len;   /* 0: no user filter */
    char user_id[SUB_USER_ID_BYTES_MAX];
    struct evpattern *patterns;
    uint32_t list_pos;     /* index in its sub_list */
    uint32_t acks_pending; /* shards yet to confirm (firehose: every other shard) */
    uint32_t filter_bytes; /* pattern and user filter bytes (the connection's bound) */
    uint64_t correlation;
    uint64_t from_seq; /* replay from this sequence first (0: live only) */
    bool replaying;    /* live events skip it until its owner's replay is through (the ack) */
};

struct sub_list {
    struct sub **v;
    uint32_t count, cap;
};

/* Delivers a published event (takes the reference): to its direct connections, the shards
 * with interest and this shard's subscribers; then the published hook. Called at once, or by
 * the event log once the event is durable (store.h). */
void pubsub_fanout(struct shard *s, int64_t campaign_id, struct oframe *f, uint64_t direct,
                   uint64_t direct2, bool unsequenced);
/* core_to_conn / core_error_to_conn without waiting behind the event log (its release). */
void core_to_conn_now(struct shard *s, uint64_t conn_id, struct oframe *f);
void core_error_to_conn_now(struct shard *s, uint64_t conn_id, uint64_t correlation,
                            const char *code, const char *message);

/* Paced replay (a subscription with from_sequence; docs/ARCHITECTURE.md, "Resume"). Owner
 * side: go on with the replay of subscription sub_id of shard `from` (MSG_REPLAY_MORE).
 * Subscriber side: its owner paused it (MSG_REPLAY_PAUSE); and, once per loop pass, ask for
 * more for each paused subscription whose connection's queue is short. Returns true when an
 * ask is ready but was left for the next pass (the loop must not sleep). */
void pubsub_replay_more(struct shard *s, uint32_t from, uint64_t sub_id);
void pubsub_replay_paused(struct shard *s, uint64_t conn_id, uint64_t sub_id);
bool pubsub_replay_asks(struct shard *s);

/* Processes an emit whose campaign this shard owns: duplicate check, the emit hook, publish,
 * acknowledgement. Slices point into body, which may be a receive buffer (valid during the
 * call only). Emits queued before it are handled first. */
void pubsub_emit(struct shard *s, const struct emit_msg *m, const uint8_t *body);

/* The emit pipeline (docs/ARCHITECTURE.md, "The emit pipeline"): an emit with a client-chosen
 * id reads its campaign's duplicate window at a random place, a cache miss at any real rate,
 * and the campaign itself is often out of cache too. pubsub_emit_queue computes the emit's key
 * and prefetches the campaign; PUBSUB_EMIT_STAGE2 emits later what the check will read is
 * prefetched (it is found through the campaign); the emit is handled PUBSUB_EMIT_AHEAD emits
 * later (or at pubsub_emit_flush), in the order queued. m and
 * body must stay valid until then, unless m_copy: then *m is copied (not its body). Whoever
 * queues flushes before anything that a client could see out of order: conn.c before any
 * non-emit frame and any error frame, and at the end of each batch of input. */
#define PUBSUB_EMIT_AHEAD  8
#define PUBSUB_EMIT_STAGE2 4
struct emit_pipe {
    struct emit_pipe_slot {
        const struct emit_msg *m;
        const uint8_t *body;
        uint64_t key;              /* duplicate-window key; 0: none */
        const struct campaign *cp; /* for the second prefetch only; NULL: done or none */
        _Alignas(8) uint8_t copy[sizeof(struct emit_msg)];
    } slot[PUBSUB_EMIT_AHEAD];
    uint32_t head, count;
    bool flushing; /* an emit being handled: a flush from inside it (an error frame) waits */
};
void pubsub_emit_queue(struct shard *s, const struct emit_msg *m, const uint8_t *body, bool m_copy);
void pubsub_emit_flush(struct shard *s);
/* A subscribe frame of connection c (body: SubscribeRequest). Answers subscribe_ack or error. */
void pubsub_subscribe(struct conn *c, uint64_t correlation, const uint8_t *body, uint32_t len);
void pubsub_unsubscribe(struct conn *c, uint64_t correlation, uint64_t sub_id);
/* Drops every subscription of a connection that is being released. */
void pubsub_conn_gone(struct conn *c);
/* Owner side of MSG_INTEREST, and subscriber side of MSG_INTEREST_ACK (both take im). */
void pubsub_interest(struct shard *s, struct interest_msg *im);
void pubsub_interest_ack(struct shard *s, struct interest_msg *im);
/* Queues an event frame on every matching subscriber of this shard (the caller keeps its
 * reference). */
void pubsub_deliver(struct shard *s, struct oframe *f);
/* The same, taking the caller's reference (a MSG_DELIVER's): one subscriber's queue gets it
 * instead of a new one, which saves two atomic operations on the frame per delivery. */
void pubsub_deliver_taking(struct shard *s, struct oframe *f);
/* Frees up to a bounded number of idle campaigns (--campaign-idle-ms): no subscription on any
 * shard, no event since the limit, and the handlers layer agrees. From the shard's tick. */
void pubsub_sweep_campaigns(struct shard *s, int64_t now_ns);
/* Frees the campaigns and subscription lists (shutdown). */
void pubsub_free_shard(struct shard *s);

#endif
