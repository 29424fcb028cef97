// SPDX-License-Identifier: Apache-2.0
//
// Internal to the Provider: how provider.c hands the scatter-gather ring messages and shutdown
// to provider_gather.c (the API itself, provider_gather, is in provider.h). Shard thread only.
#ifndef NEXUS_HANDLERS_PROVIDER_GATHER_H
#define NEXUS_HANDLERS_PROVIDER_GATHER_H

#include <stdbool.h>
#include <stdint.h>

struct shard;

/* Hook message kinds (core_send's aux) of the scatter-gather; provider.c's own are below 16. */
enum { PV_GATHER = 16, PV_GATHER_BACK = 17 };

static inline bool pv_gather_owns(unsigned aux)
{
    return aux == PV_GATHER || aux == PV_GATHER_BACK;
}

void pv_gather_msg(struct shard *s, uint32_t aux, void *ptr);
/* A gather message left in a ring at shutdown. */
void pv_gather_msg_free(uint32_t aux, void *ptr);
/* At shutdown: every gather still waiting ends with complete = false. */
void pv_gather_shard_free(struct shard *s);

#endif
