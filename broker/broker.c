// SPDX-License-Identifier: Apache-2.0
//
// The shard set: start-up checks (io_uring usable, listeners bound), the rings between every
// ordered pair of shards, the shard threads, shutdown and teardown. Runs on the controlling
// thread (main or a test), except shard_thread(), which is each shard's body.
#include "broker/broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/conn_ws.h"
#include "broker/log.h"
#include "broker/metrics.h"
#include "broker/portlock.h"
#include "broker/shard.h"
#include "broker/store.h"

static int read_int_file(const char *path)
{
    FILE *f = fopen(path, "r");
    int v = -1;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

static int explain(int err, char *msg, size_t cap)
{
    int disabled = read_int_file("/proc/sys/kernel/io_uring_disabled");
    if (err == -ENOSYS) {
        snprintf(msg, cap,
                 "io_uring is not available: this kernel was built without it (CONFIG_IO_URING) "
                 "or is older than 5.1. Fix: run on Linux 6.1 or newer with io_uring enabled.");
    } else if (err == -EPERM && disabled == 2) {
        snprintf(msg, cap,
                 "io_uring is disabled by sysctl kernel.io_uring_disabled=2. Fix: "
                 "`sysctl -w kernel.io_uring_disabled=0` (as root).");
    } else if (err == -EPERM && disabled == 1) {
        snprintf(msg, cap,
                 "io_uring is restricted by sysctl kernel.io_uring_disabled=1 to members of group "
                 "kernel.io_uring_group. Fix: run nexusd in that group, or "
                 "`sysctl -w kernel.io_uring_disabled=0`.");
    } else if (err == -EPERM) {
        snprintf(msg, cap,
                 "io_uring_setup was refused (EPERM), most likely by a seccomp profile (Docker's "
                 "default blocks io_uring). Fix: allow io_uring_setup, io_uring_enter and "
                 "io_uring_register in the profile (e.g. --security-opt seccomp=<profile>).");
    } else if (err == -ENOMEM) {
        struct rlimit rl;
        getrlimit(RLIMIT_MEMLOCK, &rl);
        snprintf(msg, cap,
                 "io_uring could not lock its ring memory (ENOMEM; RLIMIT_MEMLOCK is %llu bytes). "
                 "Fix: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in systemd) or run "
                 "on Linux 5.12+, which accounts ring memory to the cgroup instead.",
                 (unsigned long long)rl.rlim_cur);
    } else if (err == -EINVAL) {
        snprintf(msg, cap,
                 "io_uring rejected the ring set-up (EINVAL): the kernel lacks single-issuer or "
                 "deferred task running (Linux 6.1+) or provided buffer rings (5.19+). Fix: run "
                 "on Linux 6.1 or newer.");
    } else {
        snprintf(msg, cap, "io_uring could not be set up: %s", strerror(-err));
    }
    return err;
}

int broker_probe(char *msg, size_t cap)
{
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int r = io_uring_queue_init_params(8, &ring, &p);
    if (r < 0)
        return explain(r, msg, cap);
    struct io_uring_probe *pr = io_uring_get_probe_ring(&ring);
    static const struct {
        int op;
        const char *name;
    } need[] = {{IORING_OP_ACCEPT, "accept"},
                {IORING_OP_RECV, "recv"},
                {IORING_OP_SENDMSG, "sendmsg"},
                {IORING_OP_TIMEOUT, "timeout"},
                {IORING_OP_ASYNC_CANCEL, "async_cancel"},
                {IORING_OP_MSG_RING, "msg_ring"}};
    r = 0;
    for (size_t i = 0; pr && i < sizeof(need) / sizeof(need[0]); i++) {
        if (!io_uring_opcode_supported(pr, need[i].op)) {
            snprintf(msg, cap,
                     "io_uring lacks the %s operation on this kernel. Fix: run on Linux 6.1 or "
                     "newer.",
                     need[i].name);
            r = -EOPNOTSUPP;
            break;
        }
    }
    if (pr)
        io_uring_free_probe(pr);
    io_uring_queue_exit(&ring);
    return r;
}

int broker_listen(const char *host, uint16_t port, bool reuseport, int backlog, const char *flag,
                  char *err, size_t cap)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    int r = getaddrinfo(host, ps, &hints, &res);
    if (r != 0) {
        snprintf(err, cap, "cannot resolve listen address %s: %s", host, gai_strerror(r));
        return -EINVAL;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, cap, "socket: %s", strerror(e));
        freeaddrinfo(res);
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        char holder[160] = "";
        if (e == EADDRINUSE)
            portlock_holder(port, holder, sizeof(holder));
        snprintf(err, cap, "cannot listen on %s:%u: %s%s%s%s%s%s", host, port, strerror(e),
                 e == EADDRINUSE ? " (another process holds the port: " : "", holder,
                 e == EADDRINUSE ? "; use --" : "", e == EADDRINUSE ? flag : "",
                 e == EADDRINUSE ? ")" : "");
        close(fd);
        freeaddrinfo(res);
        return -e;
    }
    freeaddrinfo(res);
    return fd;
}

