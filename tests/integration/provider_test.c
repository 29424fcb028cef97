// SPDX-License-Identifier: Apache-2.0
//
// The Provider (docs/DESIGN.md §3, issue 4) with the built-in test handlers, against the real
// nexusd over real sockets, two shards, the requester, the subscribers and the campaign's owner
// placed on chosen shards: the exact lifecycle of a plain request (sequence, correlation ids, each
// event once per connection, exactly one terminal), streams (heartbeats with growing counts, the
// heartbeat clamp, cancel, timeouts, a requester that vanishes mid-stream), no_handler both
// ways, the bounds (--max-streams, --max-requests-per-conn), forged lifecycle events, and the
// request counters of the stats.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "provider_util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_terminal(const char *type)
{
    return ends_with(type, ":success") || ends_with(type, ":failed") ||
           ends_with(type, ":cancelled") || ends_with(type, ":timeout");
}

/* Reads c's events until each of the n requests rids[i] has had its terminal event, which must
 * be terms[i] (a full type); only started / stream / heartbeat events of those requests (and
 * requested / cancel events, which carry no correlation id) may come before. at[i] receives
 * the arrival time of each terminal (ms, h_now_ms) when at is not NULL. */
static void await_terminals_hb(struct nexus_client *c, const char *const *rids, int n,
                               const char *const *terms, int64_t *at, int *heartbeats)
{
    int done = 0;
    bool seen[8] = {false};
    assert_true(n <= 8);
    int64_t end = h_now_ms() + 3 * PV_T;
    for (int i = 0; i < 10000 && done < n; i++) {
        if (h_now_ms() > end)
            fail_msg("%d of %d terminal events arrived in time (first awaited: %s)", done, n,
                     terms[0]);
        struct pv_ev e;
        int r = pv_next_event(c, &e, PV_T);
        if (r != 1)
            fail_msg("waiting for terminal events: r=%d kind %u %s: %s", r, e.kind, e.code, e.msg);
        if (ends_with(e.type, ":requested") || ends_with(e.type, ":cancel"))
            continue;
        int k = -1;
        for (int j = 0; j < n; j++)
            if (strcmp(e.cid, rids[j]) == 0)
                k = j;
        if (k < 0)
            fail_msg("event %s with correlation id '%s' belongs to no awaited request", e.type,
                     e.cid);
        if (seen[k])
            fail_msg("%s: %s after its terminal event", rids[k], e.type);
        if (is_terminal(e.type)) {
            if (strcmp(e.type, terms[k]) != 0)
                fail_msg("%s ended with %s (code %s), expected %s", rids[k], e.type, e.code,
                         terms[k]);
            seen[k] = true;
            if (at)
                at[k] = h_now_ms();
            done++;
        } else if (ends_with(e.type, ":heartbeat")) {
            if (heartbeats)
                heartbeats[k]++;
        } else if (!ends_with(e.type, ":started") && !ends_with(e.type, ":stream")) {
            fail_msg("%s: unexpected %s", rids[k], e.type);
        }
    }
    assert_int_equal(done, n);
}

static void await_terminals(struct nexus_client *c, const char *const *rids, int n,
                            const char *const *terms, int64_t *at)
{
    await_terminals_hb(c, rids, n, terms, at, NULL);
}

static void await_terminal(struct nexus_client *c, const char *rid, const char *term)
{
    await_terminals(c, &rid, 1, &term, NULL);
}

/* A stream of test:stream_ticks: emits it and waits for `started` (the requester must not be
 * subscribed to the campaign). */
static void open_ticks(struct nexus_client *c, int64_t camp, const char *rid, double interval_ms,
                       double heartbeat_ms)
{
    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", interval_ms, "heartbeat_ms",
                       heartbeat_ms, NULL, 0);
    PV_EMIT_OK(c, "test:stream_ticks:v1:requested", camp, rid, NULL, pl, n);
    struct pv_ev e;
    PV_EXPECT(c, &e, "test:stream_ticks:v1:started", rid);
}

static void cancel_ticks(struct nexus_client *c, int64_t camp, const char *rid)
{
    char cid[64];
    snprintf(cid, sizeof(cid), "cancel-%s", rid);
    PV_EMIT_OK(c, "test:stream_ticks:v1:cancel", camp, cid, rid, NULL, 0);
    await_terminal(c, rid, "test:stream_ticks:v1:cancelled");
}

/* ---- plain requests ----------------------------------------------------------------------- */

/* The exact lifecycle of test:echo and test:fail, for a campaign on each shard with the
 * requester on the other one: requested, started, success / failed, consecutive sequence
 * numbers, the request's id as correlation id, payload echoed; a second subscriber sees the
 * same; the requester, which also subscribes to the campaign, gets each event once. */
