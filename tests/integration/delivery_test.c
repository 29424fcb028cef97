// SPDX-License-Identifier: Apache-2.0
//
// Delivery across shards and ordering (docs/DESIGN.md §2.2, §2.4): publishers and subscribers on
// different shards, campaigns owned by every shard, every event exactly once at every matching
// subscriber; concurrent publishers to one campaign seen in one gapless order by every
// subscriber, with each publisher's emits in emit order.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <pthread.h>

#include "harness.h"

#define SHARDS_MAX 4

/* An event id of this suite: "p<publisher>-c<campaign index>-<i>", packed into one number so
 * that tables of ids stay small. */
static uint32_t id_pack(uint32_t pub, uint32_t camp, uint32_t i)
{
    return pub * 1000000u + camp * 100000u + i;
}

static uint32_t id_parse(struct codec_slice id)
{
    char s[64];
    if (id.len == 0 || id.len >= sizeof(s))
        return UINT32_MAX;
    memcpy(s, id.ptr, id.len);
    s[id.len] = 0;
    unsigned p, c, i;
    if (sscanf(s, "p%u-c%u-%u", &p, &c, &i) != 3)
        return UINT32_MAX;
    return id_pack(p, c, i);
}

/* ---- cross-shard delivery ------------------------------------------------------------------ */

/* Emits per publisher per campaign. */
#define CROSS_M 150

