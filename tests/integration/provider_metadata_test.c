// SPDX-License-Identifier: Apache-2.0
//
// Request metadata and amplification (docs/HANDLERS.md, "Request metadata"), against the real
// nexusd over real sockets, two shards, the requester on the shard that does not own the
// campaign: a stream opened with ~8 KiB of metadata gets `started` and its terminal event with
// that metadata byte for byte, while its heartbeats and `stream` events carry only
// global_context.user_id (small frames), which is still enough for user-filtered subscriptions
// to match; a request whose metadata is over PV_REQUEST_METADATA_BYTES_MAX (16 KiB) is refused
// with failed{limit_exceeded} (exactly at the bound it is served), and the broker keeps serving.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "provider_util.h"

/* The bound of handlers/provider.c, as docs/HANDLERS.md states it. */
#define MD_BOUND (16 * 1024)

/* One received event, with its whole metadata and its size on the wire (EventResponse bytes). */
struct mev {
    uint32_t kind;
    char type[EVTYPE_BYTES_MAX + 1];
    char id[300];
    char cid[300];
    char code[300];
    uint64_t seq;
    uint32_t body_len;
    bool has_md;
    uint32_t md_len;
    uint8_t *md;
};

static void mev_clear(struct mev *e)
{
    free(e->md);
    memset(e, 0, sizeof(*e));
}

static void mev_fill(struct mev *e, const struct nexus_frame *f)
{
    mev_clear(e);
    e->kind = f->kind;
    e->body_len = f->body.len;
    if (f->kind == CODEC_KIND_ERROR) {
        pv_str(e->code, sizeof(e->code), f->u.error.code);
        return;
    }
    if (f->kind != CODEC_KIND_EVENT)
        return;
    const struct codec_event_in *ev = &f->u.event;
    pv_str(e->type, sizeof(e->type), ev->event_type);
    pv_str(e->id, sizeof(e->id), ev->event_id);
    pv_str(e->cid, sizeof(e->cid), ev->correlation_id);
    pv_str(e->code, sizeof(e->code), ev->code);
    e->seq = ev->sequence;
    e->has_md = ev->has_metadata;
    e->md_len = ev->metadata.len;
    e->md = malloc(e->md_len + 1);
    assert_non_null(e->md);
    if (e->md_len)
        memcpy(e->md, ev->metadata.ptr, e->md_len);
}

