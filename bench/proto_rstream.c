// SPDX-License-Identifier: Apache-2.0
//
// The Redis Streams driver of the durable preset (durable.h): RESP2, spoken directly. Each
// publisher appends to its own stream key nbd:<base>:<p> with XADD <key> * f <payload>,
// pipelined up to the window; Redis answers in order with the new entry's id (a bulk string
// "<ms>-<n>", strictly increasing per key, which is checked) or an error. Whether an answered
// XADD is on disk is redis-server's --appendonly/--appendfsync: with `always` the AOF is
// written and fsynced before the replies of an event-loop pass go out. Replay: XRANGE of each
// key in batches of 1000 (exclusive start from the last id read), every entry's payload size
// checked and the entries counted.
#include "bench/durable.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define RS_LINE_MAX     4096
#define RS_REPLAY_BATCH 1000

static int key_of(const struct dur_run *r, uint32_t p, char *out, size_t cap)
{
    return snprintf(out, cap, "nbd:%llu:%u", (unsigned long long)r->cfg->campaign_base, p);
}

/* One RESP line at p: its type byte and the text after it (without CRLF). Returns the bytes
 * of the line, 0 if incomplete, -1 if malformed. */
static long rs_line(const uint8_t *p, size_t len, char *type, const uint8_t **text, size_t *tl)
{
    const uint8_t *nl = memchr(p, '\n', len < RS_LINE_MAX ? len : RS_LINE_MAX);
    if (!nl)
        return len >= RS_LINE_MAX ? -1 : 0;
    size_t l = (size_t)(nl - p);
    if (l < 1 || p[l - 1] != '\r')
        return -1;
    *type = (char)p[0];
    *text = p + 1;
    *tl = l - 2;
    return (long)l + 1;
}

static bool rs_num(const uint8_t *p, size_t n, int64_t *v)
{
    bool neg = n > 0 && p[0] == '-';
    size_t i = neg ? 1 : 0;
    if (n == i || n - i > 18)
        return false;
    int64_t x = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        x = x * 10 + (p[i] - '0');
    }
    *v = neg ? -x : x;
    return true;
}

/* A bulk string at p: *s and *n its bytes. Returns bytes used, 0 incomplete, -1 not a bulk. */
static long rs_bulk(const uint8_t *p, size_t len, const uint8_t **s, size_t *n)
{
    char t;
    const uint8_t *tx;
    size_t tl;
    long u = rs_line(p, len, &t, &tx, &tl);
    int64_t bl;
    if (u <= 0)
        return u;
    if (t != '$' || !rs_num(tx, tl, &bl) || bl < 0 || bl > (1 << 20))
        return -1;
    if (len - (size_t)u < (size_t)bl + 2)
        return 0;
    if (p[u + bl] != '\r' || p[u + bl + 1] != '\n')
        return -1;
    *s = p + u;
    *n = (size_t)bl;
    return u + bl + 2;
}

/* An entry id "<ms>-<n>". */
static bool rs_id(const uint8_t *s, size_t n, uint64_t *ms, uint64_t *sub)
{
    const uint8_t *dash = memchr(s, '-', n);
    int64_t a, b;
    if (!dash || !rs_num(s, (size_t)(dash - s), &a) ||
        !rs_num(dash + 1, (size_t)(s + n - dash - 1), &b) || a < 0 || b < 0)
        return false;
    *ms = (uint64_t)a;
    *sub = (uint64_t)b;
    return true;
}

static int rs_frame(const struct dur_run *r, const struct dconn *c, uint64_t seq, uint8_t *out,
                    size_t cap)
{
    (void)seq;
    char key[64], hdr[192];
    int kl = key_of(r, c->index, key, sizeof(key));
    int n =
        snprintf(hdr, sizeof(hdr), "*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nf\r\n$%u\r\n",
                 kl, key, r->pl.len);
    if ((size_t)n + r->pl.len + 2 > cap)
        return -ENOSPC;
    memcpy(out, hdr, (size_t)n);
    memcpy(out + n, r->pl.bytes, r->pl.len);
    memcpy(out + n + r->pl.len, "\r\n", 2);
    return n + (int)r->pl.len + 2;
}

static long rs_parse(struct dur_run *r, struct dconn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        const uint8_t *p = buf + off;
        size_t left = len - off;
        if (p[0] == '-') {
            char t;
            const uint8_t *tx;
            size_t tl;
            long u = rs_line(p, left, &t, &tx, &tl);
            if (u < 0) {
                dur_bad(r, c, "redis: malformed error reply");
                return -EPROTO;
            }
            if (u == 0)
                break;
            dur_nack(r, c, 0, (const char *)tx, tl);
            off += (size_t)u;
            continue;
        }
        const uint8_t *s;
        size_t n;
        long u = rs_bulk(p, left, &s, &n);
        if (u == 0)
            break;
        uint64_t ms, sub;
        if (u < 0 || !rs_id(s, n, &ms, &sub)) {
            dur_bad(r, c, "redis: unexpected reply to XADD: %.*s", (int)(left < 60 ? left : 60),
                    (const char *)p);
            return -EPROTO;
        }
        if (ms < c->last_ms || (ms == c->last_ms && sub <= c->last_sub))
            dur_bad(r, c, "redis: entry id %.*s not above the previous one", (int)n,
                    (const char *)s);
        c->last_ms = ms;
        c->last_sub = sub;
        dur_ack(r, c, 0);
        off += (size_t)u;
    }
    return (long)off;
}

