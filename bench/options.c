// SPDX-License-Identifier: Apache-2.0
//
// Command line of nexus-bench: flags and the named presets of the workloads in issue 6 /
// docs/BENCHMARKS.md. A preset sets the workload's shape; flags given with it override single
// values whatever their order. Main thread, start-up only.
#include "bench/bench.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct preset {
    const char *name;
    uint32_t publishers, subscribers, campaigns, payload_bytes;
    uint64_t rate;
    const char *shape;
    uint32_t window;       /* 0: the default */
    uint64_t window_bytes; /* 0: the default */
    bool client_ids;       /* --ids client */
    bool string_payload;   /* --payload string */
};

/* Deep presets: a window of 65,536 events per publisher (the queues of slow subscribers tens of
 * thousands of events deep), with a byte window that lets all of them be in flight. */
#define DEEP_WINDOW       65536
#define DEEP_WINDOW_BYTES (64ull << 20)
/* The string preset: one string field of 64 bytes (bench_payload_text_len(64)). */
#define STR_PAYLOAD_BYTES 75

/* The workload table of issue 6 (64-byte payloads unless said). */
static const struct preset presets[] = {
    {"fanout-1", 1, 1, 1, 64, 0, "1 publisher, 1 campaign, 1 subscriber, max rate", 0, 0, false,
     false},
    {"fanout-10", 1, 10, 1, 64, 0, "1 publisher, 1 campaign, 10 subscribers, max rate", 0, 0, false,
     false},
    {"fanout-100", 1, 100, 1, 64, 0, "1 publisher, 1 campaign, 100 subscribers, max rate", 0, 0,
     false, false},
    {"fanin", 4, 1, 1, 64, 0, "4 publishers, 1 campaign, 1 subscriber, max rate", 0, 0, false,
     false},
    {"campaigns", 4, 100, 100, 64, 0,
     "4 publishers over 100 campaigns, 100 subscribers (one per campaign), max rate", 0, 0, false,
     false},
    {"latency", 1, 10, 1, 64, 50000, "1 publisher at 50,000 events/s, 10 subscribers", 0, 0, false,
     false},
    {"large", 1, 10, 1, 4096, 0, "4 KiB payloads, 1 publisher, 10 subscribers, max rate", 0, 0,
     false, false},
    {"fanout-10-deep", 1, 10, 1, 64, 0,
     "fanout-10 with 65,536 events in flight (--window 65536): deep queues", DEEP_WINDOW,
     DEEP_WINDOW_BYTES, false, false},
    {"fanin-deep", 4, 1, 1, 64, 0,
     "fanin with 65,536 events in flight per publisher (262,144 queued)", DEEP_WINDOW,
     DEEP_WINDOW_BYTES, false, false},
    {"campaigns-ids", 4, 100, 100, 64, 0,
     "campaigns with client event ids (--ids client): the duplicate window\n"
     "                     checks every emit",
     0, 0, true, false},
    {"fanout-10-str", 1, 10, 1, STR_PAYLOAD_BYTES, 0,
     "fanout-10 with a payload of one 64-byte string field (--payload\n"
     "                     string, 75 bytes)",
     0, 0, false, true},
    {"lifecycle", 1, 0, 1, 64, 0,
     "nexus only (nexusd --test-handlers): test:echo request -> started ->\n"
     "                     success round trips, --requesters connections (default 1), each\n"
     "                     with --window requests open (default 64) or paced by --rate",
     64, 0, false, false},
    {"streams", 10, 0, 1, 64, 0,
     "nexus only (nexusd --test-handlers): --requesters connections (default\n"
     "                     10) each hold --window test:stream_ticks streams open (default\n"
     "                     1000), each with a stream event and a heartbeat every second;\n"
     "                     checks every tick and heartbeat, then cancels them all",
     1000, 0, false, false},
    {"durable", 4, 0, 4, 64, 0,
     "acknowledged durable publishes: --publishers (default 4) each keep\n"
     "                     --window (default 64) publishes unacknowledged; acked events/s and\n"
     "                     send-to-ack latency; --broker nexus (emit_ack), jetstream (PubAck\n"
     "                     of a file stream) or redis-stream (XADD); then reads them back\n"
     "                     (jetstream, redis-stream; --no-replay skips it)",
     64, 0, false, false},
};

