// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/envelope_test.c: cmocka tests of codec/envelope.h. Inputs are built with a small
// protobuf writer local to this file (independent of codec/wire.h, so that a bug shared by the
// codec's reader and writer cannot hide), and then decoded: the envelope, an emit's routing
// fields and its opaque metadata/payload slices, malformed input of every kind. The splice test
// checks the central promise of the codec: metadata and payload of an emit reach subscribers
// byte for byte. Every encoder is decoded back with the matching decoder, and the size
// functions are checked against the bytes actually written. Single threaded; no I/O.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/envelope.h"
#include "codec/wire.h"

/* ---- a protobuf writer independent of the codec ------------------------------------------ */

#define PB_BYTES_MAX 8192

struct pb {
    uint8_t b[PB_BYTES_MAX];
    size_t n;
};

static void pb_raw(struct pb *m, const void *data, size_t len)
{
    assert_true(m->n + len <= sizeof(m->b));
    if (len)
        memcpy(m->b + m->n, data, len);
    m->n += len;
}

static void pb_varint(struct pb *m, uint64_t v)
{
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        if (v)
            byte |= 0x80;
        pb_raw(m, &byte, 1);
    } while (v);
}

static void pb_tag(struct pb *m, uint32_t number, unsigned type)
{
    pb_varint(m, ((uint64_t)number << 3) | type);
}

static void pb_bytes(struct pb *m, uint32_t number, const void *data, size_t len)
{
    pb_tag(m, number, 2);
    pb_varint(m, len);
    pb_raw(m, data, len);
}

static void pb_str(struct pb *m, uint32_t number, const char *s)
{
    pb_bytes(m, number, s, strlen(s));
}

static void pb_msg(struct pb *m, uint32_t number, const struct pb *sub)
{
    pb_bytes(m, number, sub->b, sub->n);
}

static void pb_u64(struct pb *m, uint32_t number, uint64_t v)
{
    pb_tag(m, number, 0);
    pb_varint(m, v);
}

static void pb_double(struct pb *m, uint32_t number, double d)
{
    uint8_t le[8];
    uint64_t bits;
    memcpy(&bits, &d, 8);
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(bits >> (8 * i));
    pb_tag(m, number, 1);
    pb_raw(m, le, 8);
}

static struct pb *pb_new(void)
{
    struct pb *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    return m;
}

/* google.protobuf.Value / Struct / ListValue helpers. */
static void value_string(struct pb *v, const char *s)
{
    pb_str(v, 3, s);
}

static void value_number(struct pb *v, double d)
{
    pb_double(v, 2, d);
}

static void value_bool(struct pb *v, bool b)
{
    pb_u64(v, 4, b);
}

static void value_null(struct pb *v)
{
    pb_u64(v, 1, 0);
}

/* Adds {key: value} to a Struct (map<string, Value> fields = 1). */
static void struct_put(struct pb *s, const char *key, const struct pb *value)
{
    struct pb *entry = pb_new();
    pb_str(entry, 1, key);
    pb_msg(entry, 2, value);
    pb_msg(s, 1, entry);
    free(entry);
}

/* Frame{correlation, kind: body}, without the length prefix. */
static void frame_of(struct pb *out, uint64_t correlation, uint32_t kind, const void *body,
                     size_t body_len)
{
    out->n = 0;
    if (correlation)
        pb_u64(out, 1, correlation);
    pb_bytes(out, kind, body, body_len);
}

static bool slice_is(struct codec_slice s, const char *want)
{
    return s.len == strlen(want) && (s.len == 0 || memcmp(s.ptr, want, s.len) == 0);
}

#define assert_slice(s, want)                                                                      \
    do {                                                                                           \
        if (!slice_is((s), (want)))                                                                \
            fail_msg("slice %s is \"%.*s\", want \"%s\"", #s, (int)(s).len,                        \
                     (s).ptr ? (const char *)(s).ptr : "", (want));                                \
    } while (0)

/* True if the slice lies inside buf[0..len). */
static bool slice_within(struct codec_slice s, const uint8_t *buf, size_t len)
{
    return s.ptr >= buf && s.ptr + s.len <= buf + len;
}

/* Checks the 4-byte length prefix of an encoded frame and decodes its envelope. */
static void unwrap(const uint8_t *out, long n, struct codec_envelope *env)
{
    char err[CODEC_ERR_BYTES] = "";
    assert_true(n > 4);
    assert_int_equal(wire_get_be32(out), (uint32_t)(n - 4));
    int r = codec_envelope_decode(out + 4, (size_t)n - 4, env, err);
    if (r != 0)
        fail_msg("envelope decode: %d %s", r, err);
}

/* ---- envelope ---------------------------------------------------------------------------- */

static void test_envelope_decode(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES];
    struct codec_envelope env;
    struct pb *body = pb_new();
    struct pb *fr = pb_new();
    pb_str(body, 2, "chat:send:v1:requested");
    frame_of(fr, 42, CODEC_KIND_EMIT, body->b, body->n);

    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.correlation, 42);
    assert_int_equal(env.kind, CODEC_KIND_EMIT);
    assert_int_equal(env.body.len, body->n);
    assert_ptr_equal(env.body.ptr, fr->b + 4); /* 08 2a 22 <len>: the body is a slice */
    assert_memory_equal(env.body.ptr, body->b, body->n);
    assert_string_equal(codec_kind_name(env.kind), "emit");

    /* Correlation of 64 bits (10-byte varint), after the body: field order is free. */
    fr->n = 0;
    pb_bytes(fr, CODEC_KIND_PING, "\x08\x01", 2);
    pb_u64(fr, 1, UINT64_MAX);
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_true(env.correlation == UINT64_MAX);
    assert_int_equal(env.kind, CODEC_KIND_PING);
    assert_int_equal(env.body.len, 2);

    /* A body kind this version does not know: its number, for unknown_frame. */
    frame_of(fr, 7, 50, "\x08\x01", 2);
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.kind, 50);
    assert_int_equal(env.correlation, 7);
    assert_string_equal(codec_kind_name(env.kind), "unknown");

    /* No body at all; and an empty frame. */
    fr->n = 0;
    pb_u64(fr, 1, 9);
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.kind, CODEC_KIND_NONE);
    assert_int_equal(env.correlation, 9);
    assert_int_equal(env.body.len, 0);
    assert_int_equal(codec_envelope_decode(fr->b, 0, &env, err), 0);
    assert_int_equal(env.kind, CODEC_KIND_NONE);
    assert_int_equal(env.correlation, 0);

    /* An empty body message (stats) is still a body. */
    frame_of(fr, 3, CODEC_KIND_STATS, NULL, 0);
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.kind, CODEC_KIND_STATS);
    assert_int_equal(env.body.len, 0);

    /* Two bodies: the last wins (proto3 oneof). */
    fr->n = 0;
    pb_bytes(fr, CODEC_KIND_HELLO, "\x08\x01", 2);
    pb_bytes(fr, CODEC_KIND_PONG, "\x08\x05", 2);
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.kind, CODEC_KIND_PONG);
    assert_memory_equal(env.body.ptr, "\x08\x05", 2);
    free(body);
    free(fr);
}

