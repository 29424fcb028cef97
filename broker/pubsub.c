// SPDX-License-Identifier: Apache-2.0
//
// Publish/subscribe on a shard, both halves:
//  - owner side: the campaigns this shard owns (xxh3(campaign_id) mod shards). Each has its
//    sequence counter, its duplicate-suppression window and a count of subscriptions per
//    shard (interest), so an event is handed only to shards that may want it. An accepted
//    emit is sequenced, timestamped, encoded once into a shared frame and fanned out.
//  - subscriber side: the subscriptions of this shard's connections, listed per campaign
//    (plus the firehose list for campaign 0), and the matching of each delivered event
//    against them, at most once per connection.
// Everything here runs on the shard's own thread; other shards reach it through ring messages.
#include "broker/shard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/log.h"
#include "codec/envelope.h"
#include "codec/stats.h"

static struct campaign *campaign_get(struct shard *s, int64_t id, bool create, bool *over_limit)
{
    struct campaign *cp = map_get(&s->campaigns, (uint64_t)id);
    if (cp || !create)
        return cp;
    if (s->campaigns.count >= s->cfg->campaigns_per_shard_max) {
        if (over_limit)
            *over_limit = true;
        return NULL;
    }
    uint32_t n = s->broker->shard_count;
    cp = calloc(1, sizeof(*cp) + sizeof(uint32_t) * n);
    if (!cp)
        return NULL;
    cp->id = id;
    dedup_init(&cp->dedup, s->cfg->dedup_entries_max);
    if (map_put(&s->campaigns, (uint64_t)id, cp) < 0) {
        free(cp);
        return NULL;
    }
    stat_add(&s->stats.campaigns, 1);
    return cp;
}

struct campaign *pubsub_campaign(struct shard *s, int64_t id, bool create)
{
    return campaign_get(s, id, create, NULL);
}

/* Sends a frame to a connection on any shard (takes the reference). */
void pubsub_to_conn(struct shard *s, uint64_t conn_id, struct oframe *f)
{
    uint32_t home = (uint32_t)(conn_id >> 56);
    if (home == s->index) {
        struct conn *c = conn_lookup(s, conn_id);
        if (c)
            conn_enqueue(c, f);
        else
            oframe_unref(f);
        return;
    }
    oframe_share(f);
    struct ring_msg m = {.kind = MSG_TO_CONN, .ptr = f, .arg = conn_id};
    shard_send(s, home, 1, &m);
}

void pubsub_error_to_conn(struct shard *s, uint64_t conn_id, uint64_t corr, const char *code,
                          const char *msg)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_error_encode(buf, sizeof(buf), corr, code, msg);
    struct oframe *f = n > 0 ? oframe_alloc((uint32_t)n) : NULL;
    if (!f)
        return;
    memcpy(f->data, buf, (size_t)n);
    stat_add(&s->stats.errors, 1);
    pubsub_to_conn(s, conn_id, f);
}

void pubsub_ack(struct shard *s, const struct emit_msg *m, const uint8_t *body,
                struct codec_slice id, uint64_t seq, int64_t ts, bool duplicate)
{
    struct codec_event_out a;
    memset(&a, 0, sizeof(a));
    a.kind = CODEC_KIND_EMIT_ACK;
    a.correlation = m->correlation;
    a.success = true;
    a.event_id = id;
    a.event_type.ptr = body + m->type_off;
    a.event_type.len = m->type_len;
    a.campaign_id = m->campaign_id;
    a.sequence = seq;
    a.timestamp_unix_nanos = ts;
    a.message.ptr = (const uint8_t *)(duplicate ? "duplicate" : "accepted");
    a.message.len = duplicate ? 9 : 8;
    struct oframe *f = oframe_alloc((uint32_t)codec_event_size(&a));
    if (!f)
        return;
    codec_event_encode(&a, f->data);
    pubsub_to_conn(s, m->conn_id, f);
}

