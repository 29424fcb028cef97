// SPDX-License-Identifier: Apache-2.0
//
// The WebSocket listener (--ws-listen, docs/PROTOCOL.md "WebSocket") against the real nexusd,
// with a raw client (ws_util.h): the upgrade (valid, with the accept key RFC 6455 gives for
// its sample key; wrong key, wrong version, no upgrade, not GET, an Origin from another host,
// an allowed one); masked frames carry the protocol, an unmasked one is refused (1002); a
// hello in fragments with a ping between them; messages over the pre-hello and the
// --max-frame-bytes limits (frame_too_large, 1009), in one frame and in fragments; ping/pong
// at both levels; the close handshake (echoed codes, no code, an invalid code, text, an empty
// message); a WebSocket and a TCP subscriber of one campaign, with publishers on both
// transports, see the same events in the same order; the same authentication (--token); the
// same slow-consumer policy; the drain (goaway, then close 1001); the per-transport metrics.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "broker/ws.h"
#include "ws_util.h"

/* A broker with a WebSocket listener; *ws_port receives its port. */
static struct broker_proc ws_start(uint16_t *ws_port, uint32_t shards, const char *const *extra)
{
    static char addr[64];
    *ws_port = h_free_port();
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", *ws_port);
    const char *flags[32] = {"--ws-listen", addr};
    int n = 2;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        flags[n++] = extra[i];
    flags[n] = NULL;
    return h_start_flags(shards, 0, flags);
}

/* ---- the upgrade ---------------------------------------------------------------------------- */

