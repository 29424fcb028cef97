// SPDX-License-Identifier: Apache-2.0
//
// The built-in campaign handlers (docs/DESIGN.md §4.1) against the real nexusd, over real sockets,
// with 3 shards: updates from clients on different shards converge in every stream_state stream and
// in campaign:state, each update is followed by exactly one campaign:state:v1:success to the whole
// campaign; stream_events resumed from a sequence sees each event once across the replay/live seam
// while another client keeps emitting; campaign:list returns the campaigns of every shard and pages
// consistently; features, config, switch and analytics; bad payloads are refused with a code naming
// the field and leave the state unchanged.
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "handlers_util.h"

#define SHARDS 3

/* The full-state fields of a success / stream payload. */
static double version_of(const struct hev *e)
{
    return hp_num(e, "version");
}

/* The `state` Struct bytes of a payload (copied into out). */
static uint32_t state_bytes(const struct hev *e, uint8_t *out, uint32_t cap)
{
    struct structpb_value v;
    if (hp_get(e, "state", &v) != 1 || v.kind != STRUCTPB_STRUCT || v.len > cap)
        return UINT32_MAX;
    memcpy(out, v.ptr, v.len);
    return v.len;
}

static double state_number(const struct hev *e, const char *key)
{
    struct structpb_value st, v;
    if (hp_get(e, "state", &st) != 1 || st.kind != STRUCTPB_STRUCT ||
        structpb_struct_get(st.ptr, st.len, key, &v) != 1 || v.kind != STRUCTPB_NUMBER)
        return -1;
    return v.number;
}

static int update(struct nexus_client *c, int64_t campaign, const char *id, const char *key,
                  double value, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    hs_put_number(&w, key, value);
    hs_put_number(&w, "last_writer", value);
    hs_end(&w);
    hp_end(&w);
    int r = h_request(c, "campaign:update:v1:requested", campaign, id, w.buf, w.len, e);
    hs_free(&w);
    return r;
}

static int get_state(struct nexus_client *c, int64_t campaign, const char *id, struct hev *e)
{
    return h_request(c, "campaign:state:v1:requested", campaign, id, NULL, 0, e);
}

/* Opens campaign:stream_state on c: started, then the current (empty) state at once. */
static void open_state_stream(struct nexus_client *c, int64_t camp, const char *id, struct hev *e)
{
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "campaign:stream_state:v1:requested", camp, id, NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &in, &f, HT), 1);
    assert_int_equal(h_next_for(c, id, e, HT), 1);
    assert_true(hev_state(e, "started"));
    assert_int_equal(h_next_for(c, id, e, HT), 1);
    assert_true(hev_state(e, "stream"));
    assert_int_equal(version_of(e), 0);
}

/* Reads a stream_state stream until it shows version `final`: versions only move forward, the
 * last state is `want`, and the pushes were coalesced (fewer than the changes). */
static void await_final_state(struct nexus_client *c, const char *id, double final,
                              const uint8_t *want, uint32_t want_len, struct hev *e)
{
    static uint8_t got[1 << 16];
    double v = 0;
    int pushes = 0;
    while (v < final) {
        assert_int_equal(h_next_for(c, id, e, HT), 1);
        if (!hev_state(e, "stream"))
            continue;
        double nv = version_of(e);
        assert_true(nv > v);
        v = nv;
        pushes++;
    }
    assert_int_equal(v, final);
    assert_true(pushes < final); /* sequential updates land well inside the 50 ms window */
    uint32_t n = state_bytes(e, got, sizeof(got));
    assert_int_equal(n, want_len);
    assert_memory_equal(got, want, n);
}

/* Clients on every shard update one campaign; every stream_state stream ends on the same
 * state as campaign:state, and each update brought exactly one state broadcast. */
