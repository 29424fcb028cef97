// SPDX-License-Identifier: Apache-2.0
//
// Assertions for programmer errors (docs/ARCHITECTURE.md, "Invariants and failures"). An
// assertion states an invariant the code keeps whatever a client sends; client bytes never
// reach one (bad input gets an error frame). Two levels:
//  - NX_ASSERT: always on, in every build, for checks that cost a compare or two (reference
//    counts, operation counts, state flags, heap indexes). A failure prints file, line and the
//    expression, then aborts: a broken invariant means memory is already wrong, and going on
//    would corrupt or lose events silently.
//  - NX_ASSERT_DEBUG: compiled in only when NEXUS_DEBUG_ASSERTS is defined (the debug and
//    asan presets), for checks that walk a structure (a whole heap, a whole list).
// Any thread may use them.
#ifndef NEXUS_BROKER_CHECK_H
#define NEXUS_BROKER_CHECK_H

/* Prints "file:line: assertion failed: expr" to stderr and aborts. Never returns. */
void nx_assert_fail(const char *file, int line, const char *expr) __attribute__((noreturn, cold));

#define NX_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (__builtin_expect(!(cond), 0))                                                          \
            nx_assert_fail(__FILE__, __LINE__, #cond);                                             \
    } while (0)

#ifdef NEXUS_DEBUG_ASSERTS
#define NX_ASSERT_DEBUG(cond) NX_ASSERT(cond)
#else
#define NX_ASSERT_DEBUG(cond) ((void)0)
#endif

#endif
