// SPDX-License-Identifier: Apache-2.0
//
// The commands that send an event: `emit` (one event, acknowledged unless --no-ack),
// `request` and `stream` (a `requested` event, then its lifecycle until the terminal event:
// `started`, `stream`/`heartbeat`, and exactly one of success, failed, cancelled, timeout).
// Ctrl-C (or SIGTERM) during a request or stream sends `S:A:vN:cancel` naming the request in
// metadata.global_context.correlation_id and waits for the broker's `cancelled`; a second
// Ctrl-C gives up at once. The exit status reflects the terminal event (ctl.h).
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/nexusctl/ctl.h"
#include "client/nexusctl/json.h"
#include "codec/structpb.h"

enum pub_cmd { PUB_EMIT, PUB_REQUEST, PUB_STREAM };

/* Everything the three commands read from their flags, and what they build from it. */
struct pub_args {
    enum pub_cmd cmd;
    char *type; /* malloc'd; the broker checks it (a bad one is its invalid_event_type) */
    int64_t campaign_id;
    const char *event_id, *entity_id, *user_id;
    json_t *data, *versioning, *metadata;
    bool no_ack;
    int64_t timeout_ms;   /* -1: none */
    uint64_t count;       /* stream: cancel after this many stream events (0: never) */
    int64_t heartbeat_ms; /* stream: data.heartbeat_ms to set, -1: leave data as it is */
    uint8_t *payload, *md;
    size_t payload_len, md_len;
};

/* How long to wait for `cancelled` once the cancel is sent. */
#define CANCEL_WAIT_MS 10000

static const char *const emit_usage =
    "Usage: nexusctl emit TYPE [flags]\n"
    "Emits one event and prints the broker's acknowledgement as a JSON line (event_id,\n"
    "event_type, campaign_id, sequence, timestamp_unix_nanos, message accepted|duplicate).\n"
    "\n"
    "  TYPE                   service:action:vN:state, e.g. order:placed:v1:completed\n";

static const char *const request_usage =
    "Usage: nexusctl request TYPE [flags]\n"
    "Sends a request (TYPE service:action:vN, or with :requested) and prints, one JSON line\n"
    "each, the acknowledgement and the lifecycle events as they arrive (started, stream,\n"
    "heartbeat, then the terminal event). Exits when the terminal event arrives, with a status\n"
    "that names it: 0 success, 10 failed, 11 cancelled, 12 timeout, 13 no_handler.\n"
    "Ctrl-C sends a cancel for the request and waits for `cancelled`.\n";

static const char *const stream_usage =
    "Usage: nexusctl stream TYPE [flags]\n"
    "Opens a stream (TYPE service:action:vN, or with :requested) and prints the acknowledgement,\n"
    "then every lifecycle event (started, stream events with stream_seq, heartbeats with\n"
    "stream_count and age_ms) as a JSON line, until the terminal event. Ctrl-C sends\n"
    "S:A:vN:cancel with metadata.global_context.correlation_id = the request's event id and\n"
    "waits for `cancelled` (exit 11); a second Ctrl-C exits 130 at once. When the reader of\n"
    "stdout goes away (`| head -n 5`), nexusctl exits 0 and the broker cancels the stream,\n"
    "whose requester is gone.\n";

static const char *const event_flags_usage =
    "\n"
    "  -c, --campaign N       campaign id (default 0, the default campaign)\n"
    "  -i, --id ID            event id (default: the broker assigns a UUIDv4)\n"
    "  -e, --entity ID        entity id\n"
    "  -d, --data JSON        Payload.data, a JSON object (google.protobuf.Struct)\n"
    "      --versioning JSON  Payload.versioning, a JSON object\n"
    "  -m, --metadata JSON    Metadata as JSON: {\"global_context\": {\"user_id\",\n"
    "                         \"campaign_id\", \"correlation_id\", \"session_id\", \"device_id\",\n"
    "                         \"source\"}, \"features\": [..], \"tags\": [..],\n"
    "                         \"service_specific\"|\"scheduling\"|\"custom_rules\"|\"audit\"|\n"
    "                         \"knowledge_graph\": {..}}\n"
    "  -u, --user ID          sets metadata.global_context.user_id (the account that logs\n"
    "                         in is --account / NEXUS_USER)\n"
    "  JSON is the text itself, @FILE to read a file, or - to read stdin.\n";

