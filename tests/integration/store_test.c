// SPDX-License-Identifier: Apache-2.0
//
// The event log (broker/store.h, docs/OPERATIONS.md "Data directory") with the real nexusd on a
// data directory in a fresh temporary directory. The log is checked by reading the segment files
// here (codec/logrec.h), not through the broker:
// - kill -9 loop: publishers stream acked emits to 8 campaigns on 2 shards and a subscriber
//   reads them; nexusd is killed at a random moment, restarted, killed again (20 cycles, or
//   NEXUS_KILL9_CYCLES). After every kill every acknowledged event and every delivered event is
//   in the log at its (campaign, sequence) exactly once, each campaign holds 1..max without gap
//   or repeat, recovery counts every record, and after the restart each campaign goes on at
//   max + 1.
// - a torn tail (last segment cut mid-record, or its last record's byte flipped) is cut at
//   start; damage followed by valid records refuses the start, naming file and offset, unless
//   --recover truncate; the same across segments (--segment-bytes 1M).
// - one nexusd per directory (lock); the shard count cannot change.
// - NEXUS_TEST_LOG_FAIL=fsync:3 / write:3 and a full filesystem (a 2 MiB tmpfs, when root):
//   storage_failed / storage_full, never an ack for an event not in the log, ping and subscribe
//   still served; a sync failing among others in flight (--fsync-depth 8, pipelined emits):
//   acknowledgements stop at the failed batch, none after, and the subscriber sees exactly the
//   acknowledged events.
// Environment: NEXUS_KILL9_CYCLES (default 20), NEXUS_KILL9_SEED (default: time), NEXUS_STORE_ONLY
// (run only the test whose name contains it, e.g. "kill9": scripts/kill9-loop).
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mount.h>

#include <cmocka.h>

#include "harness.h"
#include "hostile_util.h"
#include "store_util.h"

#define SHARDS 2
#define NCAMP  8
#define WINDOW 64

/* ---- kill -9 loop ------------------------------------------------------------------------ */

struct seen_vec {
    struct st_seen *v;
    size_t n, cap;
};

static void seen_add(struct seen_vec *s, int64_t camp, uint64_t seq, uint64_t key)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, sizeof(*s->v) * s->cap);
        if (!s->v)
            abort();
    }
    s->v[s->n++] = (struct st_seen){camp, seq, key};
}

static void seen_append(struct seen_vec *to, const struct seen_vec *from)
{
    for (size_t i = 0; i < from->n; i++)
        seen_add(to, from->v[i].camp, from->v[i].seq, from->v[i].key);
}

struct publisher {
    const struct broker_proc *b;
    const int64_t *camps;
    uint64_t key_base; /* cycle and publisher in the high bits */
    unsigned seed;
    struct seen_vec acked;
    uint64_t sent, errors, bad;
    char first_error[64];
};

/* Emits with acks, WINDOW in flight, to random campaigns, until the broker goes away. Every
 * ack is checked against what was sent with its correlation. */
static void *publisher_main(void *arg)
{
    struct publisher *p = arg;
    struct nexus_client *c = h_connect(p->b, NULL);
    if (!c)
        return NULL; /* killed before we connected */
    uint8_t pl[256];
    size_t pl_len = st_payload(pl, 40 + rand_r(&p->seed) % 200);
    /* correlation -> (campaign index, key); correlations are 1, 2, ... */
    size_t cap = 1 << 16;
    uint8_t *camp_of = malloc(cap);
    uint32_t inflight = 0;
    uint64_t corr = 0;
    for (;;) {
        while (inflight < WINDOW) {
            if (corr + 1 >= cap) {
                cap *= 2;
                camp_of = realloc(camp_of, cap);
            }
            corr++;
            camp_of[corr] = (uint8_t)(rand_r(&p->seed) % NCAMP);
            char id[24];
            st_id_of(id, p->key_base + corr);
            struct codec_emit_in e;
            nexus_emit_init(&e, ST_TYPE, p->camps[camp_of[corr]], id, pl, pl_len);
            e.correlation = corr;
            if (nexus_send_emit(c, &e) < 0)
                goto out;
            inflight++;
            p->sent++;
        }
        if (nexus_flush(c) < 0)
            goto out;
        struct nexus_frame f;
        if (nexus_recv(c, &f, 5000) != 1)
            goto out;
        if (f.kind == CODEC_KIND_EMIT_ACK) {
            inflight--;
            uint64_t k = st_key_of(f.u.event.event_id);
            if (f.correlation == 0 || f.correlation > corr ||
                f.u.event.campaign_id != p->camps[camp_of[f.correlation]] ||
                k != p->key_base + f.correlation || f.u.event.sequence == 0)
                p->bad++;
            else
                seen_add(&p->acked, f.u.event.campaign_id, f.u.event.sequence, k);
        } else if (f.kind == CODEC_KIND_ERROR) {
            inflight--;
            if (!p->errors++)
                snprintf(p->first_error, sizeof(p->first_error), "%.*s: %.*s",
                         (int)f.u.error.code.len, (const char *)f.u.error.code.ptr,
                         (int)(f.u.error.message.len > 30 ? 30 : f.u.error.message.len),
                         (const char *)f.u.error.message.ptr);
        }
    }
out:
    free(camp_of);
    nexus_close(c);
    return NULL;
}

struct subscriber {
    struct nexus_client *c;
    struct seen_vec got;
    uint64_t other;
};

static void *subscriber_main(void *arg)
{
    struct subscriber *s = arg;
    for (;;) {
        struct nexus_frame f;
        if (nexus_recv(s->c, &f, 5000) != 1)
            break;
        if (f.kind == CODEC_KIND_EVENT)
            seen_add(&s->got, f.u.event.campaign_id, f.u.event.sequence,
                     st_key_of(f.u.event.event_id));
        else
            s->other++;
    }
    return NULL;
}

/* The log holds exactly the sequences 1..max per campaign, every acked and every delivered
 * event; fills max_seq. Returns the record count. */
static size_t verify_log(const char *dir, const int64_t *camps, uint64_t *max_seq,
                         const struct seen_vec *acked, const struct seen_vec *delivered, int *torn)
{
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    if (L.stopped) {
        /* kill -9 can interrupt a buffered write between pages: a torn tail, never damage. */
        if (!L.stop_is_last || L.stops != 1)
            fail_msg("the log is damaged, not torn: %s at %" PRIu64 " (%d segments stopped)",
                     L.segs[L.stop_seg].path, L.stop_pos, L.stops);
        (*torn)++;
    }
    st_check_sequences(&L);
    st_check_seen(&L, acked->v, acked->n, "acknowledged");
    st_check_seen(&L, delivered->v, delivered->n, "delivered");
    for (int i = 0; i < NCAMP; i++)
        max_seq[i] = st_max_seq(&L, camps[i]);
    size_t n = L.n;
    st_log_free(&L);
    return n;
}

static int kill9_cycles(void)
{
    const char *e = getenv("NEXUS_KILL9_CYCLES");
    int n = e && *e ? atoi(e) : 20;
    return n > 0 ? n : 20;
}

/* The flags of cycle i: the fsync mode and segment size vary (the log's format does not), so
 * that the loop covers group commit, interval syncs and segments rolling under kill -9. With
 * NEXUS_KILL9_FLAGS set (space-separated), every cycle uses those instead. */
static const char *const *cycle_flags(int i)
{
    static const char *const modes[][5] = {
        {NULL},
        {"--fsync", "interval:5", NULL},
        {"--segment-bytes", "1M", NULL},
        {"--fsync", "interval:20", "--segment-bytes", "1M", NULL},
    };
    static char buf[512];
    static const char *env[16];
    const char *e = getenv("NEXUS_KILL9_FLAGS");
    if (e && *e) {
        if (!env[0]) {
            snprintf(buf, sizeof(buf), "%s", e);
            int n = 0;
            for (char *t = strtok(buf, " "); t && n < 15; t = strtok(NULL, " "))
                env[n++] = t;
            env[n] = NULL;
        }
        return env;
    }
    return modes[i % 4];
}

/* The flags as one string, for the log ("defaults" when none). */
static const char *flags_text(const char *const *flags)
{
    static char buf[256];
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; flags[i] && n < sizeof(buf); i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s", i ? " " : "", flags[i]);
    return flags[0] ? buf : "defaults";
}

/* A data directory takes at most this many cycles: the log is read back whole after every
 * kill, so a long run (scripts/kill9-loop) goes on in a fresh directory every so often rather
 * than growing the cost of each check without bound. */
#define KILL9_CYCLES_PER_DIR 25

/* `cycles` kill -9 cycles on one fresh data directory, then a last start and a clean stop. */
static void kill9_run(int first_cycle, int cycles, unsigned *seedp)
{
    unsigned seed = *seedp;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    print_message("kill -9 loop: cycles %d..%d in %s\n", first_cycle, first_cycle + cycles - 1,
                  dir);
    int64_t camps[NCAMP];
    for (int i = 0; i < NCAMP; i++)
        camps[i] = h_campaign_on((uint32_t)(i % SHARDS), SHARDS, 91000 + 100 * i);
    uint64_t max_seq[NCAMP] = {0};
    struct seen_vec acked = {0}, delivered = {0};
    uint64_t total_sent = 0, records = 0;
    int torn = 0;
    int64_t t0 = h_now_ms();
    for (int cycle = first_cycle; cycle < first_cycle + cycles; cycle++) {
        uint16_t mport;
        const char *const *flags = cycle_flags(cycle);
        struct broker_proc b = st_start(dir, SHARDS, &mport, flags);
        /* Recovery found every record the previous kill left (and no more). */
        double rec = hx_metric(mport, "nexus_log_recovered_records");
        if (rec != (double)records)
            fail_msg("cycle %d: recovery counted %.0f records, the files hold %zu", cycle, rec,
                     (size_t)records);
        /* Each campaign goes on where its log left off: never a sequence already used. */
        struct nexus_client *ctl = h_connect(&b, NULL);
        assert_non_null(ctl);
        for (int i = 0; i < NCAMP; i++) {
            uint64_t key = ((uint64_t)(cycle + 1) << 40) | (0xffull << 32) | (uint64_t)i, seq = 0;
            char code[64] = "";
            int r = st_emit(ctl, camps[i], key, NULL, 0, &seq, code, sizeof(code));
            if (r != 1)
                fail_msg("cycle %d: first emit to campaign %" PRId64 ": r=%d %s", cycle, camps[i],
                         r, code);
            if (seq != max_seq[i] + 1)
                fail_msg("cycle %d: campaign %" PRId64 " restarted at sequence %" PRIu64
                         ", its log ends at %" PRIu64,
                         cycle, camps[i], seq, max_seq[i]);
            seen_add(&acked, camps[i], seq, key);
        }
        nexus_close(ctl);
        /* A subscriber to every campaign, on a random shard. */
        struct subscriber sub = {0};
        sub.c = h_connect(&b, NULL);
        assert_non_null(sub.c);
        for (int i = 0; i < NCAMP; i++)
            assert_int_equal(nexus_subscribe_sync(sub.c, camps[i], NULL, 0, NULL, NULL, NULL, 5000),
                             1);
        int npub = 2 + (int)(rand_r(&seed) % 3);
        struct publisher pubs[4];
        pthread_t tp[4], ts;
        for (int k = 0; k < npub; k++) {
            pubs[k] =
                (struct publisher){.b = &b,
                                   .camps = camps,
                                   .key_base = ((uint64_t)(cycle + 1) << 40) | ((uint64_t)k << 32),
                                   .seed = rand_r(&seed)};
            assert_int_equal(pthread_create(&tp[k], NULL, publisher_main, &pubs[k]), 0);
        }
        assert_int_equal(pthread_create(&ts, NULL, subscriber_main, &sub), 0);
        int ms = 50 + (int)(rand_r(&seed) % 251);
        usleep((useconds_t)ms * 1000);
        assert_int_equal(kill(b.pid, SIGKILL), 0);
        int st = h_wait_exit(&b, 10000);
        assert_int_equal(st, 128 + SIGKILL);
        uint64_t acks = 0;
        for (int k = 0; k < npub; k++) {
            pthread_join(tp[k], NULL);
            if (pubs[k].errors || pubs[k].bad)
                fail_msg("cycle %d publisher %d: %llu errors (%s), %llu acks not matching "
                         "their emit",
                         cycle, k, (unsigned long long)pubs[k].errors, pubs[k].first_error,
                         (unsigned long long)pubs[k].bad);
            acks += pubs[k].acked.n;
            total_sent += pubs[k].sent;
            seen_append(&acked, &pubs[k].acked);
            free(pubs[k].acked.v);
        }
        pthread_join(ts, NULL);
        nexus_close(sub.c);
        seen_append(&delivered, &sub.got);
        size_t got = sub.got.n;
        free(sub.got.v);
        records = verify_log(dir, camps, max_seq, &acked, &delivered, &torn);
        if (cycles <= 20 || cycle % 10 == 0 || cycle + 1 == first_cycle + cycles)
            print_message("cycle %2d: %d publishers killed after %3d ms: %6llu acks, %6zu "
                          "delivered; log %zu records (%s)\n",
                          cycle, npub, ms, (unsigned long long)acks, got, (size_t)records,
                          flags_text(flags));
    }
    /* A last start and a clean stop: the log is whole and goes on at max + 1. */
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, NULL);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), records);
    struct nexus_client *ctl = h_connect(&b, NULL);
    assert_non_null(ctl);
    for (int i = 0; i < NCAMP; i++) {
        uint64_t key = (0xfffffull << 40) | (uint64_t)i, seq = 0;
        assert_int_equal(st_emit(ctl, camps[i], key, NULL, 0, &seq, NULL, 0), 1);
        assert_int_equal(seq, max_seq[i] + 1);
        seen_add(&acked, camps[i], seq, key);
    }
    nexus_close(ctl);
    assert_int_equal(h_stop(&b), 0);
    struct seen_vec none = {0};
    records = verify_log(dir, camps, max_seq, &acked, &none, &torn);
    print_message("kill -9 loop: %d cycles in %lld ms, %llu emits sent, %zu acknowledged, %zu "
                  "delivered, all in the log (%zu records); torn tails seen after a kill: %d\n",
                  cycles, (long long)(h_now_ms() - t0), (unsigned long long)total_sent, acked.n,
                  delivered.n, (size_t)records, torn);
    free(acked.v);
    free(delivered.v);
    st_rmtree(dir);
    *seedp = seed;
}