static void test_updates_converge(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    int64_t camp = h_campaign_on(1, SHARDS, 500);
    struct nexus_client *watch[SHARDS], *writer[SHARDS];
    struct hev e = {0};
    char id[64];
    for (uint32_t i = 0; i < SHARDS; i++) {
        watch[i] = h_connect_on(&b, i);
        writer[i] = h_connect_on(&b, i);
        assert_non_null(watch[i]);
        assert_non_null(writer[i]);
        snprintf(id, sizeof(id), "ss-%u", i);
        open_state_stream(watch[i], camp, id, &e);
    }
    /* A subscriber that counts the broadcasts. */
    struct nexus_client *sub = h_connect_on(&b, 2);
    const char *pat[] = {"campaign:state:v1:success"};
    uint64_t sid;
    struct nexus_frame f;
    assert_int_equal(nexus_subscribe_sync(sub, camp, pat, 1, NULL, &sid, &f, HT), 1);

    const int rounds = 10;
    for (int j = 0; j < rounds; j++) {
        for (uint32_t i = 0; i < SHARDS; i++) {
            char key[32];
            snprintf(id, sizeof(id), "u-%u-%d", i, j);
            snprintf(key, sizeof(key), "k%u", i);
            assert_int_equal(update(writer[i], camp, id, key, j * 10 + i, &e), 1);
            assert_true(hev_state(&e, "success"));
            assert_int_equal(state_number(&e, key), j * 10 + i);
        }
    }
    double final = rounds * SHARDS;
    assert_int_equal(get_state(writer[0], camp, "get-final", &e), 1);
    assert_int_equal(version_of(&e), final);
    static uint8_t want[1 << 16];
    uint32_t want_len = state_bytes(&e, want, sizeof(want));
    assert_true(want_len != UINT32_MAX);
    assert_int_equal(state_number(&e, "last_writer"), (rounds - 1) * 10 + SHARDS - 1);
    for (uint32_t i = 0; i < SHARDS; i++) {
        snprintf(id, sizeof(id), "ss-%u", i);
        await_final_state(watch[i], id, final, want, want_len, &e);
    }
    /* Exactly one campaign:state:v1:success per update (and one for the final campaign:state
     * request, whose own success has that type), correlated with the request. */
    int broadcasts = 0, lifecycle = 0;
    struct nexus_frame g;
    while (nexus_recv(sub, &g, 500) == 1) {
        if (g.kind != CODEC_KIND_EVENT)
            continue;
        hev_fill(&e, &g);
        if (strncmp(e.cid, "u-", 2) == 0)
            broadcasts++;
        else if (strcmp(e.cid, "get-final") == 0)
            lifecycle++;
    }
    assert_int_equal(broadcasts, rounds * SHARDS);
    assert_int_equal(lifecycle, 1);
    for (uint32_t i = 0; i < SHARDS; i++) {
        nexus_close(watch[i]);
        nexus_close(writer[i]);
    }
    nexus_close(sub);
    hev_clear(&e);
    assert_int_equal(h_stop(&b), 0);
}

struct emitter {
    struct broker_proc *b;
    int64_t campaign;
    int count;
    int progress; /* emits acknowledged so far (atomic) */
    uint64_t last_seq;
};

static void *emit_loop(void *arg)
{
    struct emitter *em = arg;
    struct nexus_client *c = h_connect(em->b, NULL);
    for (int i = 0; c && i < em->count; i++) {
        char id[32];
        snprintf(id, sizeof(id), "bg-%d", i);
        struct codec_emit_in in;
        struct nexus_frame f;
        nexus_emit_init(&in, "chat:message:v1:completed", em->campaign, id, NULL, 0);
        if (nexus_emit_sync(c, &in, &f, HT) == 1)
            em->last_seq = f.u.event.sequence;
        __atomic_store_n(&em->progress, i + 1, __ATOMIC_RELEASE);
    }
    if (c)
        nexus_close(c);
    return NULL;
}

/* Resuming from a sequence while events keep coming: the replay and the live tail together
 * hold every sequence from the resume point on exactly once. */
