// SPDX-License-Identifier: Apache-2.0
//
// nexus-bench internals shared by its modules: the run configuration (options.c), the payload
// and frame templates (payload.c), the protocol drivers (proto_nexus.c, proto_nats.c,
// proto_redis.c), blocking set-up I/O (net.c), the epoll workers (engine.c), the report
// (report.c) and the orchestration (main.c).
//
// Threading: the configuration, payload, templates and campaign tables are written by the main
// thread before the workers start and are read-only afterwards. Each connection belongs to
// one worker thread, which alone touches its buffers and delivery state. Cross-thread facts
// are relaxed atomics with a single writer each: `gen` (events generated per publisher and
// campaign, written by the publisher's worker), `progress` (highest sequence seen per
// subscriber and publisher, written by the subscriber's worker), the per-thread published
// counters, and `phase` (written by the main thread).
#ifndef NEXUS_BENCH_BENCH_H
#define NEXUS_BENCH_BENCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

#include "bench/hist.h"
#include "client/nexus_client.h"

/* Limits on the workload, each chosen so that the tables below stay small (subscribers x
 * publishers progress words, publishers x campaigns counters) and so that a publisher index
 * fits the 16 bits the payload record gives it. */
#define BENCH_PUBLISHERS_MAX  4096
#define BENCH_SUBSCRIBERS_MAX 10000
#define BENCH_CAMPAIGNS_MAX   100000
#define BENCH_THREADS_MAX     64
#define BENCH_TABLE_CELLS_MAX (8u << 20) /* publishers x subscribers and x campaigns */
/* The record needs 50 bytes (three 16-byte Struct entries and the Payload header); 1 MiB less
 * framing keeps every frame inside nexusd's default --max-frame-bytes. */
#define BENCH_PAYLOAD_MIN 50
#define BENCH_PAYLOAD_MAX ((1u << 20) - 4096)
/* Bytes a campaign's publish frame may add to the payload (header, subject, type). */
#define BENCH_FRAME_OVERHEAD_MAX 512
/* Per-publisher sequence numbers have 40 bits in the record: 10^12 events, hours at any rate. */
#define BENCH_SEQ_BITS 40
#define BENCH_SEQ_MASK ((1ull << BENCH_SEQ_BITS) - 1)

/* --ids client: "p" + publisher (4 digits) + "-" + per-publisher counter (12 digits). */
#define BENCH_EVENT_ID_LEN  18
#define BENCH_EVENT_ID_TMPL "p0000-000000000000"

struct ssl_st; /* OpenSSL's SSL, used through tls.c */

/* JETSTREAM (NATS JetStream) and RSTREAM (Redis Streams) are spoken by the durable preset
 * only (durable.h). */
enum bench_broker { BENCH_NEXUS, BENCH_NATS, BENCH_REDIS, BENCH_JETSTREAM, BENCH_RSTREAM };

struct bench_cfg {
    enum bench_broker broker;
    char host[256];
    uint16_t port; /* 0 until resolved: the broker's default */
    uint32_t publishers;
    uint32_t subscribers;
    uint32_t campaigns;
    uint32_t payload_bytes;
    uint64_t rate; /* events/s over all publishers; 0 = max rate under the window */
    double duration_s;
    double warmup_s;
    double drain_s;        /* after publishing stops: how long in-flight events may take */
    uint32_t window;       /* max rate: events in flight per publisher */
    uint64_t window_bytes; /* ... and bytes of them */
    uint32_t threads;
    int broker_pid; /* 0 = broker CPU not measured */
    /* Fixed rate: waits shorter than this are spun, not slept (--spin-us; 0 = always sleep,
     * for when the generator shares a CPU with the broker). */
    uint64_t spin_below_ns;
    bool json;
    bool quiet;
    char preset[32];
    uint64_t campaign_base; /* campaign ids / subjects of this run start here */
    /* Credentials (--user/--token, $NEXUS_USER/$NEXUS_TOKEN, --token-file): nexus sends them
     * in Hello; NATS in CONNECT (user/pass, or auth_token without a user). */
    char user[256];
    char token[1024];
    /* --event-user-id: nexus emits carry metadata.global_context.user_id (what a client of a
     * broker without accounts sends; with accounts the broker stamps it). */
    char event_user_id[128];
    /* TLS (--tls, --tls-ca, --tls-cert, --tls-key, $NEXUS_TLS_CA/CERT/KEY): nexus and redis
     * from the first byte, NATS after the server's INFO (tls.c). */
    bool tls;
    char tls_ca[1024];
    char tls_cert[1024];
    char tls_key[1024];
    char tls_server_name[256]; /* the name the certificate must carry; default: host */
    bool no_replay;            /* durable preset: skip reading the events back */
    /* --ids client: nexus emits carry event ids p<publisher>-<counter> (checked against the
     * broker's duplicate window) instead of an empty id the broker fills in. */
    bool client_ids;
    /* --payload string: the record travels as hex text in one string field (bench_payload). */
    bool string_payload;
};