/* Parses one XRANGE reply at the start of c->in: counts its entries into *count, checks each
 * payload's size, copies the last id into last. Returns bytes used, 0 incomplete, -1 bad. */
static long rs_xrange_reply(const struct dur_run *r, const uint8_t *p, size_t len, uint64_t *count,
                            char *last, size_t last_cap, char *err, size_t cap)
{
    char t;
    const uint8_t *tx;
    size_t tl;
    int64_t entries, two;
    long u = rs_line(p, len, &t, &tx, &tl);
    if (u <= 0)
        return u;
    if (t == '-') {
        snprintf(err, cap, "redis replay: %.*s", (int)(tl < 160 ? tl : 160), (const char *)tx);
        return -1;
    }
    if (t != '*' || !rs_num(tx, tl, &entries) || entries < 0) {
        snprintf(err, cap, "redis replay: XRANGE did not answer with an array");
        return -1;
    }
    size_t off = (size_t)u;
    for (int64_t i = 0; i < entries; i++) {
        /* *2 <id> *2 <field> <value> */
        u = rs_line(p + off, len - off, &t, &tx, &tl);
        if (u <= 0)
            return u;
        if (t != '*' || !rs_num(tx, tl, &two) || two != 2)
            goto bad;
        off += (size_t)u;
        const uint8_t *id, *fv;
        size_t idl, fvl;
        u = rs_bulk(p + off, len - off, &id, &idl);
        if (u <= 0)
            return u == 0 ? 0 : -1;
        off += (size_t)u;
        u = rs_line(p + off, len - off, &t, &tx, &tl);
        if (u <= 0)
            return u;
        if (t != '*' || !rs_num(tx, tl, &two) || two != 2)
            goto bad;
        off += (size_t)u;
        u = rs_bulk(p + off, len - off, &fv, &fvl); /* the field name */
        if (u <= 0)
            return u == 0 ? 0 : -1;
        off += (size_t)u;
        u = rs_bulk(p + off, len - off, &fv, &fvl); /* the payload */
        if (u <= 0)
            return u == 0 ? 0 : -1;
        off += (size_t)u;
        if (fvl != r->pl.len) {
            snprintf(err, cap, "redis replay: an entry of %zu bytes", fvl);
            return -1;
        }
        if (i == entries - 1)
            snprintf(last, last_cap, "%.*s", (int)idl, (const char *)id);
    }
    *count = (uint64_t)entries;
    return (long)off;
bad:
    snprintf(err, cap, "redis replay: unexpected XRANGE entry shape");
    return -1;
}

/* Replay: XRANGE over each publisher's key (on its own connection), 1000 entries a call. */
static int rs_replay(struct dur_run *r, int64_t deadline_ns, char *err, size_t cap)
{
    for (uint32_t p = 0; p < r->n; p++) {
        struct dconn *c = &r->conns[p];
        char key[64], start[72] = "-", cmd[256];
        int kl = key_of(r, p, key, sizeof(key));
        uint64_t got = 0;
        c->in_len = 0;
        /* At most acked / batch + 2 calls: the last one returns fewer than a batch. */
        for (uint64_t call = 0; call <= c->acked / RS_REPLAY_BATCH + 1; call++) {
            char count[16];
            int cn = snprintf(count, sizeof(count), "%d", RS_REPLAY_BATCH);
            int sl = (int)strlen(start);
            int n = snprintf(cmd, sizeof(cmd),
                             "*6\r\n$6\r\nXRANGE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n+\r\n$5\r\n"
                             "COUNT\r\n$%d\r\n%s\r\n",
                             kl, key, sl, start, cn, count);
            int rc = dconn_send_all(c, cmd, (size_t)n, deadline_ns);
            if (rc < 0) {
                snprintf(err, cap, "redis replay: send: %s", strerror(-rc));
                return rc;
            }
            uint64_t batch = 0;
            char last[64] = "";
            long used;
            while ((used = rs_xrange_reply(r, c->in, c->in_len, &batch, last, sizeof(last), err,
                                           cap)) == 0) {
                rc = dconn_fill(c, deadline_ns);
                if (rc < 0) {
                    snprintf(err, cap, "redis replay: key %s: %s", key, strerror(-rc));
                    return rc;
                }
            }
            if (used < 0)
                return -EPROTO;
            dconn_consume(c, (size_t)used);
            got += batch;
            if (batch < RS_REPLAY_BATCH)
                break;
            snprintf(start, sizeof(start), "(%s", last);
        }
        if (got != c->acked) {
            snprintf(err, cap,
                     "redis replay: key %s holds %" PRIu64 " entries, %" PRIu64
                     " were acknowledged",
                     key, got, c->acked);
            return -EPROTO;
        }
        r->replayed += got;
    }
    return 0;
}

const struct dur_proto dur_proto_rstream = {
    .name = "redis-stream",
    .port_default = 6379,
    .base = &bench_proto_redis,
    .ack_meaning = "XADD reply per entry (on disk per redis-server --appendonly/--appendfsync)",
    .setup = NULL,
    .frame = rs_frame,
    .parse = rs_parse,
    .replay = rs_replay,
};
