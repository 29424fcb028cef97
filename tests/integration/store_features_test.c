// SPDX-License-Identifier: Apache-2.0
//
// The event log's finer promises (docs/OPERATIONS.md, "Data directory"; docs/ARCHITECTURE.md,
// "The event log"), each against the real nexusd on a data directory:
//  - --persist: a type it leaves out is live only (sequence 0, not in the log, not replayed);
//    the persisted ones keep a gapless sequence across a restart; a bad pattern refuses start;
//  - the duplicate window survives kill -9 for a client-named publisher (and only for one);
//  - campaign:stream_events replays from the log after a restart, beyond the in-memory history;
//  - the sparse index: a resume from the middle of a campaign interleaved with others over many
//    segments is exact, both from the index built while appending and from the one recovery
//    rebuilds.
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "handlers_util.h"
#include "store_util.h"

#define HTO 10000

static int emit_as(struct nexus_client *c, const char *type, int64_t camp, const char *id,
                   struct nexus_frame *f)
{
    struct codec_emit_in e;
    nexus_emit_init(&e, type, camp, id, NULL, 0);
    return nexus_emit_sync(c, &e, f, HTO);
}

static struct nexus_client *connect_named(const struct broker_proc *b, const char *name)
{
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", b->port, err, sizeof(err));
    struct nexus_frame f;
    if (!c || nexus_hello_sync(c, NULL, name, &f, HTO) != 1)
        fail_msg("connect/hello as %s failed: %s", name ? name : "(no name)", err);
    return c;
}

static void kill9(struct broker_proc *b)
{
    kill(b->pid, SIGKILL);
    assert_int_equal(h_wait_exit(b, 5000), 128 + SIGKILL);
}

/* --persist "feed:*:*:*": feed events are sequenced and logged; chat events are delivered live
 * with sequence 0 and never replayed; after kill -9 the feed sequence continues without a gap
 * and a resume from 1 returns exactly the feed events. */
static void test_persist_patterns(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    const char *extra[] = {"--persist", "feed:*:*:*, order:*:v1:success", NULL};
    struct broker_proc b = st_start(dir, 1, NULL, extra);
    struct nexus_client *sub = connect_named(&b, NULL);
    struct st_stream live = {0};
    assert_int_equal(st_subscribe_from(sub, 42, NULL, 0, 0, &live, NULL, 0, HTO), 1);
    struct nexus_client *c = connect_named(&b, NULL);
    struct nexus_frame f;
    uint64_t want = 0;
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof(id), "f%d", i);
        assert_int_equal(emit_as(c, "feed:tick:v1:stream", 42, id, &f), 1);
        assert_int_equal(f.u.event.sequence, ++want);
        snprintf(id, sizeof(id), "c%d", i);
        assert_int_equal(emit_as(c, "chat:msg:v1:completed", 42, id, &f), 1);
        assert_int_equal(f.u.event.sequence, 0); /* not persisted: outside the sequence */
    }
    assert_int_equal(emit_as(c, "order:pay:v1:success", 42, "o1", &f), 1);
    assert_int_equal(f.u.event.sequence, ++want);
    /* The live subscriber saw all 21, the chat ones with sequence 0. */
    size_t zero = 0, seq = 0;
    while (live.n < 21) {
        struct nexus_frame g;
        assert_int_equal(nexus_recv(sub, &g, HTO), 1);
        st_stream_take(&live, &g);
    }
    for (size_t i = 0; i < live.n; i++) {
        if (live.ev[i].seq == 0)
            zero++;
        else
            assert_int_equal(live.ev[i].seq, ++seq);
    }
    assert_int_equal(zero, 10);
    assert_int_equal(seq, want);
    nexus_close(sub);
    nexus_close(c);
    st_stream_free(&live);
    kill9(&b);

    b = st_start(dir, 1, NULL, extra);
    c = connect_named(&b, NULL);
    struct st_stream s = {0};
    assert_int_equal(st_subscribe_from(c, 42, NULL, 0, 1, &s, NULL, 0, HTO), 1);
    st_check_stream(&s, 42, 1, want, NULL, 0, "resume from 1 after kill -9");
    st_stream_free(&s);
    assert_int_equal(emit_as(c, "feed:tick:v1:stream", 42, "after", &f), 1);
    assert_int_equal(f.u.event.sequence, want + 1);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    /* A bad pattern refuses to start, naming it. */
    struct h_child ch;
    const char *bad[] = {"--persist", "feed:tick", NULL};
    int rc = st_run_refused(&ch, dir, 1, bad, 10000);
    const char *err = ch.err ? ch.err : "";
    print_message("--persist feed:tick: exit %d, stderr: %s\n", rc, err);
    assert_true(rc != 0 && rc != -1);
    assert_non_null(strstr(err, "--persist"));
    h_child_free(&ch);
}