static void test_stream_events_resume(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    int64_t camp = h_campaign_on(2, SHARDS, 900);
    struct nexus_client *c = h_connect_on(&b, 0);
    assert_non_null(c);
    uint64_t seqs[40];
    for (int i = 0; i < 40; i++) {
        char id[32];
        snprintf(id, sizeof(id), "pre-%d", i);
        struct codec_emit_in in;
        struct nexus_frame f;
        nexus_emit_init(&in, "chat:message:v1:completed", camp, id, NULL, 0);
        assert_int_equal(nexus_emit_sync(c, &in, &f, HT), 1);
        seqs[i] = f.u.event.sequence;
    }
    /* Background traffic across the seam. */
    struct emitter em = {.b = &b, .campaign = camp, .count = 300};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, emit_loop, &em), 0);
    /* The stream starts while the emitter is in the middle of its run. */
    while (__atomic_load_n(&em.progress, __ATOMIC_ACQUIRE) < 50)
        usleep(1000);
    uint64_t from = seqs[25];
    struct hs_writer w;
    hp_begin(&w);
    hs_put_number(&w, "from_sequence", (double)from);
    hp_end(&w);
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "campaign:stream_events:v1:requested", camp, "se-1", w.buf, w.len);
    assert_int_equal(nexus_emit_sync(c, &in, &f, HT), 1);
    hs_free(&w);
    pthread_join(th, NULL);
    assert_true(em.last_seq > from);
    uint64_t expect = from, pre_seen = 0;
    struct hev e = {0};
    while (expect <= em.last_seq) {
        assert_int_equal(h_next_for(c, "se-1", &e, HT), 1);
        if (!hev_state(&e, "stream"))
            continue;
        char kind[16], et[64], eid[64];
        assert_string_equal(hp_str(&e, "kind", kind, sizeof(kind)), "event");
        /* every sequence once, in order: no gap, no duplicate */
        assert_int_equal((uint64_t)hp_num(&e, "sequence"), expect);
        hp_str(&e, "event_type", et, sizeof(et));
        hp_str(&e, "event_id", eid, sizeof(eid));
        if (strncmp(eid, "pre-", 4) == 0) {
            assert_string_equal(et, "chat:message:v1:completed");
            pre_seen++;
        }
        expect++;
    }
    assert_int_equal(pre_seen, 40 - 25);
    /* Live: one more event arrives, once. */
    nexus_emit_init(&in, "chat:message:v1:completed", camp, "post-1", NULL, 0);
    assert_int_equal(nexus_emit_sync(c, &in, &f, HT), 1);
    uint64_t post = f.u.event.sequence;
    do {
        assert_int_equal(h_next_for(c, "se-1", &e, HT), 1);
    } while (!hev_state(&e, "stream"));
    assert_int_equal((uint64_t)hp_num(&e, "sequence"), post);
    hev_clear(&e);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* A campaign on every shard, created by an update; campaign:list sees all of them, with the
 * shard that owns each, and pages add up to the whole list. */
