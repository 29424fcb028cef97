// SPDX-License-Identifier: Apache-2.0
//
// nexusctl end to end: the real binary ($NEXUSCTL) against the real nexusd, its stdout, stderr
// and exit status captured. Emit + subscribe (patterns, campaign, user filter, duplicates),
// request lifecycles and their exit statuses, a stream cancelled with SIGINT (and with
// --count), a closed stdout (`| head -n1`: exit 0, not SIGPIPE's 141), --human lines, the
// JSON round trip of a nested payload (compared semantically as JSON, and byte for byte against
// what protobuf-c packs for the same Struct, also after JSON -> Struct -> JSON -> Struct),
// stats, and the errors a script relies on: bad JSON, bad event types, bad patterns, an
// unreachable broker, a lost connection.
//
// The JSON printed by nexusctl is read back with the small parser below (the test does not
// link a JSON library), which compares values semantically: objects as unordered maps,
// numbers as doubles.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "common.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "harness.h"

/* ---- a minimal JSON reader ------------------------------------------------------------------ */

enum jv_type { JV_NULL, JV_BOOL, JV_NUM, JV_STR, JV_ARR, JV_OBJ };

struct jv {
    enum jv_type type;
    double num; /* JV_NUM; JV_BOOL: 0 or 1 */
    char *str;  /* JV_STR */
    int n;      /* JV_ARR, JV_OBJ: number of items */
    struct jv *items;
    char **keys;     /* JV_OBJ */
    const char *src; /* where the value's text starts in the parsed input, and its length */
    size_t src_len;
};

static const char *jv_ws(const char *p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

static void jv_put_utf8(char **o, unsigned cp)
{
    unsigned char *u = (unsigned char *)*o;
    if (cp < 0x80) {
        *u++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *u++ = (unsigned char)(0xc0 | cp >> 6);
        *u++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *u++ = (unsigned char)(0xe0 | cp >> 12);
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *u++ = (unsigned char)(0x80 | (cp & 0x3f));
    } else {
        *u++ = (unsigned char)(0xf0 | cp >> 18);
        *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        *u++ = (unsigned char)(0x80 | (cp & 0x3f));
    }
    *o = (char *)u;
}

/* Parses a JSON string at p (at the opening quote). Returns the end, or NULL. */
static const char *jv_string(const char *p, char **out)
{
    const char *q = p + 1;
    char *s = malloc(strlen(p) * 2 + 1), *o = s;
    while (*q && *q != '"') {
        if (*q != '\\') {
            *o++ = *q++;
            continue;
        }
        q++;
        char c = *q++;
        switch (c) {
        case 'n':
            *o++ = '\n';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'u': {
            unsigned cp;
            if (sscanf(q, "%4x", &cp) != 1)
                goto bad;
            q += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && q[0] == '\\' && q[1] == 'u') {
                unsigned lo;
                if (sscanf(q + 2, "%4x", &lo) != 1)
                    goto bad;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                q += 6;
            }
            jv_put_utf8(&o, cp);
            break;
        }
        default: /* " \ / */
            *o++ = c;
        }
    }
    if (*q != '"')
        goto bad;
    *o = 0;
    *out = s;
    return q + 1;
bad:
    free(s);
    return NULL;
}

static const char *jv_parse(const char *p, struct jv *v, int depth);

/* Parses the items of an array or object at p (at '[' or '{'). */
static const char *jv_items(const char *p, struct jv *v, bool object, int depth)
{
    char close = object ? '}' : ']';
    p = jv_ws(p + 1);
    if (*p == close)
        return p + 1;
    for (;;) {
        v->items = realloc(v->items, sizeof(*v->items) * (size_t)(v->n + 1));
        if (object) {
            v->keys = realloc(v->keys, sizeof(*v->keys) * (size_t)(v->n + 1));
            v->keys[v->n] = NULL;
            if (*p != '"' || !(p = jv_string(p, &v->keys[v->n])))
                return NULL;
            p = jv_ws(p);
            if (*p++ != ':')
                return NULL;
        }
        memset(&v->items[v->n], 0, sizeof(v->items[0]));
        p = jv_parse(p, &v->items[v->n++], depth + 1);
        if (!p)
            return NULL;
        p = jv_ws(p);
        if (*p == close)
            return p + 1;
        if (*p++ != ',')
            return NULL;
        p = jv_ws(p);
    }
}

static const char *jv_parse(const char *p, struct jv *v, int depth)
{
    memset(v, 0, sizeof(*v));
    p = jv_ws(p);
    v->src = p;
    if (depth > 200)
        return NULL;
    if (*p == '{') {
        v->type = JV_OBJ;
        p = jv_items(p, v, true, depth);
    } else if (*p == '[') {
        v->type = JV_ARR;
        p = jv_items(p, v, false, depth);
    } else if (*p == '"') {
        v->type = JV_STR;
        p = jv_string(p, &v->str);
    } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
        v->type = JV_BOOL;
        v->num = *p == 't';
        p += *p == 't' ? 4 : 5;
    } else if (strncmp(p, "null", 4) == 0) {
        v->type = JV_NULL;
        p += 4;
    } else {
        char *end;
        v->type = JV_NUM;
        v->num = strtod(p, &end);
        p = end == p ? NULL : end;
    }
    if (p)
        v->src_len = (size_t)(p - v->src);
    return p;
}

