// SPDX-License-Identifier: Apache-2.0
//
// nexusctl: the command line client of nexusd (docs/DESIGN.md §7). Parses the global flags given
// before the command name, then hands the rest to the command (which accepts the global flags too).
// The usage text below is the contract for scripts: commands, flags, output and exit statuses.
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "client/nexusctl/ctl.h"

static const char *const usage =
    "Usage: nexusctl [global flags] COMMAND [flags] [args]\n"
    "Command line client of the Nexus event broker. JSON in, JSON out: every event printed is\n"
    "one JSON object on one line of stdout (--human: one readable line); errors are one line\n"
    "on stderr starting \"nexusctl: \".\n"
    "\n"
    "Commands (nexusctl COMMAND --help for each):\n"
    "  emit TYPE          emit one event; prints the acknowledgement\n"
    "  request TYPE       send a request; prints its lifecycle; exit status = its outcome\n"
    "  stream TYPE        open a stream; prints stream events and heartbeats; Ctrl-C cancels\n"
    "  subscribe [PAT..]  print the events that match patterns, a campaign, a user\n"
    "  stats              print the broker's per-shard counters\n"
    "  serve ACTION       serve an action's requests with a command (--exec CMD): stdin the\n"
    "                     request, stdout lines stream events, exit status the outcome\n"
    "\n"
    "Global flags (before or after the command):\n"
    "  -b, --broker HOST:PORT  broker address (default $NEXUS_BROKER, else 127.0.0.1:7400;\n"
    "                          [::1]:7400 for IPv6)\n"
    "      --host HOST         broker host\n"
    "      --port PORT         broker port\n"
    "      --account NAME      the account to log in as, for a broker started with\n"
    "                          --accounts (default $NEXUS_USER). Not --user: that flag of\n"
    "                          emit, request, stream and subscribe is the event's user_id\n"
    "      --token TOKEN       the account's token, or the shared token of a broker started\n"
    "                          with --token (default $NEXUS_TOKEN). Prefer NEXUS_TOKEN or\n"
    "                          --token-file: a command line is visible to every local user\n"
    "                          (ps, /proc)\n"
    "      --token-file FILE   read the token from the first line of FILE\n"
    "      --tls               speak TLS, verifying the broker's certificate against the\n"
    "                          system CA store\n"
    "      --tls-ca FILE       ... against this CA certificate (PEM) instead; implies --tls\n"
    "                          (default $NEXUS_TLS_CA)\n"
    "      --tls-cert FILE     client certificate (PEM), for a broker with --tls-client-ca;\n"
    "                          implies --tls (default $NEXUS_TLS_CERT)\n"
    "      --tls-key FILE      its private key (PEM; default $NEXUS_TLS_KEY)\n"
    "      --tls-server-name NAME  the name the broker's certificate must carry (default:\n"
    "                          the broker host)\n"
    "      --pretty            indent JSON output\n"
    "      --human             events as readable lines instead of JSON: local time, type,\n"
    "                          campaign, sequence, stream_seq, code, user, entity, corr\n"
    "                          (correlation id), id, then the payload data as JSON\n"
    "  -v, --verbose           progress on stderr (connected, subscribed, cancel sent)\n"
    "  -h, --help              this help\n"
    "      --version           print the version\n"
    "\n"
    "JSON conversions: --data and --versioning are JSON objects that become the\n"
    "google.protobuf.Struct fields of common.Payload; --metadata is common.Metadata as JSON\n"
    "(nexusctl emit --help). Numbers are doubles (a Struct holds no other kind); integral\n"
    "values up to 2^53 print without a fraction; NaN and infinities print as the strings\n"
    "\"NaN\", \"Infinity\", \"-Infinity\". Object keys keep their order. Nesting: at most 100.\n"
    "\n"
    "Exit statuses:\n"
    "  0    success (request/stream: ended `success`; subscribe: --count reached, Ctrl-C;\n"
    "       serve: Ctrl-C or SIGTERM). Also when the reader of stdout went away\n"
    "       (`nexusctl subscribe | head -n1`): nexusctl stops quietly\n"
    "  1    internal error (out of memory, stdout not writable for another reason)\n"
    "  2    usage error: unknown flag, bad value, invalid JSON\n"
    "  3    the broker refused a frame (error frame: invalid_event_type, invalid_pattern,\n"
    "       unauthorized, permission_denied, limit_exceeded, ...); its code and message\n"
    "       are printed (unauthorized: the login was refused; permission_denied: the\n"
    "       account may not do that)\n"
    "  4    the broker is unreachable (cannot resolve or connect)\n"
    "  5    the connection was lost, the peer is not a Nexus broker, or TLS failed\n"
    "       (handshake, untrusted certificate, wrong name)\n"
    "  6    a wait ran out: --timeout, an acknowledgement, `cancelled` after a cancel\n"
    "  10   request/stream ended `failed`\n"
    "  11   request/stream ended `cancelled`\n"
    "  12   request/stream ended `timeout` (the broker's limit)\n"
    "  13   request ended `failed` with code no_handler (nothing serves that action)\n"
    "  130  a second Ctrl-C while waiting for `cancelled`\n"
    "\n"
    "Examples:\n"
    "  nexusctl emit order:placed:v1:completed -c 42 -d '{\"total\": 9.5, \"items\": [1, 2]}'\n"
    "  nexusctl subscribe 'order:*:v1:*' -c 42\n"
    "  nexusctl request test:echo:v1 -d '{\"hello\": \"world\"}'\n"
    "  nexusctl stream test:stream_ticks:v1 -d '{\"interval_ms\": 200}'\n"
    "  nexusctl stats --pretty\n"
    "  nexusctl --human subscribe -c 42\n"
    "      14:03:07.512 order:placed:v1:completed campaign=42 seq=1 id=... {\"total\":9.5}\n"
    "  nexusctl serve shop:quote --exec 'jq -c \"{price: (.qty * 2)}\"'\n"
    "  NEXUS_USER=ops NEXUS_TOKEN=$(cat ~/.nexus-token) nexusctl --tls-ca ca.pem \\\n"
    "      -b nexus.example:7400 stats\n"
    "\n"
    "Environment: NEXUS_BROKER, NEXUS_USER, NEXUS_TOKEN, NEXUS_TLS_CA, NEXUS_TLS_CERT,\n"
    "NEXUS_TLS_KEY (any NEXUS_TLS_* turns TLS on); flags override them.\n";

