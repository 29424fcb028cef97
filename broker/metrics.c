// SPDX-License-Identifier: Apache-2.0
//
// Implementation of metrics.h. The thread handles one scrape at a time: accept, read the
// request (bounded in bytes and time), answer GET /metrics (404 for other paths), close. A
// scraper that stalls is cut off after METRICS_IO_TIMEOUT_MS.
#include "broker/metrics.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/shard.h"

/* A scrape's request must arrive, and its answer leave, within this time. */
#define METRICS_IO_TIMEOUT_MS 2000
/* Requests larger than this are refused: GET /metrics with headers fits in far less. */
#define METRICS_REQUEST_BYTES_MAX 8192
/* The exposition text of 64 shards stays well under this. */
#define METRICS_BODY_BYTES_MAX (256 * 1024)

struct metrics {
    struct broker *b;
    int fd;
    pthread_t thread;
    atomic_int stop;
    struct io_uring ring;
};

static size_t appendf(char *buf, size_t cap, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t appendf(char *buf, size_t cap, size_t n, const char *fmt, ...)
{
    if (n >= cap)
        return n;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
    return w < 0 ? n : n + (size_t)w;
}

#define LD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

struct counter_def {
    const char *name, *help, *type;
    size_t off;
};

#define SOFF(f) offsetof(struct shard_stats, f)
static const struct counter_def counters[] = {
    {"nexus_connections", "Open client connections.", "gauge", SOFF(connections)},
    {"nexus_connections_accepted_total", "Connections accepted.", "counter",
     SOFF(connections_total)},
    {"nexus_frames_in_total", "Frames received from clients.", "counter", SOFF(frames_in)},
    {"nexus_frames_out_total", "Frames sent to clients.", "counter", SOFF(frames_out)},
    {"nexus_events_in_total", "Events sequenced (published) on the owning shard.", "counter",
     SOFF(events_in)},
    {"nexus_events_out_total", "Events queued to subscriber connections.", "counter",
     SOFF(events_out)},
    {"nexus_bytes_in_total", "Bytes received from clients.", "counter", SOFF(bytes_in)},
    {"nexus_bytes_out_total", "Bytes sent to clients.", "counter", SOFF(bytes_out)},
    {"nexus_bytes_queued", "Bytes queued for sending.", "gauge", SOFF(bytes_queued)},
    {"nexus_slow_disconnects_total", "Subscribers disconnected by the slow-consumer policy.",
     "counter", SOFF(slow_disconnects)},
    {"nexus_drops_total", "Events dropped for slow subscribers (policy drop).", "counter",
     SOFF(drops)},
    {"nexus_duplicates_total", "Emits suppressed as duplicates.", "counter", SOFF(duplicates)},
    {"nexus_errors_total", "Error frames sent.", "counter", SOFF(errors)},
    {"nexus_campaigns", "Campaigns owned.", "gauge", SOFF(campaigns)},
    {"nexus_subscriptions", "Subscriptions held.", "gauge", SOFF(subscriptions)},
    {"nexus_paused_reads_total", "Times a publisher was paused by backpressure.", "counter",
     SOFF(paused_reads)},
};

/* The counters other layers registered (stats.h): one family per name, rows with the same
 * name registered one after the other and told apart by their labels. */
static size_t render_registered(struct broker *b, char *buf, size_t cap, size_t n)
{
    const char *family = NULL;
    for (int k = 0; k < stats_registered_count(); k++) {
        const struct stats_def *d = stats_registered(k);
        if (!family || strcmp(family, d->name) != 0) {
            family = d->name;
            n = appendf(buf, cap, n, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name,
                        d->gauge ? "gauge" : "counter");
        }
        for (uint32_t i = 0; i < b->shard_count; i++)
            n = appendf(buf, cap, n, "%s{shard=\"%u\"%s%s} %llu\n", d->name, i,
                        d->labels ? "," : "", d->labels ? d->labels : "",
                        LD(b->shards[i]->stats.ext[k]));
    }
    return n;
}

size_t metrics_render(struct broker *b, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
        const struct counter_def *d = &counters[k];
        n = appendf(buf, cap, n, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name,
                    d->type);
        for (uint32_t i = 0; i < b->shard_count; i++) {
            atomic_uint_fast64_t *v =
                (atomic_uint_fast64_t *)((char *)&b->shards[i]->stats + d->off);
            n = appendf(buf, cap, n, "%s{shard=\"%u\"} %llu\n", d->name, i, LD(*v));
        }
    }
    n = render_registered(b, buf, cap, n);
    n = appendf(buf, cap, n,
                "# HELP nexus_ring_depth Messages waiting in the rings into a shard.\n"
                "# TYPE nexus_ring_depth gauge\n");
    for (uint32_t i = 0; i < b->shard_count; i++) {
        uint64_t depth = 0;
        for (uint32_t src = 0; src < b->shard_count; src++)
            if (src != i)
                depth +=
                    ring_depth(broker_ring(b, 0, src, i)) + ring_depth(broker_ring(b, 1, src, i));
        n = appendf(buf, cap, n, "nexus_ring_depth{shard=\"%u\"} %llu\n", i,
                    (unsigned long long)depth);
    }
    n = appendf(buf, cap, n,
                "# HELP nexus_delivery_latency_seconds Acceptance to queueing on a subscriber "
                "connection, sampled 1 in %d deliveries.\n"
                "# TYPE nexus_delivery_latency_seconds histogram\n",
                SHARD_LATENCY_SAMPLE);
    for (uint32_t i = 0; i < b->shard_count; i++) {
        struct shard_stats *st = &b->shards[i]->stats;
        unsigned long long cum = 0;
        for (unsigned k = 0; k < SHARD_LATENCY_BUCKETS - 1; k++) {
            cum += LD(st->latency_us_bucket[k]);
            n = appendf(buf, cap, n,
                        "nexus_delivery_latency_seconds_bucket{shard=\"%u\",le=\"%.6f\"} %llu\n", i,
                        (double)(1ull << k) / 1e6, cum);
        }
        cum += LD(st->latency_us_bucket[SHARD_LATENCY_BUCKETS - 1]);
        n = appendf(buf, cap, n,
                    "nexus_delivery_latency_seconds_bucket{shard=\"%u\",le=\"+Inf\"} %llu\n"
                    "nexus_delivery_latency_seconds_sum{shard=\"%u\"} %.6f\n"
                    "nexus_delivery_latency_seconds_count{shard=\"%u\"} %llu\n",
                    i, cum, i, (double)LD(st->latency_us_sum) / 1e6, i, cum);
    }
    return n < cap ? n : cap;
}