/* A client-named publisher retrying an acknowledged emit after kill -9 gets "duplicate", not a
 * second event; a new id is sequenced next; an unnamed connection's ids are not carried over
 * (a connection's scope ends with it). */
static void test_dedup_survives_kill9(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    const char *extra[] = {"--dedup-window-ms", "60000", NULL};
    struct broker_proc b = st_start(dir, 2, NULL, extra);
    struct nexus_client *named = connect_named(&b, "billing-1");
    struct nexus_client *anon = connect_named(&b, NULL);
    struct nexus_frame f;
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof(id), "pay-%d", i);
        assert_int_equal(emit_as(named, ST_TYPE, 7, id, &f), 1);
        assert_int_equal(f.u.event.sequence, (uint64_t)i + 1);
    }
    assert_int_equal(emit_as(anon, ST_TYPE, 7, "anon-1", &f), 1);
    assert_int_equal(f.u.event.sequence, 6);
    /* Before the crash: a retry is a duplicate. */
    assert_int_equal(emit_as(named, ST_TYPE, 7, "pay-4", &f), 1);
    assert_int_equal(f.u.event.sequence, 0);
    assert_memory_equal(f.u.event.message.ptr, "duplicate", 9);
    nexus_close(named);
    nexus_close(anon);
    kill9(&b);

    b = st_start(dir, 2, NULL, extra);
    named = connect_named(&b, "billing-1");
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof(id), "pay-%d", i);
        assert_int_equal(emit_as(named, ST_TYPE, 7, id, &f), 1);
        print_message("retry of %s after kill -9: sequence %llu, %.*s\n", id,
                      (unsigned long long)f.u.event.sequence, (int)f.u.event.message.len,
                      (const char *)f.u.event.message.ptr);
        assert_int_equal(f.u.event.sequence, 0);
        assert_memory_equal(f.u.event.message.ptr, "duplicate", 9);
    }
    assert_int_equal(emit_as(named, ST_TYPE, 7, "pay-5", &f), 1);
    assert_int_equal(f.u.event.sequence, 7);
    /* Another client name is another window. */
    struct nexus_client *other = connect_named(&b, "billing-2");
    assert_int_equal(emit_as(other, ST_TYPE, 7, "pay-0", &f), 1);
    assert_int_equal(f.u.event.sequence, 8);
    /* The unnamed connection's id is new again. */
    anon = connect_named(&b, NULL);
    assert_int_equal(emit_as(anon, ST_TYPE, 7, "anon-1", &f), 1);
    assert_int_equal(f.u.event.sequence, 9);
    nexus_close(named);
    nexus_close(other);
    nexus_close(anon);
    assert_int_equal(h_stop(&b), 0);
}

/* campaign:stream_events from sequence 1 after a restart: the 1500 events (more than the
 * 1024-event in-memory history) come from the log, in order, then the live tail. */
