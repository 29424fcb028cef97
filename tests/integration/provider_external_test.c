// SPDX-License-Identifier: Apache-2.0
//
// External handlers (docs/DESIGN.md §3.3, issue 4) against the real nexusd over real sockets, two
// shards: connections that register for actions receive requests as `requested` events, balanced
// between them; their success / failed / stream frames are relayed under the request's
// correlation id after the broker's `started`; a handler that disconnects turns the requests it
// held into failed/handler_lost and the survivor takes the new ones; answers for requests a
// handler does not hold get unknown_request; streaming handlers get broker heartbeats to the
// requester, cancel and timeout; --max-pending-per-handler and --request-timeout-ms;
// registrations limited to campaigns, and invalid ones.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "provider_util.h"

static const char *const WORK[1] = {"ext:work"};

/* The handler's answer: `state` (success, failed, stream) of the action for request rid. */
static void answer(struct nexus_client *h, const char *type, int64_t camp, const char *rid,
                   const uint8_t *pl, int pl_len)
{
    struct pv_ev e;
    int r = pv_emit(h, type, camp, NULL, rid, NULL, pl, pl_len, &e);
    if (r != 1)
        fail_msg("handler answer %s for %s: r=%d %s: %s", type, rid, r, e.code, e.msg);
}

/* The handler receives request rid as an event `requested` (id rid, campaign camp). */
static void expect_request(struct nexus_client *h, const char *type, int64_t camp, const char *rid)
{
    struct pv_ev e;
    PV_EXPECT(h, &e, type, NULL);
    assert_string_equal(e.id, rid);
    assert_int_equal(e.campaign, camp);
}

/* Two handlers on different shards share the load of requests for campaigns of both shards;
 * each request reaches exactly one of them, intact; the requester gets started then the
 * handler's success (its payload) or failed (its code); a subscriber sees the whole exchange
 * in sequence. */
static void test_balance_and_replies(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp[2] = {h_campaign_on(0, 2, 1000), h_campaign_on(1, 2, 1000)};
    struct nexus_client *h[2] = {h_connect_on(&b, 0), h_connect_on(&b, 1)};
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 0);
    assert_non_null(h[0]);
    assert_non_null(h[1]);
    assert_non_null(req);
    assert_non_null(sub);
    pv_register(h[0], WORK, 1, false, 0);
    pv_register(h[1], WORK, 1, false, 0);
    pv_subscribe(sub, camp[1]);
    struct pv_stats before = pv_stats(req);

    int served[2] = {0, 0};
    uint64_t s1 = 0; /* sequence of the last request in camp[1] */
    for (int i = 0; i < 8; i++) {
        int64_t c = camp[i % 2];
        char rid[32];
        snprintf(rid, sizeof(rid), "w-%d", i);
        uint8_t buf[128];
        const uint8_t *pl;
        int n = pv_payload(buf, sizeof(buf), &pl, "i", i, NULL, 0, NULL, 0);
        uint64_t seq = PV_EMIT_OK(req, "ext:work:v1:requested", c, rid, NULL, pl, n);
        if (i % 2)
            s1 = seq;
        struct pv_ev e;
        int k = pv_wait_any(h, 2, &e, PV_T);
        if (k < 0)
            fail_msg("request %s reached no handler", rid);
        assert_string_equal(e.type, "ext:work:v1:requested");
        assert_string_equal(e.id, rid);
        assert_int_equal(e.campaign, c);
        assert_int_equal(e.seq, seq);
        assert_int_equal(e.pl_len, (uint32_t)n);
        assert_memory_equal(e.pl, pl, (size_t)n);
        served[k]++;
        PV_EXPECT(req, &e, "ext:work:v1:started", rid);
        assert_int_equal(e.seq, seq + 1);
        /* The handler answers; the requester gets exactly that. */
        uint8_t rbuf[128];
        const uint8_t *rpl;
        int rn = pv_payload(rbuf, sizeof(rbuf), &rpl, "by", k, "i", i, NULL, 0);
        answer(h[k], "ext:work:v1:success", c, rid, rpl, rn);
        PV_EXPECT(req, &e, "ext:work:v1:success", rid);
        assert_int_equal(e.seq, seq + 2);
        assert_int_equal(e.campaign, c);
        assert_int_equal(e.pl_len, (uint32_t)rn);
        assert_memory_equal(e.pl, rpl, (size_t)rn);
        if (i % 2) {
            PV_EXPECT(sub, &e, "ext:work:v1:requested", NULL);
            assert_string_equal(e.id, rid);
            assert_int_equal(e.seq, seq);
            PV_EXPECT(sub, &e, "ext:work:v1:started", rid);
            assert_int_equal(e.seq, seq + 1);
            PV_EXPECT(sub, &e, "ext:work:v1:success", rid);
            assert_int_equal(e.seq, seq + 2);
        }
    }
    if (served[0] < 2 || served[1] < 2)
        fail_msg("8 requests, handler 0 served %d and handler 1 served %d: not balanced", served[0],
                 served[1]);

    /* A handler's failed: its data.code becomes the event's code. */
    struct structpb_writer w;
    uint8_t fbuf[128];
    const uint8_t *fpl;
    structpb_begin(&w, fbuf, sizeof(fbuf));
    structpb_add_string(&w, "code", "out_of_stock", 12);
    structpb_add_string(&w, "message", "none left", 9);
    int fn = structpb_finish(&w, &fpl);
    assert_true(fn > 0);
    uint64_t seq = PV_EMIT_OK(req, "ext:work:v1:requested", camp[1], "w-fail", NULL, NULL, 0);
    struct pv_ev e;
    int k = pv_wait_any(h, 2, &e, PV_T);
    assert_true(k >= 0);
    assert_string_equal(e.id, "w-fail");
    answer(h[k], "ext:work:v1:failed", camp[1], "w-fail", fpl, fn);
    PV_EXPECT(req, &e, "ext:work:v1:started", "w-fail");
    PV_EXPECT(req, &e, "ext:work:v1:failed", "w-fail");
    assert_int_equal(e.seq, seq + 2);
    assert_string_equal(e.code, "out_of_stock");
    assert_int_equal(e.pl_len, (uint32_t)fn);
    assert_memory_equal(e.pl, fpl, (size_t)fn);
    assert_true(s1 > 0);
    /* A failed without data.code: code handler_failed. */
    PV_EMIT_OK(req, "ext:work:v1:requested", camp[0], "w-fail2", NULL, NULL, 0);
    k = pv_wait_any(h, 2, &e, PV_T);
    assert_true(k >= 0);
    assert_string_equal(e.id, "w-fail2");
    answer(h[k], "ext:work:v1:failed", camp[0], "w-fail2", NULL, 0);
    PV_EXPECT(req, &e, "ext:work:v1:started", "w-fail2");
    PV_EXPECT(req, &e, "ext:work:v1:failed", "w-fail2");
    assert_string_equal(e.code, "handler_failed");

    /* Exactly one terminal each, no request delivered twice. */
    PV_QUIET(req, NULL, 250);
    PV_QUIET(h[0], NULL, 50);
    PV_QUIET(h[1], NULL, 50);
    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.success - before.success, 8);
    assert_int_equal(after.failed - before.failed, 2);
    assert_int_equal(after.handler_losses - before.handler_losses, 0);
    for (int i = 0; i < 2; i++)
        nexus_close(h[i]);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* One of two handlers disconnects while holding requests: each of those gets exactly one
 * failed/handler_lost (to the requester and to subscribers), the other handler's requests are
 * untouched and still answered, and new requests all go to the survivor. */
