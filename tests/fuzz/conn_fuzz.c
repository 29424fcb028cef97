// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/conn_fuzz.c: libFuzzer target for the path a connection's bytes take through the
// codec (broker/conn.c: conn_process, conn_frame and the decoders they call). The input is a
// client byte stream: it is fed to a codec_framer, as conn_process does, and every complete
// frame goes through codec_envelope_decode and then, by kind, what conn_frame would call: hello,
// emit (codec_emit_decode, then evtype_parse of its type), subscribe (codec_subscribe_decode,
// then evpattern_parse of each pattern, as pubsub.c does), unsubscribe and ping (u64 messages,
// the pong written back), register (codec_register_decode, the action check of
// handlers/provider.c, and a re-encode). Every error message must make a valid error frame.
//
// Input layout: [0] k, [1..1+k) chunk schedule (k == 0: chunks of 1..7 bytes in turn), then the
// stream. For each of two frame limits (4096 and nexusd's default 1 MiB) the stream is read by a
// reference (length prefixes walked here, each frame decoded from an exactly sized copy), fed
// whole in one chunk, fed in the chunks the schedule names (each chunk an exactly sized copy,
// frames decoded in place as conn.c does), and, with the 4096 limit, fed one byte at a time.
// The differential check: every way yields the same frames (same offsets, same bytes), the same
// decode outcome for each, the same first error at the same offset, and the same bytes left
// buffered at the end. A broken check is a __builtin_trap.
// Single threaded.
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/evtype.h"
#include "codec/frame.h"
#include "codec/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* The two frame limits: a small one, and nexusd's default --max-frame-bytes. */
static const uint32_t frame_limits[] = {4096, 1u << 20};

/* ---- what conn_frame does with one frame ----------------------------------------------------- */

/* Outcome codes of one frame (compared across feeding ways): the kind in the high bits, what
 * happened in the low byte. */
enum {
    OUT_OK = 0,
    OUT_BAD_ENVELOPE = 1,
    OUT_BAD_BODY = 2,
    OUT_LIMIT = 3,
    OUT_BAD_TYPE = 4,
    OUT_BAD_PATTERN = 5,
    OUT_BAD_VERSION = 6,
    OUT_NO_BODY = 7,
    OUT_UNKNOWN = 8,
};

static bool within(struct codec_slice s, const uint8_t *buf, size_t len)
{
    return s.len == 0 || (s.ptr >= buf && s.ptr + s.len <= buf + len);
}

