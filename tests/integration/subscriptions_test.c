// SPDX-License-Identifier: Apache-2.0
//
// Subscriptions and emit acknowledgements (docs/DESIGN.md §2.3, §2.4, §5): type patterns, the
// firehose, the user filter, unsubscribe, overlapping subscriptions on one connection, ack contents
// and generated UUIDv4 ids, duplicate suppression and its window, invalid patterns and types.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "harness.h"

/* A small valid common.Payload: data = {"k": "v"}. */
static const char PAYLOAD[] = "\x0a\x0a\x0a\x08\x0a\x01k\x12\x03\x1a\x01v";
#define PAYLOAD_LEN (sizeof(PAYLOAD) - 1)

/* Our own reading of docs/DESIGN.md §2.3, independent of the broker's: four ':' segments, each
 * equal or `*`; the single pattern `*` and the empty list match everything. */
static bool seg_next(const char **p, const char **seg, size_t *len)
{
    if (!*p)
        return false;
    *seg = *p;
    const char *colon = strchr(*p, ':');
    *len = colon ? (size_t)(colon - *p) : strlen(*p);
    *p = colon ? colon + 1 : NULL;
    return true;
}

static bool pattern_match(const char *pat, const char *type)
{
    if (!strcmp(pat, "*"))
        return true;
    const char *pp = pat, *tp = type;
    for (int i = 0; i < 4; i++) {
        const char *ps, *ts;
        size_t pl, tl;
        if (!seg_next(&pp, &ps, &pl) || !seg_next(&tp, &ts, &tl))
            return false;
        if (!(pl == 1 && ps[0] == '*') && (pl != tl || memcmp(ps, ts, pl)))
            return false;
    }
    return pp == NULL && tp == NULL;
}

static bool list_match(const char *const *pats, uint32_t n, const char *type)
{
    if (n == 0)
        return true;
    for (uint32_t i = 0; i < n; i++)
        if (pattern_match(pats[i], type))
            return true;
    return false;
}

/* Emits one acknowledged event and returns its sequence (asserting an "accepted" ack). */
static uint64_t emit_acked(struct nexus_client *c, const char *type, int64_t camp, const char *id,
                           const void *md, size_t md_len)
{
    struct codec_emit_in e;
    nexus_emit_init(&e, type, camp, id, PAYLOAD, PAYLOAD_LEN);
    if (md) {
        e.metadata.ptr = md;
        e.metadata.len = (uint32_t)md_len;
        e.has_metadata = true;
    }
    struct nexus_frame f;
    int r = nexus_emit_sync(c, &e, &f, 5000);
    if (r != 1)
        fail_msg("emit %s to %lld: r=%d%s%.*s", type, (long long)camp, r, r == -EPROTO ? " " : "",
                 r == -EPROTO ? (int)f.u.error.code.len : 0,
                 r == -EPROTO ? (const char *)f.u.error.code.ptr : "");
    assert_true(f.u.event.success);
    assert_true(h_slice_eq(f.u.event.message, "accepted"));
    assert_int_equal(f.u.event.campaign_id, camp);
    return f.u.event.sequence;
}

/* Receives one frame, which must be an event; fails the test otherwise. */
static void recv_event(struct nexus_client *c, struct nexus_frame *f, int timeout_ms,
                       const char *who)
{
    int r = nexus_recv(c, f, timeout_ms);
    if (r != 1)
        fail_msg("%s: no event (r=%d)", who, r);
    if (f->kind != CODEC_KIND_EVENT)
        fail_msg("%s: frame kind %u instead of an event", who, f->kind);
}

/* Nothing more arrives on c for a while. This asserts an absence, so it can only wait. */
static void assert_quiet(struct nexus_client *c, int ms)
{
    struct nexus_frame f;
    int r = nexus_recv(c, &f, ms);
    if (r != 0)
        fail_msg("unexpected frame: r=%d kind=%u seq=%llu", r, r == 1 ? f.kind : 0,
                 r == 1 ? (unsigned long long)f.u.event.sequence : 0ull);
}

/* Expects an error frame answering `corr` with `code`. */
static void expect_error(struct nexus_client *c, uint64_t corr, const char *code,
                         struct nexus_frame *f)
{
    int r = nexus_wait_reply(c, corr, f, 5000);
    assert_int_equal(r, 1);
    if (f->kind != CODEC_KIND_ERROR)
        fail_msg("expected error %s, got frame kind %u", code, f->kind);
    if (!h_slice_eq(f->u.error.code, code))
        fail_msg("expected error %s, got %.*s: %.*s", code, (int)f->u.error.code.len,
                 (const char *)f->u.error.code.ptr, (int)f->u.error.message.len,
                 (const char *)f->u.error.message.ptr);
    assert_int_equal(f->correlation, corr);
}

/* ---- patterns ------------------------------------------------------------------------------ */

static const char *const TYPES[] = {
    "order:placed:v1:success",    "order:placed:v2:failed", "order:shipped:v1:success",
    "user:placed:v1:completed",   "chat:typing:v1:stream",  "order:placed:v1:cancelled",
    "billing:charge:v10:timeout",
};
#define NTYPES (sizeof(TYPES) / sizeof(TYPES[0]))

struct pattern_case {
    const char *pats[4];
    uint32_t n;
};

