// SPDX-License-Identifier: Apache-2.0
//
// The Provider engine of provider.h. Per shard it keeps: the open requests of the campaigns it
// owns (by (campaign, request event id)), a min-heap of their next deadlines (heartbeat,
// handler tick, timeout) driven by one io_uring timeout, the external handler registry (every
// shard holds a copy, since requests for any campaign may arrive at any owner), and per
// requester counts for the per-connection bound. Runs on the owning shard only.
#include "handlers/provider.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "codec/envelope.h"
#include "codec/stats.h"
#include "codec/structpb.h"
#include "codec/wire.h"
#include "handlers/deadline.h"
#include "handlers/provider_gather.h"

/* Hook message kinds (ring_msg.aux). */
enum { PV_REG = 1, PV_REG_ACK = 2 };

/* Longest request event id we keep (the broker caps ids at 256 bytes on entry). */
#define PV_ID_BYTES_MAX 256
/* Actions one connection may register (codec bound). */
#define PV_ACTIONS_PER_CONN_MAX CODEC_HANDLER_SPECS_MAX
/* Metadata of a request served by a handler (docs/HANDLERS.md, "Request metadata"). Metadata
 * is routing context (user, session, device, a few tags and small Structs), not data: 16 KiB
 * holds that many times over. The open request keeps a copy, and `requested`, `started` and
 * the terminal event (and campaign:update's state broadcast) each carry it to every
 * subscriber of the campaign, heartbeats and stream events only the user id (PV_SLIM); so the
 * bound caps both: at --max-streams 100,000 a shard's copies take at most ~1.6 GB (with only
 * --max-frame-bytes, 1 MiB by default, it was ~100 GB), and a request costs each subscriber
 * at most 4 × 16 KiB of metadata however long it runs. A request over it ends
 * failed{limit_exceeded}, like the other bounds on open requests (request_admit), not with an
 * error frame: the requester learns it the way it learns every outcome of a request. */
#define PV_REQUEST_METADATA_BYTES_MAX (16 * 1024)
/* The user id kept in the slim metadata of heartbeats and stream events (pv_slim_build): a
 * subscription's user filter is at most 128 bytes (docs/PROTOCOL.md, subscribe), so a longer
 * user id can match no filter and is left out. */
#define PV_SLIM_USER_BYTES_MAX 128
/* global_context (field 21, tag 2 bytes, length 2 bytes) { user_id (tag 1, length 2 bytes) }. */
#define PV_SLIM_MD_BYTES_MAX (4 + 3 + PV_SLIM_USER_BYTES_MAX)

struct pv_request {
    uint64_t key;
    struct shard *shard;
    struct campaign *cp;
    int64_t campaign_id;
    char id[PV_ID_BYTES_MAX];
    uint32_t id_len;
    char type[EVTYPE_BYTES_MAX + 1]; /* the requested type; lifecycle types derive from it */
    struct evtype t;
    uint64_t requester;
    bool requester_gone;
    const struct handler_row *row; /* built-in, or NULL */
    uint64_t handler_conn;         /* external, or 0 */
    bool streaming;
    bool finishing;
    uint64_t stream_count;
    int64_t started_ns;
    uint32_t heartbeat_ms;
    int64_t next_heartbeat_ns; /* 0: no heartbeats */
    uint32_t tick_ms;
    int64_t next_tick_ns; /* 0: no ticks */
    int64_t deadline_ns;
    /* In the shard's deadline heap (handlers/deadline.h), due at due_of(r): deadline_update
     * stores it whenever one of the three times above changes. */
    struct deadline_node dl;
    uint8_t *metadata; /* copies: lifecycle events carry the request's metadata and entity */
    uint32_t md_len;
    bool has_md;
    /* What heartbeats and stream events carry instead: only global_context.user_id (nothing
     * when there is none), so that user filters match them (pv_slim_build). */
    uint8_t slim[PV_SLIM_MD_BYTES_MAX];
    uint32_t slim_len, slim_user_off;
    uint8_t *payload;
    uint32_t pl_len;
    uint32_t user_off, user_len; /* inside metadata */
    char *entity;
    uint32_t entity_len;
    void *state;
    struct pv_campaign *counted;    /* counted in this campaign's open requests (and streams) */
    struct pv_request *next, *prev; /* all requests of the shard */
};

struct ext_entry {
    uint64_t conn_id;
    bool streaming;
    uint32_t campaign_count;
    int64_t *campaigns;
    uint32_t pending;
};

struct ext_action {
    char name[EVTYPE_BYTES_MAX + 1];
    uint32_t name_len;
    struct ext_entry *v;
    uint32_t count, cap, rr;
};

struct pv_reg_msg {
    uint64_t conn_id;
    uint64_t reg_id;
    uint32_t from_shard;
    struct codec_register reg;
    uint8_t names[]; /* action name bytes the slices point into */
};

struct pv_reg_wait {
    uint64_t conn_id, correlation;
    uint32_t remaining, registered;
    bool failed; /* some shard could not be sent the registration */
};

struct pv_shard {
    struct map requests; /* key -> pv_request */
    struct pv_request *all;
    /* The open requests (their dl nodes), the one due first at the root. */
    struct deadline_heap deadlines;
    struct map actions;  /* xxh3(action name) -> ext_action */
    struct map per_conn; /* requester conn id -> open request count (uintptr_t) */
    struct map reg_waits;
    uint64_t next_reg;
    uint32_t open_streams;
    void *slot[PROVIDER_SLOTS]; /* the modules' per-shard state */
};

/* ---- settings and counters of the Provider's own (registered with the core) --------------- */

/* Defaults: 1 s heartbeats and 30 min streams (docs/DESIGN.md §3.2). Plain requests get 30 s: an
 * external handler that has not answered by then is not going to. 100,000 streams per shard at
 * ~1 KiB each (timers, ids, a small metadata copy) is ~100 MiB; metadata is bounded by
 * PV_REQUEST_METADATA_BYTES_MAX. */
static struct pv_settings {
    uint32_t heartbeat_ms;            /* default stream heartbeat interval */
    uint32_t request_timeout_ms;      /* plain requests served by external handlers */
    uint32_t stream_timeout_ms;       /* streams */
    uint32_t streams_per_shard_max;   /* open streams per shard */
    uint32_t requests_per_conn_max;   /* open requests of one connection, per owning shard */
    uint32_t pending_per_handler_max; /* open requests one external handler holds, per shard */
    bool test_handlers;               /* register the test:* built-in handlers */
} pv_cfg = {
    .heartbeat_ms = 1000,
    .request_timeout_ms = 30000,
    .stream_timeout_ms = 30 * 60 * 1000,
    .streams_per_shard_max = 100000,
    .requests_per_conn_max = 1024,
    .pending_per_handler_max = 10000,
};

static const struct config_setting pv_settings_rows[] = {
    {"heartbeat-ms", CONFIG_SETTING_U32, &pv_cfg.heartbeat_ms, 100, 60000,
     "default stream heartbeat interval"},
    {"request-timeout-ms", CONFIG_SETTING_U32, &pv_cfg.request_timeout_ms, 100, 86400000,
     "timeout of plain requests served by external handlers"},
    {"stream-timeout-ms", CONFIG_SETTING_U32, &pv_cfg.stream_timeout_ms, 100, 86400000,
     "longest a stream may stay open"},
    {"max-streams", CONFIG_SETTING_U32, &pv_cfg.streams_per_shard_max, 1, 100000000,
     "open streams per shard"},
    {"max-requests-per-conn", CONFIG_SETTING_U32, &pv_cfg.requests_per_conn_max, 1, 10000000,
     "open requests of one connection (per owning shard)"},
    {"max-pending-per-handler", CONFIG_SETTING_U32, &pv_cfg.pending_per_handler_max, 1, 10000000,
     "open requests one external handler holds (per shard)"},
    {"test-handlers", CONFIG_SETTING_BOOL, &pv_cfg.test_handlers, 0, 0,
     "register the test:* built-in handlers (echo, fail, stream_ticks)"},
};

