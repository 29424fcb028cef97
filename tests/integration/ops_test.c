// SPDX-License-Identifier: Apache-2.0
//
// Operating nexusd (docs/OPERATIONS.md), against the real binary:
// - one broker per address: a second nexusd on a port a nexusd serves (or on its metrics or
//   WebSocket port, or on a port a foreign program holds with SO_REUSEPORT) exits 1 naming the
//   holder,
//   four started at the same moment leave exactly one, and the first keeps every client;
// - signals: SIGHUP re-reads the log level from the config file and says what else waits for a
//   restart, a bad file changes nothing, SIGUSR1/SIGUSR2 are logged and ignored, the broker
//   serves throughout;
// - systemd: READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 on NOTIFY_SOCKET; a shard whose
//   thread is stopped (ptrace) starves the watchdog and fails /readyz until it runs again;
// - refused clients are logged at warn with their address, at most LOG_REFUSALS_PER_SEC lines a
//   second, the rest counted in a "suppressed" line;
// - the config file: inline comments, quoted values, --check-config on good and bad files,
//   and --help showing every default, which docs/nexusd.conf lists too.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <dirent.h>
#include <poll.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "broker/log.h"
#include "harness.h"

/* ---- a nexusd whose output the test reads ---------------------------------------------------- */

struct cap {
    struct h_child ch;
    uint16_t port, mport;
};

/* True while the child runs (it is not reaped). */
static bool cap_alive(struct cap *p)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    return waitid(P_PID, p->ch.pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

/* Starts nexusd --listen 127.0.0.1:<free port> [--metrics 127.0.0.1:<free port>] extra...
 * with its output captured, and waits until it accepts; another port is tried if it exits
 * first (port taken). Fails the test if it never starts. */
static void cap_start(struct cap *p, bool metrics, const char *const *extra)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        char listen[64], maddr[64];
        p->port = h_free_port();
        p->mport = metrics ? h_free_port() : 0;
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", p->port);
        snprintf(maddr, sizeof(maddr), "127.0.0.1:%u", p->mport);
        const char *argv[48];
        int n = 0;
        argv[n++] = getenv("NEXUSD");
        argv[n++] = "--listen";
        argv[n++] = listen;
        if (metrics) {
            argv[n++] = "--metrics";
            argv[n++] = maddr;
        }
        for (int i = 0; extra && extra[i] && n < 46; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        assert_non_null(argv[0]);
        assert_int_equal(h_child_start(&p->ch, argv), 0);
        int64_t deadline = h_now_ms() + 15000;
        while (h_now_ms() < deadline && cap_alive(p)) {
            char err[256];
            struct nexus_client *c = nexus_connect("127.0.0.1", p->port, err, sizeof(err));
            if (c) {
                nexus_close(c);
                h_track((struct broker_proc){.pid = p->ch.pid});
                return;
            }
            h_child_pump(&p->ch, 20);
        }
        kill(p->ch.pid, SIGKILL);
        h_child_finish(&p->ch, 5000);
        print_message("nexusd did not start (attempt %d): %s\n", attempt, p->ch.err);
        h_child_free(&p->ch);
    }
    fail_msg("nexusd did not start");
}

/* SIGTERM, then its exit status once its output is all read. */
static int cap_stop(struct cap *p)
{
    kill(p->ch.pid, SIGTERM);
    return h_child_finish(&p->ch, 20000);
}

/* Waits until the broker's stderr holds needle; prints it all if not. */
static void cap_expect(struct cap *p, const char *needle, int timeout_ms)
{
    if (!h_child_wait_for(&p->ch, 2, needle, timeout_ms))
        fail_msg("nexusd's log lacks \"%s\"; it says:\n%s", needle, p->ch.err);
}

/* Reads the broker's output for ms. */
static void cap_settle(struct cap *p, int ms)
{
    int64_t deadline = h_now_ms() + ms;
    for (int64_t left; (left = deadline - h_now_ms()) > 0;)
        h_child_pump(&p->ch, (int)left);
}

