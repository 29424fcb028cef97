// SPDX-License-Identifier: Apache-2.0
//
// Accounts (docs/SECURITY.md) against the real nexusd over loopback, with an accounts file and
// argon2id hashes made at test time by `nexusd --hash-token` in a private temporary folder.
//
// One broker (2 shards, --accounts, --metrics, --test-handlers) serves the permission matrix:
// alice (a few campaigns, order:* only, requests test:* and media:*, handles payments:charge),
// bob (campaigns 200-300, admin), carol (campaigns 1-100, everything there, requests test:*).
// For every operation (emit, emit as someone else, subscribe, the firehose, stats, request,
// cancel of another user's request, handler registration and hijack, joining a media room as
// another peer) one allowed and one refused case; each refusal is checked for
// error{permission_denied}, the operation named in its message, nexus_permission_denied_total{op}
// one higher, and nothing delivered to a firehose watcher. Logins: a wrong token, an unknown
// user, a hello without user (or without token), a frame before hello: error{unauthorized},
// then the connection is closed.
//
// Brokers of their own: --auth-timeout-ms (silent and partial-frame connections closed in
// bounded time, a logged-in one kept), a 1 MiB frame announced before hello (refused without
// being buffered: RSS barely moves), protected mode (0.0.0.0 without --accounts refused, with
// --insecure started), broken accounts files (the line named), and SIGHUP reloads (a removed
// user and a changed token closed with unauthorized, a narrowed subscription closed with
// permission_denied, the others kept and working; a broken file changes nothing).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "auth_util.h"
#include "handlers_util.h"

#define SHARDS 2

#define TOK_ALICE  "alice-token-5f2c9a17e04b"
#define TOK_BOB    "bob-token-8d31c6ae92f0"
#define TOK_CAROL  "carol-token-1a7e40bd3c95"
#define TOK_BOB2   "bob-token-new-77c0e1f3a2d4"
#define TOK_WRONG  "alice-token-000000000000"
#define CAMP_ALICE 5   /* in alice's and carol's 1-100 */
#define CAMP_BOB   250 /* in bob's 200-300 */

/* The hashes and the temporary folder, made once. */
static struct {
    char dir[64];
    char h_alice[160], h_bob[160], h_carol[160], h_bob2[160];
} K;

/* The shared broker of the matrix. */
static struct {
    char path[128];
    struct broker_proc b;
    uint16_t mport;
    struct nexus_client *fire; /* bob on campaign 0: sees everything */
} M;

static const char *accounts_text(char *out, size_t cap, const char *h_alice, const char *h_bob,
                                 const char *h_carol)
{
    int n = snprintf(out, cap,
                     "# auth_test accounts\n"
                     "user alice\n"
                     "  token %s\n"
                     "  id u-alice\n"
                     "  publish 1-100 order:*:*:*   # only orders\n"
                     "  subscribe 1-100 order:*:*:*\n"
                     "  request test:* media:*\n"
                     "  handle payments:charge\n"
                     "\n"
                     "user bob\n"
                     "  token %s\n"
                     "  id u-bob\n"
                     "  publish 200-300 *\n"
                     "  subscribe 200-300 *\n"
                     "  request *\n"
                     "  handle billing:*\n"
                     "  admin\n",
                     h_alice, h_bob);
    if (h_carol)
        snprintf(out + n, cap - (size_t)n,
                 "user carol\n"
                 "  token %s\n"
                 "  publish 1-100 *\n"
                 "  subscribe 1-100 *\n"
                 "  request test:*\n",
                 h_carol);
    return out;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(K.dir, sizeof(K.dir), "/tmp/nexus-auth-XXXXXX");
    assert_non_null(mkdtemp(K.dir));
    au_hash(TOK_ALICE, K.h_alice, sizeof(K.h_alice));
    au_hash(TOK_BOB, K.h_bob, sizeof(K.h_bob));
    au_hash(TOK_CAROL, K.h_carol, sizeof(K.h_carol));
    au_hash(TOK_BOB2, K.h_bob2, sizeof(K.h_bob2));
    /* Salted: the same token never hashes the same twice. */
    assert_string_not_equal(K.h_bob, K.h_bob2);

    snprintf(M.path, sizeof(M.path), "%s/accounts", K.dir);
    char text[4096];
    au_write(M.path, accounts_text(text, sizeof(text), K.h_alice, K.h_bob, K.h_carol));
    char maddr[64];
    M.mport = hx_metrics_addr(maddr, sizeof(maddr));
    M.b = H_START(SHARDS, "--accounts", M.path, "--metrics", maddr, "--test-handlers", NULL);
    M.fire = au_login(M.b.port, "bob", TOK_BOB);
    assert_int_equal(nexus_subscribe_sync(M.fire, 0, NULL, 0, NULL, NULL, NULL, PV_T), 1);
    return 0;
}

static int group_teardown(void **state)
{
    if (M.fire)
        nexus_close(M.fire);
    int st = M.b.pid ? h_stop(&M.b) : 0;
    h_teardown(state);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", K.dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", K.dir);
    if (st != 0) {
        fprintf(stderr, "the matrix broker exited %d\n", st);
        return -1;
    }
    return 0;
}

/* ---- logins -------------------------------------------------------------------------------- */

/* The right token logs in (a second time too, then from the remembered digest); a wrong token,
 * an unknown user, a hello without user or without token, and a frame before hello are each
 * answered with unauthorized and closed, and counted as failures. */