void provider_register_settings(void)
{
    int r =
        config_register(pv_settings_rows, sizeof(pv_settings_rows) / sizeof(pv_settings_rows[0]));
    NX_ASSERT(r == 0); /* CONFIG_SETTINGS_MAX is ample for the built-in layers */
}

bool provider_test_handlers_enabled(void)
{
    return pv_cfg.test_handlers;
}

enum {
    PV_STAT_SUCCESS,
    PV_STAT_FAILED,
    PV_STAT_CANCELLED,
    PV_STAT_TIMEOUT,
    PV_STAT_NO_HANDLER,
    PV_STAT_OPEN_STREAMS,
    PV_STAT_HEARTBEATS,
    PV_STAT_HANDLER_LOSSES,
    PV_STATS
};

#define PV_REQUESTS_HELP "Requests ended, by outcome."
#define PV_STATS_OFF(f)  offsetof(struct codec_shard_stats, f)
static const struct stats_def pv_stat_defs[PV_STATS] = {
    [PV_STAT_SUCCESS] = {"nexus_requests_total", "outcome=\"success\"", PV_REQUESTS_HELP, 0,
                         PV_STATS_OFF(req_success)},
    [PV_STAT_FAILED] = {"nexus_requests_total", "outcome=\"failed\"", PV_REQUESTS_HELP, 0,
                        PV_STATS_OFF(req_failed)},
    [PV_STAT_CANCELLED] = {"nexus_requests_total", "outcome=\"cancelled\"", PV_REQUESTS_HELP, 0,
                           PV_STATS_OFF(req_cancelled)},
    [PV_STAT_TIMEOUT] = {"nexus_requests_total", "outcome=\"timeout\"", PV_REQUESTS_HELP, 0,
                         PV_STATS_OFF(req_timeout)},
    [PV_STAT_NO_HANDLER] = {"nexus_requests_total", "outcome=\"no_handler\"", PV_REQUESTS_HELP, 0,
                            PV_STATS_OFF(req_no_handler)},
    [PV_STAT_OPEN_STREAMS] = {"nexus_open_streams", NULL, "Open streams.", 1,
                              PV_STATS_OFF(open_streams)},
    [PV_STAT_HEARTBEATS] = {"nexus_heartbeats_total", NULL, "Stream heartbeats sent.", 0,
                            PV_STATS_OFF(heartbeats)},
    [PV_STAT_HANDLER_LOSSES] = {"nexus_handler_losses_total", NULL,
                                "Requests failed because their handler disconnected.", 0,
                                PV_STATS_OFF(handler_losses)},
};
static int pv_stat[PV_STATS];

/* Rows of the handler table: built-in handlers are few (main.c installs about a dozen). */
#define PV_ROWS_MAX 64
static const struct handler_row *rows_table;
static size_t rows_count;
/* strlen of each row's action, so that looking a type up (on every emit) compares lengths
 * before bytes. */
static uint32_t rows_action_len[PV_ROWS_MAX];

/* The modules the rows name, each once. Built-in families of handlers are few (campaign,
 * media); 8 leaves room. */
#define PV_MODULES_MAX 8
static const struct provider_module *modules[PV_MODULES_MAX];
static size_t module_count;

/* What the Provider keeps in campaign->state: the modules' per-campaign slots and the count
 * of streams open on the campaign. Freed with the shard (campaigns live as long as it). */
struct pv_campaign {
    void *slot[PROVIDER_SLOTS];
    uint32_t open_streams;
    uint32_t open_requests; /* streams included: while any is open the campaign stays */
};

/* The core would free an idle campaign (no subscription, no event for --campaign-idle-ms):
 * kept while a request is open on it or a module keeps something; otherwise every module lets
 * go of its slot and the Provider frees its record. */
static bool pv_campaign_idle(struct shard *s, struct campaign *cp)
{
    struct pv_campaign *pc = *core_campaign_slot(cp);
    if (!pc)
        return true;
    if (pc->open_requests)
        return false;
    bool idle = true;
    for (size_t i = 0; i < module_count; i++)
        if (modules[i]->campaign_idle && !modules[i]->campaign_idle(s, cp))
            idle = false;
    for (int k = 0; k < PROVIDER_SLOTS && idle; k++)
        idle = pc->slot[k] == NULL; /* a module without the callback keeps what it holds */
    if (!idle)
        return false;
    free(pc);
    *core_campaign_slot(cp) = NULL;
    return true;
}

/* The broker's restore hook: the module that asked for the type restores from it. */
static void pv_restore(struct shard *s, struct campaign *cp, const struct oframe *f)
{
    for (size_t i = 0; i < module_count; i++) {
        const struct provider_module *m = modules[i];
        for (size_t k = 0; m->restore && m->restore_types && m->restore_types[k]; k++)
            if (strlen(m->restore_types[k]) == (size_t)(f->type.len) &&
                !memcmp(m->restore_types[k], f->type_str, f->type.len))
                m->restore(s, cp, f);
    }
}

/* The broker's published hook: tells the modules about an event just sequenced. */
static void pv_published(struct shard *s, struct campaign *cp, struct oframe *f)
{
    for (size_t i = 0; i < module_count; i++)
        if (modules[i]->published)
            modules[i]->published(s, cp, f);
}

static bool pv_private(const struct pv_request *r)
{
    return r->row && r->row->unpublished;
}

static inline struct pv_shard *pvs(struct shard *s)
{
    return *core_shard_slot(s);
}

/* ---- accessors ---------------------------------------------------------------------------- */

struct shard *provider_shard(struct pv_request *r)
{
    return r->shard;
}
struct campaign *provider_campaign(struct pv_request *r)
{
    return r->cp;
}
int64_t provider_campaign_id(struct pv_request *r)
{
    return r->campaign_id;
}
uint64_t provider_requester(struct pv_request *r)
{
    return r->requester;
}
void provider_payload(struct pv_request *r, const uint8_t **ptr, uint32_t *len)
{
    *ptr = r->payload;
    *len = r->pl_len;
}
void provider_metadata(struct pv_request *r, const uint8_t **ptr, uint32_t *len)
{
    *ptr = r->metadata;
    *len = r->md_len;
}
void **provider_state(struct pv_request *r)
{
    return &r->state;
}

/* ---- the deadline heap -------------------------------------------------------------------- */

static int64_t due_of(const struct pv_request *r)
{
    int64_t d = r->deadline_ns;
    if (r->next_heartbeat_ns && r->next_heartbeat_ns < d)
        d = r->next_heartbeat_ns;
    if (r->next_tick_ns && r->next_tick_ns < d)
        d = r->next_tick_ns;
    return d;
}

static struct pv_request *request_of(struct deadline_node *n)
{
    return deadline_entry(n, struct pv_request, dl);
}

/* Stores r's due time in its heap node after its deadlines changed (re-sorting it), and, if r
 * is in the heap, arms the shard timer for the earliest. */
static void pv_reschedule(struct pv_shard *p, struct shard *s, struct pv_request *r)
{
    deadline_update(&p->deadlines, &r->dl, due_of(r));
    if (r->dl.idx != DEADLINE_NONE)
        core_timer_at(s, deadline_min(&p->deadlines)->due_ns);
}

/* ---- publishing lifecycle events ---------------------------------------------------------- */

static uint64_t request_key(int64_t campaign, const void *id, uint32_t len)
{
    return XXH3_64bits_withSeed(id, len, (uint64_t)campaign);
}

/* Writes r's slim metadata: global_context {user_id} when the request has a user id of at
 * most PV_SLIM_USER_BYTES_MAX bytes (user, ul), else nothing. */
static void pv_slim_build(struct pv_request *r, const uint8_t *user, uint32_t ul)
{
    r->slim_len = r->slim_user_off = 0;
    if (ul == 0 || ul > PV_SLIM_USER_BYTES_MAX)
        return;
    size_t inner = wire_len_field_len(1, ul);
    uint8_t *p = wire_put_tag(r->slim, 21, WIRE_LEN);
    p = wire_put_varint(p, inner);
    p = wire_put_len_field(p, 1, user, ul);
    r->slim_len = (uint32_t)(p - r->slim);
    r->slim_user_off = r->slim_len - ul;
}

