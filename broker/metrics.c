// SPDX-License-Identifier: Apache-2.0
//
// Implementation of metrics.h. The thread runs an event loop on its own io_uring: a multishot
// accept, and for each client (at most METRICS_CLIENTS_MAX at once) a receive of its request,
// then a send of the answer, one operation of it in the kernel at a time. Each phase has one
// deadline, set when the phase begins (the request's at the accept) and never extended by the
// bytes that arrive, so a client that trickles its request or stops reading its answer holds
// its slot for a bounded time and never delays another scraper. One periodic timeout, armed
// only while a client is connected, sweeps the deadlines.
//
// Routes: GET or HEAD /metrics (any query string) is the exposition, /healthz is a liveness
// answer (the process answers), /readyz a readiness answer (every shard's loop turning:
// metrics_readiness), any other path is 404, any other method 405, a malformed request line
// 400, a request over METRICS_REQUEST_BYTES_MAX 431. Every answer closes the connection.
//
// Besides the shards' counters the exposition carries the process's own series under the
// names Prometheus' client libraries use (process_cpu_seconds_total, ...: the usual dashboards
// and alerts work unchanged), nexus_build_info, and each shard's heartbeat age.
#include "broker/metrics.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/shard.h"

/* Clients served at once. Scrapers are a handful (a Prometheus pair, a health checker, an
 * operator's curl); 64 leaves them ample room while bounding what a flood of connections can
 * hold: 64 request buffers (512 KiB) and 64 answers (at most 16 MiB, for 2 s each). */
#define METRICS_CLIENTS_MAX 64
/* Client slots: a client closed while its operation is in the kernel keeps its slot and
 * buffers until that completion (the next pass of the loop), so a burst of evictions can
 * briefly hold one closing slot beside each of the METRICS_CLIENTS_MAX live ones. */
#define METRICS_SLOTS (2 * METRICS_CLIENTS_MAX)
/* The whole request must arrive within this time of the accept. A scraper sends it in one
 * packet right after connecting, so 2 s (the old per-receive bound) is generous on any network
 * a scrape crosses; no trickle of bytes extends it. */
#define METRICS_REQUEST_TIMEOUT_MS 2000
/* The answer must be sent within this time of the request's arrival: at most
 * METRICS_BODY_BYTES_MAX, which a client that reads takes a few milliseconds for on a LAN and
 * well under 2 s on a slow link; a client that stops reading loses its slot. */
#define METRICS_IO_TIMEOUT_MS 2000
/* The deadline sweep's period while a client is connected: a deadline is enforced at most
 * 100 ms late (5% of the shortest one), for 10 wake-ups a second only while scrapes run. */
#define METRICS_SWEEP_MS 100
/* Requests larger than this are refused (431): GET /metrics with headers fits in far less;
 * Prometheus sends about 300 bytes. */
#define METRICS_REQUEST_BYTES_MAX 8192
/* The exposition text of 64 shards stays well under this. */
#define METRICS_BODY_BYTES_MAX (256 * 1024)
/* The status line and headers of an answer: the longest we write is under 160 bytes. */
#define METRICS_HEAD_BYTES_MAX 256
/* A shard whose loop has not ticked (every 100 ms while it turns) for this long is stuck, and
 * the broker not ready: 2 s is 20 ticks, far past a pause of a loaded machine's scheduler
 * (ASan builds included), and soon enough for a load balancer to stop sending it clients. */
#define METRICS_STALL_MS 2000
/* Submission queue entries: at most one operation per client slot, a cancel for each, the
 * accept and the timer (258) in one pass; the completion queue is twice as deep, and the
 * kernel keeps any overflow (a multishot accept then ends and is re-armed). */
#define METRICS_RING_ENTRIES 512

/* Why the server closed a client early; counted and exposed as nexus_metrics_closes_total. */
enum mclose {
    MCLOSE_LIMIT,           /* METRICS_CLIENTS_MAX reached: a new one refused or an old evicted */
    MCLOSE_REQUEST_TIMEOUT, /* the request did not arrive within METRICS_REQUEST_TIMEOUT_MS */
    MCLOSE_ANSWER_TIMEOUT,  /* the answer was not taken within METRICS_IO_TIMEOUT_MS */
    MCLOSE_TOO_LARGE,       /* the request exceeded METRICS_REQUEST_BYTES_MAX (answered 431) */
    MCLOSE_COUNT,
    MCLOSE_NONE = MCLOSE_COUNT, /* a normal close: answered, or the peer left */
};

