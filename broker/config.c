// SPDX-License-Identifier: Apache-2.0
//
// Flags and config file of nexusd, table-driven so that a flag, its config-file key, its bound
// and its help text (and, through opt_value, its default in --help and the values SIGHUP
// compares) are one row. Also --check-config (every bad line reported as FILE:LINE: reason).
// Start-up and SIGHUP only, on the main thread.
#include "broker/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "broker/check.h"
#include "broker/log.h"
#include "codec/evtype.h"

/* What precedes each error message: "nexusd: ", or with --check-config nothing while the file
 * is read (its messages start with FILE:LINE) and "FILE: " for the checks across settings. */
static char err_prefix[1100] = "nexusd: ";

static void config_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void config_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(err_prefix, stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

enum opt_type {
    OPT_U32,
    OPT_SIZE,
    OPT_STR,
    OPT_BOOL,
    OPT_POLICY,
    OPT_LEVEL,
    OPT_ADDR,
    OPT_MADDR,
    OPT_FSYNC,
    OPT_RECOVER,
    OPT_AGE
};

struct opt {
    const char *name;
    enum opt_type type;
    size_t off;
    uint64_t min, max;
    const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct opt opts[] = {
    {"listen", OPT_ADDR, 0, 0, 0, "HOST:PORT to accept clients on ([::1]:7400 for IPv6)"},
    {"shards", OPT_U32, OFF(shards), 0, CONFIG_SHARDS_MAX, "shard threads (0 = one per CPU)"},
    {"max-frame-bytes", OPT_SIZE, OFF(frame_bytes_max), 64, 64u << 20,
     "largest frame a client may send"},
    {"max-connections", OPT_U32, OFF(connections_max), 1, 10000000, "connections, whole broker"},
    {"max-subscriptions", OPT_U32, OFF(subscriptions_per_conn_max), 1, 1000000,
     "subscriptions per connection"},
    {"max-outbound-bytes", OPT_SIZE, OFF(outbound_bytes_max), 4096, 1ull << 40,
     "bytes queued to one connection before the slow-subscriber policy applies"},
    {"slow-policy", OPT_POLICY, OFF(slow_policy), 0, 0,
     "disconnect | drop (drop sends a gap notice)"},
    {"ring-capacity", OPT_U32, OFF(ring_capacity), 64, 1u << 24,
     "messages per shard-to-shard ring (power of two)"},
    {"max-campaigns", OPT_U32, OFF(campaigns_per_shard_max), 1, 100000000, "campaigns per shard"},
    {"dedup-window-ms", OPT_U32, OFF(dedup_window_ms), 0, 3600000,
     "duplicate-suppression window (0 = off)"},
    {"dedup-entries", OPT_U32, OFF(dedup_entries_max), 16, 1u << 24,
     "duplicate-suppression entries per campaign"},
    {"recv-buffers", OPT_U32, OFF(recv_buffers), 16, 32768,
     "provided receive buffers per shard (power of two)"},
    {"recv-buffer-bytes", OPT_SIZE, OFF(recv_buffer_bytes), 1024, 1u << 20,
     "bytes per receive buffer"},
    {"drain-ms", OPT_U32, OFF(drain_ms), 0, 600000, "SIGTERM: time allowed to flush queues"},
    {"busy-poll-us", OPT_U32, OFF(busy_poll_us), 0, 1000000,
     "poll, not sleep, this long after the last work (0 = off)"},
    {"idle-timeout-ms", OPT_U32, OFF(idle_timeout_ms), 0, 86400000,
     "close connections silent this long (0 = never)"},
    {"hello-timeout-ms", OPT_U32, OFF(hello_timeout_ms), 0, 3600000,
     "a connection's first frame (with --token: its hello) must arrive within (0 = off)"},
    {"frame-timeout-ms", OPT_U32, OFF(frame_timeout_ms), 0, 3600000,
     "a frame that has started arriving must be complete within (0 = off)"},
    {"ping-interval-ms", OPT_U32, OFF(ping_interval_ms), 0, 86400000,
     "ping a connection that sent no frame for this long (0 = off)"},
    {"ping-misses", OPT_U32, OFF(ping_misses_max), 1, 100,
     "close a connection after this many unanswered pings"},
    {"pre-hello-frame-bytes", OPT_SIZE, OFF(pre_hello_frame_bytes), 0, 64u << 20,
     "largest frame accepted before hello (0 = --max-frame-bytes)"},
    {"max-pattern-bytes", OPT_SIZE, OFF(pattern_bytes_per_conn_max), 1024, 64u << 20,
     "subscription pattern and filter bytes one connection may hold"},
    {"max-assembly-bytes", OPT_SIZE, OFF(assembly_bytes_max), 1u << 20, 1ull << 40,
     "bytes of partly received frames one shard holds for all its connections"},
    {"campaign-idle-ms", OPT_U32, OFF(campaign_idle_ms), 0, 604800000,
     "free a campaign with no subscriber, request, state or event for this long (0 = never)"},
    {"max-memory", OPT_SIZE, OFF(memory_bytes_max), 0, 1ull << 50,
     "RSS past which new subscriptions, campaigns and large frames are refused (0 = off)"},
    {"token", OPT_STR, OFF(token), 0, sizeof(((struct config *)0)->token),
     "require Hello with this token (one shared secret; see --accounts)"},
    {"accounts", OPT_STR, OFF(accounts_path), 0, sizeof(((struct config *)0)->accounts_path),
     "accounts file: users, hashed tokens, permissions (docs/SECURITY.md); SIGHUP reloads"},
    {"auth-timeout-ms", OPT_U32, OFF(auth_timeout_ms), 0, 3600000,
     "with --token or --accounts: a connection must authenticate within (0 = off)"},
    {"insecure", OPT_BOOL, OFF(insecure), 0, 0,
     "allow listening on a non-loopback address without --accounts or --token"},
    {"tls-cert", OPT_STR, OFF(tls_cert), 0, sizeof(((struct config *)0)->tls_cert),
     "PEM certificate (chain): clients must speak TLS"},
    {"tls-key", OPT_STR, OFF(tls_key), 0, sizeof(((struct config *)0)->tls_key),
     "PEM private key of --tls-cert"},
    {"tls-client-ca", OPT_STR, OFF(tls_client_ca), 0, sizeof(((struct config *)0)->tls_client_ca),
     "PEM CA: clients must present a certificate it signed (maps to an account's cert)"},
    {"ws-listen", OPT_STR, OFF(ws_listen), 0, sizeof(((struct config *)0)->ws_listen),
     "HOST:PORT to accept WebSocket clients on (browsers; off if unset; TLS as --tls-cert)"},
    {"ws-allowed-origins", OPT_STR, OFF(ws_allowed_origins), 0,
     sizeof(((struct config *)0)->ws_allowed_origins),
     "origins (scheme://host[:port], comma-separated, or *) whose pages may connect over "
     "WebSocket, besides pages from the broker's own host"},
    {"data-dir", OPT_STR, OFF(data_dir), 0, sizeof(((struct config *)0)->data_dir),
     "log every sequenced event under DIR; recover from it at start (off: memory only)"},
    {"fsync", OPT_FSYNC, 0, 0, 0,
     "always (ack after fdatasync, group commit) | interval:MS (ack after write; sync every MS)"},
    {"fsync-depth", OPT_U32, OFF(fsync_depth), 1, 8,
     "--fsync always: written batches whose fdatasync may be in flight at once"},
    {"segment-bytes", OPT_SIZE, OFF(segment_bytes), 1u << 20, 1ull << 40,
     "roll a log segment file past this size"},
    {"retain-bytes", OPT_SIZE, OFF(retain_bytes), 0, 1ull << 50,
     "per shard: delete the oldest log segments past this size (0 = keep everything)"},
    {"retain-age", OPT_AGE, 0, 0, 0,
     "delete log segments whose newest event is older: N[s|m|h|d] (0 = keep everything)"},
    {"persist", OPT_STR, OFF(persist), 0, sizeof(((struct config *)0)->persist),
     "event-type patterns to log, comma-separated (others: live only, sequence 0)"},
    {"recover", OPT_RECOVER, 0, 0, 0,
     "refuse | truncate: what to do with a log corrupt before its end (see docs)"},
    {"log-level", OPT_LEVEL, OFF(log_level), 0, 0, "debug | info | warn | error"},
    {"log-json", OPT_BOOL, OFF(log_json), 0, 0, "log JSON lines"},
    {"pin-cpus", OPT_BOOL, OFF(pin_cpus), 0, 0,
     "pin shard i to the i-th CPU of nexusd's affinity mask (taskset)"},
    {"metrics", OPT_MADDR, 0, 0, 0, "HOST:PORT for Prometheus metrics over HTTP (off if unset)"},
};

/* True for 127.0.0.0/8, ::1, ::ffff:127.x and "localhost": addresses only this host reaches. */
static bool host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (!strcmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* Rows other layers registered (config_register): settings of their own. */
static const struct config_setting *ext_rows[CONFIG_SETTINGS_MAX];
static size_t ext_count;

int config_register(const struct config_setting *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t k = 0; k < ext_count && !known; k++)
            known = ext_rows[k] == &rows[i]; /* registered twice (tests): once is enough */
        if (known)
            continue;
        if (ext_count == CONFIG_SETTINGS_MAX)
            return -ENOSPC;
        ext_rows[ext_count++] = &rows[i];
    }
    return 0;
}

static const struct config_setting *find_ext(const char *name, size_t len)
{
    for (size_t i = 0; i < ext_count; i++)
        if (strlen(ext_rows[i]->name) == len && !strncmp(ext_rows[i]->name, name, len))
            return ext_rows[i];
    return NULL;
}

/* The event log's defaults (docs/OPERATIONS.md, "Data directory"). */
static void config_defaults_log(struct config *c)
{
    /* 64 MiB segments: retention deletes whole files, and a recovery scan reads one at a
     * time; ~500k small events each. */
    c->segment_bytes = 64u << 20;
    /* One fdatasync in flight: concurrent syncs of one file complete more per second on this
     * project's VM disk (bench/results/2026-12-03-sync-queue), but acknowledged throughput did
     * not follow — 4 in flight was 0.8-1.1x of 1 (bench/results/2026-12-03-durable-queue*). */
    c->fsync_depth = 1;
    /* 16 GiB of log per shard: days of a busy campaign set, and a bound on a disk that would
     * otherwise fill (docs/OPERATIONS.md, "Data directory"). */
    c->retain_bytes = 16ull << 30;
}

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen_host, sizeof(c->listen_host), "127.0.0.1");
    c->listen_port = 7400;
    c->shards = 0;
    /* 1 MiB: docs/DESIGN.md §5's default; large enough for any state snapshot, small enough that
     * one hostile length cannot make the broker allocate much. */
    c->frame_bytes_max = 1u << 20;
    /* 65536: what one box serves comfortably; each idle connection costs ~1 KiB here. */
    c->connections_max = 65536;
    /* 1024: a dashboard subscribing per campaign stays well under; matching cost is bounded. */
    c->subscriptions_per_conn_max = 1024;
    /* 64 MiB: docs/DESIGN.md §2.4's default, NATS's max_pending; ~500k small events of slack
     * per subscriber. Queued frames are shared, so subscribers lagging on the same events
     * cost it about once between them (docs/OPERATIONS.md). */
    c->outbound_bytes_max = 64u << 20;
    c->slow_policy = SLOW_DISCONNECT;
    /* 8192 messages: at ~100 ns per message, 0.8 ms of work between two shards; enough to
     * absorb bursts without letting one shard run far ahead of another. */
    c->ring_capacity = 8192;
    /* 1,000,000 campaigns per shard: a campaign costs a few hundred bytes until it dedups. */
    c->campaigns_per_shard_max = 1000000;
    c->dedup_window_ms = 3000;
    /* 8192 entries per campaign: 3 s of 2,700 events/s per campaign are fully covered; beyond
     * that the oldest entries go first (documented in docs/PROTOCOL.md). ~200 KiB at most. */
    c->dedup_entries_max = 8192;
    /* 512 x 16 KiB = 8 MiB per shard: one buffer per receive completion, returned at once. */
    c->recv_buffers = 512;
    c->recv_buffer_bytes = 16384;
    c->drain_ms = 5000;
    c->idle_timeout_ms = 0;
    /* 5 s for the first frame: a client library connects and speaks at once; a socket that
     * says nothing for 5 s is a port scan or a leak. */
    c->hello_timeout_ms = 5000;
    /* With --token or --accounts, 2 s to be authenticated, TLS handshake included (NATS's
     * auth_timeout): an unauthenticated socket holds a slot and a little memory, nothing else. */
    c->auth_timeout_ms = 2000;
    config_defaults_log(c);
    /* 10 s for a frame to complete once started: a 1 MiB frame then needs 100 KiB/s, which any
     * live client sustains, while a trickler holding a frame buffer is cut off. */
    c->frame_timeout_ms = 10000;
    /* Ping after 30 s without a frame, close after 2 unanswered pings (~90 s): finds dead
     * subscribers (which send nothing) without traffic on busy connections. */
    c->ping_interval_ms = 30000;
    c->ping_misses_max = 2;
    /* 4 KiB before hello: a hello is a few dozen bytes; a client that has not introduced
     * itself cannot make the broker allocate a megabyte. */
    c->pre_hello_frame_bytes = 4096;
    /* 64 KiB of patterns and user filters per connection: 1024 subscriptions of ~64-byte
     * patterns; past it, matching cost and memory per connection stop growing. */
    c->pattern_bytes_per_conn_max = 64u << 10;
    /* 256 MiB of partly received frames per shard: 256 clients sending 1 MiB frames at once;
     * more large frames wait for their turn (refused with limit_exceeded, retryable). */
    c->assembly_bytes_max = 256ull << 20;
    /* 5 min: a campaign nobody listens to and nobody writes to for 5 min costs nothing
     * afterwards (its sequence restarts at 1 when it comes back: docs/PROTOCOL.md). */
    c->campaign_idle_ms = 300000;
    /* 3/4 of physical memory (resolved in config_parse; UINT64_MAX marks "not given"): the
     * broker refuses to grow before the kernel's OOM killer decides for it. */
    c->memory_bytes_max = UINT64_MAX;
    c->log_level = LOG_INFO;
    c->log_json = false;
    c->metrics_port = 0;
    snprintf(c->metrics_host, sizeof(c->metrics_host), "127.0.0.1");
}

