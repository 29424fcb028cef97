// SPDX-License-Identifier: Apache-2.0
//
// Unit tests for codec/evtype: every valid form of an event type and a pattern, every error class
// with the text of its message, the length bounds, the streaming rule, matching, and rebuilding a
// type with another state. Pure code: no sockets, no threads.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "codec/evtype.h"

// --- helpers ------------------------------------------------------------------------------------

static int parse_type(struct evtype *t, const char *s, char *err, size_t cap)
{
    return evtype_parse(t, s, strlen(s), err, cap);
}

static int parse_pattern(struct evpattern *p, const char *s, char *err, size_t cap)
{
    return evpattern_parse(p, s, strlen(s), err, cap);
}

// The text of segment i of a parsed type, for comparisons.
static void seg_text(char *out, const struct evtype *t, const char *s, enum evtype_segment i)
{
    memcpy(out, s + t->seg[i].off, t->seg[i].len);
    out[t->seg[i].len] = '\0';
}

static bool all_printable(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    }
    return true;
}

// Asserts that `haystack` contains `needle`, naming both when it does not.
#define assert_contains(haystack, needle)                                                          \
    do {                                                                                           \
        if (strstr((haystack), (needle)) == NULL) {                                                \
            print_error("message \"%s\" lacks \"%s\"\n", (haystack), (needle));                    \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

// A string of n copies of c (n < sizeof buf).
static char *repeat(char *buf, char c, size_t n)
{
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

// --- valid types --------------------------------------------------------------------------------

static void test_valid_types(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        const char *service, *action, *version;
        uint32_t number;
        enum evtype_state st;
    } cases[] = {
        {"campaign:stream_state:v1:requested", "campaign", "stream_state", "v1", 1,
         EVTYPE_REQUESTED},
        {"media:join_room:v2:success", "media", "join_room", "v2", 2, EVTYPE_SUCCESS},
        {"a:b:v0:stream", "a", "b", "v0", 0, EVTYPE_STREAM},
        {"x1_:y_2_:v10:timeout", "x1_", "y_2_", "v10", 10, EVTYPE_TIMEOUT},
        {"s9:a0:v999999999:heartbeat", "s9", "a0", "v999999999", 999999999, EVTYPE_HEARTBEAT},
        {"campaign:update:v1234:cancelled", "campaign", "update", "v1234", 1234, EVTYPE_CANCELLED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evtype t;
        char err[EVTYPE_ERR_BYTES], buf[EVTYPE_BYTES_MAX + 1];
        memset(err, 'X', sizeof(err));
        assert_int_equal(parse_type(&t, cases[i].s, err, sizeof(err)), 0);
        assert_int_equal(err[0], 'X'); // nothing written on success
        assert_int_equal(t.len, strlen(cases[i].s));
        seg_text(buf, &t, cases[i].s, EVTYPE_SEG_SERVICE);
        assert_string_equal(buf, cases[i].service);
        seg_text(buf, &t, cases[i].s, EVTYPE_SEG_ACTION);
        assert_string_equal(buf, cases[i].action);
        seg_text(buf, &t, cases[i].s, EVTYPE_SEG_VERSION);
        assert_string_equal(buf, cases[i].version);
        seg_text(buf, &t, cases[i].s, EVTYPE_SEG_STATE);
        assert_string_equal(buf, evtype_state_name(cases[i].st));
        assert_int_equal(t.version, cases[i].number);
        assert_int_equal(t.state, cases[i].st);
    }
}

static void test_each_state(void **state)
{
    (void)state;
    static const char *const names[EVTYPE_STATE_COUNT] = {
        "requested", "started",   "stream", "heartbeat", "success",
        "failed",    "completed", "cancel", "cancelled", "timeout",
    };
    for (int st = 0; st < EVTYPE_STATE_COUNT; st++) {
        char s[64];
        struct evtype t;
        assert_string_equal(evtype_state_name((enum evtype_state)st), names[st]);
        snprintf(s, sizeof(s), "svc:act:v3:%s", names[st]);
        assert_int_equal(parse_type(&t, s, NULL, 0), 0);
        assert_int_equal(t.state, st);
        assert_int_equal(t.seg[EVTYPE_SEG_STATE].off, strlen("svc:act:v3:"));
        assert_int_equal(t.seg[EVTYPE_SEG_STATE].len, strlen(names[st]));
    }
}

// Input is (pointer, length): bytes after `len` are never read, and no NUL is needed.
static void test_not_nul_terminated(void **state)
{
    (void)state;
    const char buf[] = {'a', ':', 'b', ':', 'v', '1', ':', 's', 't', 'r', 'e', 'a', 'm', 'X'};
    struct evtype t;
    assert_int_equal(evtype_parse(&t, buf, sizeof(buf) - 1, NULL, 0), 0);
    assert_int_equal(t.state, EVTYPE_STREAM);
    assert_int_equal(evtype_parse(&t, buf, sizeof(buf), NULL, 0), EVTYPE_ESTATE);
    // A prefix of a valid type is parsed as what it is: three segments.
    assert_int_equal(evtype_parse(&t, buf, 6, NULL, 0), EVTYPE_ESEGMENTS);
}

// --- errors -------------------------------------------------------------------------------------

struct error_case {
    const char *s;
    int code;
    const char *msg[3]; // each must appear in the message
};

static void check_type_errors(const struct error_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct evtype t;
        char err[EVTYPE_ERR_BYTES];
        memset(err, 'X', sizeof(err));
        int r = parse_type(&t, cases[i].s, err, sizeof(err));
        if (r != cases[i].code) {
            print_error("\"%s\": got %d (%s), want %d\n", cases[i].s, r, err, cases[i].code);
            fail();
        }
        assert_true(strlen(err) < sizeof(err) - 1); // never cut in an EVTYPE_ERR_BYTES buffer
        assert_true(all_printable(err));
        for (size_t k = 0; k < 3 && cases[i].msg[k]; k++)
            assert_contains(err, cases[i].msg[k]);
    }
}

static void test_type_errors(void **state)
{
    (void)state;
    static const struct error_case cases[] = {
        {"", EVTYPE_EEMPTY, {"event type is empty"}},
        // segment count
        {"abc", EVTYPE_ESEGMENTS, {"expected 4 segments separated by ':' (got 1)", "\"abc\""}},
        {"a:b:v1", EVTYPE_ESEGMENTS, {"expected 4 segments separated by ':' (got 3)"}},
        {"a:b:v1:requested:x", EVTYPE_ESEGMENTS, {"(got 5)", "\"a:b:v1:requested:x\""}},
        {":::", EVTYPE_ESERVICE, {"service is empty"}},
        {"::::", EVTYPE_ESEGMENTS, {"(got 5)"}},
        {"a:b:v1:requested:", EVTYPE_ESEGMENTS, {"(got 5)"}},
        // service
        {"Campaign:x:v1:requested",
         EVTYPE_ESERVICE,
         {"service \"Campaign\" must match [a-z][a-z0-9_]*"}},
        {"1abc:x:v1:requested", EVTYPE_ESERVICE, {"service \"1abc\" must match"}},
        {"_abc:x:v1:requested", EVTYPE_ESERVICE, {"service \"_abc\" must match"}},
        {"cam-paign:x:v1:requested", EVTYPE_ESERVICE, {"service \"cam-paign\""}},
        {"camPaign:x:v1:requested", EVTYPE_ESERVICE, {"service \"camPaign\""}},
        {" a:x:v1:requested", EVTYPE_ESERVICE, {"service \" a\""}},
        {"*:x:v1:requested", EVTYPE_ESERVICE, {"service \"*\" must match"}},
        {":x:v1:requested", EVTYPE_ESERVICE, {"service is empty", "\":x:v1:requested\""}},
        // action
        {"a:B:v1:requested", EVTYPE_EACTION, {"action \"B\" must match [a-z][a-z0-9_]*"}},
        {"a:9lives:v1:requested", EVTYPE_EACTION, {"action \"9lives\""}},
        {"a:b.c:v1:requested", EVTYPE_EACTION, {"action \"b.c\""}},
        {"a::v1:requested", EVTYPE_EACTION, {"action is empty"}},
        // version
        {"a:b:x1:requested", EVTYPE_EVERSION, {"version \"x1\" must be 'v' followed by digits"}},
        {"a:b:v:requested", EVTYPE_EVERSION, {"version \"v\" must be 'v' followed by digits"}},
        {"a:b:V1:requested", EVTYPE_EVERSION, {"version \"V1\""}},
        {"a:b:1:requested", EVTYPE_EVERSION, {"version \"1\""}},
        {"a:b:v1a:requested", EVTYPE_EVERSION, {"version \"v1a\""}},
        {"a:b:v-1:requested", EVTYPE_EVERSION, {"version \"v-1\""}},
        {"a:b:v+1:requested", EVTYPE_EVERSION, {"version \"v+1\""}},
        {"a:b:v 1:requested", EVTYPE_EVERSION, {"version \"v 1\""}},
        {"a:b:v1.0:requested", EVTYPE_EVERSION, {"version \"v1.0\""}},
        {"a:b:v1234567890:requested",
         EVTYPE_EVERSION,
         {"version \"v1234567890\" must have at most 9 digits"}},
        {"a:b:v4294967296:requested", EVTYPE_EVERSION, {"at most 9 digits"}},
        {"a:b:v01:requested", EVTYPE_EVERSION, {"version \"v01\" must not have leading zeros"}},
        {"a:b:v00:requested", EVTYPE_EVERSION, {"version \"v00\" must not have leading zeros"}},
        {"a:b::requested", EVTYPE_EVERSION, {"version is empty"}},
        // state
        {"a:b:v1:done",
         EVTYPE_ESTATE,
         {"unknown state \"done\" (expected one of requested, started, stream, heartbeat, "
          "success, failed, completed, cancel, cancelled, timeout)"}},
        {"a:b:v1:Requested", EVTYPE_ESTATE, {"unknown state \"Requested\""}},
        {"a:b:v1:requested ", EVTYPE_ESTATE, {"unknown state \"requested \""}},
        {"a:b:v1:request", EVTYPE_ESTATE, {"unknown state \"request\""}},
        {"a:b:v1:requestedd", EVTYPE_ESTATE, {"unknown state \"requestedd\""}},
        {"a:b:v1:*", EVTYPE_ESTATE, {"unknown state \"*\""}},
        {"a:b:v1:", EVTYPE_ESTATE, {"state is empty"}},
        // the leftmost bad part is the one named
        {"A:B:x:done", EVTYPE_ESERVICE, {"service \"A\""}},
        {"a:B:x:done", EVTYPE_EACTION, {"action \"B\""}},
        {"a:b:x:done", EVTYPE_EVERSION, {"version \"x\""}},
    };
    check_type_errors(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_every_state_in_unknown_state_message(void **state)
{
    (void)state;
    struct evtype t;
    char err[EVTYPE_ERR_BYTES];
    assert_int_equal(parse_type(&t, "a:b:v1:nope", err, sizeof(err)), EVTYPE_ESTATE);
    for (int st = 0; st < EVTYPE_STATE_COUNT; st++)
        assert_contains(err, evtype_state_name((enum evtype_state)st));
}

static void test_embedded_nul(void **state)
{
    (void)state;
    static const char s[] = "a:b:v1:requ\0ested";
    struct evtype t;
    struct evpattern p;
    char err[EVTYPE_ERR_BYTES];
    assert_int_equal(evtype_parse(&t, s, sizeof(s) - 1, err, sizeof(err)), EVTYPE_ENUL);
    assert_string_equal(err, "event type contains a NUL byte at offset 11");
    // A NUL is named as such even when the segment count is also wrong.
    assert_int_equal(evtype_parse(&t, "\0", 1, err, sizeof(err)), EVTYPE_ENUL);
    assert_string_equal(err, "event type contains a NUL byte at offset 0");
    assert_int_equal(evtype_parse(&t, "a:b:v1:stream\0", 14, err, sizeof(err)), EVTYPE_ENUL);
    assert_int_equal(evpattern_parse(&p, "*\0", 2, err, sizeof(err)), EVTYPE_ENUL);
    assert_string_equal(err, "pattern contains a NUL byte at offset 1");
}

static void test_length_bounds(void **state)
{
    (void)state;
    char s[EVTYPE_BYTES_MAX + 8], name[EVTYPE_NAME_BYTES_MAX + 8], err[EVTYPE_ERR_BYTES];
    struct evtype t;

    // Names: 64 bytes pass, 65 fail naming the bound.
    snprintf(s, sizeof(s), "%s:b:v1:started", repeat(name, 'a', EVTYPE_NAME_BYTES_MAX));
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), 0);
    snprintf(s, sizeof(s), "a:%s:v1:started", repeat(name, 'b', EVTYPE_NAME_BYTES_MAX));
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), 0);
    snprintf(s, sizeof(s), "%s:b:v1:started", repeat(name, 'a', EVTYPE_NAME_BYTES_MAX + 1));
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), EVTYPE_ESERVICE);
    assert_contains(err, "is longer than 64 bytes");
    snprintf(s, sizeof(s), "a:%s:v1:started", repeat(name, 'b', EVTYPE_NAME_BYTES_MAX + 1));
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), EVTYPE_EACTION);
    assert_contains(err, "action \"bbbb");
    assert_contains(err, "is longer than 64 bytes");

    // The longest valid type.
    char longest[EVTYPE_BYTES_MAX + 1], other[EVTYPE_NAME_BYTES_MAX + 1];
    snprintf(longest, sizeof(longest), "%s:%s:v999999999:heartbeat",
             repeat(name, 's', EVTYPE_NAME_BYTES_MAX), repeat(other, 'a', EVTYPE_NAME_BYTES_MAX));
    assert_int_equal(parse_type(&t, longest, err, sizeof(err)), 0);
    assert_int_equal(t.len, 2 * EVTYPE_NAME_BYTES_MAX + 3 + 10 + 9);

    // Whole input: 255 bytes is judged by its segments, 256 is too long before anything else.
    repeat(s, 'a', EVTYPE_BYTES_MAX);
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), EVTYPE_ESEGMENTS);
    repeat(s, 'a', EVTYPE_BYTES_MAX + 1);
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), EVTYPE_ETOOLONG);
    assert_string_equal(err, "event type longer than 255 bytes (got 256)");
    // Too long wins over an embedded NUL.
    s[3] = '\0';
    assert_int_equal(evtype_parse(&t, s, EVTYPE_BYTES_MAX + 1, err, sizeof(err)), EVTYPE_ETOOLONG);
}

