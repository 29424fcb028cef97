// SPDX-License-Identifier: Apache-2.0
//
// Integration-test harness: starts the real nexusd (path in $NEXUSD, set by CTest) on a free
// loopback port as a child process, waits until it accepts, and stops it with SIGTERM,
// checking that it exits 0. Also: connecting clients, finding a connection on a given shard,
// reading the broker's RSS from /proc. Header-only (static functions) so that each test is one
// self-contained program.
#ifndef NEXUS_TESTS_HARNESS_H
#define NEXUS_TESTS_HARNESS_H

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/nexus_client.h"

struct broker_proc {
    pid_t pid;
    uint16_t port;
    uint32_t shards;
};

static inline int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A port the kernel considers free right now (bind to 0, read it back, release). */
static inline uint16_t h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) < 0) {
        perror("h_free_port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts nexusd with --shards N and the extra flags (NULL-terminated). Exits the test on
 * failure: without a broker nothing can be tested. */
static inline struct broker_proc h_start(uint32_t shards, ...)
{
    struct broker_proc b = {0};
    const char *bin = getenv("NEXUSD");
    if (!bin) {
        fprintf(stderr, "NEXUSD is not set (run the tests through ctest)\n");
        exit(1);
    }
    b.shards = shards;
    for (int attempt = 0; attempt < 5; attempt++) {
        b.port = h_free_port();
        char listen[64], sh[16];
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", b.port);
        snprintf(sh, sizeof(sh), "%u", shards);
        const char *argv[64];
        int n = 0;
        argv[n++] = bin;
        argv[n++] = "--listen";
        argv[n++] = listen;
        argv[n++] = "--shards";
        argv[n++] = sh;
        argv[n++] = "--log-level";
        argv[n++] = getenv("NEXUS_TEST_LOG") ? getenv("NEXUS_TEST_LOG") : "warn";
        va_list ap;
        va_start(ap, shards);
        const char *a;
        while ((a = va_arg(ap, const char *)) && n < 62)
            argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;
        b.pid = fork();
        if (b.pid == 0) {
            execv(bin, (char *const *)argv);
            perror("execv nexusd");
            _exit(127);
        }
        int64_t deadline = h_now_ms() + 10000;
        while (h_now_ms() < deadline) {
            int st;
            if (waitpid(b.pid, &st, WNOHANG) == b.pid)
                break; /* exited: port taken? try another */
            char err[256];
            struct nexus_client *c = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
            if (c) {
                nexus_close(c);
                return b;
            }
            usleep(20000);
        }
        kill(b.pid, SIGKILL);
        waitpid(b.pid, NULL, 0);
    }
    fprintf(stderr, "nexusd did not start\n");
    exit(1);
}

/* Stops the broker with SIGTERM. Returns its exit status (0 expected), or -1 if it had to be
 * killed after 15 s. */
static inline int h_stop(struct broker_proc *b)
{
    kill(b->pid, SIGTERM);
    int64_t deadline = h_now_ms() + 15000;
    int st = 0;
    while (h_now_ms() < deadline) {
        pid_t r = waitpid(b->pid, &st, WNOHANG);
        if (r == b->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(b->pid, SIGKILL);
    waitpid(b->pid, NULL, 0);
    return -1;
}

/* True while the broker process is still running. */
static inline int h_alive(struct broker_proc *b)
{
    return waitpid(b->pid, NULL, WNOHANG) == 0;
}

/* The broker's resident set size in bytes, from /proc/PID/status (VmRSS). */
static inline uint64_t h_rss_bytes(const struct broker_proc *b)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)b->pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %lu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Connects and says hello; *shard_id receives the shard holding the connection. */
static inline struct nexus_client *h_connect(const struct broker_proc *b, uint32_t *shard_id)
{
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", b->port, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    struct nexus_frame f;
    if (nexus_hello_sync(c, NULL, "test", &f, 5000) != 1) {
        nexus_close(c);
        return NULL;
    }
    if (shard_id)
        *shard_id = f.u.welcome.shard_id;
    return c;
}

/* Connects until a connection lands on the wanted shard (SO_REUSEPORT spreads connections
 * by a hash of the address pair, so a few tries find each shard). */
static inline struct nexus_client *h_connect_on(const struct broker_proc *b, uint32_t shard)
{
    for (int i = 0; i < 200; i++) {
        uint32_t got;
        struct nexus_client *c = h_connect(b, &got);
        if (!c)
            return NULL;
        if (got == shard)
            return c;
        nexus_close(c);
    }
    return NULL;
}

/* Mirrors the broker's placement: the shard that owns a campaign. */
#include <xxhash.h>
static inline uint32_t h_owner(int64_t campaign, uint32_t shards)
{
    return (uint32_t)(XXH3_64bits(&campaign, sizeof(campaign)) % shards);
}

/* The first campaign id >= from that shard `shard` owns. */
static inline int64_t h_campaign_on(uint32_t shard, uint32_t shards, int64_t from)
{
    for (int64_t c = from;; c++)
        if (h_owner(c, shards) == shard)
            return c;
}

#endif