/* flag, value: one more nexusd flag and its value (NULL for none; value NULL for a switch). */
static void cross_shard(uint32_t n, const char *flag, const char *value)
{
    struct broker_proc b = flag ? H_START(n, flag, value, NULL) : H_START(n, NULL);
    int64_t camp[SHARDS_MAX];
    struct nexus_client *pub[SHARDS_MAX], *sub[SHARDS_MAX];
    for (uint32_t k = 0; k < n; k++) {
        /* Shard 0's campaign has a negative id: any int64 is a campaign. */
        camp[k] = h_campaign_on(k, n, k == 0 ? -5000 : 1000 + 1000 * (int64_t)k);
        assert_int_equal(h_owner(camp[k], n), k);
        pub[k] = h_connect_on(&b, k);
        sub[k] = h_connect_on(&b, k);
        assert_non_null(pub[k]);
        assert_non_null(sub[k]);
    }
    /* Subscriber j takes every campaign except the one owned by shard j+1, so that each one
     * also has events it must not receive. */
    bool wants[SHARDS_MAX][SHARDS_MAX];
    const char *all[] = {"*"};
    for (uint32_t j = 0; j < n; j++) {
        for (uint32_t c = 0; c < n; c++) {
            wants[j][c] = c != (j + 1) % n;
            if (!wants[j][c])
                continue;
            uint64_t sid = 0;
            assert_int_equal(nexus_subscribe_sync(sub[j], camp[c], all, 1, NULL, &sid, NULL, 5000),
                             1);
            assert_true(sid > 0);
        }
    }

    /* Every publisher emits CROSS_M events to every campaign, interleaved, all acknowledged. */
    for (uint32_t i = 0; i < CROSS_M; i++) {
        for (uint32_t k = 0; k < n; k++) {
            for (uint32_t c = 0; c < n; c++) {
                char id[64];
                snprintf(id, sizeof(id), "p%u-c%u-%u", k, c, i);
                struct codec_emit_in e;
                nexus_emit_init(&e, "order:placed:v1:success", camp[c], id, "\x0a\x00", 2);
                e.correlation = nexus_next_correlation(pub[k]);
                assert_int_equal(nexus_send_emit(pub[k], &e), 0);
            }
        }
    }
    /* seq_id[c][seq] = the id the broker gave sequence seq of campaign c (from the acks). */
    const uint32_t per_camp = n * CROSS_M;
    uint32_t *seq_id[SHARDS_MAX];
    for (uint32_t c = 0; c < n; c++) {
        seq_id[c] = calloc(per_camp + 1, sizeof(uint32_t));
        assert_non_null(seq_id[c]);
        for (uint32_t s = 0; s <= per_camp; s++)
            seq_id[c][s] = UINT32_MAX;
    }
    for (uint32_t k = 0; k < n; k++) {
        assert_int_equal(nexus_flush(pub[k]), 0);
        uint64_t last_seq[SHARDS_MAX] = {0};
        for (uint32_t a = 0; a < n * CROSS_M; a++) {
            struct nexus_frame f;
            assert_int_equal(nexus_recv(pub[k], &f, 10000), 1);
            assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
            assert_true(f.u.event.success);
            assert_true(h_slice_eq(f.u.event.message, "accepted"));
            uint32_t id = id_parse(f.u.event.event_id);
            assert_int_not_equal(id, UINT32_MAX);
            uint32_t c = (id / 100000u) % 10u;
            assert_true(c < n);
            assert_int_equal(f.u.event.campaign_id, camp[c]);
            uint64_t seq = f.u.event.sequence;
            assert_true(seq >= 1 && seq <= per_camp);
            assert_true(seq > last_seq[c]); /* one connection's emits keep their order */
            last_seq[c] = seq;
            assert_int_equal(seq_id[c][seq], UINT32_MAX); /* no sequence given twice */
            seq_id[c][seq] = id;
        }
    }

    /* Every subscriber: every event of its campaigns exactly once, nothing else. */
    for (uint32_t j = 0; j < n; j++) {
        uint32_t want = 0;
        for (uint32_t c = 0; c < n; c++)
            want += wants[j][c] ? per_camp : 0;
        uint8_t *seen[SHARDS_MAX];
        for (uint32_t c = 0; c < n; c++) {
            seen[c] = calloc(per_camp + 1, 1);
            assert_non_null(seen[c]);
        }
        uint64_t last[SHARDS_MAX] = {0};
        int64_t deadline = h_now_ms() + 20000;
        for (uint32_t got = 0; got < want; got++) {
            struct nexus_frame f;
            int r = nexus_recv(sub[j], &f, (int)(deadline - h_now_ms()));
            if (r != 1)
                fail_msg("subscriber %u on shard %u: %u of %u events, then r=%d", j, j, got, want,
                         r);
            assert_int_equal(f.kind, CODEC_KIND_EVENT);
            uint32_t c = 0;
            while (c < n && camp[c] != f.u.event.campaign_id)
                c++;
            assert_true(c < n);
            assert_true(wants[j][c]);
            uint64_t seq = f.u.event.sequence;
            assert_true(seq >= 1 && seq <= per_camp);
            assert_int_equal(seen[c][seq], 0);
            seen[c][seq] = 1;
            assert_true(seq > last[c]); /* campaign order */
            last[c] = seq;
            assert_int_equal(id_parse(f.u.event.event_id), seq_id[c][seq]);
        }
        struct nexus_frame f;
        assert_int_equal(nexus_recv(sub[j], &f, 200), 0);
        for (uint32_t c = 0; c < n; c++)
            free(seen[c]);
    }
    for (uint32_t c = 0; c < n; c++)
        free(seq_id[c]);
    for (uint32_t k = 0; k < n; k++) {
        nexus_close(pub[k]);
        nexus_close(sub[k]);
    }
    assert_int_equal(h_stop(&b), 0);
}

static void test_cross_shard_2(void **state)
{
    (void)state;
    cross_shard(2, NULL, NULL);
}

static void test_cross_shard_3(void **state)
{
    (void)state;
    cross_shard(3, NULL, NULL);
}

/* Busy polling changes how shards wait for each other (no sleeping flag, no wake-ups while
 * polling): the same exchange must lose and reorder nothing. */
static void test_cross_shard_busy_poll(void **state)
{
    (void)state;
    cross_shard(3, "--busy-poll-us", "2000");
}

/* Shards pinned to CPUs (wrapping around when there are fewer CPUs than shards). */
static void test_cross_shard_pinned(void **state)
{
    (void)state;
    cross_shard(3, "--pin-cpus", NULL);
}

/* ---- ordering ------------------------------------------------------------------------------ */

#define ORDER_PUBS   4
#define ORDER_SUBS   3
#define ORDER_K      400
#define ORDER_WINDOW 40

struct order_pub {
    struct nexus_client *c;
    uint32_t index;
    int64_t campaign;
    uint64_t ack_seq[ORDER_K]; /* sequence acknowledged for emit i */
    char err[160];
};

