// SPDX-License-Identifier: Apache-2.0
//
// Field iteration and UTF-8 validation for wire.h. Pure; any thread.
#include "codec/wire.h"

int wire_next(struct wire_cursor *c, struct wire_field *f)
{
    if (c->p >= c->end)
        return 0;
    uint64_t tag;
    if (wire_read_varint(c, &tag) < 0)
        return -EBADMSG;
    uint64_t number = tag >> 3;
    if (number == 0 || number > 536870911u) /* 2^29 - 1: the largest field number */
        return -EBADMSG;
    f->number = (uint32_t)number;
    f->type = (uint8_t)(tag & 7);
    f->data = NULL;
    f->len = 0;
    f->value = 0;
    switch (f->type) {
    case WIRE_VARINT:
        return wire_read_varint(c, &f->value) < 0 ? -EBADMSG : 1;
    case WIRE_I64:
        if (c->end - c->p < 8)
            return -EBADMSG;
        memcpy(&f->value, c->p, 8);
        c->p += 8;
        return 1;
    case WIRE_I32: {
        if (c->end - c->p < 4)
            return -EBADMSG;
        uint32_t v;
        memcpy(&v, c->p, 4);
        f->value = v;
        c->p += 4;
        return 1;
    }
    case WIRE_LEN: {
        uint64_t len;
        if (wire_read_varint(c, &len) < 0 || len > (uint64_t)(c->end - c->p))
            return -EBADMSG;
        f->data = c->p;
        f->len = (size_t)len;
        c->p += len;
        return 1;
    }
    default:
        return -EBADMSG;
    }
}

bool wire_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if ((b & 0xe0) == 0xc0) {
            n = 2;
            cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            n = 3;
            cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            n = 4;
            cp = b & 0x07;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
    }
    return true;
}
