// SPDX-License-Identifier: Apache-2.0
//
// Slow subscribers (docs/DESIGN.md §2.4): a subscriber that stops reading passes its outbound bound
// (--max-outbound-bytes) and the broker applies its policy. disconnect: the slow one is
// closed after what was already on its socket, healthy subscribers of the same campaign get
// everything. drop: the slow one gets gap frames, and its events plus the gap ranges account
// for every sequence exactly once. Both are counted in the stats frame, and the broker's memory
// stays bounded while tens of megabytes pass a subscriber that never reads.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

/* Bytes of each event's payload value: large events reach the bounds with few frames. */
#define EVENT_VALUE_BYTES 4000
/* Events per publishing window; the window's last emit is acknowledged, which paces the
 * publisher without a reply per event. */
#define WINDOW 16

/* Builds a valid common.Payload {data: {"k": "<value_len x's>"}} into out (value_len + 32). */
static size_t build_payload(uint8_t *out, size_t value_len)
{
    uint8_t *value = malloc(value_len + 16), *entry = malloc(value_len + 32),
            *strct = malloc(value_len + 48);
    assert_non_null(value);
    assert_non_null(entry);
    assert_non_null(strct);
    memset(out, 'x', value_len);
    size_t vl = (size_t)(wire_put_len_field(value, 3, out, value_len) - value);
    uint8_t *p = wire_put_len_field(entry, 1, "k", 1);
    size_t el = (size_t)(wire_put_len_field(p, 2, value, vl) - entry);
    size_t sl = (size_t)(wire_put_len_field(strct, 1, entry, el) - strct);
    size_t pl = (size_t)(wire_put_len_field(out, 1, strct, sl) - out);
    free(value);
    free(entry);
    free(strct);
    return pl;
}

/* Caps what the kernel holds for a subscriber that stops reading. Without this, receive
 * autotuning lets a loopback socket absorb tens of megabytes (tcp_rmem's maximum), and the
 * broker would never see the subscriber as slow. 64 KiB (the kernel doubles it) is no less than
 * what a fresh connection has already advertised: shrinking below the advertised window makes
 * the kernel drop segments in flight, and the sender's retransmission backoff then stalls the
 * connection for tens of seconds, which is TCP's doing and not the broker's. */
