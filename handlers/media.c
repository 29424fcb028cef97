// SPDX-License-Identifier: Apache-2.0
//
// The media room handlers of media.h. Per campaign (its PROVIDER_SLOT_MEDIA slot): the rooms,
// sorted by context id, and the streams watching them; per room: its peers (in join order),
// its state (key → google.protobuf.Value, merged like campaign state) and counters; per shard
// (its slot): an index from connection id to that connection's peers here, so that a closing
// connection leaves every room at once. Members hear about their room on their own connection
// (private `media:stream_rooms:v1:stream` events, correlated with their join request);
// watchers get the same news as stream events of their stream_rooms / stream_peers request.
// Everything runs on the shard that owns the campaign.
#include "handlers/media.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/stats.h"
#include "codec/wire.h"
#include "handlers/hstruct.h"

/* ---- limits (docs/HANDLERS.md) ---- */

/* Rooms per campaign: a campaign is an event or a product, rooms are its calls; 1024 open at
 * once is far past any deployment of the ancestor, and bounds a snapshot. */
#define MEDIA_ROOMS_MAX 1024
/* Peers per room: a mesh call stops working well past ~8 peers and an SFU call's signalling
 * room rarely passes a few dozen; 64 bounds the per-event fan-out to members. */
#define MEDIA_PEERS_MAX 64
/* context_id and peer_id: ids, not documents. */
#define MEDIA_ID_BYTES_MAX 128
/* Room state: small shared facts (who is presenting, layout, mute flags). */
#define MEDIA_STATE_KEYS_MAX        256
#define MEDIA_STATE_VALUE_BYTES_MAX (16 * 1024)
#define MEDIA_STATE_BYTES_MAX       (64 * 1024)
/* One signal: an SDP offer with many candidates is ~10 KiB; 64 KiB is generous. */
#define MEDIA_SIGNAL_BYTES_MAX (64 * 1024)
/* Largest payload built: a room's full state and its peer list, or a signal, plus framing. */
#define MEDIA_PAYLOAD_BYTES_MAX (MEDIA_STATE_BYTES_MAX + MEDIA_SIGNAL_BYTES_MAX + 32 * 1024)
/* Rooms listed in a snapshot or a statistics sample (the counts cover all of them). */
#define MEDIA_LIST_ROOMS_MAX 256
/* media:stream_webrtc: every 2 s by default (docs/DESIGN.md §4.2); interval_ms 500 .. 60000. */
#define MEDIA_WEBRTC_MS_DEFAULT 2000
#define MEDIA_WEBRTC_MS_MIN     500
#define MEDIA_WEBRTC_MS_MAX     60000
/* Longest request event id kept for correlation (the broker caps event ids at 256 bytes). */
#define MEDIA_CORR_BYTES_MAX 256

struct mroom;

struct mpeer {
    struct mroom *room;
    struct mpeer *conn_next; /* the connection's other peers on this shard */
    uint64_t conn;
    int64_t joined_ns;
    uint64_t stream_seq; /* room events sent to this peer */
    uint32_t id_len, corr_len;
    char id[MEDIA_ID_BYTES_MAX];
    char corr[MEDIA_CORR_BYTES_MAX]; /* its join request's event id */
};

struct mcampaign;

struct mroom {
    struct mcampaign *mc;
    uint32_t ctx_len;
    char ctx[MEDIA_ID_BYTES_MAX];
    struct mpeer *peers[MEDIA_PEERS_MAX]; /* in join order */
    uint32_t n_peers;
    struct hs_map state;
    uint64_t version, signals;
    int64_t created_ns, active_ns;
};

enum mwatch_kind { MW_ROOMS, MW_PEERS };

/* A stream_rooms / stream_peers / stream_webrtc request's state: an optional room filter. */
struct mwatch {
    struct mcampaign *mc;
    enum mwatch_kind kind;
    uint32_t ctx_len; /* 0: every room */
    char ctx[MEDIA_ID_BYTES_MAX];
};

struct mcampaign {
    struct campaign *cp;
    struct mroom **rooms; /* sorted by context id */
    uint32_t n_rooms, cap;
    struct pv_request **watch; /* stream_rooms and stream_peers requests */
    uint32_t n_watch, watch_cap;
    uint32_t peers;
};

