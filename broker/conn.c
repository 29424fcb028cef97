// SPDX-License-Identifier: Apache-2.0
//
// A client connection: its bytes in (multishot receive into the shard's provided buffers,
// incremental framing, dispatch by frame kind) and out (a bounded queue of shared frames sent
// with one sendmsg in flight, short sends resumed), backpressure (pause: stash input, cancel
// the receive; resume: replay the stash, re-arm), the slow-subscriber policy, and closing.
// Owned by the shard that accepted it; no other thread touches it.
//
// Closing is two-step: conn_close() marks the connection dead at once (nothing is queued or
// read after that) and shuts the socket down; the memory is freed when the last operation the
// kernel holds for it completes, since a buffer or msghdr given to the kernel belongs to it
// until then.
#include "broker/conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "broker/auth.h"
#include "broker/conn_ws.h"
#include "broker/log.h"
#include "broker/pubsub.h"
#include "broker/shard.h"
#include "broker/tls.h"
#include "broker/ud.h"
#include "codec/envelope.h"
#include "codec/wire.h"

/* Distinct campaigns a connection may have pending gap notices for under the drop policy;
 * past it the connection is closed as a slow subscriber (a gap table is memory too). */
#define CONN_GAPS_MAX 1024

/* Longest event_id / entity_id accepted: ids are for humans and logs, and every byte is
 * copied into every delivered frame. */
#define CONN_ID_BYTES_MAX     256
#define CONN_ENTITY_BYTES_MAX 1024

struct conn *conn_lookup(struct shard *s, uint64_t id)
{
    struct conn *c = map_get(&s->conns, id);
    return c && !(c->flags & CONN_DEAD) ? c : NULL;
}

struct conn *conn_create(struct shard *s, int fd)
{
    struct conn *c = aligned_alloc(16, (sizeof(*c) + 15) & ~(size_t)15);
    if (!c)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->shard = s;
    c->id = ((uint64_t)s->index << 56) | ++s->next_conn;
    /* Before hello a frame may be small only: a client that has not introduced itself cannot
     * make the broker hold a megabyte for it. */
    uint32_t pre = s->cfg->pre_hello_frame_bytes;
    codec_framer_init(&c->framer,
                      pre && pre < s->cfg->frame_bytes_max ? pre : s->cfg->frame_bytes_max);
    codec_framer_set_budget(&c->framer, &s->assembly_left);
    c->dedup_scope = c->id;
    c->iov = c->iov_small;
    c->accepted_ns = shard_now_ns();
    if (!s->cfg->token[0] && !auth_accounts_on())
        c->flags |= CONN_AUTHED;
    if (tls_enabled() && !(c->tls = tls_conn_new())) {
        free(c);
        return NULL;
    }
    if (map_put(&s->conns, c->id, c) < 0) {
        tls_conn_free(c->tls);
        free(c);
        return NULL;
    }
    stat_add(&s->stats.connections, 1);
    stat_add(&s->stats.connections_total, 1);
    log_debug((int)s->index, "connection %llu accepted fd=%d", (unsigned long long)c->id, fd);
    return c;
}

static void conn_free(struct conn *c)
{
    struct shard *s = c->shard;
    /* Only a connection that held much (a long queue, a large stash) is worth returning pages
     * to the OS for: collecting after every close costs the busy shard (measured: the large
     * workload lost ~20% with a trim after each benchmark connection's close). */
    if (c->q_cap >= 4096 || c->stash_cap > (64u << 10) || c->framer.buf_cap > (64u << 10))
        s->trim_wanted = true;
    NX_ASSERT((c->flags & (CONN_DEAD | CONN_REAPED)) == (CONN_DEAD | CONN_REAPED));
    NX_ASSERT(c->ops_inflight == 0 && !(c->flags & (CONN_RECV_ARMED | CONN_SEND_INFLIGHT)));
    NX_ASSERT(s->dead_count > 0);
    for (uint32_t i = 0; i < c->q_count; i++)
        oframe_unref(c->q[(c->q_head + i) & (c->q_cap - 1)]);
    stat_sub(&s->stats.bytes_queued, c->q_bytes);
    free(c->q);
    free(c->stage);
    if (c->iov != c->iov_small)
        free(c->iov);
    free(c->stash);
    free(c->gaps);
    free(c->subs);
    auth_conn_free(c);
    codec_framer_free(&c->framer);
    tls_conn_free(c->tls);
    conn_ws_free(c);
    close(c->fd);
    s->dead_count--;
    free(c);
}

/* One operation the kernel held for c has completed (its flag, if any, already cleared). */
static void conn_op_end(struct conn *c)
{
    NX_ASSERT(c->ops_inflight > 0);
    c->ops_inflight--;
}

void conn_op_done(struct conn *c)
{
    conn_op_end(c);
    if ((c->flags & CONN_REAPED) && c->ops_inflight == 0)
        conn_free(c);
}

void conn_close(struct conn *c, const char *why)
{
    if (c->flags & CONN_DEAD)
        return;
    struct shard *s = c->shard;
    /* Dead at once: nothing is queued to it or read from it any more. Its subscriptions and
     * socket are released by conn_reap() at the end of the loop iteration, because a close
     * can happen in the middle of a fan-out that is walking those subscription lists. */
    c->flags |= CONN_DEAD;
    s->dead_count++;
    atomic_fetch_sub_explicit(&s->broker->connections, 1, memory_order_relaxed);
    stat_sub(&s->stats.connections, 1);
    conn_ws_closed(c);
    log_debug((int)s->index, "connection %llu closed: %s", (unsigned long long)c->id, why);
    c->kill_next = s->kill_head;
    s->kill_head = c;
}

/* Requests the connection made or served end on the shards that hold them. */
static void conn_notify_gone(struct conn *c)
{
    struct shard *s = c->shard;
    uint64_t mask = c->notify_mask;
    while (mask) {
        uint32_t d = (uint32_t)__builtin_ctzll(mask);
        mask &= mask - 1;
        if (d == s->index) {
            if (core_hooks && core_hooks->conn_gone)
                core_hooks->conn_gone(s, c->id);
            continue;
        }
        struct ring_msg m = {.kind = MSG_CONN_GONE, .arg = c->id};
        if (shard_send(s, d, CORE_REQUEST, &m) < 0)
            log_error((int)s->index,
                      "out of memory telling shard %u that connection %llu closed: its requests "
                      "there end by timeout",
                      d, (unsigned long long)c->id);
    }
}

void conn_reap(struct shard *s)
{
    while (s->kill_head) {
        struct conn *c = s->kill_head;
        s->kill_head = c->kill_next;
        c->flags |= CONN_REAPED;
        if (c->flags & CONN_ON_RESUME) {
            struct conn **pp = &s->resume_head;
            while (*pp != c)
                pp = &(*pp)->resume_next;
            *pp = c->resume_next;
            c->flags &= ~CONN_ON_RESUME;
        }
        NX_ASSERT(c->flags & CONN_DEAD);
        map_del(&s->conns, c->id);
        pubsub_conn_gone(c);
        conn_notify_gone(c);
        /* Wakes the receive (and any send) in the kernel, which then complete. */
        shutdown(c->fd, SHUT_RDWR);
        if (c->flags & CONN_RECV_ARMED) {
            struct io_uring_sqe *sqe = shard_sqe(s);
            io_uring_prep_cancel64(sqe, ud_of_conn(c, UD_CONN_RECV), 0);
            io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_CANCEL));
            c->ops_inflight++;
        }
        if (c->ops_inflight == 0)
            conn_free(c);
    }
}

