// SPDX-License-Identifier: Apache-2.0
//
// The accounts file parser and the permission checks of an account (broker/auth.h,
// docs/SECURITY.md), without a broker: a valid file read back through accounts_find and
// account_may_*; a table of malformed files, each refused with "line N:" naming the right line;
// and a property test: random mutations of a valid file (byte flips, insertions of the
// characters the grammar cares about, truncations, line shuffles and duplications) never crash
// and either parse or give an error naming a line.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "broker/auth.h"
#include "codec/evtype.h"

/* An argon2id hash as `nexusd --hash-token` prints it (of "alice-token-0123456789"); the parser
 * checks its form, never the token. */
#define HASH                                                                                       \
    "$argon2id$v=19$m=65536,t=2,p=1$q0zXa7N2ZBqn7stPGXrICw$7wJmSExWMH2jX96C3Nabaw3SJ/"             \
    "KXfvxfs8nUl6ZTJh4"

static const char valid_file[] = "# accounts for the unit test\n"
                                 "user alice\n"
                                 "  token " HASH "   # from nexusd --hash-token\n"
                                 "  id u-alice\n"
                                 "  cert alice.example\n"
                                 "  publish 1-100,200 order:*:*:* chat:message:v1:*\n"
                                 "  subscribe 1-100 order:*:*:*\n"
                                 "  request campaign:* media:join_room\n"
                                 "  handle payments:charge\n"
                                 "\r\n"
                                 "user bob\r\n"
                                 "\ttoken " HASH "\r\n"
                                 "\tpublish * *\r\n"
                                 "\tsubscribe 300-400 *\r\n"
                                 "\trequest *\r\n"
                                 "\tadmin\r\n"
                                 "user certonly\n"
                                 "  cert device-7\n"
                                 "  subscribe -5--1 *\n";

static struct accounts *parse(const char *text, char *err, size_t cap)
{
    err[0] = 0;
    return accounts_parse(text, strlen(text), err, cap);
}

static const struct account *find(const struct accounts *as, const char *name)
{
    return accounts_find(as, name, strlen(name));
}

/* A parsed event type (kept in a static buffer per slot: evtype points into it). */
static struct evtype *ty(int slot, const char *s, const char **str)
{
    static struct evtype t[4];
    static char buf[4][EVTYPE_BYTES_MAX + 1];
    snprintf(buf[slot], sizeof(buf[slot]), "%s", s);
    char err[EVTYPE_ERR_BYTES];
    if (evtype_parse(&t[slot], buf[slot], strlen(buf[slot]), err, sizeof(err)) < 0)
        fail_msg("type %s: %s", s, err);
    *str = buf[slot];
    return &t[slot];
}

static bool may_pub(const struct account *a, int64_t camp, const char *type)
{
    const char *s;
    struct evtype *t = ty(0, type, &s);
    return account_may_publish(a, camp, t, s);
}

static bool may_act(const struct account *a, enum perm_op op, const char *type)
{
    const char *s;
    struct evtype *t = ty(1, type, &s);
    return account_may_action(a, op, t, s);
}

static bool may_sub(const struct account *a, int64_t camp, const char *pattern)
{
    struct evpattern p;
    char err[EVTYPE_ERR_BYTES];
    if (evpattern_parse(&p, pattern, strlen(pattern), err, sizeof(err)) < 0)
        fail_msg("pattern %s: %s", pattern, err);
    return account_may_subscribe(a, camp, &p);
}

