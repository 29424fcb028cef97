// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/struct_fuzz.c: libFuzzer target for the google.protobuf.Struct checks and readers:
// the validator codec_emit_decode runs on every emit's payload and metadata (Struct, ListValue
// and Value all the way down: wire types, UTF-8, the nesting bound), and codec/structpb.h (the
// reader structpb_payload_get / structpb_struct_get / structpb_value_decode and the writer).
//
// The input is a common.Payload body (the seed corpus holds protoc-encoded Payloads with nested
// structs and lists). The validator is reached through its public entry point, an EventRequest
// decode, with the input spliced in five ways: as the payload, as the metadata, as the data
// Struct of a payload, as a Value inside it and as a ListValue inside that. Each verdict is
// compared with a reference validator written independently here from the rules the comment
// above pb_struct_check states (its own varint reader and UTF-8 decoder included).
//
// Invariants: the validator agrees with the reference; the reader returns 0/1 or -EBADMSG, never
// fails on a payload the validator accepts, agrees with a reference lookup (the last entry wins)
// and returns slices inside its input; the writer never writes past its buffer, its output is
// the same bytes whatever capacity lets it finish, passes the validator when every value it was
// given does, and reads back (structpb_payload_get) to the values written. Single threaded.
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/structpb.h"
#include "codec/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant broken: report it and trap, so libFuzzer keeps the input. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

/* The nesting bound the codec documents: at most 60 levels of Struct / ListValue / Value, the
 * data Struct of a payload (or a Struct of metadata) being level 1. */
#define REF_NEST_MAX 60

/* ---- reference reader: protobuf wire format, written apart from codec/wire.h ---------------- */

struct ref_cur {
    const uint8_t *p, *end;
};

struct ref_field {
    uint32_t num;
    unsigned type;
    uint64_t val;
    const uint8_t *data;
    size_t len;
};

/* A varint of at most 10 bytes (bits past 64 dropped, as the codec does). */
static bool ref_varint(struct ref_cur *c, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (c->p == c->end)
            return false;
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* 1 with *f filled, 0 at the end, -1 if malformed (field 0, numbers past 2^29-1, groups, wire
 * types 6 and 7, truncation). */
static int ref_next(struct ref_cur *c, struct ref_field *f)
{
    if (c->p == c->end)
        return 0;
    uint64_t tag;
    if (!ref_varint(c, &tag))
        return -1;
    if ((tag >> 3) == 0 || (tag >> 3) >= (1u << 29))
        return -1;
    f->num = (uint32_t)(tag >> 3);
    f->type = (unsigned)(tag & 7);
    f->val = 0;
    f->data = NULL;
    f->len = 0;
    size_t left = (size_t)(c->end - c->p);
    switch (f->type) {
    case 0:
        return ref_varint(c, &f->val) ? 1 : -1;
    case 1:
    case 5: {
        size_t n = f->type == 1 ? 8 : 4;
        if (left < n)
            return -1;
        for (size_t i = 0; i < n; i++)
            f->val |= (uint64_t)c->p[i] << (8 * i);
        c->p += n;
        return 1;
    }
    case 2: {
        uint64_t l;
        if (!ref_varint(c, &l) || l > (uint64_t)(c->end - c->p))
            return -1;
        f->data = c->p;
        f->len = (size_t)l;
        c->p += l;
        return 1;
    }
    default:
        return -1;
    }
}

/* UTF-8 by decoding code points: shortest form, no surrogates, at most U+10FFFF. */
static bool ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t b = s[i], cp, min;
        size_t more;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xc0 && b < 0xe0) {
            more = 1, cp = b & 0x1f, min = 0x80;
        } else if (b >= 0xe0 && b < 0xf0) {
            more = 2, cp = b & 0x0f, min = 0x800;
        } else if (b >= 0xf0 && b < 0xf8) {
            more = 3, cp = b & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= more)
            return false;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] >> 6) != 2)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            return false;
        i += more + 1;
    }
    return true;
}

/* ---- reference validator --------------------------------------------------------------------- */

static bool ref_struct(const uint8_t *p, size_t n, unsigned depth);
static bool ref_list(const uint8_t *p, size_t n, unsigned depth);