struct bad_input {
    const char *what;
    const uint8_t *bytes;
    size_t len;
};

#define BAD(what, ...)                                                                             \
    {                                                                                              \
        what, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})               \
    }

static void test_envelope_garbage(void **state)
{
    (void)state;
    const struct bad_input bad[] = {
        BAD("truncated tag", 0xff),
        BAD("tag without value", 0x08),
        BAD("truncated correlation varint", 0x08, 0x80),
        BAD("truncated 9-byte varint", 0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80),
        BAD("11-byte varint", 0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
            0x01),
        BAD("6-byte tag (field 1, zero-padded)", 0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01),
        BAD("length past the end", 0x22, 0x05, 0x01, 0x02),
        BAD("truncated length varint", 0x22, 0x80),
        BAD("field number 0", 0x00, 0x00),
        BAD("group start", 0x23, 0x24),
        BAD("invalid wire type 6", 0x0e, 0x00),
        BAD("invalid wire type 7", 0x27),
        BAD("text", 'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'),
        /* Wrong wire types for the schema. */
        BAD("correlation as bytes", 0x0a, 0x00),
        BAD("correlation as fixed64", 0x09, 1, 2, 3, 4, 5, 6, 7, 8),
        BAD("body as varint", 0x20, 0x01),
        BAD("body as fixed32", 0x25, 1, 2, 3, 4),
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        char err[CODEC_ERR_BYTES] = "";
        struct codec_envelope env;
        int r = codec_envelope_decode(bad[k].bytes, bad[k].len, &env, err);
        if (r != -EBADMSG)
            fail_msg("%s: got %d, want -EBADMSG", bad[k].what, r);
        assert_true(err[0] != '\0');
        /* A NULL err is allowed. */
        assert_int_equal(codec_envelope_decode(bad[k].bytes, bad[k].len, &env, NULL), -EBADMSG);
    }
    /* A zero-padded tag of 5 bytes is still a valid tag (protobuf's parsers take it). */
    const uint8_t five[] = {0x88, 0x80, 0x80, 0x80, 0x00, 0x07};
    struct codec_envelope env;
    assert_int_equal(codec_envelope_decode(five, sizeof(five), &env, NULL), 0);
    assert_int_equal(env.correlation, 7);
}

/* ---- emit -------------------------------------------------------------------------------- */

/* Metadata with features, tags and a global_context naming user and correlation ids. */
static void build_routing_metadata(struct pb *md, const char *user, const char *corr)
{
    struct pb *gc = pb_new();
    pb_str(md, 2, "feat_a");
    pb_str(md, 5, "tag_1");
    pb_str(gc, 1, user);
    pb_str(gc, 2, "9");
    pb_str(gc, 3, corr);
    pb_str(gc, 6, "web");
    pb_msg(md, 21, gc);
    free(gc);
}

static void test_emit_decode_routing(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES] = "";
    struct pb *md = pb_new();
    struct pb *pl = pb_new();
    struct pb *v = pb_new();
    struct pb *body = pb_new();
    build_routing_metadata(md, "user-1", "req-77");
    value_string(v, "hello");
    struct pb *data = pb_new();
    struct_put(data, "text", v);
    pb_msg(pl, 1, data);

    pb_str(body, 1, "evt-1");
    pb_str(body, 2, "chat:send:v1:requested");
    pb_str(body, 3, "entity-9");
    pb_msg(body, 4, md);
    pb_u64(body, 5, 123456789012ull);
    pb_msg(body, 6, pl);
    pb_u64(body, 15, 3);       /* unknown fields are skipped */
    pb_str(body, 99, "extra"); /* ... of any wire type */
    pb_double(body, 100, 1.5);

    struct codec_emit e;
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_slice(e.event_id, "evt-1");
    assert_slice(e.event_type, "chat:send:v1:requested");
    assert_slice(e.entity_id, "entity-9");
    assert_int_equal(e.campaign_id, 123456789012ll);
    assert_true(e.has_metadata);
    assert_true(e.has_payload);
    assert_slice(e.user_id, "user-1");
    assert_slice(e.correlation_id, "req-77");
    /* Opaque slices pointing into the input, not copies. */
    assert_int_equal(e.metadata.len, md->n);
    assert_int_equal(e.payload.len, pl->n);
    assert_true(slice_within(e.metadata, body->b, body->n));
    assert_true(slice_within(e.payload, body->b, body->n));
    assert_memory_equal(e.metadata.ptr, md->b, md->n);
    assert_memory_equal(e.payload.ptr, pl->b, pl->n);
    assert_true(slice_within(e.event_id, body->b, body->n));
    assert_true(slice_within(e.user_id, e.metadata.ptr, e.metadata.len));
    assert_true(slice_within(e.correlation_id, e.metadata.ptr, e.metadata.len));

    /* A negative campaign is a 10-byte varint (int64). */
    body->n = 0;
    pb_str(body, 2, "a:b:v1:c");
    pb_u64(body, 5, (uint64_t)-5);
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_int_equal(e.campaign_id, -5);
    assert_false(e.has_metadata);
    assert_false(e.has_payload);
    assert_int_equal(e.user_id.len, 0);
    assert_int_equal(e.correlation_id.len, 0);

    /* Present but empty metadata and payload are present. */
    body->n = 0;
    pb_bytes(body, 4, NULL, 0);
    pb_bytes(body, 6, NULL, 0);
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_true(e.has_metadata);
    assert_true(e.has_payload);
    assert_int_equal(e.metadata.len, 0);
    assert_int_equal(e.payload.len, 0);

    /* Metadata without global_context, or with unknown fields only: no user, no error. */
    body->n = 0;
    md->n = 0;
    pb_str(md, 2, "f");
    pb_str(md, 9, "unknown-to-us");
    pb_msg(body, 4, md);
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_int_equal(e.user_id.len, 0);
    assert_int_equal(e.metadata.len, md->n);

    /* An empty emit decodes to an all-empty header. */
    assert_int_equal(codec_emit_decode(body->b, 0, &e, err), 0);
    assert_int_equal(e.event_type.len, 0);
    assert_false(e.has_metadata);
    free(md);
    free(pl);
    free(v);
    free(data);
    free(body);
}

/* Stamps "u-42" into emits without a user id, metadata first, in the middle, last and absent:
 * the result decodes to the view codec_emit_stamp_user computed, the other global_context
 * fields survive, and every other field reads the same. */
