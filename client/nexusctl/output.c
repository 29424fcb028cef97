// SPDX-License-Identifier: Apache-2.0
//
// How nexusctl prints what the broker delivers (ctl.h): events, acknowledgements and gaps as one
// JSON object per line (the default, for scripts) or, with --human, as one readable line each:
//
//   14:03:07.512 order:placed:v1:completed campaign=42 seq=1 user=alice id=341dc8e9-…
//   {"total":42.5}
//
// and what happens when stdout goes away: a reader that closed its end of a pipe (`nexusctl
// subscribe | head -n1`) ends the command quietly with status 0 (main.c ignores SIGPIPE, so the
// write fails with EPIPE instead of killing the process with status 141).
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/nexusctl/ctl.h"
#include "client/nexusctl/json.h"

/* Adds a string field from a slice when it is not empty. */
static int put_slice(json_t *o, const char *key, struct codec_slice s)
{
    if (s.len == 0)
        return 0;
    json_t *v = json_stringn((const char *)s.ptr, s.len);
    if (!v) /* not UTF-8: the broker checks ids, so only a foreign peer could send this */
        v = json_string("(invalid UTF-8)");
    return json_object_set_new(o, key, v);
}

static int print_json_event(const struct ctl_opts *o, const struct codec_event_in *ev)
{
    json_t *j = json_object();
    int bad = !j;
    if (j) {
        bad |= put_slice(j, "event_id", ev->event_id);
        bad |= put_slice(j, "event_type", ev->event_type);
        bad |= json_object_set_new(j, "campaign_id", json_integer(ev->campaign_id));
        bad |= json_object_set_new(j, "sequence", json_integer((json_int_t)ev->sequence));
        bad |=
            json_object_set_new(j, "timestamp_unix_nanos", json_integer(ev->timestamp_unix_nanos));
        bad |= put_slice(j, "correlation_id", ev->correlation_id);
        if (ev->stream_seq)
            bad |= json_object_set_new(j, "stream_seq", json_integer((json_int_t)ev->stream_seq));
        bad |= put_slice(j, "code", ev->code);
        bad |= put_slice(j, "entity_id", ev->entity_id);
        bad |= put_slice(j, "message", ev->message);
        if (!ev->success)
            bad |= json_object_set_new(j, "success", json_false());
        if (ev->has_payload)
            bad |= json_object_set_new(j, "payload",
                                       ctl_payload_to_json(ev->payload.ptr, ev->payload.len));
        if (ev->has_metadata)
            bad |= json_object_set_new(j, "metadata",
                                       ctl_metadata_to_json(ev->metadata.ptr, ev->metadata.len));
    }
    int r = bad ? -ENOMEM : ctl_json_print(stdout, j, o->pretty);
    json_decref(j);
    return r;
}

/* ---- --human ------------------------------------------------------------------------------- */

/* Text from the wire, with control characters shown as '?' so that a line stays one line and
 * nothing sent by a peer can drive the terminal. */
static void put_text(FILE *f, struct codec_slice s)
{
    for (uint32_t i = 0; i < s.len; i++)
        fputc(s.ptr[i] < 0x20 || s.ptr[i] == 0x7f ? '?' : s.ptr[i], f);
}

static void put_field(FILE *f, const char *name, struct codec_slice s)
{
    if (s.len == 0)
        return;
    fprintf(f, " %s=", name);
    put_text(f, s);
}

/* HH:MM:SS.mmm, local time, of a Unix time in nanoseconds (0: now). */
static void put_clock(FILE *f, int64_t unix_nanos)
{
    struct timespec ts;
    if (unix_nanos > 0) {
        ts.tv_sec = (time_t)(unix_nanos / 1000000000);
        ts.tv_nsec = (long)(unix_nanos % 1000000000);
    } else {
        clock_gettime(CLOCK_REALTIME, &ts);
    }
    struct tm tm;
    char buf[16] = "--:--:--";
    if (localtime_r(&ts.tv_sec, &tm))
        strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
    fprintf(f, "%s.%03ld", buf, ts.tv_nsec / 1000000);
}