void conn_schedule_flush(struct conn *c)
{
    if (c->flags & (CONN_ON_FLUSH | CONN_DEAD))
        return;
    c->flags |= CONN_ON_FLUSH;
    c->flush_next = c->shard->flush_head;
    c->shard->flush_head = c;
}

void conn_close_after_flush(struct conn *c)
{
    if (c->flags & CONN_DEAD)
        return;
    c->flags |= CONN_CLOSING;
    if (c->q_count == 0 && c->stage_len == 0 && !(c->flags & CONN_SEND_INFLIGHT)) {
        conn_close(c, "closed after flush");
        return;
    }
    conn_schedule_flush(c);
}

/* ---- output ------------------------------------------------------------------------------- */

static bool conn_q_push(struct conn *c, struct oframe *f)
{
    if (c->q_count == c->q_cap) {
        uint32_t ncap = c->q_cap ? c->q_cap * 2 : 16;
        struct oframe **nq = malloc(sizeof(*nq) * ncap);
        if (!nq)
            return false;
        for (uint32_t i = 0; i < c->q_count; i++)
            nq[i] = c->q[(c->q_head + i) & (c->q_cap - 1)];
        free(c->q);
        c->q = nq;
        c->q_cap = ncap;
        c->q_head = 0;
    }
    c->q[(c->q_head + c->q_count) & (c->q_cap - 1)] = f;
    c->q_count++;
    c->q_bytes += f->len;
    stat_add(&c->shard->stats.bytes_queued, f->len);
    conn_schedule_flush(c);
    return true;
}

static void conn_slow(struct conn *c, const char *what)
{
    struct shard *s = c->shard;
    stat_add(&s->stats.slow_disconnects, 1);
    log_refusal((int)s->index, c->fd,
                "slow consumer disconnected: connection=%llu queued_bytes=%llu limit=%llu (%s)",
                (unsigned long long)c->id, (unsigned long long)c->q_bytes,
                (unsigned long long)s->cfg->outbound_bytes_max, what);
    conn_close(c, "slow consumer");
}

static void conn_note_gap(struct conn *c, const struct oframe *f)
{
    for (uint32_t i = 0; i < c->gap_count; i++) {
        struct gap *g = &c->gaps[i];
        if (g->campaign_id == f->campaign_id) {
            g->last = f->sequence;
            g->dropped++;
            return;
        }
    }
    if (c->gap_count == CONN_GAPS_MAX) {
        conn_slow(c, "too many campaigns with dropped events");
        return;
    }
    if (!c->gaps) {
        c->gaps = malloc(sizeof(*c->gaps) * CONN_GAPS_MAX);
        if (!c->gaps) {
            conn_slow(c, "out of memory for gap table");
            return;
        }
    }
    struct gap *g = &c->gaps[c->gap_count++];
    g->campaign_id = f->campaign_id;
    g->first = g->last = f->sequence;
    g->dropped = 1;
}

/* Queues the pending gap notices (before any newer event, so each arrives in order). */
void conn_flush_gaps(struct conn *c)
{
    for (uint32_t i = 0; i < c->gap_count; i++) {
        struct gap *g = &c->gaps[i];
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_gap_encode(buf, sizeof(buf), g->campaign_id, g->first, g->last, g->dropped,
                                 "slow_consumer");
        if (n > 0)
            conn_enqueue_bytes(c, buf, (size_t)n);
        log_info((int)c->shard->index,
                 "gap sent: connection=%llu campaign=%lld sequences=%llu..%llu dropped=%llu",
                 (unsigned long long)c->id, (long long)g->campaign_id, (unsigned long long)g->first,
                 (unsigned long long)g->last, (unsigned long long)g->dropped);
    }
    c->gap_count = 0;
}

static void conn_note_latency(struct shard *s, int64_t ts_ns)
{
    int64_t us = (shard_now_ns() - ts_ns) / 1000;
    if (us < 0)
        us = 0;
    unsigned b = 0;
    while (b < SHARD_LATENCY_BUCKETS - 1 && (uint64_t)us >= (1ull << b))
        b++;
    stat_add(&s->stats.latency_us_bucket[b], 1);
    stat_add(&s->stats.latency_samples, 1);
    stat_add(&s->stats.latency_us_sum, (uint64_t)us);
}

int conn_enqueue(struct conn *c, struct oframe *f)
{
    struct shard *s = c->shard;
    if (c->flags & CONN_DEAD) {
        oframe_unref(f);
        return -ENOBUFS;
    }
    if (c->q_bytes + f->len > s->cfg->outbound_bytes_max) {
        if (f->is_event && s->cfg->slow_policy == SLOW_DROP) {
            stat_add(&s->stats.drops, 1);
            if (c->gap_count == 0)
                log_warn((int)s->index,
                         "slow consumer: dropping events for connection=%llu queued_bytes=%llu",
                         (unsigned long long)c->id, (unsigned long long)c->q_bytes);
            conn_note_gap(c, f);
        } else {
            conn_slow(c, f->is_event ? "event" : "reply");
        }
        oframe_unref(f);
        return -ENOBUFS;
    }
    if (c->gap_count)
        conn_flush_gaps(c);
    if (!conn_q_push(c, f)) {
        oframe_unref(f);
        conn_close(c, "out of memory");
        return -ENOBUFS;
    }
    if (f->is_event) {
        stat_add(&s->stats.events_out, 1);
        if (++s->latency_tick % SHARD_LATENCY_SAMPLE == 0 && f->ts_ns)
            conn_note_latency(s, f->ts_ns);
    }
    return 0;
}

void conn_enqueue_bytes(struct conn *c, const uint8_t *buf, size_t len)
{
    if (c->flags & CONN_DEAD)
        return;
    struct oframe *f = oframe_alloc((uint32_t)len);
    if (!f) {
        conn_close(c, "out of memory");
        return;
    }
    memcpy(f->data, buf, len);
    /* Control replies are small and bounded by the frames that caused them; they may pass
     * the byte bound by one frame, since refusing an error reply would hide the error. */
    if (!conn_q_push(c, f)) {
        oframe_unref(f);
        conn_close(c, "out of memory");
    }
}

/* Error codes that mean a client misbehaved or was refused: logged at warn with its address
 * (log_refusal, bounded per shard). The others are routine (a cancel racing a reply) or the
 * broker's own trouble, logged where it happens; unauthorized is logged where it is decided
 * (conn_hello, conn_gate, auth.c), which knows more. */
