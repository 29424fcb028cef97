// SPDX-License-Identifier: Apache-2.0
//
// The shard's event log (store.h). Layout (docs/OPERATIONS.md, "Data directory"):
//   DIR/meta                      "nexus-data 1\nshards N\n"
//   DIR/shard-NNN/OFFSET.seg      records (codec/logrec.h); OFFSET (20 digits) is the logical
//                                 byte offset of the segment's first record in the shard's log;
//                                 zero bytes may follow the last record (preallocated)
//   DIR/shard-NNN/next.tmp        the next segment, being zero-filled (renamed at the roll)
// One batch is written at a time: records of a loop pass go to `cur`; store_flush moves `cur`
// to `inflight` and submits one write. With --fsync interval a batch is released once written;
// with --fsync always it then waits in the sync queue for an fdatasync issued after its write
// completed, so that sync covers it and every batch before it. Up to --fsync-depth syncs are in
// flight at once (concurrent syncs of one file complete more per second than one at a time),
// and the queue is released strictly in order: a batch only once its own sync and every
// earlier one succeeded. What was deferred behind a batch — fan-outs, acknowledgements, later
// frames — is released, in order, with it. A failed write or sync is never retried: the shard
// stops acknowledging (storage_failed; storage_full for ENOSPC) and deferred acknowledgements
// become errors, their events undelivered.
#include "broker/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "broker/log.h"
#include "broker/map.h"
#include "broker/pubsub.h"
#include "broker/shard.h"
#include "broker/stats.h"
#include "broker/ud.h"
#include "codec/envelope.h"
#include "codec/evtype.h"
#include "codec/logrec.h"

/* Segment reads (recovery and replay) go through a buffer of this size, grown only for a record
 * larger than it. */
#define READ_CHUNK (1u << 20)

enum defer_kind { DEFER_FANOUT, DEFER_FRAME };
enum sq_state { SQ_SYNCING, SQ_SYNCED, SQ_FAILED };
/* The next segment's preparation (prep_start): none, zero-filling, syncing, ready, or given up
 * until the next roll (an error: segments are then appended, as without it). */
enum prep_state { PREP_NONE, PREP_ZEROING, PREP_FLUSHING, PREP_SYNCING, PREP_READY, PREP_OFF };
#define PREP_NAME  "next.tmp"
#define PREP_CHUNK (256u << 10)
#define PREP_MAX   (1ull << 30) /* a larger --segment-bytes is zero-filled this far */

struct deferred {
    uint8_t kind;
    bool unsequenced;
    int64_t campaign_id;
    struct oframe *f;
    uint64_t conn_id, conn2;
    uint64_t ack_corr; /* DEFER_FRAME: non-zero for an emit acknowledgement */
};

struct batch {
    uint8_t *buf;
    size_t len, cap;
    uint32_t records;
    int64_t max_ts;
    struct deferred *d;
    uint32_t nd, cap_d;
};

struct store {
    int dir_fd, seg_fd;
    uint64_t seg_base; /* logical offset of the open segment's first byte */
    uint64_t seg_len;  /* bytes in it, written or being written */
    /* The next segment, zero-filled ahead of its use: writes into blocks that already hold
     * written zeros change no file size and no extent, so their fdatasync flushes data only,
     * without a journal commit (docs/OPERATIONS.md, "Data directory"). */
    int prep_fd;
    uint8_t prep_state; /* enum prep_state */
    uint64_t prep_done; /* bytes zero-filled */
    uint32_t prep_last; /* bytes of the last write, being written back (PREP_FLUSHING) */
    struct batch cur, inflight;
    bool writing; /* inflight holds a batch being written */
    /* --fsync always: written batches waiting for their fdatasync, oldest first (a ring). */
    struct batch synq[UD_STORE_SYNC_SLOTS];
    uint8_t sq_state[UD_STORE_SYNC_SLOTS]; /* enum sq_state */
    uint32_t sq_head, sq_n;
    uint64_t write_off;  /* file offset of the inflight batch's unwritten rest */
    size_t write_done;   /* bytes of the inflight batch written */
    bool sync_pending;   /* --fsync interval: data written since the last sync */
    bool isync_inflight; /* an interval fdatasync in flight */
    bool timer_armed;    /* a wait for the next interval fdatasync is in flight */
    struct __kernel_timespec timer_ts;
    int64_t last_sync_ns;
    const char *refusal; /* NULL, "storage_failed" or "storage_full" */
    int writes, syncs;   /* completions seen (NEXUS_TEST_LOG_FAIL) */
    struct map floor;    /* campaign id -> last sequence of a campaign not in the table */
    struct map restore;  /* campaign id -> its last logged snapshot (core_restore_types) */
    /* Retention (--retain-bytes, --retain-age): the segments, oldest first. */
    struct seginfo *segs;
    uint32_t nsegs, cap_segs;
    uint64_t total_bytes;
    int64_t retain_check_ns;
    /* --persist: the types logged (none: every sequenced type; see store_persists). */
    struct evpattern *persist;
    uint32_t npersist;
    /* Recovery: the duplicate-window keys of the newest records, for store_restore. */
    struct dkey *dk;
    uint32_t ndk, cap_dk;
    int64_t dk_newest;
    /* The sparse index (store_replay): campaign id -> struct cindex. */
    struct map index;
    bool index_lost; /* an entry could not be recorded (memory): replays scan the whole log */
    uint8_t *rbuf;   /* log_walk's read buffer, READ_CHUNK or grown for a large record */
    size_t rbuf_cap;
    bool rbuf_busy;
    bool releasing; /* in release(): what is sent meanwhile waits behind the rest */
};

struct dkey {
    int64_t campaign_id;
    uint64_t key;
    int64_t ts_ns;
};

/* A campaign's index entries: the log offset of one of its records every INDEX_EVERY
 * sequences, and of its first record in each segment, so that a replay from (campaign,
 * sequence) reads from near there instead of from the start of the shard's log. */
#define INDEX_EVERY 64
struct cindex {
    struct ientry {
        uint64_t seq, off; /* off: logical log offset of the record with sequence seq */
    } * e;
    uint32_t n, cap;
};

struct seginfo {
    uint64_t base, bytes;
    int64_t max_ts; /* newest event in it */
};

const char *const *core_restore_types;
static char g_dir[1024];
static bool g_on;
/* A test hook (docs/OPERATIONS.md): NEXUS_TEST_LOG_FAIL=write:N or fsync:N makes the N-th log
 * write or fdatasync of each shard complete with EIO, as a failing disk would. */
static int g_fail_write, g_fail_sync;
static int st_records = -1, st_bytes = -1, st_syncs = -1, st_recovered = -1, st_cut = -1,
           st_errors = -1, st_retained = -1;

static const struct stats_def defs[] = {
    {"nexus_log_records_total", NULL, "events appended to the log", 0, STATS_NO_FRAME_FIELD},
    {"nexus_log_bytes_total", NULL, "bytes appended to the log", 0, STATS_NO_FRAME_FIELD},
    {"nexus_log_syncs_total", NULL, "fdatasync calls on log segments", 0, STATS_NO_FRAME_FIELD},
    {"nexus_log_recovered_records", NULL, "records found valid by the last start's recovery", 1,
     STATS_NO_FRAME_FIELD},
    {"nexus_log_truncated_bytes_total", NULL,
     "bytes cut from the log at start (a torn tail, or --recover truncate)", 0,
     STATS_NO_FRAME_FIELD},
    {"nexus_log_segments_deleted_total", NULL, "segments deleted by --retain-bytes/--retain-age", 0,
     STATS_NO_FRAME_FIELD},
    {"nexus_log_errors_total", NULL, "failed log writes or syncs (the shard stops acknowledging)",
     0, STATS_NO_FRAME_FIELD},
};

/* ---- start-up ----------------------------------------------------------------------------- */

