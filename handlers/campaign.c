// SPDX-License-Identifier: Apache-2.0
//
// The campaign state handlers of campaign.h: campaign:state, campaign:update, campaign:feature,
// campaign:config, campaign:switch and campaign:list, the module callbacks (per-shard set-up,
// connections that close, events that are sequenced) and the table rows. The streams
// (stream_state, stream_analytics, stream_events) and the history are in campaign_streams.c.
// Runs on the shard that owns the campaign; campaign:list and campaign:switch visit the other
// shards through provider_gather.
#include "handlers/campaign.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/structpb.h"
#include "codec/wire.h"
#include "handlers/campaign_int.h"

/* ---- shared helpers ----------------------------------------------------------------------- */

struct cs_shard *cs_shard(struct shard *s)
{
    return *provider_shard_slot(s, PROVIDER_SLOT_CAMPAIGN);
}

struct cstate *cs_get(struct campaign *cp, bool create)
{
    /* Without create, a campaign nobody gave slots to is not given any. */
    void **slot = create || *core_campaign_slot(cp)
                      ? provider_campaign_slot(cp, PROVIDER_SLOT_CAMPAIGN)
                      : NULL;
    if (!slot)
        return NULL;
    if (!*slot && create) {
        struct cstate *cs = calloc(1, sizeof(*cs));
        if (!cs)
            return NULL;
        cs->cp = cp;
        *slot = cs;
    }
    return *slot;
}

void cs_fail(struct pv_request *r, const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    provider_finish(r, EVTYPE_FAILED, NULL, 0, code, msg);
}

int cs_arg(struct pv_request *r, const char *key, struct structpb_value *v)
{
    const uint8_t *pl;
    uint32_t len;
    provider_payload(r, &pl, &len);
    if (!len)
        return 0;
    return structpb_payload_get(pl, len, key, v);
}

int cs_arg_ms(struct pv_request *r, const char *key, uint32_t def, uint32_t lo, uint32_t hi,
              uint32_t *out)
{
    struct structpb_value v;
    int g = cs_arg(r, key, &v);
    *out = def;
    if (g == 0)
        return 0;
    if (g < 0 || v.kind != STRUCTPB_NUMBER || isnan(v.number))
        return -1;
    *out = v.number < lo ? lo : v.number > hi ? hi : (uint32_t)v.number;
    return 0;
}

/* Ids are int64: written as strings, as proto3's JSON mapping writes int64, so that no id
 * above 2^53 loses digits in a double. */
void cs_put_id(struct hs_writer *w, const char *key, int64_t id)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%" PRId64, id);
    hs_put_string(w, key, b, (size_t)n);
}

void cs_state_open(struct hs_writer *w, const struct cstate *cs, int64_t campaign_id)
{
    hs_payload_begin(w);
    cs_put_id(w, "campaign_id", campaign_id);
    hs_put_struct_open(w, "state");
    if (cs)
        hs_map_write(w, &cs->state);
    hs_end(w);
    hs_put_list_open(w, "features");
    if (cs)
        hs_map_write_keys(w, &cs->features);
    hs_end(w);
    hs_put_number(w, "version", cs ? (double)cs->version : 0);
    hs_put_number(w, "keys", cs ? cs->state.count : 0);
    hs_put_number(w, "last_updated_ms", cs ? (double)(cs->updated_ns / 1000000) : 0);
}

/* Finishes r with success and the full state (plus a previous campaign for switch). */
static void reply_state(struct pv_request *r, struct cstate *cs, const char *prev)
{
    struct hs_writer w;
    hs_init(&w, CS_PAYLOAD_BYTES_MAX);
    cs_state_open(&w, cs, provider_campaign_id(r));
    if (prev)
        hs_put_cstring(&w, "previous_campaign_id", prev);
    hs_payload_end(&w);
    if (hs_result(&w) < 0)
        cs_fail(r, "internal", "out of memory building the state");
    else
        provider_finish(r, EVTYPE_SUCCESS, w.buf, (uint32_t)w.len, NULL, NULL);
    hs_free(&w);
}

/* ---- changing the state ------------------------------------------------------------------- */