void pubsub_emit(struct shard *s, const struct emit_msg *m, const uint8_t *body)
{
    bool over = false;
    struct campaign *cp = campaign_get(s, m->campaign_id, true, &over);
    if (!cp) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 over ? "campaign limit reached (%u per shard)"
                      : "out of memory creating campaign (limit %u)",
                 s->cfg->campaigns_per_shard_max);
        pubsub_error_to_conn(s, m->conn_id, m->correlation, "limit_exceeded", msg);
        return;
    }
    int64_t now = shard_clock_ns(s);
    char uuid[36];
    struct codec_slice id = {body + m->id_off, m->id_len};
    if (m->id_len == 0) {
        shard_uuid4(s, uuid);
        id.ptr = (const uint8_t *)uuid;
        id.len = 36;
    }
    /* A fresh UUID cannot repeat: only client-chosen ids are checked for duplicates. */
    if (s->cfg->dedup_window_ms && m->id_len) {
        uint64_t key = dedup_key(id.ptr, id.len, body + m->type_off, m->type_len);
        if (dedup_check_insert(&cp->dedup, key, now, (int64_t)s->cfg->dedup_window_ms * 1000000)) {
            stat_add(&s->stats.duplicates, 1);
            if (m->correlation)
                pubsub_ack(s, m, body, id, 0, now, true);
            return;
        }
    }
    if (broker_hooks && broker_hooks->emit && broker_hooks->emit(s, cp, m, body, id, now))
        return;

    struct publish p;
    pubsub_publish_of_emit(&p, m, body, id, now);
    if (pubsub_publish(s, cp, &p) < 0) {
        pubsub_error_to_conn(s, m->conn_id, m->correlation, "internal", "out of memory");
        return;
    }
    if (m->correlation)
        pubsub_ack(s, m, body, id, p.ev.sequence, now, false);
}

void pubsub_publish_of_emit(struct publish *p, const struct emit_msg *m, const uint8_t *body,
                            struct codec_slice id, int64_t now)
{
    memset(p, 0, sizeof(*p));
    p->ev.event_id = id;
    p->ev.event_type.ptr = body + m->type_off;
    p->ev.event_type.len = m->type_len;
    p->ev.entity_id.ptr = body + m->entity_off;
    p->ev.entity_id.len = m->entity_len;
    p->ev.has_metadata = m->has_md;
    p->ev.metadata.ptr = body + m->md_off;
    p->ev.metadata.len = m->md_len;
    p->ev.has_payload = m->has_pl;
    p->ev.payload.ptr = body + m->pl_off;
    p->ev.payload.len = m->pl_len;
    p->ev.timestamp_unix_nanos = now;
    p->type = m->type;
    p->user_id = m->user_len ? body + m->user_off : NULL;
    p->user_id_len = m->user_len;
}

