// SPDX-License-Identifier: Apache-2.0
//
// The accounts file (docs/SECURITY.md, "Accounts file"): parsing it into an immutable snapshot,
// and the permission checks on an account. Pure except for accounts_load's read of the file:
// no shard state, callable from any thread.
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/auth_int.h"

const char *perm_op_name(enum perm_op op)
{
    static const char *const names[PERM_OP_COUNT] = {"emit",   "subscribe", "request", "cancel",
                                                     "handle", "signal",    "admin"};
    return (unsigned)op < PERM_OP_COUNT ? names[op] : "unknown";
}

/* ---- parsing ------------------------------------------------------------------------------ */

struct parser {
    const char *p, *end;
    uint32_t line;
    char *err;
    size_t cap;
    struct accounts *as;
    struct account *cur;
};

static int perr(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(struct parser *ps, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->cap, "line %u: %s", ps->line, msg);
    return -EINVAL;
}

/* The next whitespace-separated word of the line [*p, end): 1 with it, 0 at the line's end. */
static int next_word(const char **p, const char *end, const char **w, size_t *wl)
{
    const char *q = *p;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (q == end) {
        *p = q;
        return 0;
    }
    const char *s = q;
    while (q < end && *q != ' ' && *q != '\t')
        q++;
    *w = s;
    *wl = (size_t)(q - s);
    *p = q;
    return 1;
}

static bool word_is(const char *w, size_t wl, const char *lit)
{
    return wl == strlen(lit) && memcmp(w, lit, wl) == 0;
}

/* Printable ASCII without spaces, '#' or quotes: names and ids appear in logs and errors. */
static bool word_plain(const char *w, size_t wl)
{
    for (size_t i = 0; i < wl; i++)
        if (w[i] <= ' ' || w[i] > '~' || w[i] == '#' || w[i] == '"' || w[i] == '\\')
            return false;
    return wl > 0;
}

static int parse_i64(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > 20)
        return -1;
    char buf[24];
    memcpy(buf, s, len);
    buf[len] = 0;
    char *e;
    errno = 0;
    long long v = strtoll(buf, &e, 10);
    if (errno || *e || !(isdigit((unsigned char)buf[0]) || buf[0] == '-'))
        return -1;
    *out = v;
    return 0;
}