/* Applies changes to one of the campaign's maps, all or nothing. On success: version, time,
 * stream_state pushes, then `success` with the full state and one campaign:state:v1:success
 * with the same state to the whole campaign. On a refusal: failed with code
 * `<field>_too_large` and the state unchanged. */
static void apply(struct pv_request *r, struct cstate *cs, struct hs_map *m, struct hs_change *ch,
                  uint32_t n, const struct hs_limits *lim, const char *field)
{
    struct cs_shard *sh = cs_shard(provider_shard(r));
    struct hs_limits l = *lim;
    if (m == &cs->state) {
        /* The shard bound: this campaign may grow by what the shard has left. */
        size_t room = CS_SHARD_STATE_BYTES_MAX - sh->state_bytes;
        if (m->bytes + room < l.bytes_max)
            l.bytes_max = m->bytes + room;
    }
    long delta;
    const char *why;
    int rc = hs_map_merge(m, ch, n, &l, &delta, &why);
    if (rc < 0) {
        cs->rejected++;
        char code[64];
        snprintf(code, sizeof(code), "%s_too_large", field);
        if (rc == -ENOMEM)
            cs_fail(r, "internal", "out of memory");
        else
            cs_fail(r, code, "%s: %s (limits: %u keys, %u-byte keys, %u-byte values, %zu bytes)",
                    field, why, l.keys_max, l.key_bytes_max, l.value_bytes_max, l.bytes_max);
        return;
    }
    if (m == &cs->state)
        sh->state_bytes = (size_t)((long)sh->state_bytes + delta);
    cs->version++;
    cs->changes++;
    cs->updated_ns = core_now_ns();
    cs_state_changed(cs);
    struct hs_writer w;
    hs_init(&w, CS_PAYLOAD_BYTES_MAX);
    cs_state_open(&w, cs, provider_campaign_id(r));
    hs_payload_end(&w);
    if (hs_result(&w) < 0)
        cs_fail(r, "internal", "out of memory building the state");
    else
        provider_finish_and_publish(r, w.buf, (uint32_t)w.len, "campaign:state:v1:success", w.buf,
                                    (uint32_t)w.len);
    hs_free(&w);
}

static const struct hs_limits state_limits = {
    .keys_max = CS_KEYS_MAX,
    .key_bytes_max = CS_KEY_BYTES_MAX,
    .value_bytes_max = CS_VALUE_BYTES_MAX,
    .bytes_max = CS_STATE_BYTES_MAX,
};

static const struct hs_limits feature_limits = {
    .keys_max = CS_FEATURES_MAX,
    .key_bytes_max = CS_FEATURE_BYTES_MAX,
    .value_bytes_max = 0,
    .bytes_max = (size_t)CS_FEATURES_MAX * CS_FEATURE_BYTES_MAX,
};

/* The payload's data Struct field `key`, required to be a Struct. Returns 1 with *v, or 0
 * after failing r with missing_/invalid_ codes naming the field. */
static int need_struct(struct pv_request *r, const char *key, struct structpb_value *v)
{
    int g = cs_arg(r, key, v);
    if (g < 0) {
        cs_fail(r, "invalid_payload", "the payload is not a common.Payload with a data Struct");
        return 0;
    }
    if (g == 0 || v->kind != STRUCTPB_STRUCT) {
        char code[64];
        snprintf(code, sizeof(code), "%s_%s", g ? "invalid" : "missing", key);
        cs_fail(r, code, "payload data needs `%s`: a Struct (an object)", key);
        return 0;
    }
    return 1;
}