struct mshard {
    struct map conn_peers; /* conn id -> first struct mpeer of that connection here */
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* The module's gauges (registered at install: /metrics and the stats frame show them). */
static const struct stats_def media_rooms_def = {
    .name = "nexus_media_rooms",
    .help = "Media rooms open.",
    .gauge = 1,
    .stats_frame_off = offsetof(struct codec_shard_stats, media_rooms),
};
static const struct stats_def media_peers_def = {
    .name = "nexus_media_peers",
    .help = "Peers in media rooms.",
    .gauge = 1,
    .stats_frame_off = offsetof(struct codec_shard_stats, media_peers),
};
static int media_rooms_stat, media_peers_stat;

static void media_install(void)
{
    media_rooms_stat = stats_register(&media_rooms_def);
    media_peers_stat = stats_register(&media_peers_def);
    NX_ASSERT(media_rooms_stat >= 0 && media_peers_stat >= 0); /* STATS_EXT_MAX is ample */
}

static struct mshard *mshard(struct shard *s)
{
    return *provider_shard_slot(s, PROVIDER_SLOT_MEDIA);
}

static struct mcampaign *mc_get(struct campaign *cp, bool create)
{
    void **slot =
        create || *core_campaign_slot(cp) ? provider_campaign_slot(cp, PROVIDER_SLOT_MEDIA) : NULL;
    if (!slot)
        return NULL;
    if (!*slot && create) {
        struct mcampaign *mc = calloc(1, sizeof(*mc));
        if (!mc)
            return NULL;
        mc->cp = cp;
        *slot = mc;
    }
    return *slot;
}

static void fail(struct pv_request *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct pv_request *r, const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    provider_finish(r, EVTYPE_FAILED, NULL, 0, code, msg);
}

/* A field of the payload data: 1 with *v, 0 absent, -EBADMSG. */
static int arg(struct pv_request *r, const char *key, struct structpb_value *v)
{
    const uint8_t *pl;
    uint32_t len;
    provider_payload(r, &pl, &len);
    return len ? structpb_payload_get(pl, len, key, v) : 0;
}

/* A required (or optional) id field: a UTF-8 string of 1..128 bytes. Returns 1 with the id, 0
 * if absent and optional, -1 after failing r with missing_<key> / invalid_<key>. */
static int arg_id(struct pv_request *r, const char *key, bool required, struct structpb_value *v)
{
    int g = arg(r, key, v);
    if (g < 0) {
        fail(r, "invalid_payload", "the payload is not a common.Payload with a data Struct");
        return -1;
    }
    if (g == 0 && !required)
        return 0;
    if (g == 0 || v->kind != STRUCTPB_STRING || v->len == 0 || v->len > MEDIA_ID_BYTES_MAX ||
        !wire_utf8_valid(v->ptr, v->len)) {
        char code[64];
        snprintf(code, sizeof(code), "%s_%s", g ? "invalid" : "missing", key);
        fail(r, code, "`%s` must be a string of 1..%d bytes", key, MEDIA_ID_BYTES_MAX);
        return -1;
    }
    return 1;
}

static int64_t ms_of(int64_t ns)
{
    return ns / 1000000;
}

/* ---- rooms -------------------------------------------------------------------------------- */

static struct hs_key room_key(const void *elem)
{
    const struct mroom *room = elem;
    return (struct hs_key){room->ctx, room->ctx_len};
}

/* Index of the room with this context id, or where it would go. */
static uint32_t room_find(const struct mcampaign *mc, const void *ctx, uint32_t len, bool *found)
{
    return hs_bytes_search((void *const *)mc->rooms, mc->n_rooms, room_key, ctx, len, found);
}

static struct mroom *room_get(const struct mcampaign *mc, const void *ctx, uint32_t len)
{
    bool found;
    uint32_t i = mc ? room_find(mc, ctx, len, &found) : 0;
    return mc && found ? mc->rooms[i] : NULL;
}

static struct mpeer *peer_by_conn(const struct mroom *room, uint64_t conn)
{
    for (uint32_t i = 0; room && i < room->n_peers; i++)
        if (room->peers[i]->conn == conn)
            return room->peers[i];
    return NULL;
}

static struct mpeer *peer_by_id(const struct mroom *room, const void *id, uint32_t len)
{
    for (uint32_t i = 0; room && i < room->n_peers; i++)
        if (room->peers[i]->id_len == len && memcmp(room->peers[i]->id, id, len) == 0)
            return room->peers[i];
    return NULL;
}

/* ---- telling members and watchers --------------------------------------------------------- */

/* One private media:stream_rooms:v1:stream event to a member, on its own connection. */
static void send_member(struct shard *s, struct campaign *cp, struct mpeer *p, const uint8_t *pl,
                        uint32_t len)
{
    static const char type[] = "media:stream_rooms:v1:stream";
    struct publish pb;
    memset(&pb, 0, sizeof(pb));
    if (evtype_parse(&pb.type, type, sizeof(type) - 1, NULL, 0) < 0)
        return;
    char uuid[36];
    core_uuid4(s, uuid);
    pb.ev.event_id.ptr = (const uint8_t *)uuid;
    pb.ev.event_id.len = 36;
    pb.ev.event_type.ptr = (const uint8_t *)type;
    pb.ev.event_type.len = sizeof(type) - 1;
    pb.ev.entity_id.ptr = (const uint8_t *)p->room->ctx;
    pb.ev.entity_id.len = p->room->ctx_len;
    pb.ev.has_payload = true;
    pb.ev.payload.ptr = pl;
    pb.ev.payload.len = len;
    pb.ev.correlation_id.ptr = (const uint8_t *)p->corr;
    pb.ev.correlation_id.len = p->corr_len;
    pb.ev.stream_seq = ++p->stream_seq;
    pb.direct_conn = p->conn;
    pb.flags = PUBLISH_UNSEQUENCED; /* to this connection only, outside the campaign sequence */
    if (core_publish(s, cp, &pb) < 0)
        log_warn((int)core_shard_index(s), "out of memory telling a room member");
}

/* Tells every member of the room but `except` (may be NULL). */
static void tell_room(struct shard *s, struct mroom *room, const struct mpeer *except,
                      const struct hs_writer *w)
{
    for (uint32_t i = 0; i < room->n_peers; i++)
        if (room->peers[i] != except)
            send_member(s, room->mc->cp, room->peers[i], w->buf, (uint32_t)w->len);
}

/* Tells the watchers of that kind whose filter matches the room. */
static void tell_watchers(struct mcampaign *mc, enum mwatch_kind kind, const struct mroom *room,
                          const struct hs_writer *w)
{
    for (uint32_t i = 0; i < mc->n_watch; i++) {
        struct mwatch *mw = *provider_state(mc->watch[i]);
        if (mw->kind != kind ||
            (mw->ctx_len && hs_bytes_cmp(mw->ctx, mw->ctx_len, room->ctx, room->ctx_len) != 0))
            continue;
        provider_stream(mc->watch[i], w->buf, (uint32_t)w->len);
    }
}

/* Starts a peer event's payload in an empty writer: action, context_id, peer_id, peer_count;
 * the caller adds more, then ends it. */
static void peer_event_open(struct hs_writer *w, const char *action, const struct mroom *room,
                            const struct mpeer *p)
{
    hs_payload_begin(w);
    hs_put_cstring(w, "action", action);
    hs_put_string(w, "context_id", room->ctx, room->ctx_len);
    if (p)
        hs_put_string(w, "peer_id", p->id, p->id_len);
    hs_put_number(w, "peer_count", room->n_peers);
}

/* A room-level event (room_created, room_closed) to stream_rooms watchers. */
static void tell_room_event(struct mcampaign *mc, const struct mroom *room, const char *action)
{
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    peer_event_open(&w, action, room, NULL);
    hs_payload_end(&w);
    if (hs_result(&w) == 0)
        tell_watchers(mc, MW_ROOMS, room, &w);
    hs_free(&w);
}

/* peer_joined / peer_left: to the other members and to both kinds of watchers. */
static void tell_peer_event(struct shard *s, struct mroom *room, const struct mpeer *p,
                            const char *action, const char *reason)
{
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    peer_event_open(&w, action, room, p);
    if (reason)
        hs_put_cstring(&w, "reason", reason);
    hs_payload_end(&w);
    if (hs_result(&w) == 0) {
        tell_room(s, room, p, &w);
        tell_watchers(room->mc, MW_ROOMS, room, &w);
        tell_watchers(room->mc, MW_PEERS, room, &w);
    }
    hs_free(&w);
}

/* ---- joining and leaving ------------------------------------------------------------------ */

static struct mroom *room_create(struct mcampaign *mc, const void *ctx, uint32_t len, uint32_t at)
{
    if (GROW(mc->rooms, mc->cap, mc->n_rooms + 1, 4) < 0)
        return NULL;
    struct mroom *room = calloc(1, sizeof(*room));
    if (!room)
        return NULL;
    room->mc = mc;
    memcpy(room->ctx, ctx, len);
    room->ctx_len = len;
    room->created_ns = room->active_ns = core_now_ns();
    memmove(mc->rooms + at + 1, mc->rooms + at, sizeof(*mc->rooms) * (mc->n_rooms - at));
    mc->rooms[at] = room;
    mc->n_rooms++;
    return room;
}

static void room_free(struct shard *s, struct mroom *room, bool tell)
{
    struct mcampaign *mc = room->mc;
    bool found;
    uint32_t i = room_find(mc, room->ctx, room->ctx_len, &found);
    if (found) {
        memmove(mc->rooms + i, mc->rooms + i + 1, sizeof(*mc->rooms) * (mc->n_rooms - i - 1));
        mc->n_rooms--;
    }
    if (tell)
        tell_room_event(mc, room, "room_closed");
    hs_map_free(&room->state);
    free(room);
    core_counter_sub(s, media_rooms_stat, 1);
}

/* Unlinks p from its connection's list of peers on this shard. */
static void peer_unlink_conn(struct mshard *ms, struct mpeer *p)
{
    struct mpeer *head = map_get(&ms->conn_peers, p->conn);
    if (head == p) {
        if (p->conn_next)
            map_put(&ms->conn_peers, p->conn, p->conn_next); /* replaces: cannot fail */
        else
            map_del(&ms->conn_peers, p->conn);
        return;
    }
    for (struct mpeer *q = head; q; q = q->conn_next)
        if (q->conn_next == p) {
            q->conn_next = p->conn_next;
            return;
        }
}

/* Removes a peer from its room (telling the rest) and frees the room if it is now empty.
 * unlink: also remove it from its connection's list (false when that list is being freed). */
static void peer_remove(struct shard *s, struct mpeer *p, const char *reason, bool unlink)
{
    struct mroom *room = p->room;
    for (uint32_t i = 0; i < room->n_peers; i++)
        if (room->peers[i] == p) {
            memmove(room->peers + i, room->peers + i + 1,
                    sizeof(*room->peers) * (room->n_peers - i - 1));
            room->n_peers--;
            break;
        }
    room->mc->peers--;
    room->active_ns = core_now_ns();
    if (unlink)
        peer_unlink_conn(mshard(s), p);
    tell_peer_event(s, room, p, "peer_left", reason);
    core_counter_sub(s, media_peers_stat, 1);
    free(p);
    if (room->n_peers == 0)
        room_free(s, room, true);
}

/* The success payload of a join: the room's peers and state. */
static void join_reply(struct pv_request *r, const struct mroom *room, const struct mpeer *p)
{
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    peer_event_open(&w, "joined", room, p);
    hs_put_list_open(&w, "peers");
    for (uint32_t i = 0; i < room->n_peers; i++) {
        hs_item_struct_open(&w);
        hs_put_string(&w, "peer_id", room->peers[i]->id, room->peers[i]->id_len);
        hs_put_number(&w, "joined_ms", (double)ms_of(room->peers[i]->joined_ns));
        hs_item_end(&w);
    }
    hs_end(&w);
    hs_put_struct_open(&w, "state");
    hs_map_write(&w, &room->state);
    hs_end(&w);
    hs_put_number(&w, "version", (double)room->version);
    hs_payload_end(&w);
    if (hs_result(&w) < 0)
        fail(r, "internal", "out of memory");
    else
        provider_finish(r, EVTYPE_SUCCESS, w.buf, (uint32_t)w.len, NULL, NULL);
    hs_free(&w);
}

static struct mpeer *peer_new(struct pv_request *r, struct mroom *room, const void *id,
                              uint32_t id_len)
{
    struct mshard *ms = mshard(provider_shard(r));
    struct mpeer *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->room = room;
    p->conn = provider_requester(r);
    p->joined_ns = core_now_ns();
    memcpy(p->id, id, id_len);
    p->id_len = id_len;
    const char *rid;
    uint32_t rl;
    provider_request_id(r, &rid, &rl);
    p->corr_len = rl < MEDIA_CORR_BYTES_MAX ? rl : MEDIA_CORR_BYTES_MAX;
    memcpy(p->corr, rid, p->corr_len);
    p->conn_next = map_get(&ms->conn_peers, p->conn);
    if (map_put(&ms->conn_peers, p->conn, p) < 0) {
        free(p);
        return NULL;
    }
    room->peers[room->n_peers++] = p;
    room->mc->peers++;
    room->active_ns = p->joined_ns;
    core_counter_add(provider_shard(r), media_peers_stat, 1);
    return p;
}

/* Checks a join against the room (existing or not): 0, or -1 after failing r. */
/* With accounts, a peer id is the requester's user id, or begins with it and '/' (one user's
 * devices: "alice/phone"), so nobody joins, and then signals, as someone else. */
static bool peer_id_mine(struct pv_request *r, const struct structpb_value *pid)
{
    const uint8_t *u;
    uint32_t ul;
    provider_user_id(r, &u, &ul);
    return ul && pid->len >= ul && memcmp(pid->ptr, u, ul) == 0 &&
           (pid->len == ul || pid->ptr[ul] == '/');
}

static int join_check(struct pv_request *r, struct mcampaign *mc, struct mroom *room,
                      struct structpb_value *pid)
{
    if (core_accounts_on() && !peer_id_mine(r, pid)) {
        core_count_denied(provider_shard(r), PERM_SIGNAL);
        fail(r, "permission_denied",
             "signal: peer_id %.*s is not this user's (with accounts a peer id is the user id, "
             "or starts with it and '/')",
             (int)(pid->len > 64 ? 64 : pid->len), (const char *)pid->ptr);
        return -1;
    }
    if (!room && mc->n_rooms >= MEDIA_ROOMS_MAX) {
        fail(r, "room_limit", "the campaign has %d rooms open (the limit)", MEDIA_ROOMS_MAX);
        return -1;
    }
    struct mpeer *mine = peer_by_conn(room, provider_requester(r));
    if (mine && (mine->id_len != pid->len || memcmp(mine->id, pid->ptr, pid->len) != 0)) {
        fail(r, "already_in_room", "this connection is already in the room as peer %.*s",
             (int)mine->id_len, mine->id);
        return -1;
    }
    if (!mine && peer_by_id(room, pid->ptr, pid->len)) {
        fail(r, "peer_id_taken", "another connection is in the room as peer_id %.*s", (int)pid->len,
             (const char *)pid->ptr);
        return -1;
    }
    if (!mine && room && room->n_peers >= MEDIA_PEERS_MAX) {
        fail(r, "room_full", "the room has %d peers (the limit)", MEDIA_PEERS_MAX);
        return -1;
    }
    return 0;
}

static void join_start(struct pv_request *r)
{
    struct structpb_value ctx, pid;
    char uuid[36];
    if (arg_id(r, "context_id", true, &ctx) < 0)
        return;
    int g = arg_id(r, "peer_id", false, &pid);
    if (g < 0)
        return;
    if (g == 0 && core_accounts_on()) { /* no peer_id: the user's own id */
        const uint8_t *u;
        uint32_t ul;
        provider_user_id(r, &u, &ul);
        pid.ptr = u;
        pid.len = ul;
    } else if (g == 0) { /* no peer_id: the broker names the peer (returned in the success) */
        core_uuid4(provider_shard(r), uuid);
        pid.ptr = (const uint8_t *)uuid;
        pid.len = 36;
    }
    struct mcampaign *mc = mc_get(provider_campaign(r), true);
    if (!mc) {
        fail(r, "internal", "out of memory");
        return;
    }
    bool found;
    uint32_t at = room_find(mc, ctx.ptr, ctx.len, &found);
    struct mroom *room = found ? mc->rooms[at] : NULL;
    if (join_check(r, mc, room, &pid) < 0)
        return;
    struct mpeer *p = peer_by_conn(room, provider_requester(r));
    if (p) { /* the same peer joining again: its room events now follow this request */
        const char *rid;
        uint32_t rl;
        provider_request_id(r, &rid, &rl);
        p->corr_len = rl < MEDIA_CORR_BYTES_MAX ? rl : MEDIA_CORR_BYTES_MAX;
        memcpy(p->corr, rid, p->corr_len);
        join_reply(r, room, p);
        return;
    }
    bool created = !room;
    if (created && !(room = room_create(mc, ctx.ptr, ctx.len, at))) {
        fail(r, "internal", "out of memory");
        return;
    }
    if (created)
        core_counter_add(provider_shard(r), media_rooms_stat, 1);
    if (!(p = peer_new(r, room, pid.ptr, pid.len))) {
        if (created)
            room_free(provider_shard(r), room, false);
        fail(r, "internal", "out of memory");
        return;
    }
    if (created)
        tell_room_event(mc, room, "room_created");
    tell_peer_event(provider_shard(r), room, p, "peer_joined", NULL);
    join_reply(r, room, p);
}

/* The room named by context_id and the requester's peer in it: 0, or -1 after failing r. */
static int member_of(struct pv_request *r, struct mroom **room, struct mpeer **p)
{
    struct structpb_value ctx;
    if (arg_id(r, "context_id", true, &ctx) < 0)
        return -1;
    *room = room_get(mc_get(provider_campaign(r), false), ctx.ptr, ctx.len);
    *p = peer_by_conn(*room, provider_requester(r));
    if (!*p) {
        fail(r, "not_in_room", "this connection is not a peer of room %.*s", (int)ctx.len,
             (const char *)ctx.ptr);
        return -1;
    }
    return 0;
}

static void leave_start(struct pv_request *r)
{
    struct mroom *room;
    struct mpeer *p;
    if (member_of(r, &room, &p) < 0)
        return;
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    hs_payload_begin(&w);
    hs_put_cstring(&w, "action", "left");
    hs_put_string(&w, "context_id", room->ctx, room->ctx_len);
    hs_put_string(&w, "peer_id", p->id, p->id_len);
    hs_put_number(&w, "peer_count", room->n_peers - 1); /* the peers that remain */
    hs_payload_end(&w);
    peer_remove(provider_shard(r), p, "left", true); /* frees p, and the room if empty */
    if (hs_result(&w) < 0)
        fail(r, "internal", "out of memory");
    else
        provider_finish(r, EVTYPE_SUCCESS, w.buf, (uint32_t)w.len, NULL, NULL);
    hs_free(&w);
}

/* ---- room state --------------------------------------------------------------------------- */

static const struct hs_limits room_limits = {
    .keys_max = MEDIA_STATE_KEYS_MAX,
    .key_bytes_max = MEDIA_ID_BYTES_MAX,
    .value_bytes_max = MEDIA_STATE_VALUE_BYTES_MAX,
    .bytes_max = MEDIA_STATE_BYTES_MAX,
};

/* The changes in `state` (a Struct): count, or -1 after failing r. */
static int state_changes(struct pv_request *r, struct hs_change *ch, uint32_t cap)
{
    struct structpb_value v, kind;
    int g = arg(r, "state", &v);
    if (g < 0 || g == 0 || v.kind != STRUCTPB_STRUCT) {
        fail(r,
             g < 0 ? "invalid_payload"
             : g   ? "invalid_state"
                   : "missing_state",
             "payload data needs `state`: a Struct (an object)");
        return -1;
    }
    struct hs_iter it;
    const uint8_t *k, *val;
    uint32_t kl, vl, n = 0;
    int rc;
    hs_iter_init(&it, v.ptr, v.len);
    while ((rc = hs_struct_next(&it, &k, &kl, &val, &vl)) > 0) {
        const char *why = NULL;
        if (n == cap) {
            fail(r, "state_too_large", "state: more than %u keys", cap);
            return -1;
        }
        if (!wire_utf8_valid(k, kl) || hs_value_check(val, vl, &why) < 0 ||
            structpb_value_decode(val, vl, &kind) < 0 || kind.kind == STRUCTPB_NONE) {
            fail(r, "invalid_state", "state.%.*s: %s", (int)(kl > 64 ? 64 : kl), (const char *)k,
                 why ? why : "not a valid google.protobuf.Value");
            return -1;
        }
        ch[n++] = (struct hs_change){
            .key = k, .klen = kl, .val = kind.kind == STRUCTPB_NULL ? NULL : val, .vlen = vl};
    }
    if (rc < 0) {
        fail(r, "invalid_state", "state: malformed Struct");
        return -1;
    }
    return (int)n;
}

static void room_state_start(struct pv_request *r)
{
    struct mroom *room;
    struct mpeer *p;
    struct hs_change ch[MEDIA_STATE_KEYS_MAX];
    if (member_of(r, &room, &p) < 0)
        return;
    int n = state_changes(r, ch, MEDIA_STATE_KEYS_MAX);
    if (n < 0)
        return;
    long delta;
    const char *why;
    int rc = hs_map_merge(&room->state, ch, (uint32_t)n, &room_limits, &delta, &why);
    if (rc < 0) {
        if (rc == -ENOMEM)
            fail(r, "internal", "out of memory");
        else
            fail(r, "state_too_large", "state: %s (limits: %d keys, %d-byte values, %d bytes)", why,
                 MEDIA_STATE_KEYS_MAX, MEDIA_STATE_VALUE_BYTES_MAX, MEDIA_STATE_BYTES_MAX);
        return;
    }
    room->version++;
    room->active_ns = core_now_ns();
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    peer_event_open(&w, "state_changed", room, p);
    hs_put_struct_open(&w, "state");
    hs_map_write(&w, &room->state);
    hs_end(&w);
    hs_put_number(&w, "version", (double)room->version);
    hs_payload_end(&w);
    if (hs_result(&w) < 0) {
        fail(r, "internal", "out of memory");
    } else {
        tell_room(provider_shard(r), room, p, &w);
        tell_watchers(room->mc, MW_ROOMS, room, &w);
        provider_finish(r, EVTYPE_SUCCESS, w.buf, (uint32_t)w.len, NULL, NULL);
    }
    hs_free(&w);
}

/* ---- signalling --------------------------------------------------------------------------- */

/* The `type` of a signal that is a Struct (offer, answer, candidate), for watchers. */
static void signal_type(const uint8_t *val, uint32_t vl, struct structpb_value *t)
{
    struct structpb_value v;
    memset(t, 0, sizeof(*t));
    if (structpb_value_decode(val, vl, &v) == 0 && v.kind == STRUCTPB_STRUCT &&
        structpb_struct_get(v.ptr, v.len, "type", t) == 1 && t->kind == STRUCTPB_STRING &&
        t->len <= MEDIA_ID_BYTES_MAX && wire_utf8_valid(t->ptr, t->len))
        return;
    memset(t, 0, sizeof(*t));
}

/* Checks the signal's fields: 0 with the target and the raw signal, or -1 after failing r. */
static int signal_args(struct pv_request *r, struct mroom *room, struct mpeer *from,
                       struct mpeer **to, const uint8_t **val, uint32_t *vl)
{
    struct structpb_value tid, pid;
    if (arg_id(r, "target_peer_id", true, &tid) < 0)
        return -1;
    int g = arg_id(r, "peer_id", false, &pid);
    if (g < 0)
        return -1;
    if (g > 0 && (pid.len != from->id_len || memcmp(pid.ptr, from->id, pid.len) != 0)) {
        fail(r, "invalid_peer_id", "peer_id is not this connection's peer in the room");
        return -1;
    }
    const char *why = NULL;
    struct structpb_value kind;
    *val = NULL;
    *vl = 0;
    g = hs_payload_value(r, "signal", val, vl);
    if (g <= 0 || hs_value_check(*val, *vl, &why) < 0 ||
        structpb_value_decode(*val, *vl, &kind) < 0 || kind.kind == STRUCTPB_NONE ||
        kind.kind == STRUCTPB_NULL) {
        fail(r, g > 0 ? "invalid_signal" : "missing_signal",
             "`signal` must be a value (an SDP offer / answer or an ICE candidate)%s%s",
             why ? ": " : "", why ? why : "");
        return -1;
    }
    if (*vl > MEDIA_SIGNAL_BYTES_MAX) {
        fail(r, "signal_too_large", "`signal` is over %d bytes", MEDIA_SIGNAL_BYTES_MAX);
        return -1;
    }
    *to = peer_by_id(room, tid.ptr, tid.len);
    if (!*to || *to == from) {
        fail(r, "unknown_target_peer_id", "no other peer %.*s in room %.*s", (int)tid.len,
             (const char *)tid.ptr, (int)room->ctx_len, room->ctx);
        return -1;
    }
    return 0;
}

static void signal_start(struct pv_request *r)
{
    struct mroom *room;
    struct mpeer *from, *to;
    const uint8_t *val = NULL;
    uint32_t vl = 0;
    if (member_of(r, &room, &from) < 0 || signal_args(r, room, from, &to, &val, &vl) < 0)
        return;
    struct shard *s = provider_shard(r);
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX);
    peer_event_open(&w, "signal", room, from);
    hs_put_string(&w, "target_peer_id", to->id, to->id_len);
    hs_put_value(&w, "signal", 6, val, vl);
    hs_payload_end(&w);
    if (hs_result(&w) < 0) {
        hs_free(&w);
        fail(r, "internal", "out of memory");
        return;
    }
    send_member(s, room->mc->cp, to, w.buf, (uint32_t)w.len); /* that peer only */
    room->signals++;
    room->active_ns = core_now_ns();
    /* Watchers of peer activity learn that a signal went, never what it said. */
    struct structpb_value t;
    signal_type(val, vl, &t);
    hs_reset(&w);
    peer_event_open(&w, "signal", room, from);
    hs_put_string(&w, "target_peer_id", to->id, to->id_len);
    if (t.len)
        hs_put_string(&w, "signal_type", t.ptr, t.len);
    hs_payload_end(&w);
    if (hs_result(&w) == 0)
        tell_watchers(room->mc, MW_PEERS, room, &w);
    hs_reset(&w);
    hs_payload_begin(&w);
    hs_put_bool(&w, "delivered", true);
    hs_put_string(&w, "target_peer_id", to->id, to->id_len);
    hs_payload_end(&w);
    provider_finish(r, EVTYPE_SUCCESS, hs_result(&w) == 0 ? w.buf : NULL, (uint32_t)w.len, NULL,
                    NULL);
    hs_free(&w);
}

