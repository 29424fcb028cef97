// SPDX-License-Identifier: Apache-2.0
//
// The `durable` workload of nexus-bench (durable.h): acknowledged publishes with a bounded
// window per publisher, against nexusd (emit + emit_ack), NATS JetStream (PUB with a reply
// subject + PubAck) or Redis Streams (XADD). The run: connect and set up every publisher
// (blocking, with a deadline), fill every window, then one epoll loop reads acknowledgements
// and refills the windows until the measured window ends; then the publishes still open get
// --drain-s to be answered, and every one must be: a publish never answered, an error reply,
// a reply for no open publish or a lost connection fails the run (exit 1). Then, for brokers
// whose driver has one, the events are read back (replay) and counted. Nexus replays on a fresh
// connection: per publisher's campaign, a subscribe with from_sequence 1, and the campaign's
// events must arrive as sequences 1, 2, ... up to the highest acknowledged one.
//
// Bounded: the loop ends at the measured window's end (or on SIGINT), the drain at --drain-s,
// the replay at 60 s, set-up at 10 s per connection; every inner loop is bounded by the bytes
// at hand.
#include "bench/durable.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "codec/envelope.h"
#include "codec/frame.h"
#include "codec/wire.h"

#define DUR_IN_BYTES   (1u << 20)
#define DUR_OUT_BYTES  (256u << 10)
#define DUR_SETUP_NS   10000000000ll
#define DUR_REPLAY_NS  60000000000ll
#define DUR_EVENTS_MAX 64
#define DUR_EVENT_TYPE "bench:durable:v1:success"
#define DUR_FRAME_MAX  1024u /* one publish of the 64-byte payload, any protocol */

/* --- hooks --------------------------------------------------------------------------------- */

void dur_bad(struct dur_run *r, struct dconn *c, const char *fmt, ...)
{
    r->k[DK_BAD]++;
    if (r->first_error[0])
        return;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->first_error, sizeof(r->first_error), "publisher %u: %s", c ? c->index : 0, msg);
}

/* Frees the slot of seq (0: the oldest open one). Returns its send time, or -1. */
static int64_t take_slot(struct dur_run *r, struct dconn *c, uint64_t seq, const char *what)
{
    if (seq == 0)
        seq = c->low;
    if (seq == 0 || seq < c->low || seq >= c->next_seq || c->slot_seq[seq & c->mask] != seq) {
        dur_bad(r, c,
                "%s for publish %" PRIu64 ", which is not open (open: %" PRIu64 "..%" PRIu64 ")",
                what, seq, c->low, c->next_seq - 1);
        return -1;
    }
    int64_t t = c->slot_t[seq & c->mask];
    c->slot_seq[seq & c->mask] = 0;
    c->open--;
    while (c->low < c->next_seq && c->slot_seq[c->low & c->mask] == 0)
        c->low++;
    return t;
}

void dur_ack(struct dur_run *r, struct dconn *c, uint64_t seq)
{
    int64_t t = take_slot(r, c, seq, "acknowledgement");
    if (t < 0)
        return;
    r->k[DK_ACKED]++;
    c->acked++;
    if (r->measuring) {
        r->acked_measured++;
        hist_record(&r->hist, r->now > t ? (uint64_t)(r->now - t) : 0);
    }
}

void dur_nack(struct dur_run *r, struct dconn *c, uint64_t seq, const char *text, size_t len)
{
    r->k[DK_NACKED]++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "publisher %u: publish refused: %.*s",
                 c->index, (int)(len < 180 ? len : 180), text);
    take_slot(r, c, seq, "error reply");
}

bool dur_queue(struct dconn *c, const void *data, size_t len)
{
    if (c->out_cap - c->out_len < len && c->out_head) {
        memmove(c->out, c->out + c->out_head, c->out_len - c->out_head);
        c->out_len -= c->out_head;
        c->out_head = 0;
    }
    if (c->out_cap - c->out_len < len)
        return false;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    return true;
}

/* --- connection I/O ------------------------------------------------------------------------ */

static void dconn_kill(struct dur_run *r, struct dconn *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    r->k[DK_DISCONNECTS]++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "publisher %u: %s", c->index, why);
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    bench_tls_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
}