static void test_plain_lifecycle(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    struct nexus_client *stc = h_connect(&b, NULL);
    assert_non_null(stc);
    struct pv_stats before = pv_stats(stc);
    for (uint32_t owner = 0; owner < 2; owner++) {
        int64_t camp = h_campaign_on(owner, 2, 100 + 10 * owner);
        struct nexus_client *req = h_connect_on(&b, 1 - owner);
        struct nexus_client *sub = h_connect_on(&b, 1);
        struct nexus_client *alice = h_connect_on(&b, 0);
        assert_non_null(req);
        assert_non_null(sub);
        assert_non_null(alice);
        pv_subscribe(req, camp);
        pv_subscribe(sub, camp);
        /* A user filter: lifecycle events carry the request's metadata, so they match too. */
        assert_int_equal(nexus_subscribe_sync(alice, camp, NULL, 0, "alice", NULL, NULL, PV_T), 1);

        uint8_t buf[256];
        const uint8_t *pl;
        struct structpb_writer w;
        structpb_begin(&w, buf, sizeof(buf));
        structpb_add_string(&w, "greeting", "hello", 5);
        structpb_add_number(&w, "n", 42);
        int n = structpb_finish(&w, &pl);
        assert_true(n > 0);
        uint8_t md[128];
        int mdl = codec_metadata_build(md, sizeof(md), "alice", NULL);
        assert_true(mdl > 0);
        char rid[32], entity[32];
        snprintf(rid, sizeof(rid), "echo-%u", owner);
        snprintf(entity, sizeof(entity), "order-%u", owner);
        struct codec_emit_in in;
        nexus_emit_init(&in, "test:echo:v1:requested", camp, rid, pl, (size_t)n);
        in.entity_id.ptr = (const uint8_t *)entity;
        in.entity_id.len = (uint32_t)strlen(entity);
        in.metadata.ptr = md;
        in.metadata.len = (uint32_t)mdl;
        in.has_metadata = true;
        struct nexus_frame f;
        assert_int_equal(nexus_emit_sync(req, &in, &f, PV_T), 1);
        uint64_t s0 = f.u.event.sequence;
        assert_true(s0 > 0);
        struct nexus_client *watchers[3] = {req, sub, alice};
        for (int k = 0; k < 3; k++) {
            struct pv_ev e;
            PV_EXPECT(watchers[k], &e, "test:echo:v1:requested", NULL);
            assert_string_equal(e.id, rid);
            assert_int_equal(e.seq, s0);
            PV_EXPECT(watchers[k], &e, "test:echo:v1:started", rid);
            assert_int_equal(e.seq, s0 + 1);
            assert_int_equal(e.campaign, camp);
            assert_string_equal(e.entity, entity);
            assert_int_equal(e.md_len, (uint32_t)mdl);
            assert_memory_equal(e.md, md, (size_t)mdl);
            assert_int_equal(strlen(e.id), 36); /* a fresh UUID of its own */
            PV_EXPECT(watchers[k], &e, "test:echo:v1:success", rid);
            assert_int_equal(e.seq, s0 + 2);
            assert_int_equal(e.campaign, camp);
            assert_string_equal(e.entity, entity);
            assert_int_equal(e.md_len, (uint32_t)mdl);
            assert_string_equal(e.code, "");
            assert_int_equal(e.pl_len, (uint32_t)n);
            assert_memory_equal(e.pl, pl, (size_t)n);
        }

        snprintf(rid, sizeof(rid), "fail-%u", owner);
        s0 = PV_EMIT_OK(req, "test:fail:v1:requested", camp, rid, NULL, NULL, 0);
        for (int k = 0; k < 2; k++) {
            struct pv_ev e;
            char code[64];
            PV_EXPECT(watchers[k], &e, "test:fail:v1:requested", NULL);
            assert_string_equal(e.id, rid);
            assert_int_equal(e.seq, s0);
            PV_EXPECT(watchers[k], &e, "test:fail:v1:started", rid);
            assert_int_equal(e.seq, s0 + 1);
            PV_EXPECT(watchers[k], &e, "test:fail:v1:failed", rid);
            assert_int_equal(e.seq, s0 + 2);
            assert_string_equal(e.code, "test_failure");
            assert_string_equal(pv_strval(&e, "code", code, sizeof(code)), "test_failure");
        }
        /* Exactly one terminal each, and nothing twice: nothing more at all. */
        PV_QUIET(req, NULL, 250);
        PV_QUIET(sub, NULL, 50);
        PV_QUIET(alice, NULL, 50); /* test:fail's request had no user: not for alice */
        nexus_close(req);
        nexus_close(sub);
        nexus_close(alice);
    }

    /* A requester that does not subscribe gets started and success only, also on the owner's
     * own shard. */
    int64_t camp = h_campaign_on(0, 2, 300);
    struct nexus_client *req = h_connect_on(&b, 0);
    assert_non_null(req);
    PV_EMIT_OK(req, "test:echo:v1:requested", camp, "echo-plain", NULL, NULL, 0);
    struct pv_ev e;
    PV_EXPECT(req, &e, "test:echo:v1:started", "echo-plain");
    PV_EXPECT(req, &e, "test:echo:v1:success", "echo-plain");
    assert_false(e.has_pl && e.pl_len > 0);
    PV_QUIET(req, NULL, 200);

    /* No event id: the broker's (named in the ack) is the correlation id. */
    struct nexus_frame f;
    struct codec_emit_in in;
    nexus_emit_init(&in, "test:echo:v1:requested", camp, NULL, NULL, 0);
    assert_int_equal(nexus_emit_sync(req, &in, &f, PV_T), 1);
    char gen[64];
    pv_str(gen, sizeof(gen), f.u.event.event_id);
    assert_int_equal(strlen(gen), 36);
    PV_EXPECT(req, &e, "test:echo:v1:started", gen);
    PV_EXPECT(req, &e, "test:echo:v1:success", gen);
    /* The longest event id (256 bytes) comes back whole. */
    char longid[257];
    memset(longid, 'x', 256);
    longid[256] = 0;
    PV_EMIT_OK(req, "test:fail:v1:requested", camp, longid, NULL, NULL, 0);
    PV_EXPECT(req, &e, "test:fail:v1:started", longid);
    PV_EXPECT(req, &e, "test:fail:v1:failed", longid);
    PV_QUIET(req, NULL, 200);
    nexus_close(req);

    struct pv_stats after = pv_stats(stc);
    assert_int_equal(after.success - before.success, 4);
    assert_int_equal(after.failed - before.failed, 3);
    assert_int_equal(after.no_handler - before.no_handler, 0);
    assert_int_equal(after.cancelled - before.cancelled, 0);
    assert_int_equal(after.open_streams, 0);
    nexus_close(stc);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- streams ------------------------------------------------------------------------------ */

/* ≥ 3 heartbeats at 100 ms whose stream_count equals the stream events received so far and
 * whose age grows; stream events numbered 1, 2, 3… once each although the requester also
 * subscribes; subscribers see the stream in sequence but no heartbeats; a cancel from a
 * stranger is refused; the requester's cancel ends the stream with exactly one `cancelled`. */
static void test_stream_heartbeats_cancel(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp = h_campaign_on(1, 2, 200);
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    struct nexus_client *stranger = h_connect_on(&b, 0);
    assert_non_null(req);
    assert_non_null(sub);
    assert_non_null(stranger);
    pv_subscribe(req, camp);
    pv_subscribe(sub, camp);
    struct pv_stats before = pv_stats(stranger);

    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", 70, "heartbeat_ms", 100, NULL, 0);
    const char *rid = "ticks-1";
    uint64_t s0 = PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, rid, NULL, pl, n);
    struct pv_ev e;
    PV_EXPECT(req, &e, "test:stream_ticks:v1:requested", NULL);
    assert_int_equal(e.seq, s0);
    PV_EXPECT(req, &e, "test:stream_ticks:v1:started", rid);
    assert_int_equal(e.seq, s0 + 1);

    int heartbeats = 0;
    uint64_t streams = 0, last_seq = s0 + 1;
    double first_count = -1, last_count = -1, first_age = -1, last_age = -1;
    int64_t end = h_now_ms() + 10000;
    for (int i = 0; i < 1000 && (heartbeats < 3 || streams < 3 || last_count <= first_count); i++) {
        assert_true(h_now_ms() < end);
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        assert_string_equal(e.cid, rid);
        if (strcmp(e.type, "test:stream_ticks:v1:stream") == 0) {
            streams++;
            assert_int_equal(e.sseq, streams);
            assert_int_equal(e.seq, last_seq + 1);
            last_seq = e.seq;
            assert_true(pv_num(&e, "n") == (double)streams);
        } else if (strcmp(e.type, "test:stream_ticks:v1:heartbeat") == 0) {
            heartbeats++;
            double count = pv_num(&e, "stream_count"), age = pv_num(&e, "age_ms");
            /* Heartbeats and stream events travel the same path: the count is exact. */
            if (count != (double)streams)
                fail_msg("heartbeat %d: stream_count %.0f, %llu stream events received", heartbeats,
                         count, (unsigned long long)streams);
            assert_true(age >= last_age);
            assert_int_equal(e.seq, 0);        /* not in the campaign's sequence */
            assert_int_equal(e.sseq, streams); /* the stream count so far */
            if (first_count < 0) {
                first_count = count;
                first_age = age;
                assert_true(age >= 90); /* the first comes one interval after the start */
            }
            last_count = count;
            last_age = age;
        } else {
            fail_msg("unexpected %s during the stream", e.type);
        }
    }
    assert_true(heartbeats >= 3);
    assert_true(last_count > first_count);
    assert_true(last_age > first_age);

    /* The subscriber: the same stream, in sequence, without heartbeats. */
    PV_EXPECT(sub, &e, "test:stream_ticks:v1:requested", NULL);
    assert_int_equal(e.seq, s0);
    PV_EXPECT(sub, &e, "test:stream_ticks:v1:started", rid);
    assert_int_equal(e.seq, s0 + 1);
    uint64_t sub_streams = streams;
    for (uint64_t k = 1; k <= sub_streams; k++) {
        PV_EXPECT(sub, &e, "test:stream_ticks:v1:stream", rid);
        assert_int_equal(e.sseq, k);
        assert_int_equal(e.seq, s0 + 1 + k);
    }

    /* Only the requester may cancel its stream. */
    int r = pv_emit(stranger, "test:stream_ticks:v1:cancel", camp, "forged-cancel", rid, NULL, NULL,
                    0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    /* A cancel of another action naming it does not cancel it either. */
    r = pv_emit(req, "test:echo:v1:cancel", camp, "wrong-cancel", rid, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    /* ... and the stream goes on. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        assert_string_equal(e.cid, rid);
        assert_false(is_terminal(e.type));
        if (strcmp(e.type, "test:stream_ticks:v1:stream") == 0) {
            assert_int_equal(e.sseq, ++streams);
            break;
        }
    }

    PV_EMIT_OK(req, "test:stream_ticks:v1:cancel", camp, "cancel-1", rid, NULL, 0);
    bool saw_cancel = false;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        if (strcmp(e.type, "test:stream_ticks:v1:cancel") == 0) {
            assert_false(saw_cancel); /* once, as a subscriber */
            assert_string_equal(e.id, "cancel-1");
            saw_cancel = true;
            continue;
        }
        assert_string_equal(e.cid, rid);
        if (strcmp(e.type, "test:stream_ticks:v1:cancelled") == 0)
            break;
        assert_false(is_terminal(e.type));
        if (strcmp(e.type, "test:stream_ticks:v1:stream") == 0)
            assert_int_equal(e.sseq, ++streams);
    }
    assert_string_equal(e.type, "test:stream_ticks:v1:cancelled");
    assert_true(saw_cancel);
    /* Exactly one terminal: no more stream events (every 70 ms) nor heartbeats. */
    PV_QUIET(req, NULL, 350);
    /* A second cancel names no open request any more. */
    r = pv_emit(req, "test:stream_ticks:v1:cancel", camp, "cancel-again", rid, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");

    /* The subscriber sees the rest of the stream, the cancel, the cancelled, in sequence. */
    uint64_t next_seq = s0 + 2 + sub_streams;
    int cancelled = 0;
    for (int i = 0; i < 1000 && !cancelled; i++) {
        assert_int_equal(pv_next_event(sub, &e, PV_T), 1);
        assert_int_equal(e.seq, next_seq);
        next_seq++;
        if (strcmp(e.type, "test:stream_ticks:v1:cancelled") == 0) {
            assert_string_equal(e.cid, rid);
            cancelled++;
        } else if (strcmp(e.type, "test:stream_ticks:v1:cancel") != 0) {
            assert_string_equal(e.type, "test:stream_ticks:v1:stream");
        }
    }
    assert_int_equal(cancelled, 1);
    PV_QUIET(sub, NULL, 50);

    struct pv_stats after = pv_stats(stranger);
    assert_true(after.heartbeats - before.heartbeats >= (uint64_t)heartbeats);
    assert_int_equal(after.cancelled - before.cancelled, 1);
    assert_int_equal(after.timeout - before.timeout, 0);
    assert_int_equal(pv_wait_open_streams(stranger, 0, PV_T), 0);

    /* heartbeat_ms is clamped to at least 100 ms: 1 ms asked, about 6 heartbeats in 650 ms. */
    nexus_close(req);
    req = h_connect_on(&b, 0);
    assert_non_null(req);
    open_ticks(req, camp, "ticks-2", 60000, 1);
    int64_t t0 = h_now_ms();
    heartbeats = 0;
    for (int i = 0; i < 100000; i++) {
        int64_t left = t0 + 650 - h_now_ms();
        if (left <= 0)
            break;
        r = pv_next_event(req, &e, (int)left);
        if (r == 0)
            break;
        assert_int_equal(r, 1);
        assert_string_equal(e.type, "test:stream_ticks:v1:heartbeat");
        heartbeats++;
    }
    if (heartbeats < 3 || heartbeats > 9)
        fail_msg("heartbeat_ms 1: %d heartbeats in 650 ms (clamped to 100 ms: about 6)",
                 heartbeats);
    cancel_ticks(req, camp, "ticks-2");
    PV_QUIET(req, NULL, 250);
    nexus_close(req);
    nexus_close(sub);
    nexus_close(stranger);
    assert_int_equal(h_stop(&b), 0);
}

/* timeout_ms in the request (300 ms) → exactly one `timeout`; without it, --stream-timeout-ms
 * applies; a timeout_ms above that limit is cut to it; --heartbeat-ms sets the default
 * heartbeat interval. */
static void test_stream_timeout(void **state)
{
    (void)state;
    struct broker_proc b =
        H_START(2, "--test-handlers", "--stream-timeout-ms", "700", "--heartbeat-ms", "100", NULL);
    int64_t camp = h_campaign_on(0, 2, 400);
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *sub = h_connect_on(&b, 0);
    assert_non_null(req);
    assert_non_null(sub);
    pv_subscribe(sub, camp);
    struct pv_stats before = pv_stats(sub);

    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", 50, "timeout_ms", 300, NULL, 0);
    int64_t t0 = h_now_ms();
    PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, "to-1", NULL, pl, n);
    int64_t at[2];
    const char *rid1 = "to-1", *term = "test:stream_ticks:v1:timeout";
    await_terminals(req, &rid1, 1, &term, at);
    if (at[0] - t0 < 280 || at[0] - t0 > 4000)
        fail_msg("timeout_ms 300: the stream timed out after %lld ms", (long long)(at[0] - t0));
    PV_QUIET(req, NULL, 300);

    /* No timeout_ms: 700 ms (the flag); 100000: cut to 700 ms. */
    const char *rids[2] = {"to-2", "to-3"};
    const char *terms[2] = {term, term};
    n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", 100, NULL, 0, NULL, 0);
    t0 = h_now_ms();
    PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, rids[0], NULL, pl, n);
    uint8_t buf2[128];
    const uint8_t *pl2;
    int n2 =
        pv_payload(buf2, sizeof(buf2), &pl2, "interval_ms", 100, "timeout_ms", 100000, NULL, 0);
    PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, rids[1], NULL, pl2, n2);
    int hb[2] = {0, 0};
    await_terminals_hb(req, rids, 2, terms, at, hb);
    /* --heartbeat-ms 100 is the default interval: about 7 in 700 ms. */
    for (int k = 0; k < 2; k++)
        if (hb[k] < 3 || hb[k] > 12)
            fail_msg("%s: %d heartbeats in 700 ms with --heartbeat-ms 100", rids[k], hb[k]);
    for (int k = 0; k < 2; k++)
        if (at[k] - t0 < 650 || at[k] - t0 > 5000)
            fail_msg("%s timed out after %lld ms, --stream-timeout-ms is 700", rids[k],
                     (long long)(at[k] - t0));
    PV_QUIET(req, NULL, 300);

    /* The subscriber saw one timeout per stream, with the code. */
    const char *all[3] = {"to-1", "to-2", "to-3"};
    const char *terms3[3] = {term, term, term};
    await_terminals(sub, all, 3, terms3, NULL);
    PV_QUIET(sub, NULL, 50);

    struct pv_stats after = pv_stats(sub);
    assert_int_equal(after.timeout - before.timeout, 3);
    assert_int_equal(after.cancelled - before.cancelled, 0);
    assert_int_equal(pv_wait_open_streams(sub, 0, PV_T), 0);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* A requester that vanishes mid-stream: its streams (one per shard) end at once, the open-stream
 * gauge returns to 0, and the campaigns' subscribers see exactly one `cancelled` each. */
