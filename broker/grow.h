// SPDX-License-Identifier: Apache-2.0
//
// One way to grow an array by doubling, for every growable array of the broker and the
// handlers (subscription lists, a connection's subscriptions, remote summaries, handler
// registrations, watcher lists, ...). The caller keeps the bound: grow_array never decides how
// many elements are allowed, it only makes room. Header only; any thread, on its own arrays.
#ifndef NEXUS_BROKER_GROW_H
#define NEXUS_BROKER_GROW_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Makes room for at least `need` elements of `elem` bytes in the array v of capacity *cap:
 * when need > *cap, reallocates to the first of first, 2*first, 4*first, ... that is at least
 * need (first > 0). Returns the array to use from now on and updates *cap, or NULL if out of
 * memory or the size would overflow — then v and *cap are unchanged and still valid. */
static inline void *grow_array(void *v, uint32_t *cap, uint32_t need, size_t elem, uint32_t first)
{
    if (need <= *cap)
        return v;
    uint64_t ncap = *cap ? *cap : first;
    while (ncap < need)
        ncap *= 2;
    if (ncap > UINT32_MAX || ncap > SIZE_MAX / elem)
        return NULL;
    void *nv = realloc(v, (size_t)ncap * elem);
    if (!nv)
        return NULL;
    *cap = (uint32_t)ncap;
    return nv;
}

/* grow_array for a struct member array `v` with capacity member `cap`: evaluates to 0, or
 * -ENOMEM with nothing changed. Usage: if (GROW(l->v, l->cap, l->count + 1, 4) < 0) ... */
#define GROW(v, cap, need, first)                                                                  \
    __extension__({                                                                                \
        void *grow_nv_ = grow_array((v), &(cap), (need), sizeof(*(v)), (first));                   \
        if (grow_nv_)                                                                              \
            (v) = grow_nv_;                                                                        \
        grow_nv_ ? 0 : -ENOMEM;                                                                    \
    })

#endif
