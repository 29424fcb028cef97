// SPDX-License-Identifier: Apache-2.0
//
// Hand-written protobuf reading and writing of the frames in envelope.h. Pure; any thread.
// Decoders follow proto3 rules: unknown fields are skipped, a repeated scalar field keeps the
// last value, and a wire type that does not match the schema is malformed.
#include "codec/envelope.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "codec/wire.h"

/* protocol_version of this broker (docs/DESIGN.md §5). */
#define CODEC_PROTOCOL_VERSION 1

static int fail(char err[CODEC_ERR_BYTES], const char *msg)
{
    if (err)
        snprintf(err, CODEC_ERR_BYTES, "%s", msg);
    return -EBADMSG;
}

static int failf_field(char err[CODEC_ERR_BYTES], const char *msg, const char *msg_name,
                       uint32_t field)
{
    if (err)
        snprintf(err, CODEC_ERR_BYTES, "%s: field %u of %s", msg, field, msg_name);
    return -EBADMSG;
}

static struct codec_slice slice_of(const struct wire_field *f)
{
    struct codec_slice s = {f->data, (uint32_t)f->len};
    return s;
}

/* Checks that a field has the wire type the schema gives it. */
static int want(const struct wire_field *f, enum wire_type t, const char *msg,
                char err[CODEC_ERR_BYTES])
{
    if (f->type != t)
        return failf_field(err, "wrong wire type", msg, f->number);
    return 0;
}

static int want_utf8(const struct wire_field *f, const char *msg, char err[CODEC_ERR_BYTES])
{
    if (want(f, WIRE_LEN, msg, err) < 0)
        return -EBADMSG;
    if (!wire_utf8_valid(f->data, f->len))
        return failf_field(err, "string is not valid UTF-8", msg, f->number);
    return 0;
}

int codec_envelope_decode(const uint8_t *frame, size_t len, struct codec_envelope *env,
                          char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(env, 0, sizeof(*env));
    wire_cursor_init(&c, frame, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1) {
            if (want(&f, WIRE_VARINT, "Frame", err) < 0)
                return -EBADMSG;
            env->correlation = f.value;
        } else if (f.type == WIRE_LEN) {
            /* Every body kind, known or not, is a message. */
            env->kind = f.number;
            env->body = slice_of(&f);
        } else if (codec_kind_known(f.number)) {
            return failf_field(err, "wrong wire type", "Frame", f.number);
        }
        /* An unknown scalar field is skipped, as proto3 requires: a field added to Frame
         * later must not make this broker reject frames. */
    }
    if (r < 0)
        return fail(err, "frame is not a valid protobuf message");
    return 0;
}

/* ---- google.protobuf.Struct all the way down ------------------------------------------------
 * Payload and Metadata are forwarded verbatim, so whatever a publisher puts in them reaches
 * every subscriber's decoder. Strict decoders (protobuf's own) refuse a string that is not
 * UTF-8 at any depth, and nesting past their recursion limit (100 messages by default): one
 * publisher's bytes must not make every subscriber fail. So the Structs inside are checked
 * down to the last Value: strings UTF-8, known fields of the right wire type, at most
 * CODEC_NEST_MAX levels of Struct / ListValue / Value (an event holds 2 messages around its
 * payload and each nesting level of a Struct adds 3: Struct, its entry, the Value). */
#define CODEC_NEST_MAX 60

static int nest_fail(char err[CODEC_ERR_BYTES], const char *where, const char *what)
{
    if (err)
        snprintf(err, CODEC_ERR_BYTES, "%s: %s", where, what);
    return -EBADMSG;
}

static int pb_struct_check(const uint8_t *p, size_t len, const char *where, unsigned depth,
                           char err[CODEC_ERR_BYTES]);

static int pb_list_check(const uint8_t *p, size_t len, const char *where, unsigned depth,
                         char err[CODEC_ERR_BYTES]);

/* google.protobuf.Value: null (1), number (2), string (3), bool (4), struct (5), list (6). */
static int pb_value_check(const uint8_t *p, size_t len, const char *where, unsigned depth,
                          char err[CODEC_ERR_BYTES])
{
    if (depth > CODEC_NEST_MAX)
        return nest_fail(err, where, "nested deeper than 60 levels of Struct, ListValue and Value");
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        switch (f.number) {
        case 1:
        case 4:
            if (f.type != WIRE_VARINT)
                return nest_fail(err, where, "a Value field has the wrong wire type");
            break;
        case 2:
            if (f.type != WIRE_I64)
                return nest_fail(err, where, "a Value field has the wrong wire type");
            break;
        case 3:
            if (f.type != WIRE_LEN)
                return nest_fail(err, where, "a Value field has the wrong wire type");
            if (!wire_utf8_valid(f.data, f.len))
                return nest_fail(err, where, "a string value is not valid UTF-8");
            break;
        case 5:
        case 6:
            if (f.type != WIRE_LEN)
                return nest_fail(err, where, "a Value field has the wrong wire type");
            if ((f.number == 5 ? pb_struct_check : pb_list_check)(f.data, f.len, where, depth + 1,
                                                                  err) < 0)
                return -EBADMSG;
            break;
        default:
            break;
        }
    }
    return r < 0 ? nest_fail(err, where, "a nested Value is not a valid protobuf message") : 0;
}

