// SPDX-License-Identifier: Apache-2.0
//
// The Provider (docs/DESIGN.md §3): a managed lifecycle for every request, on the shard that owns
// the request's campaign. `S:A:vN:requested` → `started` → (`stream` | `heartbeat`)* → exactly one
// of `success`, `failed`, `cancelled`, `timeout`. Handlers are rows of one table (built-in) or
// connections that registered for actions (external); both are served by the same engine,
// which publishes the lifecycle events, sends heartbeats, enforces timeouts and bounds, and
// turns a vanished requester or handler into the right terminal event.
//
// Threading: a request lives on its campaign's owning shard and is touched only there; the
// handler functions run on that shard's thread.
#ifndef NEXUS_HANDLERS_PROVIDER_H
#define NEXUS_HANDLERS_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/core.h"
#include "codec/evtype.h"

struct pv_request;
struct provider_module;

/* A built-in handler: one row of the table. */
struct handler_row {
    const char *action; /* "service:action" */
    bool streaming;
    /* The exchange is private to the requester: its `requested` event is acknowledged but not
     * published, and its lifecycle events go to the requester only, outside the campaign
     * sequence (media:signal: signalling must not reach the campaign's subscribers). */
    bool unpublished;
    /* The module the row belongs to (shard set-up, connection loss, event observation), or
     * NULL. */
    const struct provider_module *module;
    /* Runs after `started` is published. A plain handler calls provider_finish before it
     * returns; a streaming one may call provider_stream now and later (from tick), and
     * provider_finish when done. */
    void (*start)(struct pv_request *r);
    /* Streams: runs when provider_set_tick's interval elapses. */
    void (*tick)(struct pv_request *r, int64_t now_ns);
    /* Runs once when the request ends for any reason, to release the handler's state. */
    void (*stop)(struct pv_request *r);
};

/* Installs the Provider's broker hooks with these built-in rows (validated here: each action
 * must be a valid `service:action`, unique; an invalid table aborts at start-up). The table
 * must outlive the broker. */
void provider_install(const struct handler_row *rows, size_t count);

/* Adds the Provider's flags (--heartbeat-ms, --request-timeout-ms, --stream-timeout-ms,
 * --max-streams, --max-requests-per-conn, --max-pending-per-handler, --test-handlers) to the
 * ones nexusd parses. Call before config_parse. */
void provider_register_settings(void);
/* --test-handlers: whether to install provider_test_rows. */
bool provider_test_handlers_enabled(void);

/* ---- what a handler may do with its request (owner shard only) ---- */
struct shard *provider_shard(struct pv_request *r);
struct campaign *provider_campaign(struct pv_request *r);
int64_t provider_campaign_id(struct pv_request *r);
uint64_t provider_requester(struct pv_request *r);
/* The request's payload bytes (common.Payload), or len 0. */
void provider_payload(struct pv_request *r, const uint8_t **ptr, uint32_t *len);
/* The request's metadata bytes (common.Metadata), or len 0. */
void provider_metadata(struct pv_request *r, const uint8_t **ptr, uint32_t *len);
/* A slot for the handler's own state (freed by its stop function). */
void **provider_state(struct pv_request *r);
/* Streams: call tick every interval_ms from now on (0 stops ticking). */
void provider_set_tick(struct pv_request *r, uint32_t interval_ms);
/* Publishes one `stream` event (payload: common.Payload bytes or NULL). Returns 0, or
 * -ENOMEM. */
int provider_stream(struct pv_request *r, const uint8_t *payload, uint32_t len);
/* Ends the request with `success` (code NULL) or `failed` (code and message set: the failed
 * event's payload gets data {code, message} unless payload is given). Exactly once: later
 * calls are ignored. After it returns, r is freed: do not touch it. */
void provider_finish(struct pv_request *r, enum evtype_state state, const uint8_t *payload,
                     uint32_t len, const char *code, const char *message);

/* ---- modules: what a family of built-in rows (handlers/campaign.c, handlers/media.c) needs
 * beyond one request. Every callback is optional and runs on the shard's own thread. ---- */
