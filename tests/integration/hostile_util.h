// SPDX-License-Identifier: Apache-2.0
//
// Helpers for hostile_test.c: raw sockets that speak just enough of the framing to attack the
// broker (announce a frame and never finish it, read an error frame off a socket without a
// client library), /proc readings of the broker process (RSS, CPU ticks, descriptors), a
// Prometheus scrape of one counter, and capturing the broker's stderr. Include after cmocka.h
// and harness.h: the helpers that check use cmocka's assertions.
#ifndef NEXUS_TESTS_HOSTILE_UTIL_H
#define NEXUS_TESTS_HOSTILE_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>

#include "harness.h"

/* Under AddressSanitizer the broker runs several times slower and its allocator keeps freed
 * memory in a quarantine: time bounds get HX_SLACK_MS more, and checks that memory is given
 * back are skipped (the quarantine holds it by design). */
#if defined(__SANITIZE_ADDRESS__)
#define HX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HX_ASAN 1
#endif
#endif
#ifndef HX_ASAN
#define HX_ASAN 0
#endif
#define HX_SLACK_MS (HX_ASAN ? 400 : 0)

#define HX_MIB (1024.0 * 1024.0)

/* ---- the broker process, from /proc --------------------------------------------------------- */

/* utime + stime of pid in clock ticks (fields 14 and 15 of /proc/PID/stat), or -1. */
static inline long long hx_cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name (field 2) is in parentheses and may hold spaces: count from its end. */
    const char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* After ")": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
     * utime(14) stime(15). */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

/* Open descriptors of pid (entries of /proc/PID/fd), or -1. */
static inline int hx_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The broker's RSS in MiB. */
static inline double hx_rss_mib(const struct broker_proc *b)
{
    return (double)h_rss_bytes(b) / HX_MIB;
}

/* ---- starting the broker with a low descriptor limit ---------------------------------------- */

/* h_start with RLIMIT_NOFILE set to `nofile` in the broker only (lowering this process's own
 * limit around h_start would starve its start-up probe when it holds many sockets);
 * remembered for h_teardown. flags: NULL-terminated. */
static inline struct broker_proc hx_start_nofile(uint32_t shards, rlim_t nofile,
                                                 const char *const *flags)
{
    return h_track(h_start_flags(shards, nofile, flags));
}

/* ---- raw sockets ---------------------------------------------------------------------------- */

/* A blocking TCP connection to 127.0.0.1:port (close-on-exec, TCP_NODELAY, sends give up after
 * 2 s so that a broker that stops reading cannot hang the test). Returns the socket or -errno. */
static inline int hx_tcp_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Writes all of buf (or fails). Returns 0 or -errno (-EPIPE, -ECONNRESET once the broker has
 * closed the connection; -EAGAIN if a send timed out). */
static inline int hx_send_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes before deadline_ms (h_now_ms). Returns 1, 0 on timeout, -ECONNRESET
 * at end of file or reset, other -errno. */
static inline int hx_read_exact(int fd, uint8_t *buf, size_t len, int64_t deadline_ms)
{
    size_t have = 0;
    while (have < len) {
        int64_t left = deadline_ms - h_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (pr <= 0)
            continue;
        ssize_t n = recv(fd, buf + have, len - have, 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return errno == ECONNRESET || errno == EPIPE ? -ECONNRESET : -errno;
        }
        have += (size_t)n;
    }
    return 1;
}

/* Reads one frame from a raw socket into buf (cap bytes) and decodes its envelope. Waits up to
 * timeout_ms for the frame to start; once it has, the rest is read whole (the broker writes
 * frames whole), so a timeout never leaves the stream in the middle of a frame. Returns 1, 0 on
 * timeout, -ECONNRESET when the broker closed the connection, -EMSGSIZE or -EBADMSG. */
static inline int hx_recv_frame(int fd, uint8_t *buf, size_t cap, struct codec_envelope *env,
                                int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, timeout_ms);
    if (pr < 0)
        return -errno;
    if (pr == 0)
        return 0;
    int64_t deadline = h_now_ms() + 5000;
    uint8_t hdr[4];
    int r = hx_read_exact(fd, hdr, 4, deadline);
    if (r != 1)
        return r == 0 ? -ECONNRESET : r; /* part of a frame and then silence: as good as closed */
    uint32_t len =
        ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) | hdr[3];
    if (len == 0 || len > cap)
        return -EMSGSIZE;
    r = hx_read_exact(fd, buf, len, deadline);
    if (r != 1)
        return r == 0 ? -ECONNRESET : r;
    char err[CODEC_ERR_BYTES];
    return codec_envelope_decode(buf, len, env, err) < 0 ? -EBADMSG : 1;
}

