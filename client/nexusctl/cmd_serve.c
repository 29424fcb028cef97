// SPDX-License-Identifier: Apache-2.0
//
// `nexusctl serve ACTION --exec CMD`: an external handler (docs/PROTOCOL.md, "External
// handlers") made of a shell command, like `nats reply`. nexusctl registers for ACTION; for
// each request the broker gives it, it runs CMD with /bin/sh -c in a process group of its own,
// the request's payload data as JSON on stdin and its ids in the environment; each line the
// command prints becomes a `stream` event, and its exit status the outcome: 0 `success` (data:
// the last line), anything else `failed` with the status and the end of its stderr. When the
// request ends without the command (the requester cancelled, the broker's timeout), the
// command's process group is killed (SIGTERM, then SIGKILL). At most --max-inflight commands
// run at once; a request past that is answered at once with `failed` / handler_busy.
//
// One thread, one loop: ppoll on the broker connection and the commands' stdout and stderr
// pipes, with SIGCHLD, SIGINT and SIGTERM blocked except inside ppoll (so none is missed
// between a check and the wait). Replies are acknowledged emits sent without waiting for the
// acknowledgement: a refusal comes back as an error frame and is reported on stderr.
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/nexusctl/ctl.h"
#include "client/nexusctl/json.h"

/* Commands at once by default: a handler written as a shell command is usually not cheap, and
 * a small default keeps a burst of requests from forking a machine to its knees. */
#define SERVE_INFLIGHT_DEFAULT 4
#define SERVE_INFLIGHT_MAX     1024
/* Longest stdout line sent as one stream event; longer ones go in pieces of this size (well
 * under the broker's default 1 MiB frame). */
#define SERVE_LINE_MAX (64 * 1024)
/* The end of a failed command's stderr that goes into the `failed` event. */
#define SERVE_STDERR_TAIL 2048
/* From SIGTERM to SIGKILL for a cancelled command's process group. */
#define SERVE_KILL_GRACE_MS 2000
/* Output read from one command per wake-up, and when it has exited: bounded, so that a
 * command writing without end cannot starve the others (or hold its own end forever). */
#define SERVE_READ_CHUNK   16384
#define SERVE_READ_ROUNDS  16
#define SERVE_DRAIN_ROUNDS 64

static const char *const serve_usage =
    "Usage: nexusctl serve ACTION --exec CMD [flags]\n"
    "Serves the requests of ACTION (service:action, every version) with a shell command, like\n"
    "`nats reply`. For each request nexusctl runs CMD with /bin/sh -c, in a process group of\n"
    "its own, with\n"
    "  stdin    the request's payload data: one JSON object and a newline ({} if none)\n"
    "  env      NEXUS_REQUEST_ID (the request's event id), NEXUS_REQUEST_TYPE,\n"
    "           NEXUS_REQUEST_CAMPAIGN, NEXUS_REQUEST_USER (the requester's user id, if any),\n"
    "           NEXUS_REQUEST_ENTITY; nexusctl's own environment without NEXUS_TOKEN\n"
    "and turns what the command does into the request's lifecycle:\n"
    "  each stdout line    a `stream` event: a line that is a JSON object is the event's data,\n"
    "                      any other line is sent as {\"line\": \"...\"} (a line longer than 64 "
    "KiB\n"
    "                      goes in pieces)\n"
    "  exit status 0       `success`; its data is the last line's (none if nothing printed)\n"
    "  exit status N       `failed`, code command_failed, data {exit_status: N, stderr: the\n"
    "                      last 2 KiB of stderr, message}\n"
    "  killed by a signal  `failed`, code command_killed, data {signal, message}\n"
    "When the request ends without the command (the requester cancels, the broker's timeout:\n"
    "--request-timeout-ms, or timeout_ms in the request's data), its process group is killed:\n"
    "SIGTERM, then SIGKILL after 2 s. Nothing more is sent for that request.\n"
    "\n"
    "  -e, --exec CMD         the command (required)\n"
    "      --max-inflight N   commands running at once (default 4, at most 1024); a request\n"
    "                         past that ends at once `failed` with code handler_busy\n"
    "  -c, --campaign N       serve only this campaign (repeat for more; at most 64; default:\n"
    "                         every campaign)\n"
    "      --streaming        the action's requests are streams (heartbeats, stream timeout)\n"
    "Runs until Ctrl-C or SIGTERM (the running commands are killed and their requests end\n"
    "`failed` with handler_lost; exit 0) or until the connection is lost (exit 5; run it under\n"
    "a supervisor such as systemd to have it come back). With --verbose, one stderr line per\n"
    "request started and ended.\n"
    "\n"
    "Example: nexusctl serve shop:quote --exec 'jq -c \"{price: (.qty * 2)}\"'\n"
    "         nexusctl request shop:quote:v1 -d '{\"qty\": 3}'   # ... success {\"price\": 6}\n"
    "\n"
    "Global flags (see nexusctl --help): --broker, --host, --port, --account, --token,\n"
    "--token-file, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --verbose.\n"
    "Exit statuses: see nexusctl --help.\n";

