// SPDX-License-Identifier: Apache-2.0
//
// Helpers shared by the Provider integration tests (provider_test.c, provider_external_test.c):
// received frames copied out of the client's buffer (its slices die at the next receive),
// expecting lifecycle events one by one, checking that nothing more arrives for a request
// (a bounded wait, then a ping as a barrier), emitting with
// metadata.global_context.correlation_id, registering external handlers, building payloads and
// summing the broker's per-shard stats. Include after <cmocka.h>; header-only.
#ifndef NEXUS_TESTS_PROVIDER_UTIL_H
#define NEXUS_TESTS_PROVIDER_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/evtype.h"
#include "codec/stats.h"
#include "codec/structpb.h"
#include "codec/wire.h"
#include "harness.h"

/* The longest any expected frame may take to arrive (ms); generous for ASan. */
#define PV_T 5000

/* One received frame, copied. */
struct pv_ev {
    uint32_t kind;
    uint64_t corr; /* Frame.correlation */
    char type[EVTYPE_BYTES_MAX + 1];
    char id[300];
    char cid[300];  /* EventResponse.correlation_id */
    char code[300]; /* EventResponse.code, or an error frame's code */
    char msg[300];  /* EventResponse.message, or an error frame's message */
    char entity[300];
    uint64_t seq, sseq;
    int64_t campaign;
    bool has_pl;
    uint32_t pl_len;
    uint8_t pl[4096];
    bool has_md;
    uint32_t md_len;
    uint8_t md[1024];
    uint32_t registered; /* REGISTER_ACK.registered */
};

static inline void pv_str(char *dst, size_t cap, struct codec_slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n)
        memcpy(dst, s.ptr, n);
    dst[n] = 0;
}

static inline void pv_fill(struct pv_ev *e, const struct nexus_frame *f)
{
    memset(e, 0, sizeof(*e));
    e->kind = f->kind;
    e->corr = f->correlation;
    if (f->kind == CODEC_KIND_EVENT || f->kind == CODEC_KIND_EMIT_ACK) {
        const struct codec_event_in *ev = &f->u.event;
        pv_str(e->type, sizeof(e->type), ev->event_type);
        pv_str(e->id, sizeof(e->id), ev->event_id);
        pv_str(e->cid, sizeof(e->cid), ev->correlation_id);
        pv_str(e->code, sizeof(e->code), ev->code);
        pv_str(e->msg, sizeof(e->msg), ev->message);
        pv_str(e->entity, sizeof(e->entity), ev->entity_id);
        e->has_md = ev->has_metadata;
        e->md_len = ev->metadata.len < sizeof(e->md) ? ev->metadata.len : (uint32_t)sizeof(e->md);
        if (e->md_len)
            memcpy(e->md, ev->metadata.ptr, e->md_len);
        e->seq = ev->sequence;
        e->sseq = ev->stream_seq;
        e->campaign = ev->campaign_id;
        e->has_pl = ev->has_payload;
        e->pl_len = ev->payload.len < sizeof(e->pl) ? ev->payload.len : (uint32_t)sizeof(e->pl);
        if (e->pl_len)
            memcpy(e->pl, ev->payload.ptr, e->pl_len);
    } else if (f->kind == CODEC_KIND_ERROR) {
        pv_str(e->code, sizeof(e->code), f->u.error.code);
        pv_str(e->msg, sizeof(e->msg), f->u.error.message);
    } else if (f->kind == CODEC_KIND_REGISTER_ACK) {
        struct wire_cursor cur;
        struct wire_field fld;
        wire_cursor_init(&cur, f->body.ptr, f->body.len);
        while (wire_next(&cur, &fld) == 1)
            if (fld.number == 1 && fld.type == WIRE_VARINT)
                e->registered = (uint32_t)fld.value;
    }
}

/* Receives one frame of any kind. Returns 1, 0 on timeout, <0 on error. */
static inline int pv_recv(struct nexus_client *c, struct pv_ev *e, int timeout_ms)
{
    struct nexus_frame f;
    int r = nexus_recv(c, &f, timeout_ms);
    if (r == 1)
        pv_fill(e, &f);
    return r;
}