static bool slice_eq(struct codec_slice a, struct codec_slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* conn_error: the message goes into an Error frame, which must encode and decode back with a
 * valid UTF-8 message that starts the text given. */
static void check_error_frame(uint64_t corr, const char *code, const char *msg, size_t cap)
{
    size_t ml = strnlen(msg, cap);
    CHECK(ml > 0 && ml < cap); /* set, and NUL-terminated inside its buffer */
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_error_encode(buf, sizeof(buf), corr, code, msg);
    CHECK(n > CODEC_FRAME_HEADER_BYTES && (size_t)n <= sizeof(buf));
    CHECK(wire_get_be32(buf) == (uint32_t)n - CODEC_FRAME_HEADER_BYTES);
    char err[CODEC_ERR_BYTES];
    struct codec_envelope env;
    CHECK(codec_envelope_decode(buf + 4, (size_t)n - 4, &env, err) == 0);
    CHECK(env.kind == CODEC_KIND_ERROR && env.correlation == corr);
    struct codec_error_in e;
    CHECK(codec_error_decode(env.body.ptr, env.body.len, &e, err) == 0);
    CHECK(e.code.len == strlen(code) && memcmp(e.code.ptr, code, e.code.len) == 0);
    CHECK(wire_utf8_valid(e.message.ptr, e.message.len));
    CHECK(e.message.len <= ml &&
          (e.message.len == 0 || memcmp(e.message.ptr, msg, e.message.len) == 0));
}

/* An evtype error message: printable ASCII, whole. */
static void check_evtype_error(int r, uint64_t corr, const char *terr)
{
    CHECK(r <= EVTYPE_ERR_BASE - 1 && r >= EVTYPE_ERR_BASE - 8);
    size_t n = strnlen(terr, EVTYPE_ERR_BYTES);
    for (size_t i = 0; i < n; i++)
        CHECK(terr[i] >= 0x20 && terr[i] < 0x7f);
    check_error_frame(corr, "invalid_event_type", terr, EVTYPE_ERR_BYTES);
}

static uint32_t do_emit(uint64_t corr, struct codec_slice body)
{
    struct codec_emit e;
    char err[CODEC_ERR_BYTES];
    int r = codec_emit_decode(body.ptr, body.len, &e, err);
    CHECK(r == 0 || r == -EBADMSG);
    if (r < 0) {
        check_error_frame(corr, "bad_protobuf", err, sizeof(err));
        return OUT_BAD_BODY;
    }
    CHECK(within(e.event_id, body.ptr, body.len) && within(e.event_type, body.ptr, body.len));
    CHECK(within(e.entity_id, body.ptr, body.len));
    CHECK(within(e.metadata, body.ptr, body.len) && within(e.payload, body.ptr, body.len));
    CHECK(within(e.user_id, e.metadata.ptr, e.metadata.len));
    CHECK(within(e.correlation_id, e.metadata.ptr, e.metadata.len));
    /* conn_emit_type */
    struct evtype t;
    char terr[EVTYPE_ERR_BYTES];
    terr[0] = '\0';
    r = evtype_parse(&t, (const char *)e.event_type.ptr, e.event_type.len, terr, sizeof(terr));
    if (r < 0) {
        check_evtype_error(r, corr, terr);
        return OUT_BAD_TYPE;
    }
    CHECK(r == 0 && t.len == e.event_type.len && t.state < EVTYPE_STATE_COUNT);
    return OUT_OK;
}

static uint32_t do_subscribe(uint64_t corr, struct codec_slice body)
{
    static struct codec_subscribe s;
    char err[CODEC_ERR_BYTES];
    int r = codec_subscribe_decode(body.ptr, body.len, &s, err);
    CHECK(r == 0 || r == -EBADMSG || r == -E2BIG);
    if (r < 0) {
        check_error_frame(corr, r == -E2BIG ? "limit_exceeded" : "bad_protobuf", err, sizeof(err));
        return r == -E2BIG ? OUT_LIMIT : OUT_BAD_BODY;
    }
    CHECK(s.pattern_count <= CODEC_SUBSCRIBE_PATTERNS_MAX);
    CHECK(within(s.user_id, body.ptr, body.len));
    /* pubsub.c sub_parse: no pattern or a bare "*" means every type. */
    bool all = s.pattern_count == 0;
    for (uint32_t i = 0; i < s.pattern_count; i++) {
        CHECK(within(s.patterns[i], body.ptr, body.len));
        if (s.patterns[i].len == 1 && s.patterns[i].ptr[0] == '*')
            all = true;
    }
    for (uint32_t i = 0; !all && i < s.pattern_count; i++) {
        struct evpattern p;
        char perr[EVTYPE_ERR_BYTES];
        perr[0] = '\0';
        r = evpattern_parse(&p, (const char *)s.patterns[i].ptr, s.patterns[i].len, perr,
                            sizeof(perr));
        if (r < 0) {
            check_evtype_error(r, corr, perr);
            return OUT_BAD_PATTERN | (i << 4);
        }
        CHECK(p.len == s.patterns[i].len && memcmp(p.text, s.patterns[i].ptr, p.len) == 0);
    }
    return OUT_OK;
}

/* Unsubscribe and ping: one uint64; a ping is answered with a pong carrying its nonce. */
static uint32_t do_u64(uint64_t corr, struct codec_slice body, bool ping)
{
    uint64_t v;
    char err[CODEC_ERR_BYTES];
    int r = codec_u64_msg_decode(body.ptr, body.len, &v, err);
    CHECK(r == 0 || r == -EBADMSG);
    if (r < 0) {
        check_error_frame(corr, "bad_protobuf", err, sizeof(err));
        return OUT_BAD_BODY;
    }
    if (ping) {
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_pong_encode(buf, sizeof(buf), corr, v);
        CHECK(n > 4 && wire_get_be32(buf) == (uint32_t)n - 4);
        struct codec_envelope env;
        uint64_t back;
        CHECK(codec_envelope_decode(buf + 4, (size_t)n - 4, &env, err) == 0);
        CHECK(env.kind == CODEC_KIND_PONG && env.correlation == corr);
        CHECK(codec_u64_msg_decode(env.body.ptr, env.body.len, &back, err) == 0 && back == v);
    }
    return OUT_OK;
}

static uint32_t do_hello(uint64_t corr, struct codec_slice body, uint32_t frame_max)
{
    struct codec_hello h;
    char err[CODEC_ERR_BYTES];
    int r = codec_hello_decode(body.ptr, body.len, &h, err);
    CHECK(r == 0 || r == -EBADMSG);
    if (r < 0) {
        check_error_frame(corr, "bad_protobuf", err, sizeof(err));
        return OUT_BAD_BODY;
    }
    CHECK(within(h.token, body.ptr, body.len) && within(h.client_name, body.ptr, body.len));
    CHECK(wire_utf8_valid(h.token.ptr, h.token.len));
    if (h.protocol_version != 0 && h.protocol_version != 1)
        return OUT_BAD_VERSION;
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_welcome_encode(buf, sizeof(buf), corr, 4, frame_max, corr ^ 0x5a5a, 3);
    CHECK(n > 4 && wire_get_be32(buf) == (uint32_t)n - 4);
    struct codec_envelope env;
    struct codec_welcome_in w;
    CHECK(codec_envelope_decode(buf + 4, (size_t)n - 4, &env, err) == 0);
    CHECK(env.kind == CODEC_KIND_WELCOME && env.correlation == corr);
    CHECK(codec_welcome_decode(env.body.ptr, env.body.len, &w, err) == 0);
    CHECK(w.protocol_version == 1 && w.shard_count == 4 && w.frame_bytes_max == frame_max);
    CHECK(w.connection_id == (corr ^ 0x5a5a) && w.shard_id == 3);
    return OUT_OK;
}

/* handlers/provider.c reg_decode: each action must be exactly `service:action`. */
static bool action_ok(struct codec_slice a)
{
    char probe[EVTYPE_BYTES_MAX + 32];
    char terr[EVTYPE_ERR_BYTES];
    struct evtype t;
    if (a.len == 0 || a.len > EVTYPE_BYTES_MAX || memchr(a.ptr, ':', a.len) == NULL)
        return false;
    int pl = snprintf(probe, sizeof(probe), "%.*s:v1:requested", (int)a.len, (const char *)a.ptr);
    CHECK(pl > 0 && (size_t)pl < sizeof(probe));
    terr[0] = '\0';
    int r = evtype_parse(&t, probe, (size_t)pl, terr, sizeof(terr));
    if (r < 0) {
        check_evtype_error(r, 0, terr);
        return false;
    }
    return evtype_prefix_len(&t, EVTYPE_SEG_ACTION) == a.len;
}

static uint32_t do_register(uint64_t corr, struct codec_slice body)
{
    static struct codec_register reg, back;
    char err[CODEC_ERR_BYTES];
    int r = codec_register_decode(body.ptr, body.len, &reg, err);
    CHECK(r == 0 || r == -EBADMSG || r == -E2BIG);
    if (r < 0) {
        check_error_frame(corr, r == -E2BIG ? "limit_exceeded" : "bad_protobuf", err, sizeof(err));
        return r == -E2BIG ? OUT_LIMIT : OUT_BAD_BODY;
    }
    CHECK(reg.count <= CODEC_HANDLER_SPECS_MAX);
    uint32_t out = OUT_OK;
    for (uint32_t i = 0; i < reg.count; i++) {
        CHECK(within(reg.specs[i].action, body.ptr, body.len));
        CHECK(reg.specs[i].campaign_count <= CODEC_HANDLER_CAMPAIGNS_MAX);
        if (out == OUT_OK && !action_ok(reg.specs[i].action))
            out = OUT_BAD_TYPE | (i << 4);
    }
    /* What was decoded encodes and decodes back the same. */
    size_t cap = 2 * (size_t)body.len + 64 * 16 + 64;
    uint8_t *buf = malloc(cap);
    CHECK(buf != NULL);
    int n = codec_register_encode(buf, cap, corr, &reg);
    CHECK(n > 4 && (size_t)n <= cap && wire_get_be32(buf) == (uint32_t)n - 4);
    struct codec_envelope env;
    CHECK(codec_envelope_decode(buf + 4, (size_t)n - 4, &env, err) == 0);
    CHECK(env.kind == CODEC_KIND_REGISTER && env.correlation == corr);
    CHECK(codec_register_decode(env.body.ptr, env.body.len, &back, err) == 0);
    CHECK(back.count == reg.count);
    for (uint32_t i = 0; i < reg.count; i++) {
        const struct codec_handler_spec *a = &reg.specs[i], *b = &back.specs[i];
        CHECK(slice_eq(a->action, b->action) && a->streaming == b->streaming);
        CHECK(a->campaign_count == b->campaign_count);
        CHECK(memcmp(a->campaigns, b->campaigns, a->campaign_count * sizeof(int64_t)) == 0);
    }
    free(buf);
    return out;
}

/* conn_frame on one frame. Returns its outcome code. */
static uint32_t process_frame(const uint8_t *frame, uint32_t len, uint32_t frame_max)
{
    struct codec_envelope env;
    char err[CODEC_ERR_BYTES];
    int r = codec_envelope_decode(frame, len, &env, err);
    CHECK(r == 0 || r == -EBADMSG);
    if (r < 0) {
        check_error_frame(0, "bad_protobuf", err, sizeof(err));
        return OUT_BAD_ENVELOPE;
    }
    CHECK(within(env.body, frame, len));
    CHECK(env.kind != 1 && env.kind <= 536870911u);
    uint32_t kind = env.kind, out;
    switch (kind) {
    case CODEC_KIND_EMIT:
        out = do_emit(env.correlation, env.body);
        break;
    case CODEC_KIND_SUBSCRIBE:
        out = do_subscribe(env.correlation, env.body);
        break;
    case CODEC_KIND_UNSUBSCRIBE:
    case CODEC_KIND_PING:
        out = do_u64(env.correlation, env.body, kind == CODEC_KIND_PING);
        break;
    case CODEC_KIND_HELLO:
        out = do_hello(env.correlation, env.body, frame_max);
        break;
    case CODEC_KIND_REGISTER:
        out = do_register(env.correlation, env.body);
        break;
    case CODEC_KIND_PONG:
    case CODEC_KIND_STATS:
        out = OUT_OK;
        break;
    case CODEC_KIND_NONE:
        out = OUT_NO_BODY;
        break;
    default: {
        const char *name = codec_kind_name(kind);
        CHECK(name != NULL);
        CHECK(!codec_kind_from_broker(kind) || codec_kind_known(kind));
        out = OUT_UNKNOWN;
        break;
    }
    }
    return (kind << 12) | out;
}

/* ---- feeding ------------------------------------------------------------------------------- */

struct frame_rec {
    size_t off; /* of the frame's body in the stream */
    uint32_t len;
    uint32_t outcome;
};

/* What one way of feeding saw. */
struct run {
    struct frame_rec *frames;
    size_t count, cap;
    int err;       /* first framer error, or 0 */
    size_t err_at; /* stream offset just past what the framer consumed when it failed */
    uint32_t bad_len;
    size_t buffered; /* bytes held at the end (no error) */
    bool decode;     /* decode frames (else outcome 0) */
};

/* The feeding loops run per byte: coverage of their own compares would only slow the fuzzer
 * down (the framer and the decoders they call keep theirs). */
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))