struct serve_args {
    const char *action;
    const char *cmd;
    bool streaming;
    uint32_t campaign_count;
    int64_t campaigns[CODEC_HANDLER_CAMPAIGNS_MAX];
    uint64_t max_inflight;
};

/* One request being served by one command. */
struct job {
    bool used;
    bool ended; /* the request ended without the command: send nothing more */
    bool exited;
    int status; /* from waitpid, once exited */
    pid_t pid;  /* the command's process, leader of its process group */
    int out_fd, err_fd;
    char id[257];     /* the request's event id (the broker bounds ids to 256 bytes) */
    char action[256]; /* its type without ":requested": service:action:vN */
    int64_t campaign;
    char *line, *last; /* the stdout line being read; the last whole one (SERVE_LINE_MAX each) */
    size_t line_len, last_len;
    bool has_last;
    char tail[SERVE_STDERR_TAIL];
    size_t tail_len;
    int64_t kill_at_ms; /* when SIGKILL is due after a SIGTERM (0: not being killed) */
    uint64_t lines;
};

struct serve_state {
    const struct ctl_opts *o;
    const struct serve_args *a;
    struct nexus_client *c;
    struct job *jobs;
    uint32_t running;
    struct pollfd *fds; /* 1 + 2 per job */
    sigset_t wait_mask; /* the mask inside ppoll: SIGCHLD, SIGINT, SIGTERM deliverable */
};

enum { OPT_STREAMING = 1, OPT_INFLIGHT };

static int serve_flag(struct serve_args *a, int opt, const char *arg)
{
    switch (opt) {
    case 'e':
        a->cmd = arg;
        return 0;
    case OPT_STREAMING:
        a->streaming = true;
        return 0;
    case OPT_INFLIGHT:
        if (ctl_parse_u64("--max-inflight", arg, &a->max_inflight) < 0)
            return -1;
        if (a->max_inflight < 1 || a->max_inflight > SERVE_INFLIGHT_MAX) {
            ctl_error("--max-inflight %s: expected 1 to %d", arg, SERVE_INFLIGHT_MAX);
            return -1;
        }
        return 0;
    case 'c':
        if (a->campaign_count == CODEC_HANDLER_CAMPAIGNS_MAX) {
            ctl_error("serve: at most %d campaigns", CODEC_HANDLER_CAMPAIGNS_MAX);
            return -1;
        }
        return ctl_parse_i64("--campaign", arg, &a->campaigns[a->campaign_count++]);
    default:
        ctl_error("serve: unknown flag (see nexusctl serve --help)");
        return -1;
    }
}

