// SPDX-License-Identifier: Apache-2.0
//
// Shards, connections and subscriptions: the types the broker core shares between its files
// (shard.c: the io_uring loop; conn.c: a connection's bytes in and out; pubsub.c: campaigns,
// sequencing and fan-out; broker.c: start-up and the shard set). Threading rule: everything in
// a struct shard, and every conn, sub and campaign hanging off it, belongs to that shard's
// thread alone. Other shards reach it only through the SPSC rings (struct ring) and the
// `sleeping` flag; statistics are relaxed atomics that any thread may read.
#ifndef NEXUS_BROKER_SHARD_H
#define NEXUS_BROKER_SHARD_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "broker/config.h"
#include "broker/dedup.h"
#include "broker/map.h"
#include "broker/oframe.h"
#include "codec/evtype.h"
#include "codec/envelope.h"
#include "codec/frame.h"
#include "ring/spsc.h"

struct broker;
struct shard;

/* Frames gathered into one sendmsg. A connection sends up to CONN_IOV_SMALL frames from an
 * iovec array inside it; one with a longer queue (a busy subscriber) borrows a heap array of
 * CONN_IOV_MAX entries, given back when its queue drains. 1024 small events ≈ 160 KiB per
 * send: measured with nexus-bench, raising the batch from 64 to 1024 frames took fanout-1 from
 * ~0.9-1.2M to ~1.6M events/s, since each send costs a syscall-equivalent of kernel work.
 * 1024 is also the kernel's UIO_MAXIOV. */
#define CONN_IOV_SMALL 16
/* Bytes gathered into one send at most: about what a loopback socket buffer takes at once. */
#define CONN_SEND_BYTES_MAX (256u * 1024u)
#define CONN_IOV_MAX        1024

/* Messages between shards. Requests (to a campaign's owner) may cause deliveries; deliveries
 * never cause further ring traffic, so a shard always drains its delivery rings and the two
 * classes cannot deadlock (docs/ARCHITECTURE.md). */
enum msg_kind {
    MSG_EMIT = 1,     /* req: ptr = struct emit_msg */
    MSG_INTEREST,     /* req: ptr = struct interest_msg */
    MSG_DELIVER,      /* del: ptr = struct oframe (event) */
    MSG_TO_CONN,      /* del: ptr = struct oframe, arg = connection id */
    MSG_INTEREST_ACK, /* del: ptr = struct interest_msg */
    MSG_CONN_GONE,    /* req: arg = connection id that closed (requests it held end) */
    MSG_HOOK_REQ,     /* req: for the handlers layer (aux: its own kind) */
    MSG_HOOK_DEL,     /* del: for the handlers layer (aux: its own kind) */
};

/* An emit travelling to its campaign's owner: the routing header and a copy of the frame's
 * body that the slices point into. */
struct emit_msg {
    uint64_t conn_id;
    uint64_t correlation;
    int64_t campaign_id;
    struct evtype type;
    uint32_t body_len;
    /* slices as offsets into body */
    uint32_t id_off, id_len, type_off, type_len, entity_off, entity_len;
    uint32_t md_off, md_len, pl_off, pl_len, user_off, user_len, corr_off, corr_len;
    bool has_md, has_pl;
    uint8_t body[];
};

/* Subscription interest registered at a campaign's owner (or at every shard, for the
 * firehose). delta is +1 or -1; +1 is acknowledged back so the subscribe_ack leaves only once
 * the owner routes the campaign's events to the subscriber's shard. */
struct interest_msg {
    int64_t campaign_id; /* 0: firehose */
    int32_t delta;
    uint32_t from_shard;
    uint64_t conn_id;
    uint64_t sub_id;
    uint64_t correlation;
    /* +1 only: a copy of the subscription's filter, kept by the owner (ownership moves) so it
     * can tell whether any subscription matches a request (no_handler, docs/DESIGN.md §3.1). */
    struct evpattern *patterns;
    uint32_t pattern_count;
    uint32_t user_id_len;
    char user_id[128];
};

