// SPDX-License-Identifier: Apache-2.0
//
// The broker core's API for the handlers layer (handlers/): everything a handler may do, and
// the only broker header a handler includes (tests/lint/layering.sh checks it). Through it a
// handler publishes on a campaign its shard owns, replies to or notifies one connection on
// any shard, is told when a connection closes, walks its shard's campaigns, reads their
// sequence and subscriber counts, keeps its own state in per-shard and per-campaign slots,
// sends its own messages between shards, arms a timer, and registers its own counters and
// settings. Shards, connections and campaigns stay opaque: their layout, the rings, the
// subscription lists and the io_uring are the core's alone (docs/ARCHITECTURE.md, "Layers").
//
// It also re-exports the small modules a handler may use as they are: logging (log.h),
// assertions (check.h), the uint64 map (map.h), shared frames (oframe.h), array growth
// (grow.h), counters (stats.h) and setting rows (config.h).
//
// Threading: every function taking a struct shard runs on that shard's own thread; a campaign
// is touched only on its owning shard; a struct conn only on the shard that accepted it. The
// registration functions (core_set_hooks, core_counter_register, config_register) run at
// start-up, before broker_start.
#ifndef NEXUS_BROKER_CORE_H
#define NEXUS_BROKER_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "broker/check.h"
#include "broker/config.h"
#include "broker/grow.h"
#include "broker/log.h"
#include "broker/map.h"
#include "broker/oframe.h"
#include "broker/perm.h"
#include "broker/stats.h"
#include "codec/envelope.h"
#include "codec/evtype.h"

struct shard;    /* one thread, its io_uring, its connections and campaigns */
struct campaign; /* a campaign, on its owning shard */
struct conn;     /* a client connection, on the shard that accepted it */

/* An emit travelling to its campaign's owner: the routing header, and slices given as
 * offsets into the frame body (body[] when it crossed shards; otherwise the caller passes the
 * receive buffer alongside). user_* is metadata.global_context.user_id and corr_* its
 * correlation_id, both inside the metadata bytes. */
/* What the broker knows of an emit's sender (struct emit_msg.auth). */
enum emit_auth {
    /* Sent on a connection authenticated as an account: its user id is the account's,
     * stamped by the broker, so it may be trusted (request ownership, media peers). */
    EMIT_AUTH_ACCOUNT = 1u << 0,
    EMIT_AUTH_ADMIN = 1u << 1, /* that account has the admin permission */
};

struct emit_msg {
    uint64_t conn_id;
    uint64_t dedup_scope; /* whose duplicate window the id is checked in (docs/PROTOCOL.md) */
    uint64_t correlation;
    int64_t campaign_id;
    struct evtype type;
    uint32_t body_len;
    uint32_t id_off, id_len, type_off, type_len, entity_off, entity_len;
    uint32_t md_off, md_len, pl_off, pl_len, user_off, user_len, corr_off, corr_len;
    bool has_md, has_pl;
    uint8_t auth; /* enum emit_auth: who the sender is (docs/SECURITY.md) */
    uint8_t body[];
};

/* How an event is published (flags of struct publish). */
enum publish_flags {
    /* Deliver to direct_conn only, outside the campaign sequence (sequence 0): heartbeats and
     * private exchanges. */
    PUBLISH_UNSEQUENCED = 1u << 0,
    /* A lifecycle terminal event (success, failed, cancelled, timeout). */
    PUBLISH_TERMINAL = 1u << 1,
};

/* An event to sequence and publish on its campaign's owner. The caller fills ev's slices
 * (event_id, event_type, entity_id, metadata, payload, correlation_id, stream_seq, code,
 * message), type (parsed from ev.event_type) and user_id (inside ev.metadata, for user
 * filters). core_publish assigns ev.sequence, ev.timestamp_unix_nanos (unless set) and
 * ev.campaign_id. */
struct publish {
    struct codec_event_out ev;
    struct evtype type;
    const uint8_t *user_id;
    uint32_t user_id_len;
    uint64_t direct_conn;  /* also deliver to this connection (skipped by its subscriptions) */
    uint64_t direct_conn2; /* and to this one (an external handler), likewise */
    uint32_t flags;        /* enum publish_flags */
    uint64_t dedup_key;    /* the emit's duplicate-window key, logged if it outlives a restart */
};

/* Ring message classes. A request may cause deliveries; a delivery never causes further ring
 * traffic (docs/ARCHITECTURE.md explains why the two classes cannot deadlock). */
enum core_class { CORE_REQUEST = 0, CORE_DELIVERY = 1 };