/* Returns 0, 1 when --help was printed, or -1 (printed). */
static int parse_serve(struct ctl_opts *o, struct serve_args *a, int argc, char **argv)
{
    static const struct option opts[] = {
        {"exec", required_argument, NULL, 'e'},
        {"campaign", required_argument, NULL, 'c'},
        {"streaming", no_argument, NULL, OPT_STREAMING},
        {"max-inflight", required_argument, NULL, OPT_INFLIGHT},
        CTL_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":e:c:hb:v", opts, NULL)) != -1) {
        int g = ctl_global_option(o, opt, optarg);
        if (g < 0)
            return -1;
        if (g > 0)
            continue;
        if (opt == 'h' || opt == CTL_OPT_HELP) {
            fputs(serve_usage, stdout);
            return 1;
        }
        if (opt == ':') {
            ctl_error("serve: %s needs a value", argv[optind - 1]);
            return -1;
        }
        if (opt == '?') {
            ctl_error("serve: unknown flag %s (see nexusctl serve --help)", argv[optind - 1]);
            return -1;
        }
        if (serve_flag(a, opt, optarg) < 0)
            return -1;
    }
    const char *colon = optind == argc - 1 ? strchr(argv[optind], ':') : NULL;
    if (!colon || colon == argv[optind] || !colon[1] || strchr(colon + 1, ':')) {
        ctl_error("serve: expected one ACTION, service:action (see nexusctl serve --help)");
        return -1;
    }
    a->action = argv[optind];
    if (!a->cmd || !*a->cmd) {
        ctl_error("serve: --exec CMD is required");
        return -1;
    }
    return 0;
}

/* Registers for the action. Returns CTL_EXIT_OK or the exit status (printed). */
static int serve_register(struct serve_state *st)
{
    static struct codec_register reg; /* ~4 KiB: not on the stack */
    memset(&reg, 0, sizeof(reg));
    reg.count = 1;
    reg.specs[0].action.ptr = (const uint8_t *)st->a->action;
    reg.specs[0].action.len = (uint32_t)strlen(st->a->action);
    reg.specs[0].streaming = st->a->streaming;
    reg.specs[0].campaign_count = st->a->campaign_count;
    memcpy(reg.specs[0].campaigns, st->a->campaigns, sizeof(reg.specs[0].campaigns));
    uint64_t corr = nexus_next_correlation(st->c);
    struct nexus_frame f;
    int r = nexus_send_register(st->c, corr, &reg);
    if (r == 0)
        r = nexus_wait_reply(st->c, corr, &f, CTL_REPLY_TIMEOUT_MS);
    if (r != 1)
        return ctl_io_error(r, "serve: register");
    if (f.kind != CODEC_KIND_REGISTER_ACK)
        return ctl_broker_error(&f, "serve: register");
    ctl_info(st->o, "serving %s with `%s` (at most %" PRIu64 " at once)", st->a->action, st->a->cmd,
             st->a->max_inflight);
    return CTL_EXIT_OK;
}

/* ---- replies ------------------------------------------------------------------------------- */

/* Replaces bytes that are not UTF-8 with '?' (a Struct string must be UTF-8, or the broker
 * refuses the whole event). */
static void utf8_fix(char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xc2);
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (ok && len == 3) /* overlong forms and UTF-16 surrogates */
            ok = !(c == 0xe0 && (unsigned char)s[i + 1] < 0xa0) &&
                 !(c == 0xed && (unsigned char)s[i + 1] >= 0xa0);
        if (ok && len == 4)
            ok = c <= 0xf4 && !(c == 0xf0 && (unsigned char)s[i + 1] < 0x90) &&
                 !(c == 0xf4 && (unsigned char)s[i + 1] >= 0x90);
        if (!ok) {
            s[i++] = '?';
            continue;
        }
        i += len;
    }
}

/* The data of an output line: the line itself when it is a JSON object, else {"line": text}.
 * text is modified (made UTF-8). Returns a new reference or NULL (out of memory). */
static json_t *line_data(char *text, size_t len)
{
    json_t *j = ctl_json_parse_text(text, len);
    if (json_is_object(j))
        return j;
    json_decref(j);
    utf8_fix(text, len);
    return json_pack("{s:s%}", "line", text, len);
}

/* Emits `action:state` for request id with data (may be NULL), acknowledged but not waited
 * for. Returns 0 or a negative errno of the connection. */
static int send_reply(struct serve_state *st, const struct job *j, const char *state, json_t *data)
{
    char type[300], err[512];
    snprintf(type, sizeof(type), "%s:%s", j->action, state);
    uint8_t *payload = NULL, *md = NULL;
    size_t payload_len = 0, md_len = 0;
    if (data && ctl_payload_pack(data, NULL, &payload, &payload_len, err, sizeof(err)) < 0) {
        ctl_error("serve: request %s: %s (sent without data)", j->id, err);
        payload = NULL;
    }
    if (ctl_metadata_pack(NULL, NULL, j->id, &md, &md_len, err, sizeof(err)) < 0) {
        free(payload);
        return -ENOMEM;
    }
    struct codec_emit_in e;
    nexus_emit_init(&e, type, j->campaign, NULL, payload, payload_len);
    e.metadata.ptr = md;
    e.metadata.len = (uint32_t)md_len;
    e.has_metadata = true;
    e.correlation = nexus_next_correlation(st->c); /* a refusal then names nothing pending */
    int r = nexus_send_emit(st->c, &e);
    free(payload);
    free(md);
    return r == -ENOSPC || r == -E2BIG ? 0 : r; /* too large: dropped, the connection is fine */
}