/* Occurrences of needle in s. */
static int count_of(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static const char *write_file(char *path, const char *text)
{
    /* A template ends in XXXXXX; a name mkstemp made may end in one X by chance. */
    size_t n = strlen(path);
    bool tmpl = n >= 6 && strcmp(path + n - 6, "XXXXXX") == 0;
    int fd = tmpl ? mkstemp(path) : open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* Runs nexusd with argv (argv[0] is replaced by $NEXUSD) to completion. */
static int run_nexusd(struct h_child *ch, const char **argv)
{
    argv[0] = getenv("NEXUSD");
    return h_run(ch, argv, 20000);
}

/* A sum over the shards' stats of one connection's broker: the connections it holds. */
static int64_t stat_connections(struct nexus_client *c)
{
    struct codec_shard_stats st[64];
    int n = h_stats(c, st, 64, 5000);
    assert_true(n > 0);
    int64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += (int64_t)st[i].connections;
    return sum;
}

/* ---- one broker per address ------------------------------------------------------------------ */

/* A second nexusd on the client port, the same port through the wildcard address, or the
 * metrics port (held by the first one's metrics server, or by its client listeners), exits 1
 * naming the first; the first keeps serving every client. */
static void test_second_broker_refused(void **state)
{
    (void)state;
    struct cap a;
    cap_start(&a, true, (const char *[]){"--shards", "2", NULL});
    char holder[64], listen[64], wild[64], other[64], metrics[64], metrics_on_client[64];
    snprintf(holder, sizeof(holder), "another process holds the port: pid %d (nexusd)",
             (int)a.ch.pid);
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", a.port);
    snprintf(wild, sizeof(wild), "0.0.0.0:%u", a.port);
    snprintf(other, sizeof(other), "127.0.0.1:%u", h_free_port());
    snprintf(metrics, sizeof(metrics), "127.0.0.1:%u", a.mport);
    snprintf(metrics_on_client, sizeof(metrics_on_client), "127.0.0.1:%u", a.port);
    const char *same[] = {"nexusd", "--listen", listen, "--shards", "2", NULL};
    const char *wildcard[] = {"nexusd", "--listen", wild, "--insecure", "--shards", "2", NULL};
    const char *mport[] = {"nexusd", "--listen", other, "--metrics", metrics, NULL};
    const char *mport2[] = {"nexusd", "--listen", other, "--metrics", metrics_on_client, NULL};
    const char **runs[] = {same, wildcard, mport, mport2};
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        struct h_child ch;
        int rc = run_nexusd(&ch, runs[i]);
        print_message("second nexusd %s %s: exit %d: %s", runs[i][1], runs[i][2], rc, ch.err);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(ch.err, "cannot listen on"));
        assert_non_null(strstr(ch.err, holder));
        h_child_free(&ch);
    }
    /* Every client reaches the first broker: 20 connections, all in its stats, and an event
     * from each of 19 of them reaches a subscriber on the 20th. */
    enum { N = 20 };
    struct nexus_client *c[N];
    for (int i = 0; i < N; i++)
        assert_non_null(c[i] = h_connect(&(struct broker_proc){.port = a.port}, NULL));
    assert_int_equal(stat_connections(c[0]), N);
    assert_int_equal(nexus_subscribe_sync(c[0], 77, NULL, 0, NULL, NULL, NULL, 5000), 1);
    for (int i = 1; i < N; i++) {
        struct codec_emit_in e;
        struct nexus_frame f;
        nexus_emit_init(&e, "ops:probe:v1:completed", 77, NULL, NULL, 0);
        assert_int_equal(nexus_emit_sync(c[i], &e, &f, 5000), 1);
    }
    int got = 0;
    struct nexus_frame f;
    while (got < N - 1 && nexus_recv(c[0], &f, 5000) == 1)
        got += f.kind == CODEC_KIND_EVENT;
    assert_int_equal(got, N - 1);
    for (int i = 0; i < N; i++)
        nexus_close(c[i]);
    assert_true(cap_alive(&a));
    assert_int_equal(cap_stop(&a), 0);
    h_child_free(&a.ch);
}

/* The WebSocket port is one broker's too: a second nexusd with the first one's --ws-listen
 * exits 1 naming it. */
static void test_second_broker_ws(void **state)
{
    (void)state;
    char ws[64], other[64], holder[64];
    snprintf(ws, sizeof(ws), "127.0.0.1:%u", h_free_port());
    struct cap a;
    cap_start(&a, false, (const char *[]){"--shards", "2", "--ws-listen", ws, NULL});
    snprintf(other, sizeof(other), "127.0.0.1:%u", h_free_port());
    snprintf(holder, sizeof(holder), "another process holds the port: pid %d (nexusd)",
             (int)a.ch.pid);
    const char *argv[] = {"nexusd", "--listen", other, "--ws-listen", ws, NULL};
    struct h_child ch;
    int rc = run_nexusd(&ch, argv);
    print_message("second nexusd --ws-listen %s: exit %d: %s", ws, rc, ch.err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(ch.err, holder));
    assert_non_null(strstr(ch.err, "use --ws-listen"));
    h_child_free(&ch);
    assert_true(cap_alive(&a));
    assert_int_equal(cap_stop(&a), 0);
    h_child_free(&a.ch);
}