/* google.protobuf.ListValue: repeated Value values = 1. */
static int pb_list_check(const uint8_t *p, size_t len, const char *where, unsigned depth,
                         char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1)
            continue;
        if (f.type != WIRE_LEN)
            return nest_fail(err, where, "a ListValue field has the wrong wire type");
        if (pb_value_check(f.data, f.len, where, depth + 1, err) < 0)
            return -EBADMSG;
    }
    return r < 0 ? nest_fail(err, where, "a nested ListValue is not a valid protobuf message") : 0;
}

/* google.protobuf.Struct: map<string, Value> fields = 1, i.e. entries {key = 1, value = 2}. */
/* The common entry, as protobuf writes it, checked without the general walk: {1: short ASCII
 * key, 2: Value holding a number, a bool or null} = 0a KL key 12 VL (11 f64 | 20 b | 08 n).
 * True when e is such an entry and valid; false sends it down the general path (which also
 * reports any error). Most payload fields are numbers under short keys: this is most of the
 * check's cost on the hot path. */
static bool struct_entry_scalar(const uint8_t *e, size_t n)
{
    if (n < 4 || e[0] != 0x0a || e[1] >= 0x80)
        return false;
    size_t kl = e[1];
    if (kl + 4 > n || e[2 + kl] != 0x12 || e[3 + kl] >= 0x80 || 4 + kl + e[3 + kl] != n)
        return false;
    for (size_t i = 0; i < kl; i++)
        if (e[2 + i] >= 0x80)
            return false;
    const uint8_t *v = e + 4 + kl;
    size_t vl = e[3 + kl];
    return (vl == 9 && v[0] == 0x11) || (vl == 2 && (v[0] == 0x20 || v[0] == 0x08) && v[1] < 0x80);
}

static int pb_struct_check(const uint8_t *p, size_t len, const char *where, unsigned depth,
                           char err[CODEC_ERR_BYTES])
{
    if (depth > CODEC_NEST_MAX)
        return nest_fail(err, where, "nested deeper than 60 levels of Struct, ListValue and Value");
    struct wire_cursor c, ec;
    struct wire_field f, ef;
    int r, er;
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1)
            continue;
        if (f.type != WIRE_LEN)
            return nest_fail(err, where, "a Struct field has the wrong wire type");
        if (struct_entry_scalar(f.data, f.len))
            continue;
        wire_cursor_init(&ec, f.data, f.len);
        while ((er = wire_next(&ec, &ef)) > 0) {
            if (ef.number != 1 && ef.number != 2)
                continue;
            if (ef.type != WIRE_LEN)
                return nest_fail(err, where, "a Struct entry has the wrong wire type");
            if (ef.number == 1 && !wire_utf8_valid(ef.data, ef.len))
                return nest_fail(err, where, "a Struct key is not valid UTF-8");
            if (ef.number == 2 && pb_value_check(ef.data, ef.len, where, depth + 1, err) < 0)
                return -EBADMSG;
        }
        if (er < 0)
            return nest_fail(err, where, "a Struct entry is not a valid protobuf message");
    }
    return r < 0 ? nest_fail(err, where, "a nested Struct is not a valid protobuf message") : 0;
}

/* common.Payload: data (1) and versioning (2), both Structs. */
static int payload_check(const uint8_t *p, size_t len, char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1 && f.number != 2)
            continue;
        const char *where = f.number == 1 ? "payload.data" : "payload.versioning";
        if (f.type != WIRE_LEN)
            return nest_fail(err, where, "wrong wire type (a Struct is expected)");
        if (pb_struct_check(f.data, f.len, where, 1, err) < 0)
            return -EBADMSG;
    }
    return r < 0 ? fail(err, "payload is not a valid protobuf message") : 0;
}

/* The Structs and repeated strings of common.Metadata (global_context: metadata_scan). */
static int metadata_check(const uint8_t *p, size_t len, char err[CODEC_ERR_BYTES])
{
    static const char *const names[] = {NULL,
                                        "metadata.scheduling",
                                        "metadata.features",
                                        "metadata.custom_rules",
                                        "metadata.audit",
                                        "metadata.tags",
                                        "metadata.service_specific",
                                        "metadata.knowledge_graph"};
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number < 1 || f.number > 7)
            continue;
        if (f.type != WIRE_LEN)
            return nest_fail(err, names[f.number], "wrong wire type");
        if (f.number == 2 || f.number == 5) {
            if (!wire_utf8_valid(f.data, f.len))
                return nest_fail(err, names[f.number], "a string is not valid UTF-8");
        } else if (pb_struct_check(f.data, f.len, names[f.number], 1, err) < 0) {
            return -EBADMSG;
        }
    }
    return r < 0 ? fail(err, "metadata is not a valid protobuf message") : 0;
}

/* Reads global_context (field 21) out of Metadata bytes: user_id (1), correlation_id (3). */
static int metadata_scan(const uint8_t *md, size_t len, struct codec_slice *user_id,
                         struct codec_slice *correlation_id, char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    wire_cursor_init(&c, md, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 21)
            continue;
        if (want(&f, WIRE_LEN, "Metadata", err) < 0)
            return -EBADMSG;
        struct wire_cursor g;
        struct wire_field gf;
        int gr;
        wire_cursor_init(&g, f.data, f.len);
        while ((gr = wire_next(&g, &gf)) > 0) {
            if (gf.number >= 1 && gf.number <= 6 &&
                want_utf8(&gf, "Metadata.global_context", err) < 0)
                return -EBADMSG;
            if (gf.number == 1 && user_id)
                *user_id = slice_of(&gf);
            else if (gf.number == 3 && correlation_id)
                *correlation_id = slice_of(&gf);
        }
        if (gr < 0)
            return fail(err, "metadata.global_context is not a valid protobuf message");
    }
    if (r < 0)
        return fail(err, "metadata is not a valid protobuf message");
    return 0;
}