// Client bytes in messages are escaped and cut: the message stays printable and bounded.
static void test_message_quoting(void **state)
{
    (void)state;
    struct evtype t;
    char err[EVTYPE_ERR_BYTES];
    static const char bad[] = "\x01\xff\"\\\n:x:v1:started";
    assert_int_equal(evtype_parse(&t, bad, sizeof(bad) - 1, err, sizeof(err)), EVTYPE_ESERVICE);
    assert_string_equal(err, "service \"\\x01\\xff\\\"\\\\\\x0a\" must match [a-z][a-z0-9_]*");
    assert_true(all_printable(err));

    // A long bad segment: 64 bytes of escaped text, then "...".
    char s[EVTYPE_BYTES_MAX + 1], name[128];
    snprintf(s, sizeof(s), "a:b:v1:%s", repeat(name, 'z', 100));
    assert_int_equal(parse_type(&t, s, err, sizeof(err)), EVTYPE_ESTATE);
    char want[sizeof(name) + 32];
    snprintf(want, sizeof(want), "unknown state \"%s\"...", repeat(name, 'z', 64));
    assert_contains(err, want);

    // Escapes are never split at the cut: 16 escapes of 4 bytes fill the 64 exactly, the 17th
    // is left out whole.
    char ctl[EVTYPE_BYTES_MAX + 1];
    memset(ctl, 0x7f, 40);
    memcpy(ctl + 40, ":b:v1:stream", 12);
    assert_int_equal(evtype_parse(&t, ctl, 52, err, sizeof(err)), EVTYPE_ESERVICE);
    char *open = strchr(err, '"'), *close = strchr(open + 1, '"');
    assert_int_equal(close - open - 1, 64);
    assert_contains(err, "\\x7f\"... must match");

    // The longest message there is still fits EVTYPE_ERR_BYTES uncut.
    memset(ctl, 0xff, 200);
    memcpy(ctl, "*:*:*:", 6);
    struct evpattern p;
    assert_int_equal(evpattern_parse(&p, ctl, 200, err, sizeof(err)), EVTYPE_ESTATE);
    assert_true(strlen(err) < sizeof(err) - 1);
    assert_contains(err, "timeout)");
}