/* Parses argv into cfg. Returns 0, 1 after --help (exit 0), or -EINVAL after printing the
 * problem (exit 2). */
int bench_options_parse(struct bench_cfg *cfg, int argc, char **argv);
const char *bench_broker_name(enum bench_broker b);

/* The payload every event carries: a valid common.Payload whose data Struct holds three
 * number_value entries ("t": send time, "s": publisher << 40 | sequence, "c": campaign
 * index), each 8 bytes in place, then a string entry padding it to the requested size. The
 * brokers forward payload bytes verbatim, so a subscriber reads the three values at the same
 * offsets of what it receives. */
struct bench_payload {
    uint8_t *bytes;
    uint32_t len;
    uint32_t ts_off;
    uint32_t id_off;
    uint32_t campaign_off;
    /* --payload string: the data Struct holds one entry, "d", a string_value whose first 48
     * bytes are the three values as 16 lowercase hex digits each (then 'x' padding); the
     * offsets above point at the digits. The broker checks the string as UTF-8 like any
     * application string, which numbers skip. */
    bool text;
};

/* Builds a payload of exactly `bytes` bytes (>= BENCH_PAYLOAD_MIN), of numbers or, when
 * `text`, of one string. Returns 0, -EINVAL (no such size) or -ENOMEM. */
int bench_payload_build(struct bench_payload *p, uint32_t bytes, bool text);
void bench_payload_free(struct bench_payload *p);
/* The smallest payload whose string (--payload string) is `n` bytes long (for the presets). */
uint32_t bench_payload_text_len(uint32_t n);

static inline void bench_put64(uint8_t *p, uint64_t v)
{
    __builtin_memcpy(p, &v, 8); /* protobuf fixed64 is little-endian, like x86 and arm64 */
}
static inline uint64_t bench_get64(const uint8_t *p)
{
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
}

/* A record value at p in the payload's form: 8 bytes, or 16 hex digits (text). */
static inline void bench_pl_put(const struct bench_payload *pl, uint8_t *p, uint64_t v)
{
    if (!pl->text) {
        bench_put64(p, v);
        return;
    }
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = (uint8_t) "0123456789abcdef"[v & 15];
}
/* Reads a value written by bench_pl_put; text that is not 16 hex digits reads as
 * UINT64_MAX, which no check accepts. */
static inline uint64_t bench_pl_get(const struct bench_payload *pl, const uint8_t *p)
{
    if (!pl->text)
        return bench_get64(p);
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        uint8_t ch = p[i];
        uint64_t d = ch >= '0' && ch <= '9'   ? (uint64_t)(ch - '0')
                     : ch >= 'a' && ch <= 'f' ? (uint64_t)(ch - 'a' + 10)
                                              : 16;
        if (d == 16)
            return UINT64_MAX;
        v = v << 4 | d;
    }
    return v;
}

enum bench_counter {
    BC_PUBLISHED,     /* events written by publishers */
    BC_DELIVERED,     /* unique, in-order events received by subscribers */
    BC_PAYLOAD_BYTES, /* payload bytes of those */
    BC_WIRE_BYTES,    /* every byte read by subscribers */
    BC_LOST,          /* events skipped in a per-publisher sequence (gap seen mid-stream) */
    BC_DISORDER,      /* events at or below a sequence already seen: reordered or duplicated */
    BC_CORRUPT,       /* payloads of the wrong size or with impossible record values */
    BC_SEQ_GAPS,      /* nexus: breaks in the broker's per-campaign sequence */
    BC_GAP_DROPPED,   /* nexus: events a gap frame said were dropped */
    BC_BROKER_ERRORS, /* error replies (nexus error frames, NATS -ERR, Redis -ERR) */
    BC_DISCONNECTS,   /* connections the broker closed */
    BC_PUB_UNSENT,    /* bytes publishers could not write before the end */
    BC_SCHED_LAG_NS,  /* fixed rate: worst lag of a send behind its schedule */
    BC_LAT_MAX_NS,    /* worst latency since the progress line last read it */
    BC_COUNT
};

struct bench_thread;
struct bench_run;

enum bench_role { BENCH_PUB, BENCH_SUB };