/* google.protobuf.Value: null 1 (varint), number 2 (i64), string 3, bool 4 (varint), struct 5,
 * list 6; unknown fields are skipped. */
static bool ref_value(const uint8_t *p, size_t n, unsigned depth)
{
    if (depth > REF_NEST_MAX)
        return false;
    struct ref_cur c = {p, p + n};
    struct ref_field f;
    int r;
    while ((r = ref_next(&c, &f)) > 0) {
        if ((f.num == 1 || f.num == 4) && f.type != 0)
            return false;
        if (f.num == 2 && f.type != 1)
            return false;
        if (f.num >= 3 && f.num != 4 && f.num <= 6 && f.type != 2)
            return false;
        if (f.num == 3 && !ref_utf8(f.data, f.len))
            return false;
        if (f.num == 5 && !ref_struct(f.data, f.len, depth + 1))
            return false;
        if (f.num == 6 && !ref_list(f.data, f.len, depth + 1))
            return false;
    }
    return r == 0;
}

/* google.protobuf.ListValue: repeated Value values = 1. */
static bool ref_list(const uint8_t *p, size_t n, unsigned depth)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f;
    int r;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num != 1)
            continue;
        if (f.type != 2 || !ref_value(f.data, f.len, depth + 1))
            return false;
    }
    return r == 0;
}

/* google.protobuf.Struct: map entries {1: string key, 2: Value} in field 1. */
static bool ref_struct(const uint8_t *p, size_t n, unsigned depth)
{
    if (depth > REF_NEST_MAX)
        return false;
    struct ref_cur c = {p, p + n};
    struct ref_field f, e;
    int r, er;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num != 1)
            continue;
        if (f.type != 2)
            return false;
        struct ref_cur ec = {f.data, f.data + f.len};
        while ((er = ref_next(&ec, &e)) > 0) {
            if (e.num != 1 && e.num != 2)
                continue;
            if (e.type != 2)
                return false;
            if (e.num == 1 && !ref_utf8(e.data, e.len))
                return false;
            if (e.num == 2 && !ref_value(e.data, e.len, depth + 1))
                return false;
        }
        if (er < 0)
            return false;
    }
    return r == 0;
}

/* common.Payload: data 1 and versioning 2, Structs. */
static bool ref_payload(const uint8_t *p, size_t n)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f;
    int r;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num != 1 && f.num != 2)
            continue;
        if (f.type != 2 || !ref_struct(f.data, f.len, 1))
            return false;
    }
    return r == 0;
}

/* common.Metadata: Structs 1, 3, 4, 6, 7; repeated strings 2, 5; GlobalContext 21 whose six
 * fields are strings. */
static bool ref_metadata(const uint8_t *p, size_t n)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f, g;
    int r, gr;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num == 21) {
            if (f.type != 2)
                return false;
            struct ref_cur gc = {f.data, f.data + f.len};
            while ((gr = ref_next(&gc, &g)) > 0)
                if (g.num <= 6 && (g.type != 2 || !ref_utf8(g.data, g.len)))
                    return false;
            if (gr < 0)
                return false;
            continue;
        }
        if (f.num > 7)
            continue;
        if (f.type != 2)
            return false;
        if ((f.num == 2 || f.num == 5) ? !ref_utf8(f.data, f.len) : !ref_struct(f.data, f.len, 1))
            return false;
    }
    return r == 0;
}

/* ---- building wrappers ----------------------------------------------------------------------- */

