// SPDX-License-Identifier: Apache-2.0
//
// Bad input, every class (docs/DESIGN.md §1 "safe on bad input", §5): each bad frame gets an error
// with the documented code and the offending frame's correlation; length errors close the
// connection, the others leave it usable; the broker keeps serving a second client; and no
// event accepted before the bad frame is lost (a subscriber gets every one of them, including
// the emits written in the same burst just before the bad frame).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "harness.h"

#define SHARDS 2

/* A broker (started with up to 5 extra flags), a campaign owned by shard 1, its subscriber on
 * shard 0, and the number of events accepted so far (their sequences are 1..accepted). */
struct fx {
    struct broker_proc b;
    struct nexus_client *sub;
    int64_t camp;
    uint64_t accepted;
    uint64_t seen; /* events the subscriber has been checked to have received, in order */
};

/* Reads the subscriber until it has every accepted event, in sequence order. Needed before
 * another connection emits: fire-and-forget emits of a connection on another shard may still
 * be on their way to the owner, and there is no order between two connections. */
static void fx_sync(struct fx *fx)
{
    while (fx->seen < fx->accepted) {
        struct nexus_frame f;
        int r = nexus_recv(fx->sub, &f, 5000);
        if (r != 1)
            fail_msg("subscriber: event %llu of %llu missing (r=%d)",
                     (unsigned long long)fx->seen + 1, (unsigned long long)fx->accepted, r);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, ++fx->seen);
    }
}

static void fx_start(struct fx *fx, const char *const *flags)
{
    memset(fx, 0, sizeof(*fx));
    const char *f[6] = {NULL};
    for (int i = 0; flags && i < 5 && flags[i]; i++)
        f[i] = flags[i];
    fx->b = H_START(SHARDS, f[0], f[1], f[2], f[3], f[4], NULL);
    fx->camp = h_campaign_on(1, SHARDS, 4000);
    fx->sub = h_connect_on(&fx->b, 0);
    assert_non_null(fx->sub);
    assert_int_equal(nexus_subscribe_sync(fx->sub, fx->camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
}

/* One acknowledged emit from c; checks the sequence continues. */
static void fx_emit(struct fx *fx, struct nexus_client *c)
{
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:success", fx->camp, NULL, "\x0a\x00", 2);
    struct nexus_frame f;
    int r = nexus_emit_sync(c, &e, &f, 5000);
    if (r != 1)
        fail_msg("emit after %llu accepted events: r=%d", (unsigned long long)fx->accepted, r);
    assert_true(h_slice_eq(f.u.event.message, "accepted"));
    assert_int_equal(f.u.event.sequence, ++fx->accepted);
}

/* Buffers `n` fire-and-forget emits on c (not flushed): they travel in the same write as what
 * the caller buffers next. */
static void fx_emit_buffered(struct fx *fx, struct nexus_client *c, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "order:placed:v1:success", fx->camp, NULL, NULL, 0);
        assert_int_equal(nexus_send_emit(c, &e), 0);
        fx->accepted++;
    }
}

/* Expects the next frame for correlation corr to be an error with `code`. For corr 0 (length
 * errors, undecodable envelopes: there is no correlation to echo) the next frame is taken. */
static void expect_error(struct nexus_client *c, uint64_t corr, const char *code)
{
    struct nexus_frame f;
    int r = corr ? nexus_wait_reply(c, corr, &f, 5000) : nexus_recv(c, &f, 5000);
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
    assert_true(f.u.error.message.len > 0);
}

/* The broker closed c: nothing but the end of the stream is left. */
static void expect_closed(struct nexus_client *c)
{
    struct nexus_frame f;
    int r = nexus_recv(c, &f, 5000);
    if (r != -ECONNRESET)
        fail_msg("connection not closed: r=%d kind=%u", r, r == 1 ? f.kind : 0);
}

/* The connection still works: a ping round trip and an accepted emit. */
static void expect_usable(struct fx *fx, struct nexus_client *c)
{
    assert_int_equal(h_ping(c, 5000), 1);
    fx_emit(fx, c);
}