/* One publisher thread: ORDER_K acknowledged emits, ORDER_WINDOW in flight at a time, so that
 * the publishers' emits interleave at the owner. */
static void *order_pub_run(void *arg)
{
    struct order_pub *p = arg;
    for (uint32_t i = 0; i < ORDER_K; i += ORDER_WINDOW) {
        for (uint32_t w = i; w < i + ORDER_WINDOW; w++) {
            char id[64];
            snprintf(id, sizeof(id), "p%u-c0-%u", p->index, w);
            struct codec_emit_in e;
            nexus_emit_init(&e, "chat:message:v1:success", p->campaign, id, NULL, 0);
            e.correlation = nexus_next_correlation(p->c);
            if (nexus_send_emit(p->c, &e) < 0) {
                snprintf(p->err, sizeof(p->err), "send failed");
                return NULL;
            }
        }
        if (nexus_flush(p->c) < 0) {
            snprintf(p->err, sizeof(p->err), "flush failed");
            return NULL;
        }
        for (uint32_t w = i; w < i + ORDER_WINDOW; w++) {
            struct nexus_frame f;
            int r = nexus_recv(p->c, &f, 10000);
            if (r != 1 || f.kind != CODEC_KIND_EMIT_ACK) {
                snprintf(p->err, sizeof(p->err), "ack %u: r=%d kind=%u", w, r, r == 1 ? f.kind : 0);
                return NULL;
            }
            if (id_parse(f.u.event.event_id) != id_pack(p->index, 0, w)) {
                snprintf(p->err, sizeof(p->err), "ack %u names another event", w);
                return NULL;
            }
            p->ack_seq[w] = f.u.event.sequence;
        }
    }
    return NULL;
}

static void test_ordering_concurrent_publishers(void **state)
{
    (void)state;
    const uint32_t n = 3;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 5000);
    struct nexus_client *sub[ORDER_SUBS];
    const char *all[] = {"chat:*:*:*"};
    for (uint32_t j = 0; j < ORDER_SUBS; j++) {
        sub[j] = h_connect_on(&b, j % n);
        assert_non_null(sub[j]);
        assert_int_equal(nexus_subscribe_sync(sub[j], camp, all, 1, NULL, NULL, NULL, 5000), 1);
    }
    static struct order_pub pubs[ORDER_PUBS];
    pthread_t th[ORDER_PUBS];
    for (uint32_t k = 0; k < ORDER_PUBS; k++) {
        memset(&pubs[k], 0, sizeof(pubs[k]));
        pubs[k].c = h_connect_on(&b, k % n);
        assert_non_null(pubs[k].c);
        pubs[k].index = k;
        pubs[k].campaign = camp;
    }
    for (uint32_t k = 0; k < ORDER_PUBS; k++)
        assert_int_equal(pthread_create(&th[k], NULL, order_pub_run, &pubs[k]), 0);
    for (uint32_t k = 0; k < ORDER_PUBS; k++)
        pthread_join(th[k], NULL);
    for (uint32_t k = 0; k < ORDER_PUBS; k++) {
        if (pubs[k].err[0])
            fail_msg("publisher %u: %s", k, pubs[k].err);
        for (uint32_t i = 1; i < ORDER_K; i++)
            assert_true(pubs[k].ack_seq[i] > pubs[k].ack_seq[i - 1]);
    }

    /* Every subscriber: sequences 1..N without a gap, in order; the same event order for all;
     * each publisher's events in its emit order; sequences as acknowledged. */
    const uint32_t total = ORDER_PUBS * ORDER_K;
    uint32_t *order0 = calloc(total + 1, sizeof(uint32_t));
    assert_non_null(order0);
    for (uint32_t j = 0; j < ORDER_SUBS; j++) {
        uint32_t next_i[ORDER_PUBS] = {0};
        int64_t deadline = h_now_ms() + 20000;
        for (uint32_t s = 1; s <= total; s++) {
            struct nexus_frame f;
            int r = nexus_recv(sub[j], &f, (int)(deadline - h_now_ms()));
            if (r != 1)
                fail_msg("subscriber %u: %u of %u events, then r=%d", j, s - 1, total, r);
            assert_int_equal(f.kind, CODEC_KIND_EVENT);
            assert_int_equal(f.u.event.sequence, s);
            uint32_t id = id_parse(f.u.event.event_id);
            uint32_t k = id / 1000000u, i = id % 100000u;
            assert_true(k < ORDER_PUBS);
            assert_int_equal(i, next_i[k]);
            next_i[k]++;
            assert_int_equal(pubs[k].ack_seq[i], s);
            if (j == 0)
                order0[s] = id;
            else
                assert_int_equal(order0[s], id);
        }
        struct nexus_frame f;
        assert_int_equal(nexus_recv(sub[j], &f, 200), 0);
    }
    free(order0);
    for (uint32_t k = 0; k < ORDER_PUBS; k++)
        nexus_close(pubs[k].c);
    for (uint32_t j = 0; j < ORDER_SUBS; j++)
        nexus_close(sub[j]);
    assert_int_equal(h_stop(&b), 0);
}