static int meta_check(const char *dir, uint32_t shards)
{
    char path[1200], want[64];
    snprintf(path, sizeof(path), "%s/meta", dir);
    snprintf(want, sizeof(want), "nexus-data 1\nshards %u\n", shards);
    FILE *f = fopen(path, "r");
    if (f) {
        char got[64] = "";
        size_t n = fread(got, 1, sizeof(got) - 1, f);
        fclose(f);
        got[n] = 0;
        if (strcmp(got, want) != 0) {
            fprintf(
                stderr,
                "nexusd: --data-dir %s was written by a broker with another layout (%s has "
                "\"%.40s\"; this one would write \"shards %u\"): campaigns are placed by shard, "
                "so start with the --shards it was written with\n",
                dir, path, got, shards);
            return -EINVAL;
        }
        return 0;
    }
    char tmp[1210];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f || fputs(want, f) < 0 || fflush(f) != 0 || fdatasync(fileno(f)) != 0) {
        fprintf(stderr, "nexusd: --data-dir: cannot write %s: %s\n", tmp, strerror(errno));
        if (f)
            fclose(f);
        return -EIO;
    }
    fclose(f);
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "nexusd: --data-dir: cannot create %s: %s\n", path, strerror(errno));
        return -EIO;
    }
    return 0;
}

int store_global_init(const char *data_dir, uint32_t shard_count)
{
    st_records = stats_register(&defs[0]);
    st_bytes = stats_register(&defs[1]);
    st_syncs = stats_register(&defs[2]);
    st_recovered = stats_register(&defs[3]);
    st_cut = stats_register(&defs[4]);
    st_retained = stats_register(&defs[5]);
    st_errors = stats_register(&defs[6]);
    if (!data_dir || !data_dir[0])
        return 0;
    if (mkdir(data_dir, 0750) != 0 && errno != EEXIST) {
        fprintf(stderr, "nexusd: --data-dir %s: %s\n", data_dir, strerror(errno));
        return -EIO;
    }
    /* One broker per directory: two appending to the same segments would corrupt both. The
     * lock lives as long as the process (the descriptor is never closed). */
    char lock[1200];
    snprintf(lock, sizeof(lock), "%s/lock", data_dir);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "nexusd: --data-dir %s is in use by another nexusd (%s is locked)%s%s\n",
                data_dir, lock, lfd < 0 ? ": " : "", lfd < 0 ? strerror(errno) : "");
        if (lfd >= 0)
            close(lfd);
        return -EBUSY;
    }
    if (meta_check(data_dir, shard_count) < 0)
        return -EINVAL;
    snprintf(g_dir, sizeof(g_dir), "%s", data_dir);
    g_on = true;
    const char *fail = getenv("NEXUS_TEST_LOG_FAIL");
    if (fail && !strncmp(fail, "write:", 6))
        g_fail_write = atoi(fail + 6);
    else if (fail && !strncmp(fail, "fsync:", 6))
        g_fail_sync = atoi(fail + 6);
    if (g_fail_write || g_fail_sync)
        fprintf(stderr, "nexusd: NEXUS_TEST_LOG_FAIL=%s: log failures will be injected\n", fail);
    return 0;
}

static void stat_bump(struct shard *s, int idx, uint64_t n)
{
    if (idx >= 0)
        stat_add(&s->stats.ext[idx], n);
}

/* ---- recovery ----------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The segments of the shard's directory, by offset. Returns the count, or -errno. */
static int list_segments(int dir_fd, uint64_t **out)
{
    int fd = dup(dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    rewinddir(d); /* the descriptor's position is shared with dir_fd's: start at the top */
    uint64_t *v = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        if (strlen(e->d_name) != 24 || strcmp(e->d_name + 20, ".seg") != 0)
            continue;
        uint64_t off = strtoull(e->d_name, &end, 10);
        if (end != e->d_name + 20)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(v, sizeof(*v) * (size_t)cap);
            if (!nv) {
                free(v);
                closedir(d);
                return -ENOMEM;
            }
            v = nv;
        }
        v[n++] = off;
    }
    closedir(d);
    if (n)
        qsort(v, (size_t)n, sizeof(*v), cmp_u64);
    *out = v;
    return n;
}

static void seg_name(char out[32], uint64_t off)
{
    snprintf(out, 32, "%020llu.seg", (unsigned long long)off);
}

/* Reads a whole segment. 0, or -errno. */
static int read_segment(int dir_fd, uint64_t off, uint8_t **buf, size_t *len)
{
    char name[32];
    seg_name(name, off);
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = -errno;
        if (fd >= 0)
            close(fd);
        return e;
    }
    uint8_t *b = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (b && got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (!b)
        return -ENOMEM;
    *buf = b;
    *len = got;
    return 0;
}

/* Whether a valid record starts anywhere in buf after from: then the damage at from is in the
 * middle of the log, not a torn tail. */
static bool valid_after(const uint8_t *buf, size_t len, size_t from)
{
    struct logrec r;
    size_t used;
    for (size_t p = from + 1; p + LOGREC_HEADER <= len; p++)
        if (logrec_decode(buf + p, len - p, &r, &used) == LOGREC_OK)
            return true;
    return false;
}

/* Whether buf[0..len) is all zero bytes: the preallocated end of a segment, not damage. */
static bool all_zero(const uint8_t *buf, size_t len)
{
    size_t i = 0;
    for (; i < len && ((uintptr_t)(buf + i) & 7); i++)
        if (buf[i])
            return false;
    for (; i + 8 <= len; i += 8)
        if (*(const uint64_t *)(buf + i))
            return false;
    for (; i < len; i++)
        if (buf[i])
            return false;
    return true;
}

static int floor_raise(struct store *st, int64_t id, uint64_t seq)
{
    uintptr_t cur = (uintptr_t)map_get(&st->floor, (uint64_t)id);
    if (seq > cur && map_put(&st->floor, (uint64_t)id, (void *)(uintptr_t)seq) < 0)
        return -ENOMEM;
    return 0;
}

/* Records that campaign id's record seq lies at logical offset off, if the index wants it: every
 * INDEX_EVERY sequences, and the first record in a segment (seg_base: the segment's). */
static void index_note(struct store *st, int64_t id, uint64_t seq, uint64_t off, uint64_t seg_base)
{
    struct cindex *ci = map_get(&st->index, (uint64_t)id);
    if (ci && ci->n && seq < ci->e[ci->n - 1].seq + INDEX_EVERY && ci->e[ci->n - 1].off >= seg_base)
        return;
    if (!ci) {
        ci = calloc(1, sizeof(*ci));
        if (!ci || map_put(&st->index, (uint64_t)id, ci) < 0) {
            free(ci);
            st->index_lost = true;
            return;
        }
    }
    if (ci->n == ci->cap) {
        uint32_t ncap = ci->cap ? ci->cap * 2 : 4;
        struct ientry *nv = realloc(ci->e, sizeof(*nv) * ncap);
        if (!nv) {
            st->index_lost = true;
            return;
        }
        ci->e = nv;
        ci->cap = ncap;
    }
    ci->e[ci->n++] = (struct ientry){.seq = seq, .off = off};
}

/* Forgets the index entries of segments retention deleted (offsets below first). */
static void index_trim(struct store *st, uint64_t first)
{
    for (uint32_t i = 0; st->index.slots && i <= st->index.mask; i++) {
        struct cindex *ci = st->index.slots[i].val;
        if (!ci)
            continue;
        uint32_t k = 0;
        while (k < ci->n && ci->e[k].off < first)
            k++;
        if (k) {
            memmove(ci->e, ci->e + k, sizeof(*ci->e) * (ci->n - k));
            ci->n -= k;
        }
    }
}

static void index_free(struct store *st)
{
    for (uint32_t i = 0; st->index.slots && i <= st->index.mask; i++) {
        struct cindex *ci = st->index.slots[i].val;
        if (ci) {
            free(ci->e);
            free(ci);
        }
    }
    map_free(&st->index);
}

/* Recovery: keeps the duplicate-window key of a record (a client-named publisher's event id,
 * logrec.h) while it may still be inside the window; older ones are dropped as the scan goes. */