static void jv_free(struct jv *v)
{
    for (int i = 0; i < v->n; i++) {
        jv_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    memset(v, 0, sizeof(*v));
}

/* Parses the whole text (nothing but white space after the value). */
static bool jv_load(const char *text, struct jv *v)
{
    const char *end = jv_parse(text, v, 0);
    return end && *jv_ws(end) == 0;
}

static const struct jv *jv_get(const struct jv *o, const char *key)
{
    for (int i = 0; o && o->type == JV_OBJ && i < o->n; i++)
        if (strcmp(o->keys[i], key) == 0)
            return &o->items[i];
    return NULL;
}

static bool jv_equal(const struct jv *a, const struct jv *b)
{
    if (!a || !b || a->type != b->type)
        return false;
    switch (a->type) {
    case JV_NULL:
        return true;
    case JV_BOOL:
    case JV_NUM:
        return a->num == b->num;
    case JV_STR:
        return strcmp(a->str, b->str) == 0;
    case JV_ARR:
        if (a->n != b->n)
            return false;
        for (int i = 0; i < a->n; i++)
            if (!jv_equal(&a->items[i], &b->items[i]))
                return false;
        return true;
    case JV_OBJ:
        if (a->n != b->n)
            return false;
        for (int i = 0; i < a->n; i++)
            if (!jv_equal(&a->items[i], jv_get(b, a->keys[i])))
                return false;
        return true;
    }
    return false;
}

static bool jv_str_is(const struct jv *v, const char *s)
{
    return v && v->type == JV_STR && strcmp(v->str, s) == 0;
}

static double jv_num(const struct jv *v)
{
    return v && v->type == JV_NUM ? v->num : -1;
}

/* Parses line i of a child's stdout as one JSON object. */
static void line_json(const char *out, int i, struct jv *v)
{
    static char line[65536];
    assert_true(h_line(out, i, line, sizeof(line)));
    if (!jv_load(line, v))
        fail_msg("line %d is not JSON: %s", i, line);
    assert_int_equal(v->type, JV_OBJ);
}

/* ---- running nexusctl ----------------------------------------------------------------------- */

static char broker_addr[64];

/* argv for nexusctl: the binary, --broker ADDR, then the NULL-terminated arguments. */
static void ctl_argv(const char **argv, size_t cap, va_list ap)
{
    const char *bin = getenv("NEXUSCTL");
    if (!bin) {
        fprintf(stderr, "NEXUSCTL is not set (run the tests through ctest)\n");
        exit(1);
    }
    size_t n = 0;
    argv[n++] = bin;
    argv[n++] = "--broker";
    argv[n++] = broker_addr;
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < cap - 1)
        argv[n++] = a;
    argv[n] = NULL;
}

/* Starts nexusctl in the background. */
static void ctl_start(struct h_child *ch, ...)
{
    const char *argv[64];
    va_list ap;
    va_start(ap, ch);
    ctl_argv(argv, 64, ap);
    va_end(ap);
    assert_int_equal(h_child_start(ch, argv), 0);
}

/* Runs nexusctl to completion; returns its exit status. */
static int ctl_run(struct h_child *ch, ...)
{
    const char *argv[64];
    va_list ap;
    va_start(ap, ch);
    ctl_argv(argv, 64, ap);
    va_end(ap);
    int st = h_run(ch, argv, 30000);
    if (getenv("NEXUS_TEST_VERBOSE"))
        fprintf(stderr, "[%s ...] -> %d\nstdout: %sstderr: %s", argv[3], st, ch->out, ch->err);
    return st;
}

static struct broker_proc start_broker(void)
{
    struct broker_proc b = H_START(2, "--test-handlers", NULL);
    snprintf(broker_addr, sizeof(broker_addr), "127.0.0.1:%u", b.port);
    return b;
}

/* stderr holds exactly one line, in nexusctl's format, containing what. */
static void assert_one_error_line(const struct h_child *ch, const char *what)
{
    if (strncmp(ch->err, "nexusctl: ", 10) != 0 || h_count_lines(ch->err) != 1 ||
        !strstr(ch->err, what))
        fail_msg("expected one stderr line `nexusctl: ...%s...`, got: %s", what, ch->err);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_emit_and_subscribe(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child sub, bob, ch;
    ctl_start(&sub, "-v", "subscribe", "order:*:v1:*", "-c", "42", "--count", "2", "--timeout",
              "20s", NULL);
    ctl_start(&bob, "--verbose", "subscribe", "--campaign", "42", "--user", "bob", "--timeout",
              "5s", NULL);
    assert_true(h_child_wait_for(&sub, 2, "nexusctl: subscribed", 10000));
    assert_true(h_child_wait_for(&bob, 2, "nexusctl: subscribed", 10000));

    assert_int_equal(ctl_run(&ch, "emit", "order:placed:v1:completed", "-c", "42", "--id", "ev-1",
                             "-u", "alice", "-d", "{\"n\": 1}", NULL),
                     0);
    struct jv ack;
    assert_int_equal(h_count_lines(ch.out), 1);
    line_json(ch.out, 0, &ack);
    assert_true(jv_str_is(jv_get(&ack, "event_id"), "ev-1"));
    assert_true(jv_str_is(jv_get(&ack, "message"), "accepted"));
    assert_true(jv_num(jv_get(&ack, "sequence")) == 1);
    assert_true(jv_num(jv_get(&ack, "campaign_id")) == 42);
    assert_string_equal(ch.err, "");
    jv_free(&ack);
    h_child_free(&ch);

    assert_int_equal(ctl_run(&ch, "emit", "other:placed:v1:completed", "-c", "42", NULL), 0);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "order:shipped:v1:completed", "-c", "42", "--id", "ev-2",
                             "-u", "bob", "--entity", "box-9", NULL),
                     0);
    h_child_free(&ch);
    /* the same (event_id, type) again: acknowledged as a duplicate, not delivered */
    assert_int_equal(
        ctl_run(&ch, "emit", "order:placed:v1:completed", "-c", "42", "--id", "ev-1", NULL), 0);
    line_json(ch.out, 0, &ack);
    assert_true(jv_str_is(jv_get(&ack, "message"), "duplicate"));
    jv_free(&ack);
    h_child_free(&ch);

    /* the pattern subscriber: ev-1 and ev-2, in sequence order, then exit 0 at --count 2 */
    assert_int_equal(h_child_finish(&sub, 20000), 0);
    assert_int_equal(h_count_lines(sub.out), 2);
    struct jv ev;
    line_json(sub.out, 0, &ev);
    assert_true(jv_str_is(jv_get(&ev, "event_id"), "ev-1"));
    assert_true(jv_str_is(jv_get(&ev, "event_type"), "order:placed:v1:completed"));
    assert_true(jv_num(jv_get(&ev, "sequence")) == 1);
    assert_true(jv_num(jv_get(&ev, "timestamp_unix_nanos")) > 1e18);
    assert_true(
        jv_str_is(jv_get(jv_get(jv_get(&ev, "metadata"), "global_context"), "user_id"), "alice"));
    assert_true(jv_num(jv_get(jv_get(jv_get(&ev, "payload"), "data"), "n")) == 1);
    jv_free(&ev);
    line_json(sub.out, 1, &ev);
    assert_true(jv_str_is(jv_get(&ev, "event_id"), "ev-2"));
    assert_true(jv_str_is(jv_get(&ev, "entity_id"), "box-9"));
    assert_true(jv_num(jv_get(&ev, "sequence")) == 3); /* 2 went to other:placed */
    jv_free(&ev);

    /* the user-filtered subscriber: only bob's event; --timeout without --count ends with 0 */
    assert_int_equal(h_child_finish(&bob, 20000), 0);
    assert_int_equal(h_count_lines(bob.out), 1);
    line_json(bob.out, 0, &ev);
    assert_true(jv_str_is(jv_get(&ev, "event_id"), "ev-2"));
    jv_free(&ev);
    h_child_free(&sub);
    h_child_free(&bob);
    assert_int_equal(h_stop(&b), 0);
}