/* How the handlers layer plugs into the core. Every callback is optional and runs on the
 * shard's own thread. Installed once with core_set_hooks, before broker_start. */
struct core_hooks {
    /* After the shard's own set-up; -errno fails start-up. */
    int (*shard_init)(struct shard *s);
    /* At shutdown, before the campaigns are freed. */
    void (*shard_free)(struct shard *s);
    /* An accepted (not duplicate) emit on its owner, before it is published. Returns true if
     * the hook took it over (it then publishes and acknowledges itself). */
    bool (*emit)(struct shard *s, struct campaign *cp, const struct emit_msg *m,
                 const uint8_t *body, struct codec_slice id, int64_t now_ns);
    /* A frame of kind >= CODEC_KIND_EXTENSION_MIN from a client. */
    void (*frame)(struct conn *c, uint32_t kind, uint64_t correlation, const uint8_t *body,
                  uint32_t len);
    /* A message sent with core_send. */
    void (*msg)(struct shard *s, uint32_t aux, void *ptr, uint64_t arg);
    /* A message sent with core_send that will never be handled (shutdown): free ptr. */
    void (*msg_free)(uint32_t aux, void *ptr, uint64_t arg);
    /* A connection closed that had asked (core_conn_notify) for this shard to be told. */
    void (*conn_gone)(struct shard *s, uint64_t conn_id);
    /* The timer armed with core_timer_at fired. */
    void (*timer)(struct shard *s, int64_t now_ns);
    /* An event was sequenced on campaign cp (f: its shared frame; take a reference to keep
     * it). Runs for every sequenced event, so it must be cheap. */
    void (*published)(struct shard *s, struct campaign *cp, struct oframe *f);
    /* The core would free campaign cp: no subscription and no event for --campaign-idle-ms.
     * Return false to keep it (open requests, state, room members); or release what the
     * campaign slot holds, leave it NULL, and return true. Without this hook a campaign whose
     * slot is set is kept. */
    bool (*campaign_idle)(struct shard *s, struct campaign *cp);
    /* At start, with --data-dir: the last logged event of a type the handlers layer asked to
     * have restored (core_restore_types) for a campaign this shard owns, after shard_init. */
    void (*restore)(struct shard *s, struct campaign *cp, const struct oframe *f);
};

/* Event types whose last logged event per campaign is handed to the restore hook at start
 * (the handlers' state snapshots). NULL-terminated; set before the broker starts. */
extern const char *const *core_restore_types;

void core_set_hooks(const struct core_hooks *h);

/* ---- the shard ---------------------------------------------------------------------------- */

uint32_t core_shard_index(const struct shard *s);
uint32_t core_shard_count(const struct shard *s);
/* The handlers layer's per-shard slot (NULL until it stores something; it frees it). */
void **core_shard_slot(struct shard *s);
/* Wall-clock time (CLOCK_REALTIME) in ns: the clock events are stamped with. Any thread. */
int64_t core_now_ns(void);
/* A fresh random UUIDv4 (36 characters, no NUL), from the shard's generator. */
void core_uuid4(struct shard *s, char out[36]);
/* Makes the timer hook run at or soon after deadline_ns (core_now_ns's clock). */
void core_timer_at(struct shard *s, int64_t deadline_ns);
/* Sends (aux, ptr, arg) to shard dst's msg hook. Returns 0, or -ENOMEM if it could not be
 * queued (ptr is then still the caller's). */
int core_send(struct shard *s, uint32_t dst, enum core_class cls, uint32_t aux, void *ptr,
              uint64_t arg);
/* Registered counters: add or subtract on this shard's copy. idx: from core_counter_register
 * (stats_register). */
void core_counter_add(struct shard *s, int idx, uint64_t n);
void core_counter_sub(struct shard *s, int idx, uint64_t n);

/* ---- campaigns (owning shard only) --------------------------------------------------------- */

/* The campaign id's entry on this shard (which must own it), created if asked. Returns NULL
 * if absent, or if it cannot be created (campaign limit, memory). */
struct campaign *core_campaign(struct shard *s, int64_t id, bool create);
int64_t core_campaign_id(const struct campaign *cp);
/* The last sequence number assigned (0: none yet). */
uint64_t core_campaign_sequence(const struct campaign *cp);
/* The last sequence of the campaign delivered to subscribers (with a log: once durable). */
uint64_t core_campaign_released(const struct campaign *cp);
/* With an event log (--data-dir): calls ev(arg, f) for campaign cp's logged events with
 * sequences from..to, in order (f is the callee's reference: oframe_unref it), and gap(arg,
 * first, last) for ranges the log no longer holds. Returns the events, -ENOENT without a
 * log, or -errno. Synchronous (docs/ARCHITECTURE.md, "The event log"). */