/* The OPT_U32 and OPT_SIZE rows whose field is a uint64_t (the others are uint32_t). */
static bool opt_is_u64(const struct opt *o)
{
    return o->off == OFF(outbound_bytes_max) || o->off == OFF(assembly_bytes_max) ||
           o->off == OFF(memory_bytes_max) || o->off == OFF(segment_bytes) ||
           o->off == OFF(retain_bytes);
}

/* A size as --help and the sample config write it: 16M rather than 16777216. */
static void size_text(uint64_t v, char *out, size_t cap)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (u < 3 && v >= 1024 && v % 1024 == 0) {
        v /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(out, cap, "%llu", (unsigned long long)v);
    else
        snprintf(out, cap, "%llu%c", (unsigned long long)v, units[u]);
}

/* A duration in seconds as --retain-age takes it: the largest whole unit. */
static void age_text(uint32_t s, char *out, size_t cap)
{
    if (s && s % 86400 == 0)
        snprintf(out, cap, "%ud", s / 86400);
    else if (s && s % 3600 == 0)
        snprintf(out, cap, "%uh", s / 3600);
    else if (s && s % 60 == 0)
        snprintf(out, cap, "%um", s / 60);
    else
        snprintf(out, cap, "%u", s);
}

/* Row o's value in c, as a flag would give it ("" for an unset string or address). */
static void opt_value(const struct config *c, const struct opt *o, char *out, size_t cap)
{
    const char *base = (const char *)c;
    bool v6 = strchr(o->type == OPT_ADDR ? c->listen_host : c->metrics_host, ':') != NULL;
    switch (o->type) {
    case OPT_U32:
    case OPT_SIZE: {
        uint64_t v =
            opt_is_u64(o) ? *(const uint64_t *)(base + o->off) : *(const uint32_t *)(base + o->off);
        if (o->type == OPT_SIZE)
            size_text(v, out, cap);
        else
            snprintf(out, cap, "%llu", (unsigned long long)v);
        return;
    }
    case OPT_STR:
        snprintf(out, cap, "%s", base + o->off);
        return;
    case OPT_BOOL:
        snprintf(out, cap, "%s", *(const bool *)(base + o->off) ? "true" : "false");
        return;
    case OPT_POLICY:
        snprintf(out, cap, "%s", c->slow_policy == SLOW_DROP ? "drop" : "disconnect");
        return;
    case OPT_LEVEL:
        snprintf(out, cap, "%s", log_level_name((enum log_level)c->log_level));
        return;
    case OPT_ADDR:
        snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", c->listen_host, c->listen_port);
        return;
    case OPT_MADDR:
        if (!c->metrics_port)
            snprintf(out, cap, "%s", "");
        else
            snprintf(out, cap, v6 ? "[%s]:%u" : "%s:%u", c->metrics_host, c->metrics_port);
        return;
    case OPT_FSYNC:
        if (c->fsync_interval_ms)
            snprintf(out, cap, "interval:%u", c->fsync_interval_ms);
        else
            snprintf(out, cap, "always");
        return;
    case OPT_RECOVER:
        snprintf(out, cap, "%s", c->recover_truncate ? "truncate" : "refuse");
        return;
    case OPT_AGE:
        age_text(c->retain_age_s, out, cap);
        return;
    }
}

