// SPDX-License-Identifier: Apache-2.0
//
// Implementation of structpb.h. Pure; any thread.
#include "codec/structpb.h"

#include <errno.h>
#include <string.h>

#include "codec/wire.h"

/* Room reserved in front of the Struct body for the two headers written by structpb_finish
 * (Payload.data tag + length: at most 1 + 5 bytes). */
#define STRUCTPB_HEAD 8

int structpb_value_decode(const uint8_t *p, size_t len, struct structpb_value *v)
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(v, 0, sizeof(*v));
    wire_cursor_init(&c, p, len);
    while ((r = wire_next(&c, &f)) > 0) {
        switch (f.number) {
        case 1:
            if (f.type != WIRE_VARINT)
                return -EBADMSG;
            v->kind = STRUCTPB_NULL;
            break;
        case 2:
            if (f.type != WIRE_I64)
                return -EBADMSG;
            memcpy(&v->number, &f.value, 8);
            v->kind = STRUCTPB_NUMBER;
            break;
        case 3:
        case 5:
        case 6:
            if (f.type != WIRE_LEN)
                return -EBADMSG;
            v->kind = (enum structpb_kind)f.number;
            v->ptr = f.data;
            v->len = (uint32_t)f.len;
            break;
        case 4:
            if (f.type != WIRE_VARINT)
                return -EBADMSG;
            v->kind = STRUCTPB_BOOL;
            v->boolean = f.value != 0;
            break;
        default:
            break;
        }
    }
    return r < 0 ? -EBADMSG : 0;
}

int structpb_struct_get(const uint8_t *st, size_t len, const char *key, struct structpb_value *v)
{
    size_t kl = strlen(key);
    struct wire_cursor c;
    struct wire_field f;
    int r, found = 0;
    wire_cursor_init(&c, st, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1)
            continue;
        if (f.type != WIRE_LEN)
            return -EBADMSG;
        struct wire_cursor e;
        struct wire_field ef;
        int er;
        const uint8_t *k = NULL, *val = NULL;
        size_t k_len = 0, val_len = 0;
        wire_cursor_init(&e, f.data, f.len);
        while ((er = wire_next(&e, &ef)) > 0) {
            if (ef.type != WIRE_LEN)
                continue;
            if (ef.number == 1) {
                k = ef.data;
                k_len = ef.len;
            } else if (ef.number == 2) {
                val = ef.data;
                val_len = ef.len;
            }
        }
        if (er < 0)
            return -EBADMSG;
        if (k_len == kl && (kl == 0 || memcmp(k, key, kl) == 0)) {
            if (structpb_value_decode(val ? val : (const uint8_t *)"", val_len, v) < 0)
                return -EBADMSG;
            found = 1;
        }
    }
    return r < 0 ? -EBADMSG : found;
}

int structpb_payload_get(const uint8_t *payload, size_t len, const char *key,
                         struct structpb_value *v)
{
    struct wire_cursor c;
    struct wire_field f;
    int r, found = 0;
    wire_cursor_init(&c, payload, len);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.number != 1)
            continue;
        if (f.type != WIRE_LEN)
            return -EBADMSG;
        int g = structpb_struct_get(f.data, f.len, key, v);
        if (g < 0)
            return g;
        if (g)
            found = 1;
    }
    return r < 0 ? -EBADMSG : found;
}

void structpb_begin(struct structpb_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = STRUCTPB_HEAD;
    w->overflow = cap < STRUCTPB_HEAD;
}

/* Appends one map entry {1: key, 2: Value{vfield: ...}} whose Value body is vbody. */
static void add_entry(struct structpb_writer *w, const char *key, const uint8_t *vbody, size_t vlen)
{
    size_t kl = strlen(key);
    size_t entry = wire_len_field_len(1, kl) + wire_len_field_len(2, vlen);
    size_t need = wire_len_field_len(1, entry);
    if (w->overflow || w->len + need > w->cap) {
        w->overflow = true;
        return;
    }
    uint8_t *p = w->buf + w->len;
    p = wire_put_tag(p, 1, WIRE_LEN);
    p = wire_put_varint(p, entry);
    p = wire_put_len_field(p, 1, key, kl);
    p = wire_put_len_field(p, 2, vbody, vlen);
    w->len = (size_t)(p - w->buf);
}

void structpb_add_number(struct structpb_writer *w, const char *key, double v)
{
    uint8_t b[9];
    b[0] = (2 << 3) | WIRE_I64;
    memcpy(b + 1, &v, 8);
    add_entry(w, key, b, 9);
}

void structpb_add_string(struct structpb_writer *w, const char *key, const char *s, size_t len)
{
    size_t vlen = wire_len_field_len(3, len);
    if (w->overflow || w->len + vlen + 64 + strlen(key) > w->cap) {
        w->overflow = true;
        return;
    }
    /* Build the Value at the far end of the buffer, then copy it into place. */
    uint8_t *tmp = w->buf + w->cap - vlen;
    wire_put_len_field(tmp, 3, s, len);
    uint8_t *copy = tmp;
    if (tmp < w->buf + w->len + 64 + strlen(key) + vlen) {
        w->overflow = true;
        return;
    }
    add_entry(w, key, copy, vlen);
}

void structpb_add_bool(struct structpb_writer *w, const char *key, bool v)
{
    uint8_t b[2] = {(4 << 3) | WIRE_VARINT, v ? 1 : 0};
    add_entry(w, key, b, 2);
}

void structpb_add_raw_value(struct structpb_writer *w, const char *key, const uint8_t *value,
                            size_t len)
{
    add_entry(w, key, value, len);
}

int structpb_finish(struct structpb_writer *w, const uint8_t **out)
{
    if (w->overflow)
        return -ENOSPC;
    size_t body = w->len - STRUCTPB_HEAD;
    size_t head = wire_tag_len(1) + wire_varint_len(body);
    uint8_t *start = w->buf + STRUCTPB_HEAD - head;
    uint8_t *p = wire_put_tag(start, 1, WIRE_LEN);
    wire_put_varint(p, body);
    *out = start;
    return (int)(head + body);
}
