// SPDX-License-Identifier: Apache-2.0
//
// WebSocket connections (conn_ws.h): the upgrade, deframing into the Nexus framer, framing of
// the output queue, the close handshake, and the connection counters per transport. Framing
// and parsing themselves are ws.c's; the socket, the queue and the Nexus protocol conn.c's.
// Threading: a connection's shard only.
#include "broker/conn_ws.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker/conn.h"
#include "broker/log.h"
#include "broker/shard.h"
#include "broker/tls.h"
#include "broker/ud.h"
#include "broker/ws.h"
#include "codec/wire.h"

/* Output buffers up to this size stay with an idle connection; larger ones (a burst, a large
 * frame) are given back once sent. */
#define CONN_WS_OUT_KEEP_BYTES (64u << 10)

struct conn_ws {
    struct ws_parser parser;
    bool upgraded;   /* the 101 answer is queued: frames flow */
    bool close_sent; /* a close frame is queued: nothing more is queued or read */
    bool closed_out; /* the close frame is framed for the wire: nothing goes after it */
    bool failed;     /* the input cannot be trusted any more: ignore the rest */
    uint8_t *req;    /* the upgrade request while it arrives (WS_HANDSHAKE_BYTES_MAX) */
    uint32_t req_len;
    uint8_t *out; /* framed bytes: [out_off, out_len) not sent yet */
    uint32_t out_off, out_len, out_cap;
};

/* ---- counters per transport ---------------------------------------------------------------- */

enum { WS_STAT_OPEN, WS_STAT_ACCEPTED, WS_STAT_REFUSED, WS_STAT_PROTOCOL, WS_STAT_N };
static int conn_stat[WS_STAT_N][3] = {{-1, -1, -1}, {-1, -1, -1}, {-1, -1, -1}, {-1, -1, -1}};

static const struct stats_def conn_stat_defs[] = {
    {"nexus_transport_connections", "transport=\"tcp\"", "Open client connections by transport.", 1,
     STATS_NO_FRAME_FIELD},
    {"nexus_transport_connections", "transport=\"websocket\"",
     "Open client connections by transport.", 1, STATS_NO_FRAME_FIELD},
    {"nexus_transport_connections_accepted_total", "transport=\"tcp\"",
     "Connections accepted, by transport.", 0, STATS_NO_FRAME_FIELD},
    {"nexus_transport_connections_accepted_total", "transport=\"websocket\"",
     "Connections accepted, by transport.", 0, STATS_NO_FRAME_FIELD},
    {"nexus_websocket_upgrades_refused_total", NULL,
     "WebSocket upgrade requests refused (malformed, wrong version, Origin not allowed).", 0,
     STATS_NO_FRAME_FIELD},
    {"nexus_websocket_protocol_errors_total", NULL,
     "WebSocket connections closed for breaking RFC 6455 (unmasked, bad opcode, text, ...).", 0,
     STATS_NO_FRAME_FIELD},
};

void conn_ws_stats_init(void)
{
    conn_stat[WS_STAT_OPEN][CONN_TRANSPORT_TCP] = stats_register(&conn_stat_defs[0]);
    conn_stat[WS_STAT_OPEN][CONN_TRANSPORT_WS] = stats_register(&conn_stat_defs[1]);
    conn_stat[WS_STAT_ACCEPTED][CONN_TRANSPORT_TCP] = stats_register(&conn_stat_defs[2]);
    conn_stat[WS_STAT_ACCEPTED][CONN_TRANSPORT_WS] = stats_register(&conn_stat_defs[3]);
    conn_stat[WS_STAT_REFUSED][CONN_TRANSPORT_WS] = stats_register(&conn_stat_defs[4]);
    conn_stat[WS_STAT_PROTOCOL][CONN_TRANSPORT_WS] = stats_register(&conn_stat_defs[5]);
}

