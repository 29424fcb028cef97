// SPDX-License-Identifier: Apache-2.0
//
// nexus-ws-bench: fanout over WebSocket against TCP, one client for all four ways, so that the
// transport is the only difference: Nexus over its TCP port, Nexus over --ws-listen, NATS core
// over TCP, NATS over nats-server's WebSocket listener (`websocket { port: N, no_tls: true }`).
// One publisher (a thread, batches of frames, at most --window events ahead of the slowest
// subscriber) and --subscribers subscribers (a thread each) on one campaign / subject; each
// event carries a 64-byte text record (sequence, send time), checked for order at every
// subscriber. Reports deliveries per second (all subscribers), publishes per second and the
// latency of sampled deliveries (at max rate this is queueing time, bounded by the window).
//
// WebSocket here is RFC 6455 from the client side: the upgrade, client frames masked (with a
// zero key: legal, and the payload needs no rewriting), server frames deframed into the same
// byte stream the TCP form carries (Nexus: [length][frame] per message; NATS: its text
// protocol, which may span messages). Threading: each connection belongs to one thread; the
// counters are relaxed atomics with one writer each.
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client/nexus_client.h"
#include "codec/envelope.h"
#include "codec/wire.h"

#define SUBS_MAX    256
#define BATCH       32      /* frames per publisher write */
#define RECORD_LEN  64      /* "NXB" + 16 hex sequence + 16 hex send time + padding */
#define LAT_SAMPLES 1000000 /* per subscriber: every 16th delivery of the measured window */

enum mode { NEXUS_TCP, NEXUS_WS, NATS_TCP, NATS_WS };
static const char *const mode_names[] = {"nexus-tcp", "nexus-ws", "nats-tcp", "nats-ws"};

static struct {
    enum mode mode;
    char host[128];
    uint16_t port;
    int subs;
    double warmup_s, duration_s;
    uint64_t window;
    int broker_pid;
    int threads; /* subscriber threads */
    bool json;
} cfg = {NEXUS_WS, "127.0.0.1", 0, 10, 1.0, 5.0, 8192, 0, 1, false};

static bool is_ws(void)
{
    return cfg.mode == NEXUS_WS || cfg.mode == NATS_WS;
}
static bool is_nexus(void)
{
    return cfg.mode == NEXUS_TCP || cfg.mode == NEXUS_WS;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nexus-ws-bench: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(3);
}

/* ---- a connection: TCP, or WebSocket over it --------------------------------------------- */

struct xconn {
    int fd;
    uint8_t *raw; /* bytes read, not yet deframed (WebSocket) */
    size_t raw_len;
    uint8_t *in; /* the protocol's byte stream: [in_off, in_len) not parsed yet */
    size_t in_off, in_len;
    uint8_t *out; /* framing scratch of sends */
    size_t out_cap;
};

#define XBUF (4u << 20)

static void send_all(struct xconn *c, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = send(c->fd, b, n, MSG_NOSIGNAL);
        if (k <= 0)
            die("send: %s", k < 0 ? strerror(errno) : "closed");
        b += k;
        n -= (size_t)k;
    }
}