/* subscribe --from-sequence (a broker with --data-dir): the replay from the log first (printed,
 * counted in the -v line), then live events, no gap or repeat; the flag needs --campaign; a
 * broker without a log refuses it (bad_request, exit 3). */
static void test_subscribe_from_sequence(void **state)
{
    (void)state;
    char dir[] = "/tmp/nexusctl-log-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct broker_proc b = H_START(2, "--data-dir", dir, NULL);
    snprintf(broker_addr, sizeof(broker_addr), "127.0.0.1:%u", b.port);
    struct h_child ch, sub;
    for (int i = 1; i <= 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "e%d", i);
        assert_int_equal(
            ctl_run(&ch, "emit", "feed:item:v1:completed", "-c", "77", "--id", id, NULL), 0);
        h_child_free(&ch);
    }
    ctl_start(&sub, "-v", "subscribe", "-c", "77", "--from-sequence", "3", "--count", "5",
              "--timeout", "20s", NULL);
    assert_true(h_child_wait_for(&sub, 2, "replayed 3 events from the log: live from here", 10000));
    for (int i = 6; i <= 7; i++) {
        char id[16];
        snprintf(id, sizeof(id), "e%d", i);
        assert_int_equal(
            ctl_run(&ch, "emit", "feed:item:v1:completed", "-c", "77", "--id", id, NULL), 0);
        h_child_free(&ch);
    }
    assert_int_equal(h_child_finish(&sub, 20000), 0);
    assert_int_equal(h_count_lines(sub.out), 5);
    for (int i = 0; i < 5; i++) {
        struct jv ev;
        char id[16];
        snprintf(id, sizeof(id), "e%d", i + 3);
        line_json(sub.out, (size_t)i, &ev);
        assert_true(jv_num(jv_get(&ev, "sequence")) == i + 3);
        assert_true(jv_str_is(jv_get(&ev, "event_id"), id));
        jv_free(&ev);
    }
    h_child_free(&sub);
    assert_int_equal(ctl_run(&ch, "subscribe", "--from-sequence", "2", NULL), 2);
    assert_one_error_line(&ch, "give --campaign");
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);

    b = start_broker(); /* no --data-dir */
    assert_int_equal(
        ctl_run(&ch, "subscribe", "-c", "77", "--from-sequence", "1", "--timeout", "5s", NULL), 3);
    assert_one_error_line(&ch, "bad_request");
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_request_lifecycle(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child ch;
    struct jv l0, l1, l2;

    assert_int_equal(ctl_run(&ch, "request", "test:echo:v1", "-c", "7", "--id", "r-1", "-d",
                             "{\"hello\": \"world\"}", NULL),
                     0);
    assert_int_equal(h_count_lines(ch.out), 3);
    line_json(ch.out, 0, &l0);
    line_json(ch.out, 1, &l1);
    line_json(ch.out, 2, &l2);
    assert_true(jv_str_is(jv_get(&l0, "event_type"), "test:echo:v1:requested"));
    assert_true(jv_str_is(jv_get(&l0, "event_id"), "r-1"));
    assert_true(jv_str_is(jv_get(&l1, "event_type"), "test:echo:v1:started"));
    assert_true(jv_str_is(jv_get(&l1, "correlation_id"), "r-1"));
    assert_true(jv_num(jv_get(&l1, "sequence")) == jv_num(jv_get(&l0, "sequence")) + 1);
    assert_true(jv_str_is(jv_get(&l2, "event_type"), "test:echo:v1:success"));
    assert_true(jv_str_is(jv_get(&l2, "correlation_id"), "r-1"));
    assert_true(jv_str_is(jv_get(jv_get(jv_get(&l2, "payload"), "data"), "hello"), "world"));
    assert_string_equal(ch.err, "");
    jv_free(&l0);
    jv_free(&l1);
    jv_free(&l2);
    h_child_free(&ch);

    /* failed → 10, with the handler's code on the event and on stderr */
    assert_int_equal(ctl_run(&ch, "request", "test:fail:v1:requested", "-c", "7", NULL), 10);
    assert_int_equal(h_count_lines(ch.out), 3);
    line_json(ch.out, 2, &l2);
    assert_true(jv_str_is(jv_get(&l2, "event_type"), "test:fail:v1:failed"));
    assert_true(jv_str_is(jv_get(&l2, "code"), "test_failure"));
    assert_one_error_line(&ch, "test_failure");
    jv_free(&l2);
    h_child_free(&ch);

    /* no handler and no subscriber → failed with no_handler → 13 */
    assert_int_equal(ctl_run(&ch, "request", "billing:charge:v1", "-c", "3", NULL), 13);
    line_json(ch.out, h_count_lines(ch.out) - 1, &l2);
    assert_true(jv_str_is(jv_get(&l2, "event_type"), "billing:charge:v1:failed"));
    assert_true(jv_str_is(jv_get(&l2, "code"), "no_handler"));
    assert_one_error_line(&ch, "no_handler");
    jv_free(&l2);
    h_child_free(&ch);

    /* the broker's timeout (the request asks for 300 ms) → 12 */
    assert_int_equal(ctl_run(&ch, "stream", "test:stream_ticks:v1", "-c", "9", "-d",
                             "{\"interval_ms\": 50, \"timeout_ms\": 300}", NULL),
                     12);
    line_json(ch.out, h_count_lines(ch.out) - 1, &l2);
    assert_true(jv_str_is(jv_get(&l2, "event_type"), "test:stream_ticks:v1:timeout"));
    assert_one_error_line(&ch, "timeout");
    jv_free(&l2);
    h_child_free(&ch);

    /* a stream that ends on its own (count 3) → success, 0 */
    assert_int_equal(ctl_run(&ch, "stream", "test:stream_ticks:v1", "-c", "9", "-d",
                             "{\"interval_ms\": 20, \"count\": 3}", NULL),
                     0);
    line_json(ch.out, h_count_lines(ch.out) - 1, &l2);
    assert_true(jv_str_is(jv_get(&l2, "event_type"), "test:stream_ticks:v1:success"));
    jv_free(&l2);
    h_child_free(&ch);

    /* nexusctl's own --timeout: a stream that would run for ever → 6 */
    assert_int_equal(
        ctl_run(&ch, "stream", "test:stream_ticks:v1", "-c", "9", "--timeout", "300ms", NULL), 6);
    assert_one_error_line(&ch, "--timeout");
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

static int count_type(const char *out, const char *state)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "\"event_type\":\"test:stream_ticks:v1:%s\"", state);
    int n = 0;
    for (const char *p = out; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

static void test_stream_cancel_on_sigint(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child st;
    ctl_start(&st, "-v", "stream", "test:stream_ticks:v1", "-c", "9", "--id", "s-1", "-d",
              "{\"interval_ms\": 100}", "--heartbeat-ms", "100", NULL);
    int64_t deadline = h_now_ms() + 15000;
    while ((count_type(st.out, "stream") < 3 || count_type(st.out, "heartbeat") < 2) &&
           h_now_ms() < deadline)
        h_child_pump(&st, 50);
    assert_true(count_type(st.out, "stream") >= 3);
    assert_true(count_type(st.out, "heartbeat") >= 2);
    kill(st.pid, SIGINT);
    assert_int_equal(h_child_finish(&st, 20000), 11);
    assert_non_null(strstr(st.err, "nexusctl: sent test:stream_ticks:v1:cancel for request s-1"));

    /* ack, started, stream/heartbeat lines, and exactly one terminal, last: cancelled */
    int lines = h_count_lines(st.out);
    struct jv v;
    line_json(st.out, 0, &v);
    assert_true(jv_str_is(jv_get(&v, "event_type"), "test:stream_ticks:v1:requested"));
    jv_free(&v);
    line_json(st.out, 1, &v);
    assert_true(jv_str_is(jv_get(&v, "event_type"), "test:stream_ticks:v1:started"));
    jv_free(&v);
    double stream_seq = 0;
    for (int i = 2; i < lines - 1; i++) {
        line_json(st.out, i, &v);
        assert_true(jv_str_is(jv_get(&v, "correlation_id"), "s-1"));
        const struct jv *data = jv_get(jv_get(&v, "payload"), "data");
        if (jv_str_is(jv_get(&v, "event_type"), "test:stream_ticks:v1:stream")) {
            assert_true(jv_num(jv_get(&v, "stream_seq")) == ++stream_seq);
            assert_true(jv_num(jv_get(data, "n")) == stream_seq);
        } else {
            assert_true(jv_str_is(jv_get(&v, "event_type"), "test:stream_ticks:v1:heartbeat"));
            assert_true(jv_num(jv_get(data, "stream_count")) >= 0);
            assert_true(jv_num(jv_get(data, "age_ms")) >= 100);
        }
        jv_free(&v);
    }
    line_json(st.out, lines - 1, &v);
    assert_true(jv_str_is(jv_get(&v, "event_type"), "test:stream_ticks:v1:cancelled"));
    assert_true(jv_str_is(jv_get(&v, "correlation_id"), "s-1"));
    jv_free(&v);
    assert_int_equal(count_type(st.out, "cancelled"), 1);
    h_child_free(&st);

    /* The broker agrees: one request cancelled, no stream left open. */
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct codec_shard_stats s[2];
    assert_int_equal(h_stats(c, s, 2, 5000), 2);
    assert_int_equal(s[0].req_cancelled + s[1].req_cancelled, 1);
    assert_int_equal(s[0].open_streams + s[1].open_streams, 0);
    nexus_close(c);

    /* --count: cancel after N stream events, and exit 0 once cancelled */
    struct h_child ch;
    assert_int_equal(ctl_run(&ch, "stream", "test:stream_ticks:v1", "-c", "9", "-d",
                             "{\"interval_ms\": 20}", "--count", "2", NULL),
                     0);
    assert_int_equal(count_type(ch.out, "stream"), 2);
    assert_int_equal(count_type(ch.out, "cancelled"), 1);
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- the JSON round trip ----------------------------------------------------------------------
 */

/* The payload emitted below, as JSON text and as the Struct protobuf-c builds for it. */
static const char *const round_trip_data =
    "{\"a\": 1, \"b\": [true, null, \"x\", {\"c\": 2.5}], "
    "\"s\": \"h\\u00e9llo \\\"q\\\"\\n\\t/\", \"neg\": -3.25, \"big\": 1e300, "
    "\"tiny\": 1.5e-7, \"third\": 0.1, \"pi\": 3.141592653589793, "
    "\"max\": 1.7976931348623157e308, \"neg_zero\": -0.0, \"empty_obj\": {}, \"empty_list\": [], "
    "\"deep\": {\"x\": {\"y\": [[1, 2], [3]]}}}";

static const char *const round_trip_metadata =
    "{\"global_context\": {\"user_id\": \"u-7\", \"session_id\": \"sess\", \"source\": \"cli\"},"
    " \"tags\": [\"x\", \"y\"], \"features\": [\"f1\"],"
    " \"service_specific\": {\"k\": [1, {\"z\": null}]}}";

static Google__Protobuf__Value *pv_new(Google__Protobuf__Value__KindCase kind)
{
    Google__Protobuf__Value *v = malloc(sizeof(*v));
    google__protobuf__value__init(v);
    v->kind_case = kind;
    return v;
}

static Google__Protobuf__Value *pv_num(double x)
{
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE);
    v->number_value = x;
    return v;
}

static Google__Protobuf__Value *pv_str(const char *s)
{
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
    v->string_value = strdup(s);
    return v;
}

static Google__Protobuf__Value *pv_bool(bool b)
{
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE);
    v->bool_value = b;
    return v;
}

