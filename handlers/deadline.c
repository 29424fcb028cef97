// SPDX-License-Identifier: Apache-2.0
//
// The deadline min-heap of deadline.h: a binary heap in an array of node pointers, each node
// recording its own index so that it can be removed or re-sorted in O(log n) without a search.
#include "handlers/deadline.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "broker/core.h"

/* The whole-heap invariant, for NX_ASSERT_DEBUG after every change: each node records its own
 * index, and no node is due before its parent. O(n): debug builds only. */
__attribute__((unused)) static bool deadline_check(const struct deadline_heap *h)
{
    for (uint32_t i = 0; i < h->len; i++) {
        if (h->v[i]->idx != i)
            return false;
        if (i > 0 && h->v[(i - 1) / 2]->due_ns > h->v[i]->due_ns)
            return false;
    }
    return true;
}

static void deadline_swap(struct deadline_heap *h, uint32_t a, uint32_t b)
{
    struct deadline_node *t = h->v[a];
    h->v[a] = h->v[b];
    h->v[b] = t;
    h->v[a]->idx = a;
    h->v[b]->idx = b;
}

/* Moves the node at i towards the root while it is due before its parent; returns where it
 * stopped. */
static uint32_t deadline_up(struct deadline_heap *h, uint32_t i)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->v[parent]->due_ns <= h->v[i]->due_ns)
            break;
        deadline_swap(h, i, parent);
        i = parent;
    }
    return i;
}

/* Moves the node at i towards the leaves while a child is due before it. */
static void deadline_down(struct deadline_heap *h, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->len && h->v[l]->due_ns < h->v[m]->due_ns)
            m = l;
        if (r < h->len && h->v[r]->due_ns < h->v[m]->due_ns)
            m = r;
        if (m == i)
            return;
        deadline_swap(h, i, m);
        i = m;
    }
}

void deadline_heap_init(struct deadline_heap *h)
{
    h->v = NULL;
    h->len = 0;
    h->cap = 0;
}

void deadline_heap_free(struct deadline_heap *h)
{
    free(h->v);
    deadline_heap_init(h);
}

int deadline_push(struct deadline_heap *h, struct deadline_node *n)
{
    NX_ASSERT(n->idx == DEADLINE_NONE);
    /* DEADLINE_NONE is no index: the heap holds at most UINT32_MAX nodes, 0..UINT32_MAX-1. */
    if (h->len == DEADLINE_NONE || GROW(h->v, h->cap, h->len + 1, 64) < 0)
        return -ENOMEM;
    n->idx = h->len;
    h->v[h->len++] = n;
    deadline_up(h, n->idx);
    NX_ASSERT_DEBUG(deadline_check(h));
    return 0;
}

void deadline_remove(struct deadline_heap *h, struct deadline_node *n)
{
    uint32_t i = n->idx;
    if (i == DEADLINE_NONE)
        return;
    NX_ASSERT(i < h->len && h->v[i] == n);
    h->len--;
    if (i != h->len) {
        /* The last node fills the hole, then goes up or down to its place. */
        h->v[i] = h->v[h->len];
        h->v[i]->idx = i;
        deadline_down(h, deadline_up(h, i));
    }
    n->idx = DEADLINE_NONE;
    NX_ASSERT_DEBUG(deadline_check(h));
}

void deadline_update(struct deadline_heap *h, struct deadline_node *n, int64_t due_ns)
{
    n->due_ns = due_ns;
    if (n->idx == DEADLINE_NONE)
        return;
    NX_ASSERT(n->idx < h->len && h->v[n->idx] == n);
    deadline_down(h, deadline_up(h, n->idx));
    NX_ASSERT_DEBUG(deadline_check(h));
}

struct deadline_node *deadline_min(const struct deadline_heap *h)
{
    return h->len ? h->v[0] : NULL;
}

uint32_t deadline_count(const struct deadline_heap *h)
{
    return h->len;
}