static bool conn_code_is_refusal(const char *code)
{
    static const char *const codes[] = {
        "frame_empty",        "frame_too_large", "bad_protobuf",   "unknown_frame",
        "invalid_event_type", "invalid_pattern", "limit_exceeded", "unsupported_version",
        "permission_denied",  "timeout",
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (!strcmp(code, codes[i]))
            return true;
    return false;
}

void conn_error(struct conn *c, uint64_t correlation, const char *code, const char *fmt, ...)
{
    char msg[CODEC_CONTROL_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_error_encode(buf, sizeof(buf), correlation, code, msg);
    pubsub_emit_flush(c->shard); /* the acks of the emits before it go first */
    stat_add(&c->shard->stats.errors, 1);
    if (conn_code_is_refusal(code))
        log_refusal((int)c->shard->index, c->fd, "error code=%s connection=%llu: %s", code,
                    (unsigned long long)c->id, msg);
    else
        log_debug((int)c->shard->index, "error to connection=%llu correlation=%llu code=%s: %s",
                  (unsigned long long)c->id, (unsigned long long)correlation, code, msg);
    if (n > 0)
        conn_enqueue_bytes(c, buf, (size_t)n);
}

/* ---- output over TLS ------------------------------------------------------------------------ */

/* Encrypts queued frames, about one send's worth, and drops them from the queue as a send
 * completion does on a plain connection: their ciphertext is the TLS state's now. */
static void conn_tls_encrypt(struct conn *c)
{
    struct shard *s = c->shard;
    size_t bytes = 0;
    uint64_t freed = 0;
    int r = 0;
    NX_ASSERT(c->q_off == 0);
    while (c->q_count && bytes < CONN_SEND_BYTES_MAX) {
        struct oframe *f = c->q[c->q_head];
        if ((r = c->ws ? conn_ws_tls_write(c, f) : tls_conn_write(c->tls, f->data, f->len)) < 0)
            break;
        bytes += f->len;
        c->q_head = (c->q_head + 1) & (c->q_cap - 1);
        c->q_count--;
        c->q_bytes -= f->len;
        freed += f->len;
        oframe_unref(f);
        stat_add(&s->stats.frames_out, 1);
    }
    if (r == 0)
        r = tls_conn_write_end(c->tls);
    stat_sub(&s->stats.bytes_queued, freed);
    if (r < 0) {
        log_warn((int)s->index, "connection %llu closed: TLS encryption failed: %s",
                 (unsigned long long)c->id, tls_conn_error(c->tls));
        conn_close(c, "TLS encryption failed");
        return;
    }
    if (c->gap_count && c->q_bytes < s->cfg->outbound_bytes_max / 2)
        conn_flush_gaps(c);
}

/* One send of ciphertext: the rest of a short send, handshake messages, or the encryption of
 * the next frames once the previous ciphertext is all sent (nothing before the handshake). */
static void conn_tls_flush(struct conn *c)
{
    if (c->flags & (CONN_SEND_INFLIGHT | CONN_DEAD))
        return;
    if (c->q_count && !tls_conn_out_busy(c->tls) && tls_conn_established(c->tls)) {
        conn_tls_encrypt(c);
        if (c->flags & CONN_DEAD)
            return;
    }
    const uint8_t *p;
    size_t n = tls_conn_out(c->tls, &p);
    if (n == 0)
        return;
    struct io_uring_sqe *sqe = shard_sqe(c->shard);
    io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_SEND));
    c->flags |= CONN_SEND_INFLIGHT;
    c->ops_inflight++;
}

/* A send of ciphertext completed (res bytes, >= 0). Ciphertext left over is sent at once, so
 * that none waits without a send in flight (the frames it holds have left the queue). */
static void conn_tls_sent(struct conn *c, int res)
{
    tls_conn_out_sent(c->tls, (size_t)res, c->q_count == 0);
    if (tls_conn_out_pending(c->tls)) {
        conn_tls_flush(c);
    } else if (c->q_count) {
        conn_schedule_flush(c);
    } else if (c->flags & CONN_CLOSING) {
        conn_close(c, "closed after flush");
    } else if (c->q_cap > 1024) {
        free(c->q); /* a burst grew the queue array; drained now */
        c->q = NULL;
        c->q_cap = 0;
        c->q_head = 0;
    }
}

/* Deep queue: copies the next small frames (about one send's worth) into c->stage and drops
 * them from the queue; their bytes stay counted in q_bytes until sent. Returns whether it
 * staged anything. With tens of thousands of frames queued, the frames at the head are cold:
 * an iovec per frame makes the kernel walk them one by one, and every completion drops a
 * reference on a cold frame. Copied here, each frame is read once, its reference dropped while
 * it is hot, and the kernel copies one contiguous buffer. */
#define CONN_STAGE_AHEAD 8 /* frames: the copy of one hides the fetch of a later one */

static bool conn_stage(struct conn *c)
{
    if (c->q_count < CONN_STAGE_MIN_FRAMES ||
        c->q[c->q_head]->len - c->q_off > CONN_STAGE_FRAME_MAX)
        return false;
    if (!c->stage && !(c->stage = malloc(CONN_STAGE_BYTES)))
        return false; /* no memory: the iovec path still works */
    struct shard *s = c->shard;
    uint32_t n = 0, frames = 0;
    while (c->q_count) {
        if (c->q_count > CONN_STAGE_AHEAD) {
            /* A frame a few steps ahead: its header and its first bytes (a small event's). */
            const uint8_t *a =
                (const uint8_t *)c->q[(c->q_head + CONN_STAGE_AHEAD) & (c->q_cap - 1)];
            __builtin_prefetch(a);
            __builtin_prefetch(a + 64);
            __builtin_prefetch(a + 128);
            __builtin_prefetch(a + 192);
        }
        struct oframe *f = c->q[c->q_head];
        uint32_t len = f->len - c->q_off;
        if (len > CONN_STAGE_FRAME_MAX || n + len > CONN_STAGE_BYTES)
            break;
        memcpy(c->stage + n, f->data + c->q_off, len);
        n += len;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) & (c->q_cap - 1);
        c->q_count--;
        oframe_unref(f);
        frames++;
    }
    stat_add(&s->stats.frames_out, frames);
    c->stage_off = 0;
    c->stage_len = n;
    return n > 0;
}

