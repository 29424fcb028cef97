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
#include "broker/pubsub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/auth.h"
#include "broker/conn.h"
#include "broker/log.h"
#include "broker/shard.h"
#include "broker/store.h"
#include "codec/envelope.h"

static struct campaign *campaign_get(struct shard *s, int64_t id, bool create, bool *over_limit)
{
    struct campaign *cp = map_get(&s->campaigns, (uint64_t)id);
    if (cp || !create)
        return cp;
    if (s->campaigns.count >= s->cfg->campaigns_per_shard_max || shard_over_memory(s)) {
        if (over_limit)
            *over_limit = true;
        if (shard_over_memory(s))
            stat_add(&s->stats.memory_refusals, 1);
        return NULL;
    }
    uint32_t n = s->broker->shard_count;
    cp = calloc(1, sizeof(*cp) + sizeof(uint32_t) * n);
    if (!cp)
        return NULL;
    cp->id = id;
    cp->sequence = store_floor(s, id); /* with a log: where the campaign left off */
    cp->released = cp->sequence;
    cp->last_event_ns = shard_clock_ns(s); /* idle from its creation on */
    dedup_init(&cp->dedup, s->cfg->dedup_entries_max);
    if (map_put(&s->campaigns, (uint64_t)id, cp) < 0) {
        free(cp);
        return NULL;
    }
    stat_add(&s->stats.campaigns, 1);
    return cp;
}

struct campaign *core_campaign(struct shard *s, int64_t id, bool create)
{
    return campaign_get(s, id, create, NULL);
}

/* Sends a frame to a connection on any shard (takes the reference); waits behind an event
 * being logged (store.h), so that nothing overtakes it. */
void core_to_conn(struct shard *s, uint64_t conn_id, struct oframe *f)
{
    if (s->store && store_holding(s)) {
        if (store_defer_frame(s, conn_id, f, 0) < 0) {
            log_error((int)s->index,
                      "out of memory holding a reply behind the log: connection "
                      "%llu misses it",
                      (unsigned long long)conn_id);
            oframe_unref(f);
        }
        return;
    }
    core_to_conn_now(s, conn_id, f);
}

void core_to_conn_now(struct shard *s, uint64_t conn_id, struct oframe *f)
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
    NX_ASSERT(home < s->broker->shard_count);
    oframe_share(f);
    struct ring_msg m = {.kind = MSG_TO_CONN, .ptr = f, .arg = conn_id};
    if (shard_send(s, home, CORE_DELIVERY, &m) < 0)
        oframe_unref(f); /* logged by shard_send: the connection misses this reply */
}

void core_bytes_to_conn(struct shard *s, uint64_t conn_id, const uint8_t *frame, size_t len)
{
    struct oframe *f = oframe_alloc((uint32_t)len);
    if (!f) {
        log_error((int)s->index, "out of memory replying to connection %llu",
                  (unsigned long long)conn_id);
        return;
    }
    memcpy(f->data, frame, len);
    core_to_conn(s, conn_id, f);
}

void core_error_to_conn_now(struct shard *s, uint64_t conn_id, uint64_t corr, const char *code,
                            const char *msg)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_error_encode(buf, sizeof(buf), corr, code, msg);
    struct oframe *f = n > 0 ? oframe_alloc((uint32_t)n) : NULL;
    if (!f)
        return;
    memcpy(f->data, buf, (size_t)n);
    stat_add(&s->stats.errors, 1);
    core_to_conn_now(s, conn_id, f);
}

void core_error_to_conn(struct shard *s, uint64_t conn_id, uint64_t corr, const char *code,
                        const char *msg)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_error_encode(buf, sizeof(buf), corr, code, msg);
    if (n <= 0)
        return;
    stat_add(&s->stats.errors, 1);
    core_bytes_to_conn(s, conn_id, buf, (size_t)n);
}

void core_ack(struct shard *s, const struct emit_msg *m, const uint8_t *body, struct codec_slice id,
              uint64_t seq, int64_t ts, bool duplicate)
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
    /* Behind the event in the log: sent once it is as durable as --fsync promises. */
    if (s->store && store_holding(s)) {
        if (store_defer_frame(s, m->conn_id, f, m->correlation ? m->correlation : 1) < 0)
            oframe_unref(f);
        return;
    }
    core_to_conn(s, m->conn_id, f);
}

static uint64_t dedup_key_scoped(struct codec_slice id, const uint8_t *body,
                                 const struct emit_msg *m)
{
    uint64_t key = dedup_key(id.ptr, id.len, body + m->type_off, m->type_len) ^
                   (m->dedup_scope * 0x9e3779b97f4a7c15ull);
    return key ? key : 1;
}

/* The emit's duplicate-window key, or 0 when it is not checked: no window, or no client id (a
 * fresh UUID cannot repeat). */
static uint64_t emit_key(const struct shard *s, const struct emit_msg *m, const uint8_t *body)
{
    if (!s->cfg->dedup_window_ms || !m->id_len)
        return 0;
    /* Scoped to the publisher (its connection, or its hello's client_name): another client
     * re-using the id is not a duplicate of this one's event (docs/PROTOCOL.md). */
    return dedup_key_scoped((struct codec_slice){body + m->id_off, m->id_len}, body, m);
}

static void emit_handle(struct shard *s, const struct emit_msg *m, const uint8_t *body,
                        uint64_t key);

void pubsub_emit(struct shard *s, const struct emit_msg *m, const uint8_t *body)
{
    pubsub_emit_flush(s);
    emit_handle(s, m, body, emit_key(s, m, body));
}

/* The second prefetch: the duplicate window's lines, found through the campaign, which the
 * first one brought in. */