/* A submission entry; the ring is only ever used for one operation (and its timeout) at a
 * time, so it cannot be full. */
static struct io_uring_sqe *metrics_sqe(struct metrics *m)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&m->ring);
    NX_ASSERT(sqe != NULL);
    return sqe;
}

/* Runs one operation on the metrics ring and waits for it, bounded by a linked timeout. */
static int run_op(struct metrics *m, struct io_uring_sqe *sqe, bool timed)
{
    struct __kernel_timespec ts = {.tv_sec = METRICS_IO_TIMEOUT_MS / 1000,
                                   .tv_nsec = (METRICS_IO_TIMEOUT_MS % 1000) * 1000000LL};
    io_uring_sqe_set_data64(sqe, 1);
    if (timed) {
        sqe->flags |= IOSQE_IO_LINK;
        struct io_uring_sqe *t = metrics_sqe(m);
        io_uring_prep_link_timeout(t, &ts, 0);
        io_uring_sqe_set_data64(t, 2);
    }
    io_uring_submit(&m->ring);
    int res = -ECANCELED;
    for (int pending = timed ? 2 : 1; pending > 0; pending--) {
        struct io_uring_cqe *cqe;
        int r = io_uring_wait_cqe(&m->ring, &cqe);
        if (r < 0)
            return r;
        if (io_uring_cqe_get_data64(cqe) == 1)
            res = cqe->res;
        io_uring_cqe_seen(&m->ring, cqe);
    }
    return res;
}

static void serve(struct metrics *m, int fd)
{
    char req[METRICS_REQUEST_BYTES_MAX];
    size_t have = 0;
    while (have < sizeof(req) - 1 && !memmem(req, have, "\r\n\r\n", 4)) {
        struct io_uring_sqe *sqe = metrics_sqe(m);
        io_uring_prep_recv(sqe, fd, req + have, sizeof(req) - 1 - have, 0);
        int r = run_op(m, sqe, true);
        if (r <= 0)
            return;
        have += (size_t)r;
    }
    req[have] = 0;
    bool ok = strncmp(req, "GET /metrics ", 13) == 0 || strncmp(req, "GET / ", 6) == 0;
    char *body = malloc(METRICS_BODY_BYTES_MAX);
    char *out = malloc(METRICS_BODY_BYTES_MAX + 256);
    if (!body || !out) {
        free(body);
        free(out);
        return;
    }
    size_t bl = ok ? metrics_render(m->b, body, METRICS_BODY_BYTES_MAX)
                   : (size_t)snprintf(body, METRICS_BODY_BYTES_MAX, "not found: try /metrics\n");
    int hl = snprintf(out, 256,
                      "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      ok ? "200 OK" : "404 Not Found", bl);
    memcpy(out + hl, body, bl);
    size_t total = (size_t)hl + bl, sent = 0;
    while (sent < total) {
        struct io_uring_sqe *sqe = metrics_sqe(m);
        io_uring_prep_send(sqe, fd, out + sent, total - sent, MSG_NOSIGNAL);
        int r = run_op(m, sqe, true);
        if (r <= 0)
            break;
        sent += (size_t)r;
    }
    free(body);
    free(out);
}

static void *metrics_thread(void *arg)
{
    struct metrics *m = arg;
    pthread_setname_np(pthread_self(), "nexus-metrics");
    while (!atomic_load(&m->stop)) {
        struct io_uring_sqe *sqe = metrics_sqe(m);
        io_uring_prep_accept(sqe, m->fd, NULL, NULL, SOCK_CLOEXEC);
        int fd = run_op(m, sqe, false);
        if (fd < 0) {
            if (atomic_load(&m->stop))
                break;
            continue;
        }
        serve(m, fd);
        close(fd);
    }
    return NULL;
}

struct metrics *metrics_start(struct broker *b)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->b = b;
    char err[256];
    m->fd = broker_listen(b->cfg.metrics_host, b->cfg.metrics_port, false, 64, "metrics", err,
                          sizeof(err));
    if (m->fd < 0) {
        log_error(-1, "metrics: %s", err);
        free(m);
        return NULL;
    }
    if (io_uring_queue_init(16, &m->ring, 0) < 0 ||
        pthread_create(&m->thread, NULL, metrics_thread, m) != 0) {
        log_error(-1, "metrics: cannot start the metrics thread");
        close(m->fd);
        free(m);
        return NULL;
    }
    log_info(-1, "metrics on http://%s:%u/metrics", b->cfg.metrics_host, b->cfg.metrics_port);
    return m;
}

void metrics_stop(struct metrics *m)
{
    if (!m)
        return;
    atomic_store(&m->stop, 1);
    /* Wakes the accept: it fails once the socket is shut down. */
    shutdown(m->fd, SHUT_RDWR);
    pthread_join(m->thread, NULL);
    close(m->fd);
    io_uring_queue_exit(&m->ring);
    free(m);
}