/* ---- streams ------------------------------------------------------------------------------ */

/* One room's summary in a snapshot or a statistics sample. */
static void room_summary(struct hs_writer *w, const struct mroom *room, bool peers)
{
    hs_item_struct_open(w);
    hs_put_string(w, "context_id", room->ctx, room->ctx_len);
    hs_put_number(w, "peer_count", room->n_peers);
    hs_put_number(w, "state_keys", room->state.count);
    hs_put_number(w, "version", (double)room->version);
    hs_put_number(w, "signals", (double)room->signals);
    hs_put_number(w, "created_ms", (double)ms_of(room->created_ns));
    hs_put_number(w, "last_activity_ms", (double)ms_of(room->active_ns));
    if (peers) {
        hs_put_list_open(w, "peers");
        for (uint32_t i = 0; i < room->n_peers; i++)
            hs_item_string(w, room->peers[i]->id, room->peers[i]->id_len);
        hs_end(w);
    }
    hs_item_end(w);
}

/* Rooms (those matching the filter), counts and summaries: snapshots and samples. */
static void rooms_listing(struct hs_writer *w, const struct mcampaign *mc, const struct mwatch *mw,
                          bool peers)
{
    uint32_t rooms = 0, npeers = 0, listed = 0;
    uint64_t signals = 0;
    int64_t active = 0;
    hs_put_list_open(w, "rooms");
    for (uint32_t i = 0; mc && i < mc->n_rooms; i++) {
        const struct mroom *room = mc->rooms[i];
        if (mw->ctx_len && hs_bytes_cmp(mw->ctx, mw->ctx_len, room->ctx, room->ctx_len) != 0)
            continue;
        rooms++;
        npeers += room->n_peers;
        signals += room->signals;
        active = room->active_ns > active ? room->active_ns : active;
        if (listed++ < MEDIA_LIST_ROOMS_MAX)
            room_summary(w, room, peers);
    }
    hs_end(w);
    hs_put_number(w, "room_count", rooms);
    hs_put_number(w, "peer_count", npeers);
    hs_put_number(w, "signals", (double)signals);
    hs_put_number(w, "last_activity_ms", (double)ms_of(active));
    hs_put_bool(w, "truncated", listed > MEDIA_LIST_ROOMS_MAX);
}