/* A second client is served, and the subscriber got every accepted event, in order. */
static void fx_finish(struct fx *fx)
{
    fx_sync(fx);
    struct nexus_client *c2 = h_connect_on(&fx->b, 1);
    assert_non_null(c2);
    fx_emit(fx, c2);
    nexus_close(c2);
    fx_sync(fx);
    struct nexus_frame f;
    assert_int_equal(nexus_recv(fx->sub, &f, 100), 0);
    nexus_close(fx->sub);
    assert_int_equal(h_stop(&fx->b), 0);
}

/* The common shape: a client on shard 1 emits 5 acknowledged events, then 5 fire-and-forget
 * ones and the bad bytes in one write. Returns the client. */
static struct nexus_client *send_bad(struct fx *fx, const void *bad, size_t len)
{
    struct nexus_client *c = h_connect_on(&fx->b, 1);
    assert_non_null(c);
    for (int i = 0; i < 5; i++)
        fx_emit(fx, c);
    fx_emit_buffered(fx, c, 5);
    assert_int_equal(nexus_send_raw(c, bad, len), 0);
    assert_int_equal(nexus_flush(c), 0);
    return c;
}

/* Writes a valid common.Payload of exactly `len` bytes (an unknown field 100 of x's: proto3
 * keeps unknown fields, so the broker must carry it as is) and returns len, or 0 if no such
 * message has exactly len bytes. */
static size_t payload_fill(uint8_t *out, size_t len)
{
    for (size_t v = 1; v <= 3; v++) {
        if (len < 2 + v)
            break;
        size_t k = len - 2 - v;
        if (wire_varint_len(k) != v)
            continue;
        uint8_t *p = wire_put_tag(out, 100, WIRE_LEN);
        p = wire_put_varint(p, k);
        memset(p, 'x', k);
        return len;
    }
    return 0;
}

/* ---- framing errors: connection closed ----------------------------------------------------- */

static void test_frame_empty(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    struct nexus_client *c = send_bad(&fx, "\0\0\0\0", 4);
    expect_error(c, 0, "frame_empty");
    expect_closed(c);
    nexus_close(c);
    fx_finish(&fx);
}

