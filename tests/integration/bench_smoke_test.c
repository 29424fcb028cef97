// SPDX-License-Identifier: Apache-2.0
//
// Smoke test of nexus-bench against the real nexusd: short runs (a few seconds in all) that
// must deliver every event once and in order, checked through the benchmark's exit status
// and its JSON line; and one run against a broker whose outbound bound is far too small for
// the load, which must fail the delivery check (exit 1, "ok":false) instead of printing a
// throughput. nexus-bench is found next to nexusd ($NEXUSD, set by CTest).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>

#include "harness.h"

/* Upper bound on a benchmark's JSON line and log (its text report goes to stderr). */
#define OUT_BYTES 65536

static char bench_path[PATH_MAX];

static int find_bench(void **state)
{
    (void)state;
    const char *nexusd = getenv("NEXUSD");
    if (!nexusd) {
        fprintf(stderr, "NEXUSD is not set (run the tests through ctest)\n");
        return -1;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", nexusd);
    snprintf(bench_path, sizeof(bench_path), "%s/nexus-bench", dirname(dir));
    if (access(bench_path, X_OK) != 0) {
        fprintf(stderr, "%s is missing: build the nexus-bench target\n", bench_path);
        return -1;
    }
    return 0;
}

/* Runs nexus-bench with args (NULL-terminated) plus --port and --broker-pid of b; captures
 * stdout into out. Returns its exit status, or -1 if it did not exit normally. */
static int run_bench(const struct broker_proc *b, char *out, size_t cap, ...)
{
    char port[16], pid[16];
    snprintf(port, sizeof(port), "%u", b->port);
    snprintf(pid, sizeof(pid), "%d", (int)b->pid);
    const char *argv[64];
    int n = 0;
    argv[n++] = bench_path;
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--broker-pid";
    argv[n++] = pid;
    argv[n++] = "--json";
    argv[n++] = "--quiet";
    va_list ap;
    va_start(ap, cap);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 62)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;

    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    pid_t child = fork();
    if (child == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(bench_path, (char *const *)argv);
        perror("execv nexus-bench");
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], out + len, cap - 1 - len)) > 0 && len < cap - 1)
        len += (size_t)r;
    out[len] = 0;
    close(fds[0]);
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* The number after "key": in the JSON line, or -1 if absent. */
static double json_num(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(json, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

/* Max rate, fan-out over two campaigns: everything arrives, once, in order. */
static void test_max_rate_delivers_everything(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--publishers", "2", "--subscribers", "6",
                       "--campaigns", "2", "--duration-s", "2", "--warmup-s", "0.5", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_true(json_num(out, "delivered_per_s") > 1000);
    double expected = json_num(out, "expected"), delivered = json_num(out, "delivered");
    assert_true(expected > 0);
    assert_true(delivered == expected);
    assert_true(json_num(out, "lost") == 0);
    assert_true(json_num(out, "disorder") == 0);
    assert_true(json_num(out, "seq_breaks") == 0);
    assert_true(json_num(out, "broker_cpu_pct") >= 0);
    assert_true(h_alive(&b));
    assert_int_equal(h_stop(&b), 0);
}

/* Fixed rate: the publishers keep the schedule and latencies are recorded. */
static void test_fixed_rate_measures_latency(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--preset", "latency", "--rate", "20000",
                       "--subscribers", "3", "--duration-s", "1", "--warmup-s", "0.2", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    /* 20,000 events/s for 1 s to 3 subscribers: ~60,000 samples (some jitter at the edges). */
    double samples = json_num(out, "lat_samples");
    assert_true(samples > 50000 && samples < 70000);
    assert_true(json_num(out, "lat_p50_us") > 0);
    assert_true(json_num(out, "lat_p99_us") >= json_num(out, "lat_p50_us"));
    assert_true(json_num(out, "published_per_s") > 18000 &&
                json_num(out, "published_per_s") < 22000);
    assert_int_equal(h_stop(&b), 0);
}

/* The issue-15 shapes: client-chosen event ids (checked by the broker's duplicate window: a
 * false duplicate would show as loss) with a string payload; and fan-in with 65,536 events in
 * flight per publisher, ~30 MB queued for one subscriber, which the default outbound bound
 * (64 MiB) must hold without a disconnect. */
static void test_client_ids_string_and_deep(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--publishers", "2", "--subscribers", "4",
                       "--campaigns", "2", "--ids", "client", "--payload", "string",
                       "--payload-bytes", "75", "--duration-s", "1", "--warmup-s", "0.2", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_non_null(strstr(out, "\"ids\":\"client\""));
    assert_non_null(strstr(out, "\"payload_kind\":\"string\""));
    assert_true(json_num(out, "delivered") == json_num(out, "expected"));
    assert_true(json_num(out, "expected") > 0);
    rc = run_bench(&b, out, sizeof(out), "--preset", "fanin-deep", "--duration-s", "1",
                   "--warmup-s", "0", "--drain-s", "30", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_true(json_num(out, "window_events") == 65536);
    assert_true(json_num(out, "disconnects") == 0);
    assert_int_equal(h_stop(&b), 0);
}

/* Payload { data: Struct { fields { "p": string_value of n 'x' } } }, n < 16384. */
static size_t mixed_payload(uint8_t *out, size_t n)
{
    size_t val = 1 + (n < 128 ? 1 : 2) + n, ent = 3 + 1 + (val < 128 ? 1 : 2) + val;
    size_t st = 1 + (ent < 128 ? 1 : 2) + ent, k = 0;
    size_t lens[3] = {st, ent, 0};
    for (int i = 0; i < 2; i++) {
        out[k++] = 0x0a;
        if (lens[i] < 128) {
            out[k++] = (uint8_t)lens[i];
        } else {
            out[k++] = (uint8_t)(lens[i] | 0x80);
            out[k++] = (uint8_t)(lens[i] >> 7);
        }
    }
    memcpy(out + k, "\x0a\x01p\x12", 4);
    k += 4;
    size_t vl[2] = {val, n};
    for (int i = 0; i < 2; i++) {
        if (i)
            out[k++] = 0x1a;
        if (vl[i] < 128) {
            out[k++] = (uint8_t)vl[i];
        } else {
            out[k++] = (uint8_t)(vl[i] | 0x80);
            out[k++] = (uint8_t)(vl[i] >> 7);
        }
    }
    memset(out + k, 'x', n);
    return k + n;
}

/* The send path of a deep queue (broker/conn.c): a subscriber that does not read while
 * thousands of events queue up gets them all, in order, once it reads, when runs of small
 * frames (copied into the connection's send buffer) alternate with frames too large for it
 * (sent by reference). */
static void test_deep_queue_mixed_sizes(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, NULL);
    struct nexus_client *sub = h_connect(&b, NULL), *pub = h_connect(&b, NULL);
    assert_true(sub && pub);
    int small_buf = 4096;
    setsockopt(nexus_fd(sub), SOL_SOCKET, SO_RCVBUF, &small_buf, sizeof(small_buf));
    const int64_t camp = 91501;
    assert_int_equal(nexus_subscribe_sync(sub, camp, NULL, 0, NULL, NULL, NULL, 5000), 1);
    enum { N = 3000 };
    static uint8_t pl[2][4096];
    size_t pl_len[2] = {mixed_payload(pl[0], 40), mixed_payload(pl[1], 3000)};
    struct codec_emit_in e;
    char id[32];
    for (int i = 1; i <= N; i++) { /* five small, then one large (over 2 KiB) */
        snprintf(id, sizeof(id), "m%d", i);
        nexus_emit_init(&e, "mix:test:v1:success", camp, id, pl[i % 6 == 0], pl_len[i % 6 == 0]);
        assert_int_equal(nexus_send_emit(pub, &e), 0);
        if (i % 500 == 0)
            assert_int_equal(nexus_flush(pub), 0);
    }
    struct nexus_frame f;
    nexus_emit_init(&e, "mix:test:v1:success", camp, "last", pl[0], pl_len[0]);
    assert_int_equal(nexus_emit_sync(pub, &e, &f, 10000), 1); /* all of them are queued */
    for (int i = 1; i <= N + 1; i++) {
        assert_int_equal(nexus_recv(sub, &f, 10000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, (uint64_t)i);
        snprintf(id, sizeof(id), i <= N ? "m%d" : "last", i);
        assert_true(h_slice_eq(f.u.event.event_id, id));
        assert_int_equal(f.u.event.payload.len, pl_len[i <= N && i % 6 == 0]);
    }
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* A broker that may queue only 4 KiB per subscriber disconnects them under a burst: the
 * benchmark must call that loss and exit 1, not report a throughput. */
static void test_loss_fails_the_run(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, "--max-outbound-bytes", "4096", NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--subscribers", "20", "--window", "200000",
                       "--duration-s", "1", "--warmup-s", "0", "--drain-s", "2", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "\"ok\":false"));
    assert_true(json_num(out, "lost") > 0 || json_num(out, "disconnects") > 0 ||
                json_num(out, "gap_dropped") > 0);
    assert_int_equal(h_stop(&b), 0);
}

/* Finds prog on $PATH (and in /usr/sbin, where Debian puts nats-server). */
/* Request round trips through the Provider's test:echo handler: every request gets exactly
 * one started and one success, and the round trips are counted and timed. */
static void test_lifecycle_round_trips(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, "--test-handlers", NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--preset", "lifecycle", "--requesters", "2",
                       "--duration-s", "2", "--warmup-s", "0.3", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    double sent = json_num(out, "sent");
    assert_true(sent > 1000);
    assert_true(json_num(out, "started") == sent);
    assert_true(json_num(out, "success") == sent);
    assert_true(json_num(out, "failed") == 0);
    assert_true(json_num(out, "unknown") == 0);
    assert_true(json_num(out, "dup_started") == 0);
    assert_true(json_num(out, "round_trips_per_s") > 1000);
    assert_true(json_num(out, "lat_p99_us") >= json_num(out, "lat_p50_us"));
    assert_true(json_num(out, "lat_p50_us") > 0);
    assert_true(h_alive(&b));
    assert_int_equal(h_stop(&b), 0);
}

/* Without --test-handlers every request fails (no_handler): the run must fail, and the
 * preset refuses brokers without a request lifecycle (usage, exit 2). */
static void test_lifecycle_failures(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--preset", "lifecycle", "--duration-s", "0.5",
                       "--warmup-s", "0", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "\"ok\":false"));
    assert_true(json_num(out, "failed") > 0);
    rc = run_bench(&b, out, sizeof(out), "--preset", "lifecycle", "--broker", "nats", NULL);
    assert_int_equal(rc, 2);
    assert_int_equal(h_stop(&b), 0);
}