static void test_emit_stamp_user(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES] = "";
    for (int where = 0; where < 4; where++) {
        struct pb *md = pb_new(), *gc = pb_new(), *body = pb_new(), *pl = pb_new();
        pb_str(md, 5, "tag_1");
        pb_str(gc, 3, "req-9");
        pb_msg(md, 21, gc);
        pb_str(pl, 99, "x");
        if (where == 0)
            pb_msg(body, 4, md);
        pb_str(body, 1, "evt-1");
        pb_str(body, 2, "order:created:v1:completed");
        if (where == 1)
            pb_msg(body, 4, md);
        pb_u64(body, 5, 77);
        pb_msg(body, 6, pl);
        if (where == 2)
            pb_msg(body, 4, md);
        struct codec_emit e, d;
        assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
        assert_int_equal(e.user_id.len, 0);
        uint8_t out[512];
        int n = codec_emit_stamp_user(body->b, body->n, &e, "u-42", 4, out, sizeof(out));
        assert_true(n > 0 && (size_t)n <= body->n + CODEC_STAMP_EXTRA(4));
        assert_int_equal(codec_emit_decode(out, (size_t)n, &d, err), 0);
        assert_slice(d.user_id, "u-42");
        assert_ptr_equal(d.user_id.ptr, e.user_id.ptr);
        assert_ptr_equal(d.event_type.ptr, e.event_type.ptr);
        assert_ptr_equal(d.payload.ptr, e.payload.ptr);
        assert_slice(d.event_id, "evt-1");
        assert_slice(d.event_type, "order:created:v1:completed");
        assert_int_equal(d.campaign_id, 77);
        if (where < 3)
            assert_slice(d.correlation_id, "req-9"); /* the old global_context is kept */
        assert_int_equal(codec_emit_stamp_user(body->b, body->n, &e, "u-42", 4, out, 8), -ENOSPC);
        free(md), free(gc), free(body), free(pl);
    }
}

static void test_emit_invalid_utf8(void **state)
{
    (void)state;
    const struct bad_input bad[] = {
        BAD("bad continuation", 0xc3, 0x28),
        BAD("overlong NUL", 0xc0, 0x80),
        BAD("overlong slash", 0xe0, 0x80, 0xaf),
        BAD("surrogate", 0xed, 0xa0, 0x80),
        BAD("truncated sequence", 'a', 0xe2, 0x82),
        BAD("above U+10FFFF", 0xf4, 0x90, 0x80, 0x80),
        BAD("lone continuation", 0x80),
        BAD("0xff", 0xff),
    };
    /* Every rejected string, in each checked string field. */
    static const uint32_t where[] = {1, 2, 3, 21 * 100 + 1, 21 * 100 + 3, 21 * 100 + 5};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
            struct pb *body = pb_new();
            pb_str(body, 2, "a:b:v1:c");
            if (where[w] < 100) {
                pb_bytes(body, where[w], bad[k].bytes, bad[k].len);
            } else {
                struct pb *gc = pb_new();
                struct pb *md = pb_new();
                pb_bytes(gc, where[w] % 100, bad[k].bytes, bad[k].len);
                pb_msg(md, 21, gc);
                pb_msg(body, 4, md);
                free(gc);
                free(md);
            }
            char err[CODEC_ERR_BYTES] = "";
            struct codec_emit e;
            int r = codec_emit_decode(body->b, body->n, &e, err);
            if (r != -EBADMSG)
                fail_msg("%s in field %u: got %d", bad[k].what, where[w], r);
            assert_non_null(strstr(err, "UTF-8"));
            free(body);
        }
    }
    /* Valid multi-byte text is accepted: é € 𝄞 U+10FFFF. */
    struct pb *body = pb_new();
    static const char good[] = "\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e\xf4\x8f\xbf\xbf";
    pb_str(body, 1, good);
    struct codec_emit e;
    char err[CODEC_ERR_BYTES];
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_slice(e.event_id, good);
    free(body);
}

/* Decodes an emit whose payload (field 6) or metadata (field 4) is m. */
static int decode_with(uint32_t field, const struct pb *m, char err[CODEC_ERR_BYTES])
{
    struct pb *body = pb_new();
    pb_str(body, 2, "a:b:v1:c");
    pb_msg(body, field, m);
    struct codec_emit e;
    err[0] = 0;
    int r = codec_emit_decode(body->b, body->n, &e, err);
    free(body);
    return r;
}

/* A Payload whose data holds {k: value} nested `levels` Structs deep ({k: {k: ... value}}). */
static void nested_payload(struct pb *pl, unsigned levels, const struct pb *value)
{
    struct pb *cur = pb_new(), *next = pb_new(), *v = pb_new();
    struct_put(cur, "k", value);
    for (unsigned i = 1; i < levels; i++) {
        v->n = 0;
        pb_msg(v, 5, cur); /* Value{struct_value} */
        next->n = 0;
        struct_put(next, "k", v);
        struct pb *t = cur;
        cur = next;
        next = t;
    }
    pl->n = 0;
    pb_msg(pl, 1, cur);
    free(cur);
    free(next);
    free(v);
}

/* Payload and metadata are forwarded verbatim, so every string inside their Structs, however
 * deep, must be UTF-8, known fields must have their wire type and nesting is bounded: a strict
 * subscriber would otherwise fail to decode the event. */
static void test_emit_nested_checked(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES];
    struct pb *pl = pb_new(), *val = pb_new(), *st = pb_new(), *list = pb_new();
    static const char bad[] = "a\xff";

    /* A bad string value 10 Structs down. */
    value_string(val, bad);
    nested_payload(pl, 10, val);
    assert_int_equal(decode_with(6, pl, err), -EBADMSG);
    assert_non_null(strstr(err, "payload.data"));
    assert_non_null(strstr(err, "UTF-8"));
    /* The same with good text is accepted. */
    val->n = 0;
    value_string(val, "caf\xc3\xa9");
    nested_payload(pl, 10, val);
    assert_int_equal(decode_with(6, pl, err), 0);

    /* A bad key. */
    val->n = 0;
    value_number(val, 1);
    st->n = 0;
    struct_put(st, bad, val);
    pl->n = 0;
    pb_msg(pl, 2, st); /* versioning */
    assert_int_equal(decode_with(6, pl, err), -EBADMSG);
    assert_non_null(strstr(err, "payload.versioning"));
    assert_non_null(strstr(err, "key"));

    /* A bad string inside a list inside a struct. */
    struct pb *item = pb_new();
    value_string(item, bad);
    list->n = 0;
    pb_msg(list, 1, item);
    val->n = 0;
    pb_msg(val, 6, list); /* Value{list_value} */
    st->n = 0;
    struct_put(st, "l", val);
    pl->n = 0;
    pb_msg(pl, 1, st);
    assert_int_equal(decode_with(6, pl, err), -EBADMSG);
    assert_non_null(strstr(err, "UTF-8"));
    free(item);

    /* A known Value field with the wrong wire type (number_value as a varint). */
    val->n = 0;
    pb_u64(val, 2, 7);
    st->n = 0;
    struct_put(st, "n", val);
    pl->n = 0;
    pb_msg(pl, 1, st);
    assert_int_equal(decode_with(6, pl, err), -EBADMSG);
    assert_non_null(strstr(err, "wire type"));

    /* Nesting: 30 Structs deep (60 levels of Struct and Value) is accepted, 31 is not. */
    val->n = 0;
    value_bool(val, true);
    nested_payload(pl, 30, val);
    assert_int_equal(decode_with(6, pl, err), 0);
    nested_payload(pl, 31, val);
    assert_int_equal(decode_with(6, pl, err), -EBADMSG);
    assert_non_null(strstr(err, "nested deeper"));

    /* Metadata: a bad tag (repeated string), a bad string in a Struct field. */
    struct pb *md = pb_new();
    pb_bytes(md, 5, bad, strlen(bad));
    assert_int_equal(decode_with(4, md, err), -EBADMSG);
    assert_non_null(strstr(err, "metadata.tags"));
    md->n = 0;
    val->n = 0;
    value_string(val, bad);
    st->n = 0;
    struct_put(st, "rule", val);
    pb_msg(md, 3, st);
    assert_int_equal(decode_with(4, md, err), -EBADMSG);
    assert_non_null(strstr(err, "metadata.custom_rules"));
    /* Unknown fields anywhere are skipped. */
    md->n = 0;
    pb_u64(md, 99, 1);
    val->n = 0;
    pb_u64(val, 15, 3);
    st->n = 0;
    struct_put(st, "x", val);
    pb_msg(md, 4, st);
    assert_int_equal(decode_with(4, md, err), 0);
    free(md);
    free(pl);
    free(val);
    free(st);
    free(list);
}