struct provider_module {
    /* Once, from provider_install, on the main thread before any shard starts. */
    void (*install)(void);
    /* After the Provider's own per-shard set-up. Returns 0 or -errno (start-up fails). */
    int (*shard_init)(struct shard *s);
    /* At shutdown, after every request has ended (its stop ran), before the campaigns and the
     * Provider's slots are freed: release what the module keeps in its slots. */
    void (*shard_free)(struct shard *s);
    /* A connection closed whose notify mask names this shard (every connection that emitted
     * a request to a campaign this shard owns). */
    void (*conn_gone)(struct shard *s, uint64_t conn_id);
    /* Every sequenced event of a campaign this shard owns, just after it was sequenced and
     * fanned out: p->ev holds its sequence, timestamp and campaign. Heartbeats and private
     * exchanges are not sequenced and not seen. It may send private (unsequenced) events, but
     * must not publish sequenced ones, which would call it again. */
    void (*published)(struct shard *s, struct campaign *cp, struct oframe *f);
    /* The campaign is idle (no subscription, no event for --campaign-idle-ms, no open
     * request): release what the module's campaign slot holds and leave it NULL, returning
     * true; or return false to keep the campaign (state, members). Without this callback a
     * module's non-NULL slot keeps the campaign. */
    bool (*campaign_idle)(struct shard *s, struct campaign *cp);
    /* At start, with a log: the last logged event of a type in the module's restore_types for
     * a campaign of this shard (its state snapshot). */
    void (*restore)(struct shard *s, struct campaign *cp, const struct oframe *f);
    const char *const *restore_types;
};

/* Per-module slots for state, one set per shard and one per campaign. */
enum provider_slot {
    PROVIDER_SLOT_CAMPAIGN = 0, /* handlers/campaign.c */
    PROVIDER_SLOT_MEDIA = 1,    /* handlers/media.c */
    PROVIDER_SLOT_GATHER = 2,   /* handlers/provider_gather.c (per shard only) */
    PROVIDER_SLOTS = 4,
};

/* The module's per-shard slot (owner: the module; freed by its shard_free). */
void **provider_shard_slot(struct shard *s, enum provider_slot slot);
/* The module's slot in a campaign this shard owns, or NULL if out of memory. The Provider
 * keeps the slots in the campaign's core slot (core_campaign_slot); the module's shard_free
 * releases what its slots hold. */
void **provider_campaign_slot(struct campaign *cp, enum provider_slot slot);
/* Streams open on the campaign (built-in and external). */
uint32_t provider_campaign_streams(struct campaign *cp);

/* The request's event id (the correlation id of its lifecycle events). */
void provider_request_id(struct pv_request *r, const char **id, uint32_t *len);
/* The requester's user id (metadata.global_context.user_id), or len 0. */
void provider_user_id(struct pv_request *r, const uint8_t **ptr, uint32_t *len);
/* Streams: one `stream` event to the requester only, outside the campaign sequence (a replay
 * of events that are already in it). Returns 0 or -ENOMEM. */
int provider_stream_private(struct pv_request *r, const uint8_t *payload, uint32_t len);
/* Ends the request with `success` (payload), then publishes one more event of the full type
 * event_type (payload fpl) to the whole campaign, correlated with the request and carrying its
 * metadata: campaign:update's `campaign:state:v1:success` broadcast. r is freed afterwards. */
void provider_finish_and_publish(struct pv_request *r, const uint8_t *payload, uint32_t len,
                                 const char *event_type, const uint8_t *fpl, uint32_t flen);

/* ---- scatter-gather over every shard, through the rings (no locks) ---- */
struct provider_gather_ops {
    /* Runs on every shard, the caller's included, on that shard's thread, and returns its
     * result (NULL allowed). It may read only the parts of ctx that the caller does not change
     * until done. */
    void *(*each)(struct shard *s, const void *ctx);
    /* Runs on the calling shard with one result per shard (indexed by shard). complete is
     * false at shutdown, when some results never came (NULL). Owns ctx and the results. */
    void (*done)(struct shard *s, void *ctx, void **results, uint32_t n, bool complete);
    /* Frees a result that never reached done (a ring message left at shutdown). */
    void (*free_result)(void *result);
};

/* Runs ops->each on every shard and then ops->done on this one. With one shard, done runs
 * before this returns. Returns 0 or -ENOMEM (nothing ran; ctx is still the caller's). */
int provider_gather(struct shard *s, const struct provider_gather_ops *ops, void *ctx);

/* The built-in tables. */
extern const struct handler_row provider_test_rows[];
extern const size_t provider_test_row_count;

#endif
