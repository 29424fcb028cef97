// SPDX-License-Identifier: Apache-2.0
//
// The NATS JetStream driver of the durable preset (durable.h): plain NATS protocol with JSON
// (the JetStream wire API). Connection 0 creates a file-backed stream NB<base> capturing
// nbd.<base>.> with $JS.API.STREAM.CREATE.NB<base> (default limits: no limits, discard old,
// one replica). Every publisher subscribes to its reply inbox _INBOX.nb<base>.<p>.* and
// publishes to nbd.<base>.<p> with the reply subject _INBOX.nb<base>.<p>.<seq>; the stream
// answers each stored message with a PubAck {"stream":"NB<base>","seq":N} on that subject
// (or {"error":{...}}), which is JetStream's acknowledged publish. Replay: an ephemeral push
// consumer (deliver all, ack none, replay instant) delivering to _INBOX.nb<base>.replay, every
// message counted. Reply subject token 0 is the API replies' (publishes start at 1).
#include "bench/durable.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JS_LINE_MAX 16384

static unsigned long long base_of(const struct dur_run *r)
{
    return (unsigned long long)r->cfg->campaign_base;
}

static long line_len(const uint8_t *p, size_t len)
{
    const uint8_t *nl = memchr(p, '\n', len < JS_LINE_MAX ? len : JS_LINE_MAX);
    if (!nl)
        return len >= JS_LINE_MAX ? -2 : -1;
    long l = (long)(nl - p);
    return (l > 0 && p[l - 1] == '\r') ? l - 1 : l;
}

static bool starts(const uint8_t *p, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(p, word, n) == 0;
}

/* A MSG or HMSG line split: subject, sid, payload size (HMSG: total size). */
struct js_msg {
    const uint8_t *subj;
    size_t subj_len;
    uint64_t sid;
    uint64_t size;
};

static bool parse_u64(const uint8_t *p, size_t n, uint64_t *v)
{
    if (n == 0 || n > 19)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        x = x * 10 + (uint64_t)(p[i] - '0');
    }
    *v = x;
    return true;
}

/* Splits "MSG subj sid [reply] size" / "HMSG subj sid [reply] hdr total". */
static bool split_msg(const uint8_t *p, long l, struct js_msg *m)
{
    const uint8_t *tok[6] = {0};
    size_t tl[6] = {0};
    int n = 0;
    long i = 0;
    while (i < l && n < 6) {
        while (i < l && p[i] == ' ')
            i++;
        if (i >= l)
            break;
        tok[n] = p + i;
        while (i < l && p[i] != ' ')
            i++;
        tl[n] = (size_t)(p + i - tok[n]);
        n++;
    }
    if (n == 0)
        return false;
    bool h = tl[0] == 4; /* HMSG */
    if (n < (h ? 5 : 4) || n > (h ? 6 : 5))
        return false;
    m->subj = tok[1];
    m->subj_len = tl[1];
    return parse_u64(tok[2], tl[2], &m->sid) && parse_u64(tok[n - 1], tl[n - 1], &m->size);
}

/* The last dot-separated token of a subject as a number, or false. */
static bool subject_seq(const struct js_msg *m, uint64_t *seq)
{
    const uint8_t *dot = m->subj + m->subj_len;
    while (dot > m->subj && dot[-1] != '.')
        dot--;
    return parse_u64(dot, (size_t)(m->subj + m->subj_len - dot), seq);
}

/* The "description" of a JSON error reply, or the whole reply. */
static void json_error_text(const uint8_t *p, size_t n, char *out, size_t cap)
{
    const uint8_t *d = memmem(p, n, "\"description\":\"", 15);
    if (d) {
        d += 15;
        const uint8_t *e = memchr(d, '"', (size_t)(p + n - d));
        snprintf(out, cap, "%.*s", (int)(e ? e - d : p + n - d), (const char *)d);
    } else {
        snprintf(out, cap, "%.*s", (int)(n < 200 ? n : 200), (const char *)p);
    }
}

/* Set-up: reads until a MSG on `subject` arrives (its payload copied into out) or, with
 * subject NULL, until PONG. Answers PING; skips +OK, INFO and other messages. */
