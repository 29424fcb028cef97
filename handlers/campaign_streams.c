// SPDX-License-Identifier: Apache-2.0
//
// The campaign streams and the history they read (campaign_int.h):
//  - history: every sequenced event of a campaign is recorded as it is published (the module's
//    `published` callback), bounded per campaign and per shard, oldest out first;
//  - campaign:stream_state: the state at once, then pushed on every change, coalesced;
//  - campaign:stream_analytics: a sample every interval;
//  - campaign:stream_events: the history from a sequence, then the live tail. Both come from
//    the same thread in sequence order, so the seam has no gap and no duplicate.
// Runs on the shard that owns the campaign, like everything of the campaign.
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/frame.h"
#include "codec/wire.h"
#include "handlers/campaign_int.h"

/* ---- watchers ----------------------------------------------------------------------------- */

int cs_watchers_add(struct cs_watchers *w, struct pv_request *r)
{
    if (GROW(w->v, w->cap, w->count + 1, 4) < 0)
        return -ENOMEM;
    w->v[w->count++] = r;
    return 0;
}

void cs_watchers_remove(struct cs_watchers *w, struct pv_request *r)
{
    for (uint32_t i = 0; i < w->count; i++) {
        if (w->v[i] == r) {
            /* Order is kept: pushes go out in the order streams were opened. */
            memmove(w->v + i, w->v + i + 1, sizeof(*w->v) * (w->count - i - 1));
            w->count--;
            return;
        }
    }
}

/* ---- history ------------------------------------------------------------------------------ */

/* Drops the oldest recorded event of a campaign. */
static void hist_drop_oldest(struct cs_shard *sh, struct cstate *cs)
{
    struct oframe *f = cs->h_ring[cs->h_head];
    cs->h_head = (cs->h_head + 1) & (cs->h_cap - 1);
    cs->h_count--;
    cs->h_bytes -= f->len;
    sh->hist_bytes -= f->len;
    cs->h_evicted = f->sequence;
    oframe_unref(f);
}

void cs_history_free(struct cs_shard *sh, struct cstate *cs)
{
    while (cs->h_count)
        hist_drop_oldest(sh, cs);
    free(cs->h_ring);
    cs->h_ring = NULL;
    cs->h_cap = 0;
}

static struct oframe *hist_at(const struct cstate *cs, uint32_t k)
{
    return cs->h_ring[(cs->h_head + k) & (cs->h_cap - 1)];
}

/* The data and versioning Structs of a common.Payload, or false if it is malformed. */
static bool payload_parts(const struct codec_event_in *ev, struct codec_slice *data,
                          struct codec_slice *vers)
{
    struct wire_cursor c;
    struct wire_field f;
    int r;
    memset(data, 0, sizeof(*data));
    memset(vers, 0, sizeof(*vers));
    if (!ev->has_payload)
        return true;
    wire_cursor_init(&c, ev->payload.ptr, ev->payload.len);
    while ((r = wire_next(&c, &f)) > 0) {
        if ((f.number == 1 || f.number == 2) && f.type == WIRE_LEN) {
            struct codec_slice *d = f.number == 1 ? data : vers;
            d->ptr = f.data;
            d->len = (uint32_t)f.len;
        }
    }
    return r == 0;
}

/* A full history evicts its oldest frame at each event of the campaign. That frame was written
 * some 1024 events of the campaign ago and is cold; its header is read and written when it is
 * dropped, and the allocator hands its block out again for new frames, whose writes would
 * stall on it (deliver_list's reference count took the stall: 20% of the campaigns workload).
 * So the next frame to go is brought into cache for writing one event of the campaign ahead:
 * its header and the first HIST_PREFETCH_BYTES of its data (a typical event). Measured:
 * campaigns 1.45M -> ~1.7M events/s. */
#define HIST_PREFETCH_BYTES 256
static void hist_prefetch(const struct oframe *f)
{
    for (size_t o = 0; o < sizeof(*f) + HIST_PREFETCH_BYTES; o += 64)
        __builtin_prefetch((const char *)f + o, 1, 3);
}