static void test_stream_requester_killed(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp[2] = {h_campaign_on(0, 2, 500), h_campaign_on(1, 2, 500)};
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(req);
    assert_non_null(sub);
    pv_subscribe(sub, camp[0]);
    pv_subscribe(sub, camp[1]);
    struct pv_stats before = pv_stats(sub);
    assert_int_equal(before.open_streams, 0);
    const char *rids[2] = {"kill-0", "kill-1"};
    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", 50, "heartbeat_ms", 100, NULL, 0);
    for (int k = 0; k < 2; k++)
        PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp[k], rids[k], NULL, pl, n);
    /* Both streams run: each has sent stream events to the requester. */
    int got[2] = {0, 0};
    for (int i = 0; i < 1000 && (got[0] < 2 || got[1] < 2); i++) {
        struct pv_ev e;
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        int k = strcmp(e.cid, rids[0]) == 0 ? 0 : 1;
        assert_string_equal(e.cid, rids[k]);
        assert_false(is_terminal(e.type));
        if (ends_with(e.type, ":stream"))
            got[k]++;
    }
    assert_true(got[0] >= 2 && got[1] >= 2);
    assert_int_equal(pv_stats(sub).open_streams, 2);
    nexus_close(req);
    uint64_t open = pv_wait_open_streams(sub, 0, 3000);
    if (open != 0)
        fail_msg("open_streams is %llu 3 s after the requester closed", (unsigned long long)open);
    const char *terms[2] = {"test:stream_ticks:v1:cancelled", "test:stream_ticks:v1:cancelled"};
    await_terminals(sub, rids, 2, terms, NULL);
    PV_QUIET(sub, NULL, 300);
    struct pv_stats after = pv_stats(sub);
    assert_int_equal(after.cancelled - before.cancelled, 2);
    assert_int_equal(after.open_streams, 0);
    /* The broker still serves requests on both shards. */
    req = h_connect_on(&b, 1);
    assert_non_null(req);
    for (int k = 0; k < 2; k++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "after-%d", k);
        PV_EMIT_OK(req, "test:echo:v1:requested", camp[k], rid, NULL, NULL, 0);
        await_terminal(req, rid, "test:echo:v1:success");
    }
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- no_handler --------------------------------------------------------------------------- */

