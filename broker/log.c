// SPDX-License-Identifier: Apache-2.0
//
// Implementation of log.h. Records go to stderr. Any thread; the refusal counters of a shard
// belong to that shard's thread.
#include "broker/log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker/check.h"
#include "broker/config.h"

/* Read on every record, written by SIGHUP's reload: relaxed, a record racing a change may go
 * either way. */
static _Atomic int log_min = LOG_INFO;
static int log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level level, int json)
{
    atomic_store_explicit(&log_min, (int)level, memory_order_relaxed);
    log_json = json;
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&log_min, (int)level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&log_min, memory_order_relaxed);
}

const char *log_level_name(enum log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : "?";
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&log_min, memory_order_relaxed);
}

/* Appends s to out as JSON string content. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = 0;
    return n;
}

static void log_emit(enum log_level level, int shard, const char *msg);

void log_write(enum log_level level, int shard, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_emit(level, shard, msg);
}

/* One record, rendered, in one write(2). */
static void log_emit(enum log_level level, int shard, const char *msg)
{

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000) % 1000);

    char line[2600];
    int n;
    if (log_json) {
        char esc[2200];
        json_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line),
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"shard\":%d,\"msg\":\"%s\"}\n", when,
                     level_names[level], shard, esc);
    } else if (shard >= 0) {
        n = snprintf(line, sizeof(line), "%s %-5s shard=%d %s\n", when, level_names[level], shard,
                     msg);
    } else {
        n = snprintf(line, sizeof(line), "%s %-5s %s\n", when, level_names[level], msg);
    }
    if (n > (int)sizeof(line) - 1)
        n = (int)sizeof(line) - 1;
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

/* ---- refused clients --------------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A shard's refusal lines in its current second; its own thread's alone. */
struct refusal_window {
    int64_t start_ns; /* 0: no window open */
    uint32_t lines;
    uint64_t suppressed;
} __attribute__((aligned(64))); /* one cache line per shard: no false sharing */

static struct refusal_window refusals[CONFIG_SHARDS_MAX];

const char *log_peer(int fd, char *out, size_t cap)
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof(sa);
    char ip[INET6_ADDRSTRLEN];
    snprintf(out, cap, "?");
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) < 0)
        return out;
    if (sa.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&sa;
        if (inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip)))
            snprintf(out, cap, "%s:%u", ip, ntohs(a->sin_port));
    } else if (sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&sa;
        if (inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip)))
            snprintf(out, cap, "[%s]:%u", ip, ntohs(a->sin6_port));
    }
    return out;
}

void log_refusal_flush(int shard)
{
    NX_ASSERT(shard >= 0 && shard < CONFIG_SHARDS_MAX);
    struct refusal_window *w = &refusals[shard];
    if (w->start_ns == 0)
        return;
    int64_t age = mono_ns() - w->start_ns;
    if (age < 1000000000)
        return;
    if (w->suppressed)
        log_write(LOG_WARN, shard,
                  "refused clients: %llu similar lines suppressed in the last %lld ms "
                  "(at most %d a second per shard)",
                  (unsigned long long)w->suppressed, (long long)(age / 1000000),
                  LOG_REFUSALS_PER_SEC);
    memset(w, 0, sizeof(*w));
}

void log_refusal(int shard, int fd, const char *fmt, ...)
{
    NX_ASSERT(shard >= 0 && shard < CONFIG_SHARDS_MAX);
    if (!log_enabled(LOG_WARN))
        return;
    struct refusal_window *w = &refusals[shard];
    log_refusal_flush(shard); /* a second that is over is reported before this line */
    if (w->start_ns == 0)
        w->start_ns = mono_ns();
    if (w->lines >= LOG_REFUSALS_PER_SEC) {
        w->suppressed++;
        return;
    }
    w->lines++;
    char peer[LOG_PEER_BYTES], msg[1024];
    int n = snprintf(msg, sizeof(msg), "client peer=%s ", log_peer(fd, peer, sizeof(peer)));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    log_emit(LOG_WARN, shard, msg);
}

void nx_assert_fail(const char *file, int line, const char *expr)
{
    /* No allocation and no log lock: the process state is already suspect. */
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}