void conn_flush(struct conn *c)
{
    if (c->tls) {
        conn_tls_flush(c);
        return;
    }
    if (c->ws) {
        conn_ws_flush(c);
        return;
    }
    if (c->flags & (CONN_SEND_INFLIGHT | CONN_DEAD))
        return;
    if (c->stage_len || conn_stage(c)) {
        struct io_uring_sqe *sqe = shard_sqe(c->shard);
        io_uring_prep_send(sqe, c->fd, c->stage + c->stage_off, c->stage_len - c->stage_off,
                           MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_SEND));
        c->send_frames = 0;
        c->flags |= CONN_SEND_INFLIGHT;
        c->ops_inflight++;
        return;
    }
    if (c->q_count == 0)
        return;
    NX_ASSERT(c->q_off < c->q[c->q_head]->len);
    uint32_t n = c->q_count < CONN_IOV_MAX ? c->q_count : CONN_IOV_MAX;
    if (n > CONN_IOV_SMALL && c->iov == c->iov_small) {
        struct iovec *big = malloc(sizeof(struct iovec) * CONN_IOV_MAX);
        if (big)
            c->iov = big;
    }
    if (c->iov == c->iov_small && n > CONN_IOV_SMALL)
        n = CONN_IOV_SMALL; /* no memory for the big array: smaller sends still work */
    size_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct oframe *f = c->q[(c->q_head + i) & (c->q_cap - 1)];
        uint32_t off = i == 0 ? c->q_off : 0;
        c->iov[i].iov_base = f->data + off;
        c->iov[i].iov_len = f->len - off;
        bytes += f->len - off;
        /* Many small frames per send, but not megabytes: past the socket buffer a send only
         * waits, and a big one holds the frames it covers longer. */
        if (bytes >= CONN_SEND_BYTES_MAX) {
            n = i + 1;
            break;
        }
    }
    memset(&c->msg, 0, sizeof(c->msg));
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    c->send_frames = n;
    struct io_uring_sqe *sqe = shard_sqe(c->shard);
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_SEND));
    c->flags |= CONN_SEND_INFLIGHT;
    c->ops_inflight++;
}

/* `left` bytes of the send in flight went out: of the staged buffer, or of the queued frames,
 * which are released. Returns the bytes no longer queued. */
static uint64_t conn_sent(struct conn *c, size_t left)
{
    if (c->stage_len) { /* the send was of the staged bytes */
        NX_ASSERT(left <= c->stage_len - c->stage_off);
        c->stage_off += (uint32_t)left;
        if (c->stage_off == c->stage_len)
            c->stage_off = c->stage_len = 0;
        c->q_bytes -= left;
        return left;
    }
    uint64_t freed = 0;
    while (left && c->q_count) {
        struct oframe *f = c->q[c->q_head];
        size_t rest = f->len - c->q_off;
        if (left < rest) {
            c->q_off += (uint32_t)left; /* short send: resume inside this frame */
            break;
        }
        left -= rest;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) & (c->q_cap - 1);
        c->q_count--;
        c->q_bytes -= f->len;
        freed += f->len;
        oframe_unref(f);
        stat_add(&c->shard->stats.frames_out, 1);
    }
    return freed;
}

void conn_send_done(struct conn *c, int res)
{
    struct shard *s = c->shard;
    NX_ASSERT(c->flags & CONN_SEND_INFLIGHT);
    c->flags &= ~CONN_SEND_INFLIGHT;
    if (c->flags & CONN_DEAD) {
        conn_op_done(c);
        return;
    }
    conn_op_end(c);
    if (res < 0) {
        if (res == -EAGAIN || res == -EINTR) {
            conn_schedule_flush(c);
            return;
        }
        conn_close(c, res == -EPIPE || res == -ECONNRESET ? "peer reset" : "send failed");
        return;
    }
    stat_add(&s->stats.bytes_out, (uint64_t)res);
    if (c->tls) {
        conn_tls_sent(c, res);
        return;
    }
    if (c->ws) {
        conn_ws_sent(c, res);
        return;
    }
    stat_sub(&s->stats.bytes_queued, conn_sent(c, (size_t)res));
    if (c->gap_count && c->q_bytes < s->cfg->outbound_bytes_max / 2)
        conn_flush_gaps(c);
    if (c->q_count || c->stage_len) {
        conn_schedule_flush(c);
    } else if (c->flags & CONN_CLOSING) {
        conn_close(c, "closed after flush");
    } else {
        if (c->iov != c->iov_small)
            free(c->iov); /* drained: the connection is not busy any more */
        c->iov = c->iov_small;
        free(c->stage);
        c->stage = NULL;
    }
    if (c->q_count == 0 && c->q_cap > 1024 && !(c->flags & CONN_DEAD)) {
        /* A burst grew the queue array; give the memory back once it is drained. */
        free(c->q);
        c->q = NULL;
        c->q_cap = 0;
        c->q_head = 0;
    }
}

/* ---- input -------------------------------------------------------------------------------- */

void conn_recv_arm(struct conn *c)
{
    if (c->flags & (CONN_RECV_ARMED | CONN_DEAD | CONN_CLOSING | CONN_PAUSED | CONN_DRAINING))
        return;
    struct io_uring_sqe *sqe = shard_sqe(c->shard);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_RECV));
    c->flags |= CONN_RECV_ARMED;
    c->ops_inflight++;
}

static bool stash_append(struct conn *c, const uint8_t *data, size_t len)
{
    /* Bound: the frame being held back plus what the kernel delivers before the cancel of the
     * receive lands; 4 MiB of slack is far more than one socket's receive window. */
    size_t limit = (size_t)c->shard->cfg->frame_bytes_max + CODEC_FRAME_HEADER_BYTES + (4u << 20);
    if (c->stash_len + len > limit)
        return false;
    if (c->stash_len + len > c->stash_cap) {
        size_t ncap = c->stash_cap ? c->stash_cap : 4096;
        while (ncap < c->stash_len + len)
            ncap *= 2;
        uint8_t *nb = realloc(c->stash, ncap);
        if (!nb)
            return false;
        c->stash = nb;
        c->stash_cap = (uint32_t)ncap;
    }
    memcpy(c->stash + c->stash_len, data, len);
    c->stash_len += (uint32_t)len;
    return true;
}

static void conn_pause(struct conn *c)
{
    struct shard *s = c->shard;
    if (!(c->flags & CONN_PAUSED)) {
        c->flags |= CONN_PAUSED;
        stat_add(&s->stats.paused_reads, 1);
        if ((c->flags & CONN_RECV_ARMED) && !(c->flags & CONN_RECV_CANCELLED)) {
            struct io_uring_sqe *sqe = shard_sqe(s);
            io_uring_prep_cancel64(sqe, ud_of_conn(c, UD_CONN_RECV), 0);
            io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_CANCEL));
            c->ops_inflight++;
            c->flags |= CONN_RECV_CANCELLED;
        }
    }
    /* A connection waiting for its credential to be verified is resumed by conn_auth_done,
     * not by the loop (which would only pause it again). */
    if (!(c->flags & (CONN_ON_RESUME | CONN_AUTH_PENDING))) {
        c->flags |= CONN_ON_RESUME;
        c->resume_next = s->resume_head;
        s->resume_head = c;
    }
}

/* Handles one frame. Returns 0 when done with it, 1 if it must wait (backpressure: the
 * caller stashes it and pauses), -1 if the connection was closed. */
static int conn_frame(struct conn *c, const uint8_t *frame, uint32_t len);

