// SPDX-License-Identifier: Apache-2.0
//
// 1,000 concurrent connections on one broker: 500 subscribers over 5 campaigns and 500
// publishers, all held by this one process and served with poll(2). Every publisher's emits
// are acknowledged, and every subscriber receives every event of its campaign exactly once,
// in sequence order.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <poll.h>

#include "harness.h"

#define SUBS      500
#define PUBS      500
#define CAMPAIGNS 5
#define PER_PUB   2 /* emits per publisher */
#define CONNS     (SUBS + PUBS)
/* Events per campaign: PUBS / CAMPAIGNS publishers each emit PER_PUB. */
#define PER_CAMPAIGN (PUBS / CAMPAIGNS * PER_PUB)

static void test_thousand_connections(void **state)
{
    (void)state;
    if (h_raise_nofile(CONNS + 256) < 0) {
        fail_msg("RLIMIT_NOFILE's hard limit is below %d: raise it (ulimit -Hn) to run this test",
                 CONNS + 256);
    }
    const uint32_t shards = 2;
    struct broker_proc b = H_START(shards, NULL);
    int64_t camp[CAMPAIGNS];
    for (uint32_t c = 0; c < CAMPAIGNS; c++)
        camp[c] = 20000 + (int64_t)c * 7;

    static struct nexus_client *conn[CONNS];
    static uint32_t got[CONNS]; /* events (subscribers) or acks (publishers) so far */
    static struct pollfd pfd[CONNS];
    uint32_t on_shard[2] = {0, 0};
    for (uint32_t i = 0; i < CONNS; i++) {
        uint32_t sh = 0;
        conn[i] = h_connect(&b, &sh);
        if (!conn[i])
            fail_msg("connection %u of %u failed", i, CONNS);
        on_shard[sh < 2 ? sh : 0]++;
        got[i] = 0;
    }
    /* Both shards hold connections (SO_REUSEPORT spreads them by address hash). */
    print_message("%u connections: %u on shard 0, %u on shard 1\n", CONNS, on_shard[0],
                  on_shard[1]);
    assert_true(on_shard[0] > 0 && on_shard[1] > 0);

    /* Subscribers 0..SUBS-1: all subscribe requests out first, then every ack. */
    for (uint32_t i = 0; i < SUBS; i++) {
        assert_int_equal(nexus_send_subscribe(conn[i], 1, camp[i % CAMPAIGNS], NULL, 0, NULL), 0);
        assert_int_equal(nexus_flush(conn[i]), 0);
    }
    for (uint32_t i = 0; i < SUBS; i++) {
        struct nexus_frame f;
        assert_int_equal(nexus_wait_reply(conn[i], 1, &f, 10000), 1);
        assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    }

    /* Publishers: every emit out at once, acknowledged. */
    for (uint32_t p = 0; p < PUBS; p++) {
        struct nexus_client *c = conn[SUBS + p];
        for (uint32_t k = 0; k < PER_PUB; k++) {
            char id[32];
            snprintf(id, sizeof(id), "p%u-%u", p, k);
            struct codec_emit_in e;
            nexus_emit_init(&e, "load:tick:v1:success", camp[p % CAMPAIGNS], id, NULL, 0);
            e.correlation = k + 1;
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
        assert_int_equal(nexus_flush(c), 0);
    }

    /* One poll loop over all 1,000 sockets until everything expected has arrived. */
    static uint8_t acked[CAMPAIGNS][PER_CAMPAIGN + 1];
    memset(acked, 0, sizeof(acked));
    uint32_t pending = SUBS * PER_CAMPAIGN + PUBS * PER_PUB;
    const uint32_t total = pending;
    int64_t deadline = h_now_ms() + 45000;
    while (pending > 0) {
        if (h_now_ms() > deadline)
            fail_msg("%u of %u frames still missing", pending, total);
        for (uint32_t i = 0; i < CONNS; i++) {
            pfd[i].fd = nexus_fd(conn[i]);
            pfd[i].events = POLLIN;
            pfd[i].revents = 0;
        }
        int r = poll(pfd, CONNS, 1000);
        assert_true(r >= 0);
        for (uint32_t i = 0; i < CONNS && r > 0; i++) {
            if (!pfd[i].revents)
                continue;
            bool is_sub = i < SUBS;
            uint32_t ci = is_sub ? i % CAMPAIGNS : (i - SUBS) % CAMPAIGNS;
            /* One read (the socket is readable), then every whole frame already buffered. */
            struct nexus_frame f;
            int rr;
            for (rr = nexus_recv(conn[i], &f, 1); rr == 1; rr = nexus_recv(conn[i], &f, 0)) {
                if (is_sub) {
                    if (f.kind != CODEC_KIND_EVENT)
                        fail_msg("subscriber %u: frame kind %u", i, f.kind);
                    assert_int_equal(f.u.event.campaign_id, camp[ci]);
                    /* Exactly once, in order: the next sequence and nothing beyond the end. */
                    if (f.u.event.sequence != got[i] + 1 || got[i] >= PER_CAMPAIGN)
                        fail_msg("subscriber %u: sequence %llu after %u events", i,
                                 (unsigned long long)f.u.event.sequence, got[i]);
                } else {
                    if (f.kind != CODEC_KIND_EMIT_ACK || got[i] >= PER_PUB)
                        fail_msg("publisher %u: frame kind %u after %u acks", i - SUBS, f.kind,
                                 got[i]);
                    assert_true(h_slice_eq(f.u.event.message, "accepted"));
                    assert_int_equal(f.u.event.campaign_id, camp[ci]);
                    uint64_t s = f.u.event.sequence;
                    assert_true(s >= 1 && s <= PER_CAMPAIGN);
                    assert_int_equal(acked[ci][s], 0);
                    acked[ci][s] = 1;
                }
                got[i]++;
                pending--;
            }
            if (rr < 0)
                fail_msg("%s %u: connection lost (%d)", is_sub ? "subscriber" : "publisher",
                         is_sub ? i : i - SUBS, rr);
        }
    }
    for (uint32_t i = 0; i < SUBS; i++)
        assert_int_equal(got[i], PER_CAMPAIGN);
    /* Nothing extra: a ping on each subscriber comes back with no event before it. */
    for (uint32_t i = 0; i < SUBS; i += 25) {
        assert_int_equal(h_ping(conn[i], 5000), 1);
        struct nexus_frame f;
        assert_int_equal(nexus_recv(conn[i], &f, 0), 0);
    }
    for (uint32_t i = 0; i < CONNS; i++)
        nexus_close(conn[i]);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_thousand_connections, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
