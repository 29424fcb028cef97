// SPDX-License-Identifier: Apache-2.0
//
// Integration-test harness: starts the real nexusd (path in $NEXUSD, set by CTest) on a free
// loopback port as a child process, waits until it accepts, and stops it with SIGTERM,
// checking that it exits 0. Also: connecting clients, finding a connection on a given shard,
// reading the broker's RSS from /proc. Header-only (static functions) so that each test is one
// self-contained program.
#ifndef NEXUS_TESTS_HARNESS_H
#define NEXUS_TESTS_HARNESS_H

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/nexus_client.h"

struct broker_proc {
    pid_t pid;
    uint16_t port;
    uint32_t shards;
};

static inline int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A port the kernel considers free right now (bind to 0, read it back, release). */
static inline uint16_t h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) < 0) {
        perror("h_free_port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts nexusd with --shards N and the extra flags (NULL-terminated). Exits the test on
 * failure: without a broker nothing can be tested. */
static inline struct broker_proc h_start(uint32_t shards, ...)
{
    struct broker_proc b = {0};
    const char *bin = getenv("NEXUSD");
    if (!bin) {
        fprintf(stderr, "NEXUSD is not set (run the tests through ctest)\n");
        exit(1);
    }
    b.shards = shards;
    for (int attempt = 0; attempt < 5; attempt++) {
        b.port = h_free_port();
        char listen[64], sh[16];
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", b.port);
        snprintf(sh, sizeof(sh), "%u", shards);
        const char *argv[64];
        int n = 0;
        argv[n++] = bin;
        argv[n++] = "--listen";
        argv[n++] = listen;
        argv[n++] = "--shards";
        argv[n++] = sh;
        argv[n++] = "--log-level";
        argv[n++] = getenv("NEXUS_TEST_LOG") ? getenv("NEXUS_TEST_LOG") : "warn";
        va_list ap;
        va_start(ap, shards);
        const char *a;
        while ((a = va_arg(ap, const char *)) && n < 62)
            argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;
        b.pid = fork();
        if (b.pid == 0) {
            execv(bin, (char *const *)argv);
            perror("execv nexusd");
            _exit(127);
        }
        int64_t deadline = h_now_ms() + 10000;
        while (h_now_ms() < deadline) {
            int st;
            if (waitpid(b.pid, &st, WNOHANG) == b.pid)
                break; /* exited: port taken? try another */
            char err[256];
            struct nexus_client *c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
            if (c) {
                nexus_close(c);
                return b;
            }
            usleep(20000);
        }
        kill(b.pid, SIGKILL);
        waitpid(b.pid, NULL, 0);
    }
    fprintf(stderr, "nexusd did not start\n");
    exit(1);
}

/* Stops the broker with SIGTERM. Returns its exit status (0 expected), or -1 if it had to be
 * killed after 15 s. */
static inline int h_stop(struct broker_proc *b)
{
    kill(b->pid, SIGTERM);
    int64_t deadline = h_now_ms() + 15000;
    int st = 0;
    while (h_now_ms() < deadline) {
        pid_t r = waitpid(b->pid, &st, WNOHANG);
        if (r == b->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(b->pid, SIGKILL);
    waitpid(b->pid, NULL, 0);
    return -1;
}

/* True while the broker process is still running. */
static inline int h_alive(struct broker_proc *b)
{
    return waitpid(b->pid, NULL, WNOHANG) == 0;
}

/* The broker's resident set size in bytes, from /proc/PID/status (VmRSS). */
static inline uint64_t h_rss_bytes(const struct broker_proc *b)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)b->pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %lu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Connects and says hello; *shard_id receives the shard holding the connection. */
static inline struct nexus_client *h_connect(const struct broker_proc *b, uint32_t *shard_id)
{
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", b->port, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    struct nexus_frame f;
    if (nexus_hello_sync(c, NULL, "test", &f, 5000) != 1) {
        nexus_close(c);
        return NULL;
    }
    if (shard_id)
        *shard_id = f.u.welcome.shard_id;
    return c;
}

/* Connects until a connection lands on the wanted shard (SO_REUSEPORT spreads connections
 * by a hash of the address pair, so a few tries find each shard). */
static inline struct nexus_client *h_connect_on(const struct broker_proc *b, uint32_t shard)
{
    for (int i = 0; i < 200; i++) {
        uint32_t got;
        struct nexus_client *c = h_connect(b, &got);
        if (!c)
            return NULL;
        if (got == shard)
            return c;
        nexus_close(c);
    }
    return NULL;
}

/* Mirrors the broker's placement: the shard that owns a campaign. */
#include <xxhash.h>
static inline uint32_t h_owner(int64_t campaign, uint32_t shards)
{
    return (uint32_t)(XXH3_64bits(&campaign, sizeof(campaign)) % shards);
}

/* The first campaign id >= from that shard `shard` owns. */
static inline int64_t h_campaign_on(uint32_t shard, uint32_t shards, int64_t from)
{
    for (int64_t c = from;; c++)
        if (h_owner(c, shards) == shard)
            return c;
}

/* ---- helpers added for the integration suite (append-only) --------------------------------- */

#include <stdbool.h>
#include <sys/resource.h>

#include "codec/stats.h"
#include "codec/wire.h"

/* Waits up to timeout_ms for the broker to exit on its own (after a SIGTERM the test sent).
 * Returns its exit status, 128 + signal if it was killed by one, or -1 if it was still running
 * (it is then killed, so that no broker outlives its test). */
static inline int h_wait_exit(struct broker_proc *b, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    int st = 0;
    while (h_now_ms() < deadline) {
        pid_t r = waitpid(b->pid, &st, WNOHANG);
        if (r == b->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(5000);
    }
    kill(b->pid, SIGKILL);
    waitpid(b->pid, NULL, 0);
    return -1;
}

/* Builds a raw frame: length prefix, Frame.correlation (field 1, omitted when 0) and a
 * length-delimited body on field `kind` (any number, known or not). Returns the frame's length
 * (prefix included); out must hold body_len + 32 bytes. */
static inline size_t h_raw_frame(uint8_t *out, uint64_t correlation, uint32_t kind,
                                 const void *body, size_t body_len)
{
    uint8_t *p = out + 4;
    if (correlation)
        p = wire_put_varint_field(p, 1, correlation);
    p = wire_put_len_field(p, kind, body, body_len);
    wire_put_be32(out, (uint32_t)(p - out - 4));
    return (size_t)(p - out);
}

/* Sends a stats frame and decodes the reply into at most cap shard entries. Returns the shard
 * count, or a negative number if no stats reply came within timeout_ms. */
static inline int h_stats(struct nexus_client *c, struct codec_shard_stats *st, uint32_t cap,
                          int timeout_ms)
{
    uint64_t corr = nexus_next_correlation(c);
    if (nexus_send_stats(c, corr) < 0)
        return -1;
    struct nexus_frame f;
    if (nexus_wait_reply(c, corr, &f, timeout_ms) != 1 || f.kind != CODEC_KIND_STATS_REPLY)
        return -2;
    uint64_t rss = 0;
    return codec_stats_reply_decode(f.body.ptr, f.body.len, st, cap, &rss);
}

/* Round trip through the broker on one connection (ping → pong): everything the broker queued
 * on this connection before the pong has been read once it returns 1. Frames that arrive before
 * the pong stay queued for nexus_recv. */
static inline int h_ping(struct nexus_client *c, int timeout_ms)
{
    uint64_t corr = nexus_next_correlation(c);
    if (nexus_send_ping(c, corr, corr * 7) < 0)
        return -1;
    struct nexus_frame f;
    int r = nexus_wait_reply(c, corr, &f, timeout_ms);
    if (r != 1)
        return r;
    return f.kind == CODEC_KIND_PONG && f.u.nonce == corr * 7 ? 1 : -EPROTO;
}

/* True when the slice holds exactly the NUL-terminated string s. */
static inline bool h_slice_eq(struct codec_slice sl, const char *s)
{
    size_t n = strlen(s);
    return sl.len == n && (n == 0 || memcmp(sl.ptr, s, n) == 0);
}

/* True when the slice contains the NUL-terminated string s. */
static inline bool h_slice_has(struct codec_slice sl, const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return true;
    for (size_t i = 0; i + n <= sl.len; i++)
        if (memcmp(sl.ptr + i, s, n) == 0)
            return true;
    return false;
}

/* Raises RLIMIT_NOFILE's soft limit to at least want (children started afterwards, such as the
 * broker, inherit it). Returns 0, or -1 if the hard limit is lower. */
static inline int h_raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want)
        return -1;
    rl.rlim_cur = want;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

/* Brokers started through H_START, so that a failing test (cmocka leaves the test function at
 * the failed assertion) does not leave its broker running: h_teardown kills what is left. */
#define H_TRACKED_MAX 16
static pid_t h_tracked[H_TRACKED_MAX];

static inline struct broker_proc h_track(struct broker_proc b)
{
    for (int i = 0; i < H_TRACKED_MAX; i++) {
        if (h_tracked[i] == 0) {
            h_tracked[i] = b.pid;
            break;
        }
    }
    return b;
}

/* h_start, remembered for h_teardown. */
#define H_START(...) h_track(h_start(__VA_ARGS__))

/* cmocka teardown: kills and reaps every tracked broker still running. A broker h_stop already
 * reaped is not our child any more, so waitpid fails for it and it is left alone. */
static inline int h_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < H_TRACKED_MAX; i++) {
        pid_t pid = h_tracked[i];
        h_tracked[i] = 0;
        if (pid > 0 && waitpid(pid, NULL, WNOHANG) == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    return 0;
}

#endif