/* Makes room for one more event in the campaign's ring. Returns 0 or -ENOMEM. */
static int hist_room(struct cs_shard *sh, struct cstate *cs)
{
    if (cs->h_count == CS_HISTORY_EVENTS_MAX) {
        hist_drop_oldest(sh, cs);
        hist_prefetch(cs->h_ring[cs->h_head]);
        return 0;
    }
    if (cs->h_count < cs->h_cap)
        return 0;
    /* 16 entries first: most campaigns stay small; then doubling up to the bound. */
    uint32_t ncap = cs->h_cap ? cs->h_cap * 2 : 16;
    struct oframe **nr = malloc(sizeof(*nr) * ncap);
    if (!nr)
        return -ENOMEM;
    for (uint32_t k = 0; k < cs->h_count; k++)
        nr[k] = hist_at(cs, k);
    free(cs->h_ring);
    cs->h_ring = nr;
    cs->h_cap = ncap;
    cs->h_head = 0;
    return 0;
}

/* Records an event by reference to its shared frame, then applies the bounds: the campaign's
 * (events, bytes), then the shard's bytes, taken from campaigns in turn (a clock hand over the
 * shard's campaigns), so that idle campaigns give their history up too. */
static int hist_record(struct shard *s, struct cs_shard *sh, struct cstate *cs, struct oframe *f)
{
    if (hist_room(sh, cs) < 0)
        return -ENOMEM;
    oframe_ref(f, 1);
    cs->h_ring[(cs->h_head + cs->h_count) & (cs->h_cap - 1)] = f;
    cs->h_count++;
    cs->h_bytes += f->len;
    sh->hist_bytes += f->len;
    while (cs->h_count > 1 && cs->h_bytes > CS_HISTORY_BYTES_MAX)
        hist_drop_oldest(sh, cs);
    /* Bounded: each step drops an event or passes a campaign; two laps at most. */
    uint32_t slots = core_campaign_slots(s);
    for (uint32_t steps = 0; sh->hist_bytes > CS_SHARD_HISTORY_BYTES_MAX && steps <= 2 * slots;
         steps++) {
        struct campaign *cp = core_campaign_at(s, sh->hist_hand++ & (slots - 1));
        struct cstate *other = cp ? cs_get(cp, false) : NULL;
        if (other && other->h_count > (other == cs ? 1u : 0u))
            hist_drop_oldest(sh, other);
    }
    return 0;
}

/* ---- stream_events ------------------------------------------------------------------------ */

/* A replayed or live event, as the payload of a campaign:stream_events stream event. */
static int event_payload(struct hs_writer *w, const struct oframe *f)
{
    struct codec_envelope env;
    struct codec_event_in ev;
    char err[CODEC_ERR_BYTES];
    if (codec_envelope_decode(f->data + CODEC_FRAME_HEADER_BYTES, f->len - CODEC_FRAME_HEADER_BYTES,
                              &env, err) < 0 ||
        codec_event_decode(env.body.ptr, env.body.len, &ev, err) < 0)
        return -EBADMSG; /* our own encoding: cannot happen */
    struct codec_slice data, vers;
    bool ok = payload_parts(&ev, &data, &vers);
    bool omit = !ok || data.len + vers.len > CS_HISTORY_DATA_BYTES_MAX;
    char ts[24];
    const char *why;
    int tl = snprintf(ts, sizeof(ts), "%" PRId64, ev.timestamp_unix_nanos);
    /* The event's own payload is spliced into ours: it must be a well-formed Struct, or one
     * malformed event would make every replay undecodable. */
    bool data_ok = !omit && data.ptr && hs_struct_check(data.ptr, data.len, &why) == 0;
    bool vers_ok = !omit && vers.ptr && hs_struct_check(vers.ptr, vers.len, &why) == 0;
    hs_payload_begin(w);
    hs_put_cstring(w, "kind", "event");
    hs_put_number(w, "sequence", (double)f->sequence);
    hs_put_string(w, "event_id", ev.event_id.ptr, ev.event_id.len);
    hs_put_string(w, "event_type", ev.event_type.ptr, ev.event_type.len);
    if (ev.entity_id.len)
        hs_put_string(w, "entity_id", ev.entity_id.ptr, ev.entity_id.len);
    if (f->user_id_len)
        hs_put_string(w, "user_id", f->user_id, f->user_id_len);
    hs_put_string(w, "timestamp_unix_nanos", ts, (size_t)tl);
    if (data_ok)
        hs_put_struct_bytes(w, "data", data.ptr, data.len);
    if (vers_ok)
        hs_put_struct_bytes(w, "versioning", vers.ptr, vers.len);
    if (omit || (data.ptr && !data_ok) || (vers.ptr && !vers_ok))
        hs_put_bool(w, "payload_omitted", true);
    hs_payload_end(w);
    return hs_result(w);
}