/* A client frame header (FIN, binary, masked with the zero key) for len payload bytes. */
static size_t ws_header(uint8_t *h, uint8_t op, size_t len)
{
    size_t n = 0;
    h[n++] = (uint8_t)(0x80 | op);
    if (len < 126) {
        h[n++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xffff) {
        h[n++] = 0x80 | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    memset(h + n, 0, 4); /* the masking key: zero, so the payload is sent as it is */
    return n + 4;
}

/* Sends one protocol unit: a Nexus frame (length prefix included: over WebSocket the prefix
 * is replaced by the frame header) or NATS text. */
static void xsend(struct xconn *c, const uint8_t *p, size_t n)
{
    if (!is_ws()) {
        send_all(c, p, n);
        return;
    }
    if (is_nexus()) {
        p += 4;
        n -= 4;
    }
    uint8_t h[14];
    size_t hl = ws_header(h, 0x2, n);
    if (hl + n > c->out_cap) {
        c->out_cap = hl + n;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out, h, hl);
    memcpy(c->out + hl, p, n);
    send_all(c, c->out, hl + n);
}

/* Appends to the protocol stream (compacting it first). */
static void stream_put(struct xconn *c, const uint8_t *p, size_t n)
{
    if (c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len + n > XBUF)
        die("%s", "stream buffer overflow");
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
}

/* Server frames in c->raw into the stream: a Nexus message becomes [length][frame]. Pings are
 * answered; a close ends the run. */
static void ws_deframe(struct xconn *c)
{
    size_t pos = 0;
    while (c->raw_len - pos >= 2) {
        const uint8_t *f = c->raw + pos;
        uint8_t op = f[0] & 0x0f;
        size_t h = 2, len = f[1] & 0x7f;
        if (len == 126)
            h = 4;
        else if (len == 127)
            h = 10;
        if (c->raw_len - pos < h)
            break;
        if (h == 4)
            len = (size_t)f[2] << 8 | f[3];
        else if (h == 10)
            for (int i = 0; i < 8; i++)
                len = (i ? len << 8 : 0) | f[2 + i];
        if (c->raw_len - pos < h + len)
            break;
        if (op == 0x8)
            die("%s", "the server closed the WebSocket");
        if (op == 0x9) {
            uint8_t pong[14 + 125];
            size_t hl = ws_header(pong, 0xA, len);
            memcpy(pong + hl, f + h, len);
            send_all(c, pong, hl + len);
        } else if (op == 0x1 || op == 0x2 || op == 0x0) {
            if (is_nexus()) {
                uint8_t be[4];
                wire_put_be32(be, (uint32_t)len);
                stream_put(c, be, 4);
            }
            stream_put(c, f + h, len);
        }
        pos += h + len;
    }
    memmove(c->raw, c->raw + pos, c->raw_len - pos);
    c->raw_len -= pos;
}

/* Reads once (blocking) into the stream. Returns false when the peer closed. */
static bool xrecv(struct xconn *c)
{
    uint8_t *dst = is_ws() ? c->raw + c->raw_len : NULL;
    size_t room = is_ws() ? XBUF - c->raw_len : 0;
    if (!is_ws()) {
        if (c->in_off) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        dst = c->in + c->in_len;
        room = XBUF - c->in_len;
    }
    ssize_t k = recv(c->fd, dst, room, 0);
    if (k <= 0)
        return false;
    if (!is_ws()) {
        c->in_len += (size_t)k;
        return true;
    }
    c->raw_len += (size_t)k;
    ws_deframe(c);
    return true;
}

static struct xconn *xopen(void)
{
    char err[256];
    struct xconn *c = calloc(1, sizeof(*c));
    c->fd = nexus_tcp_connect(cfg.host, cfg.port, err, sizeof(err));
    if (c->fd < 0)
        die("connect: %s", err);
    c->raw = malloc(XBUF);
    c->in = malloc(XBUF);
    if (!is_ws())
        return c;
    char req[512];
    int n =
        snprintf(req, sizeof(req),
                 "GET / HTTP/1.1\r\nHost: %s:%u\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 cfg.host, cfg.port);
    send_all(c, req, (size_t)n);
    for (;;) {
        ssize_t k = recv(c->fd, c->raw + c->raw_len, XBUF - c->raw_len, 0);
        if (k <= 0)
            die("%s", "the upgrade got no answer");
        c->raw_len += (size_t)k;
        uint8_t *end = memmem(c->raw, c->raw_len, "\r\n\r\n", 4);
        if (!end)
            continue;
        if (memcmp(c->raw, "HTTP/1.1 101", 12) != 0)
            die("upgrade refused: %.60s", (const char *)c->raw);
        size_t used = (size_t)(end + 4 - c->raw);
        memmove(c->raw, c->raw + used, c->raw_len - used);
        c->raw_len -= used;
        ws_deframe(c);
        return c;
    }
}

/* ---- the protocols: set-up ---------------------------------------------------------------- */

/* The next whole Nexus frame of the stream (blocking): *body and its length. */
static void nexus_next(struct xconn *c, const uint8_t **frame, uint32_t *len)
{
    for (;;) {
        size_t have = c->in_len - c->in_off;
        if (have >= 4) {
            uint32_t l = wire_get_be32(c->in + c->in_off);
            if (have >= 4 + (size_t)l) {
                *frame = c->in + c->in_off + 4;
                *len = l;
                c->in_off += 4 + l;
                return;
            }
        }
        if (!xrecv(c))
            die("%s", "nexusd closed the connection");
    }
}

static void nexus_wait(struct xconn *c, uint32_t kind)
{
    for (;;) {
        const uint8_t *f;
        uint32_t l;
        nexus_next(c, &f, &l);
        struct codec_envelope env;
        char err[CODEC_ERR_BYTES];
        if (codec_envelope_decode(f, l, &env, err) < 0)
            die("bad frame: %s", err);
        if (env.kind == CODEC_KIND_ERROR)
            die("%s", "nexusd answered with an error frame");
        if (env.kind == kind)
            return;
    }
}

/* Reads NATS lines until one starts with want (PING answered). */
static void nats_wait(struct xconn *c, const char *want)
{
    for (;;) {
        uint8_t *p = c->in + c->in_off;
        uint8_t *nl = memchr(p, '\n', c->in_len - c->in_off);
        if (!nl) {
            if (!xrecv(c))
                die("%s", "nats-server closed the connection");
            continue;
        }
        size_t l = (size_t)(nl - p) + 1;
        c->in_off += l;
        if (l >= 4 && !memcmp(p, "-ERR", 4))
            die("nats: %.80s", (const char *)p);
        if (l >= 4 && !memcmp(p, "PING", 4))
            xsend(c, (const uint8_t *)"PONG\r\n", 6);
        if (!strncmp((const char *)p, want, strlen(want)))
            return;
    }
}

#define CAMPAIGN 424242
#define SUBJECT  "wsb.424242"

static struct xconn *greet_and_subscribe(bool subscribe)
{
    struct xconn *c = xopen();
    uint8_t f[512];
    if (is_nexus()) {
        int n = codec_hello_encode(f, sizeof(f), 1, 1, NULL, NULL);
        xsend(c, f, (size_t)n);
        nexus_wait(c, CODEC_KIND_WELCOME);
        if (subscribe) {
            n = codec_subscribe_encode(f, sizeof(f), 2, CAMPAIGN, NULL, 0, NULL);
            xsend(c, f, (size_t)n);
            nexus_wait(c, CODEC_KIND_SUBSCRIBE_ACK);
        }
        return c;
    }
    nats_wait(c, "INFO");
    const char *connect = "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n";
    xsend(c, (const uint8_t *)connect, strlen(connect));
    nats_wait(c, "PONG");
    if (subscribe) {
        const char *sub = "SUB " SUBJECT " 1\r\nPING\r\n";
        xsend(c, (const uint8_t *)sub, strlen(sub));
        nats_wait(c, "PONG");
    }
    return c;
}

/* ---- the run ------------------------------------------------------------------------------ */

static _Atomic int stop;
static _Atomic int measuring; /* 1 during the measured window */
static _Atomic uint64_t published;

struct sub {
    struct xconn *c;
    _Atomic uint64_t received; /* in order, all */
    _Atomic uint64_t measured; /* in order, during the measured window */
    _Atomic uint64_t disorder;
    uint64_t next;
    uint32_t *lat_us;
    uint32_t lat_n;
};
static struct sub subs[SUBS_MAX];

static uint64_t hex16(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++)
        v = v << 4 | (uint64_t)(p[i] <= '9' ? p[i] - '0' : p[i] - 'a' + 10);
    return v;
}

static void put_hex16(uint8_t *p, uint64_t v)
{
    for (int i = 15; i >= 0; i--, v >>= 4)
        p[i] = (uint8_t) "0123456789abcdef"[v & 15];
}

static void on_record(struct sub *s, const uint8_t *rec)
{
    uint64_t seq = hex16(rec + 3);
    if (seq != s->next) {
        atomic_fetch_add_explicit(&s->disorder, 1, memory_order_relaxed);
        if (seq < s->next)
            return;
    }
    s->next = seq + 1;
    atomic_store_explicit(&s->received, s->received + 1, memory_order_relaxed);
    if (atomic_load_explicit(&measuring, memory_order_relaxed)) {
        atomic_store_explicit(&s->measured, s->measured + 1, memory_order_relaxed);
        if ((seq & 15) == 0 && s->lat_n < LAT_SAMPLES)
            s->lat_us[s->lat_n++] = (uint32_t)((now_ns() - (int64_t)hex16(rec + 19)) / 1000);
    }
}

/* Parses what the stream holds: Nexus frames (events carry the record in their payload). */
static void parse_nexus(struct sub *s)
{
    struct xconn *c = s->c;
    for (;;) {
        size_t have = c->in_len - c->in_off;
        if (have < 4)
            return;
        uint32_t l = wire_get_be32(c->in + c->in_off);
        if (have < 4 + (size_t)l)
            return;
        const uint8_t *f = c->in + c->in_off + 4;
        c->in_off += 4 + l;
        const uint8_t *rec = memmem(f, l, "NXB", 3);
        if (rec && f + l - rec >= RECORD_LEN)
            on_record(s, rec);
        else if (l < 64) { /* a control frame: answer a ping */
            struct codec_envelope env;
            char err[CODEC_ERR_BYTES];
            uint64_t nonce;
            if (codec_envelope_decode(f, l, &env, err) == 0 && env.kind == CODEC_KIND_PING &&
                codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, err) == 0) {
                uint8_t p[64];
                int n = codec_pong_encode(p, sizeof(p), env.correlation, nonce);
                xsend(c, p, (size_t)n);
            }
        }
    }
}

/* NATS: MSG <subject> <sid> <size>\r\n<payload>\r\n, PING. */
static void parse_nats(struct sub *s)
{
    struct xconn *c = s->c;
    for (;;) {
        uint8_t *p = c->in + c->in_off;
        size_t have = c->in_len - c->in_off;
        uint8_t *nl = memchr(p, '\n', have);
        if (!nl)
            return;
        size_t l = (size_t)(nl - p) + 1;
        if (l >= 4 && !memcmp(p, "MSG ", 4)) {
            const uint8_t *sp = nl;
            while (sp > p && sp[-1] != ' ')
                sp--;
            size_t size = strtoul((const char *)sp, NULL, 10);
            if (have < l + size + 2)
                return;
            if (size >= RECORD_LEN)
                on_record(s, p + l);
            c->in_off += l + size + 2;
            continue;
        }
        if (l >= 4 && !memcmp(p, "PING", 4))
            xsend(c, (const uint8_t *)"PONG\r\n", 6);
        c->in_off += l;
    }
}

/* Reads what s's socket holds (non-blocking) and parses it. False when the peer closed. */
static bool sub_read(struct sub *s)
{
    for (;;) {
        errno = 0;
        if (!xrecv(s->c))
            return errno == EAGAIN || errno == EWOULDBLOCK;
        if (is_nexus())
            parse_nexus(s);
        else
            parse_nats(s);
    }
}

/* A subscriber thread: the subscribers i with i % threads == t, through one epoll set (as
 * nexus-bench's workers do: a thread per connection costs context switches that the client
 * would then measure). */
static void *sub_main(void *arg)
{
    int t = (int)(intptr_t)arg, ep = epoll_create1(0);
    for (int i = t; i < cfg.subs; i += cfg.threads) {
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &subs[i]};
        fcntl(subs[i].c->fd, F_SETFL, fcntl(subs[i].c->fd, F_GETFL) | O_NONBLOCK);
        epoll_ctl(ep, EPOLL_CTL_ADD, subs[i].c->fd, &e);
    }
    struct epoll_event ev[SUBS_MAX];
    while (!atomic_load(&stop)) {
        int n = epoll_wait(ep, ev, SUBS_MAX, 100);
        for (int k = 0; k < n; k++) {
            struct sub *s = ev[k].data.ptr;
            if (!sub_read(s))
                epoll_ctl(ep, EPOLL_CTL_DEL, s->c->fd, NULL);
        }
    }
    close(ep);
    return NULL;
}

