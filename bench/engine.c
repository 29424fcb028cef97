// SPDX-License-Identifier: Apache-2.0
//
// The worker threads of nexus-bench: one epoll loop per thread driving many non-blocking
// connections. Publishers copy pre-encoded frames (one template per campaign) into a large
// per-connection buffer, patch the send time and sequence into the payload bytes and write
// the batch with one send; subscribers read into a per-thread buffer, let the protocol driver
// find each payload, and check it. Nothing is allocated per message.
//
// Pacing:
//  - max rate (--rate 0): a publisher may have at most --window events (and --window-bytes of
//    frames) in flight, where in flight means generated but not yet seen by the slowest live
//    subscriber of the event's campaign: inflight(p) = sum over campaigns c of gen(p, c) - min over
//    subscribers s of c of progress(s, p). A paused publisher resumes as soon as subscribers catch
//    up. This measures the broker's sustained delivery rate instead of filling its queues (or the
//    kernel's) until a slow-consumer limit trips, and it bounds memory on every side.
//  - fixed rate: event i of a publisher is due at t0 + i / rate_per_publisher; it is sent as
//    soon as possible after that and carries the *scheduled* time, so a stall on any side
//    shows up as latency of every event it delayed (no coordinated omission). The window does
//    not apply; the publisher's own buffer (bounded) is the only brake.
//
// Threading: a connection and its buffers belong to the thread that runs it. Cross-thread
// facts are the single-writer relaxed atomics described in bench.h.
#include "bench/bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Events per epoll_wait: enough that one call serves every connection of a busy thread. */
#define EPOLL_EVENTS_MAX 512
/* Fill-and-write rounds per publisher per loop iteration: bounds how long publishers can run
 * before subscribers are read again, which keeps a single-threaded run balanced. */
#define PUB_ROUNDS_MAX 4
/* A paused publisher on a multi-threaded run re-checks its window this often (the
 * subscribers that unblock it may be on another thread, which cannot wake this one). */
#define PAUSED_RECHECK_NS 100000
/* Longest sleep in epoll_wait, so that phase changes are seen promptly. */
#define WAIT_MAX_NS 10000000

