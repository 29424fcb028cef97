// SPDX-License-Identifier: Apache-2.0
//
// Smoke test of the broker core: one subscriber, one publisher, acks, delivery contents.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "harness.h"

static void test_emit_subscribe_ack(void **state)
{
    (void)state;
    struct broker_proc b = h_start(2, NULL);
    struct nexus_client *sub = h_connect(&b, NULL);
    struct nexus_client *pub = h_connect(&b, NULL);
    assert_non_null(sub);
    assert_non_null(pub);
    const char *pat[] = {"order:*:v1:*"};
    uint64_t sid = 0;
    assert_int_equal(nexus_subscribe_sync(sub, 42, pat, 1, NULL, &sid, NULL, 5000), 1);
    assert_true(sid > 0);

    for (int i = 0; i < 100; i++) {
        struct codec_emit_in e;
        char id[32];
        snprintf(id, sizeof(id), "ev-%d", i);
        nexus_emit_init(&e, i % 2 ? "order:placed:v1:success" : "other:placed:v1:success", 42, id,
                        "\x0a\x00", 2);
        struct nexus_frame ack;
        assert_int_equal(nexus_emit_sync(pub, &e, &ack, 5000), 1);
        assert_true(ack.u.event.success);
        assert_int_equal(ack.u.event.sequence, (uint64_t)i + 1);
        assert_int_equal(ack.u.event.campaign_id, 42);
        assert_memory_equal(ack.u.event.message.ptr, "accepted", 8);
    }
    int got = 0;
    uint64_t last = 0;
    while (got < 50) {
        struct nexus_frame f;
        int r = nexus_recv(sub, &f, 5000);
        assert_int_equal(r, 1);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_true(f.u.event.sequence > last);
        assert_int_equal(f.u.event.sequence % 2, 0); /* odd i = even sequence: order:* only */
        last = f.u.event.sequence;
        assert_int_equal(f.u.event.payload.len, 2);
        got++;
    }
    struct nexus_frame f;
    assert_int_equal(nexus_recv(sub, &f, 200), 0);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emit_subscribe_ack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