static void test_handler_lost(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp[2] = {h_campaign_on(0, 2, 1100), h_campaign_on(1, 2, 1100)};
    struct nexus_client *h[2] = {h_connect_on(&b, 0), h_connect_on(&b, 1)};
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *sub = h_connect_on(&b, 0);
    assert_non_null(h[0]);
    assert_non_null(h[1]);
    assert_non_null(req);
    assert_non_null(sub);
    pv_register(h[0], WORK, 1, false, 0);
    pv_register(h[1], WORK, 1, false, 0);
    pv_subscribe(sub, camp[0]);
    pv_subscribe(sub, camp[1]);
    struct pv_stats before = pv_stats(req);

    /* At least 6 requests, alternating between the campaigns, until handler 0 holds one of
     * each campaign: its loss is then known to every shard once all of its requests have
     * failed, and the new requests below cannot race with it. */
    enum { NMAX = 20 };
    int holder[NMAX];
    char rids[NMAX][32];
    int N = 0, lost = 0;
    bool h0_on[2] = {false, false};
    for (int i = 0; i < NMAX && (N < 6 || !h0_on[0] || !h0_on[1]); i++) {
        snprintf(rids[i], sizeof(rids[i]), "hl-%d", i);
        PV_EMIT_OK(req, "ext:work:v1:requested", camp[i % 2], rids[i], NULL, NULL, 0);
        struct pv_ev e;
        holder[i] = pv_wait_any(h, 2, &e, PV_T);
        assert_true(holder[i] >= 0);
        assert_string_equal(e.id, rids[i]);
        PV_EXPECT(req, &e, "ext:work:v1:started", rids[i]);
        if (holder[i] == 0) {
            h0_on[i % 2] = true;
            lost++;
        }
        N++;
    }
    if (!h0_on[0] || !h0_on[1] || lost == N)
        fail_msg("handler 0 holds %d of %d requests (campaign 0: %d, 1: %d): not balanced", lost, N,
                 h0_on[0], h0_on[1]);

    /* Handler 0 goes away. */
    nexus_close(h[0]);
    h[0] = NULL;
    bool failed[NMAX] = {false};
    for (int got = 0, i = 0; got < lost && i < 100; i++) {
        struct pv_ev e;
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        int k = -1;
        for (int j = 0; j < N; j++)
            if (strcmp(e.cid, rids[j]) == 0)
                k = j;
        if (k < 0 || holder[k] != 0 || failed[k])
            fail_msg("after the handler left: %s for %s (held by handler %d)", e.type, e.cid,
                     k >= 0 ? holder[k] : -1);
        assert_string_equal(e.type, "ext:work:v1:failed");
        assert_string_equal(e.code, "handler_lost");
        char code[64];
        assert_string_equal(pv_strval(&e, "code", code, sizeof(code)), "handler_lost");
        failed[k] = true;
        got++;
    }
    PV_QUIET(req, NULL, 300);
    struct pv_stats mid = pv_stats(req);
    assert_int_equal(mid.failed - before.failed, (uint64_t)lost);
    /* docs/OPERATIONS.md: requests failed with handler_lost. */
    assert_int_equal(mid.handler_losses - before.handler_losses, (uint64_t)lost);

    /* The survivor's requests are still open: it answers them. */
    for (int i = 0; i < N; i++) {
        if (holder[i] != 1)
            continue;
        answer(h[1], "ext:work:v1:success", camp[i % 2], rids[i], NULL, 0);
        struct pv_ev e;
        PV_EXPECT(req, &e, "ext:work:v1:success", rids[i]);
    }
    /* New requests, on both shards' campaigns, all go to the survivor. */
    for (int i = 0; i < 4; i++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "hl-new-%d", i);
        PV_EMIT_OK(req, "ext:work:v1:requested", camp[i % 2], rid, NULL, NULL, 0);
        expect_request(h[1], "ext:work:v1:requested", camp[i % 2], rid);
        struct pv_ev e;
        PV_EXPECT(req, &e, "ext:work:v1:started", rid);
        answer(h[1], "ext:work:v1:success", camp[i % 2], rid, NULL, 0);
        PV_EXPECT(req, &e, "ext:work:v1:success", rid);
    }
    PV_QUIET(req, NULL, 200);
    PV_QUIET(h[1], NULL, 50);

    /* The subscriber saw one terminal per request: handler_lost for handler 0's. */
    int terminals = 0, lost_seen = 0;
    for (int i = 0; i < 1000 && terminals < N + 4; i++) {
        struct pv_ev e;
        assert_int_equal(pv_next_event(sub, &e, PV_T), 1);
        if (strcmp(e.type, "ext:work:v1:failed") == 0) {
            assert_string_equal(e.code, "handler_lost");
            lost_seen++;
            terminals++;
        } else if (strcmp(e.type, "ext:work:v1:success") == 0) {
            terminals++;
        }
    }
    assert_int_equal(terminals, N + 4);
    assert_int_equal(lost_seen, lost);
    PV_QUIET(sub, NULL, 100);
    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.success - before.success, (uint64_t)(N - lost + 4));
    nexus_close(h[1]);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* Answers for requests a handler does not hold (another handler's, an unknown id, one already
 * answered) get an error unknown_request and change nothing; a connection that is no handler
 * cannot answer either; the broker keeps serving. */