static const char *const mclose_names[MCLOSE_COUNT] = {"limit", "request_timeout", "answer_timeout",
                                                       "too_large"};

/* The operations on the metrics ring; user_data is the kind in the high 32 bits and the
 * client slot in the low 32. */
enum mop { MOP_ACCEPT = 1, MOP_TIMER, MOP_RECV, MOP_SEND, MOP_CANCEL };

enum mphase {
    MC_FREE,    /* slot unused */
    MC_REQUEST, /* receiving the request */
    MC_ANSWER,  /* sending the answer */
    MC_CLOSING, /* closed by us, waiting for its operation to complete before the fd closes */
};

struct mclient {
    int fd;
    enum mphase phase;
    enum mop op;         /* MOP_RECV or MOP_SEND while busy */
    bool busy;           /* its operation is in the kernel: its buffer may not be freed */
    int64_t deadline_ns; /* of the current phase, set once when the phase begins */
    char *req;           /* METRICS_REQUEST_BYTES_MAX + 1 while in MC_REQUEST */
    size_t have;
    char *out; /* the whole answer while in MC_ANSWER */
    size_t out_len, sent;
};

struct metrics {
    struct broker *b;
    int fd;
    pthread_t thread;
    atomic_int stop;
    struct io_uring ring;
    /* Below: the metrics thread's alone. */
    bool stopping, accept_armed, accept_failing, timer_armed;
    uint32_t inflight; /* operations whose last completion is still due */
    uint32_t active;   /* clients in MC_REQUEST or MC_ANSWER */
    uint32_t used;     /* slots not MC_FREE */
    struct __kernel_timespec tick;
    char *body; /* METRICS_BODY_BYTES_MAX: the exposition, rendered again for each request */
    uint64_t closes[MCLOSE_COUNT];
    struct mclient clients[METRICS_SLOTS];
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
    {"nexus_accept_errors_total",
     "Accepts that failed (out of descriptors or memory); accepting pauses with back-off.",
     "counter", SOFF(accept_errors)},
    {"nexus_deadline_closes_total",
     "Connections closed by a deadline (hello, frame, liveness ping, idle).", "counter",
     SOFF(deadline_closes)},
    {"nexus_campaigns_freed_total", "Idle campaigns freed (--campaign-idle-ms).", "counter",
     SOFF(campaigns_freed)},
    {"nexus_memory_refusals_total",
     "Subscriptions and campaigns refused because the process is at --max-memory.", "counter",
     SOFF(memory_refusals)},
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

static int64_t mono_ns(void);

/* VmSize and VmRSS in bytes, from /proc/self/statm (0 when unknown). */
static void process_memory(uint64_t *virt, uint64_t *rss)
{
    unsigned long size = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2)
            size = res = 0;
        fclose(f);
    }
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    *virt = size * page;
    *rss = res * page;
}

/* Descriptors open, counted in /proc/self/fd (less the one reading it); -1 when unknown. */
static long process_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* The process's start, in seconds since the epoch: /proc/self/stat's field 22 is the start in
 * clock ticks since boot (CLOCK_BOOTTIME), so the start is now less the time since then.
 * (Boot time plus that, as /proc/stat's btime would give, is off by every step the wall clock
 * took since boot, hours on a machine whose clock was set after it booted.) The broker's start
 * if /proc cannot tell. */
static double process_start_s(const struct broker *b)
{
    char line[1024];
    unsigned long long ticks = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    const char *p = f && fgets(line, sizeof(line), f) ? strrchr(line, ')') : NULL;
    if (f)
        fclose(f);
    /* ") " then fields 3, 4, ...: the blank before field k is the (k - 2)th after the ')' */
    for (int field = 3; p && field <= 22; field++)
        p = strchr(p + 1, ' ');
    long hz = sysconf(_SC_CLK_TCK);
    struct timespec real, boot;
    if (!p || hz <= 0 || sscanf(p, " %llu", &ticks) != 1 ||
        clock_gettime(CLOCK_REALTIME, &real) != 0 || clock_gettime(CLOCK_BOOTTIME, &boot) != 0)
        return (double)b->start_ns / 1e9;
    double since_boot = (double)boot.tv_sec + (double)boot.tv_nsec / 1e9;
    return (double)real.tv_sec + (double)real.tv_nsec / 1e9 - (since_boot - (double)ticks / hz);
}