/* A foreign program listening with SO_REUSEPORT (which nexusd's own listeners would have
 * joined) keeps the port: nexusd exits 1 naming it (this test). */
static void test_foreign_reuseport_holder(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    char listen_at[64], holder[64];
    snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%u", ntohs(a.sin_port));
    snprintf(holder, sizeof(holder), "another process holds the port: pid %d (", (int)getpid());
    const char *argv[] = {"nexusd", "--listen", listen_at, "--shards", "2", NULL};
    struct h_child ch;
    int rc = run_nexusd(&ch, argv);
    print_message("nexusd beside a SO_REUSEPORT listener: exit %d: %s", rc, ch.err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(ch.err, holder));
    h_child_free(&ch);
    close(fd);
}

/* Four nexusd started at the same moment on one port: exactly one serves, three exit 1. */
static void test_simultaneous_start(void **state)
{
    (void)state;
    enum { N = 4 };
    char listen[64];
    uint16_t port = h_free_port();
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
    const char *argv[] = {getenv("NEXUSD"), "--listen", listen, "--shards", "2", NULL};
    struct cap p[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(h_child_start(&p[i].ch, argv), 0);
        h_track((struct broker_proc){.pid = p[i].ch.pid});
    }
    int64_t deadline = h_now_ms() + 15000;
    int alive = N;
    while (h_now_ms() < deadline && alive > 1) {
        alive = 0;
        for (int i = 0; i < N; i++) {
            h_child_pump(&p[i].ch, 0);
            alive += cap_alive(&p[i]);
        }
        usleep(20000);
    }
    usleep(500000); /* a second survivor, were there one, would still be starting */
    int winner = -1, refused = 0;
    for (int i = 0; i < N; i++) {
        if (cap_alive(&p[i])) {
            assert_int_equal(winner, -1);
            winner = i;
            continue;
        }
        int rc = h_child_finish(&p[i].ch, 5000);
        print_message("nexusd %d: exit %d: %s", i, rc, p[i].ch.err);
        refused += rc == 1 && strstr(p[i].ch.err, "another process holds the port") != NULL;
    }
    assert_true(winner >= 0);
    assert_int_equal(refused, N - 1);
    struct nexus_client *c = h_connect(&(struct broker_proc){.port = port}, NULL);
    assert_non_null(c);
    assert_int_equal(stat_connections(c), 1);
    nexus_close(c);
    assert_int_equal(cap_stop(&p[winner]), 0);
    for (int i = 0; i < N; i++)
        h_child_free(&p[i].ch);
}

/* ---- signals --------------------------------------------------------------------------------- */

/* SIGHUP: the log level from the config file (info -> debug, seen in the next connection's
 * debug line), other changed settings named as waiting for a restart, a bad file changes
 * nothing; SIGUSR1/SIGUSR2 are ignored; the broker serves throughout and exits 0 on SIGTERM. */
static void test_sighup(void **state)
{
    (void)state;
    char path[] = "/tmp/nexusd-hup-XXXXXX";
    write_file(path, "log-level = info\n");
    struct cap p;
    cap_start(&p, false, (const char *[]){"--config", path, "--shards", "1", NULL});
    cap_expect(&p, "listening on", 5000);
    kill(p.ch.pid, SIGHUP);
    cap_expect(&p, "received SIGHUP", 5000);
    cap_expect(&p, "SIGHUP: log level stays info", 5000);
    cap_expect(&p, "SIGHUP: no --accounts file to reload", 5000);
    assert_int_equal(count_of(p.ch.err, "accepted fd="), 0);

    write_file(path, "log-level = debug # more detail\nmax-connections = 100\n");
    kill(p.ch.pid, SIGHUP);
    cap_expect(&p, "SIGHUP: log level info -> debug", 5000);
    cap_expect(&p, "changes settings that only a restart applies: max-connections", 5000);
    struct nexus_client *c = h_connect(&(struct broker_proc){.port = p.port}, NULL);
    assert_non_null(c);
    cap_expect(&p, "accepted fd=", 5000); /* a debug line: the new level is in force */
    nexus_close(c);

    write_file(path, "log-level = loud\n");
    kill(p.ch.pid, SIGHUP);
    cap_expect(&p, "--log-level wants debug, info, warn or error, got \"loud\"", 5000);
    cap_expect(&p, "has errors (above): nothing was taken from it", 5000);
    kill(p.ch.pid, SIGUSR1);
    cap_expect(&p, "received SIGUSR1: ignored", 5000);
    kill(p.ch.pid, SIGUSR2);
    cap_expect(&p, "received SIGUSR2: ignored", 5000);
    int accepted = count_of(p.ch.err, "accepted fd=");
    assert_non_null(c = h_connect(&(struct broker_proc){.port = p.port}, NULL));
    assert_int_equal(h_ping(c, 5000), 1);
    nexus_close(c);
    cap_settle(&p, 300);                                        /* lets the debug line arrive */
    assert_true(count_of(p.ch.err, "accepted fd=") > accepted); /* still debug */
    assert_true(cap_alive(&p));
    assert_int_equal(cap_stop(&p), 0);
    assert_non_null(strstr(p.ch.err, "received SIGTERM"));
    h_child_free(&p.ch);
    unlink(path);
}