/* Fire-and-forget emits from one connection, to campaigns on other shards, keep their order
 * too: no acknowledgement paces them. */
/* The next k frames on sub are the events 1..k of publisher 0's campaign 0, in order, with ids
 * p0-c0-0.., each fourth (from the first) with a payload of big bytes, the others none. */
static void expect_in_order(struct nexus_client *sub, uint32_t k, size_t big)
{
    int64_t deadline = h_now_ms() + 20000;
    for (uint32_t i = 0; i < k; i++) {
        struct nexus_frame f;
        int r = nexus_recv(sub, &f, (int)(deadline - h_now_ms()));
        if (r != 1)
            fail_msg("%u of %u events, then r=%d", i, k, r);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, i + 1);
        assert_int_equal(id_parse(f.u.event.event_id), id_pack(0, 0, i));
        assert_int_equal(f.u.event.payload.len, i % 4 == 0 ? big : 0);
    }
}

static void test_ordering_fire_and_forget(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 7000);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    const uint32_t k = 3000;
    for (uint32_t i = 0; i < k; i++) {
        char id[64];
        snprintf(id, sizeof(id), "p0-c0-%u", i);
        struct codec_emit_in e;
        nexus_emit_init(&e, "chat:message:v1:success", camp, id, NULL, 0);
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    assert_int_equal(nexus_flush(pub), 0);
    expect_in_order(sub, k, 0);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* A publisher that writes a burst of fire-and-forget emits and closes its socket at once: the
 * broker received every one of those bytes before the end of the stream, so every event must
 * be accepted and delivered, even when backpressure (a small shard-to-shard ring) made the
 * broker hold part of the burst back while the close arrived. */
static void test_publisher_close_loses_nothing(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, "--ring-capacity", "64", NULL);
    int64_t camp = h_campaign_on(1, n, 7500);
    struct nexus_client *sub = h_connect_on(&b, 1);
    assert_non_null(sub);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    const uint32_t rounds = 3, k = 20000;
    uint64_t seq = 0;
    for (uint32_t r = 0; r < rounds; r++) {
        struct nexus_client *pub = h_connect_on(&b, 0);
        assert_non_null(pub);
        for (uint32_t i = 0; i < k; i++) {
            char id[64];
            snprintf(id, sizeof(id), "p%u-c0-%u", r, i);
            struct codec_emit_in e;
            nexus_emit_init(&e, "chat:message:v1:success", camp, id, NULL, 0);
            assert_int_equal(nexus_send_emit(pub, &e), 0);
        }
        assert_int_equal(nexus_flush(pub), 0);
        nexus_close(pub);
        int64_t deadline = h_now_ms() + 10000;
        for (uint32_t i = 0; i < k; i++) {
            struct nexus_frame f;
            int rr = nexus_recv(sub, &f, (int)(deadline - h_now_ms()));
            if (rr != 1)
                fail_msg("round %u: %u of %u events after the publisher closed, then r=%d", r, i, k,
                         rr);
            assert_int_equal(f.kind, CODEC_KIND_EVENT);
            assert_int_equal(f.u.event.sequence, ++seq);
            assert_int_equal(id_parse(f.u.event.event_id), id_pack(r, 0, i));
        }
    }
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
}

/* Emits going to another shard travel packed per owner and leave at the end of the loop pass;
 * any other request from the same shard to that owner (here: the same connection's subscribe)
 * must still come after them. So a connection that emits k events and then subscribes gets
 * none of the k, and the next event it emits is the first it receives. */
