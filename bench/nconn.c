// SPDX-License-Identifier: Apache-2.0
//
// The non-blocking Nexus connection of nconn.h.
#include "bench/nconn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/envelope.h"
#include "codec/frame.h"
#include "codec/wire.h"

/* Time allowed to connect and greet. */
#define NCONN_SETUP_NS 10000000000ll

int nconn_open(struct nconn *c, const struct bench_cfg *cfg, int epfd, uint32_t index,
               uint32_t in_cap, uint32_t out_cap)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->epfd = epfd;
    c->index = index;
    c->in = bench_calloc(1, in_cap);
    c->in_cap = in_cap;
    c->out = bench_calloc(1, out_cap);
    c->out_cap = out_cap;
    char err[512] = "";
    int fd = nexus_tcp_connect(cfg->host, cfg->port, err, sizeof(err));
    if (fd < 0) {
        fprintf(stderr, "nexus-bench: %s\n", err);
        return fd;
    }
    struct bench_setup *s = bench_calloc(1, sizeof(*s));
    s->fd = fd;
    s->cfg = cfg;
    s->deadline_ns = bench_now_ns() + NCONN_SETUP_NS;
    int rc = bench_proto_nexus.greet(s, err, sizeof(err));
    if (rc < 0 || s->len > in_cap) {
        fprintf(stderr, "nexus-bench: connection %u: %s\n", index,
                rc < 0 ? err : "greeting larger than the input buffer");
        bench_tls_free(s->ssl);
        close(fd);
        free(s);
        return rc < 0 ? rc : -ENOBUFS;
    }
    memcpy(c->in, s->buf, s->len); /* what arrived after the welcome */
    c->in_len = (uint32_t)s->len;
    c->ssl = s->ssl;
    free(s);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("nexus-bench: epoll_ctl");
        return -errno;
    }
    return 0;
}

void nconn_kill(struct nconn *c)
{
    if (c->dead || c->fd < 0)
        return;
    c->dead = true;
    epoll_ctl(c->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    bench_tls_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
}

void nconn_free(struct nconn *c)
{
    nconn_kill(c);
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
}

static void set_out(struct nconn *c, bool want)
{
    if (c->dead || c->want_out == want)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

bool nconn_room(struct nconn *c, size_t need)
{
    if (c->out_cap - c->out_len >= need)
        return true;
    if (c->out_head) {
        memmove(c->out, c->out + c->out_head, c->out_len - c->out_head);
        c->out_len -= c->out_head;
        c->out_head = 0;
    }
    return c->out_cap - c->out_len >= need;
}

int nconn_flush(struct nconn *c, char *err, size_t cap)
{
    while (!c->dead && c->out_head < c->out_len) {
        long w = bench_io_send(c->fd, c->ssl, c->out + c->out_head, c->out_len - c->out_head);
        if (w > 0) {
            c->out_head += (uint32_t)w;
            continue;
        }
        if (w == -EAGAIN) {
            set_out(c, true);
            return 0;
        }
        snprintf(err, cap, "connection %u: send: %s", c->index,
                 w < 0 ? strerror((int)-w) : "closed");
        nconn_kill(c);
        return -1;
    }
    c->out_head = c->out_len = 0;
    set_out(c, c->read_wants_out);
    return 0;
}

int nconn_read(struct nconn *c, nconn_frame_fn *fn, void *ctx, int64_t *now_ns, char *err,
               size_t cap)
{
    while (!c->dead) {
        bool want_out = false;
        long n = bench_io_recv(c->fd, c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &want_out);
        if (n == -EAGAIN) {
            if (want_out != c->read_wants_out) {
                c->read_wants_out = want_out;
                if (want_out)
                    set_out(c, true);
            }
            if (c->ssl && c->out_head < c->out_len)
                nconn_flush(c, err, cap); /* a TLS write may have waited for this read */
            return c->dead ? -1 : 0;
        }
        if (n <= 0) {
            snprintf(err, cap, "connection %u: broker closed the connection%s%s", c->index,
                     n < 0 ? ": " : "", n < 0 ? strerror((int)-n) : "");
            nconn_kill(c);
            return -1;
        }
        *now_ns = bench_now_ns();
        c->in_len += (uint32_t)n;
        uint32_t off = 0;
        while (!c->dead && c->in_len - off >= CODEC_FRAME_HEADER_BYTES) {
            uint32_t l = wire_get_be32(c->in + off);
            if (l == 0 || l > c->in_cap - CODEC_FRAME_HEADER_BYTES) {
                snprintf(err, cap, "connection %u: frame length %u out of range", c->index, l);
                nconn_kill(c);
                return -1;
            }
            if (c->in_len - off < CODEC_FRAME_HEADER_BYTES + l)
                break;
            fn(ctx, c, c->in + off + CODEC_FRAME_HEADER_BYTES, l);
            off += CODEC_FRAME_HEADER_BYTES + l;
        }
        if (c->dead)
            return 0; /* the preset closed it */
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return 0;
}

void nconn_pong(struct nconn *c, uint64_t correlation, const uint8_t *body, uint32_t len)
{
    uint64_t nonce = 0;
    char cerr[CODEC_ERR_BYTES];
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    codec_u64_msg_decode(body, len, &nonce, cerr);
    int n = codec_pong_encode(buf, sizeof(buf), correlation, nonce);
    char err[128];
    if (n > 0 && nconn_room(c, (size_t)n)) {
        memcpy(c->out + c->out_len, buf, (size_t)n);
        c->out_len += (uint32_t)n;
        nconn_flush(c, err, sizeof(err)); /* a failure shows at the next read */
    }
}