/* The default of row o as --help shows it. */
static void opt_default(const struct config *d, const struct opt *o, char *out, size_t cap)
{
    if (o->off == OFF(memory_bytes_max) && o->type == OPT_SIZE)
        snprintf(out, cap, "3/4 of the machine's memory");
    else if (o->type == OPT_MADDR)
        snprintf(out, cap, "off");
    else if (o->type == OPT_STR && !*((const char *)d + o->off))
        snprintf(out, cap, "none");
    else
        opt_value(d, o, out, cap);
}

void config_usage(void)
{
    printf("Usage: nexusd [flags]\n"
           "Nexus event broker: thread-per-core, io_uring, length-prefixed protobuf over TCP.\n\n"
           "Flags (each also a key in the --config file, as `key = value`):\n");
    struct config d;
    config_defaults(&d);
    char def[128];
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        opt_default(&d, &opts[i], def, sizeof(def));
        printf("  --%-24s %s (default: %s)\n", opts[i].name, opts[i].help, def);
    }
    /* Another layer's variable holds its default until the flags are parsed. */
    for (size_t i = 0; i < ext_count; i++) {
        const struct config_setting *x = ext_rows[i];
        if (x->type == CONFIG_SETTING_BOOL)
            snprintf(def, sizeof(def), "%s", *(const bool *)x->ptr ? "true" : "false");
        else
            snprintf(def, sizeof(def), "%u", *(const uint32_t *)x->ptr);
        printf("  --%-24s %s (default: %s)\n", x->name, x->help, def);
    }
    printf("  --%-24s %s\n", "config FILE", "read settings from FILE (flags given later win)");
    printf("  --%-24s %s\n", "check-config FILE",
           "check FILE as start-up would (without binding or opening --data-dir); print \"ok\" "
           "and exit 0, or print FILE:LINE: reason and exit 1");
    printf("  --%-24s %s\n", "hash-token",
           "print the argon2id hash of a token read from stdin "
           "(for --accounts; only flag)");
    printf("  --%-24s %s\n", "help", "print this help");
    printf("  --%-24s %s\n", "version", "print the version");
    printf("\nSizes accept K, M and G suffixes (powers of 1024). Boolean flags need no value.\n"
           "Signals: SIGTERM/SIGINT drain and exit; SIGHUP re-reads the log level from the\n"
           "--config file and the --accounts file (docs/OPERATIONS.md).\n");
}