/* No handler: with no matching subscription (none, a pattern that does not match, a user
 * filter that does not match) → `failed` with code no_handler at once; with a matching
 * subscription on another shard than the campaign's (per campaign, or firehose) → the request
 * reaches it as a plain event and the requester gets nothing. */
static void test_no_handler_both_ways(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp = h_campaign_on(1, 2, 600);
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *other = h_connect_on(&b, 0);
    struct nexus_client *watch = h_connect_on(&b, 0);
    assert_non_null(req);
    assert_non_null(other);
    assert_non_null(watch);
    struct pv_stats before = pv_stats(req);
    struct pv_ev e;
    char code[64];

    /* 1. Nobody: no_handler, immediately. */
    int64_t t0 = h_now_ms();
    PV_EMIT_OK(req, "billing:charge:v1:requested", camp, "nh-1", NULL, NULL, 0);
    PV_EXPECT(req, &e, "billing:charge:v1:failed", "nh-1");
    assert_string_equal(e.code, "no_handler");
    assert_string_equal(pv_strval(&e, "code", code, sizeof(code)), "no_handler");
    assert_true(h_now_ms() - t0 < 2000);
    PV_QUIET(req, "nh-1", 200);

    /* 2. Subscriptions that do not match: a pattern of another action, a user filter. */
    const char *refund[1] = {"billing:refund:*:*"};
    assert_int_equal(nexus_subscribe_sync(other, camp, refund, 1, NULL, NULL, NULL, PV_T), 1);
    assert_int_equal(nexus_subscribe_sync(other, camp, NULL, 0, "alice", NULL, NULL, PV_T), 1);
    int r = pv_emit(req, "billing:charge:v1:requested", camp, "nh-2", NULL, "bob", NULL, 0, &e);
    assert_int_equal(r, 1);
    PV_EXPECT(req, &e, "billing:charge:v1:failed", "nh-2");
    assert_string_equal(e.code, "no_handler");
    PV_QUIET(req, "nh-2", 200);

    /* 3. A matching subscription on shard 0 (the campaign lives on shard 1). */
    const char *charge[1] = {"billing:charge:*:requested"};
    assert_int_equal(nexus_subscribe_sync(watch, camp, charge, 1, NULL, NULL, NULL, PV_T), 1);
    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "amount", 12.5, NULL, 0, NULL, 0);
    uint64_t seq = PV_EMIT_OK(req, "billing:charge:v1:requested", camp, "nh-3", NULL, pl, n);
    PV_EXPECT(watch, &e, "billing:charge:v1:requested", NULL);
    assert_string_equal(e.id, "nh-3");
    assert_int_equal(e.seq, seq);
    assert_int_equal(e.campaign, camp);
    assert_int_equal(e.pl_len, (uint32_t)n);
    assert_memory_equal(e.pl, pl, (size_t)n);
    PV_QUIET(req, NULL, 300); /* no failed, no started: nothing */
    PV_QUIET(watch, NULL, 50);
    PV_QUIET(other, NULL, 50);

    /* 4. A firehose subscriber on shard 0 matches a campaign of shard 1 just as well. */
    int64_t camp2 = h_campaign_on(1, 2, camp + 1);
    struct nexus_client *fire = h_connect_on(&b, 0);
    assert_non_null(fire);
    const char *any_charge[1] = {"billing:charge:*:*"};
    assert_int_equal(nexus_subscribe_sync(fire, 0, any_charge, 1, NULL, NULL, NULL, PV_T), 1);
    seq = PV_EMIT_OK(req, "billing:charge:v1:requested", camp2, "nh-4", NULL, NULL, 0);
    PV_EXPECT(fire, &e, "billing:charge:v1:requested", NULL);
    assert_string_equal(e.id, "nh-4");
    assert_int_equal(e.campaign, camp2);
    PV_QUIET(req, NULL, 300);
    PV_QUIET(fire, NULL, 50);
    PV_QUIET(watch, NULL, 50);

    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.no_handler - before.no_handler, 2);
    assert_int_equal(after.failed - before.failed, 0);
    assert_int_equal(after.success - before.success, 0);
    nexus_close(fire);
    nexus_close(req);
    nexus_close(other);
    nexus_close(watch);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- bounds ------------------------------------------------------------------------------- */