/* Receives the next event, skipping acknowledgements and pongs. Returns 1 for an event, 0 on
 * timeout, -EPROTO for an error or gap frame (e holds it), other negatives on I/O errors. */
static inline int pv_next_event(struct nexus_client *c, struct pv_ev *e, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (int i = 0; i < 100000; i++) {
        int64_t left = end - h_now_ms();
        int r = pv_recv(c, e, left > 0 ? (int)left : 0);
        if (r <= 0)
            return r;
        switch (e->kind) {
        case CODEC_KIND_EVENT:
            return 1;
        case CODEC_KIND_EMIT_ACK:
        case CODEC_KIND_SUBSCRIBE_ACK:
        case CODEC_KIND_PONG:
        case CODEC_KIND_REGISTER_ACK:
            continue;
        default:
            return -EPROTO;
        }
    }
    return 0;
}

/* The next event must be `type`, with correlation id `cid` (NULL: not checked). */
#define PV_EXPECT(c, e, type, cid) pv_expect((c), (e), (type), (cid), __LINE__)
static inline void pv_expect(struct nexus_client *c, struct pv_ev *e, const char *type,
                             const char *cid, int line)
{
    int r = pv_next_event(c, e, PV_T);
    if (r == 0)
        fail_msg("line %d: timed out waiting for %s (cid %s)", line, type, cid ? cid : "-");
    if (r < 0)
        fail_msg("line %d: waiting for %s: r=%d frame kind %u %s: %s", line, type, r, e->kind,
                 e->code, e->msg);
    if (strcmp(e->type, type) != 0)
        fail_msg("line %d: expected %s (cid %s), got %s (cid %s, code %s, seq %llu)", line, type,
                 cid ? cid : "-", e->type, e->cid, e->code, (unsigned long long)e->seq);
    if (cid && strcmp(e->cid, cid) != 0)
        fail_msg("line %d: %s: correlation id %s, expected %s", line, type, e->cid, cid);
}

/* An error frame answering the last request must carry `code`. */
#define PV_EXPECT_ERROR(e, r, code) pv_expect_error((e), (r), (code), __LINE__)
static inline void pv_expect_error(const struct pv_ev *e, int r, const char *code, int line)
{
    if (r != -EPROTO || e->kind != CODEC_KIND_ERROR)
        fail_msg("line %d: expected an error %s, got r=%d kind %u (%s)", line, code, r,
                 r == 1 || r == -EPROTO ? e->kind : 0u, r == 1 ? e->type : "");
    if (strcmp(e->code, code) != 0)
        fail_msg("line %d: expected error %s, got %s: %s", line, code, e->code, e->msg);
}

/* Does e concern the request `rid` (NULL: any event at all)? */
static inline bool pv_about(const struct pv_ev *e, const char *rid)
{
    return e->kind == CODEC_KIND_ERROR || e->kind == CODEC_KIND_GAP ||
           (e->kind == CODEC_KIND_EVENT &&
            (!rid || strcmp(e->cid, rid) == 0 || strcmp(e->id, rid) == 0));
}

/* Nothing about request `rid` (NULL: no event at all, nor any error) arrives on c: reads for
 * ms, then a ping round trip makes sure everything the broker had queued before it was read. */
#define PV_QUIET(c, rid, ms) pv_quiet((c), (rid), (ms), __LINE__)
static inline void pv_quiet(struct nexus_client *c, const char *rid, int ms, int line)
{
    struct pv_ev e;
    int64_t end = h_now_ms() + ms;
    for (int i = 0; i < 100000; i++) {
        int64_t left = end - h_now_ms();
        if (left <= 0)
            break;
        int r = pv_recv(c, &e, (int)left);
        if (r == 0)
            break;
        if (r < 0)
            fail_msg("line %d: receive failed (%d) while checking quiet", line, r);
        if (pv_about(&e, rid))
            fail_msg("line %d: unexpected frame kind %u %s (cid %s, code %s %s) after the end of "
                     "%s",
                     line, e.kind, e.type, e.cid, e.code, e.msg, rid ? rid : "everything");
    }
    if (h_ping(c, PV_T) != 1)
        fail_msg("line %d: no pong", line);
    for (int i = 0; i < 100000; i++) {
        int r = pv_recv(c, &e, 0);
        if (r <= 0)
            break;
        if (pv_about(&e, rid))
            fail_msg("line %d: unexpected frame kind %u %s (cid %s, code %s) after the end of %s",
                     line, e.kind, e.type, e.cid, e.code, rid ? rid : "everything");
    }
}

