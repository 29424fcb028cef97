// SPDX-License-Identifier: Apache-2.0
//
// google.protobuf.Struct / Value at the wire level, for the built-in handlers (campaign.c,
// media.c): a growable writer for nested Struct, ListValue and Value trees (payloads of state,
// lists and room events), readers over a Struct's entries and a ListValue's items, a validator
// for client-supplied Values (well-formed, bounded depth, UTF-8 strings) and a bounded, sorted
// key → Value map with an all-or-nothing merge. codec/structpb.h covers the flat cases; this
// covers nesting. No protobuf-c trees: values are kept as the bytes the client sent and are
// spliced back out, so a state entry is never re-encoded.
//
// Pure data structures: no I/O, no shared state. Each map belongs to the shard that owns it.
#ifndef NEXUS_HANDLERS_HSTRUCT_H
#define NEXUS_HANDLERS_HSTRUCT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/structpb.h"

/* Nesting of Struct / ListValue inside one client Value. JSON documents met in practice nest
 * fewer than 10 levels; 32 leaves room and bounds the validator's explicit stack (no
 * recursion on client input). */
#define HS_DEPTH_MAX 32
/* Sub-messages a writer may hold open at once: payload → Struct → entry → Value → Struct →
 * list → Value → Struct ... our deepest payload opens 12. */
#define HS_OPEN_MAX 16

/* ---- writer ------------------------------------------------------------------------------ */

struct hs_writer {
    uint8_t *buf;
    size_t len, cap;
    size_t cap_max; /* refuse to grow past this: the payload would be too large to send */
    bool failed;    /* out of memory or over cap_max: every later call is a no-op */
    int err;        /* why it failed: -ENOMEM or -E2BIG */
    uint32_t depth;
    size_t open[HS_OPEN_MAX]; /* where each open field's 5-byte length slot starts */
};

/* Starts an empty writer that will never hold more than cap_max bytes. */
void hs_init(struct hs_writer *w, size_t cap_max);
void hs_free(struct hs_writer *w);
/* Empties the writer for reuse (keeps its buffer). */
void hs_reset(struct hs_writer *w);
/* Opens / closes a length-delimited field (sub-message) of the current message. */
void hs_open(struct hs_writer *w, uint32_t field);
void hs_close(struct hs_writer *w);
void hs_close_n(struct hs_writer *w, uint32_t n);

/* Payload framing: begin opens common.Payload.data (a Struct); end closes it. */
void hs_payload_begin(struct hs_writer *w);
void hs_payload_end(struct hs_writer *w);

/* Entries of the Struct being written. */
void hs_put_number(struct hs_writer *w, const char *key, double v);
void hs_put_string(struct hs_writer *w, const char *key, const void *s, size_t len);
void hs_put_cstring(struct hs_writer *w, const char *key, const char *s);
void hs_put_bool(struct hs_writer *w, const char *key, bool v);
/* A raw google.protobuf.Value (bytes as received), under a key of klen bytes. */
void hs_put_value(struct hs_writer *w, const void *key, size_t klen, const uint8_t *v, size_t vlen);
/* A raw Struct message as the value of key (struct_value). */
void hs_put_struct_bytes(struct hs_writer *w, const char *key, const uint8_t *st, size_t len);
/* Opens key → Struct / ListValue; close with hs_end (which closes the three levels opened). */
void hs_put_struct_open(struct hs_writer *w, const char *key);
void hs_put_list_open(struct hs_writer *w, const char *key);
void hs_end(struct hs_writer *w);

/* Items of the ListValue being written. */
void hs_item_string(struct hs_writer *w, const void *s, size_t len);
void hs_item_number(struct hs_writer *w, double v);
/* Opens an item that is a Struct; close with hs_item_end (two levels). */
void hs_item_struct_open(struct hs_writer *w);
void hs_item_end(struct hs_writer *w);

/* Returns 0 when the bytes are complete (every open field closed), -ENOMEM or -E2BIG. */
int hs_result(const struct hs_writer *w);

