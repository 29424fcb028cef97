// SPDX-License-Identifier: Apache-2.0
//
// Implementation of hstruct.h. Pure; any thread, each object used by one.
#include "handlers/hstruct.h"
#include "handlers/provider.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec/wire.h"

/* Bytes reserved for a sub-message's length while it is written: a varint of up to 2^35 - 1,
 * far above any cap_max. Closing compacts to the real varint length. */
#define HS_LEN_SLOT 5

/* ---- writer ------------------------------------------------------------------------------ */

void hs_init(struct hs_writer *w, size_t cap_max)
{
    memset(w, 0, sizeof(*w));
    w->cap_max = cap_max;
}

void hs_reset(struct hs_writer *w)
{
    w->len = 0;
    w->depth = 0;
    w->failed = false;
    w->err = 0;
}

void hs_free(struct hs_writer *w)
{
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
}

static bool hs_reserve(struct hs_writer *w, size_t more)
{
    if (w->failed)
        return false;
    if (w->len + more <= w->cap)
        return true;
    if (w->len + more > w->cap_max) {
        w->failed = true;
        w->err = -E2BIG;
        return false;
    }
    size_t ncap = w->cap ? w->cap * 2 : 256;
    while (ncap < w->len + more)
        ncap *= 2;
    if (ncap > w->cap_max)
        ncap = w->cap_max;
    uint8_t *nb = realloc(w->buf, ncap);
    if (!nb) {
        w->failed = true;
        w->err = -ENOMEM;
        return false;
    }
    w->buf = nb;
    w->cap = ncap;
    return true;
}

