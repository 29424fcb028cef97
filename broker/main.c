// SPDX-License-Identifier: Apache-2.0
//
// nexusd: parse the configuration (or only check it: --check-config), check io_uring, claim
// the listen address (one nexusd per address: portlock.h), start the shards, then serve the
// signals on the main thread, which does nothing else: SIGTERM/SIGINT drain and exit, SIGHUP
// reloads what can change without a restart, SIGUSR1/SIGUSR2 are logged and ignored
// (docs/OPERATIONS.md, "Signals"). It also speaks systemd's notify protocol when started by it
// (NOTIFY_SOCKET): READY=1 once the listeners are bound and every shard has recovered its log,
// STOPPING=1 when the drain begins, and WATCHDOG=1 every half watchdog period (WATCHDOG_USEC)
// while every shard's loop is turning, so that a stuck shard gets the process restarted.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "broker/auth.h"
#include "broker/broker.h"
#include "broker/config.h"
#include "broker/log.h"
#include "broker/metrics.h"
#include "broker/portlock.h"
#include "broker/store.h"
#include "broker/tls.h"
#include "handlers/campaign.h"
#include "handlers/media.h"
#include "handlers/provider.h"

/* --check-config: what start-up would refuse, short of binding and opening the data
 * directory: the settings (config_parse checked them), the accounts file, the TLS files.
 * Returns the exit status: 0 after printing "ok", 1 after printing what is wrong. */
static int check_config(const struct config *cfg)
{
    int bad = 0;
    log_setup(LOG_WARN, 0); /* tls_init's kernel TLS note is not a finding */
    if (cfg->accounts_path[0]) {
        char err[768];
        struct accounts *a = accounts_load(cfg->accounts_path, err, sizeof(err));
        if (!a) {
            fprintf(stderr, "%s: --accounts %s\n", cfg->config_file, err);
            bad = 1;
        }
        accounts_unref(a);
    }
    if (tls_init(cfg) < 0)
        bad = 1; /* tls_init said why on stderr */
    if (!bad)
        printf("ok\n");
    return bad;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sets the log level, logging the change at a level that shows under the old or new one. */
static void set_log_level(enum log_level to)
{
    enum log_level from = log_get_level();
    if (to == from) {
        log_info(-1, "SIGHUP: log level stays %s", log_level_name(to));
        return;
    }
    enum log_level lo = to < from ? to : from;
    log_set_level(lo);
    log_write(lo > LOG_INFO ? lo : LOG_INFO, -1, "SIGHUP: log level %s -> %s", log_level_name(from),
              log_level_name(to));
    log_set_level(to);
}

/* SIGHUP: the log level from the --config file (flags given after it still win) and the
 * accounts file are reloaded; any other setting the file changes is named as waiting for a
 * restart. */
static void reload(const struct config *cfg, int argc, char **argv)
{
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
               (unsigned long long)(mono_ns() / 1000));
    log_info(-1, "received SIGHUP: reloading the log level (--config) and the accounts");
    if (!cfg->config_file[0]) {
        log_info(-1, "SIGHUP: no --config file: the log level stays %s",
                 log_level_name(log_get_level()));
    } else {
        struct config n;
        char changed[512];
        if (config_reparse(&n, argc, argv) < 0) {
            log_error(-1, "SIGHUP: %s has errors (above): nothing was taken from it",
                      cfg->config_file);
        } else {
            set_log_level((enum log_level)n.log_level);
            if (config_changes(cfg, &n, changed, sizeof(changed)) > 0)
                log_warn(-1, "SIGHUP: %s changes settings that only a restart applies: %s",
                         cfg->config_file, changed);
        }
    }
    if (cfg->accounts_path[0])
        auth_reload(); /* logs what it did */
    else
        log_info(-1, "SIGHUP: no --accounts file to reload");
    sd_notify(0, "READY=1\nSTATUS=serving");
}

/* The systemd watchdog: fed only while every shard's loop turns (metrics_readiness), so that
 * a stuck shard, not only a dead process, gets nexusd restarted. Logged once per stall. */
