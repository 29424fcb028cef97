// SPDX-License-Identifier: Apache-2.0
//
// The `streams` workload of nexus-bench (Nexus only): many long-lived streams with heartbeats.
// Each of --requesters connections opens --window streams of the built-in `test:stream_ticks`
// handler (nexusd --test-handlers) on its own campaign, with event ids "s<conn>-<k>" and
// payload data {interval_ms: 1000, heartbeat_ms: 1000}: every open stream gets one `stream`
// event and one `heartbeat` per second from the broker's timers. The streams stay open through
// the warm-up and the measured window, then every one is cancelled.
//
// Checked: each stream gets exactly one `started`; its `stream` events come with stream_seq
// 1, 2, 3, ... without gap or repeat, as many as the time it was open allows (one per interval,
// give or take two); it gets heartbeats all along; and after the cancel exactly one terminal
// event, `cancelled`. Measured: how long opening took, stream events and heartbeats per second,
// how late each stream event came against its schedule (the stream's first event + (stream_seq
// - 1) intervals, as seen by the client: the drift and jitter of the broker's timers;
// log-bucketed histogram), broker CPU and the broker's resident memory per
// open stream (with --broker-pid). One thread drives every connection with epoll.
#include "bench/bench.h"
#include "bench/nconn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "codec/envelope.h"
#include "codec/frame.h"
#include "codec/structpb.h"

#define ST_ACTION       "test:stream_ticks:v1:"
#define ST_INTERVAL_MS  1000
#define ST_HEARTBEAT_MS 1000
#define ST_IN_BYTES     (1u << 20)
#define ST_SETUP_NS     10000000000ll
#define ST_EVENTS_MAX   64
#define ST_ID_BYTES     32
/* Ticks a stream may be short of or beyond what its open time allows: the first comes one
 * interval after `started`, the last may cross the cancel, timers fire within a loop pass. */
#define ST_TICK_SLACK 2

enum st_state { ST_SENT, ST_OPEN, ST_CANCEL_SENT, ST_ENDED };

struct st_stream {
    uint8_t state;
    int64_t started_ns;    /* client time of `started` */
    int64_t cancel_ns;     /* client time the cancel was sent */
    int64_t first_tick_ns; /* client time of stream event 1: tick n is due n-1 intervals later */
    uint64_t ticks, last_seq, heartbeats;
};

struct st_conn {
    struct nconn nc;      /* first: epoll hands back &nc */
    struct st_stream *st; /* [window] */
};

enum st_counter {
    SC_STARTED,
    SC_TICKS,
    SC_HEARTBEATS,
    SC_CANCELLED,
    SC_BAD, /* duplicate started, tick gap or repeat, wrong terminal, stray event */
    SC_ERRORS,
    SC_DISCONNECTS,
    SC_COUNT
};

struct st_run {
    const struct bench_cfg *cfg;
    struct st_conn *conns;
    uint32_t n, per;
    int epfd;
    int64_t now;
    bool measuring;
    uint64_t k[SC_COUNT];
    uint64_t ticks_measured, hb_measured;
    struct hist late;
    char first_error[256];
};

#define st_error(r, ...) bench_first_error((r)->first_error, sizeof((r)->first_error), __VA_ARGS__)

/* Sends what is buffered; a failed connection is counted and reported. */
static void st_flush(struct st_run *r, struct st_conn *c)
{
    char err[256];
    if (nconn_flush(&c->nc, err, sizeof(err)) < 0) {
        r->k[SC_DISCONNECTS]++;
        st_error(r, "requester %s", err);
    }
}

/* Appends one emit of type ST_ACTION + state for stream k of c. Returns false if it did not
 * fit (the output is sized for every stream's request and cancel, so it always does). */