static int parse_u64(const char *s, bool size, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        return -EINVAL;
    if (size && *end) {
        unsigned shift = 0;
        switch (*end) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            return -EINVAL;
        }
        if (v > (ULLONG_MAX >> shift))
            return -EINVAL;
        v <<= shift;
        end++;
        if (*end == 'i' || *end == 'B')
            end++;
        if (*end == 'B')
            end++;
    }
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

/* Splits HOST:PORT (IPv6 in brackets). */
static int parse_addr(const char *s, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon;
    const char *h = s;
    size_t hl;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -EINVAL;
        h = s + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -EINVAL;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= host_cap)
        return -EINVAL;
    uint64_t p;
    if (parse_u64(colon + 1, false, &p) < 0 || p == 0 || p > 65535)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = 0;
    *port = (uint16_t)p;
    return 0;
}

/* A number for flag name in [min, max] (size: K/M/G suffixes allowed). */
static int parse_number(const char *name, bool size, uint64_t min, uint64_t max, const char *val,
                        const char *where, uint64_t *out)
{
    if (parse_u64(val, size, out) < 0 || *out < min || *out > max) {
        config_err("%s: --%s wants a number in %llu..%llu, got \"%s\"\n", where, name,
                   (unsigned long long)min, (unsigned long long)max, val);
        return -EINVAL;
    }
    return 0;
}