static void test_handshake(void **state)
{
    (void)state;
    uint16_t wp;
    const char *extra[] = {"--ws-allowed-origins", "https://app.example:8443", NULL};
    struct broker_proc b = ws_start(&wp, 2, extra);
    char resp[1024];

    struct wsc *w = wsc_open(wp);
    assert_non_null(w);
    assert_int_equal(wsc_upgrade(w, "Sec-WebSocket-Protocol: nexus.v1\r\n", resp, sizeof(resp)),
                     101);
    char want[29];
    ws_accept_key(WSC_KEY, strlen(WSC_KEY), want);
    assert_string_equal(want, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_non_null(strstr(resp, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_non_null(strstr(resp, "Sec-WebSocket-Protocol: nexus.v1\r\n"));
    assert_int_equal(wsc_hello(w, NULL), 1);
    wsc_close(w);

    /* Refusals: each a whole HTTP answer, then the connection closes. */
    static const struct {
        const char *request;
        int status;
        const char *says;
    } bad[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: short==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "Sec-WebSocket-Key"},
        {"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " WSC_KEY "\r\nSec-WebSocket-Version: 8\r\n\r\n",
         426, "Sec-WebSocket-Version: 13"},
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 426, "Upgrade: websocket"},
        {"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " WSC_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
         405, "GET"},
        {"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: http://evil.example\r\n"
         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " WSC_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
         403, "Origin"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        w = wsc_open(wp);
        assert_int_equal(wsc_upgrade_raw(w, bad[i].request, resp, sizeof(resp)), bad[i].status);
        assert_non_null(strstr(resp, "Connection: close\r\n"));
        assert_true(wsc_eof(w, 5000));
        wsc_close(w);
    }
    /* Allowed Origins: the broker's own host (any port), and the listed one. */
    w = wsc_open(wp);
    assert_int_equal(wsc_upgrade(w, "Origin: http://127.0.0.1:8080\r\n", resp, sizeof(resp)), 101);
    assert_int_equal(wsc_hello(w, NULL), 1);
    wsc_close(w);
    w = wsc_open(wp);
    assert_int_equal(wsc_upgrade(w, "Origin: https://app.example:8443\r\n", resp, sizeof(resp)),
                     101);
    wsc_close(w);
    /* The TCP listener still speaks the framed protocol. */
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- frames --------------------------------------------------------------------------------- */

static void test_masking_and_fragments(void **state)
{
    (void)state;
    uint16_t wp;
    struct broker_proc b = ws_start(&wp, 1, NULL);
    uint8_t f[256];
    struct codec_envelope env;

    /* An unmasked client frame: close 1002, then the connection ends. */
    struct wsc *w = wsc_connect(wp);
    int n = codec_hello_encode(f, sizeof(f), 1, 1, NULL, "unmasked");
    wsc_send_frame(w, true, 0x2, f + 4, (size_t)n - 4, false);
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_PROTOCOL);
    assert_true(wsc_eof(w, 5000));
    wsc_close(w);

    /* A hello in three fragments, a ping between them: the pong (same payload) comes first,
     * then the welcome. */
    w = wsc_connect(wp);
    n = codec_hello_encode(f, sizeof(f), 7, 1, NULL, "fragmented-hello");
    size_t body = (size_t)n - 4, a = body / 3, bb = body / 3;
    wsc_send_frame(w, false, 0x2, f + 4, a, true);
    wsc_send_frame(w, true, 0x9, "ping-1", 6, true);
    wsc_send_frame(w, false, 0x0, f + 4 + a, bb, true);
    wsc_send_frame(w, true, 0x0, f + 4 + a + bb, body - a - bb, true);
    assert_int_equal(wsc_recv(w, 5000), 1);
    assert_int_equal(w->op, 0xA);
    assert_int_equal(w->msg_len, 6);
    assert_memory_equal(w->msg, "ping-1", 6);
    assert_int_equal(wsc_recv_nexus(w, &env, 5000), 1);
    assert_int_equal(env.kind, CODEC_KIND_WELCOME);
    assert_int_equal(env.correlation, 7);
    /* An emit sent a few bytes at a time (one TCP segment each) is acknowledged. */
    struct codec_emit_in e;
    nexus_emit_init(&e, "ws:split:v1:completed", 3, "split-1", NULL, 0);
    e.correlation = 8;
    uint8_t wire[512];
    n = (int)codec_emit_encode(&e, wire);
    uint8_t framed[600];
    size_t fl = 0;
    framed[fl++] = 0x82;
    framed[fl++] = (uint8_t)(0x80 | (n - 4));
    const uint8_t mask[4] = {1, 2, 3, 4};
    memcpy(framed + fl, mask, 4);
    fl += 4;
    for (int i = 0; i < n - 4; i++)
        framed[fl++] = wire[4 + i] ^ mask[i & 3];
    for (size_t i = 0; i < fl; i += 3) {
        wsc_send_all(w, framed + i, fl - i < 3 ? fl - i : 3);
        usleep(200);
    }
    assert_int_equal(wsc_wait_kind(w, CODEC_KIND_EMIT_ACK, &env, 5000), 1);
    assert_int_equal(env.correlation, 8);
    /* Nexus ping → Nexus pong (the protocol's own liveness). */
    n = codec_ping_encode(f, sizeof(f), 9, 42);
    wsc_send_nexus(w, f, (size_t)n);
    assert_int_equal(wsc_recv_nexus(w, &env, 5000), 1);
    assert_int_equal(env.kind, CODEC_KIND_PONG);
    assert_int_equal(env.correlation, 9);
    /* A WebSocket pong is ignored; an empty ping gets an empty pong. */
    wsc_send_frame(w, true, 0xA, "", 0, true);
    wsc_send_frame(w, true, 0x9, "", 0, true);
    assert_int_equal(wsc_recv(w, 5000), 1);
    assert_int_equal(w->op, 0xA);
    assert_int_equal(w->msg_len, 0);
    wsc_close(w);
    assert_int_equal(h_stop(&b), 0);
}

/* The error frame and close that a too-large message gets. */
static void expect_too_large(struct wsc *w, const char *says)
{
    struct codec_envelope env;
    assert_int_equal(wsc_recv_nexus(w, &env, 5000), 1);
    assert_int_equal(env.kind, CODEC_KIND_ERROR);
    struct codec_error_in er;
    char err[CODEC_ERR_BYTES];
    assert_int_equal(codec_error_decode(env.body.ptr, env.body.len, &er, err), 0);
    assert_int_equal(er.code.len, strlen("frame_too_large"));
    assert_memory_equal(er.code.ptr, "frame_too_large", er.code.len);
    assert_non_null(memmem(er.message.ptr, er.message.len, says, strlen(says)));
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_TOO_BIG);
    assert_true(wsc_eof(w, 5000));
}

/* A common.Payload whose data Struct holds {"k": a string of len bytes}; returns its size. */
static size_t payload_with_string(uint8_t *out, size_t len)
{
    uint8_t *value = malloc(len + 16), *entry = malloc(len + 32), *st = malloc(len + 48);
    memset(out, 'v', len);
    size_t vn = (size_t)(wire_put_len_field(value, 3, out, len) - value); /* string_value */
    uint8_t *p = wire_put_len_field(entry, 1, "k", 1);
    size_t en = (size_t)(wire_put_len_field(p, 2, value, vn) - entry);
    size_t sn = (size_t)(wire_put_len_field(st, 1, entry, en) - st); /* Struct.fields */
    size_t n = (size_t)(wire_put_len_field(out, 1, st, sn) - out);   /* Payload.data */
    free(value);
    free(entry);
    free(st);
    return n;
}

static void test_oversized(void **state)
{
    (void)state;
    uint16_t wp;
    const char *extra[] = {"--max-frame-bytes", "65536", NULL};
    struct broker_proc b = ws_start(&wp, 1, extra);
    uint8_t *big = calloc(1, 70000);

    /* Before the hello: 4 KiB at most. */
    struct wsc *w = wsc_connect(wp);
    wsc_send_frame(w, true, 0x2, big, 5000, true);
    expect_too_large(w, "send a hello first");
    wsc_close(w);
    /* After it: --max-frame-bytes; in one frame, and in fragments. */
    w = wsc_connect(wp);
    assert_int_equal(wsc_hello(w, NULL), 1);
    wsc_send_frame(w, true, 0x2, big, 65537, true);
    expect_too_large(w, "max_frame_bytes 65536");
    wsc_close(w);
    w = wsc_connect(wp);
    assert_int_equal(wsc_hello(w, NULL), 1);
    wsc_send_frame(w, false, 0x2, big, 40000, true);
    wsc_send_frame(w, true, 0x0, big, 30000, true);
    expect_too_large(w, "message of 70000 bytes");
    wsc_close(w);
    /* The limit itself passes: an emit of exactly 65536 bytes (its payload a Struct with one
     * long string) is acknowledged. */
    w = wsc_connect(wp);
    assert_int_equal(wsc_hello(w, NULL), 1);
    uint8_t *wire = malloc(70000), *pl = malloc(70000);
    size_t l = 65000, n = 0;
    for (int tries = 0; tries < 8; tries++) {
        size_t pn = payload_with_string(pl, l);
        struct codec_emit_in e;
        nexus_emit_init(&e, "ws:big:v1:completed", 1, "big-1", pl, pn);
        e.correlation = 5;
        n = codec_emit_encode(&e, wire) - 4;
        if (n == 65536)
            break;
        l = l + 65536 - n;
    }
    assert_int_equal(n, 65536);
    wsc_send_frame(w, true, 0x2, wire + 4, n, true);
    struct codec_envelope env;
    assert_int_equal(wsc_wait_kind(w, CODEC_KIND_EMIT_ACK, &env, 5000), 1);
    free(pl);
    wsc_close(w);
    free(wire);
    free(big);
    assert_int_equal(h_stop(&b), 0);
}

static void test_close_codes(void **state)
{
    (void)state;
    uint16_t wp;
    struct broker_proc b = ws_start(&wp, 1, NULL);
    struct codec_envelope env;

    /* The peer's code is echoed; a close without one is answered without. */
    static const uint16_t codes[] = {1000, 1001, 4001};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        struct wsc *w = wsc_connect(wp);
        assert_int_equal(wsc_hello(w, NULL), 1);
        uint8_t pl[8] = {(uint8_t)(codes[i] >> 8), (uint8_t)codes[i], 'b', 'y', 'e'};
        wsc_send_frame(w, true, 0x8, pl, 5, true);
        assert_int_equal(wsc_expect_close(w, 5000), codes[i]);
        assert_true(wsc_eof(w, 5000));
        wsc_close(w);
    }
    struct wsc *w = wsc_connect(wp);
    wsc_send_frame(w, true, 0x8, "", 0, true);
    assert_int_equal(wsc_expect_close(w, 5000), 0);
    assert_int_equal(w->msg_len, 0);
    wsc_close(w);
    /* Refused: an invalid code (1005 is never sent), a text message. */
    w = wsc_connect(wp);
    const uint8_t bad[2] = {0x03, 0xed};
    wsc_send_frame(w, true, 0x8, bad, 2, true);
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_PROTOCOL);
    wsc_close(w);
    w = wsc_connect(wp);
    wsc_send_frame(w, true, 0x1, "{\"hello\":1}", 11, true);
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_UNSUPPORTED);
    wsc_close(w);
    /* An empty message is an empty Nexus frame: frame_empty, then the broker closes (1008). */
    w = wsc_connect(wp);
    wsc_send_frame(w, true, 0x2, "", 0, true);
    assert_int_equal(wsc_recv_nexus(w, &env, 5000), 1);
    assert_int_equal(env.kind, CODEC_KIND_ERROR);
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_POLICY);
    assert_true(wsc_eof(w, 5000));
    wsc_close(w);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- the protocol over both transports ------------------------------------------------------ */