static void test_stream_events_from_log(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    enum { N = 1500 };
    struct broker_proc b = st_start(dir, 2, NULL, NULL);
    struct nexus_client *c = connect_named(&b, NULL);
    struct nexus_frame f;
    int64_t camp = h_campaign_on(1, 2, 300);
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "ev-%d", i);
        assert_int_equal(emit_as(c, "chat:message:v1:completed", camp, id, &f), 1);
        assert_int_equal(f.u.event.sequence, (uint64_t)i + 1);
    }
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    b = st_start(dir, 2, NULL, NULL);
    c = connect_named(&b, NULL);
    struct hs_writer w;
    hp_begin(&w);
    hs_put_number(&w, "from_sequence", 1);
    hp_end(&w);
    struct codec_emit_in in;
    nexus_emit_init(&in, "campaign:stream_events:v1:requested", camp, "se-log", w.buf, w.len);
    assert_int_equal(nexus_emit_sync(c, &in, &f, HTO), 1);
    hs_free(&w);
    struct hev e = {0};
    uint64_t expect = 1;
    while (expect <= N) {
        assert_int_equal(h_next_for(c, "se-log", &e, HTO), 1);
        if (!hev_state(&e, "stream"))
            continue;
        char kind[16], eid[32], want[32];
        assert_string_equal(hp_str(&e, "kind", kind, sizeof(kind)), "event");
        assert_int_equal((uint64_t)hp_num(&e, "sequence"), expect);
        snprintf(want, sizeof(want), "ev-%llu", (unsigned long long)expect - 1);
        assert_string_equal(hp_str(&e, "event_id", eid, sizeof(eid)), want);
        expect++;
    }
    /* The live tail follows in order (the request's own lifecycle events are in the campaign
     * too), each once, up to the new event. */
    struct nexus_client *p = connect_named(&b, NULL);
    assert_int_equal(emit_as(p, "chat:message:v1:completed", camp, "live", &f), 1);
    uint64_t live = f.u.event.sequence;
    assert_true(live > N);
    uint64_t last = N;
    while (last < live) {
        assert_int_equal(h_next_for(c, "se-log", &e, HTO), 1);
        if (!hev_state(&e, "stream"))
            continue;
        uint64_t got = (uint64_t)hp_num(&e, "sequence");
        assert_int_equal(got, last + 1);
        last = got;
    }
    hev_clear(&e);
    nexus_close(p);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* Eight campaigns interleaved over 1 MiB segments (about 8 of them); a resume of each from the
 * middle is exact, read through the index built while appending, and again after a restart
 * (the index recovery rebuilds). */
static void test_index_resume_many_segments(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    enum { CAMPS = 8, PER = 1000 };
    const char *extra[] = {"--segment-bytes", "1048576", NULL};
    struct broker_proc b = st_start(dir, 1, NULL, extra);
    struct nexus_client *c = connect_named(&b, NULL);
    static uint8_t pl[1200];
    size_t pl_len = st_payload(pl, 1000);
    static uint64_t keys[CAMPS][PER + 1];
    uint64_t key = 1;
    for (int i = 0; i < PER; i++)
        for (int k = 0; k < CAMPS; k++) {
            uint64_t seq;
            assert_int_equal(st_emit(c, 100 + k, key, pl, pl_len, &seq, NULL, 0), 1);
            assert_int_equal(seq, (uint64_t)i + 1);
            keys[k][seq] = key++;
        }
    nexus_close(c);
    for (int round = 0; round < 2; round++) {
        c = connect_named(&b, NULL);
        for (int k = 0; k < CAMPS; k++) {
            uint64_t from = 1 + (uint64_t)(k * 131 + round * 57) % PER;
            struct st_stream s = {0};
            assert_int_equal(st_subscribe_from(c, 100 + k, NULL, 0, from, &s, NULL, 0, HTO), 1);
            st_check_stream(&s, 100 + k, from, PER, keys[k], PER + 1,
                            round ? "resume after restart" : "resume while running");
            assert_int_equal(s.n_before_ack, s.n);
            st_stream_free(&s);
        }
        nexus_close(c);
        assert_int_equal(h_stop(&b), 0);
        if (round == 0)
            b = st_start(dir, 1, NULL, extra);
    }
    struct st_log L = {0};
    st_scan(&L, dir, 1);
    print_message("log: %zu segments\n", L.nsegs);
    assert_true(L.nsegs >= 6);
    st_log_free(&L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_persist_patterns, st_teardown),
        cmocka_unit_test_teardown(test_dedup_survives_kill9, st_teardown),
        cmocka_unit_test_teardown(test_stream_events_from_log, st_teardown),
        cmocka_unit_test_teardown(test_index_resume_many_segments, st_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