static void cap_rcvbuf(struct nexus_client *c)
{
    int sz = 65536;
    assert_int_equal(setsockopt(nexus_fd(c), SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

struct reader {
    struct nexus_client *c;
    int64_t campaign;
    uint64_t want; /* sequences 1..want, in order */
    _Atomic uint64_t got;
    _Atomic int failed; /* err is set */
    char err[160];
};

/* Waits (bounded) until every reader has read at least `upto` events or failed. */
static void wait_readers(struct reader *rd, uint32_t nrd, uint64_t upto)
{
    int64_t deadline = h_now_ms() + 30000;
    for (uint32_t k = 0; k < nrd; k++) {
        while (atomic_load(&rd[k].got) < upto && !atomic_load(&rd[k].failed)) {
            if (h_now_ms() > deadline)
                fail_msg("healthy subscriber %u stuck at %llu of %llu events", k,
                         (unsigned long long)atomic_load(&rd[k].got), (unsigned long long)upto);
            usleep(200);
        }
    }
}

/* Publishes `count` events to camp from pub, in windows whose last emit is acknowledged.
 * Sequences are expected to continue from first_seq; window_pause_us, if not 0, is slept after
 * each window (a rate limit). With healthy readers given, each window waits until they are at
 * most one window behind: a healthy subscriber is one that keeps up, and a publisher that ran
 * megabytes ahead of a reader thread waiting to be scheduled would make even a fast reader
 * pass a 256 KiB bound. */
static void publish(struct nexus_client *pub, int64_t camp, uint32_t count, uint64_t first_seq,
                    const uint8_t *payload, size_t payload_len, struct reader *rd, uint32_t nrd,
                    useconds_t window_pause_us)
{
    for (uint32_t i = 0; i < count; i += WINDOW) {
        uint32_t end = i + WINDOW < count ? i + WINDOW : count;
        for (uint32_t w = i; w < end; w++) {
            struct codec_emit_in e;
            nexus_emit_init(&e, "feed:tick:v1:stream", camp, NULL, payload, payload_len);
            if (w + 1 < end) {
                assert_int_equal(nexus_send_emit(pub, &e), 0);
                continue;
            }
            struct nexus_frame f;
            int r = nexus_emit_sync(pub, &e, &f, 30000);
            if (r != 1)
                fail_msg("publisher: ack of event %u: r=%d", w, r);
            assert_int_equal(f.u.event.sequence, first_seq + w);
        }
        wait_readers(rd, nrd, first_seq + end - 1 >= WINDOW ? first_seq + end - 1 - WINDOW : 0);
        if (window_pause_us)
            usleep(window_pause_us);
    }
}

/* A healthy subscriber (a thread): reads every event, checking they come in order without a gap. */
static void *reader_run(void *arg)
{
    struct reader *rd = arg;
    int64_t deadline = h_now_ms() + 60000;
    uint64_t got = 0;
    while (got < rd->want) {
        struct nexus_frame f;
        int64_t left = deadline - h_now_ms();
        int r = left > 0 ? nexus_recv(rd->c, &f, (int)left) : 0;
        if (r != 1) {
            snprintf(rd->err, sizeof(rd->err), "after %llu of %llu events: r=%d",
                     (unsigned long long)got, (unsigned long long)rd->want, r);
            atomic_store(&rd->failed, 1);
            return NULL;
        }
        if (f.kind != CODEC_KIND_EVENT || f.u.event.campaign_id != rd->campaign ||
            f.u.event.sequence != got + 1) {
            snprintf(rd->err, sizeof(rd->err), "after %llu events: kind %u sequence %llu",
                     (unsigned long long)got, f.kind, (unsigned long long)f.u.event.sequence);
            atomic_store(&rd->failed, 1);
            return NULL;
        }
        got++;
        atomic_store(&rd->got, got);
    }
    return NULL;
}

static uint64_t stat_sum(const struct codec_shard_stats *st, int n, size_t off)
{
    uint64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += *(const uint64_t *)((const char *)&st[i] + off);
    return sum;
}
#define STAT_SUM(st, n, field) stat_sum(st, n, offsetof(struct codec_shard_stats, field))

/* ---- policy: disconnect -------------------------------------------------------------------- */

static void test_slow_disconnect(void **state)
{
    (void)state;
    const uint32_t n = 2;
    struct broker_proc b =
        H_START(n, "--max-outbound-bytes", "256K", "--slow-policy", "disconnect", NULL);
    int64_t camp = h_campaign_on(1, n, 400);
    struct nexus_client *slow = h_connect_on(&b, 0);
    assert_non_null(slow);
    cap_rcvbuf(slow);
    assert_int_equal(nexus_subscribe_sync(slow, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    /* Healthy subscribers on the slow one's shard and on the owner's. */
    /* static: should the test fail, its reader threads may still be running. */
    static struct reader rd[2];
    pthread_t th[2];
    for (uint32_t k = 0; k < 2; k++) {
        memset(&rd[k], 0, sizeof(rd[k]));
        rd[k].c = h_connect_on(&b, k);
        assert_non_null(rd[k].c);
        assert_int_equal(nexus_subscribe_sync(rd[k].c, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
        rd[k].campaign = camp;
    }
    struct nexus_client *pub = h_connect_on(&b, 0);
    assert_non_null(pub);

    /* 4096 events of ~4 KB: 16 MB, far more than 256 KiB of queue plus the socket buffers. */
    const uint32_t count = 4096;
    for (uint32_t k = 0; k < 2; k++) {
        rd[k].want = count;
        assert_int_equal(pthread_create(&th[k], NULL, reader_run, &rd[k]), 0);
    }
    uint8_t *payload = malloc(EVENT_VALUE_BYTES + 64);
    assert_non_null(payload);
    size_t pl = build_payload(payload, EVENT_VALUE_BYTES);
    publish(pub, camp, count, 1, payload, pl, rd, 2, 0);
    for (uint32_t k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        if (rd[k].err[0])
            fail_msg("healthy subscriber on shard %u: %s", k, rd[k].err);
    }

    /* The slow one: what was already on its socket, in order from 1, then the close. */
    uint64_t got = 0;
    int r;
    int64_t deadline = h_now_ms() + 30000;
    for (;;) {
        struct nexus_frame f;
        int64_t left = deadline - h_now_ms();
        r = left > 0 ? nexus_recv(slow, &f, (int)left) : 0;
        if (r != 1)
            break;
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, got + 1);
        got++;
    }
    if (r != -ECONNRESET)
        fail_msg("slow subscriber was not disconnected (r=%d after %llu events)", r,
                 (unsigned long long)got);
    assert_true(got < count);

    struct codec_shard_stats st[4];
    int ns = h_stats(pub, st, 4, 5000);
    assert_int_equal(ns, (int)n);
    assert_int_equal(STAT_SUM(st, ns, slow_disconnects), 1);
    assert_int_equal(STAT_SUM(st, ns, drops), 0);

    free(payload);
    nexus_close(slow);
    nexus_close(pub);
    for (uint32_t k = 0; k < 2; k++)
        nexus_close(rd[k].c);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- policy: drop -------------------------------------------------------------------------- */

/* The slow subscriber's reader under the drop policy: events and gap notices, in sequence
 * order, must together name every sequence 1..want exactly once. A sluggish reader stops
 * reading until the broker reports new drops (stats frame on its own connection), then reads
 * until it has caught up (a gap notice followed by an event), then stops again, while the
 * publisher is still running: drops and deliveries alternate, which is where a gap notice
 * could be misplaced. Runs in a thread; reports through err. */
struct account {
    struct nexus_client *c;
    struct nexus_client *stats; /* sluggish: where drops are watched */
    int64_t campaign;
    uint64_t want;
    _Atomic int pub_done;
    uint64_t events, gaps, dropped, catch_ups;
    char err[200];
};

/* Sum of the broker's drop counters, or UINT64_MAX if the stats frame failed. */
static uint64_t drops_now(struct nexus_client *c)
{
    struct codec_shard_stats st[4];
    int n = h_stats(c, st, 4, 5000);
    uint64_t sum = 0;
    for (int i = 0; i < n && i < 4; i++)
        sum += st[i].drops;
    return n > 0 ? sum : UINT64_MAX;
}

/* Sluggish reader: waits (bounded) until the broker drops events again (counted from now, not
 * from the last stall: drops go on for a while after the reader starts again), or until the
 * publisher is done. Returns 0, or -1 on failure. */
static int wait_drops(struct account *a)
{
    uint64_t base = drops_now(a->stats);
    int64_t deadline = h_now_ms() + 20000;
    for (;;) {
        uint64_t d = drops_now(a->stats);
        if (base == UINT64_MAX || d == UINT64_MAX || h_now_ms() > deadline)
            return -1;
        if (d > base || atomic_load(&a->pub_done))
            return 0;
        usleep(2000);
    }
}

static void *account_run(void *arg)
{
    struct account *a = arg;
    uint8_t *seen = calloc(a->want + 1, 1);
    uint64_t accounted = 0, high = 0;
    bool stalled = a->stats != NULL, gap_pending = false;
    int64_t deadline = h_now_ms() + 60000;
    while (seen && accounted < a->want && !a->err[0]) {
        if (stalled) {
            if (wait_drops(a) < 0) {
                snprintf(a->err, sizeof(a->err), "no drops reported while stalled");
                break;
            }
            stalled = false;
        }
        struct nexus_frame f;
        int64_t left = deadline - h_now_ms();
        int r = left > 0 ? nexus_recv(a->c, &f, (int)left) : 0;
        if (r != 1) {
            snprintf(a->err, sizeof(a->err),
                     "%llu of %llu sequences accounted for (%llu events, %llu gaps), then r=%d",
                     (unsigned long long)accounted, (unsigned long long)a->want,
                     (unsigned long long)a->events, (unsigned long long)a->gaps, r);
            break;
        }
        if (f.kind == CODEC_KIND_EVENT) {
            uint64_t sq = f.u.event.sequence;
            if (f.u.event.campaign_id != a->campaign || sq < 1 || sq > a->want || sq <= high ||
                seen[sq]) {
                snprintf(a->err, sizeof(a->err),
                         "event %llu of campaign %lld after sequence %llu was accounted for",
                         (unsigned long long)sq, (long long)f.u.event.campaign_id,
                         (unsigned long long)high);
                break;
            }
            seen[sq] = 1;
            high = sq;
            accounted++;
            a->events++;
            if (gap_pending && a->stats && !atomic_load(&a->pub_done)) {
                a->catch_ups++;
                stalled = true; /* caught up: stop reading again */
            }
            gap_pending = false;
        } else if (f.kind == CODEC_KIND_GAP) {
            const struct codec_gap_in *g = &f.u.gap;
            /* Every type matches this subscription, so a range is exactly what was dropped. */
            bool ok = g->campaign_id == a->campaign && g->first_sequence > high &&
                      g->first_sequence <= g->last_sequence && g->last_sequence <= a->want &&
                      g->dropped == g->last_sequence - g->first_sequence + 1;
            for (uint64_t sq = g->first_sequence; ok && sq <= g->last_sequence; sq++)
                ok = !seen[sq];
            if (!ok) {
                snprintf(a->err, sizeof(a->err),
                         "gap %llu..%llu (dropped %llu, campaign %lld) after sequence %llu",
                         (unsigned long long)g->first_sequence,
                         (unsigned long long)g->last_sequence, (unsigned long long)g->dropped,
                         (long long)g->campaign_id, (unsigned long long)high);
                break;
            }
            memset(seen + g->first_sequence, 1, g->last_sequence - g->first_sequence + 1);
            high = g->last_sequence;
            accounted += g->dropped;
            a->dropped += g->dropped;
            a->gaps++;
            gap_pending = true;
        } else {
            snprintf(a->err, sizeof(a->err), "unexpected frame kind %u", f.kind);
        }
    }
    if (!seen)
        snprintf(a->err, sizeof(a->err), "out of memory");
    free(seen);
    return NULL;
}

static void slow_drop(bool sluggish)
{
    const uint32_t n = 2;
    struct broker_proc b =
        H_START(n, "--max-outbound-bytes", "256K", "--slow-policy", "drop", NULL);
    int64_t camp = h_campaign_on(1, n, 500);
    struct nexus_client *slow = h_connect_on(&b, 0);
    assert_non_null(slow);
    cap_rcvbuf(slow);
    assert_int_equal(nexus_subscribe_sync(slow, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    /* static: should the test fail, its reader threads may still be running. */
    static struct reader rd[2];
    pthread_t th[2], slow_th;
    for (uint32_t k = 0; k < 2; k++) {
        memset(&rd[k], 0, sizeof(rd[k]));
        rd[k].c = h_connect_on(&b, k);
        assert_non_null(rd[k].c);
        assert_int_equal(nexus_subscribe_sync(rd[k].c, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
        rd[k].campaign = camp;
    }
    struct nexus_client *pub = h_connect_on(&b, 1);
    assert_non_null(pub);

    /* The sluggish case runs longer, at a bounded rate, so that the reader can stall and catch
     * up several times while the publisher is still running. */
    const uint32_t count = sluggish ? 8192 : 4096;
    static struct account acc;
    memset(&acc, 0, sizeof(acc));
    acc.c = slow;
    acc.campaign = camp;
    acc.want = count;
    if (sluggish) {
        acc.stats = h_connect_on(&b, 1);
        assert_non_null(acc.stats);
    }
    for (uint32_t k = 0; k < 2; k++) {
        rd[k].want = count;
        assert_int_equal(pthread_create(&th[k], NULL, reader_run, &rd[k]), 0);
    }
    /* The sluggish reader reads while the publisher runs; the other one only afterwards. */
    if (sluggish)
        assert_int_equal(pthread_create(&slow_th, NULL, account_run, &acc), 0);
    uint8_t *payload = malloc(EVENT_VALUE_BYTES + 64);
    assert_non_null(payload);
    size_t pl = build_payload(payload, EVENT_VALUE_BYTES);
    publish(pub, camp, count, 1, payload, pl, rd, 2, sluggish ? 3000 : 0);
    atomic_store(&acc.pub_done, 1);
    for (uint32_t k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        if (rd[k].err[0])
            fail_msg("healthy subscriber on shard %u: %s", k, rd[k].err);
    }
    if (sluggish)
        pthread_join(slow_th, NULL);
    else
        account_run(&acc);
    if (acc.err[0])
        fail_msg("slow subscriber: %s", acc.err);
    assert_true(acc.gaps >= 1);
    assert_true(acc.events >= 1);
    /* The sluggish reader fell behind and caught up again more than once. */
    if (sluggish)
        print_message("sluggish subscriber: %llu events, %llu gaps, %llu dropped, caught up %llu "
                      "times\n",
                      (unsigned long long)acc.events, (unsigned long long)acc.gaps,
                      (unsigned long long)acc.dropped, (unsigned long long)acc.catch_ups);
    if (sluggish && acc.catch_ups < 2)
        fail_msg("sluggish subscriber caught up %llu times (%llu gaps, %llu events)",
                 (unsigned long long)acc.catch_ups, (unsigned long long)acc.gaps,
                 (unsigned long long)acc.events);
    /* Still connected and usable, and nothing more is owed. */
    assert_int_equal(h_ping(slow, 5000), 1);
    struct nexus_frame f;
    assert_int_equal(nexus_recv(slow, &f, 100), 0);

    struct codec_shard_stats st[4];
    int ns = h_stats(pub, st, 4, 5000);
    assert_int_equal(ns, (int)n);
    assert_int_equal(STAT_SUM(st, ns, drops), acc.dropped);
    assert_int_equal(STAT_SUM(st, ns, slow_disconnects), 0);

    free(payload);
    nexus_close(slow);
    nexus_close(pub);
    if (acc.stats)
        nexus_close(acc.stats);
    for (uint32_t k = 0; k < 2; k++)
        nexus_close(rd[k].c);
    assert_int_equal(h_stop(&b), 0);
}

/* A subscriber that stops reading entirely, then reads everything once the publisher is done. */
static void test_slow_drop(void **state)
{
    (void)state;
    slow_drop(false);
}

/* A subscriber that keeps falling behind and catching up: drops and deliveries alternate. */
static void test_slow_drop_sluggish(void **state)
{
    (void)state;
    slow_drop(true);
}

/* ---- memory stays bounded ------------------------------------------------------------------ */

/* Pushes 64 MiB of events past a subscriber that never reads, under the drop policy (the one
 * where a broker could be tempted to buffer). What the broker may legitimately hold: the
 * subscriber's 256 KiB queue, the receive buffers, and what is in flight on the shard-to-shard
 * ring; the ring is sized down to 1024 messages (4 MiB of these events) so that its share
 * is small next to the 64 MiB pushed. Buffering even half the traffic would exceed the limit. */
static void test_memory_bounded(void **state)
{
    (void)state;
#ifdef TEST_ASAN
    /* ASan keeps freed memory in a quarantine (256 MiB by default), which would count as
     * growth here; a small one keeps the measurement about the broker's own buffering. */
    char opts[512];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=4", old ? old : "", old ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
#endif
    const uint32_t n = 2;
    struct broker_proc b = H_START(n, "--max-outbound-bytes", "256K", "--slow-policy", "drop",
                                   "--ring-capacity", "1024", NULL);
    int64_t camp = h_campaign_on(1, n, 600);
    struct nexus_client *stuck = h_connect_on(&b, 0);
    assert_non_null(stuck);
    cap_rcvbuf(stuck);
    assert_int_equal(nexus_subscribe_sync(stuck, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    struct nexus_client *pub = h_connect_on(&b, 1);
    assert_non_null(pub);
    uint8_t *payload = malloc(EVENT_VALUE_BYTES + 64);
    assert_non_null(payload);
    size_t pl = build_payload(payload, EVENT_VALUE_BYTES);

    /* Warm up: the stuck subscriber's queue fills and every buffer has been touched. */
    const uint32_t warm = 2048;
    publish(pub, camp, warm, 1, payload, pl, NULL, 0, 0);
    assert_int_equal(h_ping(pub, 5000), 1);
    uint64_t rss0 = h_rss_bytes(&b);
    assert_true(rss0 > 0);

    const uint64_t push_bytes = 64ull << 20;
    const uint32_t count = (uint32_t)(push_bytes / pl);
    publish(pub, camp, count, warm + 1, payload, pl, NULL, 0, 0);
    assert_int_equal(h_ping(pub, 5000), 1);
    uint64_t rss1 = h_rss_bytes(&b);
    uint64_t growth = rss1 > rss0 ? rss1 - rss0 : 0;
    print_message("broker RSS %llu KiB -> %llu KiB after %llu MiB past a stuck subscriber\n",
                  (unsigned long long)rss0 >> 10, (unsigned long long)rss1 >> 10,
                  (unsigned long long)push_bytes >> 20);
    if (growth >= 24ull << 20)
        fail_msg("broker RSS grew by %llu MiB while %llu MiB went past a stuck subscriber",
                 (unsigned long long)growth >> 20, (unsigned long long)push_bytes >> 20);

    /* The drops were counted: nearly everything pushed (the queue holds at most 256 KiB). */
    struct codec_shard_stats st[4];
    int ns = h_stats(pub, st, 4, 5000);
    assert_int_equal(ns, (int)n);
    uint64_t drops = STAT_SUM(st, ns, drops);
    assert_true(drops + 64 >= count);
    assert_true(drops <= (uint64_t)count + warm);
    assert_int_equal(STAT_SUM(st, ns, slow_disconnects), 0);
    assert_true(STAT_SUM(st, ns, bytes_queued) <= (256u << 10) + 64 * 1024);

    free(payload);
    nexus_close(stuck);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_slow_disconnect, h_teardown),
        cmocka_unit_test_teardown(test_slow_drop, h_teardown),
        cmocka_unit_test_teardown(test_slow_drop_sluggish, h_teardown),
        cmocka_unit_test_teardown(test_memory_bounded, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