int codec_metadata_user_id(const uint8_t *md, size_t len, struct codec_slice *user_id)
{
    char err[CODEC_ERR_BYTES];
    user_id->ptr = NULL;
    user_id->len = 0;
    return metadata_scan(md, len, user_id, NULL, err) < 0 ? -EBADMSG : 0;
}

int codec_emit_decode(const uint8_t *body, size_t len, struct codec_emit *e,
                      char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(e, 0, sizeof(*e));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        switch (f.number) {
        case 1:
        case 2:
        case 3:
            if (want_utf8(&f, "EventRequest", err) < 0)
                return -EBADMSG;
            if (f.number == 1)
                e->event_id = slice_of(&f);
            else if (f.number == 2)
                e->event_type = slice_of(&f);
            else
                e->entity_id = slice_of(&f);
            break;
        case 4:
            if (want(&f, WIRE_LEN, "EventRequest", err) < 0)
                return -EBADMSG;
            if (e->has_metadata)
                return fail(err, "metadata given twice in one EventRequest");
            e->metadata = slice_of(&f);
            e->has_metadata = true;
            break;
        case 5:
            if (want(&f, WIRE_VARINT, "EventRequest", err) < 0)
                return -EBADMSG;
            e->campaign_id = (int64_t)f.value;
            break;
        case 6:
            if (want(&f, WIRE_LEN, "EventRequest", err) < 0)
                return -EBADMSG;
            if (e->has_payload)
                return fail(err, "payload given twice in one EventRequest");
            e->payload = slice_of(&f);
            e->has_payload = true;
            break;
        default:
            break; /* unknown fields are skipped, as proto3 requires */
        }
    }
    if (r < 0)
        return fail(err, "emit is not a valid EventRequest message");
    if (e->has_metadata && (metadata_scan(e->metadata.ptr, e->metadata.len, &e->user_id,
                                          &e->correlation_id, err) < 0 ||
                            metadata_check(e->metadata.ptr, e->metadata.len, err) < 0))
        return -EBADMSG;
    if (e->has_payload && payload_check(e->payload.ptr, e->payload.len, err) < 0)
        return -EBADMSG;
    return 0;
}

/* Where a slice of the old body is in the stamped one: fields before the metadata field keep
 * their place, fields after it move back by its length, and metadata's insides move to the
 * new metadata. */
static void stamp_rebase(struct codec_slice *sl, const uint8_t *body, const uint8_t *md_field,
                         size_t md_field_len, const uint8_t *md, size_t md_len, const uint8_t *out,
                         const uint8_t *new_md)
{
    if (!sl->ptr)
        return;
    if (md && sl->ptr >= md && sl->ptr < md + md_len)
        sl->ptr = new_md + (sl->ptr - md);
    else if (md_field && sl->ptr > md_field)
        sl->ptr = out + (sl->ptr - body) - md_field_len;
    else
        sl->ptr = out + (sl->ptr - body);
}

int codec_emit_stamp_user(const uint8_t *body, size_t len, struct codec_emit *e, const char *user,
                          size_t user_len, uint8_t *out, size_t cap)
{
    if (user_len > (1u << 20) || cap < len + CODEC_STAMP_EXTRA(user_len))
        return -ENOSPC;
    struct wire_cursor c;
    struct wire_field f;
    const uint8_t *md = NULL, *md_field = NULL;
    size_t md_len = 0, md_field_len = 0;
    uint8_t *p = out;
    wire_cursor_init(&c, body, len);
    const uint8_t *start = c.p;
    int r;
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 4 && f.type == WIRE_LEN && !md_field) {
            md = f.data;
            md_len = f.len;
            md_field = start;
            md_field_len = (size_t)(c.p - start);
        } else {
            memcpy(p, start, (size_t)(c.p - start)); /* the field as it came */
            p += c.p - start;
        }
        start = c.p;
    }
    if (r < 0)
        return -EBADMSG;
    /* metadata (4) { old metadata, global_context (21) { user_id (1) } } */
    size_t gc_len = wire_len_field_len(1, user_len);
    size_t new_md_len = md_len + wire_len_field_len(21, gc_len);
    p = wire_put_tag(p, 4, WIRE_LEN);
    p = wire_put_varint(p, new_md_len);
    uint8_t *new_md = p;
    if (md_len)
        memcpy(p, md, md_len);
    p += md_len;
    p = wire_put_tag(p, 21, WIRE_LEN);
    p = wire_put_varint(p, gc_len);
    p = wire_put_tag(p, 1, WIRE_LEN);
    p = wire_put_varint(p, user_len);
    const uint8_t *uid = p;
    memcpy(p, user, user_len);
    p += user_len;
    struct codec_slice *moved[] = {&e->event_id, &e->event_type, &e->entity_id, &e->payload,
                                   &e->correlation_id};
    for (size_t i = 0; i < sizeof(moved) / sizeof(moved[0]); i++)
        stamp_rebase(moved[i], body, md_field, md_field_len, md, md_len, out, new_md);
    e->metadata.ptr = new_md;
    e->metadata.len = (uint32_t)new_md_len;
    e->has_metadata = true;
    e->user_id.ptr = uid;
    e->user_id.len = (uint32_t)user_len;
    return (int)(p - out);
}

