// SPDX-License-Identifier: Apache-2.0
//
// Authentication (docs/SECURITY.md): the current accounts snapshot, the verifier thread that
// runs argon2id off the shards, the shards' inboxes of verified answers, reloading on SIGHUP,
// and the refusal counters. Threading is described in auth.h.
#include "broker/auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/auth_int.h"
#include "broker/conn.h"
#include "broker/log.h"
#include "broker/pubsub.h"
#include "broker/shard.h"
#include "broker/stats.h"
#include "broker/ud.h"
#if __has_include("broker/tls.h")
#include "broker/tls.h"
#define AUTH_HAVE_TLS 1
#endif

/* Verifications waiting for the worker at most; past it a hello is answered `unavailable`
 * (retry later): a flood of logins cannot queue unbounded memory or minutes of work. */
#define AUTH_QUEUE_MAX 256

/* A hello waiting for (or answered by) the verifier. */
struct auth_job {
    struct auth_job *next;
    struct shard *shard;
    uint64_t conn_id, correlation;
    struct account *acct;  /* NULL: unknown user (verified against a dummy, then refused) */
    struct accounts *snap; /* a reference, for acct */
    bool ok;
    char user[ACCOUNT_NAME_BYTES_MAX + 1]; /* as the hello named it (for the log) */
    uint32_t token_len;
    char token[];
};

struct auth_inbox {
    pthread_mutex_t mu;
    struct auth_job *head;
    atomic_int ready;
};

static struct {
    const struct config *cfg;
    bool on;
    pthread_mutex_t mu; /* cur and the job queue */
    pthread_cond_t cv;
    struct accounts *cur;
    atomic_uint gen;
    struct auth_job *q_head, *q_tail;
    uint32_t q_len;
    bool stop;
    pthread_t worker;
    bool worker_started;
    struct io_uring wring; /* the worker's, only to wake shards (msg_ring) */
    uint8_t mac_key[crypto_generichash_KEYBYTES];
    char dummy_hash[crypto_pwhash_STRBYTES];
    struct auth_inbox inbox[CONFIG_SHARDS_MAX];
    /* Per shard, touched by that shard only. */
    struct accounts *shard_snap[CONFIG_SHARDS_MAX];
    unsigned shard_gen[CONFIG_SHARDS_MAX];
    int64_t shard_log_ns[CONFIG_SHARDS_MAX];
    uint64_t shard_log_quiet[CONFIG_SHARDS_MAX];
    int denied_stat[PERM_OP_COUNT], fail_stat, ok_stat;
} A;

/* ---- counters ----------------------------------------------------------------------------- */

static const struct stats_def denied_defs[PERM_OP_COUNT] = {
#define DENIED(op)                                                                                 \
    {                                                                                              \
        "nexus_permission_denied_total", "op=\"" op "\"",                                          \
            "operations refused for lack of permission (--accounts)", 0, STATS_NO_FRAME_FIELD      \
    }
    DENIED("emit"),   DENIED("subscribe"), DENIED("request"), DENIED("cancel"),
    DENIED("handle"), DENIED("signal"),    DENIED("admin"),
#undef DENIED
};
static const struct stats_def fail_def = {"nexus_auth_failures_total", NULL,
                                          "hellos refused: unknown user, wrong token or cert", 0,
                                          STATS_NO_FRAME_FIELD};
static const struct stats_def ok_def = {"nexus_auth_successes_total", NULL,
                                        "connections authenticated as an account", 0,
                                        STATS_NO_FRAME_FIELD};

static int register_stats(void)
{
    static bool done;
    if (done)
        return 0;
    for (int i = 0; i < PERM_OP_COUNT; i++)
        if ((A.denied_stat[i] = stats_register(&denied_defs[i])) < 0)
            return -ENOSPC;
    A.fail_stat = stats_register(&fail_def);
    A.ok_stat = stats_register(&ok_def);
    done = true;
    return A.fail_stat < 0 || A.ok_stat < 0 ? -ENOSPC : 0;
}

