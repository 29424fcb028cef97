// SPDX-License-Identifier: Apache-2.0
//
// Implementation of nexus_client.h over a blocking socket with poll(2) for timeouts. One
// thread per client.
#include "client/nexus_client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "codec/wire.h"

/* A frame kept aside by a *_sync helper (copied: its buffer is reused). */
struct held {
    struct held *next;
    uint32_t len;
    uint8_t data[];
};

struct nexus_client {
    int fd;
    uint32_t frame_max;
    uint64_t next_corr;
    uint8_t *wbuf;
    size_t wlen, wcap;
    uint8_t *rbuf; /* received bytes: [rpos, rlen) unconsumed */
    size_t rpos, rlen, rcap;
    uint8_t *cur; /* the frame last returned when it came from the held list */
    struct held *held_head, *held_tail;
};

int nexus_tcp_connect(const char *host, uint16_t port, char *err, size_t cap)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    int r = getaddrinfo(host, ps, &hints, &res);
    if (r != 0) {
        snprintf(err, cap, "cannot resolve %s: %s", host, gai_strerror(r));
        return -EHOSTUNREACH;
    }
    int fd = -1, last = ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, cap, "cannot connect to %s:%u: %s", host, port, strerror(last));
        return -last;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

struct nexus_client *nexus_connect(const char *host, uint16_t port, char *err, size_t err_cap)
{
    int fd = nexus_tcp_connect(host, port, err, err_cap);
    if (fd < 0)
        return NULL;
    struct nexus_client *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        snprintf(err, err_cap, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->frame_max = 64u << 20;
    c->next_corr = 1;
    return c;
}

void nexus_close(struct nexus_client *c)
{
    if (!c)
        return;
    close(c->fd);
    while (c->held_head) {
        struct held *h = c->held_head;
        c->held_head = h->next;
        free(h);
    }
    free(c->cur);
    free(c->wbuf);
    free(c->rbuf);
    free(c);
}

int nexus_fd(const struct nexus_client *c)
{
    return c->fd;
}

void nexus_set_frame_max(struct nexus_client *c, uint32_t bytes)
{
    c->frame_max = bytes;
}

uint64_t nexus_next_correlation(struct nexus_client *c)
{
    return c->next_corr++;
}

size_t nexus_pending_bytes(const struct nexus_client *c)
{
    return c->wlen;
}

static int wreserve(struct nexus_client *c, size_t n)
{
    if (c->wlen + n <= c->wcap)
        return 0;
    size_t ncap = c->wcap ? c->wcap : 65536;
    while (ncap < c->wlen + n)
        ncap *= 2;
    uint8_t *nb = realloc(c->wbuf, ncap);
    if (!nb)
        return -ENOMEM;
    c->wbuf = nb;
    c->wcap = ncap;
    return 0;
}

int nexus_send_raw(struct nexus_client *c, const void *buf, size_t len)
{
    if (wreserve(c, len) < 0)
        return -ENOMEM;
    memcpy(c->wbuf + c->wlen, buf, len);
    c->wlen += len;
    return 0;
}

int nexus_send_emit(struct nexus_client *c, const struct codec_emit_in *e)
{
    size_t n = codec_emit_size(e);
    if (wreserve(c, n) < 0)
        return -ENOMEM;
    c->wlen += codec_emit_encode(e, c->wbuf + c->wlen);
    return 0;
}

/* Encodes with fn into a scratch area at the end of the write buffer. */
#define SEND_SMALL(c, call)                                                                        \
    do {                                                                                           \
        if (wreserve((c), CODEC_CONTROL_BYTES_MAX) < 0)                                            \
            return -ENOMEM;                                                                        \
        uint8_t *out = (c)->wbuf + (c)->wlen;                                                      \
        size_t cap = CODEC_CONTROL_BYTES_MAX;                                                      \
        int n_ = (call);                                                                           \
        if (n_ < 0)                                                                                \
            return n_;                                                                             \
        (c)->wlen += (size_t)n_;                                                                   \
        return 0;                                                                                  \
    } while (0)

int nexus_send_subscribe(struct nexus_client *c, uint64_t corr, int64_t campaign_id,
                         const char *const *patterns, uint32_t pattern_count, const char *user_id)
{
    size_t need = 64 + (user_id ? strlen(user_id) : 0);
    for (uint32_t i = 0; i < pattern_count; i++)
        need += strlen(patterns[i]) + 12;
    if (wreserve(c, need) < 0)
        return -ENOMEM;
    int n = codec_subscribe_encode(c->wbuf + c->wlen, need, corr, campaign_id, patterns,
                                   pattern_count, user_id);
    if (n < 0)
        return n;
    c->wlen += (size_t)n;
    return 0;
}

int nexus_send_unsubscribe(struct nexus_client *c, uint64_t corr, uint64_t sub_id)
{
    SEND_SMALL(c, codec_unsubscribe_encode(out, cap, corr, sub_id));
}

int nexus_send_hello(struct nexus_client *c, uint64_t corr, const char *token, const char *name)
{
    SEND_SMALL(c, codec_hello_encode(out, cap, corr, 1, token, name));
}

int nexus_send_ping(struct nexus_client *c, uint64_t corr, uint64_t nonce)
{
    SEND_SMALL(c, codec_ping_encode(out, cap, corr, nonce));
}

int nexus_send_stats(struct nexus_client *c, uint64_t corr)
{
    SEND_SMALL(c, codec_stats_encode(out, cap, corr));
}

int nexus_send_register(struct nexus_client *c, uint64_t corr, const struct codec_register *reg)
{
    size_t need = 64;
    for (uint32_t i = 0; i < reg->count; i++)
        need += reg->specs[i].action.len + 16 + 10 * (size_t)reg->specs[i].campaign_count;
    if (wreserve(c, need) < 0)
        return -ENOMEM;
    int n = codec_register_encode(c->wbuf + c->wlen, need, corr, reg);
    if (n < 0)
        return n;
    c->wlen += (size_t)n;
    return 0;
}

int nexus_flush(struct nexus_client *c)
{
    size_t off = 0;
    while (off < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + off, c->wlen - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            memmove(c->wbuf, c->wbuf + off, c->wlen - off);
            c->wlen -= off;
            return -e;
        }
        off += (size_t)n;
    }
    c->wlen = 0;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int decode_into(struct nexus_frame *f, const uint8_t *frame, uint32_t len)
{
    struct codec_envelope env;
    char err[CODEC_ERR_BYTES];
    memset(f, 0, sizeof(*f));
    if (codec_envelope_decode(frame, len, &env, err) < 0)
        return -EBADMSG;
    f->kind = env.kind;
    f->correlation = env.correlation;
    f->body = env.body;
    const uint8_t *b = env.body.ptr;
    uint32_t bl = env.body.len;
    int r = 0;
    switch (env.kind) {
    case CODEC_KIND_EVENT:
    case CODEC_KIND_EMIT_ACK:
        r = codec_event_decode(b, bl, &f->u.event, err);
        break;
    case CODEC_KIND_ERROR:
        r = codec_error_decode(b, bl, &f->u.error, err);
        break;
    case CODEC_KIND_GAP:
        r = codec_gap_decode(b, bl, &f->u.gap, err);
        break;
    case CODEC_KIND_WELCOME:
        r = codec_welcome_decode(b, bl, &f->u.welcome, err);
        break;
    case CODEC_KIND_SUBSCRIBE_ACK:
        r = codec_u64_msg_decode(b, bl, &f->u.subscription_id, err);
        break;
    case CODEC_KIND_PING:
    case CODEC_KIND_PONG:
        r = codec_u64_msg_decode(b, bl, &f->u.nonce, err);
        break;
    default:
        break;
    }
    return r < 0 ? -EBADMSG : 1;
}

static int nexus_send_pong(struct nexus_client *c, uint64_t corr, uint64_t nonce)
{
    SEND_SMALL(c, codec_pong_encode(out, cap, corr, nonce));
}

/* The broker's liveness ping (docs/PROTOCOL.md): answered here, at once, and not handed to
 * the caller, so that a client busy only reading (a subscriber) stays connected. Returns true
 * if frame was such a ping. */
static bool answer_ping(struct nexus_client *c, const uint8_t *frame, uint32_t len)
{
    struct codec_envelope env;
    uint64_t nonce;
    if (codec_envelope_decode(frame, len, &env, NULL) < 0 || env.kind != CODEC_KIND_PING ||
        codec_u64_msg_decode(env.body.ptr, env.body.len, &nonce, NULL) < 0)
        return false;
    if (nexus_send_pong(c, env.correlation, nonce) == 0)
        nexus_flush(c);
    return true;
}

/* Reads the next frame off the socket (not the held list); pings are answered, not returned. */
static int recv_wire(struct nexus_client *c, const uint8_t **frame, uint32_t *len, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        size_t have = c->rlen - c->rpos;
        if (have >= 4) {
            uint32_t l = wire_get_be32(c->rbuf + c->rpos);
            if (l == 0 || l > c->frame_max)
                return -EBADMSG;
            if (have >= 4 + (size_t)l) {
                *frame = c->rbuf + c->rpos + 4;
                *len = l;
                c->rpos += 4 + (size_t)l;
                if (answer_ping(c, *frame, l))
                    continue;
                return 1;
            }
            if (c->rcap < 4 + (size_t)l) {
                /* Make room for the whole frame. */
                size_t ncap = c->rcap ? c->rcap : 65536;
                while (ncap < 4 + (size_t)l)
                    ncap *= 2;
                uint8_t *nb = malloc(ncap);
                if (!nb)
                    return -ENOMEM;
                memcpy(nb, c->rbuf + c->rpos, have);
                free(c->rbuf);
                c->rbuf = nb;
                c->rcap = ncap;
                c->rpos = 0;
                c->rlen = have;
            }
        }
        if (c->rpos > 0 && (c->rcap - c->rlen < 65536 || c->rpos == c->rlen)) {
            memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
            c->rlen -= c->rpos;
            c->rpos = 0;
        }
        if (c->rcap - c->rlen < 4096) {
            size_t ncap = c->rcap ? c->rcap * 2 : 262144;
            uint8_t *nb = realloc(c->rbuf, ncap);
            if (!nb)
                return -ENOMEM;
            c->rbuf = nb;
            c->rcap = ncap;
        }
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                return 0;
            wait = (int)left;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (pr <= 0)
            continue;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        c->rlen += (size_t)n;
    }
}