static Google__Protobuf__Value *pv_null(void)
{
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE);
    v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
    return v;
}

static Google__Protobuf__Struct *ps_new(void)
{
    Google__Protobuf__Struct *s = malloc(sizeof(*s));
    google__protobuf__struct__init(s);
    s->fields = calloc(16, sizeof(*s->fields));
    return s;
}

/* Appends (key, value): fields are packed in the order they were added. */
static Google__Protobuf__Struct *ps_add(Google__Protobuf__Struct *s, const char *key,
                                        Google__Protobuf__Value *v)
{
    assert_true(s->n_fields < 16);
    Google__Protobuf__Struct__FieldsEntry *e = malloc(sizeof(*e));
    google__protobuf__struct__fields_entry__init(e);
    e->key = strdup(key);
    e->value = v;
    s->fields[s->n_fields++] = e;
    return s;
}

static Google__Protobuf__Value *pv_struct(Google__Protobuf__Struct *s)
{
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE);
    v->struct_value = s;
    return v;
}

static Google__Protobuf__Value *pv_list(int n, ...)
{
    Google__Protobuf__ListValue *l = malloc(sizeof(*l));
    google__protobuf__list_value__init(l);
    l->values = calloc((size_t)n + 1, sizeof(*l->values));
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        l->values[l->n_values++] = va_arg(ap, Google__Protobuf__Value *);
    va_end(ap);
    Google__Protobuf__Value *v = pv_new(GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE);
    v->list_value = l;
    return v;
}

