// SPDX-License-Identifier: Apache-2.0
//
// A shard: one thread, one io_uring (single issuer, deferred task running), one SO_REUSEPORT
// listener with multishot accept, one provided-buffer ring for multishot receives, and the
// consuming ends of the rings from every other shard. The loop, per iteration: reap
// completions; drain the delivery rings (always) and the request rings (unless this shard's
// own outgoing deliveries are backed up); resume paused connections; start the sends that
// were queued; publish outgoing rings and wake peers that sleep; then sleep in io_uring_enter
// if there is nothing left to do. Everything here runs on the shard's thread only.
#include "broker/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
/* Header-only: the 8-byte hashes of the hot path inline instead of calling the library. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "broker/auth.h"
#include "broker/conn.h"
#include "broker/conn_ws.h"
#include "broker/log.h"
#include "broker/msg.h"
#include "broker/store.h"
#include "broker/ud.h"
#include "broker/ws.h"
#include "codec/envelope.h"

/* The shard's housekeeping period: stop requests, idle connections and the drain deadline are
 * checked this often. 100 ms keeps shutdown prompt and costs nothing measurable. */
#define SHARD_TICK_MS 100

/* Ring messages copied out per ring_pop_batch: amortizes the ring's atomics over a batch. */
#define SHARD_RING_BATCH 256

/* Ring messages taken per ring per pass of the loop, in batches: up to a default ring's worth
 * (what a producer publishes in one of its passes). The sends a pass starts carry what the pass
 * queued, so this sets how many frames a subscriber's send carries when its events come over a
 * ring: at 256 (one batch) the campaigns workload at --shards 2 sent ~9 frames per sendmsg
 * against ~90 at --shards 1 and spent 2.4x the CPU per event; at 8192 it spends 1.2x. It also
 * bounds the time before completions are reaped again (a few hundred µs of work at most, about
 * what SHARD_PASS_CQES receive completions hold). */
#define SHARD_RING_PASS 8192

/* Emits packed per owner (struct emit_chunk): bytes per chunk, and the most a shard keeps sent
 * to one owner and not yet handled there. 64 KiB holds ~200 small emits; 4 MiB is above what
 * the request ring held of them before (8192 messages of a few hundred bytes), and bounds the
 * memory a slow owner lets its publishers' shards queue. */
#define SHARD_EMIT_CHUNK_BYTES  (64u * 1024u)
#define SHARD_EMIT_INFLIGHT_MAX (4u << 20)

/* Messages ahead whose payload is prefetched (a frame's header, an emit's routing fields):
 * another core wrote it, so the first touch here misses. In the campaigns workload at
 * --shards 2 this took pubsub_deliver from ~3% of the broker's samples to ~0.5%. */
#define SHARD_RING_AHEAD 4

/* Completions handled per pass of the loop before the sends they produced are submitted. A
 * pass of thousands of receive completions builds megabytes of frames before the first send
 * copies them, and by then they have left the cache: 64 keeps that working set small without
 * adding a system call per handful of events (campaigns +5% over 4096). */
#define SHARD_PASS_CQES 64

/* Provided-buffer group id of the receive buffers (one group per ring). */
#define SHARD_BGID 0

_Thread_local int oframe_self = -1;

int64_t shard_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint32_t shard_of_campaign(const struct shard *s, int64_t campaign_id)
{
    uint32_t n = s->broker->shard_count;
    if (n == 1)
        return 0; /* no hash, no division: one shard owns everything */
    return (uint32_t)(XXH3_64bits(&campaign_id, sizeof(campaign_id)) % n);
}

struct io_uring_sqe *shard_sqe(struct shard *s)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe) {
        /* The submission queue is full: hand it to the kernel and take a fresh entry. */
        io_uring_submit(&s->ring);
        sqe = io_uring_get_sqe(&s->ring);
    }
    /* The SQ is sized so that a submit always frees entries; failing here is a bug. */
    NX_ASSERT(sqe != NULL);
    return sqe;
}

/* ---- UUIDv4: xoshiro256** seeded once from getrandom(2), no syscall per event ---------- */

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Eight lowercase hex digits of four bytes (first byte first), in one 64-bit word: the bytes
 * spread to one per 16-bit lane, each lane split into its two nibbles (high nibble in the low
 * byte, so that it is written first), then every nibble turned into its digit at once. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "hex8 writes digits little-endian");
static inline __attribute__((always_inline)) uint64_t hex8(uint32_t v)
{
    uint64_t x = v;
    x = ((x & 0xffff0000u) << 16) | (x & 0xffffu);
    x = ((x & 0x0000ff000000ff00u) << 8) | (x & 0x000000ff000000ffu);
    x = ((x & 0x000f000f000f000fu) << 8) | ((x & 0x00f000f000f000f0u) >> 4);
    uint64_t letters = ((x + 0x0606060606060606u) >> 4) & 0x0101010101010101u; /* digit > 9 */
    return x + 0x3030303030303030u + letters * ('a' - '0' - 10);
}