/* A growable byte buffer for building messages around the input. */
struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void buf_put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = (b->n + n) * 2 + 16;
        uint8_t *np = realloc(b->p, cap);
        CHECK(np != NULL);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void buf_varint(struct buf *b, uint64_t v)
{
    uint8_t t[10];
    size_t n = 0;
    do {
        t[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v);
    buf_put(b, t, n);
}

static void buf_len_field(struct buf *b, uint32_t num, const uint8_t *d, size_t n)
{
    buf_varint(b, (uint64_t)num << 3 | 2);
    buf_varint(b, n);
    buf_put(b, d, n);
}

/* Returns a malloc'ed message holding field num = d (exactly sized, so ASan sees overreads). */
static uint8_t *wrap(uint32_t num, const uint8_t *d, size_t n, size_t *out_len)
{
    struct buf b = {0};
    buf_len_field(&b, num, d, n);
    uint8_t *exact = malloc(b.n);
    CHECK(exact != NULL);
    memcpy(exact, b.p, b.n);
    *out_len = b.n;
    free(b.p);
    return exact;
}

/* Runs codec_emit_decode on an EventRequest whose field (4 metadata, 6 payload) is msg. Returns
 * whether it accepted; checks the return code and error text either way. */
static bool emit_accepts(uint32_t field, const uint8_t *msg, size_t n)
{
    size_t blen;
    uint8_t *body = wrap(field, msg, n, &blen);
    struct codec_emit e;
    char err[CODEC_ERR_BYTES];
    err[0] = '\0';
    int r = codec_emit_decode(body, blen, &e, err);
    CHECK(r == 0 || r == -EBADMSG);
    if (r == 0) {
        struct codec_slice s = field == 4 ? e.metadata : e.payload;
        CHECK(field == 4 ? e.has_metadata : e.has_payload);
        CHECK(s.len == n && (n == 0 || s.ptr == body + blen - n));
    } else {
        size_t el = strnlen(err, sizeof(err));
        CHECK(el > 0 && el < sizeof(err) && wire_utf8_valid((const uint8_t *)err, el));
    }
    free(body);
    return r == 0;
}

/* ---- the validator, five ways ---------------------------------------------------------------- */

static bool check_validator(const uint8_t *in, size_t n)
{
    bool payload_ok = emit_accepts(6, in, n);
    CHECK(payload_ok == ref_payload(in, n));
    CHECK(emit_accepts(4, in, n) == ref_metadata(in, n));

    /* in as the data Struct: Payload{1: in}, at level 1. */
    size_t pl;
    uint8_t *p = wrap(1, in, n, &pl);
    CHECK(emit_accepts(6, p, pl) == ref_struct(in, n, 1));
    free(p);

    /* in as a Value: Payload{1: Struct{1: {1: "k", 2: in}}}, at level 2. */
    struct buf entry = {0};
    buf_len_field(&entry, 1, (const uint8_t *)"k", 1);
    buf_len_field(&entry, 2, in, n);
    struct buf st = {0};
    buf_len_field(&st, 1, entry.p, entry.n);
    p = wrap(1, st.p, st.n, &pl);
    bool value_ok = ref_value(in, n, 2);
    CHECK(emit_accepts(6, p, pl) == value_ok);
    free(p);

    /* in as a ListValue: that Value replaced with Value{6: in}, the list at level 3. */
    struct buf lv = {0}, entry2 = {0}, st2 = {0};
    buf_len_field(&lv, 6, in, n);
    buf_len_field(&entry2, 1, (const uint8_t *)"k", 1);
    buf_len_field(&entry2, 2, lv.p, lv.n);
    buf_len_field(&st2, 1, entry2.p, entry2.n);
    p = wrap(1, st2.p, st2.n, &pl);
    CHECK(emit_accepts(6, p, pl) == ref_list(in, n, 3));
    free(p);
    free(entry.p);
    free(st.p);
    free(lv.p);
    free(entry2.p);
    free(st2.p);

    /* UTF-8 on the raw bytes: the codec's validator against the reference. */
    CHECK(wire_utf8_valid(in, n) == ref_utf8(in, n));
    return payload_ok;
}

/* ---- the reader ------------------------------------------------------------------------------ */

static bool inside(const uint8_t *ptr, size_t len, const uint8_t *buf, size_t n)
{
    return len == 0 || (ptr >= buf && ptr + len <= buf + n);
}

/* Reference structpb_value_decode: 0 or -1, the last known field deciding the kind. */
static int ref_value_decode(const uint8_t *p, size_t n, struct structpb_value *v)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f;
    int r;
    memset(v, 0, sizeof(*v));
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num == 1 || f.num == 4) {
            if (f.type != 0)
                return -1;
            v->kind = f.num == 1 ? STRUCTPB_NULL : STRUCTPB_BOOL;
            if (f.num == 4)
                v->boolean = f.val != 0;
        } else if (f.num == 2) {
            if (f.type != 1)
                return -1;
            v->kind = STRUCTPB_NUMBER;
            memcpy(&v->number, &f.val, 8);
        } else if (f.num == 3 || f.num == 5 || f.num == 6) {
            if (f.type != 2)
                return -1;
            v->kind = (enum structpb_kind)f.num;
            v->ptr = f.data;
            v->len = (uint32_t)f.len;
        }
    }
    return r < 0 ? -1 : 0;
}