/* Answers a framing error (the stream is out of sync after it: the caller closes). */
static void conn_frame_error(struct conn *c, int r)
{
    const struct config *cfg = c->shard->cfg;
    if (r == -EMSGSIZE && !(c->flags & CONN_HELLO_SEEN) &&
        c->framer.frame_bytes_max < cfg->frame_bytes_max)
        conn_error(c, 0, "frame_too_large",
                   "frame length %u exceeds %u, the largest frame before hello "
                   "(--pre-hello-frame-bytes); send a hello first",
                   codec_framer_bad_len(&c->framer), c->framer.frame_bytes_max);
    else if (r == -EMSGSIZE)
        conn_error(c, 0, "frame_too_large", "frame length %u exceeds max_frame_bytes %u",
                   codec_framer_bad_len(&c->framer), cfg->frame_bytes_max);
    else if (r == -ENODATA)
        conn_error(c, 0, "frame_empty", "frame length 0 is not allowed");
    else if (r == -ENOBUFS)
        conn_error(c, 0, "limit_exceeded",
                   "the broker is receiving too many large frames at once "
                   "(--max-assembly-bytes); retry later");
    else
        conn_error(c, 0, "internal", "out of memory assembling a frame");
}

/* A whole frame arrived: the connection made progress (deadlines, liveness). */
static void conn_progress(struct conn *c)
{
    c->last_frame_ns = shard_clock_ns(c->shard);
    c->pings_unanswered = 0;
}

static size_t conn_process_frames(struct conn *c, const uint8_t *data, size_t len);

/* Feeds raw input through the framer. Returns bytes consumed; less than len means the
 * connection paused (or closed) and the rest is the caller's to stash. Emits whose frames lie
 * in data may wait in the pipeline (pubsub.h) until the end. */
static size_t conn_process(struct conn *c, const uint8_t *data, size_t len)
{
    struct shard *s = c->shard;
    s->input_lo = data;
    s->input_hi = data + len;
    size_t used = conn_process_frames(c, data, len);
    pubsub_emit_flush(s);
    s->input_lo = s->input_hi = NULL;
    return used;
}

static size_t conn_process_frames(struct conn *c, const uint8_t *data, size_t len)
{
    size_t pos = 0;
    while (pos < len && !(c->flags & (CONN_DEAD | CONN_CLOSING))) {
        size_t used;
        const uint8_t *frame;
        uint32_t flen;
        int r = codec_framer_feed(&c->framer, data + pos, len - pos, &used, &frame, &flen);
        if (r == 0) {
            pos += used;
            break;
        }
        if (r < 0) {
            pos += used;
            conn_frame_error(c, r);
            conn_close_after_flush(c);
            return len;
        }
        conn_progress(c);
        int fr = conn_frame(c, frame, flen);
        if (fr > 0) {
            /* Hold the frame back whole: header, body, then the unprocessed rest. */
            uint8_t hdr[CODEC_FRAME_HEADER_BYTES];
            wire_put_be32(hdr, flen);
            if (!stash_append(c, hdr, sizeof(hdr)) || !stash_append(c, frame, flen)) {
                conn_close(c, "stash overflow");
                return len;
            }
            pos += used;
            conn_pause(c);
            return pos;
        }
        pos += used;
        if (fr < 0)
            return len;
    }
    return pos;
}

/* After a batch of input: gives back a large frame's assembly buffer at once, and notes when
 * a frame started arriving, for --frame-timeout-ms. */
static void conn_note_partial(struct conn *c)
{
    if (c->framer.buf_cap > (64u << 10)) {
        codec_framer_settle(&c->framer);
        if (c->framer.buf_cap == 0)
            c->shard->trim_wanted = true; /* a large frame's buffer went back */
    }
    if (!codec_framer_partial(&c->framer))
        c->frame_started_ns = 0;
    else if (!c->frame_started_ns)
        c->frame_started_ns = shard_clock_ns(c->shard);
}

void conn_input(struct conn *c, const uint8_t *data, size_t len)
{
    if ((c->flags & CONN_PAUSED) || c->stash_len) {
        if (!stash_append(c, data, len))
            conn_close(c, "input stash overflow while paused");
        return;
    }
    size_t used = conn_process(c, data, len);
    conn_note_partial(c);
    if (used < len && !(c->flags & CONN_DEAD) && !stash_append(c, data + used, len - used))
        conn_close(c, "input stash overflow");
}

/* TLS: a failed handshake, an alert or a record that is not TLS. The alert the SSL wrote, if
 * any, goes out before the close. */
static void conn_tls_failed(struct conn *c)
{
    struct shard *s = c->shard;
    bool est = tls_conn_established(c->tls);
    if (!est)
        tls_count_handshake_failure(&s->stats);
    log_info((int)s->index, "connection %llu closed: TLS %s failed: %s", (unsigned long long)c->id,
             est ? "session" : "handshake", tls_conn_error(c->tls));
    conn_tls_flush(c);
    conn_close_after_flush(c);
}

/* TLS: the ciphertext received goes through the SSL (handshake included); the plaintext that
 * comes out goes to conn_input, as a plain connection's bytes do (and is what the stash holds
 * while paused). Handshake messages the SSL staged are sent by the next flush. */
static void conn_tls_input(struct conn *c, const uint8_t *data, size_t len)
{
    uint8_t plain[16384]; /* one TLS record's plaintext at most */
    bool was = tls_conn_established(c->tls);
    int n = tls_conn_feed(c->tls, data, len) < 0 ? TLS_FAILED : 1;
    while (n > 0 && !(c->flags & (CONN_DEAD | CONN_CLOSING))) {
        n = tls_conn_read(c->tls, plain, sizeof(plain));
        if (n > 0)
            c->ws ? conn_ws_input(c, plain, (size_t)n) : conn_input(c, plain, (size_t)n);
    }
    if (!was && tls_conn_established(c->tls)) {
        const char *peer = tls_conn_peer_name(c->tls);
        log_debug((int)c->shard->index, "connection %llu: TLS established, client certificate %s",
                  (unsigned long long)c->id, peer ? peer : "(none)");
    }
    if (c->flags & CONN_DEAD)
        return;
    if (n == TLS_FAILED) {
        conn_tls_failed(c);
        return;
    }
    if (n == TLS_CLOSED) { /* close_notify: as a plain peer's end of file (conn_recv_done) */
        if ((c->flags & CONN_PAUSED) || c->stash_len)
            c->flags |= CONN_PEER_EOF;
        else
            conn_close_after_flush(c);
        return;
    }
    if (tls_conn_out_pending(c->tls) || c->q_count)
        conn_schedule_flush(c);
}

void conn_stop_reading(struct conn *c)
{
    struct shard *s = c->shard;
    if (c->flags & CONN_DEAD)
        return;
    c->flags |= CONN_DRAINING;
    free(c->stash);
    c->stash = NULL;
    c->stash_len = c->stash_cap = 0;
    if ((c->flags & CONN_RECV_ARMED) && !(c->flags & CONN_RECV_CANCELLED)) {
        struct io_uring_sqe *sqe = shard_sqe(s);
        io_uring_prep_cancel64(sqe, ud_of_conn(c, UD_CONN_RECV), 0);
        io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_CANCEL));
        c->ops_inflight++;
        c->flags |= CONN_RECV_CANCELLED;
    }
}

