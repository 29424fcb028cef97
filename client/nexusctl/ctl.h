// SPDX-License-Identifier: Apache-2.0
//
// What the parts of nexusctl share: global options, exit codes (the contract scripts rely on,
// printed by `nexusctl --help`), the connection and signal set-up, error reporting (session.c)
// and the printed form of delivered events, JSON or --human (output.c). The commands live in
// cmd_publish.c (emit, request, stream), cmd_observe.c (subscribe, stats) and cmd_serve.c
// (serve); main.c parses the global flags and dispatches. Single-threaded: one connection,
// one command per process.
#ifndef NEXUS_CTL_H
#define NEXUS_CTL_H

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "client/nexus_client.h"

/* Exit statuses. Values are stable: scripts test them. */
enum ctl_exit {
    CTL_EXIT_OK = 0,            /* also: stdout closed by its reader (`... | head -n1`) */
    CTL_EXIT_INTERNAL = 1,      /* out of memory, cannot write output (other than EPIPE) */
    CTL_EXIT_USAGE = 2,         /* bad flag, bad argument, bad JSON */
    CTL_EXIT_REJECTED = 3,      /* the broker answered with an error frame */
    CTL_EXIT_UNREACHABLE = 4,   /* cannot resolve or connect to the broker */
    CTL_EXIT_CONNECTION = 5,    /* connection lost, or the peer does not speak the protocol */
    CTL_EXIT_TIMEOUT = 6,       /* nexusctl's own --timeout (or an ack wait) ran out */
    CTL_EXIT_FAILED = 10,       /* request ended `failed` */
    CTL_EXIT_CANCELLED = 11,    /* request ended `cancelled` */
    CTL_EXIT_REQ_TIMEOUT = 12,  /* request ended `timeout` (the broker's limit) */
    CTL_EXIT_NO_HANDLER = 13,   /* request ended `failed` with code no_handler */
    CTL_EXIT_INTERRUPTED = 130, /* a second Ctrl-C while waiting for `cancelled` */
};

/* Global options, given before or after the command name. */
struct ctl_opts {
    char host[256];
    uint16_t port;
    /* Credentials: the account (--account, $NEXUS_USER) and its token (--token,
     * --token-file, $NEXUS_TOKEN). NULL: not given. */
    const char *user;
    const char *token;
    char token_buf[1024]; /* the token read by --token-file */
    /* TLS: on with --tls or any of the files ($NEXUS_TLS_CA/CERT/KEY too). NULL: not given
     * (no CA file: the system store). */
    bool tls;
    const char *tls_ca;
    const char *tls_cert;
    const char *tls_key;
    const char *tls_server_name; /* default: the broker host */
    bool pretty;
    bool human; /* events as readable lines, not JSON */
    bool verbose;
};

/* Option ids of the global flags inside every command's getopt table. */
enum {
    CTL_OPT_BROKER = 1000,
    CTL_OPT_HOST,
    CTL_OPT_PORT,
    CTL_OPT_TOKEN,
    CTL_OPT_TOKEN_FILE,
    CTL_OPT_ACCOUNT,
    CTL_OPT_TLS,
    CTL_OPT_TLS_CA,
    CTL_OPT_TLS_CERT,
    CTL_OPT_TLS_KEY,
    CTL_OPT_TLS_NAME,
    CTL_OPT_PRETTY,
    CTL_OPT_HUMAN,
    CTL_OPT_VERBOSE,
    CTL_OPT_HELP,
};

#define CTL_GLOBAL_OPTIONS                                                                         \
    {"broker", required_argument, NULL, 'b'}, {"host", required_argument, NULL, CTL_OPT_HOST},     \
        {"port", required_argument, NULL, CTL_OPT_PORT},                                           \
        {"token", required_argument, NULL, CTL_OPT_TOKEN},                                         \
        {"token-file", required_argument, NULL, CTL_OPT_TOKEN_FILE},                               \
        {"account", required_argument, NULL, CTL_OPT_ACCOUNT},                                     \
        {"tls", no_argument, NULL, CTL_OPT_TLS},                                                   \
        {"tls-ca", required_argument, NULL, CTL_OPT_TLS_CA},                                       \
        {"tls-cert", required_argument, NULL, CTL_OPT_TLS_CERT},                                   \
        {"tls-key", required_argument, NULL, CTL_OPT_TLS_KEY},                                     \
        {"tls-server-name", required_argument, NULL, CTL_OPT_TLS_NAME},                            \
        {"pretty", no_argument, NULL, CTL_OPT_PRETTY},                                             \
        {"human", no_argument, NULL, CTL_OPT_HUMAN}, {"verbose", no_argument, NULL, 'v'},          \
    {                                                                                              \
        "help", no_argument, NULL, CTL_OPT_HELP                                                    \
    }