int core_log_scan(struct shard *s, const struct campaign *cp, uint64_t from, uint64_t to,
                  void (*ev)(void *arg, struct oframe *f),
                  void (*gap)(void *arg, uint64_t first, uint64_t last), void *arg);
/* The handlers layer's slot in the campaign (NULL until it stores something). */
void **core_campaign_slot(struct campaign *cp);
/* Subscriptions on every shard that may receive this campaign's events (the firehose not
 * counted). */
uint32_t core_campaign_subscribers(struct shard *s, const struct campaign *cp);
/* The campaigns this shard owns, by table slot: core_campaign_slots() is the table's size (0
 * or a power of two) and core_campaign_at(i) the campaign in slot i, or NULL. The table only
 * changes when a campaign is created (core_campaign with create, an emit, a subscription), so a
 * scan that creates none sees each campaign once. */
uint32_t core_campaign_slots(struct shard *s);
struct campaign *core_campaign_at(struct shard *s, uint32_t slot);
uint32_t core_campaign_count(struct shard *s);

/* ---- publishing (owning shard only) -------------------------------------------------------- */

/* Sequences (unless PUBLISH_UNSEQUENCED), encodes once and fans out. Returns 0 or -ENOMEM. */
int core_publish(struct shard *s, struct campaign *cp, struct publish *p);
/* Fills p to publish an emit as it was sent (event id: id, which may be broker-assigned). */
void core_publish_of_emit(struct publish *p, const struct emit_msg *m, const uint8_t *body,
                          struct codec_slice id, int64_t now_ns);
/* Acknowledges an emit to its connection (message "accepted", or "duplicate"). */
void core_ack(struct shard *s, const struct emit_msg *m, const uint8_t *body, struct codec_slice id,
              uint64_t seq, int64_t ts_ns, bool duplicate);
/* True if any subscription on any shard matches this type (and user) on campaign cp. */
bool core_any_match(struct shard *s, struct campaign *cp, const struct evtype *t,
                    const char *type_str, const uint8_t *user_id, uint32_t user_id_len);

/* ---- connections -------------------------------------------------------------------------- */

/* Sends a frame to a connection on any shard; takes the caller's reference to f. A connection
 * that has gone drops it. */
void core_to_conn(struct shard *s, uint64_t conn_id, struct oframe *f);
/* Sends a copy of a control frame (len bytes, length prefix included) to a connection on any
 * shard. */
void core_bytes_to_conn(struct shard *s, uint64_t conn_id, const uint8_t *frame, size_t len);
/* Sends an error frame (code, message) answering correlation to a connection on any shard. */
void core_error_to_conn(struct shard *s, uint64_t conn_id, uint64_t correlation, const char *code,
                        const char *message);

/* For the frame hook, on the connection's own shard: */
uint64_t core_conn_id(const struct conn *c);
struct shard *core_conn_shard(struct conn *c);
/* An error frame answering correlation; the message is formatted. */
void core_conn_error(struct conn *c, uint64_t correlation, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Asks that the shards in shard_mask (bit i: shard i) be told through their conn_gone hook
 * when this connection closes. Masks accumulate. */
void core_conn_notify(struct conn *c, uint64_t shard_mask);
/* The mask naming every shard. */
uint64_t core_all_shards(const struct shard *s);

/* ---- who is speaking (docs/SECURITY.md) ----------------------------------------------------- */

/* True when --accounts is in force: user ids on emits (struct emit_msg.auth) are the broker's. */
bool core_accounts_on(void);
/* Whether connection c may do op (PERM_REQUEST or PERM_HANDLE) for the action of type t (parsed
 * from type_str). Always true without accounts. */
bool core_conn_may(struct conn *c, enum perm_op op, const struct evtype *t, const char *type_str);
/* Refuses an operation of c: error{permission_denied} "op: message", counted in
 * nexus_permission_denied_total{op}. */
void core_conn_denied(struct conn *c, uint64_t correlation, enum perm_op op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Counts a refusal that is answered another way (a request's failed event); on s. */
void core_count_denied(struct shard *s, enum perm_op op);
/* The same for a connection on any shard, by id; counted on s. */
void core_denied_to_conn(struct shard *s, uint64_t conn_id, uint64_t correlation, enum perm_op op,
                         const char *message);

#endif
