// SPDX-License-Identifier: Apache-2.0
//
// Who is speaking (docs/SECURITY.md): the accounts file (users, their hashed tokens or
// client-certificate names, their permissions), authentication of a hello, and the permission
// checks of every operation. Private to broker/; handlers ask through core.h (core_conn_may,
// core_denied).
//
// Threading. The accounts are an immutable, reference-counted snapshot: readers on any shard
// use it without locks; SIGHUP builds a new one (auth_reload) and each shard moves its
// connections over on its next tick (auth_shard_tick), closing those the new file no longer
// allows. Verifying a token (argon2id, tens of milliseconds and 64 MiB on purpose) happens on
// one worker thread, never on a shard: the shard parks the connection (CONN_AUTH_PENDING), the
// worker posts the answer to the shard's inbox and wakes it. A token once verified is
// remembered per account as a keyed BLAKE2b digest, so a reconnecting client is checked on the
// shard in about a microsecond.
#ifndef NEXUS_BROKER_AUTH_H
#define NEXUS_BROKER_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/config.h"
#include "broker/perm.h"
#include "codec/envelope.h"
#include "codec/evtype.h"

struct conn;
struct shard;
struct broker;
struct account;
struct accounts;

/* Bounds of the accounts file (docs/SECURITY.md): a file past them is refused, not cut. */
#define ACCOUNTS_FILE_BYTES_MAX (16u << 20)
#define ACCOUNTS_MAX            65536
#define ACCOUNT_NAME_BYTES_MAX  64
#define ACCOUNT_ID_BYTES_MAX    128
#define ACCOUNT_CERT_BYTES_MAX  255
#define ACCOUNT_RULES_MAX       64 /* publish + subscribe lines of one account */
#define ACCOUNT_RANGES_MAX      64 /* campaign ids / ranges in one rule */
#define ACCOUNT_PATTERNS_MAX    16 /* type patterns in one rule */
#define ACCOUNT_ACTIONS_MAX     64 /* request / handle entries of one account */
/* Longest token a hello may carry: tokens are random strings of a few dozen bytes. */
#define AUTH_TOKEN_BYTES_MAX 1024

/* ---- the accounts file ---- */

/* Parses an accounts file's text. Returns the snapshot (one reference), or NULL with err
 * holding "line N: what is wrong" (the first error). */
struct accounts *accounts_parse(const char *text, size_t len, char *err, size_t cap);
/* Reads and parses path; errors are prefixed with the path. */
struct accounts *accounts_load(const char *path, char *err, size_t cap);
void accounts_ref(struct accounts *a);
void accounts_unref(struct accounts *a);
uint32_t accounts_count(const struct accounts *a);
/* The account named name, or NULL. */
const struct account *accounts_find(const struct accounts *a, const char *name, size_t len);
/* The account whose `cert` is cn, or NULL. */
const struct account *accounts_find_cert(const struct accounts *a, const char *cn);

/* ---- an account's permissions (no allocation, bounded work) ---- */

const char *account_name(const struct account *a);
/* The user id the broker stamps on the account's events. */
const char *account_user_id(const struct account *a, uint32_t *len);
bool account_admin(const struct account *a);
bool account_may_publish(const struct account *a, int64_t campaign_id, const struct evtype *t,
                         const char *type_str);
/* Whether every type pattern p matches is one the account may subscribe to in campaign_id. */
bool account_may_subscribe(const struct account *a, int64_t campaign_id, const struct evpattern *p);
/* PERM_REQUEST or PERM_HANDLE for the action of type t (service:action). */
bool account_may_action(const struct account *a, enum perm_op op, const struct evtype *t,
                        const char *type_str);

/* ---- the broker's accounts ---- */

/* Start-up, before broker_start: loads --accounts (if given) and starts the verifier thread.
 * Returns 0, or <0 after printing why to stderr. */
int auth_init(const struct config *cfg);
/* After broker_wait: stops the worker, drops the snapshot. */
void auth_shutdown(void);
/* SIGHUP: re-reads the accounts file. On an error the old accounts stay and the error is
 * logged. Returns 0 or <0. Main thread. */
int auth_reload(void);
/* True when --accounts is in force (identities are stamped, operations checked). */
bool auth_accounts_on(void);

/* A hello on c naming user/token (and, on TLS, the verified client certificate): authenticates
 * at once when it can (AUTH_OK: c->acct set), parks it for the worker (AUTH_PENDING: the
 * answer comes through auth_poll, which calls conn_auth_done), or refuses (AUTH_FAILED: the
 * error is already sent and c is closing). */
enum auth_result { AUTH_OK, AUTH_PENDING, AUTH_FAILED };
enum auth_result auth_hello(struct conn *c, uint64_t correlation, const struct codec_hello *h);
/* The shard's verified answers, from its loop (cheap when there are none). */
void auth_poll(struct shard *s);
/* True when the worker posted answers for s (checked before s sleeps). */
bool auth_results_ready(const struct shard *s);
/* From the shard's tick: after a reload, re-checks s's connections against the new accounts. */
void auth_shard_tick(struct shard *s);
/* A connection is freed: drops its account reference. */
void auth_conn_free(struct conn *c);
/* Whether c's account may hold subscription sb (every pattern within its `subscribe` rules;
 * campaign 0 needs admin). If not, answers error{permission_denied} naming the pattern. */
struct sub;
bool auth_sub_allowed(struct conn *c, uint64_t correlation, const struct sub *sb);
/* Counts a refused operation (nexus_permission_denied_total{op}) and answers c with
 * error{permission_denied} naming it. */
void auth_deny(struct conn *c, uint64_t correlation, enum perm_op op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Counts a refusal made on another shard than the connection's (handlers). */
void auth_count_denied(struct shard *s, enum perm_op op);

/* Prints the argon2id hash of the token read from stdin (nexusd --hash-token). Returns the
 * exit status. */
int auth_hash_token_main(void);

#endif
