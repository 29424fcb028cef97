// SPDX-License-Identifier: Apache-2.0
//
// The counter registry of stats.h. Written on the main thread at start-up, read-only once the
// shards run.
#include "broker/stats.h"

#include <errno.h>

static const struct stats_def *registered[STATS_EXT_MAX];
static int registered_count;

int stats_register(const struct stats_def *def)
{
    for (int i = 0; i < registered_count; i++)
        if (registered[i] == def)
            return i; /* idempotent: a layer installed twice (tests) keeps its index */
    if (registered_count == STATS_EXT_MAX)
        return -ENOSPC;
    registered[registered_count] = def;
    return registered_count++;
}

const struct stats_def *stats_registered(int index)
{
    return index >= 0 && index < registered_count ? registered[index] : NULL;
}

int stats_registered_count(void)
{
    return registered_count;
}