#ifdef __clang__
#define METRICS_COMPILER "clang " __clang_version__
#else
#define METRICS_COMPILER "gcc " __VERSION__
#endif

/* The process series, the build, and each shard's heartbeat age. */
static size_t render_process(struct broker *b, char *buf, size_t cap, size_t n)
{
    struct rusage ru;
    struct rlimit rl;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
              (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    unsigned long long max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 0;
    uint64_t virt, rss;
    process_memory(&virt, &rss);
    n = appendf(buf, cap, n,
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
                "seconds.\n# TYPE process_cpu_seconds_total counter\n"
                "process_cpu_seconds_total %.6f\n"
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                "# TYPE process_resident_memory_bytes gauge\n"
                "process_resident_memory_bytes %llu\n"
                "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                "# TYPE process_virtual_memory_bytes gauge\n"
                "process_virtual_memory_bytes %llu\n"
                "# HELP process_open_fds Number of open file descriptors.\n"
                "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n"
                "# HELP process_max_fds Maximum number of open file descriptors.\n"
                "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n"
                "# HELP process_start_time_seconds Start time of the process since unix epoch in "
                "seconds.\n# TYPE process_start_time_seconds gauge\n"
                "process_start_time_seconds %.2f\n"
                "# HELP nexus_build_info The nexusd build: version and compiler; always 1.\n"
                "# TYPE nexus_build_info gauge\n"
                "nexus_build_info{version=\"%s\",compiler=\"%s\"} 1\n"
                "# HELP nexus_shard_heartbeat_age_seconds Time since the shard's loop last "
                "ticked (every 0.1 s while it turns; /readyz fails past %d s).\n"
                "# TYPE nexus_shard_heartbeat_age_seconds gauge\n",
                cpu, (unsigned long long)rss, (unsigned long long)virt, process_open_fds(), max_fds,
                process_start_s(b), NEXUS_VERSION, METRICS_COMPILER, METRICS_STALL_MS / 1000);
    int64_t now = mono_ns();
    for (uint32_t i = 0; i < b->shard_count; i++) {
        int64_t hb = (int64_t)LD(b->shards[i]->stats.heartbeat_ns);
        n = appendf(buf, cap, n, "nexus_shard_heartbeat_age_seconds{shard=\"%u\"} %.3f\n", i,
                    hb && now > hb ? (double)(now - hb) / 1e9 : 0.0);
    }
    return n;
}

bool metrics_readiness(struct broker *b, char *why, size_t cap)
{
    if (atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        snprintf(why, cap, "draining (stop signal received)");
        return false;
    }
    int64_t now = mono_ns();
    for (uint32_t i = 0; i < b->shard_count; i++) {
        int64_t hb = (int64_t)LD(b->shards[i]->stats.heartbeat_ns);
        if (hb == 0) {
            snprintf(why, cap, "shard %u has not started its loop", i);
            return false;
        }
        if (now - hb > (int64_t)METRICS_STALL_MS * 1000000) {
            snprintf(why, cap, "shard %u: its loop has not turned for %lld ms", i,
                     (long long)((now - hb) / 1000000));
            return false;
        }
    }
    snprintf(why, cap, "ready");
    return true;
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
    n = render_process(b, buf, cap, n);
    return n < cap ? n : cap;
}

/* ---- the event loop ------------------------------------------------------------------------ */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t mud(enum mop kind, uint32_t slot)
{
    return (uint64_t)kind << 32 | slot;
}

/* A submission entry for an operation whose completion the loop then waits for. When the
 * queue is full, what it holds is submitted first (a pass may queue more than it holds). */
static struct io_uring_sqe *msqe(struct metrics *m, enum mop kind, uint32_t slot)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&m->ring);
    if (!sqe) {
        io_uring_submit(&m->ring);
        sqe = io_uring_get_sqe(&m->ring);
    }
    NX_ASSERT(sqe != NULL);
    io_uring_sqe_set_data64(sqe, mud(kind, slot));
    m->inflight++;
    return sqe;
}

static void accept_arm(struct metrics *m)
{
    io_uring_prep_multishot_accept(msqe(m, MOP_ACCEPT, 0), m->fd, NULL, NULL, SOCK_CLOEXEC);
    m->accept_armed = true;
}

