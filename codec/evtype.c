// SPDX-License-Identifier: Apache-2.0
//
// Event type and subscription pattern parsing, matching and rewriting (see evtype.h for the
// contract). Owns only code and constant tables: no I/O, no allocation, no mutable state, so any
// shard may call it concurrently. Client bytes are validated here and never reach an assert;
// asserts guard only values that come from code (a state enum, a struct this module filled).
// Parsing is one pass to split and check bytes, then one check per segment, left to right, so
// the first bad part found is the leftmost one and is the one the message names.
#include "codec/evtype.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Always on, also in release builds (NDEBUG): a broken caller must stop here with a location,
// not go on with a bad offset.
#define EVTYPE_ASSERT(expr) ((expr) ? (void)0 : evtype_assert_fail(#expr, __FILE__, __LINE__))

static _Noreturn void evtype_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

static const struct {
    const char *name;
    uint8_t len;
} state_names[EVTYPE_STATE_COUNT] = {
#define STATE_NAME(s)                                                                              \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
    [EVTYPE_REQUESTED] = STATE_NAME("requested"), [EVTYPE_STARTED] = STATE_NAME("started"),
    [EVTYPE_STREAM] = STATE_NAME("stream"),       [EVTYPE_HEARTBEAT] = STATE_NAME("heartbeat"),
    [EVTYPE_SUCCESS] = STATE_NAME("success"),     [EVTYPE_FAILED] = STATE_NAME("failed"),
    [EVTYPE_COMPLETED] = STATE_NAME("completed"), [EVTYPE_CANCEL] = STATE_NAME("cancel"),
    [EVTYPE_CANCELLED] = STATE_NAME("cancelled"), [EVTYPE_TIMEOUT] = STATE_NAME("timeout"),
#undef STATE_NAME
};
// Same order as the enum; the unit test checks that every name appears in it.
#define STATE_LIST                                                                                 \
    "requested, started, stream, heartbeat, success, failed, completed, cancel, cancelled, "       \
    "timeout"
#define STATE_NAME_BYTES_MAX 9 // "requested", "heartbeat", "completed", "cancelled"
#define NAME_CHARSET         "[a-z][a-z0-9_]*"

// The longest valid type is two names, 'v' plus the digits, the longest state and three ':'.
// evtype_with_state() promises that EVTYPE_BYTES_MAX + 1 always holds its output.
static_assert(2 * EVTYPE_NAME_BYTES_MAX + 1 + EVTYPE_VERSION_DIGITS_MAX + STATE_NAME_BYTES_MAX +
                      3 <=
                  EVTYPE_BYTES_MAX,
              "a valid type must always fit EVTYPE_BYTES_MAX");
static_assert(EVTYPE_BYTES_MAX <= UINT16_MAX, "segment offsets are uint16_t");
static_assert(EVTYPE_VERSION_DIGITS_MAX <= 9, "the version must fit a uint32_t unchecked");

// What is being parsed, and where its error message goes.
struct parse_ctx {
    const char *s;
    size_t len;
    bool pattern; // a pattern allows '*' segments, and its messages say so
    char *err;
    size_t err_cap;
};

// Writes a message to ctx->err (if any) and returns `code`. Error path only.
__attribute__((format(printf, 3, 4))) static int fail(const struct parse_ctx *c, int code,
                                                      const char *fmt, ...)
{
    if (c->err_cap == 0)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->err_cap, fmt, ap);
    va_end(ap);
    return code;
}

// A quoted client string: '"', at most EVTYPE_QUOTE_BYTES_MAX bytes of escaped text, '"', then
// "..." when cut, and a NUL.
#define QUOTE_BYTES (EVTYPE_QUOTE_BYTES_MAX + sizeof("\"\"..."))

// Quotes s[0..len) into q for an error message. Printable ASCII stays as is, '"' and '\' get a
// backslash, every other byte becomes \xNN: the message reaches a client in a protobuf string
// (which must be UTF-8) and may reach a log or terminal (which must not see control bytes). An
// escape is never split when the text is cut.
static void quote(char q[QUOTE_BYTES], const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;

    q[o++] = '"';
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[4];
        size_t n = 0;
        if (ch == '"' || ch == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)ch;
        } else if (ch >= 0x20 && ch < 0x7f) {
            esc[n++] = (char)ch;
        } else {
            esc[n++] = '\\';
            esc[n++] = 'x';
            esc[n++] = hex[ch >> 4];
            esc[n++] = hex[ch & 0xf];
        }
        if (o - 1 + n > EVTYPE_QUOTE_BYTES_MAX)
            break;
        memcpy(q + o, esc, n);
        o += n;
    }
    q[o++] = '"';
    if (i < len) {
        memcpy(q + o, "...", 3);
        o += 3;
    }
    q[o] = '\0';
}