/* What protobuf-c packs for round_trip_data as a common.Payload. */
static uint8_t *expected_payload(size_t *len)
{
    Common__Payload p = COMMON__PAYLOAD__INIT;
    Google__Protobuf__Struct *d = ps_new();
    ps_add(d, "a", pv_num(1));
    ps_add(d, "b",
           pv_list(4, pv_bool(true), pv_null(), pv_str("x"),
                   pv_struct(ps_add(ps_new(), "c", pv_num(2.5)))));
    ps_add(d, "s", pv_str("h\xc3\xa9llo \"q\"\n\t/"));
    ps_add(d, "neg", pv_num(-3.25));
    ps_add(d, "big", pv_num(1e300));
    ps_add(d, "tiny", pv_num(1.5e-7));
    ps_add(d, "third", pv_num(0.1));
    ps_add(d, "pi", pv_num(3.141592653589793));
    ps_add(d, "max", pv_num(1.7976931348623157e308));
    ps_add(d, "neg_zero", pv_num(-0.0));
    ps_add(d, "empty_obj", pv_struct(ps_new()));
    ps_add(d, "empty_list", pv_list(0));
    Google__Protobuf__Value *y =
        pv_list(2, pv_list(2, pv_num(1), pv_num(2)), pv_list(1, pv_num(3)));
    ps_add(d, "deep", pv_struct(ps_add(ps_new(), "x", pv_struct(ps_add(ps_new(), "y", y)))));
    p.data = d;
    *len = common__payload__get_packed_size(&p);
    uint8_t *out = malloc(*len);
    assert_int_equal(common__payload__pack(&p, out), *len);
    protobuf_c_message_free_unpacked(&p.data->base, NULL);
    return out;
}

/* Receives the next event on c and returns a copy of its payload bytes. */
static uint8_t *recv_payload(struct nexus_client *c, const char *event_id, size_t *len)
{
    struct nexus_frame f;
    do
        assert_int_equal(nexus_recv(c, &f, 10000), 1);
    while (f.kind != CODEC_KIND_EVENT);
    assert_true(h_slice_eq(f.u.event.event_id, event_id));
    assert_true(f.u.event.has_payload);
    *len = f.u.event.payload.len;
    uint8_t *copy = malloc(*len);
    memcpy(copy, f.u.event.payload.ptr, *len);
    return copy;
}