int codec_subscribe_decode(const uint8_t *body, size_t len, struct codec_subscribe *s,
                           char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    s->campaign_id = 0;
    s->from_sequence = 0;
    s->pattern_count = 0;
    s->user_id.ptr = NULL;
    s->user_id.len = 0;
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1) {
            if (want_utf8(&f, "SubscribeRequest", err) < 0)
                return -EBADMSG;
            if (s->pattern_count == CODEC_SUBSCRIBE_PATTERNS_MAX) {
                if (err)
                    snprintf(err, CODEC_ERR_BYTES,
                             "subscription lists more than %u event type patterns",
                             CODEC_SUBSCRIBE_PATTERNS_MAX);
                return -E2BIG;
            }
            s->patterns[s->pattern_count++] = slice_of(&f);
        } else if (f.number == 2) {
            if (want(&f, WIRE_LEN, "SubscribeRequest", err) < 0 ||
                metadata_scan(f.data, f.len, &s->user_id, NULL, err) < 0)
                return -EBADMSG;
        } else if (f.number == 3) {
            if (want(&f, WIRE_VARINT, "SubscribeRequest", err) < 0)
                return -EBADMSG;
            s->campaign_id = (int64_t)f.value;
        } else if (f.number == 4) {
            if (want(&f, WIRE_VARINT, "SubscribeRequest", err) < 0)
                return -EBADMSG;
            s->from_sequence = f.value;
        }
    }
    if (r < 0)
        return fail(err, "subscribe is not a valid SubscribeRequest message");
    return 0;
}

int codec_hello_decode(const uint8_t *body, size_t len, struct codec_hello *h,
                       char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(h, 0, sizeof(*h));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1) {
            if (want(&f, WIRE_VARINT, "Hello", err) < 0)
                return -EBADMSG;
            h->protocol_version = (uint32_t)f.value;
        } else if (f.number >= 2 && f.number <= 4) {
            if (want_utf8(&f, "Hello", err) < 0)
                return -EBADMSG;
            if (f.number == 2)
                h->token = slice_of(&f);
            else if (f.number == 3)
                h->client_name = slice_of(&f);
            else
                h->user = slice_of(&f);
        }
    }
    if (r < 0)
        return fail(err, "hello is not a valid Hello message");
    return 0;
}

int codec_u64_msg_decode(const uint8_t *body, size_t len, uint64_t *value,
                         char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    *value = 0;
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1) {
            if (want(&f, WIRE_VARINT, "message", err) < 0)
                return -EBADMSG;
            *value = f.value;
        }
    }
    if (r < 0)
        return fail(err, "body is not a valid protobuf message");
    return 0;
}

/* ---- encoding -------------------------------------------------------------------------- */

static size_t str_field_len(uint32_t n, struct codec_slice s)
{
    return s.len ? wire_len_field_len(n, s.len) : 0;
}

static uint8_t *put_str(uint8_t *p, uint32_t n, struct codec_slice s)
{
    return s.len ? wire_put_len_field(p, n, s.ptr, s.len) : p;
}

static size_t u64_field_len(uint32_t n, uint64_t v)
{
    return v ? wire_varint_field_len(n, v) : 0;
}

static uint8_t *put_u64(uint8_t *p, uint32_t n, uint64_t v)
{
    return v ? wire_put_varint_field(p, n, v) : p;
}

size_t codec_event_body_size(const struct codec_event_out *ev)
{
    size_t n = 0;
    n += ev->success ? 2 : 0;
    n += str_field_len(2, ev->event_id);
    n += str_field_len(3, ev->event_type);
    n += str_field_len(4, ev->message);
    n += ev->has_metadata ? wire_len_field_len(5, ev->metadata.len) : 0;
    n += ev->has_payload ? wire_len_field_len(6, ev->payload.len) : 0;
    n += u64_field_len(7, (uint64_t)ev->campaign_id);
    n += str_field_len(8, ev->entity_id);
    n += u64_field_len(9, ev->sequence);
    n += u64_field_len(10, (uint64_t)ev->timestamp_unix_nanos);
    n += str_field_len(11, ev->correlation_id);
    n += u64_field_len(12, ev->stream_seq);
    n += str_field_len(13, ev->code);
    return n;
}

size_t codec_event_size_of_body(const struct codec_event_out *ev, size_t body)
{
    return 4 + u64_field_len(1, ev->correlation) + wire_len_field_len(ev->kind, body);
}

size_t codec_event_size(const struct codec_event_out *ev)
{
    return codec_event_size_of_body(ev, codec_event_body_size(ev));
}

size_t codec_event_encode(const struct codec_event_out *ev, uint8_t *out)
{
    return codec_event_encode_layout(ev, out, NULL);
}

size_t codec_event_encode_layout(const struct codec_event_out *ev, uint8_t *out,
                                 struct codec_event_layout *layout)
{
    return codec_event_encode_body(ev, codec_event_body_size(ev), out, layout);
}

