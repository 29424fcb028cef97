// SPDX-License-Identifier: Apache-2.0
//
// The `lifecycle` workload of nexus-bench (Nexus only): request round trips through the
// Provider. Each of --publishers requester connections emits `test:echo:v1:requested` with a
// unique event id "r<conn>-<seq>" and the benchmark payload to its own campaign
// (campaign_base + conn), correlation 0 (no ack), and does not subscribe: the broker sends it
// the lifecycle events directly (docs/PROTOCOL.md "Requests and their lifecycle"). nexusd
// must run with --test-handlers. Every request must get exactly one `started` and then
// exactly one `success` whose correlation_id is its event id, and nothing else; latency is
// measured from the send (max rate) or the scheduled send (--rate) to the `success`.
//
// Pacing: at most --window requests open per connection (default 64 with the preset); with
// --rate N, request i of each connection is due at t0 + i * connections / N and is sent as
// soon as it is due and the window allows, latency still counted from the schedule (no
// coordinated omission). One thread drives every connection with epoll; --threads is ignored.
#include "bench/bench.h"
#include "bench/nconn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "codec/envelope.h"
#include "codec/frame.h"

#define LC_EVENT_TYPE  "test:echo:v1:requested"
#define LC_IN_BYTES    (1u << 20)
#define LC_DRAIN_IDLE  1500000000ll
#define LC_EVENTS_MAX  64
#define LC_ID_BYTES    32
#define LC_WAIT_MAX_NS 1000000ll
/* Fixed rate: waits shorter than this are spun (see engine.c). */
#define LC_SPIN_BELOW_NS 2000000ll

struct lc_slot {
    uint64_t seq; /* request sequence (1-based) held by this slot, 0 = free */
    int64_t t_ns; /* send or scheduled send time */
    bool started;
};

struct lc_conn {
    struct nconn nc;       /* first: epoll hands back &nc */
    struct lc_slot *slots; /* ring indexed by seq & mask */
    uint32_t mask;
    uint64_t next_seq; /* next request to send */
    uint32_t open;     /* requests sent and not yet successful */
};

/* Counters of the delivery check. */
enum lc_counter {
    LC_SENT,
    LC_STARTED,
    LC_SUCCESS,
    LC_FAILED,      /* failed, cancelled, timeout: any terminal state but success */
    LC_DUP_STARTED, /* a second started of an open request */
    LC_NO_START,    /* success before (without) started */
    LC_UNKNOWN,     /* lifecycle event for no open request: duplicate success or stray */
    LC_OTHER,       /* any other event type */
    LC_CORRUPT,     /* success payload differs in size from the request's */
    LC_ERRORS,      /* error frames */
    LC_DISCONNECTS,
    LC_COUNT
};

struct lc_run {
    const struct bench_cfg *cfg;
    struct bench_payload pl;
    struct lc_conn *conns;
    uint32_t n;
    int epfd;
    int64_t t0, m_start, m_end;
    bool sending;
    struct hist hist;
    uint64_t k[LC_COUNT];
    uint64_t done_measured; /* successes inside the measured window */
    int64_t sched_lag_max;
    uint64_t lat_max_tick; /* worst latency since the last progress line */
    int64_t now;
    char first_error[256];
};

#define lc_error(r, ...) bench_first_error((r)->first_error, sizeof((r)->first_error), __VA_ARGS__)

/* Sends what is buffered; a failed connection is counted and reported. */
static void lc_flush(struct lc_run *r, struct lc_conn *c)
{
    char err[256];
    if (nconn_flush(&c->nc, err, sizeof(err)) < 0) {
        r->k[LC_DISCONNECTS]++;
        lc_error(r, "requester %s", err);
    }
}