void auth_count_denied(struct shard *s, enum perm_op op)
{
    if (A.on && (unsigned)op < PERM_OP_COUNT && A.denied_stat[op] >= 0)
        stat_add(&s->stats.ext[A.denied_stat[op]], 1);
}

void auth_deny(struct conn *c, uint64_t correlation, enum perm_op op, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    auth_count_denied(c->shard, op);
    conn_error(c, correlation, "permission_denied", "%s: %s", perm_op_name(op), msg);
}

/* ---- the snapshot ------------------------------------------------------------------------- */

bool auth_accounts_on(void)
{
    return A.on;
}

static struct accounts *current(void)
{
    pthread_mutex_lock(&A.mu);
    struct accounts *a = A.cur;
    if (a)
        accounts_ref(a);
    pthread_mutex_unlock(&A.mu);
    return a;
}

/* The snapshot shard s works with (moved forward by auth_shard_tick). */
static struct accounts *shard_snap(struct shard *s)
{
    if (!A.shard_snap[s->index]) {
        A.shard_snap[s->index] = current();
        A.shard_gen[s->index] = atomic_load(&A.gen);
    }
    return A.shard_snap[s->index];
}

int auth_reload(void)
{
    if (!A.on)
        return 0;
    char err[768];
    struct accounts *n = accounts_load(A.cfg->accounts_path, err, sizeof(err));
    if (!n) {
        log_error(-1, "accounts not reloaded, the previous ones stay in force: %s", err);
        return -EINVAL;
    }
    pthread_mutex_lock(&A.mu);
    struct accounts *old = A.cur;
    A.cur = n;
    atomic_fetch_add(&A.gen, 1);
    pthread_mutex_unlock(&A.mu);
    accounts_unref(old);
    log_info(-1, "accounts reloaded from %s: %u users", A.cfg->accounts_path, accounts_count(n));
    return 0;
}

/* ---- the verifier thread ------------------------------------------------------------------ */

static void token_mac(const char *token, size_t len, uint64_t out[4])
{
    crypto_generichash((unsigned char *)out, 32, (const unsigned char *)token, len, A.mac_key,
                       sizeof(A.mac_key));
    if (!(out[0] | out[1] | out[2] | out[3]))
        out[0] = 1; /* all zero means "none remembered" */
}

static bool mac_matches(const struct account *a, const uint64_t m[4])
{
    uint64_t d = 0;
    for (int i = 0; i < 4; i++)
        d |= atomic_load_explicit(&a->ok_mac[i], memory_order_relaxed) ^ m[i];
    return d == 0;
}

static void wake_shard(struct shard *s)
{
    uint32_t idx = s->index;
    atomic_store_explicit(&A.inbox[idx].ready, 1, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with shard_wait's (shard_wake) */
    if (!atomic_load_explicit(&s->sleeping, memory_order_relaxed) ||
        !atomic_exchange_explicit(&s->sleeping, 0, memory_order_relaxed))
        return;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&A.wring);
    if (!sqe)
        return;
    io_uring_prep_msg_ring(sqe, s->ring.ring_fd, 0, UD_WAKE, 0);
    io_uring_sqe_set_data64(sqe, 0);
    io_uring_submit(&A.wring);
    struct io_uring_cqe *cqe;
    if (io_uring_wait_cqe(&A.wring, &cqe) == 0)
        io_uring_cqe_seen(&A.wring, cqe);
}

