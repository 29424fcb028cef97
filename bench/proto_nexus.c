// SPDX-License-Identifier: Apache-2.0
//
// The Nexus driver of nexus-bench: length-prefixed nexus.v1.Frame messages (docs/PROTOCOL.md)
// built and read with codec/envelope.h. Publishers send fire-and-forget emits (correlation 0,
// empty event id: the broker assigns one, as for any client that does not ask for acks; with
// --ids client an id p<publisher>-<counter> the broker checks for duplicates) of
// type bench:load:v1:success to campaign campaign_base + c; subscribers subscribe to one
// campaign with no pattern (every type) and check the broker's per-campaign sequence as well
// as the benchmark's own per-publisher one. Setup functions run on the main thread, parse on
// the connection's worker.
#include "bench/bench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/frame.h"

#define NEXUS_EVENT_TYPE "bench:load:v1:success"
/* A frame from the broker is an event of our payload plus a few hundred bytes of routing
 * fields, or a small control frame; anything larger means the stream is out of sync. */
#define NEXUS_IN_FRAME_MAX (BENCH_PAYLOAD_MAX + 65536u)

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Waits for the reply carrying `corr` during setup. Returns 0 with *env filled (slices into
 * s->buf, consumed by the caller with *frame_bytes), or -errno with err filled. */
static int wait_reply(struct bench_setup *s, uint64_t corr, struct codec_envelope *env,
                      size_t *frame_bytes, char *err, size_t cap)
{
    for (;;) {
        while (s->len >= 4) {
            uint32_t l = be32(s->buf);
            if (l == 0 || l > sizeof(s->buf) - 4) {
                snprintf(err, cap, "nexus: bad frame length %u during setup", l);
                return -EPROTO;
            }
            if (s->len < 4 + (size_t)l)
                break;
            char cerr[CODEC_ERR_BYTES];
            if (codec_envelope_decode(s->buf + 4, l, env, cerr) < 0) {
                snprintf(err, cap, "nexus: %s", cerr);
                return -EPROTO;
            }
            if (env->correlation == corr || env->kind == CODEC_KIND_ERROR) {
                *frame_bytes = 4 + (size_t)l;
                if (env->kind == CODEC_KIND_ERROR) {
                    struct codec_error_in e;
                    if (codec_error_decode(env->body.ptr, env->body.len, &e, cerr) == 0)
                        snprintf(err, cap, "nexus: error %.*s: %.*s", (int)e.code.len,
                                 (const char *)e.code.ptr, (int)e.message.len,
                                 (const char *)e.message.ptr);
                    else
                        snprintf(err, cap, "nexus: error frame");
                    return -EPROTO;
                }
                return 0;
            }
            bench_setup_consume(s, 4 + (size_t)l); /* not ours (a ping, say): skip */
        }
        int r = bench_setup_fill(s);
        if (r == 0) {
            snprintf(err, cap, "nexus: broker closed the connection during setup");
            return -ECONNRESET;
        }
        if (r < 0) {
            snprintf(err, cap, "nexus: waiting for reply: %s", strerror(-r));
            return r;
        }
    }
}

/* TLS from the first byte (when configured), then hello with the account and token of
 * --user/--token ($NEXUS_USER/$NEXUS_TOKEN), and the welcome. */
static int nexus_greet(struct bench_setup *s, char *err, size_t cap)
{
    const struct bench_cfg *cfg = s->cfg;
    if (cfg && cfg->tls && !s->ssl) {
        int r = bench_tls_handshake(s, err, cap);
        if (r < 0)
            return r;
    }
    uint8_t buf[CODEC_CONTROL_BYTES_MAX + sizeof(cfg->user) + sizeof(cfg->token)];
    int n = codec_hello_user_encode(buf, sizeof(buf), 1, 1, cfg ? cfg->user : NULL,
                                    cfg ? cfg->token : NULL, "nexus-bench");
    if (n < 0) {
        snprintf(err, cap, "nexus: cannot encode hello");
        return n;
    }
    int r = bench_setup_send(s, buf, (size_t)n);
    if (r < 0) {
        snprintf(err, cap, "nexus: sending hello: %s", strerror(-r));
        return r;
    }
    struct codec_envelope env;
    size_t fb;
    r = wait_reply(s, 1, &env, &fb, err, cap);
    if (r == -ECONNRESET && !(cfg && cfg->tls)) {
        size_t l = strlen(err);
        snprintf(err + l, cap - l,
                 " (if nexusd runs with --tls-cert, give --tls-ca FILE or --tls)");
    }
    if (r < 0)
        return r;
    if (env.kind != CODEC_KIND_WELCOME) {
        snprintf(err, cap, "nexus: hello answered with %s", codec_kind_name(env.kind));
        return -EPROTO;
    }
    bench_setup_consume(s, fb);
    return 0;
}

