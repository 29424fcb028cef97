// SPDX-License-Identifier: Apache-2.0
//
// SIGTERM drains (docs/DESIGN.md §7): events the broker accepted and queued for subscribers before
// the signal are delivered before it exits 0, on the owner's shard and across shards; and a
// subscriber that never reads cannot hold the exit beyond --drain-ms.
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "harness.h"

#define SHARDS 2

/* Caps the kernel's share of a subscriber that does not read yet, so that most of what it is
 * sent waits in the broker's queue (see slow_consumer_test.c for why not smaller). */
static void cap_rcvbuf(struct nexus_client *c)
{
    int sz = 65536;
    assert_int_equal(setsockopt(nexus_fd(c), SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

/* ~1 KiB valid common.Payload (an unknown field 100 of x's). */
static size_t payload_1k(uint8_t *out)
{
    static uint8_t x[1000];
    memset(x, 'x', sizeof(x));
    return (size_t)(wire_put_len_field(out, 100, x, sizeof(x)) - out);
}

/* Polls the stats frame (bounded) until no shard-to-shard ring holds a message: every event
 * acknowledged so far has then been handed to its subscribers' shards and queued. */
static struct codec_shard_stats wait_rings_empty(struct nexus_client *c)
{
    struct codec_shard_stats st[SHARDS], sum;
    int64_t deadline = h_now_ms() + 5000;
    for (;;) {
        assert_int_equal(h_stats(c, st, SHARDS, 5000), SHARDS);
        memset(&sum, 0, sizeof(sum));
        for (int i = 0; i < SHARDS; i++) {
            sum.ring_depth += st[i].ring_depth;
            sum.bytes_queued += st[i].bytes_queued;
        }
        if (sum.ring_depth == 0)
            return sum;
        if (h_now_ms() > deadline)
            fail_msg("shard rings still hold %llu messages", (unsigned long long)sum.ring_depth);
        usleep(5000);
    }
}

static void test_sigterm_delivers_queued_events(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    int64_t camp = h_campaign_on(1, SHARDS, 8000);
    /* Subscribers on the owner's shard and on the other one; neither reads for now. */
    struct nexus_client *sub[2];
    for (uint32_t k = 0; k < 2; k++) {
        sub[k] = h_connect_on(&b, k);
        assert_non_null(sub[k]);
        cap_rcvbuf(sub[k]);
        assert_int_equal(nexus_subscribe_sync(sub[k], camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    }
    struct nexus_client *pub = h_connect_on(&b, 1);
    assert_non_null(pub);
    uint8_t payload[1100];
    size_t pl = payload_1k(payload);

    /* 10000 events of ~1 KiB: ~10 MiB per subscriber, under the 16 MiB outbound default (so
     * no slow-subscriber policy applies) and well over what the kernel holds for the capped
     * socket (its 128 KiB plus the broker side's send buffer, at most tcp_wmem's 4 MiB). */
    const uint32_t count = 10000;
    for (uint32_t i = 0; i < count; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "feed:tick:v1:stream", camp, NULL, payload, pl);
        if ((i + 1) % 100 != 0) {
            assert_int_equal(nexus_send_emit(pub, &e), 0);
            continue;
        }
        struct nexus_frame f;
        assert_int_equal(nexus_emit_sync(pub, &e, &f, 10000), 1);
        assert_int_equal(f.u.event.sequence, i + 1);
    }
    struct codec_shard_stats sum = wait_rings_empty(pub);
    /* The precondition that makes this test mean something: the broker holds queued events. */
    if (sum.bytes_queued < 1u << 20)
        fail_msg("only %llu bytes queued in the broker before SIGTERM",
                 (unsigned long long)sum.bytes_queued);

    assert_int_equal(kill(b.pid, SIGTERM), 0);
    for (uint32_t k = 0; k < 2; k++) {
        int64_t deadline = h_now_ms() + 20000;
        for (uint64_t s = 1; s <= count; s++) {
            struct nexus_frame f;
            int64_t left = deadline - h_now_ms();
            int r = left > 0 ? nexus_recv(sub[k], &f, (int)left) : 0;
            if (r != 1)
                fail_msg("subscriber on shard %u: %llu of %u events before r=%d", k,
                         (unsigned long long)s - 1, count, r);
            assert_int_equal(f.kind, CODEC_KIND_EVENT);
            assert_int_equal(f.u.event.sequence, s);
        }
        /* Then the broker says goaway and closes the connection. */
        struct nexus_frame f;
        assert_int_equal(nexus_recv(sub[k], &f, 10000), 1);
        assert_int_equal(f.kind, CODEC_KIND_GOAWAY);
        assert_int_equal(nexus_recv(sub[k], &f, 10000), -ECONNRESET);
    }
    assert_int_equal(h_wait_exit(&b, 15000), 0);
    for (uint32_t k = 0; k < 2; k++)
        nexus_close(sub[k]);
    nexus_close(pub);
}

static void test_sigterm_bounded_by_drain_ms(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, "--drain-ms", "300", NULL);
    int64_t camp = h_campaign_on(0, SHARDS, 8100);
    struct nexus_client *stuck = h_connect_on(&b, 1);
    assert_non_null(stuck);
    cap_rcvbuf(stuck);
    assert_int_equal(nexus_subscribe_sync(stuck, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);
    uint8_t payload[1100];
    size_t pl = payload_1k(payload);
    for (uint32_t i = 0; i < 10000; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "feed:tick:v1:stream", camp, NULL, payload, pl);
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    assert_int_equal(h_ping(pub, 10000), 1);
    struct codec_shard_stats sum = wait_rings_empty(pub);
    if (sum.bytes_queued < 1u << 20)
        fail_msg("only %llu bytes queued in the broker before SIGTERM",
                 (unsigned long long)sum.bytes_queued);
    int64_t t0 = h_now_ms();
    assert_int_equal(kill(b.pid, SIGTERM), 0);
    /* The stuck subscriber never reads: the broker gives up on it after the drain deadline
     * (plus its 100 ms housekeeping tick) and still exits cleanly. */
    assert_int_equal(h_wait_exit(&b, 10000), 0);
    int64_t took = h_now_ms() - t0;
    if (took > 5000)
        fail_msg("exit took %lld ms with --drain-ms 300", (long long)took);
    nexus_close(stuck);
    nexus_close(pub);
}

/* ---- SIGTERM under load ------------------------------------------------------------------ */

struct reader {
    struct nexus_client *c;
    bool slow;         /* reads nothing until told */
    atomic_int *go;    /* set once SIGTERM was sent */
    uint64_t last;     /* last sequence received */
    uint64_t received; /* events */
    bool in_order, goaway;
};

/* A subscriber: events in order until the broker's goaway and close. */
static void *reader_main(void *arg)
{
    struct reader *r = arg;
    r->in_order = true;
    while (r->slow && !atomic_load(r->go))
        usleep(1000);
    for (;;) {
        struct nexus_frame f;
        int rc = nexus_recv(r->c, &f, 20000);
        if (rc != 1)
            break;
        if (f.kind == CODEC_KIND_GOAWAY) {
            r->goaway = true;
            continue;
        }
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        if (f.u.event.sequence != r->last + 1)
            r->in_order = false;
        r->last = f.u.event.sequence;
        r->received++;
    }
    return NULL;
}

struct writer {
    struct nexus_client *c;
    int64_t camp;
    uint64_t acked_max, acks, sent;
    bool acks_in_order, goaway;
};

/* A publisher asking an ack for every emit, 32 in flight, until the broker closes it. */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    w->acks_in_order = true;
    uint64_t corr = 0;
    uint32_t inflight = 0;
    for (;;) {
        while (inflight < 32) {
            struct codec_emit_in e;
            nexus_emit_init(&e, "feed:tick:v1:stream", w->camp, NULL, "", 0);
            e.correlation = ++corr;
            if (nexus_send_emit(w->c, &e) < 0 || nexus_flush(w->c) < 0)
                return NULL;
            inflight++;
            w->sent++;
        }
        struct nexus_frame f;
        int rc = nexus_recv(w->c, &f, 20000);
        if (rc != 1)
            return NULL;
        if (f.kind == CODEC_KIND_GOAWAY) {
            w->goaway = true;
            continue;
        }
        if (f.kind != CODEC_KIND_EMIT_ACK)
            continue;
        inflight--;
        w->acks++;
        if (f.u.event.sequence != w->acked_max + 1)
            w->acks_in_order = false;
        w->acked_max = f.u.event.sequence;
    }
}

/* SIGTERM while a publisher on one shard streams acked emits to a campaign owned by the
 * other, read by a caught-up subscriber and a lagging one: both receive the same last
 * sequence, that is the last sequence the publisher got an ack for (every delivered event is
 * acknowledged), and all three get a goaway before the connection closes. */
static void test_sigterm_under_load(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    int64_t camp = h_campaign_on(0, SHARDS, 8200);
    atomic_int go = 0;
    struct reader rd[2] = {{.slow = false, .go = &go}, {.slow = true, .go = &go}};
    for (uint32_t k = 0; k < 2; k++) {
        rd[k].c = h_connect_on(&b, k);
        assert_non_null(rd[k].c);
        assert_int_equal(nexus_subscribe_sync(rd[k].c, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    }
    cap_rcvbuf(rd[1].c);
    struct writer w = {.camp = camp};
    w.c = h_connect_on(&b, 1);
    assert_non_null(w.c);
    pthread_t tr[2], tw;
    for (int k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&tr[k], NULL, reader_main, &rd[k]), 0);
    assert_int_equal(pthread_create(&tw, NULL, writer_main, &w), 0);
    usleep(400000);
    assert_int_equal(kill(b.pid, SIGTERM), 0);
    atomic_store(&go, 1);
    pthread_join(tw, NULL);
    for (int k = 0; k < 2; k++)
        pthread_join(tr[k], NULL);
    assert_int_equal(h_wait_exit(&b, 15000), 0);
    print_message("drain under load: %llu sent, %llu acked (last %llu); subscribers got %llu "
                  "and %llu (last %llu and %llu)\n",
                  (unsigned long long)w.sent, (unsigned long long)w.acks,
                  (unsigned long long)w.acked_max, (unsigned long long)rd[0].received,
                  (unsigned long long)rd[1].received, (unsigned long long)rd[0].last,
                  (unsigned long long)rd[1].last);
    assert_true(w.acked_max > 1000); /* there was load when the signal came */
    assert_true(w.acks_in_order);
    for (int k = 0; k < 2; k++) {
        assert_true(rd[k].in_order);
        assert_true(rd[k].goaway);
        assert_int_equal(rd[k].last, w.acked_max);
        assert_int_equal(rd[k].received, w.acked_max);
    }
    assert_true(w.goaway);
    for (int k = 0; k < 2; k++)
        nexus_close(rd[k].c);
    nexus_close(w.c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sigterm_delivers_queued_events, h_teardown),
        cmocka_unit_test_teardown(test_sigterm_bounded_by_drain_ms, h_teardown),
        cmocka_unit_test_teardown(test_sigterm_under_load, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
