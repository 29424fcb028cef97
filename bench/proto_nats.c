// SPDX-License-Identifier: Apache-2.0
//
// The NATS driver of nexus-bench: the core text protocol (INFO, CONNECT, PUB, SUB, MSG, PING,
// PONG, +OK, -ERR), spoken directly. CONNECT asks for verbose=false, so publishes are not
// acknowledged; a PING/PONG round trip after each SUB confirms that the server registered the
// subscription before publishing starts. Subject of campaign c: nb.<campaign_base>.<c>.
// Setup functions run on the main thread, parse on the connection's worker.
#include "bench/bench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Longest protocol line accepted: INFO lines carry the server's JSON (a few hundred bytes,
 * more with cluster URLs); a longer line means the stream is not NATS. */
#define NATS_LINE_MAX 16384

/* Finds the end of the line starting at p: returns the length before "\r\n", or -1 if the
 * line is incomplete. */
static long line_len(const uint8_t *p, size_t len)
{
    const uint8_t *nl = memchr(p, '\n', len);
    if (!nl)
        return -1;
    long l = (long)(nl - p);
    return (l > 0 && p[l - 1] == '\r') ? l - 1 : l;
}

static bool starts(const uint8_t *p, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(p, word, n) == 0;
}

/* Reads lines during setup until one starts with `want`; skips +OK, PING (answered), INFO
 * and PONG when not wanted. Returns 0 or -errno with err filled. */
static int wait_line(struct bench_setup *s, const char *want, char *err, size_t cap)
{
    for (;;) {
        long l;
        while (s->len && (l = line_len(s->buf, s->len)) >= 0) {
            size_t used = (size_t)l + (s->buf[l] == '\r' ? 2 : 1);
            if (starts(s->buf, (size_t)l, want)) {
                bench_setup_consume(s, used);
                return 0;
            }
            if (starts(s->buf, (size_t)l, "-ERR")) {
                snprintf(err, cap, "nats: %.*s", (int)(l < 200 ? l : 200), (const char *)s->buf);
                return -EPROTO;
            }
            if (starts(s->buf, (size_t)l, "PING")) {
                int r = bench_setup_send(s, "PONG\r\n", 6);
                if (r < 0)
                    return r;
            }
            bench_setup_consume(s, used);
        }
        int r = bench_setup_fill(s);
        if (r == 0) {
            snprintf(err, cap, "nats: server closed the connection during setup");
            return -ECONNRESET;
        }
        if (r < 0) {
            snprintf(err, cap, "nats: waiting for %s: %s", want, strerror(-r));
            return r;
        }
    }
}

/* Appends s to out as a JSON string body (quotes and backslashes escaped, control bytes
 * dropped). Returns the new length, or cap when it does not fit. */
static size_t json_put(char *out, size_t len, size_t cap, const char *s)
{
    for (; *s && len < cap; s++) {
        if ((unsigned char)*s < 0x20)
            continue;
        if (*s == '"' || *s == '\\') {
            out[len++] = '\\';
            if (len == cap)
                break;
        }
        out[len++] = *s;
    }
    return len;
}

/* INFO, then (with TLS) the upgrade of the socket right after it, as nats-server 2.x expects
 * of a server started with --tls (its INFO says tls_required), then CONNECT with
 * --user/--token as user/pass (auth_token without a user) and a PING whose PONG confirms the
 * connection was accepted. */
static int nats_greet(struct bench_setup *s, char *err, size_t cap)
{
    const struct bench_cfg *cfg = s->cfg;
    bool tls = cfg && cfg->tls;
    /* The INFO line is kept visible here to see whether the server asks for TLS. */
    int r;
    for (;;) {
        long l = s->len ? line_len(s->buf, s->len) : -1;
        if (l >= 0)
            break;
        r = bench_setup_fill(s);
        if (r <= 0) {
            snprintf(err, cap, "nats: waiting for INFO: %s",
                     r == 0 ? "server closed the connection" : strerror(-r));
            return r == 0 ? -ECONNRESET : r;
        }
    }
    long l = line_len(s->buf, s->len);
    bool server_tls = l > 0 && memmem(s->buf, (size_t)l, "\"tls_required\":true", 19) != NULL;
    r = wait_line(s, "INFO", err, cap);
    if (r < 0)
        return r;
    if (server_tls && !tls) {
        snprintf(err, cap, "nats: the server requires TLS (give --tls-ca FILE or --tls)");
        return -EPROTO;
    }
    if (tls && !s->ssl) {
        if (s->len) {
            snprintf(err, cap, "nats: unexpected bytes after INFO before the TLS upgrade");
            return -EPROTO;
        }
        r = bench_tls_handshake(s, err, cap);
        if (r < 0)
            return r;
    }
    char connect[4096];
    size_t n = (size_t)snprintf(connect, sizeof(connect),
                                "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":%s,"
                                "\"name\":\"nexus-bench\",\"lang\":\"c\",\"version\":\"0.1.0\","
                                "\"protocol\":1,\"echo\":false",
                                tls ? "true" : "false");
    const size_t room = sizeof(connect) - 32; /* the tail below always fits */
    if (cfg && cfg->user[0]) {
        n += (size_t)snprintf(connect + n, room - n, ",\"user\":\"");
        n = json_put(connect, n, room, cfg->user);
        n += (size_t)snprintf(connect + n, room - n, "\",\"pass\":\"");
        n = json_put(connect, n, room, cfg->token);
        n += (size_t)snprintf(connect + n, room - n, "\"");
    } else if (cfg && cfg->token[0]) {
        n += (size_t)snprintf(connect + n, room - n, ",\"auth_token\":\"");
        n = json_put(connect, n, room, cfg->token);
        n += (size_t)snprintf(connect + n, room - n, "\"");
    }
    if (n >= room) {
        snprintf(err, cap, "nats: credentials too long for CONNECT");
        return -E2BIG;
    }
    n += (size_t)snprintf(connect + n, sizeof(connect) - n, "}\r\nPING\r\n");
    r = bench_setup_send(s, connect, n);
    if (r < 0) {
        snprintf(err, cap, "nats: sending CONNECT: %s", strerror(-r));
        return r;
    }
    return wait_line(s, "PONG", err, cap);
}