/* One publish unit carrying the record at *rec_off: a Nexus emit (a Payload whose data Struct
 * holds {"d": the record}) or a NATS PUB. Returns its length. */
static size_t publish_template(uint8_t *out, size_t *rec_off)
{
    uint8_t rec[RECORD_LEN];
    memset(rec, 'x', sizeof(rec));
    memcpy(rec, "NXB", 3);
    if (!is_nexus()) {
        int n = snprintf((char *)out, 64, "PUB " SUBJECT " %d\r\n", RECORD_LEN);
        memcpy(out + n, rec, RECORD_LEN);
        memcpy(out + n + RECORD_LEN, "\r\n", 2);
        *rec_off = (size_t)n;
        return (size_t)n + RECORD_LEN + 2;
    }
    uint8_t value[128], entry[160], st[200], pl[240];
    size_t vn = (size_t)(wire_put_len_field(value, 3, rec, RECORD_LEN) - value);
    uint8_t *p = wire_put_len_field(entry, 1, "d", 1);
    size_t en = (size_t)(wire_put_len_field(p, 2, value, vn) - entry);
    size_t sn = (size_t)(wire_put_len_field(st, 1, entry, en) - st);
    size_t pn = (size_t)(wire_put_len_field(pl, 1, st, sn) - pl);
    struct codec_emit_in e;
    nexus_emit_init(&e, "bench:ws:v1:completed", CAMPAIGN, NULL, pl, pn);
    size_t n = codec_emit_encode(&e, out);
    *rec_off = (size_t)((uint8_t *)memmem(out, n, "NXB", 3) - out);
    return n;
}

