// SPDX-License-Identifier: Apache-2.0
//
// Scatter-gather over every shard (provider_gather in provider.h): the calling shard sends one
// hook message to each other shard over the request rings; each runs the function on its own
// thread and sends the message back with its result; the caller runs `done` when the last one
// is back. Shards share nothing and nobody locks: the only shared memory is the caller's
// read-only context and the results, handed over with the messages. Used by campaign:list and
// campaign:switch. Each gather in flight is kept by its calling shard, in its per-shard slot.
#include <errno.h>
#include <stdlib.h>

#include "handlers/provider.h"
#include "handlers/provider_gather.h"

struct gather_msg {
    const struct provider_gather_ops *ops;
    const void *ctx;
    uint64_t id;
    uint32_t from; /* the calling shard */
    uint32_t at;   /* the shard that ran each */
    void *result;
};

struct gather {
    const struct provider_gather_ops *ops;
    void *ctx;
    uint32_t remaining, n;
    bool incomplete; /* a part could not be sent (out of memory) */
    void *results[];
};

struct gather_shard {
    struct map pending; /* id -> struct gather; bounded by the requests that start gathers */
    uint64_t next_id;
};

static struct gather_shard *gather_shard(struct shard *s, bool create)
{
    void **slot = provider_shard_slot(s, PROVIDER_SLOT_GATHER);
    if (!*slot && create) {
        struct gather_shard *g = calloc(1, sizeof(*g));
        if (!g)
            return NULL;
        map_init(&g->pending);
        *slot = g;
    }
    return *slot;
}

static void gather_finish(struct shard *s, struct gather_shard *g, uint64_t id, struct gather *ga)
{
    map_del(&g->pending, id);
    ga->ops->done(s, ga->ctx, ga->results, ga->n, !ga->incomplete);
    free(ga);
}

int provider_gather(struct shard *s, const struct provider_gather_ops *ops, void *ctx)
{
    struct gather_shard *g = gather_shard(s, true);
    uint32_t n = core_shard_count(s);
    struct gather *ga = g ? calloc(1, sizeof(*ga) + sizeof(void *) * n) : NULL;
    struct gather_msg **msgs = calloc(n, sizeof(*msgs));
    bool oom = !ga || !msgs;
    /* Every message is allocated before any leaves, so a failure leaves nothing running. */
    for (uint32_t d = 0; d < n && !oom; d++)
        if (d != core_shard_index(s) && !(msgs[d] = malloc(sizeof(struct gather_msg))))
            oom = true;
    uint64_t id = g ? ++g->next_id : 0;
    if (oom || map_put(&g->pending, id, ga) < 0) {
        for (uint32_t d = 0; msgs && d < n; d++)
            free(msgs[d]);
        free(msgs);
        free(ga);
        return -ENOMEM;
    }
    ga->ops = ops;
    ga->ctx = ctx;
    ga->n = n;
    ga->remaining = n;
    for (uint32_t d = 0; d < n; d++) {
        if (d == core_shard_index(s))
            continue;
        *msgs[d] =
            (struct gather_msg){.ops = ops, .ctx = ctx, .id = id, .from = core_shard_index(s)};
        if (core_send(s, d, CORE_REQUEST, PV_GATHER, msgs[d], 0) < 0) {
            /* That shard's part is missing: done learns it through complete = false. */
            free(msgs[d]);
            ga->incomplete = true;
            ga->remaining--;
        }
    }
    free(msgs);
    ga->results[core_shard_index(s)] = ops->each(s, ctx);
    if (--ga->remaining == 0)
        gather_finish(s, g, id, ga);
    return 0;
}

void pv_gather_msg(struct shard *s, uint32_t aux, void *ptr)
{
    struct gather_msg *gm = ptr;
    if (aux == PV_GATHER) {
        gm->result = gm->ops->each(s, gm->ctx);
        gm->at = core_shard_index(s);
        /* Back on the request class: its done may publish, which only requests may do. */
        if (core_send(s, gm->from, CORE_REQUEST, PV_GATHER_BACK, gm, 0) < 0) {
            log_error((int)core_shard_index(s),
                      "out of memory answering a scatter-gather: it completes at shutdown");
            pv_gather_msg_free(aux, gm);
        }
        return;
    }
    struct gather_shard *g = gather_shard(s, false);
    uint64_t id = gm->id;
    struct gather *ga = g ? map_get(&g->pending, id) : NULL;
    if (!ga || gm->at >= ga->n) {
        log_error((int)core_shard_index(s), "scatter-gather reply for an unknown gather");
        if (gm->result && gm->ops->free_result)
            gm->ops->free_result(gm->result);
        free(gm);
        return;
    }
    ga->results[gm->at] = gm->result;
    free(gm);
    if (--ga->remaining == 0)
        gather_finish(s, g, id, ga);
}

void pv_gather_msg_free(uint32_t aux, void *ptr)
{
    (void)aux;
    struct gather_msg *gm = ptr;
    if (gm->result && gm->ops->free_result)
        gm->ops->free_result(gm->result);
    free(gm);
}

void pv_gather_shard_free(struct shard *s)
{
    struct gather_shard *g = gather_shard(s, false);
    if (!g)
        return;
    for (uint32_t i = 0; g->pending.slots && i <= g->pending.mask; i++) {
        struct gather *ga = g->pending.slots[i].val;
        if (!ga)
            continue;
        ga->ops->done(s, ga->ctx, ga->results, ga->n, false);
        free(ga);
    }
    map_free(&g->pending);
    free(g);
    *provider_shard_slot(s, PROVIDER_SLOT_GATHER) = NULL;
}
