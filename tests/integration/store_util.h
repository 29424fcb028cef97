// SPDX-License-Identifier: Apache-2.0
//
// Helpers for store_test.c (the event log, broker/store.h): a data directory in a fresh temporary
// directory (removed at the end), nexusd started on it (or expected to refuse), emits that carry
// a numeric key in their event id, and a reader of the segment files that decodes every record
// (codec/logrec.h) and the event frame inside it, independently of the broker — so that "every
// acknowledged event is in the log" is checked on the files themselves. Include after cmocka.h,
// harness.h and hostile_util.h: the helpers that check use cmocka's assertions.
#ifndef NEXUS_TESTS_STORE_UTIL_H
#define NEXUS_TESTS_STORE_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "codec/envelope.h"
#include "codec/logrec.h"
#include "harness.h"
#include "hostile_util.h"

/* ---- the data directory --------------------------------------------------------------------- */

/* Directories st_mkdtemp made, removed by st_teardown (a failed assertion leaves the test
 * function before its own clean-up). */
#define ST_DIRS_MAX 8
static char st_dirs[ST_DIRS_MAX][256];

/* A fresh directory under $TMPDIR (or /tmp); out receives its path. */
static inline void st_mkdtemp(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(out, cap, "%s/nexus-store-XXXXXX", tmp);
    assert_non_null(mkdtemp(out));
    for (int i = 0; i < ST_DIRS_MAX; i++) {
        if (!st_dirs[i][0]) {
            snprintf(st_dirs[i], sizeof(st_dirs[i]), "%s", out);
            break;
        }
    }
}

static inline int st_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* rm -rf path. */
static inline void st_rmtree(const char *path)
{
    nftw(path, st_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < ST_DIRS_MAX; i++)
        if (!strcmp(st_dirs[i], path))
            st_dirs[i][0] = 0;
}

/* cmocka teardown: the brokers (h_teardown), then the directories still there. */
static inline int st_teardown(void **state)
{
    h_teardown(state);
    for (int i = 0; i < ST_DIRS_MAX; i++) {
        if (st_dirs[i][0]) {
            nftw(st_dirs[i], st_rm_one, 16, FTW_DEPTH | FTW_PHYS);
            st_dirs[i][0] = 0;
        }
    }
    return 0;
}

/* ---- nexusd on a data directory -------------------------------------------------------------- */

/* nexusd --data-dir dir --shards shards [--metrics 127.0.0.1:*mport] extra... (extra: a
 * NULL-terminated list, may be NULL). Remembered for h_teardown. */
static inline struct broker_proc st_start(const char *dir, uint32_t shards, uint16_t *mport,
                                          const char *const *extra)
{
    const char *flags[40];
    int n = 0;
    char maddr[64];
    flags[n++] = "--data-dir";
    flags[n++] = dir;
    if (mport) {
        *mport = hx_metrics_addr(maddr, sizeof(maddr));
        flags[n++] = "--metrics";
        flags[n++] = maddr;
    }
    for (int i = 0; extra && extra[i] && n < 38; i++)
        flags[n++] = extra[i];
    flags[n] = NULL;
    struct broker_proc b = h_track(h_start_flags(shards, 0, flags));
    /* h_start_flags returns once the client port accepts, but the listeners are bound before
     * the shards start, and recovery runs in each shard's start-up: a hello answered means
     * every shard is past its start-up (a shard's loop runs only once all have started). */
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    struct nexus_frame f;
    if (!c || nexus_hello_sync(c, NULL, "store-test", &f, 30000) != 1)
        fail_msg("nexusd on %s accepted a connection but did not answer a hello", dir);
    nexus_close(c);
    return b;
}

/* Runs nexusd on dir the way st_start would, but expects it not to start: returns its exit
 * status (-1 if it was still running after timeout_ms: then it was killed), its stderr in
 * ch->err (h_child_free it). */
