// SPDX-License-Identifier: Apache-2.0
//
// The built-in media rooms (docs/DESIGN.md §4.2) against the real nexusd over real sockets, 3
// shards, the room's campaign on one shard and the peers' connections on all three: three peers
// join and hear about each other, signal each other privately (the target only; a campaign
// subscriber never sees a signal), share room state, one disconnects abruptly and the others
// get peer_left, the room is freed when the last leaves (asserted through the stats frame and
// a stream_rooms watcher), stream_peers sees signal activity without its content,
// stream_webrtc samples statistics; bad payloads fail with a code naming the field.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "handlers_util.h"

#define SHARDS 3

static int join(struct nexus_client *c, int64_t camp, const char *ctx, const char *peer,
                const char *id, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", ctx);
    if (peer)
        hs_put_cstring(&w, "peer_id", peer);
    hp_end(&w);
    int r = h_request(c, "media:join_room:v1:requested", camp, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

static int signal_to(struct nexus_client *c, int64_t camp, const char *ctx, const char *target,
                     const char *type, const char *body, const char *id, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", ctx);
    hs_put_cstring(&w, "target_peer_id", target);
    hs_put_struct_open(&w, "signal");
    hs_put_cstring(&w, "type", type);
    hs_put_cstring(&w, "sdp", body);
    hs_end(&w);
    hp_end(&w);
    int r = h_request(c, "media:signal:v1:requested", camp, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

/* The next room event for a member (correlated with its join request): action and peer. */
static void expect_room_event(struct nexus_client *c, const char *join_id, const char *action,
                              const char *peer, struct hev *e)
{
    char a[32], p[64];
    assert_int_equal(h_next_for(c, join_id, e, HT), 1);
    assert_string_equal(e->type, "media:stream_rooms:v1:stream");
    assert_int_equal(e->seq, 0); /* private: outside the campaign sequence */
    assert_string_equal(hp_str(e, "action", a, sizeof(a)), action);
    assert_string_equal(hp_str(e, "peer_id", p, sizeof(p)), peer);
}

/* Nothing more arrives on c for join_id (a ping is the barrier). */
static void expect_quiet(struct nexus_client *c, const char *join_id)
{
    usleep(100000);
    assert_int_equal(h_ping(c, HT), 1);
    struct nexus_frame f;
    while (nexus_recv(c, &f, 50) == 1) {
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        struct hev e = {0};
        hev_fill(&e, &f);
        assert_string_not_equal(e.cid, join_id);
        hev_clear(&e);
    }
}

/* The next stream event of a watcher, skipping heartbeats: its action. */
static const char *watch_next(struct nexus_client *c, const char *id, struct hev *e, char *a,
                              size_t cap)
{
    do {
        assert_int_equal(h_next_for(c, id, e, HT), 1);
    } while (!hev_state(e, "stream"));
    return hp_str(e, "action", a, cap);
}

/* The scenario of test_three_peers: a broker, the room's campaign, three peers, two watchers,
 * a subscriber and a client for stats, phase by phase. */
struct scene {
    struct broker_proc b;
    int64_t camp;
    struct nexus_client *pa, *pb, *pc, *stats, *rooms_w, *peers_w, *sub;
    struct hev e;
    char a[64];
};

#define STAT(sc, f) h_stat_sum((sc)->stats, offsetof(struct codec_shard_stats, f))

/* Watchers and a plain subscriber to everything of the campaign. */
static void scene_start(struct scene *sc)
{
    sc->b = H_START(SHARDS, NULL);
    sc->camp = h_campaign_on(1, SHARDS, 4000);
    sc->pa = h_connect_on(&sc->b, 0);
    sc->pb = h_connect_on(&sc->b, 1);
    sc->pc = h_connect_on(&sc->b, 2);
    sc->stats = h_connect(&sc->b, NULL);
    sc->rooms_w = h_connect_on(&sc->b, 2);
    sc->peers_w = h_connect_on(&sc->b, 0);
    sc->sub = h_connect_on(&sc->b, 0);
    assert_true(sc->pa && sc->pb && sc->pc && sc->stats && sc->rooms_w && sc->peers_w && sc->sub);
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "media:stream_rooms:v1:requested", sc->camp, "wr", NULL, 0);
    assert_int_equal(nexus_emit_sync(sc->rooms_w, &in, &f, HT), 1);
    assert_string_equal(watch_next(sc->rooms_w, "wr", &sc->e, sc->a, sizeof(sc->a)), "snapshot");
    assert_int_equal(hp_num(&sc->e, "room_count"), 0);
    nexus_emit_init(&in, "media:stream_peers:v1:requested", sc->camp, "wp", NULL, 0);
    assert_int_equal(nexus_emit_sync(sc->peers_w, &in, &f, HT), 1);
    assert_string_equal(watch_next(sc->peers_w, "wp", &sc->e, sc->a, sizeof(sc->a)), "snapshot");
    uint64_t sid;
    assert_int_equal(nexus_subscribe_sync(sc->sub, sc->camp, NULL, 0, NULL, &sid, &f, HT), 1);
}

/* Three peers join; each hears of the later ones; the room watcher sees it all. */
static void scene_join(struct scene *sc)
{
    struct hev *e = &sc->e;
    assert_int_equal(join(sc->pa, sc->camp, "room-1", "a", "ja", e), 1);
    assert_true(hev_state(e, "success"));
    assert_int_equal(hp_num(e, "peer_count"), 1);
    assert_int_equal(join(sc->pb, sc->camp, "room-1", "b", "jb", e), 1);
    assert_int_equal(hp_num(e, "peer_count"), 2);
    struct structpb_value peers;
    assert_int_equal(hp_get(e, "peers", &peers), 1);
    assert_int_equal(peers.kind, STRUCTPB_LIST);
    expect_room_event(sc->pa, "ja", "peer_joined", "b", e);
    assert_int_equal(join(sc->pc, sc->camp, "room-1", "c", "jc", e), 1);
    assert_int_equal(hp_num(e, "peer_count"), 3);
    expect_room_event(sc->pa, "ja", "peer_joined", "c", e);
    expect_room_event(sc->pb, "jb", "peer_joined", "c", e);
    assert_int_equal(STAT(sc, media_rooms), 1);
    assert_int_equal(STAT(sc, media_peers), 3);
    assert_string_equal(watch_next(sc->rooms_w, "wr", e, sc->a, sizeof(sc->a)), "room_created");
    for (int i = 0; i < 3; i++)
        assert_string_equal(watch_next(sc->rooms_w, "wr", e, sc->a, sizeof(sc->a)), "peer_joined");
}

/* Signalling: each to one other peer, which alone receives it. */
static void scene_signal(struct scene *sc)
{
    struct hev *e = &sc->e;
    assert_int_equal(signal_to(sc->pa, sc->camp, "room-1", "b", "offer", "v=0 offer-a-b", "s1", e),
                     1);
    assert_true(hev_state(e, "success"));
    assert_int_equal(e->seq, 0); /* the exchange is private */
    expect_room_event(sc->pb, "jb", "signal", "a", e);
    struct structpb_value sig, sdp;
    assert_int_equal(hp_get(e, "signal", &sig), 1);
    assert_int_equal(structpb_struct_get(sig.ptr, sig.len, "sdp", &sdp), 1);
    assert_int_equal(sdp.len, strlen("v=0 offer-a-b"));
    assert_int_equal(
        signal_to(sc->pb, sc->camp, "room-1", "a", "answer", "v=0 answer-b-a", "s2", e), 1);
    expect_room_event(sc->pa, "ja", "signal", "b", e);
    assert_int_equal(signal_to(sc->pc, sc->camp, "room-1", "a", "candidate", "cand-c-a", "s3", e),
                     1);
    expect_room_event(sc->pa, "ja", "signal", "c", e);
    expect_quiet(sc->pc, "jc"); /* c saw none of the signals not meant for it */
    /* An unknown target: failed to the sender. */
    assert_int_equal(signal_to(sc->pa, sc->camp, "room-1", "zed", "offer", "x", "s4", e), 1);
    assert_true(hev_state(e, "failed"));
    assert_string_equal(e->code, "unknown_target_peer_id");
    /* Peer watchers see that signals went, not what they said. */
    int signals = 0;
    while (signals < 3) {
        if (strcmp(watch_next(sc->peers_w, "wp", e, sc->a, sizeof(sc->a)), "signal") != 0)
            continue;
        signals++;
        assert_int_equal(hp_get(e, "signal", &sig), 0);
        char st[32];
        assert_true(strlen(hp_str(e, "signal_type", st, sizeof(st))) > 0);
    }
}

/* Room state is merged and told to the others; c drops its connection without a word. */
static void scene_state_and_drop(struct scene *sc)
{
    struct hev *e = &sc->e;
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "room-1");
    hs_put_struct_open(&w, "state");
    hs_put_cstring(&w, "presenter", "b");
    hs_end(&w);
    hp_end(&w);
    assert_int_equal(
        h_request(sc->pb, "media:room_state:v1:requested", sc->camp, "rs1", w.buf, w.len, e), 1);
    hs_free(&w);
    assert_true(hev_state(e, "success"));
    expect_room_event(sc->pa, "ja", "state_changed", "b", e);
    expect_room_event(sc->pc, "jc", "state_changed", "b", e);
    struct structpb_value st, pres;
    assert_int_equal(hp_get(e, "state", &st), 1);
    assert_int_equal(structpb_struct_get(st.ptr, st.len, "presenter", &pres), 1);
    nexus_close(sc->pc);
    sc->pc = NULL;
    expect_room_event(sc->pa, "ja", "peer_left", "c", e);
    assert_string_equal(hp_str(e, "reason", sc->a, sizeof(sc->a)), "disconnected");
    expect_room_event(sc->pb, "jb", "peer_left", "c", e);
    assert_int_equal(STAT(sc, media_peers), 2);
}

/* a leaves; b hears it; b's connection goes: the room is freed. */
static void scene_empty(struct scene *sc)
{
    struct hev *e = &sc->e;
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "room-1");
    hp_end(&w);
    assert_int_equal(
        h_request(sc->pa, "media:leave_room:v1:requested", sc->camp, "la", w.buf, w.len, e), 1);
    hs_free(&w);
    assert_true(hev_state(e, "success"));
    expect_room_event(sc->pb, "jb", "peer_left", "a", e);
    assert_string_equal(hp_str(e, "reason", sc->a, sizeof(sc->a)), "left");
    assert_int_equal(STAT(sc, media_rooms), 1);
    nexus_close(sc->pb);
    sc->pb = NULL;
    int64_t deadline = h_now_ms() + HT;
    while (STAT(sc, media_rooms) != 0 && h_now_ms() < deadline)
        usleep(10000);
    assert_int_equal(STAT(sc, media_rooms), 0);
    assert_int_equal(STAT(sc, media_peers), 0);
    const char *closed = NULL;
    while (!closed || strcmp(closed, "room_closed") != 0)
        closed = watch_next(sc->rooms_w, "wr", e, sc->a, sizeof(sc->a));
}

/* The campaign's subscriber saw the joins but never a signal. */
static void scene_check_subscriber(struct scene *sc)
{
    struct nexus_frame f;
    int joins = 0;
    while (nexus_recv(sc->sub, &f, 200) == 1) {
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        hev_fill(&sc->e, &f);
        assert_true(strncmp(sc->e.type, "media:signal:", 13) != 0);
        struct codec_slice pl = {sc->e.pl, sc->e.pl_len};
        assert_false(h_slice_has(pl, "v=0"));
        assert_false(h_slice_has(pl, "cand-c-a"));
        joins += strcmp(sc->e.type, "media:join_room:v1:success") == 0;
    }
    assert_int_equal(joins, 3);
}

static void test_three_peers(void **state)
{
    (void)state;
    static struct scene sc;
    memset(&sc, 0, sizeof(sc));
    scene_start(&sc);
    scene_join(&sc);
    scene_signal(&sc);
    scene_state_and_drop(&sc);
    scene_empty(&sc);
    scene_check_subscriber(&sc);
    hev_clear(&sc.e);
    nexus_close(sc.pa);
    nexus_close(sc.stats);
    nexus_close(sc.rooms_w);
    nexus_close(sc.peers_w);
    nexus_close(sc.sub);
    assert_int_equal(h_stop(&sc.b), 0);
}

static void expect_failed(struct nexus_client *c, const char *type, int64_t camp, const char *id,
                          struct hs_writer *w, const char *code)
{
    struct hev e = {0};
    assert_int_equal(h_request(c, type, camp, id, w->buf, w->len, &e), 1);
    if (!hev_state(&e, "failed") || strcmp(e.code, code) != 0)
        fprintf(stderr, "%s: got %s code=%s, want failed %s\n", id, e.type, e.code, code);
    assert_true(hev_state(&e, "failed"));
    assert_string_equal(e.code, code);
    hev_clear(&e);
    hs_free(w);
}

/* Refusals before c is a peer of room "r". */
static void bad_outside(struct nexus_client *c, int64_t camp)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "peer_id", "p");
    hp_end(&w);
    expect_failed(c, "media:join_room:v1:requested", camp, "b1", &w, "missing_context_id");
    hp_begin(&w);
    hs_put_number(&w, "context_id", 5);
    hp_end(&w);
    expect_failed(c, "media:join_room:v1:requested", camp, "b2", &w, "invalid_context_id");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hp_end(&w);
    expect_failed(c, "media:leave_room:v1:requested", camp, "b3", &w, "not_in_room");
}

