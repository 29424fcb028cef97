// SPDX-License-Identifier: Apache-2.0
//
// The parts of nexusctl every command uses (ctl.h): option values, connecting and saying hello,
// turning client-library errors and broker error frames into one stderr line and an exit
// status, and signals. How events are printed is output.c.
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/nexusctl/ctl.h"

volatile sig_atomic_t ctl_interrupts;

int64_t ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ctl_error(const char *fmt, ...)
{
    va_list ap;
    fputs("nexusctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void ctl_info(const struct ctl_opts *o, const char *fmt, ...)
{
    if (!o->verbose)
        return;
    va_list ap;
    fputs("nexusctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void ctl_opts_init(struct ctl_opts *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->host, sizeof(o->host), "127.0.0.1");
    o->port = 7400;
    const char *env = getenv("NEXUS_BROKER");
    if (env && *env && ctl_parse_broker(o, env) < 0)
        ctl_error("ignoring NEXUS_BROKER");
    /* The environment is the recommended way to give a token: argv is visible in ps. */
    const char *v;
    if ((v = getenv("NEXUS_USER")) && *v)
        o->user = v;
    if ((v = getenv("NEXUS_TOKEN")) && *v)
        o->token = v;
    if ((v = getenv("NEXUS_TLS_CA")) && *v)
        o->tls_ca = v, o->tls = true;
    if ((v = getenv("NEXUS_TLS_CERT")) && *v)
        o->tls_cert = v, o->tls = true;
    if ((v = getenv("NEXUS_TLS_KEY")) && *v)
        o->tls_key = v, o->tls = true;
}

/* --token-file: the token is the file's first line (its line end dropped). */
static int read_token_file(struct ctl_opts *o, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        ctl_error("--token-file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[sizeof(o->token_buf) + 2];
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    size_t n = ok ? strcspn(line, "\r\n") : 0;
    if (!ok || n == 0 || n >= sizeof(o->token_buf)) {
        ctl_error("--token-file %s: expected a token of 1 to %zu bytes on the first line", path,
                  sizeof(o->token_buf) - 1);
        return -1;
    }
    memcpy(o->token_buf, line, n);
    o->token_buf[n] = 0;
    o->token = o->token_buf;
    return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v == 0 || v > 65535 || *s == '-' || *s == '+')
        return -1;
    *port = (uint16_t)v;
    return 0;
}

int ctl_parse_broker(struct ctl_opts *o, const char *arg)
{
    const char *host = arg, *port = NULL;
    size_t host_len;
    if (arg[0] == '[') { /* [IPv6]:PORT */
        const char *close = strchr(arg, ']');
        if (!close || (close[1] && close[1] != ':')) {
            ctl_error("--broker %s: expected HOST:PORT or [IPv6]:PORT", arg);
            return -1;
        }
        host = arg + 1;
        host_len = (size_t)(close - host);
        port = close[1] ? close + 2 : NULL;
    } else {
        const char *colon = strrchr(arg, ':');
        if (colon && strchr(arg, ':') != colon) { /* a bare IPv6 address */
            colon = NULL;
        }
        host_len = colon ? (size_t)(colon - arg) : strlen(arg);
        port = colon ? colon + 1 : NULL;
    }
    uint16_t p = o->port;
    if (host_len == 0 || host_len >= sizeof(o->host) || (port && parse_port(port, &p) < 0)) {
        ctl_error("--broker %s: expected HOST:PORT with a port in 1..65535", arg);
        return -1;
    }
    memcpy(o->host, host, host_len);
    o->host[host_len] = 0;
    o->port = p;
    return 0;
}

int ctl_global_option(struct ctl_opts *o, int opt, const char *arg)
{
    switch (opt) {
    case 'b':
    case CTL_OPT_BROKER:
        return ctl_parse_broker(o, arg) < 0 ? -1 : 1;
    case CTL_OPT_HOST:
        if (!*arg || strlen(arg) >= sizeof(o->host)) {
            ctl_error("--host: expected a host name or address");
            return -1;
        }
        snprintf(o->host, sizeof(o->host), "%s", arg);
        return 1;
    case CTL_OPT_PORT:
        if (parse_port(arg, &o->port) < 0) {
            ctl_error("--port %s: expected a port in 1..65535", arg);
            return -1;
        }
        return 1;
    case CTL_OPT_TOKEN:
        o->token = arg;
        return 1;
    case CTL_OPT_TOKEN_FILE:
        return read_token_file(o, arg) < 0 ? -1 : 1;
    case CTL_OPT_ACCOUNT:
        if (!*arg) {
            ctl_error("--account: expected an account name");
            return -1;
        }
        o->user = arg;
        return 1;
    case CTL_OPT_TLS:
        o->tls = true;
        return 1;
    case CTL_OPT_TLS_CA:
        o->tls_ca = arg;
        o->tls = true;
        return 1;
    case CTL_OPT_TLS_CERT:
        o->tls_cert = arg;
        o->tls = true;
        return 1;
    case CTL_OPT_TLS_KEY:
        o->tls_key = arg;
        o->tls = true;
        return 1;
    case CTL_OPT_TLS_NAME:
        o->tls_server_name = arg;
        return 1;
    case CTL_OPT_PRETTY:
        o->pretty = true;
        return 1;
    case CTL_OPT_HUMAN:
        o->human = true;
        return 1;
    case 'v':
    case CTL_OPT_VERBOSE:
        o->verbose = true;
        return 1;
    default:
        return 0;
    }
}

int ctl_parse_i64(const char *flag, const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        ctl_error("%s %s: expected a whole number", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

int ctl_parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        ctl_error("%s %s: expected a non-negative whole number", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

int ctl_parse_duration_ms(const char *flag, const char *s, int64_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double scale = 0;
    if (strcmp(end, "") == 0 || strcmp(end, "ms") == 0)
        scale = 1;
    else if (strcmp(end, "s") == 0)
        scale = 1000;
    else if (strcmp(end, "m") == 0)
        scale = 60000;
    /* A day is far beyond any wait nexusctl has a use for; the bound keeps the cast defined. */
    if (errno || end == s || scale == 0 || !(v >= 0) || v * scale > 86400000.0) {
        ctl_error("%s %s: expected a duration such as 500, 500ms, 2s or 1m (at most a day)", flag,
                  s);
        return -1;
    }
    *ms = (int64_t)(v * scale);
    return 0;
}

int ctl_io_error(int r, const char *what)
{
    switch (r) {
    case 0:
        ctl_error("%s: no answer from the broker in time", what);
        return CTL_EXIT_TIMEOUT;
    case -ENOMEM:
        ctl_error("%s: out of memory", what);
        return CTL_EXIT_INTERNAL;
    case -ECONNRESET:
        ctl_error("%s: the broker closed the connection", what);
        return CTL_EXIT_CONNECTION;
    case -EBADMSG:
        ctl_error("%s: malformed frame from the broker", what);
        return CTL_EXIT_CONNECTION;
    case -ENOSPC:
    case -E2BIG:
        ctl_error("%s: too large to encode", what);
        return CTL_EXIT_USAGE;
    default:
        ctl_error("%s: %s", what, strerror(-r));
        return CTL_EXIT_CONNECTION;
    }
}

static bool slice_is(struct codec_slice s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

int ctl_broker_error(const struct nexus_frame *f, const char *what)
{
    if (f->kind != CODEC_KIND_ERROR) {
        ctl_error("%s: unexpected %s frame from the broker", what, codec_kind_name(f->kind));
        return CTL_EXIT_CONNECTION;
    }
    const struct codec_error_in *e = &f->u.error;
    if (slice_is(e->code, "unauthorized"))
        ctl_error("%s: not authorised: the broker refused the login (unauthorized: %.*s); check "
                  "the account and token (--account or NEXUS_USER; NEXUS_TOKEN, --token-file "
                  "or --token)",
                  what, (int)e->message.len, (const char *)e->message.ptr);
    else if (slice_is(e->code, "permission_denied"))
        ctl_error("%s: permission denied: this account may not do that (permission_denied: "
                  "%.*s)",
                  what, (int)e->message.len, (const char *)e->message.ptr);
    else
        ctl_error("%s: broker error %.*s: %.*s", what, (int)e->code.len, (const char *)e->code.ptr,
                  (int)e->message.len, (const char *)e->message.ptr);
    return CTL_EXIT_REJECTED;
}

int ctl_connect(const struct ctl_opts *o, struct nexus_client **out)
{
    char err[512];
    *out = NULL;
    struct nexus_client *c = nexus_connect(o->host, o->port, err, sizeof(err));
    if (!c) {
        ctl_error("%s (is nexusd running? set the address with --broker HOST:PORT)", err);
        return CTL_EXIT_UNREACHABLE;
    }
    if (o->tls) {
        struct nexus_tls_opts t = {
            .ca_file = o->tls_ca,
            .cert_file = o->tls_cert,
            .key_file = o->tls_key,
            .server_name = o->tls_server_name ? o->tls_server_name : o->host,
            .insecure_skip_verify = false,
        };
        if (nexus_start_tls(c, &t, err, sizeof(err)) < 0) {
            ctl_error("TLS with %s:%u: %s", o->host, o->port, err);
            nexus_close(c);
            return CTL_EXIT_CONNECTION;
        }
        ctl_info(o, "TLS established with %s:%u", o->host, o->port);
    }
    struct nexus_frame f;
    int r = o->user
                ? nexus_hello_user_sync(c, o->user, o->token, "nexusctl", &f, CTL_REPLY_TIMEOUT_MS)
                : nexus_hello_sync(c, o->token, "nexusctl", &f, CTL_REPLY_TIMEOUT_MS);
    if (r != 1) {
        int code = r == -EPROTO ? ctl_broker_error(&f, "hello") : ctl_io_error(r, "hello");
        if (r == 0)
            code = CTL_EXIT_CONNECTION; /* connected, but no welcome: not a Nexus broker */
        if (!o->tls && (r == 0 || r == -ECONNRESET || r == -EBADMSG))
            ctl_error("(if the broker runs with --tls-cert, connect with --tls-ca FILE or --tls)");
        nexus_close(c);
        return code;
    }
    ctl_info(o, "connected to %s:%u (server %.*s, %u shards, connection %" PRIu64 ")", o->host,
             o->port, (int)f.u.welcome.server_version.len,
             (const char *)f.u.welcome.server_version.ptr, f.u.welcome.shard_count,
             f.u.welcome.connection_id);
    *out = c;
    return CTL_EXIT_OK;
}

static void on_signal(int sig)
{
    (void)sig;
    ctl_interrupts++;
}

void ctl_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void ctl_event_state(const struct codec_event_in *ev, char *out, size_t cap)
{
    const uint8_t *p = ev->event_type.ptr;
    uint32_t n = ev->event_type.len, i = n;
    while (i > 0 && p[i - 1] != ':')
        i--;
    size_t len = n - i < cap ? n - i : cap - 1;
    memcpy(out, p + i, len);
    out[len] = 0;
}