static void send_listing(struct pv_request *r, const char *action, bool peers)
{
    struct mwatch *mw = *provider_state(r);
    struct hs_writer w;
    hs_init(&w, MEDIA_PAYLOAD_BYTES_MAX + MEDIA_LIST_ROOMS_MAX * 1024);
    hs_payload_begin(&w);
    hs_put_cstring(&w, "action", action);
    rooms_listing(&w, mw->mc, mw, peers);
    hs_payload_end(&w);
    if (hs_result(&w) == 0)
        provider_stream(r, w.buf, (uint32_t)w.len);
    hs_free(&w);
}

/* Starts a watching stream: optional context_id filter; registers stream_rooms / peers. */
static struct mwatch *watch_start(struct pv_request *r, enum mwatch_kind kind, bool registered)
{
    struct structpb_value ctx;
    int g = arg_id(r, "context_id", false, &ctx);
    if (g < 0)
        return NULL;
    struct mcampaign *mc = mc_get(provider_campaign(r), true);
    struct mwatch *mw = calloc(1, sizeof(*mw));
    if (!mc || !mw || (registered && GROW(mc->watch, mc->watch_cap, mc->n_watch + 1, 4) < 0)) {
        free(mw);
        fail(r, "internal", "out of memory");
        return NULL;
    }
    mw->mc = mc;
    mw->kind = kind;
    if (g > 0) {
        memcpy(mw->ctx, ctx.ptr, ctx.len);
        mw->ctx_len = ctx.len;
    }
    *provider_state(r) = mw;
    if (registered)
        mc->watch[mc->n_watch++] = r;
    return mw;
}