static inline int st_run_refused(struct h_child *ch, const char *dir, uint32_t shards,
                                 const char *const *extra, int timeout_ms)
{
    const char *bin = getenv("NEXUSD");
    assert_non_null(bin);
    char listen[64], sh[16];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", h_free_port());
    snprintf(sh, sizeof(sh), "%u", shards);
    const char *argv[40];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--shards";
    argv[n++] = sh;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    argv[n++] = "--data-dir";
    argv[n++] = dir;
    for (int i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return h_run(ch, argv, timeout_ms);
}

/* ---- emits ------------------------------------------------------------------------------------
 */

#define ST_TYPE "feed:tick:v1:stream"

/* Event ids carry a 64-bit key ("k" and 16 hex digits): compact to remember, unique per test. */
static inline void st_id_of(char out[24], uint64_t key)
{
    snprintf(out, 24, "k%016" PRIx64, key);
}

/* The key of an event id written by st_id_of, or 0. */
static inline uint64_t st_key_of(struct codec_slice id)
{
    if (id.len != 17 || id.ptr[0] != 'k')
        return 0;
    uint64_t k = 0;
    for (uint32_t i = 1; i < 17; i++) {
        uint8_t c = id.ptr[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        k = k << 4 | (uint64_t)d;
    }
    return k;
}

/* One emit with an acknowledgement asked for. Returns 1 (acked, *seq set), -EPROTO (an error:
 * its code copied to code), or another result of nexus_emit_sync. */
static inline int st_emit(struct nexus_client *c, int64_t camp, uint64_t key, const void *pl,
                          size_t pl_len, uint64_t *seq, char *code, size_t code_cap)
{
    char id[24];
    st_id_of(id, key);
    struct codec_emit_in e;
    nexus_emit_init(&e, ST_TYPE, camp, id, pl ? pl : "", pl ? pl_len : 0);
    struct nexus_frame f;
    int r = nexus_emit_sync(c, &e, &f, 10000);
    if (r == 1) {
        assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
        assert_int_equal(f.u.event.campaign_id, camp);
        assert_int_equal(st_key_of(f.u.event.event_id), key);
        *seq = f.u.event.sequence;
    } else if (r == -EPROTO && code) {
        snprintf(code, code_cap, "%.*s", (int)f.u.error.code.len, (const char *)f.u.error.code.ptr);
    }
    return r;
}

/* A valid common.Payload of about n bytes (an unknown field 100 of x's). */
static inline size_t st_payload(uint8_t *out, size_t n)
{
    static uint8_t x[1 << 17];
    if (n > sizeof(x))
        n = sizeof(x);
    memset(x, 'x', n);
    return (size_t)(wire_put_len_field(out, 100, x, n) - out);
}

/* ---- reading the log ----------------------------------------------------------------------------
 */

/* One record found in a segment file. */
struct st_rec {
    int64_t camp;
    uint64_t seq;
    uint64_t key;   /* of the event id (st_key_of) */
    uint32_t shard; /* shard-NNN it was found in */
    uint32_t seg;   /* index of its segment in st_log.segs */
    uint64_t pos;   /* byte offset in the segment file */
    uint32_t size;  /* record bytes (header + frame) */
};

struct st_seg {
    uint32_t shard;
    uint64_t base; /* the offset in its name */
    uint64_t size; /* bytes of records: the file size less a preallocated zero end */
    char path[1200];
};

struct st_log {
    struct st_rec *r;
    size_t n, cap;
    struct st_seg *segs;
    size_t nsegs, cap_segs;
    /* The first record that did not decode OK, if any (a torn tail, or damage). */
    bool stopped;
    int stop_result;   /* LOGREC_SHORT or LOGREC_BAD */
    uint32_t stop_seg; /* index in segs */
    uint64_t stop_pos; /* offset in that file */
    bool stop_is_last; /* in the last segment of its shard */
    int stops;         /* how many segments had undecodable bytes */
};

static inline int st_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Reads a whole file (malloc'd). */
static inline uint8_t *st_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    uint8_t *b = malloc((size_t)sb.st_size + 1);
    assert_non_null(b);
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, b + got, (size_t)sb.st_size - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return b;
}

/* Decodes one record's frame as the delivered event it must be: length prefix, envelope of
 * kind event, an event body whose campaign, sequence and timestamp are the record's. */
static inline void st_check_frame(const struct logrec *r, const char *path, size_t pos,
                                  uint64_t *key)
{
    if (r->len < 5)
        fail_msg("%s@%zu: frame of %u bytes", path, pos, r->len);
    uint32_t flen = (uint32_t)r->frame[0] << 24 | (uint32_t)r->frame[1] << 16 |
                    (uint32_t)r->frame[2] << 8 | r->frame[3];
    if (flen != r->len - 4)
        fail_msg("%s@%zu: frame length prefix %u, record holds %u", path, pos, flen, r->len - 4);
    struct codec_envelope env;
    char err[CODEC_ERR_BYTES];
    if (codec_envelope_decode(r->frame + 4, flen, &env, err) < 0 || env.kind != CODEC_KIND_EVENT)
        fail_msg("%s@%zu: not an event frame (%s)", path, pos, err);
    struct codec_event_in ev;
    if (codec_event_decode(env.body.ptr, env.body.len, &ev, err) < 0)
        fail_msg("%s@%zu: event does not decode: %s", path, pos, err);
    if (ev.campaign_id != r->campaign_id || ev.sequence != r->sequence ||
        ev.timestamp_unix_nanos != r->ts_ns)
        fail_msg("%s@%zu: record says campaign %" PRId64 " seq %" PRIu64 " ts %" PRId64
                 ", its event %" PRId64 " %" PRIu64 " %" PRId64,
                 path, pos, r->campaign_id, r->sequence, r->ts_ns, ev.campaign_id, ev.sequence,
                 ev.timestamp_unix_nanos);
    *key = st_key_of(ev.event_id);
}

static inline void st_add_seg(struct st_log *L, const struct st_seg *s)
{
    if (L->nsegs == L->cap_segs) {
        L->cap_segs = L->cap_segs ? L->cap_segs * 2 : 16;
        L->segs = realloc(L->segs, sizeof(*L->segs) * L->cap_segs);
        assert_non_null(L->segs);
    }
    L->segs[L->nsegs++] = *s;
}

static inline void st_add_rec(struct st_log *L, const struct st_rec *r)
{
    if (L->n == L->cap) {
        L->cap = L->cap ? L->cap * 2 : 4096;
        L->r = realloc(L->r, sizeof(*L->r) * L->cap);
        assert_non_null(L->r);
    }
    L->r[L->n++] = *r;
}

/* Scans one segment file into L. */
static inline void st_scan_segment(struct st_log *L, uint32_t segi, bool last)
{
    struct st_seg *sg = &L->segs[segi];
    size_t len;
    uint8_t *buf = st_read_file(sg->path, &len);
    sg->size = len;
    size_t pos = 0;
    while (pos < len) {
        struct logrec r;
        size_t used;
        int got = logrec_decode(buf + pos, len - pos, &r, &used);
        if (got != LOGREC_OK) {
            size_t z = pos;
            while (z < len && buf[z] == 0)
                z++;
            if (z == len) { /* the preallocated end of the segment: not damage */
                sg->size = pos;
                break;
            }
            L->stops++;
            if (!L->stopped) {
                L->stopped = true;
                L->stop_result = got;
                L->stop_seg = segi;
                L->stop_pos = pos;
                L->stop_is_last = last;
            }
            break;
        }
        struct st_rec e = {.camp = r.campaign_id,
                           .seq = r.sequence,
                           .shard = sg->shard,
                           .seg = segi,
                           .pos = pos,
                           .size = (uint32_t)used};
        st_check_frame(&r, sg->path, pos, &e.key);
        st_add_rec(L, &e);
        pos += used;
    }
    free(buf);
}

/* Reads every segment of every shard of dir, in order (records in file order). */
static inline void st_scan(struct st_log *L, const char *dir, uint32_t shards)
{
    memset(L, 0, sizeof(*L));
    for (uint32_t sh = 0; sh < shards; sh++) {
        char sd[1100];
        snprintf(sd, sizeof(sd), "%s/shard-%03u", dir, sh);
        DIR *d = opendir(sd);
        if (!d)
            continue;
        uint64_t offs[4096];
        size_t n = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l == 24 && !strcmp(e->d_name + 20, ".seg") && n < 4096)
                offs[n++] = strtoull(e->d_name, NULL, 10);
        }
        closedir(d);
        qsort(offs, n, sizeof(offs[0]), st_cmp_u64);
        for (size_t i = 0; i < n; i++) {
            struct st_seg s = {.shard = sh, .base = offs[i]};
            snprintf(s.path, sizeof(s.path), "%s/%020" PRIu64 ".seg", sd, offs[i]);
            st_add_seg(L, &s);
            st_scan_segment(L, (uint32_t)(L->nsegs - 1), i + 1 == n);
        }
    }
}