static void test_kill9_loop(void **state)
{
    (void)state;
    const int cycles = kill9_cycles();
    const char *se = getenv("NEXUS_KILL9_SEED");
    unsigned seed = se && *se ? (unsigned)strtoul(se, NULL, 10) : (unsigned)time(NULL);
    print_message("kill -9 loop: %d cycles, seed %u (NEXUS_KILL9_SEED)\n", cycles, seed);
    for (int c = 0; c < cycles; c += KILL9_CYCLES_PER_DIR)
        kill9_run(c, cycles - c < KILL9_CYCLES_PER_DIR ? cycles - c : KILL9_CYCLES_PER_DIR, &seed);
}

/* ---- torn tails and damage --------------------------------------------------------------- */

/* n acked emits to camp, keys key0 + 1.. ; returns the last sequence. */
static uint64_t emit_n(struct nexus_client *c, int64_t camp, uint64_t key0, int n, size_t pl_bytes)
{
    static uint8_t pl[4200];
    size_t pl_len = pl_bytes ? st_payload(pl, pl_bytes) : 0;
    uint64_t seq = 0;
    for (int i = 1; i <= n; i++) {
        char code[64] = "";
        uint64_t got = 0;
        int r = st_emit(c, camp, key0 + (uint64_t)i, pl_bytes ? pl : NULL, pl_len, &got, code,
                        sizeof(code));
        if (r != 1)
            fail_msg("emit %d to %" PRId64 ": r=%d %s", i, camp, r, code);
        if (seq && got != seq + 1)
            fail_msg("emit %d to %" PRId64 ": sequence %" PRIu64 " after %" PRIu64, i, camp, got,
                     seq);
        seq = got;
    }
    return seq;
}

/* Starts nexusd on dir with stderr captured; returns the broker, *log_fd the capture. */
static struct broker_proc start_captured(const char *dir, uint16_t *mport, const char *const *extra,
                                         int *log_fd)
{
    int saved = hx_stderr_capture(log_fd);
    struct broker_proc b = st_start(dir, SHARDS, mport, extra);
    hx_stderr_restore(saved);
    return b;
}

/* The next emit to camp is sequence want. */
static void expect_next(struct broker_proc *b, int64_t camp, uint64_t want, uint64_t key)
{
    struct nexus_client *c = h_connect(b, NULL);
    assert_non_null(c);
    uint64_t seq = 0;
    char code[64] = "";
    int r = st_emit(c, camp, key, NULL, 0, &seq, code, sizeof(code));
    if (r != 1 || seq != want)
        fail_msg("campaign %" PRId64 ": next emit r=%d %s sequence %" PRIu64 ", want %" PRIu64,
                 camp, r, code, seq, want);
    nexus_close(c);
}

/* The records of one shard, in file order. */
static size_t shard_recs(const char *dir, uint32_t shard, struct st_rec *out, size_t cap,
                         struct st_log *L)
{
    st_scan(L, dir, SHARDS);
    return st_shard_records(L, shard, out, cap);
}

/* A torn tail — the last segment cut 7 bytes short, then the last record's frame flipped — is
 * cut at start ("torn tail" logged, nexus_log_truncated_bytes_total counts the bytes) and the
 * campaign goes on at the last intact sequence + 1. */
static void test_torn_tail(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 93000);
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    assert_int_equal(emit_n(c, camp, 0x100, 10, 100), 10);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    /* 1. The last segment loses its last 7 bytes: record 10 is incomplete. */
    struct st_log L;
    struct st_rec recs[64];
    assert_int_equal(shard_recs(dir, 0, recs, 64, &L), 10);
    const char *path = L.segs[recs[9].seg].path;
    char seg[1200];
    snprintf(seg, sizeof(seg), "%s", path);
    uint64_t size = st_file_size(seg);
    assert_int_equal(size, recs[9].pos + recs[9].size);
    assert_int_equal(truncate(seg, (off_t)(size - 7)), 0);
    st_log_free(&L);
    int log_fd;
    b = start_captured(dir, &mport, NULL, &log_fd);
    double cut = hx_metric(mport, "nexus_log_truncated_bytes_total");
    char *text = hx_file_text(log_fd);
    if (!strstr(text, "torn tail") || !strstr(text, "cut at offset"))
        fail_msg("no torn tail logged:\n%s", text);
    print_message("torn tail (7 bytes short): %.*s", (int)strcspn(strstr(text, "log:"), "\n") + 1,
                  strstr(text, "log:"));
    free(text);
    close(log_fd);
    assert_int_equal((uint64_t)cut, recs[9].size - 7);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), 9);
    assert_int_equal(st_file_size(seg), recs[9].pos);
    expect_next(&b, camp, 10, 0x200);
    assert_int_equal(h_stop(&b), 0);

    /* 2. A byte of the last record's frame flipped: its checksum fails, nothing follows. */
    assert_int_equal(shard_recs(dir, 0, recs, 64, &L), 10);
    assert_false(L.stopped);
    st_flip(seg, recs[9].pos + LOGREC_HEADER + recs[9].size / 3);
    st_log_free(&L);
    b = start_captured(dir, &mport, NULL, &log_fd);
    text = hx_file_text(log_fd);
    if (!strstr(text, "torn tail"))
        fail_msg("no torn tail logged:\n%s", text);
    free(text);
    close(log_fd);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_truncated_bytes_total"), recs[9].size);
    assert_int_equal(st_file_size(seg), recs[9].pos);
    expect_next(&b, camp, 10, 0x300);
    assert_int_equal(h_stop(&b), 0);

    /* 3. A flipped header byte (the sequence) of the last record: the same. */
    assert_int_equal(shard_recs(dir, 0, recs, 64, &L), 10);
    st_flip(seg, recs[9].pos + 17);
    st_log_free(&L);
    b = start_captured(dir, &mport, NULL, &log_fd);
    close(log_fd);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_truncated_bytes_total"), recs[9].size);
    expect_next(&b, camp, 10, 0x400);
    assert_int_equal(h_stop(&b), 0);

    /* The log is whole again: 1..10 for the campaign. */
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    st_check_sequences(&L);
    assert_int_equal(st_max_seq(&L, camp), 10);
    const struct st_rec *r10 = st_find(&L, camp, 10);
    assert_int_equal(r10 ? r10->key : 0, 0x400);
    st_log_free(&L);
    st_rmtree(dir);
}

/* Damage followed by valid records: nexusd refuses to start, naming the file and the offset;
 * --recover truncate cuts the log there. */
static void test_damage_in_the_middle(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(1, SHARDS, 94000);
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    assert_int_equal(emit_n(c, camp, 0x100, 10, 100), 10);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    struct st_log L;
    struct st_rec recs[64];
    assert_int_equal(shard_recs(dir, 1, recs, 64, &L), 10);
    char seg[1200];
    snprintf(seg, sizeof(seg), "%s", L.segs[recs[4].seg].path);
    uint64_t size = st_file_size(seg);
    st_log_free(&L);
    /* Record 5 (of 10) gets a flipped frame byte. */
    st_flip(seg, recs[4].pos + LOGREC_HEADER + 20);
    struct h_child ch;
    int st = st_run_refused(&ch, dir, SHARDS, NULL, 10000);
    char where[64];
    snprintf(where, sizeof(where), "offset %" PRIu64, recs[4].pos);
    const char *name = strrchr(seg, '/') + 1;
    if (st <= 0 || !strstr(ch.err, name) || !strstr(ch.err, "shard-001") || !strstr(ch.err, where))
        fail_msg("nexusd on a damaged log: exit %d (want > 0), stderr naming %s and \"%s\":\n%s",
                 st, name, where, ch.err);
    print_message("damaged log: exit %d: %.*s\n", st, (int)strcspn(strstr(ch.err, "log:"), "\n"),
                  strstr(ch.err, "log:"));
    h_child_free(&ch);
    assert_int_equal(st_file_size(seg), size); /* refused: nothing was cut */

    /* --recover truncate: it starts, the segment is cut at the damage. */
    int log_fd;
    const char *trunc[] = {"--recover", "truncate", NULL};
    b = start_captured(dir, &mport, trunc, &log_fd);
    char *text = hx_file_text(log_fd);
    if (!strstr(text, "--recover truncate") || !strstr(text, where))
        fail_msg("no cut logged:\n%s", text);
    free(text);
    close(log_fd);
    assert_int_equal(st_file_size(seg), recs[4].pos);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_truncated_bytes_total"),
                     size - recs[4].pos);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), 4);
    expect_next(&b, camp, 5, 0x200);
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* ---- one nexusd per directory; the layout cannot change ---------------------------------- */

static void test_lock_and_shards(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 95000);
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    assert_int_equal(emit_n(c, camp, 0x100, 3, 0), 3);

    struct h_child ch;
    int st = st_run_refused(&ch, dir, SHARDS, NULL, 10000);
    if (st <= 0 || !strstr(ch.err, "in use"))
        fail_msg("a second nexusd on the same --data-dir: exit %d, stderr:\n%s", st, ch.err);
    print_message("second nexusd: exit %d: %s", st, ch.err);
    h_child_free(&ch);
    /* The first one is unharmed. */
    assert_int_equal(emit_n(c, camp, 0x200, 1, 0), 4);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    /* Another --shards: refused (with the directory free). */
    st = st_run_refused(&ch, dir, 3, NULL, 10000);
    if (st <= 0 || !strstr(ch.err, "shards"))
        fail_msg("--shards 3 on a 2-shard log: exit %d, stderr:\n%s", st, ch.err);
    print_message("--shards 3: exit %d: %.120s...\n", st, ch.err);
    h_child_free(&ch);
    st = st_run_refused(&ch, dir, 1, NULL, 10000);
    assert_true(st > 0);
    h_child_free(&ch);
    /* And the right count still works, going on at 5. */
    b = st_start(dir, SHARDS, NULL, NULL);
    expect_next(&b, camp, 5, 0x300);
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* ---- segments ---------------------------------------------------------------------------- */