static void hs_bytes(struct hs_writer *w, const void *p, size_t n)
{
    if (!hs_reserve(w, n))
        return;
    if (n)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void hs_tag(struct hs_writer *w, uint32_t field, enum wire_type t)
{
    uint8_t b[10];
    hs_bytes(w, b, (size_t)(wire_put_tag(b, field, t) - b));
}

static void hs_len_field(struct hs_writer *w, uint32_t field, const void *p, size_t n)
{
    if (!hs_reserve(w, wire_len_field_len(field, n)))
        return;
    w->len = (size_t)(wire_put_len_field(w->buf + w->len, field, p, n) - w->buf);
}

void hs_open(struct hs_writer *w, uint32_t field)
{
    if (w->failed)
        return;
    if (w->depth == HS_OPEN_MAX) {
        w->failed = true; /* a programming error in a payload builder; surfaces as -E2BIG */
        w->err = -E2BIG;
        return;
    }
    hs_tag(w, field, WIRE_LEN);
    if (!hs_reserve(w, HS_LEN_SLOT))
        return;
    w->open[w->depth++] = w->len;
    w->len += HS_LEN_SLOT;
}

void hs_close(struct hs_writer *w)
{
    if (w->failed || w->depth == 0)
        return;
    size_t slot = w->open[--w->depth];
    size_t body = w->len - slot - HS_LEN_SLOT;
    size_t vl = wire_varint_len(body);
    wire_put_varint(w->buf + slot, body);
    memmove(w->buf + slot + vl, w->buf + slot + HS_LEN_SLOT, body);
    w->len -= HS_LEN_SLOT - vl;
}

void hs_close_n(struct hs_writer *w, uint32_t n)
{
    while (n--)
        hs_close(w);
}

void hs_payload_begin(struct hs_writer *w)
{
    hs_open(w, 1); /* Payload.data */
}

void hs_payload_end(struct hs_writer *w)
{
    hs_close(w);
}

/* Opens entry{1: key, 2: Value{...}}: two levels. */
static void hs_key_open(struct hs_writer *w, const void *key, size_t klen)
{
    hs_open(w, 1);
    hs_len_field(w, 1, key, klen);
    hs_open(w, 2);
}

void hs_put_number(struct hs_writer *w, const char *key, double v)
{
    hs_key_open(w, key, strlen(key));
    hs_tag(w, 2, WIRE_I64);
    hs_bytes(w, &v, 8);
    hs_close_n(w, 2);
}

void hs_put_string(struct hs_writer *w, const char *key, const void *s, size_t len)
{
    hs_key_open(w, key, strlen(key));
    hs_len_field(w, 3, s, len);
    hs_close_n(w, 2);
}

void hs_put_cstring(struct hs_writer *w, const char *key, const char *s)
{
    hs_put_string(w, key, s, strlen(s));
}

void hs_put_bool(struct hs_writer *w, const char *key, bool v)
{
    uint8_t b[2] = {(4 << 3) | WIRE_VARINT, v ? 1 : 0};
    hs_key_open(w, key, strlen(key));
    hs_bytes(w, b, 2);
    hs_close_n(w, 2);
}

void hs_put_value(struct hs_writer *w, const void *key, size_t klen, const uint8_t *v, size_t vlen)
{
    hs_open(w, 1);
    hs_len_field(w, 1, key, klen);
    hs_len_field(w, 2, v, vlen);
    hs_close(w);
}

void hs_put_struct_bytes(struct hs_writer *w, const char *key, const uint8_t *st, size_t len)
{
    hs_key_open(w, key, strlen(key));
    hs_len_field(w, 5, st, len);
    hs_close_n(w, 2);
}

void hs_put_struct_open(struct hs_writer *w, const char *key)
{
    hs_key_open(w, key, strlen(key));
    hs_open(w, 5);
}

void hs_put_list_open(struct hs_writer *w, const char *key)
{
    hs_key_open(w, key, strlen(key));
    hs_open(w, 6);
}

void hs_end(struct hs_writer *w)
{
    hs_close_n(w, 3);
}

void hs_item_string(struct hs_writer *w, const void *s, size_t len)
{
    hs_open(w, 1);
    hs_len_field(w, 3, s, len);
    hs_close(w);
}

void hs_item_number(struct hs_writer *w, double v)
{
    hs_open(w, 1);
    hs_tag(w, 2, WIRE_I64);
    hs_bytes(w, &v, 8);
    hs_close(w);
}

void hs_item_struct_open(struct hs_writer *w)
{
    hs_open(w, 1);
    hs_open(w, 5);
}

void hs_item_end(struct hs_writer *w)
{
    hs_close_n(w, 2);
}

int hs_result(const struct hs_writer *w)
{
    if (w->failed)
        return w->err;
    return w->depth == 0 ? 0 : -EINVAL;
}

/* ---- readers ----------------------------------------------------------------------------- */

void hs_iter_init(struct hs_iter *it, const uint8_t *msg, size_t len)
{
    it->p = msg;
    it->end = msg + len;
}

static int hs_next_len(struct hs_iter *it, uint32_t want, const uint8_t **p, size_t *len)
{
    struct wire_cursor c = {it->p, it->end};
    struct wire_field f;
    for (;;) {
        int r = wire_next(&c, &f);
        if (r <= 0) {
            it->p = c.p;
            return r;
        }
        if (f.number != want)
            continue;
        if (f.type != WIRE_LEN)
            return -EBADMSG;
        it->p = c.p;
        *p = f.data;
        *len = f.len;
        return 1;
    }
}

int hs_struct_next(struct hs_iter *it, const uint8_t **key, uint32_t *klen, const uint8_t **val,
                   uint32_t *vlen)
{
    const uint8_t *e;
    size_t el;
    int r = hs_next_len(it, 1, &e, &el);
    if (r <= 0)
        return r;
    struct wire_cursor c;
    struct wire_field f;
    *key = (const uint8_t *)"";
    *val = (const uint8_t *)"";
    *klen = *vlen = 0;
    wire_cursor_init(&c, e, el);
    while ((r = wire_next(&c, &f)) > 0) {
        if (f.type != WIRE_LEN)
            continue;
        if (f.number == 1) {
            *key = f.data;
            *klen = (uint32_t)f.len;
        } else if (f.number == 2) {
            *val = f.data;
            *vlen = (uint32_t)f.len;
        }
    }
    return r < 0 ? -EBADMSG : 1;
}

int hs_list_next(struct hs_iter *it, const uint8_t **val, uint32_t *vlen)
{
    size_t l;
    int r = hs_next_len(it, 1, val, &l);
    if (r == 1)
        *vlen = (uint32_t)l;
    return r;
}

/* What the validator's stack frames read. */
enum hs_frame { HS_F_VALUE, HS_F_STRUCT, HS_F_ENTRY, HS_F_LIST };

/* One field of a frame: checks it, and says which frame (if any) its bytes open. */
static int hs_check_field(enum hs_frame k, const struct wire_field *f, int *push, const char **why)
{
    *push = -1;
    bool len = f->type == WIRE_LEN;
    switch (k) {
    case HS_F_VALUE:
        if ((f->number == 1 || f->number == 4) && f->type == WIRE_VARINT)
            return 0;
        if (f->number == 2 && f->type == WIRE_I64)
            return 0;
        if (f->number == 3 && len) {
            if (!wire_utf8_valid(f->data, f->len)) {
                *why = "a string is not UTF-8";
                return -EBADMSG;
            }
            return 0;
        }
        if ((f->number == 5 || f->number == 6) && len) {
            *push = f->number == 5 ? HS_F_STRUCT : HS_F_LIST;
            return 0;
        }
        *why = "not a google.protobuf.Value";
        return -EBADMSG;
    case HS_F_STRUCT:
    case HS_F_LIST:
        if (f->number == 1 && len) {
            *push = k == HS_F_STRUCT ? HS_F_ENTRY : HS_F_VALUE;
            return 0;
        }
        *why = k == HS_F_STRUCT ? "not a google.protobuf.Struct" : "not a ListValue";
        return -EBADMSG;
    case HS_F_ENTRY:
        if (f->number == 1 && len) {
            if (!wire_utf8_valid(f->data, f->len)) {
                *why = "a key is not UTF-8";
                return -EBADMSG;
            }
            return 0;
        }
        if (f->number == 2 && len) {
            *push = HS_F_VALUE;
            return 0;
        }
        *why = "not a Struct entry";
        return -EBADMSG;
    }
    return -EBADMSG;
}

static int hs_check(const uint8_t *v, size_t len, enum hs_frame first, const char **why);

int hs_value_check(const uint8_t *v, size_t len, const char **why)
{
    return hs_check(v, len, HS_F_VALUE, why);
}

int hs_struct_check(const uint8_t *st, size_t len, const char **why)
{
    return hs_check(st, len, HS_F_STRUCT, why);
}

static int hs_check(const uint8_t *v, size_t len, enum hs_frame first, const char **why)
{
    /* An explicit stack instead of recursion: client bytes decide the depth. Each level of
     * nesting takes two frames (Struct → entry → Value, ListValue → Value). */
    struct {
        struct wire_cursor c;
        enum hs_frame k;
    } st[2 * HS_DEPTH_MAX + 2];
    int top = 0;
    st[0].k = first;
    wire_cursor_init(&st[0].c, v, len);
    *why = NULL;
    while (top >= 0) {
        struct wire_field f;
        int r = wire_next(&st[top].c, &f);
        if (r < 0) {
            *why = "malformed protobuf";
            return -EBADMSG;
        }
        if (r == 0) {
            top--;
            continue;
        }
        int push;
        if (hs_check_field(st[top].k, &f, &push, why) < 0)
            return -EBADMSG;
        if (push < 0)
            continue;
        if (top + 1 >= (int)(sizeof(st) / sizeof(st[0]))) {
            *why = "nested deeper than 32 levels";
            return -EBADMSG;
        }
        top++;
        st[top].k = (enum hs_frame)push;
        wire_cursor_init(&st[top].c, f.data, f.len);
    }
    return 0;
}

/* ---- map --------------------------------------------------------------------------------- */

int hs_bytes_cmp(const void *a, uint32_t al, const void *b, uint32_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c)
        return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

uint32_t hs_bytes_search(void *const *v, uint32_t n, struct hs_key (*key_of)(const void *elem),
                         const void *key, uint32_t klen, bool *found)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        struct hs_key k = key_of(v[mid]);
        int c = hs_bytes_cmp(k.ptr, k.len, key, klen);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static struct hs_key kv_key(const void *elem)
{
    const struct hs_kv *kv = elem;
    return (struct hs_key){kv->data, kv->klen};
}

/* Index of key, or of where it would go (*found says which). */
static uint32_t map_find(const struct hs_map *m, const void *key, uint32_t klen, bool *found)
{
    return hs_bytes_search((void *const *)m->v, m->count, kv_key, key, klen, found);
}

void hs_map_free(struct hs_map *m)
{
    for (uint32_t i = 0; i < m->count; i++)
        free(m->v[i]);
    free(m->v);
    memset(m, 0, sizeof(*m));
}

const struct hs_kv *hs_map_get(const struct hs_map *m, const void *key, uint32_t klen)
{
    bool found;
    uint32_t i = map_find(m, key, klen, &found);
    return found ? m->v[i] : NULL;
}

void hs_map_write(struct hs_writer *w, const struct hs_map *m)
{
    for (uint32_t i = 0; i < m->count; i++)
        hs_put_value(w, m->v[i]->data, m->v[i]->klen, hs_kv_val(m->v[i]), m->v[i]->vlen);
}

void hs_map_write_keys(struct hs_writer *w, const struct hs_map *m)
{
    for (uint32_t i = 0; i < m->count; i++)
        hs_item_string(w, m->v[i]->data, m->v[i]->klen);
}

static int change_cmp(const void *a, const void *b)
{
    const struct hs_change *x = a, *y = b;
    int c = hs_bytes_cmp(x->key, x->klen, y->key, y->klen);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order ? 1 : 0;
}

/* Sorts the changes by key and keeps the last of each key. Returns the count kept. */
static uint32_t changes_normalize(struct hs_change *ch, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        ch[i].order = i;
    qsort(ch, n, sizeof(*ch), change_cmp);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i + 1 < n && hs_bytes_cmp(ch[i].key, ch[i].klen, ch[i + 1].key, ch[i + 1].klen) == 0)
            continue; /* a later change of the same key follows */
        ch[k++] = ch[i];
    }
    return k;
}

