// SPDX-License-Identifier: Apache-2.0
//
// The built-in media room handlers (docs/DESIGN.md §4.2), as rows of the Provider's table: rooms
// keyed campaign_id:context_id with their peers and state, signalling relayed privately between the
// peers of a room, and the streams that watch rooms and peers. A room lives on the shard that
// owns its campaign and is touched only by that shard's thread; a peer's connection may live on
// any shard (its frames travel through the rings), and a peer leaves its rooms when that
// connection closes. docs/HANDLERS.md describes every action, its payload and its events.
#ifndef NEXUS_HANDLERS_MEDIA_H
#define NEXUS_HANDLERS_MEDIA_H

#include <stddef.h>

#include "handlers/provider.h"

extern const struct handler_row media_rows[];
extern const size_t media_row_count;

#endif