static int dkey_note(struct shard *s, const struct logrec *r)
{
    struct store *st = s->store;
    int64_t window = (int64_t)s->cfg->dedup_window_ms * 1000000;
    if (!r->dedup_key || !window)
        return 0;
    if (r->ts_ns > st->dk_newest)
        st->dk_newest = r->ts_ns;
    if (st->ndk == st->cap_dk) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < st->ndk; i++)
            if (st->dk[i].ts_ns >= st->dk_newest - window)
                st->dk[k++] = st->dk[i];
        st->ndk = k;
    }
    if (!st->cap_dk || st->ndk * 2 > st->cap_dk) {
        uint32_t ncap = st->cap_dk ? st->cap_dk * 2 : 256;
        struct dkey *nv = realloc(st->dk, sizeof(*nv) * ncap);
        if (!nv)
            return -ENOMEM;
        st->dk = nv;
        st->cap_dk = ncap;
    }
    st->dk[st->ndk++] = (struct dkey){r->campaign_id, r->dedup_key, r->ts_ns};
    return 0;
}

/* Cuts the log at (segment i, pos): that segment truncated, the later ones deleted. */
static int cut_log(struct shard *s, const uint64_t *segs, int n, int i, size_t pos, size_t len)
{
    struct store *st = s->store;
    char name[32];
    seg_name(name, segs[i]);
    uint64_t cut = len - pos;
    int fd = openat(st->dir_fd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)pos) != 0 || fdatasync(fd) != 0) {
        log_error((int)s->index, "log: cannot truncate %s/shard-%03u/%s: %s", g_dir, s->index, name,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return -EIO;
    }
    close(fd);
    for (int k = i + 1; k < n; k++) {
        char later[32];
        struct stat sb;
        seg_name(later, segs[k]);
        if (fstatat(st->dir_fd, later, &sb, 0) == 0)
            cut += (uint64_t)sb.st_size;
        unlinkat(st->dir_fd, later, 0);
    }
    fsync(st->dir_fd);
    stat_bump(s, st_cut, cut);
    return 0;
}

/* Scans one segment into the floors. Returns the valid prefix length in *good. */
static struct oframe *replay_frame(const struct logrec *r);

/* Keeps r if it is a state snapshot the handlers restore from (the last one per campaign). */
static int keep_snapshot(struct store *st, const struct logrec *r)
{
    for (size_t i = 0; core_restore_types && core_restore_types[i]; i++) {
        size_t tl = strlen(core_restore_types[i]);
        if (!memmem(r->frame, r->len, core_restore_types[i], tl))
            continue; /* cheap test first: most records are not snapshots */
        struct oframe *f = replay_frame(r);
        if (!f)
            return 0;
        if (f->type.len != tl || memcmp(f->type_str, core_restore_types[i], tl) != 0) {
            oframe_unref(f);
            continue;
        }
        struct oframe *old = map_get(&st->restore, (uint64_t)r->campaign_id);
        if (map_put(&st->restore, (uint64_t)r->campaign_id, f) < 0) {
            oframe_unref(f);
            return -ENOMEM;
        }
        if (old)
            oframe_unref(old);
        return 0;
    }
    return 0;
}

static int scan_segment(struct shard *s, uint64_t base, const uint8_t *buf, size_t len,
                        size_t *good, uint64_t *records, int64_t *max_ts)
{
    struct store *st = s->store;
    size_t pos = 0;
    while (pos < len) {
        struct logrec r;
        size_t used;
        if (logrec_decode(buf + pos, len - pos, &r, &used) != LOGREC_OK)
            break;
        if (floor_raise(st, r.campaign_id, r.sequence) < 0)
            return -ENOMEM;
        if (r.ts_ns > *max_ts)
            *max_ts = r.ts_ns;
        if (keep_snapshot(st, &r) < 0 || dkey_note(s, &r) < 0)
            return -ENOMEM;
        index_note(st, r.campaign_id, r.sequence, base + pos, base);
        (*records)++;
        pos += used;
    }
    *good = pos;
    return 0;
}

static int seg_push(struct store *st, uint64_t base, uint64_t bytes, int64_t max_ts)
{
    if (st->nsegs == st->cap_segs) {
        uint32_t ncap = st->cap_segs ? st->cap_segs * 2 : 16;
        struct seginfo *nv = realloc(st->segs, sizeof(*nv) * ncap);
        if (!nv)
            return -ENOMEM;
        st->segs = nv;
        st->cap_segs = ncap;
    }
    st->segs[st->nsegs++] = (struct seginfo){.base = base, .bytes = bytes, .max_ts = max_ts};
    return 0;
}

/* The floors file: every campaign's last sequence, written before retention deletes a
 * segment (the records it held can no longer tell recovery where a campaign was).
 *   "NXF1", u32 count, count x (i64 campaign, u64 sequence), u64 XXH3 of all before. */
#define FLOORS_MAGIC 0x3146584eu

