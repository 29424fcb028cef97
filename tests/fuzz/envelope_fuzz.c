// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/envelope_fuzz.c: libFuzzer target for the frame decoders of codec/envelope.h. The
// input is one frame without its length prefix (the seed corpus holds protoc-encoded golden
// frames). It is decoded as an envelope, then with the body decoder of its kind, and every
// decoder also runs on the raw input so each is fuzzed directly. Invariants: decoders return 0
// or a documented negative errno, every slice they return lies inside their input, and a
// decoded emit spliced into a delivered event (codec_event_encode) reads back with the same
// routing fields and byte-identical metadata and payload. Single threaded.
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool within(struct codec_slice s, const uint8_t *buf, size_t len)
{
    if (s.len == 0)
        return true;
    return s.ptr >= buf && s.ptr + s.len <= buf + len;
}

static bool slice_eq(struct codec_slice a, struct codec_slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void check_rc(int r, bool e2big_allowed)
{
    CHECK(r == 0 || r == -EBADMSG || (e2big_allowed && r == -E2BIG));
}

/* Stamps a user id into an emit without one (what the broker does with --accounts): the
 * rewritten body decodes, with the user id, to exactly the view the stamping computed, and
 * every other field reads the same bytes. */
static void check_emit_stamp(const struct codec_emit *e, const uint8_t *b, size_t n)
{
    static uint8_t out[4096 + CODEC_STAMP_EXTRA(8)];
    if (n > 4096)
        return;
    struct codec_emit st = *e, d;
    char err[CODEC_ERR_BYTES];
    int m = codec_emit_stamp_user(b, n, &st, "u-fuzzer", 8, out, sizeof(out));
    CHECK(m > 0 && (size_t)m <= n + CODEC_STAMP_EXTRA(8));
    CHECK(codec_emit_decode(out, (size_t)m, &d, err) == 0);
    struct codec_slice *x[] = {&st.event_id,       &st.event_type, &st.entity_id, &st.payload,
                               &st.correlation_id, &st.user_id,    &st.metadata};
    struct codec_slice *y[] = {&d.event_id,       &d.event_type, &d.entity_id, &d.payload,
                               &d.correlation_id, &d.user_id,    &d.metadata};
    for (size_t i = 0; i < sizeof(x) / sizeof(x[0]); i++)
        CHECK(x[i]->len == y[i]->len && (x[i]->len == 0 || x[i]->ptr == y[i]->ptr));
    CHECK(d.user_id.len == 8 && memcmp(d.user_id.ptr, "u-fuzzer", 8) == 0);
    CHECK(slice_eq(d.event_id, e->event_id) && slice_eq(d.event_type, e->event_type));
    CHECK(slice_eq(d.entity_id, e->entity_id) && slice_eq(d.payload, e->payload));
    CHECK(slice_eq(d.correlation_id, e->correlation_id) && d.campaign_id == e->campaign_id);
    CHECK(d.has_payload == e->has_payload && d.has_metadata);
}

/* Splices a decoded emit into a delivered event and reads it back. */
static void check_emit_splice(const struct codec_emit *e)
{
    struct codec_event_out out = {
        .correlation = 0,
        .kind = CODEC_KIND_EVENT,
        .success = true,
        .event_id = e->event_id,
        .event_type = e->event_type,
        .entity_id = e->entity_id,
        .metadata = e->metadata,
        .payload = e->payload,
        .has_metadata = e->has_metadata,
        .has_payload = e->has_payload,
        .campaign_id = e->campaign_id,
        .sequence = 12345,
        .timestamp_unix_nanos = 1700000000000000000ll,
        .correlation_id = e->correlation_id,
    };
    size_t size = codec_event_size(&out);
    uint8_t *wire = malloc(size);
    CHECK(wire != NULL);
    CHECK(codec_event_encode(&out, wire) == size);
    CHECK(size >= 4 && wire_get_be32(wire) == size - 4);

    char err[CODEC_ERR_BYTES];
    struct codec_envelope env;
    CHECK(codec_envelope_decode(wire + 4, size - 4, &env, err) == 0);
    CHECK(env.kind == CODEC_KIND_EVENT && env.correlation == 0);
    struct codec_event_in in;
    CHECK(codec_event_decode(env.body.ptr, env.body.len, &in, err) == 0);
    CHECK(in.success);
    CHECK(in.has_metadata == e->has_metadata && in.has_payload == e->has_payload);
    CHECK(slice_eq(in.metadata, e->metadata));
    CHECK(slice_eq(in.payload, e->payload));
    CHECK(slice_eq(in.event_id, e->event_id));
    CHECK(slice_eq(in.event_type, e->event_type));
    CHECK(slice_eq(in.entity_id, e->entity_id));
    CHECK(slice_eq(in.correlation_id, e->correlation_id));
    CHECK(in.campaign_id == e->campaign_id);
    CHECK(in.sequence == 12345);

    /* The spliced metadata still yields the same routing fields. */
    struct codec_emit_in ein = {
        .event_type = e->event_type,
        .metadata = in.metadata,
        .has_metadata = in.has_metadata,
    };
    size_t esize = codec_emit_size(&ein);
    uint8_t *emit = malloc(esize);
    CHECK(emit != NULL);
    CHECK(codec_emit_encode(&ein, emit) == esize);
    CHECK(codec_envelope_decode(emit + 4, esize - 4, &env, err) == 0);
    struct codec_emit again;
    CHECK(codec_emit_decode(env.body.ptr, env.body.len, &again, err) == 0);
    CHECK(slice_eq(again.user_id, e->user_id));
    CHECK(slice_eq(again.correlation_id, e->correlation_id));
    free(emit);
    free(wire);
}

/* Runs the decoder for kind on body; kind 0 runs them all. */
static void decode_body(uint32_t kind, const uint8_t *b, size_t n)
{
    char err[CODEC_ERR_BYTES];
    int r;
    bool all = kind == 0;

    if (all || kind == CODEC_KIND_EMIT) {
        struct codec_emit e;
        r = codec_emit_decode(b, n, &e, err);
        check_rc(r, false);
        if (r == 0) {
            CHECK(within(e.event_id, b, n) && within(e.event_type, b, n));
            CHECK(within(e.entity_id, b, n));
            CHECK(within(e.metadata, b, n) && within(e.payload, b, n));
            CHECK(within(e.user_id, e.metadata.ptr, e.metadata.len));
            CHECK(within(e.correlation_id, e.metadata.ptr, e.metadata.len));
            CHECK(wire_utf8_valid(e.event_id.ptr, e.event_id.len));
            CHECK(wire_utf8_valid(e.user_id.ptr, e.user_id.len));
            check_emit_splice(&e);
            if (!e.user_id.len)
                check_emit_stamp(&e, b, n);
        }
    }
    if (all || kind == CODEC_KIND_SUBSCRIBE) {
        static struct codec_subscribe s;
        r = codec_subscribe_decode(b, n, &s, err);
        check_rc(r, true);
        if (r == 0) {
            CHECK(s.pattern_count <= CODEC_SUBSCRIBE_PATTERNS_MAX);
            for (uint32_t i = 0; i < s.pattern_count; i++)
                CHECK(within(s.patterns[i], b, n));
            CHECK(within(s.user_id, b, n));
        }
    }
    if (all || kind == CODEC_KIND_HELLO) {
        struct codec_hello h;
        r = codec_hello_decode(b, n, &h, err);
        check_rc(r, false);
        if (r == 0)
            CHECK(within(h.token, b, n) && within(h.client_name, b, n));
    }
    if (all || kind == CODEC_KIND_UNSUBSCRIBE || kind == CODEC_KIND_PING ||
        kind == CODEC_KIND_PONG || kind == CODEC_KIND_SUBSCRIBE_ACK) {
        uint64_t v;
        check_rc(codec_u64_msg_decode(b, n, &v, err), false);
    }
    if (all || kind == CODEC_KIND_EVENT || kind == CODEC_KIND_EMIT_ACK) {
        struct codec_event_in ev;
        r = codec_event_decode(b, n, &ev, err);
        check_rc(r, false);
        if (r == 0) {
            CHECK(within(ev.event_id, b, n) && within(ev.event_type, b, n));
            CHECK(within(ev.message, b, n) && within(ev.metadata, b, n));
            CHECK(within(ev.payload, b, n) && within(ev.entity_id, b, n));
            CHECK(within(ev.correlation_id, b, n) && within(ev.code, b, n));
        }
    }
    if (all || kind == CODEC_KIND_GAP) {
        struct codec_gap_in g;
        r = codec_gap_decode(b, n, &g, err);
        check_rc(r, false);
        if (r == 0)
            CHECK(within(g.reason, b, n));
    }
    if (all || kind == CODEC_KIND_ERROR) {
        struct codec_error_in e;
        r = codec_error_decode(b, n, &e, err);
        check_rc(r, false);
        if (r == 0)
            CHECK(within(e.code, b, n) && within(e.message, b, n));
    }
    if (all || kind == CODEC_KIND_WELCOME) {
        struct codec_welcome_in w;
        r = codec_welcome_decode(b, n, &w, err);
        check_rc(r, false);
        if (r == 0)
            CHECK(within(w.server_version, b, n));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so that a read past the end is caught even when the
     * fuzzer's buffer is larger. */
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);

    char err[CODEC_ERR_BYTES];
    struct codec_envelope env;
    int r = codec_envelope_decode(buf, size, &env, err);
    check_rc(r, false);
    if (r == 0) {
        CHECK(within(env.body, buf, size));
        CHECK(env.kind != 1);
        if (env.kind != CODEC_KIND_NONE)
            decode_body(env.kind, env.body.ptr, env.body.len);
        (void)codec_kind_name(env.kind);
    }
    decode_body(0, buf, size);
    free(buf);
    return 0;
}
