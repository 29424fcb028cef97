// SPDX-License-Identifier: Apache-2.0
//
// The Python client (client/python/, the `nexus` package) against the real nexusd: runs
// client/python/example.py, which uses the package from the source tree (its protobuf code is
// generated ahead of time and shipped with it: no protoc at run time), subscribes, emits,
// receives, makes a test:echo request and provokes an error. The test checks the example's
// output and exit status, and that a C client
// subscribed to the same campaign received the event Python emitted with the payload and
// metadata Python built: the protocol document and the .proto files were enough, in both
// directions. The package's own tests are tests/python/ (ctest label python).
//
// Needs python3 with google.protobuf (Debian: python3-protobuf, installed by ./dev).
// $NEXUS_PYTHON chooses the interpreter; otherwise the first of python3 (PATH) and
// /usr/bin/python3 that imports google.protobuf is used.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "codec/structpb.h"
#include "harness.h"

static const char *find_python(void)
{
    const char *candidates[] = {getenv("NEXUS_PYTHON"), "python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        if (!candidates[i])
            continue;
        const char *argv[] = {candidates[i], "-c", "import google.protobuf", NULL};
        struct h_child ch;
        int st = h_run(&ch, argv, 30000);
        h_child_free(&ch);
        if (st == 0)
            return candidates[i];
    }
    return NULL;
}

/* A value of the `data` Struct of Payload bytes. */
static struct structpb_value data_get(struct codec_slice payload, const char *key)
{
    struct structpb_value v;
    memset(&v, 0, sizeof(v));
    assert_int_equal(structpb_payload_get(payload.ptr, payload.len, key, &v), 1);
    return v;
}

static void test_python_example(void **state)
{
    (void)state;
    const char *src = getenv("NEXUS_SOURCE_DIR");
    assert_non_null(src);
    const char *py = find_python();
    if (!py)
        fail_msg("no python3 with google.protobuf: install python3-protobuf (./dev deps)");
    setenv("PYTHONDONTWRITEBYTECODE", "1", 1); /* no __pycache__ in the source tree */

    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    /* A C subscriber on the example's campaign sees what Python emits. */
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    const char *pat[] = {"demo:*:v1:*"};
    assert_int_equal(nexus_subscribe_sync(c, 4242, pat, 1, NULL, NULL, NULL, 5000), 1);

    char script[4096], port[16];
    snprintf(script, sizeof(script), "%s/client/python/example.py", src);
    snprintf(port, sizeof(port), "%u", b.port);
    const char *argv[] = {py, script, "--port", port, "--campaign", "4242", NULL};
    struct h_child ch;
    int st = h_run(&ch, argv, 120000);
    if (st != 0)
        fail_msg("example.py exited %d\nstdout:\n%s\nstderr:\n%s", st, ch.out, ch.err);
    assert_string_equal(ch.err, "");
    const char *expect[] = {
        "welcome: server=nexusd ",
        "subscribed: id=",
        "message=accepted\n",
        "event: demo:note:v1:completed sequence=",
        "user=py-user data={\"n\": 3, \"nested\": {\"nothing\": null, \"ok\": true}, \"ratio\": "
        "0.25, \"tags\": [\"a\", \"b\"], \"text\": \"hello from python\"}",
        "request: test:echo:v1:started\n",
        "request: test:echo:v1:success data={\"list\": [1, \"two\", false], \"n\": 42, "
        "\"question\": \"ping\"}\n",
        "error: invalid_event_type: service \"Demo\" must match",
        "\nok\n",
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++)
        if (!strstr(ch.out, expect[i]))
            fail_msg("example.py output lacks `%s`:\n%s", expect[i], ch.out);
    h_child_free(&ch);

    /* Python → C: the event, its Struct payload and its metadata, as Python built them. */
    struct nexus_frame f;
    do
        assert_int_equal(nexus_recv(c, &f, 5000), 1);
    while (f.kind != CODEC_KIND_EVENT);
    assert_true(h_slice_eq(f.u.event.event_type, "demo:note:v1:completed"));
    assert_int_equal(f.u.event.campaign_id, 4242);
    assert_int_equal(f.u.event.sequence, 1);
    struct structpb_value v = data_get(f.u.event.payload, "text");
    assert_int_equal(v.kind, STRUCTPB_STRING);
    assert_int_equal(v.len, strlen("hello from python"));
    assert_memory_equal(v.ptr, "hello from python", v.len);
    v = data_get(f.u.event.payload, "n");
    assert_int_equal(v.kind, STRUCTPB_NUMBER);
    assert_true(v.number == 3);
    v = data_get(f.u.event.payload, "nested");
    assert_int_equal(v.kind, STRUCTPB_STRUCT);
    struct structpb_value ok;
    assert_int_equal(structpb_struct_get(v.ptr, v.len, "ok", &ok), 1);
    assert_int_equal(ok.kind, STRUCTPB_BOOL);
    assert_true(ok.boolean);
    assert_true(h_slice_has(f.u.event.metadata, "py-user"));
    /* Only that one: the request's lifecycle is test:echo:*, not demo:*. */
    assert_int_equal(h_ping(c, 5000), 1);
    while (nexus_recv(c, &f, 1) == 1)
        assert_int_not_equal(f.kind, CODEC_KIND_EVENT);

    nexus_close(c);
    assert_true(h_alive(&b));
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_python_example, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