static void timer_arm(struct metrics *m)
{
    m->tick.tv_sec = 0;
    m->tick.tv_nsec = METRICS_SWEEP_MS * 1000000LL;
    io_uring_prep_timeout(msqe(m, MOP_TIMER, 0), &m->tick, 0, 0);
    m->timer_armed = true;
}

static uint32_t slot_of(struct metrics *m, struct mclient *c)
{
    return (uint32_t)(c - m->clients);
}

static void recv_arm(struct metrics *m, struct mclient *c)
{
    struct io_uring_sqe *sqe = msqe(m, MOP_RECV, slot_of(m, c));
    io_uring_prep_recv(sqe, c->fd, c->req + c->have, METRICS_REQUEST_BYTES_MAX - c->have, 0);
    c->op = MOP_RECV;
    c->busy = true;
}

static void send_arm(struct metrics *m, struct mclient *c)
{
    struct io_uring_sqe *sqe = msqe(m, MOP_SEND, slot_of(m, c));
    io_uring_prep_send(sqe, c->fd, c->out + c->sent, c->out_len - c->sent, MSG_NOSIGNAL);
    c->op = MOP_SEND;
    c->busy = true;
}

/* Counts an early close; logs the 1st, 2nd, 4th, 8th... of each reason, so that a flood
 * shows in the log without filling it. */
static void count_close(struct metrics *m, enum mclose why)
{
    uint64_t n = ++m->closes[why];
    if ((n & (n - 1)) == 0)
        log_warn(-1, "metrics: client closed early reason=%s count=%llu", mclose_names[why],
                 (unsigned long long)n);
}

static void client_free(struct metrics *m, struct mclient *c)
{
    NX_ASSERT(!c->busy && c->phase != MC_FREE);
    close(c->fd);
    free(c->req);
    free(c->out);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    m->used--;
}

/* Closes a client. Its buffers stay until its operation in the kernel completes: shutdown
 * makes a receive return at once and a send fail, and the cancel covers the rest. */
static void client_close(struct metrics *m, struct mclient *c, enum mclose why)
{
    NX_ASSERT(c->phase == MC_REQUEST || c->phase == MC_ANSWER);
    m->active--;
    if (why != MCLOSE_NONE)
        count_close(m, why);
    if (!c->busy) {
        client_free(m, c);
        return;
    }
    c->phase = MC_CLOSING;
    shutdown(c->fd, SHUT_RDWR);
    io_uring_prep_cancel64(msqe(m, MOP_CANCEL, 0), mud(c->op, slot_of(m, c)), 0);
}

/* At METRICS_CLIENTS_MAX, a new connection evicts the client that has waited longest for its
 * request: a scraper sends its request at once, so the newcomer is far likelier a scraper
 * than a client silent since before it, and idle connections cannot lock scrapers out. Only
 * when every client is being answered is the newcomer refused. */
static struct mclient *client_slot(struct metrics *m)
{
    struct mclient *oldest = NULL, *free_slot = NULL;
    for (uint32_t i = 0; i < METRICS_SLOTS; i++) {
        struct mclient *c = &m->clients[i];
        if (c->phase == MC_FREE && !free_slot)
            free_slot = c;
        /* the earliest deadline of a phase of equal length is the oldest accept */
        if (c->phase == MC_REQUEST && (!oldest || c->deadline_ns < oldest->deadline_ns))
            oldest = c;
    }
    if (m->active < METRICS_CLIENTS_MAX)
        return free_slot;
    count_close(m, MCLOSE_LIMIT);
    if (!oldest)
        return NULL;
    client_close(m, oldest, MCLOSE_NONE);
    if (!free_slot && oldest->phase == MC_FREE)
        free_slot = oldest;
    return free_slot;
}

static void client_open(struct metrics *m, int fd)
{
    struct mclient *c = m->stopping ? NULL : client_slot(m);
    char *req = c ? malloc(METRICS_REQUEST_BYTES_MAX + 1) : NULL;
    if (!req) {
        if (c)
            log_error(-1, "metrics: out of memory accepting a client");
        close(fd);
        return;
    }
    *c = (struct mclient){.fd = fd,
                          .phase = MC_REQUEST,
                          .req = req,
                          .deadline_ns = mono_ns() + METRICS_REQUEST_TIMEOUT_MS * 1000000LL};
    m->active++;
    m->used++;
    recv_arm(m, c);
}