static void conn_ws_count(struct conn *c, int what, int transport, int delta)
{
    int k = conn_stat[what][transport];
    if (k < 0)
        return;
    if (delta > 0)
        stat_add(&c->shard->stats.ext[k], (uint64_t)delta);
    else
        stat_sub(&c->shard->stats.ext[k], (uint64_t)-delta);
}

int conn_ws_accepted(struct conn *c, bool ws)
{
    if (ws) {
        c->ws = calloc(1, sizeof(*c->ws));
        if (!c->ws)
            return -ENOMEM;
        ws_parser_init(&c->ws->parser, c->framer.frame_bytes_max, &c->shard->assembly_left);
    }
    c->transport = ws ? CONN_TRANSPORT_WS : CONN_TRANSPORT_TCP;
    conn_ws_count(c, WS_STAT_OPEN, c->transport, 1);
    conn_ws_count(c, WS_STAT_ACCEPTED, c->transport, 1);
    return 0;
}

void conn_ws_closed(struct conn *c)
{
    if (c->transport != CONN_TRANSPORT_NONE)
        conn_ws_count(c, WS_STAT_OPEN, c->transport, -1);
}

void conn_ws_free(struct conn *c)
{
    struct conn_ws *w = c->ws;
    if (!w)
        return;
    ws_parser_free(&w->parser);
    free(w->req);
    free(w->out);
    free(w);
    c->ws = NULL;
}

/* ---- output ------------------------------------------------------------------------------- */

/* Queues bytes sent as they are (an HTTP answer, a control frame): in order with the frames
 * queued before, under the connection's output bound like any reply. */
static void conn_ws_enqueue_raw(struct conn *c, const void *buf, size_t len)
{
    struct oframe *f = oframe_alloc((uint32_t)len);
    if (!f) {
        conn_close(c, "out of memory");
        return;
    }
    memcpy(f->data, buf, len);
    f->raw = true;
    conn_enqueue(c, f);
}

/* Sends a close frame (unless one was) and closes once the output before it is sent. */
static void conn_ws_close(struct conn *c, uint16_t code, const char *reason)
{
    struct conn_ws *w = c->ws;
    if (w->upgraded && !w->close_sent) {
        uint8_t buf[2 + WS_CONTROL_BYTES_MAX];
        conn_ws_enqueue_raw(c, buf, ws_close_frame(buf, code, reason));
    }
    w->close_sent = true;
    conn_close_after_flush(c);
}

/* The close frame the broker ends with when the Nexus protocol closes the connection (an
 * error frame, the drain): written after the last queued frame. */
static size_t conn_ws_final_close(struct conn *c, uint8_t out[2 + WS_CONTROL_BYTES_MAX])
{
    c->ws->closed_out = true;
    if (c->flags & CONN_DRAINING)
        return ws_close_frame(out, WS_CLOSE_GOING_AWAY, "the broker is shutting down");
    return ws_close_frame(out, WS_CLOSE_POLICY, "closed by the broker: see the last error frame");
}

/* Whether the broker still owes the peer its close frame: the connection closes after its
 * output, the upgrade happened, and no close frame went out. */
static bool conn_ws_owes_close(const struct conn *c)
{
    return (c->flags & CONN_CLOSING) && c->ws->upgraded && !c->ws->closed_out;
}

/* How queued frame f goes on the wire: *hdr (h bytes, maybe 0) then body[0..*blen). A Nexus
 * frame before the upgrade or after the close frame goes nowhere (*blen 0, returns 0). */
static size_t conn_ws_shape(struct conn *c, const struct oframe *f, uint8_t *hdr,
                            const uint8_t **body, size_t *blen)
{
    struct conn_ws *w = c->ws;
    *blen = 0;
    if (w->closed_out)
        return 0;
    if (f->raw) {
        if (w->upgraded && f->len >= 1 && f->data[0] == (0x80 | WS_OP_CLOSE))
            w->closed_out = true;
        *body = f->data;
        *blen = f->len;
        return 0;
    }
    if (!w->upgraded)
        return 0;
    *body = f->data + CODEC_FRAME_HEADER_BYTES;
    *blen = f->len - CODEC_FRAME_HEADER_BYTES;
    return ws_frame_header(hdr, WS_OP_BINARY, *blen);
}