static bool put_emit(struct st_run *r, struct st_conn *c, uint32_t k, const char *state,
                     const uint8_t *payload, uint32_t payload_len)
{
    char id[ST_ID_BYTES], type[64];
    int idn = snprintf(id, sizeof(id), "s%u-%u", c->nc.index, k + 1);
    int tn = snprintf(type, sizeof(type), "%s%s", ST_ACTION, state);
    uint8_t md[128];
    struct codec_emit_in e;
    memset(&e, 0, sizeof(e));
    e.event_type.ptr = (const uint8_t *)type;
    e.event_type.len = (uint32_t)tn;
    e.campaign_id = (int64_t)(r->cfg->campaign_base + c->nc.index);
    if (payload) { /* the request: its id is the stream's */
        e.event_id.ptr = (const uint8_t *)id;
        e.event_id.len = (uint32_t)idn;
        e.payload.ptr = payload;
        e.payload.len = payload_len;
        e.has_payload = true;
    } else { /* the cancel names the stream by correlation id */
        int ml = codec_metadata_build(md, sizeof(md), NULL, id);
        if (ml < 0)
            return false;
        e.metadata.ptr = md;
        e.metadata.len = (uint32_t)ml;
        e.has_metadata = true;
    }
    if (!nconn_room(&c->nc, codec_emit_size(&e)))
        return false;
    c->nc.out_len += (uint32_t)codec_emit_encode(&e, c->nc.out + c->nc.out_len);
    return true;
}

/* "s<conn>-<k>" of connection c: its stream, or NULL. */
static struct st_stream *find_stream(struct st_run *r, struct st_conn *c, struct codec_slice id)
{
    char buf[ST_ID_BYTES];
    if (id.len == 0 || id.len >= sizeof(buf))
        return NULL;
    memcpy(buf, id.ptr, id.len);
    buf[id.len] = 0;
    unsigned conn, k;
    int used = 0;
    if (sscanf(buf, "s%u-%u%n", &conn, &k, &used) != 2 || (uint32_t)used != id.len ||
        conn != c->nc.index || k == 0 || k > r->per)
        return NULL;
    return &c->st[k - 1];
}

static bool type_is(struct codec_slice t, const char *suffix)
{
    size_t n = strlen(suffix);
    return t.len >= n && memcmp(t.ptr + t.len - n, suffix, n) == 0;
}

static void on_event(struct st_run *r, struct st_conn *c, const struct codec_event_in *ev)
{
    struct st_stream *s = find_stream(r, c, ev->correlation_id);
    if (!s || s->state == ST_ENDED) {
        r->k[SC_BAD]++;
        st_error(r, "requester %u: %.*s for no open stream (correlation_id \"%.*s\")", c->nc.index,
                 (int)ev->event_type.len, (const char *)ev->event_type.ptr,
                 (int)ev->correlation_id.len, (const char *)ev->correlation_id.ptr);
        return;
    }
    if (type_is(ev->event_type, ":started")) {
        r->k[SC_STARTED]++;
        if (s->state != ST_SENT) {
            r->k[SC_BAD]++;
            st_error(r, "requester %u: second started for %.*s", c->nc.index,
                     (int)ev->correlation_id.len, (const char *)ev->correlation_id.ptr);
            return;
        }
        s->state = ST_OPEN;
        s->started_ns = r->now;
    } else if (type_is(ev->event_type, ":stream")) {
        r->k[SC_TICKS]++;
        if (s->state == ST_SENT || ev->stream_seq != s->last_seq + 1) {
            r->k[SC_BAD]++;
            st_error(r, "requester %u: stream event %" PRIu64 " after %" PRIu64 " for %.*s",
                     c->nc.index, ev->stream_seq, s->last_seq, (int)ev->correlation_id.len,
                     (const char *)ev->correlation_id.ptr);
        }
        s->last_seq = ev->stream_seq;
        s->ticks++;
        if (ev->stream_seq == 1)
            s->first_tick_ns = r->now;
        if (r->measuring) {
            r->ticks_measured++;
            int64_t due =
                s->first_tick_ns + (int64_t)(ev->stream_seq - 1) * ST_INTERVAL_MS * 1000000;
            hist_record(&r->late, r->now > due ? (uint64_t)(r->now - due) : 0);
        }
    } else if (type_is(ev->event_type, ":heartbeat")) {
        r->k[SC_HEARTBEATS]++;
        s->heartbeats++;
        if (r->measuring)
            r->hb_measured++;
    } else if (type_is(ev->event_type, ":cancelled") && s->state == ST_CANCEL_SENT) {
        r->k[SC_CANCELLED]++;
        s->state = ST_ENDED;
    } else {
        r->k[SC_BAD]++;
        st_error(r, "requester %u: unexpected %.*s (%.*s) for %.*s", c->nc.index,
                 (int)ev->event_type.len, (const char *)ev->event_type.ptr, (int)ev->code.len,
                 (const char *)ev->code.ptr, (int)ev->correlation_id.len,
                 (const char *)ev->correlation_id.ptr);
        s->state = ST_ENDED;
    }
}