/* The default broker address: $NEXUS_BROKER if set, else 127.0.0.1:7400; credentials from
 * $NEXUS_USER and $NEXUS_TOKEN, TLS files from $NEXUS_TLS_CA, $NEXUS_TLS_CERT, $NEXUS_TLS_KEY. */
void ctl_opts_init(struct ctl_opts *o);

/* Applies a global option (id from CTL_GLOBAL_OPTIONS except CTL_OPT_HELP, or the short
 * forms 'b' and 'v', which every command's option string lists). Returns 1 when
 * applied, 0 when opt is not a global option, -1 (message printed) on a bad value. */
int ctl_global_option(struct ctl_opts *o, int opt, const char *arg);

/* Parses HOST:PORT, [IPv6]:PORT or HOST (port kept) into o. Returns 0 or -1 (printed). */
int ctl_parse_broker(struct ctl_opts *o, const char *arg);

/* Number parsers for flags: the whole string must be a number in range. Return 0 or -1
 * (message printed, naming the flag). */
int ctl_parse_i64(const char *flag, const char *s, int64_t *out);
int ctl_parse_u64(const char *flag, const char *s, uint64_t *out);
/* A duration: a number with an optional unit ms (the default), s or m. */
int ctl_parse_duration_ms(const char *flag, const char *s, int64_t *ms);

/* "nexusctl: <message>" on stderr, one line. */
void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same, only with --verbose. */
void ctl_info(const struct ctl_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Connects, starts TLS when asked, and says hello (with the account and token when given).
 * Returns CTL_EXIT_OK with *out set, or the exit status after printing why (a refused login:
 * CTL_EXIT_REJECTED with a message naming the credentials to check). */
int ctl_connect(const struct ctl_opts *o, struct nexus_client **out);

/* Maps a negative return of the client library to an exit status, printing "<what>: why". */
int ctl_io_error(int r, const char *what);

/* Prints a broker error frame ("<what>: broker error CODE: MESSAGE"; unauthorized and
 * permission_denied get a sentence saying what to check) and returns CTL_EXIT_REJECTED. */
int ctl_broker_error(const struct nexus_frame *f, const char *what);

/* Prints a delivered event or an emit_ack on stdout: one JSON line, or with --human one
 * readable line (time, type, campaign, sequence, ids, user, data). Flushed at once. Returns 0,
 * -ENOMEM, or -errno of the failed write (-EPIPE: the reader of stdout went away). */
int ctl_print_event(const struct ctl_opts *o, const struct codec_event_in *ev);
int ctl_print_gap(const struct ctl_opts *o, const struct codec_gap_in *g);

/* The exit status after a print failed with r (<0): a closed stdout (-EPIPE) ends the command
 * quietly with CTL_EXIT_OK — the reader has what it wanted; anything else is reported and is
 * CTL_EXIT_INTERNAL. */
int ctl_output_error(int r);

/* True when stdout is a pipe whose reader has gone (poll reports POLLERR): a command waiting
 * for events stops instead of waiting for the next write to fail. */
bool ctl_stdout_closed(void);

/* The state segment (after the last ':') of an event type slice, as a NUL-terminated copy. */
void ctl_event_state(const struct codec_event_in *ev, char *out, size_t cap);

/* SIGINT / SIGTERM: counted in ctl_interrupts, so that loops can notice them between frames. */
extern volatile sig_atomic_t ctl_interrupts;
void ctl_signals_install(void);

/* Receive slices: a loop waiting on the broker wakes at least this often to see signals. */
#define CTL_POLL_SLICE_MS 100
/* How long a reply (welcome, ack, subscribe ack, stats) may take before nexusctl gives up. */
#define CTL_REPLY_TIMEOUT_MS 10000

int64_t ctl_now_ms(void);

/* Commands: argv[0] is the command name. Each returns the exit status. */
int ctl_cmd_emit(struct ctl_opts *o, int argc, char **argv);
int ctl_cmd_request(struct ctl_opts *o, int argc, char **argv);
int ctl_cmd_stream(struct ctl_opts *o, int argc, char **argv);
int ctl_cmd_subscribe(struct ctl_opts *o, int argc, char **argv);
int ctl_cmd_stats(struct ctl_opts *o, int argc, char **argv);
int ctl_cmd_serve(struct ctl_opts *o, int argc, char **argv);

#endif