void shard_uuid4(struct shard *s, char out[36])
{
    uint8_t b[16];
    uint64_t a = rng_next(s->rng), c = rng_next(s->rng);
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    uint32_t w[4];
    memcpy(w, b, 16);
    uint64_t d[4] = {hex8(w[0]), hex8(w[1]), hex8(w[2]), hex8(w[3])};
    char digits[32];
    memcpy(digits, d, 32); /* little-endian: each word's low byte is its first digit */
    memcpy(out, digits, 8);
    memcpy(out + 9, digits + 8, 4);
    memcpy(out + 14, digits + 12, 4);
    memcpy(out + 19, digits + 16, 4);
    memcpy(out + 24, digits + 20, 12);
    out[8] = out[13] = out[18] = out[23] = '-';
}

/* ---- rings between shards ---------------------------------------------------------------- */

static bool outbox_push(struct outbox *ob, const struct ring_msg *m)
{
    NX_ASSERT(ob->count <= ob->cap);
    if (ob->count == ob->cap) {
        uint32_t ncap = ob->cap ? ob->cap * 2 : 64;
        struct ring_msg *nv = malloc(sizeof(*nv) * ncap);
        if (!nv)
            return false;
        for (uint32_t i = 0; i < ob->count; i++)
            nv[i] = ob->v[(ob->head + i) % ob->cap];
        free(ob->v);
        ob->v = nv;
        ob->cap = ncap;
        ob->head = 0;
    }
    ob->v[(ob->head + ob->count) % ob->cap] = *m;
    ob->count++;
    return true;
}

static void shard_emit_seal(struct shard *s, uint32_t dst);

int shard_send(struct shard *s, uint32_t dst, int cls, const struct ring_msg *m)
{
    NX_ASSERT(dst < s->broker->shard_count && dst != s->index && (cls == 0 || cls == 1));
    if (cls == CORE_REQUEST && s->emit_open[dst] && m->kind != MSG_EMIT_BATCH)
        shard_emit_seal(s, dst); /* the emits staged before this message go before it */
    struct ring *r = broker_ring(s->broker, cls, s->index, dst);
    struct outbox *ob = &s->outbox[cls][dst];
    if (ob->count == 0 && ring_push(r, m) == 0) {
        s->ring_dirty |= 1ull << dst;
        return 0;
    }
    if (!outbox_push(ob, m)) {
        log_error((int)s->index, "out of memory queueing a message for shard %u", dst);
        return -ENOMEM;
    }
    return 0;
}

bool shard_can_send_request(struct shard *s, uint32_t dst)
{
    if (s->outbox[0][dst].count)
        return false;
    struct emit_chunk *ch = s->emit_open[dst];
    uint64_t out = atomic_load_explicit(&s->emit_inflight[dst], memory_order_relaxed);
    if (out + (ch ? ch->used : 0) >= SHARD_EMIT_INFLIGHT_MAX)
        return false;
    /* An open chunk found a free slot when it was opened (and takes it when sealed; should
     * another message take it first, the chunk waits in the outbox): no need to look again
     * at the consumer's index, a cache line the consumer writes, for every emit. */
    return ch || ring_free_slots(broker_ring(s->broker, 0, s->index, dst)) > 0;
}

/* ---- emits packed per owner (struct emit_chunk) ------------------------------------------- */

static uint32_t emit_entry_bytes(uint32_t body_len)
{
    return (uint32_t)((sizeof(struct emit_msg) + body_len + 7) & ~(size_t)7);
}

/* Sends the open chunk for dst (if any) on the request ring. */
static void shard_emit_seal(struct shard *s, uint32_t dst)
{
    struct emit_chunk *ch = s->emit_open[dst];
    if (!ch)
        return;
    s->emit_open[dst] = NULL;
    atomic_fetch_add_explicit(&s->emit_inflight[dst], ch->used, memory_order_relaxed);
    struct ring_msg m = {.kind = MSG_EMIT_BATCH, .ptr = ch};
    if (shard_send(s, dst, CORE_REQUEST, &m) < 0) {
        /* Out of memory for the outbox (logged by shard_send): these emits are lost. Counted
         * as drops, never silent. */
        atomic_fetch_sub_explicit(&s->emit_inflight[dst], ch->used, memory_order_relaxed);
        stat_add(&s->stats.drops, ch->count);
        free(ch);
    }
}

struct emit_msg *shard_emit_slot(struct shard *s, uint32_t dst, uint32_t body_len)
{
    NX_ASSERT(dst < s->broker->shard_count && dst != s->index);
    uint32_t need = emit_entry_bytes(body_len);
    struct emit_chunk *ch = s->emit_open[dst];
    if (ch && ch->cap - ch->used < need) {
        shard_emit_seal(s, dst);
        ch = NULL;
    }
    if (!ch) {
        uint32_t cap = need > SHARD_EMIT_CHUNK_BYTES ? need : SHARD_EMIT_CHUNK_BYTES;
        ch = malloc(sizeof(*ch) + cap);
        if (!ch)
            return NULL;
        ch->used = 0;
        ch->cap = cap;
        ch->count = 0;
        ch->src = s->index;
        s->emit_open[dst] = ch; /* sealed at the end of this pass (shard_flush_rings) */
    }
    struct emit_msg *m = (struct emit_msg *)(ch->data + ch->used);
    ch->used += need;
    ch->count++;
    return m;
}

