// SPDX-License-Identifier: Apache-2.0
//
// The Provider (BRIEF §3): a managed lifecycle for every request, on the shard that owns the
// request's campaign. `S:A:vN:requested` → `started` → (`stream` | `heartbeat`)* → exactly one
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

#include "codec/evtype.h"

struct shard;
struct campaign;
struct pv_request;

/* A built-in handler: one row of the table. */
struct handler_row {
    const char *action; /* "service:action" */
    bool streaming;
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

/* The built-in tables. */
extern const struct handler_row provider_test_rows[];
extern const size_t provider_test_row_count;

#endif