static void test_error_buffer_sizes(void **state)
{
    (void)state;
    struct evtype t;
    char err[EVTYPE_ERR_BYTES];

    assert_int_equal(parse_type(&t, "Bad:x:v1:stream", NULL, 0), EVTYPE_ESERVICE);
    memset(err, 'X', sizeof(err));
    assert_int_equal(parse_type(&t, "Bad:x:v1:stream", err, 1), EVTYPE_ESERVICE);
    assert_int_equal(err[0], '\0');
    assert_int_equal(err[1], 'X');
    memset(err, 'X', sizeof(err));
    assert_int_equal(parse_type(&t, "Bad:x:v1:stream", err, 10), EVTYPE_ESERVICE);
    assert_string_equal(err, "service \"");
    assert_int_equal(err[10], 'X');
}

static void test_strerror(void **state)
{
    (void)state;
    static const int codes[] = {EVTYPE_EEMPTY,   EVTYPE_ETOOLONG, EVTYPE_ENUL,     EVTYPE_ESEGMENTS,
                                EVTYPE_ESERVICE, EVTYPE_EACTION,  EVTYPE_EVERSION, EVTYPE_ESTATE};
    const size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] < -4095); // never a negative errno
        const char *m = evtype_strerror(codes[i]);
        assert_non_null(m);
        assert_string_not_equal(m, "unknown error");
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(m, evtype_strerror(codes[k]));
    }
    assert_string_equal(evtype_strerror(0), "success");
    assert_string_equal(evtype_strerror(-ENOSPC), "output buffer too small");
    assert_string_equal(evtype_strerror(-EINVAL), "unknown error");
    assert_string_equal(evtype_strerror(12345), "unknown error");
}