/* Pipelined acked emits of ~1 KiB to camp until `bytes` were logged for it; returns the count. */
static uint64_t emit_bytes(struct nexus_client *c, int64_t camp, uint64_t key0, size_t bytes)
{
    static uint8_t pl[1100];
    size_t pl_len = st_payload(pl, 1000);
    uint64_t sent = 0, acked = 0, n = bytes / 1100 + 1;
    while (acked < n) {
        while (sent < n && sent - acked < WINDOW) {
            char id[24];
            st_id_of(id, key0 + ++sent);
            struct codec_emit_in e;
            nexus_emit_init(&e, ST_TYPE, camp, id, pl, pl_len);
            e.correlation = sent;
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
        assert_int_equal(nexus_flush(c), 0);
        struct nexus_frame f;
        assert_int_equal(nexus_recv(c, &f, 10000), 1);
        if (f.kind != CODEC_KIND_EMIT_ACK)
            fail_msg("frame kind %u while streaming emits", f.kind);
        acked++;
        assert_int_equal(f.u.event.sequence, f.correlation);
    }
    return n;
}

static void test_segments_roll(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 96000);
    const char *seg1m[] = {"--segment-bytes", "1M", NULL};
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, seg1m);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint64_t n = emit_bytes(c, camp, 0x10000, 3u << 20);
    nexus_close(c);
    /* Below the flag's minimum: refused at parse time. */
    struct h_child ch;
    const char *small[] = {"--segment-bytes", "65536", NULL};
    char other[256];
    st_mkdtemp(other, sizeof(other));
    int st = st_run_refused(&ch, other, SHARDS, small, 10000);
    assert_true(st > 0);
    h_child_free(&ch);
    st_rmtree(other);
    assert_int_equal(h_stop(&b), 0);

    struct st_log L;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    uint32_t segs[64];
    size_t ns = st_shard_segs(&L, 0, segs, 64);
    print_message("segments: %" PRIu64 " events of ~1 KiB in %zu segments of shard 0\n", n, ns);
    assert_true(ns >= 3);
    /* Each segment is named by its logical offset: the bytes of those before it; every one
     * but the last is at least --segment-bytes (rolled past it), none much more. */
    uint64_t off = 0;
    for (size_t i = 0; i < ns; i++) {
        const struct st_seg *s = &L.segs[segs[i]];
        assert_int_equal(s->base, off);
        if (i + 1 < ns) {
            assert_true(s->size >= 1u << 20);
            assert_true(s->size < (1u << 20) + 512 * 1024);
        }
        off += s->size;
    }
    struct st_rec recs[8];
    size_t nr = 0;
    for (size_t i = 0; i < L.n; i++)
        nr += L.r[i].shard == 0;
    assert_int_equal(nr, n);
    /* The first record of segment 2 and the last of segment 1, for the damage below. */
    uint64_t last_of_first = 0, last_pos = 0, last_size = 0, first_seg_records = 0;
    for (size_t i = 0; i < L.n; i++) {
        if (L.r[i].seg == segs[0]) {
            first_seg_records++;
            last_of_first = L.r[i].seq;
            last_pos = L.r[i].pos;
            last_size = L.r[i].size;
        }
    }
    (void)recs;
    char first[1200];
    snprintf(first, sizeof(first), "%s", L.segs[segs[0]].path);
    st_check_sequences(&L);
    assert_int_equal(st_max_seq(&L, camp), n);
    st_log_free(&L);

    /* Recovery across the segments. */
    b = st_start(dir, SHARDS, &mport, seg1m);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), n);
    expect_next(&b, camp, n + 1, 0x20000);
    assert_int_equal(h_stop(&b), 0);

    /* The last record of the first segment damaged: valid records follow in later segments,
     * so this is no torn tail. Refused; then --recover truncate cuts there and deletes the
     * later segments. */
    st_flip(first, last_pos + LOGREC_HEADER + 8);
    st = st_run_refused(&ch, dir, SHARDS, seg1m, 10000);
    char where[64];
    snprintf(where, sizeof(where), "offset %" PRIu64, last_pos);
    if (st <= 0 || !strstr(ch.err, strrchr(first, '/') + 1) || !strstr(ch.err, where))
        fail_msg("damage at the end of a non-last segment: exit %d, stderr:\n%s", st, ch.err);
    h_child_free(&ch);
    const char *trunc[] = {"--segment-bytes", "1M", "--recover", "truncate", NULL};
    b = st_start(dir, SHARDS, &mport, trunc);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"),
                     first_seg_records - 1);
    assert_int_equal(st_file_size(first), last_pos);
    expect_next(&b, camp, last_of_first, 0x30000);
    assert_int_equal(h_stop(&b), 0);
    (void)last_size;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    ns = st_shard_segs(&L, 0, segs, 64);
    /* What is left: the first segment, cut, plus (perhaps) a fresh one after it. */
    assert_true(ns <= 2);
    st_check_sequences(&L);
    assert_int_equal(st_max_seq(&L, camp), last_of_first);
    st_log_free(&L);
    st_rmtree(dir);
}

/* ---- failures ---------------------------------------------------------------------------- */

/* Streams `n` acked emits to camp (WINDOW in flight) on c; collects acks into acked and counts
 * errors with `code`. Checks that no ack follows an error (the shard stops acknowledging). */
static void stream_until_refused(struct nexus_client *c, int64_t camp, uint64_t key0, int n,
                                 int window, size_t pl_bytes, const char *code,
                                 struct seen_vec *acked, int *errors)
{
    static uint8_t pl[70000];
    size_t pl_len = st_payload(pl, pl_bytes);
    int sent = 0, answered = 0;
    *errors = 0;
    while (answered < n) {
        while (sent < n && sent - answered < window) {
            char id[24];
            st_id_of(id, key0 + (uint64_t)++sent);
            struct codec_emit_in e;
            nexus_emit_init(&e, ST_TYPE, camp, id, pl, pl_len);
            e.correlation = (uint64_t)sent;
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
        assert_int_equal(nexus_flush(c), 0);
        struct nexus_frame f;
        int r = nexus_recv(c, &f, 10000);
        if (r != 1)
            fail_msg("after %d answers of %d: r=%d", answered, n, r);
        answered++;
        if (f.kind == CODEC_KIND_EMIT_ACK) {
            if (*errors)
                fail_msg("an ack (seq %" PRIu64 ") after %d %s errors", f.u.event.sequence, *errors,
                         code);
            seen_add(acked, camp, f.u.event.sequence, st_key_of(f.u.event.event_id));
        } else if (f.kind == CODEC_KIND_ERROR) {
            if (!h_slice_eq(f.u.error.code, code))
                fail_msg("error %.*s (%.*s), want %s", (int)f.u.error.code.len,
                         (const char *)f.u.error.code.ptr, (int)f.u.error.message.len,
                         (const char *)f.u.error.message.ptr, code);
            ++*errors;
        } else {
            fail_msg("frame kind %u", f.kind);
        }
    }
}

/* --fsync interval with segments rolling under load from 4 publishers: nothing fails (a roll
 * must not pull the segment from under an interval fdatasync), every ack is in the log, and a
 * SIGTERM stop is clean. */
static void test_interval_sync_and_roll(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camps[NCAMP];
    for (int i = 0; i < NCAMP; i++)
        camps[i] = h_campaign_on((uint32_t)(i % SHARDS), SHARDS, 96500 + 100 * i);
    const char *flags[] = {"--fsync", "interval:1", "--segment-bytes", "1M", NULL};
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, flags);
    struct publisher pubs[4];
    pthread_t tp[4];
    for (int k = 0; k < 4; k++) {
        pubs[k] = (struct publisher){
            .b = &b, .camps = camps, .key_base = (uint64_t)(k + 1) << 40, .seed = 7u + (unsigned)k};
        assert_int_equal(pthread_create(&tp[k], NULL, publisher_main, &pubs[k]), 0);
    }
    usleep(1500 * 1000);
    double syncs = hx_metric(mport, "nexus_log_syncs_total");
    double errs = hx_metric(mport, "nexus_log_errors_total");
    assert_int_equal(h_stop(&b), 0);
    struct seen_vec acked = {0};
    uint64_t errors = 0;
    char first[64] = "";
    for (int k = 0; k < 4; k++) {
        pthread_join(tp[k], NULL);
        errors += pubs[k].errors;
        if (pubs[k].errors && !first[0])
            snprintf(first, sizeof(first), "%s", pubs[k].first_error);
        seen_append(&acked, &pubs[k].acked);
        free(pubs[k].acked.v);
    }
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    uint32_t segs[1024];
    size_t ns = st_shard_segs(&L, 0, segs, 1024) + st_shard_segs(&L, 1, segs, 1024);
    st_check_sequences(&L);
    st_check_seen(&L, acked.v, acked.n, "acknowledged");
    print_message("interval:1 + 1M segments, 1.5 s of 4 publishers: %zu acked, %zu segments, "
                  "%.0f syncs, %.0f log errors, %llu emits refused%s%s\n",
                  acked.n, ns, syncs, errs, (unsigned long long)errors, errors ? ": " : "", first);
    st_log_free(&L);
    free(acked.v);
    st_rmtree(dir);
    assert_int_equal(errs, 0);
    assert_int_equal(errors, 0);
}

/* After a log failure: non-durable things still work (ping, subscribe, stats), emits are
 * refused with code. */
static void check_still_serving(struct broker_proc *b, int64_t camp, const char *code)
{
    hx_assert_up(b);
    struct nexus_client *c = h_connect(b, NULL);
    assert_non_null(c);
    assert_int_equal(nexus_subscribe_sync(c, camp + 1000000, NULL, 0, NULL, NULL, NULL, 5000), 1);
    struct codec_shard_stats stt[SHARDS];
    assert_int_equal(h_stats(c, stt, SHARDS, 5000), SHARDS);
    uint64_t seq;
    char got[64] = "";
    assert_int_equal(st_emit(c, camp, 0xdead, NULL, 0, &seq, got, sizeof(got)), -EPROTO);
    assert_string_equal(got, code);
    assert_int_equal(h_ping(c, 5000), 1);
    nexus_close(c);
}

/* nexusd with NEXUS_TEST_LOG_FAIL=spec (its stderr in *log_fd), a subscriber to camp and a
 * publisher, both on shard 0 (camp's owner). */
struct failing {
    struct broker_proc b;
    struct nexus_client *sub, *pub;
};