/* Fills p with what every event derived from request r carries: a fresh UUIDv4 (written to
 * uuid, which must outlive p), the type, the request's entity and metadata (and its user id,
 * for user filters) — or, when slim, only the slim metadata (heartbeats, stream events) — the
 * payload, and the request's id as correlation id. Returns 0, or -EINVAL if type is not a
 * valid event type. */
static int pv_fill(struct publish *p, struct pv_request *r, const char *type, size_t tl,
                   char uuid[36], const uint8_t *payload, uint32_t len, bool slim)
{
    memset(p, 0, sizeof(*p));
    if (evtype_parse(&p->type, type, tl, NULL, 0) < 0)
        return -EINVAL;
    core_uuid4(r->shard, uuid);
    p->ev.event_id.ptr = (const uint8_t *)uuid;
    p->ev.event_id.len = 36;
    p->ev.event_type.ptr = (const uint8_t *)type;
    p->ev.event_type.len = (uint32_t)tl;
    p->ev.entity_id.ptr = (const uint8_t *)r->entity;
    p->ev.entity_id.len = r->entity_len;
    if (slim) {
        p->ev.has_metadata = r->slim_len > 0;
        p->ev.metadata.ptr = r->slim;
        p->ev.metadata.len = r->slim_len;
        if (r->slim_len) {
            p->user_id = r->slim + r->slim_user_off;
            p->user_id_len = r->slim_len - r->slim_user_off;
        }
    } else {
        p->ev.has_metadata = r->has_md;
        p->ev.metadata.ptr = r->metadata;
        p->ev.metadata.len = r->md_len;
        if (r->user_len) {
            p->user_id = r->metadata + r->user_off;
            p->user_id_len = r->user_len;
        }
    }
    p->ev.has_payload = payload != NULL;
    p->ev.payload.ptr = payload;
    p->ev.payload.len = payload ? len : 0;
    p->ev.correlation_id.ptr = (const uint8_t *)r->id;
    p->ev.correlation_id.len = r->id_len;
    return 0;
}

/* How pv_publish delivers a lifecycle event; or'ed together, 0 for none. */
enum pv_flags {
    PV_TERMINAL = 1,   /* the request's last event */
    PV_TO_HANDLER = 2, /* also delivered directly to the external handler */
    PV_PRIVATE = 4,    /* to the requester only, outside the campaign sequence (unsequenced) */
    /* Carries the slim metadata (only the user id), not the request's: heartbeats and stream
     * events, which come many per request, must not repeat its metadata (docs/HANDLERS.md,
     * "Request metadata"). */
    PV_SLIM = 8,
};

/* Publishes S:A:vN:<state> for r, delivered directly to the requester too (unless it is
 * gone); flags (enum pv_flags) add the external handler, mark the event terminal, or keep it
 * private to the requester. */
static int pv_publish(struct pv_request *r, enum evtype_state state, const uint8_t *payload,
                      uint32_t len, const char *code, uint64_t stream_seq, unsigned flags)
{
    bool unsequenced = flags & PV_PRIVATE;
    struct shard *s = r->shard;
    char type[EVTYPE_BYTES_MAX + 1];
    int tl = evtype_with_state(&r->t, r->type, state, type, sizeof(type));
    if (tl < 0)
        return tl;
    struct publish p;
    char uuid[36];
    if (pv_fill(&p, r, type, (size_t)tl, uuid, payload, len, flags & PV_SLIM) < 0)
        return -EINVAL;
    p.ev.stream_seq = stream_seq;
    if (code) {
        p.ev.code.ptr = (const uint8_t *)code;
        p.ev.code.len = (uint32_t)strlen(code);
    }
    p.direct_conn = r->requester_gone ? 0 : r->requester;
    p.direct_conn2 = flags & PV_TO_HANDLER ? r->handler_conn : 0;
    p.flags =
        (flags & PV_TERMINAL ? PUBLISH_TERMINAL : 0) | (unsequenced ? PUBLISH_UNSEQUENCED : 0);
    if (unsequenced && !p.direct_conn)
        return 0;
    return core_publish(s, r->cp, &p);
}

static void per_conn_add(struct pv_shard *p, uint64_t conn, int delta)
{
    uintptr_t n = (uintptr_t)map_get(&p->per_conn, conn);
    /* Values are stored +1 so that a count of zero is not a NULL (absent) value. */
    if (n == 0)
        n = 1;
    n = (uintptr_t)((intptr_t)n + delta);
    if (n <= 1)
        map_del(&p->per_conn, conn);
    else
        map_put(&p->per_conn, conn, (void *)n);
}

static struct ext_action *ext_find(struct pv_shard *p, const char *name, size_t len)
{
    if (p->actions.count == 0)
        return NULL;
    struct ext_action *a = map_get(&p->actions, XXH3_64bits(name, len));
    return a && a->name_len == len && memcmp(a->name, name, len) == 0 ? a : NULL;
}

static struct ext_entry *ext_entry_of(struct pv_shard *p, const struct pv_request *r)
{
    size_t al = evtype_prefix_len(&r->t, EVTYPE_SEG_ACTION);
    struct ext_action *a = ext_find(p, r->type, al);
    for (uint32_t i = 0; a && i < a->count; i++)
        if (a->v[i].conn_id == r->handler_conn)
            return &a->v[i];
    return NULL;
}

static void pv_free(struct pv_request *r)
{
    struct pv_shard *p = pvs(r->shard);
    map_del(&p->requests, r->key);
    deadline_remove(&p->deadlines, &r->dl);
    if (r->prev)
        r->prev->next = r->next;
    else
        p->all = r->next;
    if (r->next)
        r->next->prev = r->prev;
    per_conn_add(p, r->requester, -1);
    if (r->handler_conn) {
        struct ext_entry *e = ext_entry_of(p, r);
        if (e && e->pending)
            e->pending--;
    }
    if (r->counted) {
        NX_ASSERT(r->counted->open_requests > 0);
        r->counted->open_requests--;
    }
    if (r->streaming) {
        p->open_streams--;
        if (r->counted)
            r->counted->open_streams--;
        core_counter_sub(r->shard, pv_stat[PV_STAT_OPEN_STREAMS], 1);
    }
    free(r->metadata);
    free(r->payload);
    free(r->entity);
    free(r);
}

void provider_finish(struct pv_request *r, enum evtype_state state, const uint8_t *payload,
                     uint32_t len, const char *code, const char *message)
{
    if (r->finishing)
        return;
    r->finishing = true;
    struct shard *s = r->shard;
    uint8_t buf[CODEC_CONTROL_BYTES_MAX + 256];
    if (!payload && (code || message)) {
        struct structpb_writer w;
        structpb_begin(&w, buf, sizeof(buf));
        if (code)
            structpb_add_string(&w, "code", code, strlen(code));
        if (message)
            structpb_add_string(&w, "message", message, strnlen(message, 256));
        int n = structpb_finish(&w, &payload);
        len = n > 0 ? (uint32_t)n : 0;
        if (n <= 0)
            payload = NULL;
    }
    bool to_handler = r->handler_conn && state != EVTYPE_SUCCESS && state != EVTYPE_FAILED;
    unsigned flags =
        PV_TERMINAL | (to_handler ? PV_TO_HANDLER : 0) | (pv_private(r) ? PV_PRIVATE : 0);
    if (pv_publish(r, state, payload, len, code, 0, flags) < 0)
        log_error((int)core_shard_index(s), "out of memory publishing a terminal event");
    switch (state) {
    case EVTYPE_SUCCESS:
        core_counter_add(s, pv_stat[PV_STAT_SUCCESS], 1);
        break;
    case EVTYPE_CANCELLED:
        core_counter_add(s, pv_stat[PV_STAT_CANCELLED], 1);
        break;
    case EVTYPE_TIMEOUT:
        core_counter_add(s, pv_stat[PV_STAT_TIMEOUT], 1);
        break;
    default:
        core_counter_add(s, pv_stat[PV_STAT_FAILED], 1);
        break;
    }
    if (r->row && r->row->stop)
        r->row->stop(r);
    pv_free(r);
}