int nexus_recv(struct nexus_client *c, struct nexus_frame *f, int timeout_ms)
{
    free(c->cur);
    c->cur = NULL;
    if (c->held_head) {
        struct held *h = c->held_head;
        c->held_head = h->next;
        if (!c->held_head)
            c->held_tail = NULL;
        c->cur = (uint8_t *)h;
        return decode_into(f, h->data, h->len);
    }
    const uint8_t *frame;
    uint32_t len;
    int r = recv_wire(c, &frame, &len, timeout_ms);
    if (r <= 0)
        return r;
    return decode_into(f, frame, len);
}

int nexus_wait_reply(struct nexus_client *c, uint64_t corr, struct nexus_frame *f, int timeout_ms)
{
    int r = nexus_flush(c);
    if (r < 0)
        return r;
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int left = -1;
        if (deadline >= 0) {
            int64_t l = deadline - now_ms();
            if (l <= 0)
                return 0;
            left = (int)l;
        }
        const uint8_t *frame;
        uint32_t len;
        r = recv_wire(c, &frame, &len, left);
        if (r <= 0)
            return r;
        r = decode_into(f, frame, len);
        if (r < 0)
            return r;
        bool reply =
            f->correlation == corr && (f->kind != CODEC_KIND_EVENT && f->kind != CODEC_KIND_GAP);
        if (reply)
            return 1;
        /* Not ours: keep a copy for nexus_recv, in arrival order. */
        struct held *h = malloc(sizeof(*h) + len);
        if (!h)
            return -ENOMEM;
        h->next = NULL;
        h->len = len;
        memcpy(h->data, frame, len);
        if (c->held_tail)
            c->held_tail->next = h;
        else
            c->held_head = h;
        c->held_tail = h;
    }
}

