// SPDX-License-Identifier: Apache-2.0
//
// The Redis driver of nexus-bench: pub/sub over RESP2, spoken directly. Publishers send
// PUBLISH <channel> <payload> and read the integer replies; subscribers send SUBSCRIBE and
// read "message" pushes. The SUBSCRIBE confirmation is the server's promise that later
// publishes reach the subscriber. Channel of campaign c: nb.<campaign_base>.<c>.
// Setup functions run on the main thread, parse on the connection's worker.
#include "bench/bench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Elements per RESP array we care about (pushes have 3, confirmations 3). */
#define RESP_ELEMS_MAX 8
/* Longest header line ($len, :int, +simple, -error) accepted before calling it garbage. */
#define RESP_LINE_MAX 4096

struct resp_elem {
    char type; /* '$', ':', '+', '-' */
    const uint8_t *ptr;
    uint64_t len; /* bulk length, or the integer for ':' */
};

/* Parses one line-terminated token at p. Returns the bytes used, 0 if incomplete, -1 if bad. */
static long resp_line(const uint8_t *p, size_t len, struct resp_elem *e)
{
    const uint8_t *nl = memchr(p, '\n', len < RESP_LINE_MAX ? len : RESP_LINE_MAX);
    if (!nl)
        return len >= RESP_LINE_MAX ? -1 : 0;
    size_t l = (size_t)(nl - p);
    if (l < 2 || p[l - 1] != '\r')
        return -1;
    e->type = (char)p[0];
    e->ptr = p + 1;
    e->len = l - 2;
    if (e->type == '$' || e->type == ':' || e->type == '*') {
        uint64_t v = 0;
        bool neg = false;
        for (size_t i = 1; i < l - 1; i++) {
            if (i == 1 && p[i] == '-') {
                neg = true;
                continue;
            }
            if (p[i] < '0' || p[i] > '9' || v > (UINT64_MAX - 9) / 10)
                return -1;
            v = v * 10 + (uint64_t)(p[i] - '0');
        }
        e->len = neg ? UINT64_MAX : v; /* only a null bulk ($-1) is negative here */
    }
    return (long)l + 1;
}

/* Parses one reply: an array of up to RESP_ELEMS_MAX scalars, or one scalar. Returns bytes
 * used (*n elements in e), 0 if incomplete, -1 if malformed. */
static long resp_reply(const uint8_t *p, size_t len, struct resp_elem *e, uint32_t *n)
{
    struct resp_elem head;
    long used = resp_line(p, len, &head);
    if (used <= 0)
        return used;
    uint32_t count = 1;
    size_t off = 0;
    if (head.type == '*') {
        if (head.len == 0 || head.len > RESP_ELEMS_MAX)
            return -1;
        count = (uint32_t)head.len;
        off = (size_t)used;
    }
    for (uint32_t i = 0; i < count; i++) {
        used = resp_line(p + off, len - off, &e[i]);
        if (used <= 0)
            return used;
        off += (size_t)used;
        if (e[i].type == '$') {
            if (e[i].len == UINT64_MAX) {
                e[i].ptr = NULL;
                e[i].len = 0;
                continue;
            }
            if (e[i].len > BENCH_PAYLOAD_MAX)
                return -1;
            if (len - off < e[i].len + 2)
                return 0;
            e[i].ptr = p + off;
            if (p[off + e[i].len] != '\r' || p[off + e[i].len + 1] != '\n')
                return -1;
            off += e[i].len + 2;
        } else if (e[i].type != ':' && e[i].type != '+' && e[i].type != '-') {
            return -1;
        }
    }
    *n = count;
    return (long)off;
}

static bool elem_is(const struct resp_elem *e, const char *s)
{
    size_t n = strlen(s);
    return e->len == n && e->ptr && memcmp(e->ptr, s, n) == 0;
}

/* Reads one reply during setup. Returns 0 with e and *n filled (slices into s->buf, valid
 * until the caller consumes *used bytes), or -errno with err filled. */
static int wait_reply(struct bench_setup *s, struct resp_elem *e, uint32_t *n, size_t *used,
                      char *err, size_t cap)
{
    for (;;) {
        long r = s->len ? resp_reply(s->buf, s->len, e, n) : 0;
        if (r < 0) {
            snprintf(err, cap, "redis: malformed reply during setup");
            return -EPROTO;
        }
        if (r > 0) {
            *used = (size_t)r;
            if (e[0].type == '-') {
                snprintf(err, cap, "redis: %.*s", (int)(e[0].len < 200 ? e[0].len : 200),
                         (const char *)e[0].ptr);
                return -EPROTO;
            }
            return 0;
        }
        int f = bench_setup_fill(s);
        if (f == 0) {
            snprintf(err, cap, "redis: server closed the connection during setup");
            return -ECONNRESET;
        }
        if (f < 0) {
            snprintf(err, cap, "redis: waiting for reply: %s", strerror(-f));
            return f;
        }
    }
}