static struct failing start_failing(const char *dir, const char *spec, int64_t camp,
                                    uint16_t *mport, const char *const *extra, int *log_fd)
{
    struct failing x;
    setenv("NEXUS_TEST_LOG_FAIL", spec, 1);
    x.b = start_captured(dir, mport, extra, log_fd);
    unsetenv("NEXUS_TEST_LOG_FAIL");
    x.sub = h_connect_on(&x.b, 0);
    assert_non_null(x.sub);
    assert_int_equal(nexus_subscribe_sync(x.sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    x.pub = h_connect_on(&x.b, 0);
    assert_non_null(x.pub);
    return x;
}

/* Every event sub has received (a ping first: all that was sent before it is in). */
static void take_events(struct nexus_client *sub, struct seen_vec *got)
{
    assert_int_equal(h_ping(sub, 5000), 1);
    struct nexus_frame f;
    while (nexus_recv(sub, &f, 0) == 1)
        if (f.kind == CODEC_KIND_EVENT)
            seen_add(got, f.u.event.campaign_id, f.u.event.sequence, st_key_of(f.u.event.event_id));
}

static void run_injected_failure(const char *spec)
{
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 97000);
    int64_t other = h_campaign_on(1, SHARDS, 97000);
    uint16_t mport;
    int log_fd;
    /* The subscriber, on the owner's shard, must see exactly the acknowledged events. */
    struct failing x = start_failing(dir, spec, camp, &mport, NULL, &log_fd);
    struct broker_proc b = x.b;
    struct nexus_client *sub = x.sub, *c = x.pub;
    /* One at a time: one batch, one write, one sync each — the first two are acked. */
    struct seen_vec acked = {0};
    for (int i = 1; i <= 5; i++) {
        uint64_t seq = 0;
        char code[64] = "";
        int r = st_emit(c, camp, (uint64_t)i, NULL, 0, &seq, code, sizeof(code));
        if (i < 3) {
            if (r != 1 || seq != (uint64_t)i)
                fail_msg("%s: emit %d: r=%d %s seq %" PRIu64, spec, i, r, code, seq);
            seen_add(&acked, camp, seq, (uint64_t)i);
        } else if (r != -EPROTO || strcmp(code, "storage_failed") != 0) {
            fail_msg("%s: emit %d: r=%d code \"%s\", want storage_failed", spec, i, r, code);
        }
    }
    /* Then pipelined: all refused. */
    int errors = 0;
    stream_until_refused(c, camp, 100, 200, WINDOW, 100, "storage_failed", &acked, &errors);
    assert_int_equal(errors, 200);
    assert_int_equal(acked.n, 2);
    /* The subscriber got the two acked events and nothing of the failed batches. */
    struct seen_vec got = {0};
    take_events(sub, &got);
    if (got.n != 2)
        fail_msg("%s: the subscriber got %zu events, want the 2 acknowledged", spec, got.n);
    check_still_serving(&b, camp, "storage_failed");
    /* The other shard's log still works (its own 3rd operation fails later). */
    uint64_t seq = 0;
    assert_int_equal(st_emit(c, other, 1000, NULL, 0, &seq, NULL, 0), 1);
    seen_add(&acked, other, seq, 1000);
    nexus_close(c);
    nexus_close(sub);
    double errs = hx_metric(mport, "nexus_log_errors_total");
    assert_true(errs >= 1);
    assert_int_equal(h_stop(&b), 0);
    char *text = hx_file_text(log_fd);
    close(log_fd);
    if (!strstr(text, "NEXUS_TEST_LOG_FAIL") || !strstr(text, "storage_failed"))
        fail_msg("%s: stderr:\n%s", spec, text);
    free(text);

    /* Every acknowledged event is in the log; the campaign goes on after the log's end. */
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    st_check_sequences(&L);
    st_check_seen(&L, acked.v, acked.n, "acknowledged");
    uint64_t max = st_max_seq(&L, camp);
    print_message("%s: 2 acked, 203 storage_failed, nexus_log_errors_total %.0f; the log holds "
                  "campaign %" PRId64 " up to %" PRIu64 " (refused events that were written "
                  "before the failure may be there)\n",
                  spec, errs, camp, max);
    st_log_free(&L);
    b = st_start(dir, SHARDS, NULL, NULL);
    expect_next(&b, camp, max + 1, 0x5000);
    assert_int_equal(h_stop(&b), 0);
    free(acked.v);
    free(got.v);
    st_rmtree(dir);
}

static void test_fsync_fails(void **state)
{
    (void)state;
    run_injected_failure("fsync:3");
}

/* The sync queue (docs/ARCHITECTURE.md, "The event log"): with --fsync-depth 8 and emits
 * pipelined, the 8th fdatasync fails while others are in flight. The acknowledgements form a
 * prefix — every answer after the first storage_failed is one too, even for batches whose own
 * sync succeeded — every acknowledged event is in the log, and the subscriber sees exactly the
 * acknowledged events. */
static void test_fsync_fails_in_the_queue(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 97400);
    const char *flags[] = {"--fsync-depth", "8", NULL};
    int log_fd;
    struct failing x = start_failing(dir, "fsync:8", camp, NULL, flags, &log_fd);
    struct broker_proc b = x.b;
    struct nexus_client *sub = x.sub, *c = x.pub;
    struct seen_vec acked = {0};
    int errors = 0;
    /* A window of 16: many small batches, so that far more than 8 syncs are asked for. */
    stream_until_refused(c, camp, 1, 3000, 16, 100, "storage_failed", &acked, &errors);
    if (acked.n == 0 || errors == 0 || acked.n + (size_t)errors != 3000)
        fail_msg("acked %zu, storage_failed %d: want some of each, 3000 in all", acked.n, errors);
    for (size_t i = 0; i < acked.n; i++) /* a prefix: no later batch acknowledged past a hole */
        if (acked.v[i].seq != i + 1)
            fail_msg("acknowledgement %zu has sequence %" PRIu64, i, acked.v[i].seq);
    struct seen_vec got = {0};
    take_events(sub, &got);
    if (got.n != acked.n)
        fail_msg("the subscriber got %zu events, want the %zu acknowledged", got.n, acked.n);
    for (size_t i = 0; i < got.n; i++)
        if (got.v[i].seq != acked.v[i].seq || got.v[i].key != acked.v[i].key)
            fail_msg("delivery %zu: seq %" PRIu64 ", acknowledged seq %" PRIu64, i, got.v[i].seq,
                     acked.v[i].seq);
    nexus_close(c);
    nexus_close(sub);
    assert_int_equal(h_stop(&b), 0);
    close(log_fd);
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    st_check_sequences(&L);
    st_check_seen(&L, acked.v, acked.n, "acknowledged");
    print_message("fsync:8 with --fsync-depth 8: %zu acknowledged, then %d storage_failed; the "
                  "subscriber got exactly the %zu\n",
                  acked.n, errors, got.n);
    st_log_free(&L);
    free(acked.v);
    free(got.v);
    st_rmtree(dir);
}

static void test_write_fails(void **state)
{
    (void)state;
    run_injected_failure("write:3");
}

/* The tmpfs test_disk_full mounted, unmounted by its teardown even when it fails. */
static char g_mnt[300];

static int disk_full_teardown(void **state)
{
    h_teardown(state);
    if (g_mnt[0] && umount(g_mnt) != 0)
        fprintf(stderr, "umount %s: %s\n", g_mnt, strerror(errno));
    g_mnt[0] = 0;
    return st_teardown(state);
}

/* A full disk: a 2 MiB tmpfs (root only). */
static void test_disk_full(void **state)
{
    (void)state;
    char dir[256], mnt[300], data[320];
    st_mkdtemp(dir, sizeof(dir));
    snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
    snprintf(data, sizeof(data), "%s/data", mnt);
    assert_int_equal(mkdir(mnt, 0700), 0);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=2m") != 0) {
        print_message("disk full: SKIPPED: cannot mount a tmpfs on %s (%s; needs root / "
                      "CAP_SYS_ADMIN)\n",
                      mnt, strerror(errno));
        st_rmtree(dir);
        skip();
        return;
    }
    snprintf(g_mnt, sizeof(g_mnt), "%s", mnt);
    int64_t camp = h_campaign_on(0, SHARDS, 98000);
    uint16_t mport;
    struct broker_proc b = st_start(data, SHARDS, &mport, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct seen_vec acked = {0};
    int errors = 0;
    /* 16 KiB events, one at a time (a batch that does not fit fails whole): 2 MiB is full
     * after ~120. */
    stream_until_refused(c, camp, 1, 200, 1, 16000, "storage_full", &acked, &errors);
    print_message("disk full: %zu acked, %d storage_full, nexus_log_errors_total %.0f\n", acked.n,
                  errors, hx_metric(mport, "nexus_log_errors_total"));
    assert_true(acked.n > 50);
    assert_true(errors > 0);
    check_still_serving(&b, camp, "storage_full");
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
    struct st_log L;
    st_scan(&L, data, SHARDS);
    bool torn = L.stopped;
    assert_true(!L.stopped || (L.stop_is_last && L.stops == 1));
    st_check_sequences(&L);
    st_check_seen(&L, acked.v, acked.n, "acknowledged");
    uint64_t max = st_max_seq(&L, camp);
    st_log_free(&L);
    /* A restart on the still nearly full disk: recovery cuts what the failed write left
     * (a torn tail), and the campaign goes on after the log's end. */
    int log_fd;
    b = start_captured(data, &mport, NULL, &log_fd);
    close(log_fd);
    double cut = hx_metric(mport, "nexus_log_truncated_bytes_total");
    print_message("disk full, restart: the failed write left %s; %.0f bytes cut; log ends at "
                  "%" PRIu64 "\n",
                  torn ? "a torn tail" : "nothing", cut, max);
    assert_true(torn ? cut > 0 : cut == 0);
    expect_next(&b, camp, max + 1, 0x9000);
    int st = h_stop(&b);
    free(acked.v);
    if (umount(mnt) != 0)
        print_message("umount %s: %s\n", mnt, strerror(errno));
    g_mnt[0] = 0;
    st_rmtree(dir);
    assert_int_equal(st, 0);
}

/* ---- resume: subscribe with from_sequence ------------------------------------------------ */

/* One acked emit of type to camp (key in the event id); returns the sequence (fails the test
 * otherwise). */
static uint64_t emit_typed(struct nexus_client *c, int64_t camp, const char *type, uint64_t key)
{
    char id[24];
    st_id_of(id, key);
    struct codec_emit_in e;
    nexus_emit_init(&e, type, camp, id, "", 0);
    struct nexus_frame f;
    int r = nexus_emit_sync(c, &e, &f, 10000);
    if (r != 1 || f.kind != CODEC_KIND_EMIT_ACK)
        fail_msg("emit %s to %" PRId64 ": r=%d kind %u", type, camp, r, f.kind);
    assert_int_equal(st_key_of(f.u.event.event_id), key);
    return f.u.event.sequence;
}

/* A connection whose welcome named shard sh (fails the test otherwise). */
static struct nexus_client *connect_on(struct broker_proc *b, uint32_t sh)
{
    struct nexus_client *c = h_connect_on(b, sh);
    if (!c)
        fail_msg("no connection landed on shard %u", sh);
    return c;
}

/* Subscribes c to camp from from_seq into s; fails the test unless the subscribe_ack came. */
static struct broker_proc *g_resume_broker; /* for sub_from's diagnosis */

static void sub_from(struct nexus_client *c, int64_t camp, const char *const *pats, uint32_t npat,
                     uint64_t from_seq, struct st_stream *s, const char *what)
{
    char code[64] = "";
    int r = st_subscribe_from(c, camp, pats, npat, from_seq, s, code, sizeof(code), 10000);
    if (r == 1)
        return;
    int st = g_resume_broker ? h_wait_exit(g_resume_broker, 2000) : 0;
    fail_msg("%s: subscribe to %" PRId64 " from %" PRIu64 ": r=%d %s%s (nexusd: %s %d)", what, camp,
             from_seq, r, code, r == -ECONNRESET ? " connection reset" : "",
             st < 0 ? "still running, status" : "exited with", st);
}

/* 1. After a kill -9 and a restart, from 1 and from the middle: exactly the logged events, in
 * order, before the subscribe_ack, with the ids that were acked; then live ones follow. Both
 * the owner's own shard and the other one subscribe. */
static void test_resume_after_restart(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    enum { N = 40, MID = 17 };
    int64_t camps[SHARDS];
    uint64_t want[SHARDS][N + 16];
    memset(want, 0, sizeof(want));
    for (uint32_t o = 0; o < SHARDS; o++)
        camps[o] = h_campaign_on(o, SHARDS, 99000);
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    for (uint32_t o = 0; o < SHARDS; o++) {
        for (uint64_t k = 1; k <= N; k++) {
            uint64_t key = (uint64_t)(o + 1) << 32 | k, seq = 0;
            assert_int_equal(st_emit(c, camps[o], key, NULL, 0, &seq, NULL, 0), 1);
            assert_int_equal(seq, k);
            want[o][seq] = key;
        }
    }
    nexus_close(c);
    assert_int_equal(kill(b.pid, SIGKILL), 0);
    assert_int_equal(h_wait_exit(&b, 10000), 128 + SIGKILL);
    b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    struct nexus_client *ctl = h_connect(&b, NULL);
    assert_non_null(ctl);
    uint64_t last[SHARDS] = {N, N};
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        for (uint32_t o = 0; o < SHARDS; o++) {
            char what[128];
            struct nexus_client *a = connect_on(&b, sh), *m = connect_on(&b, sh);
            struct st_stream sa = {0}, sm = {0};
            snprintf(what, sizeof(what), "subscriber on shard %u, campaign of shard %u, from 1", sh,
                     o);
            sub_from(a, camps[o], NULL, 0, 1, &sa, what);
            st_check_stream(&sa, camps[o], 1, last[o], want[o], N + 16, what);
            snprintf(what, sizeof(what), "subscriber on shard %u, campaign of shard %u, from %d",
                     sh, o, MID);
            sub_from(m, camps[o], NULL, 0, MID, &sm, what);
            st_check_stream(&sm, camps[o], MID, last[o], want[o], N + 16, what);
            /* Live: the next event follows the replay, once. */
            uint64_t key = 0xa0000000ull | (uint64_t)(sh * SHARDS + o), seq = 0;
            assert_int_equal(st_emit(ctl, camps[o], key, NULL, 0, &seq, NULL, 0), 1);
            assert_int_equal(seq, last[o] + 1);
            want[o][seq] = key;
            last[o] = seq;
            assert_int_equal(st_stream_until(a, &sa, camps[o], seq, 5000), 1);
            assert_int_equal(st_stream_until(m, &sm, camps[o], seq, 5000), 1);
            assert_int_equal(h_ping(a, 5000), 1);
            assert_int_equal(h_ping(m, 5000), 1);
            struct nexus_frame f;
            while (nexus_recv(a, &f, 100) == 1)
                st_stream_take(&sa, &f);
            while (nexus_recv(m, &f, 100) == 1)
                st_stream_take(&sm, &f);
            st_check_stream(&sa, camps[o], 1, last[o], want[o], N + 16, "from 1, then live");
            st_check_stream(&sm, camps[o], MID, last[o], want[o], N + 16, "from MID, then live");
            st_stream_free(&sa);
            st_stream_free(&sm);
            nexus_close(a);
            nexus_close(m);
        }
    }
    /* The client as documented: nexus_wait_reply keeps the replayed events for nexus_recv. */
    struct nexus_client *w = connect_on(&b, 1);
    uint64_t corr = nexus_next_correlation(w);
    assert_int_equal(nexus_send_subscribe_from(w, corr, camps[0], NULL, 0, NULL, 1), 0);
    struct nexus_frame f;
    memset(&f, 0, sizeof(f));
    assert_int_equal(nexus_wait_reply(w, corr, &f, 10000), 1);
    assert_int_equal(f.kind, CODEC_KIND_SUBSCRIBE_ACK);
    struct st_stream sw = {0};
    sw.acked = true;
    while (nexus_recv(w, &f, 200) == 1)
        st_stream_take(&sw, &f);
    st_check_stream(&sw, camps[0], 1, last[0], want[0], N + 16, "nexus_wait_reply, then recv");
    st_stream_free(&sw);
    nexus_close(w);
    print_message("resume after kill -9: from 1 and from %d on both shards for campaigns of "
                  "both shards: exact, before the ack, then live\n",
                  MID);
    nexus_close(ctl);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* A publisher streaming acked emits (window 16) to one campaign: n events, or until the
 * broker goes away (n = 0). acked[seq] = key. */