int nexus_hello_sync(struct nexus_client *c, const char *token, const char *name,
                     struct nexus_frame *f, int timeout_ms)
{
    struct nexus_frame tmp;
    if (!f)
        f = &tmp;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_hello(c, corr, token, name);
    if (r < 0)
        return r;
    r = nexus_wait_reply(c, corr, f, timeout_ms);
    if (r <= 0)
        return r;
    if (f->kind == CODEC_KIND_WELCOME)
        nexus_set_frame_max(c, f->u.welcome.frame_bytes_max > c->frame_max
                                   ? f->u.welcome.frame_bytes_max
                                   : c->frame_max);
    return f->kind == CODEC_KIND_WELCOME ? 1 : -EPROTO;
}

int nexus_subscribe_sync(struct nexus_client *c, int64_t campaign_id, const char *const *patterns,
                         uint32_t pattern_count, const char *user_id, uint64_t *sub_id,
                         struct nexus_frame *f, int timeout_ms)
{
    struct nexus_frame tmp;
    if (!f)
        f = &tmp;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_subscribe(c, corr, campaign_id, patterns, pattern_count, user_id);
    if (r < 0)
        return r;
    r = nexus_wait_reply(c, corr, f, timeout_ms);
    if (r <= 0)
        return r;
    if (f->kind != CODEC_KIND_SUBSCRIBE_ACK)
        return -EPROTO;
    if (sub_id)
        *sub_id = f->u.subscription_id;
    return 1;
}

int nexus_emit_sync(struct nexus_client *c, struct codec_emit_in *e, struct nexus_frame *f,
                    int timeout_ms)
{
    struct nexus_frame tmp;
    if (!f)
        f = &tmp;
    e->correlation = nexus_next_correlation(c);
    int r = nexus_send_emit(c, e);
    if (r < 0)
        return r;
    r = nexus_wait_reply(c, e->correlation, f, timeout_ms);
    if (r <= 0)
        return r;
    return f->kind == CODEC_KIND_EMIT_ACK ? 1 : -EPROTO;
}

void nexus_emit_init(struct codec_emit_in *e, const char *event_type, int64_t campaign_id,
                     const char *event_id, const void *payload, size_t payload_len)
{
    memset(e, 0, sizeof(*e));
    e->event_type.ptr = (const uint8_t *)event_type;
    e->event_type.len = event_type ? (uint32_t)strlen(event_type) : 0;
    e->campaign_id = campaign_id;
    if (event_id && *event_id) {
        e->event_id.ptr = (const uint8_t *)event_id;
        e->event_id.len = (uint32_t)strlen(event_id);
    }
    if (payload) {
        e->payload.ptr = payload;
        e->payload.len = (uint32_t)payload_len;
        e->has_payload = true;
    }
}