static void test_emit_twice_rejected(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES] = "";
    struct codec_emit e;
    struct pb *body = pb_new();
    pb_bytes(body, 4, "\x12\x01x", 3);
    pb_bytes(body, 4, NULL, 0);
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), -EBADMSG);
    assert_non_null(strstr(err, "metadata"));

    body->n = 0;
    pb_bytes(body, 6, NULL, 0);
    pb_str(body, 2, "a:b:v1:c");
    pb_bytes(body, 6, NULL, 0);
    err[0] = '\0';
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), -EBADMSG);
    assert_non_null(strstr(err, "payload"));

    /* A string field given twice is legal: the last wins. */
    body->n = 0;
    pb_str(body, 1, "first");
    pb_str(body, 1, "second");
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_slice(e.event_id, "second");
    free(body);
}

static void test_emit_malformed(void **state)
{
    (void)state;
    const struct bad_input bad[] = {
        BAD("truncated campaign varint", 0x28, 0x80, 0x80),
        BAD("campaign without value", 0x28),
        BAD("truncated metadata length", 0x22, 0x81),
        BAD("metadata past the end", 0x22, 0x03, 0x10),
        BAD("campaign as bytes", 0x2a, 0x01, 0x00),
        BAD("event_id as varint", 0x08, 0x01),
        BAD("metadata as varint", 0x20, 0x01),
        BAD("payload as fixed32", 0x35, 0, 0, 0, 0),
        /* metadata { global_context: truncated varint inside } */
        BAD("truncated varint in global_context", 0x22, 0x04, 0xaa, 0x01, 0x01, 0x08),
        /* metadata { global_context as varint } */
        BAD("global_context as varint", 0x22, 0x03, 0xa8, 0x01, 0x01),
        /* metadata { global_context { user_id as varint } } */
        BAD("user_id as varint", 0x22, 0x05, 0xaa, 0x01, 0x02, 0x08, 0x01),
        /* metadata { truncated top-level field } */
        BAD("truncated metadata field", 0x22, 0x02, 0x12, 0x05),
        /* payload { truncated varint } */
        BAD("truncated varint in payload", 0x32, 0x02, 0x08, 0x80),
        BAD("group in payload", 0x32, 0x01, 0x0b),
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        char err[CODEC_ERR_BYTES] = "";
        struct codec_emit e;
        int r = codec_emit_decode(bad[k].bytes, bad[k].len, &e, err);
        if (r != -EBADMSG)
            fail_msg("%s: got %d, want -EBADMSG", bad[k].what, r);
        assert_true(err[0] != '\0');
    }
}

/* Every prefix of a valid emit either decodes (when it ends on a field boundary) or is
 * rejected: a cut inside a field is never taken for a shorter valid field. */
static void test_emit_truncated_everywhere(void **state)
{
    (void)state;
    struct pb *md = pb_new();
    struct pb *body = pb_new();
    build_routing_metadata(md, "u", "c");
    size_t boundary[8];
    size_t nb = 0;
    boundary[nb++] = body->n;
    pb_str(body, 1, "e-1");
    boundary[nb++] = body->n;
    pb_str(body, 2, "x:y:v1:z");
    boundary[nb++] = body->n;
    pb_msg(body, 4, md);
    boundary[nb++] = body->n;
    pb_u64(body, 5, 1ull << 40);
    boundary[nb++] = body->n;
    pb_bytes(body, 6, "\x0a\x00", 2);
    boundary[nb++] = body->n;
    for (size_t cut = 0; cut <= body->n; cut++) {
        bool at_boundary = false;
        for (size_t i = 0; i < nb; i++)
            at_boundary |= boundary[i] == cut;
        /* A copy of exactly cut bytes, so that ASan sees any read past the end. */
        uint8_t *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, body->b, cut);
        struct codec_emit e;
        char err[CODEC_ERR_BYTES];
        int r = codec_emit_decode(copy, cut, &e, err);
        if (at_boundary ? r != 0 : r != -EBADMSG)
            fail_msg("cut at %zu of %zu: got %d", cut, body->n, r);
        free(copy);
    }
    free(md);
    free(body);
}

/* ---- the splice test --------------------------------------------------------------------- */

/* Builds the ancestor-style metadata: features, tags, a Struct in service_specific,
 * global_context, and a field number (9) that this schema does not define. */
static void build_rich_metadata(struct pb *md)
{
    struct pb *v = pb_new();
    struct pb *s = pb_new();
    struct pb *gc = pb_new();
    pb_str(md, 2, "voice");
    pb_str(md, 2, "video");
    pb_str(md, 5, "priority");
    pb_str(md, 5, "beta");
    value_string(v, "eu-west");
    struct_put(s, "region", v);
    v->n = 0;
    value_number(v, 3.25);
    struct_put(s, "weight", v);
    pb_msg(md, 6, s);
    pb_str(gc, 1, "user-42");
    pb_str(gc, 2, "1001");
    pb_str(gc, 3, "req-0001");
    pb_str(gc, 4, "sess-9");
    pb_str(gc, 5, "dev-3");
    pb_str(gc, 6, "ios");
    pb_msg(md, 21, gc);
    pb_bytes(md, 9, "\x01\x02\x03\xff\x00", 5); /* unknown to this schema: kept as is */
    free(v);
    free(s);
    free(gc);
}

/* Payload{data: {"order": {"id": "o-1", "items": [2, true, null, "x"]}, "total": 19.99},
 *         versioning: {"schema": "v3"}}. */
