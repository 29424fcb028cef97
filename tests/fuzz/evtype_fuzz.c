// SPDX-License-Identifier: Apache-2.0
//
// libFuzzer target for codec/evtype: arbitrary bytes go to the type parser, the pattern parser,
// the matcher and the type rewriter, and every result is checked against invariants and against
// a slow reference matcher written independently here. The input is used three ways: whole as a
// type, whole as a pattern, and split at its first '\n' into a pattern and a type to match.
//
// The fuzz build instruments every library (CMake: -fsanitize=fuzzer-no-link), so coverage
// inside codec/evtype.c guides the fuzzer.
#include "codec/evtype.h"

#include <errno.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Always on, whatever NDEBUG says: a broken invariant must be a crash the fuzzer keeps.
#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if (!(expr)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #expr);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool is_code(int r)
{
    return r == EVTYPE_EEMPTY || r == EVTYPE_ETOOLONG || r == EVTYPE_ENUL ||
           r == EVTYPE_ESEGMENTS || r == EVTYPE_ESERVICE || r == EVTYPE_EACTION ||
           r == EVTYPE_EVERSION || r == EVTYPE_ESTATE;
}

// A failed parse returns a known code and a message that is whole, bounded and printable.
static void check_error(int r, const char *err)
{
    CHECK(is_code(r));
    CHECK(strcmp(evtype_strerror(r), "unknown error") != 0);
    size_t n = strnlen(err, EVTYPE_ERR_BYTES);
    CHECK(n > 0 && n < EVTYPE_ERR_BYTES - 1); // never cut in an EVTYPE_ERR_BYTES buffer
    for (size_t i = 0; i < n; i++)
        CHECK(err[i] >= 0x20 && err[i] < 0x7f);
}

// The streaming rule as evtype.h says it reduces to for canonical types: the action starts with
// "stream_" or is exactly one of the ":word:" needles. Checks that the literal substring search
// in evtype.c never hits anything else (a service, the version, or across segments).
static bool reference_streaming_action(const struct evtype *t, const char *s)
{
    static const char *const words[] = {"stream", "typing", "presence",
                                        "chunks", "live",   "realtime"};
    const char *a = s + t->seg[EVTYPE_SEG_ACTION].off;
    size_t alen = t->seg[EVTYPE_SEG_ACTION].len;
    if (alen >= 7 && memcmp(a, "stream_", 7) == 0)
        return true;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (alen == strlen(words[i]) && memcmp(a, words[i], alen) == 0)
            return true;
    }
    return false;
}

// Parses s[0..len) as a type; on success checks the parse's structure and the module's promises.
static int fuzz_type(struct evtype *t, const char *s, size_t len)
{
    char err[EVTYPE_ERR_BYTES];
    err[0] = '\0';
    int r = evtype_parse(t, s, len, err, sizeof(err));
    if (r < 0) {
        check_error(r, err);
        // A tiny message buffer is cut, not overrun (ASan watches the heap copy).
        char *small = malloc(7);
        CHECK(small != NULL);
        CHECK(evtype_parse(t, s, len, small, 7) == r);
        CHECK(strnlen(small, 7) < 7);
        free(small);
        CHECK(evtype_parse(t, s, len, NULL, 0) == r);
        return r;
    }
    CHECK(r == 0);
    CHECK(t->len == len && len <= EVTYPE_BYTES_MAX);
    // Segments tile the input, separated by single ':'.
    CHECK(t->seg[0].off == 0);
    for (int g = 0; g < EVTYPE_SEG_COUNT; g++) {
        CHECK(t->seg[g].len > 0);
        CHECK((size_t)t->seg[g].off + t->seg[g].len <= len);
        if (g + 1 < EVTYPE_SEG_COUNT) {
            CHECK(t->seg[g + 1].off == t->seg[g].off + t->seg[g].len + 1);
            CHECK(s[t->seg[g].off + t->seg[g].len] == ':');
        }
        CHECK(memchr(s + t->seg[g].off, ':', t->seg[g].len) == NULL);
    }
    CHECK((size_t)t->seg[3].off + t->seg[3].len == len);
    for (int g = EVTYPE_SEG_SERVICE; g <= EVTYPE_SEG_ACTION; g++) {
        const char *n = s + t->seg[g].off;
        CHECK(t->seg[g].len <= EVTYPE_NAME_BYTES_MAX);
        CHECK(n[0] >= 'a' && n[0] <= 'z');
        for (size_t i = 1; i < t->seg[g].len; i++)
            CHECK(strchr("abcdefghijklmnopqrstuvwxyz0123456789_", n[i]) != NULL && n[i] != '\0');
    }
    CHECK((unsigned)t->state < EVTYPE_STATE_COUNT);
    const char *name = evtype_state_name(t->state);
    CHECK(strlen(name) == t->seg[3].len && memcmp(name, s + t->seg[3].off, t->seg[3].len) == 0);
    // The version prints back to its own bytes (no leading zeros, no sign).
    char v[16];
    int vn = snprintf(v, sizeof(v), "v%u", (unsigned)t->version);
    CHECK(vn == t->seg[2].len && memcmp(v, s + t->seg[2].off, (size_t)vn) == 0);

    bool streaming = evtype_is_streaming_request(t, s);
    CHECK(streaming == (t->state == EVTYPE_REQUESTED && reference_streaming_action(t, s)));

    // Rebuilding with each state reparses to the same stem and that state; the documented
    // buffer size always suffices; one byte short is -ENOSPC.
    for (int st = 0; st < EVTYPE_STATE_COUNT; st++) {
        char out[EVTYPE_BYTES_MAX + 1];
        struct evtype t2;
        int n = evtype_with_state(t, s, (enum evtype_state)st, out, sizeof(out));
        CHECK(n > 0 && out[n] == '\0');
        CHECK(evtype_with_state(t, s, (enum evtype_state)st, out, (size_t)n) == -ENOSPC);
        CHECK(evtype_parse(&t2, out, (size_t)n, NULL, 0) == 0);
        CHECK(t2.state == (enum evtype_state)st && t2.version == t->version);
        size_t stem = evtype_prefix_len(t, EVTYPE_SEG_VERSION);
        CHECK(evtype_prefix_len(&t2, EVTYPE_SEG_VERSION) == stem && memcmp(out, s, stem) == 0);
        CHECK(evtype_is_streaming_request(&t2, out) ==
              (st == EVTYPE_REQUESTED && reference_streaming_action(t, s)));
    }
    return 0;
}