static inline void st_log_free(struct st_log *L)
{
    free(L->r);
    free(L->segs);
    memset(L, 0, sizeof(*L));
}

static inline int st_cmp_rec(const void *a, const void *b)
{
    const struct st_rec *x = a, *y = b;
    if (x->camp != y->camp)
        return (x->camp > y->camp) - (x->camp < y->camp);
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Sorts the records by (campaign, sequence) and checks that every campaign holds exactly the
 * sequences 1..max, each once, and that no two records carry the same event id key. */
static inline void st_check_sequences(struct st_log *L)
{
    qsort(L->r, L->n, sizeof(*L->r), st_cmp_rec);
    for (size_t i = 0; i < L->n; i++) {
        bool first = i == 0 || L->r[i - 1].camp != L->r[i].camp;
        uint64_t want = first ? 1 : L->r[i - 1].seq + 1;
        if (L->r[i].seq != want)
            fail_msg("campaign %" PRId64 ": sequence %" PRIu64 " follows %" PRIu64
                     " in the log (a %s)",
                     L->r[i].camp, L->r[i].seq, first ? 0 : L->r[i - 1].seq,
                     L->r[i].seq < want ? "duplicate / reused sequence" : "gap");
    }
    uint64_t *keys = malloc(sizeof(*keys) * (L->n ? L->n : 1));
    assert_non_null(keys);
    size_t nk = 0;
    for (size_t i = 0; i < L->n; i++)
        if (L->r[i].key)
            keys[nk++] = L->r[i].key;
    qsort(keys, nk, sizeof(*keys), st_cmp_u64);
    for (size_t i = 1; i < nk; i++)
        if (keys[i] == keys[i - 1])
            fail_msg("event id key %016" PRIx64 " is in the log twice", keys[i]);
    free(keys);
}

/* After st_check_sequences: the record of (camp, seq), or NULL. */
static inline const struct st_rec *st_find(const struct st_log *L, int64_t camp, uint64_t seq)
{
    struct st_rec k = {.camp = camp, .seq = seq};
    return bsearch(&k, L->r, L->n, sizeof(*L->r), st_cmp_rec);
}

/* After st_check_sequences: the last sequence of camp in the log (0: none). */
static inline uint64_t st_max_seq(const struct st_log *L, int64_t camp)
{
    uint64_t m = 0;
    for (size_t i = 0; i < L->n; i++)
        if (L->r[i].camp == camp && L->r[i].seq > m)
            m = L->r[i].seq;
    return m;
}

/* Records of one shard, in file order (the log as sorted by st_check_sequences is not). */
static inline size_t st_shard_records(const struct st_log *L, uint32_t shard, struct st_rec *out,
                                      size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < L->n && n < cap; i++)
        if (L->r[i].shard == shard)
            out[n++] = L->r[i];
    return n;
}