/* Whether the stream's user filter (the requester's user id) lets the event through. */
static bool user_match(struct pv_request *r, const struct oframe *f)
{
    const uint8_t *u;
    uint32_t ul;
    provider_user_id(r, &u, &ul);
    return ul == 0 || (ul == f->user_id_len && memcmp(u, f->user_id, ul) == 0);
}

static void relay(struct cstate *cs, const struct oframe *h)
{
    struct hs_writer w;
    hs_init(&w, CS_HISTORY_DATA_BYTES_MAX + 4096);
    if (event_payload(&w, h) < 0) {
        hs_free(&w);
        return;
    }
    for (uint32_t i = 0; i < cs->events_w.count; i++)
        if (user_match(cs->events_w.v[i], h))
            provider_stream_private(cs->events_w.v[i], w.buf, (uint32_t)w.len);
    hs_free(&w);
}

void cs_published(struct shard *s, struct campaign *cp, struct oframe *f)
{
    struct cs_shard *sh = cs_shard(s);
    struct cstate *cs = sh ? cs_get(cp, true) : NULL;
    if (!cs || hist_record(s, sh, cs, f) < 0) {
        /* Counted as evicted, so that a replay from here reports the gap. */
        if (cs)
            cs->h_evicted = f->sequence;
        log_warn((int)core_shard_index(s), "out of memory recording campaign history");
        return;
    }
    if (cs->events_w.count)
        relay(cs, f);
}

static void send_gap(struct pv_request *r, uint64_t first, uint64_t last, const char *reason)
{
    uint8_t buf[256];
    struct hs_writer w;
    hs_init(&w, sizeof(buf));
    hs_payload_begin(&w);
    hs_put_cstring(&w, "kind", "gap");
    hs_put_number(&w, "first_sequence", (double)first);
    hs_put_number(&w, "last_sequence", (double)last);
    hs_put_cstring(&w, "reason", reason);
    hs_payload_end(&w);
    if (hs_result(&w) == 0)
        provider_stream_private(r, w.buf, (uint32_t)w.len);
    hs_free(&w);
}

/* core_log_scan's callbacks: a logged event or a range the log no longer holds. */
static void log_event(void *arg, struct oframe *f)
{
    struct pv_request *r = arg;
    if (user_match(r, f)) {
        struct hs_writer w;
        hs_init(&w, CS_HISTORY_DATA_BYTES_MAX + 4096);
        if (event_payload(&w, f) == 0)
            provider_stream_private(r, w.buf, (uint32_t)w.len);
        hs_free(&w);
    }
    oframe_unref(f);
}

static void log_gap(void *arg, uint64_t first, uint64_t last)
{
    send_gap(arg, first, last, "retention");
}

