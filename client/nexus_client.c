// SPDX-License-Identifier: Apache-2.0
//
// Implementation of nexus_client.h over a blocking socket with poll(2) for timeouts. One
// thread per client.
#include "client/nexus_client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
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
    SSL_CTX *tls_ctx; /* TLS (nexus_start_tls), NULL on plain TCP */
    SSL *ssl;
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
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* close_notify, not waiting for the broker's */
        SSL_free(c->ssl);
        SSL_CTX_free(c->tls_ctx);
    }
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
    return nexus_send_subscribe_from(c, corr, campaign_id, patterns, pattern_count, user_id, 0);
}

int nexus_send_subscribe_from(struct nexus_client *c, uint64_t corr, int64_t campaign_id,
                              const char *const *patterns, uint32_t pattern_count,
                              const char *user_id, uint64_t from_sequence)
{
    size_t need = 64 + (user_id ? strlen(user_id) : 0);
    for (uint32_t i = 0; i < pattern_count; i++)
        need += strlen(patterns[i]) + 12;
    if (wreserve(c, need) < 0)
        return -ENOMEM;
    int n = codec_subscribe_from_encode(c->wbuf + c->wlen, need, corr, campaign_id, patterns,
                                        pattern_count, user_id, from_sequence);
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

int nexus_send_hello_user(struct nexus_client *c, uint64_t corr, const char *user,
                          const char *token, const char *name)
{
    SEND_SMALL(c, codec_hello_user_encode(out, cap, corr, 1, user, token, name));
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

/* nexus_flush over TLS: a blocking SSL_write of everything buffered. */
static int tls_flush(struct nexus_client *c)
{
    size_t off = 0;
    while (off < c->wlen) {
        size_t chunk = c->wlen - off < (1u << 30) ? c->wlen - off : (1u << 30);
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->wbuf + off, (int)chunk);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
            continue; /* interrupted: the same write again */
        int en = e == SSL_ERROR_SYSCALL && errno ? errno : ECONNABORTED;
        ERR_clear_error();
        memmove(c->wbuf, c->wbuf + off, c->wlen - off);
        c->wlen -= off;
        return -en;
    }
    c->wlen = 0;
    return 0;
}

int nexus_flush(struct nexus_client *c)
{
    if (c->ssl)
        return tls_flush(c);
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

/* Over TLS: one SSL_read into the receive buffer. Returns 1 (bytes read), 0 (nothing yet:
 * interrupted, or a record that carried no data), <0 at the end. */
static int tls_read_some(struct nexus_client *c)
{
    size_t room = c->rcap - c->rlen;
    ERR_clear_error();
    int n = SSL_read(c->ssl, c->rbuf + c->rlen, room > (1u << 30) ? 1 << 30 : (int)room);
    if (n > 0) {
        c->rlen += (size_t)n;
        return 1;
    }
    int e = SSL_get_error(c->ssl, n);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL)
        return -ECONNRESET;
    return -ECONNABORTED;
}

/* Waits up to wait ms (-1: forever) for input and reads what there is into the receive buffer.
 * Returns 1 (bytes read), 0 (nothing: time out, or interrupted), <0 at the end. */
static int read_some(struct nexus_client *c, int wait)
{
    /* Over TLS, bytes the SSL already holds are not on the socket any more: no poll then. */
    if (!c->ssl || !SSL_has_pending(c->ssl)) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&p, 1, wait);
        if (pr < 0 && errno != EINTR)
            return -errno;
        if (pr <= 0)
            return 0;
    }
    if (c->ssl)
        return tls_read_some(c);
    ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
    if (n == 0)
        return -ECONNRESET;
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -errno;
    c->rlen += (size_t)n;
    return 1;
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
        int r = read_some(c, wait);
        if (r < 0)
            return r;
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

/* The welcome (or error) answering the hello sent with corr. */
static int hello_finish(struct nexus_client *c, uint64_t corr, struct nexus_frame *f,
                        int timeout_ms)
{
    int r = nexus_wait_reply(c, corr, f, timeout_ms);
    if (r <= 0)
        return r;
    if (f->kind == CODEC_KIND_WELCOME)
        nexus_set_frame_max(c, f->u.welcome.frame_bytes_max > c->frame_max
                                   ? f->u.welcome.frame_bytes_max
                                   : c->frame_max);
    return f->kind == CODEC_KIND_WELCOME ? 1 : -EPROTO;
}

int nexus_hello_sync(struct nexus_client *c, const char *token, const char *name,
                     struct nexus_frame *f, int timeout_ms)
{
    struct nexus_frame tmp;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_hello(c, corr, token, name);
    return r < 0 ? r : hello_finish(c, corr, f ? f : &tmp, timeout_ms);
}

int nexus_hello_user_sync(struct nexus_client *c, const char *user, const char *token,
                          const char *name, struct nexus_frame *f, int timeout_ms)
{
    struct nexus_frame tmp;
    uint64_t corr = nexus_next_correlation(c);
    int r = nexus_send_hello_user(c, corr, user, token, name);
    return r < 0 ? r : hello_finish(c, corr, f ? f : &tmp, timeout_ms);
}