static const char *subject(const struct parse_ctx *c)
{
    return c->pattern ? "pattern" : "event type";
}

static const char *or_star(const struct parse_ctx *c)
{
    return c->pattern ? "'*' or " : "";
}

// Checks the whole input and splits it at ':'. Fills seg[] and returns 0 when there are exactly
// EVTYPE_SEG_COUNT segments; the segments themselves are not checked yet.
static int split(const struct parse_ctx *c, struct evtype_seg seg[EVTYPE_SEG_COUNT])
{
    if (c->len == 0)
        return fail(c, EVTYPE_EEMPTY, "%s is empty", subject(c));
    if (c->len > EVTYPE_BYTES_MAX)
        return fail(c, EVTYPE_ETOOLONG, "%s longer than %d bytes (got %zu)", subject(c),
                    EVTYPE_BYTES_MAX, c->len);

    // One pass: the NUL check must see every byte before a segment count is reported, so that
    // a NUL is always named as such.
    size_t nseg = 0, start = 0;
    for (size_t i = 0; i < c->len; i++) {
        if (c->s[i] == ':') {
            if (nseg < EVTYPE_SEG_COUNT)
                seg[nseg] = (struct evtype_seg){(uint16_t)start, (uint16_t)(i - start)};
            nseg++;
            start = i + 1;
        } else if (c->s[i] == '\0') {
            return fail(c, EVTYPE_ENUL, "%s contains a NUL byte at offset %zu", subject(c), i);
        }
    }
    if (nseg < EVTYPE_SEG_COUNT)
        seg[nseg] = (struct evtype_seg){(uint16_t)start, (uint16_t)(c->len - start)};
    nseg++;
    if (nseg != EVTYPE_SEG_COUNT) {
        char q[QUOTE_BYTES];
        quote(q, c->s, c->len);
        return fail(c, EVTYPE_ESEGMENTS, "expected %s%d segments separated by ':' (got %zu) in %s",
                    or_star(c), EVTYPE_SEG_COUNT, nseg, q);
    }
    return 0;
}

static int fail_empty(const struct parse_ctx *c, int code, const char *what)
{
    char q[QUOTE_BYTES];
    quote(q, c->s, c->len);
    return fail(c, code, "%s is empty in %s", what, q);
}

static bool is_star(const struct parse_ctx *c, struct evtype_seg g)
{
    return c->pattern && g.len == 1 && c->s[g.off] == '*';
}

// service and action: [a-z][a-z0-9_]*, 1..EVTYPE_NAME_BYTES_MAX bytes.
static int check_name(const struct parse_ctx *c, struct evtype_seg g, int code, const char *what)
{
    const char *p = c->s + g.off;
    char q[QUOTE_BYTES];

    if (g.len == 0)
        return fail_empty(c, code, what);
    bool ok = p[0] >= 'a' && p[0] <= 'z';
    for (size_t i = 1; ok && i < g.len; i++)
        ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_';
    if (!ok) {
        quote(q, p, g.len);
        return fail(c, code, "%s %s must %smatch " NAME_CHARSET, what, q,
                    c->pattern ? "be '*' or " : "");
    }
    if (g.len > EVTYPE_NAME_BYTES_MAX) {
        quote(q, p, g.len);
        return fail(c, code, "%s %s is longer than %d bytes", what, q, EVTYPE_NAME_BYTES_MAX);
    }
    return 0;
}