static void set_out(struct dconn *c, bool want)
{
    if (c->dead || c->want_out == want)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

static void dconn_flush(struct dur_run *r, struct dconn *c)
{
    while (!c->dead && c->out_head < c->out_len) {
        long w = bench_io_send(c->fd, c->ssl, c->out + c->out_head, c->out_len - c->out_head);
        if (w > 0) {
            c->out_head += (uint32_t)w;
            continue;
        }
        if (w == -EAGAIN) {
            set_out(c, true);
            return;
        }
        char why[128];
        snprintf(why, sizeof(why), "send: %s", w < 0 ? strerror((int)-w) : "closed");
        dconn_kill(r, c, why);
        return;
    }
    c->out_head = c->out_len = 0;
    set_out(c, c->read_wants_out);
}

/* Parses what c->in holds; false when the connection failed. */
static bool dconn_parse(struct dur_run *r, struct dconn *c)
{
    long used = r->proto->parse(r, c, c->in, c->in_len);
    if (used < 0) {
        dconn_kill(r, c, "protocol error");
        return false;
    }
    dconn_consume(c, (size_t)used);
    if (c->in_len == c->in_cap) {
        dconn_kill(r, c, "reply larger than the input buffer");
        return false;
    }
    return true;
}

static void dconn_read(struct dur_run *r, struct dconn *c)
{
    while (!c->dead) {
        bool want_out = false;
        long n = bench_io_recv(c->fd, c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &want_out);
        if (n == -EAGAIN) {
            if (want_out != c->read_wants_out) {
                c->read_wants_out = want_out;
                if (want_out)
                    set_out(c, true);
            }
            return;
        }
        if (n <= 0) {
            char why[128];
            snprintf(why, sizeof(why), "broker closed the connection%s%s", n < 0 ? ": " : "",
                     n < 0 ? strerror((int)-n) : "");
            dconn_kill(r, c, why);
            return;
        }
        r->now = bench_now_ns();
        c->in_len += (uint32_t)n;
        if (!dconn_parse(r, c))
            return;
    }
}

void dconn_consume(struct dconn *c, size_t n)
{
    if (n >= c->in_len) {
        c->in_len = 0;
        return;
    }
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= (uint32_t)n;
}

static int wait_fd(int fd, short events, int64_t deadline_ns)
{
    int64_t left = deadline_ns - bench_now_ns();
    if (left <= 0)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, (int)(left / 1000000 + 1));
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    return n == 0 ? -ETIMEDOUT : 0;
}

int dconn_send_all(struct dconn *c, const void *data, size_t len, int64_t deadline_ns)
{
    const uint8_t *p = data;
    size_t off = 0;
    while (off < len) {
        if (c->dead)
            return -ECONNRESET;
        long w = bench_io_send(c->fd, c->ssl, p + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w != -EAGAIN)
            return w < 0 ? (int)w : -ECONNRESET;
        int rc = wait_fd(c->fd, POLLOUT, deadline_ns);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int dconn_fill(struct dconn *c, int64_t deadline_ns)
{
    if (c->in_len == c->in_cap)
        return -ENOBUFS;
    for (;;) {
        if (c->dead)
            return -ECONNRESET;
        bool want_out = false;
        long n = bench_io_recv(c->fd, c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &want_out);
        if (n > 0) {
            c->in_len += (uint32_t)n;
            return (int)n;
        }
        if (n == 0)
            return -ECONNRESET;
        if (n != -EAGAIN)
            return (int)n;
        int rc = wait_fd(c->fd, want_out ? POLLOUT : POLLIN, deadline_ns);
        if (rc < 0)
            return rc;
    }
}

/* Sends publishes on c while its window has room and sending is allowed. */
static void refill(struct dur_run *r, struct dconn *c, bool sending)
{
    if (!sending || c->dead)
        return;
    uint8_t frame[DUR_FRAME_MAX];
    int64_t now = bench_now_ns();
    while (c->next_seq - c->low < r->window) {
        uint64_t seq = c->next_seq;
        int n = r->proto->frame(r, c, seq, frame, sizeof(frame));
        if (n < 0 || !dur_queue(c, frame, (size_t)n)) {
            dur_bad(r, c, "cannot encode or queue publish %" PRIu64, seq);
            break;
        }
        c->slot_seq[seq & c->mask] = seq;
        c->slot_t[seq & c->mask] = now;
        c->next_seq++;
        c->open++;
        r->k[DK_SENT]++;
    }
    dconn_flush(r, c);
}

/* --- set-up -------------------------------------------------------------------------------- */

static int open_conn(struct dur_run *r, struct dconn *c, uint32_t index)
{
    const struct bench_cfg *cfg = r->cfg;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->epfd = r->epfd;
    c->index = index;
    c->in_cap = DUR_IN_BYTES;
    c->in = bench_calloc(1, c->in_cap);
    c->out_cap = DUR_OUT_BYTES;
    c->out = bench_calloc(1, c->out_cap);
    uint32_t ring = 1;
    while (ring < r->window)
        ring <<= 1;
    c->mask = ring - 1;
    c->slot_seq = bench_calloc(ring, sizeof(uint64_t));
    c->slot_t = bench_calloc(ring, sizeof(int64_t));
    c->next_seq = c->low = 1;
    char err[512] = "";
    int fd = nexus_tcp_connect(cfg->host, cfg->port, err, sizeof(err));
    if (fd < 0) {
        fprintf(stderr, "nexus-bench: %s\n", err);
        return fd;
    }
    struct bench_setup *s = bench_calloc(1, sizeof(*s));
    s->fd = fd;
    s->cfg = cfg;
    s->deadline_ns = bench_now_ns() + DUR_SETUP_NS;
    int rc = r->proto->base->greet(s, err, sizeof(err));
    if (rc == 0 && r->proto->setup)
        rc = r->proto->setup(r, s, index, err, sizeof(err));
    if (rc < 0 || s->len > c->in_cap) {
        fprintf(stderr, "nexus-bench: publisher %u: %s\n", index,
                rc < 0 ? err : "set-up reply larger than the input buffer");
        bench_tls_free(s->ssl);
        close(fd);
        free(s);
        return rc < 0 ? rc : -ENOBUFS;
    }
    memcpy(c->in, s->buf, s->len);
    c->in_len = (uint32_t)s->len;
    c->ssl = s->ssl;
    free(s);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("nexus-bench: epoll_ctl");
        return -errno;
    }
    return 0;
}

/* --- the loop ------------------------------------------------------------------------------ */

static uint64_t open_total(const struct dur_run *r)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < r->n; i++)
        n += r->conns[i].dead ? 0 : r->conns[i].open;
    return n;
}