/* ---- requests and answers ------------------------------------------------------------------ */

enum mroute {
    MR_METRICS,
    MR_HEALTH,
    MR_READY,
    MR_NOT_READY,
    MR_NOT_FOUND,
    MR_BAD_METHOD,
    MR_BAD_REQUEST,
    MR_TOO_LARGE
};

/* Routes the request line `METHOD SP TARGET SP HTTP/1.x`; *head is set for HEAD. The query
 * string is ignored: scrapers add their own parameters (Prometheus' `params`). */
static enum mroute route(const char *req, bool *head)
{
    size_t line = strcspn(req, "\r\n");
    const char *sp1 = memchr(req, ' ', line);
    const char *target = sp1 ? sp1 + 1 : NULL;
    const char *sp2 = target ? memchr(target, ' ', line - (size_t)(target - req)) : NULL;
    if (!sp2 || sp1 == req || sp2 == target || strncmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return MR_BAD_REQUEST;
    size_t ml = (size_t)(sp1 - req);
    *head = ml == 4 && memcmp(req, "HEAD", 4) == 0;
    if (!*head && !(ml == 3 && memcmp(req, "GET", 3) == 0))
        return MR_BAD_METHOD;
    size_t tl = (size_t)(sp2 - target);
    const char *q = memchr(target, '?', tl);
    size_t pl = q ? (size_t)(q - target) : tl;
    if (pl == 8 && memcmp(target, "/metrics", 8) == 0)
        return MR_METRICS;
    if (pl == 8 && memcmp(target, "/healthz", 8) == 0)
        return MR_HEALTH;
    if (pl == 7 && memcmp(target, "/readyz", 7) == 0)
        return MR_READY;
    return MR_NOT_FOUND;
}

/* The exposition, and the metrics server's own counters after it. */
static size_t render_body(struct metrics *m)
{
    size_t n = metrics_render(m->b, m->body, METRICS_BODY_BYTES_MAX);
    n = appendf(m->body, METRICS_BODY_BYTES_MAX, n,
                "# HELP nexus_metrics_closes_total Metrics clients closed before their answer, "
                "by reason.\n# TYPE nexus_metrics_closes_total counter\n");
    for (int k = 0; k < MCLOSE_COUNT; k++)
        n = appendf(m->body, METRICS_BODY_BYTES_MAX, n,
                    "nexus_metrics_closes_total{reason=\"%s\"} %llu\n", mclose_names[k],
                    (unsigned long long)m->closes[k]);
    return n < METRICS_BODY_BYTES_MAX ? n : METRICS_BODY_BYTES_MAX;
}

/* Builds the answer to the client's request into c->out; body, when not NULL, replaces the
 * route's own. Returns false without memory. */
static bool answer_build(struct metrics *m, struct mclient *c, enum mroute r, bool head,
                         const char *body_of_call)
{
    static const struct {
        const char *status, *type, *extra, *body;
    } rows[] = {
        [MR_METRICS] = {"200 OK", "text/plain; version=0.0.4; charset=utf-8", "", NULL},
        [MR_HEALTH] = {"200 OK", "application/json", "", "{\"status\":\"ok\"}"},
        [MR_READY] = {"200 OK", "application/json", "", "{\"status\":\"ready\"}"},
        [MR_NOT_READY] = {"503 Service Unavailable", "application/json", "", "{}"},
        [MR_NOT_FOUND] = {"404 Not Found", "text/plain; charset=utf-8", "",
                          "not found: try /metrics, /healthz or /readyz\n"},
        [MR_BAD_METHOD] = {"405 Method Not Allowed", "text/plain; charset=utf-8",
                           "Allow: GET, HEAD\r\n", "method not allowed: use GET or HEAD\n"},
        [MR_BAD_REQUEST] = {"400 Bad Request", "text/plain; charset=utf-8", "",
                            "bad request: expected METHOD /path HTTP/1.x\n"},
        [MR_TOO_LARGE] = {"431 Request Header Fields Too Large", "text/plain; charset=utf-8", "",
                          "request too large\n"},
    };
    const char *body = body_of_call ? body_of_call : rows[r].body ? rows[r].body : m->body;
    size_t bl = body != m->body ? strlen(body) : render_body(m);
    char hdr[METRICS_HEAD_BYTES_MAX];
    int hl = snprintf(hdr, sizeof(hdr),
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                      "Connection: close\r\n\r\n",
                      rows[r].status, rows[r].type, bl, rows[r].extra);
    NX_ASSERT(hl > 0 && (size_t)hl < sizeof(hdr));
    size_t total = (size_t)hl + (head ? 0 : bl);
    c->out = malloc(total);
    if (!c->out)
        return false;
    memcpy(c->out, hdr, (size_t)hl);
    if (!head)
        memcpy(c->out + hl, body, bl);
    c->out_len = total;
    c->sent = 0;
    return true;
}

/* The request is in (or too large): its buffer goes, the answer phase begins. */
static void answer(struct metrics *m, struct mclient *c, bool too_large)
{
    bool head = false;
    c->req[c->have] = 0;
    enum mroute r = too_large ? MR_TOO_LARGE : route(c->req, &head);
    free(c->req);
    c->req = NULL;
    if (too_large)
        count_close(m, MCLOSE_TOO_LARGE);
    char why[200], body[300], *own = NULL;
    if (r == MR_READY && !metrics_readiness(m->b, why, sizeof(why))) {
        r = MR_NOT_READY;
        snprintf(body, sizeof(body), "{\"status\":\"not ready\",\"reason\":\"%s\"}", why);
        own = body;
    }
    if (!answer_build(m, c, r, head, own)) {
        log_error(-1, "metrics: out of memory answering a scrape");
        client_close(m, c, MCLOSE_NONE);
        return;
    }
    c->phase = MC_ANSWER;
    c->deadline_ns = mono_ns() + METRICS_IO_TIMEOUT_MS * 1000000LL;
    send_arm(m, c);
}

/* The end of the header block: an empty line (CRLF, or a bare LF from hand-typed requests). */
static bool request_complete(const char *req, size_t from, size_t have)
{
    for (size_t i = from; i < have; i++)
        if (req[i] == '\n' && ((i >= 1 && req[i - 1] == '\n') ||
                               (i >= 2 && req[i - 1] == '\r' && req[i - 2] == '\n')))
            return true;
    return false;
}

static void on_recv(struct metrics *m, struct mclient *c, int res)
{
    if (res <= 0) {
        client_close(m, c, MCLOSE_NONE); /* the peer left, or the socket failed */
        return;
    }
    size_t from = c->have;
    c->have += (size_t)res;
    if (request_complete(c->req, from, c->have))
        answer(m, c, false);
    else if (mono_ns() >= c->deadline_ns)
        client_close(m, c, MCLOSE_REQUEST_TIMEOUT);
    else if (c->have == METRICS_REQUEST_BYTES_MAX)
        answer(m, c, true);
    else
        recv_arm(m, c);
}

static void on_send(struct metrics *m, struct mclient *c, int res)
{
    if (res <= 0) {
        client_close(m, c, MCLOSE_NONE);
        return;
    }
    c->sent += (size_t)res;
    if (c->sent == c->out_len)
        client_close(m, c, MCLOSE_NONE);
    else if (mono_ns() >= c->deadline_ns)
        client_close(m, c, MCLOSE_ANSWER_TIMEOUT);
    else
        send_arm(m, c);
}

/* ---- the loop ------------------------------------------------------------------------------ */

/* Closes the clients whose phase is past its deadline; re-arms an accept that ended on an
 * error (here rather than at once, so that a lasting one such as EMFILE cannot spin). */
static void on_timer(struct metrics *m)
{
    m->timer_armed = false;
    int64_t now = mono_ns();
    for (uint32_t i = 0; i < METRICS_SLOTS; i++) {
        struct mclient *c = &m->clients[i];
        if ((c->phase == MC_REQUEST || c->phase == MC_ANSWER) && now >= c->deadline_ns)
            client_close(m, c,
                         c->phase == MC_REQUEST ? MCLOSE_REQUEST_TIMEOUT : MCLOSE_ANSWER_TIMEOUT);
    }
    if (!m->accept_armed && !m->stopping)
        accept_arm(m);
}

static void on_accept(struct metrics *m, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        m->accept_armed = false;
        m->inflight--;
    }
    if (cqe->res < 0) {
        /* logged once per run of failures: a lasting one is retried every sweep */
        if (cqe->res != -ECANCELED && !atomic_load(&m->stop) && !m->accept_failing)
            log_warn(-1, "metrics: accept failed: %s", strerror(-cqe->res));
        m->accept_failing = cqe->res != -ECANCELED;
        return;
    }
    m->accept_failing = false;
    if (!m->accept_armed && !m->stopping)
        accept_arm(m); /* the multishot ended without an error (a full completion queue) */
    client_open(m, cqe->res);
}