static int parse_bool(const char *name, const char *val, const char *where, bool *out)
{
    if (!strcmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes"))
        *out = true;
    else if (!strcmp(val, "0") || !strcasecmp(val, "false") || !strcasecmp(val, "no"))
        *out = false;
    else {
        config_err("%s: --%s wants true or false, got \"%s\"\n", where, name, val);
        return -EINVAL;
    }
    return 0;
}

/* While config_reparse runs (SIGHUP), other layers' settings are parsed, so that errors show,
 * into ext_pending rather than into their variables, which their threads read unlocked. */
static bool ext_frozen;
static uint32_t ext_pending[CONFIG_SETTINGS_MAX];
static bool ext_seen[CONFIG_SETTINGS_MAX];

static int set_ext(const struct config_setting *o, const char *val, const char *where)
{
    uint64_t v;
    size_t k = 0;
    while (k < ext_count && ext_rows[k] != o)
        k++;
    NX_ASSERT(k < ext_count);
    if (o->type == CONFIG_SETTING_BOOL) {
        bool b;
        if (parse_bool(o->name, val, where, &b) < 0)
            return -EINVAL;
        v = b;
    } else if (parse_number(o->name, false, o->min, o->max, val, where, &v) < 0) {
        return -EINVAL;
    }
    if (ext_frozen) {
        ext_pending[k] = (uint32_t)v;
        ext_seen[k] = true;
    } else if (o->type == CONFIG_SETTING_BOOL) {
        *(bool *)o->ptr = v != 0;
    } else {
        *(uint32_t *)o->ptr = (uint32_t)v;
    }
    return 0;
}

/* --fsync always|interval:MS and --recover refuse|truncate (the event log). */
static int set_log_opt(struct config *c, const struct opt *o, const char *val, const char *where)
{
    if (o->type == OPT_AGE) {
        char *e;
        unsigned long long v = strtoull(val, &e, 10);
        unsigned long long mul = !*e               ? 1
                                 : !strcmp(e, "s") ? 1
                                 : !strcmp(e, "m") ? 60
                                 : !strcmp(e, "h") ? 3600
                                 : !strcmp(e, "d") ? 86400
                                                   : 0;
        if (e == val || !mul || v * mul > 10ull * 365 * 86400) {
            config_err("%s: --retain-age wants N, Ns, Nm, Nh or Nd (at most 10 "
                       "years), got \"%s\"\n",
                       where, val);
            return -EINVAL;
        }
        c->retain_age_s = (uint32_t)(v * mul);
        return 0;
    }
    if (o->type == OPT_RECOVER) {
        if (strcmp(val, "refuse") && strcmp(val, "truncate")) {
            config_err("%s: --recover wants refuse or truncate, got \"%s\"\n", where, val);
            return -EINVAL;
        }
        c->recover_truncate = !strcmp(val, "truncate");
        return 0;
    }
    char *end;
    if (!strcmp(val, "always")) {
        c->fsync_interval_ms = 0;
        return 0;
    }
    if (!strncmp(val, "interval:", 9)) {
        unsigned long ms = strtoul(val + 9, &end, 10);
        if (end != val + 9 && !*end && ms >= 1 && ms <= 60000) {
            c->fsync_interval_ms = (uint32_t)ms;
            return 0;
        }
    }
    config_err("%s: --fsync wants always or interval:MS (1..60000), got \"%s\"\n", where, val);
    return -EINVAL;
}

static int set_opt(struct config *c, const struct opt *o, const char *val, const char *where)
{
    char *base = (char *)c;
    uint64_t v;
    switch (o->type) {
    case OPT_U32:
    case OPT_SIZE:
        if (parse_number(o->name, o->type == OPT_SIZE, o->min, o->max, val, where, &v) < 0)
            return -EINVAL;
        if (opt_is_u64(o))
            *(uint64_t *)(base + o->off) = v;
        else
            *(uint32_t *)(base + o->off) = (uint32_t)v;
        return 0;
    case OPT_STR: {
        size_t l = strlen(val);
        if (l >= o->max) {
            config_err("%s: --%s is longer than %llu bytes\n", where, o->name,
                       (unsigned long long)o->max - 1);
            return -EINVAL;
        }
        memcpy(base + o->off, val, l + 1);
        return 0;
    }
    case OPT_BOOL:
        return parse_bool(o->name, val, where, (bool *)(base + o->off));
    case OPT_POLICY:
        if (!strcmp(val, "disconnect"))
            c->slow_policy = SLOW_DISCONNECT;
        else if (!strcmp(val, "drop"))
            c->slow_policy = SLOW_DROP;
        else {
            config_err("%s: --slow-policy wants disconnect or drop, got \"%s\"\n", where, val);
            return -EINVAL;
        }
        return 0;
    case OPT_FSYNC:
    case OPT_RECOVER:
    case OPT_AGE:
        return set_log_opt(c, o, val, where);
    case OPT_LEVEL: {
        int l = log_level_parse(val);
        if (l < 0) {
            config_err("%s: --log-level wants debug, info, warn or error, got \"%s\"\n", where,
                       val);
            return -EINVAL;
        }
        c->log_level = l;
        return 0;
    }
    case OPT_ADDR:
    case OPT_MADDR: {
        char *host = o->type == OPT_ADDR ? c->listen_host : c->metrics_host;
        uint16_t *port = o->type == OPT_ADDR ? &c->listen_port : &c->metrics_port;
        if (parse_addr(val, host, sizeof(c->listen_host), port) < 0) {
            config_err("%s: --%s wants HOST:PORT, got \"%s\"\n", where, o->name, val);
            return -EINVAL;
        }
        return 0;
    }
    }
    return -EINVAL;
}

static const struct opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
        if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len))
            return &opts[i];
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = 0;
    return s;
}