NO_COVERAGE static void run_add(struct run *r, size_t off, uint32_t len, uint32_t outcome)
{
    CHECK(r->count < r->cap);
    r->frames[r->count].off = off;
    r->frames[r->count].len = len;
    r->frames[r->count].outcome = outcome;
    r->count++;
}

/* The reference: walks the length prefixes; decodes each frame from an exactly sized copy. */
NO_COVERAGE static void feed_reference(const uint8_t *s, size_t n, uint32_t max, struct run *run)
{
    size_t pos = 0;
    while (n - pos >= CODEC_FRAME_HEADER_BYTES) {
        uint32_t l = wire_get_be32(s + pos);
        if (l == 0 || l > max) {
            run->err = l == 0 ? -ENODATA : -EMSGSIZE;
            run->err_at = pos + CODEC_FRAME_HEADER_BYTES;
            run->bad_len = l;
            return;
        }
        if (n - pos - CODEC_FRAME_HEADER_BYTES < l)
            break;
        uint8_t *copy = malloc(l);
        CHECK(copy != NULL);
        memcpy(copy, s + pos + CODEC_FRAME_HEADER_BYTES, l);
        run_add(run, pos + CODEC_FRAME_HEADER_BYTES, l, process_frame(copy, l, max));
        free(copy);
        pos += CODEC_FRAME_HEADER_BYTES + l;
    }
    run->buffered = n - pos;
}

