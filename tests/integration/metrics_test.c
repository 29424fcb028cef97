// SPDX-License-Identifier: Apache-2.0
//
// The Prometheus endpoint, scraped over HTTP while a load runs: counters move as they should,
// the exposition parses line by line (and passes `promtool check metrics`), and other paths get
// 404. Scrapes are served beside a client that trickles its request and beside more idle
// connections than the server holds; routes, methods and oversized requests get their
// statuses; /healthz and /readyz answer; the process series (CPU, memory, descriptors, start
// time), the build info and the media room gauges are there and move.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "handlers_util.h"

/* Connects to 127.0.0.1:port; reads on the socket give up after timeout_ms. Returns the socket
 * or -1. */
static int tcp_connect(uint16_t port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends a raw request to 127.0.0.1:port and reads the answer to end of file into buf (reads
 * give up after timeout_ms); returns the HTTP status or -1. */
static int http_raw(uint16_t port, const char *req, size_t len, char *buf, size_t cap,
                    int timeout_ms)
{
    buf[0] = 0;
    int fd = tcp_connect(port, timeout_ms);
    if (fd < 0)
        return -1;
    if (send(fd, req, len, MSG_NOSIGNAL) != (ssize_t)len) {
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
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
        return -1;
    return status;
}

/* `METHOD path` with a Host header, as http_raw. */
static int http_req(uint16_t port, const char *method, const char *path, char *buf, size_t cap,
                    int timeout_ms)
{
    char req[256];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", method, path);
    return http_raw(port, req, (size_t)n, buf, cap, timeout_ms);
}

/* GETs path into buf; returns the HTTP status or -1. A scrape that does not complete in 10 s is
 * a failure, not a hang. */
static int http_get(uint16_t port, const char *path, char *buf, size_t cap)
{
    return http_req(port, "GET", path, buf, cap, 10000);
}

/* The answer's body (after the header block), or NULL if the header block is incomplete. */
static const char *http_body(const char *answer)
{
    const char *p = strstr(answer, "\r\n\r\n");
    return p ? p + 4 : NULL;
}

/* The answer's Content-Length, or -1. */
static long http_content_length(const char *answer)
{
    const char *p = strstr(answer, "Content-Length: ");
    return p ? strtol(p + 16, NULL, 10) : -1;
}

/* True when the broker has closed the socket: a read returns end of file or a reset within
 * timeout_ms. Bytes read count as open (the broker answered instead). */
static bool closed_by_peer(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

/* Sums a metric's samples over shards (lines "name{...} value"). */
static double metric_sum(const char *text, const char *name, const char *label)
{
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, name, nl) != 0 || p[nl] != '{')
            continue;
        const char *end = strchr(p, '}');
        const char *eol = strchr(p, '\n');
        if (!end || (eol && end > eol))
            continue;
        if (label && !memmem(p, (size_t)(end - p), label, strlen(label)))
            continue;
        sum += strtod(end + 1, NULL);
    }
    return sum;
}