int pubsub_publish(struct shard *s, struct campaign *cp, struct publish *p)
{
    struct codec_event_out *ev = &p->ev;
    ev->kind = CODEC_KIND_EVENT;
    ev->success = true;
    ev->campaign_id = cp->id;
    if (!ev->timestamp_unix_nanos)
        ev->timestamp_unix_nanos = shard_now_ns();
    ev->sequence = p->unsequenced ? 0 : cp->sequence + 1;
    size_t body = codec_event_body_size(ev);
    struct oframe *f = oframe_alloc((uint32_t)codec_event_size_of_body(ev, body));
    if (!f)
        return -ENOMEM;
    if (!p->unsequenced)
        cp->sequence++;
    cp->last_event_ns = ev->timestamp_unix_nanos;
    struct codec_event_layout lay;
    codec_event_encode_body(ev, body, f->data, &lay);
    f->is_event = true;
    f->campaign_id = cp->id;
    f->sequence = ev->sequence;
    f->ts_ns = ev->timestamp_unix_nanos;
    f->type = p->type;
    f->type_str = (const char *)f->data + lay.event_type_off;
    if (p->user_id_len) {
        f->user_id = f->data + lay.metadata_off + (uint32_t)(p->user_id - ev->metadata.ptr);
        f->user_id_len = p->user_id_len;
    }
    f->skip_conn_id = p->direct_conn;
    f->skip_conn_id2 = p->direct_conn2;
    f->terminal = p->terminal;
    stat_add(&s->stats.events_in, 1);

    if (p->direct_conn) {
        oframe_ref(f, 1);
        pubsub_to_conn(s, p->direct_conn, f);
    }
    if (p->direct_conn2 && p->direct_conn2 != p->direct_conn) {
        oframe_ref(f, 1);
        pubsub_to_conn(s, p->direct_conn2, f);
    }
    if (!p->unsequenced) {
        /* Fan out: shards with interest get one reference each, then our own subscribers. */
        uint64_t mask = (cp->interest_mask | s->firehose_mask) & ~(1ull << s->index);
        while (mask) {
            uint32_t d = (uint32_t)__builtin_ctzll(mask);
            mask &= mask - 1;
            oframe_ref(f, 1);
            oframe_share(f);
            struct ring_msg rm = {.kind = MSG_DELIVER, .ptr = f};
            shard_send(s, d, 1, &rm);
        }
        pubsub_deliver(s, f);
        if (broker_hooks && broker_hooks->published)
            broker_hooks->published(s, cp, f);
    }
    oframe_unref(f);
    return 0;
}

/* ---- subscriber side ---------------------------------------------------------------------- */

/* The filter of a subscription (or of its owner-side summary) against an event. */
static bool filter_matches(const struct evpattern *pats, uint32_t npat, const char *user,
                           uint32_t user_len, const struct evtype *t, const char *type_str,
                           const uint8_t *ev_user, uint32_t ev_user_len)
{
    if (user_len && (ev_user_len != user_len || memcmp(ev_user, user, user_len)))
        return false;
    if (npat == 0)
        return true;
    for (uint32_t i = 0; i < npat; i++)
        if (evpattern_match(&pats[i], t, type_str))
            return true;
    return false;
}

static bool sub_matches(const struct sub *sb, const struct oframe *f)
{
    return filter_matches(sb->patterns, sb->pattern_count, sb->user_id, sb->user_id_len, &f->type,
                          f->type_str, f->user_id, f->user_id_len);
}

static bool list_any_match(const struct sub_list *l, const struct evtype *t, const char *ts,
                           const uint8_t *u, uint32_t ul)
{
    for (uint32_t i = 0; l && i < l->count; i++) {
        const struct sub *sb = l->v[i];
        if (!(sb->conn->flags & CONN_DEAD) &&
            filter_matches(sb->patterns, sb->pattern_count, sb->user_id, sb->user_id_len, t, ts, u,
                           ul))
            return true;
    }
    return false;
}

static bool remote_any_match(const struct remote_subs *rs, const struct evtype *t, const char *ts,
                             const uint8_t *u, uint32_t ul)
{
    for (uint32_t i = 0; i < rs->count; i++) {
        const struct remote_sub *r = &rs->v[i];
        if (filter_matches(r->patterns, r->pattern_count, r->user_id, r->user_id_len, t, ts, u, ul))
            return true;
    }
    return false;
}

bool pubsub_any_match(struct shard *s, struct campaign *cp, const struct evtype *t,
                      const char *type_str, const uint8_t *user_id, uint32_t user_id_len)
{
    return list_any_match(map_get(&s->sub_lists, (uint64_t)cp->id), t, type_str, user_id,
                          user_id_len) ||
           list_any_match(&s->firehose, t, type_str, user_id, user_id_len) ||
           remote_any_match(&cp->remote, t, type_str, user_id, user_id_len) ||
           remote_any_match(&s->firehose_remote, t, type_str, user_id, user_id_len);
}