#define ORDER_EVENTS 300 /* per publisher */

static void test_same_order_as_tcp(void **state)
{
    (void)state;
    uint16_t wp;
    struct broker_proc b = ws_start(&wp, 2, NULL);
    int64_t campaign = h_campaign_on(1, 2, 500);
    struct nexus_client *tsub = h_connect(&b, NULL), *tpub = h_connect(&b, NULL);
    assert_non_null(tsub);
    assert_non_null(tpub);
    const char *pat[] = {"*"};
    uint64_t sid;
    assert_int_equal(nexus_subscribe_sync(tsub, campaign, pat, 1, NULL, &sid, NULL, 5000), 1);
    struct wsc *wsub = wsc_connect(wp), *wpub = wsc_connect(wp);
    assert_int_equal(wsc_hello(wsub, NULL), 1);
    assert_int_equal(wsc_hello(wpub, NULL), 1);
    assert_int_equal(wsc_subscribe(wsub, campaign), 1);

    /* Publishers on both transports, interleaved, fire and forget. */
    for (int i = 0; i < ORDER_EVENTS; i++) {
        char id[32];
        struct codec_emit_in e;
        snprintf(id, sizeof(id), "tcp-%d", i);
        nexus_emit_init(&e, "order:placed:v1:completed", campaign, id, NULL, 0);
        assert_int_equal(nexus_send_emit(tpub, &e), 0);
        snprintf(id, sizeof(id), "ws-%d", i);
        nexus_emit_init(&e, "order:placed:v1:completed", campaign, id, NULL, 0);
        uint8_t wire[256];
        size_t n = codec_emit_encode(&e, wire);
        wsc_send_nexus(wpub, wire, n);
        if (i % 50 == 0)
            assert_int_equal(nexus_flush(tpub), 0);
    }
    assert_int_equal(nexus_flush(tpub), 0);

    /* Both subscribers: every event, sequences 1, 2, 3, ..., the same ids in the same order. */
    static char tcp_ids[2 * ORDER_EVENTS][16], ws_ids[2 * ORDER_EVENTS][16];
    int64_t deadline = h_now_ms() + 30000;
    for (int i = 0; i < 2 * ORDER_EVENTS; i++) {
        struct nexus_frame f;
        int r;
        do
            r = nexus_recv(tsub, &f, (int)(deadline - h_now_ms()));
        while (r == 1 && f.kind != CODEC_KIND_EVENT);
        assert_int_equal(r, 1);
        assert_int_equal(f.u.event.sequence, (uint64_t)i + 1);
        snprintf(tcp_ids[i], sizeof(tcp_ids[i]), "%.*s", (int)f.u.event.event_id.len,
                 (const char *)f.u.event.event_id.ptr);
    }
    for (int i = 0; i < 2 * ORDER_EVENTS; i++) {
        struct codec_envelope env;
        assert_int_equal(wsc_wait_kind(wsub, CODEC_KIND_EVENT, &env, 30000), 1);
        struct codec_event_in ev;
        char err[CODEC_ERR_BYTES];
        assert_int_equal(codec_event_decode(env.body.ptr, env.body.len, &ev, err), 0);
        assert_int_equal(ev.sequence, (uint64_t)i + 1);
        snprintf(ws_ids[i], sizeof(ws_ids[i]), "%.*s", (int)ev.event_id.len,
                 (const char *)ev.event_id.ptr);
        assert_string_equal(ws_ids[i], tcp_ids[i]);
    }
    /* Each publisher's own events kept their order. */
    int next_tcp = 0, next_ws = 0;
    for (int i = 0; i < 2 * ORDER_EVENTS; i++) {
        int k;
        if (sscanf(tcp_ids[i], "tcp-%d", &k) == 1)
            assert_int_equal(k, next_tcp++);
        else if (sscanf(tcp_ids[i], "ws-%d", &k) == 1)
            assert_int_equal(k, next_ws++);
        else
            fail_msg("unexpected id %s", tcp_ids[i]);
    }
    wsc_close(wsub);
    wsc_close(wpub);
    nexus_close(tsub);
    nexus_close(tpub);
    assert_int_equal(h_stop(&b), 0);
}

