// SPDX-License-Identifier: Apache-2.0
//
// The Provider's basic lifecycle against the real nexusd: a plain request through the
// built-in test:echo handler, a stream through test:stream_ticks with heartbeats and cancel,
// and no_handler.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "codec/structpb.h"
#include "harness.h"

/* Receives frames until one of kind EVENT arrives (skipping acks). */
static int next_event(struct nexus_client *c, struct nexus_frame *f, int timeout_ms)
{
    for (;;) {
        int r = nexus_recv(c, f, timeout_ms);
        if (r <= 0)
            return r;
        if (f->kind == CODEC_KIND_EVENT)
            return 1;
    }
}

static int type_is(const struct nexus_frame *f, const char *t)
{
    return f->u.event.event_type.len == strlen(t) &&
           memcmp(f->u.event.event_type.ptr, t, strlen(t)) == 0;
}

static void test_echo_lifecycle(void **state)
{
    (void)state;
    struct broker_proc b = h_start(2, "--test-handlers", NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint8_t buf[256];
    struct structpb_writer w;
    const uint8_t *pl;
    structpb_begin(&w, buf, sizeof(buf));
    structpb_add_string(&w, "hello", "world", 5);
    int n = structpb_finish(&w, &pl);
    assert_true(n > 0);
    struct codec_emit_in e;
    nexus_emit_init(&e, "test:echo:v1:requested", 7, "req-1", pl, (size_t)n);
    struct nexus_frame f;
    assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), 1);
    uint64_t req_seq = f.u.event.sequence;
    assert_true(req_seq > 0);
    assert_int_equal(next_event(c, &f, 5000), 1);
    assert_true(type_is(&f, "test:echo:v1:started"));
    assert_int_equal(f.u.event.correlation_id.len, 5);
    assert_memory_equal(f.u.event.correlation_id.ptr, "req-1", 5);
    assert_int_equal(f.u.event.sequence, req_seq + 1);
    assert_int_equal(next_event(c, &f, 5000), 1);
    assert_true(type_is(&f, "test:echo:v1:success"));
    assert_int_equal(f.u.event.sequence, req_seq + 2);
    assert_int_equal(f.u.event.payload.len, (uint32_t)n);
    assert_memory_equal(f.u.event.payload.ptr, pl, (size_t)n);
    /* exactly one terminal: nothing more */
    assert_int_equal(next_event(c, &f, 300), 0);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_stream_heartbeat_cancel(void **state)
{
    (void)state;
    struct broker_proc b = h_start(2, "--test-handlers", NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint8_t buf[256];
    struct structpb_writer w;
    const uint8_t *pl;
    structpb_begin(&w, buf, sizeof(buf));
    structpb_add_number(&w, "interval_ms", 100);
    structpb_add_number(&w, "heartbeat_ms", 100);
    int n = structpb_finish(&w, &pl);
    struct codec_emit_in e;
    nexus_emit_init(&e, "test:stream_ticks:v1:requested", 9, "s-1", pl, (size_t)n);
    struct nexus_frame f;
    assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), 1);
    int heartbeats = 0, streams = 0;
    double last_count = -1;
    int64_t deadline = h_now_ms() + 10000;
    while ((heartbeats < 3 || streams < 3) && h_now_ms() < deadline) {
        assert_int_equal(next_event(c, &f, 5000), 1);
        if (type_is(&f, "test:stream_ticks:v1:heartbeat")) {
            struct structpb_value v;
            assert_int_equal(structpb_payload_get(f.u.event.payload.ptr, f.u.event.payload.len,
                                                  "stream_count", &v),
                             1);
            assert_true(v.number >= last_count);
            last_count = v.number;
            heartbeats++;
        } else if (type_is(&f, "test:stream_ticks:v1:stream")) {
            streams++;
            assert_int_equal(f.u.event.stream_seq, (uint64_t)streams);
        }
    }
    assert_true(heartbeats >= 3);
    assert_true(last_count > 0);
    /* cancel: metadata.global_context.correlation_id names the stream */
    uint8_t md[128];
    int mdl = codec_metadata_build(md, sizeof(md), NULL, "s-1");
    nexus_emit_init(&e, "test:stream_ticks:v1:cancel", 9, NULL, NULL, 0);
    e.metadata.ptr = md;
    e.metadata.len = (uint32_t)mdl;
    e.has_metadata = true;
    assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), 1);
    int terminal = 0;
    for (;;) {
        int r = next_event(c, &f, 500);
        if (r == 0)
            break;
        assert_int_equal(r, 1);
        if (type_is(&f, "test:stream_ticks:v1:cancelled"))
            terminal++;
        else
            assert_int_equal(terminal, 0); /* nothing after the terminal event */
    }
    assert_int_equal(terminal, 1);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_no_handler(void **state)
{
    (void)state;
    struct broker_proc b = h_start(2, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    struct codec_emit_in e;
    nexus_emit_init(&e, "billing:charge:v1:requested", 3, "r-9", NULL, 0);
    struct nexus_frame f;
    assert_int_equal(nexus_emit_sync(c, &e, &f, 5000), 1);
    assert_int_equal(next_event(c, &f, 5000), 1);
    assert_true(type_is(&f, "billing:charge:v1:failed"));
    assert_int_equal(f.u.event.code.len, 10);
    assert_memory_equal(f.u.event.code.ptr, "no_handler", 10);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_lifecycle),
        cmocka_unit_test(test_stream_heartbeat_cancel),
        cmocka_unit_test(test_no_handler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
