// SPDX-License-Identifier: Apache-2.0
//
// A shard and the shard set (shard.c: the io_uring loop, the rings between shards, accept and
// timers; broker.c: start-up and shutdown). Private to broker/: connections are in conn.h,
// campaigns and subscriptions in pubsub.h, and handlers see a shard only through core.h.
// Threading rule: everything in a struct shard, and every conn, sub and campaign hanging off
// it, belongs to that shard's thread alone. Other shards reach it only through the SPSC rings
// (struct ring) and the `sleeping` flag; statistics are relaxed atomics that any thread may
// read.
#ifndef NEXUS_BROKER_SHARD_H
#define NEXUS_BROKER_SHARD_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "broker/config.h"
#include "broker/core.h"
#include "broker/map.h"
#include "broker/pubsub.h"
#include "broker/stats.h"
#include "ring/spsc.h"

struct broker;
struct conn;

/* Overflow for a ring that was full when a message had to be sent: control messages and the
 * deliveries of the request being processed. The shard stops taking new requests while any
 * outbox holds messages, so outboxes stay small (docs/ARCHITECTURE.md, backpressure). */
struct outbox {
    struct ring_msg *v;
    uint32_t head, count, cap;
};

/* Emits on their way to one owner shard, packed back to back (each a struct emit_msg and its
 * body, 8-byte aligned) and sent as one MSG_EMIT_BATCH: one allocation, one ring slot and one
 * free for all of them, and memory the owner reads in order (docs/ARCHITECTURE.md). */
struct emit_chunk {
    uint32_t used, cap; /* bytes of data[] filled, and its size */
    uint32_t count;     /* emits in it */
    uint32_t src;       /* the shard that filled it */
    _Alignas(8) uint8_t data[];
};

struct shard {
    uint32_t index;
    struct broker *broker;
    const struct config *cfg;
    pthread_t thread;
    struct io_uring ring;
    int listen_fd;
    int ws_listen_fd; /* --ws-listen, -1 without */

    struct io_uring_buf_ring *buf_ring;
    size_t buf_ring_bytes;
    uint8_t *bufs;
    uint32_t buf_mask;

    struct map conns;         /* id -> conn */
    struct map campaigns;     /* owner side: id -> struct campaign */
    struct map sub_lists;     /* subscriber side: campaign id -> struct sub_list */
    struct sub_list firehose; /* subscriptions to every campaign */
    uint32_t firehose_interest[CONFIG_SHARDS_MAX]; /* owner: firehose subs per shard */
    uint64_t firehose_mask;

    struct outbox outbox[2][CONFIG_SHARDS_MAX];      /* [0] requests, [1] deliveries */
    struct emit_chunk *emit_open[CONFIG_SHARDS_MAX]; /* emits for each owner, not yet sent */
    uint64_t ring_dirty; /* bit per destination shard: unpublished pushes */
    atomic_int sleeping;
    int64_t last_work_ns; /* --busy-poll-us: when the loop last found work */
    int64_t clock_ns;     /* shard_clock_ns: the cached time, and how often it was used */
    uint32_t clock_uses;

    struct remote_subs firehose_remote; /* owner: other shards' firehose subscriptions */
    /* Paced replay (pubsub.c): owner side, (subscriber shard, subscription id) -> struct
     * replay_cur; subscriber side, the subscriptions whose owner waits for us to ask. */
    struct map replays;
    struct replay_ask {
        uint64_t conn_id, sub_id;
    } * asks;
    uint32_t nasks, cap_asks;
    struct emit_pipe emit_pipe;         /* emits waiting for their prefetch (pubsub.h) */
    const uint8_t *input_lo, *input_hi; /* the input conn_process is reading (stable in it) */
    void *hooks_slot;                   /* the handlers layer's per-shard state (core_shard_slot) */

    uint64_t delivery_stamp;
    uint32_t latency_tick;
    uint64_t next_conn, next_sub;
    uint64_t rng[4]; /* xoshiro256** state for UUIDv4 */

    struct conn *flush_head;
    struct conn *resume_head;
    struct conn *kill_head;
    uint32_t dead_count;

    bool stopping;
    int drain_stage; /* shard.c: DRAIN_* */
    int64_t stop_deadline_ns;
    bool timer_armed;
    struct __kernel_timespec tick;
    int64_t hook_timer_ns; /* earliest hook timer armed, 0 = none */
    struct __kernel_timespec hook_ts[64];
    uint32_t hook_ts_next;

