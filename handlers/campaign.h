// SPDX-License-Identifier: Apache-2.0
//
// The built-in campaign handlers (docs/DESIGN.md §4.1), as rows of the Provider's table:
// per-campaign state (key → google.protobuf.Value), features, counters, history of recent events
// and the campaign:* actions and streams over them. Everything of a campaign lives on the shard
// that owns it and is touched only by that shard's thread; campaign:list and campaign:switch reach
// the other shards through provider_gather (ring messages, no locks). docs/HANDLERS.md
// describes every action, its payload and its events.
#ifndef NEXUS_HANDLERS_CAMPAIGN_H
#define NEXUS_HANDLERS_CAMPAIGN_H

#include <stddef.h>

#include "handlers/provider.h"

extern const struct handler_row campaign_rows[];
extern const size_t campaign_row_count;

#endif