/* Runs the loop until end_ns (or until nothing is open, when draining). */
static void pump(struct dur_run *r, int64_t end_ns, bool sending, bool until_idle,
                 volatile sig_atomic_t *interrupted)
{
    struct epoll_event evs[DUR_EVENTS_MAX];
    /* A window emptied by acks read just as the previous pump ended gets no event of its own
     * to refill it: fill every one first. */
    for (uint32_t i = 0; i < r->n; i++)
        refill(r, &r->conns[i], sending && bench_now_ns() < end_ns);
    while (!*interrupted) {
        int64_t now = bench_now_ns();
        if (now >= end_ns || (until_idle && open_total(r) == 0))
            return;
        int64_t wait = end_ns - now < 5000000 ? end_ns - now : 5000000;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = wait};
        int n = epoll_pwait2(r->epfd, evs, DUR_EVENTS_MAX, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            bench_first_error(r->first_error, sizeof(r->first_error), "epoll_pwait2: %s",
                              strerror(errno));
            return;
        }
        for (int i = 0; i < n; i++) {
            struct dconn *c = evs[i].data.ptr;
            if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                dconn_read(r, c);
            if (!c->dead && (evs[i].events & EPOLLOUT) && c->read_wants_out)
                dconn_read(r, c); /* TLS: the read that waited for a writable socket */
            if (!c->dead && (evs[i].events & EPOLLOUT))
                dconn_flush(r, c);
            refill(r, c, sending && bench_now_ns() < end_ns);
        }
    }
}

/* --- the Nexus driver ---------------------------------------------------------------------- */

static int nexus_frame(const struct dur_run *r, const struct dconn *c, uint64_t seq, uint8_t *out,
                       size_t cap)
{
    struct codec_emit_in e;
    memset(&e, 0, sizeof(e));
    e.correlation = seq; /* > 0: the broker answers with emit_ack (or an error) */
    e.event_type.ptr = (const uint8_t *)DUR_EVENT_TYPE;
    e.event_type.len = (uint32_t)strlen(DUR_EVENT_TYPE);
    e.campaign_id = (int64_t)(r->cfg->campaign_base + c->index);
    e.payload.ptr = r->pl.bytes;
    e.payload.len = r->pl.len;
    e.has_payload = true;
    size_t n = codec_emit_size(&e);
    if (n > cap)
        return -ENOSPC;
    return (int)codec_emit_encode(&e, out);
}

/* The next complete frame of buf at *off, its envelope decoded into *env: 1 (and *off moved
 * past it), 0 when the frame is not complete yet, -EPROTO with err ("what: ...") filled. */
