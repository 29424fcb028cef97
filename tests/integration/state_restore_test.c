// SPDX-License-Identifier: Apache-2.0
//
// Campaign state survives a restart (docs/OPERATIONS.md, "Data directory"): with --data-dir,
// state set with campaign:update and campaign:feature, and its version, are the same after
// kill -9 and a restart, on every shard; the next update continues the version; without
// --data-dir the state is gone after a restart (the test can tell the two apart).
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "handlers_util.h"

#define SHARDS 2

static int update(struct nexus_client *c, int64_t camp, const char *id, const char *key,
                  double value, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    hs_put_number(&w, key, value);
    hs_end(&w);
    hp_end(&w);
    int r = h_request(c, "campaign:update:v1:requested", camp, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

static int add_feature(struct nexus_client *c, int64_t camp, const char *id, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "action", "add");
    hs_put_list_open(&w, "features");
    hs_item_string(&w, "beta", 4);
    hs_end(&w);
    hp_end(&w);
    int r = h_request(c, "campaign:feature:v1:requested", camp, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

static double state_number(const struct hev *e, const char *key)
{
    struct structpb_value st, v;
    if (hp_get(e, "state", &st) != 1 || st.kind != STRUCTPB_STRUCT ||
        structpb_struct_get(st.ptr, st.len, key, &v) != 1 || v.kind != STRUCTPB_NUMBER)
        return -1;
    return v.number;
}

static bool has_beta(const struct hev *e)
{
    struct structpb_value l;
    return hp_get(e, "features", &l) == 1 && l.kind == STRUCTPB_LIST &&
           memmem(l.ptr, l.len, "beta", 4) != NULL;
}

static struct broker_proc start(const char *dir)
{
    return h_start(SHARDS, "--test-handlers", "--data-dir", dir, NULL);
}

static void test_state_survives_kill9(void **state)
{
    (void)state;
    char dir[] = "/tmp/nexus-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct broker_proc b = start(dir);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    int64_t camps[SHARDS];
    struct hev e = {0};
    char id[64];
    for (uint32_t s = 0; s < SHARDS; s++) {
        camps[s] = h_campaign_on(s, SHARDS, 5100);
        for (int i = 1; i <= 3; i++) {
            snprintf(id, sizeof(id), "u-%u-%d", s, i);
            assert_int_equal(update(c, camps[s], id, "n", 10.0 * i + s, &e), 1);
            assert_true(hev_state(&e, "success"));
        }
        snprintf(id, sizeof(id), "f-%u", s);
        assert_int_equal(add_feature(c, camps[s], id, &e), 1);
        assert_int_equal(hp_num(&e, "version"), 4);
    }
    nexus_close(c);
    kill(b.pid, SIGKILL);
    assert_int_equal(h_wait_exit(&b, 5000), 128 + SIGKILL);

    b = start(dir);
    c = h_connect(&b, NULL);
    assert_non_null(c);
    for (uint32_t s = 0; s < SHARDS; s++) {
        snprintf(id, sizeof(id), "s-%u", s);
        assert_int_equal(h_request(c, "campaign:state:v1:requested", camps[s], id, NULL, 0, &e), 1);
        print_message("campaign %lld after kill -9: version %.0f, n %.0f, beta %d\n",
                      (long long)camps[s], hp_num(&e, "version"), state_number(&e, "n"),
                      has_beta(&e));
        assert_int_equal(hp_num(&e, "version"), 4);
        assert_int_equal(state_number(&e, "n"), 30 + s);
        assert_true(has_beta(&e));
        snprintf(id, sizeof(id), "v-%u", s);
        assert_int_equal(update(c, camps[s], id, "m", 1, &e), 1);
        assert_int_equal(hp_num(&e, "version"), 5); /* the version continues */
        assert_int_equal(state_number(&e, "n"), 30 + s);
    }
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    /* A clean restart too (SIGTERM drains into the log). */
    b = start(dir);
    c = h_connect(&b, NULL);
    assert_int_equal(h_request(c, "campaign:state:v1:requested", camps[0], "t", NULL, 0, &e), 1);
    assert_int_equal(hp_num(&e, "version"), 5);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);

    /* Without --data-dir nothing is kept: what the assertions above tell apart. */
    b = h_start(SHARDS, "--test-handlers", NULL);
    c = h_connect(&b, NULL);
    assert_int_equal(h_request(c, "campaign:state:v1:requested", camps[0], "w", NULL, 0, &e), 1);
    assert_int_equal(hp_num(&e, "version"), 0);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
    free(e.pl);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_survives_kill9),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