static void test_unknown_request(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(1, 2, 1200);
    struct nexus_client *h[2] = {h_connect_on(&b, 0), h_connect_on(&b, 1)};
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *stranger = h_connect_on(&b, 1);
    assert_non_null(h[0]);
    assert_non_null(h[1]);
    assert_non_null(req);
    assert_non_null(stranger);
    pv_register(h[0], WORK, 1, false, 0);
    pv_register(h[1], WORK, 1, false, 0);

    PV_EMIT_OK(req, "ext:work:v1:requested", camp, "uk-1", NULL, NULL, 0);
    struct pv_ev e;
    int k = pv_wait_any(h, 2, &e, PV_T);
    assert_true(k >= 0);
    assert_string_equal(e.id, "uk-1");
    PV_EXPECT(req, &e, "ext:work:v1:started", "uk-1");

    /* The other handler answers it. */
    int r = pv_emit(h[1 - k], "ext:work:v1:success", camp, NULL, "uk-1", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    r = pv_emit(h[1 - k], "ext:work:v1:failed", camp, NULL, "uk-1", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    /* The holder names a request that does not exist. */
    r = pv_emit(h[k], "ext:work:v1:success", camp, NULL, "no-such", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    /* A connection that serves nothing answers it. */
    r = pv_emit(stranger, "ext:work:v1:success", camp, NULL, "uk-1", NULL, NULL, 0, &e);
    if (r != -EPROTO || e.kind != CODEC_KIND_ERROR ||
        (strcmp(e.code, "unknown_request") != 0 && strcmp(e.code, "invalid_event_type") != 0))
        fail_msg("a stranger's success for an open request: r=%d %s %s", r, e.code, e.msg);
    PV_QUIET(req, NULL, 200); /* uk-1 is still open: nothing reached the requester */

    /* The holder answers; answering again is an error. */
    answer(h[k], "ext:work:v1:success", camp, "uk-1", NULL, 0);
    PV_EXPECT(req, &e, "ext:work:v1:success", "uk-1");
    r = pv_emit(h[k], "ext:work:v1:success", camp, NULL, "uk-1", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    r = pv_emit(h[k], "ext:work:v1:stream", camp, NULL, "uk-1", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    PV_QUIET(req, NULL, 200);

    /* Still serving, with both handlers. */
    for (int i = 0; i < 2; i++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "uk-next-%d", i);
        PV_EMIT_OK(req, "ext:work:v1:requested", camp, rid, NULL, NULL, 0);
        k = pv_wait_any(h, 2, &e, PV_T);
        assert_true(k >= 0);
        assert_string_equal(e.id, rid);
        answer(h[k], "ext:work:v1:success", camp, rid, NULL, 0);
        PV_EXPECT(req, &e, "ext:work:v1:started", rid);
        PV_EXPECT(req, &e, "ext:work:v1:success", rid);
    }
    PV_QUIET(req, NULL, 200);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(h_ping(h[i], PV_T), 1);
        nexus_close(h[i]);
    }
    nexus_close(req);
    nexus_close(stranger);
    assert_int_equal(h_stop(&b), 0);
}

/* A streaming external handler (registered streaming): its stream events are relayed with
 * stream_seq 1, 2, 3, the broker sends heartbeats to the requester meanwhile, counting them,
 * and its success ends the stream (exactly once: no heartbeat after). An action named stream_*
 * is a stream although registered as not streaming; the requester cancels it and the handler
 * learns; a stream that outlives timeout_ms times out, and the handler learns too. */
static void test_external_stream(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(0, 2, 1300);
    struct nexus_client *h = h_connect_on(&b, 1);
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *sub = h_connect_on(&b, 0);
    assert_non_null(h);
    assert_non_null(req);
    assert_non_null(sub);
    const char *feed[1] = {"ext:feed"};
    const char *news[1] = {"ext:stream_news"};
    pv_register(h, feed, 1, true, 0);
    pv_register(h, news, 1, false, 0);
    pv_subscribe(sub, camp);
    struct pv_stats before = pv_stats(req);

    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "heartbeat_ms", 100, NULL, 0, NULL, 0);
    uint64_t s0 = PV_EMIT_OK(req, "ext:feed:v1:requested", camp, "feed-1", NULL, pl, n);
    expect_request(h, "ext:feed:v1:requested", camp, "feed-1");
    struct pv_ev e;
    PV_EXPECT(req, &e, "ext:feed:v1:started", "feed-1");
    int heartbeats = 0;
    for (uint64_t k = 1; k <= 3; k++) {
        uint8_t sbuf[64];
        const uint8_t *spl;
        int sn = pv_payload(sbuf, sizeof(sbuf), &spl, "k", (double)k, NULL, 0, NULL, 0);
        answer(h, "ext:feed:v1:stream", camp, "feed-1", spl, sn);
        /* The stream event (heartbeats may come first, counting k - 1)... */
        for (int i = 0; i < 100; i++) {
            assert_int_equal(pv_next_event(req, &e, PV_T), 1);
            assert_string_equal(e.cid, "feed-1");
            if (strcmp(e.type, "ext:feed:v1:stream") == 0)
                break;
            assert_string_equal(e.type, "ext:feed:v1:heartbeat");
            assert_true(pv_num(&e, "stream_count") == (double)(k - 1));
        }
        assert_string_equal(e.type, "ext:feed:v1:stream");
        assert_int_equal(e.sseq, k);
        assert_int_equal(e.seq, s0 + 1 + k);
        assert_int_equal(e.pl_len, (uint32_t)sn);
        assert_memory_equal(e.pl, spl, (size_t)sn);
        /* ... then a heartbeat that counts it. */
        PV_EXPECT(req, &e, "ext:feed:v1:heartbeat", "feed-1");
        if (pv_num(&e, "stream_count") != (double)k)
            fail_msg("heartbeat after stream event %llu counts %.0f", (unsigned long long)k,
                     pv_num(&e, "stream_count"));
        assert_true(pv_num(&e, "age_ms") >= 90.0 * (double)k);
        heartbeats++;
    }
    answer(h, "ext:feed:v1:success", camp, "feed-1", NULL, 0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        assert_string_equal(e.cid, "feed-1");
        if (strcmp(e.type, "ext:feed:v1:heartbeat") != 0)
            break;
        heartbeats++;
    }
    assert_string_equal(e.type, "ext:feed:v1:success");
    assert_int_equal(e.seq, s0 + 5);
    PV_QUIET(req, NULL, 300); /* heartbeats every 100 ms would show */
    PV_QUIET(h, NULL, 50);    /* the handler is not sent its own answers */
    /* The subscriber: the exchange in sequence, without heartbeats. */
    PV_EXPECT(sub, &e, "ext:feed:v1:requested", NULL);
    assert_int_equal(e.seq, s0);
    PV_EXPECT(sub, &e, "ext:feed:v1:started", "feed-1");
    for (uint64_t k = 1; k <= 3; k++) {
        PV_EXPECT(sub, &e, "ext:feed:v1:stream", "feed-1");
        assert_int_equal(e.sseq, k);
    }
    PV_EXPECT(sub, &e, "ext:feed:v1:success", "feed-1");
    PV_QUIET(sub, NULL, 50);
    struct pv_stats mid = pv_stats(req);
    assert_true(mid.heartbeats - before.heartbeats >= (uint64_t)heartbeats);
    assert_int_equal(mid.success - before.success, 1);
    assert_int_equal(mid.open_streams, 0);

    /* stream_news: a stream by the naming rule; the requester cancels. */
    PV_EMIT_OK(req, "ext:stream_news:v1:requested", camp, "news-1", NULL, pl, n);
    expect_request(h, "ext:stream_news:v1:requested", camp, "news-1");
    PV_EXPECT(req, &e, "ext:stream_news:v1:started", "news-1");
    PV_EXPECT(req, &e, "ext:stream_news:v1:heartbeat", "news-1");
    assert_int_equal(pv_stats(req).open_streams, 1);
    PV_EMIT_OK(req, "ext:stream_news:v1:cancel", camp, "news-cancel", "news-1", NULL, 0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        assert_string_equal(e.cid, "news-1");
        if (strcmp(e.type, "ext:stream_news:v1:heartbeat") != 0)
            break;
    }
    assert_string_equal(e.type, "ext:stream_news:v1:cancelled");
    PV_QUIET(req, NULL, 300);
    /* The handler learns: the cancel, then cancelled. */
    PV_EXPECT(h, &e, "ext:stream_news:v1:cancel", NULL);
    assert_string_equal(e.id, "news-cancel");
    PV_EXPECT(h, &e, "ext:stream_news:v1:cancelled", "news-1");
    int r = pv_emit(h, "ext:stream_news:v1:success", camp, NULL, "news-1", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    PV_QUIET(h, NULL, 50);
    PV_QUIET(req, NULL, 50);

    /* A stream that outlives its timeout_ms. */
    n = pv_payload(buf, sizeof(buf), &pl, "heartbeat_ms", 100, "timeout_ms", 300, NULL, 0);
    int64_t t0 = h_now_ms();
    PV_EMIT_OK(req, "ext:feed:v1:requested", camp, "feed-2", NULL, pl, n);
    expect_request(h, "ext:feed:v1:requested", camp, "feed-2");
    PV_EXPECT(req, &e, "ext:feed:v1:started", "feed-2");
    for (int i = 0; i < 100; i++) {
        assert_int_equal(pv_next_event(req, &e, PV_T), 1);
        assert_string_equal(e.cid, "feed-2");
        if (strcmp(e.type, "ext:feed:v1:heartbeat") != 0)
            break;
    }
    assert_string_equal(e.type, "ext:feed:v1:timeout");
    assert_true(h_now_ms() - t0 >= 280);
    PV_EXPECT(h, &e, "ext:feed:v1:timeout", "feed-2");
    PV_QUIET(req, NULL, 300);
    PV_QUIET(h, NULL, 50);
    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.cancelled - mid.cancelled, 1);
    assert_int_equal(after.timeout - mid.timeout, 1);
    assert_int_equal(after.open_streams, 0);

    /* The requester of a stream and of a plain request goes away: the handler learns
     * (cancelled for each), its late answers are unknown_request, nothing stays open. */
    struct nexus_client *req2 = h_connect_on(&b, 0);
    assert_non_null(req2);
    const char *work[1] = {"ext:plain"};
    pv_register(h, work, 1, false, 0);
    PV_EMIT_OK(req2, "ext:feed:v1:requested", camp, "feed-3", NULL, pl, n);
    expect_request(h, "ext:feed:v1:requested", camp, "feed-3");
    PV_EMIT_OK(req2, "ext:plain:v1:requested", camp, "plain-3", NULL, NULL, 0);
    expect_request(h, "ext:plain:v1:requested", camp, "plain-3");
    PV_EXPECT(req2, &e, "ext:feed:v1:started", "feed-3");
    assert_int_equal(pv_stats(req).open_streams, 1);
    nexus_close(req2);
    bool gone[2] = {false, false};
    for (int i = 0; i < 10 && !(gone[0] && gone[1]); i++) {
        assert_int_equal(pv_next_event(h, &e, PV_T), 1);
        if (strcmp(e.type, "ext:feed:v1:cancelled") == 0 && strcmp(e.cid, "feed-3") == 0 &&
            !gone[0])
            gone[0] = true;
        else if (strcmp(e.type, "ext:plain:v1:cancelled") == 0 && strcmp(e.cid, "plain-3") == 0 &&
                 !gone[1])
            gone[1] = true;
        else
            fail_msg("handler: unexpected %s (cid %s) after the requester left", e.type, e.cid);
    }
    r = pv_emit(h, "ext:feed:v1:stream", camp, NULL, "feed-3", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    r = pv_emit(h, "ext:plain:v1:success", camp, NULL, "plain-3", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    assert_int_equal(pv_wait_open_streams(req, 0, PV_T), 0);
    PV_QUIET(h, NULL, 100);
    assert_int_equal(pv_stats(req).cancelled - after.cancelled, 2);
    nexus_close(h);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* --max-pending-per-handler 1: while the only handler holds a request, the next fails with
 * handler_busy; --request-timeout-ms: an unanswered plain request times out (the handler is
 * told), a late answer is unknown_request, and the freed place takes new requests. */
static void test_pending_bound_and_request_timeout(void **state)
{
    (void)state;
    struct broker_proc b =
        H_START(2, "--max-pending-per-handler", "1", "--request-timeout-ms", "400", NULL);
    int64_t camp = h_campaign_on(1, 2, 1400);
    struct nexus_client *h = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 0);
    assert_non_null(h);
    assert_non_null(req);
    pv_register(h, WORK, 1, false, 0);
    struct pv_stats before = pv_stats(req);
    struct pv_ev e;
    char code[64];

    PV_EMIT_OK(req, "ext:work:v1:requested", camp, "pb-1", NULL, NULL, 0);
    expect_request(h, "ext:work:v1:requested", camp, "pb-1");
    PV_EXPECT(req, &e, "ext:work:v1:started", "pb-1");
    PV_EMIT_OK(req, "ext:work:v1:requested", camp, "pb-2", NULL, NULL, 0);
    PV_EXPECT(req, &e, "ext:work:v1:failed", "pb-2");
    assert_string_equal(e.code, "handler_busy");
    assert_string_equal(pv_strval(&e, "code", code, sizeof(code)), "handler_busy");
    PV_QUIET(h, NULL, 100); /* pb-2 never reached the handler */
    answer(h, "ext:work:v1:success", camp, "pb-1", NULL, 0);
    PV_EXPECT(req, &e, "ext:work:v1:success", "pb-1");

    /* The place is free again; this one is never answered. */
    int64_t t0 = h_now_ms();
    PV_EMIT_OK(req, "ext:work:v1:requested", camp, "pb-3", NULL, NULL, 0);
    expect_request(h, "ext:work:v1:requested", camp, "pb-3");
    PV_EXPECT(req, &e, "ext:work:v1:started", "pb-3");
    PV_EXPECT(req, &e, "ext:work:v1:timeout", "pb-3");
    int64_t took = h_now_ms() - t0;
    if (took < 380 || took > 4000)
        fail_msg("--request-timeout-ms 400: timed out after %lld ms", (long long)took);
    PV_EXPECT(h, &e, "ext:work:v1:timeout", "pb-3");
    int r = pv_emit(h, "ext:work:v1:success", camp, NULL, "pb-3", NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "unknown_request");
    PV_QUIET(req, NULL, 200);

    /* The timeout freed the place. */
    PV_EMIT_OK(req, "ext:work:v1:requested", camp, "pb-4", NULL, NULL, 0);
    expect_request(h, "ext:work:v1:requested", camp, "pb-4");
    answer(h, "ext:work:v1:success", camp, "pb-4", NULL, 0);
    PV_EXPECT(req, &e, "ext:work:v1:started", "pb-4");
    PV_EXPECT(req, &e, "ext:work:v1:success", "pb-4");
    PV_QUIET(req, NULL, 200);
    PV_QUIET(h, NULL, 50);
    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.failed - before.failed, 1);
    assert_int_equal(after.timeout - before.timeout, 1);
    assert_int_equal(after.success - before.success, 2);
    nexus_close(h);
    nexus_close(req);
    assert_int_equal(h_stop(&b), 0);
}

/* Registrations limited to a campaign serve only it; invalid actions are refused with an error
 * and the broker carries on; a client cannot forge the broker's states of an external action. */
static void test_registration(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp[2] = {h_campaign_on(0, 2, 1500), h_campaign_on(1, 2, 1500)};
    struct nexus_client *h = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *bad = h_connect_on(&b, 1);
    assert_non_null(h);
    assert_non_null(req);
    assert_non_null(bad);
    const char *scoped[1] = {"ext:scoped"};
    pv_register(h, scoped, 1, false, camp[1]);
    struct pv_ev e;

    PV_EMIT_OK(req, "ext:scoped:v1:requested", camp[1], "sc-1", NULL, NULL, 0);
    expect_request(h, "ext:scoped:v1:requested", camp[1], "sc-1");
    PV_EXPECT(req, &e, "ext:scoped:v1:started", "sc-1");
    answer(h, "ext:scoped:v1:success", camp[1], "sc-1", NULL, 0);
    PV_EXPECT(req, &e, "ext:scoped:v1:success", "sc-1");
    PV_EMIT_OK(req, "ext:scoped:v1:requested", camp[0], "sc-2", NULL, NULL, 0);
    PV_EXPECT(req, &e, "ext:scoped:v1:failed", "sc-2");
    assert_string_equal(e.code, "no_handler");
    PV_QUIET(h, NULL, 100);
    PV_QUIET(req, NULL, 100);

    /* A client forging the broker's states of a handled action. */
    int r = pv_emit(bad, "ext:scoped:v1:started", camp[1], NULL, NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "invalid_event_type");
    r = pv_emit(bad, "ext:scoped:v1:success", camp[1], NULL, NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "invalid_event_type");

    /* Invalid registrations. */
    const char *invalid[] = {"nocolon", "Bad:Case", "a:b:c", ":x", "x:"};
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        struct codec_register *reg = calloc(1, sizeof(*reg));
        assert_non_null(reg);
        reg->count = 1;
        reg->specs[0].action.ptr = (const uint8_t *)invalid[i];
        reg->specs[0].action.len = (uint32_t)strlen(invalid[i]);
        uint64_t corr = nexus_next_correlation(bad);
        assert_int_equal(nexus_send_register(bad, corr, reg), 0);
        free(reg);
        struct nexus_frame f;
        assert_int_equal(nexus_wait_reply(bad, corr, &f, PV_T), 1);
        pv_fill(&e, &f);
        if (e.kind != CODEC_KIND_ERROR || strcmp(e.code, "invalid_event_type") != 0)
            fail_msg("registering '%s': frame kind %u %s", invalid[i], e.kind, e.code);
        assert_true(strlen(e.msg) > 0);
    }
    /* The refused connection serves nothing and the broker goes on. */
    PV_EMIT_OK(req, "ext:scoped:v1:requested", camp[1], "sc-3", NULL, NULL, 0);
    expect_request(h, "ext:scoped:v1:requested", camp[1], "sc-3");
    answer(h, "ext:scoped:v1:success", camp[1], "sc-3", NULL, 0);
    PV_EXPECT(req, &e, "ext:scoped:v1:started", "sc-3");
    PV_EXPECT(req, &e, "ext:scoped:v1:success", "sc-3");
    PV_QUIET(bad, NULL, 100);
    PV_QUIET(req, NULL, 100);
    nexus_close(h);
    nexus_close(req);
    nexus_close(bad);
    assert_int_equal(h_stop(&b), 0);
}

/* Sends a raw RegisterHandlers body and returns the reply's error code (or "" for an ack). */
static void register_raw(struct nexus_client *c, const uint8_t *body, size_t len, struct pv_ev *e)
{
    uint8_t *frame = malloc(len + 32);
    assert_non_null(frame);
    uint64_t corr = nexus_next_correlation(c);
    size_t fl = h_raw_frame(frame, corr, CODEC_KIND_REGISTER, body, len);
    assert_int_equal(nexus_send_raw(c, frame, fl), 0);
    free(frame);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(c, corr, &f, PV_T), 1);
    pv_fill(e, &f);
}

/* 64 actions per frame and 64 campaigns per action at most: one more is limit_exceeded, and
 * nothing of the frame is registered. */
static void test_registration_bounds(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(1, 2, 1600);
    struct nexus_client *h = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 1);
    assert_non_null(h);
    assert_non_null(req);
    uint8_t body[8192], spec[1024];
    struct pv_ev e;
    for (int actions = 64; actions <= 65; actions++) {
        uint8_t *p = body;
        for (int i = 0; i < actions; i++) {
            char name[64];
            snprintf(name, sizeof(name), "many%d:act%d", actions, i);
            uint8_t *q = wire_put_len_field(spec, 1, name, strlen(name));
            p = wire_put_len_field(p, 1, spec, (size_t)(q - spec));
        }
        register_raw(h, body, (size_t)(p - body), &e);
        if (actions == 64) {
            if (e.kind != CODEC_KIND_REGISTER_ACK || e.registered != 64)
                fail_msg("64 actions: kind %u registered %u %s", e.kind, e.registered, e.code);
        } else {
            if (e.kind != CODEC_KIND_ERROR || strcmp(e.code, "limit_exceeded") != 0)
                fail_msg("65 actions: kind %u %s", e.kind, e.code);
        }
    }
    for (int ncamp = 64; ncamp <= 65; ncamp++) {
        uint8_t packed[1024], *pp = packed;
        for (int i = 0; i < ncamp; i++)
            pp = wire_put_varint(pp, (uint64_t)(camp + i));
        char name[64];
        snprintf(name, sizeof(name), "camps:c%d", ncamp);
        uint8_t *q = wire_put_len_field(spec, 1, name, strlen(name));
        q = wire_put_len_field(q, 3, packed, (size_t)(pp - packed));
        uint8_t *p = wire_put_len_field(body, 1, spec, (size_t)(q - spec));
        register_raw(h, body, (size_t)(p - body), &e);
        if (ncamp == 64) {
            if (e.kind != CODEC_KIND_REGISTER_ACK || e.registered != 1)
                fail_msg("64 campaigns: kind %u registered %u %s", e.kind, e.registered, e.code);
        } else {
            if (e.kind != CODEC_KIND_ERROR || strcmp(e.code, "limit_exceeded") != 0)
                fail_msg("65 campaigns: kind %u %s", e.kind, e.code);
        }
    }
    /* What was acknowledged serves; what was refused does not. */
    PV_EMIT_OK(req, "camps:c64:v1:requested", camp, "bd-1", NULL, NULL, 0);
    expect_request(h, "camps:c64:v1:requested", camp, "bd-1");
    answer(h, "camps:c64:v1:success", camp, "bd-1", NULL, 0);
    PV_EXPECT(req, &e, "camps:c64:v1:started", "bd-1");
    PV_EXPECT(req, &e, "camps:c64:v1:success", "bd-1");
    PV_EMIT_OK(req, "camps:c65:v1:requested", camp, "bd-2", NULL, NULL, 0);
    PV_EXPECT(req, &e, "camps:c65:v1:failed", "bd-2");
    assert_string_equal(e.code, "no_handler");
    PV_QUIET(h, NULL, 100);
    PV_QUIET(req, NULL, 100);
    nexus_close(h);
    nexus_close(req);
    assert_int_equal(h_stop(&b), 0);
}

