// SPDX-License-Identifier: Apache-2.0
//
// The stats_reply frame (nexus.v1.StatsReply), encoded and decoded with protobuf-c: it is not
// on the hot path, and a generated encoder keeps it in step with the schema. Pure; any thread.
#ifndef NEXUS_CODEC_STATS_H
#define NEXUS_CODEC_STATS_H

#include <stddef.h>
#include <stdint.h>

struct codec_shard_stats {
    uint32_t shard_id;
    uint64_t connections, events_in, events_out, frames_in, frames_out, bytes_queued;
    uint64_t slow_disconnects, drops, duplicates, errors, campaigns, subscriptions, ring_depth;
    uint64_t paused_reads;
    uint64_t req_success, req_failed, req_cancelled, req_timeout, req_no_handler;
    uint64_t open_streams, heartbeats, handler_losses;
    uint64_t media_rooms, media_peers;
};

/* Encodes a whole stats_reply frame (length prefix included) into a malloc'd buffer.
 * Returns its length, or -ENOMEM; *out is the caller's to free. */
int codec_stats_reply_encode(uint8_t **out, uint64_t correlation,
                             const struct codec_shard_stats *shards, uint32_t shard_count,
                             uint64_t rss_bytes);

/* Decodes a StatsReply body into at most cap entries. Returns the number of shards (which may
 * exceed cap: only cap are filled) or -EBADMSG. */
int codec_stats_reply_decode(const uint8_t *body, size_t len, struct codec_shard_stats *shards,
                             uint32_t cap, uint64_t *rss_bytes);

#endif