/* conn_process on one chunk at stream offset base. Returns false once the framer failed. */
NO_COVERAGE static bool feed_chunk(struct codec_framer *f, const uint8_t *chunk, size_t clen,
                                   size_t base, const uint8_t *s, struct run *run)
{
    size_t pos = 0;
    while (pos < clen) {
        size_t used = (size_t)-1;
        const uint8_t *frame = NULL;
        uint32_t flen = 0;
        int r = codec_framer_feed(f, chunk + pos, clen - pos, &used, &frame, &flen);
        CHECK(used <= clen - pos);
        size_t start = pos;
        pos += used;
        if (r == 0) {
            CHECK(pos == clen);
            break;
        }
        if (r < 0) {
            CHECK(r == -ENODATA || r == -EMSGSIZE);
            run->err = r;
            run->err_at = base + pos;
            run->bad_len = codec_framer_bad_len(f);
            return false;
        }
        CHECK(r == 1 && flen >= 1 && flen <= f->frame_bytes_max);
        size_t end = base + pos; /* just past the frame in the stream */
        CHECK(end >= (size_t)flen + CODEC_FRAME_HEADER_BYTES);
        CHECK(wire_get_be32(s + end - flen - CODEC_FRAME_HEADER_BYTES) == flen);
        CHECK(memcmp(frame, s + end - flen, flen) == 0);
        /* In place (inside what this call was given) or in the framer's own buffer. */
        CHECK((frame >= chunk + start && frame + flen <= chunk + clen) ||
              (frame == f->buf && flen <= f->buf_cap));
        run_add(run, end - flen, flen,
                run->decode ? process_frame(frame, flen, f->frame_bytes_max) : 0);
    }
    return true;
}