static void verify(struct auth_job *j)
{
    if (j->acct && j->acct->has_token) {
        j->ok = crypto_pwhash_str_verify(j->acct->hash, j->token, j->token_len) == 0;
        if (j->ok) {
            uint64_t m[4];
            token_mac(j->token, j->token_len, m);
            for (int i = 0; i < 4; i++)
                atomic_store_explicit(&j->acct->ok_mac[i], m[i], memory_order_relaxed);
        }
    } else {
        /* Unknown user: the same work as a wrong token, so timing does not tell names. */
        int same = crypto_pwhash_str_verify(A.dummy_hash, j->token, j->token_len);
        j->ok = false;
        (void)same;
    }
    sodium_memzero(j->token, j->token_len);
}

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&A.mu);
    for (;;) {
        while (!A.q_head && !A.stop)
            pthread_cond_wait(&A.cv, &A.mu);
        if (A.stop)
            break;
        struct auth_job *j = A.q_head;
        A.q_head = j->next;
        if (!A.q_head)
            A.q_tail = NULL;
        A.q_len--;
        pthread_mutex_unlock(&A.mu);
        verify(j);
        struct shard *s = j->shard;
        struct auth_inbox *in = &A.inbox[s->index];
        pthread_mutex_lock(&in->mu);
        j->next = in->head;
        in->head = j;
        pthread_mutex_unlock(&in->mu);
        wake_shard(s);
        pthread_mutex_lock(&A.mu);
    }
    pthread_mutex_unlock(&A.mu);
    return NULL;
}

static void job_free(struct auth_job *j)
{
    accounts_unref(j->snap);
    free(j);
}