/* Many open streams: 2 requesters x 50 test:stream_ticks streams, each with a stream event
 * and a heartbeat per second; every stream checked (one started, ticks in order and as many
 * as its open time allows, heartbeats, exactly one cancelled after the cancel). */
static void test_streams_with_heartbeats(void **state)
{
    (void)state;
    struct broker_proc b = h_start(1, "--test-handlers", NULL);
    static char out[OUT_BYTES];
    int rc = run_bench(&b, out, sizeof(out), "--preset", "streams", "--requesters", "2", "--window",
                       "50", "--duration-s", "3", "--warmup-s", "0.5", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_true(json_num(out, "streams") == 100);
    assert_true(json_num(out, "cancelled") == 100);
    assert_true(json_num(out, "problems") == 0);
    /* 100 streams, one of each per second: 100/s, within a tick's rounding at the edges. */
    double ticks = json_num(out, "stream_events_per_s"), hbs = json_num(out, "heartbeats_per_s");
    assert_true(ticks >= 60 && ticks <= 140);
    assert_true(hbs >= 60 && hbs <= 140);
    assert_true(json_num(out, "late_max_us") >= json_num(out, "late_p50_us"));
    assert_true(h_alive(&b));
    assert_int_equal(h_stop(&b), 0);

    /* Without the handler every stream fails at once (no_handler): the run must fail. */
    struct broker_proc plain = h_start(1, NULL);
    rc = run_bench(&plain, out, sizeof(out), "--preset", "streams", "--requesters", "1", "--window",
                   "5", "--duration-s", "0.5", "--warmup-s", "0", NULL);
    fprintf(stderr, "%s", out);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "\"ok\":false"));
    assert_int_equal(h_stop(&plain), 0);
}

