// SPDX-License-Identifier: Apache-2.0
//
// Helpers shared by the built-in handler tests (campaign_handlers_test.c, media_test.c):
// received events copied out of the client's buffer (payload included, on the heap), waiting
// for the events of one request (by correlation id), sending a request and waiting for its
// terminal event, building payloads with the handlers' own Struct writer and reading fields
// back, and summing broker stats. Include after <cmocka.h>; header-only.
#ifndef NEXUS_TESTS_HANDLERS_UTIL_H
#define NEXUS_TESTS_HANDLERS_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/evtype.h"
#include "codec/stats.h"
#include "codec/structpb.h"
#include "handlers/hstruct.h"
#include "harness.h"

/* The longest any expected frame may take to arrive (ms); generous for ASan. */
#define HT 5000

/* One received event (or error / ack), copied. */
struct hev {
    uint32_t kind;
    uint64_t corr;
    char type[EVTYPE_BYTES_MAX + 1];
    char id[300];
    char cid[300];
    char code[300];
    char msg[300];
    uint64_t seq, sseq;
    int64_t campaign;
    uint8_t *pl;
    uint32_t pl_len;
};

static inline void hev_str(char *dst, size_t cap, struct codec_slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n)
        memcpy(dst, s.ptr, n);
    dst[n] = 0;
}

static inline void hev_clear(struct hev *e)
{
    free(e->pl);
    memset(e, 0, sizeof(*e));
}

static inline void hev_fill(struct hev *e, const struct nexus_frame *f)
{
    free(e->pl);
    memset(e, 0, sizeof(*e));
    e->kind = f->kind;
    e->corr = f->correlation;
    if (f->kind == CODEC_KIND_EVENT || f->kind == CODEC_KIND_EMIT_ACK) {
        const struct codec_event_in *ev = &f->u.event;
        hev_str(e->type, sizeof(e->type), ev->event_type);
        hev_str(e->id, sizeof(e->id), ev->event_id);
        hev_str(e->cid, sizeof(e->cid), ev->correlation_id);
        hev_str(e->code, sizeof(e->code), ev->code);
        hev_str(e->msg, sizeof(e->msg), ev->message);
        e->seq = ev->sequence;
        e->sseq = ev->stream_seq;
        e->campaign = ev->campaign_id;
        e->pl_len = ev->payload.len;
        e->pl = malloc(e->pl_len + 1);
        if (e->pl_len)
            memcpy(e->pl, ev->payload.ptr, e->pl_len);
    } else if (f->kind == CODEC_KIND_ERROR) {
        hev_str(e->code, sizeof(e->code), f->u.error.code);
        hev_str(e->msg, sizeof(e->msg), f->u.error.message);
    }
}

/* True if the event's type ends with ":<state>". */
static inline bool hev_state(const struct hev *e, const char *state)
{
    size_t tl = strlen(e->type), sl = strlen(state);
    return tl > sl && e->type[tl - sl - 1] == ':' && strcmp(e->type + tl - sl, state) == 0;
}

static inline bool hev_terminal(const struct hev *e)
{
    return hev_state(e, "success") || hev_state(e, "failed") || hev_state(e, "cancelled") ||
           hev_state(e, "timeout");
}

/* The next event whose correlation_id is cid (others are dropped). Returns 1, or 0 on timeout
 * or a closed connection. */
static inline int h_next_for(struct nexus_client *c, const char *cid, struct hev *e, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0)
            return 0;
        struct nexus_frame f;
        int r = nexus_recv(c, &f, (int)left);
        if (r <= 0)
            return 0;
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        hev_fill(e, &f);
        if (strcmp(e->cid, cid) == 0)
            return 1;
    }
}

/* Emits type on campaign with event id `id` and payload, then waits for the request's
 * terminal event (into *e). Returns 1, 0 on timeout, -1 if the emit was refused. */
static inline int h_request(struct nexus_client *c, const char *type, int64_t campaign,
                            const char *id, const uint8_t *pl, size_t len, struct hev *e)
{
    struct codec_emit_in in;
    nexus_emit_init(&in, type, campaign, id, pl, len);
    struct nexus_frame f;
    if (nexus_emit_sync(c, &in, &f, HT) != 1)
        return -1;
    for (;;) {
        if (h_next_for(c, id, e, HT) != 1)
            return 0;
        if (hev_terminal(e))
            return 1;
    }
}

/* Payload building: begin, fields through the hs_* writer, end. */
static inline void hp_begin(struct hs_writer *w)
{
    hs_init(w, 8 << 20);
    hs_payload_begin(w);
}

static inline void hp_end(struct hs_writer *w)
{
    hs_payload_end(w);
    if (hs_result(w) != 0) {
        fprintf(stderr, "payload builder failed\n");
        abort();
    }
}

/* A field of an event's payload data. */
static inline int hp_get(const struct hev *e, const char *key, struct structpb_value *v)
{
    return structpb_payload_get(e->pl, e->pl_len, key, v);
}

static inline double hp_num(const struct hev *e, const char *key)
{
    struct structpb_value v;
    if (hp_get(e, key, &v) != 1 || v.kind != STRUCTPB_NUMBER)
        return -1;
    return v.number;
}

/* A string field copied into out ("" if absent or not a string). */
static inline const char *hp_str(const struct hev *e, const char *key, char *out, size_t cap)
{
    struct structpb_value v;
    out[0] = 0;
    if (hp_get(e, key, &v) == 1 && v.kind == STRUCTPB_STRING) {
        size_t n = v.len < cap - 1 ? v.len : cap - 1;
        memcpy(out, v.ptr, n);
        out[n] = 0;
    }
    return out;
}

/* Sums one stats field over every shard (an offset into struct codec_shard_stats). */
static inline int64_t h_stat_sum(struct nexus_client *c, size_t field_off)
{
    struct codec_shard_stats st[64];
    int n = h_stats(c, st, 64, HT);
    if (n < 0)
        return -1;
    int64_t sum = 0;
    for (int i = 0; i < n && i < 64; i++)
        sum += (int64_t) * (const uint64_t *)((const uint8_t *)&st[i] + field_off);
    return sum;
}

#endif