/* The next event (acks and pongs skipped); fails on a timeout or an error frame. */
static void mev_next(struct nexus_client *c, struct mev *e)
{
    int64_t end = h_now_ms() + PV_T;
    for (int i = 0; i < 100000; i++) {
        int64_t left = end - h_now_ms();
        struct nexus_frame f;
        int r = nexus_recv(c, &f, left > 0 ? (int)left : 0);
        if (r != 1)
            fail_msg("no event in time (r=%d)", r);
        mev_fill(e, &f);
        if (e->kind == CODEC_KIND_ERROR)
            fail_msg("error frame %s", e->code);
        if (e->kind == CODEC_KIND_EVENT)
            return;
    }
    fail_msg("no event");
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* common.Metadata of exactly `total` bytes: global_context {user_id} (user NULL: none) and
 * `tags` strings (field 5) filling the rest. Returns total. */
static uint32_t md_build(uint8_t *out, uint32_t total, const char *user)
{
    uint8_t *p = out;
    if (user) {
        int n = codec_metadata_build(out, total, user, NULL);
        assert_true(n > 0);
        p += n;
    }
    uint8_t fill[1000];
    memset(fill, 't', sizeof(fill));
    for (int guard = 0; guard < 100000; guard++) {
        uint32_t left = total - (uint32_t)(p - out);
        if (left == 0)
            return total;
        assert_true(left >= 2); /* one more field always fits, since 62 leaves at least 2 */
        uint32_t len = 0;
        bool exact = false;
        for (uint32_t l = 0; l <= sizeof(fill) && l < left; l++)
            if (wire_len_field_len(5, l) == left) {
                len = l;
                exact = true;
                break;
            }
        if (!exact)
            len = left > 1100 ? sizeof(fill) : 60; /* a field of 1003 or 62 bytes, then again */
        p = wire_put_len_field(p, 5, fill, len);
    }
    fail_msg("md_build did not converge");
    return 0;
}

/* A stream request `action`:requested (e.g. test:stream_ticks:v1) on c with metadata md;
 * payload: samples (ticks) every interval_ms, heartbeats every 100 ms. */
static void emit_stream(struct nexus_client *c, const char *action, int64_t camp, const char *rid,
                        const uint8_t *md, uint32_t md_len, const char *interval_key,
                        double interval_ms)
{
    uint8_t buf[128];
    const uint8_t *pl;
    int n =
        pv_payload(buf, sizeof(buf), &pl, interval_key, interval_ms, "heartbeat_ms", 100, NULL, 0);
    char type[96];
    snprintf(type, sizeof(type), "%s:requested", action);
    struct codec_emit_in in;
    nexus_emit_init(&in, type, camp, rid, pl, (size_t)n);
    in.metadata.ptr = md;
    in.metadata.len = md_len;
    in.has_metadata = true;
    struct nexus_frame f;
    assert_int_equal(nexus_emit_sync(c, &in, &f, PV_T), 1);
}

static void expect_md(const struct mev *e, const uint8_t *md, uint32_t len)
{
    if (e->md_len != len)
        fail_msg("%s: metadata of %u bytes, expected %u", e->type, e->md_len, len);
    assert_true(e->has_md == (len > 0));
    if (len)
        assert_memory_equal(e->md, md, len);
}

static void emit_ticks(struct nexus_client *c, int64_t camp, const char *rid, const uint8_t *md,
                       uint32_t md_len)
{
    emit_stream(c, "test:stream_ticks:v1", camp, rid, md, md_len, "interval_ms", 40);
}

/* The requester's side of a stream of `action`: started with the full metadata, then
 * heartbeats and stream events, each small and carrying only the user id, until at least
 * min_hb heartbeats and min_st stream events. */
static void requester_side(struct nexus_client *req, const char *action, const char *rid,
                           const uint8_t *md, uint32_t md_len, const uint8_t *slim,
                           uint32_t slim_len, int min_hb, int min_st)
{
    char started[96], heartbeat[96], stream[96];
    snprintf(started, sizeof(started), "%s:started", action);
    snprintf(heartbeat, sizeof(heartbeat), "%s:heartbeat", action);
    snprintf(stream, sizeof(stream), "%s:stream", action);
    struct mev e = {0};
    mev_next(req, &e);
    assert_string_equal(e.type, started);
    assert_string_equal(e.cid, rid);
    expect_md(&e, md, md_len);
    assert_true(e.body_len > md_len);
    print_message("%s: started frame: %u bytes (metadata %u)\n", action, e.body_len, e.md_len);
    int hb = 0, st = 0;
    uint32_t hb_max = 0, st_max = 0;
    for (int i = 0; i < 1000 && (hb < min_hb || st < min_st); i++) {
        mev_next(req, &e);
        assert_string_equal(e.cid, rid);
        bool is_hb = strcmp(e.type, heartbeat) == 0;
        if (!is_hb && strcmp(e.type, stream) != 0)
            fail_msg("unexpected %s during the stream", e.type);
        if (e.body_len >= 1024)
            fail_msg("%s frame of %u bytes (metadata %u)", e.type, e.body_len, e.md_len);
        expect_md(&e, slim, slim_len);
        if (is_hb) {
            hb++;
            hb_max = e.body_len > hb_max ? e.body_len : hb_max;
        } else {
            st++;
            st_max = e.body_len > st_max ? e.body_len : st_max;
        }
    }
    assert_true(hb >= min_hb && st >= min_st);
    print_message("%s: largest heartbeat frame: %u bytes, largest stream frame: %u bytes\n", action,
                  hb_max, st_max);
    mev_clear(&e);
}

/* Reads c up to the request's terminal event, which must be `term` with metadata md; stream
 * events of it seen on the way must carry slim, and at least min_streams of them come. */
static void until_terminal(struct nexus_client *c, const char *rid, const char *term,
                           const uint8_t *md, uint32_t md_len, const uint8_t *slim,
                           uint32_t slim_len, int min_streams)
{
    struct mev e = {0};
    int streams = 0;
    for (int i = 0; i < 100000; i++) {
        mev_next(c, &e);
        if (strcmp(e.cid, rid) != 0)
            continue;
        if (has_suffix(e.type, ":stream") || has_suffix(e.type, ":heartbeat")) {
            assert_true(e.body_len < 1024);
            expect_md(&e, slim, slim_len);
            streams += has_suffix(e.type, ":stream");
            continue;
        }
        if (has_suffix(e.type, ":started"))
            continue;
        assert_string_equal(e.type, term);
        expect_md(&e, md, md_len);
        break;
    }
    assert_true(streams >= min_streams);
    mev_clear(&e);
}

/* ~8 KiB of metadata with user alice on a stream: started and cancelled carry all of it, the
 * heartbeats and stream events only global_context.user_id; a subscriber filtered on alice
 * still gets the stream events, one filtered on bob gets nothing of the request. */
static void test_stream_metadata_slim(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp = h_campaign_on(0, 2, 1200);
    struct nexus_client *req = h_connect_on(&b, 1);
    struct nexus_client *alice = h_connect_on(&b, 1);
    struct nexus_client *bob = h_connect_on(&b, 0);
    assert_non_null(req);
    assert_non_null(alice);
    assert_non_null(bob);
    assert_int_equal(nexus_subscribe_sync(alice, camp, NULL, 0, "alice", NULL, NULL, PV_T), 1);
    assert_int_equal(nexus_subscribe_sync(bob, camp, NULL, 0, "bob", NULL, NULL, PV_T), 1);
    static uint8_t md[8 * 1024];
    uint32_t md_len = md_build(md, sizeof(md), "alice");
    uint8_t slim[64];
    int sl = codec_metadata_build(slim, sizeof(slim), "alice", NULL);
    assert_true(sl > 0);

    const char *rid = "slim-1";
    emit_ticks(req, camp, rid, md, md_len);
    requester_side(req, "test:stream_ticks:v1", rid, md, md_len, slim, (uint32_t)sl, 3, 3);
    PV_EMIT_OK(req, "test:stream_ticks:v1:cancel", camp, "slim-cancel", rid, NULL, 0);
    until_terminal(req, rid, "test:stream_ticks:v1:cancelled", md, md_len, slim, (uint32_t)sl, 0);
    /* alice's filter matches the stream events through their slim metadata. */
    until_terminal(alice, rid, "test:stream_ticks:v1:cancelled", md, md_len, slim, (uint32_t)sl, 3);
    PV_QUIET(bob, NULL, 100);
    PV_QUIET(req, rid, 100);

    /* A request without a user id: its stream events carry no metadata at all. */
    static uint8_t anon[4096];
    uint32_t anon_len = md_build(anon, sizeof(anon), NULL);
    emit_ticks(req, camp, "slim-2", anon, anon_len);
    struct mev e = {0};
    mev_next(req, &e);
    assert_string_equal(e.type, "test:stream_ticks:v1:started");
    expect_md(&e, anon, anon_len);
    mev_next(req, &e);
    assert_string_equal(e.cid, "slim-2");
    expect_md(&e, NULL, 0);
    mev_clear(&e);
    PV_EMIT_OK(req, "test:stream_ticks:v1:cancel", camp, "slim-cancel-2", "slim-2", NULL, 0);
    until_terminal(req, "slim-2", "test:stream_ticks:v1:cancelled", anon, anon_len, NULL, 0, 0);
    nexus_close(req);
    nexus_close(alice);
    nexus_close(bob);
    assert_int_equal(h_stop(&b), 0);
}

/* The built-in streams of the campaign and media handlers, opened with ~8 KiB of metadata:
 * their pushes and samples (campaign:stream_state, campaign:stream_analytics,
 * media:stream_webrtc), the private replay of campaign:stream_events and the heartbeats of
 * all of them are small and carry only the user id; started and cancelled carry it all. */
static void test_builtin_streams_slim(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, NULL);
    int64_t camp = h_campaign_on(1, 2, 1400);
    struct nexus_client *req = h_connect_on(&b, 0);
    assert_non_null(req);
    static uint8_t md[8 * 1024];
    uint32_t md_len = md_build(md, sizeof(md), "alice");
    uint8_t slim[64];
    int sl = codec_metadata_build(slim, sizeof(slim), "alice", NULL);
    assert_true(sl > 0);
    /* An event in the campaign's history, for the stream_events replay. */
    PV_EMIT_OK(req, "app:note:v1:completed", camp, "note-1", NULL, NULL, 0);
    static const struct {
        const char *action, *interval_key;
        double interval_ms;
        int min_hb, min_st;
    } streams[] = {
        {"campaign:stream_state:v1", "min_interval_ms", 50, 2, 1},
        {"campaign:stream_analytics:v1", "interval_ms", 100, 2, 3},
        {"campaign:stream_events:v1", "from_sequence", 1, 2, 1},
        {"media:stream_webrtc:v1", "interval_ms", 500, 2, 2},
    };
    for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
        char rid[32], cancel_id[32], type[96];
        snprintf(rid, sizeof(rid), "builtin-%zu", i);
        snprintf(cancel_id, sizeof(cancel_id), "builtin-cancel-%zu", i);
        emit_stream(req, streams[i].action, camp, rid, md, md_len, streams[i].interval_key,
                    streams[i].interval_ms);
        requester_side(req, streams[i].action, rid, md, md_len, slim, (uint32_t)sl,
                       streams[i].min_hb, streams[i].min_st);
        snprintf(type, sizeof(type), "%s:cancel", streams[i].action);
        PV_EMIT_OK(req, type, camp, cancel_id, rid, NULL, 0);
        snprintf(type, sizeof(type), "%s:cancelled", streams[i].action);
        until_terminal(req, rid, type, md, md_len, slim, (uint32_t)sl, 0);
    }
    PV_QUIET(req, NULL, 100);
    nexus_close(req);
    assert_int_equal(h_stop(&b), 0);
}

