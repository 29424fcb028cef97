// SPDX-License-Identifier: Apache-2.0
//
// The commands that watch the broker: `subscribe` (prints matching events, one JSON line each,
// until Ctrl-C, --count or --timeout) and `stats` (the broker's per-shard counters as JSON).
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/nexusctl/ctl.h"
#include "client/nexusctl/json.h"
#include "codec/stats.h"

static const char *const subscribe_usage =
    "Usage: nexusctl subscribe [PATTERN...] [flags]\n"
    "Subscribes and prints every matching event as a JSON line (event_id, event_type,\n"
    "campaign_id, sequence, timestamp_unix_nanos, correlation_id, stream_seq, code, entity_id,\n"
    "payload {data, versioning}, metadata), and a {\"gap\": {...}} line for events the broker\n"
    "had to drop for this subscriber (--human: one readable line each). Runs until Ctrl-C\n"
    "(exit 0), --count, --timeout, or until stdout is closed by its reader (exit 0:\n"
    "`nexusctl subscribe | head -n1` stops once head has its line).\n"
    "\n"
    "  PATTERN                service:action:vN:state, any segment may be *; none, or the\n"
    "                         single pattern *, matches every type (at most 64)\n"
    "  -c, --campaign N       campaign to watch (default 0: every campaign, the firehose)\n"
    "  -u, --user ID          only events whose metadata.global_context.user_id is ID\n"
    "                         (the account that logs in is --account / NEXUS_USER)\n"
    "  -n, --count N          exit 0 after N events\n"
    "  -t, --timeout T        stop after T (500, 500ms, 2s, 1m): exit 0, or 6 when --count\n"
    "                         events had not all arrived\n"
    "  -f, --from-sequence N  resume: first the campaign's events from sequence N, read from\n"
    "                         the broker's log (a broker with --data-dir; needs --campaign),\n"
    "                         then the live ones, with no gap or repeat between them\n"
    "With --verbose, a line `nexusctl: subscribed ...` on stderr says when events emitted from\n"
    "now on will be delivered.\n"
    "\n"
    "Global flags (see nexusctl --help): --broker, --host, --port, --account, --token,\n"
    "--token-file, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --pretty,\n"
    "--human, --verbose. Exit statuses: see nexusctl --help.\n";

static const char *const stats_usage =
    "Usage: nexusctl stats [flags]\n"
    "Prints the broker's statistics as one JSON object: rss_bytes, one entry per shard under\n"
    "\"shards\" (connections, events_in, events_out, frames_in, frames_out, bytes_queued,\n"
    "slow_disconnects, drops, duplicates, errors, campaigns, subscriptions, ring_depth,\n"
    "paused_reads, requests_success, requests_failed, requests_cancelled, requests_timeout,\n"
    "requests_no_handler, open_streams, heartbeats, handler_losses) and their sums under\n"
    "\"total\" (shard_id left out).\n"
    "\n"
    "Global flags (see nexusctl --help): --broker, --host, --port, --account, --token,\n"
    "--token-file, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --pretty,\n"
    "--verbose. Exit statuses: see nexusctl --help.\n";

/* Flags shared by the parser below. */
struct sub_args {
    int64_t campaign_id;
    const char *user_id;
    uint64_t count;
    int64_t timeout_ms;
    uint64_t from_seq;
    uint64_t ack_corr; /* with --from-sequence: the subscribe's, until its ack (replay first) */
};

/* Parses the command's flags; positional arguments are left in argv[optind..]. Returns 0, 1
 * when --help was printed, or -1 (printed). */
static int parse_observe(struct ctl_opts *o, bool subscribe, struct sub_args *a, int argc,
                         char **argv)
{
    static const struct option opts[] = {
        {"campaign", required_argument, NULL, 'c'},
        {"user", required_argument, NULL, 'u'},
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 't'},
        {"from-sequence", required_argument, NULL, 'f'},
        CTL_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":c:u:n:t:f:hb:v", opts, NULL)) != -1) {
        int g = ctl_global_option(o, opt, optarg);
        if (g < 0)
            return -1;
        if (g > 0)
            continue;
        if (opt == 'h' || opt == CTL_OPT_HELP) {
            fputs(subscribe ? subscribe_usage : stats_usage, stdout);
            return 1;
        }
        if (opt == ':') {
            ctl_error("%s: %s needs a value", argv[0], argv[optind - 1]);
            return -1;
        }
        if (!subscribe || opt == '?') {
            ctl_error("%s: unknown flag %s (see nexusctl %s --help)", argv[0], argv[optind - 1],
                      argv[0]);
            return -1;
        }
        int r = 0;
        switch (opt) {
        case 'c':
            r = ctl_parse_i64("--campaign", optarg, &a->campaign_id);
            break;
        case 'u':
            a->user_id = optarg;
            break;
        case 'n':
            r = ctl_parse_u64("--count", optarg, &a->count);
            break;
        case 't':
            r = ctl_parse_duration_ms("--timeout", optarg, &a->timeout_ms);
            break;
        case 'f':
            r = ctl_parse_u64("--from-sequence", optarg, &a->from_seq);
            break;
        }
        if (r < 0)
            return -1;
    }
    if (!subscribe && optind != argc) {
        ctl_error("stats: unexpected argument %s", argv[optind]);
        return -1;
    }
    if (a->from_seq && a->campaign_id == 0) {
        ctl_error("subscribe: --from-sequence replays one campaign: give --campaign");
        return -1;
    }
    if (subscribe && argc - optind > CODEC_SUBSCRIBE_PATTERNS_MAX) {
        ctl_error("subscribe: at most %d patterns", CODEC_SUBSCRIBE_PATTERNS_MAX);
        return -1;
    }
    return 0;
}