/* --max-streams 2 (per shard): the third stream on a shard fails with limit_exceeded (and is
 * never started), a stream on the other shard and plain requests still go through, and a
 * cancelled stream frees its place. */
static void test_max_streams(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", "--max-streams", "2", NULL);
    int64_t camp = h_campaign_on(1, 2, 700);
    int64_t camp0 = h_campaign_on(0, 2, 700);
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *req2 = h_connect_on(&b, 1);
    assert_non_null(req);
    assert_non_null(req2);
    struct pv_stats before = pv_stats(req);
    open_ticks(req, camp, "ms-1", 60000, 60000);
    open_ticks(req2, camp, "ms-2", 60000, 60000);
    struct pv_ev e;
    char code[64];
    PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, "ms-3", NULL, NULL, 0);
    PV_EXPECT(req, &e, "test:stream_ticks:v1:failed", "ms-3");
    assert_string_equal(e.code, "limit_exceeded");
    assert_string_equal(pv_strval(&e, "code", code, sizeof(code)), "limit_exceeded");
    PV_QUIET(req, "ms-3", 200);
    /* Another shard has its own bound; plain requests are not streams. */
    open_ticks(req, camp0, "ms-4", 60000, 60000);
    PV_EMIT_OK(req, "test:echo:v1:requested", camp, "ms-echo", NULL, NULL, 0);
    await_terminal(req, "ms-echo", "test:echo:v1:success");
    struct pv_stats mid = pv_stats(req);
    assert_int_equal(mid.open_streams, 3);
    assert_int_equal(mid.failed - before.failed, 1);
    /* A cancelled stream frees its place. */
    cancel_ticks(req, camp, "ms-1");
    open_ticks(req, camp, "ms-5", 60000, 60000);
    cancel_ticks(req, camp, "ms-5");
    cancel_ticks(req2, camp, "ms-2");
    cancel_ticks(req, camp0, "ms-4");
    PV_QUIET(req, NULL, 200);
    PV_QUIET(req2, NULL, 50);
    assert_int_equal(pv_wait_open_streams(req, 0, PV_T), 0);
    nexus_close(req);
    nexus_close(req2);
    assert_int_equal(h_stop(&b), 0);
}