static void *shard_thread(void *arg)
{
    struct shard *s = arg;
    struct broker *b = s->broker;
    char name[16];
    snprintf(name, sizeof(name), "nexus-shard-%u", s->index);
    pthread_setname_np(pthread_self(), name);
    oframe_self = (int)s->index;
    int r = shard_init(s);
    const char *what = NULL; /* a failure that is not the ring's, logged where it happened */
    if (r == 0 && (r = store_open(s)) < 0)
        what = "its event log could not be opened (see above)";
    if (r == 0 && core_hooks && core_hooks->shard_init && (r = core_hooks->shard_init(s)) < 0)
        what = r == -ENOMEM ? "the handlers' start-up ran out of memory"
                            : "the handlers' start-up failed";
    if (r == 0)
        store_restore(s); /* the handlers' state, from the event log */
    if (r < 0) {
        char msg[512];
        if (what)
            snprintf(msg, sizeof(msg), "%s", what);
        else
            explain(r, msg, sizeof(msg));
        log_error((int)s->index, "shard start-up failed: %s", msg);
        atomic_store(&b->start_failed, 1);
    }
    /* The barrier and the flag live in the broker, which outlives every shard thread. */
    pthread_barrier_wait(&b->start_barrier);
    if (!atomic_load(&b->start_failed))
        shard_loop(s);
    /* Every shard has left its loop before anyone frees what is in flight between them. */
    pthread_barrier_wait(&s->broker->exit_barrier);
    shard_drain_and_free(s);
    return NULL;
}

static void broker_free(struct broker *b)
{
    for (uint32_t i = 0; i < b->shard_count; i++) {
        struct shard *s = b->shards[i];
        if (!s)
            continue;
        if (s->listen_fd >= 0)
            close(s->listen_fd);
        if (s->ws_listen_fd >= 0)
            close(s->ws_listen_fd);
        free(s);
    }
    for (int cls = 0; cls < 2; cls++)
        for (uint32_t a = 0; a < b->shard_count; a++)
            for (uint32_t d = 0; d < b->shard_count; d++)
                ring_destroy(b->rings[cls][a][d]);
    free(b->shards);
    free(b);
}

/* --pin-cpus: shard i runs on the i-th CPU of the process's affinity mask (so `taskset -c 4-7
 * nexusd --shards 4 --pin-cpus` puts one shard on each of CPUs 4..7). With fewer CPUs than
 * shards the shards wrap around, and the log says so. */
static void pin_shards(struct broker *b)
{
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
        log_warn(-1, "--pin-cpus: cannot read the CPU affinity mask: %s", strerror(errno));
        return;
    }
    int cpus[CPU_SETSIZE], n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n++] = c;
    if (n == 0)
        return;
    if ((uint32_t)n < b->shard_count)
        log_warn(-1, "--pin-cpus: %u shards on %d CPUs: some shards share a CPU", b->shard_count,
                 n);
    for (uint32_t i = 0; i < b->shard_count; i++) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[i % (uint32_t)n], &one);
        int e = pthread_setaffinity_np(b->shards[i]->thread, sizeof(one), &one);
        if (e != 0)
            log_warn(-1, "--pin-cpus: shard %u on CPU %d: %s", i, cpus[i % (uint32_t)n],
                     strerror(e));
        else
            log_info(-1, "shard %u pinned to CPU %d", i, cpus[i % (uint32_t)n]);
    }
}

uint32_t broker_shard_count(const struct config *cfg)
{
    if (cfg->shards)
        return cfg->shards;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > CONFIG_SHARDS_MAX ? CONFIG_SHARDS_MAX : (uint32_t)n;
}

/* The broker record, its rings and its shard records (no thread, no socket yet). Returns
 * NULL if out of memory. */