static void build_rich_payload(struct pb *pl)
{
    struct pb *v = pb_new();
    struct pb *list = pb_new();
    struct pb *inner = pb_new();
    struct pb *data = pb_new();
    struct pb *ver = pb_new();

    value_number(v, 2);
    pb_msg(list, 1, v);
    v->n = 0;
    value_bool(v, true);
    pb_msg(list, 1, v);
    v->n = 0;
    value_null(v);
    pb_msg(list, 1, v);
    v->n = 0;
    value_string(v, "x");
    pb_msg(list, 1, v);

    v->n = 0;
    value_string(v, "o-1");
    struct_put(inner, "id", v);
    v->n = 0;
    pb_msg(v, 6, list); /* list_value */
    struct_put(inner, "items", v);

    v->n = 0;
    pb_msg(v, 5, inner); /* struct_value */
    struct_put(data, "order", v);
    v->n = 0;
    value_number(v, 19.99);
    struct_put(data, "total", v);

    v->n = 0;
    value_string(v, "v3");
    struct_put(ver, "schema", v);

    pb_msg(pl, 1, data);
    pb_msg(pl, 2, ver);
    free(v);
    free(list);
    free(inner);
    free(data);
    free(ver);
}

static void test_splice_metadata_payload(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES] = "";
    struct pb *md = pb_new();
    struct pb *pl = pb_new();
    struct pb *body = pb_new();
    struct pb *fr = pb_new();
    build_rich_metadata(md);
    build_rich_payload(pl);
    assert_true(md->n > 100);
    assert_true(pl->n > 100);

    pb_str(body, 1, "evt-splice");
    pb_str(body, 2, "orders:create:v1:requested");
    pb_str(body, 3, "order-1");
    pb_msg(body, 4, md);
    pb_u64(body, 5, 1001);
    pb_msg(body, 6, pl);
    frame_of(fr, 5, CODEC_KIND_EMIT, body->b, body->n);

    struct codec_envelope env;
    assert_int_equal(codec_envelope_decode(fr->b, fr->n, &env, err), 0);
    assert_int_equal(env.kind, CODEC_KIND_EMIT);
    struct codec_emit e;
    assert_int_equal(codec_emit_decode(env.body.ptr, env.body.len, &e, err), 0);
    assert_slice(e.user_id, "user-42");
    assert_slice(e.correlation_id, "req-0001");
    assert_true(slice_within(e.metadata, fr->b, fr->n));
    assert_true(slice_within(e.payload, fr->b, fr->n));

    struct codec_event_out out = {
        .correlation = 0,
        .kind = CODEC_KIND_EVENT,
        .success = true,
        .event_id = e.event_id,
        .event_type = e.event_type,
        .entity_id = e.entity_id,
        .metadata = e.metadata,
        .payload = e.payload,
        .has_metadata = e.has_metadata,
        .has_payload = e.has_payload,
        .campaign_id = e.campaign_id,
        .sequence = 77,
        .timestamp_unix_nanos = 1700000000123456789ll,
    };
    size_t size = codec_event_size(&out);
    uint8_t *wire = malloc(size);
    assert_non_null(wire);
    size_t written = codec_event_encode(&out, wire);
    assert_int_equal(written, size);

    /* The emit's buffer is gone before a subscriber reads the event. */
    memset(fr->b, 0xdd, fr->n);

    struct codec_envelope denv;
    unwrap(wire, (long)written, &denv);
    assert_int_equal(denv.kind, CODEC_KIND_EVENT);
    assert_int_equal(denv.correlation, 0);
    struct codec_event_in in;
    assert_int_equal(codec_event_decode(denv.body.ptr, denv.body.len, &in, err), 0);
    assert_true(in.success);
    assert_true(in.has_metadata);
    assert_true(in.has_payload);
    assert_int_equal(in.metadata.len, md->n);
    assert_int_equal(in.payload.len, pl->n);
    assert_memory_equal(in.metadata.ptr, md->b, md->n);
    assert_memory_equal(in.payload.ptr, pl->b, pl->n);
    assert_slice(in.event_id, "evt-splice");
    assert_slice(in.event_type, "orders:create:v1:requested");
    assert_slice(in.entity_id, "order-1");
    assert_int_equal(in.campaign_id, 1001);
    assert_int_equal(in.sequence, 77);
    assert_int_equal(in.timestamp_unix_nanos, 1700000000123456789ll);
    assert_int_equal(in.message.len, 0);
    assert_int_equal(in.correlation_id.len, 0);
    assert_int_equal(in.code.len, 0);
    assert_int_equal(in.stream_seq, 0);

    /* The delivered metadata still yields the routing fields (a subscriber's view). */
    uint8_t *emit2 = malloc(PB_BYTES_MAX);
    assert_non_null(emit2);
    struct codec_emit_in ein = {
        .event_type = in.event_type,
        .metadata = in.metadata,
        .has_metadata = true,
    };
    size_t esize = codec_emit_size(&ein);
    assert_true(esize <= PB_BYTES_MAX);
    assert_int_equal(codec_emit_encode(&ein, emit2), esize);
    unwrap(emit2, (long)esize, &env);
    assert_int_equal(codec_emit_decode(env.body.ptr, env.body.len, &e, err), 0);
    assert_slice(e.user_id, "user-42");
    assert_slice(e.correlation_id, "req-0001");
    free(emit2);
    free(wire);
    free(md);
    free(pl);
    free(body);
    free(fr);
}

/* ---- control frames ---------------------------------------------------------------------- */

static void test_encode_welcome(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    int n = codec_welcome_encode(out, sizeof(out), 77, 8, 1u << 20, 12345678901ull, 3);
    unwrap(out, n, &env);
    assert_int_equal(env.correlation, 77);
    assert_int_equal(env.kind, CODEC_KIND_WELCOME);
    struct codec_welcome_in w;
    assert_int_equal(codec_welcome_decode(env.body.ptr, env.body.len, &w, err), 0);
    assert_int_equal(w.protocol_version, 1);
    assert_slice(w.server_version, "nexusd " NEXUS_VERSION);
    assert_int_equal(w.shard_count, 8);
    assert_int_equal(w.frame_bytes_max, 1u << 20);
    assert_int_equal(w.connection_id, 12345678901ull);
    assert_int_equal(w.shard_id, 3);
    /* Too small a buffer is refused, never overrun. */
    assert_int_equal(codec_welcome_encode(out, (size_t)n - 1, 77, 8, 1u << 20, 12345678901ull, 3),
                     -ENOSPC);
    assert_int_equal(codec_welcome_encode(out, (size_t)n, 77, 8, 1u << 20, 12345678901ull, 3), n);
}