int provider_stream(struct pv_request *r, const uint8_t *payload, uint32_t len)
{
    if (r->finishing)
        return 0;
    r->stream_count++;
    return pv_publish(r, EVTYPE_STREAM, payload, len, NULL, r->stream_count, PV_SLIM);
}

void provider_set_tick(struct pv_request *r, uint32_t interval_ms)
{
    r->tick_ms = interval_ms;
    r->next_tick_ns = interval_ms ? core_now_ns() + (int64_t)interval_ms * 1000000 : 0;
    pv_reschedule(pvs(r->shard), r->shard, r);
}

/* ---- requests ----------------------------------------------------------------------------- */

/* Picks an external handler for the action and campaign: round robin over the connections
 * registered, skipping those at their pending bound. Returns NULL if none can take it; *busy
 * tells whether some were registered but all full. */
static struct ext_entry *ext_pick(struct pv_shard *p, const char *type, const struct evtype *t,
                                  int64_t campaign, uint32_t pending_max, bool *busy)
{
    *busy = false;
    struct ext_action *a = ext_find(p, type, evtype_prefix_len(t, EVTYPE_SEG_ACTION));
    if (!a || a->count == 0)
        return NULL;
    for (uint32_t k = 0; k < a->count; k++) {
        struct ext_entry *e = &a->v[(a->rr + k) % a->count];
        bool allowed = e->campaign_count == 0;
        for (uint32_t i = 0; i < e->campaign_count && !allowed; i++)
            allowed = e->campaigns[i] == campaign;
        if (!allowed)
            continue;
        if (e->pending >= pending_max) {
            *busy = true;
            continue;
        }
        a->rr = (a->rr + k + 1) % a->count;
        return e;
    }
    return NULL;
}

static const struct handler_row *row_find(const char *type, const struct evtype *t)
{
    size_t al = evtype_prefix_len(t, EVTYPE_SEG_ACTION);
    for (size_t i = 0; i < rows_count; i++)
        if (rows_action_len[i] == al && memcmp(rows_table[i].action, type, al) == 0)
            return &rows_table[i];
    return NULL;
}

/* A number from the request's payload data, clamped to [lo, hi]; def when absent. */
static uint32_t payload_ms(const uint8_t *pl, uint32_t len, const char *key, uint32_t def,
                           uint32_t lo, uint32_t hi)
{
    struct structpb_value v;
    if (!pl || !len || structpb_payload_get(pl, len, key, &v) != 1 || v.kind != STRUCTPB_NUMBER ||
        v.number != v.number)
        return def;
    double x = v.number < lo ? lo : v.number > hi ? hi : v.number;
    return (uint32_t)x;
}

static void *dup_bytes(const uint8_t *src, uint32_t len)
{
    void *d = malloc(len ? len : 1);
    if (d && len)
        memcpy(d, src, len);
    return d;
}

/* Publishes the emitted event itself (a request or a cancel) unchanged, and acknowledges it.
 * direct: deliver it to that connection too (the handler chosen for it). */
static int publish_emit(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                        const uint8_t *body, struct codec_slice id, int64_t now, uint64_t direct)
{
    struct publish p;
    core_publish_of_emit(&p, m, body, id, now);
    p.direct_conn = direct;
    if (core_publish(s, cp, &p) < 0) {
        core_error_to_conn(s, m->conn_id, m->correlation, "internal", "out of memory");
        return -ENOMEM;
    }
    if (m->correlation)
        core_ack(s, m, body, id, p.ev.sequence, now, false);
    return 0;
}

static const struct handler_row *row_find(const char *type, const struct evtype *t);

/* A request that cannot be served: published (audit), then answered with `failed` and code,
 * through a record on the stack so that the lifecycle event is built the usual way. */
static void fail_request(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                         const uint8_t *body, struct codec_slice id, int64_t now, const char *code,
                         const char *message)
{
    /* A private exchange (media:signal) is acknowledged, never published, even when refused. */
    const struct handler_row *row = row_find((const char *)body + m->type_off, &m->type);
    bool priv = row && row->unpublished;
    if (priv && m->correlation)
        core_ack(s, m, body, id, 0, now, false);
    if (!priv && publish_emit(s, cp, m, body, id, now, 0) < 0)
        return;
    struct pv_request r;
    memset(&r, 0, sizeof(r));
    deadline_node_init(&r.dl); /* never in the heap */
    r.row = row;
    r.shard = s;
    r.cp = cp;
    r.campaign_id = core_campaign_id(cp);
    memcpy(r.id, id.ptr, id.len);
    r.id_len = id.len;
    memcpy(r.type, body + m->type_off, m->type_len);
    r.t = m->type;
    r.requester = m->conn_id;
    r.has_md = m->has_md;
    r.metadata = (uint8_t *)(uintptr_t)(body + m->md_off);
    r.md_len = m->md_len;
    r.user_off = m->user_len ? m->user_off - m->md_off : 0;
    r.user_len = m->user_len;
    pv_slim_build(&r, body + m->user_off, m->user_len);
    r.entity = (char *)(uintptr_t)(body + m->entity_off);
    r.entity_len = m->entity_len;
    uint8_t buf[CODEC_CONTROL_BYTES_MAX + 256];
    struct structpb_writer w;
    const uint8_t *pl = NULL;
    structpb_begin(&w, buf, sizeof(buf));
    structpb_add_string(&w, "code", code, strlen(code));
    structpb_add_string(&w, "message", message, strlen(message));
    int n = structpb_finish(&w, &pl);
    /* Metadata over the bound is not repeated in the refusal: only the user id. */
    bool slim = m->md_len > PV_REQUEST_METADATA_BYTES_MAX;
    pv_publish(&r, EVTYPE_FAILED, n > 0 ? pl : NULL, n > 0 ? (uint32_t)n : 0, code, 0,
               PV_TERMINAL | (priv ? PV_PRIVATE : 0) | (slim ? PV_SLIM : 0));
    if (strcmp(code, "no_handler") == 0)
        core_counter_add(s, pv_stat[PV_STAT_NO_HANDLER], 1);
    else
        core_counter_add(s, pv_stat[PV_STAT_FAILED], 1);
}

static struct pv_request *request_new(struct shard *s, struct campaign *cp,
                                      const struct emit_msg *m, const uint8_t *body,
                                      struct codec_slice id, uint64_t key, int64_t now)
{
    struct pv_request *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->key = key;
    r->shard = s;
    r->cp = cp;
    r->campaign_id = core_campaign_id(cp);
    memcpy(r->id, id.ptr, id.len);
    r->id_len = id.len;
    memcpy(r->type, body + m->type_off, m->type_len);
    r->type[m->type_len] = 0;
    r->t = m->type;
    r->requester = m->conn_id;
    r->started_ns = now;
    deadline_node_init(&r->dl);
    r->has_md = m->has_md;
    r->metadata = dup_bytes(body + m->md_off, m->md_len);
    r->md_len = m->md_len;
    r->user_off = m->user_len ? m->user_off - m->md_off : 0;
    r->user_len = m->user_len;
    pv_slim_build(r, body + m->user_off, m->user_len);
    r->payload = dup_bytes(body + m->pl_off, m->pl_len);
    r->pl_len = m->has_pl ? m->pl_len : 0;
    r->entity = dup_bytes(body + m->entity_off, m->entity_len);
    r->entity_len = m->entity_len;
    if (!r->metadata || !r->payload || !r->entity) {
        free(r->metadata);
        free(r->payload);
        free(r->entity);
        free(r);
        return NULL;
    }
    return r;
}

/* Finds who serves a request: a built-in row, else an external handler (*ext). When neither
 * can, answers it (handler_busy; or a plain event if anyone listens, for services that answer
 * on their own; else no_handler) and returns false. */