/* Appends request c->next_seq with time t to the output. Returns false if it did not fit. */
static bool put_request(struct lc_run *r, struct lc_conn *c, int64_t t)
{
    uint64_t seq = c->next_seq;
    struct lc_slot *s = &c->slots[seq & c->mask];
    if (s->seq)
        return false; /* an older request still holds the slot */
    char id[LC_ID_BYTES];
    int idn = snprintf(id, sizeof(id), "r%u-%" PRIu64, c->nc.index, seq);
    struct codec_emit_in e;
    memset(&e, 0, sizeof(e));
    e.event_id.ptr = (const uint8_t *)id;
    e.event_id.len = (uint32_t)idn;
    e.event_type.ptr = (const uint8_t *)LC_EVENT_TYPE;
    e.event_type.len = (uint32_t)strlen(LC_EVENT_TYPE);
    e.campaign_id = (int64_t)(r->cfg->campaign_base + c->nc.index);
    e.payload.ptr = r->pl.bytes;
    e.payload.len = r->pl.len;
    e.has_payload = true;
    size_t need = codec_emit_size(&e);
    if (!nconn_room(&c->nc, need))
        return false;
    c->nc.out_len += (uint32_t)codec_emit_encode(&e, c->nc.out + c->nc.out_len);
    s->seq = seq;
    s->t_ns = t;
    s->started = false;
    c->next_seq++;
    c->open++;
    r->k[LC_SENT]++;
    return true;
}

/* Sends what is allowed now; returns the next due time at fixed rate (INT64_MAX if none). */
static int64_t fill(struct lc_run *r, struct lc_conn *c, int64_t now)
{
    const struct bench_cfg *cfg = r->cfg;
    int64_t next_due = INT64_MAX;
    if (c->nc.dead || !r->sending)
        return next_due;
    while (c->open < cfg->window) {
        int64_t t = now;
        if (cfg->rate) {
            t = r->t0 + (int64_t)((double)(c->next_seq - 1) * r->n * 1e9 / (double)cfg->rate);
            if (t > now) {
                next_due = t;
                break;
            }
            if (now - t > r->sched_lag_max)
                r->sched_lag_max = now - t;
        }
        if (t >= r->m_end || !put_request(r, c, t))
            break;
    }
    lc_flush(r, c);
    return next_due;
}

/* "r<conn>-<seq>" of connection c: the slot it names, or NULL. */
static struct lc_slot *find_slot(struct lc_conn *c, struct codec_slice id)
{
    char buf[LC_ID_BYTES];
    if (id.len == 0 || id.len >= sizeof(buf))
        return NULL;
    memcpy(buf, id.ptr, id.len);
    buf[id.len] = 0;
    unsigned conn;
    unsigned long long seq;
    int used = 0;
    if (sscanf(buf, "r%u-%llu%n", &conn, &seq, &used) != 2 || (uint32_t)used != id.len ||
        conn != c->nc.index || seq == 0)
        return NULL;
    struct lc_slot *s = &c->slots[seq & c->mask];
    return s->seq == seq ? s : NULL;
}

static bool type_is(struct codec_slice t, const char *suffix)
{
    size_t n = strlen(suffix);
    return t.len >= n && memcmp(t.ptr + t.len - n, suffix, n) == 0;
}