/* Matches f against a subscription list and queues it on each matching connection, at most
 * once per connection (stamp). References are taken in one atomic add per batch rather than
 * one per subscriber. */
static void deliver_list(struct sub_list *l, struct oframe *f, uint64_t stamp)
{
    struct conn *batch[128];
    uint32_t i = 0;
    while (i < l->count) {
        uint32_t n = 0;
        for (; i < l->count && n < 128; i++) {
            struct sub *sb = l->v[i];
            struct conn *c = sb->conn;
            if (c->last_delivery == stamp || (c->flags & CONN_DEAD) || c->id == f->skip_conn_id ||
                c->id == f->skip_conn_id2 || !sub_matches(sb, f))
                continue;
            c->last_delivery = stamp;
            batch[n++] = c;
        }
        if (!n)
            continue;
        oframe_ref(f, n);
        /* conn_enqueue may close a connection (slow consumer); closing only marks it and
         * defers unlinking its subscriptions, so this list stays intact. */
        for (uint32_t k = 0; k < n; k++)
            conn_enqueue(batch[k], f);
    }
}

void pubsub_deliver(struct shard *s, struct oframe *f)
{
    uint64_t stamp = ++s->delivery_stamp;
    struct sub_list *l = map_get(&s->sub_lists, (uint64_t)f->campaign_id);
    if (l)
        deliver_list(l, f, stamp);
    if (s->firehose.count)
        deliver_list(&s->firehose, f, stamp);
}

static int list_add(struct sub_list *l, struct sub *sb)
{
    if (l->count == l->cap) {
        uint32_t ncap = l->cap ? l->cap * 2 : 4;
        struct sub **nv = realloc(l->v, sizeof(*nv) * ncap);
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        l->cap = ncap;
    }
    sb->list_pos = l->count;
    l->v[l->count++] = sb;
    return 0;
}

static void list_remove(struct sub_list *l, struct sub *sb)
{
    uint32_t i = sb->list_pos;
    l->v[i] = l->v[--l->count];
    l->v[i]->list_pos = i;
}

static void send_sub_ack(struct conn *c, uint64_t corr, uint64_t id)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_subscribe_ack_encode(buf, sizeof(buf), corr, id);
    if (n > 0)
        conn_enqueue_bytes(c, buf, (size_t)n);
}

/* Tells the owner(s) that this shard gained or lost a subscription. */
static void send_interest(struct shard *s, struct sub *sb, int32_t delta, uint64_t corr)
{
    uint32_t n = s->broker->shard_count;
    for (uint32_t d = 0; d < n; d++) {
        if (d == s->index)
            continue;
        if (sb->campaign_id != 0 && d != shard_of_campaign(s, sb->campaign_id))
            continue;
        struct interest_msg *im = malloc(sizeof(*im));
        if (!im) {
            log_error((int)s->index, "out of memory sending subscription interest");
            abort();
        }
        im->campaign_id = sb->campaign_id;
        im->delta = delta;
        im->from_shard = s->index;
        im->conn_id = sb->conn->id;
        im->sub_id = sb->id;
        im->correlation = corr;
        im->patterns = NULL;
        im->pattern_count = 0;
        im->user_id_len = 0;
        if (delta > 0) {
            if (sb->pattern_count) {
                im->patterns = malloc(sizeof(struct evpattern) * sb->pattern_count);
                if (!im->patterns) {
                    log_error((int)s->index, "out of memory sending subscription interest");
                    abort();
                }
                memcpy(im->patterns, sb->patterns, sizeof(struct evpattern) * sb->pattern_count);
                im->pattern_count = sb->pattern_count;
            }
            memcpy(im->user_id, sb->user_id, sb->user_id_len);
            im->user_id_len = sb->user_id_len;
        }
        struct ring_msg m = {.kind = MSG_INTEREST, .ptr = im};
        shard_send(s, d, 0, &m);
    }
}

static void sub_free(struct sub *sb)
{
    free(sb->patterns);
    free(sb);
}