/* The owner's summary of a subscription held by another shard. */
struct remote_sub {
    uint32_t shard;
    uint64_t sub_id;
    struct evpattern *patterns;
    uint32_t pattern_count;
    uint32_t user_id_len;
    char user_id[128];
};

struct remote_subs {
    struct remote_sub *v;
    uint32_t count, cap;
};

/* A campaign, on its owning shard. */
struct campaign {
    int64_t id;
    uint64_t sequence;
    uint64_t interest_mask; /* bit per shard with interest > 0 */
    struct dedup dedup;
    struct remote_subs remote;
    void *state; /* the handlers layer's per-campaign state, or NULL */
    int64_t last_event_ns;
    uint32_t interest[]; /* subscriptions per shard */
};

/* Overflow for a ring that was full when a message had to be sent: control messages and the
 * deliveries of the request being processed. The shard stops taking new requests while any
 * outbox holds messages, so outboxes stay small (docs/ARCHITECTURE.md, backpressure). */
struct outbox {
    struct ring_msg *v;
    uint32_t head, count, cap;
};

struct sub {
    uint64_t id;
    struct conn *conn;
    int64_t campaign_id;    /* 0: all campaigns */
    uint32_t pattern_count; /* 0: every type */
    uint32_t user_id_len;   /* 0: no user filter */
    char user_id[128];
    struct evpattern *patterns;
    uint32_t list_pos;     /* index in its sub_list */
    uint32_t acks_pending; /* firehose: shards yet to confirm */
    uint64_t correlation;
};

struct sub_list {
    struct sub **v;
    uint32_t count, cap;
};

/* A campaign missed by a connection under the drop policy, reported by a gap frame. */
struct gap {
    int64_t campaign_id;
    uint64_t first, last, dropped;
};

enum conn_flag {
    CONN_RECV_ARMED = 1u << 0, /* a multishot recv is in flight */
    CONN_SEND_INFLIGHT = 1u << 1,
    CONN_PAUSED = 1u << 2,    /* backpressure: input is stashed, not processed */
    CONN_CLOSING = 1u << 3,   /* no more input; close once output is flushed */
    CONN_DEAD = 1u << 4,      /* closed: waiting for in-flight operations to finish */
    CONN_ON_FLUSH = 1u << 5,  /* on the shard's flush list */
    CONN_ON_RESUME = 1u << 6, /* on the shard's resume list */
    CONN_AUTHED = 1u << 7,    /* hello accepted, or no token required */
    CONN_HELLO_SEEN = 1u << 8,
    CONN_RECV_CANCELLED = 1u << 9,
    CONN_REAPED = 1u << 10,   /* released: freed when its last operation completes */
    CONN_PEER_EOF = 1u << 11, /* the peer closed its side while input was held back */
};

struct conn {
    uint64_t id; /* shard index in the top 8 bits */
    int fd;
    uint32_t flags;
    uint32_t ops_inflight; /* SQEs referencing this conn */
    struct shard *shard;
    struct codec_framer framer;

    /* Input held back while paused (backpressure): raw bytes, processed on resume. */
    uint8_t *stash;
    uint32_t stash_len, stash_cap;

    /* Output queue: a ring of frame references; q_off bytes of the head frame are sent. */
    struct oframe **q;
    uint32_t q_head, q_count, q_cap, q_off;
    uint64_t q_bytes;
    uint32_t send_frames; /* frames covered by the send in flight */
    struct iovec *iov;    /* iov_small, or a borrowed array of CONN_IOV_MAX */
    struct iovec iov_small[CONN_IOV_SMALL];
    struct msghdr msg;

    struct sub **subs;
    uint32_t sub_count, sub_cap;
    uint64_t last_delivery; /* shard delivery stamp: at most once per event per connection */

    struct gap *gaps;
    uint32_t gap_count;

