// SPDX-License-Identifier: Apache-2.0
//
// Helpers for auth_test.c (accounts, docs/SECURITY.md): hashing tokens with `nexusd
// --hash-token`, writing accounts files into a private temporary folder, logging in as an
// account, reading the stamped user id out of a delivered event's metadata, scraping one label
// of a Prometheus counter, and checking refusals (code, operation named, counter moved, nothing
// delivered to a watcher). Include after cmocka.h; header-only.
#ifndef NEXUS_TESTS_AUTH_UTIL_H
#define NEXUS_TESTS_AUTH_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hostile_util.h"
#include "provider_util.h"

/* ---- accounts files ------------------------------------------------------------------------- */

/* The argon2id hash `nexusd --hash-token` prints for token (into out, NUL-terminated). */
static inline void au_hash(const char *token, char *out, size_t cap)
{
    const char *bin = getenv("NEXUSD");
    assert_non_null(bin);
    char cmd[1024];
    /* The tokens are fixed test strings without shell metacharacters. */
    snprintf(cmd, sizeof(cmd), "printf '%%s' '%s' | '%s' --hash-token", token, bin);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = 0;
    if (!fgets(out, (int)cap, p))
        out[0] = 0;
    int st = pclose(p);
    assert_int_equal(st, 0);
    out[strcspn(out, "\r\n")] = 0;
    if (strncmp(out, "$argon2id$", 10) != 0)
        fail_msg("nexusd --hash-token printed \"%s\"", out);
}

/* Writes text to path atomically (a temporary file renamed over it), so that a SIGHUP never
 * reads half a file. */
static inline void au_write(const char *path, const char *text)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

/* ---- logging in ----------------------------------------------------------------------------- */

/* A connection to port that says hello as user with token (either may be NULL). Returns
 * nexus_hello_user_sync's result (1: welcome); *out receives the client (NULL if it could not
 * connect), and *f the answer. */
static inline int au_hello(uint16_t port, const char *user, const char *token,
                           struct nexus_client **out, struct nexus_frame *f)
{
    char err[256];
    *out = nexus_connect("127.0.0.1", port, err, sizeof(err));
    if (!*out)
        fail_msg("connect: %s", err);
    return nexus_hello_user_sync(*out, user, token, "auth-test", f, PV_T);
}

/* A connection logged in as user; fails the test otherwise. */
static inline struct nexus_client *au_login(uint16_t port, const char *user, const char *token)
{
    struct nexus_client *c;
    struct nexus_frame f;
    int r = au_hello(port, user, token, &c, &f);
    if (r != 1)
        fail_msg("login as %s: r=%d %.*s: %.*s", user, r,
                 r == -EPROTO ? (int)f.u.error.code.len : 0,
                 r == -EPROTO ? (const char *)f.u.error.code.ptr : "",
                 r == -EPROTO ? (int)f.u.error.message.len : 0,
                 r == -EPROTO ? (const char *)f.u.error.message.ptr : "");
    assert_int_equal(f.kind, CODEC_KIND_WELCOME);
    return c;
}

/* A hello that must be refused: error{code}, then the connection is closed. Returns the
 * error's message in msg. */
static inline void au_login_refused(uint16_t port, const char *user, const char *token,
                                    const char *code, char *msg, size_t cap)
{
    struct nexus_client *c;
    struct nexus_frame f;
    int r = au_hello(port, user, token, &c, &f);
    if (r != -EPROTO || f.kind != CODEC_KIND_ERROR)
        fail_msg("hello as %s: r=%d kind %u, expected error %s", user ? user : "(none)", r,
                 r == 1 || r == -EPROTO ? f.kind : 0u, code);
    if (!h_slice_eq(f.u.error.code, code))
        fail_msg("hello as %s: error %.*s, expected %s", user ? user : "(none)",
                 (int)f.u.error.code.len, (const char *)f.u.error.code.ptr, code);
    if (msg)
        pv_str(msg, cap, f.u.error.message);
    hx_expect_closed(c, PV_T);
    nexus_close(c);
}

/* ---- what a subscriber sees ----------------------------------------------------------------- */

/* metadata.global_context.user_id (common.Metadata field 21, GlobalContext field 1) of a
 * delivered event's metadata, into out ("" if none). The last occurrence wins, as protobuf
 * merges repeated message fields. */