/* The owner's side: every emit of the chunk in order, then the chunk is freed. */
static void shard_emit_chunk(struct shard *s, struct emit_chunk *ch)
{
    uint32_t off = 0;
    for (uint32_t i = 0; i < ch->count; i++) {
        struct emit_msg *em = (struct emit_msg *)(ch->data + off);
        pubsub_emit_queue(s, em, em->body, false);
        off += emit_entry_bytes(em->body_len);
    }
    pubsub_emit_flush(s);
    NX_ASSERT(off == ch->used);
    atomic_fetch_sub_explicit(&s->broker->shards[ch->src]->emit_inflight[s->index], ch->used,
                              memory_order_relaxed);
    free(ch);
}

/* True while a delivery ring of ours is full: new work would only pile up behind it. */
bool shard_stalled(const struct shard *s)
{
    for (uint32_t d = 0; d < s->broker->shard_count; d++)
        if (s->outbox[1][d].count)
            return true;
    return false;
}

static void shard_wake(struct shard *s, uint32_t dst)
{
    struct shard *t = s->broker->shards[dst];
    /* Pairs with the fence in shard_wait(): either the consumer sees our published items
     * when it re-checks its rings, or we see its sleeping flag here (Dekker). */
    atomic_thread_fence(memory_order_seq_cst);
    if (!atomic_load_explicit(&t->sleeping, memory_order_relaxed))
        return;
    if (!atomic_exchange_explicit(&t->sleeping, 0, memory_order_relaxed))
        return;
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_msg_ring(sqe, t->ring.ring_fd, 0, UD_WAKE, 0);
    io_uring_sqe_set_data64(sqe, UD_IGNORE);
}

static void shard_flush_rings(struct shard *s)
{
    uint32_t n = s->broker->shard_count;
    for (uint32_t d = 0; d < n; d++)
        shard_emit_seal(s, d);
    for (int cls = 0; cls < 2; cls++) {
        for (uint32_t d = 0; d < n; d++) {
            struct outbox *ob = &s->outbox[cls][d];
            if (!ob->count)
                continue;
            struct ring *r = broker_ring(s->broker, cls, s->index, d);
            while (ob->count && ring_push(r, &ob->v[ob->head]) == 0) {
                ob->head = (ob->head + 1) % ob->cap;
                ob->count--;
                s->ring_dirty |= 1ull << d;
            }
        }
    }
    uint64_t dirty = s->ring_dirty;
    s->ring_dirty = 0;
    while (dirty) {
        uint32_t d = (uint32_t)__builtin_ctzll(dirty);
        dirty &= dirty - 1;
        ring_publish(broker_ring(s->broker, 0, s->index, d));
        ring_publish(broker_ring(s->broker, 1, s->index, d));
        shard_wake(s, d);
    }
}

static void handle_msg(struct shard *s, const struct ring_msg *m)
{
    switch (m->kind) {
    case MSG_EMIT_BATCH:
        shard_emit_chunk(s, m->ptr);
        break;
    case MSG_INTEREST:
        pubsub_interest(s, m->ptr);
        break;
    case MSG_DELIVER:
        pubsub_deliver_taking(s, m->ptr);
        break;
    case MSG_TO_CONN: {
        struct conn *c = conn_lookup(s, m->arg);
        if (c)
            conn_enqueue(c, m->ptr);
        else
            oframe_unref(m->ptr);
        break;
    }
    case MSG_INTEREST_ACK:
        pubsub_interest_ack(s, m->ptr);
        break;
    case MSG_CONN_GONE:
        if (core_hooks && core_hooks->conn_gone)
            core_hooks->conn_gone(s, m->arg);
        break;
    case MSG_HOOK_REQ:
    case MSG_HOOK_DEL:
        NX_ASSERT(core_hooks && core_hooks->msg);
        core_hooks->msg(s, m->aux, m->ptr, m->arg);
        break;
    case MSG_REPLAY_PAUSE:
        pubsub_replay_paused(s, m->arg, (uint64_t)(uintptr_t)m->ptr);
        break;
    case MSG_REPLAY_MORE:
        pubsub_replay_more(s, m->aux, (uint64_t)(uintptr_t)m->ptr);
        break;
    default:
        NX_ASSERT(!"unknown ring message kind"); /* only shards of this process write rings */
    }
}