struct stream_pub {
    const struct broker_proc *b;
    int64_t camp;
    uint64_t key_base;
    uint64_t n;
    uint64_t *acked; /* indexed by sequence, cap entries */
    size_t cap;
    _Atomic uint64_t n_acked;
    _Atomic uint64_t last_seq;
    uint64_t errors, bad;
};

static void *stream_pub_main(void *arg)
{
    struct stream_pub *p = arg;
    struct nexus_client *c = h_connect(p->b, NULL);
    if (!c)
        return NULL;
    uint8_t pl[128];
    size_t pl_len = st_payload(pl, 60);
    uint64_t sent = 0, answered = 0;
    for (;;) {
        while ((!p->n || sent < p->n) && sent - answered < 16) {
            char id[24];
            st_id_of(id, p->key_base + ++sent);
            struct codec_emit_in e;
            nexus_emit_init(&e, ST_TYPE, p->camp, id, pl, pl_len);
            e.correlation = sent;
            if (nexus_send_emit(c, &e) < 0)
                goto out;
        }
        if (p->n && answered == p->n)
            break;
        if (nexus_flush(c) < 0)
            goto out;
        struct nexus_frame f;
        if (nexus_recv(c, &f, 5000) != 1)
            goto out;
        if (f.kind == CODEC_KIND_EMIT_ACK) {
            answered++;
            uint64_t seq = f.u.event.sequence, k = st_key_of(f.u.event.event_id);
            if (k != p->key_base + f.correlation || f.u.event.campaign_id != p->camp || !seq ||
                seq >= p->cap) {
                p->bad++;
                continue;
            }
            p->acked[seq] = k;
            if (seq > atomic_load(&p->last_seq))
                atomic_store(&p->last_seq, seq);
            atomic_fetch_add(&p->n_acked, 1);
        } else if (f.kind == CODEC_KIND_ERROR) {
            answered++;
            p->errors++;
        }
    }
out:
    nexus_close(c);
    return NULL;
}

/* 2. A subscriber joins from sequence 1 while a publisher streams into the campaign: it gets
 * 1..N contiguous, no gap, no duplicate at the join between replay and live, ids as acked.
 * Each of the 4 (owner shard, subscriber shard) pairs, twice: the join on the owner's shard
 * and across shards. */