static void test_authentication(void **state)
{
    (void)state;
    uint16_t wp;
    const char *extra[] = {"--token", "s3cret-token-for-ws", NULL};
    struct broker_proc b = ws_start(&wp, 1, extra);
    struct codec_envelope env;
    /* A frame before the hello, a wrong token: unauthorized, closed (1008). */
    struct wsc *w = wsc_connect(wp);
    uint8_t f[256];
    int n = codec_ping_encode(f, sizeof(f), 3, 1);
    wsc_send_nexus(w, f, (size_t)n);
    assert_int_equal(wsc_recv_nexus(w, &env, 5000), 1);
    assert_int_equal(env.kind, CODEC_KIND_ERROR);
    assert_int_equal(wsc_expect_close(w, 5000), WS_CLOSE_POLICY);
    wsc_close(w);
    w = wsc_connect(wp);
    assert_int_equal(wsc_hello(w, "wrong-token"), -4);
    wsc_close(w);
    w = wsc_connect(wp);
    assert_int_equal(wsc_hello(w, "s3cret-token-for-ws"), 1);
    assert_int_equal(wsc_subscribe(w, 1), 1);
    wsc_close(w);
    assert_int_equal(h_stop(&b), 0);
}

/* slow_disconnects summed over the broker's shards (a stats round trip on connection q). */
static uint64_t slow_disconnects(struct nexus_client *q)
{
    struct nexus_frame f;
    uint64_t corr = nexus_next_correlation(q), rss, n = 0;
    assert_int_equal(nexus_send_stats(q, corr), 0);
    assert_int_equal(nexus_wait_reply(q, corr, &f, 5000), 1);
    struct codec_shard_stats st[8];
    int k = codec_stats_reply_decode(f.body.ptr, f.body.len, st, 8, &rss);
    assert_true(k >= 1 && k <= 8);
    for (int i = 0; i < k; i++)
        n += st[i].slow_disconnects;
    return n;
}