/* --max-requests-per-conn 2: a connection's third open request fails with limit_exceeded;
 * another connection is not affected; an ended request frees a place. */
static void test_max_requests_per_conn(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", "--max-requests-per-conn", "2", NULL);
    int64_t camp = h_campaign_on(0, 2, 800);
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *req2 = h_connect_on(&b, 1);
    assert_non_null(req);
    assert_non_null(req2);
    open_ticks(req, camp, "pc-1", 60000, 60000);
    open_ticks(req, camp, "pc-2", 60000, 60000);
    struct pv_ev e;
    PV_EMIT_OK(req, "test:stream_ticks:v1:requested", camp, "pc-3", NULL, NULL, 0);
    PV_EXPECT(req, &e, "test:stream_ticks:v1:failed", "pc-3");
    assert_string_equal(e.code, "limit_exceeded");
    PV_QUIET(req, "pc-3", 200);
    open_ticks(req2, camp, "pc-4", 60000, 60000);
    cancel_ticks(req, camp, "pc-1");
    PV_EMIT_OK(req, "test:echo:v1:requested", camp, "pc-5", NULL, NULL, 0);
    await_terminal(req, "pc-5", "test:echo:v1:success");
    cancel_ticks(req, camp, "pc-2");
    cancel_ticks(req2, camp, "pc-4");
    PV_QUIET(req, NULL, 200);
    PV_QUIET(req2, NULL, 50);
    nexus_close(req);
    nexus_close(req2);
    assert_int_equal(h_stop(&b), 0);
}