/* Outcome of reading a raw socket until the broker closes it. */
struct hx_closed {
    int errors;        /* error frames read */
    char code[40];     /* the last error's code */
    char message[200]; /* and its message */
    uint64_t corr;     /* and its correlation */
    int pings;         /* ping frames (correlation 0) read before it */
    int other;         /* any other frame */
    bool closed;       /* end of file or reset seen */
    int64_t closed_at; /* h_now_ms() when it was */
};

/* Reads fd until end of file (or timeout_ms), collecting what came. */
static inline struct hx_closed hx_read_to_close(int fd, int timeout_ms)
{
    struct hx_closed o;
    memset(&o, 0, sizeof(o));
    int64_t deadline = h_now_ms() + timeout_ms;
    static uint8_t buf[65536];
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0)
            return o;
        struct codec_envelope env;
        int r = hx_recv_frame(fd, buf, sizeof(buf), &env, (int)left);
        if (r == 0)
            return o;
        if (r < 0) {
            o.closed = r == -ECONNRESET;
            o.closed_at = h_now_ms();
            return o;
        }
        if (env.kind == CODEC_KIND_PING && env.correlation == 0) {
            o.pings++;
        } else if (env.kind == CODEC_KIND_ERROR) {
            struct codec_error_in e;
            char err[CODEC_ERR_BYTES];
            if (codec_error_decode(env.body.ptr, env.body.len, &e, err) < 0) {
                o.other++;
                continue;
            }
            o.errors++;
            o.corr = env.correlation;
            snprintf(o.code, sizeof(o.code), "%.*s", (int)e.code.len, (const char *)e.code.ptr);
            snprintf(o.message, sizeof(o.message), "%.*s", (int)e.message.len,
                     (const char *)e.message.ptr);
        } else {
            o.other++;
        }
    }
}

/* True once the broker has shut the connection down (FIN or reset), checked without reading
 * anything: POLLRDHUP fires on the peer's FIN even with unread data queued. Waits at most
 * timeout_ms (0: just looks). */
static inline bool hx_peer_closed(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, timeout_ms) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* ---- client-side checks --------------------------------------------------------------------- */

/* Expects the next frame for correlation corr (corr 0: the next frame at all) to be an error
 * with `code`. Returns the elapsed milliseconds. */
static inline int64_t hx_expect_error(struct nexus_client *c, uint64_t corr, const char *code,
                                      int timeout_ms)
{
    int64_t t0 = h_now_ms();
    struct nexus_frame f;
    int r = corr ? nexus_wait_reply(c, corr, &f, timeout_ms) : nexus_recv(c, &f, timeout_ms);
    if (r != 1)
        fail_msg("no error frame for correlation %llu (expected %s): r=%d",
                 (unsigned long long)corr, code, r);
    if (f.kind != CODEC_KIND_ERROR)
        fail_msg("expected error %s, got frame kind %u", code, f.kind);
    if (!h_slice_eq(f.u.error.code, code))
        fail_msg("expected error %s, got %.*s: %.*s", code, (int)f.u.error.code.len,
                 (const char *)f.u.error.code.ptr, (int)f.u.error.message.len,
                 (const char *)f.u.error.message.ptr);
    assert_int_equal(f.correlation, corr);
    return h_now_ms() - t0;
}

/* The broker closed c: nothing but the end of the stream is left. */
static inline void hx_expect_closed(struct nexus_client *c, int timeout_ms)
{
    struct nexus_frame f;
    int r = nexus_recv(c, &f, timeout_ms);
    if (r != -ECONNRESET)
        fail_msg("connection not closed: r=%d kind=%u", r, r == 1 ? f.kind : 0);
}

/* The broker is alive and serves a fresh client: hello, then a ping round trip. */
static inline void hx_assert_up(struct broker_proc *b)
{
    assert_true(h_alive(b));
    struct nexus_client *c = h_connect(b, NULL);
    if (!c)
        fail_msg("a fresh client could not connect and say hello");
    assert_int_equal(h_ping(c, 5000), 1);
    nexus_close(c);
}

/* Sum of the connections every shard reports, from a stats frame on c. */
static inline uint64_t hx_connections(struct nexus_client *c, uint32_t shards)
{
    struct codec_shard_stats st[8];
    int n = h_stats(c, st, 8, 5000);
    assert_int_equal(n, (int)shards);
    uint64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += st[i].connections;
    return sum;
}

/* A raw-socket client's loop step: reads what fd has received within wait_ms (then whatever
 * follows at once) and answers every ping with a pong carrying its correlation and nonce; other
 * frames go to on_other (NULL: dropped). Raw, because the client library answers the broker's
 * pings by itself and never shows them. Returns the pings answered, or -1 if the connection was
 * lost. */