void pubsub_subscribe(struct conn *c, uint64_t corr, const uint8_t *body, uint32_t len)
{
    struct shard *s = c->shard;
    struct codec_subscribe req;
    char err[CODEC_ERR_BYTES];
    int r = codec_subscribe_decode(body, len, &req, err);
    if (r < 0) {
        conn_error(c, corr, r == -E2BIG ? "limit_exceeded" : "bad_protobuf", "%s", err);
        return;
    }
    if (c->sub_count >= s->cfg->subscriptions_per_conn_max) {
        conn_error(c, corr, "limit_exceeded", "connection already holds %u subscriptions (max %u)",
                   c->sub_count, s->cfg->subscriptions_per_conn_max);
        return;
    }
    struct sub *sb = calloc(1, sizeof(*sb));
    if (!sb) {
        conn_error(c, corr, "internal", "out of memory");
        return;
    }
    if (req.user_id.len > sizeof(sb->user_id)) {
        free(sb);
        conn_error(c, corr, "limit_exceeded", "user_id filter longer than %zu bytes",
                   sizeof(sb->user_id));
        return;
    }
    bool all = req.pattern_count == 0;
    for (uint32_t i = 0; i < req.pattern_count; i++)
        if (req.patterns[i].len == 1 && req.patterns[i].ptr[0] == '*')
            all = true;
    if (!all) {
        sb->patterns = malloc(sizeof(struct evpattern) * req.pattern_count);
        if (!sb->patterns) {
            free(sb);
            conn_error(c, corr, "internal", "out of memory");
            return;
        }
        for (uint32_t i = 0; i < req.pattern_count; i++) {
            char perr[EVTYPE_ERR_BYTES];
            if (evpattern_parse(&sb->patterns[i], (const char *)req.patterns[i].ptr,
                                req.patterns[i].len, perr, sizeof(perr)) < 0) {
                sub_free(sb);
                conn_error(c, corr, "invalid_pattern", "pattern %u: %s", i + 1, perr);
                return;
            }
        }
        sb->pattern_count = req.pattern_count;
    }
    memcpy(sb->user_id, req.user_id.ptr ? req.user_id.ptr : (const uint8_t *)"", req.user_id.len);
    sb->user_id_len = req.user_id.len;
    sb->campaign_id = req.campaign_id;
    sb->conn = c;
    sb->id = ++s->next_sub;
    sb->correlation = corr;

    struct sub_list *l = &s->firehose;
    if (sb->campaign_id != 0) {
        l = map_get(&s->sub_lists, (uint64_t)sb->campaign_id);
        if (!l) {
            l = calloc(1, sizeof(*l));
            if (!l || map_put(&s->sub_lists, (uint64_t)sb->campaign_id, l) < 0) {
                free(l);
                sub_free(sb);
                conn_error(c, corr, "internal", "out of memory");
                return;
            }
        }
    }
    if (c->sub_count == c->sub_cap) {
        uint32_t ncap = c->sub_cap ? c->sub_cap * 2 : 4;
        struct sub **nv = realloc(c->subs, sizeof(*nv) * ncap);
        if (!nv) {
            sub_free(sb);
            conn_error(c, corr, "internal", "out of memory");
            return;
        }
        c->subs = nv;
        c->sub_cap = ncap;
    }
    if (list_add(l, sb) < 0) {
        sub_free(sb);
        conn_error(c, corr, "internal", "out of memory");
        return;
    }
    c->subs[c->sub_count++] = sb;
    stat_add(&s->stats.subscriptions, 1);

    /* The ack leaves once every shard that sequences the subscribed campaigns routes them
     * here; events sequenced after the ack are then certain to arrive. */
    uint32_t n = s->broker->shard_count;
    if (sb->campaign_id == 0)
        sb->acks_pending = n - 1;
    else
        sb->acks_pending = shard_of_campaign(s, sb->campaign_id) == s->index ? 0 : 1;
    if (sb->acks_pending == 0)
        send_sub_ack(c, corr, sb->id);
    else
        send_interest(s, sb, +1, corr);
}