static void test_login(void **state)
{
    (void)state;
    double fails0 = au_metric(M.mport, "nexus_auth_failures_total", NULL);
    double oks0 = au_metric(M.mport, "nexus_auth_successes_total", NULL);
    assert_true(fails0 >= 0 && oks0 >= 0);

    int64_t t0 = h_now_ms();
    struct nexus_client *a1 = au_login(M.b.port, "alice", TOK_ALICE);
    int64_t t1 = h_now_ms();
    struct nexus_client *a2 = au_login(M.b.port, "alice", TOK_ALICE);
    int64_t t2 = h_now_ms();
    print_message("login: first %lld ms, second %lld ms\n", (long long)(t1 - t0),
                  (long long)(t2 - t1));
    assert_int_equal(h_ping(a1, PV_T), 1);
    assert_int_equal(h_ping(a2, PV_T), 1);

    /* The C client's credentials from the environment (NEXUS_USER / NEXUS_TOKEN). */
    char eerr[256];
    struct nexus_frame ef;
    struct nexus_client *e = nexus_connect("127.0.0.1", M.b.port, eerr, sizeof(eerr));
    assert_non_null(e);
    setenv("NEXUS_USER", "alice", 1);
    setenv("NEXUS_TOKEN", TOK_ALICE, 1);
    assert_int_equal(nexus_hello_env_sync(e, "env", &ef, PV_T), 1);
    unsetenv("NEXUS_USER");
    unsetenv("NEXUS_TOKEN");
    assert_int_equal(h_ping(e, PV_T), 1);
    nexus_close(e);

    char msg[300];
    au_login_refused(M.b.port, "alice", TOK_WRONG, "unauthorized", msg, sizeof(msg));
    /* The same answer for an unknown user: names cannot be probed. */
    char msg2[300];
    au_login_refused(M.b.port, "mallory", TOK_ALICE, "unauthorized", msg2, sizeof(msg2));
    assert_string_equal(msg, msg2);
    au_login_refused(M.b.port, NULL, TOK_ALICE, "unauthorized", NULL, 0);
    au_login_refused(M.b.port, "alice", NULL, "unauthorized", NULL, 0);
    /* bob's token is not alice's. */
    au_login_refused(M.b.port, "alice", TOK_BOB, "unauthorized", NULL, 0);

    /* Anything before the hello: unauthorized, closed. */
    char err[256];
    struct nexus_client *c = nexus_connect("127.0.0.1", M.b.port, err, sizeof(err));
    assert_non_null(c);
    uint64_t corr = nexus_next_correlation(c);
    assert_int_equal(nexus_send_ping(c, corr, 1), 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(c, corr, &f, PV_T), 1);
    assert_int_equal(f.kind, CODEC_KIND_ERROR);
    assert_true(h_slice_eq(f.u.error.code, "unauthorized"));
    hx_expect_closed(c, PV_T);
    nexus_close(c);

    /* A second hello on a logged-in connection is refused; the connection stays. */
    uint64_t c2 = nexus_next_correlation(a1);
    assert_int_equal(nexus_send_hello_user(a1, c2, "bob", TOK_BOB, "x"), 0);
    assert_int_equal(nexus_wait_reply(a1, c2, &f, PV_T), 1);
    assert_int_equal(f.kind, CODEC_KIND_ERROR);
    assert_int_equal(h_ping(a1, PV_T), 1);

    double fails = au_metric(M.mport, "nexus_auth_failures_total", NULL);
    double oks = au_metric(M.mport, "nexus_auth_successes_total", NULL);
    print_message("login: failures %.0f -> %.0f, successes %.0f -> %.0f\n", fails0, fails, oks0,
                  oks);
    assert_true(fails >= fails0 + 5);
    assert_true(oks >= oks0 + 2);
    nexus_close(a1);
    nexus_close(a2);
}

/* ---- emit ---------------------------------------------------------------------------------- */

/* Allowed: alice emits an order in her campaign (the broker stamps u-alice; her own subscriber
 * and the firehose see it), and one carrying her own user id. Refused (op emit, nothing
 * delivered): an order in bob's campaign, another type in hers, and an order carrying bob's
 * user id. A handler's reply state needs `handle` (or publish): alice may send
 * payments:charge:v1:success in bob's campaign, not billing:paid:v1:success in hers. */