void conn_resume(struct conn *c)
{
    if (c->flags & (CONN_DEAD | CONN_DRAINING))
        return;
    /* Take the stash out, replay it; whatever pauses again goes into a fresh stash. */
    uint8_t *buf = c->stash;
    uint32_t len = c->stash_len;
    c->stash = NULL;
    c->stash_len = c->stash_cap = 0;
    c->flags &= ~CONN_PAUSED;
    size_t used = len ? conn_process(c, buf, len) : 0;
    conn_note_partial(c);
    if (used < len && !(c->flags & CONN_DEAD)) {
        if (!stash_append(c, buf + used, len - used))
            conn_close(c, "input stash overflow");
    }
    free(buf);
    if (c->flags & (CONN_PAUSED | CONN_DEAD))
        return;
    if (c->flags & CONN_PEER_EOF)
        conn_close_after_flush(c);
    else
        conn_recv_arm(c);
}

void conn_recv_done(struct conn *c, struct io_uring_cqe *cqe)
{
    struct shard *s = c->shard;
    int res = cqe->res;
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (!(c->flags & (CONN_DEAD | CONN_CLOSING | CONN_DRAINING))) {
            stat_add(&s->stats.bytes_in, (uint64_t)res);
            if (c->tls)
                conn_tls_input(c, shard_buf(s, bid), (size_t)res);
            else if (c->ws)
                conn_ws_input(c, shard_buf(s, bid), (size_t)res);
            else
                conn_input(c, shard_buf(s, bid), (size_t)res);
        }
        shard_buf_return(s, bid);
    }
    if (more)
        return;
    /* The multishot receive has ended. */
    NX_ASSERT(c->flags & CONN_RECV_ARMED);
    c->flags &= ~(CONN_RECV_ARMED | CONN_RECV_CANCELLED);
    if (c->flags & CONN_DEAD) {
        conn_op_done(c);
        return;
    }
    conn_op_end(c);
    if (res == 0) {
        /* The peer closed its side. Input held back by backpressure is still to be handled:
         * conn_resume closes once it has been. Otherwise finish sending what is queued. */
        if ((c->flags & CONN_PAUSED) || c->stash_len)
            c->flags |= CONN_PEER_EOF;
        else
            conn_close_after_flush(c);
        return;
    }
    if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EINTR) {
        conn_close(c, res == -ECONNRESET ? "peer reset" : "receive failed");
        return;
    }
    /* -ENOBUFS: buffers ran out (they are returned as each completion is handled, so there
     * are some again now); or the kernel ended the multishot: arm it again. */
    conn_recv_arm(c);
}

/* ---- deadlines ---------------------------------------------------------------------------- */

/* Closes c for a missed deadline, telling it why (an error frame with code `timeout`, then the
 * connection closes once that is sent). */
