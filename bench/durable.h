// SPDX-License-Identifier: Apache-2.0
//
// The `durable` workload of nexus-bench: acknowledged durable publishes. --publishers
// connections each keep --window publishes of the 64-byte payload unacknowledged and count
// the broker's acknowledgements: Nexus emit_ack frames (emits with a correlation id), NATS
// JetStream PubAcks (publishes with a reply subject into a file-backed stream), Redis Streams
// XADD replies. Measured: acknowledged events/s in the measured window and the latency from
// the send to the ack. Optionally the events are then read back (replay: Nexus subscribes with
// from_sequence 1 per campaign). durable.c holds the
// loop, the report and the Nexus driver; proto_jetstream.c and proto_rstream.c the others.
// One thread drives every connection with epoll.
#ifndef NEXUS_BENCH_DURABLE_H
#define NEXUS_BENCH_DURABLE_H

#include "bench/bench.h"

/* A publisher connection: non-blocking, with buffered output and input, and the ring of its
 * unacknowledged publishes (seq 1, 2, 3, ... ; slot seq & mask). */
struct dconn {
    int fd;
    int epfd;
    uint32_t index;
    bool dead, want_out, read_wants_out;
    struct ssl_st *ssl;
    uint8_t *in;
    uint32_t in_len, in_cap;
    uint8_t *out;
    uint32_t out_head, out_len, out_cap;
    uint64_t *slot_seq; /* 0 = free */
    int64_t *slot_t;    /* send time */
    uint32_t mask;
    uint64_t next_seq; /* next publish to send */
    uint64_t low;      /* oldest publish not yet answered */
    uint32_t open;     /* publishes sent and not yet answered */
    uint64_t acked;
    /* redis-stream: the last entry id acknowledged (ms-seq), strictly increasing */
    uint64_t last_ms, last_sub;
    /* nexus: the highest campaign sequence in this publisher's emit_acks */
    uint64_t seq_max;
};

enum dur_counter {
    DK_SENT,
    DK_ACKED,
    DK_NACKED,      /* error replies to publishes */
    DK_BAD,         /* ack for no open publish, malformed reply, broker error not tied to one */
    DK_DISCONNECTS, /* connections lost */
    DK_COUNT
};

struct dur_proto;

struct dur_run {
    const struct bench_cfg *cfg;
    const struct dur_proto *proto;
    struct bench_payload pl;
    struct dconn *conns;
    uint32_t n, window;
    int epfd;
    int64_t now; /* time of the last read */
    bool measuring;
    struct hist hist;
    uint64_t k[DK_COUNT];
    uint64_t acked_measured;
    uint64_t stream_seq_max; /* jetstream: highest PubAck seq */
    /* replay */
    bool replay_ran, replay_ok;
    uint64_t replayed;
    double replay_s;
    char first_error[256];
};

struct dur_proto {
    const char *name;
    uint16_t port_default;
    const struct bench_proto *base; /* greet (TLS, handshake, credentials) */
    const char *ack_meaning;        /* one line for the report */
    /* Blocking, after the greet: per-connection set-up (JetStream: the reply subscription,
     * and on connection 0 the stream). 0 or -errno with err filled. May be NULL. */
    int (*setup)(struct dur_run *r, struct bench_setup *s, uint32_t index, char *err, size_t cap);
    /* Writes publish seq of connection c into out. Returns its length or -ENOSPC. */
    int (*frame)(const struct dur_run *r, const struct dconn *c, uint64_t seq, uint8_t *out,
                 size_t cap);
    /* Consumes the complete replies at the start of buf (calling dur_ack / dur_nack / dur_bad).
     * Returns the bytes consumed or -EPROTO. */
    long (*parse)(struct dur_run *r, struct dconn *c, const uint8_t *buf, size_t len);
    /* Reads every acknowledged event back, bounded by deadline_ns; fills r->replayed (and may
     * set r->replay_s, else the whole call is timed) and returns 0, or -errno with err filled.
     * NULL: no replay for this broker. */
    int (*replay)(struct dur_run *r, int64_t deadline_ns, char *err, size_t cap);
};

extern const struct dur_proto dur_proto_nexus;
extern const struct dur_proto dur_proto_jetstream;
extern const struct dur_proto dur_proto_rstream;

/* Hooks of the parsers. seq 0: the oldest open publish (protocols that answer in order). */
void dur_ack(struct dur_run *r, struct dconn *c, uint64_t seq);
void dur_nack(struct dur_run *r, struct dconn *c, uint64_t seq, const char *text, size_t len);
void dur_bad(struct dur_run *r, struct dconn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Queues bytes on c (a pong, a request); sent at the next flush. false if they do not fit. */
bool dur_queue(struct dconn *c, const void *data, size_t len);

/* Blocking helpers on a connection after the run (replay): send everything, or read more into
 * c->in, each before the deadline. 0 / bytes read, or -errno (-ETIMEDOUT, -ECONNRESET). */
int dconn_send_all(struct dconn *c, const void *data, size_t len, int64_t deadline_ns);
int dconn_fill(struct dconn *c, int64_t deadline_ns);
/* Drops the first n bytes of c->in. */
void dconn_consume(struct dconn *c, size_t n);

/* Entry point (main.c): exit status 0 ok, 1 failed, 2 usage, 3 set-up failed. */
int bench_durable_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted);

#endif