static int setup_wait(struct bench_setup *s, const char *subject, char *out, size_t out_cap,
                      char *err, size_t cap)
{
    for (;;) {
        long l;
        while (s->len && (l = line_len(s->buf, s->len)) >= 0) {
            size_t used = (size_t)l + 2;
            if (starts(s->buf, (size_t)l, "MSG ") || starts(s->buf, (size_t)l, "HMSG ")) {
                struct js_msg m;
                if (!split_msg(s->buf, l, &m)) {
                    snprintf(err, cap, "jetstream: malformed %.*s", (int)(l < 100 ? l : 100),
                             (const char *)s->buf);
                    return -EPROTO;
                }
                if (s->len < used + m.size + 2)
                    break; /* the payload is not all here */
                bool mine = subject && m.subj_len == strlen(subject) &&
                            memcmp(m.subj, subject, m.subj_len) == 0;
                if (mine) {
                    size_t n = m.size < out_cap - 1 ? m.size : out_cap - 1;
                    memcpy(out, s->buf + used, n);
                    out[n] = 0;
                }
                if (starts(s->buf, (size_t)l, "HMSG ") && mine) {
                    /* a status message: 503 when nothing answers the API subject */
                    snprintf(err, cap,
                             "jetstream: the JetStream API did not answer (%.*s): is nats-server "
                             "running with -js?",
                             (int)(m.size < 60 ? m.size : 60), (const char *)s->buf + used);
                    return -EPROTO;
                }
                bench_setup_consume(s, used + m.size + 2);
                if (mine)
                    return 0;
                continue;
            }
            if (starts(s->buf, (size_t)l, "-ERR")) {
                snprintf(err, cap, "jetstream: %.*s", (int)(l < 200 ? l : 200),
                         (const char *)s->buf);
                return -EPROTO;
            }
            bool pong = starts(s->buf, (size_t)l, "PONG");
            if (starts(s->buf, (size_t)l, "PING")) {
                int r = bench_setup_send(s, "PONG\r\n", 6);
                if (r < 0)
                    return r;
            }
            bench_setup_consume(s, used);
            if (pong && !subject)
                return 0;
        }
        int r = bench_setup_fill(s);
        if (r == 0) {
            snprintf(err, cap, "jetstream: server closed the connection during set-up");
            return -ECONNRESET;
        }
        if (r < 0) {
            snprintf(err, cap, "jetstream: waiting for %s: %s%s", subject ? subject : "PONG",
                     strerror(-r),
                     r == -ETIMEDOUT && subject ? " (is nats-server running with -js?)" : "");
            return r;
        }
    }
}

static int js_setup(struct dur_run *r, struct bench_setup *s, uint32_t index, char *err, size_t cap)
{
    char buf[1024], api[128];
    int n = snprintf(buf, sizeof(buf), "SUB _INBOX.nb%llu.%u.* 1\r\n", base_of(r), index);
    int rc = bench_setup_send(s, buf, (size_t)n);
    if (rc < 0) {
        snprintf(err, cap, "jetstream: sending SUB: %s", strerror(-rc));
        return rc;
    }
    if (index == 0) {
        /* The stream: file storage, JetStream's defaults for everything else. */
        char cfg[512];
        int cl = snprintf(cfg, sizeof(cfg),
                          "{\"name\":\"NB%llu\",\"subjects\":[\"nbd.%llu.>\"],\"storage\":\"file\","
                          "\"retention\":\"limits\",\"discard\":\"old\",\"num_replicas\":1}",
                          base_of(r), base_of(r));
        n = snprintf(buf, sizeof(buf),
                     "PUB $JS.API.STREAM.CREATE.NB%llu _INBOX.nb%llu.0.0 %d\r\n%s\r\n", base_of(r),
                     base_of(r), cl, cfg);
        rc = bench_setup_send(s, buf, (size_t)n);
        if (rc < 0) {
            snprintf(err, cap, "jetstream: sending STREAM.CREATE: %s", strerror(-rc));
            return rc;
        }
        snprintf(api, sizeof(api), "_INBOX.nb%llu.0.0", base_of(r));
        char reply[2048];
        rc = setup_wait(s, api, reply, sizeof(reply), err, cap);
        if (rc < 0)
            return rc;
        if (strstr(reply, "\"error\"")) {
            char text[200];
            json_error_text((const uint8_t *)reply, strlen(reply), text, sizeof(text));
            snprintf(err, cap, "jetstream: creating stream NB%llu: %s", base_of(r), text);
            return -EPROTO;
        }
    }
    rc = bench_setup_send(s, "PING\r\n", 6); /* the PONG says the SUB is registered */
    if (rc < 0) {
        snprintf(err, cap, "jetstream: sending PING: %s", strerror(-rc));
        return rc;
    }
    return setup_wait(s, NULL, NULL, 0, err, cap);
}