static void test_json_round_trip(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    const char *pat[] = {"doc:*:v1:*"};
    assert_int_equal(nexus_subscribe_sync(c, 11, pat, 1, NULL, NULL, NULL, 5000), 1);
    struct h_child sub, ch;
    ctl_start(&sub, "-v", "subscribe", "doc:*:v1:*", "-c", "11", "--count", "2", "--timeout", "20s",
              NULL);
    assert_true(h_child_wait_for(&sub, 2, "nexusctl: subscribed", 10000));

    /* 1. JSON → nexusctl → bytes: exactly what protobuf-c packs for the same Struct */
    assert_int_equal(ctl_run(&ch, "emit", "doc:saved:v1:completed", "-c", "11", "--id", "d-1", "-d",
                             round_trip_data, "-m", round_trip_metadata, NULL),
                     0);
    h_child_free(&ch);
    size_t got_len, want_len;
    uint8_t *got = recv_payload(c, "d-1", &got_len);
    uint8_t *want = expected_payload(&want_len);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    /* and protobuf-c reads and re-packs them unchanged */
    Common__Payload *p = common__payload__unpack(NULL, got_len, got);
    assert_non_null(p);
    uint8_t *repacked = malloc(got_len);
    assert_int_equal(common__payload__pack(p, repacked), got_len);
    assert_memory_equal(repacked, got, got_len);
    common__payload__free_unpacked(p, NULL);
    free(repacked);

    /* 2. bytes → nexusctl subscribe → JSON: semantically the JSON emitted */
    assert_true(h_child_wait_for(&sub, 1, "\n", 10000));
    struct jv ev, data, md;
    line_json(sub.out, 0, &ev);
    assert_true(jv_load(round_trip_data, &data));
    assert_true(jv_load(round_trip_metadata, &md));
    const struct jv *out_data = jv_get(jv_get(&ev, "payload"), "data");
    assert_true(jv_equal(out_data, &data));
    assert_true(jv_equal(jv_get(&ev, "metadata"), &md));
    assert_null(jv_get(jv_get(&ev, "payload"), "versioning"));

    /* 3. that JSON, emitted again: the same bytes (JSON → Struct → JSON → Struct) */
    char *printed = strndup(out_data->src, out_data->src_len);
    assert_int_equal(ctl_run(&ch, "emit", "doc:saved:v1:completed", "-c", "11", "--id", "d-2", "-d",
                             printed, NULL),
                     0);
    h_child_free(&ch);
    size_t again_len;
    uint8_t *again = recv_payload(c, "d-2", &again_len);
    assert_int_equal(again_len, got_len);
    assert_memory_equal(again, got, got_len);
    assert_int_equal(h_child_finish(&sub, 20000), 0);
    struct jv ev2;
    line_json(sub.out, 1, &ev2);
    assert_true(jv_equal(jv_get(jv_get(&ev2, "payload"), "data"), &data));

    jv_free(&ev);
    jv_free(&ev2);
    jv_free(&data);
    jv_free(&md);
    free(printed);
    free(got);
    free(want);
    free(again);
    h_child_free(&sub);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static void test_stats(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child ch;
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", "-c", "5", NULL), 0);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "stats", NULL), 0);
    assert_int_equal(h_count_lines(ch.out), 1);
    struct jv v;
    line_json(ch.out, 0, &v);
    assert_true(jv_num(jv_get(&v, "shard_count")) == 2);
    const struct jv *shards = jv_get(&v, "shards");
    assert_non_null(shards);
    assert_int_equal(shards ? shards->n : 0, 2);
    assert_true(jv_num(jv_get(&v, "rss_bytes")) > 0);
    const struct jv *total = jv_get(&v, "total");
    assert_true(jv_num(jv_get(total, "connections")) >= 1); /* this one */
    assert_true(jv_num(jv_get(total, "events_in")) == 1);
    /* The media gauges are there (no room yet). */
    assert_non_null(jv_get(total, "media_rooms"));
    assert_true(jv_num(jv_get(total, "media_rooms")) == 0);
    assert_non_null(jv_get(total, "media_peers"));
    jv_free(&v);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "stats", "--pretty", NULL), 0);
    assert_true(h_count_lines(ch.out) > 20);
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- a closed stdout, --human ---------------------------------------------------------------- */

/* Starts `nexusctl --broker ADDR ARGS | head -n LINES` in bash; after head's lines, stdout gets
 * "exit=N", nexusctl's own exit status. ARGS is split on spaces (no quoting, no globbing). */
static void pipe_start(struct h_child *ch, const char *args, const char *lines)
{
    const char *script = "set -f; \"$0\" --broker \"$1\" $2 | head -n \"$3\"; "
                         "echo \"exit=${PIPESTATUS[0]}\"";
    const char *argv[] = {"bash", "-c", script, getenv("NEXUSCTL"), broker_addr, args, lines, NULL};
    assert_non_null(argv[3]);
    assert_int_equal(h_child_start(ch, argv), 0);
}

static void pipe_finish(struct h_child *ch, int json_lines)
{
    int st = h_child_finish(ch, 30000);
    if (st != 0 || !strstr(ch->out, "\nexit=0\n") || h_count_lines(ch->out) != json_lines + 1)
        fail_msg("expected %d lines and exit=0 (not 141: SIGPIPE), got status %d:\n%s\nstderr:\n%s",
                 json_lines, st, ch->out, ch->err);
}

static void test_closed_stdout(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child ch, em;

    /* head exits after one line; nexusctl notices the closed pipe while it waits (no write
     * needed) and exits 0. */
    pipe_start(&ch, "-v subscribe -c 61", "1");
    assert_true(h_child_wait_for(&ch, 2, "subscribed", 10000));
    assert_int_equal(ctl_run(&em, "emit", "a:b:v1:completed", "-c", "61", NULL), 0);
    h_child_free(&em);
    pipe_finish(&ch, 1);
    assert_non_null(strstr(ch.err, "stdout closed"));
    h_child_free(&ch);

    /* Events keep coming: the write after head is gone fails with EPIPE; still 0. */
    pipe_start(&ch, "-v subscribe -c 62", "1");
    assert_true(h_child_wait_for(&ch, 2, "subscribed", 10000));
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    for (int i = 0; i < 300; i++) {
        struct codec_emit_in e;
        nexus_emit_init(&e, "a:b:v1:completed", 62, NULL, NULL, 0);
        e.correlation = 0;
        assert_int_equal(nexus_send_emit(c, &e), 0);
    }
    assert_int_equal(h_ping(c, 10000), 1);
    pipe_finish(&ch, 1);
    h_child_free(&ch);

    /* A stream read by head: nexusctl exits 0 and the broker cancels the stream. */
    const char *pat[] = {"test:stream_ticks:*:cancelled"};
    assert_int_equal(nexus_subscribe_sync(c, 63, pat, 1, NULL, NULL, NULL, 5000), 1);
    pipe_start(&ch, "stream test:stream_ticks:v1 -c 63 -d {\"interval_ms\":50}", "3");
    pipe_finish(&ch, 3);
    struct nexus_frame f;
    do
        assert_int_equal(nexus_recv(c, &f, 10000), 1);
    while (f.kind != CODEC_KIND_EVENT);
    assert_true(h_slice_eq(f.u.event.event_type, "test:stream_ticks:v1:cancelled"));
    h_child_free(&ch);
    nexus_close(c);

    /* Any other write error is still an error: 1, one line saying why. */
    const char *full[] = {"bash",
                          "-c",
                          "\"$0\" --broker \"$1\" emit a:b:v1:completed >/dev/full",
                          getenv("NEXUSCTL"),
                          broker_addr,
                          NULL};
    assert_int_equal(h_run(&ch, full, 30000), 1);
    assert_one_error_line(&ch, "cannot write to stdout");
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

/* True when s starts with a --human clock, HH:MM:SS.mmm and a space. */
static bool human_clock(const char *s)
{
    for (int i = 0; i < 12; i++) {
        bool sep = i == 2 || i == 5 || i == 8;
        if (sep ? s[i] != (i == 8 ? '.' : ':') : (s[i] < '0' || s[i] > '9'))
            return false;
    }
    return s[12] == ' ';
}

/* Line i of out, which must be a --human line containing each of the NULL-terminated parts. */
static void human_line(const char *out, int i, ...)
{
    char line[4096];
    assert_true(h_line(out, i, line, sizeof(line)));
    if (!human_clock(line))
        fail_msg("line %d does not start with a clock: %s", i, line);
    va_list ap;
    va_start(ap, i);
    const char *part;
    while ((part = va_arg(ap, const char *)))
        if (!strstr(line, part))
            fail_msg("line %d lacks `%s`: %s", i, part, line);
    va_end(ap);
}

static void test_human(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child sub, ch;
    ctl_start(&sub, "--human", "-v", "subscribe", "-c", "70", "--count", "4", NULL);
    assert_true(h_child_wait_for(&sub, 2, "subscribed", 10000));
    assert_int_equal(ctl_run(&ch, "emit", "order:placed:v1:completed", "-c", "70", "-u", "alice",
                             "-e", "ent-1", "-d", "{\"total\": 42.5, \"items\": [1, 2]}", NULL),
                     0);
    struct jv v;
    line_json(ch.out, 0, &v);
    char id_part[128];
    const struct jv *idv = jv_get(&v, "event_id");
    assert_true(idv && idv->type == JV_STR);
    snprintf(id_part, sizeof(id_part), " id=%s {", idv ? idv->str : "?");
    jv_free(&v);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "--human", "request", "test:echo:v1", "-c", "70", "-d",
                             "{\"hello\": \"world\"}", NULL),
                     0);
    /* request --human: the acknowledgement, started, success. */
    assert_int_equal(h_count_lines(ch.out), 3);
    human_line(ch.out, 0, " test:echo:v1:requested campaign=70 seq=2 accepted id=", NULL);
    human_line(ch.out, 2, " test:echo:v1:success campaign=70 seq=4 corr=", "{\"hello\":\"world\"}",
               NULL);
    h_child_free(&ch);
    assert_int_equal(h_child_finish(&sub, 30000), 0);
    assert_int_equal(h_count_lines(sub.out), 4);
    human_line(sub.out, 0,
               " order:placed:v1:completed campaign=70 seq=1 user=alice entity=ent-1 id=", id_part,
               NULL);
    /* ... and ends with the payload data, compact. */
    char first[4096];
    const char *data = "{\"total\":42.5,\"items\":[1,2]}";
    assert_true(h_line(sub.out, 0, first, sizeof(first)));
    assert_true(strlen(first) > strlen(data));
    assert_string_equal(first + strlen(first) - strlen(data), data);
    human_line(sub.out, 2, " test:echo:v1:started campaign=70 seq=3 corr=", NULL);
    h_child_free(&sub);
    assert_int_equal(h_stop(&b), 0);
}