// version: 'v' then 1..EVTYPE_VERSION_DIGITS_MAX digits, no leading zero unless it is "v0".
static int check_version(const struct parse_ctx *c, struct evtype_seg g, uint32_t *version)
{
    const char *p = c->s + g.off;
    char q[QUOTE_BYTES];

    if (g.len == 0)
        return fail_empty(c, EVTYPE_EVERSION, "version");
    bool ok = g.len >= 2 && p[0] == 'v';
    for (size_t i = 1; ok && i < g.len; i++)
        ok = p[i] >= '0' && p[i] <= '9';
    quote(q, p, g.len); // cheap (a version is short when valid), and every branch below uses it
    if (!ok)
        return fail(c, EVTYPE_EVERSION, "version %s must be %s'v' followed by digits", q,
                    or_star(c));
    if (g.len - 1 > EVTYPE_VERSION_DIGITS_MAX)
        return fail(c, EVTYPE_EVERSION, "version %s must have at most %d digits", q,
                    EVTYPE_VERSION_DIGITS_MAX);
    if (p[1] == '0' && g.len > 2)
        return fail(c, EVTYPE_EVERSION, "version %s must not have leading zeros", q);

    uint32_t n = 0;
    for (size_t i = 1; i < g.len; i++)
        n = n * 10 + (uint32_t)(p[i] - '0');
    *version = n;
    return 0;
}

static int check_state(const struct parse_ctx *c, struct evtype_seg g, enum evtype_state *state)
{
    const char *p = c->s + g.off;

    if (g.len == 0)
        return fail_empty(c, EVTYPE_ESTATE, "state");
    for (int st = 0; st < EVTYPE_STATE_COUNT; st++) {
        if (state_names[st].len == g.len && memcmp(state_names[st].name, p, g.len) == 0) {
            *state = (enum evtype_state)st;
            return 0;
        }
    }
    char q[QUOTE_BYTES];
    quote(q, p, g.len);
    return fail(c, EVTYPE_ESTATE, "unknown state %s (expected %sone of " STATE_LIST ")", q,
                or_star(c));
}

// Splits and checks all four segments. For a pattern, '*' segments are skipped and recorded in
// *wild; for a type, wild is NULL.
static int parse_segments(const struct parse_ctx *c, struct evtype_seg seg[EVTYPE_SEG_COUNT],
                          uint8_t *wild, uint32_t *version, enum evtype_state *state)
{
    int r = split(c, seg);
    if (r < 0)
        return r;

    uint8_t w = 0;
    for (int i = 0; i < EVTYPE_SEG_COUNT; i++) {
        if (is_star(c, seg[i])) {
            w |= (uint8_t)(1u << i);
            continue;
        }
        switch (i) {
        case EVTYPE_SEG_SERVICE:
            r = check_name(c, seg[i], EVTYPE_ESERVICE, "service");
            break;
        case EVTYPE_SEG_ACTION:
            r = check_name(c, seg[i], EVTYPE_EACTION, "action");
            break;
        case EVTYPE_SEG_VERSION:
            r = check_version(c, seg[i], version);
            break;
        default:
            r = check_state(c, seg[i], state);
            break;
        }
        if (r < 0)
            return r;
    }
    if (wild)
        *wild = w;
    return 0;
}

int evtype_parse(struct evtype *t, const char *s, size_t len, char *err, size_t err_cap)
{
    EVTYPE_ASSERT(t != NULL);
    EVTYPE_ASSERT(s != NULL || len == 0);
    EVTYPE_ASSERT(err != NULL || err_cap == 0);
    const struct parse_ctx c = {
        .s = s, .len = len, .pattern = false, .err = err, .err_cap = err_cap};

    int r = parse_segments(&c, t->seg, NULL, &t->version, &t->state);
    if (r < 0)
        return r;
    t->len = (uint16_t)len;
    return 0;
}

int evpattern_parse(struct evpattern *p, const char *s, size_t len, char *err, size_t err_cap)
{
    EVTYPE_ASSERT(p != NULL);
    EVTYPE_ASSERT(s != NULL || len == 0);
    EVTYPE_ASSERT(err != NULL || err_cap == 0);
    const struct parse_ctx c = {
        .s = s, .len = len, .pattern = true, .err = err, .err_cap = err_cap};

    p->version = 0;
    p->state = EVTYPE_REQUESTED;
    if (len == 1 && s[0] == '*') {
        memset(p->seg, 0, sizeof(p->seg));
        p->wild = EVPATTERN_WILD_ALL;
    } else {
        int r = parse_segments(&c, p->seg, &p->wild, &p->version, &p->state);
        if (r < 0)
            return r;
    }
    // Offsets are relative to the start of the input, so they stay valid in the copy.
    memcpy(p->text, s, len);
    p->len = (uint16_t)len;
    return 0;
}