/* ---- systemd notifications, the watchdog and /readyz ----------------------------------------- */

/* The next datagram on fd (NUL-terminated into buf) within timeout_ms; false if none. */
static bool notify_recv(int fd, char *buf, size_t cap, int timeout_ms)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, timeout_ms) <= 0)
        return false;
    ssize_t n = recv(fd, buf, cap - 1, 0);
    if (n < 0)
        return false;
    buf[n] = 0;
    return true;
}

/* Waits for a datagram containing want; false if none came within timeout_ms. */
static bool notify_wait(int fd, const char *want, int timeout_ms)
{
    char buf[512];
    int64_t deadline = h_now_ms() + timeout_ms;
    for (int64_t left; (left = deadline - h_now_ms()) > 0;)
        if (notify_recv(fd, buf, sizeof(buf), (int)left) && strstr(buf, want))
            return true;
    return false;
}

/* Datagrams containing want that arrive within ms. */
static int notify_count(int fd, const char *want, int ms)
{
    char buf[512];
    int n = 0;
    int64_t deadline = h_now_ms() + ms;
    for (int64_t left; (left = deadline - h_now_ms()) > 0;)
        if (notify_recv(fd, buf, sizeof(buf), (int)left) && strstr(buf, want))
            n++;
    return n;
}