static void test_errors(void **state)
{
    (void)state;
    struct broker_proc b = start_broker();
    struct h_child ch;

    /* bad JSON: 2, nothing sent */
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", "-d", "{\"a\": ", NULL), 2);
    assert_string_equal(ch.out, "");
    assert_one_error_line(&ch, "--data: invalid JSON");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", "-d", "[1, 2]", NULL), 2);
    assert_one_error_line(&ch, "--data: expected a JSON object, got an array");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", "-m", "{\"nope\": 1}", NULL), 2);
    assert_one_error_line(&ch, "--metadata: unknown field \"nope\"");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "request", "test:echo:v1", "-d", "{\"a\": 1, \"a\": 2}", NULL),
                     2);
    assert_one_error_line(&ch, "duplicate object key");
    h_child_free(&ch);

    /* bad event types: the broker's code and message, 3 */
    assert_int_equal(ctl_run(&ch, "emit", "Order:placed:v1:completed", NULL), 3);
    assert_one_error_line(&ch, "broker error invalid_event_type: service \"Order\" must match");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "order:placed:v01:completed", "--no-ack", NULL), 3);
    assert_one_error_line(&ch, "invalid_event_type");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "order:placed:v1:shipped", NULL), 3);
    assert_one_error_line(&ch, "invalid_event_type");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "subscribe", "order:*", NULL), 3);
    assert_one_error_line(&ch, "invalid_pattern");
    h_child_free(&ch);

    /* usage errors: 2 */
    assert_int_equal(ctl_run(&ch, "frobnicate", NULL), 2);
    assert_one_error_line(&ch, "unknown command frobnicate");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", NULL), 2);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", "--campaign", "x1", NULL), 2);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "request", "test:echo:v1:success", NULL), 2);
    h_child_free(&ch);

    /* help: 0, and it documents the exit statuses */
    assert_int_equal(ctl_run(&ch, "--help", NULL), 0);
    assert_non_null(strstr(ch.out, "Exit statuses"));
    h_child_free(&ch);
    const char *cmds[] = {"emit", "request", "stream", "subscribe", "stats"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ctl_run(&ch, cmds[i], "--help", NULL), 0);
        assert_non_null(strstr(ch.out, "Usage: nexusctl"));
        h_child_free(&ch);
    }
    assert_true(h_alive(&b));

    /* the broker goes away under a subscriber: 5 */
    struct h_child sub;
    ctl_start(&sub, "-v", "subscribe", NULL);
    assert_true(h_child_wait_for(&sub, 2, "nexusctl: subscribed", 10000));
    assert_int_equal(h_stop(&b), 0);
    assert_int_equal(h_child_finish(&sub, 20000), 5);
    assert_non_null(strstr(sub.err, "nexusctl: subscribe: the broker closed the connection"));
    h_child_free(&sub);

    /* Unreachable: 4. Port 1 rather than the stopped broker's port: a connect to a free port
     * of the ephemeral range can meet itself (TCP simultaneous open picks that very port as its
     * source) and succeed; nothing listens on port 1 and no connection is ever given it. */
    snprintf(broker_addr, sizeof(broker_addr), "127.0.0.1:1");
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", NULL), 4);
    assert_one_error_line(&ch, "cannot connect to 127.0.0.1:1: Connection refused");
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "request", "test:echo:v1", NULL), 4);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "subscribe", NULL), 4);
    h_child_free(&ch);
    assert_int_equal(ctl_run(&ch, "--broker", "127.0.0.1:99999", "stats", NULL), 2);
    h_child_free(&ch);
}

/* ---- accounts and TLS ------------------------------------------------------------------------ */