static void test_resume_concurrent(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    enum { N = 3000 };
    uint64_t *acked = calloc(N + 16, sizeof(uint64_t));
    assert_non_null(acked);
    int round = 0;
    for (int rep = 0; rep < 2; rep++) {
        for (uint32_t o = 0; o < SHARDS; o++) {
            for (uint32_t sh = 0; sh < SHARDS; sh++, round++) {
                int64_t camp = h_campaign_on(o, SHARDS, 99500 + 100 * round);
                memset(acked, 0, sizeof(uint64_t) * (N + 16));
                struct stream_pub p = {.b = &b,
                                       .camp = camp,
                                       .key_base = (uint64_t)(round + 1) << 32,
                                       .n = N,
                                       .acked = acked,
                                       .cap = N + 16};
                struct nexus_client *sub = connect_on(&b, sh);
                pthread_t t;
                assert_int_equal(pthread_create(&t, NULL, stream_pub_main, &p), 0);
                /* Join somewhere in the first half of the stream. */
                uint64_t join_at = 200 + (uint64_t)(round * 173) % (N / 2);
                int64_t t0 = h_now_ms();
                while (atomic_load(&p.n_acked) < join_at && h_now_ms() - t0 < 10000)
                    usleep(200);
                uint64_t at_join = atomic_load(&p.last_seq);
                struct st_stream s = {0};
                char what[160];
                snprintf(what, sizeof(what),
                         "join from 1 at ~%" PRIu64 " of %d, campaign of shard %u, subscriber "
                         "on shard %u (%s)",
                         at_join, N, o, sh, o == sh ? "same shard" : "across shards");
                sub_from(sub, camp, NULL, 0, 1, &s, what);
                size_t before = s.n_before_ack;
                int r = st_stream_until(sub, &s, camp, N, 5000);
                pthread_join(t, NULL);
                if (p.errors || p.bad || atomic_load(&p.n_acked) != N)
                    fail_msg("%s: publisher: %" PRIu64 " acked, %" PRIu64 " errors, %" PRIu64
                             " bad acks",
                             what, (uint64_t)atomic_load(&p.n_acked), p.errors, p.bad);
                if (r != 1)
                    fail_msg("%s: the stream stopped at %zu events (r=%d), last seq %" PRIu64, what,
                             s.n, r, s.n ? s.ev[s.n - 1].seq : 0);
                st_check_stream(&s, camp, 1, N, acked, N + 16, what);
                print_message("%s: %zu replayed before the ack, %zu after it: 1..%d exact\n", what,
                              before, s.n - before, N);
                st_stream_free(&s);
                nexus_close(sub);
            }
        }
    }
    free(acked);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* Reads frames into s until the connection fails (the broker was killed). */
static void *stream_reader_main(void *arg)
{
    void **a = arg;
    struct nexus_client *c = a[0];
    struct st_stream *s = a[1];
    const int64_t *stop_at = a[2]; /* stops reading then (0: never) */
    struct nexus_frame f;
    for (;;) {
        int64_t left = *stop_at ? *stop_at - h_now_ms() : 5000;
        if (left <= 0 || nexus_recv(c, &f, left < 5000 ? (int)left : 5000) != 1)
            break;
        st_stream_take(s, &f);
    }
    return NULL;
}

/* The key of the logged event (camp, seq) (fails the test if the log lacks it). */
static uint64_t logged_key(const struct st_log *L, int64_t camp, uint64_t seq)
{
    const struct st_rec *r = st_find(L, camp, seq);
    if (!r)
        fail_msg("campaign %" PRId64 " sequence %" PRIu64 " is not in the log", camp, seq);
    return r ? r->key : 0;
}

/* 3. The kill -9 loop's acceptance for resume: a subscriber that had events up to k when nexusd
 * was killed resumes, after the restart, with from_sequence k + 1 and gets exactly k + 1 to
 * the log's end (every acked event, and whatever was logged but not acked), then live ones; over
 * all the cycles it has seen 1..max once each, with the logged ids. */
static void test_resume_after_kill9(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(1, SHARDS, 99900);
    enum { CAP = 1 << 20, CYCLES = 5 };
    uint64_t *acked = calloc(CAP, sizeof(uint64_t));
    assert_non_null(acked);
    struct st_stream all = {0}; /* everything the subscriber saw, over every cycle */
    all.acked = true;
    unsigned seed = (unsigned)time(NULL);
    print_message("resume after kill -9: seed %u\n", seed);
    uint64_t k = 0; /* the last sequence the subscriber has */
    for (int cycle = 0; cycle < CYCLES; cycle++) {
        struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
        g_resume_broker = &b;
        /* Resume, alternately on the owner's shard and the other one. */
        uint32_t sh = (uint32_t)cycle % SHARDS;
        struct nexus_client *sub = connect_on(&b, sh);
        struct st_stream s = {0};
        char what[128];
        snprintf(what, sizeof(what), "cycle %d: resume from %" PRIu64 " on shard %u", cycle, k + 1,
                 sh);
        sub_from(sub, camp, NULL, 0, k + 1, &s, what);
        if (cycle) {
            /* Nothing is published yet: the replay is the log's k+1..end, before the ack. */
            struct st_log L;
            st_scan(&L, dir, SHARDS);
            st_check_sequences(&L);
            uint64_t max = st_max_seq(&L, camp);
            uint64_t *logged = calloc(max + 2, sizeof(uint64_t));
            assert_non_null(logged);
            for (uint64_t q = 1; q <= max; q++)
                logged[q] = logged_key(&L, camp, q);
            for (uint64_t q = 1; q <= max && q < CAP; q++)
                if (acked[q] && acked[q] != logged[q])
                    fail_msg("%s: acked k%016" PRIx64 " at %" PRIu64 ", logged k%016" PRIx64, what,
                             acked[q], q, logged[q]);
            st_check_stream(&s, camp, k + 1, max, logged, max + 1, what);
            uint64_t last_acked = 0;
            for (uint64_t q = 1; q < CAP; q++)
                if (acked[q])
                    last_acked = q;
            print_message("%s: replayed %zu (%" PRIu64 "..%" PRIu64 "), last acked %" PRIu64
                          ", %" PRIu64 " logged but not acked\n",
                          what, s.n, k + 1, max, last_acked, max - last_acked);
            assert_true(max >= last_acked);
            free(logged);
            st_log_free(&L);
        }
        for (size_t i = 0; i < s.n; i++) {
            st_stream_take(&all, &(struct nexus_frame){.kind = CODEC_KIND_EVENT,
                                                       .u.event = {.campaign_id = s.ev[i].camp,
                                                                   .sequence = s.ev[i].seq}});
            all.ev[all.n - 1].key = s.ev[i].key;
        }
        st_stream_free(&s);
        s.acked = true;
        /* Live: a publisher streams until the kill; the subscriber reads until it. */
        struct stream_pub p = {.b = &b,
                               .camp = camp,
                               .key_base = (uint64_t)(cycle + 1) << 40,
                               .acked = acked,
                               .cap = CAP};
        pthread_t tp, ts;
        /* Odd cycles: the subscriber stops reading well before the kill, so that what it
         * misses includes acknowledged events. */
        int kill_ms = 100 + (int)(rand_r(&seed) % 300);
        int64_t stop_at = cycle % 2 ? h_now_ms() + kill_ms / 3 : 0;
        void *targ[3] = {sub, &s, &stop_at};
        assert_int_equal(pthread_create(&tp, NULL, stream_pub_main, &p), 0);
        assert_int_equal(pthread_create(&ts, NULL, stream_reader_main, targ), 0);
        usleep((useconds_t)kill_ms * 1000);
        assert_int_equal(kill(b.pid, SIGKILL), 0);
        assert_int_equal(h_wait_exit(&b, 10000), 128 + SIGKILL);
        pthread_join(tp, NULL);
        pthread_join(ts, NULL);
        nexus_close(sub);
        if (p.bad || p.errors)
            fail_msg("cycle %d: publisher: %" PRIu64 " errors, %" PRIu64 " bad acks", cycle,
                     p.errors, p.bad);
        for (size_t i = 0; i < s.n; i++) {
            st_stream_take(&all, &(struct nexus_frame){.kind = CODEC_KIND_EVENT,
                                                       .u.event = {.campaign_id = s.ev[i].camp,
                                                                   .sequence = s.ev[i].seq}});
            all.ev[all.n - 1].key = s.ev[i].key;
        }
        if (s.gaps)
            fail_msg("cycle %d: %" PRIu64 " gap frames live", cycle, s.gaps);
        print_message("cycle %d: %" PRIu64 " acked live, the subscriber got %zu live\n", cycle,
                      (uint64_t)atomic_load(&p.n_acked), s.n);
        st_stream_free(&s);
        k = all.n ? all.ev[all.n - 1].seq : 0;
        st_check_stream(&all, camp, 1, k, acked, CAP, "the subscriber over the cycles so far");
    }
    /* A last start: resume once more; the whole history seen is the log, 1..max. */
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    struct nexus_client *sub = connect_on(&b, 0);
    struct st_stream s = {0};
    sub_from(sub, camp, NULL, 0, k + 1, &s, "last resume");
    for (size_t i = 0; i < s.n; i++) {
        st_stream_take(&all, &(struct nexus_frame){.kind = CODEC_KIND_EVENT,
                                                   .u.event = {.campaign_id = s.ev[i].camp,
                                                               .sequence = s.ev[i].seq}});
        all.ev[all.n - 1].key = s.ev[i].key;
    }
    st_stream_free(&s);
    nexus_close(sub);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    st_check_sequences(&L);
    uint64_t max = st_max_seq(&L, camp);
    uint64_t *logged = calloc(max + 2, sizeof(uint64_t));
    assert_non_null(logged);
    for (uint64_t q = 1; q <= max; q++)
        logged[q] = logged_key(&L, camp, q);
    st_check_stream(&all, camp, 1, max, logged, max + 1, "the subscriber over every cycle");
    for (uint64_t q = 1; q <= max && q < CAP; q++)
        if (acked[q] && acked[q] != logged[q])
            fail_msg("acked k%016" PRIx64 " at %" PRIu64 ", logged k%016" PRIx64, acked[q], q,
                     logged[q]);
    print_message("resume after kill -9: %d cycles, the subscriber saw 1..%" PRIu64
                  " once each, as logged\n",
                  CYCLES, max);
    free(logged);
    st_log_free(&L);
    st_stream_free(&all);
    free(acked);
    st_rmtree(dir);
}

/* 4. The subscription's patterns apply to the replay too (and to the live events after it),
 * on the owner's shard and across shards. */
static void test_resume_pattern_filter(void **state)
{
    (void)state;
    static const char *const types[] = {"order:placed:v1:success", "order:shipped:v2:failed",
                                        "chat:typing:v1:stream"};
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    struct nexus_client *ctl = h_connect(&b, NULL);
    assert_non_null(ctl);
    enum { N = 30 };
    for (uint32_t o = 0; o < SHARDS; o++) {
        int64_t camp = h_campaign_on(o, SHARDS, 99700);
        uint64_t keys[N + 16] = {0}; /* the replayed N, then 3 live per round (4 rounds) */
        for (uint64_t i = 1; i <= N; i++)
            assert_int_equal(emit_typed(ctl, camp, types[i % 3], i | 0x100), i);
        for (uint64_t i = 1; i <= N; i++)
            keys[i] = i | 0x100;
        for (uint32_t sh = 0; sh < SHARDS; sh++) {
            static const char *const pats[] = {"*:*:v1:*"};
            static const char *const pats2[] = {"order:shipped:*:*", "nomatch:x:v1:*"};
            for (int which = 0; which < 2; which++) {
                const char *const *pp = which ? pats2 : pats;
                uint32_t np = which ? 2 : 1;
                uint64_t from = which ? 10 : 1;
                struct nexus_client *sub = connect_on(&b, sh);
                struct st_stream s = {0};
                char what[160];
                snprintf(what, sizeof(what),
                         "pattern %s%s from %" PRIu64 ", campaign of shard %u, subscriber on "
                         "shard %u",
                         pp[0], which ? " +1" : "", from, o, sh);
                sub_from(sub, camp, pp, np, from, &s, what);
                /* Live: one of each type; only the matching ones come. */
                uint64_t lk = 0x900 + (uint64_t)(sh * 2 + which) * 4;
                uint64_t base = emit_typed(ctl, camp, types[0], lk);
                emit_typed(ctl, camp, types[1], lk + 1);
                emit_typed(ctl, camp, types[2], lk + 2);
                keys[base] = lk;
                keys[base + 1] = lk + 1;
                keys[base + 2] = lk + 2;
                assert_int_equal(h_ping(sub, 5000), 1);
                struct nexus_frame f;
                while (nexus_recv(sub, &f, 200) == 1)
                    st_stream_take(&s, &f);
                /* Expected: every sequence >= from whose type matches (seq % 3; the live ones,
                 * of earlier rounds too, in the order above), those below base replayed. */
                size_t j = 0;
                for (uint64_t q = from; q <= base + 2; q++) {
                    int t = q <= N ? (int)(q % 3) : (int)((q - N - 1) % 3);
                    bool m = which ? t == 1 : t != 1;
                    if (!m)
                        continue;
                    if (j >= s.n || s.ev[j].seq != q || s.ev[j].key != keys[q])
                        fail_msg("%s: event %zu is %s%" PRIu64 " (k%016" PRIx64 "), want sequence "
                                 "%" PRIu64 " (k%016" PRIx64 ") of type %s",
                                 what, j, j < s.n ? "seq " : "missing", j < s.n ? s.ev[j].seq : 0,
                                 j < s.n ? s.ev[j].key : 0, q, keys[q], types[t]);
                    if ((q < base) != s.before_ack[j])
                        fail_msg("%s: sequence %" PRIu64 " came %s the subscribe_ack", what, q,
                                 s.before_ack[j] ? "before" : "after");
                    j++;
                }
                if (j != s.n || s.gaps)
                    fail_msg("%s: %zu events (want %zu), %" PRIu64 " gaps", what, s.n, j, s.gaps);
                st_stream_free(&s);
                nexus_close(sub);
            }
        }
    }
    print_message("pattern filters honoured by the replay, same shard and across shards\n");
    nexus_close(ctl);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* 5. from_sequence past the log's end: no event replayed; the live ones still come. */
static void test_resume_beyond_end(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    struct nexus_client *ctl = h_connect(&b, NULL);
    assert_non_null(ctl);
    for (uint32_t o = 0; o < SHARDS; o++) {
        int64_t camp = h_campaign_on(o, SHARDS, 99800);
        assert_int_equal(emit_n(ctl, camp, 0x100, 10, 0), 10);
        uint64_t next = 11;
        for (uint32_t sh = 0; sh < SHARDS; sh++) {
            struct nexus_client *sub = connect_on(&b, sh);
            struct st_stream s = {0};
            char what[128];
            snprintf(what, sizeof(what),
                     "from 110 (log ends at %" PRIu64 "), campaign of shard "
                     "%u, subscriber on shard %u",
                     next - 1, o, sh);
            sub_from(sub, camp, NULL, 0, 110, &s, what);
            if (s.n)
                fail_msg("%s: %zu events replayed (the first: %" PRIu64 ")", what, s.n,
                         s.ev[0].seq);
            uint64_t key = 0x500 + sh, seq = 0;
            assert_int_equal(st_emit(ctl, camp, key, NULL, 0, &seq, NULL, 0), 1);
            assert_int_equal(seq, next);
            next++;
            if (st_stream_until(sub, &s, camp, seq, 5000) != 1)
                fail_msg("%s: the live event %" PRIu64 " did not arrive (%zu events)", what, seq,
                         s.n);
            assert_int_equal(s.n, 1);
            assert_int_equal(s.ev[0].key, key);
            print_message("%s: nothing replayed, %" PRIu64 " gap frame(s)%s%s; live sequence "
                          "%" PRIu64 " delivered (below from_sequence)\n",
                          what, s.gaps, s.gaps ? ", reason " : "", s.gap_reason, seq);
            st_stream_free(&s);
            nexus_close(sub);
        }
    }
    hx_assert_up(&b);
    nexus_close(ctl);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

/* 6. from_sequence with campaign_id 0, or on a broker without --data-dir: bad_request; the
 * connection and the broker keep serving. */
static void test_resume_errors(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    struct broker_proc b = st_start(dir, SHARDS, NULL, NULL);
    g_resume_broker = &b;
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        struct nexus_client *c = connect_on(&b, sh);
        struct st_stream s = {0};
        char code[64] = "";
        assert_int_equal(st_subscribe_from(c, 0, NULL, 0, 5, &s, code, sizeof(code), 5000),
                         -EPROTO);
        assert_string_equal(code, "bad_request");
        assert_int_equal(s.n, 0);
        assert_int_equal(h_ping(c, 5000), 1);
        /* The firehose without from_sequence is still fine. */
        assert_int_equal(nexus_subscribe_sync(c, 0, NULL, 0, NULL, NULL, NULL, 5000), 1);
        nexus_close(c);
    }
    hx_assert_up(&b);
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);

    struct broker_proc m = h_track(h_start_flags(SHARDS, 0, NULL));
    g_resume_broker = &m;
    int64_t camp = h_campaign_on(1, SHARDS, 99600);
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        struct nexus_client *c = connect_on(&m, sh);
        struct st_stream s = {0};
        char code[64] = "";
        assert_int_equal(st_subscribe_from(c, camp, NULL, 0, 1, &s, code, sizeof(code), 5000),
                         -EPROTO);
        assert_string_equal(code, "bad_request");
        assert_int_equal(st_subscribe_from(c, 0, NULL, 0, 1, &s, code, sizeof(code), 5000),
                         -EPROTO);
        assert_string_equal(code, "bad_request");
        assert_int_equal(s.n, 0);
        /* from_sequence 0 is a plain subscription. */
        assert_int_equal(st_subscribe_from(c, camp, NULL, 0, 0, &s, code, sizeof(code), 5000), 1);
        assert_int_equal(h_ping(c, 5000), 1);
        nexus_close(c);
    }
    hx_assert_up(&m);
    print_message("from_sequence: campaign 0 and no --data-dir answered bad_request\n");
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&m), 0);
}

/* ---- retention: --retain-bytes, --retain-age ---------------------------------------------- */

/* Pipelined acked emits of ~1 KiB to camp (WINDOW in flight), n of them; the campaign's
 * sequences go on from *next (the first ack must be *next), the event id of sequence q is
 * key_base + q. */
static void ret_emit(struct nexus_client *c, int64_t camp, uint64_t key_base, uint64_t n,
                     uint64_t *next)
{
    static uint8_t pl[1100];
    size_t pl_len = st_payload(pl, 1000);
    uint64_t sent = 0, acked = 0;
    while (acked < n) {
        while (sent < n && sent - acked < WINDOW) {
            char id[24];
            sent++;
            st_id_of(id, key_base + *next + sent - 1);
            struct codec_emit_in e;
            nexus_emit_init(&e, ST_TYPE, camp, id, pl, pl_len);
            e.correlation = sent;
            assert_int_equal(nexus_send_emit(c, &e), 0);
        }
        assert_int_equal(nexus_flush(c), 0);
        struct nexus_frame f;
        assert_int_equal(nexus_recv(c, &f, 10000), 1);
        if (f.kind != CODEC_KIND_EMIT_ACK)
            fail_msg("campaign %" PRId64 ": frame kind %u (%.*s) while streaming emits", camp,
                     f.kind, f.kind == CODEC_KIND_ERROR ? (int)f.u.error.code.len : 0,
                     f.kind == CODEC_KIND_ERROR ? (const char *)f.u.error.code.ptr : "");
        acked++;
        if (f.u.event.sequence != *next + f.correlation - 1)
            fail_msg("campaign %" PRId64 ": emit %" PRIu64 " acked as sequence %" PRIu64
                     ", want %" PRIu64,
                     camp, f.correlation, f.u.event.sequence, *next + f.correlation - 1);
    }
    *next += n;
}

/* The .seg files of one shard: their count, total bytes and the lowest offset. */
static uint64_t shard_seg_bytes(const char *dir, uint32_t shard, uint32_t *nsegs, uint64_t *low)
{
    char sd[600];
    snprintf(sd, sizeof(sd), "%s/shard-%03u", dir, shard);
    DIR *d = opendir(sd);
    assert_non_null(d);
    uint64_t total = 0;
    *nsegs = 0;
    *low = UINT64_MAX;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l != 24 || strcmp(e->d_name + 20, ".seg") != 0)
            continue;
        char p[900];
        snprintf(p, sizeof(p), "%s/%s", sd, e->d_name);
        struct stat sb;
        if (stat(p, &sb) != 0)
            continue; /* deleted meanwhile */
        total += (uint64_t)sb.st_size;
        (*nsegs)++;
        uint64_t off = strtoull(e->d_name, NULL, 10);
        if (off < *low)
            *low = off;
    }
    closedir(d);
    return total;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* After st_check_sequences: the first sequence of camp in the log (0: none). */