static void sub_remove(struct shard *s, struct sub *sb)
{
    struct sub_list *l = &s->firehose;
    if (sb->campaign_id != 0)
        l = map_get(&s->sub_lists, (uint64_t)sb->campaign_id);
    list_remove(l, sb);
    if (l->count == 0 && l != &s->firehose) {
        map_del(&s->sub_lists, (uint64_t)sb->campaign_id);
        free(l->v);
        free(l);
    }
    uint32_t owner = sb->campaign_id ? shard_of_campaign(s, sb->campaign_id) : UINT32_MAX;
    if (owner != s->index)
        send_interest(s, sb, -1, 0);
    stat_sub(&s->stats.subscriptions, 1);
    sub_free(sb);
}

void pubsub_unsubscribe(struct conn *c, uint64_t corr, uint64_t sub_id)
{
    for (uint32_t i = 0; i < c->sub_count; i++) {
        struct sub *sb = c->subs[i];
        if (sb->id != sub_id)
            continue;
        c->subs[i] = c->subs[--c->sub_count];
        sub_remove(c->shard, sb);
        send_sub_ack(c, corr, sub_id);
        return;
    }
    conn_error(c, corr, "unknown_subscription", "subscription %llu is not held by this connection",
               (unsigned long long)sub_id);
}

void pubsub_conn_gone(struct conn *c)
{
    for (uint32_t i = 0; i < c->sub_count; i++)
        sub_remove(c->shard, c->subs[i]);
    c->sub_count = 0;
}

/* Owner side: a shard's subscription count changed. */
static void remote_update(struct remote_subs *rs, struct interest_msg *im)
{
    if (im->delta > 0) {
        if (rs->count == rs->cap) {
            uint32_t ncap = rs->cap ? rs->cap * 2 : 4;
            struct remote_sub *nv = realloc(rs->v, sizeof(*nv) * ncap);
            if (!nv)
                abort(); /* bounded by subscriptions; no sane way on */
            rs->v = nv;
            rs->cap = ncap;
        }
        struct remote_sub *r = &rs->v[rs->count++];
        r->shard = im->from_shard;
        r->sub_id = im->sub_id;
        r->patterns = im->patterns; /* ownership moves here */
        r->pattern_count = im->pattern_count;
        r->user_id_len = im->user_id_len;
        memcpy(r->user_id, im->user_id, im->user_id_len);
        im->patterns = NULL;
        return;
    }
    for (uint32_t i = 0; i < rs->count; i++) {
        if (rs->v[i].shard == im->from_shard && rs->v[i].sub_id == im->sub_id) {
            free(rs->v[i].patterns);
            rs->v[i] = rs->v[--rs->count];
            return;
        }
    }
}

static void remote_free(struct remote_subs *rs)
{
    for (uint32_t i = 0; i < rs->count; i++)
        free(rs->v[i].patterns);
    free(rs->v);
    memset(rs, 0, sizeof(*rs));
}

void pubsub_interest(struct shard *s, struct interest_msg *im)
{
    uint32_t from = im->from_shard;
    if (im->campaign_id == 0) {
        s->firehose_interest[from] = (uint32_t)((int64_t)s->firehose_interest[from] + im->delta);
        if (s->firehose_interest[from])
            s->firehose_mask |= 1ull << from;
        else
            s->firehose_mask &= ~(1ull << from);
        remote_update(&s->firehose_remote, im);
    } else {
        /* Interest creates the campaign entry (its sequence must outlive subscribers); the
         * count of such entries is bounded by subscriptions, themselves bounded. */
        struct campaign *cp = campaign_get(s, im->campaign_id, true, NULL);
        if (!cp) {
            log_error((int)s->index, "out of memory registering interest");
            abort();
        }
        cp->interest[from] = (uint32_t)((int64_t)cp->interest[from] + im->delta);
        if (cp->interest[from])
            cp->interest_mask |= 1ull << from;
        else
            cp->interest_mask &= ~(1ull << from);
        remote_update(&cp->remote, im);
    }
    if (im->delta > 0) {
        struct ring_msg m = {.kind = MSG_INTEREST_ACK, .ptr = im};
        shard_send(s, from, 1, &m);
    } else {
        free(im);
    }
}