/* Bad payloads fail with a code naming the field; the room state is unchanged. */
static void test_media_bad_payloads(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL), *d = h_connect(&b, NULL);
    int64_t camp = 4242;
    struct hs_writer w;
    struct hev e = {0};
    bad_outside(c, camp);
    assert_int_equal(join(c, camp, "r", "p", "j1", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_int_equal(hp_num(&e, "version"), 0);
    /* the same peer id from another connection */
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_cstring(&w, "peer_id", "p");
    hp_end(&w);
    expect_failed(d, "media:join_room:v1:requested", camp, "b4", &w, "peer_id_taken");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hp_end(&w);
    expect_failed(c, "media:room_state:v1:requested", camp, "b5", &w, "missing_state");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_number(&w, "state", 1);
    hp_end(&w);
    expect_failed(c, "media:room_state:v1:requested", camp, "b6", &w, "invalid_state");
    static char big[20000];
    memset(big, 'y', sizeof(big) - 1);
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_struct_open(&w, "state");
    hs_put_cstring(&w, "small", "ok");
    hs_put_cstring(&w, "blob", big);
    hs_end(&w);
    hp_end(&w);
    expect_failed(c, "media:room_state:v1:requested", camp, "b7", &w, "state_too_large");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_struct_open(&w, "signal");
    hs_end(&w);
    hp_end(&w);
    expect_failed(c, "media:signal:v1:requested", camp, "b8", &w, "missing_target_peer_id");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_cstring(&w, "target_peer_id", "q");
    hp_end(&w);
    expect_failed(c, "media:signal:v1:requested", camp, "b9", &w, "missing_signal");
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "r");
    hs_put_cstring(&w, "target_peer_id", "q");
    hs_put_cstring(&w, "peer_id", "not-me");
    hs_put_cstring(&w, "signal", "x");
    hp_end(&w);
    expect_failed(c, "media:signal:v1:requested", camp, "b10", &w, "invalid_peer_id");
    hp_begin(&w);
    hs_put_cstring(&w, "interval_ms", "fast");
    hp_end(&w);
    expect_failed(c, "media:stream_webrtc:v1:requested", camp, "b11", &w, "invalid_interval_ms");
    /* The room state is unchanged by the refusals: a rejoin shows version 0, no keys. */
    assert_int_equal(join(c, camp, "r", "p", "j2", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_int_equal(hp_num(&e, "version"), 0);
    struct structpb_value st, v;
    assert_int_equal(hp_get(&e, "state", &st), 1);
    assert_int_equal(structpb_struct_get(st.ptr, st.len, "small", &v), 0);
    hev_clear(&e);
    nexus_close(c);
    nexus_close(d);
    assert_int_equal(h_stop(&b), 0);
}

/* The bounds of docs/HANDLERS.md: 64 peers in a room (the 65th gets room_full, and a peer
 * that leaves makes room again), 1024 rooms in a campaign (the 1025th gets room_limit, a join
 * to an existing room still works). */
static void test_room_bounds(void **state)
{
    (void)state;
    struct broker_proc b = H_START(1, NULL);
    int64_t camp = 777;
    enum { PEERS = 64 };
    struct nexus_client *c[PEERS + 1];
    struct hev e = {0};
    char peer[32], id[32];
    for (int i = 0; i <= PEERS; i++) {
        c[i] = h_connect(&b, NULL);
        assert_non_null(c[i]);
    }
    for (int i = 0; i < PEERS; i++) {
        snprintf(peer, sizeof(peer), "p%d", i);
        snprintf(id, sizeof(id), "full-%d", i);
        assert_int_equal(join(c[i], camp, "full", peer, id, &e), 1);
        if (!hev_state(&e, "success"))
            fail_msg("join %d of %d: %s %s", i + 1, PEERS, e.type, e.code);
        hev_clear(&e);
    }
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "full");
    hs_put_cstring(&w, "peer_id", "one-too-many");
    hp_end(&w);
    expect_failed(c[PEERS], "media:join_room:v1:requested", camp, "full-x", &w, "room_full");
    /* A peer's connection goes: its place is free again. */
    nexus_close(c[0]);
    int64_t deadline = h_now_ms() + 5000;
    int attempt = 0;
    do {
        /* A fresh id each time: a repeated event id would be suppressed as a duplicate. */
        snprintf(id, sizeof(id), "full-late-%d", attempt++);
        assert_int_equal(join(c[PEERS], camp, "full", "late", id, &e), 1);
        bool ok = hev_state(&e, "success");
        if (!ok && strcmp(e.code, "room_full") != 0)
            fail_msg("late join: %s %s", e.type, e.code);
        hev_clear(&e);
        if (ok)
            break;
        usleep(20000);
    } while (h_now_ms() < deadline);
    assert_true(h_now_ms() < deadline);

    /* Rooms: this campaign has one; open 1023 more from one connection, then one too many. */
    struct nexus_client *d = c[1];
    char ctx[32];
    for (int i = 1; i < 1024; i++) {
        snprintf(ctx, sizeof(ctx), "room-%d", i);
        snprintf(id, sizeof(id), "open-%d", i);
        assert_int_equal(join(d, camp, ctx, "opener", id, &e), 1);
        if (!hev_state(&e, "success"))
            fail_msg("room %d of 1024: %s %s", i + 1, e.type, e.code);
        hev_clear(&e);
    }
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", "room-1024");
    hp_end(&w);
    expect_failed(d, "media:join_room:v1:requested", camp, "open-x", &w, "room_limit");
    /* Joining a room that exists is not opening one. */
    assert_int_equal(join(c[2], camp, "room-7", "second", "join-7", &e), 1);
    assert_true(hev_state(&e, "success"));
    hev_clear(&e);
    for (int i = 1; i <= PEERS; i++)
        nexus_close(c[i]);
    assert_int_equal(h_stop(&b), 0);
}

static void test_webrtc_stats(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    int64_t camp = h_campaign_on(0, SHARDS, 7000);
    struct nexus_client *p1 = h_connect_on(&b, 1), *p2 = h_connect_on(&b, 2);
    struct nexus_client *w = h_connect(&b, NULL);
    struct hev e = {0};
    assert_int_equal(join(p1, camp, "stage", "x", "jx", &e), 1);
    assert_int_equal(join(p2, camp, "stage", "y", "jy", &e), 1);
    assert_int_equal(join(p2, camp, "lobby", "y", "jy2", &e), 1);
    struct hs_writer pw;
    hp_begin(&pw);
    hs_put_number(&pw, "interval_ms", 500);
    hp_end(&pw);
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "media:stream_webrtc:v1:requested", camp, "wrtc", pw.buf, pw.len);
    assert_int_equal(nexus_emit_sync(w, &in, &f, HT), 1);
    hs_free(&pw);
    char a[32];
    int64_t t0 = h_now_ms();
    for (int i = 0; i < 3; i++) {
        assert_string_equal(watch_next(w, "wrtc", &e, a, sizeof(a)), "stats");
        assert_int_equal(hp_num(&e, "room_count"), 2);
        assert_int_equal(hp_num(&e, "peer_count"), 3);
    }
    assert_true(h_now_ms() - t0 >= 900); /* at once, +500 ms, +1000 ms */
    hev_clear(&e);
    nexus_close(p1);
    nexus_close(p2);
    nexus_close(w);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_three_peers, h_teardown),
        cmocka_unit_test_teardown(test_media_bad_payloads, h_teardown),
        cmocka_unit_test_teardown(test_webrtc_stats, h_teardown),
        cmocka_unit_test_teardown(test_room_bounds, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