/* The value of a `key = value` line, in place: in double quotes, everything up to the closing
 * quote (a `#` in it is data), and after it only a comment; unquoted, up to a `#` that starts
 * the value or follows a blank. Returns the value, or NULL after printing why. */
static char *line_value(char *v, const char *where)
{
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (!close) {
            config_err("%s: the quoted value has no closing quote\n", where);
            return NULL;
        }
        *close = 0;
        char *rest = trim(close + 1);
        if (*rest && *rest != '#') {
            config_err("%s: unexpected text after the quoted value: \"%s\"\n", where, rest);
            return NULL;
        }
        return v + 1;
    }
    for (char *p = v; *p; p++) {
        if (*p == '#' && (p == v || p[-1] == ' ' || p[-1] == '\t')) {
            *p = 0;
            break;
        }
    }
    return trim(v);
}

/* One `key = value` line (trimmed; not empty, not a comment) into c. */
static int load_line(struct config *c, char *s, const char *where)
{
    char *eq = strchr(s, '=');
    if (!eq) {
        config_err("%s: expected `key = value`\n", where);
        return -EINVAL;
    }
    *eq = 0;
    char *key = trim(s);
    char *val = line_value(trim(eq + 1), where);
    if (!val)
        return -EINVAL;
    const struct opt *o = find_opt(key, strlen(key));
    const struct config_setting *x = o ? NULL : find_ext(key, strlen(key));
    if (!o && !x) {
        config_err("%s: unknown setting \"%s\"\n", where, key);
        return -EINVAL;
    }
    return o ? set_opt(c, o, val, where) : set_ext(x, val, where);
}

