// SPDX-License-Identifier: Apache-2.0
//
// Internal to the campaign handlers (campaign.c: state and actions; campaign_streams.c:
// history and streams): the per-campaign and per-shard state they share, and the limits.
// Threading: a struct cstate belongs to the shard that owns its campaign; a struct cs_shard to
// its shard. Nothing here is touched by another thread.
#ifndef NEXUS_HANDLERS_CAMPAIGN_INT_H
#define NEXUS_HANDLERS_CAMPAIGN_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "handlers/hstruct.h"
#include "handlers/provider.h"

struct shard;
struct campaign;
struct publish;

/* ---- limits (docs/HANDLERS.md lists them with what happens when one is reached) ---- */

/* Keys in one campaign's state. The ancestor's campaigns held a few dozen; 1024 leaves room
 * while keeping a full-state event (sent on every change) small. */
#define CS_KEYS_MAX 1024
/* A state key: long enough for dotted paths, short enough to list. */
#define CS_KEY_BYTES_MAX 256
/* One value (encoded google.protobuf.Value). 16 KiB holds any settings object; bigger blobs
 * belong in object storage, not in state pushed to every subscriber. */
#define CS_VALUE_BYTES_MAX (16 * 1024)
/* All keys and values of one campaign. The full state travels in every campaign:state event
 * and stream push, so it must stay well under the 1 MiB default frame: 256 KiB. */
#define CS_STATE_BYTES_MAX (256 * 1024)
/* All campaign state on one shard: 256 MiB, so that a million small campaigns fit but state
 * cannot take the machine's memory. */
#define CS_SHARD_STATE_BYTES_MAX ((size_t)256 << 20)
/* Features per campaign and bytes per feature name (flags, not documents). */
#define CS_FEATURES_MAX      256
#define CS_FEATURE_BYTES_MAX 128
/* configType: a name such as "theme" or "rate_limits". */
#define CS_CONFIG_TYPE_BYTES_MAX 64
/* Largest payload the handlers build: a full state plus features plus framing. */
#define CS_PAYLOAD_BYTES_MAX                                                                       \
    (CS_STATE_BYTES_MAX + CS_FEATURES_MAX * (CS_FEATURE_BYTES_MAX + 8) + 4096)

/* History per campaign (campaign:stream_events): the last 1024 events or 1 MiB, whichever is
 * reached first — enough for a client that reconnects within seconds under a busy campaign. */
#define CS_HISTORY_EVENTS_MAX 1024
#define CS_HISTORY_BYTES_MAX  ((size_t)1 << 20)
/* History on one shard: 64 MiB; past it campaigns give up their oldest events in turn (a clock
 * hand over the shard's campaigns), so idle campaigns cannot hold it all. */
#define CS_SHARD_HISTORY_BYTES_MAX ((size_t)64 << 20)
/* An event whose payload is larger is kept without its data (payload_omitted in the replay):
 * one 900 KiB event must not push a campaign's whole history out. */
#define CS_HISTORY_DATA_BYTES_MAX (64 * 1024)

/* campaign:list paging: 100 by default, at most 1000 per page; offset at most 100000 (each
 * shard sorts offset + limit ids; deeper pages use the `after` cursor). */
#define CS_LIST_LIMIT_DEFAULT 100
#define CS_LIST_LIMIT_MAX     1000
#define CS_LIST_OFFSET_MAX    100000

/* campaign:stream_state coalescing: at most one push per stream every 50 ms by default
 * (min_interval_ms: 10 .. 5000). Changes in between are folded into the next push, which
 * always carries the whole latest state, so a slow requester gets fewer, never stale, pushes. */
#define CS_PUSH_MS_DEFAULT 50
#define CS_PUSH_MS_MIN     10
#define CS_PUSH_MS_MAX     5000
/* campaign:stream_analytics: every 5 s by default (docs/DESIGN.md §4.1); interval_ms 100 .. 600000.
 */
#define CS_ANALYTICS_MS_DEFAULT 5000
#define CS_ANALYTICS_MS_MIN     100
#define CS_ANALYTICS_MS_MAX     600000

/* ---- state ---- */

/* Open streams of one kind on a campaign (bounded by the Provider's --max-streams). */
struct cs_watchers {
    struct pv_request **v;
    uint32_t count, cap;
};

/* A campaign's state, in its PROVIDER_SLOT_CAMPAIGN slot. */
struct cstate {
    struct campaign *cp;
    struct hs_map state;    /* key -> Value bytes */
    struct hs_map features; /* name -> (empty) */
    int64_t updated_ns;     /* 0: never changed */
    uint64_t version;       /* changes applied */
    uint64_t changes, rejected;
    uint32_t active_sessions; /* connections whose active campaign this is (campaign:switch) */
    /* History (campaign:stream_events): references to the shared frames of the last events,
     * oldest at h_head, in a ring that grows by doubling up to CS_HISTORY_EVENTS_MAX. No node
     * is allocated and nothing is copied per event. */
    struct oframe **h_ring;
    uint32_t h_cap, h_head, h_count;
    size_t h_bytes;
    uint64_t h_evicted; /* highest sequence dropped from the history, 0: none */
    struct cs_watchers state_w, events_w;
};

/* Per shard, in its PROVIDER_SLOT_CAMPAIGN slot. */
struct cs_shard {
    size_t hist_bytes;
    uint32_t hist_hand; /* clock hand over the shard's campaigns, for the shard-wide bound */
    size_t state_bytes;
    struct map active; /* conn id -> struct cstate: the connection's active campaign here */
};

/* campaign.c */
struct cstate *cs_get(struct campaign *cp, bool create);
struct cs_shard *cs_shard(struct shard *s);
/* The full state as a payload: opens it, writes campaign_id, state, features, version,
 * last_updated_ms and keys; the caller may add fields, then calls hs_payload_end. */
void cs_state_open(struct hs_writer *w, const struct cstate *cs, int64_t campaign_id);
/* Ends the request with failed and code; the message is formatted. */
void cs_fail(struct pv_request *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A field of the request's payload data: 1 with *v, 0 absent, -EBADMSG malformed payload. */
int cs_arg(struct pv_request *r, const char *key, struct structpb_value *v);
/* A number field clamped to [lo, hi]; def when absent; -1 if present but not a number. */
int cs_arg_ms(struct pv_request *r, const char *key, uint32_t def, uint32_t lo, uint32_t hi,
              uint32_t *out);
void cs_put_id(struct hs_writer *w, const char *key, int64_t id);

/* campaign_streams.c */
/* The state changed: pushes it to the campaign's stream_state streams (coalesced). */
void cs_state_changed(struct cstate *cs);
/* Records a sequenced event and relays it to the campaign's stream_events streams. */
void cs_published(struct shard *s, struct campaign *cp, struct oframe *f);
/* Frees a campaign's history (shutdown). */
void cs_history_free(struct cs_shard *sh, struct cstate *cs);
void cs_watchers_remove(struct cs_watchers *w, struct pv_request *r);
int cs_watchers_add(struct cs_watchers *w, struct pv_request *r);

void cs_stream_state_start(struct pv_request *r);
void cs_stream_state_tick(struct pv_request *r, int64_t now_ns);
void cs_stream_state_stop(struct pv_request *r);
void cs_stream_analytics_start(struct pv_request *r);
void cs_stream_analytics_tick(struct pv_request *r, int64_t now_ns);
void cs_stream_analytics_stop(struct pv_request *r);
void cs_stream_events_start(struct pv_request *r);
void cs_stream_events_stop(struct pv_request *r);

#endif
