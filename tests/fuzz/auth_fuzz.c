// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/auth_fuzz.c: libFuzzer target for what a broker with --accounts does with text it
// did not write: the accounts file (accounts_parse, broker/auth_file.c) and a client's hello
// (codec_hello_decode), then the permission checks of the account the hello names
// (account_may_publish / _subscribe / _action) on a few event types and patterns, some fixed,
// some taken from the hello. No argon2 here (too slow for a fuzz loop): only the hash's form is
// checked by the parser.
//
// Input layout: [0] s, then the accounts text (the first s * (size - 1) / 255 bytes of the rest)
// and the hello body (what follows).
//
// Checks (a broken one is a __builtin_trap): a refused file says which line ("line N: ...")
// unless it is too large; a parsed one answers accounts_find for each account's own name with
// that account; the stamped user id is 1..ACCOUNT_ID_BYTES_MAX bytes; subscribing to campaign 0
// is exactly admin's; a pattern the account may subscribe to with `*` it may subscribe to in any
// narrower form; and parsing the same text twice gives the same accounts.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "broker/auth.h"
#include "codec/envelope.h"
#include "codec/evtype.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static const char *const fixed_types[] = {
    "order:created:v1:completed", "campaign:update:v1:requested", "campaign:update:v1:cancel",
    "payments:charge:v1:success", "media:join_room:v1:requested", "a:b:v0:failed",
};
static const char *const fixed_patterns[] = {"*", "order:*:*:*", "order:created:v1:*",
                                             "*:*:*:completed", "payments:charge:v1:success"};
static const int64_t campaigns[] = {0, 1, 5, 100, 201, -1, INT64_MAX, INT64_MIN};

static bool parse_pattern(struct evpattern *p, const char *s, size_t len)
{
    char err[EVTYPE_ERR_BYTES];
    return evpattern_parse(p, s, len, err, sizeof(err)) == 0;
}

/* The permission questions on account a, with type string ts (len bytes, may be invalid). */
static void ask(const struct account *a, const char *ts, size_t len, int64_t extra_campaign)
{
    struct evpattern star;
    CHECK(parse_pattern(&star, "*", 1));
    char err[EVTYPE_ERR_BYTES];
    struct evtype t;
    bool type_ok = evtype_parse(&t, ts, len, err, sizeof(err)) == 0;
    struct evpattern p;
    bool pat_ok = parse_pattern(&p, ts, len);
    for (size_t c = 0; c <= sizeof(campaigns) / sizeof(campaigns[0]); c++) {
        int64_t camp = c < sizeof(campaigns) / sizeof(campaigns[0]) ? campaigns[c] : extra_campaign;
        bool all = account_may_subscribe(a, camp, &star);
        if (camp == 0)
            CHECK(all == account_admin(a));
        if (type_ok) {
            (void)account_may_publish(a, camp, &t, ts);
            (void)account_may_action(a, PERM_REQUEST, &t, ts);
            (void)account_may_action(a, PERM_HANDLE, &t, ts);
        }
        if (pat_ok) {
            bool some = account_may_subscribe(a, camp, &p);
            CHECK(!all || some); /* `*` allowed covers every narrower pattern */
            if (camp == 0)
                CHECK(some == account_admin(a));
        }
        for (size_t k = 0; k < sizeof(fixed_patterns) / sizeof(fixed_patterns[0]); k++) {
            struct evpattern fp;
            CHECK(parse_pattern(&fp, fixed_patterns[k], strlen(fixed_patterns[k])));
            bool some = account_may_subscribe(a, camp, &fp);
            CHECK(!all || some);
        }
    }
}

static void check_account(const struct accounts *as, const struct account *a)
{
    const char *name = account_name(a);
    CHECK(accounts_find(as, name, strlen(name)) == a);
    uint32_t l;
    const char *id = account_user_id(a, &l);
    CHECK(l >= 1 && l <= ACCOUNT_ID_BYTES_MAX && id[0] != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        CHECK(sodium_init() >= 0);
        init = true;
    }
    if (size < 1)
        return 0;
    size_t rest = size - 1;
    size_t split = (size_t)data[0] * rest / 255;
    /* Exactly sized copies, so that a read past either part is caught. */
    char *text = malloc(split ? split : 1);
    uint8_t *hello = malloc(rest - split ? rest - split : 1);
    CHECK(text && hello);
    memcpy(text, data + 1, split);
    memcpy(hello, data + 1 + split, rest - split);

    char err[512];
    err[0] = 0;
    struct accounts *as = accounts_parse(text, split, err, sizeof(err));
    if (!as) {
        CHECK(strncmp(err, "line ", 5) == 0 || split > ACCOUNTS_FILE_BYTES_MAX);
    } else {
        /* The same text, the same accounts. */
        char err2[512];
        struct accounts *again = accounts_parse(text, split, err2, sizeof(err2));
        CHECK(again && accounts_count(again) == accounts_count(as));
        accounts_unref(again);
    }

    struct codec_hello h;
    char cerr[CODEC_ERR_BYTES];
    if (as && codec_hello_decode(hello, rest - split, &h, cerr) == 0) {
        const struct account *a = accounts_find(as, (const char *)h.user.ptr, h.user.len);
        if (a) {
            check_account(as, a);
            /* The hello's other strings as an event type / pattern, its version as a campaign. */
            ask(a, (const char *)h.client_name.ptr, h.client_name.len, (int64_t)h.protocol_version);
            ask(a, (const char *)h.token.ptr, h.token.len, -(int64_t)h.protocol_version);
            for (size_t i = 0; i < sizeof(fixed_types) / sizeof(fixed_types[0]); i++)
                ask(a, fixed_types[i], strlen(fixed_types[i]), 0);
        }
        /* A certificate name: the client name, NUL-terminated. */
        char cn[ACCOUNT_CERT_BYTES_MAX + 1];
        size_t cl = h.client_name.len < sizeof(cn) - 1 ? h.client_name.len : sizeof(cn) - 1;
        if (cl)
            memcpy(cn, h.client_name.ptr, cl);
        cn[cl] = 0;
        const struct account *c = accounts_find_cert(as, cn);
        if (c)
            check_account(as, c);
    }
    accounts_unref(as);
    free(text);
    free(hello);
    return 0;
}