/* When the only handler of an action goes away, the action has no handler any more: requests
 * get no_handler (or reach subscribers), and clients may emit its other states again, as for
 * any action without a handler (services that answer on their own). */
static void test_handler_gone_frees_action(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(1, 2, 1700);
    struct nexus_client *h = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(h);
    assert_non_null(req);
    assert_non_null(sub);
    const char *gone[1] = {"ext:gone"};
    pv_register(h, gone, 1, false, 0);
    struct pv_ev e;
    int r = pv_emit(req, "ext:gone:v1:success", camp, NULL, NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "invalid_event_type"); /* while it has a handler */
    nexus_close(h);
    /* The owner learns asynchronously: poll with requests until no_handler (bounded). */
    bool freed = false;
    for (int i = 0; i < 100 && !freed; i++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "gone-%d", i);
        PV_EMIT_OK(req, "ext:gone:v1:requested", camp, rid, NULL, NULL, 0);
        r = pv_next_event(req, &e, PV_T);
        assert_int_equal(r, 1);
        assert_string_equal(e.cid, rid);
        if (strcmp(e.type, "ext:gone:v1:failed") == 0 && strcmp(e.code, "no_handler") == 0) {
            freed = true;
        } else {
            /* Sent to the leaving handler: started, then handler_lost. */
            assert_string_equal(e.type, "ext:gone:v1:started");
            PV_EXPECT(req, &e, "ext:gone:v1:failed", rid);
            assert_string_equal(e.code, "handler_lost");
            usleep(10000);
        }
    }
    assert_true(freed);
    PV_QUIET(req, NULL, 100);
    /* Plain events of the action's other states are accepted and delivered again. */
    const char *pat[1] = {"ext:gone:*:*"};
    assert_int_equal(nexus_subscribe_sync(sub, camp, pat, 1, NULL, NULL, NULL, PV_T), 1);
    r = pv_emit(req, "ext:gone:v1:success", camp, "plain-success", NULL, NULL, NULL, 0, &e);
    if (r != 1)
        fail_msg("ext:gone:v1:success after its only handler left: r=%d %s: %s", r, e.code, e.msg);
    PV_EXPECT(sub, &e, "ext:gone:v1:success", NULL);
    assert_string_equal(e.id, "plain-success");
    /* And a request now reaches the subscriber as a plain event. */
    PV_EMIT_OK(req, "ext:gone:v1:requested", camp, "gone-sub", NULL, NULL, 0);
    PV_EXPECT(sub, &e, "ext:gone:v1:requested", NULL);
    assert_string_equal(e.id, "gone-sub");
    PV_QUIET(req, NULL, 200);
    PV_QUIET(sub, NULL, 50);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* SIGTERM while a handler holds a plain request and a stream, each requested from the other
 * shard: the broker exits 0 and, under ASan, frees the registrations and requests. */