static int nexus_subscribe(struct bench_setup *s, const struct bench_run *r, uint32_t c, char *err,
                           size_t cap)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    uint64_t corr = 2 + c;
    int n = codec_subscribe_encode(buf, sizeof(buf), corr, (int64_t)(r->cfg.campaign_base + c),
                                   NULL, 0, NULL);
    if (n < 0) {
        snprintf(err, cap, "nexus: cannot encode subscribe");
        return n;
    }
    int rc = bench_setup_send(s, buf, (size_t)n);
    if (rc < 0) {
        snprintf(err, cap, "nexus: sending subscribe: %s", strerror(-rc));
        return rc;
    }
    struct codec_envelope env;
    size_t fb;
    rc = wait_reply(s, corr, &env, &fb, err, cap);
    if (rc < 0)
        return rc;
    if (env.kind != CODEC_KIND_SUBSCRIBE_ACK) {
        snprintf(err, cap, "nexus: subscribe answered with %s", codec_kind_name(env.kind));
        return -EPROTO;
    }
    bench_setup_consume(s, fb);
    return 0;
}

static int nexus_frame(const struct bench_run *r, uint32_t c, uint8_t *out, size_t cap,
                       uint32_t *pl_off)
{
    struct codec_emit_in e;
    memset(&e, 0, sizeof(e));
    e.event_type.ptr = (const uint8_t *)NEXUS_EVENT_TYPE;
    e.event_type.len = (uint32_t)strlen(NEXUS_EVENT_TYPE);
    e.campaign_id = (int64_t)(r->cfg.campaign_base + c);
    e.payload.ptr = r->pl.bytes;
    e.payload.len = r->pl.len;
    e.has_payload = true;
    if (r->tmpl_id_off) { /* --ids client: the publisher patches its ids over this one */
        e.event_id.ptr = (const uint8_t *)BENCH_EVENT_ID_TMPL;
        e.event_id.len = BENCH_EVENT_ID_LEN;
    }
    uint8_t md[256];
    if (r->cfg.event_user_id[0]) {
        int ml = codec_metadata_build(md, sizeof(md), r->cfg.event_user_id, NULL);
        if (ml < 0)
            return -ENOSPC;
        e.metadata.ptr = md;
        e.metadata.len = (uint32_t)ml;
        e.has_metadata = true;
    }
    size_t n = codec_emit_size(&e);
    if (n > cap)
        return -ENOSPC;
    size_t w = codec_emit_encode(&e, out);
    /* The payload is the emit's last field, so it ends the frame. */
    *pl_off = (uint32_t)(w - r->pl.len);
    if (memcmp(out + *pl_off, r->pl.bytes, r->pl.len) != 0)
        return -EPROTO;
    return (int)w;
}

static void on_frame(struct bench_conn *c, const struct codec_envelope *env)
{
    char cerr[CODEC_ERR_BYTES];
    switch (env->kind) {
    case CODEC_KIND_EVENT: {
        struct codec_event_in ev;
        if (codec_event_decode(env->body.ptr, env->body.len, &ev, cerr) < 0) {
            bench_conn_fail(c, "nexus: undecodable event: %s", cerr);
            return;
        }
        bench_on_message(c, ev.payload.ptr, ev.payload.len, ev.sequence);
        return;
    }
    case CODEC_KIND_GAP: {
        struct codec_gap_in g;
        if (codec_gap_decode(env->body.ptr, env->body.len, &g, cerr) < 0) {
            bench_conn_fail(c, "nexus: undecodable gap: %s", cerr);
            return;
        }
        bench_on_gap(c, g.dropped ? g.dropped : g.last_sequence - g.first_sequence + 1);
        return;
    }
    case CODEC_KIND_ERROR: {
        struct codec_error_in e;
        char text[256];
        int n;
        if (codec_error_decode(env->body.ptr, env->body.len, &e, cerr) == 0)
            n = snprintf(text, sizeof(text), "%.*s: %.*s", (int)e.code.len,
                         (const char *)e.code.ptr, (int)e.message.len, (const char *)e.message.ptr);
        else
            n = snprintf(text, sizeof(text), "undecodable error frame");
        bench_on_broker_error(c, text, n > 0 ? (size_t)n : 0);
        return;
    }
    case CODEC_KIND_PING: {
        uint64_t nonce = 0;
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        codec_u64_msg_decode(env->body.ptr, env->body.len, &nonce, cerr);
        int n = codec_pong_encode(buf, sizeof(buf), env->correlation, nonce);
        if (n > 0)
            bench_conn_reply(c, buf, (size_t)n);
        return;
    }
    default:
        return; /* acks, pongs, stats: nothing to check */
    }
}