/* CAMPAIGNS: `*`, or a comma-separated list of ids and ranges `lo-hi` (lo <= hi). */
static int parse_campaigns(struct parser *ps, const char *w, size_t wl, struct rule *r)
{
    if (word_is(w, wl, "*")) {
        r->all = true;
        return 0;
    }
    const char *p = w, *end = w + wl;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *dash = item_end > p + 1 ? memchr(p + 1, '-', (size_t)(item_end - p - 1)) : NULL;
        int64_t lo, hi;
        if (parse_i64(p, (size_t)((dash ? dash : item_end) - p), &lo) < 0 ||
            (dash && parse_i64(dash + 1, (size_t)(item_end - dash - 1), &hi) < 0))
            return perr(ps, "campaigns must be `*` or ids and ranges like 1,5-9 (got \"%.*s\")",
                        (int)(wl > 64 ? 64 : wl), w);
        if (!dash)
            hi = lo;
        if (lo > hi)
            return perr(ps, "campaign range %lld-%lld is empty", (long long)lo, (long long)hi);
        if (r->nr == ACCOUNT_RANGES_MAX)
            return perr(ps, "more than %d campaign ranges in one rule", ACCOUNT_RANGES_MAX);
        r->r[r->nr][0] = lo;
        r->r[r->nr][1] = hi;
        r->nr++;
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

/* A rule while it is parsed: fixed arrays, copied to exact-size ones once complete. */
struct rule_tmp {
    struct rule r;
    int64_t ranges[ACCOUNT_RANGES_MAX][2];
    struct evpattern pats[ACCOUNT_PATTERNS_MAX];
};

static int rule_keep(struct parser *ps, struct rule_tmp *t, struct rule **v, uint32_t *n)
{
    struct rule *nv = realloc(*v, sizeof(**v) * (*n + 1));
    if (!nv)
        return perr(ps, "out of memory");
    *v = nv;
    struct rule *r = &nv[*n];
    *r = t->r;
    r->r = t->r.nr ? malloc(sizeof(*r->r) * t->r.nr) : NULL;
    r->p = malloc(sizeof(*r->p) * t->r.np);
    if ((t->r.nr && !r->r) || !r->p) {
        free(r->r);
        free(r->p);
        return perr(ps, "out of memory");
    }
    if (t->r.nr)
        memcpy(r->r, t->ranges, sizeof(*r->r) * t->r.nr);
    memcpy(r->p, t->pats, sizeof(*r->p) * t->r.np);
    (*n)++;
    return 0;
}

/* publish|subscribe CAMPAIGNS PATTERN... */
static int parse_rule(struct parser *ps, const char *p, const char *end, bool sub)
{
    struct account *a = ps->cur;
    if (a->npub + a->nsub == ACCOUNT_RULES_MAX)
        return perr(ps, "more than %d publish/subscribe rules for user %s", ACCOUNT_RULES_MAX,
                    a->name);
    static _Thread_local struct rule_tmp t;
    memset(&t.r, 0, sizeof(t.r));
    t.r.r = t.ranges;
    t.r.p = t.pats;
    const char *w;
    size_t wl;
    if (!next_word(&p, end, &w, &wl))
        return perr(ps, "%s needs campaigns and at least one event-type pattern",
                    sub ? "subscribe" : "publish");
    if (parse_campaigns(ps, w, wl, &t.r) < 0)
        return -EINVAL;
    while (next_word(&p, end, &w, &wl)) {
        if (t.r.np == ACCOUNT_PATTERNS_MAX)
            return perr(ps, "more than %d patterns in one rule", ACCOUNT_PATTERNS_MAX);
        char perrbuf[EVTYPE_ERR_BYTES];
        if (evpattern_parse(&t.pats[t.r.np], w, wl, perrbuf, sizeof(perrbuf)) < 0)
            return perr(ps, "pattern: %s", perrbuf);
        t.r.np++;
    }
    if (t.r.np == 0)
        return perr(ps, "%s needs at least one event-type pattern (`*` for all)",
                    sub ? "subscribe" : "publish");
    return sub ? rule_keep(ps, &t, &a->sub, &a->nsub) : rule_keep(ps, &t, &a->pub, &a->npub);
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > EVTYPE_NAME_BYTES_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* request|handle ACTION...: `*`, `service:*` or `service:action`. */
static int parse_actions(struct parser *ps, const char *p, const char *end, bool handle)
{
    struct account *a = ps->cur;
    const char *w;
    size_t wl;
    int n = 0;
    while (next_word(&p, end, &w, &wl)) {
        if (a->nreq + a->nhdl == ACCOUNT_ACTIONS_MAX)
            return perr(ps, "more than %d request/handle actions for user %s", ACCOUNT_ACTIONS_MAX,
                        a->name);
        struct action **v = handle ? &a->hdl : &a->req;
        uint32_t *vn = handle ? &a->nhdl : &a->nreq;
        struct action *nv = realloc(*v, sizeof(**v) * (*vn + 1));
        if (!nv)
            return perr(ps, "out of memory");
        *v = nv;
        struct action *x = &nv[*vn];
        memset(x, 0, sizeof(*x));
        const char *colon = memchr(w, ':', wl);
        size_t sl = colon ? (size_t)(colon - w) : wl;
        size_t al = colon ? wl - sl - 1 : 0;
        bool svc_all = word_is(w, sl, "*");
        bool act_all = !colon || word_is(colon + 1, al, "*");
        if ((!svc_all && !name_ok(w, sl)) || (colon && !act_all && !name_ok(colon + 1, al)) ||
            (!colon && !svc_all) || (svc_all && !act_all))
            return perr(ps, "action must be `*`, `service:*` or `service:action` (got \"%.*s\")",
                        (int)(wl > 64 ? 64 : wl), w);
        if (!svc_all)
            memcpy(x->svc, w, sl);
        if (!act_all)
            memcpy(x->act, colon + 1, al);
        (*vn)++;
        n++;
    }
    if (n == 0)
        return perr(ps, "%s needs at least one action", handle ? "handle" : "request");
    return 0;
}

static int parse_user(struct parser *ps, const char *p, const char *end)
{
    const char *w;
    size_t wl;
    if (!next_word(&p, end, &w, &wl))
        return perr(ps, "user needs a name");
    if (wl > ACCOUNT_NAME_BYTES_MAX || !word_plain(w, wl))
        return perr(ps,
                    "user name must be 1-%d printable characters without spaces, '#' or "
                    "quotes",
                    ACCOUNT_NAME_BYTES_MAX);
    if (next_word(&p, end, &w, &wl))
        return perr(ps, "unexpected \"%.*s\" after the user name", (int)(wl > 32 ? 32 : wl), w);
    struct accounts *as = ps->as;
    if (as->n == ACCOUNTS_MAX)
        return perr(ps, "more than %d users", ACCOUNTS_MAX);
    if (as->n == as->cap) {
        uint32_t ncap = as->cap ? as->cap * 2 : 16;
        struct account *nv = realloc(as->v, sizeof(*nv) * ncap);
        if (!nv)
            return perr(ps, "out of memory");
        as->v = nv;
        as->cap = ncap;
    }
    struct account *a = &as->v[as->n++];
    memset(a, 0, sizeof(*a));
    a->line = ps->line;
    memcpy(a->name, w, wl);
    memcpy(a->id, w, wl); /* the id stamped defaults to the name */
    a->id_len = (uint32_t)wl;
    ps->cur = a;
    return 0;
}

static int parse_token(struct parser *ps, const char *p, const char *end)
{
    const char *w;
    size_t wl;
    struct account *a = ps->cur;
    if (!next_word(&p, end, &w, &wl))
        return perr(ps, "token needs a hash (make one with: nexusd --hash-token)");
    if (a->has_token)
        return perr(ps, "user %s has two tokens", a->name);
    bool argon =
        (wl > 10 && !memcmp(w, "$argon2id$", 10)) || (wl > 9 && !memcmp(w, "$argon2i$", 9));
    if (!argon || wl >= sizeof(a->hash))
        return perr(ps, "token must be an argon2 hash as printed by `nexusd --hash-token` "
                        "(never the token itself)");
    memcpy(a->hash, w, wl);
    a->hash[wl] = 0;
    /* libsodium refuses a malformed string here rather than at the first login. */
    if (crypto_pwhash_str_needs_rehash(a->hash, crypto_pwhash_OPSLIMIT_MIN,
                                       crypto_pwhash_MEMLIMIT_MIN) < 0)
        return perr(ps, "token hash of user %s is malformed", a->name);
    a->has_token = true;
    return 0;
}

/* id USER_ID | cert CN: one word each. */
static int parse_word_setting(struct parser *ps, const char *p, const char *end, bool cert)
{
    const char *w;
    size_t wl;
    struct account *a = ps->cur;
    size_t max = cert ? ACCOUNT_CERT_BYTES_MAX : ACCOUNT_ID_BYTES_MAX;
    if (!next_word(&p, end, &w, &wl) || wl > max || !word_plain(w, wl))
        return perr(ps, "%s needs one word of 1-%zu printable characters", cert ? "cert" : "id",
                    max);
    if (cert) {
        memcpy(a->cert, w, wl);
        a->cert[wl] = 0;
    } else {
        memcpy(a->id, w, wl);
        a->id_len = (uint32_t)wl;
    }
    return 0;
}

/* One line (without its newline and comment). */
static int parse_line(struct parser *ps, const char *p, const char *end)
{
    const char *w;
    size_t wl;
    if (!next_word(&p, end, &w, &wl))
        return 0; /* blank */
    if (word_is(w, wl, "user"))
        return parse_user(ps, p, end);
    if (!ps->cur)
        return perr(ps, "\"%.*s\" before the first `user` line", (int)(wl > 32 ? 32 : wl), w);
    if (word_is(w, wl, "token"))
        return parse_token(ps, p, end);
    if (word_is(w, wl, "id") || word_is(w, wl, "cert"))
        return parse_word_setting(ps, p, end, word_is(w, wl, "cert"));
    if (word_is(w, wl, "publish") || word_is(w, wl, "subscribe"))
        return parse_rule(ps, p, end, word_is(w, wl, "subscribe"));
    if (word_is(w, wl, "request") || word_is(w, wl, "handle"))
        return parse_actions(ps, p, end, word_is(w, wl, "handle"));
    if (word_is(w, wl, "admin")) {
        if (next_word(&p, end, &w, &wl))
            return perr(ps, "admin takes no value");
        ps->cur->admin = true;
        return 0;
    }
    return perr(ps,
                "unknown setting \"%.*s\" (user, token, id, cert, publish, subscribe, "
                "request, handle, admin)",
                (int)(wl > 32 ? 32 : wl), w);
}

static int cmp_name(const void *x, const void *y)
{
    return strcmp(((const struct account *)x)->name, ((const struct account *)y)->name);
}

static int cmp_cert(const void *x, const void *y)
{
    const struct account *a = *(const struct account *const *)x;
    const struct account *b = *(const struct account *const *)y;
    int c = strcmp(a->cert, b->cert);
    return c ? c : (a->line > b->line) - (a->line < b->line); /* the later one is reported */
}

/* Two users with one certificate name: which would a certificate log in as? */
static int certs_unique(struct parser *ps)
{
    struct accounts *as = ps->as;
    const struct account **v = malloc(sizeof(*v) * (as->n ? as->n : 1));
    if (!v)
        return perr(ps, "out of memory");
    uint32_t n = 0;
    for (uint32_t i = 0; i < as->n; i++)
        if (as->v[i].cert[0])
            v[n++] = &as->v[i];
    if (n)
        qsort(v, n, sizeof(*v), cmp_cert);
    int r = 0;
    for (uint32_t i = 1; i < n && r == 0; i++)
        if (!strcmp(v[i]->cert, v[i - 1]->cert)) {
            ps->line = v[i]->line;
            r = perr(ps, "cert %s is given to users %s and %s", v[i]->cert, v[i - 1]->name,
                     v[i]->name);
        }
    free(v);
    return r;
}

/* Whole-file checks: every user can log in somehow; names and certificate names unique. */
static int finish(struct parser *ps)
{
    struct accounts *as = ps->as;
    for (uint32_t i = 0; i < as->n; i++) {
        struct account *a = &as->v[i];
        ps->line = a->line;
        if (!a->has_token && !a->cert[0])
            return perr(ps, "user %s has neither a token nor a cert: nobody could log in as it",
                        a->name);
    }
    if (certs_unique(ps) < 0)
        return -EINVAL;
    if (as->n)
        qsort(as->v, as->n, sizeof(*as->v), cmp_name);
    for (uint32_t i = 1; i < as->n; i++)
        if (!strcmp(as->v[i].name, as->v[i - 1].name)) {
            ps->line = as->v[i].line > as->v[i - 1].line ? as->v[i].line : as->v[i - 1].line;
            return perr(ps, "user %s is defined twice", as->v[i].name);
        }
    for (uint32_t i = 0; i < as->n; i++)
        as->v[i].owner = as;
    return 0;
}

struct accounts *accounts_parse(const char *text, size_t len, char *err, size_t cap)
{
    struct accounts *as = calloc(1, sizeof(*as));
    if (!as) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    atomic_init(&as->refs, 1);
    struct parser ps = {.p = text, .end = text + len, .err = err, .cap = cap, .as = as};
    if (len > ACCOUNTS_FILE_BYTES_MAX) {
        snprintf(err, cap, "accounts file is over %u bytes", ACCOUNTS_FILE_BYTES_MAX);
        accounts_unref(as);
        return NULL;
    }
    int r = 0;
    while (ps.p < ps.end && r == 0) {
        ps.line++;
        const char *nl = memchr(ps.p, '\n', (size_t)(ps.end - ps.p));
        const char *eol = nl ? nl : ps.end;
        const char *hash = memchr(ps.p, '#', (size_t)(eol - ps.p));
        const char *stop = hash ? hash : eol;
        for (const char *q = ps.p; q < stop && r == 0; q++)
            if ((unsigned char)*q < ' ' && *q != '\t' && *q != '\r')
                r = perr(&ps, "control character 0x%02x", (unsigned char)*q);
        while (r == 0 && stop > ps.p && stop[-1] == '\r')
            stop--;
        if (r == 0)
            r = parse_line(&ps, ps.p, stop);
        ps.p = nl ? nl + 1 : ps.end;
    }
    if (r == 0)
        r = finish(&ps);
    if (r < 0) {
        accounts_unref(as);
        return NULL;
    }
    return as;
}

struct accounts *accounts_load(const char *path, char *err, size_t cap)
{
    char why[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > ACCOUNTS_FILE_BYTES_MAX) {
        snprintf(err, cap, "%s: not a regular file of at most %u bytes", path,
                 ACCOUNTS_FILE_BYTES_MAX);
        close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    ssize_t got = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (got < 0) {
        snprintf(err, cap, "%s: %s", path, buf ? strerror(errno) : "out of memory");
        free(buf);
        return NULL;
    }
    struct accounts *as = accounts_parse(buf, (size_t)got, why, sizeof(why));
    free(buf);
    if (!as)
        snprintf(err, cap, "%s: %s", path, why);
    return as;
}

void accounts_ref(struct accounts *a)
{
    atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
}

void accounts_unref(struct accounts *a)
{
    if (!a || atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (uint32_t i = 0; i < a->n; i++) {
        struct account *x = &a->v[i];
        for (uint32_t k = 0; k < x->npub; k++) {
            free(x->pub[k].r);
            free(x->pub[k].p);
        }
        for (uint32_t k = 0; k < x->nsub; k++) {
            free(x->sub[k].r);
            free(x->sub[k].p);
        }
        free(x->pub);
        free(x->sub);
        free(x->req);
        free(x->hdl);
    }
    free(a->v);
    free(a);
}

uint32_t accounts_count(const struct accounts *a)
{
    return a ? a->n : 0;
}

const struct account *accounts_find(const struct accounts *a, const char *name, size_t len)
{
    if (!a || len == 0 || len > ACCOUNT_NAME_BYTES_MAX)
        return NULL;
    char key[ACCOUNT_NAME_BYTES_MAX + 1];
    memcpy(key, name, len);
    key[len] = 0;
    uint32_t lo = 0, hi = a->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, a->v[mid].name);
        if (c == 0)
            return &a->v[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct account *accounts_find_cert(const struct accounts *a, const char *cn)
{
    for (uint32_t i = 0; a && cn && *cn && i < a->n; i++)
        if (a->v[i].cert[0] && !strcmp(a->v[i].cert, cn))
            return &a->v[i];
    return NULL;
}

/* ---- permissions -------------------------------------------------------------------------- */

const char *account_name(const struct account *a)
{
    return a->name;
}

const char *account_user_id(const struct account *a, uint32_t *len)
{
    *len = a->id_len;
    return a->id;
}

bool account_admin(const struct account *a)
{
    return a->admin;
}

/* Campaign 0 is a campaign like any other to publish into; subscribing to it means every
 * campaign (the firehose), which account_may_subscribe leaves to `admin` before any rule. */
static bool rule_has_campaign(const struct rule *r, int64_t id)
{
    if (r->all)
        return true;
    for (uint32_t i = 0; i < r->nr; i++)
        if (id >= r->r[i][0] && id <= r->r[i][1])
            return true;
    return false;
}

bool account_may_publish(const struct account *a, int64_t campaign_id, const struct evtype *t,
                         const char *type_str)
{
    for (uint32_t i = 0; i < a->npub; i++) {
        const struct rule *r = &a->pub[i];
        if (!rule_has_campaign(r, campaign_id))
            continue;
        for (uint32_t k = 0; k < r->np; k++)
            if (evpattern_match(&r->p[k], t, type_str))
                return true;
    }
    return false;
}

/* Whether allowed pattern g matches every type p matches. */
static bool pattern_covers(const struct evpattern *g, const struct evpattern *p)
{
    if (g->wild == EVPATTERN_WILD_ALL)
        return true;
    if (p->wild == EVPATTERN_WILD_ALL)
        return false;
    for (int i = 0; i < EVTYPE_SEG_COUNT; i++) {
        if (g->wild & (1u << i))
            continue;
        if ((p->wild & (1u << i)) || g->seg[i].len != p->seg[i].len ||
            memcmp(g->text + g->seg[i].off, p->text + p->seg[i].off, p->seg[i].len) != 0)
            return false;
    }
    return true;
}

bool account_may_subscribe(const struct account *a, int64_t campaign_id, const struct evpattern *p)
{
    if (campaign_id == 0)
        return a->admin;
    for (uint32_t i = 0; i < a->nsub; i++) {
        const struct rule *r = &a->sub[i];
        if (!rule_has_campaign(r, campaign_id))
            continue;
        for (uint32_t k = 0; k < r->np; k++)
            if (pattern_covers(&r->p[k], p))
                return true;
    }
    return false;
}

bool account_may_action(const struct account *a, enum perm_op op, const struct evtype *t,
                        const char *type_str)
{
    const struct action *v = op == PERM_HANDLE ? a->hdl : a->req;
    uint32_t n = op == PERM_HANDLE ? a->nhdl : a->nreq;
    const struct evtype_seg *sv = &t->seg[EVTYPE_SEG_SERVICE], *ac = &t->seg[EVTYPE_SEG_ACTION];
    for (uint32_t i = 0; i < n; i++) {
        const struct action *x = &v[i];
        if (x->svc[0] && (strlen(x->svc) != sv->len || memcmp(x->svc, type_str + sv->off, sv->len)))
            continue;
        if (x->act[0] && (strlen(x->act) != ac->len || memcmp(x->act, type_str + ac->off, ac->len)))
            continue;
        return true;
    }
    return false;
}