static void update_start(struct pv_request *r)
{
    struct structpb_value v;
    if (!need_struct(r, "updates", &v))
        return;
    struct hs_change *ch = malloc(sizeof(*ch) * (CS_KEYS_MAX + 1));
    if (!ch) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    struct hs_iter it;
    uint32_t n = 0;
    int rc;
    const uint8_t *k, *val;
    uint32_t kl, vl;
    hs_iter_init(&it, v.ptr, v.len);
    while ((rc = hs_struct_next(&it, &k, &kl, &val, &vl)) > 0) {
        const char *why = NULL;
        struct structpb_value kind;
        if (n == CS_KEYS_MAX) {
            cs_fail(r, "updates_too_large", "updates: more than %d keys in one update",
                    CS_KEYS_MAX);
            goto out;
        }
        if (!wire_utf8_valid(k, kl) || hs_value_check(val, vl, &why) < 0 ||
            structpb_value_decode(val, vl, &kind) < 0 || kind.kind == STRUCTPB_NONE) {
            cs_fail(r, "invalid_updates", "updates.%.*s: %s", (int)(kl > 64 ? 64 : kl),
                    (const char *)k, why ? why : "not a valid google.protobuf.Value");
            goto out;
        }
        /* A null value removes the key. */
        ch[n++] = (struct hs_change){
            .key = k, .klen = kl, .val = kind.kind == STRUCTPB_NULL ? NULL : val, .vlen = vl};
    }
    if (rc < 0) {
        cs_fail(r, "invalid_updates", "updates: malformed Struct");
        goto out;
    }
    struct cstate *cs = cs_get(provider_campaign(r), true);
    if (!cs)
        cs_fail(r, "internal", "out of memory");
    else
        apply(r, cs, &cs->state, ch, n, &state_limits, "updates");
out:
    free(ch);
}

static void state_start(struct pv_request *r)
{
    reply_state(r, cs_get(provider_campaign(r), false), NULL);
}

/* Parses `features` (a list of strings) into changes. Returns the count, or -1 after failing
 * r. */
static int feature_list(struct pv_request *r, struct hs_change *ch, uint32_t cap, bool set)
{
    struct structpb_value v, item;
    int g = cs_arg(r, "features", &v);
    if (g <= 0 || v.kind != STRUCTPB_LIST) {
        if (g < 0)
            cs_fail(r, "invalid_payload", "the payload is not a common.Payload");
        else
            cs_fail(r, g ? "invalid_features" : "missing_features",
                    "`features` must be a list of strings");
        return -1;
    }
    struct hs_iter it;
    const uint8_t *val;
    uint32_t vl, n = 0;
    int rc;
    hs_iter_init(&it, v.ptr, v.len);
    while ((rc = hs_list_next(&it, &val, &vl)) > 0) {
        if (structpb_value_decode(val, vl, &item) < 0 || item.kind != STRUCTPB_STRING ||
            item.len == 0 || !wire_utf8_valid(item.ptr, item.len)) {
            cs_fail(r, "invalid_features", "features[%u] must be a non-empty string", n);
            return -1;
        }
        if (n == cap) {
            cs_fail(r, "features_too_large", "features: more than %d names", CS_FEATURES_MAX);
            return -1;
        }
        ch[n++] = (struct hs_change){
            .key = item.ptr, .klen = item.len, .val = set ? (const uint8_t *)"" : NULL};
    }
    if (rc < 0) {
        cs_fail(r, "invalid_features", "features: malformed list");
        return -1;
    }
    return (int)n;
}

static void feature_start(struct pv_request *r)
{
    struct structpb_value a;
    int g = cs_arg(r, "action", &a);
    if (g <= 0 || a.kind != STRUCTPB_STRING) {
        cs_fail(r, g > 0 ? "invalid_action" : "missing_action",
                "`action` must be one of add, remove, set");
        return;
    }
    bool add = a.len == 3 && memcmp(a.ptr, "add", 3) == 0;
    bool del = a.len == 6 && memcmp(a.ptr, "remove", 6) == 0;
    bool set = a.len == 3 && memcmp(a.ptr, "set", 3) == 0;
    if (!add && !del && !set) {
        cs_fail(r, "invalid_action", "`action` must be one of add, remove, set");
        return;
    }
    struct cstate *cs = cs_get(provider_campaign(r), true);
    uint32_t old = cs ? cs->features.count : 0;
    struct hs_change *ch = malloc(sizeof(*ch) * (CS_FEATURES_MAX + old + 1));
    if (!cs || !ch) {
        free(ch);
        cs_fail(r, "internal", "out of memory");
        return;
    }
    /* set: every current name is removed first; the new list (later changes) wins. */
    uint32_t pre = set ? old : 0;
    for (uint32_t i = 0; i < pre; i++)
        ch[i] = (struct hs_change){.key = cs->features.v[i]->data, .klen = cs->features.v[i]->klen};
    int n = feature_list(r, ch + pre, CS_FEATURES_MAX, add || set);
    if (n >= 0)
        apply(r, cs, &cs->features, ch, pre + (uint32_t)n, &feature_limits, "features");
    free(ch);
}