static void print_usage(enum pub_cmd cmd)
{
    fputs(cmd == PUB_EMIT ? emit_usage : cmd == PUB_REQUEST ? request_usage : stream_usage, stdout);
    fputs(event_flags_usage, stdout);
    if (cmd == PUB_EMIT)
        fputs("      --no-ack           fire and forget (errors are still reported)\n"
              "  -t, --timeout T        wait at most T for the acknowledgement (default 10s)\n",
              stdout);
    else
        fputs("  -t, --timeout T        give up after T (500, 500ms, 2s, 1m): exit 6\n", stdout);
    if (cmd == PUB_STREAM)
        fputs("  -n, --count N          cancel after N stream events; exit 0 once cancelled\n"
              "      --heartbeat-ms MS  ask for heartbeats every MS (sets data.heartbeat_ms)\n",
              stdout);
    fputs("\nGlobal flags (see nexusctl --help): --broker, --host, --port, --account, --token,\n"
          "--token-file, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --pretty,\n"
          "--human, --verbose. Exit statuses: see nexusctl --help.\n",
          stdout);
}

enum { OPT_VERSIONING = 1, OPT_NO_ACK, OPT_HEARTBEAT };

static int set_json(json_t **slot, const char *arg, const char *what)
{
    char err[512];
    json_decref(*slot);
    *slot = ctl_json_parse(arg, what, err, sizeof(err));
    if (!*slot) {
        ctl_error("%s", err);
        return -1;
    }
    return 0;
}

/* Normalises a request type: service:action:vN gets :requested; any other state is refused. */
static int request_type(struct pub_args *a, const char *arg)
{
    int colons = 0;
    for (const char *p = arg; *p; p++)
        colons += *p == ':';
    const char *state = strrchr(arg, ':');
    if (colons == 2) {
        if (asprintf(&a->type, "%s:requested", arg) < 0)
            a->type = NULL;
    } else if (colons == 3 && strcmp(state + 1, "requested") == 0) {
        a->type = strdup(arg);
    } else {
        ctl_error("%s: expected service:action:vN or service:action:vN:requested", arg);
        return -1;
    }
    if (!a->type) {
        ctl_error("out of memory");
        return -1;
    }
    return 0;
}

/* Applies one of the command's own flags. Returns 0, -1 (printed), or 1 when opt is not a flag
 * of this command. */
static int apply_flag(struct pub_args *a, int opt, const char *arg)
{
    switch (opt) {
    case 'c':
        return ctl_parse_i64("--campaign", arg, &a->campaign_id);
    case 'i':
        a->event_id = arg;
        return 0;
    case 'e':
        a->entity_id = arg;
        return 0;
    case 'd':
        return set_json(&a->data, arg, "--data");
    case OPT_VERSIONING:
        return set_json(&a->versioning, arg, "--versioning");
    case 'm':
        return set_json(&a->metadata, arg, "--metadata");
    case 'u':
        a->user_id = arg;
        return 0;
    case 't':
        return ctl_parse_duration_ms("--timeout", arg, &a->timeout_ms);
    case OPT_NO_ACK:
        if (a->cmd != PUB_EMIT)
            return 1;
        a->no_ack = true;
        return 0;
    case 'n':
        if (a->cmd != PUB_STREAM)
            return 1;
        return ctl_parse_u64("--count", arg, &a->count);
    case OPT_HEARTBEAT:
        if (a->cmd != PUB_STREAM)
            return 1;
        if (ctl_parse_i64("--heartbeat-ms", arg, &a->heartbeat_ms) < 0)
            return -1;
        if (a->heartbeat_ms < 0) {
            ctl_error("--heartbeat-ms %s: expected a non-negative number", arg);
            return -1;
        }
        return 0;
    default:
        return 1;
    }
}

