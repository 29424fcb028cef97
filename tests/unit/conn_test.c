// SPDX-License-Identifier: Apache-2.0
//
// The connection close state machine of broker/conn.h, on a real shard: a real io_uring with
// its provided buffer ring (shard_init), connections on real socketpairs, completions reaped
// and dispatched the way the shard loop does. What it checks: a closed connection takes no
// more frames and drops their references; it is released only at conn_reap and freed only
// when the kernel has given back every operation; closing twice is harmless;
// conn_close_after_flush sends what is queued before it closes; a peer's EOF closes; a frame
// queued before a hard close is released with the connection. The shard's dead_count
// returning to 0 is the proof that conn_free ran (once: it asserts as much).
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker/conn.h"
#include "broker/shard.h"

struct fixture {
    struct broker b;
    struct shard *s;
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    config_defaults(&fx->b.cfg);
    fx->b.cfg.recv_buffers = 16;
    fx->b.shard_count = 1;
    fx->s = aligned_alloc(64, (sizeof(struct shard) + 63) & ~(size_t)63);
    assert_non_null(fx->s);
    memset(fx->s, 0, sizeof(*fx->s));
    fx->s->broker = &fx->b;
    fx->s->cfg = &fx->b.cfg;
    fx->s->listen_fd = -1;
    oframe_self = 0;
    int r = shard_init(fx->s);
    if (r < 0) {
        print_message("shard_init: %s (io_uring unavailable here)\n", strerror(-r));
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    shard_free_outboxes(fx->s);
    free(fx->s);
    free(fx);
    return 0;
}

/* One pass of the shard loop's work for connections: start queued sends, wait for
 * completions (at most wait_ms), dispatch them (shard_cqe), release closed connections. */
static void pass(struct shard *s, int wait_ms)
{
    while (s->flush_head) {
        struct conn *c = s->flush_head;
        s->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->flags &= ~CONN_ON_FLUSH;
        conn_flush(c);
    }
    struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = (long long)wait_ms * 1000000};
    struct io_uring_cqe *cqe;
    io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
    unsigned head, n = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe)
    {
        shard_cqe(s, cqe);
        n++;
    }
    io_uring_cq_advance(&s->ring, n);
    conn_reap(s);
}

/* Runs passes until the shard has no dead connection left (all freed), at most ~2 s. */
static void settle(struct shard *s)
{
    for (int i = 0; i < 200 && (s->dead_count || s->kill_head); i++)
        pass(s, 10);
}

static struct conn *open_conn(struct fixture *fx, int *peer)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct conn *c = conn_create(fx->s, sv[0]);
    assert_non_null(c);
    atomic_fetch_add(&fx->b.connections, 1);
    conn_recv_arm(c);
    assert_true(c->flags & CONN_RECV_ARMED);
    assert_int_equal(c->ops_inflight, 1);
    *peer = sv[1];
    return c;
}

/* A shared frame with len bytes of a valid-looking frame (content is not parsed here). */
static struct oframe *frame(uint32_t len, uint8_t fill)
{
    struct oframe *f = oframe_alloc(len);
    assert_non_null(f);
    memset(f->data, fill, len);
    return f;
}

/* The true reference count (oframe.h): shared + local - (local > 0). */
static unsigned refs(const struct oframe *f)
{
    return atomic_load(&f->shared) + f->local - (f->local > 0);
}

static void test_close_is_immediate_and_free_waits_for_the_kernel(void **state)
{
    struct fixture *fx = *state;
    int peer;
    struct conn *c = open_conn(fx, &peer);
    uint64_t id = c->id;
    assert_ptr_equal(conn_lookup(fx->s, id), c);

    conn_close(c, "test");
    assert_true(c->flags & CONN_DEAD);
    assert_false(c->flags & CONN_REAPED);
    assert_int_equal(fx->s->dead_count, 1);
    assert_null(conn_lookup(fx->s, id)); /* dead: not found by id any more */

    /* Nothing is queued to a dead connection; its reference is dropped. */
    struct oframe *f = frame(64, 0xab);
    oframe_ref(f, 1);
    assert_int_equal(refs(f), 2);
    assert_int_equal(conn_enqueue(c, f), -ENOBUFS);
    assert_int_equal(refs(f), 1);
    oframe_unref(f);

    /* Closing again changes nothing. */
    conn_close(c, "again");
    assert_int_equal(fx->s->dead_count, 1);

    /* Reaping releases it but cannot free it: the kernel still holds its receive. */
    conn_reap(fx->s);
    assert_true(c->flags & CONN_REAPED);
    assert_true(c->ops_inflight >= 1);
    assert_int_equal(fx->s->dead_count, 1);
    settle(fx->s);
    assert_int_equal(fx->s->dead_count, 0); /* freed once the receive came back */
    assert_int_equal(fx->s->conns.count, 0);
    close(peer);
}