static void test_list_across_shards(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    struct hev e = {0};
    int64_t ids[SHARDS * 2];
    for (uint32_t i = 0; i < SHARDS * 2; i++) {
        ids[i] = h_campaign_on(i % SHARDS, SHARDS, 1000 + 100 * i);
        char id[32];
        snprintf(id, sizeof(id), "mk-%u", i);
        assert_int_equal(update(c, ids[i], id, "x", i, &e), 1);
        assert_true(hev_state(&e, "success"));
    }
    assert_int_equal(h_request(c, "campaign:list:v1:requested", 0, "ls-all", NULL, 0, &e), 1);
    assert_true(hev_state(&e, "success"));
    struct structpb_value list, item, v;
    assert_int_equal(hp_get(&e, "campaigns", &list), 1);
    assert_int_equal(list.kind, STRUCTPB_LIST);
    int found = 0, shards_seen = 0, total = 0;
    struct hs_iter it;
    const uint8_t *val;
    uint32_t vl;
    int64_t all[64];
    hs_iter_init(&it, list.ptr, list.len);
    while (hs_list_next(&it, &val, &vl) == 1 && total < 64) {
        assert_int_equal(structpb_value_decode(val, vl, &item), 0);
        assert_int_equal(item.kind, STRUCTPB_STRUCT);
        assert_int_equal(structpb_struct_get(item.ptr, item.len, "campaign_id", &v), 1);
        char num[24] = {0};
        memcpy(num, v.ptr, v.len < 23 ? v.len : 23);
        int64_t cid = strtoll(num, NULL, 10);
        all[total++] = cid;
        assert_int_equal(structpb_struct_get(item.ptr, item.len, "shard", &v), 1);
        assert_int_equal((uint32_t)v.number, h_owner(cid, SHARDS));
        for (uint32_t i = 0; i < SHARDS * 2; i++)
            if (ids[i] == cid) {
                found++;
                shards_seen |= 1 << (uint32_t)v.number;
                assert_int_equal(structpb_struct_get(item.ptr, item.len, "state_keys", &v), 1);
                assert_int_equal(v.number, 2);
            }
    }
    assert_int_equal(found, SHARDS * 2);
    assert_int_equal(shards_seen, (1 << SHARDS) - 1);
    for (int i = 1; i < total; i++)
        assert_true(all[i - 1] < all[i]); /* sorted by id */
    /* Pages of 2 add up to the same list. */
    int k = 0;
    for (int off = 0; off < total; off += 2) {
        struct hs_writer w;
        hp_begin(&w);
        hs_put_number(&w, "limit", 2);
        hs_put_number(&w, "offset", off);
        hp_end(&w);
        char id[32];
        snprintf(id, sizeof(id), "ls-%d", off);
        assert_int_equal(h_request(c, "campaign:list:v1:requested", 0, id, w.buf, w.len, &e), 1);
        hs_free(&w);
        assert_int_equal(hp_get(&e, "campaigns", &list), 1);
        hs_iter_init(&it, list.ptr, list.len);
        while (hs_list_next(&it, &val, &vl) == 1) {
            structpb_value_decode(val, vl, &item);
            structpb_struct_get(item.ptr, item.len, "campaign_id", &v);
            char num[24] = {0};
            memcpy(num, v.ptr, v.len < 23 ? v.len : 23);
            assert_true(k < total);
            assert_int_equal(strtoll(num, NULL, 10), all[k++]);
        }
        assert_int_equal(hp_num(&e, "total"), total);
    }
    assert_int_equal(k, total);
    hev_clear(&e);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

static int id_cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* One page of campaign:list (offset, limit; after < 0: no cursor), its ids into ids[] (at most
 * cap). Returns how many; *has_more and *next_after (0 when absent) from the reply. */
static int list_page(struct nexus_client *c, const char *rid, int limit, int offset, int64_t after,
                     int64_t *ids, int cap, bool *has_more, int64_t *next_after)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_number(&w, "limit", limit);
    hs_put_number(&w, "offset", offset);
    if (after >= 0) {
        char a[24];
        int al = snprintf(a, sizeof(a), "%lld", (long long)after);
        hs_put_string(&w, "after", a, (size_t)al);
    }
    hp_end(&w);
    struct hev e = {0};
    assert_int_equal(h_request(c, "campaign:list:v1:requested", 0, rid, w.buf, w.len, &e), 1);
    hs_free(&w);
    if (!hev_state(&e, "success"))
        fail_msg("%s: %s (code %s)", rid, e.type, e.code);
    struct structpb_value list, item, v;
    assert_int_equal(hp_get(&e, "campaigns", &list), 1);
    assert_int_equal(hp_get(&e, "has_more", &v), 1);
    assert_int_equal(v.kind, STRUCTPB_BOOL);
    *has_more = v.boolean;
    char num[24];
    *next_after = strtoll(hp_str(&e, "next_after", num, sizeof(num)), NULL, 10);
    struct hs_iter it;
    const uint8_t *val;
    uint32_t vl;
    int n = 0;
    hs_iter_init(&it, list.ptr, list.len);
    while (hs_list_next(&it, &val, &vl) == 1) {
        assert_true(n < cap);
        assert_int_equal(structpb_value_decode(val, vl, &item), 0);
        assert_int_equal(structpb_struct_get(item.ptr, item.len, "campaign_id", &v), 1);
        memset(num, 0, sizeof(num));
        memcpy(num, v.ptr, v.len < 23 ? v.len : 23);
        ids[n++] = strtoll(num, NULL, 10);
    }
    assert_int_equal(hp_num(&e, "returned"), n);
    hev_clear(&e);
    return n;
}