/* The size the map would have after the changes: keys and bytes. */
static void merge_size(const struct hs_map *m, const struct hs_change *ch, uint32_t n,
                       uint32_t *keys, long *delta)
{
    uint32_t k = m->count;
    long d = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct hs_kv *old = hs_map_get(m, ch[i].key, ch[i].klen);
        if (old) {
            d -= (long)(old->klen + old->vlen);
            if (!ch[i].val)
                k--;
        } else if (ch[i].val) {
            k++;
        }
        if (ch[i].val)
            d += (long)(ch[i].klen + ch[i].vlen);
    }
    *keys = k;
    *delta = d;
}

static int merge_check(const struct hs_map *m, const struct hs_change *ch, uint32_t n,
                       const struct hs_limits *lim, long *delta, const char **why)
{
    for (uint32_t i = 0; i < n; i++) {
        if (ch[i].klen == 0 || ch[i].klen > lim->key_bytes_max) {
            *why = ch[i].klen ? "a key is too long" : "a key is empty";
            return -E2BIG;
        }
        if (ch[i].val && ch[i].vlen > lim->value_bytes_max) {
            *why = "a value is too large";
            return -E2BIG;
        }
    }
    uint32_t keys;
    merge_size(m, ch, n, &keys, delta);
    if (keys > lim->keys_max) {
        *why = "too many keys";
        return -E2BIG;
    }
    if ((long)m->bytes + *delta > (long)lim->bytes_max) {
        *why = "the state would be too large";
        return -E2BIG;
    }
    return 0;
}