static int redis_greet(struct bench_setup *s, char *err, size_t cap)
{
    static const char ping[] = "*1\r\n$4\r\nPING\r\n";
    if (s->cfg && s->cfg->tls && !s->ssl) { /* redis-server --tls-port: TLS from the start */
        int r = bench_tls_handshake(s, err, cap);
        if (r < 0)
            return r;
    }
    int r = bench_setup_send(s, ping, sizeof(ping) - 1);
    if (r < 0) {
        snprintf(err, cap, "redis: sending PING: %s", strerror(-r));
        return r;
    }
    struct resp_elem e[RESP_ELEMS_MAX];
    uint32_t n;
    size_t used;
    r = wait_reply(s, e, &n, &used, err, cap);
    if (r < 0)
        return r;
    if (!(e[0].type == '+' && elem_is(&e[0], "PONG"))) {
        snprintf(err, cap, "redis: PING not answered by PONG");
        return -EPROTO;
    }
    bench_setup_consume(s, used);
    return 0;
}

static int channel(const struct bench_run *r, uint32_t c, char *out, size_t cap)
{
    return snprintf(out, cap, "nb.%llu.%u", (unsigned long long)r->cfg.campaign_base, c);
}

static int redis_subscribe(struct bench_setup *s, const struct bench_run *r, uint32_t c, char *err,
                           size_t cap)
{
    char ch[64], cmd[160];
    int cl = channel(r, c, ch, sizeof(ch));
    int n = snprintf(cmd, sizeof(cmd), "*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n", cl, ch);
    int rc = bench_setup_send(s, cmd, (size_t)n);
    if (rc < 0) {
        snprintf(err, cap, "redis: sending SUBSCRIBE: %s", strerror(-rc));
        return rc;
    }
    struct resp_elem e[RESP_ELEMS_MAX];
    uint32_t count;
    size_t used;
    rc = wait_reply(s, e, &count, &used, err, cap);
    if (rc < 0)
        return rc;
    if (count != 3 || !elem_is(&e[0], "subscribe") || e[1].len != (uint64_t)cl ||
        memcmp(e[1].ptr, ch, (size_t)cl) != 0) {
        snprintf(err, cap, "redis: SUBSCRIBE %s not confirmed", ch);
        return -EPROTO;
    }
    bench_setup_consume(s, used);
    return 0;
}

static int redis_frame(const struct bench_run *r, uint32_t c, uint8_t *out, size_t cap,
                       uint32_t *pl_off)
{
    char ch[64], hdr[192];
    int cl = channel(r, c, ch, sizeof(ch));
    int n = snprintf(hdr, sizeof(hdr), "*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%u\r\n", cl, ch,
                     r->pl.len);
    if ((size_t)n + r->pl.len + 2 > cap)
        return -ENOSPC;
    memcpy(out, hdr, (size_t)n);
    memcpy(out + n, r->pl.bytes, r->pl.len);
    memcpy(out + n + r->pl.len, "\r\n", 2);
    *pl_off = (uint32_t)n;
    return n + (int)r->pl.len + 2;
}

static long redis_parse(struct bench_conn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len && !c->dead) {
        struct resp_elem e[RESP_ELEMS_MAX];
        uint32_t n = 0;
        long used = resp_reply(buf + off, len - off, e, &n);
        if (used < 0) {
            bench_conn_fail(c, "redis: malformed reply");
            return -EPROTO;
        }
        if (used == 0)
            break;
        off += (size_t)used;
        if (n == 3 && elem_is(&e[0], "message") && e[2].type == '$')
            bench_on_message(c, e[2].ptr, (uint32_t)e[2].len, 0);
        else if (e[0].type == '-')
            bench_on_broker_error(c, (const char *)e[0].ptr, (size_t)e[0].len);
        /* ':' (PUBLISH's receiver count), '+PONG', subscribe confirmations: nothing to do */
    }
    return c->dead ? -EPROTO : (long)off;
}

const struct bench_proto bench_proto_redis = {
    .name = "redis",
    .port_default = 6379,
    .greet = redis_greet,
    .subscribe = redis_subscribe,
    .frame = redis_frame,
    .parse = redis_parse,
};