/* Receives and prints events until an end condition. Returns the exit status. */
static int subscribe_loop(const struct ctl_opts *o, struct nexus_client *c, struct sub_args *a)
{
    int64_t deadline = a->timeout_ms >= 0 ? ctl_now_ms() + a->timeout_ms : -1;
    uint64_t got = 0;
    for (;;) {
        if (ctl_interrupts) {
            ctl_info(o, "interrupted after %" PRIu64 " events", got);
            return CTL_EXIT_OK;
        }
        if (a->count && got >= a->count)
            return CTL_EXIT_OK;
        if (deadline >= 0 && ctl_now_ms() >= deadline) {
            if (!a->count)
                return CTL_EXIT_OK;
            ctl_error("subscribe: %" PRIu64 " of %" PRIu64 " events before --timeout", got,
                      a->count);
            return CTL_EXIT_TIMEOUT;
        }
        int slice = CTL_POLL_SLICE_MS;
        if (deadline >= 0 && deadline - ctl_now_ms() < slice)
            slice = (int)(deadline - ctl_now_ms()) + 1;
        struct nexus_frame f;
        int r = nexus_recv(c, &f, slice);
        if (r == 0 && ctl_stdout_closed()) {
            ctl_info(o, "stdout closed after %" PRIu64 " events: stopping", got);
            return CTL_EXIT_OK;
        }
        if (r == 0)
            continue;
        if (r < 0)
            return ctl_io_error(r, "subscribe");
        if (a->ack_corr && f.correlation == a->ack_corr && f.kind != CODEC_KIND_EVENT &&
            f.kind != CODEC_KIND_GAP) {
            if (f.kind != CODEC_KIND_SUBSCRIBE_ACK)
                return ctl_broker_error(&f, "subscribe");
            a->ack_corr = 0;
            ctl_info(o,
                     "replayed %" PRIu64 " events from the log: live from here (subscription "
                     "%" PRIu64 ")",
                     got, f.u.subscription_id);
            continue;
        }
        switch (f.kind) {
        case CODEC_KIND_EVENT:
            got++;
            if ((r = ctl_print_event(o, &f.u.event)) < 0)
                return ctl_output_error(r);
            break;
        case CODEC_KIND_GAP:
            if ((r = ctl_print_gap(o, &f.u.gap)) < 0)
                return ctl_output_error(r);
            break;
        case CODEC_KIND_ERROR:
            /* Not an answer to anything this connection asked: report it and go on. */
            ctl_error("subscribe: broker error %.*s: %.*s", (int)f.u.error.code.len,
                      (const char *)f.u.error.code.ptr, (int)f.u.error.message.len,
                      (const char *)f.u.error.message.ptr);
            break;
        default:
            break;
        }
    }
}

int ctl_cmd_subscribe(struct ctl_opts *o, int argc, char **argv)
{
    struct sub_args a = {.timeout_ms = -1};
    int code = parse_observe(o, true, &a, argc, argv);
    if (code != 0)
        return code > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    const char *const *patterns = (const char *const *)argv + optind;
    uint32_t pattern_count = (uint32_t)(argc - optind);
    ctl_signals_install();
    struct nexus_client *c;
    code = ctl_connect(o, &c);
    if (code != CTL_EXIT_OK)
        return code;
    struct nexus_frame f;
    uint64_t sub_id = 0;
    if (a.from_seq) {
        /* The replay comes before the ack, and may be long: the loop takes both. */
        a.ack_corr = nexus_next_correlation(c);
        int r = nexus_send_subscribe_from(c, a.ack_corr, a.campaign_id, patterns, pattern_count,
                                          a.user_id, a.from_seq);
        if (r == 0)
            r = nexus_flush(c);
        code = r < 0 ? ctl_io_error(r, "subscribe") : subscribe_loop(o, c, &a);
        nexus_close(c);
        return code;
    }
    int r = nexus_subscribe_sync(c, a.campaign_id, patterns, pattern_count, a.user_id, &sub_id, &f,
                                 CTL_REPLY_TIMEOUT_MS);
    if (r == 1) {
        ctl_info(o, "subscribed (subscription %" PRIu64 ", campaign %" PRId64 "%s, %u pattern%s)",
                 sub_id, a.campaign_id, a.campaign_id == 0 ? " = every campaign" : "",
                 pattern_count, pattern_count == 1 ? "" : "s");
        code = subscribe_loop(o, c, &a);
    } else if (r == -EPROTO) {
        code = ctl_broker_error(&f, "subscribe");
    } else {
        code = ctl_io_error(r, "subscribe");
    }
    nexus_close(c);
    return code;
}