/* After the flags: the event type, and the payload and metadata bytes. Returns 0 or -1. */
static int finish_args(struct pub_args *a, const char *type)
{
    if (a->cmd == PUB_EMIT) {
        a->type = strdup(type);
        if (!a->type) {
            ctl_error("out of memory");
            return -1;
        }
    } else if (request_type(a, type) < 0) {
        return -1;
    }
    if (a->heartbeat_ms >= 0) {
        if (!a->data)
            a->data = json_object();
        if (!json_is_object(a->data) ||
            json_object_set_new(a->data, "heartbeat_ms", json_real((double)a->heartbeat_ms)) < 0) {
            ctl_error("--heartbeat-ms: --data must be a JSON object");
            return -1;
        }
    }
    char err[512];
    if ((a->data || a->versioning) && ctl_payload_pack(a->data, a->versioning, &a->payload,
                                                       &a->payload_len, err, sizeof(err)) < 0) {
        ctl_error("%s", err);
        return -1;
    }
    if (ctl_metadata_pack(a->metadata, a->user_id, NULL, &a->md, &a->md_len, err, sizeof(err)) <
        0) {
        ctl_error("%s", err);
        return -1;
    }
    return 0;
}

/* Parses the command's flags. Returns 0, 1 when --help was printed, or -1 (printed). */
static int parse_args(struct ctl_opts *o, struct pub_args *a, int argc, char **argv)
{
    static const struct option opts[] = {
        {"campaign", required_argument, NULL, 'c'},
        {"id", required_argument, NULL, 'i'},
        {"entity", required_argument, NULL, 'e'},
        {"data", required_argument, NULL, 'd'},
        {"versioning", required_argument, NULL, OPT_VERSIONING},
        {"metadata", required_argument, NULL, 'm'},
        {"user", required_argument, NULL, 'u'},
        {"timeout", required_argument, NULL, 't'},
        {"no-ack", no_argument, NULL, OPT_NO_ACK},
        {"count", required_argument, NULL, 'n'},
        {"heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT},
        CTL_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    optind = 0; /* GNU getopt: start afresh on the command's arguments */
    opterr = 0; /* errors are reported below, in nexusctl's format */
    int opt;
    while ((opt = getopt_long(argc, argv, ":c:i:e:d:m:u:t:n:hb:v", opts, NULL)) != -1) {
        int r = ctl_global_option(o, opt, optarg);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        if (opt == 'h' || opt == CTL_OPT_HELP) {
            print_usage(a->cmd);
            return 1;
        }
        if (opt == ':') {
            ctl_error("%s: %s needs a value", argv[0], argv[optind - 1]);
            return -1;
        }
        r = opt == '?' ? 1 : apply_flag(a, opt, optarg);
        if (r < 0)
            return -1;
        if (r > 0) {
            ctl_error("%s: unknown flag %s (see nexusctl %s --help)", argv[0], argv[optind - 1],
                      argv[0]);
            return -1;
        }
    }
    if (optind != argc - 1) {
        ctl_error("%s: expected exactly one event type (see nexusctl %s --help)", argv[0], argv[0]);
        return -1;
    }
    return finish_args(a, argv[optind]);
}

static void pub_args_free(struct pub_args *a)
{
    free(a->type);
    json_decref(a->data);
    json_decref(a->versioning);
    json_decref(a->metadata);
    free(a->payload);
    free(a->md);
}

static void emit_fill(const struct pub_args *a, struct codec_emit_in *e)
{
    nexus_emit_init(e, a->type, a->campaign_id, a->event_id, a->payload, a->payload_len);
    if (a->entity_id) {
        e->entity_id.ptr = (const uint8_t *)a->entity_id;
        e->entity_id.len = (uint32_t)strlen(a->entity_id);
    }
    if (a->md) {
        e->metadata.ptr = a->md;
        e->metadata.len = (uint32_t)a->md_len;
        e->has_metadata = true;
    }
}

/* Fire and forget: errors come back with correlation 0; a ping after the emit is answered only
 * once the broker has read the emit, so every error it caused has arrived by then. */
static int emit_no_ack(const struct ctl_opts *o, struct nexus_client *c, struct codec_emit_in *e)
{
    struct nexus_frame f;
    e->correlation = 0;
    int r = nexus_send_emit(c, e);
    uint64_t corr = nexus_next_correlation(c);
    if (r == 0)
        r = nexus_send_ping(c, corr, corr);
    if (r == 0)
        r = nexus_wait_reply(c, corr, &f, CTL_REPLY_TIMEOUT_MS);
    if (r != 1)
        return ctl_io_error(r, "emit");
    while ((r = nexus_recv(c, &f, 1)) == 1)
        if (f.kind == CODEC_KIND_ERROR)
            return ctl_broker_error(&f, "emit");
    ctl_info(o, "emit sent (no acknowledgement asked)");
    return CTL_EXIT_OK;
}

int ctl_cmd_emit(struct ctl_opts *o, int argc, char **argv)
{
    struct pub_args a = {.cmd = PUB_EMIT, .timeout_ms = CTL_REPLY_TIMEOUT_MS, .heartbeat_ms = -1};
    int code = parse_args(o, &a, argc, argv);
    if (code != 0) {
        pub_args_free(&a);
        return code > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    }
    struct nexus_client *c;
    code = ctl_connect(o, &c);
    if (code != CTL_EXIT_OK) {
        pub_args_free(&a);
        return code;
    }
    struct codec_emit_in e;
    emit_fill(&a, &e);
    if (a.no_ack) {
        code = emit_no_ack(o, c, &e);
    } else {
        struct nexus_frame f;
        int r = nexus_emit_sync(c, &e, &f, (int)a.timeout_ms);
        if (r == 1)
            code = (r = ctl_print_event(o, &f.u.event)) < 0 ? ctl_output_error(r) : CTL_EXIT_OK;
        else if (r == -EPROTO)
            code = ctl_broker_error(&f, "emit");
        else
            code = ctl_io_error(r, "emit");
    }
    nexus_close(c);
    pub_args_free(&a);
    return code;
}

/* ---- request and stream ------------------------------------------------------------------- */

/* A request in flight. */
struct req_state {
    const struct ctl_opts *o;
    struct pub_args *a;
    struct nexus_client *c;
    char id[300];          /* the request's event id, as acknowledged */
    uint64_t cancel_corr;  /* correlation of the cancel we sent, 0 before */
    int64_t cancel_due_ms; /* when to stop waiting for `cancelled` */
    bool cancel_by_count;  /* the cancel came from --count, not from a signal */
    uint64_t streams;      /* stream events so far */
};

/* Sends S:A:vN:cancel naming the request. Returns 0 or an exit status. */
static int send_cancel(struct req_state *st)
{
    /* type is S:A:vN:requested (request_type made sure): the cancel is S:A:vN:cancel. */
    const char *state = strrchr(st->a->type, ':');
    char *type;
    if (asprintf(&type, "%.*s:cancel", (int)(state - st->a->type), st->a->type) < 0) {
        ctl_error("cancel: out of memory");
        return CTL_EXIT_INTERNAL;
    }
    uint8_t *md;
    size_t md_len;
    char err[512];
    /* The cancel carries the request's metadata (user id, session, …), correlation id set. */
    if (ctl_metadata_pack(st->a->metadata, st->a->user_id, st->id, &md, &md_len, err, sizeof(err)) <
        0) {
        ctl_error("cancel: %s", err);
        free(type);
        return CTL_EXIT_INTERNAL;
    }
    struct codec_emit_in e;
    nexus_emit_init(&e, type, st->a->campaign_id, NULL, NULL, 0);
    e.metadata.ptr = md;
    e.metadata.len = (uint32_t)md_len;
    e.has_metadata = true;
    e.correlation = st->cancel_corr = nexus_next_correlation(st->c);
    int r = nexus_send_emit(st->c, &e);
    if (r == 0)
        r = nexus_flush(st->c);
    free(md);
    if (r < 0) {
        free(type);
        return ctl_io_error(r, "cancel");
    }
    st->cancel_due_ms = ctl_now_ms() + CANCEL_WAIT_MS;
    ctl_info(st->o, "sent %s for request %s", type, st->id);
    free(type);
    return 0;
}

/* The exit status for a terminal event, printing one stderr line unless it is success (or the
 * cancel --count asked for). Returns -1 when the state is not terminal. */
static int terminal_status(const struct req_state *st, const struct codec_event_in *ev)
{
    char state[32];
    ctl_event_state(ev, state, sizeof(state));
    if (strcmp(state, "success") == 0)
        return CTL_EXIT_OK;
    if (strcmp(state, "cancelled") == 0) {
        if (st->cancel_by_count)
            return CTL_EXIT_OK;
        ctl_error("request %s cancelled", st->id);
        return CTL_EXIT_CANCELLED;
    }
    bool failed = strcmp(state, "failed") == 0;
    if (!failed && strcmp(state, "timeout") != 0)
        return -1;
    struct structpb_value msg = {0};
    if (!ev->has_payload ||
        structpb_payload_get(ev->payload.ptr, ev->payload.len, "message", &msg) != 1 ||
        msg.kind != STRUCTPB_STRING)
        msg.len = 0;
    ctl_error("request %s ended %s%s%.*s%s%s%.*s", st->id, state, ev->code.len ? " (" : "",
              (int)ev->code.len, (const char *)ev->code.ptr, ev->code.len ? ")" : "",
              msg.len ? ": " : "", (int)msg.len, (const char *)msg.ptr);
    if (!failed)
        return CTL_EXIT_REQ_TIMEOUT;
    if (ev->code.len == 10 && memcmp(ev->code.ptr, "no_handler", 10) == 0)
        return CTL_EXIT_NO_HANDLER;
    return CTL_EXIT_FAILED;
}

/* Handles one frame. Returns -1 to go on, or the exit status. */
static int on_frame(struct req_state *st, const struct nexus_frame *f)
{
    switch (f->kind) {
    case CODEC_KIND_EVENT: {
        const struct codec_event_in *ev = &f->u.event;
        size_t idl = strlen(st->id);
        if (ev->correlation_id.len != idl || memcmp(ev->correlation_id.ptr, st->id, idl) != 0)
            return -1; /* not ours (this connection subscribes to nothing, so: never) */
        int pr = ctl_print_event(st->o, ev);
        if (pr < 0)
            return ctl_output_error(pr);
        int t = terminal_status(st, ev);
        if (t >= 0)
            return t;
        char state[32];
        ctl_event_state(ev, state, sizeof(state));
        if (strcmp(state, "stream") == 0 && ++st->streams == st->a->count && !st->cancel_corr) {
            st->cancel_by_count = true;
            int r = send_cancel(st);
            if (r != 0)
                return r;
        }
        return -1;
    }
    case CODEC_KIND_EMIT_ACK:
        return -1; /* the cancel's acknowledgement */
    case CODEC_KIND_ERROR:
        if (st->cancel_corr && f->correlation == st->cancel_corr) {
            /* The request ended before the cancel reached it: its terminal event is on the
             * way (or here already), so keep waiting for it. */
            ctl_info(st->o, "cancel refused: %.*s", (int)f->u.error.message.len,
                     (const char *)f->u.error.message.ptr);
            return -1;
        }
        return ctl_broker_error(f, "request");
    case CODEC_KIND_GAP: {
        int pr = ctl_print_gap(st->o, &f->u.gap);
        return pr < 0 ? ctl_output_error(pr) : -1;
    }
    default:
        return -1;
    }
}

static int request_loop(struct req_state *st)
{
    int64_t deadline = st->a->timeout_ms >= 0 ? ctl_now_ms() + st->a->timeout_ms : -1;
    int seen_interrupts = 0;
    for (;;) {
        if (ctl_interrupts != seen_interrupts) {
            seen_interrupts = ctl_interrupts;
            if (st->cancel_corr && !st->cancel_by_count) {
                ctl_error("interrupted again: not waiting for request %s to be cancelled", st->id);
                return CTL_EXIT_INTERRUPTED;
            }
            st->cancel_by_count = false;
            if (!st->cancel_corr) {
                int r = send_cancel(st);
                if (r != 0)
                    return r;
            }
        }
        int64_t now = ctl_now_ms();
        if (deadline >= 0 && now >= deadline) {
            ctl_error("request %s: no terminal event within --timeout", st->id);
            return CTL_EXIT_TIMEOUT;
        }
        if (st->cancel_corr && now >= st->cancel_due_ms) {
            ctl_error("request %s: cancel sent, but no terminal event within %d s", st->id,
                      CANCEL_WAIT_MS / 1000);
            return CTL_EXIT_TIMEOUT;
        }
        struct nexus_frame f;
        int r = nexus_recv(st->c, &f, CTL_POLL_SLICE_MS);
        if (r == 0 && ctl_stdout_closed()) {
            /* Nobody reads on: closing the connection makes the broker cancel the request. */
            ctl_info(st->o, "stdout closed: leaving request %s", st->id);
            return CTL_EXIT_OK;
        }
        if (r == 0)
            continue;
        if (r < 0)
            return ctl_io_error(r, "request");
        int code = on_frame(st, &f);
        if (code >= 0)
            return code;
    }
}

static int run_request(struct ctl_opts *o, enum pub_cmd cmd, int argc, char **argv)
{
    struct pub_args a = {.cmd = cmd, .timeout_ms = -1, .heartbeat_ms = -1};
    int code = parse_args(o, &a, argc, argv);
    if (code != 0) {
        pub_args_free(&a);
        return code > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    }
    ctl_signals_install();
    struct req_state st = {.o = o, .a = &a};
    code = ctl_connect(o, &st.c);
    if (code != CTL_EXIT_OK) {
        pub_args_free(&a);
        return code;
    }
    struct codec_emit_in e;
    emit_fill(&a, &e);
    struct nexus_frame f;
    int r = nexus_emit_sync(st.c, &e, &f, CTL_REPLY_TIMEOUT_MS);
    if (r == 1) {
        snprintf(st.id, sizeof(st.id), "%.*s", (int)f.u.event.event_id.len,
                 (const char *)f.u.event.event_id.ptr);
        int pr = ctl_print_event(o, &f.u.event);
        code = pr < 0 ? ctl_output_error(pr) : request_loop(&st);
    } else if (r == -EPROTO) {
        code = ctl_broker_error(&f, cmd == PUB_STREAM ? "stream" : "request");
    } else {
        code = ctl_io_error(r, cmd == PUB_STREAM ? "stream" : "request");
    }
    nexus_close(st.c);
    pub_args_free(&a);
    return code;
}

int ctl_cmd_request(struct ctl_opts *o, int argc, char **argv)
{
    return run_request(o, PUB_REQUEST, argc, argv);
}

int ctl_cmd_stream(struct ctl_opts *o, int argc, char **argv)
{
    return run_request(o, PUB_STREAM, argc, argv);
}