// --- helpers for the broker ---------------------------------------------------------------------

static void test_prefixes(void **state)
{
    (void)state;
    static const char s[] = "campaign:stream_state:v12:requested";
    struct evtype t;
    assert_int_equal(parse_type(&t, s, NULL, 0), 0);
    assert_int_equal(evtype_prefix_len(&t, EVTYPE_SEG_SERVICE), strlen("campaign"));
    assert_int_equal(evtype_prefix_len(&t, EVTYPE_SEG_ACTION), strlen("campaign:stream_state"));
    assert_int_equal(evtype_prefix_len(&t, EVTYPE_SEG_VERSION),
                     strlen("campaign:stream_state:v12"));
    assert_int_equal(evtype_prefix_len(&t, EVTYPE_SEG_STATE), strlen(s));
}

static void test_streaming_rule(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool streaming;
    } cases[] = {
        // action starts with stream_
        {"campaign:stream_state:v1:requested", true},
        {"campaign:stream_analytics:v1:requested", true},
        {"media:stream_rooms:v2:requested", true},
        {"x:stream_:v1:requested", true},
        // the type contains :word: (only ever the action, exactly)
        {"x:stream:v1:requested", true},
        {"chat:typing:v1:requested", true},
        {"room:presence:v1:requested", true},
        {"llm:chunks:v1:requested", true},
        {"score:live:v1:requested", true},
        {"feed:realtime:v3:requested", true},
        {"live:live:v1:requested", true},
        // near misses
        {"campaign:state:v1:requested", false},
        {"campaign:update:v1:requested", false},
        {"x:streams:v1:requested", false},
        {"x:streaming:v1:requested", false},
        {"x:streamx:v1:requested", false},
        {"x:my_stream_x:v1:requested", false},
        {"x:typing_indicator:v1:requested", false},
        {"x:live_feed:v1:requested", false},
        {"x:realtime2:v1:requested", false},
        {"x:chunk:v1:requested", false},
        {"stream:x:v1:requested", false},
        {"stream_x:x:v1:requested", false},
        {"typing:x:v1:requested", false},
        {"live:x:v1:requested", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evtype t;
        assert_int_equal(parse_type(&t, cases[i].s, NULL, 0), 0);
        if (evtype_is_streaming_request(&t, cases[i].s) != cases[i].streaming) {
            print_error("%s: want streaming=%d\n", cases[i].s, cases[i].streaming);
            fail();
        }
    }

    // The rule applies to `requested` only, including the `stream` state itself.
    static const char *const streamy[] = {"campaign:stream_state:v1", "chat:typing:v1",
                                          "x:stream:v1", "feed:realtime:v3"};
    for (size_t i = 0; i < sizeof(streamy) / sizeof(streamy[0]); i++) {
        for (int st = 0; st < EVTYPE_STATE_COUNT; st++) {
            char s[64];
            struct evtype t;
            snprintf(s, sizeof(s), "%s:%s", streamy[i], evtype_state_name((enum evtype_state)st));
            assert_int_equal(parse_type(&t, s, NULL, 0), 0);
            assert_int_equal(evtype_is_streaming_request(&t, s), st == EVTYPE_REQUESTED);
        }
    }
}

