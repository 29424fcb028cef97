// SPDX-License-Identifier: Apache-2.0
//
// The parts of core.h that are views of the shard, its campaigns and its connections (the
// publishing functions live with pub/sub in pubsub.c). Each runs on the thread core.h names.
#include "broker/core.h"

#include <stdarg.h>
#include <stdio.h>

#include "broker/auth.h"
#include "broker/conn.h"
#include "broker/msg.h"
#include "broker/pubsub.h"
#include "broker/shard.h"
#include "broker/store.h"

const struct core_hooks *core_hooks;

void core_set_hooks(const struct core_hooks *h)
{
    core_hooks = h;
}

uint32_t core_shard_index(const struct shard *s)
{
    return s->index;
}

uint32_t core_shard_count(const struct shard *s)
{
    return s->broker->shard_count;
}

uint64_t core_all_shards(const struct shard *s)
{
    uint32_t n = s->broker->shard_count;
    return n == 64 ? ~0ull : (1ull << n) - 1;
}

void **core_shard_slot(struct shard *s)
{
    return &s->hooks_slot;
}

int64_t core_now_ns(void)
{
    return shard_now_ns();
}

void core_uuid4(struct shard *s, char out[36])
{
    shard_uuid4(s, out);
}

void core_timer_at(struct shard *s, int64_t deadline_ns)
{
    shard_timer_at(s, deadline_ns);
}

int core_send(struct shard *s, uint32_t dst, enum core_class cls, uint32_t aux, void *ptr,
              uint64_t arg)
{
    struct ring_msg m = {.kind = cls == CORE_REQUEST ? MSG_HOOK_REQ : MSG_HOOK_DEL,
                         .aux = aux,
                         .ptr = ptr,
                         .arg = arg};
    return shard_send(s, dst, cls, &m);
}

void core_counter_add(struct shard *s, int idx, uint64_t n)
{
    NX_ASSERT(idx >= 0 && idx < STATS_EXT_MAX);
    stat_add(&s->stats.ext[idx], n);
}

void core_counter_sub(struct shard *s, int idx, uint64_t n)
{
    NX_ASSERT(idx >= 0 && idx < STATS_EXT_MAX);
    stat_sub(&s->stats.ext[idx], n);
}

/* ---- campaigns ---------------------------------------------------------------------------- */

int64_t core_campaign_id(const struct campaign *cp)
{
    return cp->id;
}

uint64_t core_campaign_sequence(const struct campaign *cp)
{
    return cp->sequence;
}

uint64_t core_campaign_released(const struct campaign *cp)
{
    return cp->released;
}

int core_log_scan(struct shard *s, const struct campaign *cp, uint64_t from, uint64_t to,
                  void (*ev)(void *arg, struct oframe *f),
                  void (*gap)(void *arg, uint64_t first, uint64_t last), void *arg)
{
    return store_scan(s, cp->id, from, to, 0, NULL, ev, gap, arg);
}

void **core_campaign_slot(struct campaign *cp)
{
    return &cp->slot;
}

/* Those of other shards (the owner's interest counts) and this shard's own (its
 * subscriber-side list); firehose subscriptions are not counted. */
uint32_t core_campaign_subscribers(struct shard *s, const struct campaign *cp)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->broker->shard_count; i++)
        if (i != s->index)
            n += cp->interest[i];
    const struct sub_list *l = map_get(&s->sub_lists, (uint64_t)cp->id);
    n += l ? l->count : 0;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

uint32_t core_campaign_slots(struct shard *s)
{
    return s->campaigns.slots ? s->campaigns.mask + 1 : 0;
}

struct campaign *core_campaign_at(struct shard *s, uint32_t slot)
{
    return slot < core_campaign_slots(s) ? s->campaigns.slots[slot].val : NULL;
}

uint32_t core_campaign_count(struct shard *s)
{
    return s->campaigns.count;
}

/* ---- connections -------------------------------------------------------------------------- */

uint64_t core_conn_id(const struct conn *c)
{
    return c->id;
}

struct shard *core_conn_shard(struct conn *c)
{
    return c->shard;
}

void core_conn_error(struct conn *c, uint64_t correlation, const char *code, const char *fmt, ...)
{
    char msg[CODEC_CONTROL_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    conn_error(c, correlation, code, "%s", msg);
}

void core_conn_notify(struct conn *c, uint64_t shard_mask)
{
    NX_ASSERT((shard_mask & ~core_all_shards(c->shard)) == 0);
    c->notify_mask |= shard_mask;
}

/* ---- who is speaking ---------------------------------------------------------------------- */

bool core_accounts_on(void)
{
    return auth_accounts_on();
}

bool core_conn_may(struct conn *c, enum perm_op op, const struct evtype *t, const char *type_str)
{
    return !c->acct || account_may_action(c->acct, op, t, type_str);
}

void core_conn_denied(struct conn *c, uint64_t correlation, enum perm_op op, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    auth_deny(c, correlation, op, "%s", msg);
}

void core_denied_to_conn(struct shard *s, uint64_t conn_id, uint64_t correlation, enum perm_op op,
                         const char *message)
{
    char msg[CODEC_CONTROL_BYTES_MAX];
    snprintf(msg, sizeof(msg), "%s: %s", perm_op_name(op), message);
    auth_count_denied(s, op);
    core_error_to_conn(s, conn_id, correlation, "permission_denied", msg);
}

void core_count_denied(struct shard *s, enum perm_op op)
{
    auth_count_denied(s, op);
}