static uint64_t slowest(void)
{
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < cfg.subs; i++) {
        uint64_t r = atomic_load_explicit(&subs[i].received, memory_order_relaxed);
        m = r < m ? r : m;
    }
    return m;
}

static void *pub_main(void *arg)
{
    struct xconn *c = arg;
    uint8_t tmpl[512];
    size_t rec_off, n = publish_template(tmpl, &rec_off);
    size_t unit = is_ws() ? n - (is_nexus() ? 4 : 0) + 6 : n; /* the frame header: 6 bytes */
    uint8_t *batch = malloc(unit * BATCH);
    uint8_t *one = batch;
    if (is_ws()) { /* [ws header][frame without its prefix] */
        size_t body = n - (is_nexus() ? 4 : 0);
        size_t hl = ws_header(batch, 0x2, body);
        if (hl != 6)
            die("%s", "publish frame too long");
        memcpy(batch + hl, tmpl + (is_nexus() ? 4 : 0), body);
        rec_off = rec_off - (is_nexus() ? 4 : 0) + hl;
    } else {
        memcpy(batch, tmpl, n);
    }
    for (int i = 1; i < BATCH; i++)
        memcpy(batch + unit * (size_t)i, one, unit);
    uint64_t seq = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        if (seq - slowest() + BATCH > cfg.window) {
            sched_yield();
            continue;
        }
        int64_t t = now_ns();
        for (int i = 0; i < BATCH; i++) {
            uint8_t *r = batch + unit * (size_t)i + rec_off;
            put_hex16(r + 3, seq + (uint64_t)i);
            put_hex16(r + 19, (uint64_t)t);
        }
        send_all(c, batch, unit * BATCH);
        seq += BATCH;
        atomic_store_explicit(&published, seq, memory_order_relaxed);
    }
    free(batch);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double proc_cpu_s(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void usage(void)
{
    puts("Usage: nexus-ws-bench [--mode nexus-tcp|nexus-ws|nats-tcp|nats-ws] [--host H] "
         "--port P\n"
         "       [--subscribers 10] [--duration 5] [--warmup 1] [--window 8192] "
         "[--threads 1] [--broker-pid PID] [--json]\n"
         "Fanout of one publisher to N subscribers of one campaign (NATS: one subject), over "
         "TCP or WebSocket.");
}

static void parse_args(int argc, char **argv)
{
    static const struct option o[] = {{"mode", 1, 0, 'm'},
                                      {"host", 1, 0, 'h'},
                                      {"port", 1, 0, 'p'},
                                      {"subscribers", 1, 0, 's'},
                                      {"duration", 1, 0, 'd'},
                                      {"warmup", 1, 0, 'w'},
                                      {"window", 1, 0, 'W'},
                                      {"broker-pid", 1, 0, 'B'},
                                      {"json", 0, 0, 'j'},
                                      {"help", 0, 0, 'H'},
                                      {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (ch) {
        case 'm': {
            int k = 0;
            while (k < 4 && strcmp(optarg, mode_names[k]))
                k++;
            if (k == 4)
                die("unknown mode %s", optarg);
            cfg.mode = (enum mode)k;
            break;
        }
        case 'h':
            snprintf(cfg.host, sizeof(cfg.host), "%s", optarg);
            break;
        case 'p':
            cfg.port = (uint16_t)atoi(optarg);
            break;
        case 's':
            cfg.subs = atoi(optarg);
            break;
        case 'd':
            cfg.duration_s = atof(optarg);
            break;
        case 'w':
            cfg.warmup_s = atof(optarg);
            break;
        case 'W':
            cfg.window = strtoull(optarg, NULL, 10);
            break;
        case 'B':
            cfg.broker_pid = atoi(optarg);
            break;
        case 'j':
            cfg.json = true;
            break;
        case 't':
            cfg.threads = atoi(optarg);
            break;
        default:
            usage();
            exit(ch == 'H' ? 0 : 2);
        }
    }
    if (cfg.threads < 1 || cfg.threads > cfg.subs)
        cfg.threads = cfg.threads < 1 ? 1 : cfg.subs;
    if (!cfg.port || cfg.subs < 1 || cfg.subs > SUBS_MAX || cfg.window < 2 * BATCH)
        die("%s", "need --port, 1..256 subscribers and a window of at least 64 (see --help)");
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    for (int i = 0; i < cfg.subs; i++) {
        subs[i].c = greet_and_subscribe(true);
        subs[i].lat_us = malloc(sizeof(uint32_t) * LAT_SAMPLES);
    }
    struct xconn *pc = greet_and_subscribe(false);
    pthread_t tids[SUBS_MAX];
    for (int t = 0; t < cfg.threads; t++)
        pthread_create(&tids[t], NULL, sub_main, (void *)(intptr_t)t);
    pthread_t pub;
    pthread_create(&pub, NULL, pub_main, pc);
    sleep_s(cfg.warmup_s);
    double cpu0 = cfg.broker_pid ? proc_cpu_s(cfg.broker_pid) : -1;
    uint64_t pub0 = atomic_load(&published);
    int64_t t0 = now_ns();
    atomic_store(&measuring, 1);
    sleep_s(cfg.duration_s);
    atomic_store(&measuring, 0);
    int64_t t1 = now_ns();
    uint64_t pub1 = atomic_load(&published);
    double cpu1 = cfg.broker_pid ? proc_cpu_s(cfg.broker_pid) : -1;
    atomic_store(&stop, 1);
    pthread_join(pub, NULL);
    for (int t = 0; t < cfg.threads; t++)
        pthread_join(tids[t], NULL);
    double secs = (double)(t1 - t0) / 1e9;
    uint64_t delivered = 0, disorder = 0, nlat = 0;
    for (int i = 0; i < cfg.subs; i++) {
        delivered += subs[i].measured;
        disorder += subs[i].disorder;
        nlat += subs[i].lat_n;
    }
    uint32_t *lat = malloc(sizeof(uint32_t) * (nlat ? nlat : 1));
    for (int i = 0, k = 0; i < cfg.subs; i++)
        for (uint32_t j = 0; j < subs[i].lat_n; j++)
            lat[k++] = subs[i].lat_us[j];
    qsort(lat, nlat, sizeof(uint32_t), cmp_u32);
    double p50 = nlat ? lat[nlat / 2] / 1000.0 : 0, p99 = nlat ? lat[nlat * 99 / 100] / 1000.0 : 0;
    double cpu = cpu0 >= 0 && cpu1 >= 0 ? (cpu1 - cpu0) / secs : -1;
    if (cfg.json)
        printf("{\"mode\":\"%s\",\"subscribers\":%d,\"seconds\":%.2f,\"published_per_s\":%.0f,"
               "\"delivered_per_s\":%.0f,\"latency_ms_p50\":%.2f,\"latency_ms_p99\":%.2f,"
               "\"broker_cpu\":%.2f,\"broker_cpu_us_per_delivery\":%.3f,\"disorder\":%llu}\n",
               mode_names[cfg.mode], cfg.subs, secs, (double)(pub1 - pub0) / secs,
               (double)delivered / secs, p50, p99, cpu,
               delivered && cpu >= 0 ? cpu * secs * 1e6 / (double)delivered : -1,
               (unsigned long long)disorder);
    else
        printf("%-9s fanout-%d: %.0f published/s, %.0f delivered/s, latency p50 %.2f ms p99 "
               "%.2f ms, broker CPU %.2f cores, out of order: %llu\n",
               mode_names[cfg.mode], cfg.subs, (double)(pub1 - pub0) / secs,
               (double)delivered / secs, p50, p99, cpu, (unsigned long long)disorder);
    return disorder ? 1 : 0;
}