static bool request_route(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                          const uint8_t *body, struct codec_slice id, int64_t now,
                          const struct handler_row **row, struct ext_entry **ext)
{
    struct pv_shard *p = pvs(s);
    const struct pv_settings *cfg = &pv_cfg;
    const char *type = (const char *)body + m->type_off;
    bool busy = false;
    *row = row_find(type, &m->type);
    *ext = NULL;
    if (!*row)
        *ext =
            ext_pick(p, type, &m->type, core_campaign_id(cp), cfg->pending_per_handler_max, &busy);
    if (*row || *ext)
        return true;
    if (busy)
        fail_request(s, cp, m, body, id, now, "handler_busy",
                     "every handler of this action is at --max-pending-per-handler");
    else if (core_any_match(s, cp, &m->type, type, m->user_len ? body + m->user_off : NULL,
                            m->user_len))
        publish_emit(s, cp, m, body, id, now, 0);
    else
        fail_request(s, cp, m, body, id, now, "no_handler",
                     "no handler is registered for this action and no subscription matches");
    return false;
}

/* Applies the bounds on open requests (request metadata, per connection, streams per shard)
 * and refuses an id still open (key); answers a refused request and returns false. */
static bool request_admit(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                          const uint8_t *body, struct codec_slice id, int64_t now, bool streaming,
                          uint64_t key)
{
    struct pv_shard *p = pvs(s);
    const struct pv_settings *cfg = &pv_cfg;
    if (m->md_len > PV_REQUEST_METADATA_BYTES_MAX) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request metadata of %u bytes is over the bound of %d bytes",
                 m->md_len, PV_REQUEST_METADATA_BYTES_MAX);
        fail_request(s, cp, m, body, id, now, "limit_exceeded", msg);
        return false;
    }
    uintptr_t open = (uintptr_t)map_get(&p->per_conn, m->conn_id); /* count + 1 */
    if (open > cfg->requests_per_conn_max) {
        fail_request(s, cp, m, body, id, now, "limit_exceeded",
                     "this connection has --max-requests-per-conn requests open here");
        return false;
    }
    if (streaming && p->open_streams >= cfg->streams_per_shard_max) {
        fail_request(s, cp, m, body, id, now, "limit_exceeded",
                     "this shard has --max-streams streams open");
        return false;
    }
    if (map_get(&p->requests, key)) {
        /* Rejected as a frame, not with a lifecycle event: a `failed` carrying this id as
         * correlation would read as the end of the request that is still open. */
        core_error_to_conn(s, m->conn_id, m->correlation, "duplicate_request",
                           "a request with this event id is still open in this campaign");
        return false;
    }
    return true;
}

/* Creates the request's record and enters it in the shard's map and deadline heap. Returns
 * it, or NULL (the requester told) if out of memory. */
static struct pv_request *request_open(struct shard *s, struct campaign *cp,
                                       const struct emit_msg *m, const uint8_t *body,
                                       struct codec_slice id, uint64_t key, int64_t now)
{
    struct pv_shard *p = pvs(s);
    struct pv_request *r = request_new(s, cp, m, body, id, key, now);
    /* The campaign's record counts the request, so that the campaign is not freed under it
     * (pv_campaign_idle): without one the request cannot be opened. */
    if (!r || !provider_campaign_slot(cp, PROVIDER_SLOT_CAMPAIGN) ||
        map_put(&p->requests, key, r) < 0 || deadline_push(&p->deadlines, &r->dl) < 0) {
        if (r) {
            map_del(&p->requests, key);
            free(r->metadata);
            free(r->payload);
            free(r->entity);
            free(r);
        }
        core_error_to_conn(s, m->conn_id, m->correlation, "internal", "out of memory");
        return NULL;
    }
    return r;
}

/* Enters an opened request in the shard's accounting: the list of all requests, the count of
 * its requester, the pending count of its external handler, the open streams. */
static void request_attach(struct shard *s, struct campaign *cp, struct pv_request *r,
                           const struct handler_row *row, struct ext_entry *ext, bool streaming)
{
    struct pv_shard *p = pvs(s);
    r->row = row;
    r->handler_conn = ext ? ext->conn_id : 0;
    r->streaming = streaming;
    r->next = p->all;
    if (p->all)
        p->all->prev = r;
    p->all = r;
    per_conn_add(p, r->requester, +1);
    if (ext)
        ext->pending++;
    r->counted = *core_campaign_slot(cp); /* allocated by request_open */
    NX_ASSERT(r->counted != NULL);
    r->counted->open_requests++;
    if (streaming) {
        p->open_streams++;
        r->counted->open_streams++;
        core_counter_add(s, pv_stat[PV_STAT_OPEN_STREAMS], 1);
    }
}

/* Sets a new request's heartbeats (streams) and timeout, from its payload within the
 * configured bounds, and schedules it. */
static void request_schedule(struct shard *s, struct pv_request *r, int64_t now)
{
    const struct pv_settings *cfg = &pv_cfg;
    if (r->streaming) {
        r->heartbeat_ms =
            payload_ms(r->payload, r->pl_len, "heartbeat_ms", cfg->heartbeat_ms, 100, 60000);
        r->next_heartbeat_ns = now + (int64_t)r->heartbeat_ms * 1000000;
    }
    uint32_t limit = r->streaming ? cfg->stream_timeout_ms : cfg->request_timeout_ms;
    uint32_t timeout_ms = payload_ms(r->payload, r->pl_len, "timeout_ms", limit, 100, limit);
    r->deadline_ns = now + (int64_t)timeout_ms * 1000000;
    pv_reschedule(pvs(s), s, r);
}

static void handle_request(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                           const uint8_t *body, struct codec_slice id, int64_t now)
{
    const struct handler_row *row;
    struct ext_entry *ext;
    if (!request_route(s, cp, m, body, id, now, &row, &ext))
        return;
    const char *type = (const char *)body + m->type_off;
    bool streaming =
        row ? row->streaming : (ext->streaming || evtype_is_streaming_request(&m->type, type));
    uint64_t key = request_key(core_campaign_id(cp), id.ptr, id.len);
    if (!request_admit(s, cp, m, body, id, now, streaming, key))
        return;
    struct pv_request *r = request_open(s, cp, m, body, id, key, now);
    if (!r)
        return;
    request_attach(s, cp, r, row, ext, streaming);
    request_schedule(s, r, now);

    /* requested (to the external handler too), then started, then the handler runs. */
    bool priv = pv_private(r);
    if (priv && m->correlation)
        core_ack(s, m, body, id, 0, now, false);
    if ((!priv && publish_emit(s, cp, m, body, id, now, r->handler_conn) < 0) ||
        pv_publish(r, EVTYPE_STARTED, NULL, 0, NULL, 0, priv ? PV_PRIVATE : 0) < 0) {
        provider_finish(r, EVTYPE_FAILED, NULL, 0, "internal", "out of memory");
        return;
    }
    if (row)
        row->start(r); /* may finish (and free) r */
}

static struct pv_request *find_request(struct pv_shard *p, int64_t campaign, const uint8_t *id,
                                       uint32_t len)
{
    struct pv_request *r = map_get(&p->requests, request_key(campaign, id, len));
    return r && r->campaign_id == campaign && r->id_len == len && memcmp(r->id, id, len) == 0
               ? r
               : NULL;
}

static bool ext_conn_serves(struct pv_shard *p, uint64_t conn, const char *type,
                            const struct evtype *t)
{
    struct ext_action *a = ext_find(p, type, evtype_prefix_len(t, EVTYPE_SEG_ACTION));
    for (uint32_t i = 0; a && i < a->count; i++)
        if (a->v[i].conn_id == conn)
            return true;
    return false;
}

static void handler_reply(struct shard *s, struct pv_request *r, const struct emit_msg *m,
                          const uint8_t *body, struct codec_slice id, int64_t now)
{
    if (m->correlation)
        core_ack(s, m, body, id, 0, now, false);
    const uint8_t *pl = m->has_pl ? body + m->pl_off : NULL;
    switch (m->type.state) {
    case EVTYPE_STREAM:
        if (provider_stream(r, pl, m->pl_len) < 0)
            provider_finish(r, EVTYPE_FAILED, NULL, 0, "internal", "out of memory");
        break;
    case EVTYPE_SUCCESS:
        provider_finish(r, EVTYPE_SUCCESS, pl, m->pl_len, NULL, NULL);
        break;
    default: {
        /* failed: the handler's payload goes out as is; its data.code names the code. */
        char code[64] = "handler_failed";
        struct structpb_value v;
        if (pl && structpb_payload_get(pl, m->pl_len, "code", &v) == 1 &&
            v.kind == STRUCTPB_STRING && v.len > 0 && v.len < sizeof(code)) {
            memcpy(code, v.ptr, v.len);
            code[v.len] = 0;
        }
        provider_finish(r, EVTYPE_FAILED, pl, m->pl_len, code, NULL);
        break;
    }
    }
}