/* The broker's lifecycle states of an action with a handler cannot be emitted by clients:
 * invalid_event_type, nothing reaches subscribers, and an open stream is not disturbed. */
static void test_forged_lifecycle(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp = h_campaign_on(1, 2, 900);
    struct nexus_client *forger = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 1);
    assert_non_null(forger);
    assert_non_null(sub);
    assert_non_null(req);
    pv_subscribe(sub, camp);
    struct pv_ev e;
    const char *forged[] = {"test:echo:v1:success",       "test:echo:v1:failed",
                            "test:echo:v1:started",       "test:echo:v1:cancelled",
                            "test:echo:v1:timeout",       "test:stream_ticks:v1:heartbeat",
                            "test:stream_ticks:v1:stream"};
    for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
        int r = pv_emit(forger, forged[i], camp, NULL, NULL, NULL, NULL, 0, &e);
        PV_EXPECT_ERROR(&e, r, "invalid_event_type");
        /* Naming a request that does not exist changes nothing. */
        r = pv_emit(forger, forged[i], camp, NULL, "no-such-request", NULL, NULL, 0, &e);
        PV_EXPECT_ERROR(&e, r, "invalid_event_type");
    }
    /* An open stream: a stranger's success naming it is refused and the stream goes on. */
    open_ticks(req, camp, "fg-1", 50, 60000);
    int r = pv_emit(forger, "test:stream_ticks:v1:success", camp, NULL, "fg-1", NULL, NULL, 0, &e);
    if (r != -EPROTO || e.kind != CODEC_KIND_ERROR ||
        (strcmp(e.code, "invalid_event_type") != 0 && strcmp(e.code, "unknown_request") != 0))
        fail_msg("a stranger's success for an open stream: r=%d %s %s", r, e.code, e.msg);
    for (int k = 1; k <= 2; k++) {
        PV_EXPECT(req, &e, "test:stream_ticks:v1:stream", "fg-1");
        assert_int_equal(e.sseq, (uint64_t)k);
    }
    cancel_ticks(req, camp, "fg-1");
    /* The subscriber saw the real stream only. */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(pv_next_event(sub, &e, PV_T), 1);
        if (strcmp(e.type, "test:stream_ticks:v1:cancelled") == 0)
            break;
        if (strcmp(e.type, "test:stream_ticks:v1:requested") != 0 &&
            strcmp(e.type, "test:stream_ticks:v1:cancel") != 0)
            assert_string_equal(e.cid, "fg-1");
        assert_true(strcmp(e.type, "test:stream_ticks:v1:success") != 0);
    }
    PV_QUIET(sub, NULL, 200);
    /* Still serving. */
    PV_EMIT_OK(forger, "test:echo:v1:requested", camp, "fg-echo", NULL, NULL, 0);
    await_terminal(forger, "fg-echo", "test:echo:v1:success");
    PV_QUIET(forger, NULL, 100);
    nexus_close(forger);
    nexus_close(sub);
    nexus_close(req);
    assert_int_equal(h_stop(&b), 0);
}