/* Takes the head frame off the queue: its bytes are in the output buffer (or the TLS state). */
static void conn_ws_pop(struct conn *c, struct oframe *f)
{
    c->q_head = (c->q_head + 1) & (c->q_cap - 1);
    c->q_count--;
    c->q_bytes -= f->len;
    stat_sub(&c->shard->stats.bytes_queued, f->len);
    stat_add(&c->shard->stats.frames_out, 1);
    oframe_unref(f);
}

static bool conn_ws_out_room(struct conn_ws *w, size_t more)
{
    if (w->out_len + more <= w->out_cap)
        return true;
    size_t cap = w->out_cap ? w->out_cap : 4096;
    while (cap < w->out_len + more)
        cap *= 2;
    uint8_t *nb = realloc(w->out, cap);
    if (!nb)
        return false;
    w->out = nb;
    w->out_cap = (uint32_t)cap;
    return true;
}

/* Frames queued frames into the output buffer, about one send's worth; then the close frame
 * the broker owes, if the queue is done. The frames leave the queue as a send completion takes
 * them on a TCP connection. */
static void conn_ws_fill(struct conn *c)
{
    struct conn_ws *w = c->ws;
    NX_ASSERT(c->q_off == 0 && w->out_off == w->out_len);
    w->out_off = w->out_len = 0;
    while (c->q_count && w->out_len < CONN_SEND_BYTES_MAX) {
        struct oframe *f = c->q[c->q_head];
        uint8_t hdr[WS_HEADER_BYTES_MAX];
        const uint8_t *body = NULL;
        size_t blen, h = conn_ws_shape(c, f, hdr, &body, &blen);
        if (!conn_ws_out_room(w, h + blen)) {
            conn_close(c, "out of memory framing WebSocket output");
            return;
        }
        memcpy(w->out + w->out_len, hdr, h);
        if (blen)
            memcpy(w->out + w->out_len + h, body, blen);
        w->out_len += (uint32_t)(h + blen);
        conn_ws_pop(c, f);
    }
    if (c->q_count == 0 && conn_ws_owes_close(c) && conn_ws_out_room(w, 2 + WS_CONTROL_BYTES_MAX))
        w->out_len += (uint32_t)conn_ws_final_close(c, w->out + w->out_len);
    if (c->gap_count && !w->close_sent && c->q_bytes < c->shard->cfg->outbound_bytes_max / 2)
        conn_flush_gaps(c);
}

void conn_ws_flush(struct conn *c)
{
    struct conn_ws *w = c->ws;
    if (c->flags & (CONN_SEND_INFLIGHT | CONN_DEAD))
        return;
    if (w->out_off == w->out_len) {
        conn_ws_fill(c);
        if (c->flags & CONN_DEAD)
            return;
    }
    if (w->out_off == w->out_len) {
        if ((c->flags & CONN_CLOSING) && c->q_count == 0)
            conn_close(c, "closed after flush");
        return;
    }
    struct io_uring_sqe *sqe = shard_sqe(c->shard);
    io_uring_prep_send(sqe, c->fd, w->out + w->out_off, w->out_len - w->out_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_of_conn(c, UD_CONN_SEND));
    c->flags |= CONN_SEND_INFLIGHT;
    c->ops_inflight++;
}

void conn_ws_sent(struct conn *c, int res)
{
    struct conn_ws *w = c->ws;
    NX_ASSERT((uint32_t)res <= w->out_len - w->out_off);
    w->out_off += (uint32_t)res;
    if (w->out_off < w->out_len) { /* a short send: the rest at once */
        conn_ws_flush(c);
        return;
    }
    w->out_off = w->out_len = 0;
    if (c->q_count || conn_ws_owes_close(c)) {
        conn_schedule_flush(c);
        return;
    }
    if (c->flags & CONN_CLOSING) {
        conn_close(c, "closed after flush");
        return;
    }
    if (w->out_cap > CONN_WS_OUT_KEEP_BYTES) {
        free(w->out);
        w->out = NULL;
        w->out_cap = 0;
    }
    if (c->q_cap > 1024) { /* a burst grew the queue array; drained now */
        free(c->q);
        c->q = NULL;
        c->q_cap = 0;
        c->q_head = 0;
    }
}

