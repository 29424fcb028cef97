// SPDX-License-Identifier: Apache-2.0
//
// TLS for nexus-bench (OpenSSL on the non-blocking sockets): one client SSL_CTX per run built
// from --tls/--tls-ca/--tls-cert/--tls-key, a handshake bounded by the set-up deadline (the
// socket is non-blocking from then on; WANT_READ / WANT_WRITE wait in poll), and the
// non-blocking read and write wrappers used by the set-up helpers (net.c), the epoll workers
// (engine.c) and the Provider presets' connections (nconn.c). An SSL object is used by one
// thread at a time: it is created on the main thread during set-up and handed to the worker
// with the connection, like the socket.
#include "bench/bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static SSL_CTX *ctx;

/* The first OpenSSL error on this thread's queue, or `fallback`. Clears the queue. */
static const char *ssl_reason(char *buf, size_t cap, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (!e)
        return fallback;
    ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

int bench_tls_init(const struct bench_cfg *cfg)
{
    if (!cfg->tls || ctx)
        return 0;
    char why[256];
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        fprintf(stderr, "nexus-bench: TLS: %s\n", ssl_reason(why, sizeof(why), "SSL_CTX_new"));
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = cfg->tls_ca[0] ? SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        fprintf(stderr, "nexus-bench: TLS: cannot load CA %s: %s\n",
                cfg->tls_ca[0] ? cfg->tls_ca : "(system store)",
                ssl_reason(why, sizeof(why), "unknown error"));
        return -EINVAL;
    }
    if (cfg->tls_cert[0]) {
        const char *key = cfg->tls_key[0] ? cfg->tls_key : cfg->tls_cert;
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            fprintf(stderr, "nexus-bench: TLS: client certificate %s / key %s: %s\n", cfg->tls_cert,
                    key, ssl_reason(why, sizeof(why), "unknown error"));
            return -EINVAL;
        }
    } else if (cfg->tls_key[0]) {
        fprintf(stderr, "nexus-bench: --tls-key needs --tls-cert\n");
        return -EINVAL;
    }
    return 0;
}

static int wait_fd(int fd, short events, int64_t deadline_ns)
{
    int64_t left = deadline_ns - bench_now_ns();
    if (left <= 0)
        return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, (int)(left / 1000000) + 1);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    return r == 0 ? -ETIMEDOUT : 1;
}

int bench_tls_handshake(struct bench_setup *s, char *err, size_t cap)
{
    const struct bench_cfg *cfg = s->cfg;
    char why[256];
    if (!ctx) {
        snprintf(err, cap, "TLS: not initialised");
        return -EINVAL;
    }
    fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
    SSL *ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, s->fd) != 1) {
        snprintf(err, cap, "TLS: %s", ssl_reason(why, sizeof(why), "SSL_new"));
        SSL_free(ssl);
        return -ENOMEM;
    }
    /* The certificate must name the server: --tls-server-name, else --host; an IP address
     * is matched against the certificate's IP entries, a name against its DNS names (and
     * sent as SNI). */
    const char *name = cfg->tls_server_name[0] ? cfg->tls_server_name : cfg->host;
    unsigned char ipbuf[16];
    bool is_ip = inet_pton(AF_INET, name, ipbuf) == 1 || inet_pton(AF_INET6, name, ipbuf) == 1;
    int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                   : (SSL_set1_host(ssl, name) == 1 && SSL_set_tlsext_host_name(ssl, name) == 1);
    if (ok != 1) {
        snprintf(err, cap, "TLS: cannot check the server name %s", name);
        SSL_free(ssl);
        return -EINVAL;
    }
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(ssl, r);
        int w = 0;
        if (e == SSL_ERROR_WANT_READ)
            w = wait_fd(s->fd, POLLIN, s->deadline_ns);
        else if (e == SSL_ERROR_WANT_WRITE)
            w = wait_fd(s->fd, POLLOUT, s->deadline_ns);
        else {
            long v = SSL_get_verify_result(ssl);
            if (v != X509_V_OK)
                snprintf(err, cap, "TLS handshake: certificate of %s not trusted: %s", name,
                         X509_verify_cert_error_string(v));
            else
                snprintf(err, cap, "TLS handshake with %s failed: %s", name,
                         ssl_reason(why, sizeof(why),
                                    e == SSL_ERROR_SYSCALL ? "connection closed (is TLS "
                                                             "enabled on the server?)"
                                                           : "protocol error"));
            SSL_free(ssl);
            return -EPROTO;
        }
        if (w < 0) {
            snprintf(err, cap, "TLS handshake with %s: %s", name, strerror(-w));
            SSL_free(ssl);
            return w;
        }
    }
    s->ssl = ssl;
    return 0;
}

void bench_tls_free(struct ssl_st *ssl)
{
    if (!ssl)
        return;
    SSL_shutdown(ssl); /* best effort close_notify; the socket is closed right after */
    SSL_free(ssl);
}

long bench_io_recv(int fd, struct ssl_st *ssl, void *buf, size_t len, bool *want_out)
{
    *want_out = false;
    if (!ssl) {
        for (;;) {
            ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
            if (n >= 0)
                return (long)n;
            if (errno == EINTR)
                continue;
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
    }
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    int n = SSL_read(ssl, buf, (int)len);
    if (n > 0)
        return n;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want_out = true;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        return errno && errno != EAGAIN ? -errno : 0; /* 0: closed without close_notify */
    default:
        return -EPROTO;
    }
}

long bench_io_send(int fd, struct ssl_st *ssl, const void *buf, size_t len)
{
    if (!ssl) {
        for (;;) {
            ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0)
                return (long)n;
            if (errno == EINTR)
                continue;
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
    }
    if (len == 0)
        return 0;
    if (len > INT32_MAX)
        len = INT32_MAX;
    ERR_clear_error();
    int n = SSL_write(ssl, buf, (int)len);
    if (n > 0)
        return n;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ: /* renegotiation-like: progresses when the peer's data is read */
    case SSL_ERROR_WANT_WRITE:
        return -EAGAIN;
    case SSL_ERROR_SYSCALL:
        return errno && errno != EAGAIN ? -errno : -EPIPE;
    default:
        return -EPROTO;
    }
}

bool bench_tls_pending(const struct ssl_st *ssl)
{
    return ssl && SSL_has_pending(ssl);
}