/* A cancel from another connection than the requester's: with accounts, the requester's user
 * (both user ids are the broker's) or an admin may cancel; without, only the requester. */
static bool cancel_allowed(struct pv_request *r, const struct emit_msg *m, const uint8_t *body)
{
    if (!(m->auth & EMIT_AUTH_ACCOUNT))
        return false;
    if (m->auth & EMIT_AUTH_ADMIN)
        return true;
    const uint8_t *u;
    uint32_t ul;
    provider_user_id(r, &u, &ul);
    return ul && ul == m->user_len && memcmp(u, body + m->user_off, ul) == 0;
}

/* The emit hook: requests, cancels and handler replies; everything else is a plain event. */
static bool pv_emit(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                    const uint8_t *body, struct codec_slice id, int64_t now)
{
    struct pv_shard *p = pvs(s);
    const char *type = (const char *)body + m->type_off;
    enum evtype_state st = m->type.state;
    if (st == EVTYPE_REQUESTED) {
        handle_request(s, cp, m, body, id, now);
        return true;
    }
    struct pv_request *r =
        m->corr_len ? find_request(p, core_campaign_id(cp), body + m->corr_off, m->corr_len) : NULL;
    if (r && strncmp(r->type, type, evtype_prefix_len(&r->t, EVTYPE_SEG_VERSION)) != 0)
        r = NULL; /* the correlation id names a request of another action */
    if (st == EVTYPE_CANCEL) {
        if (!m->corr_len)
            return false; /* a plain event whose state is cancel */
        if (!r || (r->requester != m->conn_id && !(m->auth & EMIT_AUTH_ACCOUNT))) {
            core_error_to_conn(s, m->conn_id, m->correlation, "unknown_request",
                               "cancel names no open request of this connection "
                               "(metadata.global_context.correlation_id)");
            return true;
        }
        if (r->requester != m->conn_id && !cancel_allowed(r, m, body)) {
            core_denied_to_conn(s, m->conn_id, m->correlation, PERM_CANCEL,
                                "the request was made by another user (only its user or an "
                                "admin may cancel it)");
            return true;
        }
        if (publish_emit(s, cp, m, body, id, now, r->handler_conn) == 0)
            provider_finish(r, EVTYPE_CANCELLED, NULL, 0, NULL, NULL);
        return true;
    }
    bool reply = st == EVTYPE_STREAM || st == EVTYPE_SUCCESS || st == EVTYPE_FAILED;
    if (reply && m->corr_len && (r || ext_conn_serves(p, m->conn_id, type, &m->type))) {
        if (!r || r->handler_conn != m->conn_id) {
            core_error_to_conn(s, m->conn_id, m->correlation, "unknown_request",
                               "this connection holds no open request with that "
                               "correlation_id");
            return true;
        }
        handler_reply(s, r, m, body, id, now);
        return true;
    }
    /* The states the broker emits for an action with a handler are not for clients to forge. */
    size_t al = evtype_prefix_len(&m->type, EVTYPE_SEG_ACTION);
    if (st != EVTYPE_COMPLETED && (row_find(type, &m->type) || ext_find(p, type, al))) {
        char msg[EVTYPE_BYTES_MAX + 96];
        snprintf(msg, sizeof(msg),
                 "state %s of %.*s is emitted by the broker: that action has a handler",
                 evtype_state_name(st), (int)al, type);
        core_error_to_conn(s, m->conn_id, m->correlation, "invalid_event_type", msg);
        return true;
    }
    return false;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void heartbeat(struct pv_request *r, int64_t now)
{
    uint8_t buf[128];
    struct structpb_writer w;
    const uint8_t *pl;
    structpb_begin(&w, buf, sizeof(buf));
    structpb_add_number(&w, "stream_count", (double)r->stream_count);
    structpb_add_number(&w, "age_ms", (double)((now - r->started_ns) / 1000000));
    int n = structpb_finish(&w, &pl);
    if (n > 0 && pv_publish(r, EVTYPE_HEARTBEAT, pl, (uint32_t)n, NULL, r->stream_count,
                            PV_PRIVATE | PV_SLIM) == 0)
        core_counter_add(r->shard, pv_stat[PV_STAT_HEARTBEATS], 1);
}

static int64_t next_after(int64_t due, uint32_t ms, int64_t now)
{
    due += (int64_t)ms * 1000000;
    return due <= now ? now + (int64_t)ms * 1000000 : due;
}

static void pv_timer(struct shard *s, int64_t now)
{
    struct pv_shard *p = pvs(s);
    /* Bounded per call, so that a burst of due timers cannot starve the sockets. */
    for (int budget = 4096; budget > 0 && deadline_count(&p->deadlines); budget--) {
        struct pv_request *r = request_of(deadline_min(&p->deadlines));
        if (r->dl.due_ns > now)
            break;
        if (now >= r->deadline_ns) {
            provider_finish(r, EVTYPE_TIMEOUT, NULL, 0, "timeout",
                            r->streaming ? "the stream outlived its limit"
                                         : "the handler did not answer in time");
            continue;
        }
        if (r->next_heartbeat_ns && now >= r->next_heartbeat_ns) {
            heartbeat(r, now);
            r->next_heartbeat_ns = next_after(r->next_heartbeat_ns, r->heartbeat_ms, now);
        }
        bool tick = r->next_tick_ns && now >= r->next_tick_ns;
        if (tick)
            r->next_tick_ns = next_after(r->next_tick_ns, r->tick_ms, now);
        deadline_update(&p->deadlines, &r->dl, due_of(r));
        if (tick && r->row && r->row->tick)
            r->row->tick(r, now); /* may finish (and free) r */
    }
    struct deadline_node *first = deadline_min(&p->deadlines);
    if (first)
        core_timer_at(s, first->due_ns);
}

/* ---- connections that went away ----------------------------------------------------------- */

static void ext_remove_conn(struct pv_shard *p, uint64_t conn)
{
    for (uint32_t i = 0; p->actions.slots && i <= p->actions.mask; i++) {
        struct ext_action *a = p->actions.slots[i].val;
        if (!a)
            continue;
        for (uint32_t k = 0; k < a->count;) {
            if (a->v[k].conn_id == conn) {
                free(a->v[k].campaigns);
                a->v[k] = a->v[--a->count];
            } else {
                k++;
            }
        }
        if (a->count) {
            a->rr %= a->count;
        } else {
            /* No handler left: the action is unhandled again (no_handler, plain events). */
            map_del(&p->actions, p->actions.slots[i].key);
            free(a->v);
            free(a);
            i--; /* backward-shift deletion may have moved another entry into slot i */
        }
    }
}

static void pv_conn_gone(struct shard *s, uint64_t conn)
{
    struct pv_shard *p = pvs(s);
    struct pv_request *r = p->all;
    while (r) {
        struct pv_request *next = r->next; /* provider_finish frees only r */
        if (r->requester == conn) {
            /* Nothing goes to the vanished requester; the handler and the campaign learn. */
            r->requester_gone = true;
            provider_finish(r, EVTYPE_CANCELLED, NULL, 0, NULL, "requester disconnected");
        } else if (r->handler_conn == conn) {
            core_counter_add(s, pv_stat[PV_STAT_HANDLER_LOSSES], 1);
            r->handler_conn = 0;
            provider_finish(r, EVTYPE_FAILED, NULL, 0, "handler_lost",
                            "the handler serving this request disconnected");
        }
        r = next;
    }
    ext_remove_conn(p, conn);
    map_del(&p->per_conn, conn);
    for (size_t i = 0; i < module_count; i++)
        if (modules[i]->conn_gone)
            modules[i]->conn_gone(s, conn);
}

/* ---- external handler registration -------------------------------------------------------- */

static int ext_add(struct pv_shard *p, uint64_t conn, const struct codec_handler_spec *sp)
{
    const char *name = (const char *)sp->action.ptr;
    uint32_t len = sp->action.len;
    struct ext_action *a = ext_find(p, name, len);
    if (!a) {
        a = calloc(1, sizeof(*a));
        if (!a)
            return -ENOMEM;
        memcpy(a->name, name, len);
        a->name_len = len;
        if (map_put(&p->actions, XXH3_64bits(name, len), a) < 0) {
            free(a);
            return -ENOMEM;
        }
    }
    for (uint32_t i = 0; i < a->count; i++)
        if (a->v[i].conn_id == conn)
            return 0; /* already registered: idempotent */
    if (GROW(a->v, a->cap, a->count + 1, 4) < 0)
        return -ENOMEM;
    struct ext_entry *e = &a->v[a->count];
    memset(e, 0, sizeof(*e));
    e->conn_id = conn;
    e->streaming = sp->streaming;
    if (sp->campaign_count) {
        e->campaigns = malloc(sizeof(int64_t) * sp->campaign_count);
        if (!e->campaigns)
            return -ENOMEM;
        memcpy(e->campaigns, sp->campaigns, sizeof(int64_t) * sp->campaign_count);
        e->campaign_count = sp->campaign_count;
    }
    a->count++;
    return 0;
}

static void reg_apply(struct shard *s, const struct pv_reg_msg *rm)
{
    for (uint32_t i = 0; i < rm->reg.count; i++)
        if (ext_add(pvs(s), rm->conn_id, &rm->reg.specs[i]) < 0)
            log_error((int)core_shard_index(s), "out of memory registering a handler");
}

static void reg_done(struct shard *s, uint64_t reg_id)
{
    struct pv_shard *p = pvs(s);
    struct pv_reg_wait *w = map_get(&p->reg_waits, reg_id);
    if (!w || --w->remaining)
        return;
    map_del(&p->reg_waits, reg_id);
    if (w->failed) {
        /* Some shard never got it: say so rather than acknowledge a partial registration
         * (registering again is idempotent). */
        core_error_to_conn(s, w->conn_id, w->correlation, "internal",
                           "out of memory: the registration did not reach every shard");
    } else {
        uint8_t buf[CODEC_CONTROL_BYTES_MAX];
        int n = codec_register_ack_encode(buf, sizeof(buf), w->correlation, w->registered);
        if (n > 0)
            core_bytes_to_conn(s, w->conn_id, buf, (size_t)n);
    }
    free(w);
}

/* Decodes a register frame into a message that owns a copy of the body (the slices point
 * into it) and checks that every action is `service:action`, as the type S:A:v1:requested
 * would be. Returns it, or NULL after telling the connection what was wrong. */
static struct pv_reg_msg *reg_decode(struct conn *c, uint64_t corr, const uint8_t *body,
                                     uint32_t len)
{
    struct pv_reg_msg *rm = malloc(sizeof(*rm) + len);
    if (!rm) {
        core_conn_error(c, corr, "internal", "out of memory");
        return NULL;
    }
    char err[CODEC_ERR_BYTES];
    memcpy(rm->names, body, len);
    int r = codec_register_decode(rm->names, len, &rm->reg, err);
    if (r < 0) {
        free(rm);
        core_conn_error(c, corr, r == -E2BIG ? "limit_exceeded" : "bad_protobuf", "%s", err);
        return NULL;
    }
    for (uint32_t i = 0; i < rm->reg.count; i++) {
        const struct codec_handler_spec *sp = &rm->reg.specs[i];
        char probe[EVTYPE_BYTES_MAX + 32];
        char terr[EVTYPE_ERR_BYTES] = "expected service:action";
        struct evtype t;
        int pl = snprintf(probe, sizeof(probe), "%.*s:v1:requested", (int)sp->action.len,
                          (const char *)sp->action.ptr);
        if (sp->action.len > EVTYPE_BYTES_MAX ||
            memchr(sp->action.ptr, ':', sp->action.len) == NULL ||
            evtype_parse(&t, probe, (size_t)pl, terr, sizeof(terr)) < 0 ||
            evtype_prefix_len(&t, EVTYPE_SEG_ACTION) != sp->action.len) {
            core_conn_error(c, corr, "invalid_event_type",
                            "handler action %u must be service:action (%s)", i + 1,
                            sp->action.len ? terr : "empty");
            free(rm);
            return NULL;
        }
        if (!core_conn_may(c, PERM_HANDLE, &t, probe)) {
            core_conn_denied(c, corr, PERM_HANDLE, "this user may not handle %.*s",
                             (int)sp->action.len, (const char *)sp->action.ptr);
            free(rm);
            return NULL;
        }
    }
    return rm;
}

/* Sends every other shard its own copy of the registration rm (whose body is len bytes), the
 * slices rebased onto the copy. Returns how many shards could not be sent one (out of
 * memory); each of those counts as answered, and the wait w is marked failed. */
static void reg_broadcast(struct shard *s, const struct pv_reg_msg *rm, uint32_t len,
                          struct pv_reg_wait *w)
{
    uint32_t n = core_shard_count(s);
    for (uint32_t d = 0; d < n; d++) {
        if (d == core_shard_index(s))
            continue;
        struct pv_reg_msg *cp = malloc(sizeof(*cp) + len);
        if (cp) {
            memcpy(cp, rm, sizeof(*cp) + len);
            for (uint32_t i = 0; i < cp->reg.count; i++)
                cp->reg.specs[i].action.ptr = cp->names + (rm->reg.specs[i].action.ptr - rm->names);
        }
        if (!cp || core_send(s, d, CORE_REQUEST, PV_REG, cp, 0) < 0) {
            log_error((int)core_shard_index(s), "out of memory broadcasting a registration");
            free(cp);
            w->failed = true;
            w->remaining--;
        }
    }
}

/* A register frame: every shard applies the registration, and the last to do so acknowledges
 * it (reg_done). Other frame kinds are refused. */
static void pv_frame(struct conn *c, uint32_t kind, uint64_t corr, const uint8_t *body,
                     uint32_t len)
{
    struct shard *s = core_conn_shard(c);
    if (kind != CODEC_KIND_REGISTER) {
        if (codec_kind_from_broker(kind))
            core_conn_error(c, corr, "unknown_frame",
                            "frame kind %s (%u) is sent by the broker, not by clients",
                            codec_kind_name(kind), kind);
        else
            core_conn_error(c, corr, "unknown_frame", "unknown frame kind %u", kind);
        return;
    }
    struct pv_reg_msg *rm = reg_decode(c, corr, body, len);
    if (!rm)
        return;
    uint32_t n = core_shard_count(s);
    struct pv_shard *p = pvs(s);
    struct pv_reg_wait *w = calloc(1, sizeof(*w));
    uint64_t reg_id = ++p->next_reg;
    if (!w || map_put(&p->reg_waits, reg_id, w) < 0) {
        free(w);
        free(rm);
        core_conn_error(c, corr, "internal", "out of memory");
        return;
    }
    w->conn_id = core_conn_id(c);
    w->correlation = corr;
    w->remaining = n;
    w->registered = rm->reg.count;
    rm->conn_id = core_conn_id(c);
    rm->reg_id = reg_id;
    rm->from_shard = core_shard_index(s);
    core_conn_notify(c, core_all_shards(s)); /* every shard holds its registration */
    reg_broadcast(s, rm, len, w);
    reg_apply(s, rm);
    free(rm);
    reg_done(s, reg_id);
}

static void pv_msg(struct shard *s, uint32_t aux, void *ptr, uint64_t arg)
{
    if (aux == PV_REG) {
        struct pv_reg_msg *rm = ptr;
        reg_apply(s, rm);
        if (core_send(s, rm->from_shard, CORE_DELIVERY, PV_REG_ACK, NULL, rm->reg_id) < 0)
            log_error((int)core_shard_index(s),
                      "out of memory acknowledging a registration: its frame gets no answer");
        free(rm);
    } else if (aux == PV_REG_ACK) {
        reg_done(s, arg);
    } else if (pv_gather_owns(aux)) {
        pv_gather_msg(s, aux, ptr);
    }
}

static void pv_msg_free(uint32_t aux, void *ptr, uint64_t arg)
{
    (void)arg;
    if (aux == PV_REG)
        free(ptr);
    else if (pv_gather_owns(aux))
        pv_gather_msg_free(aux, ptr);
}

/* ---- set-up ------------------------------------------------------------------------------- */

static int pv_shard_init(struct shard *s)
{
    struct pv_shard *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    map_init(&p->requests);
    map_init(&p->actions);
    map_init(&p->per_conn);
    map_init(&p->reg_waits);
    deadline_heap_init(&p->deadlines);
    *core_shard_slot(s) = p;
    for (size_t i = 0; i < module_count; i++) {
        int r = modules[i]->shard_init ? modules[i]->shard_init(s) : 0;
        if (r < 0)
            return r;
    }
    return 0;
}

static void pv_shard_free(struct shard *s)
{
    struct pv_shard *p = pvs(s);
    if (!p)
        return;
    while (p->all) {
        struct pv_request *r = p->all;
        if (r->row && r->row->stop)
            r->row->stop(r);
        pv_free(r);
    }
    for (size_t i = 0; i < module_count; i++)
        if (modules[i]->shard_free)
            modules[i]->shard_free(s);
    pv_gather_shard_free(s);
    for (uint32_t i = 0; i < core_campaign_slots(s); i++) {
        struct campaign *cp = core_campaign_at(s, i);
        if (cp) {
            free(*core_campaign_slot(cp));
            *core_campaign_slot(cp) = NULL;
        }
    }
    for (uint32_t i = 0; p->actions.slots && i <= p->actions.mask; i++) {
        struct ext_action *a = p->actions.slots[i].val;
        if (!a)
            continue;
        for (uint32_t k = 0; k < a->count; k++)
            free(a->v[k].campaigns);
        free(a->v);
        free(a);
    }
    for (uint32_t i = 0; p->reg_waits.slots && i <= p->reg_waits.mask; i++)
        free(p->reg_waits.slots[i].val);
    map_free(&p->requests);
    map_free(&p->actions);
    map_free(&p->per_conn);
    map_free(&p->reg_waits);
    deadline_heap_free(&p->deadlines);
    free(p);
    *core_shard_slot(s) = NULL;
}

static const struct core_hooks pv_hooks = {
    .shard_init = pv_shard_init,
    .shard_free = pv_shard_free,
    .emit = pv_emit,
    .frame = pv_frame,
    .msg = pv_msg,
    .conn_gone = pv_conn_gone,
    .timer = pv_timer,
    .published = pv_published,
    .campaign_idle = pv_campaign_idle,
    .msg_free = pv_msg_free,
    .restore = pv_restore,
};

void provider_install(const struct handler_row *rows, size_t count)
{
    /* The table is validated once, here: a bad row is a programming error. */
    if (count > PV_ROWS_MAX) {
        log_error(-1, "handler table has %zu rows, more than %d", count, PV_ROWS_MAX);
        abort();
    }
    for (size_t i = 0; i < count; i++) {
        char probe[EVTYPE_BYTES_MAX + 32];
        struct evtype t;
        char err[EVTYPE_ERR_BYTES];
        int n = snprintf(probe, sizeof(probe), "%s:v1:requested", rows[i].action);
        if (evtype_parse(&t, probe, (size_t)n, err, sizeof(err)) < 0 ||
            evtype_prefix_len(&t, EVTYPE_SEG_ACTION) != strlen(rows[i].action) || !rows[i].start) {
            log_error(-1, "handler table row %zu (%s) is invalid: %s", i, rows[i].action, err);
            abort();
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(rows[k].action, rows[i].action) == 0) {
                log_error(-1, "handler table lists %s twice", rows[i].action);
                abort();
            }
    }
    rows_table = rows;
    rows_count = count;
    for (size_t i = 0; i < count; i++)
        rows_action_len[i] = (uint32_t)strlen(rows[i].action);
    for (size_t i = 0; i < count; i++) {
        const struct provider_module *mod = rows[i].module;
        size_t k = 0;
        while (mod && k < module_count && modules[k] != mod)
            k++;
        if (!mod || k < module_count)
            continue;
        if (module_count == PV_MODULES_MAX) {
            log_error(-1, "handler table names more than %d modules", PV_MODULES_MAX);
            abort();
        }
        modules[module_count++] = mod;
        if (mod->install)
            mod->install();
    }
    /* The state snapshots the modules restore from the event log at start. */
    static const char *restore_types[16];
    size_t nt = 0;
    for (size_t i = 0; i < module_count; i++)
        for (size_t k = 0; modules[i]->restore_types && modules[i]->restore_types[k]; k++)
            if (nt < sizeof(restore_types) / sizeof(restore_types[0]) - 1)
                restore_types[nt++] = modules[i]->restore_types[k];
    restore_types[nt] = NULL;
    core_restore_types = restore_types;
    for (int i = 0; i < PV_STATS; i++) {
        pv_stat[i] = stats_register(&pv_stat_defs[i]);
        NX_ASSERT(pv_stat[i] >= 0); /* STATS_EXT_MAX is ample for the built-in layers */
    }
    core_set_hooks(&pv_hooks);
}

/* ---- for the built-in modules (provider.h) ------------------------------------------------ */

void **provider_shard_slot(struct shard *s, enum provider_slot slot)
{
    return &pvs(s)->slot[slot];
}

void **provider_campaign_slot(struct campaign *cp, enum provider_slot slot)
{
    void **cs = core_campaign_slot(cp);
    if (!*cs && !(*cs = calloc(1, sizeof(struct pv_campaign))))
        return NULL;
    return &((struct pv_campaign *)*cs)->slot[slot];
}

uint32_t provider_campaign_streams(struct campaign *cp)
{
    const struct pv_campaign *pc = *core_campaign_slot(cp);
    return pc ? pc->open_streams : 0;
}

void provider_request_id(struct pv_request *r, const char **id, uint32_t *len)
{
    *id = r->id;
    *len = r->id_len;
}

void provider_user_id(struct pv_request *r, const uint8_t **ptr, uint32_t *len)
{
    *ptr = r->user_len ? r->metadata + r->user_off : NULL;
    *len = r->user_len;
}

int provider_stream_private(struct pv_request *r, const uint8_t *payload, uint32_t len)
{
    if (r->finishing)
        return 0;
    r->stream_count++;
    return pv_publish(r, EVTYPE_STREAM, payload, len, NULL, r->stream_count, PV_PRIVATE | PV_SLIM);
}

/* Publishes an event of any type, correlated with r and carrying its metadata and entity, to
 * the campaign's subscribers (not directly to the requester). */
static int pv_publish_typed(struct pv_request *r, const char *type, const uint8_t *payload,
                            uint32_t len)
{
    struct publish p;
    char uuid[36];
    if (pv_fill(&p, r, type, strlen(type), uuid, payload, len, false) < 0)
        return -EINVAL;
    return core_publish(r->shard, r->cp, &p);
}

void provider_finish_and_publish(struct pv_request *r, const uint8_t *payload, uint32_t len,
                                 const char *event_type, const uint8_t *fpl, uint32_t flen)
{
    if (r->finishing)
        return;
    /* provider_finish frees r: the follow-up is built from a copy of what it needs. */
    struct pv_request copy = *r;
    copy.metadata = dup_bytes(r->metadata, r->md_len);
    copy.entity = dup_bytes((const uint8_t *)r->entity, r->entity_len);
    provider_finish(r, EVTYPE_SUCCESS, payload, len, NULL, NULL);
    if (!copy.metadata || !copy.entity || pv_publish_typed(&copy, event_type, fpl, flen) < 0)
        log_error((int)core_shard_index(copy.shard), "out of memory publishing %s", event_type);
    free(copy.metadata);
    free(copy.entity);
}