static const struct pattern_case CASES[] = {
    {{"order:*:v1:*"}, 1},
    {{"*:placed:*:success"}, 1},
    {{"*:*:*:stream"}, 1},
    {{"*:*:v1:*"}, 1},
    {{"*"}, 1},
    {{NULL}, 0},
    {{"order:placed:v2:failed", "user:*:*:*", "billing:charge:v10:timeout"}, 3},
    {{"nomatch:none:v9:timeout"}, 1},
    {{"*:*:*:*"}, 1},
    {{"order:placed:v1:success"}, 1},
    {{"order:*:v1:*", "*:placed:*:*"}, 2}, /* overlapping patterns: still once per event */
    {{"order:placed:*:*", "*:*:*:cancelled"}, 2},
};
#define NCASES (sizeof(CASES) / sizeof(CASES[0]))

static void test_patterns(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 300);
    struct nexus_client *subs[NCASES];
    for (uint32_t i = 0; i < NCASES; i++) {
        subs[i] = h_connect_on(&b, i % n);
        assert_non_null(subs[i]);
        uint64_t sid = 0;
        assert_int_equal(
            nexus_subscribe_sync(subs[i], camp, CASES[i].pats, CASES[i].n, NULL, &sid, NULL, 5000),
            1);
    }
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);
    const uint32_t rounds = 3;
    for (uint32_t r = 0; r < rounds; r++)
        for (uint32_t t = 0; t < NTYPES; t++)
            assert_int_equal(emit_acked(pub, TYPES[t], camp, NULL, NULL, 0), r * NTYPES + t + 1);

    for (uint32_t i = 0; i < NCASES; i++) {
        /* The expected events, in sequence order. */
        for (uint32_t r = 0; r < rounds; r++) {
            for (uint32_t t = 0; t < NTYPES; t++) {
                if (!list_match(CASES[i].pats, CASES[i].n, TYPES[t]))
                    continue;
                struct nexus_frame f;
                char who[64];
                snprintf(who, sizeof(who), "case %u (%s)", i, CASES[i].n ? CASES[i].pats[0] : "[]");
                recv_event(subs[i], &f, 5000, who);
                if (f.u.event.sequence != r * NTYPES + t + 1)
                    fail_msg("%s: got sequence %llu (%.*s), expected %u (%s)", who,
                             (unsigned long long)f.u.event.sequence, (int)f.u.event.event_type.len,
                             (const char *)f.u.event.event_type.ptr, (unsigned)(r * NTYPES + t + 1),
                             TYPES[t]);
                assert_true(h_slice_eq(f.u.event.event_type, TYPES[t]));
            }
        }
    }
    /* Absences: whatever should not have matched would have come by now (every subscriber
     * got its last expected event, and a campaign's events arrive in order). */
    for (uint32_t i = 0; i < NCASES; i++)
        assert_quiet(subs[i], i == 0 ? 200 : 20);
    for (uint32_t i = 0; i < NCASES; i++)
        nexus_close(subs[i]);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- firehose ------------------------------------------------------------------------------ */

static void test_firehose(void **state)
{
    (void)state;
    const uint32_t n = 3;
    struct broker_proc b = H_START(n, NULL);
    /* A campaign owned by every shard, and the default campaign 0. */
    int64_t camp[4];
    for (uint32_t k = 0; k < n; k++)
        camp[k] = h_campaign_on(k, n, 100 + 100 * (int64_t)k);
    camp[3] = 0;
    const uint32_t ncamp = 4;

    struct nexus_client *fh[3], *fh_success;
    for (uint32_t k = 0; k < n; k++) {
        fh[k] = h_connect_on(&b, k);
        assert_non_null(fh[k]);
        assert_int_equal(nexus_subscribe_sync(fh[k], 0, NULL, 0, NULL, NULL, NULL, 5000), 1);
    }
    fh_success = h_connect_on(&b, 1);
    assert_non_null(fh_success);
    const char *succ[] = {"*:*:*:success"};
    assert_int_equal(nexus_subscribe_sync(fh_success, 0, succ, 1, NULL, NULL, NULL, 5000), 1);
    /* A plain subscriber of one campaign sees only that campaign. */
    struct nexus_client *one = h_connect_on(&b, 2);
    assert_non_null(one);
    assert_int_equal(nexus_subscribe_sync(one, camp[0], NULL, 0, NULL, NULL, NULL, 5000), 1);

    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);
    const uint32_t per = 20;
    for (uint32_t i = 0; i < per; i++)
        for (uint32_t c = 0; c < ncamp; c++)
            assert_int_equal(emit_acked(pub, i % 2 ? "audit:log:v1:failed" : "audit:log:v1:success",
                                        camp[c], NULL, NULL, 0),
                             i + 1);

    for (uint32_t k = 0; k <= n; k++) {
        struct nexus_client *c = k < n ? fh[k] : fh_success;
        uint64_t last[4] = {0};
        uint32_t want = k < n ? per * ncamp : per / 2 * ncamp;
        for (uint32_t got = 0; got < want; got++) {
            struct nexus_frame f;
            recv_event(c, &f, 5000, k < n ? "firehose" : "firehose *:*:*:success");
            uint32_t ci = 0;
            while (ci < ncamp && camp[ci] != f.u.event.campaign_id)
                ci++;
            assert_true(ci < ncamp);
            uint64_t seq = f.u.event.sequence;
            if (k < n) {
                assert_int_equal(seq, last[ci] + 1); /* every event, in order, once */
            } else {
                assert_int_equal(seq, last[ci] + (last[ci] ? 2 : 1)); /* the odd sequences */
                assert_true(h_slice_eq(f.u.event.event_type, "audit:log:v1:success"));
            }
            last[ci] = seq;
        }
        assert_quiet(c, 50);
    }
    for (uint32_t i = 0; i < per; i++) {
        struct nexus_frame f;
        recv_event(one, &f, 5000, "single campaign");
        assert_int_equal(f.u.event.campaign_id, camp[0]);
        assert_int_equal(f.u.event.sequence, i + 1);
    }
    assert_quiet(one, 50);

    for (uint32_t k = 0; k < n; k++)
        nexus_close(fh[k]);
    nexus_close(fh_success);
    nexus_close(one);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- user filter --------------------------------------------------------------------------- */