void cs_stream_events_start(struct pv_request *r)
{
    struct structpb_value v;
    int g = cs_arg(r, "from_sequence", &v);
    if (g < 0 || (g > 0 && (v.kind != STRUCTPB_NUMBER || !(v.number >= 0)))) {
        cs_fail(r, "invalid_from_sequence", "`from_sequence` must be a number >= 0");
        return;
    }
    uint64_t from = g > 0 ? (uint64_t)v.number : 0;
    struct cstate *cs = cs_get(provider_campaign(r), true);
    if (!cs || cs_watchers_add(&cs->events_w, r) < 0) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    *provider_state(r) = cs;
    /* Replay, then live: both on this thread, so nothing is published in between. Older than
     * the in-memory history: from the event log when there is one. */
    struct campaign *cp = provider_campaign(r);
    uint64_t hist_first = cs->h_count ? hist_at(cs, 0)->sequence : core_campaign_released(cp) + 1;
    int logged =
        from > 0 && from < hist_first
            ? core_log_scan(provider_shard(r), cp, from, hist_first - 1, log_event, log_gap, r)
            : 0;
    if (logged == -ENOENT && from > 0 && from <= cs->h_evicted)
        send_gap(r, from, cs->h_evicted, "history_evicted");
    else if (logged < 0 && logged != -ENOENT)
        send_gap(r, from, hist_first - 1, "log_unreadable");
    struct hs_writer w;
    hs_init(&w, CS_HISTORY_DATA_BYTES_MAX + 4096);
    for (uint32_t k = 0; k < cs->h_count; k++) {
        const struct oframe *h = hist_at(cs, k);
        if (h->sequence < from || !user_match(r, h))
            continue;
        hs_reset(&w);
        if (event_payload(&w, h) == 0)
            provider_stream_private(r, w.buf, (uint32_t)w.len);
    }
    hs_free(&w);
}

void cs_stream_events_stop(struct pv_request *r)
{
    struct cstate *cs = *provider_state(r);
    if (cs)
        cs_watchers_remove(&cs->events_w, r);
    *provider_state(r) = NULL;
}

/* ---- stream_state ------------------------------------------------------------------------- */

struct state_stream {
    struct cstate *cs;
    uint32_t min_ms;
    int64_t last_push_ns;
    bool dirty, tick_armed;
};

static void push_state(struct pv_request *r, struct state_stream *ss, int64_t now)
{
    struct hs_writer w;
    hs_init(&w, CS_PAYLOAD_BYTES_MAX);
    cs_state_open(&w, ss->cs, provider_campaign_id(r));
    hs_payload_end(&w);
    if (hs_result(&w) == 0 && provider_stream(r, w.buf, (uint32_t)w.len) == 0) {
        ss->last_push_ns = now;
        ss->dirty = false;
    }
    hs_free(&w);
}

void cs_state_changed(struct cstate *cs)
{
    int64_t now = core_now_ns();
    for (uint32_t i = 0; i < cs->state_w.count; i++) {
        struct pv_request *r = cs->state_w.v[i];
        struct state_stream *ss = *provider_state(r);
        int64_t due = ss->last_push_ns + (int64_t)ss->min_ms * 1000000;
        if (!ss->tick_armed && now >= due) {
            push_state(r, ss, now);
            continue;
        }
        /* Pushed recently: fold this change into one push when the interval is up. */
        ss->dirty = true;
        if (!ss->tick_armed) {
            int64_t ms = (due - now + 999999) / 1000000;
            provider_set_tick(r, ms < 1 ? 1 : (uint32_t)ms);
            ss->tick_armed = true;
        }
    }
}

void cs_stream_state_start(struct pv_request *r)
{
    uint32_t ms;
    if (cs_arg_ms(r, "min_interval_ms", CS_PUSH_MS_DEFAULT, CS_PUSH_MS_MIN, CS_PUSH_MS_MAX, &ms) <
        0) {
        cs_fail(r, "invalid_min_interval_ms", "`min_interval_ms` must be a number");
        return;
    }
    struct cstate *cs = cs_get(provider_campaign(r), true);
    struct state_stream *ss = calloc(1, sizeof(*ss));
    if (!cs || !ss || cs_watchers_add(&cs->state_w, r) < 0) {
        free(ss);
        cs_fail(r, "internal", "out of memory");
        return;
    }
    ss->cs = cs;
    ss->min_ms = ms;
    *provider_state(r) = ss;
    push_state(r, ss, core_now_ns());
}