/* Pages through the whole list, by offset (cursor false) or by `after` (cursor true), limit
 * per page: every page but the last says has_more, the last does not, and together they list
 * want[] (the full list, n ids) in order, each once. */
static void page_all(struct nexus_client *c, const char *tag, int limit, bool cursor,
                     const int64_t *want, int n)
{
    int64_t got[64], after = -1;
    int k = 0, pages = 0;
    bool more = true;
    while (more) {
        char rid[48];
        snprintf(rid, sizeof(rid), "%s-%d", tag, pages++);
        assert_true(pages <= n / limit + 1); /* a page past the end would mean has_more lied */
        int64_t next;
        int m = list_page(c, rid, limit, cursor ? 0 : k, cursor ? after : -1, got + k, 64 - k,
                          &more, &next);
        if (m == 0)
            fail_msg("%s: an empty page after has_more", rid);
        if (more && m != limit)
            fail_msg("%s: %d ids, has_more true", rid, m);
        assert_int_equal(next, got[k + m - 1]);
        k += m;
        after = next;
        if (!more && k < n)
            fail_msg("%s: has_more false after %d of %d campaigns (the rest: %lld..)", rid, k, n,
                     (long long)want[k]);
    }
    assert_int_equal(k, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(got[i], want[i]);
    assert_int_equal(pages, (n + limit - 1) / limit);
}

/* campaign:list's has_more when the campaigns still to come all live on one shard (the owner
 * of campaign 0, which the list requests themselves create): first every campaign lives there
 * (paging by offset and by cursor); then campaigns with lower ids on the other shards come
 * first and, past them, only that shard's remain (paging by cursor). */
static void test_list_has_more_one_shard(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    assert_non_null(c);
    uint32_t s0 = h_owner(0, SHARDS);
    int64_t want[64];
    int n = 0;
    want[n++] = 0;
    int64_t id = 7000;
    struct hev e = {0};
    for (int i = 0; i < 7; i++, id++) {
        id = h_campaign_on(s0, SHARDS, id);
        char rid[32];
        snprintf(rid, sizeof(rid), "one-%d", i);
        assert_int_equal(update(c, id, rid, "x", i, &e), 1);
        assert_true(hev_state(&e, "success"));
        want[n++] = id;
    }
    /* The list, all on one shard: 0 and the 7. */
    int64_t full[64];
    bool more;
    int64_t next;
    assert_int_equal(list_page(c, "one-full", 1000, 0, -1, full, 64, &more, &next), n);
    assert_false(more);
    assert_memory_equal(full, want, sizeof(int64_t) * (size_t)n);
    page_all(c, "one-off3", 3, false, want, n);
    page_all(c, "one-cur3", 3, true, want, n);
    page_all(c, "one-off4", 4, false, want, n); /* the last page exactly full */
    page_all(c, "one-cur4", 4, true, want, n);

    /* Lower ids on the other shards: two each. */
    int64_t low = 100;
    for (uint32_t sh = 0; sh < SHARDS; sh++) {
        if (sh == s0)
            continue;
        for (int i = 0; i < 2; i++, low++) {
            low = h_campaign_on(sh, SHARDS, low);
            char rid[32];
            snprintf(rid, sizeof(rid), "low-%u-%d", sh, i);
            assert_int_equal(update(c, low, rid, "x", i, &e), 1);
            want[n++] = low;
        }
        low = 100;
    }
    qsort(want, (size_t)n, sizeof(int64_t), id_cmp64);
    assert_int_equal(list_page(c, "two-full", 1000, 0, -1, full, 64, &more, &next), n);
    assert_false(more);
    assert_memory_equal(full, want, sizeof(int64_t) * (size_t)n);
    page_all(c, "two-cur2", 2, true, want, n);
    page_all(c, "two-cur3", 3, true, want, n);
    page_all(c, "two-off2", 2, false, want, n);
    page_all(c, "two-off5", 5, false, want, n);
    hev_clear(&e);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* Sends a request with the payload and expects `failed` with the code. */
static void expect_failed(struct nexus_client *c, const char *type, int64_t camp, const char *id,
                          struct hs_writer *w, const char *code)
{
    struct hev e = {0};
    assert_int_equal(h_request(c, type, camp, id, w ? w->buf : NULL, w ? w->len : 0, &e), 1);
    if (!hev_state(&e, "failed") || strcmp(e.code, code) != 0)
        fprintf(stderr, "%s: got %s code=%s, want failed %s\n", id, e.type, e.code, code);
    assert_true(hev_state(&e, "failed"));
    assert_string_equal(e.code, code);
    hev_clear(&e);
    if (w)
        hs_free(w);
}

/* campaign:update refusals. */
static void bad_updates(struct nexus_client *c, int64_t camp)
{
    struct hs_writer w;
    expect_failed(c, "campaign:update:v1:requested", camp, "bad-1", NULL, "missing_updates");
    hp_begin(&w);
    hs_put_cstring(&w, "updates", "not a struct");
    hp_end(&w);
    expect_failed(c, "campaign:update:v1:requested", camp, "bad-2", &w, "invalid_updates");
    /* A value over 16 KiB: refused, and nothing of the update is applied. */
    static char big[20000];
    memset(big, 'x', sizeof(big) - 1);
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    hs_put_number(&w, "a", 999);
    hs_put_cstring(&w, "huge", big);
    hs_end(&w);
    hp_end(&w);
    expect_failed(c, "campaign:update:v1:requested", camp, "bad-3", &w, "updates_too_large");
    /* More keys than a campaign may hold. */
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    for (int i = 0; i < 1100; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        hs_put_number(&w, k, i);
    }
    hs_end(&w);
    hp_end(&w);
    expect_failed(c, "campaign:update:v1:requested", camp, "bad-4", &w, "updates_too_large");
    /* A malformed nested value (a Struct whose bytes are not a Struct): the broker refuses the
     * emit itself (bad_protobuf, naming where), before any handler sees it, and the connection
     * stays usable. */
    hp_begin(&w);
    hs_put_struct_open(&w, "updates");
    hs_put_struct_bytes(&w, "nested", (const uint8_t *)"\x0a\x05\xff", 3);
    hs_end(&w);
    hp_end(&w);
    {
        struct codec_emit_in in;
        struct nexus_frame f;
        nexus_emit_init(&in, "campaign:update:v1:requested", camp, "bad-5", w.buf, w.len);
        assert_int_equal(nexus_emit_sync(c, &in, &f, 5000), -EPROTO);
        assert_int_equal(f.kind, CODEC_KIND_ERROR);
        assert_true(h_slice_eq(f.u.error.code, "bad_protobuf"));
        assert_true(h_slice_has(f.u.error.message, "payload.data"));
        hs_free(&w);
    }
    /* Well-formed protobuf, but its data is not a Struct (a Struct field with the wrong wire
     * type): refused by the broker too. */
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "campaign:update:v1:requested", camp, "bad-6", "\x0a\x02\x08\x01", 4);
    assert_int_equal(nexus_emit_sync(c, &in, &f, HT), -EPROTO);
    assert_true(h_slice_eq(f.u.error.code, "bad_protobuf"));
    assert_true(h_slice_has(f.u.error.message, "wire type"));
}

/* Refusals of the other actions. */
static void bad_others(struct nexus_client *c, int64_t camp)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "action", "toggle");
    hs_put_list_open(&w, "features");
    hs_item_string(&w, "x", 1);
    hs_end(&w);
    hp_end(&w);
    expect_failed(c, "campaign:feature:v1:requested", camp, "bad-7", &w, "invalid_action");
    hp_begin(&w);
    hs_put_cstring(&w, "action", "add");
    hs_put_cstring(&w, "features", "not-a-list");
    hp_end(&w);
    expect_failed(c, "campaign:feature:v1:requested", camp, "bad-8", &w, "invalid_features");
    hp_begin(&w);
    hs_put_cstring(&w, "action", "add");
    hp_end(&w);
    expect_failed(c, "campaign:feature:v1:requested", camp, "bad-9", &w, "missing_features");
    hp_begin(&w);
    hs_put_number(&w, "config", 1);
    hp_end(&w);
    expect_failed(c, "campaign:config:v1:requested", camp, "bad-10", &w, "missing_configType");
    hp_begin(&w);
    hs_put_cstring(&w, "configType", "theme");
    hp_end(&w);
    expect_failed(c, "campaign:config:v1:requested", camp, "bad-11", &w, "missing_config");
    hp_begin(&w);
    hs_put_cstring(&w, "configType", "bad type!");
    hs_put_number(&w, "config", 1);
    hp_end(&w);
    expect_failed(c, "campaign:config:v1:requested", camp, "bad-12", &w, "invalid_configType");
    hp_begin(&w);
    hs_put_cstring(&w, "from_sequence", "abc");
    hp_end(&w);
    expect_failed(c, "campaign:stream_events:v1:requested", camp, "bad-13", &w,
                  "invalid_from_sequence");
    hp_begin(&w);
    hs_put_cstring(&w, "limit", "ten");
    hp_end(&w);
    expect_failed(c, "campaign:list:v1:requested", 0, "bad-14", &w, "invalid_limit");
}