static int floors_read(struct shard *s)
{
    struct store *st = s->store;
    int fd = openat(st->dir_fd, "floors", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 1 : -errno; /* 1: there is none */
    struct stat sb;
    uint8_t *buf = NULL;
    ssize_t got = -1;
    if (fstat(fd, &sb) == 0 && sb.st_size >= 16 && sb.st_size < (1ll << 32) &&
        (buf = malloc((size_t)sb.st_size)))
        got = pread(fd, buf, (size_t)sb.st_size, 0);
    close(fd);
    uint32_t magic = 0, count = 0;
    uint64_t check = 0;
    if (got == sb.st_size && got >= 16) {
        memcpy(&magic, buf, 4);
        memcpy(&count, buf + 4, 4);
        memcpy(&check, buf + got - 8, 8);
    }
    if (got < 16 || magic != FLOORS_MAGIC || (uint64_t)got != 16 + (uint64_t)count * 16 ||
        XXH3_64bits(buf, (size_t)got - 8) != check) {
        free(buf);
        return -EBADMSG;
    }
    for (uint32_t i = 0; i < count; i++) {
        int64_t id;
        uint64_t seq;
        memcpy(&id, buf + 8 + (size_t)i * 16, 8);
        memcpy(&seq, buf + 16 + (size_t)i * 16, 8);
        if (floor_raise(st, id, seq) < 0) {
            free(buf);
            return -ENOMEM;
        }
    }
    free(buf);
    return 0;
}

/* Writes the floors file: the recovered floors and every campaign in the table (blocking: once
 * per retention pass that deletes something). 0, or -errno. */
static int floors_write(struct shard *s)
{
    struct store *st = s->store;
    uint32_t count = st->floor.count + s->campaigns.count;
    size_t len = 16 + (size_t)count * 16;
    uint8_t *buf = malloc(len);
    if (!buf)
        return -ENOMEM;
    uint32_t n = 0;
    const struct map *maps[2] = {&st->floor, &s->campaigns};
    for (int m = 0; m < 2; m++)
        for (uint32_t i = 0; maps[m]->slots && i <= maps[m]->mask; i++) {
            if (!maps[m]->slots[i].val)
                continue;
            int64_t id = (int64_t)maps[m]->slots[i].key;
            uint64_t seq = m == 0 ? (uint64_t)(uintptr_t)maps[m]->slots[i].val
                                  : ((struct campaign *)maps[m]->slots[i].val)->sequence;
            memcpy(buf + 8 + (size_t)n * 16, &id, 8);
            memcpy(buf + 16 + (size_t)n * 16, &seq, 8);
            n++;
        }
    uint32_t magic = FLOORS_MAGIC;
    memcpy(buf, &magic, 4);
    memcpy(buf + 4, &n, 4);
    len = 16 + (size_t)n * 16;
    uint64_t check = XXH3_64bits(buf, len - 8);
    memcpy(buf + len - 8, &check, 8);
    int fd = openat(st->dir_fd, "floors.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    int r = fd < 0 || pwrite(fd, buf, len, 0) != (ssize_t)len || fdatasync(fd) != 0 ? -errno : 0;
    if (fd >= 0)
        close(fd);
    free(buf);
    if (r == 0 &&
        (renameat(st->dir_fd, "floors.tmp", st->dir_fd, "floors") != 0 || fsync(st->dir_fd) != 0))
        r = -errno;
    return r;
}

/* Deletes the oldest segments past --retain-bytes or --retain-age (never the one being
 * written), after saving every campaign's sequence in the floors file. */
static void retain(struct shard *s)
{
    struct store *st = s->store;
    uint64_t max_bytes = s->cfg->retain_bytes;
    int64_t age_ns = (int64_t)s->cfg->retain_age_s * 1000000000;
    int64_t now = shard_now_ns();
    bool saved = false;
    while (st->nsegs > 1 && ((max_bytes && st->total_bytes > max_bytes) ||
                             (age_ns && st->segs[0].max_ts && st->segs[0].max_ts < now - age_ns))) {
        if (!saved) {
            int r = floors_write(s);
            if (r < 0) {
                log_error((int)s->index,
                          "log: cannot save the campaigns' sequences before "
                          "deleting old segments (%s): keeping them",
                          strerror(-r));
                return;
            }
            saved = true;
        }
        char name[32];
        seg_name(name, st->segs[0].base);
        if (unlinkat(st->dir_fd, name, 0) != 0 && errno != ENOENT) {
            log_error((int)s->index, "log: cannot delete %s: %s", name, strerror(errno));
            return;
        }
        log_info((int)s->index, "log: retention deleted %s (%llu bytes)", name,
                 (unsigned long long)st->segs[0].bytes);
        stat_bump(s, st_retained, 1);
        st->total_bytes -= st->segs[0].bytes;
        memmove(st->segs, st->segs + 1, sizeof(*st->segs) * --st->nsegs);
    }
    if (saved)
        index_trim(st, st->segs[0].base);
}

/* Long: one pass over the segments with the torn-tail and corruption rules of store.h. */
static int recover(struct shard *s, uint64_t **segs_out, int *n_out)
{
    struct store *st = s->store;
    uint64_t *segs = NULL;
    int n = list_segments(st->dir_fd, &segs);
    if (n < 0) {
        log_error((int)s->index, "log: cannot list %s/shard-%03u: %s", g_dir, s->index,
                  strerror(-n));
        return n;
    }
    uint64_t records = 0;
    int fr = floors_read(s);
    if (fr == 1 && n > 0 && segs[0] > 0)
        fr = -ENOENT; /* retention deleted segments: the floors must be there */
    if (fr < 0 && !((fr == -EBADMSG || fr == -ENOENT) && s->cfg->recover_truncate)) {
        log_error((int)s->index,
                  "log: %s/shard-%03u/floors is unreadable (%s): without it campaigns whose "
                  "records retention deleted could reuse sequences. Refusing to start; "
                  "--recover truncate ignores it",
                  g_dir, s->index, strerror(-fr));
        free(segs);
        return -EIO;
    }
    for (int i = 0; i < n; i++) {
        uint8_t *buf = NULL;
        size_t len = 0, good = 0;
        int64_t max_ts = 0;
        int r = read_segment(st->dir_fd, segs[i], &buf, &len);
        if (r == 0)
            r = scan_segment(s, segs[i], buf, len, &good, &records, &max_ts);
        if (r == 0)
            r = seg_push(st, segs[i], good, max_ts);
        if (r < 0) {
            log_error((int)s->index, "log: cannot read segment %llu of shard %u: %s",
                      (unsigned long long)segs[i], s->index, strerror(-r));
            free(buf);
            free(segs);
            return r;
        }
        if (good < len && !all_zero(buf + good, len - good)) {
            bool middle = i < n - 1 || valid_after(buf, len, good);
            char name[32];
            seg_name(name, segs[i]);
            if (middle && !s->cfg->recover_truncate) {
                log_error((int)s->index,
                          "log: %s/shard-%03u/%s is damaged at offset %zu, and valid records "
                          "follow: not a torn tail. Refusing to start; keep a copy of the "
                          "directory, then start with --recover truncate to cut the log there "
                          "(everything after the damage is lost)",
                          g_dir, s->index, name, good);
                free(buf);
                free(segs);
                return -EIO;
            }
            log_warn((int)s->index, "log: %s/shard-%03u/%s cut at offset %zu (%zu bytes of %s)",
                     g_dir, s->index, name, good, len - good,
                     middle ? "a damaged log, --recover truncate" : "a torn tail");
            r = cut_log(s, segs, n, i, good, len);
            free(buf);
            if (r < 0) {
                free(segs);
                return r;
            }
            n = i + 1;
            break;
        }
        free(buf);
    }
    st->nsegs = st->nsegs > (uint32_t)n ? (uint32_t)n : st->nsegs; /* cut segments are gone */
    st->total_bytes = 0;
    for (uint32_t k = 0; k < st->nsegs; k++)
        st->total_bytes += st->segs[k].bytes;
    stat_bump(s, st_recovered, records);
    log_info((int)s->index, "log: recovered %llu records in %d segments, %u campaigns",
             (unsigned long long)records, n, st->floor.count);
    *segs_out = segs;
    *n_out = n;
    return 0;
}

/* Opens (creating) the segment starting at logical offset off for appending after its first
 * `content` bytes (what follows them, if anything, is preallocated zeros). */
static int open_segment(struct shard *s, uint64_t off, uint64_t content)
{
    struct store *st = s->store;
    char name[32];
    seg_name(name, off);
    int fd = openat(st->dir_fd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || fsync(st->dir_fd) != 0) {
        log_error((int)s->index, "log: cannot open %s/shard-%03u/%s: %s", g_dir, s->index, name,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return -EIO;
    }
    if (st->seg_fd >= 0)
        close(st->seg_fd);
    st->seg_fd = fd;
    st->seg_base = off;
    st->seg_len = content;
    return 0;
}

/* --persist: comma-separated event-type patterns (docs/OPERATIONS.md). */
static int persist_parse(struct shard *s)
{
    struct store *st = s->store;
    const char *p = s->cfg->persist;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t'))
            p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len) {
            struct evpattern *nv = realloc(st->persist, sizeof(*nv) * (st->npersist + 1));
            char err[128];
            if (!nv)
                return -ENOMEM;
            st->persist = nv;
            if (evpattern_parse(&nv[st->npersist], p, len, err, sizeof(err)) < 0) {
                log_error((int)s->index, "--persist: \"%.*s\": %s", (int)len, p, err);
                return -EINVAL;
            }
            st->npersist++;
        }
        if (!end)
            break;
        p = end + 1;
    }
    if (s->cfg->persist[0] && !st->npersist) {
        log_error((int)s->index, "--persist: no pattern in \"%s\"", s->cfg->persist);
        return -EINVAL;
    }
    return 0;
}

bool store_persists(const struct shard *s, const struct evtype *t, const char *type_str)
{
    const struct store *st = s->store;
    if (!st->npersist)
        return true;
    for (uint32_t i = 0; i < st->npersist; i++)
        if (evpattern_match(&st->persist[i], t, type_str))
            return true;
    return false;
}

int store_open(struct shard *s)
{
    if (!g_on)
        return 0;
    struct store *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->seg_fd = st->dir_fd = st->prep_fd = -1;
    map_init(&st->floor);
    map_init(&st->restore);
    map_init(&st->index);
    s->store = st;
    if (persist_parse(s) < 0)
        return -EIO;
    char path[1200];
    snprintf(path, sizeof(path), "%s/shard-%03u", g_dir, s->index);
    if ((mkdir(path, 0750) != 0 && errno != EEXIST) ||
        (st->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        log_error((int)s->index, "log: %s: %s", path, strerror(errno));
        return -EIO;
    }
    uint64_t *segs = NULL;
    int n = 0;
    int r = recover(s, &segs, &n);
    if (r < 0)
        return -EIO;
    if (unlinkat(st->dir_fd, PREP_NAME, 0) != 0 && errno != ENOENT) /* a crash's, half done */
        log_warn((int)s->index, "log: cannot delete %s/shard-%03u/" PREP_NAME ": %s", g_dir,
                 s->index, strerror(errno));
    r = open_segment(s, n ? segs[n - 1] : 0, st->nsegs ? st->segs[st->nsegs - 1].bytes : 0);
    if (r == 0 && st->nsegs == 0)
        r = seg_push(st, 0, 0, 0);
    free(segs);
    st->last_sync_ns = shard_now_ns();
    return r < 0 ? -EIO : 0;
}

uint64_t store_floor(struct shard *s, int64_t id)
{
    return s->store ? (uint64_t)(uintptr_t)map_get(&s->store->floor, (uint64_t)id) : 0;
}

int store_note_freed(struct shard *s, int64_t id, uint64_t seq)
{
    return s->store && seq ? floor_raise(s->store, id, seq) : 0;
}

const char *store_refusal(const struct shard *s)
{
    return s->store ? s->store->refusal : NULL;
}

/* ---- batches ------------------------------------------------------------------------------ */

static int batch_room(struct batch *b, size_t need)
{
    if (b->len + need <= b->cap)
        return 0;
    size_t ncap = b->cap ? b->cap : 64 * 1024;
    while (ncap < b->len + need)
        ncap *= 2;
    uint8_t *nb = realloc(b->buf, ncap);
    if (!nb)
        return -ENOMEM;
    b->buf = nb;
    b->cap = ncap;
    return 0;
}

int store_append(struct shard *s, const struct oframe *f, uint64_t dedup_key)
{
    struct store *st = s->store;
    struct batch *b = &st->cur;
    size_t need = logrec_size(f->len);
    if (batch_room(b, need) < 0)
        return -ENOMEM;
    struct logrec r = {.campaign_id = f->campaign_id,
                       .sequence = f->sequence,
                       .ts_ns = f->ts_ns,
                       .dedup_key = dedup_key,
                       .frame = f->data,
                       .len = f->len};
    logrec_encode(b->buf + b->len, &r);
    /* The batch follows what is written or being written: its logical offset is known now,
     * whether or not the flush rolls to a new segment first. */
    index_note(st, f->campaign_id, f->sequence, st->seg_base + st->seg_len + b->len, st->seg_base);
    b->len += need;
    if (f->ts_ns > b->max_ts)
        b->max_ts = f->ts_ns;
    b->records++;
    return 0;
}

bool store_holding(const struct shard *s)
{
    const struct store *st = s->store;
    return st && (st->releasing || st->cur.nd || st->cur.records || st->writing || st->sq_n);
}

bool store_idle(const struct shard *s)
{
    const struct store *st = s->store;
    return !st ||
           (!st->cur.nd && !st->cur.records && !st->writing && !st->sq_n && !st->isync_inflight);
}

static int defer(struct shard *s, const struct deferred *d)
{
    struct batch *b = &s->store->cur;
    if (b->nd == b->cap_d) {
        uint32_t ncap = b->cap_d ? b->cap_d * 2 : 64;
        struct deferred *nv = realloc(b->d, sizeof(*nv) * ncap);
        if (!nv)
            return -ENOMEM;
        b->d = nv;
        b->cap_d = ncap;
    }
    b->d[b->nd++] = *d;
    return 0;
}

int store_defer_fanout(struct shard *s, int64_t campaign_id, struct oframe *f, uint64_t direct,
                       uint64_t direct2, bool unsequenced)
{
    struct deferred d = {.kind = DEFER_FANOUT,
                         .unsequenced = unsequenced,
                         .campaign_id = campaign_id,
                         .f = f,
                         .conn_id = direct,
                         .conn2 = direct2};
    return defer(s, &d);
}

int store_defer_frame(struct shard *s, uint64_t conn_id, struct oframe *f, uint64_t ack_corr)
{
    struct deferred d = {.kind = DEFER_FRAME, .f = f, .conn_id = conn_id, .ack_corr = ack_corr};
    return defer(s, &d);
}

/* Hands out what waited for a batch, in order; after a failure, events are dropped (never
 * delivered: they are not in the log) and acknowledgements become errors. */
static void release(struct shard *s, struct batch *b, bool failed)
{
    const char *code = s->store->refusal ? s->store->refusal : "storage_failed";
    /* A release can make more to send (a hook relaying an event, a handler answering): that
     * goes behind everything this batch still holds, never ahead of it. */
    bool was = s->store->releasing;
    s->store->releasing = true;
    for (uint32_t i = 0; i < b->nd; i++) {
        struct deferred *d = &b->d[i];
        if (failed && (d->kind == DEFER_FANOUT || d->ack_corr)) {
            if (d->ack_corr)
                core_error_to_conn_now(s, d->conn_id, d->ack_corr, code,
                                       "the event could not be stored: the broker stopped "
                                       "accepting durable events (see its log)");
            oframe_unref(d->f);
            continue;
        }
        if (d->kind == DEFER_FANOUT)
            pubsub_fanout(s, d->campaign_id, d->f, d->conn_id, d->conn2, d->unsequenced);
        else
            core_to_conn_now(s, d->conn_id, d->f);
    }
    s->store->releasing = was;
    b->nd = 0;
    b->len = 0;
    b->records = 0;
}

static void store_fail(struct shard *s, int res, const char *what)
{
    struct store *st = s->store;
    if (!st->refusal) {
        st->refusal = res == -ENOSPC || res == -EDQUOT ? "storage_full" : "storage_failed";
        log_error((int)s->index,
                  "log: %s of shard %u failed: %s. The shard no longer acknowledges durable "
                  "events (error{%s}); nothing is retried. Fix the disk and restart nexusd",
                  what, s->index, strerror(-res), st->refusal);
    }
    stat_bump(s, st_errors, 1);
}

static void submit_write(struct shard *s)
{
    struct store *st = s->store;
    struct batch *b = &st->inflight;
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_write(sqe, st->seg_fd, b->buf + st->write_done,
                        (unsigned)(b->len - st->write_done), st->write_off);
    io_uring_sqe_set_data64(sqe, UD_STORE_WRITE);
}

/* --fsync interval:MS: an fdatasync once MS have passed since the last, or a timeout that
 * comes back here when they will have (an idle shard sleeps, so the tick is not enough). */
static void store_interval_sync(struct shard *s)
{
    struct store *st = s->store;
    int64_t ms = s->cfg->fsync_interval_ms;
    if (!ms || !st->sync_pending || st->isync_inflight || st->refusal)
        return;
    int64_t wait = st->last_sync_ns + ms * 1000000 - shard_now_ns();
    if (wait > 0) {
        if (!st->timer_armed) {
            st->timer_ts.tv_sec = wait / 1000000000;
            st->timer_ts.tv_nsec = wait % 1000000000;
            struct io_uring_sqe *sqe = shard_sqe(s);
            io_uring_prep_timeout(sqe, &st->timer_ts, 0, 0);
            io_uring_sqe_set_data64(sqe, UD_STORE_TIMER);
            st->timer_armed = true;
        }
        return;
    }
    struct io_uring_sqe *sqe = shard_sqe(s);
    io_uring_prep_fsync(sqe, st->seg_fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, UD_STORE_ISYNC);
    st->isync_inflight = true;
    st->sync_pending = false;
    st->last_sync_ns = shard_now_ns();
}

/* Moves appending to a new segment. The old one is synced first (blocking, once per
 * --segment-bytes): with --fsync interval its last records may not be yet, and no later sync
 * would reach them. 0, or -EIO. */
static int roll(struct shard *s)
{
    struct store *st = s->store;
    if (s->cfg->fsync_interval_ms && st->sync_pending) {
        if (fdatasync(st->seg_fd) != 0)
            return -errno;
        stat_bump(s, st_syncs, 1);
        st->sync_pending = false;
        st->last_sync_ns = shard_now_ns();
    }
    uint64_t base = st->seg_base + st->seg_len;
    if (st->prep_state == PREP_READY) {
        char name[32];
        seg_name(name, base);
        close(st->prep_fd);
        st->prep_fd = -1;
        st->prep_state = PREP_NONE;
        if (renameat(st->dir_fd, PREP_NAME, st->dir_fd, name) != 0)
            log_warn((int)s->index, "log: cannot rename " PREP_NAME " to %s: %s", name,
                     strerror(errno)); /* open_segment creates an empty one */
    } else if (st->prep_state == PREP_OFF) {
        st->prep_state = PREP_NONE; /* try again for the next one */
    }
    if (open_segment(s, base, 0) < 0 || seg_push(st, base, 0, 0) < 0)
        return -EIO;
    retain(s);
    return 0;
}

static uint64_t prep_target(const struct shard *s)
{
    return s->cfg->segment_bytes < PREP_MAX ? s->cfg->segment_bytes : PREP_MAX;
}

static void prep_submit(struct shard *s)
{
    static const uint8_t zeros[PREP_CHUNK];
    struct store *st = s->store;
    struct io_uring_sqe *sqe = shard_sqe(s);
    if (st->prep_state == PREP_ZEROING) {
        uint64_t left = prep_target(s) - st->prep_done;
        io_uring_prep_write(sqe, st->prep_fd, zeros,
                            left < PREP_CHUNK ? (unsigned)left : PREP_CHUNK, st->prep_done);
    } else if (st->prep_state == PREP_FLUSHING) {
        io_uring_prep_sync_file_range(sqe, st->prep_fd, st->prep_last, st->prep_done,
                                      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                          SYNC_FILE_RANGE_WAIT_AFTER);
    } else {
        io_uring_prep_fsync(sqe, st->prep_fd, IORING_FSYNC_DATASYNC);
    }
    io_uring_sqe_set_data64(sqe, UD_STORE_PREP);
}

/* Zero-fills the next segment once the open one is half full: one PREP_CHUNK write at a time
 * through the ring, each written back (sync_file_range) before the next, then an fdatasync (so
 * that its blocks are allocated and written on disk before the log writes into them). Chunk
 * by chunk, because the log's own fdatasync flushes the disk's cache and waits for whatever
 * write-back is in flight: 64 MiB of zeros written back at once would stall it for as long.
 * Any error gives up until the next roll: segments are then appended to, slower to sync but
 * the same on disk. */
static void prep_start(struct shard *s)
{
    struct store *st = s->store;
    if (st->prep_state != PREP_NONE || st->refusal || st->seg_len < s->cfg->segment_bytes / 2)
        return;
    st->prep_fd = openat(st->dir_fd, PREP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (st->prep_fd < 0) {
        log_warn((int)s->index, "log: cannot create %s/shard-%03u/" PREP_NAME ": %s", g_dir,
                 s->index, strerror(errno));
        st->prep_state = PREP_OFF;
        return;
    }
    st->prep_done = 0;
    st->prep_state = PREP_ZEROING;
    prep_submit(s);
}

static void prep_cqe(struct shard *s, int res)
{
    struct store *st = s->store;
    if (res < 0 || (res == 0 && st->prep_state == PREP_ZEROING)) {
        log_warn((int)s->index,
                 "log: zero-filling the next segment of shard %u failed (%s): it will be "
                 "appended to instead",
                 s->index, strerror(res < 0 ? -res : EIO));
        close(st->prep_fd);
        st->prep_fd = -1;
        unlinkat(st->dir_fd, PREP_NAME, 0);
        st->prep_state = PREP_OFF;
        return;
    }
    if (st->prep_state == PREP_SYNCING) {
        st->prep_state = PREP_READY;
        return;
    }
    if (st->prep_state == PREP_ZEROING) {
        st->prep_last = (uint32_t)res;
        st->prep_state = PREP_FLUSHING; /* prep_submit writes back [prep_done, +res) */
    } else {
        st->prep_done += st->prep_last;
        st->prep_state = st->prep_done >= prep_target(s) ? PREP_SYNCING : PREP_ZEROING;
    }
    prep_submit(s);
}

/* Releases the current batch without writing it: it holds no record (what waits may go at
 * once), or the log has failed (its events are dropped, their acknowledgements refused). */
static void release_cur(struct shard *s)
{
    struct store *st = s->store;
    /* From a detached list: a release may defer more (a hook publishing). */
    struct batch b = st->cur;
    st->cur.d = NULL;
    st->cur.nd = st->cur.cap_d = 0;
    st->cur.len = 0;
    st->cur.records = 0;
    release(s, &b, st->refusal != NULL && b.records);
    if (!st->cur.d) {
        st->cur.d = b.d;
        st->cur.cap_d = b.cap_d;
    } else {
        free(b.d);
    }
}

/* What store_flush can do now. A batch holding no record (only what waited behind earlier
 * ones), or any batch once the log has failed, is released without a write, but only behind
 * every batch still in the sync queue. A segment is rolled only with nothing in flight on it. */
enum flush_step { FLUSH_NONE, FLUSH_RELEASE, FLUSH_WRITE, FLUSH_ROLL };

static enum flush_step flush_step(const struct shard *s)
{
    const struct store *st = s->store;
    if (st->writing || (!st->cur.records && !st->cur.nd))
        return FLUSH_NONE;
    if (!st->cur.records || st->refusal)
        return st->sq_n ? FLUSH_NONE : FLUSH_RELEASE;
    if (st->seg_len >= s->cfg->segment_bytes)
        return st->sq_n || st->isync_inflight ? FLUSH_NONE : FLUSH_ROLL;
    return st->sq_n < s->cfg->fsync_depth ? FLUSH_WRITE : FLUSH_NONE;
}

bool store_waits(const struct shard *s)
{
    return !s->store || flush_step(s) == FLUSH_NONE;
}

/* Moves `cur` to `inflight` and starts writing it at the end of the open segment. */
static void start_write(struct shard *s)
{
    struct store *st = s->store;
    struct batch t = st->inflight;
    st->inflight = st->cur;
    st->cur = (struct batch){.buf = t.buf, .cap = t.cap, .d = t.d, .cap_d = t.cap_d};
    st->writing = true;
    st->write_done = 0;
    st->write_off = st->seg_len;
    st->seg_len += st->inflight.len;
    struct seginfo *cur = &st->segs[st->nsegs - 1];
    cur->bytes += st->inflight.len;
    st->total_bytes += st->inflight.len;
    if (st->inflight.max_ts > cur->max_ts)
        cur->max_ts = st->inflight.max_ts;
    st->inflight.max_ts = 0;
    submit_write(s);
}

void store_flush(struct shard *s)
{
    struct store *st = s->store;
    if (!st)
        return;
    enum flush_step step = flush_step(s);
    if (step == FLUSH_ROLL) {
        int r = roll(s);
        if (r < 0)
            store_fail(s, r, "rolling to a new segment");
        step = r < 0 ? FLUSH_RELEASE : FLUSH_WRITE;
    }
    if (step == FLUSH_RELEASE)
        release_cur(s);
    else if (step == FLUSH_WRITE)
        start_write(s);
    store_interval_sync(s);
    prep_start(s);
    if (s->cfg->retain_age_s && !st->writing && !st->sq_n) {
        int64_t now = shard_now_ns();
        if (now - st->retain_check_ns >= 1000000000) {
            st->retain_check_ns = now;
            retain(s);
        }
    }
}

/* Releases the sync queue from its oldest batch while those are synced (or failed): in
 * order, so that no acknowledgement overtakes an earlier one, and a batch counts as durable
 * only when every sync issued before its own succeeded too. */
static void syncq_release(struct shard *s)
{
    struct store *st = s->store;
    while (st->sq_n && st->sq_state[st->sq_head] != SQ_SYNCING) {
        struct batch *b = &st->synq[st->sq_head];
        stat_bump(s, st_records, b->records);
        stat_bump(s, st_bytes, b->len);
        release(s, b, st->sq_state[st->sq_head] == SQ_FAILED || st->refusal != NULL);
        st->sq_head = (st->sq_head + 1) % UD_STORE_SYNC_SLOTS;
        st->sq_n--;
    }
}

/* The inflight batch is written (or failed). --fsync interval: release what waited for it.
 * --fsync always: queue it behind the earlier batches and sync it. */
static void batch_written(struct shard *s, bool failed)
{
    struct store *st = s->store;
    st->writing = false;
    failed = failed || st->refusal != NULL;
    if (s->cfg->fsync_interval_ms) {
        if (!failed)
            st->sync_pending = true;
        stat_bump(s, st_records, st->inflight.records);
        stat_bump(s, st_bytes, st->inflight.len);
        release(s, &st->inflight, failed);
    } else {
        uint32_t slot = (st->sq_head + st->sq_n) % UD_STORE_SYNC_SLOTS;
        struct batch t = st->synq[slot];
        st->synq[slot] = st->inflight;
        st->inflight = t;
        st->sq_state[slot] = failed ? SQ_FAILED : SQ_SYNCING;
        st->sq_n++;
        if (!failed) {
            struct io_uring_sqe *sqe = shard_sqe(s);
            io_uring_prep_fsync(sqe, st->seg_fd, IORING_FSYNC_DATASYNC);
            io_uring_sqe_set_data64(sqe, UD_STORE_SYNC0 + slot);
        }
        syncq_release(s);
    }
    store_flush(s); /* the next batch, gathered meanwhile */
}

static void write_cqe(struct shard *s, int res)
{
    struct store *st = s->store;
    if (g_fail_write && ++st->writes == g_fail_write)
        res = -EIO;
    if (res <= 0) {
        store_fail(s, res < 0 ? res : -EIO, res < 0 ? "a write" : "a write (no progress)");
        batch_written(s, true);
        return;
    }
    st->write_done += (size_t)res;
    if (st->write_done < st->inflight.len && !st->refusal) {
        st->write_off += (uint64_t)res; /* short: write the rest */
        submit_write(s);
        return;
    }
    batch_written(s, st->write_done < st->inflight.len);
}

void store_cqe(struct shard *s, uint64_t ud, int res)
{
    struct store *st = s->store;
    if (!st)
        return;
    if (ud == UD_STORE_TIMER) {
        st->timer_armed = false;
        store_interval_sync(s);
        return;
    }
    if (ud == UD_STORE_WRITE) {
        write_cqe(s, res);
        return;
    }
    if (ud == UD_STORE_PREP) {
        prep_cqe(s, res);
        return;
    }
    bool isync = ud == UD_STORE_ISYNC;
    stat_bump(s, st_syncs, 1);
    if (g_fail_sync && res >= 0 && ++st->syncs == g_fail_sync)
        res = -EIO;
    if (res < 0)
        store_fail(s, res, isync ? "an interval fdatasync" : "an fdatasync");
    if (isync) {
        st->isync_inflight = false;
        return;
    }
    st->sq_state[ud - UD_STORE_SYNC0] = res < 0 ? SQ_FAILED : SQ_SYNCED;
    syncq_release(s);
    store_flush(s);
}

void store_close(struct shard *s)
{
    struct store *st = s->store;
    if (!st)
        return;
    /* The loop has ended and the ring is gone: whatever is batched is written here, blocking,
     * so that nothing sequenced is lost; what waited for it is dropped (its connections are
     * closed). */
    if (st->cur.records && !st->refusal && st->seg_fd >= 0) {
        ssize_t w = pwrite(st->seg_fd, st->cur.buf, st->cur.len, (off_t)st->seg_len);
        if (w != (ssize_t)st->cur.len)
            log_error((int)s->index, "log: writing the last batch at shutdown failed");
    }
    if (st->seg_fd >= 0 && fdatasync(st->seg_fd) != 0)
        log_error((int)s->index, "log: fdatasync at shutdown failed: %s", strerror(errno));
    struct batch *bs[2 + UD_STORE_SYNC_SLOTS] = {&st->cur, &st->inflight};
    for (int k = 0; k < UD_STORE_SYNC_SLOTS; k++)
        bs[2 + k] = &st->synq[k];
    for (int k = 0; k < 2 + UD_STORE_SYNC_SLOTS; k++) {
        for (uint32_t i = 0; i < bs[k]->nd; i++)
            oframe_unref(bs[k]->d[i].f);
        free(bs[k]->d);
        free(bs[k]->buf);
    }
    if (st->seg_fd >= 0)
        close(st->seg_fd);
    if (st->prep_fd >= 0)
        close(st->prep_fd); /* PREP_NAME stays: the next start deletes it */
    if (st->dir_fd >= 0)
        close(st->dir_fd);
    map_free(&st->floor);
    index_free(st);
    free(st->rbuf);
    free(st->persist);
    free(st->dk);
    for (uint32_t i = 0; st->restore.slots && i <= st->restore.mask; i++)
        if (st->restore.slots[i].val)
            oframe_unref(st->restore.slots[i].val);
    map_free(&st->restore);
    free(st->segs);
    free(st);
    s->store = NULL;
}

/* ---- replay ------------------------------------------------------------------------------- */

static void replay_gap(struct shard *s, int64_t campaign_id, uint64_t first, uint64_t last,
                       uint64_t conn_id)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n =
        codec_gap_encode(buf, sizeof(buf), campaign_id, first, last, last - first + 1, "retention");
    struct oframe *f = n > 0 ? oframe_alloc((uint32_t)n) : NULL;
    if (!f)
        return;
    memcpy(f->data, buf, (size_t)n);
    core_to_conn_now(s, conn_id, f);
}

/* A logged frame as a delivered one, with its routing fields only (for a reader that does not
 * filter: parsing the type and user is most of a replay's cost otherwise). */
static struct oframe *raw_frame(const struct logrec *r)
{
    struct oframe *f = oframe_alloc(r->len);
    if (!f)
        return NULL;
    memcpy(f->data, r->frame, r->len);
    f->is_event = true;
    f->campaign_id = r->campaign_id;
    f->sequence = r->sequence;
    f->ts_ns = r->ts_ns;
    return f;
}

/* A logged frame as a delivered one: its routing fields, type and user filled for matching. */
static struct oframe *replay_frame(const struct logrec *r)
{
    struct oframe *f = oframe_alloc(r->len);
    if (!f)
        return NULL;
    memcpy(f->data, r->frame, r->len);
    f->is_event = true;
    f->campaign_id = r->campaign_id;
    f->sequence = r->sequence;
    f->ts_ns = r->ts_ns;
    struct codec_envelope env;
    struct codec_event_in ev;
    char err[CODEC_ERR_BYTES];
    if (r->len < 4 || codec_envelope_decode(f->data + 4, r->len - 4, &env, err) < 0 ||
        codec_event_decode(env.body.ptr, env.body.len, &ev, err) < 0 ||
        evtype_parse(&f->type, (const char *)ev.event_type.ptr, ev.event_type.len, NULL, 0) < 0) {
        oframe_unref(f);
        return NULL;
    }
    f->type_str = (const char *)ev.event_type.ptr;
    struct codec_slice u = {0};
    if (ev.has_metadata && codec_metadata_user_id(ev.metadata.ptr, ev.metadata.len, &u) == 0 &&
        u.len) {
        f->user_id = u.ptr;
        f->user_id_len = u.len;
    }
    return f;
}

/* Where a replay of campaign id from sequence `from` starts reading: the index entry at or
 * before it. Returns false when the log holds no record of the campaign. */
static bool replay_start(struct store *st, int64_t id, uint64_t from, uint64_t *off)
{
    uint64_t first = st->nsegs ? st->segs[0].base : 0;
    if (st->index_lost) {
        *off = first;
        return true;
    }
    const struct cindex *ci = map_get(&st->index, (uint64_t)id);
    if (!ci || !ci->n)
        return false;
    uint32_t lo = 0, hi = ci->n; /* the last entry with seq <= from, else the first */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ci->e[mid].seq <= from)
            lo = mid;
        else
            hi = mid;
    }
    *off = ci->e[lo].off > first ? ci->e[lo].off : first;
    return true;
}