/* ---- readers ----------------------------------------------------------------------------- */

struct hs_iter {
    const uint8_t *p, *end;
};

/* Iterates a Struct message's entries (or a ListValue's items with hs_list_next). */
void hs_iter_init(struct hs_iter *it, const uint8_t *msg, size_t len);
/* Returns 1 with the entry's key and raw Value bytes, 0 at the end, -EBADMSG. */
int hs_struct_next(struct hs_iter *it, const uint8_t **key, uint32_t *klen, const uint8_t **val,
                   uint32_t *vlen);
/* Returns 1 with the item's raw Value bytes, 0 at the end, -EBADMSG. */
int hs_list_next(struct hs_iter *it, const uint8_t **val, uint32_t *vlen);
/* Checks a client Value: well-formed wire format, only Value / Struct / ListValue fields, at
 * most HS_DEPTH_MAX levels, UTF-8 strings and keys. Returns 0, or -EBADMSG with a reason. */
int hs_value_check(const uint8_t *v, size_t len, const char **why);
/* The same for a Struct message. */
int hs_struct_check(const uint8_t *st, size_t len, const char **why);

/* ---- bounded sorted map: key → Value bytes ------------------------------------------------ */

struct hs_kv {
    uint32_t klen, vlen;
    uint8_t data[]; /* key, then value */
};

/* Orders byte strings: memcmp over the common length, then the shorter first (the order of the
 * hs_map keys, and of anything else kept sorted by a byte-string key). */
int hs_bytes_cmp(const void *a, uint32_t al, const void *b, uint32_t bl);

/* A byte-string key, as hs_bytes_search reads it out of an element. */
struct hs_key {
    const void *ptr;
    uint32_t len;
};

/* Binary search of key in the n pointers v, sorted by hs_bytes_cmp of key_of(v[i]). Returns
 * the index of the element with that key (*found = true), or the index where it would be
 * inserted to keep the order (*found = false). */
uint32_t hs_bytes_search(void *const *v, uint32_t n, struct hs_key (*key_of)(const void *elem),
                         const void *key, uint32_t klen, bool *found);

struct hs_map {
    struct hs_kv **v; /* sorted by key (bytewise, shorter first on a tie) */
    uint32_t count, cap;
    size_t bytes; /* sum of klen + vlen: what the bounds are charged with */
};

static inline const uint8_t *hs_kv_val(const struct hs_kv *kv)
{
    return kv->data + kv->klen;
}

void hs_map_free(struct hs_map *m);
/* The entry for key, or NULL. */
const struct hs_kv *hs_map_get(const struct hs_map *m, const void *key, uint32_t klen);
/* Writes every entry into the Struct being written (as key → Value). */
void hs_map_write(struct hs_writer *w, const struct hs_map *m);
/* Writes the keys as a list of strings into the ListValue being written. */
void hs_map_write_keys(struct hs_writer *w, const struct hs_map *m);

/* One change of a merge: set key to the Value bytes, or delete it (val == NULL). */
struct hs_change {
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    uint32_t order;
};

/* Bounds a merge must keep. */
struct hs_limits {
    uint32_t keys_max;
    uint32_t key_bytes_max;
    uint32_t value_bytes_max;
    size_t bytes_max;
};

/* Applies changes (in order: a later change of the same key wins) to m, all or nothing.
 * Returns 0; -E2BIG if the result would break a bound (m unchanged, *why says which);
 * -ENOMEM (m unchanged). *delta_bytes gets the change of m->bytes. The change array is
 * reordered. */
int hs_map_merge(struct hs_map *m, struct hs_change *ch, uint32_t n, const struct hs_limits *lim,
                 long *delta_bytes, const char **why);

struct pv_request;
/* The raw google.protobuf.Value bytes of field `key` of a request's payload data (the last
 * occurrence wins, as for protobuf maps). Returns 1 with *val and *vl set, 0 if absent, -EBADMSG.
 */
int hs_payload_value(struct pv_request *r, const char *key, const uint8_t **val, uint32_t *vl);

#endif