/* A temporary folder with a throwaway CA, a server certificate for 127.0.0.1, and an accounts
 * file (users "bench": everything; "ro": subscribe only; both with the token in `token`).
 * Removed by sec_teardown, also after a failed check. */
static char sec_dir[64];

static int sec_teardown(void **state)
{
    if (sec_dir[0]) {
        const char *rm[] = {"rm", "-rf", sec_dir, NULL};
        struct h_child ch;
        h_run(&ch, rm, 30000);
        h_child_free(&ch);
        sec_dir[0] = 0;
    }
    return h_teardown(state);
}

static const char *const sec_script =
    "set -e; cd \"$1\"; exec 2>setup.log\n"
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
    "-subj /CN=test-ca -keyout ca.key -out ca.pem\n"
    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost "
    "-keyout server.key -out server.csr\n"
    "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' >ext\n"
    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
    "-extfile ext -out server.pem\n"
    "printf 'ctl-test-token-0123456789abcdef\\n' >token\n"
    "h=$(\"$2\" --hash-token <token)\n"
    "printf 'user bench\\n  token %s\\n  publish * *\\n  subscribe * *\\n  request *\\n"
    "  handle *\\n  admin\\nuser ro\\n  token %s\\n  subscribe * *\\n' \"$h\" \"$h\" >accounts\n";

static void test_accounts_and_tls(void **state)
{
    (void)state;
    const char *nexusd = getenv("NEXUSD");
    assert_non_null(nexusd);
    snprintf(sec_dir, sizeof(sec_dir), "/tmp/nexusctl-sec-XXXXXX");
    assert_non_null(mkdtemp(sec_dir));
    const char *sh[] = {"sh", "-c", sec_script, "sh", sec_dir, nexusd, NULL};
    struct h_child ch;
    int st = h_run(&ch, sh, 60000);
    h_child_free(&ch);
    if (st != 0)
        skip(); /* no openssl command, or a nexusd without --hash-token */
    char ca[128], cert[128], key[128], accounts[128], token_file[128];
    snprintf(ca, sizeof(ca), "%s/ca.pem", sec_dir);
    snprintf(cert, sizeof(cert), "%s/server.pem", sec_dir);
    snprintf(key, sizeof(key), "%s/server.key", sec_dir);
    snprintf(accounts, sizeof(accounts), "%s/accounts", sec_dir);
    snprintf(token_file, sizeof(token_file), "%s/token", sec_dir);
    const char *token = "ctl-test-token-0123456789abcdef";

    struct broker_proc b = H_START(2, "--test-handlers", "--accounts", accounts, "--tls-cert", cert,
                                   "--tls-key", key, NULL);
    snprintf(broker_addr, sizeof(broker_addr), "127.0.0.1:%u", b.port);

    /* Everything from the environment (the recommended way: nothing secret in argv). */
    setenv("NEXUS_USER", "bench", 1);
    setenv("NEXUS_TOKEN", token, 1);
    setenv("NEXUS_TLS_CA", ca, 1);
    assert_int_equal(ctl_run(&ch, "stats", NULL), 0);
    assert_int_equal(h_count_lines(ch.out), 1);
    h_child_free(&ch);
    /* A wrong token: 3, and a message that says the login was refused. */
    setenv("NEXUS_TOKEN", "not-the-token-0123456789", 1);
    assert_int_equal(ctl_run(&ch, "emit", "a:b:v1:completed", NULL), 3);
    assert_one_error_line(&ch, "not authorised");
    h_child_free(&ch);
    unsetenv("NEXUS_USER");
    unsetenv("NEXUS_TOKEN");
    unsetenv("NEXUS_TLS_CA");

    /* Flags: --account, --token-file, --tls-ca. */
    assert_int_equal(ctl_run(&ch, "--account", "bench", "--token-file", token_file, "--tls-ca", ca,
                             "request", "test:echo:v1", "-d", "{\"x\": 1}", NULL),
                     0);
    assert_non_null(strstr(ch.out, "\"event_type\":\"test:echo:v1:success\""));
    h_child_free(&ch);
    /* An account without the right: permission_denied, 3. */
    assert_int_equal(ctl_run(&ch, "--account", "ro", "--token", token, "--tls-ca", ca, "emit",
                             "a:b:v1:completed", NULL),
                     3);
    assert_one_error_line(&ch, "permission denied");
    h_child_free(&ch);
    /* No TLS against a TLS broker: the connection fails (5) with a hint. */
    assert_int_equal(ctl_run(&ch, "--account", "bench", "--token", token, "stats", NULL), 5);
    assert_non_null(strstr(ch.err, "--tls-ca"));
    h_child_free(&ch);
    /* TLS with the system store only: the throwaway CA is not trusted (5). */
    assert_int_equal(ctl_run(&ch, "--account", "bench", "--token", token, "--tls", "stats", NULL),
                     5);
    assert_one_error_line(&ch, "not trusted");
    h_child_free(&ch);
    /* The right CA, the wrong name. */
    assert_int_equal(ctl_run(&ch, "--account", "bench", "--token", token, "--tls-ca", ca,
                             "--tls-server-name", "not-this-host", "stats", NULL),
                     5);
    assert_one_error_line(&ch, "hostname mismatch");
    h_child_free(&ch);
    /* --token-file that does not exist: usage, 2. */
    assert_int_equal(ctl_run(&ch, "--token-file", "/nonexistent/token", "stats", NULL), 2);
    h_child_free(&ch);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_emit_and_subscribe, h_teardown),
        cmocka_unit_test_teardown(test_subscribe_from_sequence, h_teardown),
        cmocka_unit_test_teardown(test_request_lifecycle, h_teardown),
        cmocka_unit_test_teardown(test_stream_cancel_on_sigint, h_teardown),
        cmocka_unit_test_teardown(test_json_round_trip, h_teardown),
        cmocka_unit_test_teardown(test_stats, h_teardown),
        cmocka_unit_test_teardown(test_errors, h_teardown),
        cmocka_unit_test_teardown(test_closed_stdout, h_teardown),
        cmocka_unit_test_teardown(test_human, h_teardown),
        cmocka_unit_test_teardown(test_accounts_and_tls, sec_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