/* Drains incoming rings. Returns true if a ring still had messages after its batch. */
static bool shard_poll_rings(struct shard *s)
{
    struct ring_msg batch[SHARD_RING_BATCH];
    bool more = false;
    for (uint32_t src = 0; src < s->broker->shard_count; src++) {
        if (src == s->index)
            continue;
        for (int cls = 1; cls >= 0; cls--) {
            struct ring *r = broker_ring(s->broker, cls, src, s->index);
            uint32_t taken = 0;
            for (;;) {
                /* Requests may produce deliveries; take none while ours are backed up. */
                if (cls == 0 && shard_stalled(s)) {
                    more = true;
                    break;
                }
                uint32_t got = ring_pop_batch(r, batch, SHARD_RING_BATCH);
                for (uint32_t i = 0; i < got; i++) {
                    if (i + SHARD_RING_AHEAD < got) {
                        /* ptr may be NULL or a number (MSG_CONN_GONE, MSG_REPLAY_*): a
                         * prefetch never faults, but only a pointer may be offset. */
                        uintptr_t p = (uintptr_t)batch[i + SHARD_RING_AHEAD].ptr;
                        __builtin_prefetch((const void *)p);
                        __builtin_prefetch((const void *)(p + 64));
                    }
                    handle_msg(s, &batch[i]);
                }
                taken += got;
                if (got < SHARD_RING_BATCH)
                    break;
                if (taken >= SHARD_RING_PASS) {
                    more = true;
                    break;
                }
            }
        }
    }
    return more;
}

static bool shard_rings_have_input(struct shard *s)
{
    for (uint32_t src = 0; src < s->broker->shard_count; src++) {
        if (src == s->index)
            continue;
        if (!ring_empty_consumer(broker_ring(s->broker, 1, src, s->index)) ||
            !ring_empty_consumer(broker_ring(s->broker, 0, src, s->index)))
            return true;
    }
    return false;
}

/* ---- accept and timers ------------------------------------------------------------------- */

/* Arms the multishot accept of the client listener, or of the WebSocket one (if there is). */
static void shard_accept_arm_one(struct shard *s, bool ws)
{
    if (ws && s->ws_listen_fd < 0)
        return;
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_multishot_accept(sqe, ws ? s->ws_listen_fd : s->listen_fd, NULL, NULL,
                                   SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ws ? UD_WS_ACCEPT : UD_ACCEPT);
}

static void shard_accept_arm(struct shard *s)
{
    shard_accept_arm_one(s, false);
    shard_accept_arm_one(s, true);
}

/* Cancels the accepts of both listeners (a cancel of one not armed finds nothing). */
static void shard_accept_cancel(struct shard *s)
{
    for (int ws = 0; ws < 2 && (!ws || s->ws_listen_fd >= 0); ws++) {
        struct io_uring_sqe *sqe = shard_sqe(s);
        io_uring_prep_cancel64(sqe, ws ? UD_WS_ACCEPT : UD_ACCEPT, 0);
        io_uring_sqe_set_data64(sqe, UD_IGNORE);
    }
}

static void shard_timer_arm(struct shard *s)
{
    s->tick.tv_sec = 0;
    s->tick.tv_nsec = SHARD_TICK_MS * 1000000LL;
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_timeout(sqe, &s->tick, 0, 0);
    io_uring_sqe_set_data64(sqe, UD_TIMER);
}

void shard_timer_at(struct shard *s, int64_t deadline_ns)
{
    if (s->hook_timer_ns && s->hook_timer_ns <= deadline_ns)
        return; /* an earlier one is armed; its handler re-arms for the rest */
    int64_t delta = deadline_ns - shard_now_ns();
    if (delta < 0)
        delta = 0;
    /* The kernel reads the timespec at submission, so a small ring of them suffices: at most
     * a few are armed per loop iteration, and all are submitted before the ring wraps. */
    struct __kernel_timespec *ts = &s->hook_ts[s->hook_ts_next++ % 64];
    ts->tv_sec = delta / 1000000000;
    ts->tv_nsec = delta % 1000000000;
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, UD_HOOK_TIMER);
    s->hook_timer_ns = deadline_ns;
}

/* Back-off after an accept failed for want of descriptors or memory: from 10 ms, doubling to
 * 1 s. Retrying at once would spin the shard (and its log) while nothing can change. */
#define SHARD_ACCEPT_BACKOFF_MS_MIN 10
#define SHARD_ACCEPT_BACKOFF_MS_MAX 1000

/* An accept failed: count it, log at most once a second, and for the errors that only time
 * can cure pause accepting (the tick re-arms it). Returns true if accepting is paused. */
static bool shard_accept_failed(struct shard *s, struct io_uring_cqe *cqe)
{
    int e = -cqe->res;
    if (e == ECANCELED || e == EBADF || e == EINVAL)
        return false; /* shutting down */
    stat_add(&s->stats.accept_errors, 1);
    int64_t now = shard_now_ns();
    s->accept_errors_unlogged++;
    if (now - s->accept_log_ns >= 1000000000) {
        log_warn((int)s->index, "accept failed: %s (%llu times in the last second or more)",
                 strerror(e), (unsigned long long)s->accept_errors_unlogged);
        s->accept_log_ns = now;
        s->accept_errors_unlogged = 0;
    }
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
        return false;
    s->accept_backoff_ms =
        s->accept_backoff_ms ? s->accept_backoff_ms * 2 : SHARD_ACCEPT_BACKOFF_MS_MIN;
    if (s->accept_backoff_ms > SHARD_ACCEPT_BACKOFF_MS_MAX)
        s->accept_backoff_ms = SHARD_ACCEPT_BACKOFF_MS_MAX;
    s->accept_resume_ns = now + (int64_t)s->accept_backoff_ms * 1000000;
    shard_accept_cancel(s); /* both listeners: descriptors and memory are the process's */
    return true;
}