static bool config_type_ok(const uint8_t *p, uint32_t n)
{
    if (n == 0 || n > CS_CONFIG_TYPE_BYTES_MAX)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (!(p[i] == '_' || p[i] == '-' || p[i] == '.' || (p[i] >= '0' && p[i] <= '9') ||
              (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')))
            return false;
    return true;
}

/* campaign:config: state["config.<configType>"] = config, then as an update. */
static void config_start(struct pv_request *r)
{
    struct structpb_value t;
    int g = cs_arg(r, "configType", &t);
    if (g == 0)
        g = cs_arg(r, "config_type", &t);
    if (g <= 0 || t.kind != STRUCTPB_STRING || !config_type_ok(t.ptr, t.len)) {
        cs_fail(r, g > 0 ? "invalid_configType" : "missing_configType",
                "`configType` must be a name of 1..%d letters, digits, '_', '-' or '.'",
                CS_CONFIG_TYPE_BYTES_MAX);
        return;
    }
    const uint8_t *val = NULL;
    uint32_t vl = 0;
    if (hs_payload_value(r, "config", &val, &vl) <= 0)
        val = NULL;
    const char *why = NULL;
    struct structpb_value kind;
    if (!val || hs_value_check(val, vl, &why) < 0 || structpb_value_decode(val, vl, &kind) < 0 ||
        kind.kind == STRUCTPB_NONE || kind.kind == STRUCTPB_NULL) {
        cs_fail(r, val ? "invalid_config" : "missing_config", "`config` must be a value%s%s",
                why ? ": " : "", why ? why : "");
        return;
    }
    char key[sizeof("config.") + CS_CONFIG_TYPE_BYTES_MAX];
    int kl = snprintf(key, sizeof(key), "config.%.*s", (int)t.len, (const char *)t.ptr);
    struct hs_change ch = {
        .key = (const uint8_t *)key, .klen = (uint32_t)kl, .val = val, .vlen = vl};
    struct cstate *cs = cs_get(provider_campaign(r), true);
    if (!cs)
        cs_fail(r, "internal", "out of memory");
    else
        apply(r, cs, &cs->state, &ch, 1, &state_limits, "config");
}

/* ---- campaign:switch ---------------------------------------------------------------------- */

/* The requester's connection makes this campaign its active one: every shard drops the
 * connection's previous active campaign (at most one in the whole broker), then this one
 * counts it (active_sessions in analytics) until the connection closes or switches again. */
/* The head of a context a request shares with its gather: the request, NULL once it ended
 * (then the gather frees the context when it is done). */
struct gather_wait {
    struct pv_request *r;
};

struct switch_ctx {
    struct gather_wait w; /* first */
    uint64_t conn;
    int64_t target;
};

static void *switch_each(struct shard *s, const void *arg)
{
    const struct switch_ctx *x = arg;
    struct cs_shard *sh = cs_shard(s);
    struct cstate *cs = sh ? map_get(&sh->active, x->conn) : NULL;
    if (!cs || core_campaign_id(cs->cp) == x->target)
        return NULL;
    map_del(&sh->active, x->conn);
    cs->active_sessions--;
    int64_t *prev = malloc(sizeof(*prev));
    if (prev)
        *prev = core_campaign_id(cs->cp);
    return prev;
}

static void switch_done(struct shard *s, void *arg, void **results, uint32_t n, bool complete)
{
    struct switch_ctx *x = arg;
    char prev[24] = "";
    for (uint32_t i = 0; i < n; i++) {
        if (results[i])
            snprintf(prev, sizeof(prev), "%" PRId64, *(int64_t *)results[i]);
        free(results[i]);
    }
    struct pv_request *r = x->w.r;
    uint64_t conn = x->conn;
    free(x);
    if (!r || !complete)
        return;
    *provider_state(r) = NULL;
    struct cstate *cs = cs_get(provider_campaign(r), true);
    struct cs_shard *sh = cs_shard(s);
    if (!cs) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    if (map_get(&sh->active, conn) == NULL) {
        if (map_put(&sh->active, conn, cs) < 0) {
            cs_fail(r, "internal", "out of memory");
            return;
        }
        cs->active_sessions++;
    }
    reply_state(r, cs, prev[0] ? prev : NULL);
}

static const struct provider_gather_ops switch_ops = {
    .each = switch_each,
    .done = switch_done,
    .free_result = free,
};

static void switch_start(struct pv_request *r)
{
    struct switch_ctx *x = malloc(sizeof(*x));
    if (!x) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    x->w.r = r;
    x->conn = provider_requester(r);
    x->target = provider_campaign_id(r);
    *provider_state(r) = x;
    if (provider_gather(provider_shard(r), &switch_ops, x) < 0) {
        *provider_state(r) = NULL;
        free(x);
        cs_fail(r, "internal", "out of memory");
    }
}

/* Ends a request that waits for a gather: the gather frees the context when it is done. */
static void gather_wait_stop(struct pv_request *r)
{
    struct gather_wait *x = *provider_state(r);
    if (x)
        x->r = NULL;
    *provider_state(r) = NULL;
}

/* ---- campaign:list ------------------------------------------------------------------------ */

struct list_ctx {
    struct gather_wait w; /* first */
    uint32_t limit, offset;
    bool has_after;
    int64_t after;
};

struct list_item {
    int64_t id;
    uint64_t sequence, version;
    uint32_t keys, features, shard;
    int64_t updated_ns;
};

struct list_part {
    uint64_t total;
    uint32_t n;
    struct list_item v[];
};

static void heap_sift(int64_t *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l] > h[m])
            m = l;
        if (r < n && h[r] > h[m])
            m = r;
        if (m == i)
            return;
        int64_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int id_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The k smallest campaign ids of the shard (after the cursor), sorted: a max-heap of k. */
static uint32_t smallest_ids(struct shard *s, const struct list_ctx *x, int64_t *h, uint32_t k)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < core_campaign_slots(s); i++) {
        struct campaign *cp = core_campaign_at(s, i);
        if (!cp || (x->has_after && core_campaign_id(cp) <= x->after))
            continue;
        if (n < k) {
            /* push: sift the new id up */
            uint32_t j = n++;
            h[j] = core_campaign_id(cp);
            while (j > 0 && h[(j - 1) / 2] < h[j]) {
                int64_t t = h[j];
                h[j] = h[(j - 1) / 2];
                h[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (k && core_campaign_id(cp) < h[0]) {
            h[0] = core_campaign_id(cp);
            heap_sift(h, n, 0);
        }
    }
    qsort(h, n, sizeof(*h), id_cmp);
    return n;
}

/* A shard's part of a page: its offset + limit + 1 smallest ids (after the cursor). The page
 * is the offset + limit smallest of all parts; the one more is what tells list_reply whether
 * any campaign follows the page. With only offset + limit, a shard that holds every campaign
 * still to come returned exactly the page, the merge had nothing past it and said has_more:
 * false. With one more from each shard, the merge holds the offset + limit + 1 smallest ids
 * of all shards, so it has more than the page exactly when more exist. */
static void *list_each(struct shard *s, const void *arg)
{
    const struct list_ctx *x = arg;
    uint32_t k = x->offset + x->limit + 1;
    int64_t *h = malloc(sizeof(*h) * (k ? k : 1));
    struct list_part *part = malloc(sizeof(*part) + sizeof(struct list_item) * (k ? k : 1));
    if (!h || !part) {
        free(h);
        free(part);
        return NULL;
    }
    part->total = core_campaign_count(s);
    part->n = smallest_ids(s, x, h, k);
    for (uint32_t i = 0; i < part->n; i++) {
        struct campaign *cp = core_campaign(s, h[i], false);
        const struct cstate *cs = cs_get(cp, false);
        part->v[i] = (struct list_item){
            .id = core_campaign_id(cp),
            .sequence = core_campaign_sequence(cp),
            .version = cs ? cs->version : 0,
            .keys = cs ? cs->state.count : 0,
            .features = cs ? cs->features.count : 0,
            .shard = core_shard_index(s),
            .updated_ns = cs ? cs->updated_ns : 0,
        };
    }
    free(h);
    return part;
}

static int item_cmp(const void *a, const void *b)
{
    return id_cmp(&((const struct list_item *)a)->id, &((const struct list_item *)b)->id);
}

static void list_reply(struct pv_request *r, const struct list_ctx *x, struct list_item *all,
                       uint32_t n, uint64_t total)
{
    qsort(all, n, sizeof(*all), item_cmp);
    struct hs_writer w;
    hs_init(&w, (size_t)4 << 20);
    hs_payload_begin(&w);
    hs_put_list_open(&w, "campaigns");
    uint32_t end = x->offset + x->limit < n ? x->offset + x->limit : n;
    for (uint32_t i = x->offset; i < end; i++) {
        hs_item_struct_open(&w);
        cs_put_id(&w, "campaign_id", all[i].id);
        hs_put_number(&w, "shard", all[i].shard);
        hs_put_number(&w, "sequence", (double)all[i].sequence);
        hs_put_number(&w, "version", (double)all[i].version);
        hs_put_number(&w, "state_keys", all[i].keys);
        hs_put_number(&w, "features", all[i].features);
        hs_put_number(&w, "last_updated_ms", (double)(all[i].updated_ns / 1000000));
        hs_item_end(&w);
    }
    hs_end(&w);
    hs_put_number(&w, "total", (double)total);
    hs_put_number(&w, "limit", x->limit);
    hs_put_number(&w, "offset", x->offset);
    hs_put_number(&w, "returned", end > x->offset ? end - x->offset : 0);
    hs_put_bool(&w, "has_more", n > end); /* n: one more than the page if any (list_each) */
    if (end > x->offset)
        cs_put_id(&w, "next_after", all[end - 1].id);
    hs_payload_end(&w);
    if (hs_result(&w) < 0)
        cs_fail(r, "internal", "out of memory building the list");
    else
        provider_finish(r, EVTYPE_SUCCESS, w.buf, (uint32_t)w.len, NULL, NULL);
    hs_free(&w);
}

static void list_done(struct shard *s, void *arg, void **results, uint32_t n, bool complete)
{
    (void)s;
    struct list_ctx *x = arg;
    struct pv_request *r = x->w.r;
    uint32_t count = 0;
    uint64_t total = 0;
    bool missing = false;
    for (uint32_t i = 0; i < n; i++) {
        struct list_part *p = results[i];
        if (p)
            count += p->n;
        missing |= !p;
    }
    struct list_item *all = r && complete ? malloc(sizeof(*all) * (count ? count : 1)) : NULL;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct list_part *p = results[i];
        if (p && all) {
            memcpy(all + k, p->v, sizeof(*all) * p->n);
            k += p->n;
            total += p->total;
        }
        free(p);
    }
    if (r && complete) {
        *provider_state(r) = NULL;
        if (!all || missing)
            cs_fail(r, "internal", "out of memory listing campaigns");
        else
            list_reply(r, x, all, k, total);
    }
    free(all);
    free(x);
}

static const struct provider_gather_ops list_ops = {
    .each = list_each,
    .done = list_done,
    .free_result = free,
};

static void list_start(struct pv_request *r)
{
    struct structpb_value v;
    struct list_ctx *x = calloc(1, sizeof(*x));
    uint32_t limit, offset;
    if (!x) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    if (cs_arg_ms(r, "limit", CS_LIST_LIMIT_DEFAULT, 1, CS_LIST_LIMIT_MAX, &limit) < 0 ||
        cs_arg_ms(r, "offset", 0, 0, CS_LIST_OFFSET_MAX, &offset) < 0) {
        free(x);
        cs_fail(r, "invalid_limit", "`limit` (1..%d) and `offset` (0..%d) must be numbers",
                CS_LIST_LIMIT_MAX, CS_LIST_OFFSET_MAX);
        return;
    }
    int g = cs_arg(r, "after", &v);
    if (g > 0) {
        char b[24], *end;
        if (v.kind == STRUCTPB_STRING && v.len > 0 && v.len < sizeof(b)) {
            memcpy(b, v.ptr, v.len);
            b[v.len] = 0;
            x->after = strtoll(b, &end, 10);
            x->has_after = *end == 0;
        } else if (v.kind == STRUCTPB_NUMBER && v.number == floor(v.number)) {
            x->after = (int64_t)v.number;
            x->has_after = true;
        }
        if (!x->has_after) {
            free(x);
            cs_fail(r, "invalid_after", "`after` must be a campaign id (a string of digits)");
            return;
        }
    }
    x->w.r = r;
    x->limit = limit;
    x->offset = offset;
    *provider_state(r) = x;
    if (provider_gather(provider_shard(r), &list_ops, x) < 0) {
        *provider_state(r) = NULL;
        free(x);
        cs_fail(r, "internal", "out of memory");
    }
}

/* ---- module ------------------------------------------------------------------------------- */

static int cs_shard_init(struct shard *s)
{
    struct cs_shard *sh = calloc(1, sizeof(*sh));
    if (!sh)
        return -ENOMEM;
    map_init(&sh->active);
    *provider_shard_slot(s, PROVIDER_SLOT_CAMPAIGN) = sh;
    return 0;
}

static void cs_shard_free(struct shard *s)
{
    struct cs_shard *sh = cs_shard(s);
    for (uint32_t i = 0; i < core_campaign_slots(s); i++) {
        struct campaign *cp = core_campaign_at(s, i);
        struct cstate *cs = cp ? cs_get(cp, false) : NULL;
        if (!cs)
            continue;
        cs_history_free(sh, cs);
        hs_map_free(&cs->state);
        hs_map_free(&cs->features);
        free(cs->state_w.v);
        free(cs->events_w.v);
        free(cs);
        *provider_campaign_slot(cp, PROVIDER_SLOT_CAMPAIGN) = NULL;
    }
    if (sh) {
        map_free(&sh->active);
        free(sh);
    }
    *provider_shard_slot(s, PROVIDER_SLOT_CAMPAIGN) = NULL;
}

static void cs_conn_gone(struct shard *s, uint64_t conn)
{
    struct cs_shard *sh = cs_shard(s);
    struct cstate *cs = sh ? map_del(&sh->active, conn) : NULL;
    if (cs)
        cs->active_sessions--;
}

/* An idle campaign (provider_module.campaign_idle): its history goes with it (a cache of the
 * recent events), but not state set with campaign:update, features or active sessions. */
static bool cs_campaign_idle(struct shard *s, struct campaign *cp)
{
    struct cstate *cs = cs_get(cp, false);
    if (!cs)
        return true;
    if (cs->state.count || cs->features.count || cs->active_sessions || cs->state_w.count ||
        cs->events_w.count)
        return false;
    cs_history_free(cs_shard(s), cs);
    hs_map_free(&cs->state);
    hs_map_free(&cs->features);
    free(cs->state_w.v);
    free(cs->events_w.v);
    free(cs);
    *provider_campaign_slot(cp, PROVIDER_SLOT_CAMPAIGN) = NULL;
    return true;
}

/* At start with --data-dir: the campaign's last campaign:state:v1:success (published after every
 * change with the full state) restores its state, features and version. Limits are those of
 * an update: a snapshot that does not fit (the limits were lowered) is restored as far as it
 * fits, and logged. */
static void cs_restore(struct shard *s, struct campaign *cp, const struct oframe *f)
{
    struct codec_envelope env;
    struct codec_event_in ev;
    char err[CODEC_ERR_BYTES];
    struct structpb_value st, fe, ver, up;
    if (f->len < 4 || codec_envelope_decode(f->data + 4, f->len - 4, &env, err) < 0 ||
        codec_event_decode(env.body.ptr, env.body.len, &ev, err) < 0 || !ev.has_payload ||
        structpb_payload_get(ev.payload.ptr, ev.payload.len, "state", &st) <= 0 ||
        st.kind != STRUCTPB_STRUCT) {
        log_error((int)core_shard_index(s), "campaign %lld: the logged state is unreadable",
                  (long long)core_campaign_id(cp));
        return;
    }
    struct cstate *cs = cs_get(cp, true);
    struct hs_change *ch = malloc(sizeof(*ch) * (CS_KEYS_MAX + CS_FEATURES_MAX + 1));
    if (!cs || !ch) {
        free(ch);
        log_error((int)core_shard_index(s), "campaign %lld: out of memory restoring its state",
                  (long long)core_campaign_id(cp));
        return;
    }
    struct hs_iter it;
    const uint8_t *k, *v;
    uint32_t kl, vl, n = 0;
    hs_iter_init(&it, st.ptr, st.len);
    while (n < CS_KEYS_MAX && hs_struct_next(&it, &k, &kl, &v, &vl) > 0)
        ch[n++] = (struct hs_change){.key = k, .klen = kl, .val = v, .vlen = vl};
    long delta = 0;
    const char *why = NULL;
    if (hs_map_merge(&cs->state, ch, n, &state_limits, &delta, &why) < 0)
        log_error((int)core_shard_index(s), "campaign %lld: logged state not restored: %s",
                  (long long)core_campaign_id(cp), why ? why : "out of memory");
    else
        cs_shard(s)->state_bytes += (size_t)delta;
    n = 0;
    if (structpb_payload_get(ev.payload.ptr, ev.payload.len, "features", &fe) > 0 &&
        fe.kind == STRUCTPB_LIST) {
        struct structpb_value item;
        hs_iter_init(&it, fe.ptr, fe.len);
        while (n < CS_FEATURES_MAX && hs_list_next(&it, &v, &vl) > 0)
            if (structpb_value_decode(v, vl, &item) == 0 && item.kind == STRUCTPB_STRING)
                ch[n++] = (struct hs_change){
                    .key = item.ptr, .klen = item.len, .val = (const uint8_t *)""};
        if (hs_map_merge(&cs->features, ch, n, &feature_limits, &delta, &why) < 0)
            log_error((int)core_shard_index(s), "campaign %lld: logged features not restored",
                      (long long)core_campaign_id(cp));
    }
    free(ch);
    if (structpb_payload_get(ev.payload.ptr, ev.payload.len, "version", &ver) > 0 &&
        ver.kind == STRUCTPB_NUMBER && ver.number >= 0)
        cs->version = (uint64_t)ver.number;
    if (structpb_payload_get(ev.payload.ptr, ev.payload.len, "last_updated_ms", &up) > 0 &&
        up.kind == STRUCTPB_NUMBER && up.number > 0)
        cs->updated_ns = (int64_t)up.number * 1000000;
    cs_state_changed(cs);
}

static const char *const cs_restore_types[] = {"campaign:state:v1:success", NULL};

static const struct provider_module campaign_module = {
    .restore = cs_restore,
    .restore_types = cs_restore_types,
    .campaign_idle = cs_campaign_idle,
    .shard_init = cs_shard_init,
    .shard_free = cs_shard_free,
    .conn_gone = cs_conn_gone,
    .published = cs_published,
};

const struct handler_row campaign_rows[] = {
    {.action = "campaign:state", .start = state_start, .module = &campaign_module},
    {.action = "campaign:update", .start = update_start, .module = &campaign_module},
    {.action = "campaign:feature", .start = feature_start, .module = &campaign_module},
    {.action = "campaign:config", .start = config_start, .module = &campaign_module},
    {.action = "campaign:switch",
     .start = switch_start,
     .stop = gather_wait_stop,
     .module = &campaign_module},
    {.action = "campaign:list",
     .start = list_start,
     .stop = gather_wait_stop,
     .module = &campaign_module},
    {.action = "campaign:stream_state",
     .streaming = true,
     .start = cs_stream_state_start,
     .tick = cs_stream_state_tick,
     .stop = cs_stream_state_stop,
     .module = &campaign_module},
    {.action = "campaign:stream_analytics",
     .streaming = true,
     .start = cs_stream_analytics_start,
     .tick = cs_stream_analytics_tick,
     .stop = cs_stream_analytics_stop,
     .module = &campaign_module},
    {.action = "campaign:stream_events",
     .streaming = true,
     .start = cs_stream_events_start,
     .stop = cs_stream_events_stop,
     .module = &campaign_module},
};
const size_t campaign_row_count = sizeof(campaign_rows) / sizeof(campaign_rows[0]);
