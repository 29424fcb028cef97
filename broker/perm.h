// SPDX-License-Identifier: Apache-2.0
//
// The operations a permission is checked for (docs/SECURITY.md), shared by the core's checks
// (auth.h) and the handlers' (core.h).
#ifndef NEXUS_BROKER_PERM_H
#define NEXUS_BROKER_PERM_H

enum perm_op {
    PERM_EMIT,      /* publish an event */
    PERM_SUBSCRIBE, /* subscribe to a campaign (0: the firehose) with a pattern */
    PERM_REQUEST,   /* request (or cancel) an action */
    PERM_CANCEL,    /* cancel a request another connection made */
    PERM_HANDLE,    /* register as an action's external handler */
    PERM_SIGNAL,    /* join a media room as a peer id */
    PERM_ADMIN,     /* stats, the firehose */
    PERM_OP_COUNT
};

/* "emit", "subscribe", ...: the name in errors and in nexus_permission_denied_total{op}. */
const char *perm_op_name(enum perm_op op);

#endif