/* Reads a config file into c: up to its first bad line, or with --check-config through all of
 * them (each is reported). */
static int load_file(struct config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        config_err("cannot open config file %s: %s\n", path, strerror(errno));
        return -EINVAL;
    }
    /* One setting per line: 4 KiB holds the longest value (a 1023-byte path) with room. */
    char line[4096];
    int lineno = 0;
    int r = 0;
    while ((r == 0 || c->check_only) && fgets(line, sizeof(line), f)) {
        lineno++;
        char where[1100];
        snprintf(where, sizeof(where), "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            config_err("%s: line longer than %zu bytes\n", where, sizeof(line) - 2);
            r = -EINVAL;
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') {
            }
            continue;
        }
        char *s = trim(line);
        if (*s != 0 && *s != '#' && load_line(c, s, where) < 0)
            r = -EINVAL;
    }
    fclose(f);
    return r;
}

/* Authentication and TLS flags that only make sense together; protected mode. */
static int config_check_auth(const struct config *c)
{
    if (c->token[0] && c->accounts_path[0]) {
        config_err("--token and --accounts exclude each other: with accounts every "
                   "user has a token of its own\n");
        return -EINVAL;
    }
    if (!c->token[0] && !c->accounts_path[0] && !c->insecure && !host_is_loopback(c->listen_host)) {
        config_err("refusing to listen on %s without authentication (protected mode): any "
                   "host that reaches it could publish, subscribe and act for anyone. Give "
                   "--accounts FILE (docs/SECURITY.md) so clients must log in, or --insecure to "
                   "accept anyone on purpose.\n",
                   c->listen_host);
        return -EINVAL;
    }
    if ((c->tls_cert[0] != 0) != (c->tls_key[0] != 0) || (c->tls_client_ca[0] && !c->tls_cert[0])) {
        config_err("--tls-cert and --tls-key go together (and --tls-client-ca needs "
                   "them)\n");
        return -EINVAL;
    }
    return 0;
}

/* Argument *i of argv (and its value, which may be the next argument: *i then moves past it)
 * into c. Returns 0, 1 after printing --help or --version, or -EINVAL after printing why. */
static int parse_flag(struct config *c, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
        config_usage();
        return 1;
    }
    if (!strcmp(a, "--version")) {
        printf("nexusd %s\n", NEXUS_VERSION);
        return 1;
    }
    if (strncmp(a, "--", 2) != 0) {
        config_err("unexpected argument \"%s\" (see --help)\n", a);
        return -EINVAL;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nl = eq ? (size_t)(eq - name) : strlen(name);
    const char *val = eq ? eq + 1 : NULL;
    bool is_check = nl == 12 && !strncmp(name, "check-config", 12);
    bool is_config = is_check || (nl == 6 && !strncmp(name, "config", 6));
    const struct opt *o = is_config ? NULL : find_opt(name, nl);
    const struct config_setting *x = o || is_config ? NULL : find_ext(name, nl);
    if (!o && !x && !is_config) {
        config_err("unknown flag \"%s\" (see --help)\n", a);
        return -EINVAL;
    }
    if (!val) {
        if ((o && o->type == OPT_BOOL) || (x && x->type == CONFIG_SETTING_BOOL)) {
            val = "true";
        } else if (*i + 1 < argc) {
            val = argv[++*i];
        } else {
            config_err("flag \"%s\" needs a value\n", a);
            return -EINVAL;
        }
    }
    if (is_config) {
        snprintf(c->config_file, sizeof(c->config_file), "%s", val);
        if (is_check) {
            c->check_only = true;
            err_prefix[0] = 0; /* the file's messages start with FILE:LINE */
        }
        return load_file(c, val);
    }
    return o ? set_opt(c, o, val, "command line") : set_ext(x, val, "command line");
}