/* Flushes and turns a write error into -errno. */
static int finish_line(FILE *f)
{
    fputc('\n', f);
    if (fflush(f) != 0 || ferror(f)) {
        int e = errno ? errno : EIO;
        clearerr(f);
        return -e;
    }
    return 0;
}

/* The payload's data (or, when it does not decode, what ctl_payload_to_json says instead), and
 * its versioning, as compact JSON after the fields. */
static int put_payload(FILE *f, const struct codec_event_in *ev)
{
    json_t *p = ctl_payload_to_json(ev->payload.ptr, ev->payload.len);
    if (!p)
        return -ENOMEM;
    json_t *data = json_object_get(p, "data"), *ver = json_object_get(p, "versioning");
    fputc(' ', f);
    if (data)
        ctl_json_write(f, data);
    else if (ver)
        fputs("{}", f);
    else
        ctl_json_write(f, p); /* {} for an empty payload, or why it did not decode */
    if (ver) {
        fputs(" versioning=", f);
        ctl_json_write(f, ver);
    }
    json_decref(p);
    return 0;
}

static int print_human_event(const struct codec_event_in *ev)
{
    FILE *f = stdout;
    errno = 0;
    put_clock(f, ev->timestamp_unix_nanos);
    fputc(' ', f);
    put_text(f, ev->event_type);
    fprintf(f, " campaign=%" PRId64 " seq=%" PRIu64, ev->campaign_id, ev->sequence);
    if (ev->stream_seq)
        fprintf(f, " stream_seq=%" PRIu64, ev->stream_seq);
    put_field(f, "code", ev->code);
    struct codec_slice user = {0};
    if (ev->has_metadata && codec_metadata_user_id(ev->metadata.ptr, ev->metadata.len, &user) == 0)
        put_field(f, "user", user);
    put_field(f, "entity", ev->entity_id);
    put_field(f, "corr", ev->correlation_id);
    if (ev->message.len) { /* acknowledgements: accepted, duplicate */
        fputc(' ', f);
        put_text(f, ev->message);
    }
    put_field(f, "id", ev->event_id);
    if (ev->has_payload && put_payload(f, ev) < 0)
        return -ENOMEM;
    return finish_line(f);
}

int ctl_print_event(const struct ctl_opts *o, const struct codec_event_in *ev)
{
    return o->human ? print_human_event(ev) : print_json_event(o, ev);
}

int ctl_print_gap(const struct ctl_opts *o, const struct codec_gap_in *g)
{
    if (o->human) {
        errno = 0;
        put_clock(stdout, 0);
        printf(" gap campaign=%" PRId64 " seq=%" PRIu64 "..%" PRIu64 " dropped=%" PRIu64,
               g->campaign_id, g->first_sequence, g->last_sequence, g->dropped);
        put_field(stdout, "reason", g->reason);
        return finish_line(stdout);
    }
    json_t *j = json_object(), *gap = json_object();
    int bad = !j || !gap;
    if (!bad) {
        bad |= json_object_set_new(gap, "campaign_id", json_integer(g->campaign_id));
        bad |=
            json_object_set_new(gap, "first_sequence", json_integer((json_int_t)g->first_sequence));
        bad |=
            json_object_set_new(gap, "last_sequence", json_integer((json_int_t)g->last_sequence));
        bad |= json_object_set_new(gap, "dropped", json_integer((json_int_t)g->dropped));
        bad |= put_slice(gap, "reason", g->reason);
        bad |= json_object_set(j, "gap", gap);
    }
    int r = bad ? -ENOMEM : ctl_json_print(stdout, j, o->pretty);
    json_decref(gap);
    json_decref(j);
    return r;
}

int ctl_output_error(int r)
{
    if (r == -EPIPE)
        return CTL_EXIT_OK; /* the reader closed the pipe: it has what it wanted */
    if (r == -ENOMEM)
        ctl_error("out of memory printing an event");
    else
        ctl_error("cannot write to stdout: %s", strerror(-r));
    return CTL_EXIT_INTERNAL;
}

bool ctl_stdout_closed(void)
{
    struct pollfd p = {.fd = STDOUT_FILENO, .events = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
}