static void test_encode_subscribe_ack_unsubscribe(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    uint64_t v = 1;

    int n = codec_subscribe_ack_encode(out, sizeof(out), 5, 99);
    unwrap(out, n, &env);
    assert_int_equal(env.correlation, 5);
    assert_int_equal(env.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(codec_u64_msg_decode(env.body.ptr, env.body.len, &v, err), 0);
    assert_int_equal(v, 99);

    n = codec_unsubscribe_encode(out, sizeof(out), 6, 1ull << 63);
    unwrap(out, n, &env);
    assert_int_equal(env.correlation, 6);
    assert_int_equal(env.kind, CODEC_KIND_UNSUBSCRIBE);
    assert_int_equal(codec_u64_msg_decode(env.body.ptr, env.body.len, &v, err), 0);
    assert_true(v == 1ull << 63);

    /* Zero values are omitted on the wire (proto3) and read back as zero. */
    n = codec_subscribe_ack_encode(out, sizeof(out), 0, 0);
    unwrap(out, n, &env);
    assert_int_equal(env.correlation, 0);
    assert_int_equal(env.body.len, 0);
    assert_int_equal(codec_u64_msg_decode(env.body.ptr, env.body.len, &v, err), 0);
    assert_int_equal(v, 0);
    assert_int_equal(codec_subscribe_ack_encode(out, 4, 5, 99), -ENOSPC);
    assert_int_equal(codec_unsubscribe_encode(out, 4, 5, 99), -ENOSPC);
}

static void test_encode_ping_pong(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    uint64_t v = 0;

    int n = codec_ping_encode(out, sizeof(out), 11, UINT64_MAX);
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_PING);
    assert_int_equal(env.correlation, 11);
    assert_int_equal(codec_u64_msg_decode(env.body.ptr, env.body.len, &v, err), 0);
    assert_true(v == UINT64_MAX);

    n = codec_pong_encode(out, sizeof(out), UINT64_MAX, 0xdeadbeef);
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_PONG);
    assert_true(env.correlation == UINT64_MAX);
    assert_int_equal(codec_u64_msg_decode(env.body.ptr, env.body.len, &v, err), 0);
    assert_int_equal(v, 0xdeadbeef);
    assert_int_equal(codec_pong_encode(out, (size_t)n - 1, UINT64_MAX, 0xdeadbeef), -ENOSPC);

    /* The u64 decoder rejects a wrong wire type and skips unknown fields. */
    assert_int_equal(codec_u64_msg_decode((const uint8_t *)"\x0a\x00", 2, &v, err), -EBADMSG);
    assert_int_equal(codec_u64_msg_decode((const uint8_t *)"\x10\x05\x08\x07", 4, &v, err), 0);
    assert_int_equal(v, 7);
}

static void test_encode_error(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    struct codec_error_in e;

    int n = codec_error_encode(out, sizeof(out), 9, "frame_too_large",
                               "frame of 2000000 bytes exceeds 1048576");
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_ERROR);
    assert_int_equal(env.correlation, 9);
    assert_int_equal(codec_error_decode(env.body.ptr, env.body.len, &e, err), 0);
    assert_slice(e.code, "frame_too_large");
    assert_slice(e.message, "frame of 2000000 bytes exceeds 1048576");

    /* No message at all. */
    n = codec_error_encode(out, sizeof(out), 0, "bad_protobuf", NULL);
    unwrap(out, n, &env);
    assert_int_equal(codec_error_decode(env.body.ptr, env.body.len, &e, err), 0);
    assert_slice(e.code, "bad_protobuf");
    assert_int_equal(e.message.len, 0);
    assert_int_equal(codec_error_encode(out, 8, 0, "bad_protobuf", "x"), -ENOSPC);
}

/* A very long message is cut so that the frame fits CODEC_CONTROL_BYTES_MAX, and the cut never
 * splits a UTF-8 sequence: every alignment of 2-, 3- and 4-byte characters is tried. */
static void test_encode_error_truncated_utf8(void **state)
{
    (void)state;
    static const char *const chars[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e"};
    char *message = malloc(8192);
    assert_non_null(message);
    for (size_t c = 0; c < sizeof(chars) / sizeof(chars[0]); c++) {
        for (size_t lead = 0; lead < 4; lead++) {
            size_t len = 0;
            for (size_t i = 0; i < lead; i++)
                message[len++] = '.';
            size_t cl = strlen(chars[c]);
            while (len + cl < 3000) {
                memcpy(message + len, chars[c], cl);
                len += cl;
            }
            message[len] = '\0';

            uint8_t out[CODEC_CONTROL_BYTES_MAX];
            char err[CODEC_ERR_BYTES] = "";
            struct codec_envelope env;
            struct codec_error_in e;
            int n = codec_error_encode(out, sizeof(out), 1, "limit_exceeded", message);
            assert_true(n > 0 && n <= CODEC_CONTROL_BYTES_MAX);
            unwrap(out, n, &env);
            assert_int_equal(codec_error_decode(env.body.ptr, env.body.len, &e, err), 0);
            assert_slice(e.code, "limit_exceeded");
            /* Cut, but not to nothing, on a boundary, and a prefix of the original. */
            assert_true(e.message.len >= 256 && e.message.len < len);
            assert_true(wire_utf8_valid(e.message.ptr, e.message.len));
            assert_true((e.message.len - lead) % cl == 0);
            assert_memory_equal(e.message.ptr, message, e.message.len);
        }
    }
    free(message);
}

static void test_encode_gap(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    struct codec_gap_in g;
    int n = codec_gap_encode(out, sizeof(out), -3, 10, 20, 11, "slow_consumer");
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_GAP);
    assert_int_equal(env.correlation, 0);
    assert_int_equal(codec_gap_decode(env.body.ptr, env.body.len, &g, err), 0);
    assert_int_equal(g.campaign_id, -3);
    assert_int_equal(g.first_sequence, 10);
    assert_int_equal(g.last_sequence, 20);
    assert_int_equal(g.dropped, 11);
    assert_slice(g.reason, "slow_consumer");
    assert_int_equal(codec_gap_decode((const uint8_t *)"\x0a\x00", 2, &g, err), -EBADMSG);
    assert_int_equal(codec_gap_decode((const uint8_t *)"\x28\x01", 2, &g, err), -EBADMSG);
}

static void test_encode_hello(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    struct codec_hello h;
    int n = codec_hello_encode(out, sizeof(out), 1, 1, "secret-token", "nexusctl/0.1");
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_HELLO);
    assert_int_equal(env.correlation, 1);
    assert_int_equal(codec_hello_decode(env.body.ptr, env.body.len, &h, err), 0);
    assert_int_equal(h.protocol_version, 1);
    assert_slice(h.token, "secret-token");
    assert_slice(h.client_name, "nexusctl/0.1");

    n = codec_hello_encode(out, sizeof(out), 0, 2, NULL, "");
    unwrap(out, n, &env);
    assert_int_equal(codec_hello_decode(env.body.ptr, env.body.len, &h, err), 0);
    assert_int_equal(h.protocol_version, 2);
    assert_int_equal(h.token.len, 0);
    assert_int_equal(h.client_name.len, 0);
    /* Hello strings must be UTF-8 and of the right wire type. */
    assert_int_equal(codec_hello_decode((const uint8_t *)"\x12\x01\xff", 3, &h, err), -EBADMSG);
    assert_int_equal(codec_hello_decode((const uint8_t *)"\x0a\x00", 2, &h, err), -EBADMSG);
}