static int js_frame(const struct dur_run *r, const struct dconn *c, uint64_t seq, uint8_t *out,
                    size_t cap)
{
    char hdr[160];
    int n = snprintf(hdr, sizeof(hdr), "PUB nbd.%llu.%u _INBOX.nb%llu.%u.%" PRIu64 " %u\r\n",
                     base_of(r), c->index, base_of(r), c->index, seq, r->pl.len);
    if ((size_t)n + r->pl.len + 2 > cap)
        return -ENOSPC;
    memcpy(out, hdr, (size_t)n);
    memcpy(out + n, r->pl.bytes, r->pl.len);
    memcpy(out + n + r->pl.len, "\r\n", 2);
    return n + (int)r->pl.len + 2;
}

/* A PubAck: {"stream":"NB..","seq":N} (maybe "duplicate":true), or {"error":{...}}. */
static void on_puback(struct dur_run *r, struct dconn *c, uint64_t seq, const uint8_t *p, size_t n)
{
    if (memmem(p, n, "\"error\"", 7)) {
        char text[200];
        json_error_text(p, n, text, sizeof(text));
        dur_nack(r, c, seq, text, strlen(text));
        return;
    }
    const uint8_t *q = memmem(p, n, "\"seq\":", 6);
    uint64_t sseq = 0;
    if (q) {
        q += 6;
        size_t k = 0;
        while (q + k < p + n && q[k] >= '0' && q[k] <= '9')
            k++;
        if (!parse_u64(q, k, &sseq))
            q = NULL;
    }
    if (!q || memmem(p, n, "\"duplicate\":true", 16)) {
        dur_bad(r, c, "jetstream: unexpected PubAck %.*s", (int)(n < 120 ? n : 120),
                (const char *)p);
        return;
    }
    if (sseq > r->stream_seq_max)
        r->stream_seq_max = sseq;
    dur_ack(r, c, seq);
}

static long js_parse(struct dur_run *r, struct dconn *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        const uint8_t *p = buf + off;
        size_t left = len - off;
        long l = line_len(p, left);
        if (l == -2) {
            dur_bad(r, c, "jetstream: protocol line longer than %d bytes", JS_LINE_MAX);
            return -EPROTO;
        }
        if (l < 0)
            break;
        if (p[l] != '\r') {
            dur_bad(r, c, "jetstream: line not ended by CRLF");
            return -EPROTO;
        }
        size_t used = (size_t)l + 2;
        if (starts(p, (size_t)l, "MSG ") || starts(p, (size_t)l, "HMSG ")) {
            struct js_msg m;
            uint64_t seq;
            if (!split_msg(p, l, &m)) {
                dur_bad(r, c, "jetstream: malformed %.*s", (int)(l < 100 ? l : 100),
                        (const char *)p);
                return -EPROTO;
            }
            if (left < used + m.size + 2)
                break;
            if (m.sid != 1 || !subject_seq(&m, &seq) || seq == 0)
                dur_bad(r, c, "jetstream: unexpected message on %.*s", (int)m.subj_len,
                        (const char *)m.subj);
            else
                on_puback(r, c, seq, p + used, (size_t)m.size);
            off += used + m.size + 2;
            continue;
        }
        if (starts(p, (size_t)l, "PING"))
            dur_queue(c, "PONG\r\n", 6);
        else if (starts(p, (size_t)l, "-ERR"))
            dur_bad(r, c, "jetstream: %.*s", (int)(l < 160 ? l : 160), (const char *)p);
        else if (!starts(p, (size_t)l, "PONG") && !starts(p, (size_t)l, "+OK") &&
                 !starts(p, (size_t)l, "INFO")) {
            dur_bad(r, c, "jetstream: unexpected line %.*s", (int)(l < 100 ? l : 100),
                    (const char *)p);
            return -EPROTO;
        }
        off += used;
    }
    return (long)off;
}

