// SPDX-License-Identifier: Apache-2.0
//
// The io_uring user_data of a shard's operations, encoded and decoded in one place. A value
// below UD_CONN_MIN names a shard-level operation (accept, timers, wake-ups); any other value
// is a connection pointer, 16-byte aligned, with the connection operation in its low four bits.
// Header only; used by shard.c (decoding every completion) and conn.c (encoding its own).
#ifndef NEXUS_BROKER_UD_H
#define NEXUS_BROKER_UD_H

#include <stdbool.h>
#include <stdint.h>

#include "broker/check.h"

struct conn;

/* Shard-level operations. */
enum ud_shard_op {
    UD_ACCEPT = 1,      /* the multishot accept */
    UD_TIMER = 2,       /* the housekeeping tick */
    UD_WAKE = 3,        /* a peer shard's msg_ring wake-up */
    UD_IGNORE = 4,      /* results nobody waits for (cancels, wake-ups sent) */
    UD_HOOK_TIMER = 5,  /* the handlers layer's timer (core_timer_at) */
    UD_STORE_WRITE = 6, /* the event log's batch write (store.c) */
    UD_STORE_ISYNC = 8, /* an --fsync interval fdatasync */
    UD_STORE_TIMER = 9, /* the wait for the next interval fdatasync */
    UD_WS_ACCEPT = 10,  /* the multishot accept of the WebSocket listener */
    UD_STORE_PREP = 11, /* a write or sync zero-filling the event log's next segment */
    /* UD_STORE_SYNC0 + slot: the fdatasync of the written batch in that slot of the event
     * log's sync queue (--fsync always; store.c) */
    UD_STORE_SYNC0 = 16,
};
#define UD_STORE_SYNC_SLOTS 8

/* Operations of one connection. */
enum ud_conn_op {
    UD_CONN_RECV = 1,   /* the multishot receive */
    UD_CONN_SEND = 2,   /* the one sendmsg in flight */
    UD_CONN_CANCEL = 3, /* a cancel of its receive */
};

#define UD_OP_MASK  0xfull
#define UD_CONN_MIN 64u /* connections are 16-byte aligned heap pointers, far above 64 */

static inline uint64_t ud_of_conn(const struct conn *c, enum ud_conn_op op)
{
    uint64_t p = (uint64_t)(uintptr_t)c;
    NX_ASSERT((p & UD_OP_MASK) == 0 && p >= UD_CONN_MIN);
    return p | (uint64_t)op;
}

static inline bool ud_is_conn(uint64_t ud)
{
    return ud >= UD_CONN_MIN;
}

static inline struct conn *ud_conn(uint64_t ud)
{
    return (struct conn *)(uintptr_t)(ud & ~UD_OP_MASK);
}

static inline enum ud_conn_op ud_conn_op(uint64_t ud)
{
    return (enum ud_conn_op)(ud & UD_OP_MASK);
}

#endif
