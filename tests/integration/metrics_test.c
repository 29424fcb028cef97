// SPDX-License-Identifier: Apache-2.0
//
// The Prometheus endpoint, scraped over HTTP while a load runs: counters move as they should,
// the exposition parses line by line, and other paths get 404.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>

#include "harness.h"

/* GETs path from 127.0.0.1:port into buf; returns the HTTP status or -1. */
static int http_get(uint16_t port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A scrape that does not complete in 10 s is a failure, not a hang. */
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
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
    struct broker_proc b = h_start(2, "--metrics", maddr, "--test-handlers", NULL);
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
            const char *sp = strchr(p, ' ');
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