size_t codec_event_encode_body(const struct codec_event_out *ev, size_t body, uint8_t *out,
                               struct codec_event_layout *layout)
{
    size_t frame = u64_field_len(1, ev->correlation) + wire_len_field_len(ev->kind, body);
    uint8_t *p = out;
    wire_put_be32(p, (uint32_t)frame);
    p += 4;
    p = put_u64(p, 1, ev->correlation);
    p = wire_put_tag(p, ev->kind, WIRE_LEN);
    p = wire_put_varint(p, body);
    if (ev->success)
        p = wire_put_varint_field(p, 1, 1);
    p = put_str(p, 2, ev->event_id);
    if (layout)
        layout->event_type_off =
            (uint32_t)(p - out) +
            (ev->event_type.len ? (uint32_t)(wire_tag_len(3) + wire_varint_len(ev->event_type.len))
                                : 0);
    p = put_str(p, 3, ev->event_type);
    p = put_str(p, 4, ev->message);
    if (layout)
        layout->metadata_off =
            (uint32_t)(p - out) + (uint32_t)(wire_tag_len(5) + wire_varint_len(ev->metadata.len));
    if (ev->has_metadata)
        p = wire_put_len_field(p, 5, ev->metadata.ptr, ev->metadata.len);
    if (ev->has_payload)
        p = wire_put_len_field(p, 6, ev->payload.ptr, ev->payload.len);
    p = put_u64(p, 7, (uint64_t)ev->campaign_id);
    p = put_str(p, 8, ev->entity_id);
    p = put_u64(p, 9, ev->sequence);
    p = put_u64(p, 10, (uint64_t)ev->timestamp_unix_nanos);
    p = put_str(p, 11, ev->correlation_id);
    p = put_u64(p, 12, ev->stream_seq);
    p = put_str(p, 13, ev->code);
    return (size_t)(p - out);
}

/* Small control frames are built in a scratch body first, then wrapped. */
struct msgbuf {
    uint8_t b[CODEC_CONTROL_BYTES_MAX];
    size_t n;
    bool overflow;
};

static void mb_bytes(struct msgbuf *m, uint32_t num, const void *data, size_t len)
{
    if (m->overflow || wire_len_field_len(num, len) > sizeof(m->b) - m->n) {
        m->overflow = true;
        return;
    }
    m->n = (size_t)(wire_put_len_field(m->b + m->n, num, data, len) - m->b);
}

static void mb_str(struct msgbuf *m, uint32_t num, const char *s)
{
    if (s && *s)
        mb_bytes(m, num, s, strlen(s));
}

static void mb_u64(struct msgbuf *m, uint32_t num, uint64_t v)
{
    if (!v || m->overflow)
        return;
    if (wire_varint_field_len(num, v) > sizeof(m->b) - m->n) {
        m->overflow = true;
        return;
    }
    m->n = (size_t)(wire_put_varint_field(m->b + m->n, num, v) - m->b);
}

/* Wraps body bytes as Frame{correlation, kind: body} with the length prefix. */
static int wrap(uint8_t *out, size_t cap, uint64_t correlation, uint32_t kind, const uint8_t *body,
                size_t body_len)
{
    size_t frame = u64_field_len(1, correlation) + wire_len_field_len(kind, body_len);
    if (4 + frame > cap)
        return -ENOSPC;
    uint8_t *p = out;
    wire_put_be32(p, (uint32_t)frame);
    p += 4;
    p = put_u64(p, 1, correlation);
    p = wire_put_len_field(p, kind, body, body_len);
    return (int)(p - out);
}

static int mb_wrap(struct msgbuf *m, uint8_t *out, size_t cap, uint64_t corr, uint32_t kind)
{
    if (m->overflow)
        return -ENOSPC;
    return wrap(out, cap, corr, kind, m->b, m->n);
}

int codec_welcome_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t shard_count,
                         uint32_t frame_bytes_max, uint64_t connection_id, uint32_t shard_id)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, CODEC_PROTOCOL_VERSION);
    mb_str(&m, 2, "nexusd " NEXUS_VERSION);
    mb_u64(&m, 3, shard_count);
    mb_u64(&m, 4, frame_bytes_max);
    mb_u64(&m, 5, connection_id);
    mb_u64(&m, 6, shard_id);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_WELCOME);
}

int codec_subscribe_ack_encode(uint8_t *out, size_t cap, uint64_t correlation,
                               uint64_t subscription_id)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, subscription_id);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_SUBSCRIBE_ACK);
}

int codec_error_encode(uint8_t *out, size_t cap, uint64_t correlation, const char *code,
                       const char *message)
{
    struct msgbuf m = {.n = 0};
    mb_str(&m, 1, code);
    /* The message is for humans: cut it to what fits, on a UTF-8 boundary. */
    size_t ml = message ? strlen(message) : 0;
    size_t room = CODEC_CONTROL_BYTES_MAX - 64 - m.n;
    if (ml > room) {
        ml = room;
        while (ml > 0 && ((uint8_t)message[ml] & 0xc0) == 0x80)
            ml--;
    }
    if (ml)
        mb_bytes(&m, 2, message, ml);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_ERROR);
}

int codec_ping_encode(uint8_t *out, size_t cap, uint64_t correlation, uint64_t nonce)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, nonce);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_PING);
}

int codec_pong_encode(uint8_t *out, size_t cap, uint64_t correlation, uint64_t nonce)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, nonce);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_PONG);
}

int codec_goaway_encode(uint8_t *out, size_t cap, const char *reason)
{
    struct msgbuf m = {.n = 0};
    mb_str(&m, 1, reason);
    return mb_wrap(&m, out, cap, 0, CODEC_KIND_GOAWAY);
}

int codec_gap_encode(uint8_t *out, size_t cap, int64_t campaign_id, uint64_t first_sequence,
                     uint64_t last_sequence, uint64_t dropped, const char *reason)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, (uint64_t)campaign_id);
    mb_u64(&m, 2, first_sequence);
    mb_u64(&m, 3, last_sequence);
    mb_u64(&m, 4, dropped);
    mb_str(&m, 5, reason);
    return mb_wrap(&m, out, cap, 0, CODEC_KIND_GAP);
}