const char *bench_broker_name(enum bench_broker b)
{
    return b == BENCH_NEXUS       ? "nexus"
           : b == BENCH_NATS      ? "nats"
           : b == BENCH_REDIS     ? "redis"
           : b == BENCH_JETSTREAM ? "jetstream"
                                  : "redis-stream";
}

static void usage(void)
{
    printf("Usage: nexus-bench [--preset NAME] [flags]\n"
           "Load generator for nexusd, NATS and Redis pub/sub: publishes at max rate (bounded\n"
           "in-flight window) or at a fixed rate, checks every delivery (loss, order,\n"
           "duplicates) and reports rates, latency percentiles and CPU.\n\n"
           "Flags:\n"
           "  --broker nexus|nats|redis  protocol to speak (default nexus); the durable preset\n"
           "                             also speaks jetstream and redis-stream\n"
           "  --host HOST                broker host (default 127.0.0.1)\n"
           "  --port PORT                broker port (default 7400 / 4222 / 6379)\n"
           "  --publishers N             publisher connections\n"
           "  --requesters N             lifecycle and streams presets: requester connections\n"
           "                             (the same count as --publishers)\n"
           "  --subscribers N            subscriber connections (subscriber i takes campaign\n"
           "                             i mod campaigns)\n"
           "  --campaigns N              campaigns (subjects, channels); publishers cycle\n"
           "                             through all of them\n"
           "  --payload-bytes N          payload size (>= %u)\n"
           "  --payload numbers|string   what the payload's Struct holds: the record as three\n"
           "                             numbers (default), or one string field carrying it as\n"
           "                             hex text (>= 59 bytes)\n"
           "  --ids broker|client        nexus event ids: empty, assigned by the broker\n"
           "                             (default), or p<publisher>-<counter> chosen by the\n"
           "                             client, which the broker checks for duplicates (no\n"
           "                             effect on nats and redis: they have no event ids)\n"
           "  --rate N                   events/s over all publishers, open loop, latency from\n"
           "                             the scheduled send time; 0 = max rate (k, M suffixes)\n"
           "  --duration-s S             measured time (default 10)\n"
           "  --warmup-s S               unmeasured time before it (default 2)\n"
           "  --drain-s S                time allowed for in-flight events at the end (default 5)\n"
           "  --window N                 max rate: events a publisher may have in flight, i.e.\n"
           "                             not yet received by the slowest subscriber of their\n"
           "                             campaign (default 4096); lifecycle: requests open\n"
           "                             per requester; streams: streams per requester\n"
           "  --window-bytes N           max rate: bytes of frames a publisher may have in\n"
           "                             flight, the same way (default 2 MiB)\n"
           "  --threads N                worker threads (default 1)\n"
           "  --broker-pid PID           also report this process's CPU use\n"
           "  --spin-us US               fixed rate: spin through waits shorter than this\n"
           "                             (default 2000); 0 sleeps, for a generator that\n"
           "                             shares its CPU with the broker\n"
           "  --campaign-base N          first campaign id / subject number (default: from the\n"
           "                             clock, so that runs never share campaigns)\n"
           "  --event-user-id ID         nexus: emits carry metadata.global_context.user_id ID\n"
           "                             (as a client without accounts would; measures the\n"
           "                             same bytes as a broker stamping the account's id)\n"
           "  --user NAME                nexus: the account to log in as (broker --accounts);\n"
           "                             nats: CONNECT user (default $NEXUS_USER)\n"
           "  --token TOKEN              its token (nexus Hello; nats pass, or auth_token\n"
           "                             without --user). Default $NEXUS_TOKEN, which is\n"
           "                             better: argv is visible to every user in ps\n"
           "  --token-file FILE          read the token from FILE (trailing newline dropped)\n"
           "  --tls                      TLS, the server verified against the system CA store\n"
           "                             (nexus and redis: from the first byte; nats: after\n"
           "                             INFO, as nats-server --tls expects)\n"
           "  --tls-ca FILE              TLS, verified against this CA (PEM; implies --tls;\n"
           "                             default $NEXUS_TLS_CA)\n"
           "  --tls-cert FILE            client certificate (PEM; implies --tls; default\n"
           "                             $NEXUS_TLS_CERT)\n"
           "  --tls-key FILE             its private key (default $NEXUS_TLS_KEY)\n"
           "  --tls-server-name NAME     name the server certificate must carry (default:\n"
           "                             --host; an IP address matches an IP entry)\n"
           "  --no-replay                durable preset: do not read the events back\n"
           "  --json                     print the result as one JSON line on stdout\n"
           "  --quiet                    no progress lines\n"
           "  --preset NAME              a workload of docs/BENCHMARKS.md:\n",
           BENCH_PAYLOAD_MIN);
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        printf("      %-14s %s\n", presets[i].name, presets[i].shape);
    printf("\nExit status: 0 every event delivered once and in order; 1 loss, disorder,\n"
           "duplicates, corruption or a broker error (the run is not a result); 2 usage;\n"
           "3 the broker could not be reached or set up.\n");
}