/* SIGTERM while streams are open on both shards (their requesters still connected): the broker
 * exits 0 and, under ASan, frees everything the streams held. */
static void test_shutdown_with_open_streams(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", "--drain-ms", "500", NULL);
    struct nexus_client *req[2] = {h_connect_on(&b, 0), h_connect_on(&b, 1)};
    assert_non_null(req[0]);
    assert_non_null(req[1]);
    for (uint32_t k = 0; k < 2; k++) {
        for (uint32_t owner = 0; owner < 2; owner++) {
            char rid[32];
            snprintf(rid, sizeof(rid), "sd-%u-%u", k, owner);
            open_ticks(req[k], h_campaign_on(owner, 2, 1000), rid, 20, 100);
        }
    }
    assert_int_equal(pv_stats(req[0]).open_streams, 4);
    assert_int_equal(h_stop(&b), 0);
    nexus_close(req[0]);
    nexus_close(req[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_plain_lifecycle, h_teardown),
        cmocka_unit_test_teardown(test_stream_heartbeats_cancel, h_teardown),
        cmocka_unit_test_teardown(test_stream_timeout, h_teardown),
        cmocka_unit_test_teardown(test_stream_requester_killed, h_teardown),
        cmocka_unit_test_teardown(test_no_handler_both_ways, h_teardown),
        cmocka_unit_test_teardown(test_max_streams, h_teardown),
        cmocka_unit_test_teardown(test_max_requests_per_conn, h_teardown),
        cmocka_unit_test_teardown(test_forged_lifecycle, h_teardown),
        cmocka_unit_test_teardown(test_shutdown_with_open_streams, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