/* A WebSocket subscriber that does not read is a slow consumer like any other. */
static void test_slow_consumer(void **state)
{
    (void)state;
    uint16_t wp;
    const char *extra[] = {"--max-outbound-bytes", "65536", NULL};
    struct broker_proc b = ws_start(&wp, 1, extra);
    struct wsc *w = wsc_open(wp);
    assert_non_null(w);
    int small = 4096;
    setsockopt(w->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    char resp[512];
    assert_int_equal(wsc_upgrade(w, "", resp, sizeof(resp)), 101);
    assert_int_equal(wsc_hello(w, NULL), 1);
    assert_int_equal(wsc_subscribe(w, 9), 1);
    struct nexus_client *p = h_connect(&b, NULL);
    assert_int_equal(slow_disconnects(p), 0);
    static uint8_t payload[2000];
    bool closed = false;
    for (int i = 0; i < 20000 && !closed; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "slow:ws:v1:completed", 9, NULL, NULL, 0);
        e.entity_id.ptr = payload;
        e.entity_id.len = 1000;
        assert_int_equal(nexus_send_emit(p, &e), 0);
        if (i % 100 == 99)
            closed = slow_disconnects(p) >= 1; /* also a barrier: the emits were handled */
    }
    assert_true(closed);
    assert_true(wsc_eof(w, 10000)); /* closed without reading what was queued */
    wsc_close(w);
    nexus_close(p);
    assert_int_equal(h_stop(&b), 0);
}