static void conn_deadline(struct conn *c, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_deadline(struct conn *c, const char *what, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    stat_add(&c->shard->stats.deadline_closes, 1);
    conn_error(c, 0, "timeout", "%s: %s", what, msg); /* logged at warn, with the peer */
    conn_close_after_flush(c);
    /* A peer that stopped reading must not hold the close back: the error frame has until
     * the next sweep (one shard tick) to leave, then the connection is closed hard. */
    c->flags |= CONN_DEADLINE_HIT;
}

void conn_check_deadlines(struct conn *c, int64_t now)
{
    const struct config *cfg = c->shard->cfg;
    if (c->flags & CONN_DEAD)
        return;
    if (c->flags & CONN_DEADLINE_HIT) {
        conn_close(c, "deadline: error frame not taken");
        return;
    }
    if (c->flags & CONN_CLOSING)
        return;
    const int64_t ms = 1000000;
    bool auth = cfg->token[0] != 0 || auth_accounts_on();
    if (auth && cfg->auth_timeout_ms && !(c->flags & CONN_AUTHED) &&
        now - c->accepted_ns > (int64_t)cfg->auth_timeout_ms * ms) {
        conn_deadline(c, "authentication timeout",
                      "not authenticated within %u ms of connecting (--auth-timeout-ms)",
                      cfg->auth_timeout_ms);
        return;
    }
    if (!auth && cfg->hello_timeout_ms && c->last_frame_ns == 0 &&
        now - c->accepted_ns > (int64_t)cfg->hello_timeout_ms * ms) {
        conn_deadline(c, "hello timeout",
                      "no frame within %u ms of connecting (--hello-timeout-ms)",
                      cfg->hello_timeout_ms);
        return;
    }
    if (cfg->frame_timeout_ms && c->frame_started_ns &&
        now - c->frame_started_ns > (int64_t)cfg->frame_timeout_ms * ms) {
        conn_deadline(c, "frame timeout",
                      "a frame stayed incomplete for %u ms (--frame-timeout-ms)",
                      cfg->frame_timeout_ms);
        return;
    }
    int64_t last = c->last_frame_ns ? c->last_frame_ns : c->accepted_ns;
    if (cfg->idle_timeout_ms && c->sub_count == 0 &&
        now - last > (int64_t)cfg->idle_timeout_ms * ms) {
        conn_deadline(c, "idle timeout", "no frame for %u ms (--idle-timeout-ms)",
                      cfg->idle_timeout_ms);
        return;
    }
    /* Liveness: ping after each interval of silence; close after ping_misses_max of them. */
    if (cfg->ping_interval_ms &&
        now - last > (int64_t)cfg->ping_interval_ms * ms * (c->pings_unanswered + 1)) {
        if (c->pings_unanswered >= cfg->ping_misses_max) {
            conn_deadline(c, "no pong", "%u pings unanswered (--ping-interval-ms, --ping-misses)",
                          c->pings_unanswered);
            return;
        }
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_ping_encode(buf, sizeof(buf), 0, (uint64_t)now);
        if (n > 0)
            conn_enqueue_bytes(c, buf, (size_t)n);
        c->pings_unanswered++;
    }
}

/* ---- frames ------------------------------------------------------------------------------- */

/* The hello is accepted: the full frame size from now on, and the welcome. */
static void conn_welcome(struct conn *c, uint64_t corr)
{
    struct shard *s = c->shard;
    codec_framer_set_max(&c->framer, s->cfg->frame_bytes_max);
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_welcome_encode(buf, sizeof(buf), corr, s->broker->shard_count,
                                 s->cfg->frame_bytes_max, c->id, s->index);
    if (n > 0)
        conn_enqueue_bytes(c, buf, (size_t)n);
}

static int conn_hello(struct conn *c, uint64_t corr, struct codec_slice body)
{
    struct shard *s = c->shard;
    struct codec_hello h;
    char err[CODEC_ERR_BYTES];
    if (codec_hello_decode(body.ptr, body.len, &h, err) < 0) {
        conn_error(c, corr, "bad_protobuf", "%s", err);
        return 0;
    }
    if (h.protocol_version != 1 && h.protocol_version != 0) {
        conn_error(c, corr, "unsupported_version",
                   "protocol_version %u is not supported; this broker speaks 1",
                   h.protocol_version);
        conn_close_after_flush(c);
        return -1;
    }
    if (s->cfg->token[0]) {
        size_t tl = strlen(s->cfg->token);
        /* Compare without an early exit, so timing does not reveal the token's prefix. */
        unsigned diff = (unsigned)(tl ^ h.token.len);
        for (size_t i = 0; i < h.token.len; i++)
            diff |= (unsigned)(h.token.ptr[i] ^ (uint8_t)s->cfg->token[i % tl]);
        if (diff) {
            log_refusal((int)s->index, c->fd,
                        "authentication failed: connection=%llu: hello carries a wrong token",
                        (unsigned long long)c->id);
            conn_error(c, corr, "unauthorized", "hello carries a wrong token");
            conn_close_after_flush(c);
            return -1;
        }
        c->flags |= CONN_AUTHED;
    }
    if (h.client_name.len) {
        /* Scoped by user too: a client name never lets one user into another's window. */
        uint64_t seed = XXH3_64bits(h.user.ptr, h.user.len);
        c->dedup_scope =
            XXH3_64bits_withSeed(h.client_name.ptr, h.client_name.len, seed) | 1ull << 63;
    }
    if (auth_accounts_on() && (c->flags & (CONN_AUTHED | CONN_HELLO_SEEN))) {
        conn_error(c, corr, "bad_request", "hello was already accepted on this connection");
        return 0;
    }
    c->flags |= CONN_HELLO_SEEN;
    if (auth_accounts_on()) {
        enum auth_result r = auth_hello(c, corr, &h);
        if (r == AUTH_FAILED)
            return -1;
        if (r == AUTH_PENDING) {
            c->flags |= CONN_AUTH_PENDING; /* frames after it wait (conn_frame) */
            return 0;
        }
        c->flags |= CONN_AUTHED;
    }
    conn_welcome(c, corr);
    return 0;
}

void conn_auth_done(struct conn *c, uint64_t corr)
{
    c->flags |= CONN_AUTHED;
    conn_welcome(c, corr);
    if (c->flags & CONN_PAUSED)
        conn_resume(c);
}

/* The emit's event type, validated: the connection's last type when it repeats (most
 * publishers repeat theirs), else parsed and remembered. Returns 0, or -EINVAL after answering
 * with an error. */
static int conn_emit_type(struct conn *c, uint64_t corr, struct codec_slice ts, struct evtype *t)
{
    if (ts.len && ts.len == c->last_type_len && memcmp(ts.ptr, c->last_type_str, ts.len) == 0) {
        *t = c->last_type;
        return 0;
    }
    char terr[EVTYPE_ERR_BYTES];
    if (evtype_parse(t, (const char *)ts.ptr, ts.len, terr, sizeof(terr)) < 0) {
        conn_error(c, corr, "invalid_event_type", "%s", terr);
        return -EINVAL;
    }
    c->last_type = *t;
    c->last_type_len = (uint16_t)ts.len;
    c->perm_type_len = 0; /* the permission decision was for another type */
    memcpy(c->last_type_str, ts.ptr, ts.len);
    return 0;
}

/* Fills the routing header of m from a decoded emit whose slices point into base. */
static void emit_msg_fill(struct emit_msg *m, const struct codec_emit *e, const uint8_t *base)
{
#define OFFS(sl, o, l)                                                                             \
    do {                                                                                           \
        m->o = (sl).ptr ? (uint32_t)((sl).ptr - base) : 0;                                         \
        m->l = (sl).len;                                                                           \
    } while (0)
    OFFS(e->event_id, id_off, id_len);
    OFFS(e->event_type, type_off, type_len);
    OFFS(e->entity_id, entity_off, entity_len);
    OFFS(e->metadata, md_off, md_len);
    OFFS(e->payload, pl_off, pl_len);
    OFFS(e->user_id, user_off, user_len);
    OFFS(e->correlation_id, corr_off, corr_len);
#undef OFFS
    m->has_md = e->has_metadata;
    m->has_pl = e->has_payload;
    m->campaign_id = e->campaign_id;
}

/* Whether c's account may emit e (type t): requests and cancels need `request` for the action,
 * a handler's lifecycle replies `handle` (or `publish`), anything else `publish`. The decision
 * is remembered for the connection's last type and campaign. 0, or -1 after answering. */
static int conn_emit_allowed(struct conn *c, uint64_t corr, const struct codec_emit *e,
                             const struct evtype *t)
{
    if (c->perm_type_len && c->perm_campaign == e->campaign_id)
        return 0;
    const struct account *a = c->acct;
    const char *ts = (const char *)e->event_type.ptr;
    enum perm_op op = PERM_EMIT;
    bool ok;
    switch (t->state) {
    case EVTYPE_REQUESTED:
    case EVTYPE_CANCEL:
        op = PERM_REQUEST;
        ok = account_may_action(a, PERM_REQUEST, t, ts);
        break;
    case EVTYPE_STARTED:
    case EVTYPE_STREAM:
    case EVTYPE_HEARTBEAT:
    case EVTYPE_SUCCESS:
    case EVTYPE_FAILED:
        ok = account_may_action(a, PERM_HANDLE, t, ts) ||
             account_may_publish(a, e->campaign_id, t, ts);
        break;
    default:
        ok = account_may_publish(a, e->campaign_id, t, ts);
        break;
    }
    if (!ok) {
        auth_deny(c, corr, op, "user %s may not %s %.*s in campaign %lld", account_name(a),
                  op == PERM_REQUEST ? "request" : "emit", (int)e->event_type.len, ts,
                  (long long)e->campaign_id);
        return -1;
    }
    c->perm_campaign = e->campaign_id;
    c->perm_type_len = c->last_type_len;
    return 0;
}

/* The broker says who sent an event (docs/SECURITY.md): an emit without a user id gets the
 * account's, rewritten into the shard's scratch buffer (*body and *e then point into it); one
 * with another user's id is refused. 0, or -1 after answering. */
static int conn_emit_stamp(struct conn *c, uint64_t corr, struct codec_emit *e,
                           struct codec_slice *body)
{
    uint32_t ul;
    const char *uid = account_user_id(c->acct, &ul);
    if (e->user_id.len) {
        if (e->user_id.len == ul && memcmp(e->user_id.ptr, uid, ul) == 0)
            return 0;
        auth_deny(c, corr, PERM_EMIT,
                  "metadata.global_context.user_id \"%.*s\" is not this connection's user "
                  "\"%.*s\" (leave it empty: the broker stamps it)",
                  (int)(e->user_id.len > 64 ? 64 : e->user_id.len), (const char *)e->user_id.ptr,
                  (int)ul, uid);
        return -1;
    }
    /* Into the shard's scratch buffer: the rewritten body lives until the emit is routed
     * (copied into the message for another shard, or handled in place). */
    struct shard *s = c->shard;
    size_t cap = body->len + CODEC_STAMP_EXTRA(ul);
    if (cap > s->stamp_cap) {
        uint8_t *nb = realloc(s->stamp_buf, cap);
        if (!nb) {
            conn_error(c, corr, "internal", "out of memory stamping the user id");
            return -1;
        }
        s->stamp_buf = nb;
        s->stamp_cap = (uint32_t)cap;
    }
    int n = codec_emit_stamp_user(body->ptr, body->len, e, uid, ul, s->stamp_buf, cap);
    if (n < 0) {
        conn_error(c, corr, "internal", "cannot stamp the user id on this emit");
        return -1;
    }
    body->ptr = s->stamp_buf;
    body->len = (uint32_t)n;
    return 0;
}

static int conn_emit_route(struct conn *c, uint64_t corr, const struct codec_emit *ep,
                           const struct evtype *tp, struct codec_slice body, uint32_t owner);

/* An emit frame: decoded and checked here, then handled in place when this shard owns the
 * campaign or sent to its owner. Returns 1 to hold the frame back (backpressure), else 0. */
static int conn_emit(struct conn *c, uint64_t corr, struct codec_slice body)
{
    struct shard *s = c->shard;
    struct codec_emit e;
    char err[CODEC_ERR_BYTES];
    if (codec_emit_decode(body.ptr, body.len, &e, err) < 0) {
        conn_error(c, corr, "bad_protobuf", "%s", err);
        return 0;
    }
    struct evtype t;
    if (conn_emit_type(c, corr, e.event_type, &t) < 0)
        return 0;
    if (e.event_id.len > CONN_ID_BYTES_MAX || e.entity_id.len > CONN_ENTITY_BYTES_MAX) {
        conn_error(c, corr, "limit_exceeded", "%s longer than %u bytes",
                   e.event_id.len > CONN_ID_BYTES_MAX ? "event_id" : "entity_id",
                   e.event_id.len > CONN_ID_BYTES_MAX ? CONN_ID_BYTES_MAX : CONN_ENTITY_BYTES_MAX);
        return 0;
    }
    uint32_t owner = shard_of_campaign(s, e.campaign_id);
    if (owner == s->index ? shard_stalled(s) : !shard_can_send_request(s, owner))
        return 1;
    if (c->acct &&
        (conn_emit_allowed(c, corr, &e, &t) < 0 || conn_emit_stamp(c, corr, &e, &body) < 0))
        return 0;
    return conn_emit_route(c, corr, &e, &t, body, owner);
}

/* Hands a checked emit to its campaign's owner: this shard, or another through its ring. */
static int conn_emit_route(struct conn *c, uint64_t corr, const struct codec_emit *ep,
                           const struct evtype *tp, struct codec_slice body, uint32_t owner)
{
    struct shard *s = c->shard;
    struct emit_msg local;
    struct emit_msg *m = &local;
    if (owner != s->index) {
        m = shard_emit_slot(s, owner, body.len); /* sent at the end of this pass */
        if (!m) {
            conn_error(c, corr, "internal", "out of memory");
            return 0;
        }
        memcpy(m->body, body.ptr, body.len);
    }
    emit_msg_fill(m, ep, body.ptr);
    m->conn_id = c->id;
    m->dedup_scope = c->dedup_scope;
    m->correlation = corr;
    m->type = *tp;
    m->body_len = body.len;
    m->auth = c->acct ? EMIT_AUTH_ACCOUNT | (account_admin(c->acct) ? EMIT_AUTH_ADMIN : 0) : 0;
    if (tp->state == EVTYPE_REQUESTED || tp->state == EVTYPE_CANCEL)
        c->notify_mask |= 1ull << owner; /* its requests live there: tell it when we close */
    /* Handled a few emits later (the pipeline, pubsub.h) while its body stays in the input
     * conn_process reads; at once when it was reassembled or stamped into a shard buffer. */
    if (owner == s->index && body.ptr >= s->input_lo && body.ptr + body.len <= s->input_hi)
        pubsub_emit_queue(s, m, body.ptr, true);
    else if (owner == s->index)
        pubsub_emit(s, m, body.ptr);
    return 0;
}

/* A frame before authentication: only the one hello passes. 0 to go on, 1 to hold the frame
 * back (the hello's credential is being verified), -1 after closing. */
static int conn_gate(struct conn *c, const struct codec_envelope *env)
{
    if (c->flags & CONN_AUTH_PENDING)
        return 1;
    if (env->kind != CODEC_KIND_HELLO || (c->flags & CONN_HELLO_SEEN)) {
        log_refusal((int)c->shard->index, c->fd,
                    "authentication failed: connection=%llu: a frame of kind %u before the hello",
                    (unsigned long long)c->id, env->kind);
        conn_error(c, env->correlation, "unauthorized",
                   "this broker requires a hello frame with credentials first");
        conn_close_after_flush(c);
        return -1;
    }
    return 0;
}

static int conn_frame(struct conn *c, const uint8_t *frame, uint32_t len)
{
    struct shard *s = c->shard;
    struct codec_envelope env;
    char err[CODEC_ERR_BYTES];
    stat_add(&s->stats.frames_in, 1);
    if (codec_envelope_decode(frame, len, &env, err) < 0) {
        conn_error(c, 0, "bad_protobuf", "%s", err);
        return 0;
    }
    if (env.kind != CODEC_KIND_EMIT)
        pubsub_emit_flush(s); /* the emits before it are handled before it */
    if (!(c->flags & CONN_AUTHED)) {
        int g = conn_gate(c, &env);
        if (g)
            return g;
    }
    switch (env.kind) {
    case CODEC_KIND_EMIT:
        return conn_emit(c, env.correlation, env.body);
    case CODEC_KIND_SUBSCRIBE:
        pubsub_subscribe(c, env.correlation, env.body.ptr, env.body.len);
        return 0;
    case CODEC_KIND_UNSUBSCRIBE: {
        uint64_t id;
        if (codec_u64_msg_decode(env.body.ptr, env.body.len, &id, err) < 0)
            conn_error(c, env.correlation, "bad_protobuf", "%s", err);
        else
            pubsub_unsubscribe(c, env.correlation, id);
        return 0;
    }
    case CODEC_KIND_HELLO:
        return conn_hello(c, env.correlation, env.body);
    case CODEC_KIND_PING: {
        uint64_t nonce;
        if (codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, err) < 0) {
            conn_error(c, env.correlation, "bad_protobuf", "%s", err);
            return 0;
        }
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_pong_encode(buf, sizeof(buf), env.correlation, nonce);
        if (n > 0)
            conn_enqueue_bytes(c, buf, (size_t)n);
        return 0;
    }
    case CODEC_KIND_PONG:
        return 0;
    case CODEC_KIND_STATS:
        if (c->acct && !account_admin(c->acct))
            auth_deny(c, env.correlation, PERM_ADMIN, "stats need the admin permission");
        else
            shard_stats_reply(c, env.correlation);
        return 0;
    case CODEC_KIND_NONE:
        conn_error(c, env.correlation, "unknown_frame", "frame has no body");
        return 0;
    default:
        if (env.kind >= CODEC_KIND_EXTENSION_MIN && core_hooks && core_hooks->frame) {
            core_hooks->frame(c, env.kind, env.correlation, env.body.ptr, env.body.len);
            return 0;
        }
        if (codec_kind_from_broker(env.kind))
            conn_error(c, env.correlation, "unknown_frame",
                       "frame kind %s (%u) is sent by the broker, not by clients",
                       codec_kind_name(env.kind), env.kind);
        else
            conn_error(c, env.correlation, "unknown_frame", "unknown frame kind %u", env.kind);
        return 0;
    }
}