/* A refused request (busy, cannot start the command): `failed` with code and message. */
static int send_failed(struct serve_state *st, const struct job *j, const char *code,
                       const char *message)
{
    json_t *d = json_pack("{s:s, s:s}", "code", code, "message", message);
    int r = send_reply(st, j, "failed", d);
    json_decref(d);
    return r;
}

/* ---- commands ------------------------------------------------------------------------------ */

/* A memory file holding the request's payload data as one JSON line, for the command's stdin
 * (a file, not a pipe: a large payload cannot block nexusctl on a command that never reads).
 * Returns the fd (at offset 0) or -1. */
static int stdin_file(const struct codec_event_in *ev)
{
    int fd = memfd_create("nexusctl-serve-stdin", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    json_t *p = ev->has_payload ? ctl_payload_to_json(ev->payload.ptr, ev->payload.len) : NULL;
    json_t *data = json_object_get(p, "data");
    json_t *empty = data ? NULL : json_object();
    int dup_fd = dup(fd);
    FILE *f = dup_fd >= 0 ? fdopen(dup_fd, "w") : NULL;
    int ok = f && (data || empty) && ctl_json_print(f, data ? data : empty, false) == 0;
    if (f)
        ok &= fclose(f) == 0;
    else if (dup_fd >= 0)
        close(dup_fd);
    json_decref(p);
    json_decref(empty);
    if (!ok || lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void env_slice(const char *name, struct codec_slice s)
{
    char buf[1100]; /* ids and entity ids are at most 1024 bytes (docs/PROTOCOL.md) */
    size_t n = s.len < sizeof(buf) - 1 ? s.len : sizeof(buf) - 1;
    if (n) /* an absent field is a NULL slice */
        memcpy(buf, s.ptr, n);
    buf[n] = 0;
    setenv(name, buf, 1);
}

/* In the child: its own process group, default signals, the request in stdin and the
 * environment, then /bin/sh -c CMD. Never returns. */
static void child_exec(const char *cmd, const struct codec_event_in *ev, int in, int out, int err)
{
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* nexusctl ignores it; a shell pipeline must not */
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(126);
    env_slice("NEXUS_REQUEST_ID", ev->event_id);
    env_slice("NEXUS_REQUEST_TYPE", ev->event_type);
    env_slice("NEXUS_REQUEST_ENTITY", ev->entity_id);
    struct codec_slice user = {0};
    if (ev->has_metadata)
        codec_metadata_user_id(ev->metadata.ptr, ev->metadata.len, &user);
    env_slice("NEXUS_REQUEST_USER", user);
    char camp[32];
    snprintf(camp, sizeof(camp), "%" PRId64, ev->campaign_id);
    setenv("NEXUS_REQUEST_CAMPAIGN", camp, 1);
    unsetenv("NEXUS_TOKEN"); /* the handler's credential is not the command's business */
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    fprintf(stderr, "nexusctl serve: /bin/sh: %s\n", strerror(errno));
    _exit(127);
}

/* Starts the command for request ev in job j (its id, action, campaign already set). Returns
 * 0, or -1 with nothing left running. */
static int job_spawn(struct serve_state *st, struct job *j, const struct codec_event_in *ev)
{
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    int in = stdin_file(ev);
    if (in < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
        goto fail;
    fflush(NULL);
    j->pid = fork();
    if (j->pid == 0)
        child_exec(st->a->cmd, ev, in, out[1], err[1]);
    if (j->pid < 0)
        goto fail;
    setpgid(j->pid, j->pid); /* also here: a kill must not race the child's own setpgid */
    close(in);
    close(out[1]);
    close(err[1]);
    j->out_fd = out[0];
    j->err_fd = err[0];
    fcntl(j->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(j->err_fd, F_SETFL, O_NONBLOCK);
    return 0;
fail:
    ctl_error("serve: request %s: cannot start the command: %s", j->id, strerror(errno));
    int fds[] = {in, out[0], out[1], err[0], err[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return -1;
}

static void job_free(struct serve_state *st, struct job *j)
{
    if (j->out_fd >= 0)
        close(j->out_fd);
    if (j->err_fd >= 0)
        close(j->err_fd);
    free(j->line);
    free(j->last);
    memset(j, 0, sizeof(*j));
    j->out_fd = j->err_fd = -1;
    st->running--;
}

/* SIGTERM to the command's process group; SIGKILL follows after the grace period. */
static void job_kill(struct job *j, const char *why, const struct ctl_opts *o)
{
    j->ended = true;
    if (j->exited || j->kill_at_ms)
        return;
    ctl_info(o, "request %s %s: killing the command (process group %d)", j->id, why, (int)j->pid);
    kill(-j->pid, SIGTERM);
    j->kill_at_ms = ctl_now_ms() + SERVE_KILL_GRACE_MS;
}

static struct job *job_find(struct serve_state *st, struct codec_slice id)
{
    for (uint64_t i = 0; i < st->a->max_inflight; i++) {
        struct job *j = &st->jobs[i];
        if (j->used && id.len == strlen(j->id) && memcmp(id.ptr, j->id, id.len) == 0)
            return j;
    }
    return NULL;
}

/* A request: starts its command, or answers handler_busy. Returns 0 or a negative errno of
 * the connection. */
static int on_request(struct serve_state *st, const struct codec_event_in *ev)
{
    const char *s = (const char *)ev->event_type.ptr;
    size_t alen = strlen(st->a->action), tlen = ev->event_type.len - strlen(":requested");
    if (ev->event_type.len <= alen || strncmp(s, st->a->action, alen) != 0 || s[alen] != ':' ||
        ev->event_id.len == 0 || ev->event_id.len > 256 || tlen > 255 || job_find(st, ev->event_id))
        return 0; /* not one of ours (the broker routes only ACTION here), or seen already */
    struct job slot = {.out_fd = -1, .err_fd = -1, .campaign = ev->campaign_id};
    memcpy(slot.id, ev->event_id.ptr, ev->event_id.len);
    memcpy(slot.action, s, tlen);
    struct job *j = NULL;
    for (uint64_t i = 0; !j && i < st->a->max_inflight; i++)
        j = st->jobs[i].used ? NULL : &st->jobs[i];
    if (!j) { /* --max-inflight commands are running */
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "nexusctl serve is busy: --max-inflight %" PRIu64 " commands already running",
                 st->a->max_inflight);
        ctl_error("serve: request %s refused: --max-inflight %" PRIu64 " commands running", slot.id,
                  st->a->max_inflight);
        return send_failed(st, &slot, "handler_busy", msg);
    }
    *j = slot;
    j->line = malloc(SERVE_LINE_MAX);
    j->last = malloc(SERVE_LINE_MAX);
    if (!j->line || !j->last || job_spawn(st, j, ev) < 0) {
        free(j->line);
        free(j->last);
        memset(j, 0, sizeof(*j));
        return send_failed(st, &slot, "command_not_started",
                           "nexusctl serve could not start "
                           "the command (see its stderr)");
    }
    j->used = true;
    st->running++;
    ctl_info(st->o, "request %s: command started (pid %d)", j->id, (int)j->pid);
    return 0;
}

/* ---- output -------------------------------------------------------------------------------- */

/* A whole stdout line (or a SERVE_LINE_MAX piece of one): a `stream` event, and the data of
 * `success` if it is the last. Returns 0 or a negative errno of the connection. */
static int line_done(struct serve_state *st, struct job *j)
{
    size_t n = j->line_len;
    if (n && j->line[n - 1] == '\r')
        n--;
    memcpy(j->last, j->line, n);
    j->last_len = n;
    j->has_last = true;
    j->line_len = 0;
    j->lines++;
    if (j->ended)
        return 0;
    char *copy = malloc(n + 1); /* line_data modifies its text */
    if (!copy)
        return -ENOMEM;
    memcpy(copy, j->last, n);
    copy[n] = 0;
    json_t *d = line_data(copy, n);
    int r = send_reply(st, j, "stream", d);
    json_decref(d);
    free(copy);
    return r;
}

static int take_stdout(struct serve_state *st, struct job *j, const char *buf, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(buf, '\n', n);
        size_t take = nl ? (size_t)(nl - buf) : n;
        size_t room = SERVE_LINE_MAX - j->line_len;
        bool whole = nl && take <= room;
        if (take > room)
            take = room;
        memcpy(j->line + j->line_len, buf, take);
        j->line_len += take;
        buf += take + (whole ? 1 : 0);
        n -= take + (whole ? 1 : 0);
        if (whole || j->line_len == SERVE_LINE_MAX) {
            int r = line_done(st, j);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

/* Keeps the last SERVE_STDERR_TAIL bytes of the command's stderr. */
static void take_stderr(struct job *j, const char *buf, size_t n)
{
    if (n >= SERVE_STDERR_TAIL) {
        memcpy(j->tail, buf + n - SERVE_STDERR_TAIL, SERVE_STDERR_TAIL);
        j->tail_len = SERVE_STDERR_TAIL;
        return;
    }
    size_t keep = j->tail_len + n > SERVE_STDERR_TAIL ? SERVE_STDERR_TAIL - n : j->tail_len;
    memmove(j->tail, j->tail + j->tail_len - keep, keep);
    memcpy(j->tail + keep, buf, n);
    j->tail_len = keep + n;
}

/* Reads what the command wrote on fd (its stdout or stderr), at most rounds chunks. At end of
 * file the fd is closed (and an unfinished last line counts as a line). Returns 0 or a
 * negative errno of the connection. */
static int job_read(struct serve_state *st, struct job *j, int *fd, int rounds)
{
    char buf[SERVE_READ_CHUNK];
    for (int i = 0; i < rounds && *fd >= 0; i++) {
        ssize_t n = read(*fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n > 0) {
            int r = fd == &j->out_fd ? take_stdout(st, j, buf, (size_t)n) : 0;
            if (fd == &j->err_fd)
                take_stderr(j, buf, (size_t)n);
            if (r < 0)
                return r;
            continue;
        }
        close(*fd);
        *fd = -1;
        if (fd == &j->out_fd && j->line_len)
            return line_done(st, j);
    }
    return 0;
}

/* The `failed` data of a command that did not exit 0. */
static json_t *failure_data(const struct job *j, char *tail, size_t tail_len)
{
    utf8_fix(tail, tail_len);
    while (tail_len && (tail[tail_len - 1] == '\n' || tail[tail_len - 1] == '\r'))
        tail_len--;
    const char *last_line = tail + tail_len;
    while (last_line > tail && last_line[-1] != '\n')
        last_line--;
    char msg[SERVE_STDERR_TAIL + 64];
    if (WIFEXITED(j->status)) {
        int st = WEXITSTATUS(j->status);
        snprintf(msg, sizeof(msg), "exit status %d%s%.*s", st, tail_len ? ": " : "",
                 (int)(tail + tail_len - last_line), last_line);
        return json_pack("{s:s, s:s, s:i, s:s%}", "code", "command_failed", "message", msg,
                         "exit_status", st, "stderr", tail, tail_len);
    }
    int sig = WTERMSIG(j->status);
    snprintf(msg, sizeof(msg), "killed by signal %d (%s)", sig, strsignal(sig));
    return json_pack("{s:s, s:s, s:i, s:s%}", "code", "command_killed", "message", msg, "signal",
                     sig, "stderr", tail, tail_len);
}

/* The command has exited: reads what is left of its output, answers the request (unless it
 * ended already) and frees the job. Returns 0 or a negative errno of the connection. */
static int job_finish(struct serve_state *st, struct job *j)
{
    int r = job_read(st, j, &j->out_fd, SERVE_DRAIN_ROUNDS);
    if (r == 0)
        r = job_read(st, j, &j->err_fd, SERVE_DRAIN_ROUNDS);
    bool ok = WIFEXITED(j->status) && WEXITSTATUS(j->status) == 0;
    ctl_info(st->o, "request %s: command %s %d after %" PRIu64 " lines%s", j->id,
             WIFEXITED(j->status) ? "exited" : "killed by signal",
             WIFEXITED(j->status) ? WEXITSTATUS(j->status) : WTERMSIG(j->status), j->lines,
             j->ended ? " (the request had ended)" : "");
    if (r == 0 && !j->ended) {
        json_t *d = NULL;
        if (ok && j->has_last)
            d = line_data(j->last, j->last_len);
        else if (!ok)
            d = failure_data(j, j->tail, j->tail_len);
        r = send_reply(st, j, ok ? "success" : "failed", d);
        json_decref(d);
    }
    job_free(st, j);
    return r;
}

/* Reaps exited commands and finishes them; sends SIGKILL where the grace period ran out.
 * Returns 0 or a negative errno of the connection. */
static int reap_jobs(struct serve_state *st)
{
    int64_t now = ctl_now_ms();
    for (uint64_t i = 0; i < st->a->max_inflight; i++) {
        struct job *j = &st->jobs[i];
        if (!j->used)
            continue;
        if (!j->exited && waitpid(j->pid, &j->status, WNOHANG) == j->pid)
            j->exited = true;
        if (j->exited) {
            int r = job_finish(st, j);
            if (r < 0)
                return r;
        } else if (j->kill_at_ms && now >= j->kill_at_ms) {
            kill(-j->pid, SIGKILL);
            j->kill_at_ms = INT64_MAX;
        }
    }
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------------ */

/* Handles one frame from the broker. Returns -1 to go on, or an exit status. */
static int on_frame(struct serve_state *st, const struct nexus_frame *f)
{
    switch (f->kind) {
    case CODEC_KIND_EVENT: {
        const struct codec_event_in *ev = &f->u.event;
        char state[32];
        ctl_event_state(ev, state, sizeof(state));
        int r = 0;
        if (strcmp(state, "requested") == 0) {
            r = on_request(st, ev);
        } else if (strcmp(state, "cancelled") == 0 || strcmp(state, "timeout") == 0) {
            struct job *j = job_find(st, ev->correlation_id);
            if (j)
                job_kill(j, state, st->o);
        }
        return r < 0 ? ctl_io_error(r, "serve") : -1;
    }
    case CODEC_KIND_ERROR: /* a reply refused: the request had ended, or a permission */
        ctl_error("serve: broker error %.*s: %.*s", (int)f->u.error.code.len,
                  (const char *)f->u.error.code.ptr, (int)f->u.error.message.len,
                  (const char *)f->u.error.message.ptr);
        return -1;
    case CODEC_KIND_GOAWAY:
        ctl_error("serve: the broker is shutting down");
        return -1;
    default: /* acknowledgements of the replies */
        return -1;
    }
}

/* Handles the frames the client has, reading the socket for at most wait_ms first. Returns -1
 * to go on, or an exit status. */
static int drain_broker(struct serve_state *st, int wait_ms)
{
    for (;;) {
        struct nexus_frame f;
        int r = nexus_recv(st->c, &f, wait_ms);
        if (r == 0)
            return -1;
        if (r < 0)
            return ctl_io_error(r, "serve");
        int code = on_frame(st, &f);
        if (code >= 0)
            return code;
        wait_ms = 0; /* 0: frames already read, without touching the socket */
    }
}

/* Kills every running command (SIGTERM, SIGKILL after the grace period), reaps them, and
 * returns code. Their requests end `failed` with handler_lost once the connection closes. */
static int serve_stop(struct serve_state *st, int code)
{
    for (uint64_t i = 0; i < st->a->max_inflight; i++)
        if (st->jobs[i].used)
            job_kill(&st->jobs[i], "left (nexusctl is stopping)", st->o);
    int64_t deadline = ctl_now_ms() + SERVE_KILL_GRACE_MS;
    for (uint64_t i = 0; i < st->a->max_inflight; i++) {
        struct job *j = &st->jobs[i];
        while (j->used && !j->exited && waitpid(j->pid, &j->status, WNOHANG) == 0) {
            if (ctl_now_ms() >= deadline)
                kill(-j->pid, SIGKILL);
            usleep(10000);
        }
        if (j->used)
            job_free(st, j);
    }
    return code;
}

/* The pollfd set: the broker, then each command's open stdout / stderr. Returns the count. */
static nfds_t build_fds(struct serve_state *st)
{
    nfds_t n = 0;
    st->fds[n++] = (struct pollfd){.fd = nexus_fd(st->c), .events = POLLIN};
    for (uint64_t i = 0; i < st->a->max_inflight; i++) {
        struct job *j = &st->jobs[i];
        if (j->used && j->out_fd >= 0)
            st->fds[n++] = (struct pollfd){.fd = j->out_fd, .events = POLLIN};
        if (j->used && j->err_fd >= 0)
            st->fds[n++] = (struct pollfd){.fd = j->err_fd, .events = POLLIN};
    }
    return n;
}

/* Reads the commands whose pipes ppoll found ready. Returns 0 or a negative errno. */
static int read_ready(struct serve_state *st, nfds_t n)
{
    for (nfds_t k = 1; k < n; k++) {
        if (!st->fds[k].revents)
            continue;
        for (uint64_t i = 0; i < st->a->max_inflight; i++) {
            struct job *j = &st->jobs[i];
            int *fd = !j->used                     ? NULL
                      : j->out_fd == st->fds[k].fd ? &j->out_fd
                      : j->err_fd == st->fds[k].fd ? &j->err_fd
                                                   : NULL;
            int r = fd ? job_read(st, j, fd, SERVE_READ_ROUNDS) : 0;
            if (r < 0)
                return r;
            if (fd)
                break;
        }
    }
    return 0;
}

static int serve_loop(struct serve_state *st)
{
    for (;;) {
        if (ctl_interrupts)
            return serve_stop(st, CTL_EXIT_OK);
        int r = reap_jobs(st);
        int code = r < 0 ? ctl_io_error(r, "serve") : drain_broker(st, 0);
        if (code < 0 && (r = nexus_flush(st->c)) < 0)
            code = ctl_io_error(r, "serve");
        if (code >= 0)
            return serve_stop(st, code);
        nfds_t n = build_fds(st);
        /* Commands being killed are checked every 100 ms; everything else wakes ppoll. */
        struct timespec ts = {.tv_sec = 0, .tv_nsec = CTL_POLL_SLICE_MS * 1000000L};
        int pr = ppoll(st->fds, n, &ts, &st->wait_mask);
        if (pr < 0 && errno != EINTR)
            return serve_stop(st, ctl_io_error(-errno, "serve: ppoll"));
        /* On a timeout the socket is read too: over TLS, bytes the SSL layer already holds
         * do not make the socket readable. */
        if ((pr == 0 || st->fds[0].revents) && (code = drain_broker(st, 1)) >= 0)
            return serve_stop(st, code);
        if (pr <= 0)
            continue;
        if ((r = read_ready(st, n)) < 0)
            return serve_stop(st, ctl_io_error(r, "serve"));
    }
}

static void on_sigchld(int sig)
{
    (void)sig; /* only there so that SIGCHLD interrupts ppoll */
}

int ctl_cmd_serve(struct ctl_opts *o, int argc, char **argv)
{
    struct serve_args a = {.max_inflight = SERVE_INFLIGHT_DEFAULT};
    int code = parse_serve(o, &a, argc, argv);
    if (code != 0)
        return code > 0 ? CTL_EXIT_OK : CTL_EXIT_USAGE;
    ctl_signals_install();
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigchld;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    struct serve_state st = {.o = o, .a = &a};
    sigprocmask(SIG_BLOCK, &block, &st.wait_mask);
    st.jobs = calloc(a.max_inflight, sizeof(*st.jobs));
    st.fds = calloc(1 + 2 * a.max_inflight, sizeof(*st.fds));
    if (!st.jobs || !st.fds) {
        ctl_error("serve: out of memory");
        code = CTL_EXIT_INTERNAL;
    } else {
        for (uint64_t i = 0; i < a.max_inflight; i++)
            st.jobs[i].out_fd = st.jobs[i].err_fd = -1;
        code = ctl_connect(o, &st.c);
    }
    if (code == CTL_EXIT_OK)
        code = serve_register(&st);
    if (code == CTL_EXIT_OK)
        code = serve_loop(&st);
    if (st.c)
        nexus_close(st.c);
    free(st.jobs);
    free(st.fds);
    return code;
}