static int nexus_next_frame(const uint8_t *buf, size_t len, size_t *off, uint32_t in_cap,
                            struct codec_envelope *env, const char *what, char *err, size_t cap)
{
    if (len - *off < CODEC_FRAME_HEADER_BYTES)
        return 0;
    uint32_t l = wire_get_be32(buf + *off);
    if (l == 0 || l > in_cap - CODEC_FRAME_HEADER_BYTES) {
        snprintf(err, cap, "%s: frame length %u out of range", what, l);
        return -EPROTO;
    }
    if (len - *off < CODEC_FRAME_HEADER_BYTES + (size_t)l)
        return 0;
    const uint8_t *body = buf + *off + CODEC_FRAME_HEADER_BYTES;
    *off += CODEC_FRAME_HEADER_BYTES + (size_t)l;
    char cerr[CODEC_ERR_BYTES];
    if (codec_envelope_decode(body, l, env, cerr) < 0) {
        snprintf(err, cap, "%s: %s", what, cerr);
        return -EPROTO;
    }
    return 1;
}

static long nexus_parse(struct dur_run *r, struct dconn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    struct codec_envelope env;
    char cerr[CODEC_ERR_BYTES], ferr[CODEC_ERR_BYTES + 64];
    int fr;
    while ((fr = nexus_next_frame(buf, len, &off, c->in_cap, &env, "nexus", ferr, sizeof(ferr))) >
           0) {
        if (env.kind == CODEC_KIND_EMIT_ACK) {
            struct codec_event_in ev;
            if (codec_event_decode(env.body.ptr, env.body.len, &ev, cerr) < 0) {
                dur_bad(r, c, "nexus: undecodable emit_ack: %s", cerr);
                continue;
            }
            if (!ev.success || ev.sequence == 0) {
                dur_nack(r, c, env.correlation, (const char *)ev.message.ptr, ev.message.len);
                continue;
            }
            if (ev.sequence > c->seq_max)
                c->seq_max = ev.sequence;
            dur_ack(r, c, env.correlation);
        } else if (env.kind == CODEC_KIND_ERROR) {
            struct codec_error_in e;
            char text[256];
            int n = codec_error_decode(env.body.ptr, env.body.len, &e, cerr) == 0
                        ? snprintf(text, sizeof(text), "%.*s: %.*s", (int)e.code.len,
                                   (const char *)e.code.ptr, (int)e.message.len,
                                   (const char *)e.message.ptr)
                        : snprintf(text, sizeof(text), "undecodable error frame");
            if (env.correlation)
                dur_nack(r, c, env.correlation, text, n > 0 ? (size_t)n : 0);
            else
                dur_bad(r, c, "nexus: broker error: %s", text);
        } else if (env.kind == CODEC_KIND_PING) {
            uint64_t nonce = 0;
            uint8_t pong[CODEC_CONTROL_BYTES_MAX];
            codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, cerr);
            int n = codec_pong_encode(pong, sizeof(pong), env.correlation, nonce);
            if (n > 0)
                dur_queue(c, pong, (size_t)n);
        }
        /* anything else (pong, stats, goaway before a close): nothing to count */
    }
    if (fr < 0) {
        dur_bad(r, c, "%s", ferr);
        return -EPROTO;
    }
    return (long)off;
}

/* Replay state: the replaying connection's campaigns, in publisher order. */
struct nx_replay {
    uint32_t cur;       /* the publisher whose campaign is being replayed */
    bool acked;         /* its subscribe_ack arrived */
    uint64_t next;      /* the sequence expected next of it */
    int64_t last_event; /* time the last event arrived */
};

/* Consumes the complete frames at the start of buf for the replay of publisher x->cur. Returns
 * the bytes consumed, or -EPROTO with err filled. */