/* The decoded values agree on what their kind defines. */
static bool value_eq(const struct structpb_value *a, const struct structpb_value *b)
{
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case STRUCTPB_NUMBER:
        return memcmp(&a->number, &b->number, 8) == 0;
    case STRUCTPB_BOOL:
        return a->boolean == b->boolean;
    case STRUCTPB_STRING:
    case STRUCTPB_STRUCT:
    case STRUCTPB_LIST:
        return a->len == b->len && (a->len == 0 || memcmp(a->ptr, b->ptr, a->len) == 0);
    default:
        return true;
    }
}

/* Reference structpb_struct_get: 1 found (*v from the last matching entry), 0, or -1 if the
 * Struct is malformed or a matching entry's Value is. Entry fields of other wire types are
 * skipped, as the reader does. */
static int ref_struct_get(const uint8_t *st, size_t n, const char *key, struct structpb_value *v)
{
    size_t kl = strlen(key);
    struct ref_cur c = {st, st + n};
    struct ref_field f, e;
    int r, er, found = 0;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num != 1)
            continue;
        if (f.type != 2)
            return -1;
        struct ref_cur ec = {f.data, f.data + f.len};
        const uint8_t *k = NULL, *val = (const uint8_t *)"";
        size_t k_len = 0, val_len = 0;
        while ((er = ref_next(&ec, &e)) > 0) {
            if (e.type == 2 && e.num == 1)
                k = e.data, k_len = e.len;
            else if (e.type == 2 && e.num == 2)
                val = e.data, val_len = e.len;
        }
        if (er < 0)
            return -1;
        if (k_len != kl || (kl && memcmp(k, key, kl) != 0))
            continue;
        if (ref_value_decode(val, val_len, v) < 0)
            return -1;
        found = 1;
    }
    return r < 0 ? -1 : found;
}

static int ref_payload_get(const uint8_t *p, size_t n, const char *key, struct structpb_value *v)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f;
    int r, found = 0;
    while ((r = ref_next(&c, &f)) > 0) {
        if (f.num != 1)
            continue;
        if (f.type != 2)
            return -1;
        int g = ref_struct_get(f.data, f.len, key, v);
        if (g < 0)
            return -1;
        found |= g;
    }
    return r < 0 ? -1 : found;
}

#define KEYS_MAX     8
#define KEY_BYTES    64
#define ENTRIES_MAX  16
#define EXPLORE_KEYS 2

/* Top-level entries of the data Structs of a payload (as far as they parse). */
struct entry {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *val; /* the Value bytes; NULL if the entry has none */
    size_t val_len;
};

static size_t collect_entries(const uint8_t *p, size_t n, struct entry *out, size_t max)
{
    struct ref_cur c = {p, p + n};
    struct ref_field f, s, e;
    size_t count = 0;
    while (count < max && ref_next(&c, &f) > 0) {
        if (f.num != 1 || f.type != 2)
            continue;
        struct ref_cur sc = {f.data, f.data + f.len};
        while (count < max && ref_next(&sc, &s) > 0) {
            if (s.num != 1 || s.type != 2)
                continue;
            struct entry en = {(const uint8_t *)"", 0, NULL, 0};
            struct ref_cur ec = {s.data, s.data + s.len};
            while (ref_next(&ec, &e) > 0) {
                if (e.type == 2 && e.num == 1)
                    en.key = e.data, en.key_len = e.len;
                else if (e.type == 2 && e.num == 2)
                    en.val = e.data, en.val_len = e.len;
            }
            out[count++] = en;
        }
    }
    return count;
}