int auth_init(const struct config *cfg)
{
    A.cfg = cfg;
    for (int i = 0; i < PERM_OP_COUNT; i++)
        A.denied_stat[i] = -1;
    A.fail_stat = A.ok_stat = -1;
    if (register_stats() < 0) {
        fprintf(stderr, "nexusd: cannot register the auth counters\n");
        return -1;
    }
    if (!cfg->accounts_path[0])
        return 0;
    if (sodium_init() < 0) {
        fprintf(stderr, "nexusd: cannot initialise libsodium\n");
        return -1;
    }
    char err[768];
    A.cur = accounts_load(cfg->accounts_path, err, sizeof(err));
    if (!A.cur) {
        fprintf(stderr, "nexusd: --accounts %s\n", err);
        return -1;
    }
    randombytes_buf(A.mac_key, sizeof(A.mac_key));
    if (crypto_pwhash_str(A.dummy_hash, "x", 1, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0 ||
        io_uring_queue_init(8, &A.wring, 0) < 0) {
        fprintf(stderr, "nexusd: cannot set up the token verifier (memory)\n");
        return -1;
    }
    pthread_mutex_init(&A.mu, NULL);
    pthread_cond_init(&A.cv, NULL);
    for (int i = 0; i < CONFIG_SHARDS_MAX; i++)
        pthread_mutex_init(&A.inbox[i].mu, NULL);
    A.on = true;
    log_info(-1, "accounts: %u users from %s", accounts_count(A.cur), cfg->accounts_path);
    return 0;
}

/* The worker starts with the first job, once the shards (and their rings) exist. */
static int worker_start_locked(void)
{
    if (A.worker_started)
        return 0;
    if (pthread_create(&A.worker, NULL, worker_main, NULL) != 0)
        return -EAGAIN;
    A.worker_started = true;
    return 0;
}

void auth_shutdown(void)
{
    if (!A.on)
        return;
    pthread_mutex_lock(&A.mu);
    A.stop = true;
    pthread_cond_signal(&A.cv);
    bool started = A.worker_started;
    pthread_mutex_unlock(&A.mu);
    if (started)
        pthread_join(A.worker, NULL);
    while (A.q_head) {
        struct auth_job *j = A.q_head;
        A.q_head = j->next;
        job_free(j);
    }
    for (int i = 0; i < CONFIG_SHARDS_MAX; i++) {
        while (A.inbox[i].head) {
            struct auth_job *j = A.inbox[i].head;
            A.inbox[i].head = j->next;
            job_free(j);
        }
        accounts_unref(A.shard_snap[i]);
        A.shard_snap[i] = NULL;
    }
    io_uring_queue_exit(&A.wring);
    accounts_unref(A.cur);
    A.cur = NULL;
    A.on = false;
}

/* ---- a hello ------------------------------------------------------------------------------ */

/* A refused hello: counted, logged at warn with the peer (at most one line per second per
 * shard), answered with error{unauthorized}, closed. */
static void auth_refuse(struct conn *c, uint64_t corr, const char *user, size_t ul, const char *why)
{
    struct shard *s = c->shard;
    if (A.on && A.fail_stat >= 0)
        stat_add(&s->stats.ext[A.fail_stat], 1);
    int64_t now = shard_now_ns();
    if (now - A.shard_log_ns[s->index] >= 1000000000) {
        char peer[INET6_ADDRSTRLEN + 8] = "?";
        struct sockaddr_storage sa;
        socklen_t sl = sizeof(sa);
        if (getpeername(c->fd, (struct sockaddr *)&sa, &sl) == 0) {
            const void *addr = sa.ss_family == AF_INET6
                                   ? (const void *)&((struct sockaddr_in6 *)&sa)->sin6_addr
                                   : (const void *)&((struct sockaddr_in *)&sa)->sin_addr;
            inet_ntop(sa.ss_family, addr, peer, sizeof(peer));
        }
        char name[65]; /* client bytes: printable ASCII only into the log */
        size_t n = ul > 64 ? 64 : ul;
        for (size_t i = 0; i < n; i++)
            name[i] = user[i] >= ' ' && user[i] <= '~' && user[i] != '"' ? user[i] : '?';
        name[n] = 0;
        log_warn((int)s->index,
                 "authentication failed: peer=%s user=\"%s\" (%s); %llu more failures not logged",
                 peer, name, why, (unsigned long long)A.shard_log_quiet[s->index]);
        A.shard_log_ns[s->index] = now;
        A.shard_log_quiet[s->index] = 0;
    } else {
        A.shard_log_quiet[s->index]++;
    }
    conn_error(c, corr, "unauthorized", "%s", why);
    conn_close_after_flush(c);
}

static void auth_accept(struct conn *c, struct account *a)
{
    accounts_ref(a->owner);
    c->acct = a;
    if (A.ok_stat >= 0)
        stat_add(&c->shard->stats.ext[A.ok_stat], 1);
    log_debug((int)c->shard->index, "connection %llu authenticated as %s",
              (unsigned long long)c->id, a->name);
}

/* A client certificate verified against --tls-client-ca logs in as the account naming it. */
static enum auth_result auth_cert(struct conn *c, const struct codec_hello *h,
                                  struct accounts *snap)
{
#ifdef AUTH_HAVE_TLS
    /* A hello with a token logs in by token (a wrong one is refused even on a good
     * certificate); one without, by its certificate. */
    const char *cn = c->tls && !h->token.len ? tls_conn_peer_name(c->tls) : NULL;
    const struct account *a = cn ? accounts_find_cert(snap, cn) : NULL;
    if (!a)
        return AUTH_PENDING; /* not a certificate login: go on with the token */
    if (h->user.len &&
        (h->user.len != strlen(a->name) || memcmp(h->user.ptr, a->name, h->user.len)))
        return AUTH_PENDING;
    auth_accept(c, (struct account *)a);
    return AUTH_OK;
#else
    (void)c, (void)h, (void)snap;
    return AUTH_PENDING;
#endif
}

enum auth_result auth_hello(struct conn *c, uint64_t corr, const struct codec_hello *h)
{
    struct shard *s = c->shard;
    struct accounts *snap = shard_snap(s);
    const char *user = (const char *)h->user.ptr;
    if (auth_cert(c, h, snap) == AUTH_OK)
        return AUTH_OK;
    if (h->user.len == 0) {
        auth_refuse(c, corr, "", 0, "this broker requires a hello naming a user and its token");
        return AUTH_FAILED;
    }
    if (h->token.len == 0 || h->token.len > AUTH_TOKEN_BYTES_MAX) {
        auth_refuse(c, corr, user, h->user.len, "hello carries no token (or one too long)");
        return AUTH_FAILED;
    }
    struct account *a = (struct account *)accounts_find(snap, user, h->user.len);
    if (a && a->has_token) {
        uint64_t m[4];
        token_mac((const char *)h->token.ptr, h->token.len, m);
        if (mac_matches(a, m)) {
            auth_accept(c, a);
            return AUTH_OK;
        }
    }
    struct auth_job *j = malloc(sizeof(*j) + h->token.len);
    if (!j) {
        conn_error(c, corr, "internal", "out of memory");
        conn_close_after_flush(c);
        return AUTH_FAILED;
    }
    memset(j, 0, sizeof(*j));
    j->shard = s;
    j->conn_id = c->id;
    j->correlation = corr;
    j->acct = a && a->has_token ? a : NULL;
    j->snap = snap;
    accounts_ref(snap);
    size_t ul = h->user.len > ACCOUNT_NAME_BYTES_MAX ? ACCOUNT_NAME_BYTES_MAX : h->user.len;
    memcpy(j->user, h->user.ptr, ul);
    j->user[ul] = 0;
    j->token_len = h->token.len;
    memcpy(j->token, h->token.ptr, h->token.len);
    pthread_mutex_lock(&A.mu);
    bool full = A.q_len >= AUTH_QUEUE_MAX || worker_start_locked() < 0;
    if (!full) {
        if (A.q_tail)
            A.q_tail->next = j;
        else
            A.q_head = j;
        A.q_tail = j;
        A.q_len++;
        pthread_cond_signal(&A.cv);
    }
    pthread_mutex_unlock(&A.mu);
    if (full) {
        sodium_memzero(j->token, j->token_len);
        job_free(j);
        conn_error(c, corr, "unavailable", "too many logins being verified; retry shortly");
        conn_close_after_flush(c);
        return AUTH_FAILED;
    }
    return AUTH_PENDING;
}

bool auth_results_ready(const struct shard *s)
{
    return A.on && atomic_load_explicit(&A.inbox[s->index].ready, memory_order_acquire);
}

/* A verified account of an older snapshot: the same user of the shard's snapshot, if its
 * token is unchanged (a reload may have happened during the verification). */
static struct account *rebind(struct shard *s, struct account *a)
{
    struct accounts *snap = shard_snap(s);
    if (a->owner == snap)
        return a;
    struct account *n = (struct account *)accounts_find(snap, a->name, strlen(a->name));
    return n && n->has_token && !strcmp(n->hash, a->hash) ? n : NULL;
}

void auth_poll(struct shard *s)
{
    if (!auth_results_ready(s))
        return;
    struct auth_inbox *in = &A.inbox[s->index];
    pthread_mutex_lock(&in->mu);
    struct auth_job *list = in->head;
    in->head = NULL;
    atomic_store_explicit(&in->ready, 0, memory_order_relaxed);
    pthread_mutex_unlock(&in->mu);
    while (list) {
        struct auth_job *j = list;
        list = j->next;
        struct conn *c = conn_lookup(s, j->conn_id);
        if (c && (c->flags & CONN_AUTH_PENDING)) {
            c->flags &= ~CONN_AUTH_PENDING;
            struct account *a = j->ok ? rebind(s, j->acct) : NULL;
            if (a) {
                auth_accept(c, a);
                conn_auth_done(c, j->correlation);
            } else {
                auth_refuse(c, j->correlation, j->user, strlen(j->user),
                            "unknown user or wrong token");
            }
        }
        job_free(j);
    }
}

void auth_conn_free(struct conn *c)
{
    if (c->acct) {
        accounts_unref(c->acct->owner);
        c->acct = NULL;
    }
}

/* ---- reload ------------------------------------------------------------------------------- */

/* Whether c's subscriptions are all still allowed to account a. */
static bool subs_allowed(const struct conn *c, const struct account *a)
{
    static const struct evpattern all = {.wild = EVPATTERN_WILD_ALL};
    for (uint32_t i = 0; i < c->sub_count; i++) {
        const struct sub *sb = c->subs[i];
        if (sb->pattern_count == 0 && !account_may_subscribe(a, sb->campaign_id, &all))
            return false;
        for (uint32_t k = 0; k < sb->pattern_count; k++)
            if (!account_may_subscribe(a, sb->campaign_id, &sb->patterns[k]))
                return false;
    }
    return true;
}

bool auth_sub_allowed(struct conn *c, uint64_t corr, const struct sub *sb)
{
    static const struct evpattern all = {.wild = EVPATTERN_WILD_ALL};
    const struct account *a = c->acct;
    if (sb->campaign_id == 0 && !a->admin) {
        auth_deny(c, corr, PERM_SUBSCRIBE,
                  "user %s may not subscribe to campaign 0 (every campaign): that needs admin",
                  a->name);
        return false;
    }
    uint32_t n = sb->pattern_count ? sb->pattern_count : 1;
    for (uint32_t k = 0; k < n; k++) {
        const struct evpattern *p = sb->pattern_count ? &sb->patterns[k] : &all;
        if (!account_may_subscribe(a, sb->campaign_id, p)) {
            auth_deny(c, corr, PERM_SUBSCRIBE, "user %s may not subscribe to %.*s in campaign %lld",
                      a->name, p->wild == EVPATTERN_WILD_ALL ? 1 : (int)p->len,
                      p->wild == EVPATTERN_WILD_ALL ? "*" : p->text, (long long)sb->campaign_id);
            return false;
        }
    }
    return true;
}

/* Moves c to snap's version of its account, or closes it if that is gone or changed. */
static void recheck(struct conn *c, struct accounts *snap)
{
    struct account *old = c->acct;
    struct account *n = (struct account *)accounts_find(snap, old->name, strlen(old->name));
    const char *why = NULL, *code = "unauthorized";
    if (!n || n->has_token != old->has_token || strcmp(n->hash, old->hash) ||
        strcmp(n->cert, old->cert) || n->id_len != old->id_len ||
        memcmp(n->id, old->id, old->id_len)) {
        why = "the account was removed or its credential or id changed (accounts reloaded)";
    } else if (!subs_allowed(c, n)) {
        why = "a subscription of this connection is no longer allowed (accounts reloaded)";
        code = "permission_denied";
    }
    if (why) {
        conn_error(c, 0, code, "%s", why);
        log_info((int)c->shard->index, "connection %llu of user %s closed: %s",
                 (unsigned long long)c->id, old->name, why);
        conn_close_after_flush(c);
        return;
    }
    accounts_ref(snap);
    c->acct = n;
    c->perm_campaign = 0;
    c->perm_type_len = 0;
    accounts_unref(old->owner);
}

void auth_shard_tick(struct shard *s)
{
    if (!A.on)
        return;
    unsigned g = atomic_load(&A.gen);
    if (A.shard_snap[s->index] && g == A.shard_gen[s->index])
        return;
    struct accounts *snap = current();
    accounts_unref(A.shard_snap[s->index]);
    A.shard_snap[s->index] = snap;
    A.shard_gen[s->index] = g;
    for (uint32_t i = 0; s->conns.slots && i <= s->conns.mask; i++) {
        struct conn *c = s->conns.slots[i].val;
        if (c && c->acct && !(c->flags & (CONN_DEAD | CONN_CLOSING)))
            recheck(c, snap);
    }
}

/* ---- nexusd --hash-token ------------------------------------------------------------------ */

int auth_hash_token_main(void)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "nexusd: libsodium failed to initialise\n");
        return 1;
    }
    char token[AUTH_TOKEN_BYTES_MAX + 2];
    size_t n = fread(token, 1, sizeof(token) - 1, stdin);
    while (n && (token[n - 1] == '\n' || token[n - 1] == '\r'))
        n--;
    if (n == 0 || n > AUTH_TOKEN_BYTES_MAX) {
        fprintf(stderr,
                "nexusd --hash-token: give the token (1-%d bytes) on stdin, e.g.\n"
                "  head -c 32 /dev/urandom | base64 | tee token | nexusd --hash-token\n",
                AUTH_TOKEN_BYTES_MAX);
        return 2;
    }
    if (n < 16)
        fprintf(stderr,
                "nexusd --hash-token: warning: a token of %zu bytes is guessable; use 32 "
                "random bytes\n",
                n);
    char out[crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str(out, token, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        fprintf(stderr, "nexusd --hash-token: out of memory\n");
        return 1;
    }
    sodium_memzero(token, sizeof(token));
    printf("%s\n", out);
    return 0;
}