/* Segments of one shard: indexes into L->segs, in order. */
static inline size_t st_shard_segs(const struct st_log *L, uint32_t shard, uint32_t *out,
                                   size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < L->nsegs && n < cap; i++)
        if (L->segs[i].shard == shard)
            out[n++] = (uint32_t)i;
    return n;
}

/* An acknowledged (or delivered) event: what the client was told. */
struct st_seen {
    int64_t camp;
    uint64_t seq;
    uint64_t key;
};

/* Every seen event is in the log, at its (campaign, sequence), with its event id. */
static inline void st_check_seen(const struct st_log *L, const struct st_seen *s, size_t n,
                                 const char *what)
{
    for (size_t i = 0; i < n; i++) {
        const struct st_rec *r = st_find(L, s[i].camp, s[i].seq);
        if (!r)
            fail_msg("%s event (campaign %" PRId64 ", seq %" PRIu64 ", id k%016" PRIx64
                     ") is not in the log",
                     what, s[i].camp, s[i].seq, s[i].key);
        if (r->key != s[i].key)
            fail_msg("%s event (campaign %" PRId64 ", seq %" PRIu64 ") has id k%016" PRIx64
                     ", the log holds k%016" PRIx64 " there",
                     what, s[i].camp, s[i].seq, s[i].key, r->key);
    }
}

/* Flips one byte of a file at pos. */
static inline void st_flip(const char *path, uint64_t pos)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)pos), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)pos), 1);
    close(fd);
}

static inline uint64_t st_file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (uint64_t)sb.st_size;
}

/* ---- resume: subscribe with from_sequence --------------------------------------------------- */

/* What one subscription received, in arrival order: events (with whether each came before the
 * subscribe_ack) and gap frames. */
struct st_stream {
    struct st_seen *ev;
    bool *before_ack;
    size_t n, cap;
    size_t n_before_ack; /* events received before the subscribe_ack */
    uint64_t gaps;       /* gap frames */
    uint64_t gap_first, gap_last;
    char gap_reason[32];
    uint64_t other; /* other frames (not for the subscription) */
    bool acked;
    uint64_t sub_id;
};

static inline void st_stream_free(struct st_stream *s)
{
    free(s->ev);
    free(s->before_ack);
    memset(s, 0, sizeof(*s));
}