/* Emits test:echo (or stream_ticks) with metadata md on c; returns the emit's result. */
static int emit_md(struct nexus_client *c, const char *type, int64_t camp, const char *rid,
                   const uint8_t *md, uint32_t md_len)
{
    struct codec_emit_in in;
    nexus_emit_init(&in, type, camp, rid, NULL, 0);
    in.metadata.ptr = md;
    in.metadata.len = md_len;
    in.has_metadata = true;
    struct nexus_frame f;
    return nexus_emit_sync(c, &in, &f, PV_T);
}

/* The next event about rid on c (correlated with it, or the request itself): must be `type`
 * (with code, when given). */
static void expect_ev(struct nexus_client *c, const char *rid, const char *type, const char *code,
                      struct mev *e)
{
    for (int i = 0; i < 100000; i++) {
        mev_next(c, e);
        if (strcmp(e->cid, rid) == 0 || (has_suffix(e->type, ":requested") && !strcmp(e->id, rid)))
            break;
    }
    if (strcmp(e->type, type) != 0)
        fail_msg("%s: expected %s, got %s (code %s)", rid, type, e->type, e->code);
    if (code)
        assert_string_equal(e->code, code);
}

/* Metadata at the bound is served; one byte more, or 900 KB, ends failed{limit_exceeded} with
 * no started (streams too, and no stream stays open), the refusal carrying only the user id;
 * the broker keeps serving. */
