// SPDX-License-Identifier: Apache-2.0
//
// The accounts snapshot's layout, shared by auth_file.c (parsing, permission checks) and
// auth.c (authentication, reload). Private to those two files.
#ifndef NEXUS_BROKER_AUTH_INT_H
#define NEXUS_BROKER_AUTH_INT_H

#include <sodium.h>
#include <stdatomic.h>

#include "broker/auth.h"

/* publish / subscribe CAMPAIGNS PATTERN... */
struct rule {
    bool all;            /* `*`: every campaign (subscribing to 0 still needs `admin`) */
    uint16_t nr, np;     /* ranges, patterns */
    int64_t (*r)[2];     /* inclusive [lo, hi] */
    struct evpattern *p; /* event-type patterns */
};

/* request / handle: service and action, "" for `*`. */
struct action {
    char svc[EVTYPE_NAME_BYTES_MAX + 1];
    char act[EVTYPE_NAME_BYTES_MAX + 1];
};

struct account {
    char name[ACCOUNT_NAME_BYTES_MAX + 1];
    char id[ACCOUNT_ID_BYTES_MAX + 1]; /* the user_id stamped on its events */
    uint32_t id_len;
    char cert[ACCOUNT_CERT_BYTES_MAX + 1]; /* client-certificate CN, "" if none */
    char hash[crypto_pwhash_STRBYTES];     /* argon2 string of its token */
    bool has_token, admin;
    uint32_t line; /* where it was defined (errors) */
    struct rule *pub, *sub;
    uint32_t npub, nsub;
    struct action *req, *hdl;
    uint32_t nreq, nhdl;
    /* The token last verified for it, as a keyed BLAKE2b digest (auth.c): all zero until one
     * was. Written by the verifier thread, read by shards (a torn read only misses). */
    _Atomic uint64_t ok_mac[4];
    struct accounts *owner;
};

struct accounts {
    atomic_uint refs;
    uint32_t n, cap;
    struct account *v; /* sorted by name */
};

#endif