static int parse_u64(const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end != s && (*end == 'k' || *end == 'K')) {
        v *= 1e3;
        end++;
    } else if (end != s && (*end == 'm' || *end == 'M')) {
        v *= 1e6;
        end++;
    }
    if (errno || end == s || *end || v < (double)min || v > (double)max ||
        v != (double)(uint64_t)v) {
        fprintf(stderr, "nexus-bench: --%s wants an integer in %llu..%llu, got \"%s\"\n", flag,
                (unsigned long long)min, (unsigned long long)max, s);
        return -EINVAL;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_secs(const char *flag, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max)) {
        fprintf(stderr, "nexus-bench: --%s wants seconds in %g..%g, got \"%s\"\n", flag, min, max,
                s);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

static int apply_preset(struct bench_cfg *cfg, const char *name)
{
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        const struct preset *p = &presets[i];
        if (strcmp(p->name, name) != 0)
            continue;
        cfg->publishers = p->publishers;
        cfg->subscribers = p->subscribers;
        cfg->campaigns = p->campaigns;
        cfg->payload_bytes = p->payload_bytes;
        cfg->rate = p->rate;
        if (p->window)
            cfg->window = p->window;
        if (p->window_bytes)
            cfg->window_bytes = p->window_bytes;
        cfg->client_ids = p->client_ids;
        cfg->string_payload = p->string_payload;
        snprintf(cfg->preset, sizeof(cfg->preset), "%s", p->name);
        return 0;
    }
    fprintf(stderr, "nexus-bench: unknown preset \"%s\" (see --help)\n", name);
    return -EINVAL;
}

enum {
    O_BROKER = 256,
    O_HOST,
    O_PORT,
    O_PUBS,
    O_REQS,
    O_SUBS,
    O_CAMPAIGNS,
    O_PAYLOAD,
    O_RATE,
    O_DURATION,
    O_WARMUP,
    O_DRAIN,
    O_WINDOW,
    O_WINDOW_BYTES,
    O_THREADS,
    O_PID,
    O_BASE,
    O_JSON,
    O_QUIET,
    O_PRESET,
    O_HELP,
    O_USER,
    O_EVENT_USER_ID,
    O_TOKEN,
    O_TOKEN_FILE,
    O_TLS,
    O_TLS_CA,
    O_TLS_CERT,
    O_TLS_KEY,
    O_TLS_NAME,
    O_NO_REPLAY,
    O_IDS,
    O_PAYLOAD_KIND,
    O_SPIN,
};