/* Emits; corr_id (NULL: none) goes into metadata.global_context.correlation_id, user (NULL:
 * none) into its user_id. Returns nexus_emit_sync's result: 1 with the ack in *e, -EPROTO with
 * the error in *e, 0 on timeout. */
static inline int pv_emit(struct nexus_client *c, const char *type, int64_t campaign,
                          const char *id, const char *corr_id, const char *user, const uint8_t *pl,
                          int pl_len, struct pv_ev *e)
{
    uint8_t md[600];
    struct codec_emit_in in;
    nexus_emit_init(&in, type, campaign, id, pl, pl && pl_len > 0 ? (size_t)pl_len : 0);
    if (corr_id || user) {
        int mdl = codec_metadata_build(md, sizeof(md), user, corr_id);
        assert_true(mdl > 0);
        in.metadata.ptr = md;
        in.metadata.len = (uint32_t)mdl;
        in.has_metadata = true;
    }
    struct nexus_frame f;
    memset(e, 0, sizeof(*e));
    int r = nexus_emit_sync(c, &in, &f, PV_T);
    if (r == 1 || r == -EPROTO)
        pv_fill(e, &f);
    return r;
}

/* Emits and requires the acknowledgement; returns the sequence it names. */
#define PV_EMIT_OK(c, type, camp, id, corr, pl, len)                                               \
    pv_emit_ok((c), (type), (camp), (id), (corr), (pl), (len), __LINE__)
static inline uint64_t pv_emit_ok(struct nexus_client *c, const char *type, int64_t campaign,
                                  const char *id, const char *corr_id, const uint8_t *pl,
                                  int pl_len, int line)
{
    struct pv_ev e;
    int r = pv_emit(c, type, campaign, id, corr_id, NULL, pl, pl_len, &e);
    if (r != 1)
        fail_msg("line %d: emit %s %s: r=%d %s: %s", line, type, id ? id : "", r, e.code, e.msg);
    if (e.kind != CODEC_KIND_EMIT_ACK || strcmp(e.type, type) != 0)
        fail_msg("line %d: emit %s: ack kind %u type %s", line, type, e.kind, e.type);
    if (id && strcmp(e.id, id) != 0)
        fail_msg("line %d: emit %s: ack names event id %s, not %s", line, type, e.id, id);
    return e.seq;
}

/* A Payload whose data holds up to three numbers (key NULL: absent). Returns its length. */
static inline int pv_payload(uint8_t *buf, size_t cap, const uint8_t **out, const char *k1,
                             double v1, const char *k2, double v2, const char *k3, double v3)
{
    struct structpb_writer w;
    structpb_begin(&w, buf, cap);
    if (k1)
        structpb_add_number(&w, k1, v1);
    if (k2)
        structpb_add_number(&w, k2, v2);
    if (k3)
        structpb_add_number(&w, k3, v3);
    int n = structpb_finish(&w, out);
    assert_true(n > 0);
    return n;
}

/* A number of the event's payload data, or -1 when absent. */
static inline double pv_num(const struct pv_ev *e, const char *key)
{
    struct structpb_value v;
    if (!e->pl_len || structpb_payload_get(e->pl, e->pl_len, key, &v) != 1 ||
        v.kind != STRUCTPB_NUMBER)
        return -1;
    return v.number;
}