static long nexus_replay_parse(struct dur_run *r, struct dconn *rc, struct nx_replay *x,
                               const uint8_t *buf, size_t len, char *err, size_t cap)
{
    const struct dconn *c = &r->conns[x->cur];
    int64_t campaign = (int64_t)(r->cfg->campaign_base + c->index);
    uint64_t corr = 1000000 + x->cur;
    size_t off = 0;
    struct codec_envelope env;
    char cerr[CODEC_ERR_BYTES];
    int fr;
    while ((fr = nexus_next_frame(buf, len, &off, rc->in_cap, &env, "nexus replay", err, cap)) >
           0) {
        if (env.kind == CODEC_KIND_EVENT) {
            struct codec_event_in ev;
            if (codec_event_decode(env.body.ptr, env.body.len, &ev, cerr) < 0) {
                snprintf(err, cap, "nexus replay: undecodable event: %s", cerr);
                return -EPROTO;
            }
            if (ev.campaign_id != campaign || ev.sequence != x->next || ev.sequence > c->seq_max) {
                snprintf(err, cap,
                         "nexus replay: campaign %lld sequence %" PRIu64
                         " arrived, expected campaign %lld sequence %" PRIu64 " (of 1..%" PRIu64
                         ")",
                         (long long)ev.campaign_id, ev.sequence, (long long)campaign, x->next,
                         c->seq_max);
                return -EPROTO;
            }
            if (ev.payload.len != r->pl.len) {
                snprintf(err, cap,
                         "nexus replay: campaign %lld sequence %" PRIu64
                         " carries %u payload bytes, not %u",
                         (long long)campaign, ev.sequence, ev.payload.len, r->pl.len);
                return -EPROTO;
            }
            x->next++;
            x->last_event = bench_now_ns();
            r->replayed++;
        } else if (env.kind == CODEC_KIND_SUBSCRIBE_ACK && env.correlation == corr) {
            x->acked = true;
        } else if (env.kind == CODEC_KIND_GAP) {
            struct codec_gap_in g;
            if (codec_gap_decode(env.body.ptr, env.body.len, &g, cerr) < 0)
                snprintf(err, cap, "nexus replay: undecodable gap notice: %s", cerr);
            else
                snprintf(err, cap,
                         "nexus replay: gap notice for campaign %lld, sequences %" PRIu64
                         "..%" PRIu64 " (%.*s)",
                         (long long)g.campaign_id, g.first_sequence, g.last_sequence,
                         (int)g.reason.len, (const char *)g.reason.ptr);
            return -EPROTO;
        } else if (env.kind == CODEC_KIND_ERROR) {
            struct codec_error_in e;
            if (codec_error_decode(env.body.ptr, env.body.len, &e, cerr) == 0)
                snprintf(err, cap, "nexus replay: broker error: %.*s: %.*s", (int)e.code.len,
                         (const char *)e.code.ptr, (int)e.message.len, (const char *)e.message.ptr);
            else
                snprintf(err, cap, "nexus replay: undecodable error frame");
            return -EPROTO;
        } else if (env.kind == CODEC_KIND_PING) {
            uint64_t nonce = 0;
            uint8_t pong[CODEC_CONTROL_BYTES_MAX];
            codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, cerr);
            int n = codec_pong_encode(pong, sizeof(pong), env.correlation, nonce);
            if (n > 0)
                dur_queue(rc, pong, (size_t)n);
        } else if (env.kind == CODEC_KIND_GOAWAY) {
            snprintf(err, cap, "nexus replay: the broker sent goaway");
            return -EPROTO;
        } else {
            snprintf(err, cap, "nexus replay: unexpected %s frame", codec_kind_name(env.kind));
            return -EPROTO;
        }
    }
    return fr < 0 ? -EPROTO : (long)off;
}

static void dconn_free(struct dconn *c)
{
    if (c->fd >= 0 && !c->dead) {
        bench_tls_free(c->ssl);
        close(c->fd); /* leaves the epoll set with it */
    }
    c->ssl = NULL;
    c->fd = -1;
    free(c->in);
    free(c->out);
    free(c->slot_seq);
    free(c->slot_t);
    c->in = c->out = NULL;
    c->slot_seq = NULL;
    c->slot_t = NULL;
}

/* Replay: a fresh connection subscribes to each publisher's campaign in turn with
 * from_sequence 1 (pattern "*"); the broker sends the logged events, then the subscribe_ack.
 * A campaign is done when its sequences 1..seq_max (the highest acknowledged) have arrived, in
 * order and once each, and its subscribe_ack too. One subscription at a time keeps the broker's
 * queue to this connection to one campaign's events. Timed from the first subscribe sent to the
 * last event received. */
