// SPDX-License-Identifier: Apache-2.0
//
// `nexusctl serve ACTION --exec CMD` end to end: the real nexusctl ($NEXUSCTL) serving an action
// of the real nexusd with shell commands, requested by a C client. Each stdout line of the
// command is a `stream` event (a JSON object as the data, other text as {"line": ...}, a line
// over 64 KiB in pieces), exit 0 is `success` with the last line, a non-zero exit is `failed`
// with code command_failed, the exit status and the end of stderr, a signal is command_killed;
// the command gets the request's data on stdin (a large payload does not block a command that
// never reads it) and its ids in the environment, without NEXUS_TOKEN. A cancel, the broker's
// timeout, and stopping nexusctl kill the command's whole process group; --max-inflight
// answers handler_busy; usage errors and a refused registration exit 2 and 3.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "provider_util.h"

/* Generous: nexusd may be an ASan build. */
#define SV_T 10000

static char broker_addr[64];

/* Starts `nexusctl -v serve ACTION --exec CMD [more flags...]` and waits until it serves. */
static void serve_start(struct h_child *ch, const char *action, const char *cmd, ...)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = getenv("NEXUSCTL");
    assert_non_null(argv[0]);
    argv[n++] = "-b";
    argv[n++] = broker_addr;
    argv[n++] = "-v";
    argv[n++] = "serve";
    argv[n++] = action;
    argv[n++] = "--exec";
    argv[n++] = cmd;
    va_list ap;
    va_start(ap, cmd);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    assert_int_equal(h_child_start(ch, argv), 0);
    if (!h_child_wait_for(ch, 2, "nexusctl: serving", SV_T))
        fail_msg("nexusctl serve did not start serving:\n%s", ch->err);
}

/* SIGTERM: nexusctl serve stops its commands and exits 0. */
static void serve_stop(struct h_child *ch)
{
    kill(ch->pid, SIGTERM);
    int st = h_child_finish(ch, SV_T);
    if (st != 0)
        fail_msg("nexusctl serve exited %d on SIGTERM:\n%s", st, ch->err);
}

static struct broker_proc start_broker(void)
{
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    snprintf(broker_addr, sizeof(broker_addr), "127.0.0.1:%u", b.port);
    return b;
}

/* A request from c: its acknowledgement, then `started`. */
static void request(struct nexus_client *c, const char *type, int64_t camp, const char *id,
                    const char *user, const uint8_t *pl, int pl_len)
{
    struct pv_ev e;
    int r = pv_emit(c, type, camp, id, NULL, user, pl, pl_len, &e);
    if (r != 1)
        fail_msg("request %s: r=%d %s: %s", id, r, e.code, e.msg);
}