static void test_encode_stats(void **state)
{
    (void)state;
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    struct codec_envelope env;
    int n = codec_stats_encode(out, sizeof(out), 12);
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_STATS);
    assert_int_equal(env.correlation, 12);
    assert_int_equal(env.body.len, 0);
    assert_string_equal(codec_kind_name(CODEC_KIND_STATS), "stats");
    assert_int_equal(codec_stats_encode(out, (size_t)n - 1, 12), -ENOSPC);
}

static void test_encode_subscribe(void **state)
{
    (void)state;
    uint8_t out[2048];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    struct codec_subscribe *s = malloc(sizeof(*s));
    assert_non_null(s);
    static const char *const patterns[] = {"chat:*", "media:signal:v1:*", "*"};
    int n = codec_subscribe_encode(out, sizeof(out), 21, 55, patterns, 3, "user-7");
    unwrap(out, n, &env);
    assert_int_equal(env.kind, CODEC_KIND_SUBSCRIBE);
    assert_int_equal(env.correlation, 21);
    assert_int_equal(codec_subscribe_decode(env.body.ptr, env.body.len, s, err), 0);
    assert_int_equal(s->campaign_id, 55);
    assert_int_equal(s->pattern_count, 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_slice(s->patterns[i], patterns[i]);
    assert_slice(s->user_id, "user-7");
    assert_true(slice_within(s->user_id, env.body.ptr, env.body.len));

    /* No patterns, no user, the firehose campaign. */
    n = codec_subscribe_encode(out, sizeof(out), 0, 0, NULL, 0, NULL);
    unwrap(out, n, &env);
    assert_int_equal(codec_subscribe_decode(env.body.ptr, env.body.len, s, err), 0);
    assert_int_equal(s->pattern_count, 0);
    assert_int_equal(s->campaign_id, 0);
    assert_int_equal(s->user_id.len, 0);
    assert_int_equal(codec_subscribe_encode(out, 10, 21, 55, patterns, 3, "user-7"), -ENOSPC);
    free(s);
}

static void test_subscribe_patterns_max(void **state)
{
    (void)state;
    enum { N = CODEC_SUBSCRIBE_PATTERNS_MAX + 1 };
    char names[N][32];
    const char *patterns[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "svc%d:*", i);
        patterns[i] = names[i];
    }
    uint8_t out[4096];
    char err[CODEC_ERR_BYTES] = "";
    struct codec_envelope env;
    struct codec_subscribe *s = malloc(sizeof(*s));
    assert_non_null(s);

    int n = codec_subscribe_encode(out, sizeof(out), 1, 2, patterns, N - 1, NULL);
    unwrap(out, n, &env);
    assert_int_equal(codec_subscribe_decode(env.body.ptr, env.body.len, s, err), 0);
    assert_int_equal(s->pattern_count, CODEC_SUBSCRIBE_PATTERNS_MAX);
    assert_slice(s->patterns[N - 2], names[N - 2]);

    n = codec_subscribe_encode(out, sizeof(out), 1, 2, patterns, N, NULL);
    unwrap(out, n, &env);
    assert_int_equal(codec_subscribe_decode(env.body.ptr, env.body.len, s, err), -E2BIG);
    assert_non_null(strstr(err, "64"));

    /* Malformed subscribe bodies. */
    assert_int_equal(codec_subscribe_decode((const uint8_t *)"\x0a\x01\xff", 3, s, err), -EBADMSG);
    assert_int_equal(codec_subscribe_decode((const uint8_t *)"\x18\x80", 2, s, err), -EBADMSG);
    assert_int_equal(codec_subscribe_decode((const uint8_t *)"\x10\x01", 2, s, err), -EBADMSG);
    free(s);
}

static void test_metadata_build(void **state)
{
    (void)state;
    uint8_t md[256];
    char err[CODEC_ERR_BYTES] = "";
    int n = codec_metadata_build(md, sizeof(md), "user-9", "req-3");
    assert_true(n > 0);
    struct pb *body = pb_new();
    pb_bytes(body, 4, md, (size_t)n);
    struct codec_emit e;
    assert_int_equal(codec_emit_decode(body->b, body->n, &e, err), 0);
    assert_slice(e.user_id, "user-9");
    assert_slice(e.correlation_id, "req-3");
    assert_int_equal(codec_metadata_build(md, sizeof(md), NULL, ""), 0);
    assert_int_equal(codec_metadata_build(md, 4, "user-9", "req-3"), -ENOSPC);
    free(body);
}

/* ---- size == bytes written --------------------------------------------------------------- */

static uint64_t test_prng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Every combination of present/absent EventResponse fields, with lengths that cross varint
 * size boundaries: codec_event_size is exactly what codec_event_encode writes, nothing is
 * written past it, and the frame decodes back to the same fields. */
static void test_event_size_matches_encode(void **state)
{
    (void)state;
    static uint8_t text[20000];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = (uint8_t)('a' + i % 26);
    static const uint32_t lens[] = {1, 5, 127, 128, 300};
    static const uint32_t opaque_lens[] = {0, 1, 127, 128, 16383, 16384};
    static const uint64_t nums[] = {1, 127, 128, 1ull << 35, UINT64_MAX};
    enum { FIELDS = 14 };
    uint8_t *out = malloc(200000);
    assert_non_null(out);
    uint64_t seed = 12345;

    for (uint32_t mask = 0; mask < (1u << FIELDS); mask++) {
#define PICK_SLICE(bit)                                                                            \
    ((mask >> (bit)) & 1                                                                           \
         ? (struct codec_slice){text + test_prng(&seed) % 64, lens[test_prng(&seed) % 5]}          \
         : (struct codec_slice){NULL, 0})
#define PICK_NUM(bit) ((mask >> (bit)) & 1 ? nums[test_prng(&seed) % 5] : 0)
        struct codec_event_out ev = {
            .kind = (mask & 1) ? CODEC_KIND_EMIT_ACK : CODEC_KIND_EVENT,
            .correlation = PICK_NUM(1),
            .success = (mask >> 2) & 1,
            .event_id = PICK_SLICE(3),
            .event_type = PICK_SLICE(4),
            .message = PICK_SLICE(5),
            .has_metadata = (mask >> 6) & 1,
            .has_payload = (mask >> 7) & 1,
            .campaign_id = (int64_t)PICK_NUM(8),
            .entity_id = PICK_SLICE(9),
            .sequence = PICK_NUM(10),
            .timestamp_unix_nanos = (int64_t)PICK_NUM(11),
            .correlation_id = PICK_SLICE(12),
            .stream_seq = PICK_NUM(13),
            .code = PICK_SLICE(12),
        };
#undef PICK_SLICE
#undef PICK_NUM
        /* Metadata/payload may be present and empty. */
        if (ev.has_metadata)
            ev.metadata = (struct codec_slice){text + 100, opaque_lens[mask % 6]};
        if (ev.has_payload)
            ev.payload = (struct codec_slice){text + 200, opaque_lens[(mask >> 3) % 6]};

        size_t size = codec_event_size(&ev);
        assert_true(size + 16 <= 200000);
        memset(out, 0xee, size + 16);
        size_t written = codec_event_encode(&ev, out);
        if (written != size)
            fail_msg("mask %#x: size %zu, written %zu", mask, size, written);
        for (size_t i = 0; i < 16; i++)
            assert_int_equal(out[size + i], 0xee);

        struct codec_envelope env;
        unwrap(out, (long)written, &env);
        assert_int_equal(env.kind, ev.kind);
        assert_true(env.correlation == ev.correlation);
        struct codec_event_in in;
        char err[CODEC_ERR_BYTES] = "";
        assert_int_equal(codec_event_decode(env.body.ptr, env.body.len, &in, err), 0);
        assert_int_equal(in.success, ev.success);
        assert_int_equal(in.has_metadata, ev.has_metadata);
        assert_int_equal(in.has_payload, ev.has_payload);
        assert_int_equal(in.metadata.len, ev.metadata.len);
        assert_int_equal(in.payload.len, ev.payload.len);
        if (ev.metadata.len)
            assert_memory_equal(in.metadata.ptr, ev.metadata.ptr, ev.metadata.len);
        if (ev.payload.len)
            assert_memory_equal(in.payload.ptr, ev.payload.ptr, ev.payload.len);
        const struct codec_slice *want[] = {&ev.event_id,  &ev.event_type,     &ev.message,
                                            &ev.entity_id, &ev.correlation_id, &ev.code};
        const struct codec_slice *got[] = {&in.event_id,  &in.event_type,     &in.message,
                                           &in.entity_id, &in.correlation_id, &in.code};
        for (size_t k = 0; k < 6; k++) {
            assert_int_equal(got[k]->len, want[k]->len);
            if (want[k]->len)
                assert_memory_equal(got[k]->ptr, want[k]->ptr, want[k]->len);
        }
        assert_true(in.campaign_id == ev.campaign_id);
        assert_true(in.sequence == ev.sequence);
        assert_true(in.timestamp_unix_nanos == ev.timestamp_unix_nanos);
        assert_true(in.stream_seq == ev.stream_seq);
    }
    free(out);
}