static void watch_stop(struct pv_request *r)
{
    struct mwatch *mw = *provider_state(r);
    if (!mw)
        return;
    struct mcampaign *mc = mw->mc;
    for (uint32_t i = 0; i < mc->n_watch; i++)
        if (mc->watch[i] == r) {
            memmove(mc->watch + i, mc->watch + i + 1, sizeof(*mc->watch) * (mc->n_watch - i - 1));
            mc->n_watch--;
            break;
        }
    free(mw);
    *provider_state(r) = NULL;
}

static void stream_rooms_start(struct pv_request *r)
{
    if (watch_start(r, MW_ROOMS, true))
        send_listing(r, "snapshot", true);
}

static void stream_peers_start(struct pv_request *r)
{
    if (watch_start(r, MW_PEERS, true))
        send_listing(r, "snapshot", true);
}

static void stream_webrtc_start(struct pv_request *r)
{
    struct structpb_value v;
    uint32_t ms = MEDIA_WEBRTC_MS_DEFAULT;
    int g = arg(r, "interval_ms", &v);
    if (g < 0 || (g > 0 && v.kind != STRUCTPB_NUMBER)) {
        fail(r, "invalid_interval_ms", "`interval_ms` must be a number");
        return;
    }
    if (g > 0)
        ms = v.number < MEDIA_WEBRTC_MS_MIN   ? MEDIA_WEBRTC_MS_MIN
             : v.number > MEDIA_WEBRTC_MS_MAX ? MEDIA_WEBRTC_MS_MAX
                                              : (uint32_t)v.number;
    if (!watch_start(r, MW_ROOMS, false))
        return;
    send_listing(r, "stats", false); /* the first sample at once */
    provider_set_tick(r, ms);
}