static const struct option longopts[] = {
    {"broker", required_argument, NULL, O_BROKER},
    {"host", required_argument, NULL, O_HOST},
    {"port", required_argument, NULL, O_PORT},
    {"publishers", required_argument, NULL, O_PUBS},
    {"requesters", required_argument, NULL, O_REQS},
    {"subscribers", required_argument, NULL, O_SUBS},
    {"campaigns", required_argument, NULL, O_CAMPAIGNS},
    {"payload-bytes", required_argument, NULL, O_PAYLOAD},
    {"rate", required_argument, NULL, O_RATE},
    {"duration-s", required_argument, NULL, O_DURATION},
    {"warmup-s", required_argument, NULL, O_WARMUP},
    {"drain-s", required_argument, NULL, O_DRAIN},
    {"window", required_argument, NULL, O_WINDOW},
    {"window-bytes", required_argument, NULL, O_WINDOW_BYTES},
    {"threads", required_argument, NULL, O_THREADS},
    {"broker-pid", required_argument, NULL, O_PID},
    {"campaign-base", required_argument, NULL, O_BASE},
    {"json", no_argument, NULL, O_JSON},
    {"quiet", no_argument, NULL, O_QUIET},
    {"preset", required_argument, NULL, O_PRESET},
    {"help", no_argument, NULL, O_HELP},
    {"user", required_argument, NULL, O_USER},
    {"event-user-id", required_argument, NULL, O_EVENT_USER_ID},
    {"token", required_argument, NULL, O_TOKEN},
    {"token-file", required_argument, NULL, O_TOKEN_FILE},
    {"tls", no_argument, NULL, O_TLS},
    {"tls-ca", required_argument, NULL, O_TLS_CA},
    {"tls-cert", required_argument, NULL, O_TLS_CERT},
    {"tls-key", required_argument, NULL, O_TLS_KEY},
    {"tls-server-name", required_argument, NULL, O_TLS_NAME},
    {"no-replay", no_argument, NULL, O_NO_REPLAY},
    {"ids", required_argument, NULL, O_IDS},
    {"payload", required_argument, NULL, O_PAYLOAD_KIND},
    {"spin-us", required_argument, NULL, O_SPIN},
    {NULL, 0, NULL, 0},
};

/* Copies a string option into a fixed field; -EINVAL (printed) when it does not fit. */
static int set_str(char *dst, size_t cap, const char *what, const char *arg)
{
    if (strlen(arg) >= cap) {
        fprintf(stderr, "nexus-bench: %s is too long (at most %zu bytes)\n", what, cap - 1);
        return -EINVAL;
    }
    snprintf(dst, cap, "%s", arg);
    return 0;
}

/* The token of --token-file: the file's first line. */
static int read_token_file(struct bench_cfg *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "nexus-bench: --token-file %s: %s\n", path, strerror(errno));
        return -EINVAL;
    }
    char line[sizeof(cfg->token) + 2];
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    size_t n = ok ? strcspn(line, "\r\n") : 0;
    if (!ok || n == 0 || n >= sizeof(cfg->token)) {
        fprintf(stderr, "nexus-bench: --token-file %s: expected a token of 1..%zu bytes\n", path,
                sizeof(cfg->token) - 1);
        return -EINVAL;
    }
    memcpy(cfg->token, line, n);
    cfg->token[n] = 0;
    return 0;
}

/* Defaults from the environment: $NEXUS_USER, $NEXUS_TOKEN, $NEXUS_TLS_CA/CERT/KEY (any of
 * the TLS ones turns TLS on). Flags override them. */
static int apply_env(struct bench_cfg *cfg)
{
    struct {
        const char *name;
        char *dst;
        size_t cap;
        bool tls;
    } vars[] = {
        {"NEXUS_USER", cfg->user, sizeof(cfg->user), false},
        {"NEXUS_TOKEN", cfg->token, sizeof(cfg->token), false},
        {"NEXUS_TLS_CA", cfg->tls_ca, sizeof(cfg->tls_ca), true},
        {"NEXUS_TLS_CERT", cfg->tls_cert, sizeof(cfg->tls_cert), true},
        {"NEXUS_TLS_KEY", cfg->tls_key, sizeof(cfg->tls_key), true},
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *v = getenv(vars[i].name);
        if (!v || !*v)
            continue;
        if (set_str(vars[i].dst, vars[i].cap, vars[i].name, v) < 0)
            return -EINVAL;
        cfg->tls |= vars[i].tls;
    }
    return 0;
}