/* The segment holding logical offset off (the last one starting at or before it). */
static uint32_t seg_of(const struct store *st, uint64_t off)
{
    uint32_t i = 0;
    while (i + 1 < st->nsegs && st->segs[i + 1].base <= off)
        i++;
    return i;
}

/* Reads segment file fd from pos, calling each(arg, r) for each valid record until it returns
 * false (then returns 1) or the valid records end (returns 0). buf and cap: the read buffer, grown
 * as needed. */
static int walk_file(int fd, uint64_t pos, uint8_t **buf, size_t *cap,
                     bool (*each)(void *arg, const struct logrec *r), void *arg)
{
    for (;;) {
        ssize_t got = pread(fd, *buf, *cap, (off_t)pos);
        if (got <= 0)
            return 0;
        size_t p = 0, used;
        struct logrec r;
        enum logrec_result res;
        while ((res = logrec_decode(*buf + p, (size_t)got - p, &r, &used)) == LOGREC_OK) {
            if (!each(arg, &r))
                return 1;
            p += used;
        }
        if (res == LOGREC_BAD || (size_t)got < *cap)
            return 0; /* the end of what is valid (or written) */
        if (p == 0) { /* one record larger than the buffer */
            size_t ncap = *cap * 2;
            uint8_t *nb =
                ncap <= 2 * (LOGREC_FRAME_MAX + LOGREC_HEADER) ? realloc(*buf, ncap) : NULL;
            if (!nb)
                return -ENOMEM;
            *buf = nb;
            *cap = ncap;
        }
        pos += p;
    }
}