static inline int hx_answer_pings(int fd, int wait_ms,
                                  void (*on_other)(const struct codec_envelope *, void *),
                                  void *arg)
{
    static uint8_t buf[65536];
    int answered = 0;
    for (int first = 1;; first = 0) {
        struct codec_envelope env;
        int r = hx_recv_frame(fd, buf, sizeof(buf), &env, first ? wait_ms : 0);
        if (r == 0)
            return answered;
        if (r < 0)
            return -1;
        if (env.kind == CODEC_KIND_PING) {
            uint64_t nonce;
            char err[CODEC_ERR_BYTES];
            uint8_t out[CODEC_CONTROL_BYTES_MAX];
            if (codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, err) < 0)
                return -1;
            int n = codec_pong_encode(out, sizeof(out), env.correlation, nonce);
            if (n <= 0 || hx_send_all(fd, out, (size_t)n) < 0)
                return -1;
            answered++;
        } else if (on_other) {
            on_other(&env, arg);
        }
    }
}

/* ---- metrics -------------------------------------------------------------------------------- */

/* "127.0.0.1:PORT" for --metrics, on a free port. */
static inline uint16_t hx_metrics_addr(char *out, size_t cap)
{
    uint16_t port = h_free_port();
    snprintf(out, cap, "127.0.0.1:%u", port);
    return port;
}

/* GETs /metrics and sums the samples of `name` whose labels contain `label` (NULL: all), over
 * the shards. Returns -1 if the scrape failed. */
static inline double hx_metric_label(uint16_t mport, const char *name, const char *label)
{
    int fd = hx_tcp_connect(mport);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    static char text[1 << 20];
    size_t have = 0;
    ssize_t r;
    if (hx_send_all(fd, req, sizeof(req) - 1) < 0) {
        close(fd);
        return -1;
    }
    while (have < sizeof(text) - 1 && (r = read(fd, text + have, sizeof(text) - 1 - have)) > 0)
        have += (size_t)r;
    close(fd);
    text[have] = 0;
    if (strncmp(text, "HTTP/1.1 200", 12) != 0)
        return -1;
    double sum = 0;
    size_t nl = strlen(name);
    for (char *p = text; p && *p;) {
        char *eol = strchr(p, '\n');
        if (eol)
            *eol = 0;
        if (strncmp(p, name, nl) == 0 && (p[nl] == '{' || p[nl] == ' ')) {
            const char *close_b = p[nl] == '{' ? strchr(p, '}') : NULL;
            bool has = !label ||
                       (close_b && memmem(p, (size_t)(close_b - p), label, strlen(label)) != NULL);
            const char *v = p[nl] == '{' ? close_b : p + nl;
            if (has && v)
                sum += strtod(v + 1, NULL);
        }
        p = eol ? eol + 1 : NULL;
    }
    return sum;
}

/* hx_metric_label of every sample of `name`. */
static inline double hx_metric(uint16_t mport, const char *name)
{
    return hx_metric_label(mport, name, NULL);
}

/* ---- the broker's stderr -------------------------------------------------------------------- */

/* Points this process's stderr at a fresh temporary file, so that a broker started now inherits
 * it. Returns the saved stderr (close-on-exec) for hx_stderr_restore; *log_fd receives a
 * descriptor of the file for reading its size (close-on-exec). */
static inline int hx_stderr_capture(int *log_fd)
{
    char path[] = "/tmp/nexus-hostile-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = fcntl(2, F_DUPFD_CLOEXEC, 3);
    assert_true(saved >= 0);
    assert_true(dup2(fd, 2) == 2);
    *log_fd = fd;
    return saved;
}

static inline void hx_stderr_restore(int saved)
{
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
}

/* Marks every descriptor of this process above stderr close-on-exec, so that a broker started
 * next inherits none of them (a test that failed earlier may have left sockets open, and under
 * a low descriptor limit they would take the broker's room). */
static inline void hx_cloexec_all(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != dirfd(d))
            fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
    }
    closedir(d);
}

/* Size of the file behind fd, in bytes. */
static inline long long hx_file_size(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
}

/* Reads the whole file behind fd (NUL-terminated, malloc'd). */
static inline char *hx_file_text(int fd)
{
    long long n = hx_file_size(fd);
    char *s = malloc(n > 0 ? (size_t)n + 1 : 1);
    assert_non_null(s);
    ssize_t got = n > 0 ? pread(fd, s, (size_t)n, 0) : 0;
    s[got > 0 ? got : 0] = 0;
    return s;
}

/* Occurrences of needle in s. */
static inline int hx_count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

#endif