/* A string of the event's payload data, copied into out ("" when absent). */
static inline const char *pv_strval(const struct pv_ev *e, const char *key, char *out, size_t cap)
{
    struct structpb_value v;
    out[0] = 0;
    if (e->pl_len && structpb_payload_get(e->pl, e->pl_len, key, &v) == 1 &&
        v.kind == STRUCTPB_STRING) {
        struct codec_slice s = {v.ptr, v.len};
        pv_str(out, cap, s);
    }
    return out;
}

/* Registers c as the handler of `count` actions (all streaming or not, for every campaign, or
 * only `campaign` when non-zero), and requires a register_ack naming count. */
static inline void pv_register(struct nexus_client *c, const char *const *actions, uint32_t count,
                               bool streaming, int64_t campaign)
{
    struct codec_register *reg = calloc(1, sizeof(*reg));
    assert_non_null(reg);
    for (uint32_t i = 0; i < count; i++) {
        reg->specs[i].action.ptr = (const uint8_t *)actions[i];
        reg->specs[i].action.len = (uint32_t)strlen(actions[i]);
        reg->specs[i].streaming = streaming;
        if (campaign) {
            reg->specs[i].campaign_count = 1;
            reg->specs[i].campaigns[0] = campaign;
        }
    }
    reg->count = count;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_register(c, corr, reg);
    free(reg);
    assert_int_equal(r, 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(c, corr, &f, PV_T), 1);
    struct pv_ev e;
    pv_fill(&e, &f);
    if (e.kind != CODEC_KIND_REGISTER_ACK)
        fail_msg("register %s: frame kind %u (%s: %s) instead of register_ack", actions[0], e.kind,
                 e.code, e.msg);
    assert_int_equal(e.registered, count);
}

/* Waits for the next event on any of the n clients (NULL entries skipped). Returns the index
 * of the client it came on, -1 on timeout; fails on an error frame. */
static inline int pv_wait_any(struct nexus_client *const *cs, int n, struct pv_ev *e,
                              int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (int spin = 0; spin < 100000 && h_now_ms() < end; spin++) {
        for (int k = 0; k < n; k++) {
            if (!cs[k])
                continue;
            int r = pv_next_event(cs[k], e, 5);
            if (r == 1)
                return k;
            if (r < 0)
                fail_msg("client %d: r=%d frame kind %u %s: %s", k, r, e->kind, e->code, e->msg);
        }
    }
    return -1;
}

/* The broker's counters summed over its shards. */
struct pv_stats {
    uint64_t success, failed, cancelled, timeout, no_handler, open_streams, heartbeats,
        handler_losses, errors;
};

static inline struct pv_stats pv_stats(struct nexus_client *c)
{
    struct codec_shard_stats st[16];
    int n = h_stats(c, st, 16, PV_T);
    assert_true(n > 0 && n <= 16);
    struct pv_stats s;
    memset(&s, 0, sizeof(s));
    for (int i = 0; i < n; i++) {
        s.success += st[i].req_success;
        s.failed += st[i].req_failed;
        s.cancelled += st[i].req_cancelled;
        s.timeout += st[i].req_timeout;
        s.no_handler += st[i].req_no_handler;
        s.open_streams += st[i].open_streams;
        s.heartbeats += st[i].heartbeats;
        s.handler_losses += st[i].handler_losses;
        s.errors += st[i].errors;
    }
    return s;
}

/* Polls the stats until the open-stream gauge reads `want` (bounded); returns what it read. */
static inline uint64_t pv_wait_open_streams(struct nexus_client *c, uint64_t want, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    uint64_t got = UINT64_MAX;
    for (int i = 0; i < 10000; i++) {
        got = pv_stats(c).open_streams;
        if (got == want || h_now_ms() >= end)
            break;
        usleep(10000);
    }
    return got;
}

/* Subscribes c to the campaign (every event type); fails otherwise. */
static inline void pv_subscribe(struct nexus_client *c, int64_t campaign)
{
    assert_int_equal(nexus_subscribe_sync(c, campaign, NULL, 0, NULL, NULL, NULL, PV_T), 1);
}

#endif