void shard_accept_check(struct shard *s, int64_t now)
{
    if (s->accept_resume_ns && now >= s->accept_resume_ns && !s->stopping) {
        s->accept_resume_ns = 0;
        shard_accept_arm(s);
    }
}

/* A connection accepted on the client listener, or on the WebSocket one (ws). */
static void shard_accept_done(struct shard *s, struct io_uring_cqe *cqe, bool ws)
{
    if (cqe->res < 0) {
        bool paused = shard_accept_failed(s, cqe);
        if (!paused && !(cqe->flags & IORING_CQE_F_MORE) && !s->stopping && !s->accept_resume_ns)
            shard_accept_arm_one(s, ws);
        return;
    }
    if (!(cqe->flags & IORING_CQE_F_MORE) && !s->stopping && !s->accept_resume_ns)
        shard_accept_arm_one(s, ws);
    s->accept_backoff_ms = 0;
    int fd = cqe->res;
    if (s->stopping) {
        close(fd);
        return;
    }
    unsigned prev = atomic_fetch_add_explicit(&s->broker->connections, 1, memory_order_relaxed);
    if (prev >= s->cfg->connections_max) {
        atomic_fetch_sub_explicit(&s->broker->connections, 1, memory_order_relaxed);
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        const char *why = "the broker is at --max-connections; try again later";
        struct ws_upgrade u = {.status = 503, .why = why}; /* a WebSocket client: HTTP */
        int n = ws ? ws_upgrade_answer(&u, (char *)buf, sizeof(buf))
                   : codec_error_encode(buf, sizeof(buf), 0, "limit_exceeded", why);
        /* Best effort, non-blocking: the socket buffer of a new connection is empty. */
        if (n > 0 && send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            log_debug((int)s->index, "refusal not sent: %s", strerror(errno));
        log_refusal((int)s->index, fd, "connection refused: max_connections=%u reached",
                    s->cfg->connections_max);
        close(fd);
        stat_add(&s->stats.errors, 1);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct conn *c = conn_create(s, fd);
    if (!c) {
        atomic_fetch_sub_explicit(&s->broker->connections, 1, memory_order_relaxed);
        close(fd);
        log_error((int)s->index, "out of memory accepting a connection");
        return;
    }
    if (conn_ws_accepted(c, ws) < 0) {
        conn_close(c, "out of memory");
        return;
    }
    conn_recv_arm(c);
}

uint64_t shard_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* mimalloc's collection, when nexusd is linked with it (weak: absent from sanitizer builds,
 * whose allocator keeps its own quarantine). */
extern void mi_collect(bool force) __attribute__((weak));

/* After a shard freed a lot (idle campaigns with their history and duplicate window,
 * connections with their buffers), mimalloc keeps the pages for reuse by this thread; a
 * forced collection returns what is free to the OS, so an attack's memory does not stay
 * resident after it. mimalloc decommits a page only once it has been free for its decommit
 * delay (25 ms), so three more collections a tick apart return what the first could only
 * schedule (measured with campaign_lifecycle_test: RSS after 1,000 campaigns were freed went
 * from 236 MiB to 75 MiB with one collection). At most four collections in a little over a
 * second per shard, and only after such frees. */
static void shard_memory_trim(struct shard *s, int64_t now)
{
    if (!mi_collect)
        return;
    if (s->trim_wanted && now - s->trim_last_ns >= 1000000000) {
        s->trim_wanted = false;
        s->trim_last_ns = now;
        s->trim_again = 3;
        mi_collect(true);
    } else if (s->trim_again && now - s->trim_last_ns >= 100000000) {
        s->trim_again--;
        s->trim_last_ns = now;
        mi_collect(true);
    }
}

void shard_memory_check(struct shard *s)
{
    uint64_t max = s->cfg->memory_bytes_max;
    if (s->index != 0 || max == 0)
        return;
    uint64_t rss = shard_rss_bytes();
    int over = rss > max;
    if (over != atomic_load_explicit(&s->broker->over_memory, memory_order_relaxed)) {
        atomic_store_explicit(&s->broker->over_memory, over, memory_order_relaxed);
        if (over)
            log_warn(-1,
                     "memory: RSS %llu bytes is past --max-memory %llu: refusing new "
                     "subscriptions and campaigns",
                     (unsigned long long)rss, (unsigned long long)max);
        else
            log_info(-1, "memory: RSS %llu bytes is back under --max-memory",
                     (unsigned long long)rss);
    }
}

/* Drain (SIGTERM), in stages that every shard passes in step (docs/OPERATIONS.md):
 *  1 input stopped: no connection is read any more, so nothing new is sequenced;
 *  2 requests done: every request this shard sent (emits to owners) has been taken by its
 *    owner, which handles what it takes before it looks at the drain again;
 *  3 deliveries done: once every shard is at 2, every delivery this shard sent (events, acks)
 *    has been taken;
 *  4 goaway: once every shard is at 3, everything sequenced is in the connections' queues:
 *    each connection gets a goaway frame and closes once its queue is sent.
 * --drain-ms bounds the whole: past it, what is left is closed. */
enum { DRAIN_NONE, DRAIN_INPUT_STOPPED, DRAIN_REQUESTS_DONE, DRAIN_DELIVERIES_DONE, DRAIN_GOAWAY };

static void shard_begin_stop(struct shard *s)
{
    s->stopping = true;
    s->drain_stage = DRAIN_INPUT_STOPPED;
    s->stop_deadline_ns = shard_now_ns() + (int64_t)s->cfg->drain_ms * 1000000;
    if (!s->accept_resume_ns)
        shard_accept_cancel(s);
    s->accept_resume_ns = 0;
    for (uint32_t i = 0; s->conns.slots && i <= s->conns.mask; i++)
        if (s->conns.slots[i].val)
            conn_stop_reading(s->conns.slots[i].val);
    log_info((int)s->index, "draining: %u connections, deadline %u ms", s->conns.count,
             s->cfg->drain_ms);
}

/* True when every message of class cls this shard sent has been taken by its consumer. */
static bool shard_sent_taken(struct shard *s, int cls)
{
    for (uint32_t d = 0; d < s->broker->shard_count; d++) {
        if (d == s->index)
            continue;
        struct ring *r = broker_ring(s->broker, cls, s->index, d);
        if (s->outbox[cls][d].count || ring_free_slots(r) != ring_capacity(r))
            return false;
    }
    return true;
}

/* Moves the drain on when it can (each loop pass while stopping). */
static void shard_drain_step(struct shard *s)
{
    struct broker *b = s->broker;
    if (s->drain_stage == DRAIN_INPUT_STOPPED && shard_sent_taken(s, CORE_REQUEST)) {
        s->drain_stage = DRAIN_REQUESTS_DONE;
        atomic_fetch_add_explicit(&b->drain_requests_done, 1, memory_order_acq_rel);
    }
    if (s->drain_stage == DRAIN_REQUESTS_DONE &&
        atomic_load_explicit(&b->drain_requests_done, memory_order_acquire) == b->shard_count &&
        store_idle(s) && shard_sent_taken(s, CORE_DELIVERY)) {
        s->drain_stage = DRAIN_DELIVERIES_DONE;
        atomic_fetch_add_explicit(&b->drain_deliveries_done, 1, memory_order_acq_rel);
    }
    if (s->drain_stage == DRAIN_DELIVERIES_DONE &&
        atomic_load_explicit(&b->drain_deliveries_done, memory_order_acquire) == b->shard_count) {
        s->drain_stage = DRAIN_GOAWAY;
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_goaway_encode(buf, sizeof(buf), "shutting down");
        for (uint32_t i = 0; s->conns.slots && i <= s->conns.mask; i++) {
            struct conn *c = s->conns.slots[i].val;
            if (!c || (c->flags & CONN_DEAD))
                continue;
            if (n > 0)
                conn_enqueue_bytes(c, buf, (size_t)n);
            conn_close_after_flush(c);
        }
        log_info((int)s->index, "drained: goaway sent to %u connections", s->conns.count);
    }
}

/* The loop is turning: /readyz and the systemd watchdog (metrics_readiness) look at this. */
static void shard_heartbeat(struct shard *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    atomic_store_explicit(&s->stats.heartbeat_ns,
                          (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
                          memory_order_relaxed);
}

static void shard_tick(struct shard *s)
{
    s->timer_armed = false;
    shard_heartbeat(s);
    log_refusal_flush((int)s->index);
    int64_t now = shard_now_ns();
    if (!s->stopping && atomic_load_explicit(&s->broker->stop, memory_order_relaxed))
        shard_begin_stop(s);
    if (s->stopping && now >= s->stop_deadline_ns) {
        for (uint32_t i = 0; s->conns.slots && i <= s->conns.mask; i++)
            if (s->conns.slots[i].val)
                conn_close(s->conns.slots[i].val, "drain deadline passed");
    }
    if (!s->stopping) {
        /* Closing only marks a connection (the table changes at conn_reap), so the walk is
         * safe. */
        for (uint32_t i = 0; s->conns.slots && i <= s->conns.mask; i++) {
            struct conn *c = s->conns.slots[i].val;
            if (c)
                conn_check_deadlines(c, now);
        }
        shard_accept_check(s, now);
        auth_shard_tick(s);
        pubsub_sweep_campaigns(s, now);
        shard_memory_check(s);
        shard_memory_trim(s, now);
    }
    shard_timer_arm(s);
    s->timer_armed = true;
}

void shard_cqe(struct shard *s, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    if (!ud_is_conn(ud)) {
        switch (ud) {
        case UD_ACCEPT:
        case UD_WS_ACCEPT:
            shard_accept_done(s, cqe, ud == UD_WS_ACCEPT);
            break;
        case UD_TIMER:
            shard_tick(s);
            break;
        case UD_STORE_WRITE:
        case UD_STORE_PREP:
        case UD_STORE_ISYNC:
        case UD_STORE_TIMER:
            store_cqe(s, ud, cqe->res);
            break;
        case UD_HOOK_TIMER:
            s->hook_timer_ns = 0;
            if (core_hooks && core_hooks->timer && !s->stopping)
                core_hooks->timer(s, shard_now_ns());
            break;
        default:
            if (ud >= UD_STORE_SYNC0 && ud < UD_STORE_SYNC0 + UD_STORE_SYNC_SLOTS)
                store_cqe(s, ud, cqe->res);
            break; /* otherwise: wake-ups and ignored results */
        }
        return;
    }
    struct conn *c = ud_conn(ud);
    switch (ud_conn_op(ud)) {
    case UD_CONN_RECV:
        conn_recv_done(c, cqe);
        break;
    case UD_CONN_SEND:
        conn_send_done(c, cqe->res);
        break;
    case UD_CONN_CANCEL:
        conn_op_done(c);
        break;
    default:
        NX_ASSERT(!"unknown connection operation in user_data");
    }
}

/* ---- set-up and the loop ----------------------------------------------------------------- */

static int shard_setup_ring(struct shard *s)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* Single issuer + deferred task running: completions are only processed when this thread
     * asks for them, so no IPI or task-work interrupts land in the middle of its work. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    /* 4096 SQEs; CQ four times as deep, since multishot operations post many completions per
     * submission. */
    p.cq_entries = 16384;
    int r = io_uring_queue_init_params(4096, &s->ring, &p);
    if (r < 0)
        return r;

    uint32_t n = s->cfg->recv_buffers;
    s->buf_ring_bytes = sizeof(struct io_uring_buf) * n;
    void *mem =
        mmap(NULL, s->buf_ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    s->buf_ring = mem;
    io_uring_buf_ring_init(s->buf_ring);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)mem;
    reg.ring_entries = n;
    reg.bgid = SHARD_BGID;
    r = io_uring_register_buf_ring(&s->ring, &reg, 0);
    if (r < 0)
        return r;
    s->bufs = malloc((size_t)n * s->cfg->recv_buffer_bytes);
    if (!s->bufs)
        return -ENOMEM;
    s->buf_mask = (uint32_t)io_uring_buf_ring_mask(n);
    for (uint32_t i = 0; i < n; i++)
        io_uring_buf_ring_add(s->buf_ring, s->bufs + (size_t)i * s->cfg->recv_buffer_bytes,
                              s->cfg->recv_buffer_bytes, (unsigned short)i, (int)s->buf_mask,
                              (int)i);
    io_uring_buf_ring_advance(s->buf_ring, (int)n);
    return 0;
}

void shard_buf_return(struct shard *s, uint16_t bid)
{
    io_uring_buf_ring_add(s->buf_ring, s->bufs + (size_t)bid * s->cfg->recv_buffer_bytes,
                          s->cfg->recv_buffer_bytes, bid, (int)s->buf_mask, 0);
    io_uring_buf_ring_advance(s->buf_ring, 1);
}

const uint8_t *shard_buf(struct shard *s, uint16_t bid)
{
    return s->bufs + (size_t)bid * s->cfg->recv_buffer_bytes;
}

int shard_init(struct shard *s)
{
    uint64_t seed[4];
    if (getrandom(seed, sizeof(seed), 0) != sizeof(seed)) {
        /* getrandom cannot fail for 32 bytes once the pool is ready; fall back to the clock. */
        for (int i = 0; i < 4; i++)
            seed[i] = (uint64_t)shard_now_ns() * (2 * (uint64_t)i + 1) ^ (uint64_t)s->index;
    }
    memcpy(s->rng, seed, sizeof(seed));
    map_init(&s->conns);
    map_init(&s->campaigns);
    map_init(&s->sub_lists);
    map_init(&s->replays);
    s->assembly_left = s->cfg->assembly_bytes_max;
    return shard_setup_ring(s);
}

static void shard_run_lists(struct shard *s)
{
    /* Resume paused connections whose way is clear again. */
    if (s->resume_head && !shard_stalled(s)) {
        struct conn *list = s->resume_head;
        s->resume_head = NULL;
        while (list) {
            struct conn *c = list;
            list = c->resume_next;
            c->resume_next = NULL;
            c->flags &= ~CONN_ON_RESUME;
            conn_resume(c);
        }
    }
    while (s->flush_head) {
        struct conn *c = s->flush_head;
        s->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->flags &= ~CONN_ON_FLUSH;
        conn_flush(c);
    }
}

static bool shard_outboxes_pending(const struct shard *s)
{
    for (int cls = 0; cls < 2; cls++)
        for (uint32_t d = 0; d < s->broker->shard_count; d++)
            if (s->outbox[cls][d].count)
                return true;
    return false;
}

/* Waits for completions, sleeping only if no ring holds work (the Dekker half of
 * shard_wake()). */
static void shard_wait(struct shard *s, bool busy)
{
    if (busy || s->resume_head) {
        if (shard_outboxes_pending(s) || s->resume_head) {
            /* A peer must drain our rings first; look again in 50 µs. */
            struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 50000};
            struct io_uring_cqe *cqe;
            io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
        } else {
            io_uring_submit_and_get_events(&s->ring);
        }
        return;
    }
    if (s->cfg->busy_poll_us) {
        /* Busy polling: an event that arrives within the window is seen without a wake-up
         * (the sleeping flag stays clear, so peers need not wake us either). */
        int64_t now = shard_now_ns();
        if (now - s->last_work_ns < (int64_t)s->cfg->busy_poll_us * 1000) {
            io_uring_submit_and_get_events(&s->ring);
            return;
        }
    }
    atomic_store_explicit(&s->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (shard_rings_have_input(s) || auth_results_ready(s)) {
        atomic_store_explicit(&s->sleeping, 0, memory_order_relaxed);
        io_uring_submit_and_get_events(&s->ring);
        return;
    }
    io_uring_submit_and_wait(&s->ring, 1);
    atomic_store_explicit(&s->sleeping, 0, memory_order_relaxed);
}

void shard_loop(struct shard *s)
{
    shard_heartbeat(s);
    shard_accept_arm(s);
    shard_timer_arm(s);
    s->timer_armed = true;
    for (;;) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        s->clock_uses = SHARD_CLOCK_REUSE; /* a new pass: the next stamp reads the clock */
        io_uring_for_each_cqe(&s->ring, head, cqe)
        {
            shard_cqe(s, cqe);
            if (++n == SHARD_PASS_CQES)
                break;
        }
        io_uring_cq_advance(&s->ring, n);

        bool busy = shard_poll_rings(s);
        auth_poll(s);
        if (s->nasks && pubsub_replay_asks(s))
            busy = true;
        shard_run_lists(s);
        /* The batch of this pass goes to the disk; what it released (frames held behind the
         * log with nothing to write) is sent in this pass too, not after a sleep. */
        store_flush(s);
        if (s->flush_head)
            shard_run_lists(s);
        conn_reap(s);
        shard_flush_rings(s);
        if (s->cfg->busy_poll_us && (n > 0 || busy))
            s->last_work_ns = shard_now_ns();
        if (s->stopping) {
            shard_drain_step(s);
            /* A shard leaves only once the drain is through (or its deadline passed): until
             * then other shards may still need it to take what they send. */
            bool drained = s->drain_stage == DRAIN_GOAWAY || shard_now_ns() >= s->stop_deadline_ns;
            if (drained && s->conns.count == 0 && s->dead_count == 0)
                break;
        }
        shard_wait(s, busy || n == SHARD_PASS_CQES || !store_waits(s));
    }
}