static void test_close_after_flush_sends_first(void **state)
{
    struct fixture *fx = *state;
    int peer;
    struct conn *c = open_conn(fx, &peer);
    struct oframe *a = frame(100, 1), *b = frame(200, 2);
    assert_int_equal(conn_enqueue(c, a), 0);
    assert_int_equal(conn_enqueue(c, b), 0);
    assert_int_equal(c->q_count, 2);

    conn_close_after_flush(c);
    assert_true(c->flags & CONN_CLOSING);
    assert_false(c->flags & CONN_DEAD); /* output still queued */
    for (int i = 0; i < 50 && fx->s->conns.count; i++)
        pass(fx->s, 10);
    assert_int_equal(fx->s->conns.count, 0);
    settle(fx->s);
    assert_int_equal(fx->s->dead_count, 0);

    /* The peer got both frames, whole and in order, then EOF. */
    uint8_t buf[512];
    size_t got = 0;
    ssize_t n;
    while ((n = read(peer, buf + got, sizeof(buf) - got)) > 0)
        got += (size_t)n;
    assert_int_equal(got, 300);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(buf[i], 1);
    for (size_t i = 100; i < 300; i++)
        assert_int_equal(buf[i], 2);
    close(peer);
}

static void test_peer_eof_closes(void **state)
{
    struct fixture *fx = *state;
    int peer;
    struct conn *c = open_conn(fx, &peer);
    (void)c;
    assert_int_equal(fx->s->conns.count, 1);
    close(peer);
    for (int i = 0; i < 50 && fx->s->conns.count; i++)
        pass(fx->s, 10);
    assert_int_equal(fx->s->conns.count, 0);
    settle(fx->s);
    assert_int_equal(fx->s->dead_count, 0);
}

static void test_hard_close_releases_queued_frames(void **state)
{
    struct fixture *fx = *state;
    int peer;
    struct conn *c = open_conn(fx, &peer);
    struct oframe *f = frame(1000, 7);
    oframe_ref(f, 1); /* ours, to watch the count */
    assert_int_equal(conn_enqueue(c, f), 0);
    assert_int_equal(refs(f), 2);
    conn_close(c, "reset");
    settle(fx->s);
    assert_int_equal(fx->s->dead_count, 0);
    assert_int_equal(refs(f), 1); /* the queue's reference went with the connection */
    oframe_unref(f);
    close(peer);
}

static void test_bad_frame_gets_error_then_close(void **state)
{
    struct fixture *fx = *state;
    int peer;
    struct conn *c = open_conn(fx, &peer);
    (void)c;
    /* A length of 0 is refused: frame_empty, then the connection closes after flushing. */
    uint8_t zero[4] = {0, 0, 0, 0};
    assert_int_equal(write(peer, zero, sizeof(zero)), 4);
    for (int i = 0; i < 100 && fx->s->conns.count; i++)
        pass(fx->s, 10);
    assert_int_equal(fx->s->conns.count, 0);
    settle(fx->s);
    assert_int_equal(fx->s->dead_count, 0);
    uint8_t buf[512];
    ssize_t n = read(peer, buf, sizeof(buf));
    assert_true(n > 4);
    assert_non_null(memmem(buf, (size_t)n, "frame_empty", 11));
    close(peer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_close_is_immediate_and_free_waits_for_the_kernel,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_after_flush_sends_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_eof_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hard_close_releases_queued_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_frame_gets_error_then_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
