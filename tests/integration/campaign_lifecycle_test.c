// SPDX-License-Identifier: Apache-2.0
//
// Campaign lifecycle (docs/PROTOCOL.md, "Campaign lifetime"; docs/OPERATIONS.md
// --campaign-idle-ms) against the real nexusd: campaigns nobody subscribes to and nobody
// writes to are freed with their duplicate window and history, and the memory comes back;
// campaigns with a subscriber, with state set by campaign:update, or with an open stream are
// kept; a freed campaign that is used again starts over at sequence 1.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "handlers_util.h"

#define SHARDS 2

static int64_t campaigns(struct nexus_client *c)
{
    return h_stat_sum(c, offsetof(struct codec_shard_stats, campaigns));
}

/* Polls (bounded) until the broker owns at most `want` campaigns. Returns the last count. */
static int64_t wait_campaigns_at_most(struct nexus_client *c, int64_t want, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms, n = -1;
    while (h_now_ms() < deadline) {
        n = campaigns(c);
        if (n >= 0 && n <= want)
            return n;
        usleep(50000);
    }
    return n;
}

/* Emits with client ids into `count` campaigns from base, `per` each, fire-and-forget, then a
 * ping as a barrier. */
static void fill(struct nexus_client *c, int64_t base, int count, int per)
{
    static const char pl[] = "\x0a\x00"; /* Payload{data: {}} */
    for (int i = 0; i < count; i++)
        for (int k = 0; k < per; k++) {
            char id[48];
            snprintf(id, sizeof(id), "c%d-e%d", i, k);
            struct codec_emit_in e;
            nexus_emit_init(&e, "load:tick:v1:completed", base + i, id, pl, 2);
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
    assert_int_equal(h_ping(c, 30000), 1);
}

static void test_idle_campaigns_freed_and_memory_returns(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--campaign-idle-ms", "4000", NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint64_t rss0 = h_rss_bytes(&b);
    /* 1,000 campaigns × 1,000 events with client ids: each campaign keeps a duplicate window
     * of 1,000 entries and a history of up to 1,024 shared frames. */
    fill(c, 100000, 1000, 1000);
    int64_t held = campaigns(c), n;
    uint64_t rss_full = h_rss_bytes(&b);
    /* The first campaigns may already have gone if filling took longer than 4 s (ASan). */
    assert_true(held >= 200 && held <= 1000);
    /* Nobody subscribes, nothing more arrives: all freed after 4 s (plus the sweep). */
    n = wait_campaigns_at_most(c, 0, 15000);
    uint64_t rss_after = rss_full;
    for (int i = 0; i < 50 && rss_after > rss0 + (rss_full - rss0) / 2; i++) {
        usleep(100000);
        rss_after = h_rss_bytes(&b);
    }
    print_message("campaign lifecycle: RSS %llu MiB at start, %llu MiB with %lld campaigns, "
                  "%llu MiB after they were freed (%lld left)\n",
                  (unsigned long long)(rss0 >> 20), (unsigned long long)(rss_full >> 20),
                  (long long)held, (unsigned long long)(rss_after >> 20), (long long)n);
    assert_int_equal(n, 0);
    /* The campaigns held memory worth measuring, and at least half of what they took
     * went back (the rest: receive buffers the fill touched, 16 MiB, and pages the allocator
     * could not release yet; measured here at 39-81 MiB left of 237, the higher figures with
     * the machine loaded). Under ASan the broker runs on
     * ASan's allocator, whose quarantine keeps freed memory by design: there the return is
     * not measured (the release run of this test measures it). */
    assert_true(rss_full > rss0 + (32u << 20));
    if (getenv("ASAN_OPTIONS"))
        print_message("RSS return not measured under ASan (its quarantine keeps freed memory)\n");
    else
        assert_true(rss_after < rss0 + (rss_full - rss0) / 2);
    assert_true(h_stat_sum(c, offsetof(struct codec_shard_stats, connections)) >= 1);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_kept_while_used(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--campaign-idle-ms", "300", NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(c);
    assert_non_null(sub);
    const int64_t with_sub = 7001, with_state = 7002, plain = 7003;
    /* A subscriber (on either shard: interest reaches the owner), state, and nothing. */
    uint64_t sub_id = 0;
    assert_int_equal(nexus_subscribe_sync(sub, with_sub, NULL, 0, NULL, &sub_id, NULL, 5000), 1);
    struct hs_writer w;
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    hs_put_number(&w, "k", 1);
    hs_end(&w);
    hp_end(&w);
    struct hev e = {0};
    assert_int_equal(
        h_request(c, "campaign:update:v1:requested", with_state, "u-1", w.buf, w.len, &e), 1);
    assert_true(hev_state(&e, "success"));
    hs_free(&w);
    struct codec_emit_in in;
    struct nexus_frame f;
    for (int64_t camp = with_sub; camp <= plain; camp++) {
        nexus_emit_init(&in, "x:y:v1:completed", camp, NULL, NULL, 0);
        assert_int_equal(nexus_emit_sync(c, &in, &f, 5000), 1);
    }
    /* The plain one goes; the other two stay. */
    assert_int_equal(wait_campaigns_at_most(c, 2, 5000), 2);
    usleep(800000);
    assert_int_equal(campaigns(c), 2);
    /* The state is still there. */
    assert_int_equal(h_request(c, "campaign:state:v1:requested", with_state, "s-1", NULL, 0, &e),
                     1);
    assert_true(hev_state(&e, "success"));
    struct structpb_value v;
    assert_int_equal(hp_get(&e, "version", &v), 1);
    assert_true(v.kind == STRUCTPB_NUMBER && v.number == 1);
    /* The subscribed campaign keeps counting: 1 (emit), 2 now. */
    nexus_emit_init(&in, "x:y:v1:completed", with_sub, NULL, NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &in, &f, 5000), 1);
    assert_int_equal(f.u.event.sequence, 2);
    /* Unsubscribed, it goes too; used again, it starts over at 1. */
    struct nexus_frame uf;
    assert_int_equal(nexus_send_unsubscribe(sub, 77, sub_id), 0);
    assert_int_equal(nexus_wait_reply(sub, 77, &uf, 5000), 1);
    assert_int_equal(wait_campaigns_at_most(c, 1, 5000), 1);
    nexus_emit_init(&in, "x:y:v1:completed", with_sub, NULL, NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &in, &f, 5000), 1);
    assert_int_equal(f.u.event.sequence, 1);
    free(e.pl);
    nexus_close(sub);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_kept_while_stream_open(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--campaign-idle-ms", "300", NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    const int64_t camp = 7100;
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "campaign:stream_state:v1:requested", camp, "st-1", NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &in, &f, 5000), 1);
    /* The stream is open (heartbeats every second by default): the campaign stays. */
    usleep(1200000);
    assert_int_equal(campaigns(c), 1);
    nexus_close(c); /* the requester goes: its stream ends, then the campaign can go */
    struct nexus_client *c2 = h_connect(&b, NULL);
    assert_non_null(c2);
    assert_int_equal(wait_campaigns_at_most(c2, 0, 5000), 0);
    nexus_close(c2);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_idle_campaigns_freed_and_memory_returns, h_teardown),
        cmocka_unit_test_teardown(test_kept_while_used, h_teardown),
        cmocka_unit_test_teardown(test_kept_while_stream_open, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