static size_t emit_body_len(const struct codec_emit_in *e)
{
    return str_field_len(1, e->event_id) + str_field_len(2, e->event_type) +
           str_field_len(3, e->entity_id) +
           (e->has_metadata ? wire_len_field_len(4, e->metadata.len) : 0) +
           u64_field_len(5, (uint64_t)e->campaign_id) +
           (e->has_payload ? wire_len_field_len(6, e->payload.len) : 0);
}

size_t codec_emit_size(const struct codec_emit_in *e)
{
    return 4 + u64_field_len(1, e->correlation) +
           wire_len_field_len(CODEC_KIND_EMIT, emit_body_len(e));
}

size_t codec_emit_encode(const struct codec_emit_in *e, uint8_t *out)
{
    size_t body = emit_body_len(e);
    size_t frame = u64_field_len(1, e->correlation) + wire_len_field_len(CODEC_KIND_EMIT, body);
    uint8_t *p = out;
    wire_put_be32(p, (uint32_t)frame);
    p += 4;
    p = put_u64(p, 1, e->correlation);
    p = wire_put_tag(p, CODEC_KIND_EMIT, WIRE_LEN);
    p = wire_put_varint(p, body);
    p = put_str(p, 1, e->event_id);
    p = put_str(p, 2, e->event_type);
    p = put_str(p, 3, e->entity_id);
    if (e->has_metadata)
        p = wire_put_len_field(p, 4, e->metadata.ptr, e->metadata.len);
    p = put_u64(p, 5, (uint64_t)e->campaign_id);
    if (e->has_payload)
        p = wire_put_len_field(p, 6, e->payload.ptr, e->payload.len);
    return (size_t)(p - out);
}

int codec_metadata_build(uint8_t *out, size_t cap, const char *user_id, const char *correlation_id)
{
    struct msgbuf gc = {.n = 0};
    mb_str(&gc, 1, user_id);
    mb_str(&gc, 3, correlation_id);
    if (gc.overflow)
        return -ENOSPC;
    if (gc.n == 0)
        return 0;
    if (wire_len_field_len(21, gc.n) > cap)
        return -ENOSPC;
    return (int)(wire_put_len_field(out, 21, gc.b, gc.n) - out);
}

int codec_subscribe_encode(uint8_t *out, size_t cap, uint64_t correlation, int64_t campaign_id,
                           const char *const *patterns, uint32_t pattern_count, const char *user_id)
{
    return codec_subscribe_from_encode(out, cap, correlation, campaign_id, patterns, pattern_count,
                                       user_id, 0);
}

int codec_subscribe_from_encode(uint8_t *out, size_t cap, uint64_t correlation, int64_t campaign_id,
                                const char *const *patterns, uint32_t pattern_count,
                                const char *user_id, uint64_t from_sequence)
{
    /* Patterns may be long: size exactly rather than using the control scratch. */
    uint8_t md[CODEC_CONTROL_BYTES_MAX];
    int mdl = 0;
    if (user_id && *user_id) {
        mdl = codec_metadata_build(md, sizeof(md), user_id, NULL);
        if (mdl < 0)
            return mdl;
    }
    size_t body = 0;
    for (uint32_t i = 0; i < pattern_count; i++)
        body += wire_len_field_len(1, strlen(patterns[i]));
    body += mdl ? wire_len_field_len(2, (size_t)mdl) : 0;
    body += u64_field_len(3, (uint64_t)campaign_id);
    body += u64_field_len(4, from_sequence);
    size_t frame = u64_field_len(1, correlation) + wire_len_field_len(CODEC_KIND_SUBSCRIBE, body);
    if (4 + frame > cap)
        return -ENOSPC;
    uint8_t *p = out;
    wire_put_be32(p, (uint32_t)frame);
    p += 4;
    p = put_u64(p, 1, correlation);
    p = wire_put_tag(p, CODEC_KIND_SUBSCRIBE, WIRE_LEN);
    p = wire_put_varint(p, body);
    for (uint32_t i = 0; i < pattern_count; i++)
        p = wire_put_len_field(p, 1, patterns[i], strlen(patterns[i]));
    if (mdl)
        p = wire_put_len_field(p, 2, md, (size_t)mdl);
    p = put_u64(p, 3, (uint64_t)campaign_id);
    p = put_u64(p, 4, from_sequence);
    return (int)(p - out);
}

int codec_unsubscribe_encode(uint8_t *out, size_t cap, uint64_t correlation,
                             uint64_t subscription_id)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, subscription_id);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_UNSUBSCRIBE);
}

int codec_hello_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t protocol_version,
                       const char *token, const char *client_name)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, protocol_version);
    mb_str(&m, 2, token);
    mb_str(&m, 3, client_name);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_HELLO);
}

int codec_hello_user_encode(uint8_t *out, size_t cap, uint64_t correlation,
                            uint32_t protocol_version, const char *user, const char *token,
                            const char *client_name)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, protocol_version);
    mb_str(&m, 2, token);
    mb_str(&m, 3, client_name);
    mb_str(&m, 4, user);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_HELLO);
}

int codec_stats_encode(uint8_t *out, size_t cap, uint64_t correlation)
{
    return wrap(out, cap, correlation, CODEC_KIND_STATS, NULL, 0);
}

/* ---- client-side decoding of broker frames ---------------------------------------------- */

