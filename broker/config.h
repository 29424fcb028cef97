// SPDX-License-Identifier: Apache-2.0
//
// Every limit and setting of nexusd in one place ("every limit has a bound and a
// policy"). Each default says why it has its value; docs/OPERATIONS.md lists them with what
// happens when a limit is reached. The configuration is filled once at start-up from flags and
// an optional config file, then read-only: any thread may read it.
#ifndef NEXUS_BROKER_CONFIG_H
#define NEXUS_BROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Shards are indexed by 6 bits in connection ids and interest masks. */
#define CONFIG_SHARDS_MAX 64

enum slow_policy {
    SLOW_DISCONNECT, /* close a subscriber whose queue passes the bound (NATS's behaviour) */
    SLOW_DROP,       /* drop events for it and send a gap notice naming what it missed */
};

struct config {
    char listen_host[256];
    uint16_t listen_port;
    uint32_t shards; /* 0 until resolved: one per online CPU */

    uint32_t frame_bytes_max; /* largest frame accepted from a client */
    uint32_t connections_max; /* whole broker */
    uint32_t subscriptions_per_conn_max;
    uint64_t outbound_bytes_max; /* queued for one connection before slow policy */
    enum slow_policy slow_policy;
    uint32_t ring_capacity; /* messages per shard-to-shard ring (power of two) */
    uint32_t campaigns_per_shard_max;
    uint32_t dedup_window_ms;
    uint32_t dedup_entries_max; /* per campaign */
    uint32_t recv_buffers;      /* provided buffers per shard (power of two) */
    uint32_t recv_buffer_bytes;
    uint32_t drain_ms;        /* SIGTERM: how long queued data may take to flush */
    uint32_t busy_poll_us;    /* keep polling this long after the last work before sleeping */
    uint32_t idle_timeout_ms; /* close connections silent this long; 0 = never */
    /* Deadlines and budgets against clients that hold resources without making progress
     * (docs/OPERATIONS.md, "Limits, deadlines and budgets"). */
    uint32_t hello_timeout_ms;           /* first frame (hello, with a token) within; 0 = off */
    uint32_t frame_timeout_ms;           /* a frame that started must complete within; 0 = off */
    uint32_t ping_interval_ms;           /* ping a connection silent this long; 0 = off */
    uint32_t ping_misses_max;            /* close after this many unanswered pings */
    uint32_t pre_hello_frame_bytes;      /* largest frame before hello; 0 = no separate bound */
    uint32_t pattern_bytes_per_conn_max; /* subscription filter bytes of one connection */
    uint64_t assembly_bytes_max;         /* partial frames being assembled, per shard */
    uint32_t campaign_idle_ms;           /* free idle campaigns after this long; 0 = never */
    uint64_t memory_bytes_max;           /* process RSS past which growth is refused; 0 = off */
    char token[128];                     /* non-empty: Hello with this token required */
    /* Who is speaking (docs/SECURITY.md). */
    char accounts_path[1024]; /* non-empty: accounts file; Hello must name a user + token */
    uint32_t auth_timeout_ms; /* authenticated (TLS handshake + hello) within; 0 = off */
    bool insecure;            /* allow a non-loopback listen without token or accounts */
    char tls_cert[1024];      /* non-empty: clients speak TLS; PEM certificate chain */
    char tls_key[1024];       /* PEM private key of tls_cert */
    char tls_client_ca[1024]; /* non-empty: client certificates verified against this CA */
    /* The WebSocket listener (docs/PROTOCOL.md, "WebSocket"). */
    char ws_listen[280];           /* --ws-listen HOST:PORT; "" = off */
    char ws_host[256];             /* ws_listen's host and port (config_parse fills them) */
    uint16_t ws_port;              /* 0 = no WebSocket listener */
    char ws_allowed_origins[1024]; /* origins browsers may connect from; "" = the same host */
    /* The event log (docs/OPERATIONS.md, "Data directory"). */
    char data_dir[1024];        /* non-empty: every sequenced event is logged under it */
    uint32_t fsync_interval_ms; /* 0: --fsync always (group commit); else interval:MS */
    uint32_t fsync_depth;       /* --fsync always: fdatasyncs of written batches in flight */
    uint64_t segment_bytes;     /* a segment file is rolled past this size */
    bool recover_truncate;      /* --recover truncate: cut a corrupt log at the damage */
    uint64_t retain_bytes;      /* per shard: delete the oldest segments past it (0 = never) */
    char persist[1024];         /* --persist: patterns of the types logged ("" = every one) */
    uint32_t retain_age_s;      /* delete segments whose newest event is older (0 = never) */
    int log_level;
    bool log_json;
    uint16_t metrics_port; /* 0 = metrics off */
    bool pin_cpus;         /* pin shard i to the i-th CPU nexusd may run on */
    char metrics_host[256];
    char config_file[1024]; /* --config FILE (or --check-config FILE); "" without */
    bool check_only;        /* --check-config FILE: validate, print "ok" or the errors, exit */
};

/* A setting another layer owns (the Provider's timeouts, say): a flag and config-file key
 * bound to the layer's own variable, which holds the default until parsed. */
enum config_setting_type { CONFIG_SETTING_U32, CONFIG_SETTING_BOOL };

struct config_setting {
    const char *name; /* flag without "--", and config-file key */
    enum config_setting_type type;
    void *ptr; /* uint32_t * or bool * */
    uint64_t min, max;
    const char *help;
};

/* Adds rows (which must outlive the process) to the flags config_parse knows. Start-up only,
 * before config_parse. Returns 0, or -ENOSPC past CONFIG_SETTINGS_MAX rows in all. */
#define CONFIG_SETTINGS_MAX 64
int config_register(const struct config_setting *rows, size_t n);

/* Fills c with the defaults. */
void config_defaults(struct config *c);

/* Parses argv (and a --config file if named) into c, on top of the defaults. Returns 0 to run,
 * 1 if --help or --version was printed (exit 0), or -EINVAL after printing an error to stderr
 * (exit 2). A config file holds `key = value` lines; `#` starts a comment at the start of a
 * line or after a blank; a value in double quotes is taken as is up to the closing quote.
 * With --check-config FILE, c->check_only is set (even on an error): errors are printed as
 * `FILE:LINE: reason` (every bad line, not only the first), and the caller exits 1 or 0. */
int config_parse(struct config *c, int argc, char **argv);

/* SIGHUP: parses argv again into out, on top of the defaults (the --config file is read
 * anew; flags given after it still win), without changing the settings other layers
 * registered (config_register): those keep their start-up values. Returns 0, or -EINVAL after
 * printing what is wrong to stderr. Main thread. */
int config_reparse(struct config *out, int argc, char **argv);

/* Names, comma-separated into out (cap bytes), the settings whose values differ between a and
 * b, skipping log-level (the one SIGHUP applies), and those of other layers that the last
 * config_reparse read with another value than the one in force. Returns how many. */
int config_changes(const struct config *a, const struct config *b, char *out, size_t cap);

/* Prints the usage text to stdout. */
void config_usage(void);

#endif