static int set_flag(struct bench_cfg *cfg, int opt, const char *arg)
{
    uint64_t v = 0;
    const char *name = NULL;
    for (const struct option *o = longopts; o->name; o++)
        if (o->val == opt)
            name = o->name;
    switch (opt) {
    case O_BROKER:
        if (!strcmp(arg, "nexus"))
            cfg->broker = BENCH_NEXUS;
        else if (!strcmp(arg, "nats"))
            cfg->broker = BENCH_NATS;
        else if (!strcmp(arg, "redis"))
            cfg->broker = BENCH_REDIS;
        else if (!strcmp(arg, "jetstream"))
            cfg->broker = BENCH_JETSTREAM;
        else if (!strcmp(arg, "redis-stream"))
            cfg->broker = BENCH_RSTREAM;
        else {
            fprintf(stderr,
                    "nexus-bench: --broker wants nexus, nats, redis, jetstream or redis-stream, "
                    "got \"%s\"\n",
                    arg);
            return -EINVAL;
        }
        return 0;
    case O_HOST:
        if (strlen(arg) >= sizeof(cfg->host)) {
            fprintf(stderr, "nexus-bench: --host is too long\n");
            return -EINVAL;
        }
        snprintf(cfg->host, sizeof(cfg->host), "%s", arg);
        return 0;
    case O_PORT:
        if (parse_u64(name, arg, 1, 65535, &v) < 0)
            return -EINVAL;
        cfg->port = (uint16_t)v;
        return 0;
    case O_PUBS:
    case O_REQS:
        if (parse_u64(name, arg, 1, BENCH_PUBLISHERS_MAX, &v) < 0)
            return -EINVAL;
        cfg->publishers = (uint32_t)v;
        return 0;
    case O_SUBS:
        if (parse_u64(name, arg, 1, BENCH_SUBSCRIBERS_MAX, &v) < 0)
            return -EINVAL;
        cfg->subscribers = (uint32_t)v;
        return 0;
    case O_CAMPAIGNS:
        if (parse_u64(name, arg, 1, BENCH_CAMPAIGNS_MAX, &v) < 0)
            return -EINVAL;
        cfg->campaigns = (uint32_t)v;
        return 0;
    case O_PAYLOAD:
        if (parse_u64(name, arg, BENCH_PAYLOAD_MIN, BENCH_PAYLOAD_MAX, &v) < 0)
            return -EINVAL;
        cfg->payload_bytes = (uint32_t)v;
        return 0;
    case O_RATE:
        /* 100M events/s is beyond any single machine; the bound keeps the arithmetic exact. */
        if (parse_u64(name, arg, 0, 100000000, &v) < 0)
            return -EINVAL;
        cfg->rate = v;
        return 0;
    case O_DURATION:
        return parse_secs(name, arg, 0.1, 86400, &cfg->duration_s);
    case O_WARMUP:
        return parse_secs(name, arg, 0, 3600, &cfg->warmup_s);
    case O_DRAIN:
        return parse_secs(name, arg, 0.1, 600, &cfg->drain_s);
    case O_WINDOW:
        if (parse_u64(name, arg, 1, 1u << 24, &v) < 0)
            return -EINVAL;
        cfg->window = (uint32_t)v;
        return 0;
    case O_WINDOW_BYTES:
        if (parse_u64(name, arg, 4096, 1ull << 32, &v) < 0)
            return -EINVAL;
        cfg->window_bytes = v;
        return 0;
    case O_THREADS:
        if (parse_u64(name, arg, 1, BENCH_THREADS_MAX, &v) < 0)
            return -EINVAL;
        cfg->threads = (uint32_t)v;
        return 0;
    case O_PID:
        if (parse_u64(name, arg, 1, 1u << 22, &v) < 0)
            return -EINVAL;
        cfg->broker_pid = (int)v;
        return 0;
    case O_SPIN:
        if (parse_u64(name, arg, 0, 1000000, &v) < 0)
            return -EINVAL;
        cfg->spin_below_ns = v * 1000;
        return 0;
    case O_BASE:
        if (parse_u64(name, arg, 1, 1ull << 52, &v) < 0)
            return -EINVAL;
        cfg->campaign_base = v;
        return 0;
    case O_NO_REPLAY:
        cfg->no_replay = true;
        return 0;
    case O_IDS:
        if (strcmp(arg, "broker") && strcmp(arg, "client")) {
            fprintf(stderr, "nexus-bench: --ids wants broker or client, got \"%s\"\n", arg);
            return -EINVAL;
        }
        cfg->client_ids = !strcmp(arg, "client");
        return 0;
    case O_PAYLOAD_KIND:
        if (strcmp(arg, "numbers") && strcmp(arg, "string")) {
            fprintf(stderr, "nexus-bench: --payload wants numbers or string, got \"%s\"\n", arg);
            return -EINVAL;
        }
        cfg->string_payload = !strcmp(arg, "string");
        return 0;
    case O_JSON:
        cfg->json = true;
        return 0;
    case O_QUIET:
        cfg->quiet = true;
        return 0;
    case O_USER:
        return set_str(cfg->user, sizeof(cfg->user), "--user", arg);
    case O_EVENT_USER_ID:
        return set_str(cfg->event_user_id, sizeof(cfg->event_user_id), "--event-user-id", arg);
    case O_TOKEN:
        return set_str(cfg->token, sizeof(cfg->token), "--token", arg);
    case O_TOKEN_FILE:
        return read_token_file(cfg, arg);
    case O_TLS:
        cfg->tls = true;
        return 0;
    case O_TLS_CA:
        cfg->tls = true;
        return set_str(cfg->tls_ca, sizeof(cfg->tls_ca), "--tls-ca", arg);
    case O_TLS_CERT:
        cfg->tls = true;
        return set_str(cfg->tls_cert, sizeof(cfg->tls_cert), "--tls-cert", arg);
    case O_TLS_KEY:
        cfg->tls = true;
        return set_str(cfg->tls_key, sizeof(cfg->tls_key), "--tls-key", arg);
    case O_TLS_NAME:
        return set_str(cfg->tls_server_name, sizeof(cfg->tls_server_name), "--tls-server-name",
                       arg);
    default:
        return 0; /* --preset was applied in the first pass */
    }
}