static void test_shutdown_with_held_requests(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--drain-ms", "500", NULL);
    struct nexus_client *h = h_connect_on(&b, 0);
    struct nexus_client *req = h_connect_on(&b, 1);
    assert_non_null(h);
    assert_non_null(req);
    const char *acts[2] = {"ext:work", "ext:stream_sd"};
    pv_register(h, acts, 2, false, 0);
    for (uint32_t owner = 0; owner < 2; owner++) {
        int64_t camp = h_campaign_on(owner, 2, 1800);
        char rid[32];
        snprintf(rid, sizeof(rid), "sdw-%u", owner);
        PV_EMIT_OK(req, "ext:work:v1:requested", camp, rid, NULL, NULL, 0);
        expect_request(h, "ext:work:v1:requested", camp, rid);
        snprintf(rid, sizeof(rid), "sds-%u", owner);
        PV_EMIT_OK(req, "ext:stream_sd:v1:requested", camp, rid, NULL, NULL, 0);
        expect_request(h, "ext:stream_sd:v1:requested", camp, rid);
        answer(h, "ext:stream_sd:v1:stream", camp, rid, NULL, 0);
    }
    assert_int_equal(pv_stats(req).open_streams, 2);
    assert_int_equal(h_stop(&b), 0);
    nexus_close(h);
    nexus_close(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_balance_and_replies, h_teardown),
        cmocka_unit_test_teardown(test_handler_lost, h_teardown),
        cmocka_unit_test_teardown(test_unknown_request, h_teardown),
        cmocka_unit_test_teardown(test_external_stream, h_teardown),
        cmocka_unit_test_teardown(test_pending_bound_and_request_timeout, h_teardown),
        cmocka_unit_test_teardown(test_registration, h_teardown),
        cmocka_unit_test_teardown(test_registration_bounds, h_teardown),
        cmocka_unit_test_teardown(test_handler_gone_frees_action, h_teardown),
        cmocka_unit_test_teardown(test_shutdown_with_held_requests, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
