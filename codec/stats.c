// SPDX-License-Identifier: Apache-2.0
//
// StatsReply through protobuf-c's generated code. Pure; any thread.
#include "codec/stats.h"

#include <errno.h>
#include <stdlib.h>

#include "codec/envelope.h"
#include "codec/wire.h"
#include "nexus.pb-c.h"

int codec_stats_reply_encode(uint8_t **out, uint64_t correlation,
                             const struct codec_shard_stats *st, uint32_t n, uint64_t rss_bytes)
{
    Nexus__V1__ShardStats *items = calloc(n ? n : 1, sizeof(*items));
    Nexus__V1__ShardStats **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    if (!items || !ptrs) {
        free(items);
        free(ptrs);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        Nexus__V1__ShardStats *x = &items[i];
        nexus__v1__shard_stats__init(x);
        x->shard_id = st[i].shard_id;
        x->connections = st[i].connections;
        x->events_in = st[i].events_in;
        x->events_out = st[i].events_out;
        x->frames_in = st[i].frames_in;
        x->frames_out = st[i].frames_out;
        x->bytes_queued = st[i].bytes_queued;
        x->slow_disconnects = st[i].slow_disconnects;
        x->drops = st[i].drops;
        x->duplicates = st[i].duplicates;
        x->errors = st[i].errors;
        x->campaigns = st[i].campaigns;
        x->subscriptions = st[i].subscriptions;
        x->ring_depth = st[i].ring_depth;
        x->paused_reads = st[i].paused_reads;
        x->requests_success = st[i].req_success;
        x->requests_failed = st[i].req_failed;
        x->requests_cancelled = st[i].req_cancelled;
        x->requests_timeout = st[i].req_timeout;
        x->requests_no_handler = st[i].req_no_handler;
        x->open_streams = st[i].open_streams;
        x->heartbeats = st[i].heartbeats;
        x->handler_losses = st[i].handler_losses;
        x->media_rooms = st[i].media_rooms;
        x->media_peers = st[i].media_peers;
        ptrs[i] = x;
    }
    Nexus__V1__StatsReply reply = NEXUS__V1__STATS_REPLY__INIT;
    reply.n_shards = n;
    reply.shards = ptrs;
    reply.rss_bytes = rss_bytes;
    Nexus__V1__Frame frame = NEXUS__V1__FRAME__INIT;
    frame.correlation = correlation;
    frame.body_case = NEXUS__V1__FRAME__BODY_STATS_REPLY;
    frame.stats_reply = &reply;
    size_t len = nexus__v1__frame__get_packed_size(&frame);
    uint8_t *buf = malloc(4 + len);
    int r = -ENOMEM;
    if (buf) {
        wire_put_be32(buf, (uint32_t)len);
        nexus__v1__frame__pack(&frame, buf + 4);
        *out = buf;
        r = (int)(4 + len);
    }
    free(items);
    free(ptrs);
    return r;
}

int codec_stats_reply_decode(const uint8_t *body, size_t len, struct codec_shard_stats *st,
                             uint32_t cap, uint64_t *rss_bytes)
{
    Nexus__V1__StatsReply *r = nexus__v1__stats_reply__unpack(NULL, len, body);
    if (!r)
        return -EBADMSG;
    for (size_t i = 0; i < r->n_shards && i < cap; i++) {
        const Nexus__V1__ShardStats *x = r->shards[i];
        struct codec_shard_stats *o = &st[i];
        o->shard_id = x->shard_id;
        o->connections = x->connections;
        o->events_in = x->events_in;
        o->events_out = x->events_out;
        o->frames_in = x->frames_in;
        o->frames_out = x->frames_out;
        o->bytes_queued = x->bytes_queued;
        o->slow_disconnects = x->slow_disconnects;
        o->drops = x->drops;
        o->duplicates = x->duplicates;
        o->errors = x->errors;
        o->campaigns = x->campaigns;
        o->subscriptions = x->subscriptions;
        o->ring_depth = x->ring_depth;
        o->paused_reads = x->paused_reads;
        o->req_success = x->requests_success;
        o->req_failed = x->requests_failed;
        o->req_cancelled = x->requests_cancelled;
        o->req_timeout = x->requests_timeout;
        o->req_no_handler = x->requests_no_handler;
        o->open_streams = x->open_streams;
        o->heartbeats = x->heartbeats;
        o->handler_losses = x->handler_losses;
        o->media_rooms = x->media_rooms;
        o->media_peers = x->media_peers;
    }
    int n = (int)r->n_shards;
    if (rss_bytes)
        *rss_bytes = r->rss_bytes;
    nexus__v1__stats_reply__free_unpacked(r, NULL);
    return n;
}