static void test_frame_too_large(void **state)
{
    (void)state;
    struct fx fx;
    const char *flags[] = {"--max-frame-bytes", "65536", NULL};
    fx_start(&fx, flags);
    /* A frame of exactly the maximum is accepted (an emit padded with a payload). */
    struct nexus_client *c = h_connect_on(&fx.b, 1);
    assert_non_null(c);
    uint8_t *pl = malloc(65536);
    assert_non_null(pl);
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:success", fx.camp, "max", pl, 0);
    e.correlation = nexus_next_correlation(c);
    e.has_payload = false;
    size_t want = 65536 + 4, body = codec_emit_size(&e);
    e.has_payload = true;
    /* The payload's length and the varints around it grow together: search downwards. */
    for (size_t len = want - body; len > want - body - 16; len--) {
        e.payload.len = (uint32_t)len;
        if (codec_emit_size(&e) == want && payload_fill(pl, len) == len)
            break;
    }
    assert_int_equal(codec_emit_size(&e), want);
    assert_int_equal(nexus_send_emit(c, &e), 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(c, e.correlation, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
    assert_int_equal(f.u.event.sequence, ++fx.accepted);
    nexus_close(c);
    free(pl);

    /* One byte more is refused at its header, before the body is even sent. */
    uint8_t hdr[4];
    wire_put_be32(hdr, 65537);
    c = send_bad(&fx, hdr, 4);
    expect_error(c, 0, "frame_too_large");
    expect_closed(c);
    nexus_close(c);
    /* And a hostile 4 GiB length likewise. */
    c = send_bad(&fx, "\xff\xff\xff\xff", 4);
    expect_error(c, 0, "frame_too_large");
    expect_closed(c);
    nexus_close(c);
    fx_finish(&fx);
}

/* ---- undecodable frames: error, connection stays open -------------------------------------- */

static void test_bad_protobuf(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    /* An envelope that is not protobuf at all (a truncated varint tag): no correlation can be
     * read from it, so the error carries 0. */
    uint8_t buf[64];
    wire_put_be32(buf, 3);
    memcpy(buf + 4, "\xff\xff\xff", 3);
    struct nexus_client *c = send_bad(&fx, buf, 7);
    expect_error(c, 0, "bad_protobuf");
    expect_usable(&fx, c);

    /* A valid envelope whose emit body is broken (event_id claims 5 bytes, has 2). */
    uint64_t corr = 9001;
    size_t n = h_raw_frame(buf, corr, CODEC_KIND_EMIT,
                           "\x0a\x05"
                           "ab",
                           4);
    fx_emit_buffered(&fx, c, 3);
    assert_int_equal(nexus_send_raw(c, buf, n), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, corr, "bad_protobuf");
    expect_usable(&fx, c);

    /* Subscribe and unsubscribe bodies that are not protobuf. */
    corr = 9002;
    n = h_raw_frame(buf, corr, CODEC_KIND_SUBSCRIBE,
                    "\x0a\x09"
                    "order",
                    7);
    assert_int_equal(nexus_send_raw(c, buf, n), 0);
    expect_error(c, corr, "bad_protobuf");
    corr = 9003;
    n = h_raw_frame(buf, corr, CODEC_KIND_UNSUBSCRIBE, "\x08", 1);
    assert_int_equal(nexus_send_raw(c, buf, n), 0);
    expect_error(c, corr, "bad_protobuf");
    expect_usable(&fx, c);

    /* Invalid UTF-8 in event_id (a proto3 string). */
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:success", fx.camp, NULL, NULL, 0);
    e.event_id.ptr = (const uint8_t *)"id-\xff\xfe";
    e.event_id.len = 5;
    e.correlation = 9004;
    fx_emit_buffered(&fx, c, 2);
    assert_int_equal(nexus_send_emit(c, &e), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 9004, "bad_protobuf");
    /* An overlong encoding of '/' is not UTF-8 either. */
    e.event_id.ptr = (const uint8_t *)"\xc0\xaf";
    e.event_id.len = 2;
    e.correlation = 9005;
    assert_int_equal(nexus_send_emit(c, &e), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 9005, "bad_protobuf");
    expect_usable(&fx, c);

    /* Invalid UTF-8 deep inside the payload: Payload{data: {a: {b: "\xff"}}}. Forwarded, it
     * would make a strict subscriber's decoder fail; the publisher is told where instead, and
     * the subscriber gets nothing of it (fx_finish counts what it received). */
    static const uint8_t deep[] = {
        0x0a, 0x13,                   /* Payload.data: Struct (19 bytes) */
        0x0a, 0x11,                   /*   fields entry (17) */
        0x0a, 0x01, 'a',              /*     key "a" */
        0x12, 0x0c,                   /*     value: Value (12) */
        0x2a, 0x0a,                   /*       struct_value: Struct (10) */
        0x0a, 0x08,                   /*         fields entry (8) */
        0x0a, 0x01, 'b',              /*           key "b" */
        0x12, 0x03, 0x1a, 0x01, 0xff, /*           value: Value{string_value: "\xff"} */
    };
    nexus_emit_init(&e, "order:placed:v1:success", fx.camp, NULL, deep, sizeof(deep));
    e.correlation = 9006;
    fx_emit_buffered(&fx, c, 2);
    assert_int_equal(nexus_send_emit(c, &e), 0);
    assert_int_equal(nexus_flush(c), 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(c, 9006, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_ERROR);
    assert_true(h_slice_eq(f.u.error.code, "bad_protobuf"));
    assert_true(h_slice_has(f.u.error.message, "payload.data"));
    assert_true(h_slice_has(f.u.error.message, "UTF-8"));
    expect_usable(&fx, c);
    nexus_close(c);
    fx_finish(&fx);
}

static void test_unknown_frame(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    uint8_t buf[64];
    /* A kind no version knows (field 30). */
    size_t n = h_raw_frame(buf, 31337, 30, "", 0);
    struct nexus_client *c = send_bad(&fx, buf, n);
    expect_error(c, 31337, "unknown_frame");
    expect_usable(&fx, c);
    /* Kinds only the broker sends: event, welcome, emit_ack, subscribe_ack, error, gap. */
    const uint32_t kinds[] = {CODEC_KIND_EVENT,         CODEC_KIND_WELCOME, CODEC_KIND_EMIT_ACK,
                              CODEC_KIND_SUBSCRIBE_ACK, CODEC_KIND_ERROR,   CODEC_KIND_GAP};
    for (uint32_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        uint64_t corr = 40000 + i;
        n = h_raw_frame(buf, corr, kinds[i], "\x08\x01\x12\x01x", 5);
        fx_emit_buffered(&fx, c, 1);
        assert_int_equal(nexus_send_raw(c, buf, n), 0);
        assert_int_equal(nexus_flush(c), 0);
        expect_error(c, corr, "unknown_frame");
    }
    /* A frame with a correlation and no body at all. */
    uint8_t *p = wire_put_varint_field(buf + 4, 1, 41000);
    wire_put_be32(buf, (uint32_t)(p - buf - 4));
    assert_int_equal(nexus_send_raw(c, buf, (size_t)(p - buf)), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 41000, "unknown_frame");
    expect_usable(&fx, c);
    nexus_close(c);
    fx_finish(&fx);
}

static void test_invalid_event_type(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:shipped", fx.camp, NULL, NULL, 0);
    e.correlation = 777;
    uint8_t buf[256];
    size_t n = codec_emit_encode(&e, buf);
    struct nexus_client *c = send_bad(&fx, buf, n);
    expect_error(c, 777, "invalid_event_type");
    expect_usable(&fx, c);
    nexus_close(c);
    fx_finish(&fx);
}

/* ---- limits -------------------------------------------------------------------------------- */

static void test_limits(void **state)
{
    (void)state;
    struct fx fx;
    const char *flags[] = {"--max-subscriptions", "3", NULL};
    fx_start(&fx, flags);
    struct nexus_client *c = h_connect_on(&fx.b, 1);
    assert_non_null(c);
    for (int i = 0; i < 3; i++)
        fx_emit(&fx, c);
    /* The subscriber already holds one subscription: two more fit, the fourth does not. */
    uint64_t sids[3] = {0};
    assert_int_equal(nexus_subscribe_sync(fx.sub, 11, NULL, 0, NULL, &sids[1], NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(fx.sub, 12, NULL, 0, NULL, &sids[2], NULL, 5000), 1);
    uint64_t corr = nexus_next_correlation(fx.sub);
    assert_int_equal(nexus_send_subscribe(fx.sub, corr, 13, NULL, 0, NULL), 0);
    expect_error(fx.sub, corr, "limit_exceeded");
    /* Removing one makes room again. */
    corr = nexus_next_correlation(fx.sub);
    assert_int_equal(nexus_send_unsubscribe(fx.sub, corr, sids[2]), 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(fx.sub, corr, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(nexus_subscribe_sync(fx.sub, 13, NULL, 0, NULL, NULL, NULL, 5000), 1);

    /* Patterns per subscription: 64 fit, 65 do not. */
    static char pat_text[65][40];
    const char *pats[65];
    for (int i = 0; i < 65; i++) {
        snprintf(pat_text[i], sizeof(pat_text[i]), "svc%d:*:v1:*", i);
        pats[i] = pat_text[i];
    }
    corr = nexus_next_correlation(c);
    assert_int_equal(nexus_send_subscribe(c, corr, 14, pats, 65, NULL), 0);
    expect_error(c, corr, "limit_exceeded");
    uint64_t sid = 0;
    assert_int_equal(nexus_subscribe_sync(c, 14, pats, 64, NULL, &sid, NULL, 5000), 1);
    assert_true(sid > 0);
    expect_usable(&fx, c);
    nexus_close(c);
    fx_finish(&fx);
}

/* Sum of the connections every shard reports, from a stats frame on c. */
static uint64_t broker_connections(struct nexus_client *c)
{
    struct codec_shard_stats st[SHARDS];
    int n = h_stats(c, st, SHARDS, 5000);
    assert_int_equal(n, SHARDS);
    return st[0].connections + st[1].connections;
}

/* Waits (bounded, polling the stats frame) until the broker counts `want` connections. */
static void wait_connections(struct nexus_client *c, uint64_t want)
{
    int64_t deadline = h_now_ms() + 5000;
    uint64_t have;
    while ((have = broker_connections(c)) != want) {
        if (h_now_ms() > deadline)
            fail_msg("broker counts %llu connections, expected %llu", (unsigned long long)have,
                     (unsigned long long)want);
        usleep(10000);
    }
}

static void test_max_connections(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--max-connections", "3", NULL);
    struct nexus_client *a = h_connect(&b, NULL);
    assert_non_null(a);
    wait_connections(a, 1); /* the harness's start-up probe has been closed */
    struct nexus_client *c2 = h_connect(&b, NULL), *c3 = h_connect(&b, NULL);
    assert_non_null(c2);
    assert_non_null(c3);
    char err[256];
    struct nexus_client *d = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(d);
    expect_error(d, 0, "limit_exceeded");
    expect_closed(d);
    nexus_close(d);
    /* The three still work; closing one makes room. */
    assert_int_equal(h_ping(a, 5000), 1);
    assert_int_equal(h_ping(c2, 5000), 1);
    assert_int_equal(h_ping(c3, 5000), 1);
    nexus_close(c3);
    wait_connections(a, 2);
    d = h_connect(&b, NULL);
    assert_non_null(d);
    assert_int_equal(h_ping(d, 5000), 1);
    nexus_close(d);
    nexus_close(c2);
    nexus_close(a);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- hello: version and token -------------------------------------------------------------- */

static void test_unsupported_version(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    struct nexus_client *c = h_connect_on(&fx.b, 1);
    assert_non_null(c);
    for (int i = 0; i < 3; i++)
        fx_emit(&fx, c);
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_hello_encode(buf, sizeof(buf), 555, 2, NULL, "future-client");
    assert_true(n > 0);
    fx_emit_buffered(&fx, c, 2);
    assert_int_equal(nexus_send_raw(c, buf, (size_t)n), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 555, "unsupported_version");
    nexus_close(c);
    fx_finish(&fx);
}

static void test_token(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--token", "secret", NULL);
    int64_t camp = h_campaign_on(1, SHARDS, 4100);
    char err[256];
    /* An authorized subscriber and publisher. */
    struct nexus_client *sub = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    struct nexus_client *pub = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(sub);
    assert_non_null(pub);
    struct nexus_frame f;
    assert_int_equal(nexus_hello_sync(sub, "secret", "sub", &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_WELCOME);
    assert_int_equal(f.u.welcome.protocol_version, 1);
    assert_int_equal(f.u.welcome.shard_count, SHARDS);
    assert_int_equal(nexus_hello_sync(pub, "secret", "pub", &f, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    uint64_t accepted = 0;
    for (int i = 0; i < 3; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "order:placed:v1:success", camp, NULL, NULL, 0);
        assert_int_equal(nexus_emit_sync(pub, &e, &f, 5000), 1);
        assert_int_equal(f.u.event.sequence, ++accepted);
    }

    /* No hello: the first frame is refused and the connection closed. */
    struct nexus_client *c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(c);
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:success", camp, NULL, NULL, 0);
    e.correlation = 61;
    assert_int_equal(nexus_send_emit(c, &e), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 61, "unauthorized");
    expect_closed(c);
    nexus_close(c);
    /* Subscribing without hello is refused too. */
    c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(nexus_send_subscribe(c, 62, camp, NULL, 0, NULL), 0);
    assert_int_equal(nexus_flush(c), 0);
    expect_error(c, 62, "unauthorized");
    expect_closed(c);
    nexus_close(c);

    /* Wrong tokens: missing, wrong, a prefix, an extension, another case. */
    const char *wrong[] = {NULL, "guess", "secre", "secretX", "SECRET", "secrets"};
    for (uint32_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
        assert_non_null(c);
        assert_int_equal(nexus_send_hello(c, 70 + i, wrong[i], "intruder"), 0);
        assert_int_equal(nexus_flush(c), 0);
        expect_error(c, 70 + i, "unauthorized");
        expect_closed(c);
        nexus_close(c);
    }

    /* The right token: welcome, and the connection works. */
    c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(nexus_hello_sync(c, "secret", "friend", &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_WELCOME);
    nexus_emit_init(&e, "order:placed:v1:success", camp, NULL, NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), 1);
    assert_int_equal(f.u.event.sequence, ++accepted);
    nexus_close(c);

    /* Nothing accepted was lost, nothing refused was delivered. */
    for (uint64_t s = 1; s <= accepted; s++) {
        assert_int_equal(nexus_recv(sub, &f, 5000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, s);
    }
    assert_int_equal(nexus_recv(sub, &f, 100), 0);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- awkward but valid framing, and a frame cut off by the close ------------------------- */

/* Frames written one byte per segment: the broker assembles headers and bodies across any
 * number of receives. */
static void test_byte_at_a_time(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    struct nexus_client *c = h_connect_on(&fx.b, 0);
    assert_non_null(c);
    uint8_t buf[256];
    for (int i = 0; i < 3; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "order:placed:v1:success", fx.camp, NULL, "\x0a\x00", 2);
        e.correlation = 100 + (uint64_t)i;
        size_t n = codec_emit_encode(&e, buf);
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(nexus_send_raw(c, buf + k, 1), 0);
            assert_int_equal(nexus_flush(c), 0);
            if (k % 8 == 0)
                usleep(200); /* let the bytes leave as separate segments */
        }
        struct nexus_frame f;
        assert_int_equal(nexus_wait_reply(c, e.correlation, &f, 5000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
        assert_int_equal(f.u.event.sequence, ++fx.accepted);
    }
    nexus_close(c);
    fx_finish(&fx);
}

/* A connection that ends in the middle of a frame (header promises 100 bytes, 10 come):
 * the whole frames before it count, the fragment is discarded, nothing else is affected. */
static void test_truncated_frame_at_close(void **state)
{
    (void)state;
    struct fx fx;
    fx_start(&fx, NULL);
    for (int round = 0; round < 2; round++) {
        struct nexus_client *c = h_connect_on(&fx.b, (uint32_t)round);
        assert_non_null(c);
        for (int i = 0; i < 3; i++)
            fx_emit(&fx, c);
        fx_emit_buffered(&fx, c, 4);
        uint8_t frag[14];
        wire_put_be32(frag, 100);
        memset(frag + 4, 0x08, 10);
        /* Round 0 cuts the body short, round 1 the header itself. */
        assert_int_equal(nexus_send_raw(c, frag, round == 0 ? sizeof(frag) : 2), 0);
        assert_int_equal(nexus_flush(c), 0);
        nexus_close(c);
        fx_sync(&fx);
    }
    fx_finish(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_frame_empty, h_teardown),
        cmocka_unit_test_teardown(test_frame_too_large, h_teardown),
        cmocka_unit_test_teardown(test_bad_protobuf, h_teardown),
        cmocka_unit_test_teardown(test_unknown_frame, h_teardown),
        cmocka_unit_test_teardown(test_invalid_event_type, h_teardown),
        cmocka_unit_test_teardown(test_limits, h_teardown),
        cmocka_unit_test_teardown(test_max_connections, h_teardown),
        cmocka_unit_test_teardown(test_unsupported_version, h_teardown),
        cmocka_unit_test_teardown(test_token, h_teardown),
        cmocka_unit_test_teardown(test_byte_at_a_time, h_teardown),
        cmocka_unit_test_teardown(test_truncated_frame_at_close, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
