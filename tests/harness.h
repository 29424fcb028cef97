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
#include <sys/resource.h>
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

/* Starts nexusd with --shards N and the extra flags (a NULL-terminated array); nofile, when
 * not 0, is RLIMIT_NOFILE for the broker only (set in the child between fork and exec).
 * Exits the test on failure: without a broker nothing can be tested. */
static inline struct broker_proc h_start_flags(uint32_t shards, rlim_t nofile,
                                               const char *const *flags)
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
        for (int i = 0; flags && flags[i] && n < 62; i++)
            argv[n++] = flags[i];
        argv[n] = NULL;
        fflush(NULL);
        b.pid = fork();
        if (b.pid == 0) {
            if (nofile) {
                struct rlimit rl;
                getrlimit(RLIMIT_NOFILE, &rl);
                rl.rlim_cur = nofile;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                    _exit(126);
            }
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

/* h_start_flags with the extra flags as arguments (NULL-terminated). */
static inline struct broker_proc h_start(uint32_t shards, ...)
{
    const char *flags[64];
    int n = 0;
    va_list ap;
    va_start(ap, shards);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 63)
        flags[n++] = a;
    va_end(ap);
    flags[n] = NULL;
    return h_start_flags(shards, 0, flags);
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

/* ---- child processes: command line tools under test (append-only) --------------------------- */

#include <fcntl.h>
#include <poll.h>

/* A child process whose stdout and stderr are captured (stdin is /dev/null). out and err hold
 * everything read so far, NUL-terminated. */
struct h_child {
    pid_t pid;
    int out_fd, err_fd; /* -1 once at end of file */
    char *out, *err;
    size_t out_len, err_len, out_cap, err_cap;
};

/* Starts argv[0] (a path, or a name looked up in PATH). Returns 0, or -1 if it could not be
 * started (a failed exec shows as exit status 127). */
static inline int h_child_start(struct h_child *ch, const char *const *argv)
{
    int po[2], pe[2];
    memset(ch, 0, sizeof(*ch));
    ch->out_fd = ch->err_fd = -1;
    /* O_CLOEXEC: a second child must not inherit the first one's pipes, or their end of file
     * would wait for it. dup2 below clears the flag on the child's own 1 and 2. */
    if (pipe2(po, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    fflush(NULL);
    ch->pid = fork();
    if (ch->pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    if (ch->pid < 0) {
        close(po[0]);
        close(pe[0]);
        return -1;
    }
    ch->out_fd = po[0];
    ch->err_fd = pe[0];
    ch->out = calloc(1, 1);
    ch->err = calloc(1, 1);
    return ch->out && ch->err ? 0 : -1;
}

static inline void h_child_append(char **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 4096;
        while (ncap < *len + n + 1)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb) {
            fprintf(stderr, "h_child_append: out of memory\n");
            exit(1);
        }
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = 0;
}

/* Reads what the child has written, waiting up to timeout_ms for something. Returns 1 once
 * both pipes are at end of file, else 0. */
static inline int h_child_pump(struct h_child *ch, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = ch->out_fd, .events = POLLIN},
                          {.fd = ch->err_fd, .events = POLLIN}};
    if (ch->out_fd < 0 && ch->err_fd < 0)
        return 1;
    if (poll(p, 2, timeout_ms) <= 0)
        return 0;
    for (int i = 0; i < 2; i++) {
        if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        char buf[4096];
        ssize_t n = read(p[i].fd, buf, sizeof(buf));
        if (n > 0) {
            if (i == 0)
                h_child_append(&ch->out, &ch->out_len, &ch->out_cap, buf, (size_t)n);
            else
                h_child_append(&ch->err, &ch->err_len, &ch->err_cap, buf, (size_t)n);
        } else if (n == 0 || errno != EINTR) {
            close(p[i].fd);
            if (i == 0)
                ch->out_fd = -1;
            else
                ch->err_fd = -1;
        }
    }
    return ch->out_fd < 0 && ch->err_fd < 0;
}

/* Waits until the child's stdout (which = 1) or stderr (2) contains needle. Returns true if it
 * did within timeout_ms. */
static inline bool h_child_wait_for(struct h_child *ch, int which, const char *needle,
                                    int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        if (strstr(which == 1 ? ch->out : ch->err, needle))
            return true;
        int64_t left = deadline - h_now_ms();
        if (left <= 0 || h_child_pump(ch, (int)(left < 50 ? left : 50)) == 1) {
            h_child_pump(ch, 0);
            return strstr(which == 1 ? ch->out : ch->err, needle) != NULL;
        }
    }
}

/* Reads to end of file and reaps the child. Returns its exit status, 128 + the signal that
 * ended it, or -1 if it had not finished within timeout_ms (it is then killed). */
static inline int h_child_finish(struct h_child *ch, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    while (h_now_ms() < deadline && h_child_pump(ch, 50) == 0) {
    }
    int st = 0;
    while (h_now_ms() < deadline) {
        pid_t r = waitpid(ch->pid, &st, WNOHANG);
        if (r == ch->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(5000);
    }
    kill(ch->pid, SIGKILL);
    waitpid(ch->pid, NULL, 0);
    return -1;
}

static inline void h_child_free(struct h_child *ch)
{
    if (ch->out_fd >= 0)
        close(ch->out_fd);
    if (ch->err_fd >= 0)
        close(ch->err_fd);
    free(ch->out);
    free(ch->err);
    memset(ch, 0, sizeof(*ch));
    ch->out_fd = ch->err_fd = -1;
}

/* Runs argv to completion, capturing its output in *ch (h_child_free it). Returns the exit
 * status as h_child_finish does, or -1 if it could not be started. */
static inline int h_run(struct h_child *ch, const char *const *argv, int timeout_ms)
{
    if (h_child_start(ch, argv) < 0)
        return -1;
    return h_child_finish(ch, timeout_ms);
}

/* Number of lines of s (each ended by '\n'). */
static inline int h_count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Copies line i (0-based, without its '\n') of s into out. Returns true if there is one. */
static inline bool h_line(const char *s, int i, char *out, size_t cap)
{
    for (; i > 0 && *s; s++)
        if (*s == '\n')
            i--;
    if (!*s)
        return false;
    size_t n = strcspn(s, "\n");
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = 0;
    return true;
}

#endif