/* Frees a message that will never be handled (shutdown). */
static void shard_msg_free(const struct ring_msg *m)
{
    switch (m->kind) {
    case MSG_DELIVER:
    case MSG_TO_CONN:
        oframe_unref(m->ptr);
        break;
    case MSG_CONN_GONE:
    case MSG_REPLAY_PAUSE:
    case MSG_REPLAY_MORE:
        break;
    case MSG_HOOK_REQ:
    case MSG_HOOK_DEL:
        if (core_hooks && core_hooks->msg_free)
            core_hooks->msg_free(m->aux, m->ptr, m->arg);
        break;
    case MSG_INTEREST:
    case MSG_INTEREST_ACK: {
        struct interest_msg *im = m->ptr;
        free(im->patterns);
        free(im);
        break;
    }
    default:
        free(m->ptr);
        break;
    }
}

/* After every shard has left its loop: free what is still in flight towards this shard. */
void shard_drain_and_free(struct shard *s)
{
    struct ring_msg batch[SHARD_RING_BATCH];
    for (uint32_t src = 0; src < s->broker->shard_count; src++) {
        if (src == s->index)
            continue;
        for (int cls = 0; cls < 2; cls++) {
            struct ring *r = broker_ring(s->broker, cls, src, s->index);
            uint32_t got;
            while ((got = ring_pop_batch(r, batch, SHARD_RING_BATCH)) > 0) {
                for (uint32_t i = 0; i < got; i++) {
                    shard_msg_free(&batch[i]);
                }
            }
        }
    }
}

void shard_free_outboxes(struct shard *s)
{
    for (uint32_t d = 0; d < CONFIG_SHARDS_MAX; d++) {
        free(s->emit_open[d]);
        s->emit_open[d] = NULL;
    }
    for (int cls = 0; cls < 2; cls++) {
        for (uint32_t d = 0; d < CONFIG_SHARDS_MAX; d++) {
            struct outbox *ob = &s->outbox[cls][d];
            for (uint32_t i = 0; i < ob->count; i++) {
                struct ring_msg *m = &ob->v[(ob->head + i) % ob->cap];
                shard_msg_free(m);
            }
            free(ob->v);
            memset(ob, 0, sizeof(*ob));
        }
    }
    if (core_hooks && core_hooks->shard_free)
        core_hooks->shard_free(s);
    pubsub_free_shard(s);
    map_free(&s->conns);
    io_uring_queue_exit(&s->ring); /* waits for the kernel's operations, log writes included */
    store_close(s);
    if (s->buf_ring)
        munmap(s->buf_ring, s->buf_ring_bytes);
    free(s->bufs);
    free(s->stamp_buf);
    s->stamp_buf = NULL;
}