static void stream_webrtc_tick(struct pv_request *r, int64_t now_ns)
{
    (void)now_ns;
    send_listing(r, "stats", false);
}

static void stream_webrtc_stop(struct pv_request *r)
{
    free(*provider_state(r));
    *provider_state(r) = NULL;
}

/* ---- module ------------------------------------------------------------------------------- */

static int media_shard_init(struct shard *s)
{
    struct mshard *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return -ENOMEM;
    map_init(&ms->conn_peers);
    *provider_shard_slot(s, PROVIDER_SLOT_MEDIA) = ms;
    return 0;
}

static void media_shard_free(struct shard *s)
{
    for (uint32_t i = 0; i < core_campaign_slots(s); i++) {
        struct campaign *cp = core_campaign_at(s, i);
        struct mcampaign *mc = cp ? mc_get(cp, false) : NULL;
        if (!mc)
            continue;
        for (uint32_t k = 0; k < mc->n_rooms; k++) {
            struct mroom *room = mc->rooms[k];
            for (uint32_t j = 0; j < room->n_peers; j++)
                free(room->peers[j]);
            hs_map_free(&room->state);
            free(room);
        }
        free(mc->rooms);
        free(mc->watch);
        free(mc);
        *provider_campaign_slot(cp, PROVIDER_SLOT_MEDIA) = NULL;
    }
    struct mshard *ms = mshard(s);
    if (ms) {
        map_free(&ms->conn_peers);
        free(ms);
    }
    *provider_shard_slot(s, PROVIDER_SLOT_MEDIA) = NULL;
}