int conn_ws_tls_write(struct conn *c, const struct oframe *f)
{
    uint8_t hdr[WS_HEADER_BYTES_MAX];
    const uint8_t *body = NULL;
    size_t blen, h = conn_ws_shape(c, f, hdr, &body, &blen);
    int r = 0;
    if (h)
        r = tls_conn_write(c->tls, hdr, h);
    if (r == 0 && blen)
        r = tls_conn_write(c->tls, body, blen);
    if (r == 0 && c->q_count == 1 && conn_ws_owes_close(c)) { /* f is the last queued frame */
        uint8_t buf[2 + WS_CONTROL_BYTES_MAX];
        size_t n = conn_ws_final_close(c, buf);
        r = tls_conn_write(c->tls, buf, n);
    }
    return r;
}

/* ---- input -------------------------------------------------------------------------------- */

/* The parser refused the input (code: ws_parse's): tell the peer why and close. A message too
 * large is the Nexus error frame_too_large, as over TCP, before the close frame. */
static void conn_ws_parse_failed(struct conn *c, int code)
{
    struct conn_ws *w = c->ws;
    const struct config *cfg = c->shard->cfg;
    w->failed = true;
    if (code == WS_CLOSE_TOO_BIG) {
        unsigned long long n = (unsigned long long)w->parser.bad_len;
        if (!(c->flags & CONN_HELLO_SEEN) && c->framer.frame_bytes_max < cfg->frame_bytes_max)
            conn_error(c, 0, "frame_too_large",
                       "message of %llu bytes exceeds %u, the largest frame before hello "
                       "(--pre-hello-frame-bytes); send a hello first",
                       n, c->framer.frame_bytes_max);
        else
            conn_error(c, 0, "frame_too_large", "message of %llu bytes exceeds max_frame_bytes %u",
                       n, cfg->frame_bytes_max);
    } else if (code == WS_CLOSE_TRY_LATER) {
        conn_error(c, 0, "limit_exceeded", "%s", w->parser.err);
    } else if (code == WS_CLOSE_INTERNAL) {
        conn_error(c, 0, "internal", "%s", w->parser.err);
    } else {
        conn_ws_count(c, WS_STAT_PROTOCOL, CONN_TRANSPORT_WS, 1);
        log_refusal((int)c->shard->index, c->fd, "WebSocket protocol error: connection=%llu: %s",
                    (unsigned long long)c->id, w->parser.err);
    }
    conn_ws_close(c, (uint16_t)code, w->parser.err);
}

/* One event of the parser: a message goes to the Nexus framer whole ([length][frame], in the
 * parser's buffer), a ping is answered, a close is answered and closes. */
static void conn_ws_event(struct conn *c, struct ws_event *ev)
{
    struct conn_ws *w = c->ws;
    switch (ev->kind) {
    case WS_EV_MESSAGE:
        wire_put_be32(ev->data - WS_MSG_HEADROOM, (uint32_t)ev->len);
        conn_input(c, ev->data - WS_MSG_HEADROOM, ev->len + WS_MSG_HEADROOM);
        ws_parser_settle(&w->parser);
        return;
    case WS_EV_PING: {
        uint8_t buf[WS_HEADER_BYTES_MAX + WS_CONTROL_BYTES_MAX];
        size_t h = ws_frame_header(buf, WS_OP_PONG, ev->len);
        memcpy(buf + h, ev->data, ev->len);
        conn_ws_enqueue_raw(c, buf, h + ev->len);
        return;
    }
    case WS_EV_PONG:
        return;
    case WS_EV_CLOSE: {
        /* Echo the peer's code (RFC 6455 §5.5.1); a close without one is answered without. */
        uint8_t buf[2 + WS_CONTROL_BYTES_MAX];
        size_t n = ws_close_frame(buf, ev->close_code, NULL);
        if (ev->close_code == WS_CLOSE_NO_STATUS) {
            buf[1] = 0;
            n = 2;
        }
        if (!w->close_sent)
            conn_ws_enqueue_raw(c, buf, n);
        w->close_sent = true;
        conn_close_after_flush(c);
        return;
    }
    }
}