/* True once process pid is gone (or a zombie nobody reaped yet: it runs no more). */
static bool proc_gone(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *close_paren = strrchr(buf, ')');
    return close_paren && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

static void wait_gone(pid_t pid)
{
    int64_t end = h_now_ms() + SV_T;
    while (!proc_gone(pid) && h_now_ms() < end)
        usleep(20000);
    if (!proc_gone(pid))
        fail_msg("process %d (the command's background child) still runs", (int)pid);
}

static void test_stream_and_success(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    setenv("NEXUS_TOKEN", "must-not-reach-the-command", 1);
    struct h_child sv;
    serve_start(&sv, "shop:quote",
                "cat; echo 'not json'; printf '{\"id\":\"%s\",\"campaign\":\"%s\",\"user\":\"%s\","
                "\"type\":\"%s\",\"token\":\"%s\"}\\n' \"$NEXUS_REQUEST_ID\" "
                "\"$NEXUS_REQUEST_CAMPAIGN\" \"$NEXUS_REQUEST_USER\" \"$NEXUS_REQUEST_TYPE\" "
                "\"${NEXUS_TOKEN:-none}\"",
                NULL);
    unsetenv("NEXUS_TOKEN");

    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "qty", 3, NULL, 0, NULL, 0);
    request(c, "shop:quote:v2:requested", 42, "req-1", "bob", pl, n);
    struct pv_ev e;
    char s[300];
    PV_EXPECT(c, &e, "shop:quote:v2:started", "req-1");
    PV_EXPECT(c, &e, "shop:quote:v2:stream", "req-1"); /* stdin, back through cat */
    assert_int_equal(e.sseq, 1);
    assert_true(pv_num(&e, "qty") == 3);
    PV_EXPECT(c, &e, "shop:quote:v2:stream", "req-1");
    assert_int_equal(e.sseq, 2);
    assert_string_equal(pv_strval(&e, "line", s, sizeof(s)), "not json");
    PV_EXPECT(c, &e, "shop:quote:v2:stream", "req-1");
    assert_string_equal(pv_strval(&e, "id", s, sizeof(s)), "req-1");
    assert_string_equal(pv_strval(&e, "campaign", s, sizeof(s)), "42");
    assert_string_equal(pv_strval(&e, "user", s, sizeof(s)), "bob");
    assert_string_equal(pv_strval(&e, "type", s, sizeof(s)), "shop:quote:v2:requested");
    assert_string_equal(pv_strval(&e, "token", s, sizeof(s)), "none");
    PV_EXPECT(c, &e, "shop:quote:v2:success", "req-1"); /* the last line is the result */
    assert_string_equal(pv_strval(&e, "id", s, sizeof(s)), "req-1");
    assert_string_equal(pv_strval(&e, "type", s, sizeof(s)), "shop:quote:v2:requested");
    PV_QUIET(c, "req-1", 200);

    /* No payload: stdin is {}; no output: success without data. */
    request(c, "shop:quote:v1:requested", 0, "req-2", NULL, NULL, 0);
    PV_EXPECT(c, &e, "shop:quote:v1:started", "req-2");
    PV_EXPECT(c, &e, "shop:quote:v1:stream", "req-2");
    assert_true(e.has_pl);
    PV_EXPECT(c, &e, "shop:quote:v1:stream", "req-2");
    PV_EXPECT(c, &e, "shop:quote:v1:stream", "req-2");
    PV_EXPECT(c, &e, "shop:quote:v1:success", "req-2");
    serve_stop(&sv);
    assert_non_null(strstr(sv.err, "request req-1: command exited 0 after 3 lines"));
    h_child_free(&sv);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_failures(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct h_child sv;
    serve_start(&sv, "job:run",
                "echo partial; echo 'first problem' >&2; echo 'it broke' >&2;"
                "if [ \"$NEXUS_REQUEST_ID\" = sig ]; then kill -9 $$; fi; exit 3",
                NULL);
    struct pv_ev e;
    char s[300];
    request(c, "job:run:v1:requested", 5, "exit", NULL, NULL, 0);
    PV_EXPECT(c, &e, "job:run:v1:started", "exit");
    PV_EXPECT(c, &e, "job:run:v1:stream", "exit");
    assert_string_equal(pv_strval(&e, "line", s, sizeof(s)), "partial");
    PV_EXPECT(c, &e, "job:run:v1:failed", "exit");
    assert_string_equal(e.code, "command_failed");
    assert_true(pv_num(&e, "exit_status") == 3);
    assert_string_equal(pv_strval(&e, "message", s, sizeof(s)), "exit status 3: it broke");
    assert_string_equal(pv_strval(&e, "stderr", s, sizeof(s)), "first problem\nit broke");

    request(c, "job:run:v1:requested", 5, "sig", NULL, NULL, 0);
    PV_EXPECT(c, &e, "job:run:v1:started", "sig");
    PV_EXPECT(c, &e, "job:run:v1:stream", "sig");
    PV_EXPECT(c, &e, "job:run:v1:failed", "sig");
    assert_string_equal(e.code, "command_killed");
    assert_true(pv_num(&e, "signal") == 9);
    serve_stop(&sv);
    h_child_free(&sv);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* The command starts a background child (same process group), reports its pid and waits. */
static const char *const BACKGROUND = "sleep 60 & echo \"{\\\"pid\\\": $!}\"; wait";

/* Reads the pid the BACKGROUND command reported in its first stream event. */
static pid_t started_pid(struct nexus_client *c, const char *type_prefix, const char *rid)
{
    struct pv_ev e;
    char type[128];
    snprintf(type, sizeof(type), "%s:started", type_prefix);
    PV_EXPECT(c, &e, type, rid);
    snprintf(type, sizeof(type), "%s:stream", type_prefix);
    PV_EXPECT(c, &e, type, rid);
    double pid = pv_num(&e, "pid");
    assert_true(pid > 1);
    return (pid_t)pid;
}

static void test_cancel_and_timeout_kill(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct h_child streams, plain;
    serve_start(&streams, "work:watch", BACKGROUND, "--streaming", NULL);
    serve_start(&plain, "work:plain", BACKGROUND, NULL);

    /* The requester cancels: the command and its background child die. */
    request(c, "work:watch:v1:requested", 3, "w-1", NULL, NULL, 0);
    pid_t pid = started_pid(c, "work:watch:v1", "w-1");
    struct pv_ev e;
    assert_int_equal(pv_emit(c, "work:watch:v1:cancel", 3, NULL, "w-1", NULL, NULL, 0, &e), 1);
    PV_EXPECT(c, &e, "work:watch:v1:cancelled", "w-1");
    wait_gone(pid);
    PV_QUIET(c, "w-1", 300); /* nothing from the killed command reaches the request */

    /* The broker's timeout (timeout_ms in the request's data): the same. */
    uint8_t buf[64];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "timeout_ms", 500, NULL, 0, NULL, 0);
    request(c, "work:plain:v1:requested", 4, "p-1", NULL, pl, n);
    pid = started_pid(c, "work:plain:v1", "p-1");
    PV_EXPECT(c, &e, "work:plain:v1:timeout", "p-1");
    wait_gone(pid);

    /* Stopping nexusctl serve kills what runs; the broker fails it with handler_lost. */
    request(c, "work:plain:v1:requested", 4, "p-2", NULL, NULL, 0);
    pid = started_pid(c, "work:plain:v1", "p-2");
    serve_stop(&plain);
    wait_gone(pid);
    PV_EXPECT(c, &e, "work:plain:v1:failed", "p-2");
    assert_string_equal(e.code, "handler_lost");
    assert_true(h_child_wait_for(&streams, 2, "request w-1 cancelled: killing the command", 1));
    serve_stop(&streams);
    h_child_free(&streams);
    h_child_free(&plain);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* The length of data.line of the next event, which must be of type (read whole: pv_ev keeps
 * only the first 4 KiB of a payload). */
static int next_line_len(struct nexus_client *c, const char *type)
{
    for (int i = 0; i < 100; i++) {
        struct nexus_frame f;
        assert_int_equal(nexus_recv(c, &f, SV_T), 1);
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        if (!h_slice_eq(f.u.event.event_type, type))
            fail_msg("expected %s, got %.*s", type, (int)f.u.event.event_type.len,
                     (const char *)f.u.event.event_type.ptr);
        struct structpb_value v;
        assert_int_equal(
            structpb_payload_get(f.u.event.payload.ptr, f.u.event.payload.len, "line", &v), 1);
        assert_int_equal(v.kind, STRUCTPB_STRING);
        for (uint32_t k = 0; k < v.len; k++)
            assert_int_equal(v.ptr[k], 'a');
        return (int)v.len;
    }
    fail_msg("no %s event", type);
    return -1;
}

static void test_busy_stdin_long_lines(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct h_child sv;
    serve_start(&sv, "one:at_a_time",
                "case \"$NEXUS_REQUEST_ID\" in hold) sleep 60;; long) head -c 70000 /dev/zero | "
                "tr '\\0' a; echo;; *) echo done;; esac",
                "--max-inflight", "1", NULL);
    struct pv_ev e;
    char s[300];
    request(c, "one:at_a_time:v1:requested", 1, "hold", NULL, NULL, 0);
    PV_EXPECT(c, &e, "one:at_a_time:v1:started", "hold");
    request(c, "one:at_a_time:v1:requested", 1, "second", NULL, NULL, 0);
    PV_EXPECT(c, &e, "one:at_a_time:v1:started", "second");
    PV_EXPECT(c, &e, "one:at_a_time:v1:failed", "second");
    assert_string_equal(e.code, "handler_busy");
    assert_non_null(strstr(pv_strval(&e, "message", s, sizeof(s)), "--max-inflight 1"));
    assert_int_equal(pv_emit(c, "one:at_a_time:v1:cancel", 1, NULL, "hold", NULL, NULL, 0, &e), 1);
    PV_EXPECT(c, &e, "one:at_a_time:v1:cancelled", "hold");

    /* 300 KB of request data that the command never reads: it still runs and ends. */
    size_t big_len = 300000;
    char *big = malloc(big_len);
    uint8_t *pbuf = malloc(2 * big_len + 256); /* the writer builds a value at its far end */
    assert_non_null(big);
    assert_non_null(pbuf);
    memset(big, 'x', big_len);
    struct structpb_writer w;
    structpb_begin(&w, pbuf, 2 * big_len + 256);
    structpb_add_string(&w, "blob", big, big_len);
    const uint8_t *pl;
    int n = structpb_finish(&w, &pl);
    assert_true(n > 0);
    /* The slot is free once the killed command has been reaped. */
    if (!h_child_wait_for(&sv, 2, "request hold: command killed", SV_T))
        fail_msg("the held command was not killed:\n%s", sv.err);
    request(c, "one:at_a_time:v1:requested", 1, "big", NULL, pl, n);
    PV_EXPECT(c, &e, "one:at_a_time:v1:started", "big");
    PV_EXPECT(c, &e, "one:at_a_time:v1:stream", "big");
    assert_string_equal(pv_strval(&e, "line", s, sizeof(s)), "done");
    PV_EXPECT(c, &e, "one:at_a_time:v1:success", "big");
    free(big);
    free(pbuf);

    /* A 70000-byte line goes in two pieces: 65536 bytes, then the rest. */
    request(c, "one:at_a_time:v1:requested", 1, "long", NULL, NULL, 0);
    PV_EXPECT(c, &e, "one:at_a_time:v1:started", "long");
    assert_int_equal(next_line_len(c, "one:at_a_time:v1:stream"), 65536);
    assert_int_equal(next_line_len(c, "one:at_a_time:v1:stream"), 70000 - 65536);
    assert_int_equal(next_line_len(c, "one:at_a_time:v1:success"), 70000 - 65536);
    serve_stop(&sv);
    h_child_free(&sv);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_usage_and_refusal(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    const char *ctl = getenv("NEXUSCTL");
    assert_non_null(ctl);
    struct h_child ch;
    const char *no_exec[] = {ctl, "-b", broker_addr, "serve", "a:b", NULL};
    assert_int_equal(h_run(&ch, no_exec, SV_T), 2);
    assert_non_null(strstr(ch.err, "--exec CMD is required"));
    h_child_free(&ch);
    const char *bad_action[] = {ctl, "-b", broker_addr, "serve", "a:b:v1", "-e", "true", NULL};
    assert_int_equal(h_run(&ch, bad_action, SV_T), 2);
    h_child_free(&ch);
    const char *refused[] = {ctl, "-b", broker_addr, "serve", "A:b", "-e", "true", NULL};
    assert_int_equal(h_run(&ch, refused, SV_T), 3);
    assert_non_null(strstr(ch.err, "invalid_event_type"));
    h_child_free(&ch);
    const char *inflight[] = {ctl,  "-b",   broker_addr,      "serve", "a:b",
                              "-e", "true", "--max-inflight", "0",     NULL};
    assert_int_equal(h_run(&ch, inflight, SV_T), 2);
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_stream_and_success, h_teardown),
        cmocka_unit_test_teardown(test_failures, h_teardown),
        cmocka_unit_test_teardown(test_cancel_and_timeout_kill, h_teardown),
        cmocka_unit_test_teardown(test_busy_stdin_long_lines, h_teardown),
        cmocka_unit_test_teardown(test_usage_and_refusal, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