int hs_map_merge(struct hs_map *m, struct hs_change *ch, uint32_t n, const struct hs_limits *lim,
                 long *delta_bytes, const char **why)
{
    *why = NULL;
    *delta_bytes = 0;
    n = changes_normalize(ch, n);
    long delta;
    int r = merge_check(m, ch, n, lim, &delta, why);
    if (r < 0)
        return r;
    /* Everything that can fail is allocated first, so the merge itself cannot fail. */
    struct hs_kv **fresh = calloc(n ? n : 1, sizeof(*fresh));
    struct hs_kv **nv = malloc(sizeof(*nv) * ((size_t)m->count + n + 1));
    bool oom = !fresh || !nv;
    for (uint32_t i = 0; i < n && !oom; i++) {
        if (!ch[i].val)
            continue;
        fresh[i] = malloc(sizeof(struct hs_kv) + ch[i].klen + ch[i].vlen);
        if (!fresh[i]) {
            oom = true;
            break;
        }
        fresh[i]->klen = ch[i].klen;
        fresh[i]->vlen = ch[i].vlen;
        memcpy(fresh[i]->data, ch[i].key, ch[i].klen);
        memcpy(fresh[i]->data + ch[i].klen, ch[i].val, ch[i].vlen);
    }
    if (oom) {
        for (uint32_t i = 0; fresh && i < n; i++)
            free(fresh[i]);
        free(fresh);
        free(nv);
        return -ENOMEM;
    }
    /* A linear merge of two sorted sequences: the map and the changes. */
    uint32_t a = 0, b = 0, k = 0;
    while (a < m->count || b < n) {
        int c = a == m->count ? 1
                : b == n      ? -1
                              : hs_bytes_cmp(m->v[a]->data, m->v[a]->klen, ch[b].key, ch[b].klen);
        if (c < 0) {
            nv[k++] = m->v[a++];
            continue;
        }
        if (c == 0)
            free(m->v[a++]); /* replaced or deleted */
        if (fresh[b])
            nv[k++] = fresh[b];
        b++;
    }
    free(fresh);
    free(m->v);
    m->v = nv;
    m->count = k;
    m->cap = k;
    m->bytes = (size_t)((long)m->bytes + delta);
    *delta_bytes = delta;
    return 0;
}

int hs_payload_value(struct pv_request *r, const char *key, const uint8_t **val, uint32_t *vl)
{
    const uint8_t *pl = NULL, *d = NULL, *k = NULL, *v = NULL;
    uint32_t len = 0, dl = 0, kl = 0, l = 0;
    size_t want = strlen(key);
    int found = 0, rc;
    provider_payload(r, &pl, &len);
    struct hs_iter outer, it;
    hs_iter_init(&outer, pl, len);
    /* Payload.data is field 1 of Payload, read like a list item. */
    while ((rc = hs_list_next(&outer, &d, &dl)) > 0) {
        hs_iter_init(&it, d, dl);
        while ((rc = hs_struct_next(&it, &k, &kl, &v, &l)) > 0) {
            if (kl == want && memcmp(k, key, kl) == 0) {
                *val = v;
                *vl = l;
                found = 1;
            }
        }
        if (rc < 0)
            return rc;
    }
    return rc < 0 ? rc : found;
}