/* A connection closed: each of its peers leaves its room (the rest are told). */
static void media_conn_gone(struct shard *s, uint64_t conn)
{
    struct mshard *ms = mshard(s);
    struct mpeer *p = ms ? map_del(&ms->conn_peers, conn) : NULL;
    while (p) {
        struct mpeer *next = p->conn_next;
        peer_remove(s, p, "disconnected", false);
        p = next;
    }
}

/* An idle campaign (provider_module.campaign_idle): kept while it has a room or a watcher. */
static bool media_campaign_idle(struct shard *s, struct campaign *cp)
{
    (void)s;
    struct mcampaign *mc = mc_get(cp, false);
    if (!mc)
        return true;
    if (mc->n_rooms || mc->n_watch)
        return false;
    free(mc->rooms);
    free(mc->watch);
    free(mc);
    *provider_campaign_slot(cp, PROVIDER_SLOT_MEDIA) = NULL;
    return true;
}

static const struct provider_module media_module = {
    .campaign_idle = media_campaign_idle,
    .install = media_install,
    .shard_init = media_shard_init,
    .shard_free = media_shard_free,
    .conn_gone = media_conn_gone,
};

const struct handler_row media_rows[] = {
    {.action = "media:join_room", .start = join_start, .module = &media_module},
    {.action = "media:leave_room", .start = leave_start, .module = &media_module},
    {.action = "media:room_state", .start = room_state_start, .module = &media_module},
    {.action = "media:signal", .unpublished = true, .start = signal_start, .module = &media_module},
    {.action = "media:stream_rooms",
     .streaming = true,
     .start = stream_rooms_start,
     .stop = watch_stop,
     .module = &media_module},
    {.action = "media:stream_peers",
     .streaming = true,
     .start = stream_peers_start,
     .stop = watch_stop,
     .module = &media_module},
    {.action = "media:stream_webrtc",
     .streaming = true,
     .start = stream_webrtc_start,
     .tick = stream_webrtc_tick,
     .stop = stream_webrtc_stop,
     .module = &media_module},
};
const size_t media_row_count = sizeof(media_rows) / sizeof(media_rows[0]);