/* Size of chunk i of the schedule, 1..left. */
NO_COVERAGE static size_t chunk_size(const uint8_t *sched, size_t k, size_t i, size_t left)
{
    size_t n;
    if (k == 0) {
        n = 1 + i % 7;
    } else {
        uint8_t b = sched[i % k];
        if (b == 0xff)
            n = left;
        else if (b < 0x40)
            n = 1 + (b & 7);
        else if (b < 0xc0)
            n = 1 + (size_t)(b - 0x40) * 3;
        else
            n = 1 + (size_t)(b - 0xc0) * 64;
    }
    return n < left ? n : left;
}

enum way { WAY_WHOLE, WAY_SCHEDULE, WAY_BYTES };

NO_COVERAGE static void feed_way(enum way way, const uint8_t *s, size_t n, const uint8_t *sched,
                                 size_t k, uint32_t max, struct run *run)
{
    struct codec_framer f;
    codec_framer_init(&f, max);
    size_t pos = 0;
    bool ok = true;
    for (size_t i = 0; ok && pos < n; i++) {
        size_t c = way == WAY_WHOLE   ? n - pos
                   : way == WAY_BYTES ? 1
                                      : chunk_size(sched, k, i, n - pos);
        if (way == WAY_SCHEDULE) {
            /* An exactly sized chunk: a decoder reading past an in-place frame is caught. */
            uint8_t *copy = malloc(c);
            CHECK(copy != NULL);
            memcpy(copy, s + pos, c);
            ok = feed_chunk(&f, copy, c, pos, s, run);
            free(copy);
        } else {
            ok = feed_chunk(&f, s + pos, c, pos, s, run);
        }
        pos += c;
    }
    if (ok) {
        /* An empty feed releases a frame delivered from the buffer; then what is held is the
         * incomplete frame at the end of the stream. */
        size_t used = (size_t)-1;
        const uint8_t *frame = NULL;
        uint32_t flen = 0;
        CHECK(codec_framer_feed(&f, s, 0, &used, &frame, &flen) == 0 && used == 0);
        run->buffered = codec_framer_buffered(&f);
        CHECK(run->buffered < CODEC_FRAME_HEADER_BYTES + (size_t)max);
    }
    codec_framer_free(&f);
}