// Parses s[0..len) as a pattern; on success checks that the text was copied whole.
static int fuzz_pattern(struct evpattern *p, const char *s, size_t len)
{
    char err[EVTYPE_ERR_BYTES];
    err[0] = '\0';
    int r = evpattern_parse(p, s, len, err, sizeof(err));
    if (r < 0) {
        check_error(r, err);
        return r;
    }
    CHECK(r == 0 && p->len == len && memcmp(p->text, s, len) == 0);
    CHECK((p->wild & ~EVPATTERN_WILD_ALL) == 0);
    return 0;
}

// The reference matcher: segment by segment, '*' or the same bytes. It works on text only, so
// it also checks that numeric version and enum state compares agree with the bytes.
static bool reference_match(const struct evpattern *p, const struct evtype *t, const char *s)
{
    if (p->len == 1 && p->text[0] == '*')
        return true;
    for (int g = 0; g < EVTYPE_SEG_COUNT; g++) {
        const char *ps = p->text + p->seg[g].off;
        size_t pl = p->seg[g].len;
        if (pl == 1 && ps[0] == '*')
            continue;
        if (pl != t->seg[g].len || memcmp(ps, s + t->seg[g].off, pl) != 0)
            return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct evtype t;
    struct evpattern p;

    // 1. The whole input as a type, and as a pattern: every valid type is a valid pattern that
    //    matches it, as does "*".
    int rt = fuzz_type(&t, s, size);
    int rp = fuzz_pattern(&p, s, size);
    if (rt == 0) {
        CHECK(rp == 0 && p.wild == 0);
        CHECK(evpattern_match(&p, &t, s));
        struct evpattern star;
        CHECK(evpattern_parse(&star, "*", 1, NULL, 0) == 0);
        CHECK(evpattern_match(&star, &t, s));
    }

    // 2. Pattern before the first '\n', type after it. The type is copied to its own heap block
    //    so that ASan catches any read past its end.
    const char *nl = memchr(s, '\n', size);
    if (nl == NULL)
        return 0;
    size_t plen = (size_t)(nl - s), tlen = size - plen - 1;
    char *type = malloc(tlen ? tlen : 1);
    CHECK(type != NULL);
    memcpy(type, nl + 1, tlen);
    rp = fuzz_pattern(&p, s, plen);
    rt = fuzz_type(&t, type, tlen);
    if (rp == 0 && rt == 0) {
        struct evpattern copy;
        memcpy(&copy, &p, sizeof(p)); // a pattern is self-contained
        bool m = evpattern_match(&copy, &t, type);
        CHECK(m == reference_match(&p, &t, type));
        if (p.wild == EVPATTERN_WILD_ALL)
            CHECK(m);
    }
    free(type);
    return 0;
}