void cs_stream_state_tick(struct pv_request *r, int64_t now_ns)
{
    struct state_stream *ss = *provider_state(r);
    provider_set_tick(r, 0);
    ss->tick_armed = false;
    if (ss->dirty)
        push_state(r, ss, now_ns);
}

void cs_stream_state_stop(struct pv_request *r)
{
    struct state_stream *ss = *provider_state(r);
    if (ss) {
        cs_watchers_remove(&ss->cs->state_w, r);
        free(ss);
    }
    *provider_state(r) = NULL;
}

/* ---- stream_analytics --------------------------------------------------------------------- */

struct analytics_stream {
    uint64_t last_seq;
    int64_t last_ns;
};

static void analytics_sample(struct pv_request *r, struct analytics_stream *a, int64_t now)
{
    struct campaign *cp = provider_campaign(r);
    const struct cstate *cs = cs_get(cp, false);
    double secs = a->last_ns ? (double)(now - a->last_ns) / 1e9 : 0;
    double eps = secs > 0 ? (double)(core_campaign_sequence(cp) - a->last_seq) / secs : 0;
    struct hs_writer w;
    hs_init(&w, CS_PAYLOAD_BYTES_MAX);
    hs_payload_begin(&w);
    cs_put_id(&w, "campaign_id", core_campaign_id(cp));
    hs_put_number(&w, "subscribers", (double)core_campaign_subscribers(provider_shard(r), cp));
    hs_put_number(&w, "state_keys", cs ? cs->state.count : 0);
    hs_put_list_open(&w, "features");
    if (cs)
        hs_map_write_keys(&w, &cs->features);
    hs_end(&w);
    hs_put_number(&w, "last_updated_ms", cs ? (double)(cs->updated_ns / 1000000) : 0);
    hs_put_number(&w, "events_per_second", eps);
    hs_put_number(&w, "open_streams", provider_campaign_streams(cp));
    hs_put_number(&w, "sequence", (double)core_campaign_sequence(cp));
    hs_put_number(&w, "version", cs ? (double)cs->version : 0);
    hs_put_number(&w, "active_sessions", cs ? cs->active_sessions : 0);
    hs_put_number(&w, "history_events", cs ? cs->h_count : 0);
    hs_put_number(&w, "changes", cs ? (double)cs->changes : 0);
    hs_put_number(&w, "rejected", cs ? (double)cs->rejected : 0);
    hs_payload_end(&w);
    if (hs_result(&w) == 0)
        provider_stream(r, w.buf, (uint32_t)w.len);
    hs_free(&w);
    a->last_seq = core_campaign_sequence(cp);
    a->last_ns = now;
}

void cs_stream_analytics_start(struct pv_request *r)
{
    uint32_t ms;
    if (cs_arg_ms(r, "interval_ms", CS_ANALYTICS_MS_DEFAULT, CS_ANALYTICS_MS_MIN,
                  CS_ANALYTICS_MS_MAX, &ms) < 0) {
        cs_fail(r, "invalid_interval_ms", "`interval_ms` must be a number");
        return;
    }
    struct analytics_stream *a = calloc(1, sizeof(*a));
    if (!a) {
        cs_fail(r, "internal", "out of memory");
        return;
    }
    *provider_state(r) = a;
    /* The first sample at once, so a dashboard has numbers before the first interval. */
    analytics_sample(r, a, core_now_ns());
    provider_set_tick(r, ms);
}

void cs_stream_analytics_tick(struct pv_request *r, int64_t now_ns)
{
    analytics_sample(r, *provider_state(r), now_ns);
}

void cs_stream_analytics_stop(struct pv_request *r)
{
    free(*provider_state(r));
    *provider_state(r) = NULL;
}