static void pipe_stage2(struct emit_pipe_slot *e)
{
    if (e->cp) {
        dedup_prefetch(&e->cp->dedup, e->key);
        e->cp = NULL;
    }
}

/* Handles the oldest queued emit. */
static void pipe_pop(struct shard *s)
{
    struct emit_pipe *p = &s->emit_pipe;
    struct emit_pipe_slot *e = &p->slot[p->head];
    pipe_stage2(e); /* a short pipeline: late, but the line is on its way */
    p->head = (p->head + 1) % PUBSUB_EMIT_AHEAD;
    p->count--;
    p->flushing = true;
    emit_handle(s, e->m, e->body, e->key);
    p->flushing = false;
}

void pubsub_emit_queue(struct shard *s, const struct emit_msg *m, const uint8_t *body, bool m_copy)
{
    struct emit_pipe *p = &s->emit_pipe;
    uint64_t key = emit_key(s, m, body);
    if (!key && !p->count) {
        emit_handle(s, m, body, 0); /* nothing to wait for, nothing ahead of it */
        return;
    }
    const struct campaign *cp = NULL;
    if (key && (cp = map_get(&s->campaigns, (uint64_t)m->campaign_id)) != NULL)
        for (size_t o = 0; o < sizeof(*cp); o += 64)
            __builtin_prefetch((const char *)cp + o, 0, 3);
    if (p->count == PUBSUB_EMIT_AHEAD)
        pipe_pop(s);
    struct emit_pipe_slot *e = &p->slot[(p->head + p->count) % PUBSUB_EMIT_AHEAD];
    if (m_copy) {
        memcpy(e->copy, m, sizeof(*m));
        m = (const struct emit_msg *)(const void *)e->copy;
    }
    e->m = m;
    e->body = body;
    e->key = key;
    e->cp = cp;
    p->count++;
    if (p->count > PUBSUB_EMIT_AHEAD - PUBSUB_EMIT_STAGE2)
        pipe_stage2(&p->slot[(p->head + p->count - 1 - (PUBSUB_EMIT_AHEAD - PUBSUB_EMIT_STAGE2)) %
                             PUBSUB_EMIT_AHEAD]);
}

void pubsub_emit_flush(struct shard *s)
{
    struct emit_pipe *p = &s->emit_pipe;
    /* From inside an emit being handled (an error frame it sends): the rest waits its turn. */
    if (p->flushing)
        return;
    for (uint32_t k = 0; k < p->count; k++)
        pipe_stage2(&p->slot[(p->head + k) % PUBSUB_EMIT_AHEAD]);
    while (p->count && !p->flushing)
        pipe_pop(s);
}

/* Handles one emit; key is emit_key's (computed when it was queued). */
static void emit_handle(struct shard *s, const struct emit_msg *m, const uint8_t *body,
                        uint64_t key)
{
    bool over = false;
    struct campaign *cp = campaign_get(s, m->campaign_id, true, &over);
    if (!cp) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 shard_over_memory(s) ? "the broker is at --max-memory: no new campaign"
                 : over               ? "campaign limit reached (%u per shard)"
                                      : "out of memory creating campaign (limit %u)",
                 s->cfg->campaigns_per_shard_max);
        core_error_to_conn(s, m->conn_id, m->correlation, "limit_exceeded", msg);
        return;
    }
    const char *refusal = s->store ? store_refusal(s) : NULL;
    if (refusal) {
        core_error_to_conn(s, m->conn_id, m->correlation, refusal,
                           "the event log cannot take events (a write failed or the disk is "
                           "full): nothing is acknowledged until nexusd is restarted");
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
    if (key) {
        if (dedup_check_insert(&cp->dedup, key, now, (int64_t)s->cfg->dedup_window_ms * 1000000)) {
            stat_add(&s->stats.duplicates, 1);
            if (m->correlation)
                core_ack(s, m, body, id, 0, now, true);
            return;
        }
    }
    if (core_hooks && core_hooks->emit && core_hooks->emit(s, cp, m, body, id, now))
        return;

    struct publish p;
    core_publish_of_emit(&p, m, body, id, now);
    /* A client name's scope (top bit set) means the same after a restart, a connection's not. */
    if (key && (m->dedup_scope >> 63))
        p.dedup_key = key;
    if (core_publish(s, cp, &p) < 0) {
        core_error_to_conn(s, m->conn_id, m->correlation, "internal", "out of memory");
        return;
    }
    if (m->correlation)
        core_ack(s, m, body, id, p.ev.sequence, now, false);
}