static void watchdog_feed(struct broker *b, bool *starving)
{
    char why[200];
    if (metrics_readiness(b, why, sizeof(why))) {
        sd_notify(0, "WATCHDOG=1");
        if (*starving)
            log_info(-1, "watchdog: every shard turns again; feeding it");
        *starving = false;
    } else if (!*starving) {
        log_error(-1, "watchdog: not fed while %s", why);
        *starving = true;
    }
}

/* Serves signals until SIGTERM or SIGINT, which it returns; feeds the watchdog meanwhile. */
static int serve_signals(struct broker *b, const struct config *cfg, int argc, char **argv,
                         const sigset_t *set)
{
    uint64_t wd_usec = 0;
    bool watchdog = sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0, starving = false;
    /* Half the period, as sd_watchdog_enabled(3) advises. */
    int64_t period_ns = (int64_t)wd_usec * 500, next_ns = mono_ns();
    for (;;) {
        int sig = 0;
        if (watchdog) {
            if (mono_ns() >= next_ns) {
                watchdog_feed(b, &starving);
                next_ns = mono_ns() + period_ns;
            }
            int64_t left = next_ns - mono_ns();
            struct timespec ts = {.tv_sec = left > 0 ? left / 1000000000 : 0,
                                  .tv_nsec = left > 0 ? left % 1000000000 : 0};
            sig = sigtimedwait(set, NULL, &ts);
            if (sig < 0)
                continue; /* the period is over (EAGAIN), or EINTR */
        } else if (sigwait(set, &sig) != 0) {
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT)
            return sig;
        if (sig == SIGHUP)
            reload(cfg, argc, argv);
        else
            log_warn(-1, "received %s: ignored (nexusd logs to stderr: nothing to reopen)",
                     sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2");
    }
}

/* The handler table: the built-in rows, plus the test rows when asked for. */
static void install_handlers(void)
{
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
}

/* Start-up checks before anything is bound or opened; the address locks (portlock.h) go to
 * lock[0] (--listen) and lock[1] (--ws-listen, or -1). Returns 0, or the exit status. */
static int preflight(const struct config *cfg, int lock[2])
{
    char msg[512];
    if (broker_probe(msg, sizeof(msg)) < 0) {
        log_error(-1, "%s", msg);
        fprintf(stderr, "nexusd: cannot start: %s\n", msg);
        return 1;
    }
    if (tls_init(cfg) < 0)
        return 1; /* tls_init said why on stderr */
    /* Before the data directory: a second nexusd for the same address and directory is told
     * about the address, the cause that matters. */
    lock[0] = portlock_claim(cfg->listen_host, cfg->listen_port, "listen", msg, sizeof(msg));
    if (lock[0] >= 0 && cfg->ws_port)
        lock[1] = portlock_claim(cfg->ws_host, cfg->ws_port, "ws-listen", msg, sizeof(msg));
    if (lock[0] < 0 || (cfg->ws_port && lock[1] < 0)) {
        log_error(-1, "%s", msg);
        return 1;
    }
    return 0;
}

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
    if (cfg.check_only)
        return r < 0 ? 1 : check_config(&cfg);
    if (r != 0)
        return r > 0 ? 0 : 2;
    log_setup((enum log_level)cfg.log_level, cfg.log_json);
    int lock[2] = {-1, -1};
    if ((r = preflight(&cfg, lock)) != 0)
        return r;

    /* Block the signals in every thread; the main thread takes them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    install_handlers();

    if (auth_init(&cfg) < 0 || store_global_init(cfg.data_dir, broker_shard_count(&cfg)) < 0)
        return 1;
    struct broker *b = broker_start(&cfg);
    if (!b)
        return 1;
    sd_notifyf(0, "READY=1\nSTATUS=serving on %s:%u\nMAINPID=%lu", cfg.listen_host, cfg.listen_port,
               (unsigned long)getpid());
    int sig = serve_signals(b, &cfg, argc, argv, &set);
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    log_info(-1, "received %s: draining for at most %u ms", sig == SIGTERM ? "SIGTERM" : "SIGINT",
             cfg.drain_ms);
    broker_stop(b);
    broker_wait(b);
    auth_shutdown();
    close(lock[0]);
    if (lock[1] >= 0)
        close(lock[1]);
    log_info(-1, "stopped");
    return 0;
}