static int nexus_replay(struct dur_run *r, int64_t deadline_ns, char *err, size_t cap)
{
    struct dconn rc;
    if (open_conn(r, &rc, r->n) < 0) {
        snprintf(err, cap, "nexus replay: cannot open the replay connection");
        dconn_free(&rc);
        return -ECONNREFUSED;
    }
    int ret = 0;
    struct nx_replay x = {0};
    int64_t t0 = 0;
    for (uint32_t p = 0; p < r->n && ret == 0; p++) {
        const struct dconn *c = &r->conns[p];
        if (c->seq_max != c->acked) {
            snprintf(err, cap,
                     "nexus replay: publisher %u had %" PRIu64
                     " publishes acknowledged, the highest sequence acknowledged is %" PRIu64
                     " (a campaign that was not empty?)",
                     p, c->acked, c->seq_max);
            ret = -EPROTO;
            break;
        }
        x.cur = p;
        x.acked = false;
        x.next = 1;
        const char *all = "*";
        uint8_t sub[CODEC_CONTROL_BYTES_MAX];
        int n = codec_subscribe_from_encode(sub, sizeof(sub), 1000000 + p,
                                            (int64_t)(r->cfg->campaign_base + c->index), &all, 1,
                                            NULL, 1);
        if (n < 0) {
            snprintf(err, cap, "nexus replay: cannot encode subscribe");
            ret = n;
            break;
        }
        if (!t0)
            t0 = bench_now_ns();
        ret = dconn_send_all(&rc, sub, (size_t)n, deadline_ns);
        if (ret < 0) {
            snprintf(err, cap, "nexus replay: send: %s", strerror(-ret));
            break;
        }
        /* Bounded by the deadline: each turn reads more bytes or fails. */
        while (!(x.acked && x.next > c->seq_max)) {
            long used = nexus_replay_parse(r, &rc, &x, rc.in, rc.in_len, err, cap);
            if (used < 0) {
                ret = (int)used;
                break;
            }
            dconn_consume(&rc, (size_t)used);
            if (rc.out_len > rc.out_head) { /* pongs */
                ret = dconn_send_all(&rc, rc.out + rc.out_head, rc.out_len - rc.out_head,
                                     deadline_ns);
                rc.out_head = rc.out_len = 0;
                if (ret < 0) {
                    snprintf(err, cap, "nexus replay: send: %s", strerror(-ret));
                    break;
                }
            }
            if (x.acked && x.next > c->seq_max)
                break;
            int got = dconn_fill(&rc, deadline_ns);
            if (got < 0) {
                snprintf(err, cap,
                         "nexus replay: campaign %llu: %s after %" PRIu64 " of %" PRIu64
                         " events%s",
                         (unsigned long long)(r->cfg->campaign_base + c->index), strerror(-got),
                         x.next - 1, c->seq_max,
                         got == -ECONNRESET
                             ? " (nexusd queues a campaign's replay at once and closes the "
                               "connection past --max-outbound-bytes: raise it)"
                         : x.acked ? ""
                                   : " (no subscribe_ack)");
                ret = got;
                break;
            }
        }
    }
    if (t0)
        r->replay_s = (double)((x.last_event > t0 ? x.last_event : bench_now_ns()) - t0) / 1e9;
    dconn_free(&rc);
    return ret;
}

const struct dur_proto dur_proto_nexus = {
    .name = "nexus",
    .port_default = 7400,
    .base = &bench_proto_nexus,
    .ack_meaning = "emit_ack per emit (correlation id); durability is nexusd's --data-dir/--fsync",
    .setup = NULL,
    .frame = nexus_frame,
    .parse = nexus_parse,
    .replay = nexus_replay,
};

/* --- main ---------------------------------------------------------------------------------- */