/* The thread of pid named comm, or 0. */
static pid_t thread_named(pid_t pid, const char *comm)
{
    char path[300], name[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    pid_t tid = 0;
    struct dirent *e;
    while (d && !tid && (e = readdir(d))) {
        snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(name, sizeof(name), f)) {
            name[strcspn(name, "\n")] = 0;
            if (!strcmp(name, comm))
                tid = (pid_t)atoi(e->d_name);
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return tid;
}

/* GET path from 127.0.0.1:port into buf; the HTTP status or -1. */
static int http_get(uint16_t port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    buf[0] = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    size_t have = 0;
    ssize_t r;
    while (have < cap - 1 && (r = read(fd, buf + have, cap - 1 - have)) > 0)
        have += (size_t)r;
    buf[have] = 0;
    close(fd);
    int status = -1;
    return sscanf(buf, "HTTP/1.1 %d", &status) == 1 ? status : -1;
}

/* Polls /readyz until it answers want (200 or 503); false after timeout_ms. */
static bool readyz_becomes(uint16_t mport, int want, char *buf, size_t cap, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    while (h_now_ms() < deadline) {
        if (http_get(mport, "/readyz", buf, cap) == want)
            return true;
        usleep(50000);
    }
    return false;
}

/* READY=1 once serving, WATCHDOG=1 every half period while every shard turns, none while
 * shard 1's thread is stopped (and /readyz says 503 naming it, /healthz still 200), both back
 * once it runs again; RELOADING=1 and READY=1 around SIGHUP; STOPPING=1 on SIGTERM. */
static void test_sd_notify_watchdog(void **state)
{
    (void)state;
    int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char name[64];
    snprintf(name, sizeof(name), "nexus-ops-test-%d", (int)getpid());
    memcpy(a.sun_path + 1, name, strlen(name));
    assert_int_equal(bind(nfd, (struct sockaddr *)&a,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
                     0);
    char env[80];
    snprintf(env, sizeof(env), "@%s", name);
    setenv("NOTIFY_SOCKET", env, 1);
    setenv("WATCHDOG_USEC", "300000", 1); /* fed every 150 ms */
    struct cap p;
    cap_start(&p, true, (const char *[]){"--shards", "2", "--log-level", "info", NULL});
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    assert_true(notify_wait(nfd, "READY=1", 10000));
    int fed = notify_count(nfd, "WATCHDOG=1", 1000);
    print_message("watchdog fed %d times in 1 s\n", fed);
    assert_true(fed >= 3);

    static char buf[64 * 1024];
    pid_t tid = thread_named(p.ch.pid, "nexus-shard-1");
    assert_true(tid > 0);
    /* Stops shard 1's thread alone (a signal would stop the whole process). */
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0 || ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0)
        fail_msg("ptrace of the shard thread failed: %s", strerror(errno));
    int st;
    assert_int_equal(waitpid(tid, &st, __WALL), tid);
    assert_true(readyz_becomes(p.mport, 503, buf, sizeof(buf), 10000));
    print_message("/readyz while shard 1 is stopped: %s\n", strstr(buf, "\r\n\r\n") + 4);
    assert_non_null(strstr(buf, "\"status\":\"not ready\""));
    assert_non_null(strstr(buf, "shard 1: its loop has not turned for"));
    assert_int_equal(http_get(p.mport, "/healthz", buf, sizeof(buf)), 200);
    assert_int_equal(http_get(p.mport, "/metrics", buf, sizeof(buf)), 200);
    const char *age = strstr(buf, "nexus_shard_heartbeat_age_seconds{shard=\"1\"} ");
    assert_non_null(age);
    assert_true(strtod(age + strlen("nexus_shard_heartbeat_age_seconds{shard=\"1\"} "), NULL) > 2);
    notify_count(nfd, "WATCHDOG=1", 200); /* what was sent before the stall showed */
    assert_int_equal(notify_count(nfd, "WATCHDOG=1", 800), 0);
    cap_expect(&p, "watchdog: not fed while shard 1", 5000);

    assert_int_equal(ptrace(PTRACE_DETACH, tid, 0, 0), 0);
    assert_true(readyz_becomes(p.mport, 200, buf, sizeof(buf), 5000));
    assert_true(notify_wait(nfd, "WATCHDOG=1", 5000));
    cap_expect(&p, "watchdog: every shard turns again", 5000);

    kill(p.ch.pid, SIGHUP);
    assert_true(notify_wait(nfd, "RELOADING=1", 5000));
    assert_true(notify_wait(nfd, "READY=1", 5000));
    kill(p.ch.pid, SIGTERM);
    assert_true(notify_wait(nfd, "STOPPING=1", 5000));
    assert_int_equal(h_child_finish(&p.ch, 20000), 0);
    h_child_free(&p.ch);
    close(nfd);
}

/* ---- refused clients in the log ----------------------------------------------------------------
 */

/* The local port of socket fd. */
static uint16_t local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t l = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    return ntohs(a.sin_port);
}

/* A raw connection to the broker. */
static int raw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* The number in "refused clients: N similar lines suppressed", summed over the lines. */
static long suppressed_sum(const char *log)
{
    long sum = 0;
    const char *key = "refused clients: ";
    for (const char *p = strstr(log, key); p; p = strstr(p + 1, key))
        sum += strtol(p + strlen(key), NULL, 10);
    return sum;
}

/* A wrong token, a missed authentication deadline and a flood of oversized frames are logged
 * at warn with each client's address; the flood is cut to LOG_REFUSALS_PER_SEC lines in its
 * second, and the lines left out are counted, every one. */
static void test_refusal_logs(void **state)
{
    (void)state;
    enum { FLOOD = 60 };
    struct cap p;
    cap_start(&p, false,
              (const char *[]){"--shards", "1", "--log-level", "warn", "--token", "secret",
                               "--auth-timeout-ms", "300", NULL});
    char needle[128];
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", p.port, err, sizeof(err));
    assert_non_null(c);
    struct nexus_frame f;
    assert_int_equal(nexus_hello_sync(c, "wrong", "ops", &f, 5000), -EPROTO);
    snprintf(needle, sizeof(needle), "peer=127.0.0.1:%u authentication failed",
             local_port(nexus_fd(c)));
    cap_expect(&p, needle, 5000);
    nexus_close(c);
    int silent = raw_connect(p.port);
    snprintf(needle, sizeof(needle), "peer=127.0.0.1:%u error code=timeout", local_port(silent));
    cap_expect(&p, needle, 5000);
    close(silent);
    assert_non_null(strstr(p.ch.err, " warn  shard=0 client peer=127.0.0.1:"));
    usleep(1200000); /* the next refusal opens a fresh second */

    int fds[FLOOD];
    uint16_t ports[FLOOD];
    const uint8_t huge[4] = {0x00, 0x10, 0x00, 0x00}; /* 1 MiB: past the 4 KiB before hello */
    int64_t t0 = h_now_ms();
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = raw_connect(p.port);
        ports[i] = local_port(fds[i]);
        assert_int_equal(send(fds[i], huge, sizeof(huge), MSG_NOSIGNAL), 4);
    }
    int64_t took = h_now_ms() - t0;
    cap_expect(&p, "similar lines suppressed", 10000);
    cap_settle(&p, 1500); /* a later second's lines, if the flood spanned one */
    int logged = 0;
    char line[1024];
    for (int i = 0; h_line(p.ch.err, i, line, sizeof(line)); i++) {
        const char *peer = strstr(line, "peer=127.0.0.1:");
        if (!peer || !strstr(line, "code=frame_too_large"))
            continue;
        logged++;
        unsigned port = (unsigned)atoi(peer + strlen("peer=127.0.0.1:"));
        bool ours = false;
        for (int k = 0; k < FLOOD; k++)
            ours |= ports[k] == port;
        assert_true(ours);
        assert_non_null(strstr(line, " warn "));
    }
    long suppressed = suppressed_sum(p.ch.err);
    print_message("flood of %d in %lld ms: %d lines, %ld suppressed\n", FLOOD, (long long)took,
                  logged, suppressed);
    assert_int_equal(logged + suppressed, FLOOD);
    assert_true(logged >= LOG_REFUSALS_PER_SEC);
    assert_true(logged <= LOG_REFUSALS_PER_SEC * (2 + took / 1000));
    if (took < 500) /* one second of the broker's saw the whole flood */
        assert_int_equal(logged, LOG_REFUSALS_PER_SEC);
    for (int i = 0; i < FLOOD; i++)
        close(fds[i]);
    assert_int_equal(cap_stop(&p), 0);
    h_child_free(&p.ch);
}