    /* The last event type this connection emitted, validated: publishers repeat their types,
     * so most emits skip the parser (a length check and a memcmp instead). */
    struct evtype last_type;
    uint16_t last_type_len;
    char last_type_str[EVTYPE_BYTES_MAX];
    int64_t last_active_ns;
    uint64_t notify_mask;     /* shards to tell when this connection closes (requests, handlers) */
    struct conn *flush_next;  /* shard flush list */
    struct conn *resume_next; /* shard resume list */
    struct conn *kill_next;   /* shard list of connections to release */
};

/* 2^0 .. 2^23 µs (8.4 s) and one overflow bucket. */
#define SHARD_LATENCY_BUCKETS 25
/* Sampling 1 in 64 deliveries keeps the clock read off most of the hot path (at 1 in 16 it was
 * still ~1.5% of fanout-10) while giving thousands of samples per second under any real load. */
#define SHARD_LATENCY_SAMPLE 64

struct shard_stats {
    atomic_uint_fast64_t connections, connections_total;
    atomic_uint_fast64_t frames_in, frames_out, events_in, events_out;
    atomic_uint_fast64_t bytes_in, bytes_out, bytes_queued;
    atomic_uint_fast64_t slow_disconnects, drops, duplicates, errors;
    atomic_uint_fast64_t campaigns, subscriptions, paused_reads;
    /* the Provider (handlers/provider.c) */
    atomic_uint_fast64_t req_success, req_failed, req_cancelled, req_timeout, req_no_handler;
    atomic_uint_fast64_t open_streams, heartbeats, handler_losses;
    /* the media handlers (handlers/media.c): gauges */
    atomic_uint_fast64_t media_rooms, media_peers;
    /* Delivery latency (acceptance on the owner to queueing on the subscriber's connection),
     * sampled 1 in SHARD_LATENCY_SAMPLE deliveries: bucket i counts samples < 2^i µs. */
    atomic_uint_fast64_t latency_us_bucket[SHARD_LATENCY_BUCKETS];
    atomic_uint_fast64_t latency_samples, latency_us_sum;
};

/* Statistics are written by their shard's thread only and read by anyone: a relaxed load and
 * store (plain moves on x86) instead of a locked read-modify-write on the hot path. */
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

struct shard {
    uint32_t index;
    struct broker *broker;
    const struct config *cfg;
    pthread_t thread;
    struct io_uring ring;
    int listen_fd;

    struct io_uring_buf_ring *buf_ring;
    size_t buf_ring_bytes;
    uint8_t *bufs;
    uint32_t buf_mask;

    struct map conns;     /* id -> conn */
    struct map campaigns; /* owner side: id -> struct campaign */
    struct map sub_lists; /* subscriber side: campaign id -> struct sub_list */
    struct sub_list firehose;
    uint32_t firehose_interest[CONFIG_SHARDS_MAX]; /* owner: firehose subs per shard */
    uint64_t firehose_mask;

    struct outbox outbox[2][CONFIG_SHARDS_MAX]; /* [0] requests, [1] deliveries */
    uint64_t ring_dirty;                        /* bit per destination shard: unpublished pushes */
    atomic_int sleeping;
    int64_t last_work_ns; /* --busy-poll-us: when the loop last found work */
    int64_t clock_ns;     /* shard_clock_ns: the cached time, and how often it was used */
    uint32_t clock_uses;

    struct remote_subs firehose_remote;
    void *hooks_state; /* the handlers layer's per-shard state */

    uint64_t delivery_stamp;
    uint32_t latency_tick;
    uint64_t next_conn, next_sub;
    uint64_t rng[4]; /* xoshiro256** state for UUIDv4 */

    struct conn *flush_head;
    struct conn *resume_head;
    struct conn *kill_head;
    uint32_t dead_count;

    bool stopping;
    int64_t stop_deadline_ns;
    bool timer_armed;
    struct __kernel_timespec tick;
    int64_t hook_timer_ns; /* earliest hook timer armed, 0 = none */
    struct __kernel_timespec hook_ts[64];
    uint32_t hook_ts_next;

    struct shard_stats stats;
};

/* ---- shard.c ---- */
int64_t shard_now_ns(void);