/* Files one received frame into s. */
static inline void st_stream_take(struct st_stream *s, const struct nexus_frame *f)
{
    if (f->kind == CODEC_KIND_EVENT) {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 1024;
            s->ev = realloc(s->ev, sizeof(*s->ev) * s->cap);
            s->before_ack = realloc(s->before_ack, sizeof(*s->before_ack) * s->cap);
            assert_non_null(s->ev);
            assert_non_null(s->before_ack);
        }
        s->before_ack[s->n] = !s->acked;
        s->ev[s->n++] = (struct st_seen){f->u.event.campaign_id, f->u.event.sequence,
                                         st_key_of(f->u.event.event_id)};
        if (!s->acked)
            s->n_before_ack++;
    } else if (f->kind == CODEC_KIND_GAP) {
        if (!s->gaps++) {
            s->gap_first = f->u.gap.first_sequence;
            s->gap_last = f->u.gap.last_sequence;
            snprintf(s->gap_reason, sizeof(s->gap_reason), "%.*s", (int)f->u.gap.reason.len,
                     (const char *)f->u.gap.reason.ptr);
        }
    } else {
        s->other++;
    }
}

/* Subscribes c to camp from from_seq (patterns may be NULL) and reads every frame up to its
 * answer, in order, into s (events before the subscribe_ack are marked so). Returns 1 on the
 * subscribe_ack, -EPROTO on an error answer (its code copied to code), 0 on timeout, or <0. */
static inline int st_subscribe_from(struct nexus_client *c, int64_t camp, const char *const *pats,
                                    uint32_t npat, uint64_t from_seq, struct st_stream *s,
                                    char *code, size_t code_cap, int timeout_ms)
{
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_subscribe_from(c, corr, camp, pats, npat, NULL, from_seq);
    if (r < 0 || (r = nexus_flush(c)) < 0)
        return r;
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0)
            return 0;
        struct nexus_frame f;
        r = nexus_recv(c, &f, (int)left);
        if (r != 1)
            return r;
        if (f.correlation == corr && f.kind == CODEC_KIND_SUBSCRIBE_ACK) {
            s->acked = true;
            s->sub_id = f.u.subscription_id;
            return 1;
        }
        if (f.correlation == corr && f.kind == CODEC_KIND_ERROR) {
            if (code)
                snprintf(code, code_cap, "%.*s", (int)f.u.error.code.len,
                         (const char *)f.u.error.code.ptr);
            return -EPROTO;
        }
        st_stream_take(s, &f);
    }
}

/* Reads frames into s until an event of camp with sequence >= until_seq arrived (returns 1), or
 * nothing came for quiet_ms (returns 0), or the connection failed (<0). */
static inline int st_stream_until(struct nexus_client *c, struct st_stream *s, int64_t camp,
                                  uint64_t until_seq, int quiet_ms)
{
    for (;;) {
        if (s->n && s->ev[s->n - 1].camp == camp && s->ev[s->n - 1].seq >= until_seq)
            return 1;
        struct nexus_frame f;
        int r = nexus_recv(c, &f, quiet_ms);
        if (r != 1)
            return r;
        st_stream_take(s, &f);
    }
}

/* The events of s are exactly first..last of camp, in order, each once, with the keys the
 * table want (want[seq] = key; 0: not known, not checked), and no gap frame came. */
static inline void st_check_stream(const struct st_stream *s, int64_t camp, uint64_t first,
                                   uint64_t last, const uint64_t *want, size_t want_n,
                                   const char *what)
{
    if (s->gaps)
        fail_msg("%s: %" PRIu64 " gap frame(s), the first %" PRIu64 "..%" PRIu64 " (%s)", what,
                 s->gaps, s->gap_first, s->gap_last, s->gap_reason);
    uint64_t expect = first;
    for (size_t i = 0; i < s->n; i++) {
        const struct st_seen *e = &s->ev[i];
        if (e->camp != camp)
            fail_msg("%s: event %zu is of campaign %" PRId64 ", want %" PRId64, what, i, e->camp,
                     camp);
        if (e->seq != expect)
            fail_msg("%s: event %zu has sequence %" PRIu64 ", want %" PRIu64 " (%s; %zu events, "
                     "%zu before the ack)",
                     what, i, e->seq, expect,
                     e->seq < expect ? "a duplicate / out of order" : "a hole", s->n,
                     s->n_before_ack);
        if (e->seq < want_n && want[e->seq] && want[e->seq] != e->key)
            fail_msg("%s: sequence %" PRIu64 " carries id k%016" PRIx64 ", it was acked as "
                     "k%016" PRIx64,
                     what, e->seq, e->key, want[e->seq]);
        expect++;
    }
    if (expect != last + 1)
        fail_msg("%s: got %" PRIu64 "..%" PRIu64 " (%zu events), want %" PRIu64 "..%" PRIu64, what,
                 first, expect - 1, s->n, first, last);
}

#endif