struct command {
    const char *name;
    int (*run)(struct ctl_opts *o, int argc, char **argv);
};

static const struct command commands[] = {
    {"emit", ctl_cmd_emit},           {"request", ctl_cmd_request}, {"stream", ctl_cmd_stream},
    {"subscribe", ctl_cmd_subscribe}, {"stats", ctl_cmd_stats},     {"serve", ctl_cmd_serve},
};

int main(int argc, char **argv)
{
    enum { OPT_VERSION = 2000 };
    static const struct option opts[] = {
        CTL_GLOBAL_OPTIONS,
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    /* A closed stdout must end nexusctl with a status it documents, not kill it with SIGPIPE
     * (141): writes then fail with EPIPE, and ctl_output_error makes that a quiet exit 0. */
    signal(SIGPIPE, SIG_IGN);
    struct ctl_opts o;
    ctl_opts_init(&o);
    opterr = 0;
    int opt;
    /* "+": stop at the command name; the command parses what follows it. */
    while ((opt = getopt_long(argc, argv, "+:b:vh", opts, NULL)) != -1) {
        if (opt == 'h' || opt == CTL_OPT_HELP) {
            fputs(usage, stdout);
            return CTL_EXIT_OK;
        }
        if (opt == OPT_VERSION) {
            printf("nexusctl %s\n", NEXUS_VERSION);
            return CTL_EXIT_OK;
        }
        if (opt == ':') {
            ctl_error("%s needs a value", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
        int g = ctl_global_option(&o, opt, optarg);
        if (g < 0)
            return CTL_EXIT_USAGE;
        if (g == 0) {
            ctl_error("unknown flag %s (see nexusctl --help)", argv[optind - 1]);
            return CTL_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(usage, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        fputs(usage, stdout);
        return CTL_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(&o, argc - optind, argv + optind);
    ctl_error("unknown command %s (commands: emit, request, stream, subscribe, stats, serve)",
              name);
    return CTL_EXIT_USAGE;
}