/* Bad payloads fail with a code naming the field, and the state stays what it was. */
static void test_bad_payloads(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    int64_t camp = 77;
    struct hev e = {0};
    assert_int_equal(update(c, camp, "good-1", "a", 1, &e), 1);
    assert_true(hev_state(&e, "success"));
    static uint8_t before[1 << 16], after[1 << 16];
    uint32_t before_len = state_bytes(&e, before, sizeof(before));
    bad_updates(c, camp);
    bad_others(c, camp);
    assert_int_equal(get_state(c, camp, "after", &e), 1);
    assert_int_equal(version_of(&e), 1);
    uint32_t after_len = state_bytes(&e, after, sizeof(after));
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, after_len);
    hev_clear(&e);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* The names in a payload's `features` list, joined by ','. */
static const char *features_of(const struct hev *e, char *out, size_t cap)
{
    struct structpb_value l, item;
    struct hs_iter it;
    const uint8_t *val;
    uint32_t vl;
    out[0] = 0;
    if (hp_get(e, "features", &l) != 1 || l.kind != STRUCTPB_LIST)
        return out;
    hs_iter_init(&it, l.ptr, l.len);
    while (hs_list_next(&it, &val, &vl) == 1 && structpb_value_decode(val, vl, &item) == 0) {
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%.*s", n ? "," : "", (int)item.len, (const char *)item.ptr);
    }
    return out;
}