static struct broker *broker_alloc(const struct config *cfg)
{
    struct broker *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = *cfg;
    b->shard_count = broker_shard_count(cfg);
    b->cfg.shards = b->shard_count;
    b->start_ns = shard_now_ns();
    b->shards = calloc(b->shard_count, sizeof(*b->shards));
    if (!b->shards) {
        free(b);
        return NULL;
    }
    for (int cls = 0; cls < 2; cls++)
        for (uint32_t a = 0; a < b->shard_count; a++)
            for (uint32_t d = 0; d < b->shard_count; d++)
                if (a != d && !(b->rings[cls][a][d] = ring_create(cfg->ring_capacity))) {
                    broker_free(b);
                    return NULL;
                }
    for (uint32_t i = 0; i < b->shard_count; i++) {
        struct shard *s = aligned_alloc(64, (sizeof(struct shard) + 63) & ~(size_t)63);
        if (!s) {
            broker_free(b);
            return NULL;
        }
        memset(s, 0, sizeof(*s));
        s->index = i;
        s->broker = b;
        s->cfg = &b->cfg;
        s->listen_fd = -1;
        s->ws_listen_fd = -1;
        b->shards[i] = s;
    }
    return b;
}

/* Binds the metrics port, then one client listener per shard. Returns 0, or -1 after logging
 * why (the caller frees the broker). */
static int broker_bind(struct broker *b)
{
    /* Metrics first: its port answers before the client port does, so anything that waits
     * for the broker to accept clients can scrape it at once. */
    if (b->cfg.metrics_port && !(b->metrics = metrics_start(b)))
        return -1;
    conn_ws_stats_init();
    /* The WebSocket listeners before the client ones, for the same reason. */
    for (uint32_t i = 0; i < b->shard_count && b->cfg.ws_port; i++) {
        char err[256];
        b->shards[i]->ws_listen_fd = broker_listen(b->cfg.ws_host, b->cfg.ws_port, true, 4096,
                                                   "ws-listen", err, sizeof(err));
        if (b->shards[i]->ws_listen_fd < 0) {
            log_error(-1, "%s", err);
            metrics_stop(b->metrics);
            b->metrics = NULL;
            return -1;
        }
    }
    for (uint32_t i = 0; i < b->shard_count; i++) {
        char err[256];
        b->shards[i]->listen_fd = broker_listen(b->cfg.listen_host, b->cfg.listen_port, true, 4096,
                                                "listen", err, sizeof(err));
        if (b->shards[i]->listen_fd < 0) {
            log_error(-1, "%s", err);
            metrics_stop(b->metrics);
            b->metrics = NULL;
            return -1;
        }
    }
    return 0;
}

struct broker *broker_start(const struct config *cfg)
{
    struct broker *b = broker_alloc(cfg);
    if (!b) {
        log_error(-1, "out of memory creating the shards and their rings");
        return NULL;
    }
    if (broker_bind(b) < 0) {
        broker_free(b);
        return NULL;
    }
    pthread_barrier_init(&b->start_barrier, NULL, b->shard_count + 1);
    pthread_barrier_init(&b->exit_barrier, NULL, b->shard_count);
    for (uint32_t i = 0; i < b->shard_count; i++) {
        if (pthread_create(&b->shards[i]->thread, NULL, shard_thread, b->shards[i]) != 0) {
            /* The barriers count every shard: without its thread nothing can start or stop
             * cleanly. Start-up only, never reachable from a client. */
            log_error(-1, "cannot start shard thread %u: %s", i, strerror(errno));
            abort();
        }
    }
    if (b->cfg.pin_cpus)
        pin_shards(b);
    pthread_barrier_wait(&b->start_barrier);
    if (atomic_load(&b->start_failed)) {
        broker_wait(b);
        return NULL;
    }
    log_info(-1, "nexusd %s listening on %s:%u with %u shards", NEXUS_VERSION, b->cfg.listen_host,
             b->cfg.listen_port, b->shard_count);
    if (b->cfg.ws_port)
        log_info(-1, "WebSocket clients on %s:%u%s", b->cfg.ws_host, b->cfg.ws_port,
                 b->cfg.tls_cert[0] ? " (TLS: wss)" : "");
    return b;
}

void broker_stop(struct broker *b)
{
    atomic_store_explicit(&b->stop, 1, memory_order_relaxed);
}

int broker_wait(struct broker *b)
{
    metrics_stop(b->metrics);
    b->metrics = NULL;
    for (uint32_t i = 0; i < b->shard_count; i++)
        pthread_join(b->shards[i]->thread, NULL);
    for (uint32_t i = 0; i < b->shard_count; i++)
        shard_free_outboxes(b->shards[i]);
    pthread_barrier_destroy(&b->exit_barrier);
    pthread_barrier_destroy(&b->start_barrier);
    broker_free(b);
    return 0;
}