struct bench_conn {
    int fd;
    enum bench_role role;
    uint32_t index;    /* publisher or subscriber index */
    uint32_t campaign; /* subscriber: its campaign index */
    bool dead;
    bool want_out; /* EPOLLOUT registered */
    bool paused;   /* publisher: window full */
    /* TLS (NULL: plain TCP). tls_more: decrypted bytes (or unread records) may wait inside
     * the SSL object, which epoll cannot see: read again without waiting for readiness.
     * read_wants_out: SSL_read needs the socket writable first (EPOLLOUT then reads). */
    struct ssl_st *ssl;
    bool tls_more;
    bool read_wants_out;
    struct bench_thread *thr;
    /* inbound bytes of a message not yet complete, kept between reads */
    uint8_t *carry;
    uint32_t carry_len, carry_cap;
    /* outbound bytes [out_head, out_len) not yet accepted by the socket */
    uint8_t *out;
    uint32_t out_head, out_len, out_cap;
    /* publisher */
    uint32_t next_campaign;            /* round robin over the campaigns */
    char event_id[BENCH_EVENT_ID_LEN]; /* --ids client: the last id sent, counted up in place */
    uint64_t sched_next;               /* fixed rate: index of the next scheduled event */
    /* subscriber, [publishers] each: next expected sequence and unique events accepted */
    uint64_t *next_seq;
    uint64_t *received;
    uint64_t broker_seq_last;
};

struct bench_thread {
    struct bench_run *run;
    uint32_t index;
    pthread_t tid;
    int epfd;
    struct bench_conn **pubs;
    uint32_t pub_count;
    struct bench_conn **subs;
    uint32_t sub_count;
    uint8_t *rbuf;
    size_t rbuf_cap;
    int64_t now_ns; /* clock read after the last receive */
    struct hist hist;
    uint64_t local[BC_COUNT];
    _Atomic uint64_t shared[BC_COUNT]; /* published copy of local for the progress line */
    char last_error[256];
    bool tls_more; /* some connection of this thread has tls_more set */
};

enum bench_phase { PHASE_RUN, PHASE_DRAIN, PHASE_STOP };

struct bench_proto;

struct bench_run {
    struct bench_cfg cfg;
    const struct bench_proto *proto;
    struct bench_payload pl;
    /* publish frame of campaign c: tmpl + tmpl_off[c], tmpl_len[c] bytes, payload at +pl_off */
    uint8_t *tmpl;
    uint32_t *tmpl_off, *tmpl_len, *tmpl_pl_off;
    uint32_t *tmpl_id_off; /* --ids client (nexus): where the event id's bytes are, else NULL */
    uint32_t frame_len_max;
    uint32_t window_events;     /* min(window, window_bytes / frame_len_max), at least 1 */
    _Atomic uint64_t *gen;      /* [publisher * campaigns + c]: events generated */
    _Atomic uint64_t *progress; /* [subscriber * publishers + p]: highest sequence seen */
    uint32_t *camp_first;       /* [campaigns + 1]: range of camp_subs */
    uint32_t *camp_subs;        /* subscribers grouped by campaign */
    uint32_t *sub_campaign;     /* [subscribers] */
    struct bench_conn *conns;   /* publishers, then subscribers */
    uint32_t conn_count;
    struct bench_thread *threads;
    int64_t t0_ns;            /* publishing starts */
    int64_t measure_start_ns; /* end of warm-up */
    int64_t measure_end_ns;   /* publishing stops */
    _Atomic int phase;
};

/* A connection being set up: blocking I/O with a deadline, and what it read so far. */
struct bench_setup {
    int fd;
    const struct bench_cfg *cfg;
    struct ssl_st *ssl; /* after bench_tls_handshake; then owned by the connection */
    uint8_t buf[65536];
    size_t len;
    int64_t deadline_ns;
};

/* Writes all of data before the deadline. 0 or -errno. */
int bench_setup_send(struct bench_setup *s, const void *data, size_t len);
/* Reads more bytes into s->buf before the deadline. Returns bytes read, 0 if the peer closed,
 * -ETIMEDOUT, -ENOBUFS when the buffer is full, or -errno. */
int bench_setup_fill(struct bench_setup *s);
/* Drops the first n bytes of s->buf. */
void bench_setup_consume(struct bench_setup *s, size_t n);

/* TLS (tls.c). bench_tls_init builds the client context from cfg when cfg->tls (0, or <0
 * after printing why). bench_tls_handshake makes s->fd non-blocking and runs the client
 * handshake (certificate and server name verified) before s's deadline: 0 with s->ssl set,
 * or -errno with err filled. */