static uint64_t min_seq(const struct st_log *L, int64_t camp)
{
    for (size_t i = 0; i < L->n; i++)
        if (L->r[i].camp == camp)
            return L->r[i].seq;
    return 0;
}

/* The log of a shard after retention: the segments left are contiguous (each one's offset is
 * the previous one's plus its size) and no longer start at 0; every campaign holds one run
 * lo..hi without gap or repeat, each record with the id key_base + seq. Sorts L. */
static void check_retained_log(struct st_log *L, uint32_t shards, const int64_t *camps,
                               const uint64_t *key_base, int ncamp)
{
    assert_false(L->stopped);
    for (uint32_t sh = 0; sh < shards; sh++) {
        uint32_t segs[256] = {0};
        size_t ns = st_shard_segs(L, sh, segs, 256);
        assert_true(ns >= 1);
        if (L->segs[segs[0]].base == 0)
            fail_msg("shard %u: its first segment (offset 0) is still there (%zu segments)", sh,
                     ns);
        for (size_t i = 1; i < ns; i++)
            if (L->segs[segs[i]].base != L->segs[segs[i - 1]].base + L->segs[segs[i - 1]].size)
                fail_msg("shard %u: segment at %" PRIu64 " follows one at %" PRIu64 " of %" PRIu64
                         " bytes",
                         sh, L->segs[segs[i]].base, L->segs[segs[i - 1]].base,
                         L->segs[segs[i - 1]].size);
    }
    qsort(L->r, L->n, sizeof(*L->r), st_cmp_rec);
    for (size_t i = 1; i < L->n; i++)
        if (L->r[i].camp == L->r[i - 1].camp && L->r[i].seq != L->r[i - 1].seq + 1)
            fail_msg("campaign %" PRId64 ": sequence %" PRIu64 " follows %" PRIu64 " in the log",
                     L->r[i].camp, L->r[i].seq, L->r[i - 1].seq);
    for (size_t i = 0; i < L->n; i++)
        for (int k = 0; k < ncamp; k++)
            if (L->r[i].camp == camps[k] && L->r[i].key != key_base[k] + L->r[i].seq)
                fail_msg("campaign %" PRId64 " sequence %" PRIu64 ": id k%016" PRIx64
                         ", acked as k%016" PRIx64,
                         camps[k], L->r[i].seq, L->r[i].key, key_base[k] + L->r[i].seq);
}

/* The floors file of a shard: the sequence it holds for camp (0: not there); checks its
 * framing ("NXF1", count, count pairs, 8 bytes of checksum). */
static uint64_t floors_seq(const char *dir, uint32_t shard, int64_t camp)
{
    char p[600];
    snprintf(p, sizeof(p), "%s/shard-%03u/floors", dir, shard);
    size_t len;
    uint8_t *b = st_read_file(p, &len);
    uint32_t count = 0;
    assert_true(len >= 16);
    assert_memory_equal(b, "NXF1", 4);
    memcpy(&count, b + 4, 4);
    assert_int_equal(len, 16 + (size_t)count * 16);
    uint64_t best = 0;
    for (uint32_t i = 0; i < count; i++) {
        int64_t id;
        uint64_t seq;
        memcpy(&id, b + 8 + (size_t)i * 16, 8);
        memcpy(&seq, b + 16 + (size_t)i * 16, 8);
        if (id == camp && seq > best)
            best = seq;
    }
    free(b);
    return best;
}

/* A resume from 1 after retention: gap{retention, 1, first - 1} first, then exactly
 * first..last with the acked ids (first > last: the log holds none of it). */
static void check_resume_gap(struct broker_proc *b, uint32_t sh, int64_t camp, uint64_t first,
                             uint64_t last, uint64_t key_base, const char *what)
{
    struct nexus_client *sub = connect_on(b, sh);
    struct st_stream s = {0};
    sub_from(sub, camp, NULL, 0, 1, &s, what);
    assert_int_equal(h_ping(sub, 5000), 1);
    struct nexus_frame f;
    while (nexus_recv(sub, &f, 100) == 1)
        st_stream_take(&s, &f);
    if (s.gaps != 1 || strcmp(s.gap_reason, "retention") != 0 || s.gap_first != 1 ||
        s.gap_last != first - 1)
        fail_msg("%s: %" PRIu64 " gap frame(s), the first %" PRIu64 "..%" PRIu64
                 " (reason \"%s\"); want one, 1..%" PRIu64 " (retention)",
                 what, s.gaps, s.gap_first, s.gap_last, s.gap_reason, first - 1);
    uint64_t *want = calloc(last + 2, sizeof(uint64_t));
    assert_non_null(want);
    for (uint64_t q = first; q <= last; q++)
        want[q] = key_base + q;
    s.gaps = 0; /* checked above */
    if (first <= last) {
        st_check_stream(&s, camp, first, last, want, last + 1, what);
    } else if (s.n) {
        fail_msg("%s: %zu events replayed (the first %" PRIu64 "), the log holds none", what, s.n,
                 s.ev[0].seq);
    }
    print_message("%s: gap{retention, 1..%" PRIu64 "}, then %zu events %" PRIu64 "..%" PRIu64 "\n",
                  what, first - 1, s.n, first, last);
    free(want);
    st_stream_free(&s);
    nexus_close(sub);
}

/* --segment-bytes 1M --retain-bytes 3M on 2 shards, ~10.5 MB of 1 KiB events: campaign A (shard
 * 0) gets events only at the start, B (shard 0) and C (shard 1) the rest. Each shard's .seg
 * files stay within retain-bytes + one segment + a batch; the first segments are deleted
 * (nexus_log_segments_deleted_total counts them). After kill -9 and a restart: every campaign
 * goes on at its last acked + 1 — A too, from the floors file alone; a resume from 1 gets
 * gap{retention, 1, first kept - 1} and then the log's events to the end. A corrupt floors
 * file refuses the start; --recover truncate starts without it. */
/* Paced replay (docs/ARCHITECTURE.md, "Resume"): a resume from 1 of a campaign holding ~33 MB
 * of events, by a subscriber reading slowly, with --max-outbound-bytes 1M (the whole replay
 * queued at once would meet the slow-consumer policy) and a publisher adding live events while
 * it runs. For a subscriber on the owner's shard and one on the other shard: no disconnect,
 * exactly 1..last in order (the replay, then the live tail, no gap or duplicate at the join),
 * and nexusd's RSS grows by far less than the replay's size. */
static void test_resume_paced(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 98600);
    const uint64_t key_base = 9ull << 40;
    uint64_t next = 1;
    const char *flags[] = {"--max-outbound-bytes", "1M", NULL};
    struct broker_proc b = st_start(dir, SHARDS, NULL, flags);
    struct nexus_client *pub = h_connect(&b, NULL);
    assert_non_null(pub);
    ret_emit(pub, camp, key_base, 30000, &next); /* 1000-byte payloads: ~33 MB of frames */
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        char what[96];
        snprintf(what, sizeof(what), "paced resume from 1, subscriber on shard %u (%s)", sh,
                 sh == 0 ? "the owner's" : "the other");
        double rss0 = hx_rss_mib(&b), rss_peak = rss0;
        struct nexus_client *sub = connect_on(&b, sh);
        uint64_t corr = nexus_next_correlation(sub);
        assert_int_equal(nexus_send_subscribe_from(sub, corr, camp, NULL, 0, NULL, 1), 0);
        assert_int_equal(nexus_flush(sub), 0);
        struct st_stream st = {0};
        uint64_t frames = 0;
        while (!st.acked || st.n == 0 || st.ev[st.n - 1].seq < next - 1) {
            struct nexus_frame f;
            int r = nexus_recv(sub, &f, 10000);
            if (r != 1)
                fail_msg("%s: after %zu events: r=%d (disconnected?)", what, st.n, r);
            if (f.correlation == corr && f.kind == CODEC_KIND_SUBSCRIBE_ACK)
                st.acked = true;
            else if (f.kind == CODEC_KIND_ERROR)
                fail_msg("%s: error %.*s", what, (int)f.u.error.code.len,
                         (const char *)f.u.error.code.ptr);
            else
                st_stream_take(&st, &f);
            if (++frames % 2000 == 0) { /* a slow reader, with live events meanwhile */
                usleep(20 * 1000);
                if (next <= 30000 + 400 * (sh + 1))
                    ret_emit(pub, camp, key_base, 50, &next);
                double rss = hx_rss_mib(&b);
                if (rss > rss_peak)
                    rss_peak = rss;
            }
        }
        ret_emit(pub, camp, key_base, 50, &next); /* and live after the ack */
        if (st_stream_until(sub, &st, camp, next - 1, 5000) != 1)
            fail_msg("%s: the live events after the ack did not all come", what);
        uint64_t *want = calloc(next + 1, sizeof(uint64_t));
        assert_non_null(want);
        for (uint64_t q = 1; q < next; q++)
            want[q] = key_base + q;
        st_check_stream(&st, camp, 1, next - 1, want, next, what);
        /* ASan's quarantine keeps freed memory resident: the bound holds for real builds. */
        if (!HX_ASAN && rss_peak - rss0 > 16)
            fail_msg("%s: nexusd's RSS grew by %.1f MiB during a 33 MB replay", what,
                     rss_peak - rss0);
        print_message("%s: %zu events (%zu before the ack), exact; RSS %.1f -> peak %.1f MiB%s\n",
                      what, st.n, st.n_before_ack, rss0, rss_peak,
                      HX_ASAN ? " (not checked under ASan)" : "");
        free(want);
        st_stream_free(&st);
        nexus_close(sub);
    }
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