static void on_cqe(struct metrics *m, const struct io_uring_cqe *cqe)
{
    enum mop kind = (enum mop)(cqe->user_data >> 32);
    uint32_t slot = (uint32_t)cqe->user_data;
    if (kind == MOP_ACCEPT) {
        on_accept(m, cqe);
        return;
    }
    NX_ASSERT(m->inflight > 0);
    m->inflight--;
    if (kind == MOP_TIMER) {
        on_timer(m);
        return;
    }
    if (kind == MOP_CANCEL)
        return;
    NX_ASSERT((kind == MOP_RECV || kind == MOP_SEND) && slot < METRICS_SLOTS);
    struct mclient *c = &m->clients[slot];
    NX_ASSERT(c->busy && c->op == kind);
    c->busy = false;
    if (c->phase == MC_CLOSING)
        client_free(m, c);
    else if (kind == MOP_RECV)
        on_recv(m, c, cqe->res);
    else
        on_send(m, c, cqe->res);
}

/* metrics_stop was called: close every client and cancel the accept and the timer; the loop
 * ends when their last completions are in. */
static void begin_stop(struct metrics *m)
{
    m->stopping = true;
    for (uint32_t i = 0; i < METRICS_SLOTS; i++) {
        struct mclient *c = &m->clients[i];
        if (c->phase == MC_REQUEST || c->phase == MC_ANSWER)
            client_close(m, c, MCLOSE_NONE);
    }
    if (m->accept_armed)
        io_uring_prep_cancel64(msqe(m, MOP_CANCEL, 0), mud(MOP_ACCEPT, 0), 0);
    if (m->timer_armed)
        io_uring_prep_timeout_remove(msqe(m, MOP_CANCEL, 0), mud(MOP_TIMER, 0), 0);
}

