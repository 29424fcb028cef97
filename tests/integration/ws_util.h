// SPDX-License-Identifier: Apache-2.0
//
// A raw WebSocket client for the integration tests (tests/integration/ws*_test.c), written from
// RFC 6455 alone so that it can send what a library would refuse to (unmasked frames, bad
// opcodes, odd fragments): the upgrade request with any headers, masked or unmasked frames,
// server frames read back whole (and checked to be unmasked, as RFC 6455 requires of a
// server), and Nexus frames carried one per binary message. Blocking sockets with a poll
// timeout; header-only like tests/harness.h.
#ifndef NEXUS_TESTS_WS_UTIL_H
#define NEXUS_TESTS_WS_UTIL_H

#include <poll.h>
#include <stdbool.h>

#include "codec/envelope.h"
#include "codec/wire.h"
#include "harness.h"

#define WSC_BUF_BYTES (4u << 20)

struct wsc {
    int fd;
    uint8_t *buf; /* received, not yet returned: [0, len) */
    size_t len;
    uint8_t *msg; /* the last message returned (payload of a whole frame) */
    size_t msg_len;
    uint8_t op; /* its opcode */
};

/* Reads more bytes into w->buf, waiting up to timeout_ms. 1, 0 on timeout, -1 on EOF/error. */
static inline int wsc_fill(struct wsc *w, int timeout_ms)
{
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    ssize_t n = recv(w->fd, w->buf + w->len, WSC_BUF_BYTES - w->len, 0);
    if (n <= 0)
        return -1;
    w->len += (size_t)n;
    return 1;
}

/* A TCP connection to the WebSocket port, not yet upgraded. Exits the test when the port
 * does not answer: nothing can be tested then. */
static inline struct wsc *wsc_open(uint16_t port)
{
    char err[256];
    int fd = nexus_tcp_connect("127.0.0.1", port, err, sizeof(err));
    struct wsc *w = calloc(1, sizeof(*w));
    if (fd < 0 || !w || !(w->buf = malloc(WSC_BUF_BYTES)) || !(w->msg = malloc(WSC_BUF_BYTES))) {
        fprintf(stderr, "ws connect: %s\n", fd < 0 ? err : "out of memory");
        exit(1);
    }
    w->fd = fd;
    return w;
}

static inline void wsc_close(struct wsc *w)
{
    if (!w)
        return;
    close(w->fd);
    free(w->buf);
    free(w->msg);
    free(w);
}

static inline void wsc_send_all(struct wsc *w, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = send(w->fd, b, n, MSG_NOSIGNAL);
        if (k <= 0)
            return; /* the broker closed: the test reads why */
        b += k;
        n -= (size_t)k;
    }
}

/* Sends an upgrade request: the standard headers (key, version 13) unless `headers` replaces
 * them; then reads the answer's head into resp (NUL-terminated). Returns the HTTP status, or
 * -1 if no answer came within 5 s. Bytes after the head stay in w->buf. */
static inline int wsc_upgrade_raw(struct wsc *w, const char *request, char *resp, size_t cap)
{
    wsc_send_all(w, request, strlen(request));
    int64_t deadline = h_now_ms() + 5000;
    for (;;) {
        for (size_t i = 3; i < w->len; i++)
            if (!memcmp(w->buf + i - 3, "\r\n\r\n", 4)) {
                size_t n = i + 1 < cap ? i + 1 : cap - 1;
                memcpy(resp, w->buf, n);
                resp[n] = 0;
                memmove(w->buf, w->buf + i + 1, w->len - i - 1);
                w->len -= i + 1;
                int status = -1;
                sscanf(resp, "HTTP/1.1 %d", &status);
                return status;
            }
        int64_t left = deadline - h_now_ms();
        if (left <= 0 || wsc_fill(w, (int)left) < 0)
            return -1;
    }
}

#define WSC_KEY "dGhlIHNhbXBsZSBub25jZQ=="

/* A valid upgrade request with extra header lines (each ending in \r\n, or ""). */
static inline int wsc_upgrade(struct wsc *w, const char *extra, char *resp, size_t cap)
{
    char req[2048];
    snprintf(req, sizeof(req),
             "GET /nexus HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: " WSC_KEY "\r\n"
             "Sec-WebSocket-Version: 13\r\n%s\r\n",
             extra ? extra : "");
    return wsc_upgrade_raw(w, req, resp, cap);
}

/* Connects and upgrades; NULL if the answer is not 101. */
static inline struct wsc *wsc_connect(uint16_t port)
{
    struct wsc *w = wsc_open(port);
    char resp[1024];
    if (w && wsc_upgrade(w, "", resp, sizeof(resp)) != 101) {
        fprintf(stderr, "upgrade refused: %s\n", resp);
        wsc_close(w);
        return NULL;
    }
    return w;
}