/* ---- the config file --------------------------------------------------------------------------
 */

/* Inline comments and a quoted value holding a `#`, as nexusd starts with them: the token is
 * everything inside the quotes. */
static void test_config_inline_comments(void **state)
{
    (void)state;
    char path[] = "/tmp/nexusd-conf-XXXXXX";
    write_file(path, "# the broker of the ops test\n"
                     "shards = 1   # one is enough\n"
                     "token = \"s3cr#t\" # a # inside the quotes is part of the value\n"
                     "max-frame-bytes = 2M\t# a tab before the comment\n"
                     "   # an indented comment\n");
    struct cap p;
    cap_start(&p, false, (const char *[]){"--config", path, NULL});
    char err[256];
    struct nexus_frame f;
    struct nexus_client *good = nexus_connect("127.0.0.1", p.port, err, sizeof(err));
    struct nexus_client *bad = nexus_connect("127.0.0.1", p.port, err, sizeof(err));
    assert_true(good && bad);
    assert_int_equal(nexus_hello_sync(good, "s3cr#t", "ops", &f, 5000), 1);
    assert_int_equal(f.u.welcome.frame_bytes_max, 2u << 20);
    assert_int_equal(f.u.welcome.shard_count, 1);
    assert_int_equal(nexus_hello_sync(bad, "s3cr", "ops", &f, 5000), -EPROTO);
    nexus_close(good);
    nexus_close(bad);
    assert_int_equal(cap_stop(&p), 0);
    h_child_free(&p.ch);
    unlink(path);
}

/* nexusd --check-config FILE: exit status, and for a bad file, FILE:LINE: reason lines. */
static int check_config(const char *path, struct h_child *ch)
{
    const char *argv[] = {"nexusd", "--check-config", path, NULL};
    int rc = run_nexusd(ch, argv);
    print_message("--check-config %s: exit %d, out \"%s\", err \"%s\"\n", path, rc, ch->out,
                  ch->err);
    return rc;
}

/* err has a line starting with "PATH:LINE: " followed somewhere by what. */
static void expect_line(const char *err, const char *path, int lineno, const char *what)
{
    char line[2048], head[1100];
    snprintf(head, sizeof(head), lineno ? "%s:%d: " : "%s: ", path, lineno);
    for (int i = 0; h_line(err, i, line, sizeof(line)); i++)
        if (!strncmp(line, head, strlen(head)) && strstr(line, what))
            return;
    fail_msg("no line \"%s... %s\" in:\n%s", head, what, err);
}