static void on_event(struct lc_run *r, struct lc_conn *c, const struct codec_event_in *ev)
{
    bool started = type_is(ev->event_type, ":started");
    bool success = type_is(ev->event_type, ":success");
    bool terminal = type_is(ev->event_type, ":failed") || type_is(ev->event_type, ":cancelled") ||
                    type_is(ev->event_type, ":timeout");
    if (!started && !success && !terminal) {
        r->k[LC_OTHER]++;
        lc_error(r, "requester %u: unexpected event %.*s", c->nc.index, (int)ev->event_type.len,
                 (const char *)ev->event_type.ptr);
        return;
    }
    struct lc_slot *s = find_slot(c, ev->correlation_id);
    if (!s) {
        r->k[LC_UNKNOWN]++;
        lc_error(r, "requester %u: %.*s for no open request (correlation_id \"%.*s\")", c->nc.index,
                 (int)ev->event_type.len, (const char *)ev->event_type.ptr,
                 (int)ev->correlation_id.len, (const char *)ev->correlation_id.ptr);
        return;
    }
    if (started) {
        r->k[LC_STARTED]++;
        if (s->started) {
            r->k[LC_DUP_STARTED]++;
            lc_error(r, "requester %u: second started for request %" PRIu64, c->nc.index, s->seq);
        }
        s->started = true;
        return;
    }
    if (terminal) {
        r->k[LC_FAILED]++;
        lc_error(r, "requester %u: request %" PRIu64 " ended %.*s (%.*s)", c->nc.index, s->seq,
                 (int)ev->event_type.len, (const char *)ev->event_type.ptr, (int)ev->code.len,
                 (const char *)ev->code.ptr);
    } else {
        r->k[LC_SUCCESS]++;
        if (!s->started) {
            r->k[LC_NO_START]++;
            lc_error(r, "requester %u: success before started for request %" PRIu64, c->nc.index,
                     s->seq);
        }
        if (ev->payload.len != r->pl.len) {
            r->k[LC_CORRUPT]++;
            lc_error(r, "requester %u: success payload of %u bytes, sent %u", c->nc.index,
                     ev->payload.len, r->pl.len);
        }
        uint64_t lat = r->now > s->t_ns ? (uint64_t)(r->now - s->t_ns) : 0;
        if (r->now >= r->m_start && r->now < r->m_end) {
            hist_record(&r->hist, lat);
            r->done_measured++;
        }
        if (lat > r->lat_max_tick)
            r->lat_max_tick = lat;
    }
    s->seq = 0; /* closed: a later event for it counts as unknown */
    c->open--;
}

static void on_frame(struct lc_run *r, struct lc_conn *c, const uint8_t *body, uint32_t len)
{
    struct codec_envelope env;
    char cerr[CODEC_ERR_BYTES];
    if (codec_envelope_decode(body, len, &env, cerr) < 0) {
        r->k[LC_CORRUPT]++;
        lc_error(r, "requester %u: %s", c->nc.index, cerr);
        nconn_kill(&c->nc);
        return;
    }
    switch (env.kind) {
    case CODEC_KIND_EVENT: {
        struct codec_event_in ev;
        if (codec_event_decode(env.body.ptr, env.body.len, &ev, cerr) < 0) {
            r->k[LC_CORRUPT]++;
            lc_error(r, "requester %u: undecodable event: %s", c->nc.index, cerr);
            return;
        }
        on_event(r, c, &ev);
        return;
    }
    case CODEC_KIND_ERROR: {
        struct codec_error_in e;
        r->k[LC_ERRORS]++;
        if (codec_error_decode(env.body.ptr, env.body.len, &e, cerr) == 0)
            lc_error(r, "requester %u: broker error %.*s: %.*s", c->nc.index, (int)e.code.len,
                     (const char *)e.code.ptr, (int)e.message.len, (const char *)e.message.ptr);
        else
            lc_error(r, "requester %u: undecodable error frame", c->nc.index);
        return;
    }
    case CODEC_KIND_PING:
        nconn_pong(&c->nc, env.correlation, env.body.ptr, env.body.len);
        return;
    default:
        return;
    }
}

static void lc_frame(void *ctx, struct nconn *nc, const uint8_t *body, uint32_t len)
{
    on_frame(ctx, (struct lc_conn *)nc, body, len);
}

static void lc_read(struct lc_run *r, struct lc_conn *c)
{
    char err[256];
    if (nconn_read(&c->nc, lc_frame, r, &r->now, err, sizeof(err)) < 0) {
        r->k[LC_DISCONNECTS]++;
        lc_error(r, "requester %s", err);
    }
}

static uint64_t open_total(const struct lc_run *r)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < r->n; i++)
        if (!r->conns[i].nc.dead)
            n += r->conns[i].open + (r->conns[i].nc.out_len - r->conns[i].nc.out_head);
    return n;
}

static uint64_t lost_total(const struct lc_run *r)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < r->n; i++)
        n += r->conns[i].open;
    return n;
}

static double pct(uint64_t ns)
{
    return (double)ns / 1e3;
}