static void conn_ws_frames(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_ws *w = c->ws;
    size_t pos = 0;
    while (pos < len && !(c->flags & (CONN_DEAD | CONN_CLOSING)) && !w->failed && !w->close_sent) {
        /* The Nexus limit of the moment: before the hello, the pre-hello one. */
        ws_parser_set_max(&w->parser, c->framer.frame_bytes_max);
        struct ws_event ev;
        size_t used;
        int r = ws_parse(&w->parser, data + pos, len - pos, &used, &ev);
        pos += used;
        if (r < 0) {
            conn_ws_parse_failed(c, -r);
            return;
        }
        if (r == 0)
            return;
        conn_ws_event(c, &ev);
    }
}

/* The upgrade request, as it arrives: answered once whole (101, or a refusal that closes);
 * bytes after it are frames. */
static void conn_ws_upgrade(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_ws *w = c->ws;
    struct shard *s = c->shard;
    if (!w->req && !(w->req = malloc(WS_HANDSHAKE_BYTES_MAX))) {
        conn_close(c, "out of memory");
        return;
    }
    size_t take =
        len < WS_HANDSHAKE_BYTES_MAX - w->req_len ? len : WS_HANDSHAKE_BYTES_MAX - w->req_len;
    memcpy(w->req + w->req_len, data, take);
    w->req_len += (uint32_t)take;
    int end = ws_request_end(w->req, w->req_len);
    if (end == 0)
        return; /* more to come; --hello-timeout-ms bounds the wait */
    struct ws_upgrade u = {.status = 431, .why = "request headers longer than 8 KiB"};
    if (end > 0)
        ws_upgrade_parse(w->req, (size_t)end, s->cfg->ws_allowed_origins, &u);
    char answer[512];
    int n = ws_upgrade_answer(&u, answer, sizeof(answer));
    if (n > 0)
        conn_ws_enqueue_raw(c, answer, (size_t)n);
    if (u.status != 101) {
        conn_ws_count(c, WS_STAT_REFUSED, CONN_TRANSPORT_WS, 1);
        log_refusal((int)s->index, c->fd, "WebSocket upgrade refused: connection=%llu: %d %s%s%s",
                    (unsigned long long)c->id, u.status, u.why, u.origin[0] ? ", Origin " : "",
                    u.origin);
        w->failed = true;
        conn_close_after_flush(c);
        return;
    }
    w->upgraded = true;
    uint8_t *req = w->req;
    uint32_t req_len = w->req_len;
    w->req = NULL;
    w->req_len = 0;
    conn_ws_frames(c, req + end, req_len - (uint32_t)end);
    free(req);
    if (take < len)
        conn_ws_frames(c, data + take, len - take);
}

void conn_ws_input(struct conn *c, const uint8_t *data, size_t len)
{
    struct conn_ws *w = c->ws;
    if (w->failed || w->close_sent)
        return;
    if (w->upgraded)
        conn_ws_frames(c, data, len);
    else
        conn_ws_upgrade(c, data, len);
    if (c->flags & CONN_DEAD)
        return;
    /* --frame-timeout-ms: a message (or the upgrade request) that has started must complete;
     * the Nexus framer only ever sees whole ones. */
    if (ws_parser_partial(&w->parser) || w->req_len) {
        if (!c->frame_started_ns)
            c->frame_started_ns = shard_clock_ns(c->shard);
    } else if (!codec_framer_partial(&c->framer)) {
        c->frame_started_ns = 0;
    }
}