static void test_with_state(void **state)
{
    (void)state;
    static const char s[] = "campaign:stream_state:v12:requested";
    struct evtype t, t2;
    char out[EVTYPE_BYTES_MAX + 1];
    assert_int_equal(parse_type(&t, s, NULL, 0), 0);

    for (int st = 0; st < EVTYPE_STATE_COUNT; st++) {
        char want[64];
        const char *name = evtype_state_name((enum evtype_state)st);
        snprintf(want, sizeof(want), "campaign:stream_state:v12:%s", name);
        int n = evtype_with_state(&t, s, (enum evtype_state)st, out, sizeof(out));
        assert_int_equal(n, strlen(want));
        assert_string_equal(out, want);
        assert_int_equal(evtype_parse(&t2, out, (size_t)n, NULL, 0), 0);
        assert_int_equal(t2.state, st);
        assert_int_equal(t2.version, 12);
    }

    // Exactly enough room (with the NUL), and one byte less.
    const size_t need = strlen("campaign:stream_state:v12:heartbeat") + 1;
    memset(out, 'X', sizeof(out));
    assert_int_equal(evtype_with_state(&t, s, EVTYPE_HEARTBEAT, out, need - 1), -ENOSPC);
    assert_int_equal(out[0], 'X'); // untouched
    assert_int_equal(evtype_with_state(&t, s, EVTYPE_HEARTBEAT, out, need), (int)need - 1);
    assert_string_equal(out, "campaign:stream_state:v12:heartbeat");
    assert_int_equal(evtype_with_state(&t, s, EVTYPE_STREAM, out, 0), -ENOSPC);

    // In place: out is the parsed buffer itself.
    char inplace[EVTYPE_BYTES_MAX + 1] = "a:b:v1:cancelled";
    assert_int_equal(parse_type(&t, inplace, NULL, 0), 0);
    assert_int_equal(evtype_with_state(&t, inplace, EVTYPE_HEARTBEAT, inplace, sizeof(inplace)),
                     (int)strlen("a:b:v1:heartbeat"));
    assert_string_equal(inplace, "a:b:v1:heartbeat");

    // The longest valid type with the longest state fits EVTYPE_BYTES_MAX + 1.
    char longest[EVTYPE_BYTES_MAX + 1], a[EVTYPE_NAME_BYTES_MAX + 1], b[EVTYPE_NAME_BYTES_MAX + 1];
    snprintf(longest, sizeof(longest), "%s:%s:v999999999:stream",
             repeat(a, 'a', EVTYPE_NAME_BYTES_MAX), repeat(b, 'b', EVTYPE_NAME_BYTES_MAX));
    assert_int_equal(parse_type(&t, longest, NULL, 0), 0);
    int n = evtype_with_state(&t, longest, EVTYPE_CANCELLED, out, sizeof(out));
    assert_true(n > 0);
    assert_int_equal(n, strlen(longest) - strlen("stream") + strlen("cancelled"));
}