/* A key usable as a C string: no NUL, short. */
static bool key_of(const struct entry *en, char key[KEY_BYTES + 1])
{
    if (en->key_len > KEY_BYTES || memchr(en->key, 0, en->key_len))
        return false;
    memcpy(key, en->key, en->key_len);
    key[en->key_len] = '\0';
    return true;
}

/* Walks a value found by the reader further with the reader's own calls: a nested Struct by the
 * same keys, a list element by element. On a payload the validator accepted nothing fails. */
static void explore(const struct structpb_value *v, const uint8_t *in, size_t n, bool valid,
                    const char keys[][KEY_BYTES + 1], size_t nkeys, unsigned depth)
{
    CHECK(inside(v->ptr, v->len, in, n));
    if (depth > REF_NEST_MAX + 2)
        return;
    if (v->kind == STRUCTPB_STRING && valid)
        CHECK(wire_utf8_valid(v->ptr, v->len));
    if (v->kind == STRUCTPB_STRUCT) {
        for (size_t i = 0; i < nkeys && i < EXPLORE_KEYS; i++) {
            struct structpb_value w, rw;
            int g = structpb_struct_get(v->ptr, v->len, keys[i], &w);
            CHECK(g == 0 || g == 1 || g == -EBADMSG);
            int rg = ref_struct_get(v->ptr, v->len, keys[i], &rw);
            CHECK(g == (rg < 0 ? -EBADMSG : rg));
            CHECK(!valid || g >= 0);
            if (g == 1) {
                CHECK(value_eq(&w, &rw));
                explore(&w, in, n, valid, keys, nkeys, depth + 1);
            }
        }
    } else if (v->kind == STRUCTPB_LIST) {
        struct ref_cur c = {v->ptr, v->ptr + v->len};
        struct ref_field f;
        while (ref_next(&c, &f) > 0) {
            if (f.num != 1 || f.type != 2)
                continue;
            struct structpb_value w;
            int r = structpb_value_decode(f.data, f.len, &w);
            CHECK(r == 0 || r == -EBADMSG);
            CHECK(!valid || r == 0);
            if (r == 0)
                explore(&w, in, n, valid, keys, nkeys, depth + 1);
        }
    }
}

static void check_reader(const uint8_t *in, size_t n, bool valid)
{
    /* The input as one Value. */
    struct structpb_value v, rv;
    int r = structpb_value_decode(in, n, &v);
    CHECK(r == 0 || r == -EBADMSG);
    CHECK((r == 0) == (ref_value_decode(in, n, &rv) == 0));
    if (r == 0) {
        CHECK(value_eq(&v, &rv) && inside(v.ptr, v.len, in, n));
        CHECK(v.kind <= STRUCTPB_LIST);
    }

    /* The input as a Payload, looked up by the keys it holds and a few fixed ones. */
    struct entry ents[ENTRIES_MAX];
    size_t ne = collect_entries(in, n, ents, ENTRIES_MAX);
    char keys[KEYS_MAX][KEY_BYTES + 1];
    size_t nk = 0;
    strcpy(keys[nk++], "heartbeat_ms");
    strcpy(keys[nk++], "");
    for (size_t i = 0; i < ne && nk < KEYS_MAX; i++)
        if (key_of(&ents[i], keys[nk]))
            nk++;
    for (size_t i = 0; i < nk; i++) {
        int g = structpb_payload_get(in, n, keys[i], &v);
        CHECK(g == 0 || g == 1 || g == -EBADMSG);
        int rg = ref_payload_get(in, n, keys[i], &rv);
        CHECK(g == (rg < 0 ? -EBADMSG : rg));
        CHECK(!valid || g >= 0);
        if (g == 1) {
            CHECK(value_eq(&v, &rv));
            explore(&v, in, n, valid, (const char(*)[KEY_BYTES + 1]) keys, nk, 0);
        }
    }
}

/* ---- the writer ------------------------------------------------------------------------------ */

/* Writes the entries (with usable keys) through the writer into a buffer of exactly cap bytes.
 * Returns the Payload length (copied to out) or -ENOSPC. */