static void report(const struct lc_run *r, bool ok, const char *verdict, double s, double cpu,
                   double bcpu, uint64_t lost)
{
    const struct bench_cfg *cfg = r->cfg;
    const struct hist *h = &r->hist;
    FILE *f = cfg->json ? stderr : stdout;
    char pace[64];
    if (cfg->rate)
        snprintf(pace, sizeof(pace), "%" PRIu64 " requests/s", cfg->rate);
    else
        snprintf(pace, sizeof(pace), "max rate, window %u requests", cfg->window);
    double rts = s > 0 ? (double)r->done_measured / s : 0;
    fprintf(f,
            "nexus-bench lifecycle: nexus %s:%u, %u requester(s), %s, %u B payload, "
            "test:echo round trips\n",
            cfg->host, cfg->port, r->n, pace, r->pl.len);
    fprintf(f, "  measured     %.2f s (after %.2f s warm-up)\n", s, cfg->warmup_s);
    fprintf(f, "  round trips  %12.0f /s (request -> started -> success)\n", rts);
    fprintf(f,
            "  latency      p50 %.1f us  p90 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us  "
            "mean %.1f us  (%" PRIu64 " samples, to success)\n",
            pct(hist_quantile(h, 0.5)), pct(hist_quantile(h, 0.9)), pct(hist_quantile(h, 0.99)),
            pct(hist_quantile(h, 0.999)), pct(h->max_ns), hist_mean(h) / 1e3, h->count);
    if (cfg->rate)
        fprintf(f, "  schedule     worst send lag behind schedule %.1f us\n",
                (double)r->sched_lag_max / 1e3);
    fprintf(f, "  cpu          client %.0f%% of a core", s > 0 ? 100 * cpu / s : 0);
    if (bcpu >= 0)
        fprintf(f, ", broker %.0f%% of a core", s > 0 ? 100 * bcpu / s : 0);
    fprintf(f, "\n");
    fprintf(f,
            "  delivery     %s: sent %" PRIu64 ", started %" PRIu64 ", success %" PRIu64
            ", unanswered %" PRIu64 ", failed %" PRIu64 ", duplicates %" PRIu64 ", errors %" PRIu64
            ": %s\n",
            ok ? "OK" : "FAILED", r->k[LC_SENT], r->k[LC_STARTED], r->k[LC_SUCCESS], lost,
            r->k[LC_FAILED], r->k[LC_DUP_STARTED] + r->k[LC_UNKNOWN], r->k[LC_ERRORS], verdict);
    if (!cfg->json)
        return;
    printf("{\"broker\":\"nexus\",\"preset\":\"lifecycle\",\"ok\":%s,\"requesters\":%u,"
           "\"rate\":%" PRIu64 ",\"window\":%u,\"payload_bytes\":%u,\"measured_s\":%.3f,"
           "\"round_trips_per_s\":%.1f,\"round_trips\":%" PRIu64 ",",
           ok ? "true" : "false", r->n, cfg->rate, cfg->window, r->pl.len, s, rts,
           r->done_measured);
    printf("\"lat_samples\":%" PRIu64 ",\"lat_p50_us\":%.2f,\"lat_p90_us\":%.2f,"
           "\"lat_p99_us\":%.2f,\"lat_p999_us\":%.2f,\"lat_max_us\":%.2f,\"lat_mean_us\":%.2f,"
           "\"sched_lag_max_us\":%.2f,",
           h->count, pct(hist_quantile(h, 0.5)), pct(hist_quantile(h, 0.9)),
           pct(hist_quantile(h, 0.99)), pct(hist_quantile(h, 0.999)), pct(h->max_ns),
           hist_mean(h) / 1e3, (double)r->sched_lag_max / 1e3);
    printf("\"sent\":%" PRIu64 ",\"started\":%" PRIu64 ",\"success\":%" PRIu64
           ",\"unanswered\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"dup_started\":%" PRIu64
           ",\"success_without_started\":%" PRIu64 ",\"unknown\":%" PRIu64 ",\"other\":%" PRIu64
           ",\"corrupt\":%" PRIu64 ",\"broker_errors\":%" PRIu64 ",\"disconnects\":%" PRIu64 ",",
           r->k[LC_SENT], r->k[LC_STARTED], r->k[LC_SUCCESS], lost, r->k[LC_FAILED],
           r->k[LC_DUP_STARTED], r->k[LC_NO_START], r->k[LC_UNKNOWN], r->k[LC_OTHER],
           r->k[LC_CORRUPT], r->k[LC_ERRORS], r->k[LC_DISCONNECTS]);
    printf("\"client_cpu_pct\":%.1f,\"broker_cpu_pct\":%.1f}\n", s > 0 ? 100 * cpu / s : 0,
           bcpu >= 0 && s > 0 ? 100 * bcpu / s : -1);
}