int codec_event_decode(const uint8_t *body, size_t len, struct codec_event_in *ev,
                       char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(ev, 0, sizeof(*ev));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        switch (f.number) {
        case 1:
        case 7:
        case 9:
        case 10:
        case 12:
            if (want(&f, WIRE_VARINT, "EventResponse", err) < 0)
                return -EBADMSG;
            if (f.number == 1)
                ev->success = f.value != 0;
            else if (f.number == 7)
                ev->campaign_id = (int64_t)f.value;
            else if (f.number == 9)
                ev->sequence = f.value;
            else if (f.number == 10)
                ev->timestamp_unix_nanos = (int64_t)f.value;
            else
                ev->stream_seq = f.value;
            break;
        case 2:
        case 3:
        case 4:
        case 5:
        case 6:
        case 8:
        case 11:
        case 13: {
            if (want(&f, WIRE_LEN, "EventResponse", err) < 0)
                return -EBADMSG;
            struct codec_slice s = slice_of(&f);
            if (f.number == 2)
                ev->event_id = s;
            else if (f.number == 3)
                ev->event_type = s;
            else if (f.number == 4)
                ev->message = s;
            else if (f.number == 5) {
                ev->metadata = s;
                ev->has_metadata = true;
            } else if (f.number == 6) {
                ev->payload = s;
                ev->has_payload = true;
            } else if (f.number == 8)
                ev->entity_id = s;
            else if (f.number == 11)
                ev->correlation_id = s;
            else
                ev->code = s;
            break;
        }
        default:
            break;
        }
    }
    if (r < 0)
        return fail(err, "event is not a valid EventResponse message");
    return 0;
}

int codec_gap_decode(const uint8_t *body, size_t len, struct codec_gap_in *g,
                     char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(g, 0, sizeof(*g));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number >= 1 && f.number <= 4) {
            if (want(&f, WIRE_VARINT, "Gap", err) < 0)
                return -EBADMSG;
            if (f.number == 1)
                g->campaign_id = (int64_t)f.value;
            else if (f.number == 2)
                g->first_sequence = f.value;
            else if (f.number == 3)
                g->last_sequence = f.value;
            else
                g->dropped = f.value;
        } else if (f.number == 5) {
            if (want(&f, WIRE_LEN, "Gap", err) < 0)
                return -EBADMSG;
            g->reason = slice_of(&f);
        }
    }
    return r < 0 ? fail(err, "gap is not a valid Gap message") : 0;
}

int codec_error_decode(const uint8_t *body, size_t len, struct codec_error_in *e,
                       char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(e, 0, sizeof(*e));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1 || f.number == 2) {
            if (want(&f, WIRE_LEN, "Error", err) < 0)
                return -EBADMSG;
            if (f.number == 1)
                e->code = slice_of(&f);
            else
                e->message = slice_of(&f);
        }
    }
    return r < 0 ? fail(err, "error is not a valid Error message") : 0;
}

int codec_welcome_decode(const uint8_t *body, size_t len, struct codec_welcome_in *w,
                         char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(w, 0, sizeof(*w));
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 2) {
            if (want(&f, WIRE_LEN, "Welcome", err) < 0)
                return -EBADMSG;
            w->server_version = slice_of(&f);
        } else if (f.number >= 1 && f.number <= 6) {
            if (want(&f, WIRE_VARINT, "Welcome", err) < 0)
                return -EBADMSG;
            if (f.number == 1)
                w->protocol_version = (uint32_t)f.value;
            else if (f.number == 3)
                w->shard_count = (uint32_t)f.value;
            else if (f.number == 4)
                w->frame_bytes_max = (uint32_t)f.value;
            else if (f.number == 5)
                w->connection_id = f.value;
            else
                w->shard_id = (uint32_t)f.value;
        }
    }
    return r < 0 ? fail(err, "welcome is not a valid Welcome message") : 0;
}

const char *codec_kind_name(uint32_t kind)
{
    switch (kind) {
    case CODEC_KIND_HELLO:
        return "hello";
    case CODEC_KIND_WELCOME:
        return "welcome";
    case CODEC_KIND_EMIT:
        return "emit";
    case CODEC_KIND_EMIT_ACK:
        return "emit_ack";
    case CODEC_KIND_SUBSCRIBE:
        return "subscribe";
    case CODEC_KIND_SUBSCRIBE_ACK:
        return "subscribe_ack";
    case CODEC_KIND_UNSUBSCRIBE:
        return "unsubscribe";
    case CODEC_KIND_EVENT:
        return "event";
    case CODEC_KIND_ERROR:
        return "error";
    case CODEC_KIND_PING:
        return "ping";
    case CODEC_KIND_PONG:
        return "pong";
    case CODEC_KIND_GAP:
        return "gap";
    case CODEC_KIND_STATS:
        return "stats";
    case CODEC_KIND_STATS_REPLY:
        return "stats_reply";
    case CODEC_KIND_REGISTER:
        return "register";
    case CODEC_KIND_REGISTER_ACK:
        return "register_ack";
    case CODEC_KIND_GOAWAY:
        return "goaway";
    default:
        return "unknown";
    }
}

bool codec_kind_known(uint32_t kind)
{
    return kind != CODEC_KIND_NONE && strcmp(codec_kind_name(kind), "unknown") != 0;
}