// --- patterns -----------------------------------------------------------------------------------

#define W(seg) (1u << EVTYPE_SEG_##seg)

static void test_valid_patterns(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        unsigned wild;
    } cases[] = {
        {"*", EVPATTERN_WILD_ALL},
        {"*:*:*:*", EVPATTERN_WILD_ALL},
        {"campaign:*:v1:success", W(ACTION)},
        {"*:*:*:stream", W(SERVICE) | W(ACTION) | W(VERSION)},
        {"campaign:*:*:*", W(ACTION) | W(VERSION) | W(STATE)},
        {"*:stream_state:*:*", W(SERVICE) | W(VERSION) | W(STATE)},
        {"*:*:v2:*", W(SERVICE) | W(ACTION) | W(STATE)},
        {"*:*:*:requested", W(SERVICE) | W(ACTION) | W(VERSION)},
        {"campaign:update:v1:*", W(STATE)},
        {"campaign:update:*:success", W(VERSION)},
        {"*:update:v1:success", W(SERVICE)},
        {"campaign:update:v1:success", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evpattern p;
        char err[EVTYPE_ERR_BYTES] = "";
        int r = parse_pattern(&p, cases[i].s, err, sizeof(err));
        if (r != 0) {
            print_error("%s: %d %s\n", cases[i].s, r, err);
            fail();
        }
        assert_int_equal(p.wild, cases[i].wild);
        assert_int_equal(p.len, strlen(cases[i].s));
        assert_memory_equal(p.text, cases[i].s, p.len);
    }

    struct evpattern p;
    assert_int_equal(parse_pattern(&p, "campaign:*:v7:cancel", NULL, 0), 0);
    assert_int_equal(p.version, 7);
    assert_int_equal(p.state, EVTYPE_CANCEL);
    assert_int_equal(p.seg[EVTYPE_SEG_SERVICE].len, strlen("campaign"));
}

