// SPDX-License-Identifier: Apache-2.0
//
// nexus-bench: the load generator of docs/DESIGN.md §7 and issue 6. The main thread parses the
// flags, builds the payload and the per-campaign publish frames, opens and sets up every connection
// (blocking, with deadlines: subscribers first, each confirmed by the broker before any event
// is published), hands the connections to the epoll workers (engine.c), prints a progress
// line each second, takes the measured window's counters and CPU readings, stops publishing,
// waits (bounded) for in-flight events, and checks delivery: every subscriber must have
// received every event of its campaign exactly once and in each publisher's order. Any loss,
// disorder, duplicate, corruption, gap notice, broker error or disconnect fails the run
// (exit 1) and the report says so instead of presenting a throughput.
#include "bench/bench.h"
#include "bench/durable.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* Bytes a publisher batches per send: large enough that a send carries thousands of small
 * events (the per-syscall cost vanishes), small enough to stay in L2. */
#define PUB_OUT_BYTES (256u << 10)
/* Control replies (PONG) a subscriber may have queued. */
#define SUB_OUT_BYTES 4096u
/* Receive buffer per worker thread. */
#define THREAD_RBUF_BYTES (1u << 20)
/* Set-up deadline per connection (connect, greet, subscribe). */
#define SETUP_TIMEOUT_NS 10000000000ll
/* Templates for all campaigns together: 100,000 campaigns of 4 KiB payloads would need
 * 400 MiB, which says the workload is mis-specified rather than that memory should grow. */
#define TEMPLATE_BYTES_MAX (256u << 20)
/* The drain ends early when nothing arrived for this long (the rest is lost, not late). */
#define DRAIN_IDLE_NS 1500000000ll

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

void *bench_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "nexus-bench: out of memory (%zu x %zu bytes)\n", n, size);
        exit(3);
    }
    return p;
}