/* Reads the metrics page (GET /metrics) into out. */
static void scrape(uint16_t port, char *out, size_t cap)
{
    char err[128];
    int fd = nexus_tcp_connect("127.0.0.1", port, err, sizeof(err));
    assert_true(fd >= 0);
    const char *req = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    size_t n = 0;
    ssize_t k;
    while (n + 1 < cap && (k = recv(fd, out + n, cap - n - 1, 0)) > 0)
        n += (size_t)k;
    out[n] = 0;
    close(fd);
}

/* The sum over shards of a metric's samples (those whose labels hold `label`, if given). */
static uint64_t metric_sum(const char *page, const char *name, const char *label)
{
    uint64_t sum = 0, v;
    size_t nl = strlen(name);
    for (const char *p = page; (p = strstr(p, name)); p += nl) {
        if (p[nl] != '{' || (p != page && p[-1] != '\n'))
            continue;
        const char *end = strchr(p, '}');
        if (!end)
            break;
        bool match = !label || (strstr(p, label) && strstr(p, label) < end);
        if (match && sscanf(end + 1, " %lu", &v) == 1)
            sum += v;
    }
    return sum;
}

static void test_drain_and_metrics(void **state)
{
    (void)state;
    uint16_t wp, mp = h_free_port();
    char maddr[64];
    snprintf(maddr, sizeof(maddr), "127.0.0.1:%u", mp);
    const char *extra[] = {"--metrics", maddr, NULL};
    struct broker_proc b = ws_start(&wp, 2, extra);
    struct wsc *w1 = wsc_connect(wp), *w2 = wsc_connect(wp);
    assert_int_equal(wsc_hello(w1, NULL), 1);
    assert_int_equal(wsc_hello(w2, NULL), 1);
    struct wsc *bad = wsc_open(wp);
    char resp[512];
    assert_int_equal(wsc_upgrade_raw(bad, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", resp, sizeof(resp)),
                     426);
    wsc_close(bad);
    struct nexus_client *c = h_connect(&b, NULL);
    /* Two open WebSocket connections (on whichever shards), one TCP one (once the
     * harness's probe connection is gone), one refused upgrade. */
    static char page[1 << 20];
    uint64_t ws_open = 0, tcp_open = 0, refused = 0;
    for (int64_t deadline = h_now_ms() + 10000; h_now_ms() < deadline; usleep(20000)) {
        scrape(mp, page, sizeof(page));
        ws_open = metric_sum(page, "nexus_transport_connections", "websocket");
        tcp_open = metric_sum(page, "nexus_transport_connections", "tcp");
        refused = metric_sum(page, "nexus_websocket_upgrades_refused_total", NULL);
        if (ws_open == 2 && tcp_open == 1 && refused == 1)
            break;
    }
    assert_int_equal(ws_open, 2);
    assert_int_equal(tcp_open, 1);
    assert_int_equal(refused, 1);
    nexus_close(c);

    /* SIGTERM: each WebSocket client gets its goaway, then close 1001, then the end. */
    kill(b.pid, SIGTERM);
    struct wsc *ws[2] = {w1, w2};
    for (int i = 0; i < 2; i++) {
        struct codec_envelope env;
        assert_int_equal(wsc_wait_kind(ws[i], CODEC_KIND_GOAWAY, &env, 10000), 1);
        assert_int_equal(wsc_expect_close(ws[i], 10000), WS_CLOSE_GOING_AWAY);
        assert_true(wsc_eof(ws[i], 10000));
        wsc_close(ws[i]);
    }
    assert_int_equal(h_wait_exit(&b, 15000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake),         cmocka_unit_test(test_masking_and_fragments),
        cmocka_unit_test(test_oversized),         cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_same_order_as_tcp), cmocka_unit_test(test_authentication),
        cmocka_unit_test(test_slow_consumer),     cmocka_unit_test(test_drain_and_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