static void test_valid_round_trip(void **state)
{
    (void)state;
    char err[512];
    struct accounts *as = parse(valid_file, err, sizeof(err));
    if (!as)
        fail_msg("valid file refused: %s", err);
    assert_int_equal(accounts_count(as), 3);

    const struct account *a = find(as, "alice"), *b = find(as, "bob"), *c = find(as, "certonly");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_null(find(as, "carol"));
    assert_null(find(as, "alic"));
    assert_null(find(as, "alice2"));
    assert_null(accounts_find(as, "alice", 0));
    assert_string_equal(account_name(a), "alice");
    uint32_t l;
    const char *id = account_user_id(a, &l);
    assert_int_equal(l, 7);
    assert_memory_equal(id, "u-alice", 7);
    id = account_user_id(b, &l); /* the id defaults to the name */
    assert_int_equal(l, 3);
    assert_memory_equal(id, "bob", 3);
    assert_false(account_admin(a));
    assert_true(account_admin(b));
    assert_ptr_equal(accounts_find_cert(as, "alice.example"), a);
    assert_ptr_equal(accounts_find_cert(as, "device-7"), c);
    assert_null(accounts_find_cert(as, "bob"));
    assert_null(accounts_find_cert(as, ""));

    /* publish: campaigns x patterns. */
    assert_true(may_pub(a, 1, "order:created:v1:completed"));
    assert_true(may_pub(a, 100, "order:x:v9:failed"));
    assert_true(may_pub(a, 200, "chat:message:v1:completed"));
    assert_false(may_pub(a, 101, "order:created:v1:completed"));
    assert_false(may_pub(a, 199, "order:created:v1:completed"));
    assert_false(may_pub(a, 0, "order:created:v1:completed"));
    assert_false(may_pub(a, -1, "order:created:v1:completed"));
    assert_false(may_pub(a, 5, "chat:typing:v1:completed"));
    assert_false(may_pub(a, 5, "orders:created:v1:completed"));
    assert_true(may_pub(b, 1, "anything:at_all:v3:completed"));
    assert_true(may_pub(b, INT64_MAX, "anything:at_all:v3:completed"));
    assert_true(may_pub(b, -7, "anything:at_all:v3:completed"));
    /* Campaign 0 is a campaign like any other to publish into (broker/auth_file.c). */
    assert_true(may_pub(b, 0, "anything:at_all:v3:completed"));
    assert_false(may_pub(c, 1, "order:created:v1:completed")); /* no publish rule */

    /* subscribe: pattern coverage. */
    assert_true(may_sub(a, 5, "order:*:*:*"));
    assert_true(may_sub(a, 5, "order:created:v1:*"));
    assert_true(may_sub(a, 5, "order:created:v1:completed"));
    assert_false(may_sub(a, 5, "*"));
    assert_false(may_sub(a, 5, "*:created:v1:*"));
    assert_false(may_sub(a, 5, "chat:message:v1:*"));
    assert_false(may_sub(a, 200, "order:*:*:*")); /* 200 is publish only */
    assert_false(may_sub(a, 0, "order:*:*:*"));
    assert_true(may_sub(b, 300, "*"));
    assert_true(may_sub(b, 400, "x:y:v1:completed"));
    assert_false(may_sub(b, 401, "*"));
    assert_true(may_sub(b, 0, "*")); /* admin: the firehose */
    assert_true(may_sub(c, -3, "*"));
    assert_false(may_sub(c, 0, "*"));
    assert_false(may_sub(c, 1, "*"));

    /* request / handle. */
    assert_true(may_act(a, PERM_REQUEST, "campaign:update:v1:requested"));
    assert_true(may_act(a, PERM_REQUEST, "campaign:stream_state:v2:cancel"));
    assert_true(may_act(a, PERM_REQUEST, "media:join_room:v1:requested"));
    assert_false(may_act(a, PERM_REQUEST, "media:signal:v1:requested"));
    assert_false(may_act(a, PERM_REQUEST, "payments:charge:v1:requested"));
    assert_false(may_act(a, PERM_REQUEST, "campaignx:update:v1:requested"));
    assert_true(may_act(a, PERM_HANDLE, "payments:charge:v1:requested"));
    assert_false(may_act(a, PERM_HANDLE, "payments:refund:v1:requested"));
    assert_false(may_act(a, PERM_HANDLE, "campaign:update:v1:requested"));
    assert_true(may_act(b, PERM_REQUEST, "any:thing:v1:requested"));
    assert_false(may_act(b, PERM_HANDLE, "any:thing:v1:requested"));
    assert_false(may_act(c, PERM_REQUEST, "any:thing:v1:requested"));

    /* Snapshots are reference counted. */
    accounts_ref(as);
    accounts_unref(as);
    assert_int_equal(accounts_count(as), 3);
    accounts_unref(as);
    accounts_unref(NULL);
    assert_int_equal(accounts_count(NULL), 0);
}

/* Campaign 0 in a rule's campaigns: publishing there is allowed, but subscribing to campaign 0
 * (the firehose, every campaign) stays admin's, whatever the subscribe rules say. */