static bool seg_equal(const struct evpattern *p, const struct evtype *t, const char *type_str,
                      enum evtype_segment i)
{
    return p->seg[i].len == t->seg[i].len &&
           memcmp(p->text + p->seg[i].off, type_str + t->seg[i].off, t->seg[i].len) == 0;
}

bool evpattern_match(const struct evpattern *p, const struct evtype *t, const char *type_str)
{
    const uint8_t w = p->wild;

    // Cheapest and most selective tests first: a whole-number compare rules out most
    // non-matching events before any byte is read.
    if (w == EVPATTERN_WILD_ALL)
        return true;
    if (!(w & (1u << EVTYPE_SEG_STATE)) && p->state != t->state)
        return false;
    if (!(w & (1u << EVTYPE_SEG_VERSION)) && p->version != t->version)
        return false;
    if (!(w & (1u << EVTYPE_SEG_SERVICE)) && !seg_equal(p, t, type_str, EVTYPE_SEG_SERVICE))
        return false;
    if (!(w & (1u << EVTYPE_SEG_ACTION)) && !seg_equal(p, t, type_str, EVTYPE_SEG_ACTION))
        return false;
    return true;
}

const char *evtype_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
    case EVTYPE_EEMPTY:
        return "event type is empty";
    case EVTYPE_ETOOLONG:
        return "event type is too long";
    case EVTYPE_ENUL:
        return "event type contains a NUL byte";
    case EVTYPE_ESEGMENTS:
        return "event type must have 4 segments separated by ':'";
    case EVTYPE_ESERVICE:
        return "invalid service";
    case EVTYPE_EACTION:
        return "invalid action";
    case EVTYPE_EVERSION:
        return "invalid version";
    case EVTYPE_ESTATE:
        return "unknown state";
    case -ENOSPC:
        return "output buffer too small";
    default:
        return "unknown error";
    }
}

const char *evtype_state_name(enum evtype_state st)
{
    EVTYPE_ASSERT((unsigned)st < EVTYPE_STATE_COUNT);
    return state_names[st].name;
}

// Whether needle[0..n) occurs in s[0..len). Plain C rather than memmem(), which needs
// _GNU_SOURCE: the codec must build with any C11 libc. n >= 1.
static bool contains(const char *s, size_t len, const char *needle, size_t n)
{
    for (size_t i = 0; i + n <= len; i++) {
        if (s[i] == needle[0] && memcmp(s + i, needle, n) == 0)
            return true;
    }
    return false;
}

// The literal §3.2 rule. The needles include both ':', so a needle can only ever match a whole
// inner segment: the action (the version is "v..."). It is kept as a substring search anyway so
// that it stays the documented rule if the type grammar ever grows.
bool evtype_is_streaming_request(const struct evtype *t, const char *s)
{
    static const struct {
        const char *text;
        size_t len;
    } needles[] = {
#define NEEDLE(x) {x, sizeof(x) - 1}
        NEEDLE(":stream:"), NEEDLE(":typing:"), NEEDLE(":presence:"),
        NEEDLE(":chunks:"), NEEDLE(":live:"),   NEEDLE(":realtime:"),
#undef NEEDLE
    };
    static const char stream_prefix[] = "stream_";

    if (t->state != EVTYPE_REQUESTED)
        return false;
    const struct evtype_seg a = t->seg[EVTYPE_SEG_ACTION];
    if (a.len >= sizeof(stream_prefix) - 1 &&
        memcmp(s + a.off, stream_prefix, sizeof(stream_prefix) - 1) == 0)
        return true;
    for (size_t i = 0; i < sizeof(needles) / sizeof(needles[0]); i++) {
        if (contains(s, t->len, needles[i].text, needles[i].len))
            return true;
    }
    return false;
}

int evtype_with_state(const struct evtype *t, const char *s, enum evtype_state st, char *out,
                      size_t cap)
{
    EVTYPE_ASSERT((unsigned)st < EVTYPE_STATE_COUNT);
    EVTYPE_ASSERT(t->len <= EVTYPE_BYTES_MAX);

    const size_t base = evtype_prefix_len(t, EVTYPE_SEG_VERSION);
    const size_t total = base + 1 + state_names[st].len;
    if (cap < total + 1)
        return -ENOSPC;
    memmove(out, s, base); // out may be s: the stem stays in place
    out[base] = ':';
    memcpy(out + base + 1, state_names[st].name, state_names[st].len);
    out[total] = '\0';
    return (int)total;
}