int bench_lifecycle_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted)
{
    if (cfg->broker != BENCH_NEXUS) {
        fprintf(stderr,
                "nexus-bench: the lifecycle preset needs the Nexus broker (request -> started "
                "-> success is a Provider feature); --broker %s has no request lifecycle\n",
                bench_broker_name(cfg->broker));
        return 2;
    }
    static struct lc_run run;
    struct lc_run *r = &run;
    r->cfg = cfg;
    r->n = cfg->publishers;
    hist_reset(&r->hist);
    if (bench_payload_build(&r->pl, cfg->payload_bytes, false) < 0) {
        fprintf(stderr, "nexus-bench: cannot build a %u-byte payload\n", cfg->payload_bytes);
        return 2;
    }
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        perror("nexus-bench: epoll_create1");
        return 3;
    }
    uint32_t ring = 2;
    while (ring < 2 * cfg->window)
        ring <<= 1;
    size_t frame_max = (size_t)r->pl.len + BENCH_FRAME_OVERHEAD_MAX;
    r->conns = bench_calloc(r->n, sizeof(*r->conns));
    for (uint32_t i = 0; i < r->n && !*interrupted; i++) {
        struct lc_conn *c = &r->conns[i];
        c->slots = bench_calloc(ring, sizeof(*c->slots));
        c->mask = ring - 1;
        c->next_seq = 1;
        uint32_t out_cap =
            (uint32_t)(frame_max * (cfg->window < 1024 ? cfg->window : 1024) + 65536);
        if (nconn_open(&c->nc, cfg, r->epfd, i, LC_IN_BYTES, out_cap) < 0)
            return 3;
    }
    if (*interrupted)
        return 1;
    if (!cfg->quiet)
        fprintf(stderr, "nexus-bench: nexus at %s:%u, lifecycle: %u requester(s), %s%" PRIu64 "\n",
                cfg->host, cfg->port, r->n, cfg->rate ? "rate " : "window ",
                cfg->rate ? cfg->rate : (uint64_t)cfg->window);
    /* As in engine.c: the default 50 us timer slack would delay fixed-rate sends. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    r->t0 = bench_now_ns();
    r->m_start = r->t0 + (int64_t)(cfg->warmup_s * 1e9);
    r->m_end = r->m_start + (int64_t)(cfg->duration_s * 1e9);
    r->sending = true;
    double cpu0 = 0, bcpu0 = -1, cpu1 = 0, bcpu1 = -1;
    bool started = false;
    if (r->m_start == r->t0) {
        cpu0 = bench_self_cpu_s();
        bcpu0 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
        started = true;
    }
    int64_t tick = r->t0 + 1000000000, drain_end = 0, last_progress = 0;
    uint64_t prev_success = 0, last_success = 0;
    struct epoll_event evs[LC_EVENTS_MAX];
    while (!*interrupted) {
        int64_t now = bench_now_ns();
        if (!started && now >= r->m_start) {
            cpu0 = bench_self_cpu_s();
            bcpu0 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
            started = true;
        }
        if (r->sending && now >= r->m_end) {
            r->sending = false;
            cpu1 = bench_self_cpu_s();
            bcpu1 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
            drain_end = now + (int64_t)(cfg->drain_s * 1e9);
            last_progress = now;
            last_success = r->k[LC_SUCCESS];
        }
        if (!r->sending) {
            if (open_total(r) == 0)
                break;
            if (r->k[LC_SUCCESS] != last_success) {
                last_success = r->k[LC_SUCCESS];
                last_progress = now;
            }
            if (now >= drain_end || now - last_progress >= LC_DRAIN_IDLE)
                break;
        }
        int64_t next_due = INT64_MAX;
        for (uint32_t i = 0; i < r->n; i++) {
            int64_t d = fill(r, &r->conns[i], now);
            next_due = d < next_due ? d : next_due;
        }
        if (now >= tick) {
            if (!cfg->quiet)
                fprintf(stderr,
                        "[%6.1fs %-7s] round trips %9.0f/s  open %6" PRIu64 "  failed %" PRIu64
                        "  errors %" PRIu64 "  max lat %.1f ms\n",
                        (double)(now - r->t0) / 1e9,
                        now < r->m_start ? "warm-up"
                        : r->sending     ? "measure"
                                         : "drain",
                        (double)(r->k[LC_SUCCESS] - prev_success), open_total(r), r->k[LC_FAILED],
                        r->k[LC_ERRORS] + r->k[LC_UNKNOWN] + r->k[LC_DUP_STARTED] +
                            r->k[LC_DISCONNECTS] + r->k[LC_CORRUPT] + r->k[LC_OTHER],
                        (double)r->lat_max_tick / 1e6);
            prev_success = r->k[LC_SUCCESS];
            r->lat_max_tick = 0;
            tick += 1000000000;
        }
        int64_t wait = LC_WAIT_MAX_NS;
        if (next_due != INT64_MAX)
            wait = next_due > now ? next_due - now : 0;
        if (wait > LC_WAIT_MAX_NS)
            wait = LC_WAIT_MAX_NS;
        if (cfg->rate && wait < LC_SPIN_BELOW_NS)
            wait = 0; /* as in engine.c: a short sleep ends late and would count as latency */
        struct timespec ts = {.tv_sec = 0, .tv_nsec = wait};
        int n = epoll_pwait2(r->epfd, evs, LC_EVENTS_MAX, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            lc_error(r, "epoll_pwait2: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct lc_conn *c = evs[i].data.ptr;
            if (!c->nc.dead && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                lc_read(r, c);
            if (!c->nc.dead && (evs[i].events & EPOLLOUT) && c->nc.read_wants_out)
                lc_read(r, c); /* TLS: the read that waited for a writable socket */
            if (!c->nc.dead && (evs[i].events & EPOLLOUT))
                lc_flush(r, c);
        }
    }
    if (r->sending) { /* interrupted before the end */
        cpu1 = bench_self_cpu_s();
        bcpu1 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
    }
    double s = (double)((r->sending ? bench_now_ns() : r->m_end) - r->m_start) / 1e9;
    if (s < 0)
        s = 0;
    if (s > cfg->duration_s)
        s = cfg->duration_s;
    uint64_t lost = lost_total(r);
    const uint64_t *k = r->k;
    bool ok = !*interrupted && lost == 0 && k[LC_SENT] > 0 && k[LC_STARTED] == k[LC_SENT] &&
              k[LC_SUCCESS] == k[LC_SENT] && k[LC_FAILED] == 0 && k[LC_DUP_STARTED] == 0 &&
              k[LC_NO_START] == 0 && k[LC_UNKNOWN] == 0 && k[LC_OTHER] == 0 && k[LC_CORRUPT] == 0 &&
              k[LC_ERRORS] == 0 && k[LC_DISCONNECTS] == 0 && r->done_measured > 0;
    char verdict[512];
    if (ok)
        snprintf(verdict, sizeof(verdict), "every request got exactly one started and one success");
    else
        snprintf(verdict, sizeof(verdict), "%s%s%s%s",
                 r->done_measured == 0 ? "no round trip completed in the measured window; " : "",
                 *interrupted ? "interrupted; " : "", r->first_error[0] ? "first problem: " : "",
                 r->first_error);
    report(r, ok, verdict, s, cpu1 - cpu0, bcpu0 >= 0 && bcpu1 >= 0 ? bcpu1 - bcpu0 : -1, lost);
    if (!ok)
        fprintf(stderr, "nexus-bench: FAIL: %s\n", verdict);
    for (uint32_t i = 0; i < r->n; i++) {
        nconn_free(&r->conns[i].nc);
        free(r->conns[i].slots);
    }
    free(r->conns);
    close(r->epfd);
    bench_payload_free(&r->pl);
    return ok ? 0 : 1;
}