static void test_campaign_zero(void **state)
{
    (void)state;
    char err[512];
    struct accounts *as = parse("user z\n  token " HASH "\n  publish -5-5,0 *\n"
                                "  subscribe 0-9 *\n  subscribe * order:*:*:*\n"
                                "user y\n  token " HASH "\n  admin\n",
                                err, sizeof(err));
    if (!as)
        fail_msg("refused: %s", err);
    const struct account *z = find(as, "z"), *y = find(as, "y");
    assert_non_null(z);
    assert_non_null(y);
    assert_true(may_pub(z, 0, "a:b:v1:completed"));
    assert_true(may_pub(z, -5, "a:b:v1:completed"));
    assert_false(may_pub(z, 6, "a:b:v1:completed"));
    assert_false(may_sub(z, 0, "*"));
    assert_false(may_sub(z, 0, "order:*:*:*"));
    assert_true(may_sub(z, 9, "*"));
    assert_true(may_sub(z, 12345, "order:x:v1:*"));
    /* admin alone: the firehose, and nothing else. */
    assert_true(may_sub(y, 0, "*"));
    assert_false(may_sub(y, 1, "*"));
    assert_false(may_pub(y, 1, "a:b:v1:completed"));
    assert_false(may_act(y, PERM_REQUEST, "a:b:v1:requested"));
    accounts_unref(as);
}

/* An empty file (or comments only) is a valid file with no users. */
static void test_empty(void **state)
{
    (void)state;
    char err[256];
    const char *texts[] = {"", "# nothing\n", "\n\n   \n\t\n", "# a\r\n# b"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct accounts *as = parse(texts[i], err, sizeof(err));
        if (!as)
            fail_msg("\"%s\" refused: %s", texts[i], err);
        assert_int_equal(accounts_count(as), 0);
        assert_null(find(as, "alice"));
        accounts_unref(as);
    }
}

static void test_malformed(void **state)
{
    (void)state;
    const struct {
        const char *text;
        int line;
    } bad[] = {
        {"token " HASH "\n", 1},
        {"user\n", 1},
        {"user a b\n  token " HASH "\n", 1},
        {"user a\"b\n  token " HASH "\n", 1},
        {"user a\\b\n  token " HASH "\n", 1},
        {"user aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  token " HASH
         "\n",
         1},
        {"user a\n  token\n", 2},
        {"user a\n  token hunter2\n", 2},
        {"user a\n  token $argon2id$garbage\n", 2},
        {"user a\n  token " HASH "\n  token " HASH "\n", 3},
        {"user a\n  token " HASH "\n  id\n", 3},
        {"user a\n  token " HASH "\n  cert\n", 3},
        {"user a\n  token " HASH "\n  publish\n", 3},
        {"user a\n  token " HASH "\n  publish 1-5\n", 3},
        {"user a\n  token " HASH "\n  publish 9-1 *\n", 3},
        {"user a\n  token " HASH "\n  publish 1- *\n", 3},
        {"user a\n  token " HASH "\n  publish 1,,2 *\n", 3},
        {"user a\n  token " HASH "\n  publish x *\n", 3},
        {"user a\n  token " HASH "\n  publish 99999999999999999999 *\n", 3},
        {"user a\n  token " HASH "\n\n  subscribe 1 Order:*:*:*\n", 4},
        {"user a\n  token " HASH "\n  subscribe 1 a:b\n", 3},
        {"user a\n  token " HASH "\n  request\n", 3},
        {"user a\n  token " HASH "\n  request payments\n", 3},
        {"user a\n  token " HASH "\n  request *:charge\n", 3},
        {"user a\n  token " HASH "\n  request Pay:charge\n", 3},
        {"user a\n  token " HASH "\n  handle a:b:c\n", 3},
        {"user a\n  token " HASH "\n  admin yes\n", 3},
        {"user a\n  token " HASH "\n  superuser\n", 3},
        {"user a\n  token " HASH "\n  publish 1 *\x01\n", 3},
        {"user a\n  publish 1 *\n", 1},                          /* no token, no cert */
        {"user a\n  token " HASH "\nuser b\n  id b\n", 3},       /* b: neither */
        {"user a\n  token " HASH "\n\n\nuser a\n  cert x\n", 5}, /* twice */
        {"user a\n  cert c1\nuser b\n  cert c1\n", 3},           /* one cert, two users */
    };
    int wrong = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[512], want[32];
        struct accounts *as = parse(bad[i].text, err, sizeof(err));
        snprintf(want, sizeof(want), "line %d: ", bad[i].line);
        if (as) {
            accounts_unref(as);
            print_error("case %zu accepted:\n%s\n", i, bad[i].text);
            wrong++;
        } else if (strncmp(err, want, strlen(want)) != 0) {
            print_error("case %zu: expected \"%s...\", got \"%s\"\n%s\n", i, want, err,
                        bad[i].text);
            wrong++;
        }
    }
    if (wrong)
        fail_msg("%d malformed file(s) not refused as expected", wrong);
}