int bench_options_parse(struct bench_cfg *cfg, int argc, char **argv)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->broker = BENCH_NEXUS;
    snprintf(cfg->host, sizeof(cfg->host), "127.0.0.1");
    cfg->duration_s = 10;
    cfg->warmup_s = 2;
    cfg->drain_s = 5;
    /* 4096 events: at the ~1 ms a loaded loopback round trip takes, enough to sustain about
     * 4M events/s per publisher. 2 MiB: the same for large payloads (about 500 events of
     * 4 KiB), and far below every broker's slow-consumer bound (nexusd 16 MiB per connection,
     * Redis pub/sub 8 MiB soft / 32 MiB hard, NATS 64 MiB), so that the benchmark measures
     * delivery rather than tripping a limit with its own burst: with 4096 events of 4 KiB
     * (17 MB) in flight, nexusd rightly disconnects every subscriber at its 16 MiB bound. */
    cfg->window = 4096;
    cfg->window_bytes = 2u << 20;
    cfg->threads = 1;
    cfg->spin_below_ns = 2000000;
    apply_preset(cfg, "fanout-1");
    snprintf(cfg->preset, sizeof(cfg->preset), "custom");
    if (apply_env(cfg) < 0)
        return -EINVAL;

    /* First pass: the preset, so that later flags override it whatever the order. */
    opterr = 0;
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (opt == O_HELP) {
            usage();
            return 1;
        }
        if (opt == O_PRESET && apply_preset(cfg, optarg) < 0)
            return -EINVAL;
    }
    opterr = 1;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (opt == '?' || opt == ':')
            return -EINVAL;
        if (set_flag(cfg, opt, optarg) < 0)
            return -EINVAL;
    }
    if (optind < argc) {
        fprintf(stderr, "nexus-bench: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return -EINVAL;
    }
    if ((uint64_t)cfg->publishers * cfg->subscribers > BENCH_TABLE_CELLS_MAX ||
        (uint64_t)cfg->publishers * cfg->campaigns > BENCH_TABLE_CELLS_MAX) {
        fprintf(stderr,
                "nexus-bench: publishers x subscribers and publishers x campaigns must "
                "each stay under %u\n",
                BENCH_TABLE_CELLS_MAX);
        return -EINVAL;
    }
    if (cfg->threads > cfg->publishers + cfg->subscribers)
        cfg->threads = cfg->publishers + cfg->subscribers;
    return 0;
}