void core_publish_of_emit(struct publish *p, const struct emit_msg *m, const uint8_t *body,
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

int core_publish(struct shard *s, struct campaign *cp, struct publish *p)
{
    struct codec_event_out *ev = &p->ev;
    ev->kind = CODEC_KIND_EVENT;
    ev->success = true;
    ev->campaign_id = cp->id;
    if (!ev->timestamp_unix_nanos)
        ev->timestamp_unix_nanos = shard_now_ns();
    bool unsequenced = p->flags & PUBLISH_UNSEQUENCED;
    /* A type --persist leaves out is transient: delivered to subscribers, but outside the
     * sequence (0) and not logged, so that no sequence is given to an event the log lacks. */
    bool transient =
        !unsequenced && s->store && !store_persists(s, &p->type, (const char *)ev->event_type.ptr);
    ev->sequence = unsequenced || transient ? 0 : cp->sequence + 1;
    size_t body = codec_event_body_size(ev);
    struct oframe *f = oframe_alloc((uint32_t)codec_event_size_of_body(ev, body));
    if (!f)
        return -ENOMEM;
    if (!unsequenced && !transient)
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
    f->terminal = (p->flags & PUBLISH_TERMINAL) != 0;
    stat_add(&s->stats.events_in, 1);
    if (s->store && ((!unsequenced && !transient) || store_holding(s))) {
        /* Logged first; delivered once the batch holding it is durable (store.h). */
        if ((!unsequenced && !transient && store_append(s, f, p->dedup_key) < 0) ||
            store_defer_fanout(s, cp->id, f, p->direct_conn, p->direct_conn2, unsequenced) < 0) {
            oframe_unref(f);
            return -ENOMEM;
        }
        return 0;
    }
    pubsub_fanout(s, cp->id, f, p->direct_conn, p->direct_conn2, unsequenced);
    return 0;
}

void pubsub_fanout(struct shard *s, int64_t campaign_id, struct oframe *f, uint64_t direct,
                   uint64_t direct2, bool unsequenced)
{
    struct campaign *cp = map_get(&s->campaigns, (uint64_t)campaign_id);
    if (direct) {
        oframe_ref(f, 1);
        core_to_conn_now(s, direct, f);
    }
    if (direct2 && direct2 != direct) {
        oframe_ref(f, 1);
        core_to_conn_now(s, direct2, f);
    }
    if (!unsequenced && cp) {
        if (f->sequence) /* 0: a transient event (--persist), outside the sequence */
            cp->released = f->sequence;
        /* Fan out: shards with interest get one reference each, then our own subscribers. */
        uint64_t mask = (cp->interest_mask | s->firehose_mask) & ~(1ull << s->index);
        while (mask) {
            uint32_t d = (uint32_t)__builtin_ctzll(mask);
            mask &= mask - 1;
            oframe_ref(f, 1);
            oframe_share(f);
            struct ring_msg rm = {.kind = MSG_DELIVER, .ptr = f};
            if (shard_send(s, d, CORE_DELIVERY, &rm) < 0) {
                /* Out of memory: that shard's subscribers miss this event. Counted as drops
                 * (and logged by shard_send), never silent. */
                stat_add(&s->stats.drops, 1);
                oframe_unref(f);
            }
        }
        pubsub_deliver(s, f);
        if (f->sequence && core_hooks && core_hooks->published)
            core_hooks->published(s, cp, f);
    }
    oframe_unref(f);
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

static bool match_sub(const void *arg, const struct oframe *f)
{
    return sub_matches(arg, f);
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

bool core_any_match(struct shard *s, struct campaign *cp, const struct evtype *t,
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
/* Queues f to the matching subscriptions of l. *carry (0 or 1) is a reference of the caller's:
 * when l is the last list (last) its last batch gives it to one of its connections instead
 * of taking a new one, since f is not read after that batch; otherwise it stays the caller's. */
static void deliver_list(struct sub_list *l, struct oframe *f, uint64_t stamp, bool last,
                         unsigned *carry)
{
    struct conn *batch[128];
    uint32_t i = 0;
    while (i < l->count) {
        uint32_t n = 0;
        for (; i < l->count && n < 128; i++) {
            struct sub *sb = l->v[i];
            struct conn *c = sb->conn;
            if (c->last_delivery == stamp || (c->flags & CONN_DEAD) || c->id == f->skip_conn_id ||
                c->id == f->skip_conn_id2 || sb->replaying || !sub_matches(sb, f))
                continue;
            c->last_delivery = stamp;
            batch[n++] = c;
        }
        if (!n)
            continue;
        unsigned given = last && i == l->count ? *carry : 0;
        if (n > given)
            oframe_ref(f, n - given);
        *carry -= given;
        /* conn_enqueue may close a connection (slow consumer); closing only marks it and
         * defers unlinking its subscriptions, so this list stays intact. Each call takes one
         * of the n references, so f lives until the last. */
        for (uint32_t k = 0; k < n; k++)
            conn_enqueue(batch[k], f);
    }
}

static void deliver_all(struct shard *s, struct oframe *f, unsigned carry)
{
    uint64_t stamp = ++s->delivery_stamp;
    struct sub_list *l = map_get(&s->sub_lists, (uint64_t)f->campaign_id);
    bool firehose = s->firehose.count != 0;
    if (l)
        deliver_list(l, f, stamp, !firehose, &carry);
    if (firehose)
        deliver_list(&s->firehose, f, stamp, true, &carry);
    if (carry)
        oframe_unref(f);
}

void pubsub_deliver(struct shard *s, struct oframe *f)
{
    deliver_all(s, f, 0);
}

void pubsub_deliver_taking(struct shard *s, struct oframe *f)
{
    deliver_all(s, f, 1);
}

static int list_add(struct sub_list *l, struct sub *sb)
{
    if (GROW(l->v, l->cap, l->count + 1, 4) < 0)
        return -ENOMEM;
    sb->list_pos = l->count;
    l->v[l->count++] = sb;
    return 0;
}

static void list_remove(struct sub_list *l, struct sub *sb)
{
    uint32_t i = sb->list_pos;
    NX_ASSERT(i < l->count && l->v[i] == sb);
    l->v[i] = l->v[--l->count];
    l->v[i]->list_pos = i;
}

static void replay_begin(struct shard *s, uint32_t shard, uint64_t conn_id, uint64_t sub_id,
                         int64_t campaign_id, uint64_t from, uint64_t corr,
                         struct interest_msg *im);
static void replay_cancel(struct shard *s, uint32_t shard, uint64_t sub_id);

static void send_sub_ack(struct conn *c, uint64_t corr, uint64_t id)
{
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_subscribe_ack_encode(buf, sizeof(buf), corr, id);
    if (n > 0)
        conn_enqueue_bytes(c, buf, (size_t)n);
}

/* The shards other than this one that must know of sb (they sequence what it wants): every
 * other shard for the firehose, else the campaign's owner if that is another shard. */
static uint64_t sub_owners(const struct shard *s, const struct sub *sb)
{
    uint32_t n = s->broker->shard_count;
    if (sb->campaign_id == 0)
        return (n == 64 ? ~0ull : (1ull << n) - 1) & ~(1ull << s->index);
    uint32_t owner = shard_of_campaign(s, sb->campaign_id);
    return owner == s->index ? 0 : 1ull << owner;
}

/* Tells owner shard d that this shard gained (+1, with a copy of the filter) or lost (-1)
 * subscription sb. Returns 0, or -ENOMEM with nothing sent. */
static int interest_send(struct shard *s, uint32_t d, const struct sub *sb, int32_t delta,
                         uint64_t corr)
{
    struct interest_msg *im = calloc(1, sizeof(*im));
    if (!im)
        return -ENOMEM;
    im->campaign_id = sb->campaign_id;
    im->delta = delta;
    im->from_shard = s->index;
    im->conn_id = sb->conn->id;
    im->sub_id = sb->id;
    im->correlation = corr;
    im->from_seq = delta > 0 ? sb->from_seq : 0;
    if (delta > 0) {
        if (sb->pattern_count) {
            im->patterns = malloc(sizeof(struct evpattern) * sb->pattern_count);
            if (!im->patterns) {
                free(im);
                return -ENOMEM;
            }
            memcpy(im->patterns, sb->patterns, sizeof(struct evpattern) * sb->pattern_count);
            im->pattern_count = sb->pattern_count;
        }
        memcpy(im->user_id, sb->user_id, sb->user_id_len);
        im->user_id_len = sb->user_id_len;
    }
    struct ring_msg m = {.kind = MSG_INTEREST, .ptr = im};
    if (shard_send(s, d, CORE_REQUEST, &m) < 0) {
        free(im->patterns);
        free(im);
        return -ENOMEM;
    }
    return 0;
}

/* Sends interest to every shard in owners. Returns 0, or -ENOMEM if some were not told. A
 * removal (-1) that an owner never registered is ignored there, so a partial +1 is undone by
 * a -1 to all of them. */
static int interest_send_all(struct shard *s, const struct sub *sb, uint64_t owners, int32_t delta,
                             uint64_t corr)
{
    int r = 0;
    while (owners) {
        uint32_t d = (uint32_t)__builtin_ctzll(owners);
        owners &= owners - 1;
        if (interest_send(s, d, sb, delta, corr) < 0) {
            r = -ENOMEM;
            if (delta > 0)
                break;
        }
    }
    return r;
}

static bool s_has_log(const struct conn *c)
{
    return c->shard->store != NULL; /* every shard has one, or none */
}

static void sub_free(struct sub *sb)
{
    free(sb->patterns);
    free(sb);
}

/* Decodes and checks a SubscribeRequest into a new subscription of c (not linked yet).
 * Returns it, or NULL after answering with an error frame. */
static struct sub *sub_parse(struct conn *c, uint64_t corr, const uint8_t *body, uint32_t len)
{
    struct codec_subscribe req;
    char err[CODEC_ERR_BYTES];
    int r = codec_subscribe_decode(body, len, &req, err);
    if (r < 0) {
        conn_error(c, corr, r == -E2BIG ? "limit_exceeded" : "bad_protobuf", "%s", err);
        return NULL;
    }
    if (req.from_sequence && (req.campaign_id == 0 || !s_has_log(c))) {
        conn_error(c, corr, "bad_request",
                   req.campaign_id == 0
                       ? "from_sequence replays one campaign: give campaign_id"
                       : "from_sequence needs a broker with an event log (--data-dir)");
        return NULL;
    }
    if (req.user_id.len > SUB_USER_ID_BYTES_MAX) {
        conn_error(c, corr, "limit_exceeded", "user_id filter longer than %d bytes",
                   SUB_USER_ID_BYTES_MAX);
        return NULL;
    }
    struct sub *sb = calloc(1, sizeof(*sb));
    bool all = req.pattern_count == 0;
    for (uint32_t i = 0; i < req.pattern_count; i++)
        if (req.patterns[i].len == 1 && req.patterns[i].ptr[0] == '*')
            all = true;
    if (!sb || (!all && !(sb->patterns = malloc(sizeof(struct evpattern) * req.pattern_count)))) {
        free(sb);
        conn_error(c, corr, "internal", "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; !all && i < req.pattern_count; i++) {
        char perr[EVTYPE_ERR_BYTES];
        if (evpattern_parse(&sb->patterns[i], (const char *)req.patterns[i].ptr,
                            req.patterns[i].len, perr, sizeof(perr)) < 0) {
            sub_free(sb);
            conn_error(c, corr, "invalid_pattern", "pattern %u: %s", i + 1, perr);
            return NULL;
        }
    }
    sb->pattern_count = all ? 0 : req.pattern_count;
    sb->filter_bytes = req.user_id.len;
    for (uint32_t i = 0; !all && i < req.pattern_count; i++)
        sb->filter_bytes += req.patterns[i].len;
    if (req.user_id.len)
        memcpy(sb->user_id, req.user_id.ptr, req.user_id.len);
    sb->user_id_len = req.user_id.len;
    sb->campaign_id = req.campaign_id;
    sb->from_seq = req.from_sequence;
    sb->conn = c;
    sb->correlation = corr;
    return sb;
}

/* The shard's list of subscriptions to sb's campaign, created if asked (NULL if out of
 * memory, or absent). */
static struct sub_list *sub_list_of(struct shard *s, int64_t campaign_id, bool create)
{
    if (campaign_id == 0)
        return &s->firehose;
    struct sub_list *l = map_get(&s->sub_lists, (uint64_t)campaign_id);
    if (l || !create)
        return l;
    l = calloc(1, sizeof(*l));
    if (l && map_put(&s->sub_lists, (uint64_t)campaign_id, l) < 0) {
        free(l);
        l = NULL;
    }
    return l;
}

/* Links sb into its shard's list and its connection's subscriptions. Returns 0, or -ENOMEM
 * with nothing linked. */
static int sub_link(struct shard *s, struct conn *c, struct sub *sb)
{
    struct sub_list *l = sub_list_of(s, sb->campaign_id, true);
    if (!l || GROW(c->subs, c->sub_cap, c->sub_count + 1, 4) < 0 || list_add(l, sb) < 0) {
        if (l && l != &s->firehose && l->count == 0) {
            map_del(&s->sub_lists, (uint64_t)sb->campaign_id);
            free(l->v);
            free(l);
        }
        return -ENOMEM;
    }
    sb->id = ++s->next_sub;
    c->subs[c->sub_count++] = sb;
    c->pattern_bytes += sb->filter_bytes;
    stat_add(&s->stats.subscriptions, 1);
    return 0;
}

/* Unlinks subscription i of connection c, tells its owners, and frees it. */
static void sub_drop(struct conn *c, uint32_t i)
{
    struct shard *s = c->shard;
    NX_ASSERT(i < c->sub_count);
    struct sub *sb = c->subs[i];
    c->subs[i] = c->subs[--c->sub_count];
    NX_ASSERT(c->pattern_bytes >= sb->filter_bytes);
    c->pattern_bytes -= sb->filter_bytes;
    struct sub_list *l = sub_list_of(s, sb->campaign_id, false);
    NX_ASSERT(l != NULL);
    list_remove(l, sb);
    if (l->count == 0 && l != &s->firehose) {
        map_del(&s->sub_lists, (uint64_t)sb->campaign_id);
        free(l->v);
        free(l);
    }
    replay_cancel(s, s->index, sb->id); /* a local replay of it, if one is going on */
    if (interest_send_all(s, sb, sub_owners(s, sb), -1, 0) < 0)
        log_error((int)s->index,
                  "out of memory withdrawing subscription %llu: its owner keeps routing its "
                  "campaign here until the next change",
                  (unsigned long long)sb->id);
    stat_sub(&s->stats.subscriptions, 1);
    sub_free(sb);
}

void pubsub_subscribe(struct conn *c, uint64_t corr, const uint8_t *body, uint32_t len)
{
    struct shard *s = c->shard;
    if (c->sub_count >= s->cfg->subscriptions_per_conn_max) {
        conn_error(c, corr, "limit_exceeded", "connection already holds %u subscriptions (max %u)",
                   c->sub_count, s->cfg->subscriptions_per_conn_max);
        return;
    }
    if (shard_over_memory(s)) {
        stat_add(&s->stats.memory_refusals, 1);
        conn_error(c, corr, "limit_exceeded", "the broker is at --max-memory: no new subscription");
        return;
    }
    struct sub *sb = sub_parse(c, corr, body, len);
    if (!sb)
        return;
    if (c->acct && !auth_sub_allowed(c, corr, sb)) {
        sub_free(sb);
        return;
    }
    if (c->pattern_bytes + sb->filter_bytes > s->cfg->pattern_bytes_per_conn_max) {
        conn_error(c, corr, "limit_exceeded",
                   "subscription filters of this connection would take %u bytes "
                   "(--max-pattern-bytes %u)",
                   c->pattern_bytes + sb->filter_bytes, s->cfg->pattern_bytes_per_conn_max);
        sub_free(sb);
        return;
    }
    if (sub_link(s, c, sb) < 0) {
        sub_free(sb);
        conn_error(c, corr, "internal", "out of memory");
        return;
    }
    /* The ack leaves once every shard that sequences the subscribed campaigns routes them
     * here; events sequenced after the ack are then certain to arrive. */
    uint64_t owners = sub_owners(s, sb);
    sb->acks_pending = (uint32_t)__builtin_popcountll(owners);
    sb->replaying = sb->from_seq != 0;
    if (owners == 0) {
        if (sb->from_seq) /* the ack follows the replay */
            replay_begin(s, s->index, c->id, sb->id, sb->campaign_id, sb->from_seq, corr, NULL);
        else
            send_sub_ack(c, corr, sb->id);
    } else if (interest_send_all(s, sb, owners, +1, corr) < 0) {
        sub_drop(c, c->sub_count - 1);
        conn_error(c, corr, "internal", "out of memory registering the subscription");
    }
}

void pubsub_unsubscribe(struct conn *c, uint64_t corr, uint64_t sub_id)
{
    for (uint32_t i = 0; i < c->sub_count; i++) {
        if (c->subs[i]->id != sub_id)
            continue;
        sub_drop(c, i);
        send_sub_ack(c, corr, sub_id);
        return;
    }
    conn_error(c, corr, "unknown_subscription", "subscription %llu is not held by this connection",
               (unsigned long long)sub_id);
}

void pubsub_conn_gone(struct conn *c)
{
    while (c->sub_count)
        sub_drop(c, c->sub_count - 1);
}

/* Owner side: adds (+1: the filter moves out of im) or removes (-1) the summary of
 * subscription im->sub_id of shard im->from_shard. Returns 1 if it changed, 0 if a removal
 * found nothing (it was never registered), or -ENOMEM. */
static int remote_update(struct remote_subs *rs, struct interest_msg *im)
{
    if (im->delta > 0) {
        if (GROW(rs->v, rs->cap, rs->count + 1, 4) < 0)
            return -ENOMEM;
        struct remote_sub *r = &rs->v[rs->count++];
        r->shard = im->from_shard;
        r->sub_id = im->sub_id;
        r->patterns = im->patterns;
        r->pattern_count = im->pattern_count;
        r->user_id_len = im->user_id_len;
        memcpy(r->user_id, im->user_id, im->user_id_len);
        im->patterns = NULL;
        return 1;
    }
    for (uint32_t i = 0; i < rs->count; i++) {
        if (rs->v[i].shard == im->from_shard && rs->v[i].sub_id == im->sub_id) {
            free(rs->v[i].patterns);
            rs->v[i] = rs->v[--rs->count];
            return 1;
        }
    }
    return 0;
}

static void remote_free(struct remote_subs *rs)
{
    for (uint32_t i = 0; i < rs->count; i++)
        free(rs->v[i].patterns);
    free(rs->v);
    memset(rs, 0, sizeof(*rs));
}

static void interest_msg_free(struct interest_msg *im)
{
    free(im->patterns);
    free(im);
}

/* Counts one registered summary more or less in a per-shard interest count and its mask. */
static void interest_count(uint32_t *count, uint64_t *mask, uint32_t from, int32_t delta)
{
    NX_ASSERT(delta > 0 || *count > 0);
    *count = (uint32_t)((int64_t)*count + delta);
    if (*count)
        *mask |= 1ull << from;
    else
        *mask &= ~(1ull << from);
}

static bool match_remote(const void *arg, const struct oframe *f)
{
    const struct remote_sub *r = arg;
    return filter_matches(r->patterns, r->pattern_count, r->user_id, r->user_id_len, &f->type,
                          f->type_str, f->user_id, f->user_id_len);
}

void pubsub_interest(struct shard *s, struct interest_msg *im)
{
    uint32_t from = im->from_shard;
    NX_ASSERT(from < s->broker->shard_count && from != s->index);
    NX_ASSERT(im->delta == 1 || im->delta == -1);
    if (im->campaign_id == 0) {
        int r = remote_update(&s->firehose_remote, im);
        if (r > 0)
            interest_count(&s->firehose_interest[from], &s->firehose_mask, from, im->delta);
        im->status = r < 0 ? r : 0;
    } else {
        /* Interest creates the campaign entry (its sequence must outlive subscribers). At the
         * campaign limit the subscription is refused, not the broker stopped. */
        bool over = false;
        struct campaign *cp = campaign_get(s, im->campaign_id, im->delta > 0, &over);
        int r = !cp ? (over            ? -ENOSPC
                       : im->delta > 0 ? -ENOMEM
                                       : 0)
                    : remote_update(&cp->remote, im);
        if (r > 0)
            interest_count(&cp->interest[from], &cp->interest_mask, from, im->delta);
        im->status = r < 0 ? r : 0;
    }
    if (im->delta < 0) {
        replay_cancel(s, from, im->sub_id);
        interest_msg_free(im);
        return;
    }
    if (im->status == 0 && im->from_seq) {
        /* The cursor keeps im and sends it back as the ack once the replay is through. */
        replay_begin(s, from, im->conn_id, im->sub_id, im->campaign_id, im->from_seq,
                     im->correlation, im);
        return;
    }
    struct ring_msg m = {.kind = MSG_INTEREST_ACK, .ptr = im};
    if (shard_send(s, from, CORE_DELIVERY, &m) < 0)
        interest_msg_free(im); /* logged by shard_send; the subscriber waits for its ack */
}

/* Subscriber side: an owner now routes to us, or refused the subscription. */
void pubsub_interest_ack(struct shard *s, struct interest_msg *im)
{
    struct conn *c = conn_lookup(s, im->conn_id);
    for (uint32_t i = 0; c && i < c->sub_count; i++) {
        struct sub *sb = c->subs[i];
        if (sb->id != im->sub_id)
            continue;
        if (im->status < 0) {
            sub_drop(c, i);
            if (im->status == -ENOSPC)
                conn_error(c, im->correlation, "limit_exceeded",
                           "campaign limit reached (--max-campaigns %u per shard): the "
                           "subscription to campaign %lld was not registered",
                           s->cfg->campaigns_per_shard_max, (long long)im->campaign_id);
            else
                conn_error(c, im->correlation, "internal",
                           "out of memory registering the subscription");
        } else if (sb->acks_pending && --sb->acks_pending == 0) {
            sb->replaying = false; /* the owner's replay came before this ack */
            send_sub_ack(c, im->correlation, sb->id);
        }
        break;
    }
    interest_msg_free(im);
}

/* Campaign table slots looked at per tick: 4096 × 10 ticks/s walks a million-campaign table in
 * ~25 s, at a few µs per tick. */
#define PUBSUB_SWEEP_SLOTS 4096

static void campaign_free(struct campaign *cp)
{
    dedup_free(&cp->dedup);
    remote_free(&cp->remote);
    free(cp);
}

/* True if campaign cp may go: nobody subscribes to it anywhere, it has been quiet for the
 * limit, and the handlers layer holds nothing in it (or lets go of what it holds). */
static bool campaign_idle(struct shard *s, struct campaign *cp, int64_t now)
{
    if (cp->interest_mask || cp->remote.count || map_get(&s->sub_lists, (uint64_t)cp->id))
        return false;
    if (now - cp->last_event_ns < (int64_t)s->cfg->campaign_idle_ms * 1000000)
        return false;
    if (!cp->slot)
        return true;
    return core_hooks && core_hooks->campaign_idle && core_hooks->campaign_idle(s, cp) && !cp->slot;
}

void pubsub_sweep_campaigns(struct shard *s, int64_t now)
{
    if (!s->cfg->campaign_idle_ms || !s->campaigns.slots)
        return;
    for (uint32_t n = 0; n < PUBSUB_SWEEP_SLOTS && s->campaigns.count; n++) {
        uint32_t i = s->campaign_hand & s->campaigns.mask;
        struct campaign *cp = s->campaigns.slots[i].val;
        if (cp && campaign_idle(s, cp, now) && store_note_freed(s, cp->id, cp->sequence) == 0) {
            /* Backward-shift deletion may move another campaign into slot i: look at the
             * same slot again rather than advance. */
            map_del(&s->campaigns, (uint64_t)cp->id);
            campaign_free(cp);
            stat_sub(&s->stats.campaigns, 1);
            stat_add(&s->stats.campaigns_freed, 1);
            s->trim_wanted = true;
            continue;
        }
        s->campaign_hand++;
    }
}

/* ---- paced replay ------------------------------------------------------------------------ */

/* A subscription with from_sequence is replayed from the log in steps of about
 * REPLAY_STEP_BYTES of frames, on the campaign's owner. After each step the owner pauses
 * until the subscriber's shard asks for more, which it does once the connection's queue is
 * below REPLAY_STEP_BYTES: so a replay of any length holds about two steps in memory and never
 * meets --max-outbound-bytes, and a slow reader slows its own replay only. Live events skip
 * the subscription meanwhile (sb->replaying); each step reads up to the campaign's last
 * released sequence as it is then, so events released during the replay come from the log,
 * and the step that reaches it ends the replay and sends the acknowledgement (after every
 * replayed frame, before any later live event) in the same pass. docs/ARCHITECTURE.md,
 * "Resume". */
#define REPLAY_STEP_BYTES (512u << 10)

struct replay_cur {
    int64_t campaign_id;
    uint64_t next; /* the next sequence to read */
    uint64_t conn_id, sub_id, correlation;
    uint32_t shard;          /* the subscriber's */
    struct interest_msg *im; /* another shard's subscription: its +1, sent back as the ack */
};

static uint64_t replay_key(uint32_t shard, uint64_t sub_id)
{
    return sub_id << 6 | shard; /* shard < CONFIG_SHARDS_MAX (64) */
}

static size_t replay_step_bytes(const struct shard *s)
{
    size_t q = s->cfg->outbound_bytes_max / 4;
    return q < REPLAY_STEP_BYTES ? q : REPLAY_STEP_BYTES;
}

static struct sub *sub_of_conn(struct conn *c, uint64_t sub_id)
{
    for (uint32_t i = 0; c && i < c->sub_count; i++)
        if (c->subs[i]->id == sub_id)
            return c->subs[i];
    return NULL;
}

static const struct remote_sub *remote_find(const struct remote_subs *rs, uint32_t shard,
                                            uint64_t sub_id)
{
    for (uint32_t i = 0; i < rs->count; i++)
        if (rs->v[i].shard == shard && rs->v[i].sub_id == sub_id)
            return &rs->v[i];
    return NULL;
}

static void replay_free(struct shard *s, struct replay_cur *rc)
{
    map_del(&s->replays, replay_key(rc->shard, rc->sub_id));
    if (rc->im)
        interest_msg_free(rc->im);
    free(rc);
}

static void ask_add(struct shard *s, uint64_t conn_id, uint64_t sub_id)
{
    if (GROW(s->asks, s->cap_asks, s->nasks + 1, 8) < 0) {
        log_error((int)s->index, "out of memory pausing a replay: subscription %llu stays paused",
                  (unsigned long long)sub_id);
        return;
    }
    s->asks[s->nasks++] = (struct replay_ask){conn_id, sub_id};
}

/* The replay is through: the subscription goes live with its acknowledgement. */
static void replay_done(struct shard *s, struct replay_cur *rc)
{
    if (rc->im) {
        struct ring_msg m = {.kind = MSG_INTEREST_ACK, .ptr = rc->im};
        if (shard_send(s, rc->shard, CORE_DELIVERY, &m) == 0)
            rc->im = NULL; /* else freed below; the subscriber waits for its ack */
    } else {
        struct conn *c = conn_lookup(s, rc->conn_id);
        struct sub *sb = sub_of_conn(c, rc->sub_id);
        if (sb) {
            sb->replaying = false;
            send_sub_ack(c, rc->correlation, sb->id);
        }
    }
    replay_free(s, rc);
}

static void replay_step(struct shard *s, struct replay_cur *rc)
{
    struct campaign *cp = campaign_get(s, rc->campaign_id, false, NULL);
    uint64_t to = cp ? cp->released : store_floor(s, rc->campaign_id);
    const void *arg;
    if (rc->im)
        arg = cp ? remote_find(&cp->remote, rc->shard, rc->sub_id) : NULL;
    else
        arg = sub_of_conn(conn_lookup(s, rc->conn_id), rc->sub_id);
    if (!arg) { /* withdrawn meanwhile (its -1 is on the way, or was handled) */
        replay_free(s, rc);
        return;
    }
    uint64_t next;
    bool (*match)(const void *, const struct oframe *) = rc->im ? match_remote : match_sub;
    bool filtered =
        rc->im ? ((const struct remote_sub *)arg)->pattern_count ||
                     ((const struct remote_sub *)arg)->user_id_len
               : ((const struct sub *)arg)->pattern_count || ((const struct sub *)arg)->user_id_len;
    int r = store_replay(s, rc->campaign_id, rc->next, to, replay_step_bytes(s), &next, rc->conn_id,
                         filtered ? match : NULL, arg); /* NULL: no need to parse the frames */
    if (r < 0) {
        log_error((int)s->index, "replay of campaign %lld for connection %llu failed: %s",
                  (long long)rc->campaign_id, (unsigned long long)rc->conn_id, strerror(-r));
        next = to + 1; /* the subscription goes live */
    }
    rc->next = next;
    if (next > to) {
        replay_done(s, rc);
    } else if (rc->shard == s->index) {
        ask_add(s, rc->conn_id, rc->sub_id);
    } else {
        struct ring_msg m = {
            .kind = MSG_REPLAY_PAUSE, .ptr = (void *)(uintptr_t)rc->sub_id, .arg = rc->conn_id};
        if (shard_send(s, rc->shard, CORE_DELIVERY, &m) < 0)
            replay_free(s, rc); /* logged by shard_send; the subscriber waits for its ack */
    }
}

/* Starts the replay of subscription sub_id of shard `shard` (im: its +1, when that is another
 * shard) from sequence `from`. */
static void replay_begin(struct shard *s, uint32_t shard, uint64_t conn_id, uint64_t sub_id,
                         int64_t campaign_id, uint64_t from, uint64_t corr, struct interest_msg *im)
{
    struct replay_cur *rc = calloc(1, sizeof(*rc));
    if (!rc || map_put(&s->replays, replay_key(shard, sub_id), rc) < 0) {
        free(rc);
        log_error((int)s->index,
                  "out of memory starting a replay: subscription %llu gets no "
                  "replay",
                  (unsigned long long)sub_id);
        if (im) {
            struct ring_msg m = {.kind = MSG_INTEREST_ACK, .ptr = im};
            if (shard_send(s, shard, CORE_DELIVERY, &m) < 0)
                interest_msg_free(im);
        } else {
            struct conn *c = conn_lookup(s, conn_id);
            struct sub *sb = sub_of_conn(c, sub_id);
            if (sb) {
                sb->replaying = false;
                conn_error(c, corr, "internal", "out of memory starting the replay");
            }
        }
        return;
    }
    *rc = (struct replay_cur){.campaign_id = campaign_id,
                              .next = from,
                              .conn_id = conn_id,
                              .sub_id = sub_id,
                              .correlation = corr,
                              .shard = shard,
                              .im = im};
    replay_step(s, rc);
}

/* The subscription went away: its replay ends without an ack. */
static void replay_cancel(struct shard *s, uint32_t shard, uint64_t sub_id)
{
    struct replay_cur *rc =
        s->replays.count ? map_get(&s->replays, replay_key(shard, sub_id)) : NULL;
    if (rc)
        replay_free(s, rc);
}

void pubsub_replay_more(struct shard *s, uint32_t from, uint64_t sub_id)
{
    struct replay_cur *rc = map_get(&s->replays, replay_key(from, sub_id));
    if (rc)
        replay_step(s, rc);
}

void pubsub_replay_paused(struct shard *s, uint64_t conn_id, uint64_t sub_id)
{
    ask_add(s, conn_id, sub_id);
}

bool pubsub_replay_asks(struct shard *s)
{
    uint32_t n = s->nasks; /* asks added by the steps below wait for the next pass */
    size_t low = replay_step_bytes(s);
    for (uint32_t i = 0; i < n;) {
        struct replay_ask a = s->asks[i];
        struct conn *c = conn_lookup(s, a.conn_id);
        struct sub *sb = sub_of_conn(c, a.sub_id);
        if (sb && (c->flags & CONN_DEAD) == 0 && c->q_bytes >= low) {
            i++; /* its queue is still long: ask in a later pass */
            continue;
        }
        s->asks[i] = s->asks[--n]; /* taken: the last of this pass's asks moves here */
        s->asks[n] = s->asks[--s->nasks];
        if (!sb || !sb->replaying || (c->flags & CONN_DEAD))
            continue;
        uint32_t owner = shard_of_campaign(s, sb->campaign_id);
        if (owner == s->index) {
            pubsub_replay_more(s, s->index, a.sub_id);
        } else {
            struct ring_msg m = {
                .kind = MSG_REPLAY_MORE, .aux = s->index, .ptr = (void *)(uintptr_t)a.sub_id};
            if (shard_send(s, owner, CORE_REQUEST, &m) < 0)
                ask_add(s, a.conn_id, a.sub_id); /* try again next pass */
        }
    }
    for (uint32_t i = n; i < s->nasks; i++) { /* added this pass: ready at once? */
        struct conn *c = conn_lookup(s, s->asks[i].conn_id);
        if (!c || c->q_bytes < low)
            return true;
    }
    return false;
}

void pubsub_free_shard(struct shard *s)
{
    for (uint32_t i = 0; s->campaigns.slots && i <= s->campaigns.mask; i++) {
        struct campaign *cp = s->campaigns.slots[i].val;
        if (cp)
            campaign_free(cp);
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
    for (uint32_t i = 0; s->replays.slots && i <= s->replays.mask; i++) {
        struct replay_cur *rc = s->replays.slots[i].val;
        if (rc) {
            if (rc->im)
                interest_msg_free(rc->im);
            free(rc);
        }
    }
    map_free(&s->replays);
    free(s->asks);
    s->asks = NULL;
    s->nasks = s->cap_asks = 0;
}