/* Sends one frame: FIN, opcode, payload, masked (with a fixed odd key) or not. */
static inline void wsc_send_frame(struct wsc *w, bool fin, uint8_t op, const void *payload,
                                  size_t len, bool masked)
{
    uint8_t *f = malloc(len + 14);
    size_t n = 0;
    const uint8_t mask[4] = {0xa1, 0x5e, 0x00, 0xc3};
    f[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
    uint8_t m = masked ? 0x80 : 0;
    if (len < 126) {
        f[n++] = (uint8_t)(m | len);
    } else if (len <= 0xffff) {
        f[n++] = m | 126;
        f[n++] = (uint8_t)(len >> 8);
        f[n++] = (uint8_t)len;
    } else {
        f[n++] = m | 127;
        for (int i = 0; i < 8; i++)
            f[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    if (masked) {
        memcpy(f + n, mask, 4);
        n += 4;
    }
    for (size_t i = 0; i < len; i++)
        f[n + i] = (uint8_t)(((const uint8_t *)payload)[i] ^ (masked ? mask[i & 3] : 0));
    wsc_send_all(w, f, n + len);
    free(f);
}

/* Sends a Nexus frame (as the codec encodes it, length prefix first) as one binary message. */
static inline void wsc_send_nexus(struct wsc *w, const uint8_t *frame, size_t len)
{
    wsc_send_frame(w, true, 0x2, frame + 4, len - 4, true);
}

/* Receives one whole server frame into w->msg / w->op. Returns 1, 0 on timeout, -1 on EOF. A
 * masked server frame fails the test (a server never masks). */
static inline int wsc_recv(struct wsc *w, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        if (w->len >= 2) {
            uint8_t b1 = w->buf[1];
            if (b1 & 0x80) {
                fprintf(stderr, "the broker sent a masked frame\n");
                abort();
            }
            size_t h = 2, len = b1 & 0x7f;
            if (len == 126)
                h = 4;
            else if (len == 127)
                h = 10;
            if (w->len >= h) {
                if (h == 4)
                    len = (size_t)w->buf[2] << 8 | w->buf[3];
                else if (h == 10)
                    for (int i = 0; i < 8; i++)
                        len = (i ? len << 8 : 0) | w->buf[2 + i];
                if (w->len >= h + len) {
                    w->op = w->buf[0] & 0x0f;
                    if (!(w->buf[0] & 0x80)) {
                        fprintf(stderr, "the broker sent a fragment\n");
                        abort();
                    }
                    memcpy(w->msg, w->buf + h, len);
                    w->msg_len = len;
                    memmove(w->buf, w->buf + h + len, w->len - h - len);
                    w->len -= h + len;
                    return 1;
                }
            }
        }
        int64_t left = deadline - h_now_ms();
        if (left <= 0)
            return 0;
        int r = wsc_fill(w, (int)left);
        if (r < 0)
            return -1;
    }
}

/* Receives the next Nexus frame, answering the broker's ping frames (WebSocket level none are
 * sent) and skipping nothing else: a control frame in between fails (returns -2). */
static inline int wsc_recv_nexus(struct wsc *w, struct codec_envelope *env, int timeout_ms)
{
    int r = wsc_recv(w, timeout_ms);
    if (r != 1)
        return r;
    if (w->op != 0x2)
        return -2;
    char err[CODEC_ERR_BYTES];
    return codec_envelope_decode(w->msg, w->msg_len, env, err) == 0 ? 1 : -3;
}

/* Waits for a Nexus frame of kind (others are skipped). 1, or <= 0. */
static inline int wsc_wait_kind(struct wsc *w, uint32_t kind, struct codec_envelope *env,
                                int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0)
            return 0;
        int r = wsc_recv_nexus(w, env, (int)left);
        if (r != 1 || env->kind == kind)
            return r;
    }
}

/* Hello → welcome. 1, or <= 0. */
static inline int wsc_hello(struct wsc *w, const char *token)
{
    uint8_t f[256];
    int n = codec_hello_encode(f, sizeof(f), 1, 1, token, "ws-test");
    wsc_send_nexus(w, f, (size_t)n);
    struct codec_envelope env;
    int r = wsc_recv_nexus(w, &env, 5000);
    return r == 1 && env.kind == CODEC_KIND_WELCOME ? 1 : r == 1 ? -4 : r;
}

/* Subscribes to a campaign (every type) and waits for the ack. 1, or <= 0. */
static inline int wsc_subscribe(struct wsc *w, int64_t campaign)
{
    uint8_t f[256];
    const char *pat[] = {"*"};
    int n = codec_subscribe_encode(f, sizeof(f), 2, campaign, pat, 1, NULL);
    wsc_send_nexus(w, f, (size_t)n);
    struct codec_envelope env;
    return wsc_wait_kind(w, CODEC_KIND_SUBSCRIBE_ACK, &env, 5000);
}

/* The close frame's code (0 when it has none); -1 if the next frame is not a close. */
static inline int wsc_expect_close(struct wsc *w, int timeout_ms)
{
    if (wsc_recv(w, timeout_ms) != 1 || w->op != 0x8)
        return -1;
    return w->msg_len >= 2 ? (w->msg[0] << 8 | w->msg[1]) : 0;
}

/* True once the broker closed the TCP connection (EOF within timeout_ms). */
static inline bool wsc_eof(struct wsc *w, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    while (h_now_ms() < deadline) {
        int r = wsc_fill(w, 50);
        if (r < 0)
            return true;
        w->len = 0; /* whatever else came is dropped */
    }
    return false;
}

#endif