/* A small error buffer cuts the message and still terminates it. */
static void test_small_err_buffer(void **state)
{
    (void)state;
    char err[8];
    memset(err, 'x', sizeof(err));
    assert_null(accounts_parse("user\n", 5, err, sizeof(err)));
    assert_int_equal(strlen(err), sizeof(err) - 1);
    assert_memory_equal(err, "line 1:", 7);
}

/* ---- property: mutations never crash, and refusals name a line ------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Characters the grammar gives meaning to. */
static const char interesting[] = " \t\r\n#,-*:0129az_$\"\\\x01\x7f\xff";

static size_t mutate(char *buf, size_t len, size_t cap)
{
    int rounds = 1 + (int)(rnd() % 4);
    for (int k = 0; k < rounds; k++) {
        switch (rnd() % 6) {
        case 0: /* flip a byte */
            if (len)
                buf[rnd() % len] ^= (char)(1u << (rnd() % 8));
            break;
        case 1: /* replace a byte with an interesting one */
            if (len)
                buf[rnd() % len] = interesting[rnd() % (sizeof(interesting) - 1)];
            break;
        case 2: /* insert an interesting byte */
            if (len + 1 < cap) {
                size_t at = rnd() % (len + 1);
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = interesting[rnd() % (sizeof(interesting) - 1)];
                len++;
            }
            break;
        case 3: /* truncate */
            len = len ? rnd() % len : 0;
            break;
        case 4: { /* swap two lines */
            char *lines[64];
            size_t lens[64];
            int n = 0;
            for (size_t i = 0; i < len && n < 64;) {
                size_t j = i;
                while (j < len && buf[j] != '\n')
                    j++;
                lines[n] = buf + i;
                lens[n++] = j - i + (j < len);
                i = j + 1;
            }
            if (n < 2)
                break;
            int x = (int)(rnd() % (uint64_t)n), y = (int)(rnd() % (uint64_t)n);
            static char tmp[8192];
            size_t o = 0;
            for (int i = 0; i < n; i++) {
                int src = i == x ? y : i == y ? x : i;
                memcpy(tmp + o, lines[src], lens[src]);
                o += lens[src];
                if (o && tmp[o - 1] != '\n' && i + 1 < n)
                    tmp[o++] = '\n';
            }
            len = o < cap ? o : cap - 1;
            memcpy(buf, tmp, len);
            break;
        }
        default: { /* duplicate a span (a user block twice, a rule twice) */
            if (!len)
                break;
            size_t from = rnd() % len, n = 1 + rnd() % (len - from);
            if (len + n < cap) {
                size_t at = rnd() % (len + 1);
                static char span[8192];
                memcpy(span, buf + from, n);
                memmove(buf + at + n, buf + at, len - at);
                memcpy(buf + at, span, n);
                len += n;
            }
            break;
        }
        }
    }
    return len;
}

static void test_mutations(void **state)
{
    (void)state;
    static char buf[8192];
    int parsed = 0, refused = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = strlen(valid_file);
        memcpy(buf, valid_file, len);
        len = mutate(buf, len, sizeof(buf));
        /* Parse from an exactly sized heap copy, so that ASan sees any read past the end. */
        char *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, buf, len);
        char err[512];
        err[0] = 0;
        struct accounts *as = accounts_parse(copy, len, err, sizeof(err));
        if (as) {
            parsed++;
            /* Whatever parsed answers questions within bounds. */
            const struct account *a = find(as, "alice");
            if (a) {
                (void)may_pub(a, 5, "order:created:v1:completed");
                (void)may_sub(a, 5, "order:*:*:*");
                (void)may_act(a, PERM_REQUEST, "campaign:update:v1:requested");
                uint32_t l;
                const char *id = account_user_id(a, &l);
                assert_true(l > 0 && l <= ACCOUNT_ID_BYTES_MAX && id[0] != 0);
                assert_ptr_equal(find(as, account_name(a)), a);
                /* Campaign 0 is never granted by a rule: only admin subscribes to it. */
                assert_true(may_sub(a, 0, "*") == account_admin(a));
            }
            accounts_unref(as);
        } else {
            refused++;
            if (!strstr(err, "line "))
                fail_msg("iteration %d: refused without naming a line: \"%s\"", iter, err);
        }
        free(copy);
    }
    print_message("mutations: %d parsed, %d refused\n", parsed, refused);
    assert_true(parsed > 0 && refused > 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_round_trip), cmocka_unit_test(test_empty),
        cmocka_unit_test(test_campaign_zero),    cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_small_err_buffer), cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