static void test_pattern_errors(void **state)
{
    (void)state;
    static const struct error_case cases[] = {
        {"", EVTYPE_EEMPTY, {"pattern is empty"}},
        {"**", EVTYPE_ESEGMENTS, {"expected '*' or 4 segments separated by ':' (got 1)"}},
        {"*:*:*", EVTYPE_ESEGMENTS, {"(got 3)", "\"*:*:*\""}},
        {"*:*:*:*:*", EVTYPE_ESEGMENTS, {"(got 5)"}},
        {"Camp:*:*:*", EVTYPE_ESERVICE, {"service \"Camp\" must be '*' or match [a-z][a-z0-9_]*"}},
        {"camp*:*:*:*", EVTYPE_ESERVICE, {"service \"camp*\""}},
        {"**:*:*:*", EVTYPE_ESERVICE, {"service \"**\""}},
        {":*:*:*", EVTYPE_ESERVICE, {"service is empty"}},
        {"*:Act:*:*", EVTYPE_EACTION, {"action \"Act\" must be '*' or match"}},
        {"*:*:v*:*", EVTYPE_EVERSION, {"version \"v*\" must be '*' or 'v' followed by digits"}},
        {"*:*:v01:*", EVTYPE_EVERSION, {"version \"v01\" must not have leading zeros"}},
        {"*:*:v1234567890:*", EVTYPE_EVERSION, {"at most 9 digits"}},
        {"*:*:*:done", EVTYPE_ESTATE, {"unknown state \"done\" (expected '*' or one of requested"}},
        {"*:*:*:", EVTYPE_ESTATE, {"state is empty"}},
        {"*:*:*:* ", EVTYPE_ESTATE, {"unknown state \"* \""}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evpattern p;
        char err[EVTYPE_ERR_BYTES];
        int r = parse_pattern(&p, cases[i].s, err, sizeof(err));
        if (r != cases[i].code) {
            print_error("\"%s\": got %d (%s), want %d\n", cases[i].s, r, err, cases[i].code);
            fail();
        }
        assert_true(all_printable(err));
        for (size_t k = 0; k < 3 && cases[i].msg[k]; k++)
            assert_contains(err, cases[i].msg[k]);
    }

    char s[EVTYPE_BYTES_MAX + 2], err[EVTYPE_ERR_BYTES];
    struct evpattern p;
    repeat(s, '*', EVTYPE_BYTES_MAX + 1);
    assert_int_equal(parse_pattern(&p, s, err, sizeof(err)), EVTYPE_ETOOLONG);
    assert_string_equal(err, "pattern longer than 255 bytes (got 256)");
}

static void test_match_table(void **state)
{
    (void)state;
    static const struct {
        const char *pattern, *type;
        bool match;
    } cases[] = {
        {"*", "campaign:update:v1:requested", true},
        {"*:*:*:*", "a:b:v0:timeout", true},
        {"campaign:*:v1:success", "campaign:update:v1:success", true},
        {"campaign:*:v1:success", "campaign:state:v1:success", true},
        {"campaign:*:v1:success", "campaign:update:v2:success", false},
        {"campaign:*:v1:success", "campaign:update:v1:failed", false},
        {"campaign:*:v1:success", "campaigns:update:v1:success", false},
        {"campaign:*:v1:success", "campaig:update:v1:success", false},
        {"campaign:*:v1:success", "media:update:v1:success", false},
        {"*:*:*:stream", "campaign:stream_state:v1:stream", true},
        {"*:*:*:stream", "campaign:stream_state:v1:started", false},
        {"*:*:*:cancel", "x:y:v1:cancelled", false},
        {"*:*:*:cancelled", "x:y:v1:cancel", false},
        {"*:stream_state:*:*", "campaign:stream_state:v9:heartbeat", true},
        {"*:stream_state:*:*", "campaign:stream_stat:v9:heartbeat", false},
        {"*:stream_state:*:*", "campaign:stream_statf:v9:heartbeat", false},
        {"*:*:v2:*", "x:y:v2:success", true},
        {"*:*:v2:*", "x:y:v20:success", false},
        {"*:*:v2:*", "x:y:v12:success", false},
        {"*:*:v0:*", "x:y:v0:success", true},
        {"campaign:update:v1:requested", "campaign:update:v1:requested", true},
        {"campaign:update:v1:requested", "campaign:update:v1:started", false},
        {"campaign:update:*:*", "campaign:update:v999999999:completed", true},
        {"campaign:update:*:*", "campaign:updatex:v1:completed", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evpattern p;
        struct evtype t;
        assert_int_equal(parse_pattern(&p, cases[i].pattern, NULL, 0), 0);
        assert_int_equal(parse_type(&t, cases[i].type, NULL, 0), 0);
        if (evpattern_match(&p, &t, cases[i].type) != cases[i].match) {
            print_error("%s vs %s: want %d\n", cases[i].pattern, cases[i].type, cases[i].match);
            fail();
        }
    }
}

// A pattern outlives the bytes it was parsed from, and survives a struct copy.
static void test_pattern_self_contained(void **state)
{
    (void)state;
    char frame[64];
    struct evpattern p, copy;
    struct evtype t;
    static const char type[] = "campaign:update:v3:success";

    strcpy(frame, "campaign:update:v3:success");
    assert_int_equal(parse_pattern(&p, frame, NULL, 0), 0);
    memset(frame, 'Z', sizeof(frame)); // the subscribe frame's buffer is reused
    memcpy(&copy, &p, sizeof(p));
    assert_int_equal(parse_type(&t, type, NULL, 0), 0);
    assert_true(evpattern_match(&p, &t, type));
    assert_true(evpattern_match(&copy, &t, type));
    assert_int_equal(parse_type(&t, "campaign:updatf:v3:success", NULL, 0), 0);
    assert_false(evpattern_match(&copy, &t, "campaign:updatf:v3:success"));
}

// Every valid type is also a valid pattern, matching itself, "*", and the type with any set of
// segments replaced by '*'.
static void test_type_as_pattern(void **state)
{
    (void)state;
    static const char *const types[] = {"campaign:stream_state:v1:requested", "a:b:v0:stream",
                                        "media:join_room:v42:cancel"};
    struct evpattern star;
    assert_int_equal(parse_pattern(&star, "*", NULL, 0), 0);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        struct evtype t;
        struct evpattern p;
        assert_int_equal(parse_type(&t, types[i], NULL, 0), 0);
        assert_true(evpattern_match(&star, &t, types[i]));
        for (unsigned mask = 0; mask <= EVPATTERN_WILD_ALL; mask++) {
            char s[EVTYPE_BYTES_MAX + 1];
            size_t o = 0;
            for (int g = 0; g < EVTYPE_SEG_COUNT; g++) {
                if (g)
                    s[o++] = ':';
                if (mask & (1u << g)) {
                    s[o++] = '*';
                } else {
                    memcpy(s + o, types[i] + t.seg[g].off, t.seg[g].len);
                    o += t.seg[g].len;
                }
            }
            assert_int_equal(evpattern_parse(&p, s, o, NULL, 0), 0);
            assert_int_equal(p.wild, mask);
            assert_true(evpattern_match(&p, &t, types[i]));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_types),
        cmocka_unit_test(test_each_state),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_type_errors),
        cmocka_unit_test(test_every_state_in_unknown_state_message),
        cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_length_bounds),
        cmocka_unit_test(test_message_quoting),
        cmocka_unit_test(test_error_buffer_sizes),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_streaming_rule),
        cmocka_unit_test(test_with_state),
        cmocka_unit_test(test_valid_patterns),
        cmocka_unit_test(test_pattern_errors),
        cmocka_unit_test(test_match_table),
        cmocka_unit_test(test_pattern_self_contained),
        cmocka_unit_test(test_type_as_pattern),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