static void test_retention(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    enum { A, B, C, NC };
    const uint32_t owner[NC] = {0, 0, 1};
    int64_t camps[NC];
    uint64_t key_base[NC], next[NC];
    for (int k = 0; k < NC; k++) {
        camps[k] = h_campaign_on(owner[k], SHARDS, 99100 + 100 * k);
        key_base[k] = (uint64_t)(k + 1) << 40;
        next[k] = 1;
    }
    const char *flags[] = {"--segment-bytes", "1M", "--retain-bytes", "3M", NULL};
    const uint64_t seg = 1u << 20, retain = 3u << 20, slack = 256u << 10;
    uint16_t mport;
    int64_t t0 = h_now_ms();
    struct broker_proc b = st_start(dir, SHARDS, &mport, flags);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    ret_emit(c, camps[A], key_base[A], 60, &next[A]);
    /* B 7 MB, C 3.5 MB, in rounds; each shard's files measured after each round. */
    uint64_t peak[SHARDS] = {0};
    for (int round = 0; round < 14; round++) {
        ret_emit(c, camps[B], key_base[B], 480, &next[B]);
        ret_emit(c, camps[C], key_base[C], 240, &next[C]);
        for (uint32_t sh = 0; sh < SHARDS; sh++) {
            uint32_t ns;
            uint64_t low, tot = shard_seg_bytes(dir, sh, &ns, &low);
            if (tot > peak[sh])
                peak[sh] = tot;
            if (tot > retain + seg + slack)
                fail_msg("round %d: shard %u holds %" PRIu64 " bytes in %u segments, more than "
                         "--retain-bytes %" PRIu64 " + a segment + %" PRIu64,
                         round, sh, tot, ns, retain, slack);
        }
    }
    double deleted = hx_metric(mport, "nexus_log_segments_deleted_total");
    nexus_close(c);
    /* Every ack is back: nothing is in flight. kill -9. */
    assert_int_equal(kill(b.pid, SIGKILL), 0);
    assert_int_equal(h_wait_exit(&b, 10000), 128 + SIGKILL);

    char first_seg[600];
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        snprintf(first_seg, sizeof(first_seg), "%s/shard-%03u/%020d.seg", dir, sh, 0);
        if (file_exists(first_seg))
            fail_msg("%s is still there", first_seg);
    }
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    size_t records = L.n, nsegs = L.nsegs;
    check_retained_log(&L, SHARDS, camps, key_base, NC);
    uint64_t lo[NC], hi[NC];
    for (int k = 0; k < NC; k++) {
        lo[k] = min_seq(&L, camps[k]);
        hi[k] = st_max_seq(&L, camps[k]);
    }
    st_log_free(&L);
    print_message("retention: %.0f segments deleted, %zu left (peak bytes %" PRIu64 " / %" PRIu64
                  "); campaign A: log holds %" PRIu64 "..%" PRIu64 " of 1..%" PRIu64 ", B %" PRIu64
                  "..%" PRIu64 " of %" PRIu64 ", C %" PRIu64 "..%" PRIu64 " of %" PRIu64 "\n",
                  deleted, nsegs, peak[0], peak[1], lo[A], hi[A], next[A] - 1, lo[B], hi[B],
                  next[B] - 1, lo[C], hi[C], next[C] - 1);
    assert_true(deleted >= SHARDS);
    assert_int_equal(lo[A], 0); /* all its records are gone */
    assert_int_equal(hi[A], 0);
    for (int k = B; k < NC; k++) {
        assert_true(lo[k] > 1);
        assert_int_equal(hi[k], next[k] - 1);
    }
    /* The floors file holds A's last sequence (or more). */
    assert_true(floors_seq(dir, 0, camps[A]) >= next[A] - 1);

    /* Restart: recovery counts the records left; each campaign goes on at last acked + 1 (no
     * resume first: its floor comes from the floors file or the records). */
    b = st_start(dir, SHARDS, &mport, flags);
    g_resume_broker = &b;
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), records);
    for (int k = 0; k < NC; k++) {
        uint64_t sh = (uint32_t)k % SHARDS; /* the subscriber: either shard */
        char what[128];
        snprintf(what, sizeof(what), "campaign %c after kill -9, resume from 1 on shard %u",
                 'A' + k, (unsigned)sh);
        check_resume_gap(&b, (uint32_t)sh, camps[k], lo[k] ? lo[k] : next[k], next[k] - 1,
                         key_base[k], what);
    }
    /* Emits only after every resume: the first may roll a full segment, and retention then
     * deletes the oldest one (the ranges above would move). */
    for (int k = 0; k < NC; k++) {
        expect_next(&b, camps[k], next[k], key_base[k] + next[k]);
        next[k]++;
    }
    g_resume_broker = NULL;
    assert_int_equal(h_stop(&b), 0);

    /* A flipped byte in the floors file: refused; --recover truncate starts without it. */
    char floors[600];
    snprintf(floors, sizeof(floors), "%s/shard-000/floors", dir);
    st_flip(floors, 8 + 3);
    struct h_child ch;
    int st = st_run_refused(&ch, dir, SHARDS, flags, 10000);
    if (st <= 0 || !strstr(ch.err, "floors"))
        fail_msg("nexusd with a corrupt floors file: exit %d (want > 0), stderr:\n%s", st, ch.err);
    print_message("corrupt floors: exit %d: %.*s\n", st,
                  (int)strcspn(strstr(ch.err, "log:") ? strstr(ch.err, "log:") : ch.err, "\n"),
                  strstr(ch.err, "log:") ? strstr(ch.err, "log:") : ch.err);
    h_child_free(&ch);
    const char *trunc[] = {"--segment-bytes", "1M", "--retain-bytes", "3M", "--recover",
                           "truncate",        NULL};
    b = st_start(dir, SHARDS, &mport, trunc);
    /* B's records are still there: it goes on. (A's floor is its record 61 now, written after
     * the restart above: reported, not checked.) */
    expect_next(&b, camps[B], next[B], key_base[B] + next[B]);
    next[B]++;
    struct nexus_client *ca = h_connect(&b, NULL);
    assert_non_null(ca);
    uint64_t aseq = 0;
    assert_int_equal(st_emit(ca, camps[A], key_base[A] + 0xfff, NULL, 0, &aseq, NULL, 0), 1);
    nexus_close(ca);
    print_message("--recover truncate without the floors file: B goes on at %" PRIu64
                  ", A (last %" PRIu64 ") at %" PRIu64 "\n",
                  next[B] - 1, next[A] - 1, aseq);
    assert_int_equal(h_stop(&b), 0);
    print_message("retention test: %lld ms\n", (long long)(h_now_ms() - t0));
    st_rmtree(dir);
}

/* --retain-age 1s: a segment whose newest event is older than a second is deleted once the
 * shard has rolled past it; a fresh one is not. */
/* Preallocated segments (docs/OPERATIONS.md, "Data directory"): once the open segment is half
 * full the next one is zero-filled as next.tmp and renamed at the roll, so the newest segment
 * is a full-size file of which only the front holds records. kill -9 then: recovery reads the
 * zero end as the end of the log (nothing cut, every record counted, the stale next.tmp
 * deleted, the campaign goes on); a stray byte in that zero end is still damage (cut as a
 * torn tail, counted). */
static void test_preallocated_segments(void **state)
{
    (void)state;
    char dir[256], next_tmp[600];
    st_mkdtemp(dir, sizeof(dir));
    snprintf(next_tmp, sizeof(next_tmp), "%s/shard-000/next.tmp", dir);
    int64_t camp = h_campaign_on(0, SHARDS, 98300);
    const uint64_t key_base = 7ull << 40;
    uint64_t next = 1;
    const char *flags[] = {"--segment-bytes", "1M", NULL};
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, flags);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    ret_emit(c, camp, key_base, 600, &next); /* ~0.65 MB: past half a segment */
    struct stat sb = {0};
    for (int i = 0; i < 100 && (stat(next_tmp, &sb) != 0 || sb.st_size < (1 << 20)); i++)
        usleep(50 * 1000);
    if (sb.st_size != (1 << 20))
        fail_msg("next.tmp: %lld bytes after 5 s, want 1 MiB of zeros", (long long)sb.st_size);
    usleep(500 * 1000);                      /* its fdatasync */
    ret_emit(c, camp, key_base, 500, &next); /* rolls into it, ~0.15 MB in */
    nexus_close(c);
    assert_int_equal(kill(b.pid, SIGKILL), 0);
    assert_int_equal(h_wait_exit(&b, 10000), 128 + SIGKILL);

    struct st_log L;
    st_scan(&L, dir, SHARDS);
    assert_false(L.stopped);
    assert_int_equal(L.n, 1100);
    uint32_t segs[64];
    size_t ns = st_shard_segs(&L, 0, segs, 64);
    assert_true(ns >= 2);
    struct st_seg *last = &L.segs[segs[ns - 1]];
    assert_int_equal(stat(last->path, &sb), 0);
    if (sb.st_size != (1 << 20) || last->size == 0 || last->size >= (uint64_t)sb.st_size)
        fail_msg("newest segment: %lld bytes, %" PRIu64 " of records; want 1 MiB, partly used",
                 (long long)sb.st_size, last->size);
    uint64_t content = last->size;
    char path[1200];
    snprintf(path, sizeof(path), "%s", last->path);
    st_log_free(&L);

    b = st_start(dir, SHARDS, &mport, flags);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_recovered_records"), 1100);
    assert_int_equal((uint64_t)hx_metric(mport, "nexus_log_truncated_bytes_total"), 0);
    if (file_exists(next_tmp))
        fail_msg("the half-made next.tmp of the killed nexusd is still there");
    expect_next(&b, camp, 1101, key_base + 1101);
    assert_int_equal(h_stop(&b), 0);

    /* A stray byte 4 KiB past the records (the one emit above took ~1.1 KiB of the zeros). */
    st_flip(path, content + 4096);
    b = st_start(dir, SHARDS, &mport, flags);
    double cut = hx_metric(mport, "nexus_log_truncated_bytes_total");
    if (cut <= 0)
        fail_msg("a byte flipped in the zero end of %s was not cut", path);
    expect_next(&b, camp, 1102, key_base + 1102);
    assert_int_equal(h_stop(&b), 0);
    print_message("preallocated: newest segment 1 MiB with %" PRIu64 " bytes of records; after "
                  "kill -9 1100 recovered, 0 cut, next.tmp gone; a flipped byte in the zero end: "
                  "%.0f bytes cut\n",
                  content, cut);
    st_rmtree(dir);
}

static void test_retention_age(void **state)
{
    (void)state;
    char dir[256];
    st_mkdtemp(dir, sizeof(dir));
    int64_t camp = h_campaign_on(0, SHARDS, 99400);
    const uint64_t kb = 7ull << 40;
    const char *flags[] = {"--segment-bytes", "1M", "--retain-age", "1s", NULL};
    uint16_t mport;
    struct broker_proc b = st_start(dir, SHARDS, &mport, flags);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint64_t next = 1;
    /* Past 1 MiB: segment 0 is full, the next batch rolls. */
    ret_emit(c, camp, kb, 1100, &next);
    char seg0[600];
    snprintf(seg0, sizeof(seg0), "%s/shard-000/%020d.seg", dir, 0);
    uint32_t ns;
    uint64_t low;
    shard_seg_bytes(dir, 0, &ns, &low);
    assert_true(file_exists(seg0)); /* its events are fresh */
    assert_int_equal(hx_metric(mport, "nexus_log_segments_deleted_total"), 0);
    /* Idle: the shard's once-a-second check deletes it (newest event > 1 s old) by ~2 s. */
    usleep(2500 * 1000);
    int64_t w0 = h_now_ms();
    while (file_exists(seg0) && h_now_ms() - w0 < 1500)
        usleep(20 * 1000);
    bool idle_deleted = !file_exists(seg0);
    /* Another segment's worth: rolls again. */
    ret_emit(c, camp, kb, 1100, &next);
    nexus_close(c);
    double deleted = hx_metric(mport, "nexus_log_segments_deleted_total");
    uint32_t ns2;
    shard_seg_bytes(dir, 0, &ns2, &low);
    print_message("retain-age 1s: %u segments before the wait, %u after (lowest offset %" PRIu64
                  "), %.0f deleted; segment 0 %s while the shard was idle\n",
                  ns, ns2, low, deleted, idle_deleted ? "was deleted" : "was NOT deleted");
    if (file_exists(seg0))
        fail_msg("%s (its newest event 2.5 s old) is still there after a roll", seg0);
    assert_true(deleted >= 1);
    assert_true(low > 0);
    assert_true(ns2 >= 2); /* what was written after the wait is kept */
    assert_true(idle_deleted);
    assert_int_equal(h_stop(&b), 0);
    struct st_log L;
    st_scan(&L, dir, SHARDS);
    int64_t camps[1] = {camp};
    uint64_t kbs[1] = {kb};
    check_retained_log(&L, 1, camps, kbs, 1); /* shard 0: shard 1 holds nothing */
    uint64_t lo = min_seq(&L, camp), hi = st_max_seq(&L, camp);
    st_log_free(&L);
    assert_true(lo > 1);
    assert_int_equal(hi, next - 1);
    b = st_start(dir, SHARDS, &mport, flags);
    expect_next(&b, camp, next, kb + next);
    assert_int_equal(h_stop(&b), 0);
    st_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill9_loop, st_teardown),
        cmocka_unit_test_teardown(test_torn_tail, st_teardown),
        cmocka_unit_test_teardown(test_damage_in_the_middle, st_teardown),
        cmocka_unit_test_teardown(test_lock_and_shards, st_teardown),
        cmocka_unit_test_teardown(test_segments_roll, st_teardown),
        cmocka_unit_test_teardown(test_interval_sync_and_roll, st_teardown),
        cmocka_unit_test_teardown(test_fsync_fails, st_teardown),
        cmocka_unit_test_teardown(test_write_fails, st_teardown),
        cmocka_unit_test_teardown(test_fsync_fails_in_the_queue, st_teardown),
        cmocka_unit_test_teardown(test_disk_full, disk_full_teardown),
        cmocka_unit_test_teardown(test_resume_after_restart, st_teardown),
        cmocka_unit_test_teardown(test_resume_concurrent, st_teardown),
        cmocka_unit_test_teardown(test_resume_after_kill9, st_teardown),
        cmocka_unit_test_teardown(test_resume_pattern_filter, st_teardown),
        cmocka_unit_test_teardown(test_resume_beyond_end, st_teardown),
        cmocka_unit_test_teardown(test_resume_errors, st_teardown),
        cmocka_unit_test_teardown(test_retention, st_teardown),
        cmocka_unit_test_teardown(test_retention_age, st_teardown),
        cmocka_unit_test_teardown(test_preallocated_segments, st_teardown),
        cmocka_unit_test_teardown(test_resume_paced, st_teardown),
    };
    const char *only = getenv("NEXUS_STORE_ONLY");
    if (only && *only) {
        struct CMUnitTest pick[32];
        size_t n = 0;
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
            if (strstr(tests[i].name, only))
                pick[n++] = tests[i];
        return _cmocka_run_group_tests("store_test", pick, n, NULL, NULL);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
