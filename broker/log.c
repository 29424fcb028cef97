// SPDX-License-Identifier: Apache-2.0
//
// Implementation of log.h. Records go to stderr. Any thread.
#include "broker/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/check.h"

static enum log_level log_min = LOG_INFO;
static int log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_setup(enum log_level level, int json)
{
    log_min = level;
    log_json = json;
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
    return level >= log_min;
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

void log_write(enum log_level level, int shard, const char *fmt, ...)
{
    if (level < log_min)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

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

void nx_assert_fail(const char *file, int line, const char *expr)
{
    /* No allocation and no log lock: the process state is already suspect. */
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}
