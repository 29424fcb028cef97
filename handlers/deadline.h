// SPDX-License-Identifier: Apache-2.0
//
// An intrusive min-heap of deadlines: the Provider keeps one per shard, ordering its open
// requests by their next due time (timeout, heartbeat or handler tick), so that one io_uring
// timeout armed for the minimum drives them all. The heap owns only its array of node pointers;
// the nodes are embedded in the owner's records (struct deadline_node inside, say, a request,
// found back with deadline_entry), and the owner allocates, frees and computes their due times.
// It knows nothing of clocks or timers: arming the shard timer for deadline_min is the owner's
// job. Threading rule: a heap and its nodes are used by one shard's thread only. Misuse (a node
// pushed twice, a node whose index does not match the heap) is a programmer error and aborts
// (NX_ASSERT, broker/check.h); debug builds also check the whole heap after every change.
#ifndef NEXUS_HANDLERS_DEADLINE_H
#define NEXUS_HANDLERS_DEADLINE_H

#include <stddef.h>
#include <stdint.h>

/* deadline_node.idx of a node in no heap. */
#define DEADLINE_NONE UINT32_MAX

struct deadline_node {
    int64_t due_ns; /* the sort key: smaller is sooner */
    uint32_t idx;   /* position in the heap's array, DEADLINE_NONE when in none */
};

struct deadline_heap {
    struct deadline_node **v;
    uint32_t len, cap;
};

/* The record of type `type` whose member `member` is the node n. */
#define deadline_entry(n, type, member) ((type *)(void *)((char *)(n)-offsetof(type, member)))

/* Makes n a node in no heap, due at 0. Every node starts so before its first push. */
static inline void deadline_node_init(struct deadline_node *n)
{
    n->due_ns = 0;
    n->idx = DEADLINE_NONE;
}

/* Initializes an empty heap (no allocation until the first push). */
void deadline_heap_init(struct deadline_heap *h);
/* Frees the array. The nodes still in the heap are the owner's and are left as they are. */
void deadline_heap_free(struct deadline_heap *h);

/* Adds n, with the due time it holds (n must be in no heap). Returns 0, or -ENOMEM with the
 * heap unchanged. The array starts at 64 entries and doubles. */
int deadline_push(struct deadline_heap *h, struct deadline_node *n);

/* Takes n out of h and marks it in no heap. A node in no heap (idx DEADLINE_NONE) is left
 * alone, so removing twice is harmless. */
void deadline_remove(struct deadline_heap *h, struct deadline_node *n);

/* Sets n's due time and, if n is in h, moves it to its place. A node in no heap only gets the
 * new due time (it is sorted by it when pushed). */
void deadline_update(struct deadline_heap *h, struct deadline_node *n, int64_t due_ns);

/* The node due first (any one of them on a tie), left in the heap; NULL if the heap is empty. */
struct deadline_node *deadline_min(const struct deadline_heap *h);

/* How many nodes the heap holds. */
uint32_t deadline_count(const struct deadline_heap *h);

#endif