static inline const uint8_t *get_varint(const uint8_t *p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (uint32_t shift = 0; p < end && shift < 64; shift += 7) {
        uint8_t b = *p++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return p;
        }
    }
    return NULL;
}

/* The hot path: a delivered event, parsed inline (the generic codec walk costs about three
 * times as much, which at millions of events per second would make the benchmark, not the
 * broker, the bottleneck). Returns true if the frame was an event and was handled; anything
 * else (control frames, or bytes it does not understand) goes to the codec, which also
 * produces the error messages. */
static bool fast_event(struct bench_conn *c, const uint8_t *p, const uint8_t *end)
{
    uint64_t v;
    if (p < end && *p == 0x08) { /* correlation: 0 on events, but accept any */
        if (!(p = get_varint(p + 1, end, &v)))
            return false;
    }
    if (p >= end || *p != ((CODEC_KIND_EVENT << 3) | 2))
        return false;
    if (!(p = get_varint(p + 1, end, &v)) || v != (uint64_t)(end - p))
        return false;
    const uint8_t *payload = NULL;
    uint64_t payload_len = 0, seq = 0;
    /* Every EventResponse field number is below 16, so a key is one byte; varints other than
     * the sequence are skipped without being decoded; the walk stops once both the payload
     * (6) and the sequence (9) are known. */
    while (p < end) {
        uint8_t key = *p++;
        if (key & 0x80)
            return false;
        switch (key & 7) {
        case 0:
            if ((key >> 3) == 9) {
                if (!(p = get_varint(p, end, &seq)))
                    return false;
                if (payload)
                    goto done;
                break;
            }
            while (p < end && (*p & 0x80))
                p++;
            if (p++ >= end)
                return false;
            break;
        case 1:
            if (end - p < 8)
                return false;
            p += 8;
            break;
        case 2:
            if (p < end && *p < 0x80)
                v = *p++;
            else if (!(p = get_varint(p, end, &v)))
                return false;
            if (v > (uint64_t)(end - p))
                return false;
            if ((key >> 3) == 6) {
                payload = p;
                payload_len = v;
            }
            p += v;
            break;
        case 5:
            if (end - p < 4)
                return false;
            p += 4;
            break;
        default:
            return false;
        }
    }
    if (!payload)
        return false;
done:
    bench_on_message(c, payload, (uint32_t)payload_len, seq);
    return true;
}

static long nexus_parse(struct bench_conn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= CODEC_FRAME_HEADER_BYTES && !c->dead) {
        uint32_t l = be32(buf + off);
        if (l == 0 || l > NEXUS_IN_FRAME_MAX) {
            bench_conn_fail(c, "nexus: frame length %u out of range", l);
            return -EPROTO;
        }
        if (len - off < CODEC_FRAME_HEADER_BYTES + (size_t)l)
            break;
        const uint8_t *body = buf + off + CODEC_FRAME_HEADER_BYTES;
        if (fast_event(c, body, body + l)) {
            off += CODEC_FRAME_HEADER_BYTES + (size_t)l;
            continue;
        }
        struct codec_envelope env;
        char cerr[CODEC_ERR_BYTES];
        if (codec_envelope_decode(buf + off + CODEC_FRAME_HEADER_BYTES, l, &env, cerr) < 0) {
            bench_conn_fail(c, "nexus: %s", cerr);
            return -EPROTO;
        }
        on_frame(c, &env);
        off += CODEC_FRAME_HEADER_BYTES + (size_t)l;
    }
    return c->dead ? -EPROTO : (long)off;
}

const struct bench_proto bench_proto_nexus = {
    .name = "nexus",
    .port_default = 7400,
    .greet = nexus_greet,
    .subscribe = nexus_subscribe,
    .frame = nexus_frame,
    .parse = nexus_parse,
};