static void test_metrics_move(void **state)
{
    (void)state;
    uint16_t mport = h_free_port();
    char maddr[64];
    snprintf(maddr, sizeof(maddr), "127.0.0.1:%u", mport);
    struct broker_proc b = H_START(2, "--metrics", maddr, "--test-handlers", NULL);
    static char text[512 * 1024];
    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    assert_non_null(strstr(text, "Content-Type: text/plain; version=0.0.4"));
    double events0 = metric_sum(text, "nexus_events_in_total", NULL);

    struct nexus_client *sub = h_connect(&b, NULL);
    struct nexus_client *pub = h_connect(&b, NULL);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_int_equal(nexus_subscribe_sync(sub, 5, NULL, 0, NULL, NULL, NULL, 5000), 1);
    for (int i = 0; i < 200; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "load:tick:v1:completed", 5, NULL, NULL, 0);
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    struct codec_emit_in e;
    nexus_emit_init(&e, "test:echo:v1:requested", 5, NULL, NULL, 0);
    struct nexus_frame f;
    assert_int_equal(nexus_emit_sync(pub, &e, &f, 5000), 1);
    /* wait until the subscriber has everything: 200 + requested + started + success */
    int got = 0;
    while (got < 203 && nexus_recv(sub, &f, 5000) == 1)
        got += f.kind == CODEC_KIND_EVENT;
    assert_int_equal(got, 203);

    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    assert_true(metric_sum(text, "nexus_events_in_total", NULL) >= events0 + 203);
    assert_true(metric_sum(text, "nexus_events_out_total", NULL) >= 203);
    assert_int_equal(metric_sum(text, "nexus_connections", NULL), 2);
    assert_int_equal(metric_sum(text, "nexus_subscriptions", NULL), 1);
    assert_int_equal(metric_sum(text, "nexus_requests_total", "outcome=\"success\""), 1);
    assert_true(metric_sum(text, "nexus_delivery_latency_seconds_count", NULL) >= 1);
    assert_true(metric_sum(text, "nexus_frames_in_total", NULL) >= 203);
    /* every sample line is `name{labels} number` */
    const char *body = strstr(text, "\r\n\r\n") + 4;
    for (const char *p = body; *p; p = strchr(p, '\n') + 1) {
        if (*p != '#') {
            /* the value follows the labels, whose values may hold blanks */
            const char *rb = strchr(p, '}'), *eol = strchr(p, '\n');
            const char *sp = strchr(rb && (!eol || rb < eol) ? rb : p, ' ');
            assert_non_null(sp);
            char *end;
            strtod(sp + 1, &end);
            assert_true(*end == '\n');
        }
        if (!strchr(p, '\n'))
            break;
    }
    assert_int_equal(http_get(mport, "/nope", text, sizeof(text)), 404);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* Starts a 2-shard broker with --metrics on a free port, stored in *mport. */
static struct broker_proc start_with_metrics(uint16_t *mport)
{
    *mport = h_free_port();
    char maddr[64];
    snprintf(maddr, sizeof(maddr), "127.0.0.1:%u", *mport);
    return H_START(2, "--metrics", maddr, NULL);
}

/* A client that trickles a never-ending request (one byte per 300 ms) delays no scrape, and
 * its trickle does not extend its deadline: it is closed about 2 s after it connected. */
static void test_metrics_slow_client(void **state)
{
    (void)state;
    uint16_t mport;
    struct broker_proc b = start_with_metrics(&mport);
    static char text[512 * 1024];
    int slow = tcp_connect(mport, 5000);
    assert_true(slow >= 0);
    int64_t t0 = h_now_ms();
    const char *line = "GET /metrics HTTP/1.1\r\nX-Slow: ";
    for (size_t i = 0; i < 5; i++) {
        char ch = line[i];
        assert_int_equal(send(slow, &ch, 1, MSG_NOSIGNAL), 1);
        int64_t s = h_now_ms();
        assert_int_equal(http_req(mport, "GET", "/metrics", text, sizeof(text), 1000), 200);
        int64_t took = h_now_ms() - s;
        print_message("scrape %zu beside the slow client: 200 in %lld ms\n", i + 1,
                      (long long)took);
        assert_true(took < 1000);
        assert_non_null(strstr(text, "# TYPE nexus_events_in_total counter"));
        int64_t next = t0 + 300 * (int64_t)(i + 1);
        if (h_now_ms() < next)
            usleep((useconds_t)(next - h_now_ms()) * 1000);
    }
    /* the scrapes ran while the slow client was still connected, not after it */
    assert_true(h_now_ms() - t0 < 1900);
    assert_false(closed_by_peer(slow, 0));
    int64_t closed_at = -1;
    for (size_t i = 5; closed_at < 0 && h_now_ms() - t0 < 5000; i++) {
        char ch = i < strlen(line) ? line[i] : 'a';
        send(slow, &ch, 1, MSG_NOSIGNAL); /* fails once the broker has closed it */
        if (closed_by_peer(slow, 300))
            closed_at = h_now_ms() - t0;
    }
    close(slow);
    print_message("slow client closed by the broker %lld ms after its connect\n",
                  (long long)closed_at);
    assert_true(closed_at >= 1800);
    assert_true(closed_at <= 2500);
    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    assert_int_equal(metric_sum(text, "nexus_metrics_closes_total", "reason=\"request_timeout\""),
                     1);
    assert_int_equal(h_stop(&b), 0);
}

/* 70 idle connections (over the limit of 64) do not lock scrapers out: each connection past
 * the limit evicts the one that has waited longest for its request, the scrape is served at
 * once, and the idle ones left are closed at their request deadline. */
static void test_metrics_many_idle(void **state)
{
    (void)state;
    enum { IDLE = 70, LIMIT = 64 };
    uint16_t mport;
    struct broker_proc b = start_with_metrics(&mport);
    static char text[512 * 1024];
    int idle[IDLE];
    int64_t t0 = h_now_ms();
    for (int i = 0; i < IDLE; i++) {
        idle[i] = tcp_connect(mport, 5000);
        assert_true(idle[i] >= 0);
    }
    usleep(200000); /* the broker has accepted them all */
    int64_t s = h_now_ms();
    assert_int_equal(http_req(mport, "GET", "/metrics", text, sizeof(text), 1000), 200);
    int64_t took = h_now_ms() - s;
    print_message("scrape beside %d idle connections: 200 in %lld ms\n", IDLE, (long long)took);
    assert_true(took < 1000);
    /* IDLE + 1 connections, LIMIT slots: the IDLE + 1 - LIMIT oldest were evicted */
    int evicted = IDLE + 1 - LIMIT;
    for (int i = 0; i < IDLE; i++) {
        bool closed = closed_by_peer(idle[i], 0);
        if (closed != (i < evicted))
            print_message("idle connection %d: %s\n", i, closed ? "closed" : "open");
        assert_int_equal(closed, i < evicted);
    }
    assert_int_equal(metric_sum(text, "nexus_metrics_closes_total", "reason=\"limit\""), evicted);
    /* the others are closed at their request deadline, 2 s after their accept (the accept of
     * the last ones can lag the connect by a second or more under ASan on a loaded machine:
     * the listen backlog is 64, so 4 s from the first connect) */
    int open_left = 0;
    for (int i = evicted; i < IDLE; i++) {
        int64_t left = t0 + 4000 - h_now_ms();
        open_left += !closed_by_peer(idle[i], left > 0 ? (int)left : 0);
    }
    int64_t all_closed = h_now_ms() - t0;
    print_message("%d idle connections left open at %lld ms\n", open_left, (long long)all_closed);
    assert_int_equal(open_left, 0);
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    assert_true(h_alive(&b));
    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    assert_int_equal(metric_sum(text, "nexus_metrics_closes_total", "reason=\"request_timeout\""),
                     IDLE - evicted);
    assert_int_equal(h_stop(&b), 0);
}

/* Routing: /metrics with or without a query, HEAD, /healthz, 404 for any other path (/
 * included), 405 for other methods, 400 for a malformed request line, 431 (or a close) for a
 * request over 8 KiB. */
static void test_metrics_routes(void **state)
{
    (void)state;
    uint16_t mport;
    struct broker_proc b = start_with_metrics(&mport);
    static char text[512 * 1024], get[512 * 1024];
    assert_int_equal(http_get(mport, "/healthz", text, sizeof(text)), 200);
    assert_non_null(strstr(text, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(http_body(text));
    assert_string_equal(http_body(text), "{\"status\":\"ok\"}");
    assert_int_equal(http_content_length(text), 15);
    assert_int_equal(http_get(mport, "/", text, sizeof(text)), 404);
    assert_int_equal(http_get(mport, "/metricsx", text, sizeof(text)), 404);
    assert_int_equal(http_get(mport, "/healthz/x", text, sizeof(text)), 404);

    assert_int_equal(http_get(mport, "/metrics?x=1", get, sizeof(get)), 200);
    assert_non_null(http_body(get));
    assert_non_null(strstr(http_body(get), "# TYPE nexus_events_in_total counter"));
    assert_int_equal(http_content_length(get), strlen(http_body(get)));

    assert_int_equal(http_req(mport, "HEAD", "/metrics", text, sizeof(text), 10000), 200);
    assert_non_null(strstr(text, "Content-Type: text/plain; version=0.0.4"));
    assert_non_null(http_body(text));
    assert_string_equal(http_body(text), "");
    long head_len = http_content_length(text), get_len = http_content_length(get);
    print_message("HEAD /metrics Content-Length %ld, GET %ld\n", head_len, get_len);
    assert_true(head_len > 1000);
    assert_true(labs(head_len - get_len) < 64);

    assert_int_equal(http_req(mport, "POST", "/metrics", text, sizeof(text), 10000), 405);
    assert_non_null(strstr(text, "\r\nAllow: GET, HEAD\r\n"));
    assert_int_equal(http_req(mport, "DELETE", "/", text, sizeof(text), 10000), 405);
    const char *bad = "hello\r\n\r\n";
    assert_int_equal(http_raw(mport, bad, strlen(bad), text, sizeof(text), 10000), 400);

    static char big[9000 + 64];
    int n = snprintf(big, sizeof(big), "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 9000);
    memcpy(big + n + 9000, "\r\n\r\n", 4);
    int st = http_raw(mport, big, (size_t)n + 9004, text, sizeof(text), 10000);
    print_message("request of %d bytes: %d\n", n + 9004, st);
    assert_true(st == 431 || st == -1); /* the close may reset the answer away */
    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    assert_int_equal(metric_sum(text, "nexus_metrics_closes_total", "reason=\"too_large\""), 1);
    assert_int_equal(h_stop(&b), 0);
}

/* /healthz and /readyz: GET and HEAD, with a query string, and their neighbours 404. */
static void test_metrics_health_ready(void **state)
{
    (void)state;
    uint16_t mport;
    struct broker_proc b = start_with_metrics(&mport);
    static char text[64 * 1024];
    /* The client port accepts (into its backlog) as soon as it is bound, before the shards'
     * loops run (after every shard recovered): until then /readyz says 503, and why. */
    int st = 0;
    for (int64_t end = h_now_ms() + 10000; h_now_ms() < end; usleep(20000)) {
        st = http_get(mport, "/readyz", text, sizeof(text));
        if (st != 503)
            break;
        assert_non_null(strstr(text, "{\"status\":\"not ready\",\"reason\":\"shard "));
    }
    assert_int_equal(st, 200);
    assert_non_null(strstr(text, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(http_body(text));
    assert_string_equal(http_body(text), "{\"status\":\"ready\"}");
    assert_int_equal(http_content_length(text), strlen("{\"status\":\"ready\"}"));
    assert_int_equal(http_get(mport, "/readyz?probe=kubelet&x=1", text, sizeof(text)), 200);
    assert_string_equal(http_body(text), "{\"status\":\"ready\"}");
    assert_int_equal(http_get(mport, "/healthz?x", text, sizeof(text)), 200);
    assert_string_equal(http_body(text), "{\"status\":\"ok\"}");
    for (int i = 0; i < 2; i++) {
        const char *path = i ? "/readyz" : "/healthz";
        assert_int_equal(http_req(mport, "HEAD", path, text, sizeof(text), 10000), 200);
        assert_non_null(http_body(text));
        assert_string_equal(http_body(text), ""); /* HEAD: the headers only */
        assert_int_equal(http_content_length(text), i ? 18 : 15);
    }
    static const char *const not_found[] = {"/readyz/", "/readyz/x",  "/ready", "/readyzz",
                                            "/health",  "/metrics/x", "/READYZ"};
    for (size_t i = 0; i < sizeof(not_found) / sizeof(not_found[0]); i++) {
        assert_int_equal(http_get(mport, not_found[i], text, sizeof(text)), 404);
        assert_non_null(strstr(text, "/readyz"));
    }
    assert_int_equal(http_req(mport, "POST", "/readyz", text, sizeof(text), 10000), 405);
    assert_int_equal(h_stop(&b), 0);
}

/* The value of the unlabelled sample `name value` in an exposition, or -1. */
static double metric_value(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, nl) == 0 && p[nl] == ' ')
            return strtod(p + nl + 1, NULL);
    return -1;
}

/* Runs `promtool check metrics` on the body of an answer: it must exit 0 with nothing to say.
 * promtool missing is a failure (CI installs the prometheus package), not a skip. */
static void promtool_check(const char *answer)
{
    const char *body = http_body(answer);
    assert_non_null(body);
    char path[] = "/tmp/nexus-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
    const char *argv[] = {"sh", "-c", cmd, NULL};
    struct h_child ch;
    int rc = h_run(&ch, argv, 30000);
    print_message("promtool check metrics: exit %d, stdout \"%s\", stderr \"%s\"\n", rc,
                  ch.out ? ch.out : "", ch.err ? ch.err : "");
    assert_int_equal(rc, 0);
    assert_non_null(ch.out);
    assert_string_equal(ch.out, "");
    h_child_free(&ch);
    unlink(path);
}

/* The process series and the build info: present, plausible, moving with the load;
 * promtool accepts the whole exposition. */
static void test_metrics_process(void **state)
{
    (void)state;
    uint16_t mport;
    time_t t0 = time(NULL);
    struct broker_proc b = start_with_metrics(&mport);
    static char text[512 * 1024];
    assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
    promtool_check(text);
    double cpu0 = metric_value(text, "process_cpu_seconds_total");
    double fds0 = metric_value(text, "process_open_fds");
    double start = metric_value(text, "process_start_time_seconds");
    double rss = metric_value(text, "process_resident_memory_bytes");
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    print_message("cpu %.3f s, fds %.0f, start %.0f (test began %lld), rss %.0f, max fds %.0f\n",
                  cpu0, fds0, start, (long long)t0, rss, metric_value(text, "process_max_fds"));
    assert_true(cpu0 >= 0);
    assert_true(fds0 > 3);
    assert_true(start >= (double)t0 - 5 && start <= (double)time(NULL) + 5);
    assert_true(rss > 1e6 && (double)h_rss_bytes(&b) / rss > 0.5 &&
                (double)h_rss_bytes(&b) / rss < 2);
    assert_true(metric_value(text, "process_virtual_memory_bytes") >= rss);
    assert_true(metric_value(text, "process_max_fds") == (double)rl.rlim_cur);
    assert_non_null(strstr(text, "\nnexus_build_info{version=\"" NEXUS_VERSION "\",compiler=\""));
    assert_true(metric_sum(text, "nexus_shard_heartbeat_age_seconds", NULL) < 2 * 2.0);

    /* 10 connections are 10 more descriptors; their load costs CPU time. */
    struct nexus_client *c[10];
    for (int i = 0; i < 10; i++)
        assert_non_null(c[i] = h_connect(&b, NULL));
    double cpu = cpu0;
    for (int round = 0; round < 20 && cpu <= cpu0; round++) {
        for (int i = 0; i < 10; i++)
            for (int k = 0; k < 200; k++)
                assert_int_equal(h_ping(c[i], 5000), 1);
        assert_int_equal(http_get(mport, "/metrics", text, sizeof(text)), 200);
        cpu = metric_value(text, "process_cpu_seconds_total");
    }
    print_message("cpu %.3f s -> %.3f s, fds %.0f -> %.0f\n", cpu0, cpu, fds0,
                  metric_value(text, "process_open_fds"));
    assert_true(cpu > cpu0);
    assert_true(metric_value(text, "process_open_fds") >= fds0 + 10);
    promtool_check(text);
    for (int i = 0; i < 10; i++)
        nexus_close(c[i]);
    assert_int_equal(h_stop(&b), 0);
}

static int media_join(struct nexus_client *c, int64_t camp, const char *ctx, const char *peer,
                      const char *id, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", ctx);
    hs_put_cstring(&w, "peer_id", peer);
    hp_end(&w);
    int r = h_request(c, "media:join_room:v1:requested", camp, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

/* Waits until the media gauges, summed over shards, read rooms and peers (the scrape races
 * the owner's update by a ring hop). */
static bool media_gauges_become(uint16_t mport, double rooms, double peers, char *text, size_t cap)
{
    for (int i = 0; i < 100; i++) {
        if (http_get(mport, "/metrics", text, cap) == 200 &&
            metric_sum(text, "nexus_media_rooms", NULL) == rooms &&
            metric_sum(text, "nexus_media_peers", NULL) == peers)
            return true;
        usleep(50000);
    }
    print_message("media gauges: rooms %.0f peers %.0f, wanted %.0f %.0f\n",
                  metric_sum(text, "nexus_media_rooms", NULL),
                  metric_sum(text, "nexus_media_peers", NULL), rooms, peers);
    return false;
}

/* nexus_media_rooms and nexus_media_peers follow the rooms: two peers join two rooms, one
 * leaves by closing its connection, and everything is back to 0 at the end. The stats frame
 * carries the same numbers. */
static void test_metrics_media(void **state)
{
    (void)state;
    uint16_t mport;
    struct broker_proc b = start_with_metrics(&mport);
    static char text[512 * 1024];
    assert_true(media_gauges_become(mport, 0, 0, text, sizeof(text)));
    int64_t camp = h_campaign_on(1, 2, 7000);
    struct nexus_client *pa = h_connect_on(&b, 0), *pb = h_connect_on(&b, 1);
    assert_true(pa && pb);
    struct hev e = {0};
    assert_int_equal(media_join(pa, camp, "room-1", "a", "ja", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_true(media_gauges_become(mport, 1, 1, text, sizeof(text)));
    assert_int_equal(h_stat_sum(pa, offsetof(struct codec_shard_stats, media_rooms)), 1);
    assert_int_equal(media_join(pb, camp, "room-1", "b", "jb", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_int_equal(media_join(pb, camp, "room-2", "b", "jb2", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_true(media_gauges_become(mport, 2, 3, text, sizeof(text)));
    assert_int_equal(h_stat_sum(pa, offsetof(struct codec_shard_stats, media_peers)), 3);
    nexus_close(pb); /* b leaves both rooms; room-2 is empty and freed */
    assert_true(media_gauges_become(mport, 1, 1, text, sizeof(text)));
    nexus_close(pa);
    assert_true(media_gauges_become(mport, 0, 0, text, sizeof(text)));
    hev_clear(&e);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_metrics_move, h_teardown),
        cmocka_unit_test_teardown(test_metrics_slow_client, h_teardown),
        cmocka_unit_test_teardown(test_metrics_many_idle, h_teardown),
        cmocka_unit_test_teardown(test_metrics_routes, h_teardown),
        cmocka_unit_test_teardown(test_metrics_health_ready, h_teardown),
        cmocka_unit_test_teardown(test_metrics_process, h_teardown),
        cmocka_unit_test_teardown(test_metrics_media, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