/* The counters of one shard, in proto field order, with their proto names. */
#define STATS_FIELDS(X)                                                                            \
    X(connections, connections)                                                                    \
    X(events_in, events_in)                                                                        \
    X(events_out, events_out)                                                                      \
    X(frames_in, frames_in)                                                                        \
    X(frames_out, frames_out)                                                                      \
    X(bytes_queued, bytes_queued)                                                                  \
    X(slow_disconnects, slow_disconnects)                                                          \
    X(drops, drops)                                                                                \
    X(duplicates, duplicates)                                                                      \
    X(errors, errors)                                                                              \
    X(campaigns, campaigns)                                                                        \
    X(subscriptions, subscriptions)                                                                \
    X(ring_depth, ring_depth)                                                                      \
    X(paused_reads, paused_reads)                                                                  \
    X(requests_success, req_success)                                                               \
    X(requests_failed, req_failed)                                                                 \
    X(requests_cancelled, req_cancelled)                                                           \
    X(requests_timeout, req_timeout)                                                               \
    X(requests_no_handler, req_no_handler)                                                         \
    X(open_streams, open_streams)                                                                  \
    X(heartbeats, heartbeats)                                                                      \
    X(handler_losses, handler_losses)                                                              \
    X(media_rooms, media_rooms)                                                                    \
    X(media_peers, media_peers)

static json_t *shard_json(const struct codec_shard_stats *s, bool with_id)
{
    json_t *j = json_object();
    int bad = !j;
    if (j && with_id)
        bad |= json_object_set_new(j, "shard_id", json_integer(s->shard_id));
#define X(name, member)                                                                            \
    if (j)                                                                                         \
        bad |= json_object_set_new(j, #name, json_integer((json_int_t)s->member));
    STATS_FIELDS(X)
#undef X
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Most shards a stats reply is read for: far more than the cores of any machine nexusd runs on. */
#define STATS_SHARDS_MAX 4096

int ctl_cmd_stats(struct ctl_opts *o, int argc, char **argv)
{
    struct sub_args unused = {.timeout_ms = -1};
    int code = parse_observe(o, false, &unused, argc, argv);
    if (code != 0)
        return code > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    struct nexus_client *c;
    code = ctl_connect(o, &c);
    if (code != CTL_EXIT_OK)
        return code;
    struct codec_shard_stats *shards = calloc(STATS_SHARDS_MAX, sizeof(*shards));
    uint64_t corr = nexus_next_correlation(c);
    struct nexus_frame f;
    int r = shards ? nexus_send_stats(c, corr) : -ENOMEM;
    if (r == 0)
        r = nexus_wait_reply(c, corr, &f, CTL_REPLY_TIMEOUT_MS);
    if (r != 1) {
        code = ctl_io_error(r, "stats");
        goto done;
    }
    if (f.kind != CODEC_KIND_STATS_REPLY) {
        code = ctl_broker_error(&f, "stats");
        goto done;
    }
    uint64_t rss = 0;
    int n = codec_stats_reply_decode(f.body.ptr, f.body.len, shards, STATS_SHARDS_MAX, &rss);
    if (n < 0) {
        code = ctl_io_error(-EBADMSG, "stats");
        goto done;
    }
    if (n > STATS_SHARDS_MAX)
        n = STATS_SHARDS_MAX;
    struct codec_shard_stats total = {0};
    json_t *list = json_array();
    for (int i = 0; list && i < n; i++) {
#define X(name, member) total.member += shards[i].member;
        STATS_FIELDS(X)
#undef X
        if (json_array_append_new(list, shard_json(&shards[i], true)) < 0) {
            json_decref(list);
            list = NULL;
        }
    }
    json_t *j = json_object();
    int bad = !j || !list;
    if (!bad) {
        bad |= json_object_set_new(j, "rss_bytes", json_integer((json_int_t)rss));
        bad |= json_object_set_new(j, "shard_count", json_integer(n));
        bad |= json_object_set(j, "shards", list);
        bad |= json_object_set_new(j, "total", shard_json(&total, false));
    }
    if (bad) {
        ctl_error("stats: out of memory");
        code = CTL_EXIT_INTERNAL;
    } else {
        int pr = ctl_json_print(stdout, j, o->pretty);
        code = pr < 0 ? ctl_output_error(pr) : CTL_EXIT_OK;
    }
    json_decref(list);
    json_decref(j);
done:
    free(shards);
    nexus_close(c);
    return code;
}
