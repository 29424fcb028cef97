// SPDX-License-Identifier: Apache-2.0
//
// Blocking socket helpers for setting up benchmark connections (connect, handshake,
// subscribe) before the measured run, each bounded by a deadline. Main thread only; the
// workers take the sockets over afterwards in non-blocking mode.
#include "bench/bench.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int wait_fd(const struct bench_setup *s, short events)
{
    int64_t left = s->deadline_ns - bench_now_ns();
    if (left <= 0)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = s->fd, .events = events};
    int r = poll(&p, 1, (int)(left / 1000000) + 1);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    return r == 0 ? -ETIMEDOUT : 1;
}

int bench_setup_send(struct bench_setup *s, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        long n = bench_io_send(s->fd, s->ssl, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && n != -EAGAIN)
            return (int)n;
        int r = wait_fd(s, POLLOUT);
        if (r < 0)
            return r;
    }
    return 0;
}

int bench_setup_fill(struct bench_setup *s)
{
    if (s->len == sizeof(s->buf))
        return -ENOBUFS;
    for (;;) {
        bool want_out;
        long n = bench_io_recv(s->fd, s->ssl, s->buf + s->len, sizeof(s->buf) - s->len, &want_out);
        if (n >= 0) {
            s->len += (size_t)n;
            return (int)n;
        }
        if (n != -EAGAIN)
            return (int)n;
        int r = wait_fd(s, want_out ? POLLOUT : POLLIN);
        if (r < 0)
            return r;
    }
}

void bench_setup_consume(struct bench_setup *s, size_t n)
{
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}