static void on_frame(struct st_run *r, struct st_conn *c, const uint8_t *body, uint32_t len)
{
    struct codec_envelope env;
    char cerr[CODEC_ERR_BYTES];
    if (codec_envelope_decode(body, len, &env, cerr) < 0) {
        r->k[SC_BAD]++;
        st_error(r, "requester %u: %s", c->nc.index, cerr);
        nconn_kill(&c->nc);
        return;
    }
    if (env.kind == CODEC_KIND_EVENT) {
        struct codec_event_in ev;
        if (codec_event_decode(env.body.ptr, env.body.len, &ev, cerr) < 0) {
            r->k[SC_BAD]++;
            st_error(r, "requester %u: undecodable event: %s", c->nc.index, cerr);
            return;
        }
        on_event(r, c, &ev);
    } else if (env.kind == CODEC_KIND_ERROR) {
        struct codec_error_in e;
        r->k[SC_ERRORS]++;
        if (codec_error_decode(env.body.ptr, env.body.len, &e, cerr) == 0)
            st_error(r, "requester %u: broker error %.*s: %.*s", c->nc.index, (int)e.code.len,
                     (const char *)e.code.ptr, (int)e.message.len, (const char *)e.message.ptr);
    } else if (env.kind == CODEC_KIND_PING) {
        nconn_pong(&c->nc, env.correlation, env.body.ptr, env.body.len);
    }
}

static void st_frame(void *ctx, struct nconn *nc, const uint8_t *body, uint32_t len)
{
    on_frame(ctx, (struct st_conn *)nc, body, len);
}

static void st_read(struct st_run *r, struct st_conn *c)
{
    char err[256];
    if (nconn_read(&c->nc, st_frame, r, &r->now, err, sizeof(err)) < 0) {
        r->k[SC_DISCONNECTS]++;
        st_error(r, "requester %s", err);
    }
}

/* Streams of every connection in state st. */
static uint64_t count_state(const struct st_run *r, enum st_state st)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < r->n; i++)
        for (uint32_t k = 0; k < r->per; k++)
            n += r->conns[i].st[k].state == st;
    return n;
}

/* Runs the event loop for at most max_ns, or until done(r) holds. */
static void pump(struct st_run *r, int64_t max_ns, bool (*done)(const struct st_run *),
                 volatile sig_atomic_t *interrupted)
{
    int64_t end = bench_now_ns() + max_ns;
    struct epoll_event evs[ST_EVENTS_MAX];
    while (!*interrupted && !(done && done(r))) {
        int64_t now = bench_now_ns();
        if (now >= end)
            return;
        int64_t wait = end - now < 10000000 ? end - now : 10000000;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = wait};
        int n = epoll_pwait2(r->epfd, evs, ST_EVENTS_MAX, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            st_error(r, "epoll_pwait2: %s", strerror(errno));
            return;
        }
        for (int i = 0; i < n; i++) {
            struct st_conn *c = evs[i].data.ptr;
            if (!c->nc.dead && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                st_read(r, c);
            if (!c->nc.dead && (evs[i].events & EPOLLOUT) && c->nc.read_wants_out)
                st_read(r, c); /* TLS: the read that waited for a writable socket */
            if (!c->nc.dead && (evs[i].events & EPOLLOUT))
                st_flush(r, c);
        }
    }
}