static inline uint64_t ld(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}
static inline void st(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static void set_error(struct bench_thread *t, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void set_error(struct bench_thread *t, const char *fmt, va_list ap)
{
    if (t->last_error[0])
        return; /* the first problem is the one worth reading */
    vsnprintf(t->last_error, sizeof(t->last_error), fmt, ap);
}

static void thread_error(struct bench_thread *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void thread_error(struct bench_thread *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(t, fmt, ap);
    va_end(ap);
}

/* Closes c after the broker or the protocol gave up on it. A dead subscriber stops counting
 * in every publisher's window (its progress becomes "infinite"); what it did not receive is
 * counted as lost at the end. */
static void conn_dead(struct bench_conn *c)
{
    if (c->dead)
        return;
    struct bench_thread *t = c->thr;
    struct bench_run *r = t->run;
    c->dead = true;
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    bench_tls_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
    t->local[BC_DISCONNECTS]++;
    if (c->role == BENCH_SUB)
        for (uint32_t p = 0; p < r->cfg.publishers; p++)
            st(&r->progress[(size_t)c->index * r->cfg.publishers + p], UINT64_MAX);
}

void bench_conn_fail(struct bench_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error(c->thr, fmt, ap);
    va_end(ap);
    c->thr->local[BC_CORRUPT]++;
    conn_dead(c);
}

void bench_on_message(struct bench_conn *c, const uint8_t *payload, uint32_t len,
                      uint64_t broker_seq)
{
    struct bench_thread *t = c->thr;
    struct bench_run *r = t->run;
    if (c->role != BENCH_SUB || len != r->pl.len) {
        t->local[BC_CORRUPT]++;
        return;
    }
    uint64_t ts = bench_pl_get(&r->pl, payload + r->pl.ts_off);
    uint64_t id = bench_pl_get(&r->pl, payload + r->pl.id_off);
    uint64_t camp = bench_pl_get(&r->pl, payload + r->pl.campaign_off);
    uint64_t pub = id >> BENCH_SEQ_BITS, seq = id & BENCH_SEQ_MASK;
    if (pub >= r->cfg.publishers || camp != c->campaign || seq == 0) {
        t->local[BC_CORRUPT]++;
        return;
    }
    if (broker_seq) {
        /* The first event fixes the base: a broker that ran earlier benchmarks may have
         * numbered this campaign before (campaign ids are per run, so it rarely has). */
        if (c->broker_seq_last && broker_seq != c->broker_seq_last + 1)
            t->local[BC_SEQ_GAPS]++;
        c->broker_seq_last = broker_seq;
    }
    uint64_t next = c->next_seq[pub];
    if (seq < next) {
        t->local[BC_DISORDER]++;
        return;
    }
    if (seq > next)
        t->local[BC_LOST] += seq - next;
    c->next_seq[pub] = seq + 1;
    c->received[pub]++;
    t->local[BC_DELIVERED]++;
    t->local[BC_PAYLOAD_BYTES] += len;
    st(&r->progress[(size_t)c->index * r->cfg.publishers + pub], seq);
    uint64_t lat = t->now_ns > (int64_t)ts ? (uint64_t)(t->now_ns - (int64_t)ts) : 0;
    if (lat > t->local[BC_LAT_MAX_NS])
        t->local[BC_LAT_MAX_NS] = lat;
    if ((int64_t)ts >= r->measure_start_ns && (int64_t)ts < r->measure_end_ns)
        hist_record(&t->hist, lat);
}

void bench_on_gap(struct bench_conn *c, uint64_t dropped)
{
    c->thr->local[BC_GAP_DROPPED] += dropped ? dropped : 1;
    thread_error(c->thr, "subscriber %u: broker sent a gap notice (%llu events dropped)", c->index,
                 (unsigned long long)dropped);
}

void bench_on_broker_error(struct bench_conn *c, const char *text, size_t len)
{
    c->thr->local[BC_BROKER_ERRORS]++;
    thread_error(c->thr, "%s %u: broker error: %.*s",
                 c->role == BENCH_PUB ? "publisher" : "subscriber", c->index,
                 (int)(len < 200 ? len : 200), text);
}

static void set_out_interest(struct bench_conn *c, bool want)
{
    if (c->want_out == want || c->dead)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(c->thr->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

/* Writes c's pending bytes. Returns 1 when all were written, 0 when the socket is full
 * (EPOLLOUT armed), -1 when the connection died. */
static int conn_flush(struct bench_conn *c)
{
    while (c->out_head < c->out_len) {
        long n = bench_io_send(c->fd, c->ssl, c->out + c->out_head, c->out_len - c->out_head);
        if (n > 0) {
            c->out_head += (uint32_t)n;
            continue;
        }
        if (n == -EAGAIN) {
            set_out_interest(c, true);
            return 0;
        }
        thread_error(c->thr, "%s %u: send: %s", c->role == BENCH_PUB ? "publisher" : "subscriber",
                     c->index, n < 0 ? strerror((int)-n) : "connection closed");
        conn_dead(c);
        return -1;
    }
    c->out_head = c->out_len = 0;
    set_out_interest(c, c->read_wants_out);
    return 1;
}

void bench_conn_reply(struct bench_conn *c, const void *data, size_t len)
{
    if (c->dead)
        return;
    if (c->out_len + len > c->out_cap) {
        /* Only control replies land here and a healthy broker asks for a few; a connection
         * whose replies pile up this far is not being served. */
        bench_conn_fail(c, "%s %u: control replies exceed %u bytes",
                        c->role == BENCH_PUB ? "publisher" : "subscriber", c->index, c->out_cap);
        return;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    conn_flush(c);
}

/* TLS reads stop when less than this is left in the receive buffer (a record's plaintext is
 * at most 16 KiB). */
#define TLS_READ_ROOM_MIN (16u << 10)

/* Reads once from c and hands complete messages to the driver; an incomplete tail is kept
 * in c->carry. Level-triggered epoll calls again while bytes remain, so one read per
 * readiness keeps connections fair. With TLS, one read is one record: records are read
 * until the socket is drained or the buffer is nearly full, and in the latter case the
 * connection is marked tls_more (epoll cannot see what the SSL object holds). */
static void conn_read(struct bench_conn *c)
{
    struct bench_thread *t = c->thr;
    uint8_t *buf = t->rbuf;
    if (c->carry_len)
        memcpy(buf, c->carry, c->carry_len);
    size_t total = c->carry_len;
    bool want_out = false;
    long n;
    c->tls_more = false;
    do {
        n = bench_io_recv(c->fd, c->ssl, buf + total, t->rbuf_cap - total, &want_out);
        if (n > 0)
            total += (size_t)n;
    } while (c->ssl && n > 0 && t->rbuf_cap - total >= TLS_READ_ROOM_MIN);
    size_t got = total - c->carry_len;
    if (c->ssl && (n > 0 || (got && n != -EAGAIN))) {
        c->tls_more = true; /* more to read, or a close to see after these bytes */
        t->tls_more = true;
    }
    if (c->read_wants_out != want_out) {
        c->read_wants_out = want_out;
        if (want_out)
            set_out_interest(c, true);
    }
    if (got == 0 && n != -EAGAIN) {
        thread_error(t, "%s %u: %s by the broker",
                     c->role == BENCH_PUB ? "publisher" : "subscriber", c->index,
                     n == 0 ? "connection closed" : strerror((int)-n));
        conn_dead(c);
        return;
    }
    if (got == 0)
        return;
    t->now_ns = bench_now_ns();
    if (c->role == BENCH_SUB)
        t->local[BC_WIRE_BYTES] += (uint64_t)got;
    long used = t->run->proto->parse(c, buf, total);
    if (used < 0 || c->dead)
        return;
    size_t rest = total - (size_t)used;
    if (rest > c->carry_cap) {
        bench_conn_fail(c, "%s %u: message larger than the %u-byte receive buffer",
                        c->role == BENCH_PUB ? "publisher" : "subscriber", c->index, c->carry_cap);
        return;
    }
    memcpy(c->carry, buf + used, rest);
    c->carry_len = (uint32_t)rest;
    if (c->ssl && c->out_head < c->out_len)
        conn_flush(c); /* a TLS write may have waited for this read */
}

/* Reads the TLS connections of t that hold bytes epoll does not report. */
static void tls_read_more(struct bench_thread *t)
{
    t->tls_more = false;
    for (uint32_t i = 0; i < t->sub_count; i++)
        if (t->subs[i]->tls_more && !t->subs[i]->dead)
            conn_read(t->subs[i]);
    for (uint32_t i = 0; i < t->pub_count; i++)
        if (t->pubs[i]->tls_more && !t->pubs[i]->dead)
            conn_read(t->pubs[i]);
}

/* Events publisher c has in flight (see the header comment). */
static uint64_t pub_inflight(const struct bench_conn *c)
{
    const struct bench_run *r = c->thr->run;
    uint32_t campaigns = r->cfg.campaigns, pubs = r->cfg.publishers;
    uint64_t sum = 0;
    for (uint32_t cc = 0; cc < campaigns; cc++) {
        uint64_t g = ld(&r->gen[(size_t)c->index * campaigns + cc]);
        uint64_t low = g;
        for (uint32_t i = r->camp_first[cc]; i < r->camp_first[cc + 1] && low; i++) {
            uint64_t v = ld(&r->progress[(size_t)r->camp_subs[i] * pubs + c->index]);
            if (v < low)
                low = v;
        }
        sum += g - low;
    }
    return sum;
}

/* Counts c's event id (BENCH_EVENT_ID_TMPL) up by one, in decimal, in place. */
static inline void next_event_id(struct bench_conn *c)
{
    if (c->event_id[0] != 'p') {
        memcpy(c->event_id, BENCH_EVENT_ID_TMPL, BENCH_EVENT_ID_LEN);
        for (uint32_t i = 4, v = c->index; i >= 1; i--, v /= 10)
            c->event_id[i] = (char)('0' + v % 10);
    }
    for (int i = BENCH_EVENT_ID_LEN - 1; i > 5; i--) {
        if (c->event_id[i] != '9') {
            c->event_id[i]++;
            return;
        }
        c->event_id[i] = '0';
    }
}

/* Appends one event for the next campaign to c->out, stamped with ts. */
static inline void pub_put(struct bench_conn *c, uint64_t ts)
{
    const struct bench_run *r = c->thr->run;
    uint32_t cc = c->next_campaign;
    if (++c->next_campaign == r->cfg.campaigns)
        c->next_campaign = 0;
    _Atomic uint64_t *g = &r->gen[(size_t)c->index * r->cfg.campaigns + cc];
    uint64_t seq = ld(g) + 1;
    uint8_t *dst = c->out + c->out_len;
    uint32_t len = r->tmpl_len[cc];
    memcpy(dst, r->tmpl + r->tmpl_off[cc], len);
    uint8_t *pl = dst + r->tmpl_pl_off[cc];
    bench_pl_put(&r->pl, pl + r->pl.ts_off, ts);
    bench_pl_put(&r->pl, pl + r->pl.id_off, ((uint64_t)c->index << BENCH_SEQ_BITS) | seq);
    if (r->tmpl_id_off) {
        next_event_id(c);
        memcpy(dst + r->tmpl_id_off[cc], c->event_id, BENCH_EVENT_ID_LEN);
    }
    c->out_len += len;
    st(g, seq);
}

/* Generates what c may send now into its buffer. Returns the events added. */
static uint32_t pub_fill(struct bench_conn *c, int64_t now, int64_t *next_due)
{
    struct bench_thread *t = c->thr;
    const struct bench_run *r = t->run;
    uint32_t room = (c->out_cap - c->out_len) / r->frame_len_max;
    uint32_t n = 0;
    if (r->cfg.rate == 0) {
        uint64_t inflight = pub_inflight(c);
        uint64_t allowed = inflight < r->window_events ? r->window_events - inflight : 0;
        c->paused = allowed == 0;
        if (allowed > room)
            allowed = room;
        for (; n < allowed; n++)
            pub_put(c, (uint64_t)now);
    } else {
        double per_pub = (double)r->cfg.rate / r->cfg.publishers;
        double interval_ns = 1e9 / per_pub;
        for (; n < room; n++) {
            int64_t due = r->t0_ns + (int64_t)((double)c->sched_next * interval_ns);
            if (due > now || due >= r->measure_end_ns) {
                if (due < *next_due && due < r->measure_end_ns)
                    *next_due = due;
                break;
            }
            if ((uint64_t)(now - due) > t->local[BC_SCHED_LAG_NS])
                t->local[BC_SCHED_LAG_NS] = (uint64_t)(now - due);
            pub_put(c, (uint64_t)due);
            c->sched_next++;
        }
    }
    t->local[BC_PUBLISHED] += n;
    return n;
}

/* Runs publisher c: flushes, then fills and writes while allowed. Returns true if it could
 * send more right away (the loop then polls without sleeping). */
static bool pub_pump(struct bench_conn *c, int64_t now, int64_t *next_due)
{
    const struct bench_run *r = c->thr->run;
    if (c->dead || (c->out_len && conn_flush(c) <= 0))
        return false;
    if (atomic_load_explicit(&r->phase, memory_order_relaxed) != PHASE_RUN ||
        now >= r->measure_end_ns)
        return false;
    for (int round = 0; round < PUB_ROUNDS_MAX; round++) {
        if (pub_fill(c, now, next_due) == 0)
            return false;
        if (conn_flush(c) <= 0)
            return false;
        now = bench_now_ns();
    }
    return true;
}

static void publish_counters(struct bench_thread *t)
{
    uint64_t unsent = 0;
    for (uint32_t i = 0; i < t->pub_count; i++)
        unsent += t->pubs[i]->out_len - t->pubs[i]->out_head;
    t->local[BC_PUB_UNSENT] = unsent;
    for (int i = 0; i < BC_COUNT; i++) {
        if (i == BC_LAT_MAX_NS) {
            /* The progress line takes this one with an exchange; a racing update may be
             * lost, which only blurs one progress line. */
            if (t->local[i] > ld(&t->shared[i]))
                st(&t->shared[i], t->local[i]);
            t->local[i] = 0;
            continue;
        }
        st(&t->shared[i], t->local[i]);
    }
}

void *bench_thread_main(void *arg)
{
    struct bench_thread *t = arg;
    struct bench_run *r = t->run;
    struct epoll_event evs[EPOLL_EVENTS_MAX];
    /* The default 50 us timer slack would let a fixed-rate publisher wake that late and
     * charge it to the broker's latency; 1 ns asks for the kernel's best. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    while (atomic_load_explicit(&r->phase, memory_order_relaxed) != PHASE_STOP) {
        int64_t now = bench_now_ns();
        int64_t next_due = INT64_MAX;
        bool ready = false, paused = false;
        for (uint32_t i = 0; i < t->pub_count; i++) {
            ready |= pub_pump(t->pubs[i], now, &next_due);
            paused |= t->pubs[i]->paused && !t->pubs[i]->dead;
        }
        int64_t wait_ns = WAIT_MAX_NS;
        if (ready)
            wait_ns = 0;
        else if (next_due != INT64_MAX)
            wait_ns = next_due > now ? next_due - now : 0;
        else if (paused && r->cfg.threads > 1)
            wait_ns = PAUSED_RECHECK_NS;
        if (wait_ns > WAIT_MAX_NS)
            wait_ns = WAIT_MAX_NS;
        /* Fixed rate: a sleep of a few tens of microseconds ends late by about as much again
         * (timer and wake-up latency, worse in a VM), which would be charged to the broker.
         * Short waits are spun instead (--spin-us): the load generator has its own CPU. */
        if (r->cfg.rate && wait_ns < (int64_t)r->cfg.spin_below_ns)
            wait_ns = 0;
        if (t->tls_more)
            wait_ns = 0;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = wait_ns};
        int n = epoll_pwait2(t->epfd, evs, EPOLL_EVENTS_MAX, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            thread_error(t, "epoll_pwait2: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct bench_conn *c = evs[i].data.ptr;
            if (c->dead)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_read(c);
            if (!c->dead && (evs[i].events & EPOLLOUT)) {
                if (c->read_wants_out)
                    conn_read(c);
                if (!c->dead)
                    conn_flush(c);
            }
        }
        if (t->tls_more)
            tls_read_more(t);
        publish_counters(t);
    }
    publish_counters(t);
    return NULL;
}
