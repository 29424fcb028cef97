// SPDX-License-Identifier: Apache-2.0
//
// nexusd: parse the configuration, check io_uring, start the shards, and turn SIGTERM/SIGINT
// into a bounded drain. The main thread only waits for signals.
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "broker/auth.h"
#include "broker/broker.h"
#include "broker/config.h"
#include "broker/log.h"
#include "broker/store.h"
#include "broker/tls.h"
#include "handlers/campaign.h"
#include "handlers/media.h"
#include "handlers/provider.h"

int main(int argc, char **argv)
{
    struct config cfg;
    config_defaults(&cfg);
    /* Peer resets are handled per connection, and `nexusd --help | head` must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && !strcmp(argv[1], "--hash-token"))
        return auth_hash_token_main();
    provider_register_settings();
    int r = config_parse(&cfg, argc, argv);
    if (r != 0)
        return r > 0 ? 0 : 2;
    log_setup((enum log_level)cfg.log_level, cfg.log_json);

    char msg[512];
    if (broker_probe(msg, sizeof(msg)) < 0) {
        log_error(-1, "%s", msg);
        fprintf(stderr, "nexusd: cannot start: %s\n", msg);
        return 1;
    }
    if (tls_init(&cfg) < 0)
        return 1; /* tls_init said why on stderr */

    /* Block the stop signals in every thread; the main thread takes them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    /* One handler table: the built-in rows, plus the test rows when asked for. */
    static struct handler_row rows[64];
    size_t nrows = 0;
    for (size_t i = 0; i < campaign_row_count; i++)
        rows[nrows++] = campaign_rows[i];
    for (size_t i = 0; i < media_row_count; i++)
        rows[nrows++] = media_rows[i];
    if (provider_test_handlers_enabled())
        for (size_t i = 0; i < provider_test_row_count; i++)
            rows[nrows++] = provider_test_rows[i];
    provider_install(rows, nrows);

    if (auth_init(&cfg) < 0 || store_global_init(cfg.data_dir, broker_shard_count(&cfg)) < 0)
        return 1;
    struct broker *b = broker_start(&cfg);
    if (!b)
        return 1;
    int sig = 0;
    for (;;) {
        sigwait(&set, &sig);
        if (sig != SIGHUP)
            break;
        log_info(-1, "received SIGHUP: reloading the accounts");
        auth_reload();
    }
    log_info(-1, "received %s: draining for at most %u ms", sig == SIGTERM ? "SIGTERM" : "SIGINT",
             cfg.drain_ms);
    broker_stop(b);
    broker_wait(b);
    auth_shutdown();
    log_info(-1, "stopped");
    return 0;
}