static void test_check_config(void **state)
{
    (void)state;
    struct h_child ch;
    char sample[1024];
    snprintf(sample, sizeof(sample), "%s/docs/nexusd.conf", getenv("NEXUS_SOURCE_DIR"));
    assert_int_equal(check_config(sample, &ch), 0);
    assert_string_equal(ch.out, "ok\n");
    h_child_free(&ch);

    /* Good: nothing is bound (the port is held, by this test) and no data directory made. */
    int held = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    assert_int_equal(bind(held, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(held, 1), 0);
    assert_int_equal(getsockname(held, (struct sockaddr *)&a, &l), 0);
    char text[1024], good[] = "/tmp/nexusd-check-XXXXXX", dir[64];
    snprintf(dir, sizeof(dir), "/tmp/nexusd-check-dir-%d", (int)getpid());
    snprintf(text, sizeof(text),
             "listen = 127.0.0.1:%u # held: --check-config binds nothing\n"
             "metrics = 127.0.0.1:%u\n"
             "data-dir = %s # not created\n"
             "token = \"s3cr#t\" # quoted\n"
             "max-frame-bytes = 2M\t# tab\n\n  # indented\n",
             ntohs(a.sin_port), ntohs(a.sin_port), dir);
    assert_int_equal(check_config(write_file(good, text), &ch), 0);
    assert_string_equal(ch.out, "ok\n");
    h_child_free(&ch);
    struct stat sb;
    assert_int_not_equal(stat(dir, &sb), 0);
    close(held);
    unlink(good);

    /* Bad lines: each is reported, with its line number. */
    char bad[] = "/tmp/nexusd-check-XXXXXX", too_long[6000];
    write_file(bad, "shards = 2#x\n"
                    "max-frame-bytes = lots\n"
                    "slow-policy = \"drop\n"
                    "foo = 1\n"
                    "token = \"a\" b\n"
                    "listen\n"
                    "# fine\n"
                    "drain-ms = 100 # fine too\n"
                    "log-level = loud   # not a level\n");
    assert_int_equal(check_config(bad, &ch), 1);
    assert_string_equal(ch.out, "");
    expect_line(ch.err, bad, 1, "--shards wants a number in 0..64, got \"2#x\"");
    expect_line(ch.err, bad, 2, "--max-frame-bytes wants a number");
    expect_line(ch.err, bad, 3, "the quoted value has no closing quote");
    expect_line(ch.err, bad, 4, "unknown setting \"foo\"");
    expect_line(ch.err, bad, 5, "unexpected text after the quoted value: \"b\"");
    expect_line(ch.err, bad, 6, "expected `key = value`");
    expect_line(ch.err, bad, 9, "--log-level wants debug, info, warn or error, got \"loud\"");
    assert_int_equal(h_count_lines(ch.err), 7);
    h_child_free(&ch);
    /* Without --check-config the same file stops start-up at its first bad line (exit 2). */
    const char *start[] = {"nexusd", "--config", bad, NULL};
    assert_int_equal(run_nexusd(&ch, start), 2);
    assert_non_null(strstr(ch.err, ":1: --shards wants"));
    h_child_free(&ch);

    /* Checks across settings, and the files start-up would read. */
    static const struct {
        const char *text, *what;
    } across[] = {
        {"listen = 0.0.0.0:7400\n", "refusing to listen on 0.0.0.0 without authentication"},
        {"token = x\naccounts = /tmp/a\n", "--token and --accounts exclude each other"},
        {"ring-capacity = 1000\n", "--ring-capacity must be a power of two"},
        {"accounts = /nonexistent/nexus-accounts\n", "/nonexistent/nexus-accounts"},
        {"tls-cert = /nonexistent/c.pem\ntls-key = /nonexistent/k.pem\n", "/nonexistent/c.pem"},
    };
    for (size_t i = 0; i < sizeof(across) / sizeof(across[0]); i++) {
        char path[] = "/tmp/nexusd-check-XXXXXX";
        assert_int_equal(check_config(write_file(path, across[i].text), &ch), 1);
        assert_string_equal(ch.out, "");
        assert_non_null(strstr(ch.err, across[i].what));
        if (i < 3)
            expect_line(ch.err, path, 0, across[i].what);
        h_child_free(&ch);
        unlink(path);
    }
    memset(too_long, 'a', sizeof(too_long));
    memcpy(too_long, "token = ", 8);
    too_long[sizeof(too_long) - 2] = '\n';
    too_long[sizeof(too_long) - 1] = 0;
    write_file(bad, too_long);
    assert_int_equal(check_config(bad, &ch), 1);
    expect_line(ch.err, bad, 1, "line longer than");
    h_child_free(&ch);
    unlink(bad);
    assert_int_equal(check_config("/nonexistent/nexusd.conf", &ch), 1);
    assert_non_null(strstr(ch.err, "cannot open config file /nonexistent/nexusd.conf"));
    h_child_free(&ch);
}

/* The `key = value` line of the sample for key (commented out or not): its value, or NULL. */
static const char *sample_value(const char *conf, const char *key, char *out, size_t cap)
{
    char line[1024], head[128];
    for (int i = 0; h_line(conf, i, line, sizeof(line)); i++) {
        const char *p = line[0] == '#' ? line + 2 : line;
        snprintf(head, sizeof(head), "%s = ", key);
        if (strncmp(p, head, strlen(head)) == 0) {
            snprintf(out, cap, "%s", p + strlen(head));
            return out;
        }
    }
    return NULL;
}

/* --help gives every setting's default; docs/nexusd.conf lists every setting with that
 * default (where it is a value, not words), and those defaults, uncommented, pass the check. */
static void test_help_defaults_and_sample(void **state)
{
    (void)state;
    struct h_child help, sample, ch;
    const char *argv[] = {"nexusd", "--help", NULL};
    assert_int_equal(run_nexusd(&help, argv), 0);
    char path[1024];
    snprintf(path, sizeof(path), "%s/docs/nexusd.conf", getenv("NEXUS_SOURCE_DIR"));
    const char *cat[] = {"cat", path, NULL};
    assert_int_equal(h_run(&sample, cat, 5000), 0);
    const char *conf = sample.out;
    static char defaults[16384];
    size_t dl = 0;
    int settings = 0;
    char line[1024], name[64], def[256], val[256];
    for (int i = 0; h_line(help.out, i, line, sizeof(line)); i++) {
        if (strncmp(line, "  --", 4) != 0 || sscanf(line + 4, "%63s", name) != 1)
            continue;
        if (!strcmp(name, "config") || !strcmp(name, "check-config") ||
            !strcmp(name, "hash-token") || !strcmp(name, "help") || !strcmp(name, "version"))
            continue;
        settings++;
        const char *d = strstr(line, "(default: ");
        if (!d)
            fail_msg("--help gives no default for --%s: %s", name, line);
        snprintf(def, sizeof(def), "%s", d + strlen("(default: "));
        def[strlen(def) - 1] = 0; /* the closing parenthesis */
        if (!sample_value(conf, name, val, sizeof(val)))
            fail_msg("docs/nexusd.conf does not list %s", name);
        bool words = strchr(def, ' ') || !strcmp(def, "none") || !strcmp(def, "off");
        if (!words) {
            if (strcmp(val, def) != 0)
                fail_msg("docs/nexusd.conf gives %s = %s, --help's default is %s", name, val, def);
            dl += (size_t)snprintf(defaults + dl, sizeof(defaults) - dl, "%s = %s\n", name, def);
        }
    }
    print_message("%d settings in --help, each in docs/nexusd.conf\n", settings);
    assert_true(settings >= 45);
    char dpath[] = "/tmp/nexusd-defaults-XXXXXX";
    assert_int_equal(check_config(write_file(dpath, defaults), &ch), 0);
    h_child_free(&ch);
    h_child_free(&sample);
    h_child_free(&help);
    unlink(dpath);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_second_broker_refused, h_teardown),
        cmocka_unit_test_teardown(test_second_broker_ws, h_teardown),
        cmocka_unit_test_teardown(test_foreign_reuseport_holder, h_teardown),
        cmocka_unit_test_teardown(test_simultaneous_start, h_teardown),
        cmocka_unit_test_teardown(test_sighup, h_teardown),
        cmocka_unit_test_teardown(test_sd_notify_watchdog, h_teardown),
        cmocka_unit_test_teardown(test_refusal_logs, h_teardown),
        cmocka_unit_test_teardown(test_config_inline_comments, h_teardown),
        cmocka_unit_test_teardown(test_check_config, h_teardown),
        cmocka_unit_test_teardown(test_help_defaults_and_sample, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