static void test_request_metadata_bound(void **state)
{
    (void)state;
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    int64_t camp = h_campaign_on(1, 2, 1300);
    struct nexus_client *req = h_connect_on(&b, 0);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(req);
    assert_non_null(sub);
    pv_subscribe(sub, camp);
    struct pv_stats before = pv_stats(req);
    static uint8_t md[1 << 20];
    uint8_t slim[64];
    int sl = codec_metadata_build(slim, sizeof(slim), "alice", NULL);
    assert_true(sl > 0);
    struct mev e = {0};

    uint32_t at = md_build(md, MD_BOUND, "alice");
    assert_int_equal(emit_md(req, "test:echo:v1:requested", camp, "md-at", md, at), 1);
    expect_ev(req, "md-at", "test:echo:v1:started", NULL, &e);
    expect_ev(req, "md-at", "test:echo:v1:success", NULL, &e);
    expect_md(&e, md, at);

    const uint32_t over[] = {MD_BOUND + 1, 900 * 1000};
    const char *const types[] = {"test:echo:v1", "test:stream_ticks:v1"};
    int refused = 0;
    for (int i = 0; i < 2; i++) {
        for (int t = 0; t < 2; t++) {
            char rid[32], type[64];
            snprintf(rid, sizeof(rid), "md-over-%d-%d", i, t);
            snprintf(type, sizeof(type), "%s:requested", types[t]);
            uint32_t len = md_build(md, over[i], "alice");
            assert_int_equal(emit_md(req, type, camp, rid, md, len), 1); /* acknowledged */
            snprintf(type, sizeof(type), "%s:failed", types[t]);
            expect_ev(req, rid, type, "limit_exceeded", &e);
            expect_md(&e, slim, (uint32_t)sl);
            /* The subscriber: the request itself (once, as emitted), then the refusal. */
            char req_type[64];
            snprintf(req_type, sizeof(req_type), "%s:requested", types[t]);
            expect_ev(sub, rid, req_type, NULL, &e);
            assert_int_equal(e.md_len, len);
            expect_ev(sub, rid, type, "limit_exceeded", &e);
            expect_md(&e, slim, (uint32_t)sl);
            refused++;
        }
    }
    /* An action without a handler (and no subscription on that campaign): no_handler, whose
     * failed does not repeat the oversized metadata either. */
    int64_t camp0 = h_campaign_on(0, 2, 1300);
    uint32_t len = md_build(md, MD_BOUND + 1, "alice");
    assert_int_equal(emit_md(req, "nobody:x:v1:requested", camp0, "md-none", md, len), 1);
    expect_ev(req, "md-none", "nobody:x:v1:failed", "no_handler", &e);
    expect_md(&e, slim, (uint32_t)sl);
    PV_QUIET(req, NULL, 200);
    PV_QUIET(sub, NULL, 50);
    struct pv_stats after = pv_stats(req);
    assert_int_equal(after.failed - before.failed, (uint64_t)refused);
    assert_int_equal(after.open_streams, 0);

    /* Still serving, on both shards. */
    PV_EMIT_OK(req, "test:echo:v1:requested", camp, "md-after", NULL, NULL, 0);
    expect_ev(req, "md-after", "test:echo:v1:started", NULL, &e);
    expect_ev(req, "md-after", "test:echo:v1:success", NULL, &e);
    PV_EMIT_OK(req, "test:echo:v1:requested", camp0, "md-after-0", NULL, NULL, 0);
    expect_ev(req, "md-after-0", "test:echo:v1:started", NULL, &e);
    expect_ev(req, "md-after-0", "test:echo:v1:success", NULL, &e);
    mev_clear(&e);
    assert_int_equal(h_ping(sub, PV_T), 1);
    nexus_close(req);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_stream_metadata_slim, h_teardown),
        cmocka_unit_test_teardown(test_builtin_streams_slim, h_teardown),
        cmocka_unit_test_teardown(test_request_metadata_bound, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