/* --ws-listen: a HOST:PORT, under the protected mode's rule like --listen. */
static int config_check_ws(struct config *c)
{
    c->ws_port = 0;
    c->ws_host[0] = 0;
    if (!c->ws_listen[0])
        return 0;
    if (parse_addr(c->ws_listen, c->ws_host, sizeof(c->ws_host), &c->ws_port) < 0) {
        config_err("--ws-listen wants HOST:PORT, got \"%s\"\n", c->ws_listen);
        return -EINVAL;
    }
    if (c->ws_port == c->listen_port) {
        config_err("--ws-listen needs a port of its own (--listen has %u)\n", c->listen_port);
        return -EINVAL;
    }
    if (!c->token[0] && !c->accounts_path[0] && !c->insecure && !host_is_loopback(c->ws_host)) {
        config_err("refusing to accept WebSocket clients on %s without authentication "
                   "(protected mode): give --accounts FILE (docs/SECURITY.md), or --insecure\n",
                   c->ws_host);
        return -EINVAL;
    }
    return 0;
}

/* --persist: each comma-separated pattern parses (the shards parse them again at start). */
static int config_check_persist(const struct config *c)
{
    const char *p = c->persist;
    while (*p) {
        size_t len = strcspn(p, ",");
        const char *q = p;
        size_t n = len;
        while (n && (*q == ' ' || *q == '\t'))
            q++, n--;
        while (n && (q[n - 1] == ' ' || q[n - 1] == '\t'))
            n--;
        struct evpattern pat;
        char err[128];
        if (n && evpattern_parse(&pat, q, n, err, sizeof(err)) < 0) {
            config_err("--persist: \"%.*s\": %s\n", (int)n, q, err);
            return -EINVAL;
        }
        p += len + (p[len] == ',');
    }
    return 0;
}

/* The checks across settings, once every flag and line is in. */
static int config_check(struct config *c)
{
    if (config_check_auth(c) < 0 || config_check_ws(c) < 0 || config_check_persist(c) < 0)
        return -EINVAL;
    if (c->memory_bytes_max == UINT64_MAX) {
        c->memory_bytes_max = 0;
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0)
            c->memory_bytes_max = (uint64_t)pages * (uint64_t)page / 4 * 3;
    }
    if (c->ring_capacity & (c->ring_capacity - 1)) {
        config_err("--ring-capacity must be a power of two, got %u\n", c->ring_capacity);
        return -EINVAL;
    }
    if (c->recv_buffers & (c->recv_buffers - 1)) {
        config_err("--recv-buffers must be a power of two, got %u\n", c->recv_buffers);
        return -EINVAL;
    }
    return 0;
}

int config_parse(struct config *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        int r = parse_flag(c, argc, argv, &i);
        if (r != 0)
            return r;
    }
    if (c->check_only)
        snprintf(err_prefix, sizeof(err_prefix), "%s: ", c->config_file);
    return config_check(c);
}

int config_reparse(struct config *out, int argc, char **argv)
{
    config_defaults(out);
    memset(ext_seen, 0, sizeof(ext_seen));
    ext_frozen = true;
    int r = config_parse(out, argc, argv);
    ext_frozen = false;
    return r < 0 ? r : 0;
}

/* Appends name to the comma-separated list in out. */
static void list_add(char *out, size_t cap, int n, const char *name)
{
    size_t len = strlen(out);
    if (len < cap)
        snprintf(out + len, cap - len, "%s%s", n ? ", " : "", name);
}

int config_changes(const struct config *a, const struct config *b, char *out, size_t cap)
{
    int n = 0;
    char va[1100], vb[1100];
    out[0] = 0;
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        if (opts[i].type == OPT_LEVEL)
            continue;
        opt_value(a, &opts[i], va, sizeof(va));
        opt_value(b, &opts[i], vb, sizeof(vb));
        if (strcmp(va, vb) != 0)
            list_add(out, cap, n++, opts[i].name);
    }
    for (size_t k = 0; k < ext_count; k++) {
        const struct config_setting *x = ext_rows[k];
        uint32_t live =
            x->type == CONFIG_SETTING_BOOL ? *(const bool *)x->ptr : *(const uint32_t *)x->ptr;
        if (ext_seen[k] && ext_pending[k] != live)
            list_add(out, cap, n++, x->name);
    }
    return n;
}