static void test_emits_then_subscribe_keep_order(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    for (uint32_t round = 0; round < 20; round++) {
        int64_t camp = h_campaign_on(1, n, 8000 + round * 100);
        struct nexus_client *c = h_connect_on(&b, 0);
        assert_non_null(c);
        const uint32_t k = 500;
        for (uint32_t i = 0; i < k; i++) {
            char id[64];
            snprintf(id, sizeof(id), "p0-c0-%u", i);
            struct codec_emit_in e;
            nexus_emit_init(&e, "chat:message:v1:success", camp, id, NULL, 0);
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
        assert_int_equal(nexus_subscribe_sync(c, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
        struct codec_emit_in e;
        nexus_emit_init(&e, "chat:message:v1:success", camp, "p0-c0-999999", NULL, 0);
        e.correlation = nexus_next_correlation(c);
        assert_int_equal(nexus_send_emit(c, &e), 0);
        assert_int_equal(nexus_flush(c), 0);
        bool acked = false, got = false;
        int64_t deadline = h_now_ms() + 5000;
        while (!acked || !got) {
            struct nexus_frame f;
            int r = nexus_recv(c, &f, (int)(deadline - h_now_ms()));
            if (r != 1)
                fail_msg("round %u: ack %d, event %d, then r=%d", round, acked, got, r);
            if (f.kind == CODEC_KIND_EMIT_ACK) {
                assert_int_equal(f.u.event.sequence, k + 1);
                acked = true;
                continue;
            }
            assert_int_equal(f.kind, CODEC_KIND_EVENT);
            if (f.u.event.sequence != k + 1)
                fail_msg("round %u: event %llu of the emits before the subscribe was delivered",
                         round, (unsigned long long)f.u.event.sequence);
            got = true;
        }
        nexus_close(c);
    }
    assert_int_equal(h_stop(&b), 0);
}

/* A payload of n bytes (n >= 5): one length-delimited field of 'x' (unknown to Payload,
 * skipped by the broker's check). Returns its length. */
static size_t big_payload(uint8_t *out, size_t n)
{
    size_t k = n - 2 - 3; /* tag 100 takes two bytes; a three-byte length */
    while (wire_varint_len(k) != 3)
        k--;
    uint8_t *p = wire_put_tag(out, 100, WIRE_LEN);
    p = wire_put_varint(p, k);
    memset(p, 'x', k);
    return (size_t)(p + k - out);
}

/* Emits larger than a packed chunk (64 KiB) go alone, small ones packed around them; more
 * than the 4 MiB a shard may have in flight to one owner makes the publisher wait. All arrive
 * in order, whole. */
static void test_large_emits_cross_shard(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, NULL);
    int64_t camp = h_campaign_on(1, n, 9000);
    struct nexus_client *sub = h_connect_on(&b, 0);
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    uint8_t *pl = malloc(200000);
    assert_non_null(pl);
    size_t big = big_payload(pl, 150000);
    const uint32_t k = 200; /* every fourth is big: ~7.5 MB in all */
    for (uint32_t i = 0; i < k; i++) {
        char id[64];
        snprintf(id, sizeof(id), "p0-c0-%u", i);
        struct codec_emit_in e;
        nexus_emit_init(&e, "chat:message:v1:success", camp, id, pl, i % 4 == 0 ? big : 0);
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    assert_int_equal(nexus_flush(pub), 0);
    expect_in_order(sub, k, big);
    free(pl);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cross_shard_2, h_teardown),
        cmocka_unit_test_teardown(test_cross_shard_3, h_teardown),
        cmocka_unit_test_teardown(test_cross_shard_busy_poll, h_teardown),
        cmocka_unit_test_teardown(test_cross_shard_pinned, h_teardown),
        cmocka_unit_test_teardown(test_ordering_concurrent_publishers, h_teardown),
        cmocka_unit_test_teardown(test_ordering_fire_and_forget, h_teardown),
        cmocka_unit_test_teardown(test_publisher_close_loses_nothing, h_teardown),
        cmocka_unit_test_teardown(test_emits_then_subscribe_keep_order, h_teardown),
        cmocka_unit_test_teardown(test_large_emits_cross_shard, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