static bool all_started(const struct st_run *r)
{
    return count_state(r, ST_SENT) == 0;
}

static bool all_ended(const struct st_run *r)
{
    return count_state(r, ST_ENDED) == (uint64_t)r->n * r->per;
}

/* VmRSS of pid in bytes, or 0. */
static uint64_t rss_bytes(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

int bench_streams_main(const struct bench_cfg *cfg, volatile sig_atomic_t *interrupted)
{
    if (cfg->broker != BENCH_NEXUS) {
        fprintf(stderr,
                "nexus-bench: the streams preset needs the Nexus broker (streams with heartbeats "
                "are a Provider feature); --broker %s has none\n",
                bench_broker_name(cfg->broker));
        return 2;
    }
    static struct st_run run;
    struct st_run *r = &run;
    r->cfg = cfg;
    r->n = cfg->publishers;
    r->per = cfg->window;
    hist_reset(&r->late);
    uint8_t plbuf[128];
    const uint8_t *pl;
    struct structpb_writer w;
    structpb_begin(&w, plbuf, sizeof(plbuf));
    structpb_add_number(&w, "interval_ms", ST_INTERVAL_MS);
    structpb_add_number(&w, "heartbeat_ms", ST_HEARTBEAT_MS);
    int pll = structpb_finish(&w, &pl);
    if (pll < 0)
        return 2;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        perror("nexus-bench: epoll_create1");
        return 3;
    }
    uint64_t rss0 = cfg->broker_pid ? rss_bytes(cfg->broker_pid) : 0;
    r->conns = bench_calloc(r->n, sizeof(*r->conns));
    for (uint32_t i = 0; i < r->n && !*interrupted; i++) {
        struct st_conn *c = &r->conns[i];
        c->st = bench_calloc(r->per, sizeof(*c->st));
        /* Output: every request, then every cancel, fits. */
        if (nconn_open(&c->nc, cfg, r->epfd, i, ST_IN_BYTES, r->per * 256u + 65536u) < 0)
            return 3;
    }
    if (*interrupted)
        return 1;
    uint64_t total = (uint64_t)r->n * r->per;
    if (!cfg->quiet)
        fprintf(stderr,
                "nexus-bench: nexus at %s:%u, streams: %u requester(s) x %u = %" PRIu64
                " streams, a stream event and a heartbeat every %d ms each\n",
                cfg->host, cfg->port, r->n, r->per, total, ST_INTERVAL_MS);

    /* Open every stream. */
    int64_t t_open = bench_now_ns();
    for (uint32_t i = 0; i < r->n; i++) {
        struct st_conn *c = &r->conns[i];
        for (uint32_t k = 0; k < r->per; k++)
            if (!put_emit(r, c, k, "requested", pl, (uint32_t)pll))
                st_error(r, "requester %u: output buffer full", i);
        st_flush(r, c);
    }
    pump(r, ST_SETUP_NS, all_started, interrupted);
    double open_s = (double)(bench_now_ns() - t_open) / 1e9;
    uint64_t opened = total - count_state(r, ST_SENT);
    if (opened != total)
        st_error(r, "%" PRIu64 " of %" PRIu64 " streams started within %.0f s", opened, total,
                 ST_SETUP_NS / 1e9);
    uint64_t rss1 = cfg->broker_pid ? rss_bytes(cfg->broker_pid) : 0;

    /* Hold them: warm-up, then the measured window. */
    pump(r, (int64_t)(cfg->warmup_s * 1e9), NULL, interrupted);
    double cpu0 = bench_self_cpu_s();
    double bcpu0 = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) : -1;
    int64_t m0 = bench_now_ns();
    r->measuring = true;
    for (double t = 0; t < cfg->duration_s && !*interrupted; t += 1) {
        uint64_t ticks = r->k[SC_TICKS], hb = r->k[SC_HEARTBEATS];
        double step = cfg->duration_s - t < 1 ? cfg->duration_s - t : 1;
        pump(r, (int64_t)(step * 1e9), NULL, interrupted);
        if (!cfg->quiet)
            fprintf(stderr,
                    "[%6.1fs measure] stream events %7" PRIu64 "  heartbeats %7" PRIu64
                    "  problems %" PRIu64 "\n",
                    (double)(bench_now_ns() - m0) / 1e9, r->k[SC_TICKS] - ticks,
                    r->k[SC_HEARTBEATS] - hb,
                    r->k[SC_BAD] + r->k[SC_ERRORS] + r->k[SC_DISCONNECTS]);
    }
    r->measuring = false;
    double s = (double)(bench_now_ns() - m0) / 1e9;
    double cpu = bench_self_cpu_s() - cpu0;
    double bcpu = cfg->broker_pid ? bench_proc_cpu_s(cfg->broker_pid) - bcpu0 : -1;

    /* Cancel every stream: each must end with exactly one `cancelled`. */
    for (uint32_t i = 0; i < r->n; i++) {
        struct st_conn *c = &r->conns[i];
        int64_t now = bench_now_ns();
        for (uint32_t k = 0; k < r->per; k++) {
            if (c->st[k].state != ST_OPEN)
                continue;
            if (!put_emit(r, c, k, "cancel", NULL, 0)) {
                st_error(r, "requester %u: output buffer full", i);
                break;
            }
            c->st[k].state = ST_CANCEL_SENT;
            c->st[k].cancel_ns = now;
        }
        st_flush(r, c);
    }
    pump(r, (int64_t)(cfg->drain_s * 1e9), all_ended, interrupted);

    /* Per stream: ticks as many as its open time allows, heartbeats, one cancelled. */
    uint64_t short_ticks = 0, no_hb = 0, unended = 0;
    for (uint32_t i = 0; i < r->n; i++)
        for (uint32_t k = 0; k < r->per; k++) {
            const struct st_stream *st = &r->conns[i].st[k];
            if (st->state != ST_ENDED) {
                unended++;
                continue;
            }
            int64_t open_ms = (st->cancel_ns - st->started_ns) / 1000000;
            int64_t want = open_ms / ST_INTERVAL_MS;
            if ((int64_t)st->ticks < want - ST_TICK_SLACK ||
                (int64_t)st->ticks > want + ST_TICK_SLACK) {
                short_ticks++;
                st_error(r, "stream s%u-%u: %" PRIu64 " stream events in %" PRId64 " ms open", i,
                         k + 1, st->ticks, open_ms);
            }
            if (open_ms >= 3 * ST_HEARTBEAT_MS && st->heartbeats == 0) {
                no_hb++;
                st_error(r, "stream s%u-%u: no heartbeat in %" PRId64 " ms", i, k + 1, open_ms);
            }
        }
    if (unended)
        st_error(r, "%" PRIu64 " streams did not end with cancelled", unended);
    const uint64_t *kk = r->k;
    bool ok = !*interrupted && opened == total && unended == 0 && short_ticks == 0 && no_hb == 0 &&
              kk[SC_BAD] == 0 && kk[SC_ERRORS] == 0 && kk[SC_DISCONNECTS] == 0 &&
              kk[SC_CANCELLED] == total && r->ticks_measured > 0;
    double tps = s > 0 ? (double)r->ticks_measured / s : 0;
    double hps = s > 0 ? (double)r->hb_measured / s : 0;
    double rss_per = rss1 > rss0 && total ? (double)(rss1 - rss0) / (double)total : 0;
    const struct hist *h = &r->late;
    FILE *f = cfg->json ? stderr : stdout;
    fprintf(f,
            "nexus-bench streams: nexus %s:%u, %u requester(s) x %u streams, a stream event "
            "and a heartbeat every %d ms each\n",
            cfg->host, cfg->port, r->n, r->per, ST_INTERVAL_MS);
    fprintf(f, "  opened       %" PRIu64 " streams in %.3f s\n", opened, open_s);
    fprintf(f, "  measured     %.2f s (after %.2f s warm-up)\n", s, cfg->warmup_s);
    fprintf(f, "  delivered    %.0f stream events/s, %.0f heartbeats/s\n", tps, hps);
    fprintf(f,
            "  lateness     p50 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us  (%" PRIu64
            " stream events against first + (n-1) x interval)\n",
            hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.99) / 1e3,
            hist_quantile(h, 0.999) / 1e3, h->max_ns / 1e3, h->count);
    fprintf(f, "  cpu          client %.1f%% of a core", s > 0 ? 100 * cpu / s : 0);
    if (bcpu >= 0)
        fprintf(f, ", broker %.1f%% of a core", s > 0 ? 100 * bcpu / s : 0);
    fprintf(f, "\n");
    if (cfg->broker_pid)
        fprintf(f,
                "  memory       broker RSS %.1f MiB -> %.1f MiB with the streams open (%.0f B per "
                "stream)\n",
                rss0 / 1048576.0, rss1 / 1048576.0, rss_per);
    fprintf(f,
            "  delivery     %s: started %" PRIu64 ", cancelled %" PRIu64 " of %" PRIu64
            ", wrong tick counts %" PRIu64 ", without heartbeats %" PRIu64 ", problems %" PRIu64
            ", errors %" PRIu64 "%s%s\n",
            ok ? "OK" : "FAILED", kk[SC_STARTED], kk[SC_CANCELLED], total, short_ticks, no_hb,
            kk[SC_BAD], kk[SC_ERRORS], r->first_error[0] ? ": first problem: " : "",
            r->first_error);
    if (cfg->json)
        printf("{\"broker\":\"nexus\",\"preset\":\"streams\",\"ok\":%s,\"requesters\":%u,"
               "\"streams\":%" PRIu64 ",\"interval_ms\":%d,\"open_s\":%.3f,\"measured_s\":%.3f,"
               "\"stream_events_per_s\":%.1f,\"heartbeats_per_s\":%.1f,\"late_p50_us\":%.2f,"
               "\"late_p99_us\":%.2f,\"late_p999_us\":%.2f,\"late_max_us\":%.2f,"
               "\"client_cpu_pct\":%.1f,\"broker_cpu_pct\":%.1f,\"broker_rss_bytes_per_stream\":"
               "%.0f,\"cancelled\":%" PRIu64 ",\"problems\":%" PRIu64 ",\"broker_errors\":%" PRIu64
               "}\n",
               ok ? "true" : "false", r->n, total, ST_INTERVAL_MS, open_s, s, tps, hps,
               hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.99) / 1e3,
               hist_quantile(h, 0.999) / 1e3, h->max_ns / 1e3, s > 0 ? 100 * cpu / s : 0,
               bcpu >= 0 && s > 0 ? 100 * bcpu / s : -1, rss_per, kk[SC_CANCELLED], kk[SC_BAD],
               kk[SC_ERRORS]);
    if (!ok)
        fprintf(stderr, "nexus-bench: FAIL: %s\n",
                r->first_error[0] ? r->first_error : "interrupted or nothing measured");
    for (uint32_t i = 0; i < r->n; i++) {
        nconn_free(&r->conns[i].nc);
        free(r->conns[i].st);
    }
    free(r->conns);
    close(r->epfd);
    return ok ? 0 : 1;
}