/* The time for stamping events: shard_now_ns() read at most once per SHARD_CLOCK_REUSE uses and
 * at least once per pass of the loop, so that an event's timestamp is never older than the
 * pass that accepted it and a burst of events pays for one clock read per 32. */
#define SHARD_CLOCK_REUSE 32
static inline int64_t shard_clock_ns(struct shard *s)
{
    if (++s->clock_uses >= SHARD_CLOCK_REUSE) {
        s->clock_ns = shard_now_ns();
        s->clock_uses = 0;
    }
    return s->clock_ns;
}
/* Queues a message for shard dst on ring class cls (0 requests, 1 deliveries). Never fails:
 * overflows into the outbox. */
void shard_send(struct shard *s, uint32_t dst, int cls, const struct ring_msg *m);
/* True if requests to dst can be queued right now without overflowing. */
bool shard_can_send_request(struct shard *s, uint32_t dst);
/* True while one of this shard's delivery rings is full (its outbox holds messages): new
 * emits would only pile up, so publishers are paused. */
bool shard_stalled(const struct shard *s);
struct io_uring_sqe *shard_sqe(struct shard *s);
/* Makes the timer hook run at or soon after deadline_ns (CLOCK_REALTIME, as shard_now_ns). */
void shard_timer_at(struct shard *s, int64_t deadline_ns);
uint32_t shard_of_campaign(const struct shard *s, int64_t campaign_id);
void shard_uuid4(struct shard *s, char out[36]);

/* ---- conn.c ---- */
struct conn *conn_create(struct shard *s, int fd);
void conn_recv_arm(struct conn *c);
void conn_recv_done(struct conn *c, struct io_uring_cqe *cqe);
void conn_send_done(struct conn *c, int res);
void conn_flush(struct conn *c);
void conn_op_done(struct conn *c);
/* Queues a frame (takes one reference). is_event frames are subject to the slow-subscriber
 * policy; others close the connection when it is over its bound. Returns 0, or -ENOBUFS if
 * the frame was not queued (dropped or connection closed). */