int bench_durable_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted)
{
    static struct dur_run run;
    struct dur_run *r = &run;
    r->cfg = cfg;
    r->proto = cfg->broker == BENCH_NEXUS       ? &dur_proto_nexus
               : cfg->broker == BENCH_JETSTREAM ? &dur_proto_jetstream
               : cfg->broker == BENCH_RSTREAM   ? &dur_proto_rstream
                                                : NULL;
    if (!r->proto) {
        fprintf(stderr,
                "nexus-bench: the durable preset speaks --broker nexus, jetstream or "
                "redis-stream (core NATS and Redis pub/sub do not acknowledge durable "
                "publishes), not %s\n",
                bench_broker_name(cfg->broker));
        return 2;
    }
    r->n = cfg->publishers;
    r->window = cfg->window;
    hist_reset(&r->hist);
    if (bench_payload_build(&r->pl, cfg->payload_bytes, false) < 0) {
        fprintf(stderr, "nexus-bench: cannot build a %u-byte payload\n", cfg->payload_bytes);
        return 2;
    }
    if (r->pl.len + 256 > DUR_FRAME_MAX) {
        fprintf(stderr, "nexus-bench: the durable preset publishes payloads of at most %u bytes\n",
                DUR_FRAME_MAX - 256);
        return 2;
    }
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        perror("nexus-bench: epoll_create1");
        return 3;
    }
    r->conns = bench_calloc(r->n, sizeof(*r->conns));
    for (uint32_t i = 0; i < r->n && !*interrupted; i++)
        if (open_conn(r, &r->conns[i], i) < 0)
            return 3;
    if (*interrupted)
        return 1;
    if (!cfg->quiet)
        fprintf(stderr,
                "nexus-bench: %s at %s:%u, durable: %u publisher(s) x %u unacknowledged, %u B\n",
                r->proto->name, cfg->host, cfg->port, r->n, r->window, r->pl.len);

    /* Whatever arrived with the set-up replies, then the first windows. */
    for (uint32_t i = 0; i < r->n; i++) {
        r->now = bench_now_ns();
        dconn_parse(r, &r->conns[i]);
        dconn_read(r, &r->conns[i]);
        refill(r, &r->conns[i], true);
    }
    int64_t t0 = bench_now_ns();
    pump(r, t0 + (int64_t)(cfg->warmup_s * 1e9), true, false, interrupted);
    double cpu0 = bench_self_cpu_s();
    double bcpu0 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
    int64_t m0 = bench_now_ns();
    r->measuring = true;
    for (double t = 0; t < cfg->duration_s && !*interrupted; t += 1) {
        uint64_t acked = r->k[DK_ACKED];
        double step = cfg->duration_s - t < 1 ? cfg->duration_s - t : 1;
        int64_t t1 = bench_now_ns();
        pump(r, m0 + (int64_t)((t + step) * 1e9), true, false, interrupted);
        if (!cfg->quiet) {
            double dt = (double)(bench_now_ns() - t1) / 1e9;
            fprintf(stderr,
                    "[%6.1fs measure] acked %10.0f/s  open %6" PRIu64 "  problems %" PRIu64 "\n",
                    (double)(bench_now_ns() - m0) / 1e9,
                    dt > 0 ? (double)(r->k[DK_ACKED] - acked) / dt : 0, open_total(r),
                    r->k[DK_NACKED] + r->k[DK_BAD] + r->k[DK_DISCONNECTS]);
        }
    }
    r->measuring = false;
    double s = (double)(bench_now_ns() - m0) / 1e9;
    double cpu = bench_self_cpu_s() - cpu0;
    double bcpu = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) - bcpu0 : -1;

    /* Drain: every publish sent must be answered. */
    pump(r, bench_now_ns() + (int64_t)(cfg->drain_s * 1e9), false, true, interrupted);
    uint64_t unanswered = 0;
    for (uint32_t i = 0; i < r->n; i++)
        unanswered += r->conns[i].open;
    if (unanswered)
        bench_first_error(r->first_error, sizeof(r->first_error),
                          "%" PRIu64 " publishes not answered within %.1f s after the run",
                          unanswered, cfg->drain_s);
    const uint64_t *k = r->k;
    /* JetStream numbers the stream's messages: after the drain its last sequence must be
     * the count of acknowledged publishes (none stored twice, none stored unacknowledged). */
    if (r->stream_seq_max && r->stream_seq_max != r->k[DK_ACKED])
        dur_bad(r, NULL, "the stream's last sequence is %" PRIu64 " after %" PRIu64 " acks",
                r->stream_seq_max, r->k[DK_ACKED]);
    bool ok = !*interrupted && unanswered == 0 && k[DK_NACKED] == 0 && k[DK_BAD] == 0 &&
              k[DK_DISCONNECTS] == 0 && r->acked_measured > 0;

    /* Replay: read every acknowledged event back. */
    char rerr[256] = "";
    if (ok && r->proto->replay && !cfg->no_replay) {
        r->replay_ran = true;
        int64_t rt0 = bench_now_ns();
        r->replay_s = 0;
        int rc = r->proto->replay(r, rt0 + DUR_REPLAY_NS, rerr, sizeof(rerr));
        if (r->replay_s <= 0)
            r->replay_s = (double)(bench_now_ns() - rt0) / 1e9;
        r->replay_ok = rc == 0 && r->replayed == k[DK_ACKED];
        if (rc == 0 && !r->replay_ok)
            snprintf(rerr, sizeof(rerr),
                     "replay read %" PRIu64 " events, %" PRIu64 " were acknowledged", r->replayed,
                     k[DK_ACKED]);
        if (!r->replay_ok) {
            ok = false;
            bench_first_error(r->first_error, sizeof(r->first_error), "%s", rerr);
        }
    }

    double aps = s > 0 ? (double)r->acked_measured / s : 0;
    const struct hist *h = &r->hist;
    FILE *f = cfg->json ? stderr : stdout;
    fprintf(f, "nexus-bench durable: %s %s:%u, %u publisher(s) x %u unacknowledged, %u B\n",
            r->proto->name, cfg->host, cfg->port, r->n, r->window, r->pl.len);
    fprintf(f, "  acks         %s\n", r->proto->ack_meaning);
    fprintf(f, "  measured     %.2f s (after %.2f s warm-up)\n", s, cfg->warmup_s);
    fprintf(f, "  acknowledged %.0f events/s (%" PRIu64 " in the window, %" PRIu64 " in all)\n",
            aps, r->acked_measured, k[DK_ACKED]);
    fprintf(f, "  ack latency  p50 %.1f us  p90 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us\n",
            hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.9) / 1e3, hist_quantile(h, 0.99) / 1e3,
            hist_quantile(h, 0.999) / 1e3, h->max_ns / 1e3);
    fprintf(f, "  cpu          client %.1f%% of a core", s > 0 ? 100 * cpu / s : 0);
    if (bcpu >= 0)
        fprintf(f, ", broker %.1f%% of a core", s > 0 ? 100 * bcpu / s : 0);
    fprintf(f, "\n");
    if (r->replay_ran)
        fprintf(f, "  replay       %" PRIu64 " events read back in %.3f s (%.0f events/s)%s\n",
                r->replayed, r->replay_s, r->replay_s > 0 ? (double)r->replayed / r->replay_s : 0,
                r->replay_ok ? "" : " FAILED");
    else
        fprintf(f, "  replay       not measured%s\n",
                !r->proto->replay ? " (no read-from-sequence for this broker yet)"
                : cfg->no_replay  ? " (--no-replay)"
                                  : " (the run failed)");
    fprintf(f,
            "  delivery     %s: sent %" PRIu64 ", acknowledged %" PRIu64 ", refused %" PRIu64
            ", unanswered %" PRIu64 ", problems %" PRIu64 ", disconnects %" PRIu64 "%s%s\n",
            ok ? "OK" : "FAILED", k[DK_SENT], k[DK_ACKED], k[DK_NACKED], unanswered, k[DK_BAD],
            k[DK_DISCONNECTS], r->first_error[0] ? ": first problem: " : "", r->first_error);
    if (cfg->json)
        printf("{\"broker\":\"%s\",\"preset\":\"durable\",\"ok\":%s,\"publishers\":%u,"
               "\"window\":%u,\"payload_bytes\":%u,\"measured_s\":%.3f,\"acked_per_s\":%.1f,"
               "\"acked_measured\":%" PRIu64 ",\"acked_total\":%" PRIu64
               ",\"ack_p50_us\":%.2f,\"ack_p90_us\":%.2f,\"ack_p99_us\":%.2f,"
               "\"ack_p999_us\":%.2f,\"ack_max_us\":%.2f,\"client_cpu_pct\":%.1f,"
               "\"broker_cpu_pct\":%.1f,\"replay_events\":%" PRIu64 ",\"replay_per_s\":%.1f,"
               "\"refused\":%" PRIu64 ",\"unanswered\":%" PRIu64 ",\"problems\":%" PRIu64
               ",\"disconnects\":%" PRIu64 "}\n",
               r->proto->name, ok ? "true" : "false", r->n, r->window, r->pl.len, s, aps,
               r->acked_measured, k[DK_ACKED], hist_quantile(h, 0.5) / 1e3,
               hist_quantile(h, 0.9) / 1e3, hist_quantile(h, 0.99) / 1e3,
               hist_quantile(h, 0.999) / 1e3, h->max_ns / 1e3, s > 0 ? 100 * cpu / s : 0,
               bcpu >= 0 && s > 0 ? 100 * bcpu / s : -1, r->replay_ran ? r->replayed : 0,
               r->replay_ran && r->replay_s > 0 ? (double)r->replayed / r->replay_s : -1,
               k[DK_NACKED], unanswered, k[DK_BAD], k[DK_DISCONNECTS]);
    if (!ok)
        fprintf(stderr, "nexus-bench: FAIL: %s\n",
                r->first_error[0] ? r->first_error : "interrupted or nothing acknowledged");
    for (uint32_t i = 0; i < r->n; i++) {
        struct dconn *c = &r->conns[i];
        if (!c->dead && c->fd >= 0) {
            bench_tls_free(c->ssl);
            close(c->fd);
        }
        free(c->in);
        free(c->out);
        free(c->slot_seq);
        free(c->slot_t);
    }
    free(r->conns);
    close(r->epfd);
    bench_payload_free(&r->pl);
    return ok ? 0 : 1;
}