void bench_first_error(char *buf, size_t cap, const char *fmt, ...)
{
    if (buf[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

static void sleep_until(int64_t t_ns)
{
    int64_t now = bench_now_ns();
    if (t_ns <= now)
        return;
    struct timespec ts = {.tv_sec = t_ns / 1000000000, .tv_nsec = t_ns % 1000000000};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* Subscribers grouped by campaign (subscriber i takes campaign i mod campaigns). */
static void build_tables(struct bench_run *r)
{
    const struct bench_cfg *c = &r->cfg;
    r->gen = bench_calloc((size_t)c->publishers * c->campaigns, sizeof(*r->gen));
    r->progress = bench_calloc((size_t)c->subscribers * c->publishers, sizeof(*r->progress));
    r->sub_campaign = bench_calloc(c->subscribers, sizeof(uint32_t));
    r->camp_first = bench_calloc((size_t)c->campaigns + 1, sizeof(uint32_t));
    r->camp_subs = bench_calloc(c->subscribers, sizeof(uint32_t));
    for (uint32_t s = 0; s < c->subscribers; s++) {
        r->sub_campaign[s] = s % c->campaigns;
        r->camp_first[r->sub_campaign[s] + 1]++;
    }
    for (uint32_t i = 0; i < c->campaigns; i++)
        r->camp_first[i + 1] += r->camp_first[i];
    uint32_t *fill = bench_calloc(c->campaigns, sizeof(uint32_t));
    for (uint32_t s = 0; s < c->subscribers; s++) {
        uint32_t cc = r->sub_campaign[s];
        r->camp_subs[r->camp_first[cc] + fill[cc]++] = s;
    }
    free(fill);
}

/* One publish frame per campaign, the campaign index already patched into its payload. */
static int build_templates(struct bench_run *r)
{
    const struct bench_cfg *c = &r->cfg;
    size_t per = (size_t)r->pl.len + BENCH_FRAME_OVERHEAD_MAX;
    if (per * c->campaigns > TEMPLATE_BYTES_MAX) {
        fprintf(stderr,
                "nexus-bench: %u campaigns of %u-byte payloads need more than %u MiB "
                "of frame templates; use fewer campaigns or smaller payloads\n",
                c->campaigns, r->pl.len, TEMPLATE_BYTES_MAX >> 20);
        return -E2BIG;
    }
    r->tmpl = bench_calloc(c->campaigns, per);
    r->tmpl_off = bench_calloc(c->campaigns, sizeof(uint32_t));
    r->tmpl_len = bench_calloc(c->campaigns, sizeof(uint32_t));
    r->tmpl_pl_off = bench_calloc(c->campaigns, sizeof(uint32_t));
    /* Client-chosen event ids exist in the Nexus protocol only (core NATS and Redis pub/sub
     * have none: --ids client changes nothing there). */
    if (c->client_ids && c->broker == BENCH_NEXUS)
        r->tmpl_id_off = bench_calloc(c->campaigns, sizeof(uint32_t));
    size_t off = 0;
    for (uint32_t cc = 0; cc < c->campaigns; cc++) {
        uint32_t pl_off;
        int n = r->proto->frame(r, cc, r->tmpl + off, per, &pl_off);
        if (n < 0) {
            fprintf(stderr, "nexus-bench: cannot build the publish frame of campaign %u\n", cc);
            return n;
        }
        bench_pl_put(&r->pl, r->tmpl + off + pl_off + r->pl.campaign_off, cc);
        if (r->tmpl_id_off) {
            /* The driver wrote BENCH_EVENT_ID_TMPL as the event id: find it, before the
             * payload (the frame's last field). */
            const uint8_t *at =
                memmem(r->tmpl + off, pl_off, BENCH_EVENT_ID_TMPL, BENCH_EVENT_ID_LEN);
            if (!at) {
                fprintf(stderr, "nexus-bench: no event id in the frame of campaign %u\n", cc);
                return -EPROTO;
            }
            r->tmpl_id_off[cc] = (uint32_t)(at - (r->tmpl + off));
        }
        r->tmpl_off[cc] = (uint32_t)off;
        r->tmpl_len[cc] = (uint32_t)n;
        r->tmpl_pl_off[cc] = pl_off;
        if ((uint32_t)n > r->frame_len_max)
            r->frame_len_max = (uint32_t)n;
        off += (size_t)n;
    }
    return 0;
}

/* Connects and sets up connection i (subscribers first, so that every subscription exists
 * before the first publish). Returns 0 or -errno after printing the cause. */
static int open_conn(struct bench_run *r, struct bench_setup *s, struct bench_conn *c)
{
    const struct bench_cfg *cfg = &r->cfg;
    char err[512] = "";
    int fd = nexus_tcp_connect(cfg->host, cfg->port, err, sizeof(err));
    if (fd < 0) {
        fprintf(stderr, "nexus-bench: %s\n", err);
        return fd;
    }
    memset(s, 0, offsetof(struct bench_setup, buf));
    s->len = 0;
    s->fd = fd;
    s->cfg = cfg;
    s->deadline_ns = bench_now_ns() + SETUP_TIMEOUT_NS;
    int rc = r->proto->greet(s, err, sizeof(err));
    if (rc == 0 && c->role == BENCH_SUB)
        rc = r->proto->subscribe(s, r, c->campaign, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "nexus-bench: %s %u: %s\n",
                c->role == BENCH_PUB ? "publisher" : "subscriber", c->index, err);
        bench_tls_free(s->ssl);
        close(fd);
        return rc;
    }
    c->fd = fd;
    c->ssl = s->ssl;
    c->tls_more = s->ssl != NULL; /* the SSL object may hold records read during set-up */
    if (s->len > c->carry_cap) {
        fprintf(stderr, "nexus-bench: unexpected data after setup\n");
        return -EPROTO;
    }
    memcpy(c->carry, s->buf, s->len); /* anything already read belongs to the run */
    c->carry_len = (uint32_t)s->len;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

static int open_all(struct bench_run *r)
{
    const struct bench_cfg *c = &r->cfg;
    r->conn_count = c->publishers + c->subscribers;
    r->conns = bench_calloc(r->conn_count, sizeof(struct bench_conn));
    /* The receive tail must hold one whole message of the largest kind the broker sends. */
    uint32_t carry_cap = r->pl.len + 65536;
    for (uint32_t i = 0; i < r->conn_count; i++) {
        struct bench_conn *cn = &r->conns[i];
        cn->fd = -1;
        cn->role = i < c->publishers ? BENCH_PUB : BENCH_SUB;
        cn->index = cn->role == BENCH_PUB ? i : i - c->publishers;
        cn->carry_cap = carry_cap;
        cn->carry = bench_calloc(1, carry_cap);
        if (cn->role == BENCH_PUB) {
            cn->out_cap = PUB_OUT_BYTES;
            if (cn->out_cap < 4 * r->frame_len_max)
                cn->out_cap = 4 * r->frame_len_max;
        } else {
            cn->out_cap = SUB_OUT_BYTES;
            cn->campaign = r->sub_campaign[cn->index];
            cn->next_seq = bench_calloc(c->publishers, sizeof(uint64_t));
            cn->received = bench_calloc(c->publishers, sizeof(uint64_t));
            for (uint32_t p = 0; p < c->publishers; p++)
                cn->next_seq[p] = 1;
        }
        cn->out = bench_calloc(1, cn->out_cap);
    }
    struct bench_setup *s = bench_calloc(1, sizeof(*s));
    int rc = 0;
    for (uint32_t k = 0; k < r->conn_count && rc == 0 && !interrupted; k++) {
        uint32_t i = (k + c->publishers) % r->conn_count; /* subscribers, then publishers */
        rc = open_conn(r, s, &r->conns[i]);
    }
    free(s);
    return interrupted ? -EINTR : rc;
}

static int start_threads(struct bench_run *r)
{
    const struct bench_cfg *c = &r->cfg;
    r->threads = bench_calloc(c->threads, sizeof(struct bench_thread));
    for (uint32_t i = 0; i < c->threads; i++) {
        struct bench_thread *t = &r->threads[i];
        t->run = r;
        t->index = i;
        t->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (t->epfd < 0) {
            perror("nexus-bench: epoll_create1");
            return -errno;
        }
        t->rbuf_cap = THREAD_RBUF_BYTES + r->pl.len + 65536;
        t->rbuf = bench_calloc(1, t->rbuf_cap);
        t->pubs = bench_calloc(r->conn_count, sizeof(struct bench_conn *));
        t->subs = bench_calloc(r->conn_count, sizeof(struct bench_conn *));
        t->tls_more = c->tls;
        hist_reset(&t->hist);
    }
    for (uint32_t i = 0; i < r->conn_count; i++) {
        struct bench_conn *cn = &r->conns[i];
        struct bench_thread *t = &r->threads[i % c->threads];
        cn->thr = t;
        if (cn->role == BENCH_PUB)
            t->pubs[t->pub_count++] = cn;
        else
            t->subs[t->sub_count++] = cn;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = cn};
        if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, cn->fd, &ev) < 0) {
            perror("nexus-bench: epoll_ctl");
            return -errno;
        }
    }
    int64_t now = bench_now_ns();
    r->t0_ns = now;
    r->measure_start_ns = now + (int64_t)(c->warmup_s * 1e9);
    r->measure_end_ns = r->measure_start_ns + (int64_t)(c->duration_s * 1e9);
    atomic_store(&r->phase, PHASE_RUN);
    for (uint32_t i = 0; i < c->threads; i++) {
        int e = pthread_create(&r->threads[i].tid, NULL, bench_thread_main, &r->threads[i]);
        if (e) {
            fprintf(stderr, "nexus-bench: pthread_create: %s\n", strerror(e));
            exit(3);
        }
    }
    return 0;
}

static void sum_counters(const struct bench_run *r, uint64_t out[BC_COUNT])
{
    memset(out, 0, sizeof(uint64_t) * BC_COUNT);
    for (uint32_t i = 0; i < r->cfg.threads; i++)
        for (int k = 0; k < BC_COUNT; k++) {
            uint64_t v = atomic_load_explicit(&r->threads[i].shared[k], memory_order_relaxed);
            if (k == BC_SCHED_LAG_NS)
                out[k] = v > out[k] ? v : out[k];
            else if (k != BC_LAT_MAX_NS)
                out[k] += v;
        }
}

static uint64_t take_lat_max(struct bench_run *r)
{
    uint64_t m = 0;
    for (uint32_t i = 0; i < r->cfg.threads; i++) {
        uint64_t v =
            atomic_exchange_explicit(&r->threads[i].shared[BC_LAT_MAX_NS], 0, memory_order_relaxed);
        m = v > m ? v : m;
    }
    return m;
}

/* Events every live or dead subscriber should get: what was generated for its campaign. */
static uint64_t expected_total(const struct bench_run *r)
{
    const struct bench_cfg *c = &r->cfg;
    uint64_t sum = 0;
    for (uint32_t cc = 0; cc < c->campaigns; cc++) {
        uint64_t subs = r->camp_first[cc + 1] - r->camp_first[cc];
        for (uint32_t p = 0; p < c->publishers && subs; p++)
            sum += subs * atomic_load_explicit(&r->gen[(size_t)p * c->campaigns + cc],
                                               memory_order_relaxed);
    }
    return sum;
}

static void progress_line(struct bench_run *r, int64_t now, const uint64_t prev[BC_COUNT],
                          const uint64_t cur[BC_COUNT], double dt)
{
    if (r->cfg.quiet)
        return;
    const char *phase = now < r->measure_start_ns ? "warm-up"
                        : now < r->measure_end_ns ? "measure"
                                                  : "drain";
    fprintf(stderr,
            "[%6.1fs %-7s] pub %10.0f/s  deliv %10.0f/s  %7.1f MB/s  lost %llu  disorder %llu  "
            "errors %llu  max lat %.1f ms\n",
            (double)(now - r->t0_ns) / 1e9, phase,
            (double)(cur[BC_PUBLISHED] - prev[BC_PUBLISHED]) / dt,
            (double)(cur[BC_DELIVERED] - prev[BC_DELIVERED]) / dt,
            (double)(cur[BC_PAYLOAD_BYTES] - prev[BC_PAYLOAD_BYTES]) / dt / 1e6,
            (unsigned long long)cur[BC_LOST], (unsigned long long)cur[BC_DISORDER],
            (unsigned long long)(cur[BC_BROKER_ERRORS] + cur[BC_CORRUPT] + cur[BC_DISCONNECTS]),
            (double)take_lat_max(r) / 1e6);
}

/* Runs the timeline: warm-up, measured window (snapshots at both ends), drain. */
static void run_timeline(struct bench_run *r, struct bench_result *res)
{
    uint64_t prev[BC_COUNT], cur[BC_COUNT], at_start[BC_COUNT], at_end[BC_COUNT];
    memset(prev, 0, sizeof(prev));
    memset(at_start, 0, sizeof(at_start));
    double cpu0 = 0, bcpu0 = -1;
    bool started = false;
    int64_t last = r->t0_ns, tick = r->t0_ns + 1000000000;
    if (r->measure_start_ns == r->t0_ns) {
        cpu0 = bench_self_cpu_s();
        bcpu0 = r->cfg.broker_pid ? bench_proc_cpu_s(r->cfg.broker_pid) : -1;
        started = true;
    }
    while (!interrupted) {
        int64_t target = tick;
        if (!started && r->measure_start_ns < target)
            target = r->measure_start_ns;
        if (r->measure_end_ns < target)
            target = r->measure_end_ns;
        sleep_until(target);
        int64_t now = bench_now_ns();
        sum_counters(r, cur);
        if (!started && now >= r->measure_start_ns) {
            memcpy(at_start, cur, sizeof(cur));
            cpu0 = bench_self_cpu_s();
            bcpu0 = r->cfg.broker_pid ? bench_proc_cpu_s(r->cfg.broker_pid) : -1;
            started = true;
        }
        if (now >= r->measure_end_ns)
            break;
        if (now >= tick) {
            progress_line(r, now, prev, cur, (double)(now - last) / 1e9);
            memcpy(prev, cur, sizeof(cur));
            last = now;
            tick += 1000000000;
        }
    }
    int64_t end = bench_now_ns();
    sum_counters(r, at_end);
    res->client_cpu_s = bench_self_cpu_s() - cpu0;
    double bcpu1 = r->cfg.broker_pid ? bench_proc_cpu_s(r->cfg.broker_pid) : -1;
    res->broker_cpu_s = bcpu0 >= 0 && bcpu1 >= 0 ? bcpu1 - bcpu0 : -1;
    res->measured_s = (double)(end - (started ? r->measure_start_ns : r->t0_ns)) / 1e9;
    if (res->measured_s > r->cfg.duration_s)
        res->measured_s = r->cfg.duration_s; /* end was read a little after measure_end */
    atomic_store(&r->phase, PHASE_DRAIN);
    res->published_measured = at_end[BC_PUBLISHED] - at_start[BC_PUBLISHED];
    res->delivered_measured = at_end[BC_DELIVERED] - at_start[BC_DELIVERED];
    res->payload_bytes_measured = at_end[BC_PAYLOAD_BYTES] - at_start[BC_PAYLOAD_BYTES];
    res->wire_bytes_measured = at_end[BC_WIRE_BYTES] - at_start[BC_WIRE_BYTES];

    /* Drain: bounded by --drain-s, and cut short when nothing arrives any more. */
    int64_t drain_end = bench_now_ns() + (int64_t)(r->cfg.drain_s * 1e9);
    int64_t last_progress = bench_now_ns();
    uint64_t last_delivered = 0;
    while (!interrupted) {
        int64_t now = bench_now_ns();
        sum_counters(r, cur);
        uint64_t expected = expected_total(r);
        if (cur[BC_DELIVERED] >= expected && cur[BC_PUB_UNSENT] == 0)
            break;
        if (cur[BC_DELIVERED] != last_delivered) {
            last_delivered = cur[BC_DELIVERED];
            last_progress = now;
        }
        if (now >= drain_end || now - last_progress >= DRAIN_IDLE_NS)
            break;
        sleep_until(now + 2000000);
    }
    atomic_store(&r->phase, PHASE_STOP);
}

static void check_delivery(struct bench_run *r, struct bench_result *res)
{
    const struct bench_cfg *c = &r->cfg;
    sum_counters(r, res->counters);
    const uint64_t *k = res->counters;
    res->published_total = k[BC_PUBLISHED];
    res->expected_total = expected_total(r);
    res->delivered_total = k[BC_DELIVERED];
    res->lost =
        res->expected_total > res->delivered_total ? res->expected_total - res->delivered_total : 0;
    /* Name the first subscriber that missed something, to make the failure concrete. */
    char worst[160] = "";
    for (uint32_t i = c->publishers; i < r->conn_count && !worst[0]; i++) {
        const struct bench_conn *cn = &r->conns[i];
        for (uint32_t p = 0; p < c->publishers; p++) {
            uint64_t want = atomic_load_explicit(&r->gen[(size_t)p * c->campaigns + cn->campaign],
                                                 memory_order_relaxed);
            if (cn->received[p] != want) {
                snprintf(worst, sizeof(worst),
                         "; subscriber %u got %llu of publisher %u's %llu events%s", cn->index,
                         (unsigned long long)cn->received[p], p, (unsigned long long)want,
                         cn->dead ? " (disconnected)" : "");
                break;
            }
        }
    }
    const char *first_error = "";
    for (uint32_t i = 0; i < c->threads; i++)
        if (r->threads[i].last_error[0]) {
            first_error = r->threads[i].last_error;
            break;
        }
    res->ok = res->lost == 0 && k[BC_DISORDER] == 0 && k[BC_CORRUPT] == 0 && k[BC_SEQ_GAPS] == 0 &&
              k[BC_GAP_DROPPED] == 0 && k[BC_BROKER_ERRORS] == 0 && k[BC_DISCONNECTS] == 0 &&
              k[BC_PUB_UNSENT] == 0 && res->delivered_measured > 0 && !interrupted;
    if (res->ok) {
        snprintf(res->verdict, sizeof(res->verdict), "every event delivered once, in order");
        return;
    }
    snprintf(res->verdict, sizeof(res->verdict),
             "%s: %llu of %llu expected deliveries lost, %llu out of order or duplicated, %llu "
             "corrupt, %llu broker errors, %llu disconnects, %llu bytes never sent%s%s%s%s",
             bench_broker_name(c->broker), (unsigned long long)res->lost,
             (unsigned long long)res->expected_total, (unsigned long long)k[BC_DISORDER],
             (unsigned long long)k[BC_CORRUPT], (unsigned long long)k[BC_BROKER_ERRORS],
             (unsigned long long)k[BC_DISCONNECTS], (unsigned long long)k[BC_PUB_UNSENT],
             res->delivered_measured == 0 ? "; nothing delivered in the measured window" : "",
             interrupted ? "; interrupted" : "", worst, first_error[0] ? "; first problem: " : "");
    size_t l = strlen(res->verdict);
    snprintf(res->verdict + l, sizeof(res->verdict) - l, "%s", first_error);
}

int main(int argc, char **argv)
{
    static struct bench_run run;
    struct bench_run *r = &run;
    int rc = bench_options_parse(&r->cfg, argc, argv);
    if (rc)
        return rc > 0 ? 0 : 2;
    struct bench_cfg *c = &r->cfg;
    bool durable = !strcmp(c->preset, "durable");
    if (!durable && (c->broker == BENCH_JETSTREAM || c->broker == BENCH_RSTREAM)) {
        fprintf(stderr, "nexus-bench: --broker %s is spoken by the durable preset only\n",
                bench_broker_name(c->broker));
        return 2;
    }
    if (durable && !c->port)
        c->port = c->broker == BENCH_NEXUS       ? dur_proto_nexus.port_default
                  : c->broker == BENCH_JETSTREAM ? dur_proto_jetstream.port_default
                  : c->broker == BENCH_RSTREAM   ? dur_proto_rstream.port_default
                                                 : 0;
    r->proto = c->broker == BENCH_NEXUS  ? &bench_proto_nexus
               : c->broker == BENCH_NATS ? &bench_proto_nats
                                         : &bench_proto_redis;
    if (!c->port)
        c->port = r->proto->port_default;
    if (!c->campaign_base) {
        /* Microseconds of wall time: consecutive runs are seconds apart, so the campaign
         * ranges of two runs (at most 100,000 wide) never overlap on a long-lived broker. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        c->campaign_base =
            ((uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000) & ((1ull << 52) - 1);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (bench_tls_init(c) < 0)
        return 2;
    if (!strcmp(c->preset, "lifecycle"))
        return bench_lifecycle_main(c, &interrupted);
    if (!strcmp(c->preset, "streams"))
        return bench_streams_main(c, &interrupted);
    if (durable)
        return bench_durable_main(c, &interrupted);

    if (bench_payload_build(&r->pl, c->payload_bytes, c->string_payload) < 0) {
        fprintf(stderr, "nexus-bench: cannot build a %u-byte payload\n", c->payload_bytes);
        return 2;
    }
    build_tables(r);
    if (build_templates(r) < 0)
        return 2;
    uint64_t by_bytes = c->window_bytes / r->frame_len_max;
    r->window_events = (uint32_t)(by_bytes < c->window ? by_bytes : c->window);
    if (r->window_events == 0)
        r->window_events = 1;
    if (open_all(r) < 0)
        return 3;
    if (start_threads(r) < 0)
        return 3;
    if (!c->quiet)
        fprintf(stderr, "nexus-bench: %s at %s:%u, %s: %u pub, %u sub, %u campaigns, %u B\n",
                r->proto->name, c->host, c->port, c->preset, c->publishers, c->subscribers,
                c->campaigns, r->pl.len);

    static struct bench_result res;
    run_timeline(r, &res);
    for (uint32_t i = 0; i < c->threads; i++)
        pthread_join(r->threads[i].tid, NULL);
    static struct hist merged;
    hist_reset(&merged);
    for (uint32_t i = 0; i < c->threads; i++)
        hist_merge(&merged, &r->threads[i].hist);
    res.hist = &merged;
    check_delivery(r, &res);

    bench_report_text(r, &res, c->json ? stderr : stdout);
    if (c->json)
        bench_report_json(r, &res, stdout);
    if (!res.ok)
        fprintf(stderr, "nexus-bench: FAIL: %s\n", res.verdict);
    return res.ok ? 0 : 1;
}