/* Replay on connection 0: an ephemeral push consumer delivering every message of the stream
 * to _INBOX.nb<base>.replay, counted until all acknowledged ones are in. */
static int js_replay(struct dur_run *r, int64_t deadline_ns, char *err, size_t cap)
{
    struct dconn *c = &r->conns[0];
    uint64_t want = r->k[DK_ACKED];
    char cfg[512], buf[1024];
    int cl = snprintf(cfg, sizeof(cfg),
                      "{\"stream_name\":\"NB%llu\",\"config\":{\"deliver_subject\":"
                      "\"_INBOX.nb%llu.replay\",\"deliver_policy\":\"all\",\"ack_policy\":"
                      "\"none\",\"replay_policy\":\"instant\"}}",
                      base_of(r), base_of(r));
    int n = snprintf(buf, sizeof(buf),
                     "SUB _INBOX.nb%llu.replay 2\r\nPUB $JS.API.CONSUMER.CREATE.NB%llu "
                     "_INBOX.nb%llu.0.0 %d\r\n%s\r\n",
                     base_of(r), base_of(r), base_of(r), cl, cfg);
    c->in_len = 0;
    int rc = dconn_send_all(c, buf, (size_t)n, deadline_ns);
    if (rc < 0) {
        snprintf(err, cap, "jetstream replay: send: %s", strerror(-rc));
        return rc;
    }
    bool created = false;
    /* Bounded by the deadline: every pass either consumes bytes or waits for more. */
    while (r->replayed < want || !created) {
        size_t off = 0;
        while (off < c->in_len) {
            const uint8_t *p = c->in + off;
            size_t left = c->in_len - off;
            long l = line_len(p, left);
            if (l < 0)
                break;
            size_t used = (size_t)l + 2;
            if (starts(p, (size_t)l, "MSG ") || starts(p, (size_t)l, "HMSG ")) {
                struct js_msg m;
                if (!split_msg(p, l, &m)) {
                    snprintf(err, cap, "jetstream replay: malformed %.*s", (int)(l < 100 ? l : 100),
                             (const char *)p);
                    return -EPROTO;
                }
                if (left < used + m.size + 2)
                    break;
                if (m.sid == 2) {
                    if (m.size != r->pl.len) {
                        snprintf(err, cap, "jetstream replay: a message of %" PRIu64 " bytes",
                                 m.size);
                        return -EPROTO;
                    }
                    r->replayed++;
                } else if (m.sid == 1) {
                    uint64_t seq;
                    if (subject_seq(&m, &seq) && seq == 0) {
                        if (memmem(p + used, (size_t)m.size, "\"error\"", 7)) {
                            char text[200];
                            json_error_text(p + used, (size_t)m.size, text, sizeof(text));
                            snprintf(err, cap, "jetstream replay: creating the consumer: %s", text);
                            return -EPROTO;
                        }
                        created = true;
                    }
                }
                off += used + m.size + 2;
                continue;
            }
            if (starts(p, (size_t)l, "PING")) {
                rc = dconn_send_all(c, "PONG\r\n", 6, deadline_ns);
                if (rc < 0)
                    return rc;
            } else if (starts(p, (size_t)l, "-ERR")) {
                snprintf(err, cap, "jetstream replay: %.*s", (int)(l < 160 ? l : 160),
                         (const char *)p);
                return -EPROTO;
            }
            off += used;
        }
        dconn_consume(c, off);
        if (r->replayed >= want && created)
            break;
        rc = dconn_fill(c, deadline_ns);
        if (rc < 0) {
            snprintf(err, cap, "jetstream replay: %" PRIu64 " of %" PRIu64 " events read: %s",
                     r->replayed, want, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

const struct dur_proto dur_proto_jetstream = {
    .name = "jetstream",
    .port_default = 4222,
    .base = &bench_proto_nats,
    .ack_meaning = "PubAck per publish (stored in a file stream; JetStream fsyncs its file "
                   "store on a timer, sync_interval, not per ack)",
    .setup = js_setup,
    .frame = js_frame,
    .parse = js_parse,
    .replay = js_replay,
};