static void test_user_filter(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 900);
    struct nexus_client *alice = h_connect_on(&b, 0), *bob = h_connect_on(&b, 1);
    struct nexus_client *all = h_connect_on(&b, 0), *alice_ok = h_connect_on(&b, 1);
    struct nexus_client *fh_alice = h_connect_on(&b, 0);
    assert_non_null(alice);
    assert_non_null(bob);
    assert_non_null(all);
    assert_non_null(alice_ok);
    assert_non_null(fh_alice);
    assert_int_equal(nexus_subscribe_sync(alice, camp, NULL, 0, "alice", NULL, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(bob, camp, NULL, 0, "bob", NULL, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(all, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    const char *succ[] = {"*:*:*:success"};
    assert_int_equal(nexus_subscribe_sync(alice_ok, camp, succ, 1, "alice", NULL, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(fh_alice, 0, NULL, 0, "alice", NULL, NULL, 5000), 1);

    struct {
        const char *user, *corr, *type;
    } evs[] = {
        {"alice", NULL, "note:add:v1:success"}, {"bob", NULL, "note:add:v1:success"},
        {NULL, NULL, "note:add:v1:success"},    {"alice2", NULL, "note:add:v1:success"},
        {"alic", NULL, "note:add:v1:success"},  {NULL, "c-1", "note:add:v1:success"},
        {"alice", "c-2", "note:add:v1:failed"}, {"Alice", NULL, "note:add:v1:success"},
        {"bob", "c-3", "note:add:v1:failed"},   {"alice", NULL, "note:add:v1:success"},
    };
    const uint32_t nev = sizeof(evs) / sizeof(evs[0]);
    uint8_t md[10][128];
    int md_len[10];
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);
    for (uint32_t i = 0; i < nev; i++) {
        md_len[i] = codec_metadata_build(md[i], sizeof(md[i]), evs[i].user, evs[i].corr);
        assert_true(md_len[i] >= 0);
        char id[32];
        snprintf(id, sizeof(id), "u-%u", i);
        /* An event without user and correlation is sent without metadata at all. */
        assert_int_equal(
            emit_acked(pub, evs[i].type, camp, id, md_len[i] ? md[i] : NULL, (size_t)md_len[i]),
            i + 1);
    }
    struct {
        struct nexus_client *c;
        const char *user;
        bool success_only;
        const char *name;
    } subs[] = {
        {alice, "alice", false, "alice"},
        {bob, "bob", false, "bob"},
        {all, NULL, false, "no filter"},
        {alice_ok, "alice", true, "alice success"},
        {fh_alice, "alice", false, "firehose alice"},
    };
    for (uint32_t s = 0; s < sizeof(subs) / sizeof(subs[0]); s++) {
        for (uint32_t i = 0; i < nev; i++) {
            bool want = (!subs[s].user || (evs[i].user && !strcmp(evs[i].user, subs[s].user))) &&
                        (!subs[s].success_only || strstr(evs[i].type, ":success"));
            if (!want)
                continue;
            struct nexus_frame f;
            recv_event(subs[s].c, &f, 5000, subs[s].name);
            if (f.u.event.sequence != i + 1)
                fail_msg("%s: got sequence %llu, expected %u", subs[s].name,
                         (unsigned long long)f.u.event.sequence, i + 1);
            /* Metadata and payload byte for byte as emitted. */
            assert_int_equal(f.u.event.has_metadata, md_len[i] > 0);
            assert_int_equal(f.u.event.metadata.len, md_len[i]);
            if (md_len[i])
                assert_memory_equal(f.u.event.metadata.ptr, md[i], (size_t)md_len[i]);
            assert_int_equal(f.u.event.payload.len, PAYLOAD_LEN);
            assert_memory_equal(f.u.event.payload.ptr, PAYLOAD, PAYLOAD_LEN);
        }
        assert_quiet(subs[s].c, s == 0 ? 200 : 20);
    }
    for (uint32_t s = 0; s < sizeof(subs) / sizeof(subs[0]); s++)
        nexus_close(subs[s].c);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- unsubscribe --------------------------------------------------------------------------- */

static void test_unsubscribe(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 1200);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *other = h_connect_on(&b, 1);
    struct nexus_client *pub = h_connect_on(&b, 1);
    assert_non_null(sub);
    assert_non_null(other);
    assert_non_null(pub);
    const char *orders[] = {"order:*:*:*"}, *audit[] = {"audit:*:*:*"};
    uint64_t sid_orders = 0, sid_audit = 0, sid_other = 0;
    assert_int_equal(nexus_subscribe_sync(sub, camp, orders, 1, NULL, &sid_orders, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(sub, camp, audit, 1, NULL, &sid_audit, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(other, camp, orders, 1, NULL, &sid_other, NULL, 5000), 1);
    assert_true(sid_orders != sid_audit);

    assert_int_equal(emit_acked(pub, "order:placed:v1:success", camp, "o-1", NULL, 0), 1);
    struct nexus_frame f;
    recv_event(sub, &f, 5000, "before unsubscribe");
    assert_int_equal(f.u.event.sequence, 1);

    /* The ack echoes the correlation and carries the subscription id. */
    uint64_t corr = nexus_next_correlation(sub);
    assert_int_equal(nexus_send_unsubscribe(sub, corr, sid_orders), 0);
    assert_int_equal(nexus_wait_reply(sub, corr, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(f.u.subscription_id, sid_orders);

    /* After the ack: orders no longer arrive. The audit event emitted after them is the
     * barrier: a campaign's events arrive in order, so an order event would come first. */
    for (int i = 0; i < 5; i++)
        emit_acked(pub, "order:placed:v1:success", camp, NULL, NULL, 0);
    assert_int_equal(emit_acked(pub, "audit:log:v1:success", camp, "a-1", NULL, 0), 7);
    recv_event(sub, &f, 5000, "after unsubscribe");
    if (f.u.event.sequence != 7)
        fail_msg("event %llu (%.*s) arrived after its subscription was removed",
                 (unsigned long long)f.u.event.sequence, (int)f.u.event.event_type.len,
                 (const char *)f.u.event.event_type.ptr);
    /* The other connection's subscription of the same campaign is untouched. */
    for (uint64_t s = 1; s <= 6; s++) {
        recv_event(other, &f, 5000, "other subscriber");
        assert_int_equal(f.u.event.sequence, s);
    }

    /* Unknown ids: never issued, already removed, and another connection's. */
    uint64_t bad[] = {sid_orders, 999999, sid_other};
    for (uint32_t i = 0; i < 3; i++) {
        corr = nexus_next_correlation(sub);
        assert_int_equal(nexus_send_unsubscribe(sub, corr, bad[i]), 0);
        expect_error(sub, corr, "unknown_subscription", &f);
    }
    /* The other connection still gets its events (its subscription was not removed). */
    assert_int_equal(emit_acked(pub, "order:placed:v1:success", camp, NULL, NULL, 0), 8);
    recv_event(other, &f, 5000, "other subscriber");
    assert_int_equal(f.u.event.sequence, 8);
    /* And the connection that saw errors still works. */
    assert_int_equal(h_ping(sub, 5000), 1);
    assert_quiet(sub, 100);

    /* Unsubscribing the last subscription ends delivery entirely. */
    corr = nexus_next_correlation(sub);
    assert_int_equal(nexus_send_unsubscribe(sub, corr, sid_audit), 0);
    assert_int_equal(nexus_wait_reply(sub, corr, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(f.u.subscription_id, sid_audit);
    /* An audit event (nobody's now) and an order event: the other subscriber's next event is
     * the order one, and the connection without subscriptions gets nothing. */
    assert_int_equal(emit_acked(pub, "audit:log:v1:success", camp, NULL, NULL, 0), 9);
    assert_int_equal(emit_acked(pub, "order:placed:v1:success", camp, NULL, NULL, 0), 10);
    recv_event(other, &f, 5000, "other subscriber");
    assert_int_equal(f.u.event.sequence, 10);
    assert_int_equal(h_ping(sub, 5000), 1);
    assert_quiet(sub, 100);
    nexus_close(sub);
    nexus_close(other);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* Removing a connection's only subscription, with a watcher on the same shard as the
 * barrier. */
static void test_unsubscribe_last(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 1300);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *watch = h_connect_on(&b, 0);
    struct nexus_client *pub = h_connect_on(&b, 1);
    assert_non_null(sub);
    assert_non_null(watch);
    assert_non_null(pub);
    uint64_t sid = 0;
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, &sid, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(watch, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    assert_int_equal(emit_acked(pub, "audit:log:v1:success", camp, NULL, NULL, 0), 1);
    struct nexus_frame f;
    recv_event(sub, &f, 5000, "subscriber");
    uint64_t corr = nexus_next_correlation(sub);
    assert_int_equal(nexus_send_unsubscribe(sub, corr, sid), 0);
    assert_int_equal(nexus_wait_reply(sub, corr, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(f.u.subscription_id, sid);
    for (int i = 0; i < 10; i++)
        emit_acked(pub, "audit:log:v1:success", camp, NULL, NULL, 0);
    /* The watcher on the same shard got all of them: had the removed subscription been
     * matched, the same fan-out would have queued them to `sub` before the watcher's last. */
    for (uint64_t s = 1; s <= 11; s++) {
        recv_event(watch, &f, 5000, "watcher");
        assert_int_equal(f.u.event.sequence, s);
    }
    assert_int_equal(h_ping(sub, 5000), 1);
    assert_quiet(sub, 100);
    nexus_close(sub);
    nexus_close(watch);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* Unsubscribing a firehose subscription stops every campaign's events, on every shard. */
static void test_unsubscribe_firehose(void **state)
{
    (void)state;
    const uint32_t n = 3;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp[3];
    for (uint32_t k = 0; k < n; k++)
        camp[k] = h_campaign_on(k, n, 1400 + 10 * (int64_t)k);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *watch = h_connect_on(&b, 0);
    struct nexus_client *pub = h_connect_on(&b, 2);
    assert_non_null(sub);
    assert_non_null(watch);
    assert_non_null(pub);
    uint64_t sid = 0;
    assert_int_equal(nexus_subscribe_sync(sub, 0, NULL, 0, NULL, &sid, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(watch, 0, NULL, 0, NULL, NULL, NULL, 5000), 1);
    for (uint32_t k = 0; k < n; k++)
        assert_int_equal(emit_acked(pub, "audit:log:v1:success", camp[k], NULL, NULL, 0), 1);
    struct nexus_frame f;
    for (uint32_t k = 0; k < n; k++) {
        recv_event(sub, &f, 5000, "firehose before unsubscribe");
        recv_event(watch, &f, 5000, "watcher");
    }
    uint64_t corr = nexus_next_correlation(sub);
    assert_int_equal(nexus_send_unsubscribe(sub, corr, sid), 0);
    assert_int_equal(nexus_wait_reply(sub, corr, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    assert_int_equal(f.u.subscription_id, sid);
    for (uint32_t k = 0; k < n; k++)
        assert_int_equal(emit_acked(pub, "audit:log:v1:success", camp[k], NULL, NULL, 0), 2);
    /* The watcher on the same shard got them all; the unsubscribed connection none. */
    for (uint32_t k = 0; k < n; k++) {
        recv_event(watch, &f, 5000, "watcher");
        assert_int_equal(f.u.event.sequence, 2);
    }
    assert_int_equal(h_ping(sub, 5000), 1);
    assert_quiet(sub, 100);
    nexus_close(sub);
    nexus_close(watch);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- overlapping subscriptions on one connection ------------------------------------------ */

static void test_overlapping_subscriptions(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 1500);
    const char *orders[] = {"order:*:*:*"}, *placed[] = {"*:placed:*:*"};
    /* One connection on the owner's shard (local fan-out), one on the other (ring fan-out). */
    struct nexus_client *c[2];
    for (uint32_t k = 0; k < 2; k++) {
        c[k] = h_connect_on(&b, k);
        assert_non_null(c[k]);
        assert_int_equal(nexus_subscribe_sync(c[k], camp, orders, 1, NULL, NULL, NULL, 5000), 1);
        assert_int_equal(nexus_subscribe_sync(c[k], camp, orders, 1, NULL, NULL, NULL, 5000), 1);
        assert_int_equal(nexus_subscribe_sync(c[k], camp, placed, 1, NULL, NULL, NULL, 5000), 1);
        assert_int_equal(nexus_subscribe_sync(c[k], camp, NULL, 0, "alice", NULL, NULL, 5000), 1);
        assert_int_equal(nexus_subscribe_sync(c[k], 0, NULL, 0, NULL, NULL, NULL, 5000), 1);
    }
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);
    uint8_t md[64];
    int ml = codec_metadata_build(md, sizeof(md), "alice", NULL);
    assert_true(ml > 0);
    const char *types[] = {"order:placed:v1:success", "order:shipped:v1:success",
                           "user:placed:v1:success", "misc:other:v1:success"};
    for (uint32_t i = 0; i < 40; i++)
        assert_int_equal(emit_acked(pub, types[i % 4], camp, NULL, md, (size_t)ml), i + 1);
    for (uint32_t k = 0; k < 2; k++) {
        for (uint64_t s = 1; s <= 40; s++) {
            struct nexus_frame f;
            recv_event(c[k], &f, 5000, k ? "other shard" : "owner shard");
            assert_int_equal(f.u.event.sequence, s); /* once each: no repeat, no gap */
        }
        assert_quiet(c[k], k ? 20 : 200);
    }
    nexus_close(c[0]);
    nexus_close(c[1]);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- ack contents and generated ids -------------------------------------------------------- */

static bool is_uuid4(struct codec_slice id)
{
    if (id.len != 36)
        return false;
    for (uint32_t i = 0; i < 36; i++) {
        char ch = (char)id.ptr[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-')
                return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) {
            return false;
        }
    }
    return id.ptr[14] == '4' && strchr("89ab", id.ptr[19]) != NULL;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void test_ack_contents(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 2000);
    struct nexus_client *sub = h_connect_on(&b, 1);
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);

    uint8_t md[64];
    int ml = codec_metadata_build(md, sizeof(md), "u7", "corr-9");
    assert_true(ml > 0);
    char gen[3][37];
    int64_t t0 = wall_ns();
    for (uint32_t i = 0; i < 4; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "order:placed:v3:success", camp, i == 0 ? "my-id-1" : NULL, PAYLOAD,
                        PAYLOAD_LEN);
        e.entity_id.ptr = (const uint8_t *)"entity-42";
        e.entity_id.len = 9;
        e.metadata.ptr = md;
        e.metadata.len = (uint32_t)ml;
        e.has_metadata = true;
        struct nexus_frame f;
        assert_int_equal(nexus_emit_sync(pub, &e, &f, 5000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
        assert_int_equal(f.correlation, e.correlation);
        assert_true(f.u.event.success);
        assert_true(h_slice_eq(f.u.event.message, "accepted"));
        assert_true(h_slice_eq(f.u.event.event_type, "order:placed:v3:success"));
        assert_int_equal(f.u.event.campaign_id, camp);
        assert_int_equal(f.u.event.sequence, i + 1);
        if (i == 0) {
            assert_true(h_slice_eq(f.u.event.event_id, "my-id-1"));
        } else {
            if (!is_uuid4(f.u.event.event_id))
                fail_msg("generated id \"%.*s\" is not a UUIDv4", (int)f.u.event.event_id.len,
                         (const char *)f.u.event.event_id.ptr);
            memcpy(gen[i - 1], f.u.event.event_id.ptr, 36);
            gen[i - 1][36] = 0;
        }
    }
    int64_t t1 = wall_ns();
    assert_true(strcmp(gen[0], gen[1]) && strcmp(gen[1], gen[2]) && strcmp(gen[0], gen[2]));

    /* The delivered events carry the same ids and every routing field. */
    for (uint32_t i = 0; i < 4; i++) {
        struct nexus_frame f;
        recv_event(sub, &f, 5000, "subscriber");
        assert_true(f.u.event.success);
        assert_int_equal(f.u.event.sequence, i + 1);
        assert_int_equal(f.u.event.campaign_id, camp);
        assert_true(h_slice_eq(f.u.event.event_id, i == 0 ? "my-id-1" : gen[i - 1]));
        assert_true(h_slice_eq(f.u.event.event_type, "order:placed:v3:success"));
        assert_true(h_slice_eq(f.u.event.entity_id, "entity-42"));
        assert_true(f.u.event.timestamp_unix_nanos >= t0 - 1000000000);
        assert_true(f.u.event.timestamp_unix_nanos <= t1 + 1000000000);
        assert_int_equal(f.u.event.metadata.len, ml);
        assert_memory_equal(f.u.event.metadata.ptr, md, (size_t)ml);
        assert_int_equal(f.u.event.payload.len, PAYLOAD_LEN);
        assert_memory_equal(f.u.event.payload.ptr, PAYLOAD, PAYLOAD_LEN);
    }
    /* A fire-and-forget emit gets no ack: the pong is the next frame. */
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v3:success", camp, NULL, NULL, 0);
    assert_int_equal(nexus_send_emit(pub, &e), 0);
    assert_int_equal(h_ping(pub, 5000), 1);
    struct nexus_frame f;
    recv_event(sub, &f, 5000, "subscriber");
    assert_int_equal(f.u.event.sequence, 5);
    assert_true(is_uuid4(f.u.event.event_id));
    assert_int_equal(f.u.event.has_payload, false);
    assert_quiet(pub, 100);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- duplicates ---------------------------------------------------------------------------- */

static void emit_expect(struct nexus_client *pub, const char *type, int64_t camp, const char *id,
                        const char *message, struct nexus_frame *f)
{
    struct codec_emit_in e;
    nexus_emit_init(&e, type, camp, id, NULL, 0);
    assert_int_equal(nexus_emit_sync(pub, &e, f, 5000), 1);
    assert_int_equal(f->correlation, e.correlation);
    if (!h_slice_eq(f->u.event.message, message))
        fail_msg("emit %s/%s: ack says \"%.*s\", expected \"%s\"", id, type,
                 (int)f->u.event.message.len, (const char *)f->u.event.message.ptr, message);
    assert_true(h_slice_eq(f->u.event.event_id, id));
}

static void test_duplicates(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, "--dedup-window-ms", "200", NULL);
    int64_t camp = h_campaign_on(1, n, 2500), camp2 = h_campaign_on(0, n, 2600);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *pub = h_connect_on(&b, 0);
    struct nexus_client *pub2 = h_connect_on(&b, 1);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_non_null(pub2);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    assert_int_equal(nexus_subscribe_sync(sub, camp2, NULL, 0, NULL, NULL, NULL, 5000), 1);

    struct nexus_frame f;
    const char *t1 = "pay:charge:v1:success", *t2 = "pay:charge:v1:failed";
    emit_expect(pub, t1, camp, "dup-1", "accepted", &f);
    assert_int_equal(f.u.event.sequence, 1);
    int64_t accepted_ns = f.u.event.timestamp_unix_nanos;
    /* Same id and type within the window, from the same connection: duplicate. */
    emit_expect(pub, t1, camp, "dup-1", "duplicate", &f);
    /* Fire-and-forget duplicates are dropped too. */
    struct codec_emit_in e;
    nexus_emit_init(&e, t1, camp, "dup-1", NULL, 0);
    assert_int_equal(nexus_send_emit(pub, &e), 0);
    /* Same id, other type: not a duplicate. Same id and type, other campaign: not either. */
    emit_expect(pub, t2, camp, "dup-1", "accepted", &f);
    assert_int_equal(f.u.event.sequence, 2);
    emit_expect(pub, t1, camp2, "dup-1", "accepted", &f);
    assert_int_equal(f.u.event.sequence, 1);
    /* The window is per publisher (connection, or hello client_name): another client re-using
     * the id does not make the first one's event a duplicate (nor is its own suppressed), but
     * its own repeat is. pub and pub2 said hello as "test"; pub2 now says it is another. */
    assert_int_equal(nexus_hello_sync(pub2, NULL, "another-client", &f, 5000), 1);
    emit_expect(pub2, t1, camp2, "dup-1", "accepted", &f);
    assert_int_equal(f.u.event.sequence, 2);
    emit_expect(pub2, t1, camp2, "dup-1", "duplicate", &f);
    emit_expect(pub, t1, camp, "dup-2", "accepted", &f);
    assert_int_equal(f.u.event.sequence, 3);

    /* After the window the same pair is accepted again. Retried until it is, in a bounded
     * loop; the window is the broker's clock, so it must not be accepted too early. */
    int64_t deadline = h_now_ms() + 5000;
    uint64_t seq = 0;
    int tries = 0;
    while (h_now_ms() < deadline) {
        nexus_emit_init(&e, t1, camp, "dup-1", NULL, 0);
        assert_int_equal(nexus_emit_sync(pub, &e, &f, 5000), 1);
        tries++;
        if (h_slice_eq(f.u.event.message, "accepted")) {
            seq = f.u.event.sequence;
            int64_t waited_ms = (f.u.event.timestamp_unix_nanos - accepted_ns) / 1000000;
            if (waited_ms < 190)
                fail_msg("re-accepted after %lld ms, inside the 200 ms window",
                         (long long)waited_ms);
            break;
        }
        assert_true(h_slice_eq(f.u.event.message, "duplicate"));
        usleep(25000);
    }
    assert_int_equal(seq, 4);
    assert_true(tries > 1);

    /* The subscriber saw each accepted event once: camp 1..4 and camp2 1..2. */
    uint64_t next = 1, next2 = 1;
    for (int i = 0; i < 6; i++) {
        recv_event(sub, &f, 5000, "subscriber");
        if (f.u.event.campaign_id == camp2) {
            assert_int_equal(f.u.event.sequence, next2);
            next2++;
            continue;
        }
        assert_int_equal(f.u.event.campaign_id, camp);
        assert_int_equal(f.u.event.sequence, next);
        assert_true(h_slice_eq(f.u.event.event_id, next == 3 ? "dup-2" : "dup-1"));
        assert_true(h_slice_eq(f.u.event.event_type, next == 2 ? t2 : t1));
        next++;
    }
    assert_int_equal(next2, 3);
    assert_quiet(sub, 200);
    nexus_close(sub);
    nexus_close(pub);
    nexus_close(pub2);
    assert_int_equal(h_stop(&b), 0);
}

/* A burst in one write: emits with client ids in pairs (the second of each pair a duplicate),
 * a ping and an emit with a bad type every 8 frames. The broker handles emits a few at a time
 * (the emit pipeline, docs/ARCHITECTURE.md); the replies must still come in the order of the
 * frames, each pair's second emit must be found a duplicate, and the subscriber must get the
 * accepted events, in order. Returns the number of accepted events. */
#define BURST_FRAMES 200
static uint32_t burst_expect(struct nexus_client *pub, struct nexus_client *sub, int64_t camp,
                             bool replies_ordered)
{
    const char *type = "pay:charge:v1:success";
    uint64_t corr[BURST_FRAMES];
    char kind[BURST_FRAMES]; /* 'a' accepted, 'd' duplicate, 'p' pong, 'e' error */
    uint32_t emits = 0;
    for (uint32_t j = 0; j < BURST_FRAMES; j++) {
        corr[j] = nexus_next_correlation(pub);
        if (j % 8 == 5) {
            kind[j] = 'p';
            assert_int_equal(nexus_send_ping(pub, corr[j], j), 0);
            continue;
        }
        struct codec_emit_in e;
        char id[32];
        snprintf(id, sizeof(id), "b-%u", emits / 2);
        nexus_emit_init(&e, j % 8 == 2 ? "pay:Charge:v1:success" : type, camp, id, NULL, 0);
        e.correlation = corr[j];
        kind[j] = j % 8 == 2 ? 'e' : emits++ % 2 ? 'd' : 'a';
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    assert_int_equal(nexus_flush(pub), 0);
    uint32_t seen[BURST_FRAMES] = {0}, accepted = 0;
    for (uint32_t got = 0, next = 0; got < BURST_FRAMES; got++) {
        struct nexus_frame f;
        assert_int_equal(nexus_recv(pub, &f, 5000), 1);
        uint32_t j = 0;
        while (j < BURST_FRAMES && corr[j] != f.correlation)
            j++;
        if (j == BURST_FRAMES || seen[j]++)
            fail_msg("reply with correlation %llu: unknown or twice",
                     (unsigned long long)f.correlation);
        if (replies_ordered && j != next)
            fail_msg("reply to frame %u came where frame %u's was due", j, next);
        next = j + 1;
        char k = f.kind == CODEC_KIND_PONG                    ? 'p'
                 : f.kind == CODEC_KIND_ERROR                 ? 'e'
                 : f.kind != CODEC_KIND_EMIT_ACK              ? '?'
                 : h_slice_eq(f.u.event.message, "duplicate") ? 'd'
                                                              : 'a';
        if (k != kind[j])
            fail_msg("frame %u: reply '%c', expected '%c'", j, k, kind[j]);
        accepted += k == 'a';
    }
    for (uint32_t n = 0; n < accepted; n++) {
        struct nexus_frame f;
        char id[32];
        recv_event(sub, &f, 5000, "subscriber");
        snprintf(id, sizeof(id), "b-%u", n);
        assert_int_equal(f.u.event.sequence, n + 1);
        if (!h_slice_eq(f.u.event.event_id, id))
            fail_msg("event %u has id %.*s, expected %s", n + 1, (int)f.u.event.event_id.len,
                     (const char *)f.u.event.event_id.ptr, id);
    }
    assert_quiet(sub, 100);
    return accepted;
}

static void test_burst_order(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    struct nexus_client *pub = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(pub);
    assert_non_null(sub);
    /* Owned by the publisher's shard: handled in its receive, replies strictly in order. */
    int64_t local = h_campaign_on(0, 2, 3100);
    assert_int_equal(nexus_subscribe_sync(sub, local, NULL, 0, NULL, NULL, NULL, 5000), 1);
    uint32_t a = burst_expect(pub, sub, local, true);
    /* Owned by the other shard: emits travel there packed; its acks come back in order among
     * themselves, the pongs and errors (answered here) may pass them. */
    int64_t remote = h_campaign_on(1, 2, 3200);
    assert_int_equal(nexus_subscribe_sync(sub, remote, NULL, 0, NULL, NULL, NULL, 5000), 1);
    assert_int_equal(burst_expect(pub, sub, remote, false), a);
    nexus_close(pub);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- invalid patterns and types ------------------------------------------------------------ */

static void test_invalid_pattern(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct {
        const char *pats[2];
        uint32_t n;
        const char *names; /* the message names this */
    } bad[] = {
        {{"order:placed"}, 1, "segments"},
        {{"Order:*:v1:*"}, 1, "Order"},
        {{"order:*:v1:bogus"}, 1, "bogus"},
        {{"order:*:x1:*"}, 1, "x1"},
        {{""}, 1, "empty"},
        {{"order:*:v1:*", "a:b:c"}, 2, "pattern 2"},
        {{"order:*:v1:*:extra"}, 1, "segments"},
    };
    for (uint32_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t corr = nexus_next_correlation(c);
        assert_int_equal(nexus_send_subscribe(c, corr, 77, bad[i].pats, bad[i].n, NULL), 0);
        struct nexus_frame f;
        expect_error(c, corr, "invalid_pattern", &f);
        if (!h_slice_has(f.u.error.message, bad[i].names))
            fail_msg("invalid_pattern message \"%.*s\" does not name \"%s\"",
                     (int)f.u.error.message.len, (const char *)f.u.error.message.ptr, bad[i].names);
    }
    /* No subscription was created by the rejects: a valid one works and is the only one. */
    const char *ok[] = {"order:*:v1:*"};
    assert_int_equal(nexus_subscribe_sync(c, 77, ok, 1, NULL, NULL, NULL, 5000), 1);
    assert_int_equal(emit_acked(c, "order:placed:v1:success", 77, NULL, NULL, 0), 1);
    struct nexus_frame f;
    recv_event(c, &f, 5000, "subscriber");
    assert_int_equal(f.u.event.sequence, 1);
    assert_int_equal(emit_acked(c, "order:placed:v2:success", 77, NULL, NULL, 0), 2);
    assert_int_equal(h_ping(c, 5000), 1);
    assert_quiet(c, 100);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_invalid_event_type(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(1, 2, 3000);
    struct nexus_client *c = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(c);
    assert_non_null(sub);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    struct {
        const char *type;
        const char *names;
    } bad[] = {
        {"order:placed:v1:shipped", "shipped"},
        {"Order:placed:v1:success", "Order"},
        {"order:Placed:v1:success", "Placed"},
        {"order:placed:1:success", "version"},
        {"order:placed:v01:success", "v01"},
        {"order:placed:v1", "segments"},
        {"order:placed:v1:success:x", "segments"},
        {"", "empty"},
        {"order:*:v1:success", "*"},
        {"9order:placed:v1:success", "9order"},
    };
    uint64_t seq = 0;
    for (uint32_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, bad[i].type, camp, NULL, NULL, 0);
        struct nexus_frame f;
        assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), -EPROTO);
        assert_int_equal(f.kind, CODEC_KIND_ERROR);
        assert_int_equal(f.correlation, e.correlation);
        if (!h_slice_eq(f.u.error.code, "invalid_event_type"))
            fail_msg("type \"%s\": error %.*s", bad[i].type, (int)f.u.error.code.len,
                     (const char *)f.u.error.code.ptr);
        if (!h_slice_has(f.u.error.message, bad[i].names))
            fail_msg("type \"%s\": message \"%.*s\" does not name \"%s\"", bad[i].type,
                     (int)f.u.error.message.len, (const char *)f.u.error.message.ptr, bad[i].names);
        /* The connection stays usable, and a reject takes no sequence number. */
        assert_int_equal(emit_acked(c, "order:placed:v1:success", camp, NULL, NULL, 0), ++seq);
    }
    for (uint64_t s = 1; s <= seq; s++) {
        struct nexus_frame f;
        recv_event(sub, &f, 5000, "subscriber");
        assert_int_equal(f.u.event.sequence, s);
        assert_true(h_slice_eq(f.u.event.event_type, "order:placed:v1:success"));
    }
    assert_quiet(sub, 100);
    nexus_close(c);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_patterns, h_teardown),
        cmocka_unit_test_teardown(test_firehose, h_teardown),
        cmocka_unit_test_teardown(test_user_filter, h_teardown),
        cmocka_unit_test_teardown(test_unsubscribe, h_teardown),
        cmocka_unit_test_teardown(test_unsubscribe_last, h_teardown),
        cmocka_unit_test_teardown(test_unsubscribe_firehose, h_teardown),
        cmocka_unit_test_teardown(test_overlapping_subscriptions, h_teardown),
        cmocka_unit_test_teardown(test_ack_contents, h_teardown),
        cmocka_unit_test_teardown(test_duplicates, h_teardown),
        cmocka_unit_test_teardown(test_burst_order, h_teardown),
        cmocka_unit_test_teardown(test_invalid_pattern, h_teardown),
        cmocka_unit_test_teardown(test_invalid_event_type, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