int conn_enqueue(struct conn *c, struct oframe *f);
/* Queues a control frame built from bytes (copied). */
void conn_enqueue_bytes(struct conn *c, const uint8_t *buf, size_t len);
void conn_error(struct conn *c, uint64_t correlation, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void conn_close(struct conn *c, const char *why);
/* Releases the connections closed since the last call (subscriptions, socket, memory). */
void conn_reap(struct shard *s);
void conn_close_after_flush(struct conn *c);
void conn_resume(struct conn *c);
void conn_note_gap(struct conn *c, const struct oframe *f);
struct conn *conn_lookup(struct shard *s, uint64_t id);

/* ---- pubsub.c ---- */
/* An event to sequence and publish on its campaign's owner. The caller fills ev's slices
 * (event_id, event_type, entity_id, metadata, payload, correlation_id, stream_seq, code,
 * message), type (parsed from ev.event_type) and user_id (inside ev.metadata, for user
 * filters). pubsub_publish assigns ev.sequence, ev.timestamp_unix_nanos and ev.campaign_id. */
struct publish {
    struct codec_event_out ev;
    struct evtype type;
    const uint8_t *user_id;
    uint32_t user_id_len;
    uint64_t direct_conn;  /* also deliver to this connection (skipped by its subscriptions) */
    uint64_t direct_conn2; /* and to this one (an external handler), likewise */
    bool terminal;         /* a lifecycle terminal event (counted by the requester's shard) */
    bool unsequenced;      /* deliver to direct_conn only; no sequence number (heartbeats) */
};

/* Fills p to publish an emit as it was sent (event id: id, which may be broker-assigned). */
void pubsub_publish_of_emit(struct publish *p, const struct emit_msg *m, const uint8_t *body,
                            struct codec_slice id, int64_t now);
/* Sequences, encodes once and fans out. Returns 0 or -ENOMEM. */
int pubsub_publish(struct shard *s, struct campaign *cp, struct publish *p);
struct campaign *pubsub_campaign(struct shard *s, int64_t id, bool create);
/* Sends a frame to a connection on any shard (takes the reference). */
void pubsub_to_conn(struct shard *s, uint64_t conn_id, struct oframe *f);
void pubsub_error_to_conn(struct shard *s, uint64_t conn_id, uint64_t corr, const char *code,
                          const char *msg);
/* Acknowledges an emit (message "accepted" or "duplicate"). */
void pubsub_ack(struct shard *s, const struct emit_msg *m, const uint8_t *body,
                struct codec_slice id, uint64_t seq, int64_t ts, bool duplicate);
/* True if any subscription anywhere matches this type (and user) on campaign cp. */
bool pubsub_any_match(struct shard *s, struct campaign *cp, const struct evtype *t,
                      const char *type_str, const uint8_t *user_id, uint32_t user_id_len);
/* Processes an emit whose campaign this shard owns. Slices point into body, which may be a
 * receive buffer (only valid during the call). origin_shard/conn_id name the publisher. */
void pubsub_emit(struct shard *s, const struct emit_msg *m, const uint8_t *body);
void pubsub_subscribe(struct conn *c, uint64_t correlation, const uint8_t *body, uint32_t len);
void pubsub_unsubscribe(struct conn *c, uint64_t correlation, uint64_t sub_id);
void pubsub_conn_gone(struct conn *c);
void pubsub_interest(struct shard *s, struct interest_msg *im);
void pubsub_interest_ack(struct shard *s, struct interest_msg *im);
void pubsub_deliver(struct shard *s, struct oframe *f);
void pubsub_free_shard(struct shard *s);
/* Answers a stats frame with every shard's counters. */
void pubsub_stats(struct conn *c, uint64_t correlation);

/* ---- hooks: how the handlers layer (handlers/) plugs into the core without the core
 * depending on it. All run on the shard's thread. ---- */
struct broker_hooks {
    int (*shard_init)(struct shard *s);
    void (*shard_free)(struct shard *s);
    /* An accepted (not duplicate) emit on its owner, before it is published. Returns true if
     * the handlers layer took it over (it then publishes and acknowledges itself). */
    bool (*emit)(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                 const uint8_t *body, struct codec_slice id, int64_t now_ns);
    /* A frame kind the core does not know (>= 18). */
    void (*frame)(struct conn *c, uint32_t kind, uint64_t correlation, const uint8_t *body,
                  uint32_t len);
    void (*msg)(struct shard *s, const struct ring_msg *m);
    void (*conn_gone)(struct shard *s, uint64_t conn_id);
    void (*timer)(struct shard *s, int64_t now_ns);
    /* An event was sequenced on campaign cp (f: its shared frame; take a reference to keep
     * it). Runs for every sequenced event, so it must be cheap. */
    void (*published)(struct shard *s, struct campaign *cp, struct oframe *f);
    /* Frees a hook message left in a ring at shutdown. */
    void (*msg_free)(const struct ring_msg *m);
};

/* Binds and listens on host:port (SO_REUSEPORT when asked: one listener per shard). Returns
 * the socket, or -errno with err naming the cause (and the flag to change, if in use). */
int broker_listen(const char *host, uint16_t port, bool reuseport, int backlog, const char *flag,
                  char *err, size_t cap);

/* Installs the hooks; call before broker_start. */
void broker_set_hooks(const struct broker_hooks *h);
extern const struct broker_hooks *broker_hooks;

/* ---- broker.c ---- */
struct broker {
    struct config cfg;
    uint32_t shard_count;
    struct shard **shards;
    struct ring *rings[2][CONFIG_SHARDS_MAX][CONFIG_SHARDS_MAX]; /* [cls][src][dst] */
    atomic_int stop;
    atomic_uint connections; /* whole broker, for connections_max */
    pthread_barrier_t exit_barrier;
    pthread_barrier_t start_barrier;
    atomic_int start_failed;
    struct metrics *metrics;
    int64_t start_ns;
};

static inline struct ring *broker_ring(struct broker *b, int cls, uint32_t src, uint32_t dst)
{
    return b->rings[cls][src][dst];
}

#endif