    uint64_t assembly_left; /* --max-assembly-bytes not yet taken by partial frames */
    /* Accepting paused after EMFILE/ENFILE/ENOMEM (no descriptor or memory for one more
     * connection): re-armed at accept_resume_ns, with a back-off that doubles to 1 s. */
    int64_t accept_resume_ns;
    uint32_t accept_backoff_ms;
    int64_t accept_log_ns; /* last "accept failed" log line: at most one per second */
    uint64_t accept_errors_unlogged;
    uint32_t campaign_hand; /* the idle-campaign sweep's position in the campaign table */
    bool trim_wanted;       /* much was freed: return free pages to the OS (shard.c) */
    uint32_t trim_again;    /* further collections of a trim still due */
    int64_t trim_last_ns;
    struct store *store; /* the event log (store.h), NULL without --data-dir */
    /* An emit rewritten to carry its account's user id (conn.c), until it is routed. */
    uint8_t *stamp_buf;
    uint32_t stamp_cap;

    struct shard_stats stats;

    /* Bytes of emit chunks this shard sent to each owner and the owner has not handled yet
     * (the owner subtracts): bounds them at SHARD_EMIT_INFLIGHT_MAX, as the ring's capacity
     * bounds its messages. On lines of their own: other shards write them. */
    _Alignas(64) atomic_uint_fast64_t emit_inflight[CONFIG_SHARDS_MAX];
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
/* Queues a message for shard dst on ring class cls (CORE_REQUEST, CORE_DELIVERY), overflowing
 * into the outbox when the ring is full. Returns 0, or -ENOMEM if the outbox could not grow:
 * the message was not queued and what it points at is still the caller's. */
int shard_send(struct shard *s, uint32_t dst, int cls, const struct ring_msg *m);
/* True if requests to dst can be queued right now without overflowing. */
bool shard_can_send_request(struct shard *s, uint32_t dst);
/* Room for an emit with a body of body_len bytes in the chunk going to owner dst (sent at the
 * end of the loop pass, or before any other request to dst). The caller fills it in full.
 * NULL if out of memory. */
struct emit_msg *shard_emit_slot(struct shard *s, uint32_t dst, uint32_t body_len);
/* True while one of this shard's delivery rings is full (its outbox holds messages): new
 * emits would only pile up, so publishers are paused. */
bool shard_stalled(const struct shard *s);
struct io_uring_sqe *shard_sqe(struct shard *s);
/* Makes the timer hook run at or soon after deadline_ns (CLOCK_REALTIME, as shard_now_ns). */
void shard_timer_at(struct shard *s, int64_t deadline_ns);
uint32_t shard_of_campaign(const struct shard *s, int64_t campaign_id);
void shard_uuid4(struct shard *s, char out[36]);

/* Set-up and the loop (the shard's own thread), then teardown (after every shard left its
 * loop): shard_drain_and_free frees what is in flight towards the shard, shard_free_outboxes
 * the rest of it. */
int shard_init(struct shard *s);
void shard_loop(struct shard *s);
void shard_drain_and_free(struct shard *s);
void shard_free_outboxes(struct shard *s);
/* Handles one completion of the shard's ring (a connection's, accept, timers, wake-ups). */
void shard_cqe(struct shard *s, struct io_uring_cqe *cqe);
/* The receive buffer bid, and giving it back to the kernel once its bytes are consumed. */
const uint8_t *shard_buf(struct shard *s, uint16_t bid);
void shard_buf_return(struct shard *s, uint16_t bid);
/* From the tick: re-arms accepting once its back-off has passed (accept errors), and, on
 * shard 0, measures the process's RSS against --max-memory. */
void shard_accept_check(struct shard *s, int64_t now_ns);
void shard_memory_check(struct shard *s);
/* The process's resident set size in bytes (0 if unknown). Any thread. */
uint64_t shard_rss_bytes(void);
/* Answers a stats frame with every shard's counters (stats_reply.c). */
void shard_stats_reply(struct conn *c, uint64_t correlation);

/* The handlers layer's hooks (core_set_hooks), or NULL. */
extern const struct core_hooks *core_hooks;

/* Binds and listens on host:port (SO_REUSEPORT when asked: one listener per shard). Returns
 * the socket, or -errno with err naming the cause (and the flag to change, if in use). */
int broker_listen(const char *host, uint16_t port, bool reuseport, int backlog, const char *flag,
                  char *err, size_t cap);

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
    atomic_int over_memory; /* RSS past --max-memory (shard 0 measures it every tick) */
    /* Drain: shards past each stage (shard.c, shard_drain_step). */
    atomic_uint drain_requests_done, drain_deliveries_done;
};

/* True while the process is past --max-memory: growth (subscriptions, campaigns) is refused. */
static inline bool shard_over_memory(const struct shard *s)
{
    return atomic_load_explicit(&s->broker->over_memory, memory_order_relaxed) != 0;
}

static inline struct ring *broker_ring(struct broker *b, int cls, uint32_t src, uint32_t dst)
{
    return b->rings[cls][src][dst];
}

#endif