NO_COVERAGE static void run_same(const struct run *a, const struct run *b)
{
    CHECK(a->count == b->count);
    for (size_t i = 0; i < a->count; i++) {
        CHECK(a->frames[i].off == b->frames[i].off && a->frames[i].len == b->frames[i].len);
        if (a->decode && b->decode)
            CHECK(a->frames[i].outcome == b->frames[i].outcome);
    }
    CHECK(a->err == b->err);
    if (a->err)
        CHECK(a->err_at == b->err_at && a->bad_len == b->bad_len);
    else
        CHECK(a->buffered == b->buffered);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t k = data[0];
    if (k > size - 1)
        k = size - 1;
    const uint8_t *sched = data + 1;
    size_t n = size - 1 - k;
    /* The stream in a buffer of exactly its size. */
    uint8_t *s = malloc(n ? n : 1);
    CHECK(s != NULL);
    if (n)
        memcpy(s, data + 1 + k, n);

    size_t cap = n / (CODEC_FRAME_HEADER_BYTES + 1) + 1;
    struct frame_rec *recs = malloc(4 * cap * sizeof(*recs));
    CHECK(recs != NULL);
    for (size_t m = 0; m < sizeof(frame_limits) / sizeof(frame_limits[0]); m++) {
        uint32_t max = frame_limits[m];
        struct run ref = {recs, 0, cap, 0, 0, 0, 0, true};
        struct run whole = {recs + cap, 0, cap, 0, 0, 0, 0, false};
        struct run sched_run = {recs + 2 * cap, 0, cap, 0, 0, 0, 0, true};
        struct run bytes = {recs + 3 * cap, 0, cap, 0, 0, 0, 0, false};
        feed_reference(s, n, max, &ref);
        feed_way(WAY_WHOLE, s, n, sched, k, max, &whole);
        feed_way(WAY_SCHEDULE, s, n, sched, k, max, &sched_run);
        run_same(&ref, &whole);
        run_same(&ref, &sched_run);
        /* One byte at a time: with the small limit only (with the large one the schedule may
         * still name 1-byte chunks); the limits differ only in which lengths fail. */
        if (m == 0) {
            feed_way(WAY_BYTES, s, n, sched, k, max, &bytes);
            run_same(&ref, &bytes);
        }
    }
    free(recs);
    free(s);
    return 0;
}