static inline const char *au_md_user(const uint8_t *md, uint32_t len, char *out, size_t cap)
{
    out[0] = 0;
    struct wire_cursor cur;
    struct wire_field fld;
    wire_cursor_init(&cur, md, len);
    while (wire_next(&cur, &fld) == 1) {
        if (fld.number != 21 || fld.type != WIRE_LEN)
            continue;
        struct wire_cursor in;
        struct wire_field g;
        wire_cursor_init(&in, fld.data, fld.len);
        while (wire_next(&in, &g) == 1)
            if (g.number == 1 && g.type == WIRE_LEN) {
                size_t n = g.len < cap - 1 ? g.len : cap - 1;
                memcpy(out, g.data, n);
                out[n] = 0;
            }
    }
    return out;
}

/* Reads c until an event with event id `id` arrives (others are skipped). Fails on timeout. */
static inline void au_expect_id(struct nexus_client *c, const char *id, struct pv_ev *e)
{
    int64_t end = h_now_ms() + PV_T;
    for (;;) {
        int64_t left = end - h_now_ms();
        if (left <= 0)
            fail_msg("event %s never arrived", id);
        int r = pv_next_event(c, e, (int)left);
        if (r == 0)
            fail_msg("event %s never arrived", id);
        if (r < 0)
            fail_msg("waiting for event %s: r=%d kind %u %s: %s", id, r, e->kind, e->code, e->msg);
        if (strcmp(e->id, id) == 0)
            return;
    }
}

/* Nothing about `id` (an event with that event id or correlation id; NULL: no event at all)
 * reaches the watcher w within ms: a bounded wait, then a ping round trip as a barrier for what
 * w's shard had queued. */
static inline void au_quiet(struct nexus_client *w, const char *id, int ms, int line)
{
    struct pv_ev e;
    int64_t end = h_now_ms() + ms;
    for (;;) {
        int64_t left = end - h_now_ms();
        if (left <= 0)
            break;
        int r = pv_recv(w, &e, (int)left);
        if (r == 0)
            break;
        if (r < 0)
            fail_msg("line %d: watcher's receive failed (%d)", line, r);
        if (e.kind == CODEC_KIND_EVENT && (!id || !strcmp(e.id, id) || !strcmp(e.cid, id)))
            fail_msg("line %d: a watcher got %s (id %s, cid %s) after a refusal", line, e.type,
                     e.id, e.cid);
        if (e.kind == CODEC_KIND_ERROR)
            fail_msg("line %d: watcher got error %s: %s", line, e.code, e.msg);
    }
    if (h_ping(w, PV_T) != 1)
        fail_msg("line %d: watcher: no pong", line);
}
#define AU_QUIET(w, id) au_quiet((w), (id), 200, __LINE__)

/* Drops whatever c has received so far (a ping is the barrier). */
static inline void au_drain(struct nexus_client *c)
{
    assert_int_equal(h_ping(c, PV_T), 1);
    struct nexus_frame f;
    while (nexus_recv(c, &f, 0) == 1) {
    }
}

/* ---- metrics -------------------------------------------------------------------------------- */

/* GETs /metrics and sums the samples of `name` whose labels contain `label` (NULL: all), over
 * the shards. Returns -1 if the scrape failed. */
static inline double au_metric(uint16_t mport, const char *name, const char *label)
{
    return hx_metric_label(mport, name, label);
}

/* nexus_permission_denied_total{op} summed over the shards. */
static inline double au_denied(uint16_t mport, const char *op)
{
    char label[64];
    snprintf(label, sizeof(label), "op=\"%s\"", op);
    double v = au_metric(mport, "nexus_permission_denied_total", label);
    assert_true(v >= 0);
    return v;
}

/* Waits (bounded) until nexus_permission_denied_total{op} reads at least want. */
static inline void au_wait_denied(uint16_t mport, const char *op, double want, int line)
{
    int64_t end = h_now_ms() + PV_T;
    double got;
    while ((got = au_denied(mport, op)) < want && h_now_ms() < end)
        usleep(10000);
    if (got < want)
        fail_msg("line %d: nexus_permission_denied_total{op=\"%s\"} is %.0f, expected %.0f", line,
                 op, got, want);
}

/* A refusal as docs/SECURITY.md says: error permission_denied whose message starts with the
 * operation's name, and the operation's counter one higher than `before`. */
static inline void au_check_denied(uint16_t mport, const char *op, double before, const char *code,
                                   const char *msg, int line)
{
    if (strcmp(code, "permission_denied") != 0)
        fail_msg("line %d: expected permission_denied (%s), got %s: %s", line, op, code, msg);
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "%s: ", op);
    if (strncmp(msg, prefix, strlen(prefix)) != 0)
        fail_msg("line %d: the refusal's message does not name %s: \"%s\"", line, op, msg);
    au_wait_denied(mport, op, before + 1, line);
}

#endif