struct ssl_st;
int bench_tls_init(const struct bench_cfg *cfg);
int bench_tls_handshake(struct bench_setup *s, char *err, size_t cap);
void bench_tls_free(struct ssl_st *ssl);
/* Non-blocking I/O on fd, through ssl when not NULL. recv: bytes read, 0 when the peer
 * closed, -EAGAIN (with *want_out when TLS must write first) or -errno. send: bytes written,
 * -EAGAIN or -errno; after a partial TLS write, retry with the same unsent bytes first. */
long bench_io_recv(int fd, struct ssl_st *ssl, void *buf, size_t len, bool *want_out);
long bench_io_send(int fd, struct ssl_st *ssl, const void *buf, size_t len);
/* Whether ssl holds bytes already read from the socket (epoll will not report them). */
bool bench_tls_pending(const struct ssl_st *ssl);

/* A broker protocol spoken by the benchmark. */
struct bench_proto {
    const char *name;
    uint16_t port_default;
    /* Blocking: greets the broker right after connect. 0 or -errno with err filled. */
    int (*greet)(struct bench_setup *s, char *err, size_t cap);
    /* Blocking: subscribes to campaign index c and waits until the broker confirms that
     * later publishes reach it. 0 or -errno with err filled. */
    int (*subscribe)(struct bench_setup *s, const struct bench_run *r, uint32_t c, char *err,
                     size_t cap);
    /* Writes the publish frame of campaign c, carrying r->pl, into out. Returns its length
     * (and the payload's offset in *pl_off) or -ENOSPC. */
    int (*frame)(const struct bench_run *r, uint32_t c, uint8_t *out, size_t cap, uint32_t *pl_off);
    /* Consumes the complete messages at the start of buf, calling the bench_on_* hooks.
     * Returns the bytes consumed (the rest is kept for the next read) or -EPROTO after
     * recording why with bench_conn_fail. */
    long (*parse)(struct bench_conn *c, const uint8_t *buf, size_t len);
};

extern const struct bench_proto bench_proto_nexus;
extern const struct bench_proto bench_proto_nats;
extern const struct bench_proto bench_proto_redis;

/* Hooks the parsers call (engine.c). `payload` is the event's payload as delivered;
 * broker_seq is the broker's per-campaign sequence when the protocol carries one, else 0. */
void bench_on_message(struct bench_conn *c, const uint8_t *payload, uint32_t len,
                      uint64_t broker_seq);
/* The broker announced `dropped` events it will not deliver (nexus gap frame). */
void bench_on_gap(struct bench_conn *c, uint64_t dropped);
/* The broker answered with an error; text is quoted in the report. */
void bench_on_broker_error(struct bench_conn *c, const char *text, size_t len);
/* Queues bytes to send back (PONG and the like). */
void bench_conn_reply(struct bench_conn *c, const void *data, size_t len);
/* Records a protocol violation on c (the connection is then closed). */
void bench_conn_fail(struct bench_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* calloc that ends the run (exit 3) when memory is short. */
void *bench_calloc(size_t n, size_t size);
/* Records the first problem of a run in buf (later ones are counted, not kept). */
void bench_first_error(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The lifecycle workload (lifecycle.c): request -> started -> success round trips against
 * nexusd --test-handlers. Returns the exit status (0 ok, 1 delivery failed, 2 usage or a
 * broker without request lifecycle, 3 set-up failed). */
int bench_lifecycle_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted);

/* The streams workload (streams.c): many open test:stream_ticks streams with heartbeats,
 * every tick and heartbeat checked, then all cancelled. Same exit codes as above. */
int bench_streams_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted);

/* Worker thread body (engine.c); arg is its struct bench_thread. */
void *bench_thread_main(void *arg);

/* Monotonic clock in nanoseconds. */
int64_t bench_now_ns(void);

/* The final numbers of a run (report.c). */
struct bench_result {
    double measured_s;
    uint64_t published_measured, delivered_measured;
    uint64_t payload_bytes_measured, wire_bytes_measured;
    uint64_t published_total, expected_total, delivered_total;
    uint64_t lost; /* expected - delivered, unique */
    uint64_t counters[BC_COUNT];
    struct hist *hist;
    double client_cpu_s, broker_cpu_s; /* broker_cpu_s < 0: not measured */
    bool ok;
    char verdict[512];
};

/* CPU seconds used by process pid (user + system, from /proc/pid/stat), or -1. */
double bench_proc_cpu_s(int pid);
/* CPU seconds used by this process (getrusage). */
double bench_self_cpu_s(void);
/* Prints the human report to stream f. */
void bench_report_text(const struct bench_run *r, const struct bench_result *res, FILE *f);
/* Prints the result as one JSON object on a line to stream f. */
void bench_report_json(const struct bench_run *r, const struct bench_result *res, FILE *f);

#endif
