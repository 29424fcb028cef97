// SPDX-License-Identifier: Apache-2.0
//
// The benchmark payload (bench.h, struct bench_payload): a valid common.Payload of an exact
// size whose data Struct carries the three 8-byte values a subscriber checks, at fixed
// offsets. Built once by the main thread before the run; read-only afterwards.
//
//   Payload { data (1): Struct {
//       fields["t"] = number_value <8 bytes: send time, ns>
//       fields["s"] = number_value <8 bytes: publisher << 40 | per-(publisher, campaign) seq>
//       fields["c" + k * 'x'] = number_value <8 bytes: campaign index>   (k sizes 50..129)
//       fields["p"] = string_value "xxxx..."                              (larger sizes)
//   }, versioning (2): {} (2 bytes, only for a size a varint step would skip) }
//
// number_value is a protobuf double (fixed64), so any 64-bit pattern is a legal value and the
// bytes can be patched in place without re-encoding anything.
//
// --payload string instead (text): Payload { data (1): Struct { fields["d"] = string_value
// "<t: 16 hex digits><s: 16><c: 16>xxxx..." } }, the three values written as lowercase hex
// digits in place (bench_pl_put), so the string stays valid UTF-8 and of a fixed length.
#include "bench/bench.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t varint_len(uint64_t v)
{
    uint32_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Bytes of a Struct map entry holding a number: key then Value{number_value}. */
static uint32_t number_entry_len(uint32_t key_len)
{
    uint32_t inner = 1 + varint_len(key_len) + key_len + 1 + 1 + 9;
    return 1 + varint_len(inner) + inner;
}

/* Bytes of a Struct map entry holding a string of n bytes under the key "p". */
static uint32_t string_entry_len(uint32_t n)
{
    uint32_t value = 1 + varint_len(n) + n;
    uint32_t inner = 3 + 1 + varint_len(value) + value;
    return 1 + varint_len(inner) + inner;
}

/* The Struct's length for these choices. */
static uint32_t struct_len(uint32_t key_len, bool pad, uint32_t n)
{
    return 2 * number_entry_len(1) + number_entry_len(key_len) + (pad ? string_entry_len(n) : 0);
}

/* Payload bytes: the data field around the Struct, plus an empty versioning field (2 bytes)
 * when `vers`, which fills the one size a varint step would otherwise skip. */
static uint32_t payload_len(uint32_t key_len, bool pad, uint32_t n, bool vers)
{
    uint32_t s = struct_len(key_len, pad, n);
    return 1 + varint_len(s) + s + (vers ? 2 : 0);
}

/* Writes a number entry and returns the offset of its 8 value bytes. */
static uint8_t *put_number_entry(uint8_t *p, const char *key, uint32_t key_len, uint8_t *base,
                                 uint32_t *value_off)
{
    uint32_t inner = 1 + varint_len(key_len) + key_len + 1 + 1 + 9;
    *p++ = 0x0a; /* Struct.fields, LEN */
    p = put_varint(p, inner);
    *p++ = 0x0a; /* key */
    p = put_varint(p, key_len);
    memcpy(p, key, key_len);
    p += key_len;
    *p++ = 0x12; /* value: Value, LEN */
    *p++ = 9;
    *p++ = 0x11; /* Value.number_value, fixed64 */
    *value_off = (uint32_t)(p - base);
    memset(p, 0, 8);
    return p + 8;
}

/* Bytes of the text payload whose string is n bytes, with the 2-byte versioning field when
 * `vers`: Payload.data { Struct.fields { key "d", value { string_value } } }. */
static uint32_t text_payload_len(uint32_t n, bool vers)
{
    uint32_t value = 1 + varint_len(n) + n;
    uint32_t entry = 3 + 1 + varint_len(value) + value;
    uint32_t st = 1 + varint_len(entry) + entry;
    return 1 + varint_len(st) + st + (vers ? 2 : 0);
}

uint32_t bench_payload_text_len(uint32_t n)
{
    return text_payload_len(n, false);
}

/* The text form (see the top of the file): exactly `bytes` bytes or -EINVAL. */
static int build_text(struct bench_payload *pl, uint32_t bytes)
{
    uint32_t n = 0;
    bool found = false, vers = false;
    for (int v = 0; v < 2 && !found; v++)
        for (n = 48; n <= bytes && !found; n++)
            if (text_payload_len(n, v) == bytes) {
                found = true;
                vers = v;
                break;
            }
    if (!found)
        return -EINVAL;
    if (!(pl->bytes = malloc(bytes)))
        return -ENOMEM;
    uint8_t *b = pl->bytes, *p = b;
    uint32_t value = 1 + varint_len(n) + n;
    uint32_t entry = 3 + 1 + varint_len(value) + value;
    *p++ = 0x0a; /* Payload.data, LEN */
    p = put_varint(p, 1 + varint_len(entry) + entry);
    *p++ = 0x0a; /* Struct.fields, LEN */
    p = put_varint(p, entry);
    *p++ = 0x0a; /* key "d" */
    *p++ = 1;
    *p++ = 'd';
    *p++ = 0x12; /* value: Value, LEN */
    p = put_varint(p, value);
    *p++ = 0x1a; /* Value.string_value */
    p = put_varint(p, n);
    pl->ts_off = (uint32_t)(p - b);
    pl->id_off = pl->ts_off + 16;
    pl->campaign_off = pl->ts_off + 32;
    memset(p, '0', 48);
    memset(p + 48, 'x', n - 48);
    p += n;
    if (vers) {
        *p++ = 0x12;
        *p++ = 0;
    }
    if ((uint32_t)(p - b) != bytes) {
        free(pl->bytes);
        pl->bytes = NULL;
        return -EINVAL;
    }
    pl->len = bytes;
    pl->text = true;
    return 0;
}

int bench_payload_build(struct bench_payload *pl, uint32_t bytes, bool text)
{
    memset(pl, 0, sizeof(*pl));
    if (text)
        return build_text(pl, bytes);
    uint32_t key_len = 0, pad_n = 0;
    bool pad = false, vers = false;
    /* Small sizes lengthen the third key; larger ones add a padding string, whose length is
     * searched around the estimate because varint lengths step at 128, 16384, ...; a size
     * that falls in such a step gets the 2-byte empty versioning field. */
    for (int v = 0; v < 2 && !key_len; v++)
        for (uint32_t k = 1; k <= 80 && !key_len; k++)
            if (payload_len(k, false, 0, v) == bytes) {
                key_len = k;
                vers = v;
            }
    for (int v = 0; v < 2 && !key_len; v++) {
        uint32_t base = payload_len(1, true, 0, v);
        if (bytes < base)
            continue;
        uint32_t guess = bytes - base;
        for (uint32_t n = guess > 8 ? guess - 8 : 0; n <= guess + 8 && !key_len; n++)
            if (payload_len(1, true, n, v) == bytes) {
                key_len = 1;
                pad = true;
                pad_n = n;
                vers = v;
            }
    }
    if (!key_len)
        return -EINVAL;
    pl->bytes = malloc(bytes);
    if (!pl->bytes)
        return -ENOMEM;
    char key[128];
    memset(key, 'x', sizeof(key));
    key[0] = 'c';
    uint8_t *b = pl->bytes, *p = b;
    uint32_t s = struct_len(key_len, pad, pad_n);
    *p++ = 0x0a; /* Payload.data, LEN */
    p = put_varint(p, s);
    p = put_number_entry(p, "t", 1, b, &pl->ts_off);
    p = put_number_entry(p, "s", 1, b, &pl->id_off);
    p = put_number_entry(p, key, key_len, b, &pl->campaign_off);
    if (pad) {
        uint32_t value = 1 + varint_len(pad_n) + pad_n;
        *p++ = 0x0a;
        p = put_varint(p, 3 + 1 + varint_len(value) + value);
        *p++ = 0x0a;
        *p++ = 1;
        *p++ = 'p';
        *p++ = 0x12;
        p = put_varint(p, value);
        *p++ = 0x1a; /* Value.string_value */
        p = put_varint(p, pad_n);
        memset(p, 'x', pad_n);
        p += pad_n;
    }
    if (vers) {
        *p++ = 0x12; /* Payload.versioning: an empty Struct */
        *p++ = 0;
    }
    if ((uint32_t)(p - b) != bytes) {
        free(pl->bytes);
        pl->bytes = NULL;
        return -EINVAL;
    }
    pl->len = bytes;
    return 0;
}

void bench_payload_free(struct bench_payload *pl)
{
    free(pl->bytes);
    pl->bytes = NULL;
}