/* Runs until metrics_stop and the completion of everything in the kernel: the accept or the
 * timer is always in flight before that (the timer whenever the accept is not). */
static void *metrics_thread(void *arg)
{
    struct metrics *m = arg;
    pthread_setname_np(pthread_self(), "nexus-metrics");
    accept_arm(m);
    while (m->inflight > 0) {
        io_uring_submit_and_wait(&m->ring, 1);
        struct io_uring_cqe *cqe;
        while (io_uring_peek_cqe(&m->ring, &cqe) == 0) {
            struct io_uring_cqe copy = *cqe;
            io_uring_cqe_seen(&m->ring, cqe);
            on_cqe(m, &copy);
        }
        if (!m->stopping && atomic_load(&m->stop))
            begin_stop(m);
        if (!m->stopping && !m->timer_armed && (m->used > 0 || !m->accept_armed))
            timer_arm(m);
    }
    NX_ASSERT(m->used == 0);
    return NULL;
}

struct metrics *metrics_start(struct broker *b)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->b = b;
    m->body = malloc(METRICS_BODY_BYTES_MAX);
    char err[256];
    m->fd = m->body ? broker_listen(b->cfg.metrics_host, b->cfg.metrics_port, false, 64, "metrics",
                                    err, sizeof(err))
                    : -ENOMEM;
    if (m->fd < 0) {
        log_error(-1, "metrics: %s", m->body ? err : "out of memory");
        free(m->body);
        free(m);
        return NULL;
    }
    for (uint32_t i = 0; i < METRICS_SLOTS; i++)
        m->clients[i].fd = -1;
    bool ring = io_uring_queue_init(METRICS_RING_ENTRIES, &m->ring, 0) == 0;
    if (!ring || pthread_create(&m->thread, NULL, metrics_thread, m) != 0) {
        log_error(-1, "metrics: cannot start the metrics thread");
        if (ring)
            io_uring_queue_exit(&m->ring);
        close(m->fd);
        free(m->body);
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
    /* Wakes the loop: the accept fails once the socket is shut down (and were the accept not
     * armed, the sweep timer would be). */
    shutdown(m->fd, SHUT_RDWR);
    pthread_join(m->thread, NULL);
    close(m->fd);
    io_uring_queue_exit(&m->ring);
    free(m->body);
    free(m);
}