int nexus_hello_env_sync(struct nexus_client *c, const char *name, struct nexus_frame *f,
                         int timeout_ms)
{
    return nexus_hello_user_sync(c, getenv("NEXUS_USER"), getenv("NEXUS_TOKEN"), name, f,
                                 timeout_ms);
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

/* ---- TLS ------------------------------------------------------------------------------------ */

/* The client's socket BIO: send with MSG_NOSIGNAL, so that writing to a broker that closed
 * the connection is an error, not a SIGPIPE (OpenSSL's socket BIO uses write(2)). */
static int tls_sock_write(BIO *b, const char *data, int len)
{
    ssize_t n = send((int)(intptr_t)BIO_get_data(b), data, (size_t)len, MSG_NOSIGNAL);
    BIO_clear_retry_flags(b);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        BIO_set_retry_write(b);
    return (int)n;
}

static int tls_sock_read(BIO *b, char *buf, int len)
{
    ssize_t n = recv((int)(intptr_t)BIO_get_data(b), buf, (size_t)len, 0);
    BIO_clear_retry_flags(b);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        BIO_set_retry_read(b);
    return (int)n;
}

static long tls_sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int tls_sock_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *tls_sock_method;
static pthread_once_t tls_sock_once = PTHREAD_ONCE_INIT;

static void tls_sock_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_get_new_index(), "nexus-client-sock");
    if (m && BIO_meth_set_write(m, tls_sock_write) && BIO_meth_set_read(m, tls_sock_read) &&
        BIO_meth_set_ctrl(m, tls_sock_ctrl) && BIO_meth_set_create(m, tls_sock_create)) {
        tls_sock_method = m;
        return;
    }
    BIO_meth_free(m);
}

/* Fills err with what failed and OpenSSL's reason. Returns -ECONNABORTED. */
static int tls_fail(char *err, size_t cap, const char *what, const char *file)
{
    char reason[256] = "unknown error";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    snprintf(err, cap, "TLS: %s%s%s: %s", what, file ? " " : "", file ? file : "", reason);
    return -ECONNABORTED;
}

static SSL_CTX *tls_client_ctx(const struct nexus_tls_opts *o, char *err, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_fail(err, cap, "cannot create a context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A record without data (a ticket) must not block a receive that has a timeout. */
    SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF); /* frames carry their length */
    int ok = 1;
    const char *what = NULL, *file = NULL;
    if (o->insecure_skip_verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        ok = o->ca_file ? SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL)
                        : SSL_CTX_set_default_verify_paths(ctx);
        what = "cannot load the CA file", file = o->ca_file;
    }
    if (ok == 1 && o->cert_file) {
        const char *key = o->key_file ? o->key_file : o->cert_file;
        if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1)
            ok = 0, what = "cannot load the certificate", file = o->cert_file;
        else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_check_private_key(ctx) != 1)
            ok = 0, what = "cannot use the private key", file = key;
    }
    if (ok != 1) {
        tls_fail(err, cap, what, file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The name or address the broker's certificate must carry (and SNI for a name). */
static int tls_expect_name(SSL *ssl, const char *name)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -1;
    if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
        return -1;
    return 0;
}

/* The blocking handshake, bounded by socket timeouts. Returns 1 or <= 0 as SSL_connect. */
static int tls_handshake(int fd, SSL *ssl)
{
    struct timeval tv = {.tv_sec = 10, .tv_usec = 0}, none = {0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ERR_clear_error();
    int r = SSL_connect(ssl);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
    return r;
}

int nexus_start_tls(struct nexus_client *c, const struct nexus_tls_opts *o, char *err, size_t cap)
{
    static const struct nexus_tls_opts defaults = {0};
    if (!o)
        o = &defaults;
    if (c->ssl || c->wlen || c->rlen > c->rpos) {
        snprintf(err, cap, "TLS: start it once, before anything is sent or received");
        return -EINVAL;
    }
    pthread_once(&tls_sock_once, tls_sock_method_init);
    SSL_CTX *ctx = tls_sock_method ? tls_client_ctx(o, err, cap) : NULL;
    if (!ctx)
        return tls_sock_method ? -ECONNABORTED : tls_fail(err, cap, "cannot create a BIO", NULL);
    SSL *ssl = SSL_new(ctx);
    BIO *bio = ssl ? BIO_new(tls_sock_method) : NULL;
    if (!bio) {
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        return tls_fail(err, cap, "out of memory", NULL);
    }
    BIO_set_data(bio, (void *)(intptr_t)c->fd);
    SSL_set_bio(ssl, bio, bio);
    if (o->server_name && tls_expect_name(ssl, o->server_name) < 0) {
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        return tls_fail(err, cap, "cannot expect the server name", o->server_name);
    }
    if (tls_handshake(c->fd, ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK && !o->insecure_skip_verify) {
            snprintf(err, cap, "TLS: the broker's certificate is not trusted: %s",
                     X509_verify_cert_error_string(v));
            ERR_clear_error();
        } else {
            tls_fail(err, cap, "handshake failed", NULL);
        }
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        return -ECONNABORTED;
    }
    c->ssl = ssl;
    c->tls_ctx = ctx;
    return 0;
}