static void feature(struct nexus_client *c, int64_t camp, const char *id, const char *action,
                    const char *a, const char *bb, struct hev *e)
{
    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "action", action);
    hs_put_list_open(&w, "features");
    hs_item_string(&w, a, strlen(a));
    if (bb)
        hs_item_string(&w, bb, strlen(bb));
    hs_end(&w);
    hp_end(&w);
    assert_int_equal(h_request(c, "campaign:feature:v1:requested", camp, id, w.buf, w.len, e), 1);
    assert_true(hev_state(e, "success"));
    hs_free(&w);
}

static void test_features_config(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    int64_t a = h_campaign_on(0, SHARDS, 3000);
    struct hev e = {0};
    char buf[256];
    feature(c, a, "f-1", "add", "beta", "chat", &e);
    assert_string_equal(features_of(&e, buf, sizeof(buf)), "beta,chat");
    feature(c, a, "f-2", "remove", "beta", NULL, &e);
    assert_string_equal(features_of(&e, buf, sizeof(buf)), "chat");
    feature(c, a, "f-3", "set", "video", "audio", &e);
    assert_string_equal(features_of(&e, buf, sizeof(buf)), "audio,video");

    struct hs_writer w;
    hp_begin(&w);
    hs_put_cstring(&w, "configType", "theme");
    hs_put_struct_open(&w, "config");
    hs_put_cstring(&w, "color", "teal");
    hs_end(&w);
    hp_end(&w);
    assert_int_equal(h_request(c, "campaign:config:v1:requested", a, "cfg-1", w.buf, w.len, &e), 1);
    hs_free(&w);
    assert_true(hev_state(&e, "success"));
    struct structpb_value st, v, col;
    assert_int_equal(hp_get(&e, "state", &st), 1);
    assert_int_equal(structpb_struct_get(st.ptr, st.len, "config.theme", &v), 1);
    assert_int_equal(v.kind, STRUCTPB_STRUCT);
    assert_int_equal(structpb_struct_get(v.ptr, v.len, "color", &col), 1);
    assert_int_equal(col.len, 4);
    hev_clear(&e);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* campaign:switch between campaigns of two shards; stream_analytics counts the session until
 * its connection closes. */
static void test_switch_analytics(void **state)
{
    (void)state;
    struct broker_proc b = H_START(SHARDS, NULL);
    struct nexus_client *c = h_connect(&b, NULL);
    int64_t a = h_campaign_on(0, SHARDS, 3000), bcamp = h_campaign_on(1, SHARDS, 3000);
    struct hev e = {0};
    char buf[256];
    struct structpb_value v;
    struct hs_writer w;

    /* switch: a, then b (another shard) names a as the previous campaign */
    assert_int_equal(h_request(c, "campaign:switch:v1:requested", a, "sw-1", NULL, 0, &e), 1);
    assert_true(hev_state(&e, "success"));
    assert_int_equal(hp_get(&e, "previous_campaign_id", &v), 0);
    assert_int_equal(h_request(c, "campaign:switch:v1:requested", bcamp, "sw-2", NULL, 0, &e), 1);
    assert_true(hev_state(&e, "success"));
    char prev[32];
    snprintf(buf, sizeof(buf), "%lld", (long long)a);
    assert_string_equal(hp_str(&e, "previous_campaign_id", prev, sizeof(prev)), buf);

    /* analytics on b: samples at once and every interval, with the active session */
    struct nexus_client *d = h_connect(&b, NULL);
    hp_begin(&w);
    hs_put_number(&w, "interval_ms", 200);
    hp_end(&w);
    struct codec_emit_in in;
    struct nexus_frame f;
    nexus_emit_init(&in, "campaign:stream_analytics:v1:requested", bcamp, "an-1", w.buf, w.len);
    assert_int_equal(nexus_emit_sync(d, &in, &f, HT), 1);
    hs_free(&w);
    int samples = 0;
    int64_t t0 = h_now_ms();
    while (samples < 3) {
        assert_int_equal(h_next_for(d, "an-1", &e, HT), 1);
        if (!hev_state(&e, "stream"))
            continue;
        samples++;
        assert_int_equal(hp_num(&e, "active_sessions"), 1);
        assert_true(hp_num(&e, "open_streams") >= 1);
        assert_true(hp_num(&e, "events_per_second") >= 0);
        assert_true(hp_num(&e, "subscribers") >= 0);
    }
    assert_true(h_now_ms() - t0 >= 350); /* 3 samples: at once, +200 ms, +400 ms */
    /* the session leaves with its connection */
    nexus_close(c);
    int64_t deadline = h_now_ms() + HT;
    double active = 1;
    while (active != 0 && h_now_ms() < deadline) {
        assert_int_equal(h_next_for(d, "an-1", &e, HT), 1);
        if (hev_state(&e, "stream"))
            active = hp_num(&e, "active_sessions");
    }
    assert_int_equal(active, 0);
    hev_clear(&e);
    nexus_close(d);
    assert_int_equal(h_stop(&b), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_updates_converge, h_teardown),
        cmocka_unit_test_teardown(test_stream_events_resume, h_teardown),
        cmocka_unit_test_teardown(test_list_across_shards, h_teardown),
        cmocka_unit_test_teardown(test_list_has_more_one_shard, h_teardown),
        cmocka_unit_test_teardown(test_bad_payloads, h_teardown),
        cmocka_unit_test_teardown(test_features_config, h_teardown),
        cmocka_unit_test_teardown(test_switch_analytics, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