/* The same for the client-side emit encoder, decoded with the broker's emit decoder. */
static void test_emit_size_matches_encode(void **state)
{
    (void)state;
    static const char md_bytes[] = "\x12\x01x\xaa\x01\x04\x0a\x02u1"; /* features, user_id */
    uint8_t out[4096];
    for (uint32_t mask = 0; mask < 128; mask++) {
        struct codec_emit_in in = {
            .correlation = (mask & 1) ? 300 : 0,
            .event_id = (mask & 2) ? (struct codec_slice){(const uint8_t *)"e-1", 3}
                                   : (struct codec_slice){NULL, 0},
            .event_type = {(const uint8_t *)"a:b:v1:c", 8},
            .entity_id = (mask & 4) ? (struct codec_slice){(const uint8_t *)"ent", 3}
                                    : (struct codec_slice){NULL, 0},
            .has_metadata = (mask >> 3) & 1,
            .has_payload = (mask >> 4) & 1,
            .campaign_id = (mask & 32)   ? -1
                           : (mask & 64) ? 200
                                         : 0,
        };
        if (in.has_metadata)
            in.metadata = (struct codec_slice){(const uint8_t *)md_bytes, sizeof(md_bytes) - 1};
        if (in.has_payload)
            in.payload = (struct codec_slice){(const uint8_t *)"\x0a\x00", 2};
        size_t size = codec_emit_size(&in);
        memset(out, 0xee, sizeof(out));
        assert_int_equal(codec_emit_encode(&in, out), size);
        assert_int_equal(out[size], 0xee);

        struct codec_envelope env;
        struct codec_emit e;
        char err[CODEC_ERR_BYTES] = "";
        unwrap(out, (long)size, &env);
        assert_int_equal(env.kind, CODEC_KIND_EMIT);
        assert_int_equal(env.correlation, in.correlation);
        assert_int_equal(codec_emit_decode(env.body.ptr, env.body.len, &e, err), 0);
        assert_int_equal(e.event_id.len, in.event_id.len);
        assert_int_equal(e.entity_id.len, in.entity_id.len);
        assert_slice(e.event_type, "a:b:v1:c");
        assert_int_equal(e.has_metadata, in.has_metadata);
        assert_int_equal(e.has_payload, in.has_payload);
        assert_int_equal(e.campaign_id, in.campaign_id);
        if (in.has_metadata)
            assert_slice(e.user_id, "u1");
        else
            assert_int_equal(e.user_id.len, 0);
    }
}

/* Client-side decoders reject wrong wire types. */
static void test_client_decoders_malformed(void **state)
{
    (void)state;
    char err[CODEC_ERR_BYTES];
    struct codec_event_in ev;
    struct codec_error_in er;
    struct codec_welcome_in w;
    assert_int_equal(codec_event_decode((const uint8_t *)"\x0a\x00", 2, &ev, err), -EBADMSG);
    assert_int_equal(codec_event_decode((const uint8_t *)"\x28\x01", 2, &ev, err), -EBADMSG);
    assert_int_equal(codec_event_decode((const uint8_t *)"\x48", 1, &ev, err), -EBADMSG);
    assert_int_equal(codec_error_decode((const uint8_t *)"\x08\x01", 2, &er, err), -EBADMSG);
    assert_int_equal(codec_error_decode((const uint8_t *)"\x12\x05", 2, &er, err), -EBADMSG);
    assert_int_equal(codec_welcome_decode((const uint8_t *)"\x12\x00\x18", 3, &w, err), -EBADMSG);
    assert_int_equal(codec_welcome_decode((const uint8_t *)"\x10\x01", 2, &w, err), -EBADMSG);
    assert_int_equal(codec_welcome_decode((const uint8_t *)"\x0a\x00", 2, &w, err), -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_decode),
        cmocka_unit_test(test_envelope_garbage),
        cmocka_unit_test(test_emit_decode_routing),
        cmocka_unit_test(test_emit_stamp_user),
        cmocka_unit_test(test_emit_invalid_utf8),
        cmocka_unit_test(test_emit_twice_rejected),
        cmocka_unit_test(test_emit_malformed),
        cmocka_unit_test(test_emit_truncated_everywhere),
        cmocka_unit_test(test_splice_metadata_payload),
        cmocka_unit_test(test_encode_welcome),
        cmocka_unit_test(test_encode_subscribe_ack_unsubscribe),
        cmocka_unit_test(test_encode_ping_pong),
        cmocka_unit_test(test_encode_error),
        cmocka_unit_test(test_encode_error_truncated_utf8),
        cmocka_unit_test(test_encode_gap),
        cmocka_unit_test(test_encode_hello),
        cmocka_unit_test(test_encode_stats),
        cmocka_unit_test(test_encode_subscribe),
        cmocka_unit_test(test_subscribe_patterns_max),
        cmocka_unit_test(test_metadata_build),
        cmocka_unit_test(test_event_size_matches_encode),
        cmocka_unit_test(test_emit_size_matches_encode),
        cmocka_unit_test(test_client_decoders_malformed),
        cmocka_unit_test(test_emit_nested_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