static int write_entries(const struct entry *ents, size_t ne, size_t cap, uint8_t *out)
{
    uint8_t *buf = malloc(cap ? cap : 1);
    CHECK(buf != NULL);
    struct structpb_writer w;
    structpb_begin(&w, buf, cap);
    for (size_t i = 0; i < ne; i++) {
        char key[KEY_BYTES + 1];
        if (!key_of(&ents[i], key))
            continue;
        struct structpb_value v;
        int r = structpb_value_decode(ents[i].val ? ents[i].val : (const uint8_t *)"",
                                      ents[i].val_len, &v);
        if (r == 0 && v.kind == STRUCTPB_NUMBER)
            structpb_add_number(&w, key, v.number);
        else if (r == 0 && v.kind == STRUCTPB_STRING)
            structpb_add_string(&w, key, (const char *)v.ptr, v.len);
        else if (r == 0 && v.kind == STRUCTPB_BOOL)
            structpb_add_bool(&w, key, v.boolean);
        else
            structpb_add_raw_value(&w, key, ents[i].val, ents[i].val_len);
        CHECK(w.overflow || w.len <= w.cap);
    }
    const uint8_t *res = NULL;
    int n = structpb_finish(&w, &res);
    CHECK(n > 0 || n == -ENOSPC);
    if (n > 0) {
        CHECK(res >= buf && res + n <= buf + cap);
        memcpy(out, res, (size_t)n);
    }
    free(buf);
    return n;
}

static void check_writer(const uint8_t *in, size_t n, uint8_t cap_byte)
{
    struct entry ents[ENTRIES_MAX];
    size_t ne = collect_entries(in, n, ents, ENTRIES_MAX);
    /* Room for every entry with the writer's slack for strings. */
    size_t big = 64;
    bool all_valid = true;
    for (size_t i = 0; i < ne; i++) {
        big += 2 * (ents[i].key_len + ents[i].val_len) + 128;
        char key[KEY_BYTES + 1];
        if (key_of(&ents[i], key))
            all_valid &=
                ref_utf8(ents[i].key, ents[i].key_len) &&
                ref_value(ents[i].val ? ents[i].val : (const uint8_t *)"", ents[i].val_len, 2);
    }
    uint8_t *full = malloc(big);
    uint8_t *part = malloc(big);
    CHECK(full != NULL && part != NULL);
    int fl = write_entries(ents, ne, big, full);
    CHECK(fl > 0);

    /* Any capacity either fails cleanly or yields the same bytes. */
    size_t cap = (size_t)cap_byte * (size_t)fl / 200;
    int pl = write_entries(ents, ne, cap, part);
    CHECK(pl == -ENOSPC || (pl == fl && memcmp(part, full, (size_t)fl) == 0));

    bool ok = emit_accepts(6, full, (size_t)fl);
    CHECK(ok == ref_payload(full, (size_t)fl));
    CHECK(!all_valid || ok);

    /* Each key reads back as the value of the last entry written under it; a Value that does
     * not decode, in any entry under the key, fails the lookup. */
    for (size_t i = 0; i < ne; i++) {
        char key[KEY_BYTES + 1];
        if (!key_of(&ents[i], key))
            continue;
        struct structpb_value want, got;
        bool bad = false;
        for (size_t j = 0; j < ne; j++) {
            char kj[KEY_BYTES + 1];
            if (!key_of(&ents[j], kj) || strcmp(kj, key) != 0)
                continue;
            if (ref_value_decode(ents[j].val ? ents[j].val : (const uint8_t *)"", ents[j].val_len,
                                 &want) < 0)
                bad = true;
        }
        int g = structpb_payload_get(full, (size_t)fl, key, &got);
        if (bad) {
            CHECK(g == -EBADMSG);
            continue;
        }
        CHECK(g == 1 && value_eq(&got, &want));
        CHECK(inside(got.ptr, got.len, full, (size_t)fl));
    }
    free(full);
    free(part);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so that a read past the end is caught. */
    uint8_t *in = malloc(size ? size : 1);
    CHECK(in != NULL);
    if (size)
        memcpy(in, data, size);
    bool valid = check_validator(in, size);
    check_reader(in, size, valid);
    check_writer(in, size, size ? data[size - 1] : 0);
    free(in);
    return 0;
}