static int nats_subscribe(struct bench_setup *s, const struct bench_run *r, uint32_t c, char *err,
                          size_t cap)
{
    char line[128];
    int n = snprintf(line, sizeof(line), "SUB nb.%llu.%u %u\r\nPING\r\n",
                     (unsigned long long)r->cfg.campaign_base, c, c + 1);
    int rc = bench_setup_send(s, line, (size_t)n);
    if (rc < 0) {
        snprintf(err, cap, "nats: sending SUB: %s", strerror(-rc));
        return rc;
    }
    return wait_line(s, "PONG", err, cap);
}

static int nats_frame(const struct bench_run *r, uint32_t c, uint8_t *out, size_t cap,
                      uint32_t *pl_off)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof(hdr), "PUB nb.%llu.%u %u\r\n",
                     (unsigned long long)r->cfg.campaign_base, c, r->pl.len);
    if ((size_t)n + r->pl.len + 2 > cap)
        return -ENOSPC;
    memcpy(out, hdr, (size_t)n);
    memcpy(out + n, r->pl.bytes, r->pl.len);
    memcpy(out + n + r->pl.len, "\r\n", 2);
    *pl_off = (uint32_t)n;
    return n + (int)r->pl.len + 2;
}

/* MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n: the size is the last token. */
static long parse_msg(struct bench_conn *c, const uint8_t *p, size_t len, long l)
{
    long i = l;
    uint64_t size = 0, mul = 1;
    while (i > 0 && p[i - 1] >= '0' && p[i - 1] <= '9' && mul <= 1000000000) {
        size += (uint64_t)(p[i - 1] - '0') * mul;
        mul *= 10;
        i--;
    }
    if (i == l || i == 0 || p[i - 1] != ' ') {
        bench_conn_fail(c, "nats: malformed MSG line: %.*s", (int)(l < 120 ? l : 120),
                        (const char *)p);
        return -EPROTO;
    }
    size_t hdr = (size_t)l + 2;
    if (len < hdr + size + 2)
        return 0; /* incomplete */
    if (p[hdr + size] != '\r' || p[hdr + size + 1] != '\n') {
        bench_conn_fail(c, "nats: MSG payload not followed by CRLF");
        return -EPROTO;
    }
    bench_on_message(c, p + hdr, (uint32_t)size, 0);
    return (long)(hdr + size + 2);
}

static long nats_parse(struct bench_conn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len && !c->dead) {
        const uint8_t *p = buf + off;
        size_t left = len - off;
        long l = line_len(p, left < NATS_LINE_MAX ? left : NATS_LINE_MAX);
        if (l < 0) {
            if (left >= NATS_LINE_MAX) {
                bench_conn_fail(c, "nats: protocol line longer than %d bytes", NATS_LINE_MAX);
                return -EPROTO;
            }
            break;
        }
        if (p[l] != '\r') {
            bench_conn_fail(c, "nats: line not ended by CRLF");
            return -EPROTO;
        }
        if (starts(p, (size_t)l, "MSG ")) {
            long used = parse_msg(c, p, left, l);
            if (used < 0)
                return used;
            if (used == 0)
                break;
            off += (size_t)used;
            continue;
        }
        if (starts(p, (size_t)l, "PING"))
            bench_conn_reply(c, "PONG\r\n", 6);
        else if (starts(p, (size_t)l, "-ERR"))
            bench_on_broker_error(c, (const char *)p, (size_t)l);
        else if (!starts(p, (size_t)l, "PONG") && !starts(p, (size_t)l, "+OK") &&
                 !starts(p, (size_t)l, "INFO")) {
            bench_conn_fail(c, "nats: unexpected line: %.*s", (int)(l < 120 ? l : 120),
                            (const char *)p);
            return -EPROTO;
        }
        off += (size_t)l + 2;
    }
    return c->dead ? -EPROTO : (long)off;
}

const struct bench_proto bench_proto_nats = {
    .name = "nats",
    .port_default = 4222,
    .greet = nats_greet,
    .subscribe = nats_subscribe,
    .frame = nats_frame,
    .parse = nats_parse,
};