static void test_emit(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *as = au_login(M.b.port, "alice", TOK_ALICE);
    const char *pat = "order:*:*:*";
    assert_int_equal(nexus_subscribe_sync(as, CAMP_ALICE, &pat, 1, NULL, NULL, NULL, PV_T), 1);
    au_drain(M.fire);
    struct pv_ev e;
    char uid[160];

    /* Allowed, stamped. */
    PV_EMIT_OK(a, "order:created:v1:completed", CAMP_ALICE, "em-ok-1", NULL, NULL, 0);
    au_expect_id(M.fire, "em-ok-1", &e);
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");
    au_expect_id(as, "em-ok-1", &e);
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");
    assert_string_equal(e.type, "order:created:v1:completed");

    /* Allowed: her own id, given explicitly. */
    assert_int_equal(pv_emit(a, "order:created:v1:completed", CAMP_ALICE, "em-ok-2", NULL,
                             "u-alice", NULL, 0, &e),
                     1);
    au_expect_id(M.fire, "em-ok-2", &e);
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");

    /* Refused: a campaign outside her rules. */
    double d = au_denied(M.mport, "emit");
    int r = pv_emit(a, "order:created:v1:completed", CAMP_BOB, "em-no-1", NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    assert_non_null(strstr(e.msg, "alice"));
    AU_QUIET(M.fire, "em-no-1");

    /* Refused: a type outside her patterns. */
    d = au_denied(M.mport, "emit");
    r = pv_emit(a, "chat:message:v1:completed", CAMP_ALICE, "em-no-2", NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    AU_QUIET(M.fire, "em-no-2");

    /* Refused: impersonation. */
    d = au_denied(M.mport, "emit");
    r = pv_emit(a, "order:created:v1:completed", CAMP_ALICE, "em-no-3", NULL, "u-bob", NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    assert_non_null(strstr(e.msg, "u-bob"));
    AU_QUIET(M.fire, "em-no-3");
    /* ... and bob himself may not claim alice's id either. */
    d = au_denied(M.mport, "emit");
    r = pv_emit(M.fire, "order:created:v1:completed", CAMP_BOB, "em-no-4", NULL, "u-alice", NULL, 0,
                &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    AU_QUIET(M.fire, "em-no-4");

    /* A handler's reply state: `handle` allows it outside her publish rules... */
    PV_EMIT_OK(a, "payments:charge:v1:success", CAMP_BOB, "em-ok-3", NULL, NULL, 0);
    au_expect_id(M.fire, "em-ok-3", &e);
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");
    /* ... but not for an action she does not handle. */
    d = au_denied(M.mport, "emit");
    r = pv_emit(a, "billing:paid:v1:success", CAMP_ALICE, "em-no-5", NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    AU_QUIET(M.fire, "em-no-5");

    /* The remembered decision is per campaign: the allowed type again, now in bob's campaign,
     * is still refused, and again allowed in hers. */
    d = au_denied(M.mport, "emit");
    PV_EMIT_OK(a, "order:created:v1:completed", CAMP_ALICE, "em-ok-4", NULL, NULL, 0);
    r = pv_emit(a, "order:created:v1:completed", CAMP_BOB, "em-no-6", NULL, NULL, NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "emit", d, e.code, e.msg, __LINE__);
    PV_EMIT_OK(a, "order:created:v1:completed", CAMP_ALICE, "em-ok-5", NULL, NULL, 0);
    au_expect_id(M.fire, "em-ok-5", &e);
    AU_QUIET(M.fire, "em-no-6");

    /* Her subscriber saw only what was allowed, in order. */
    const char *want[] = {"em-ok-2", "em-ok-4", "em-ok-5"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pv_next_event(as, &e, PV_T), 1);
        assert_string_equal(e.id, want[i]);
    }
    AU_QUIET(as, NULL);
    nexus_close(a);
    nexus_close(as);
}

/* ---- subscribe ------------------------------------------------------------------------------ */

static int sub_try(struct nexus_client *c, int64_t camp, const char *pattern, struct pv_ev *e)
{
    struct nexus_frame f;
    memset(e, 0, sizeof(*e));
    int r = nexus_subscribe_sync(c, camp, pattern ? &pattern : NULL, pattern ? 1 : 0, NULL, NULL,
                                 &f, PV_T);
    if (r == 1 || r == -EPROTO)
        pv_fill(e, &f);
    return r;
}

/* Allowed: alice subscribes to order:created:v1:* in her campaign (covered by order:*:*:*);
 * bob to the firehose. Refused (op subscribe, no subscription made): alice to `*` and to
 * chat:*:*:* in her campaign, to orders in bob's campaign, to the firehose. */
static void test_subscribe(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *a_no = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *carol = au_login(M.b.port, "carol", TOK_CAROL);
    struct nexus_client *bob = au_login(M.b.port, "bob", TOK_BOB);
    struct pv_ev e;
    assert_int_equal(sub_try(a, CAMP_ALICE, "order:created:v1:*", &e), 1);
    assert_int_equal(sub_try(bob, 0, NULL, &e), 1);

    const struct {
        int64_t camp;
        const char *pattern;
    } no[] = {{CAMP_ALICE, NULL},         {CAMP_ALICE, "*"},
              {CAMP_ALICE, "chat:*:*:*"}, {CAMP_ALICE, "*:created:*:*"},
              {CAMP_BOB, "order:*:*:*"},  {0, NULL},
              {0, "order:*:*:*"}};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        double d = au_denied(M.mport, "subscribe");
        int r = sub_try(a_no, no[i].camp, no[i].pattern, &e);
        if (r != -EPROTO)
            fail_msg("subscribe %lld %s: r=%d, expected a refusal", (long long)no[i].camp,
                     no[i].pattern ? no[i].pattern : "(all)", r);
        au_check_denied(M.mport, "subscribe", d, e.code, e.msg, __LINE__);
    }
    assert_int_equal(h_ping(a_no, PV_T), 1); /* refused, not closed */

    /* carol publishes a chat message and an order in alice's campaign: the refused connection
     * gets neither (it holds no subscription), alice's gets only the order, bob's firehose
     * both. */
    PV_EMIT_OK(carol, "chat:message:v1:completed", CAMP_ALICE, "sub-chat", NULL, NULL, 0);
    PV_EMIT_OK(carol, "order:created:v1:completed", CAMP_ALICE, "sub-order", NULL, NULL, 0);
    au_expect_id(a, "sub-order", &e);
    au_expect_id(bob, "sub-chat", &e);
    au_expect_id(bob, "sub-order", &e);
    char uid[64];
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "carol"); /* default id */
    AU_QUIET(a_no, NULL);
    AU_QUIET(a, NULL);
    nexus_close(a);
    nexus_close(a_no);
    nexus_close(carol);
    nexus_close(bob);
}

/* ---- stats ---------------------------------------------------------------------------------- */

static void test_stats(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    struct codec_shard_stats st[8];
    assert_int_equal(h_stats(M.fire, st, 8, PV_T), SHARDS);
    double d = au_denied(M.mport, "admin");
    uint64_t corr = nexus_next_correlation(a);
    assert_int_equal(nexus_send_stats(a, corr), 0);
    struct nexus_frame f;
    assert_int_equal(nexus_wait_reply(a, corr, &f, PV_T), 1);
    struct pv_ev e;
    pv_fill(&e, &f);
    assert_int_equal(e.kind, CODEC_KIND_ERROR);
    au_check_denied(M.mport, "admin", d, e.code, e.msg, __LINE__);
    assert_int_equal(h_ping(a, PV_T), 1);
    nexus_close(a);
}

/* ---- request -------------------------------------------------------------------------------- */

/* Allowed: alice requests test:echo (success comes back). Refused (op request, nothing
 * published, no lifecycle): campaign:update, and a cancel of an action she may not request. */
static void test_request(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    au_drain(M.fire);
    struct pv_ev e;
    PV_EMIT_OK(a, "test:echo:v1:requested", CAMP_ALICE, "rq-ok", NULL, NULL, 0);
    PV_EXPECT(a, &e, "test:echo:v1:started", "rq-ok");
    PV_EXPECT(a, &e, "test:echo:v1:success", "rq-ok");
    au_expect_id(M.fire, "rq-ok", &e);
    char uid[64];
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");
    au_drain(M.fire);

    const char *no[] = {"campaign:update:v1:requested", "campaign:update:v1:cancel"};
    for (int i = 0; i < 2; i++) {
        double d = au_denied(M.mport, "request");
        int r = pv_emit(a, no[i], CAMP_ALICE, "rq-no", i ? "rq-ok" : NULL, NULL, NULL, 0, &e);
        PV_EXPECT_ERROR(&e, r, "permission_denied");
        au_check_denied(M.mport, "request", d, e.code, e.msg, __LINE__);
        AU_QUIET(M.fire, "rq-no");
    }
    PV_QUIET(a, "rq-no", 100);
    nexus_close(a);
}

/* ---- cancel --------------------------------------------------------------------------------- */

/* alice's stream: carol (another user, not admin) may not cancel it (op cancel; the stream goes
 * on; the firehose sees no cancel); bob (admin) may. */
static void test_cancel(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *carol = au_login(M.b.port, "carol", TOK_CAROL);
    struct nexus_client *bob = au_login(M.b.port, "bob", TOK_BOB);
    uint8_t buf[128];
    const uint8_t *pl;
    int n = pv_payload(buf, sizeof(buf), &pl, "interval_ms", 40, NULL, 0, NULL, 0);
    PV_EMIT_OK(a, "test:stream_ticks:v1:requested", CAMP_ALICE, "cx-1", NULL, pl, n);
    struct pv_ev e;
    PV_EXPECT(a, &e, "test:stream_ticks:v1:started", "cx-1");
    PV_EXPECT(a, &e, "test:stream_ticks:v1:stream", "cx-1");

    double d = au_denied(M.mport, "cancel");
    int r = pv_emit(carol, "test:stream_ticks:v1:cancel", CAMP_ALICE, "cx-forged", "cx-1", NULL,
                    NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    au_check_denied(M.mport, "cancel", d, e.code, e.msg, __LINE__);
    AU_QUIET(M.fire, "cx-forged");
    /* The stream goes on. */
    for (int i = 0; i < 3; i++) {
        PV_EXPECT(a, &e, "test:stream_ticks:v1:stream", "cx-1");
    }

    /* The admin cancels it. */
    PV_EMIT_OK(bob, "test:stream_ticks:v1:cancel", CAMP_ALICE, "cx-admin", "cx-1", NULL, 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(pv_next_event(a, &e, PV_T), 1);
        if (strcmp(e.type, "test:stream_ticks:v1:stream") != 0 &&
            strcmp(e.type, "test:stream_ticks:v1:heartbeat") != 0 &&
            strcmp(e.type, "test:stream_ticks:v1:cancel") != 0)
            break;
    }
    assert_string_equal(e.type, "test:stream_ticks:v1:cancelled");
    assert_string_equal(e.cid, "cx-1");
    nexus_close(a);
    nexus_close(carol);
    nexus_close(bob);
}

/* ---- handlers ------------------------------------------------------------------------------- */

static int register_try(struct nexus_client *c, const char *action, struct pv_ev *e)
{
    struct codec_register *reg = calloc(1, sizeof(*reg));
    assert_non_null(reg);
    reg->specs[0].action.ptr = (const uint8_t *)action;
    reg->specs[0].action.len = (uint32_t)strlen(action);
    reg->count = 1;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_register(c, corr, reg);
    free(reg);
    assert_int_equal(r, 0);
    struct nexus_frame f;
    r = nexus_wait_reply(c, corr, &f, PV_T);
    if (r == 1)
        pv_fill(e, &f);
    return r;
}

/* Allowed: alice registers for payments:charge; bob's request reaches her and her reply (in a
 * campaign outside her publish rules) reaches bob. Refused (op handle): alice for billing:charge,
 * carol hijacking payments:charge; carol never sees bob's request. */
static void test_handle(void **state)
{
    (void)state;
    struct nexus_client *a = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *carol = au_login(M.b.port, "carol", TOK_CAROL);
    struct nexus_client *bob = au_login(M.b.port, "bob", TOK_BOB);
    struct pv_ev e;
    const char *mine = "payments:charge";
    pv_register(a, &mine, 1, false, 0);

    const struct {
        struct nexus_client *c;
        const char *action;
    } no[] = {{a, "billing:charge"}, {carol, "payments:charge"}, {carol, "test:echo"}};
    for (int i = 0; i < 3; i++) {
        double d = au_denied(M.mport, "handle");
        assert_int_equal(register_try(no[i].c, no[i].action, &e), 1);
        assert_int_equal(e.kind, CODEC_KIND_ERROR);
        au_check_denied(M.mport, "handle", d, e.code, e.msg, __LINE__);
    }

    PV_EMIT_OK(bob, "payments:charge:v1:requested", CAMP_BOB, "pay-1", NULL, NULL, 0);
    au_expect_id(a, "pay-1", &e);
    assert_string_equal(e.type, "payments:charge:v1:requested");
    char uid[64];
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-bob");
    PV_EXPECT(bob, &e, "payments:charge:v1:started", "pay-1");
    assert_int_equal(
        pv_emit(a, "payments:charge:v1:success", CAMP_BOB, NULL, "pay-1", NULL, NULL, 0, &e), 1);
    PV_EXPECT(bob, &e, "payments:charge:v1:success", "pay-1");
    PV_QUIET(carol, NULL, 100);
    nexus_close(a);
    nexus_close(carol);
    nexus_close(bob);
}

/* ---- media ---------------------------------------------------------------------------------- */

static int media_join(struct nexus_client *c, const char *ctx, const char *peer, const char *id,
                      struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "context_id", ctx);
    if (peer)
        hs_put_cstring(&w, "peer_id", peer);
    hp_end(&w);
    int r = h_request(c, "media:join_room:v1:requested", CAMP_ALICE, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

/* Allowed: alice joins as u-alice/phone, and (peer_id omitted) as u-alice. Refused (failed with
 * permission_denied, op signal, the room's member hears of nobody): alice joining as u-bob. */
static void test_media(void **state)
{
    (void)state;
    struct nexus_client *a1 = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *a2 = au_login(M.b.port, "alice", TOK_ALICE);
    struct nexus_client *a3 = au_login(M.b.port, "alice", TOK_ALICE);
    struct hev e = {0};
    char s[64], msg[300];
    assert_int_equal(media_join(a1, "room-a", "u-alice/phone", "mj-1", &e), 1);
    assert_true(hev_state(&e, "success"));

    double d = au_denied(M.mport, "signal");
    assert_int_equal(media_join(a2, "room-a", "u-bob", "mj-2", &e), 1);
    assert_true(hev_state(&e, "failed"));
    au_check_denied(M.mport, "signal", d, e.code, hp_str(&e, "message", msg, sizeof(msg)),
                    __LINE__);
    /* A prefix is not enough: "u-alicex" is not u-alice's. */
    d = au_denied(M.mport, "signal");
    assert_int_equal(media_join(a2, "room-a", "u-alicex", "mj-3", &e), 1);
    assert_true(hev_state(&e, "failed"));
    au_check_denied(M.mport, "signal", d, e.code, hp_str(&e, "message", msg, sizeof(msg)),
                    __LINE__);
    /* a1, in the room, hears of no one joining. */
    usleep(150000);
    assert_int_equal(h_ping(a1, PV_T), 1);
    struct nexus_frame f;
    while (nexus_recv(a1, &f, 50) == 1) {
        if (f.kind != CODEC_KIND_EVENT)
            continue;
        struct hev x = {0};
        hev_fill(&x, &f);
        if (strcmp(x.cid, "mj-1") == 0 && hev_state(&x, "stream"))
            fail_msg("the room's member heard %s after a refused join",
                     hp_str(&x, "action", s, sizeof(s)));
        hev_clear(&x);
    }

    /* peer_id omitted: the user's id. */
    assert_int_equal(media_join(a3, "room-b", NULL, "mj-4", &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_string_equal(hp_str(&e, "peer_id", s, sizeof(s)), "u-alice");
    hev_clear(&e);
    nexus_close(a1);
    nexus_close(a2);
    nexus_close(a3);
}

/* ---- brokers of their own ------------------------------------------------------------------- */

static struct broker_proc start_own(const char *path, const char *const *extra)
{
    const char *flags[16];
    int n = 0;
    flags[n++] = "--accounts";
    flags[n++] = path;
    for (int i = 0; extra && extra[i]; i++)
        flags[n++] = extra[i];
    flags[n] = NULL;
    return h_track(h_start_flags(1, 0, flags));
}

static void own_accounts(char *path, size_t cap, const char *name)
{
    snprintf(path, cap, "%s/%s", K.dir, name);
    char text[4096];
    au_write(path, accounts_text(text, sizeof(text), K.h_alice, K.h_bob, K.h_carol));
}

/* --auth-timeout-ms 300: a silent connection, one that sent part of a hello and one that sent
 * a hello naming nobody valid... each gets error{timeout} and is closed within 5 x 300 ms; a
 * connection that logged in stays. */
static void test_auth_timeout(void **state)
{
    (void)state;
    char path[128];
    own_accounts(path, sizeof(path), "acc-timeout");
    const char *extra[] = {"--auth-timeout-ms", "300", NULL};
    struct broker_proc b = start_own(path, extra);
    int64_t t0 = h_now_ms();
    int silent = hx_tcp_connect(b.port);
    int partial = hx_tcp_connect(b.port);
    assert_true(silent >= 0 && partial >= 0);
    struct nexus_client *ok = au_login(b.port, "alice", TOK_ALICE);
    uint8_t hdr[14] = {0, 0, 0, 100, 0x12, 0x05};
    assert_int_equal(hx_send_all(partial, hdr, sizeof(hdr)), 0);
    const int bound = 300 * 5 + HX_SLACK_MS;
    int fds[2] = {silent, partial};
    for (int i = 0; i < 2; i++) {
        struct hx_closed o = hx_read_to_close(fds[i], bound + 2000);
        int64_t took = o.closed_at - t0;
        print_message("auth_timeout: %s connection: %d error(s) (%s), closed after %lld ms\n",
                      i ? "partial" : "silent", o.errors, o.code, (long long)took);
        assert_true(o.closed);
        assert_int_equal(o.errors, 1);
        assert_string_equal(o.code, "timeout");
        assert_true(took >= 250);
        assert_true(took < bound);
        close(fds[i]);
    }
    usleep(100000);
    assert_int_equal(h_ping(ok, PV_T), 1);
    PV_EMIT_OK(ok, "order:created:v1:completed", CAMP_ALICE, NULL, NULL, NULL, 0);
    nexus_close(ok);
    assert_int_equal(h_stop(&b), 0);
}

#define PH_CONNS 200
#define PH_SENT  (256u << 10)

/* 200 connections each announce a 1 MiB frame before hello and send 256 KiB of it: each is
 * answered with frame_too_large and closed, and nothing is buffered: RSS stays within baseline
 * + 24 MiB (buffering would hold 50 MiB). */
static void test_pre_hello_big_frame(void **state)
{
    (void)state;
    assert_int_equal(h_raise_nofile(PH_CONNS * 2 + 256), 0);
    char path[128];
    own_accounts(path, sizeof(path), "acc-prehello");
    struct broker_proc b = start_own(path, NULL);
    double base = hx_rss_mib(&b);
    static int fd[PH_CONNS];
    for (int i = 0; i < PH_CONNS; i++) {
        fd[i] = hx_tcp_connect(b.port);
        if (fd[i] < 0)
            fail_msg("connection %d: %s", i, strerror(-fd[i]));
    }
    static uint8_t attack[4 + PH_SENT];
    wire_put_be32(attack, 1u << 20);
    memset(attack + 4, 0x08, PH_SENT);
    double peak = base;
    for (int i = 0; i < PH_CONNS; i++) {
        (void)hx_send_all(fd[i], attack, sizeof(attack)); /* may be cut short by the close */
        if (i % 20 == 0) {
            double m = hx_rss_mib(&b);
            peak = m > peak ? m : peak;
        }
    }
    for (int i = 0; i < PH_CONNS; i++) {
        struct hx_closed o = hx_read_to_close(fd[i], PV_T);
        if (o.errors != 1 || strcmp(o.code, "frame_too_large") != 0 || !o.closed)
            fail_msg("connection %d: %d error(s), last %s, %s", i, o.errors, o.code,
                     o.closed ? "closed" : "still open");
        close(fd[i]);
    }
    double after = hx_rss_mib(&b);
    peak = after > peak ? after : peak;
    print_message("pre_hello_big_frame: RSS baseline %.1f MiB, peak %.1f (+%.1f, bound +24)\n",
                  base, peak, peak - base);
    assert_true(peak - base < 24.0);
    /* The broker still logs people in. */
    struct nexus_client *ok = au_login(b.port, "carol", TOK_CAROL);
    assert_int_equal(h_ping(ok, PV_T), 1);
    nexus_close(ok);
    assert_int_equal(h_stop(&b), 0);
}

/* Runs nexusd with args (NULL-terminated) and expects it to exit non-zero within 3 s with
 * every needle in its stderr. */
static void expect_refused_start(const char *const *args, const char *const *needles)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = getenv("NEXUSD");
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    struct h_child ch;
    int st = h_run(&ch, argv, 3000);
    if (st == 0 || st == -1)
        fail_msg("nexusd %s %s %s %s: %s (expected a refusal); stderr: %s", args[0], args[1],
                 args[2] ? args[2] : "", args[2] && args[3] ? args[3] : "",
                 st ? "still running after 3 s" : "exited 0", ch.err);
    for (int i = 0; needles[i]; i++)
        if (!strstr(ch.err, needles[i]))
            fail_msg("nexusd's refusal lacks \"%s\": %s", needles[i], ch.err);
    h_child_free(&ch);
}

/* 0.0.0.0 without --accounts or --token: refused, naming --accounts and --insecure; with
 * --insecure it starts and serves without a login; with --accounts it starts and wants one. */
static void test_protected_mode(void **state)
{
    (void)state;
    char listen[64];
    uint16_t port = h_free_port();
    snprintf(listen, sizeof(listen), "0.0.0.0:%u", port);
    const char *args[] = {"--listen", listen, NULL};
    const char *needles[] = {"--accounts", "--insecure", NULL};
    expect_refused_start(args, needles);

    const char *bin = getenv("NEXUSD");
    for (int mode = 0; mode < 2; mode++) {
        char path[128];
        own_accounts(path, sizeof(path), "acc-protected");
        const char *argv_ins[] = {bin,           "--listen", listen, "--insecure",
                                  "--log-level", "warn",     NULL};
        const char *argv_acc[] = {bin,  "--listen",    listen, "--accounts",
                                  path, "--log-level", "warn", NULL};
        struct h_child ch;
        assert_int_equal(h_child_start(&ch, mode ? argv_acc : argv_ins), 0);
        struct nexus_client *c = NULL;
        char err[256];
        for (int i = 0; i < 500 && !c; i++) {
            c = nexus_connect("127.0.0.1", port, err, sizeof(err));
            if (!c)
                usleep(20000);
        }
        if (!c)
            fail_msg("nexusd on %s did not start: %s", listen, ch.err);
        struct nexus_frame f;
        if (mode == 0) {
            assert_int_equal(nexus_hello_sync(c, NULL, "anyone", &f, PV_T), 1);
        } else {
            assert_int_equal(nexus_hello_sync(c, NULL, "anyone", &f, PV_T), -EPROTO);
            assert_true(h_slice_eq(f.u.error.code, "unauthorized"));
            nexus_close(c);
            c = au_login(port, "alice", TOK_ALICE);
        }
        assert_int_equal(h_ping(c, PV_T), 1);
        nexus_close(c);
        kill(ch.pid, SIGTERM);
        int st = h_child_finish(&ch, 15000);
        if (st != 0)
            fail_msg("nexusd (%s) exited %d: %s", mode ? "--accounts" : "--insecure", st, ch.err);
        h_child_free(&ch);
    }
}

/* Broken accounts files stop nexusd at start-up with "--accounts PATH: line N:". */
static void test_bad_accounts_file(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/acc-bad", K.dir);
    char text[4096];
    const struct {
        const char *body;
        int line;
    } bad[] = {
        {"user x\n  token @\n  publish 9-5 *\n", 3},             /* an empty range */
        {"user x\n  token @\nuser y\n  publish 1 *\n", 3},       /* y cannot log in */
        {"user x\n  token @\n\nuser x\n  token @\n", 4},         /* duplicate */
        {"user x\n  token not-a-hash\n", 2},                     /* a token, not its hash */
        {"  publish 1 *\nuser x\n  token @\n", 1},               /* before any user */
        {"user x\n  token @\n  subscribe 1-9 Order:*:*:*\n", 3}, /* bad pattern */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = 0;
        for (const char *p = bad[i].body; *p && n + sizeof(K.h_alice) < sizeof(text); p++) {
            if (*p == '@') { /* a valid hash */
                n += (size_t)snprintf(text + n, sizeof(text) - n, "%s", K.h_alice);
            } else {
                text[n++] = *p;
            }
        }
        text[n] = 0;
        au_write(path, text);
        char where[256];
        snprintf(where, sizeof(where), "--accounts %s: line %d:", path, bad[i].line);
        uint16_t port = h_free_port();
        char listen[64];
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
        const char *args[] = {"--listen", listen, "--accounts", path, NULL};
        const char *needles[] = {where, NULL};
        expect_refused_start(args, needles);
    }
    /* A file that does not exist. */
    snprintf(path, sizeof(path), "%s/no-such-file", K.dir);
    const char *args[] = {"--listen", "127.0.0.1:1", "--accounts", path, NULL};
    const char *needles[] = {"no-such-file", NULL};
    expect_refused_start(args, needles);
}

/* Waits for c to be closed by the broker after an error frame; its code into code. */
static void closed_code(struct nexus_client *c, char *code, size_t cap, const char *who)
{
    struct nexus_frame f;
    int64_t end = h_now_ms() + PV_T;
    for (;;) {
        int64_t left = end - h_now_ms();
        int r = left > 0 ? nexus_recv(c, &f, (int)left) : 0;
        if (r == 0)
            fail_msg("%s: not closed after the reload", who);
        if (r == -ECONNRESET)
            fail_msg("%s: closed without an error frame", who);
        assert_int_equal(r, 1);
        if (f.kind == CODEC_KIND_ERROR) {
            pv_str(code, cap, f.u.error.code);
            break;
        }
    }
    hx_expect_closed(c, PV_T);
}

/* Waits for c to be closed by the broker with error `code`. */
static void expect_closed_with(struct nexus_client *c, const char *code, const char *who)
{
    struct nexus_frame f;
    int64_t end = h_now_ms() + PV_T;
    for (;;) {
        int64_t left = end - h_now_ms();
        if (left <= 0)
            fail_msg("%s: not closed after the reload", who);
        int r = nexus_recv(c, &f, (int)left);
        if (r == 0)
            fail_msg("%s: not closed after the reload", who);
        if (r == -ECONNRESET)
            fail_msg("%s: closed without an error frame", who);
        assert_int_equal(r, 1);
        if (f.kind != CODEC_KIND_ERROR)
            continue;
        if (!h_slice_eq(f.u.error.code, code))
            fail_msg("%s: closed with %.*s (%.*s), expected %s", who, (int)f.u.error.code.len,
                     (const char *)f.u.error.code.ptr, (int)f.u.error.message.len,
                     (const char *)f.u.error.message.ptr, code);
        break;
    }
    hx_expect_closed(c, PV_T);
}

/* SIGHUP: carol removed, bob's token changed, alice's subscribe rule narrowed to
 * order:created:*:*. Closed: carol (unauthorized), bob (unauthorized), the alice connection
 * subscribed to order:*:*:* (permission_denied). Kept and working: an alice connection
 * subscribed to order:created:v1:* and one with no subscription. New logins follow the new
 * file. A broken file then changes nothing. */
static void test_reload(void **state)
{
    (void)state;
    char path[128];
    own_accounts(path, sizeof(path), "acc-reload");
    struct broker_proc b = start_own(path, NULL);
    struct nexus_client *carol = au_login(b.port, "carol", TOK_CAROL);
    struct nexus_client *bob = au_login(b.port, "bob", TOK_BOB);
    struct nexus_client *a_wide = au_login(b.port, "alice", TOK_ALICE);
    struct nexus_client *a_narrow = au_login(b.port, "alice", TOK_ALICE);
    struct nexus_client *a_pub = au_login(b.port, "alice", TOK_ALICE);
    const char *wide = "order:*:*:*", *narrow = "order:created:v1:*";
    assert_int_equal(nexus_subscribe_sync(a_wide, CAMP_ALICE, &wide, 1, NULL, NULL, NULL, PV_T), 1);
    assert_int_equal(nexus_subscribe_sync(a_narrow, CAMP_ALICE, &narrow, 1, NULL, NULL, NULL, PV_T),
                     1);

    char text[4096];
    accounts_text(text, sizeof(text), K.h_alice, K.h_bob2, NULL);
    /* alice's subscribe rule narrowed. */
    char *s = strstr(text, "subscribe 1-100 order:*:*:*");
    assert_non_null(s);
    const char *repl = "subscribe 1-100 order:created:*:*";
    char out[4096];
    snprintf(out, sizeof(out), "%.*s%s%s", (int)(s - text), text, repl,
             s + strlen("subscribe 1-100 order:*:*:*"));
    au_write(path, out);
    assert_int_equal(kill(b.pid, SIGHUP), 0);

    expect_closed_with(carol, "unauthorized", "carol (removed)");
    expect_closed_with(a_wide, "permission_denied", "alice (subscription narrowed)");
    /* bob's code is checked at the end, so that a wrong one does not hide the rest. */
    char bob_code[64];
    closed_code(bob, bob_code, sizeof(bob_code), "bob (token changed)");
    nexus_close(carol);
    nexus_close(bob);
    nexus_close(a_wide);

    /* The others stay and work. */
    struct pv_ev e;
    PV_EMIT_OK(a_pub, "order:created:v1:completed", CAMP_ALICE, "rl-1", NULL, NULL, 0);
    au_expect_id(a_narrow, "rl-1", &e);
    char uid[64];
    assert_string_equal(au_md_user(e.md, e.md_len, uid, sizeof(uid)), "u-alice");

    /* New logins follow the new file. */
    au_login_refused(b.port, "carol", TOK_CAROL, "unauthorized", NULL, 0);
    au_login_refused(b.port, "bob", TOK_BOB, "unauthorized", NULL, 0);
    struct nexus_client *bob2 = au_login(b.port, "bob", TOK_BOB2);
    struct pv_ev x;
    assert_int_equal(sub_try(a_pub, CAMP_ALICE, "order:*:*:*", &x), -EPROTO);
    assert_string_equal(x.code, "permission_denied");

    /* A broken file: logged, nothing changes. */
    au_write(path, "user alice\n  token plain-text-token\n");
    assert_int_equal(kill(b.pid, SIGHUP), 0);
    usleep(300000);
    assert_true(h_alive(&b));
    assert_int_equal(h_ping(a_narrow, PV_T), 1);
    assert_int_equal(h_ping(bob2, PV_T), 1);
    struct nexus_client *bob3 = au_login(b.port, "bob", TOK_BOB2);
    PV_EMIT_OK(a_pub, "order:created:v1:completed", CAMP_ALICE, "rl-2", NULL, NULL, 0);
    au_expect_id(a_narrow, "rl-2", &e);
    nexus_close(bob3);
    nexus_close(bob2);
    nexus_close(a_narrow);
    nexus_close(a_pub);
    assert_int_equal(h_stop(&b), 0);
    if (strcmp(bob_code, "unauthorized") != 0)
        fail_msg("bob (token changed by the reload) was closed with %s, expected unauthorized",
                 bob_code);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login),          cmocka_unit_test(test_emit),
        cmocka_unit_test(test_subscribe),      cmocka_unit_test(test_stats),
        cmocka_unit_test(test_request),        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_handle),         cmocka_unit_test(test_media),
        cmocka_unit_test(test_auth_timeout),   cmocka_unit_test(test_pre_hello_big_frame),
        cmocka_unit_test(test_protected_mode), cmocka_unit_test(test_bad_accounts_file),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