bool codec_kind_from_broker(uint32_t kind)
{
    switch (kind) {
    case CODEC_KIND_WELCOME:
    case CODEC_KIND_EMIT_ACK:
    case CODEC_KIND_SUBSCRIBE_ACK:
    case CODEC_KIND_EVENT:
    case CODEC_KIND_ERROR:
    case CODEC_KIND_GAP:
    case CODEC_KIND_STATS_REPLY:
    case CODEC_KIND_REGISTER_ACK:
    case CODEC_KIND_GOAWAY:
        return true;
    default:
        return false;
    }
}

/* ---- external handler registration --------------------------------------------------- */

static int spec_decode(const uint8_t *b, size_t len, struct codec_handler_spec *sp,
                       char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(sp, 0, sizeof(*sp));
    wire_cursor_init(&c, b, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number == 1) {
            if (want_utf8(&f, "HandlerSpec", err) < 0)
                return -EBADMSG;
            sp->action = slice_of(&f);
        } else if (f.number == 2) {
            if (want(&f, WIRE_VARINT, "HandlerSpec", err) < 0)
                return -EBADMSG;
            sp->streaming = f.value != 0;
        } else if (f.number == 3) {
            /* repeated int64: packed (proto3 default) or not */
            struct wire_cursor pc;
            uint64_t v;
            if (f.type == WIRE_VARINT) {
                if (sp->campaign_count == CODEC_HANDLER_CAMPAIGNS_MAX)
                    goto too_many;
                sp->campaigns[sp->campaign_count++] = (int64_t)f.value;
                continue;
            }
            if (f.type != WIRE_LEN)
                return failf_field(err, "wrong wire type", "HandlerSpec", 3);
            wire_cursor_init(&pc, f.data, f.len);
            while (pc.p < pc.end) {
                if (wire_read_varint(&pc, &v) < 0)
                    return fail(err, "campaigns is not a valid packed int64 list");
                if (sp->campaign_count == CODEC_HANDLER_CAMPAIGNS_MAX)
                    goto too_many;
                sp->campaigns[sp->campaign_count++] = (int64_t)v;
            }
        }
    }
    return r < 0 ? fail(err, "handler spec is not a valid HandlerSpec message") : 0;
too_many:
    if (err)
        snprintf(err, CODEC_ERR_BYTES, "a handler spec lists more than %u campaigns",
                 CODEC_HANDLER_CAMPAIGNS_MAX);
    return -E2BIG;
}

int codec_register_decode(const uint8_t *body, size_t len, struct codec_register *reg,
                          char err[CODEC_ERR_BYTES])
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    reg->count = 0;
    wire_cursor_init(&c, body, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1)
            continue;
        if (want(&f, WIRE_LEN, "RegisterHandlers", err) < 0)
            return -EBADMSG;
        if (reg->count == CODEC_HANDLER_SPECS_MAX) {
            if (err)
                snprintf(err, CODEC_ERR_BYTES, "registration lists more than %u actions",
                         CODEC_HANDLER_SPECS_MAX);
            return -E2BIG;
        }
        int sr = spec_decode(f.data, f.len, &reg->specs[reg->count], err);
        if (sr < 0)
            return sr;
        reg->count++;
    }
    return r < 0 ? fail(err, "register is not a valid RegisterHandlers message") : 0;
}

int codec_register_encode(uint8_t *out, size_t cap, uint64_t correlation,
                          const struct codec_register *reg)
{
    size_t body = 0;
    for (uint32_t i = 0; i < reg->count; i++) {
        const struct codec_handler_spec *sp = &reg->specs[i];
        size_t packed = 0;
        for (uint32_t k = 0; k < sp->campaign_count; k++)
            packed += wire_varint_len((uint64_t)sp->campaigns[k]);
        size_t spec = str_field_len(1, sp->action) + (sp->streaming ? 2 : 0) +
                      (packed ? wire_len_field_len(3, packed) : 0);
        body += wire_len_field_len(1, spec);
    }
    size_t frame = u64_field_len(1, correlation) + wire_len_field_len(CODEC_KIND_REGISTER, body);
    if (4 + frame > cap)
        return -ENOSPC;
    uint8_t *p = out;
    wire_put_be32(p, (uint32_t)frame);
    p += 4;
    p = put_u64(p, 1, correlation);
    p = wire_put_tag(p, CODEC_KIND_REGISTER, WIRE_LEN);
    p = wire_put_varint(p, body);
    for (uint32_t i = 0; i < reg->count; i++) {
        const struct codec_handler_spec *sp = &reg->specs[i];
        size_t packed = 0;
        for (uint32_t k = 0; k < sp->campaign_count; k++)
            packed += wire_varint_len((uint64_t)sp->campaigns[k]);
        size_t spec = str_field_len(1, sp->action) + (sp->streaming ? 2 : 0) +
                      (packed ? wire_len_field_len(3, packed) : 0);
        p = wire_put_tag(p, 1, WIRE_LEN);
        p = wire_put_varint(p, spec);
        p = put_str(p, 1, sp->action);
        if (sp->streaming)
            p = wire_put_varint_field(p, 2, 1);
        if (packed) {
            p = wire_put_tag(p, 3, WIRE_LEN);
            p = wire_put_varint(p, packed);
            for (uint32_t k = 0; k < sp->campaign_count; k++)
                p = wire_put_varint(p, (uint64_t)sp->campaigns[k]);
        }
    }
    return (int)(p - out);
}

int codec_register_ack_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t registered)
{
    struct msgbuf m = {.n = 0};
    mb_u64(&m, 1, registered);
    return mb_wrap(&m, out, cap, correlation, CODEC_KIND_REGISTER_ACK);
}