/* Subscriber side: an owner now routes to us. */
void pubsub_interest_ack(struct shard *s, struct interest_msg *im)
{
    struct conn *c = conn_lookup(s, im->conn_id);
    if (c) {
        for (uint32_t i = 0; i < c->sub_count; i++) {
            struct sub *sb = c->subs[i];
            if (sb->id == im->sub_id && sb->acks_pending && --sb->acks_pending == 0)
                send_sub_ack(c, im->correlation, sb->id);
        }
    }
    free(im);
}

void pubsub_free_shard(struct shard *s)
{
    for (uint32_t i = 0; s->campaigns.slots && i <= s->campaigns.mask; i++) {
        struct campaign *cp = s->campaigns.slots[i].val;
        if (cp) {
            dedup_free(&cp->dedup);
            remote_free(&cp->remote);
            free(cp);
        }
    }
    map_free(&s->campaigns);
    for (uint32_t i = 0; s->sub_lists.slots && i <= s->sub_lists.mask; i++) {
        struct sub_list *l = s->sub_lists.slots[i].val;
        if (l) {
            free(l->v);
            free(l);
        }
    }
    map_free(&s->sub_lists);
    free(s->firehose.v);
    remote_free(&s->firehose_remote);
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (uint64_t)rss * 4096;
}

void pubsub_stats(struct conn *c, uint64_t corr)
{
    struct broker *b = c->shard->broker;
    struct codec_shard_stats st[CONFIG_SHARDS_MAX];
    memset(st, 0, sizeof(st));
    for (uint32_t i = 0; i < b->shard_count; i++) {
        struct shard_stats *x = &b->shards[i]->stats;
        struct codec_shard_stats *o = &st[i];
        o->shard_id = i;
#define LD(f) atomic_load_explicit(&x->f, memory_order_relaxed)
        o->connections = LD(connections);
        o->events_in = LD(events_in);
        o->events_out = LD(events_out);
        o->frames_in = LD(frames_in);
        o->frames_out = LD(frames_out);
        o->bytes_queued = LD(bytes_queued);
        o->slow_disconnects = LD(slow_disconnects);
        o->drops = LD(drops);
        o->duplicates = LD(duplicates);
        o->errors = LD(errors);
        o->campaigns = LD(campaigns);
        o->subscriptions = LD(subscriptions);
        o->paused_reads = LD(paused_reads);
        o->req_success = LD(req_success);
        o->req_failed = LD(req_failed);
        o->req_cancelled = LD(req_cancelled);
        o->req_timeout = LD(req_timeout);
        o->req_no_handler = LD(req_no_handler);
        o->open_streams = LD(open_streams);
        o->heartbeats = LD(heartbeats);
        o->handler_losses = LD(handler_losses);
        o->media_rooms = LD(media_rooms);
        o->media_peers = LD(media_peers);
#undef LD
        for (uint32_t src = 0; src < b->shard_count; src++)
            if (src != i)
                o->ring_depth +=
                    ring_depth(broker_ring(b, 0, src, i)) + ring_depth(broker_ring(b, 1, src, i));
    }
    uint8_t *buf = NULL;
    int n = codec_stats_reply_encode(&buf, corr, st, b->shard_count, rss_bytes());
    if (n > 0) {
        struct oframe *f = oframe_alloc((uint32_t)n);
        if (f) {
            memcpy(f->data, buf, (size_t)n);
            conn_enqueue(c, f);
        }
    }
    free(buf);
}