static bool find_program(const char *prog, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s:/usr/sbin:/usr/bin", path ? path : "");
    for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir;
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(out, cap, "%s/%s", dir, prog);
        if (access(out, X_OK) == 0)
            return true;
    }
    return false;
}

/* Starts a peer broker (argv[0] a full path, "PORT" replaced by a free port) and waits until
 * it accepts. Returns its pid, or 0 if it did not come up within 10 s. */
static pid_t start_peer(const char **argv, uint16_t *port)
{
    *port = h_free_port();
    char ps[16];
    snprintf(ps, sizeof(ps), "%u", *port);
    const char *av[16];
    int n = 0;
    for (; argv[n] && n < 15; n++)
        av[n] = strcmp(argv[n], "PORT") == 0 ? ps : argv[n];
    av[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execv(av[0], (char *const *)av);
        _exit(127);
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(*port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int64_t deadline = h_now_ms() + 10000; h_now_ms() < deadline; usleep(20000)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        if (ok)
            return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return 0;
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}

/* The NATS and Redis drivers against the real servers (skipped where they are not
 * installed: Debian packages nats-server and redis-server). */
static void peer_run(const char *broker, const char **argv)
{
    struct broker_proc peer = {0};
    peer.pid = start_peer(argv, &peer.port);
    assert_true(peer.pid > 0);
    static char out[OUT_BYTES];
    int rc =
        run_bench(&peer, out, sizeof(out), "--broker", broker, "--publishers", "2", "--subscribers",
                  "4", "--campaigns", "2", "--duration-s", "1", "--warmup-s", "0.2", NULL);
    fprintf(stderr, "%s", out);
    kill(peer.pid, SIGTERM);
    waitpid(peer.pid, NULL, 0);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_true(json_num(out, "delivered") == json_num(out, "expected"));
    assert_true(json_num(out, "delivered") > 0);
}

static void test_nats_driver(void **state)
{
    (void)state;
    char bin[PATH_MAX];
    if (!find_program("nats-server", bin, sizeof(bin)))
        fail_msg("nats-server is not installed (./dev deps installs it)");
    const char *argv[] = {bin, "-a", "127.0.0.1", "-p", "PORT", NULL};
    peer_run("nats", argv);
}

static void test_redis_driver(void **state)
{
    (void)state;
    char bin[PATH_MAX];
    if (!find_program("redis-server", bin, sizeof(bin)))
        fail_msg("redis-server is not installed (./dev deps installs it)");
    const char *argv[] = {bin,      "--bind", "127.0.0.1",    "--port", "PORT",
                          "--save", "",       "--appendonly", "no",     NULL};
    peer_run("redis", argv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_rate_delivers_everything),
        cmocka_unit_test(test_fixed_rate_measures_latency),
        cmocka_unit_test(test_client_ids_string_and_deep),
        cmocka_unit_test(test_deep_queue_mixed_sizes),
        cmocka_unit_test(test_loss_fails_the_run),
        cmocka_unit_test(test_lifecycle_round_trips),
        cmocka_unit_test(test_streams_with_heartbeats),
        cmocka_unit_test(test_lifecycle_failures),
        cmocka_unit_test(test_nats_driver),
        cmocka_unit_test(test_redis_driver),
    };
    return cmocka_run_group_tests(tests, find_bench, NULL);
}