/* Calls each(arg, r) for the valid records from logical offset off to the end of the log. */
static int log_walk(struct store *st, uint64_t off, bool (*each)(void *arg, const struct logrec *r),
                    void *arg)
{
    /* The shard's read buffer, kept between walks (a paced replay walks once per step); a walk
     * from inside another (none today) gets its own. */
    bool nested = st->rbuf_busy;
    if (!nested && !st->rbuf) {
        st->rbuf = malloc(READ_CHUNK);
        st->rbuf_cap = READ_CHUNK;
    }
    size_t cap = nested ? READ_CHUNK : st->rbuf_cap;
    uint8_t *buf = nested ? malloc(cap) : st->rbuf;
    if (!buf)
        return -ENOMEM;
    st->rbuf_busy = true;
    int r = 0;
    for (uint32_t i = seg_of(st, off); i < st->nsegs && r == 0; i++) {
        char name[32];
        seg_name(name, st->segs[i].base);
        int fd = openat(st->dir_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* deleted by retention meanwhile: its records are a gap */
        uint64_t pos = off > st->segs[i].base ? off - st->segs[i].base : 0;
        r = walk_file(fd, pos, &buf, &cap, each, arg);
        close(fd);
    }
    if (nested) {
        free(buf);
    } else {
        st->rbuf = buf; /* walk_file may have grown it */
        st->rbuf_cap = cap;
        st->rbuf_busy = false;
    }
    return r < 0 ? r : 0;
}

struct scan {
    int64_t campaign_id;
    uint64_t next, to;
    int index;
    void (*ev)(void *arg, struct oframe *f);
    void (*gap)(void *arg, uint64_t first, uint64_t last);
    void *arg;
    int events;
    size_t bytes, max_bytes; /* max_bytes 0: no limit */
    bool paused;             /* stopped at max_bytes, not at the end */
    bool raw;                /* frames without their type and user parsed (nobody filters) */
};

static bool scan_one(void *arg, const struct logrec *r)
{
    struct scan *sc = arg;
    if (r->campaign_id != sc->campaign_id || r->sequence < sc->next)
        return true;
    if (r->sequence > sc->to)
        return false;
    if (r->sequence > sc->next)
        sc->gap(sc->arg, sc->next, r->sequence - 1);
    sc->next = r->sequence + 1;
    struct oframe *f = sc->raw ? raw_frame(r) : replay_frame(r);
    if (!f) {
        log_error(sc->index,
                  "replay: campaign %lld sequence %llu could not be read back (memory, or a "
                  "record that is not an event): announced as a gap",
                  (long long)sc->campaign_id, (unsigned long long)r->sequence);
        sc->gap(sc->arg, r->sequence, r->sequence);
    } else {
        sc->bytes += f->len;
        sc->ev(sc->arg, f);
        sc->events++;
    }
    if (sc->max_bytes && sc->bytes >= sc->max_bytes && sc->next <= sc->to) {
        sc->paused = true;
        return false;
    }
    return sc->next <= sc->to;
}

static int scan(struct shard *s, int64_t campaign_id, uint64_t from, uint64_t to, size_t max_bytes,
                uint64_t *next, bool raw, void (*ev)(void *arg, struct oframe *f),
                void (*gap)(void *arg, uint64_t first, uint64_t last), void *arg)
{
    struct store *st = s->store;
    if (from == 0)
        from = 1;
    if (next)
        *next = to + 1;
    if (!st)
        return -ENOENT;
    if (from > to)
        return 0;
    struct scan sc = {.campaign_id = campaign_id,
                      .next = from,
                      .to = to,
                      .index = (int)s->index,
                      .ev = ev,
                      .gap = gap,
                      .arg = arg,
                      .max_bytes = max_bytes,
                      .raw = raw};
    uint64_t off;
    int r = replay_start(st, campaign_id, from, &off) ? log_walk(st, off, scan_one, &sc) : 0;
    if (r < 0)
        return r;
    if (sc.paused) {
        if (next)
            *next = sc.next;
    } else if (sc.next <= to) {
        gap(arg, sc.next, to);
    }
    return sc.events;
}

int store_scan(struct shard *s, int64_t campaign_id, uint64_t from, uint64_t to, size_t max_bytes,
               uint64_t *next, void (*ev)(void *arg, struct oframe *f),
               void (*gap)(void *arg, uint64_t first, uint64_t last), void *arg)
{
    return scan(s, campaign_id, from, to, max_bytes, next, false, ev, gap, arg);
}

struct to_conn {
    struct shard *s;
    int64_t campaign_id;
    uint64_t conn_id;
    bool (*match)(const void *arg, const struct oframe *f);
    const void *arg;
};

static void to_conn_ev(void *arg, struct oframe *f)
{
    struct to_conn *t = arg;
    if (!t->match || t->match(t->arg, f))
        core_to_conn_now(t->s, t->conn_id, f);
    else
        oframe_unref(f);
}

static void to_conn_gap(void *arg, uint64_t first, uint64_t last)
{
    struct to_conn *t = arg;
    replay_gap(t->s, t->campaign_id, first, last, t->conn_id);
}

int store_replay(struct shard *s, int64_t campaign_id, uint64_t from, uint64_t to, size_t max_bytes,
                 uint64_t *next, uint64_t conn_id,
                 bool (*match)(const void *arg, const struct oframe *f), const void *arg)
{
    if (!s->store || from > to) {
        *next = from > to ? from : to + 1;
        return 0;
    }
    struct to_conn t = {s, campaign_id, conn_id, match, arg};
    return scan(s, campaign_id, from, to, max_bytes, next, match == NULL, to_conn_ev, to_conn_gap,
                &t);
}

/* ---- restoring the handlers' state -------------------------------------------------------- */

/* The duplicate window of the newest logged events of client-named publishers, as it was
 * (keys older than the window are not kept). */
static void restore_dedup(struct shard *s)
{
    struct store *st = s->store;
    int64_t window = (int64_t)s->cfg->dedup_window_ms * 1000000;
    int64_t since = shard_now_ns() - window;
    uint32_t n = 0;
    for (uint32_t i = 0; i < st->ndk; i++) {
        const struct dkey *d = &st->dk[i];
        if (d->ts_ns < since)
            continue;
        struct campaign *cp = core_campaign(s, d->campaign_id, true);
        if (cp && !dedup_check_insert(&cp->dedup, d->key, d->ts_ns, window))
            n++;
    }
    free(st->dk);
    st->dk = NULL;
    st->ndk = st->cap_dk = 0;
    if (n)
        log_info((int)s->index, "log: restored %u duplicate-window entries", n);
}

void store_restore(struct shard *s)
{
    struct store *st = s->store;
    if (!st)
        return;
    uint32_t n = 0;
    for (uint32_t i = 0; st->restore.slots && i <= st->restore.mask; i++) {
        struct oframe *f = st->restore.slots[i].val;
        if (!f)
            continue;
        struct campaign *cp = core_campaign(s, f->campaign_id, true);
        if (cp && core_hooks && core_hooks->restore) {
            core_hooks->restore(s, cp, f);
            n++;
        } else if (!cp) {
            log_error((int)s->index,
                      "log: campaign %lld's state could not be restored (campaign "
                      "limit or memory)",
                      (long long)f->campaign_id);
        }
        oframe_unref(f);
        st->restore.slots[i].val = NULL;
    }
    map_free(&st->restore);
    map_init(&st->restore);
    if (n)
        log_info((int)s->index, "log: restored the state of %u campaigns", n);
    restore_dedup(s);
}
