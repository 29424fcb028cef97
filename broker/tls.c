// SPDX-License-Identifier: Apache-2.0
//
// TLS for client connections (tls.h). Input: ciphertext is written into a memory BIO that the
// SSL reads from. Output: the SSL writes its records through a small BIO of our own that
// appends them to the connection's staging buffer; tls_conn_out swaps the staging buffer with
// the send buffer once the send buffer is drained, so a buffer given to the kernel is never
// written to or moved, and no ciphertext is copied after it was encrypted.
#include "broker/tls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/config.h"
#include "broker/log.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* Plaintext gathered into one SSL_write: one full TLS record. */
#define TLS_RECORD_PLAIN 16384
/* A drained output buffer larger than this is given back when the connection goes idle. */
#define TLS_OUT_KEEP (64u << 10)

struct tls_buf {
    uint8_t *p;
    size_t len, off, cap;
};

struct conn_tls {
    SSL *ssl;
    BIO *rbio;            /* ciphertext in (memory BIO) */
    struct tls_buf stage; /* ciphertext written by the SSL, not yet handed out */
    struct tls_buf send;  /* ciphertext handed out by tls_conn_out: [off, len) unsent */
    bool established;
    bool oom;
    char peer[TLS_PEER_NAME_MAX]; /* "" when none */
    char error[160];
};

static SSL_CTX *tls_ctx;
static BIO_METHOD *tls_out_method;
static bool tls_verify_clients;
static int tls_failures_stat = -1;

static const struct stats_def tls_failures_def = {
    .name = "nexus_tls_handshake_failures_total",
    .help = "TLS connections closed by a failed handshake (bad certificate, not TLS, alert)",
    .stats_frame_off = STATS_NO_FRAME_FIELD,
};

/* Plaintext of the batch being encrypted on this thread (tls_conn_write). */
static _Thread_local uint8_t tls_plain[TLS_RECORD_PLAIN];
static _Thread_local size_t tls_plain_len;

/* ---- the output BIO: appends to the connection's staging buffer ----------------------------- */

static int tls_out_write(BIO *b, const char *data, int len)
{
    struct conn_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    struct tls_buf *s = &t->stage;
    if (s->len + (size_t)len > s->cap) {
        size_t ncap = s->cap ? s->cap : 4096;
        while (ncap < s->len + (size_t)len)
            ncap *= 2;
        uint8_t *np = realloc(s->p, ncap);
        if (!np) {
            t->oom = true;
            return -1;
        }
        s->p = np;
        s->cap = ncap;
    }
    memcpy(s->p + s->len, data, (size_t)len);
    s->len += (size_t)len;
    return len;
}

static long tls_out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int tls_out_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int tls_out_destroy(BIO *b)
{
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *tls_out_method_new(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_get_new_index(), "nexus-tls-out");
    if (!m)
        return NULL;
    if (!BIO_meth_set_write(m, tls_out_write) || !BIO_meth_set_ctrl(m, tls_out_ctrl) ||
        !BIO_meth_set_create(m, tls_out_create) || !BIO_meth_set_destroy(m, tls_out_destroy)) {
        BIO_meth_free(m);
        return NULL;
    }
    return m;
}

/* ---- start-up ------------------------------------------------------------------------------- */

/* Prints OpenSSL's reason for a failed start-up step. */
static int tls_init_fail(const char *what, const char *file)
{
    char reason[256] = "unknown error";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    fprintf(stderr, "nexusd: TLS: cannot %s%s%s: %s\n", what, file ? " " : "", file ? file : "",
            reason);
    log_error(-1, "TLS: cannot %s%s%s: %s", what, file ? " " : "", file ? file : "", reason);
    SSL_CTX_free(tls_ctx);
    tls_ctx = NULL;
    return -1;
}

/* Whether the kernel has the `tls` TCP upper layer: setting it on a socket that is not
 * connected fails with ENOTCONN when the ULP exists and ENOENT when it does not. */
static void tls_probe_ktls(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    int r = setsockopt(fd, SOL_TCP, TCP_ULP, "tls", 3);
    int e = errno;
    close(fd);
    if (r == 0 || e == ENOTCONN)
        log_info(-1, "kernel TLS offload: available (tls ULP present) but not used by this build; "
                     "TLS runs in user space");
    else
        log_info(-1, "kernel TLS offload: not available (no tls ULP: %s); TLS runs in user space",
                 strerror(e));
}

static int tls_load_client_ca(const char *ca)
{
    if (SSL_CTX_load_verify_locations(tls_ctx, ca, NULL) != 1)
        return tls_init_fail("load the client CA file", ca);
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (!names)
        return tls_init_fail("read the CA names of", ca);
    SSL_CTX_set_client_CA_list(tls_ctx, names);
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    tls_verify_clients = true;
    return 0;
}

int tls_init(const struct config *cfg)
{
    if (!cfg->tls_cert[0])
        return 0;
    tls_ctx = SSL_CTX_new(TLS_server_method());
    if (!tls_ctx)
        return tls_init_fail("create the TLS context", NULL);
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* No resumption (no ticket or cache to keep in step across shards), and the SSL's own
     * buffers go back while a connection is idle. */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(tls_ctx, 0);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(tls_ctx, cfg->tls_cert) != 1)
        return tls_init_fail("load the certificate", cfg->tls_cert);
    if (SSL_CTX_use_PrivateKey_file(tls_ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1)
        return tls_init_fail("load the private key", cfg->tls_key);
    if (SSL_CTX_check_private_key(tls_ctx) != 1)
        return tls_init_fail("use the private key (it does not match the certificate)",
                             cfg->tls_key);
    if (cfg->tls_client_ca[0] && tls_load_client_ca(cfg->tls_client_ca) < 0)
        return -1;
    tls_out_method = tls_out_method_new();
    if (!tls_out_method)
        return tls_init_fail("create the output BIO", NULL);
    tls_failures_stat = stats_register(&tls_failures_def);
    log_info(-1, "TLS: certificate %s; client certificates %s%s; TLS 1.2 minimum", cfg->tls_cert,
             tls_verify_clients ? "required, verified against " : "not requested",
             tls_verify_clients ? cfg->tls_client_ca : "");
    tls_probe_ktls();
    return 0;
}

bool tls_enabled(void)
{
    return tls_ctx != NULL;
}

void tls_count_handshake_failure(struct shard_stats *st)
{
    if (tls_failures_stat >= 0)
        stat_add(&st->ext[tls_failures_stat], 1);
}

/* ---- one connection ------------------------------------------------------------------------- */

struct conn_tls *tls_conn_new(void)
{
    struct conn_tls *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ssl = SSL_new(tls_ctx);
    t->rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(tls_out_method);
    if (!t->ssl || !t->rbio || !wbio) {
        BIO_free(wbio);
        BIO_free(t->rbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_mem_eof_return(t->rbio, -1); /* empty means "more to come", not end of file */
    BIO_set_data(wbio, t);
    SSL_set_bio(t->ssl, t->rbio, wbio); /* the SSL owns both BIOs now */
    SSL_set_accept_state(t->ssl);
    return t;
}

void tls_conn_free(struct conn_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t->stage.p);
    free(t->send.p);
    free(t);
}

bool tls_conn_established(const struct conn_tls *t)
{
    return t->established;
}

const char *tls_conn_peer_name(const struct conn_tls *t)
{
    return t && t->established && t->peer[0] ? t->peer : NULL;
}

const char *tls_conn_error(const struct conn_tls *t)
{
    return t->error[0] ? t->error : "TLS error";
}

int tls_conn_feed(struct conn_tls *t, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    if (BIO_write(t->rbio, data, (int)len) != (int)len) {
        ERR_clear_error();
        snprintf(t->error, sizeof(t->error), "out of memory");
        return -1;
    }
    return 0;
}

/* The verified client certificate's CN, once the handshake completes. */
static void tls_note_peer(struct conn_tls *t)
{
    t->peer[0] = 0;
    if (!tls_verify_clients || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return;
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    X509_NAME *subj = cert ? X509_get_subject_name(cert) : NULL;
    if (!subj)
        return;
    int n = X509_NAME_get_text_by_NID(subj, NID_commonName, t->peer, sizeof(t->peer));
    /* A CN with a NUL inside, or none: no name, rather than a truncated one. */
    if (n <= 0 || (size_t)n != strlen(t->peer))
        t->peer[0] = 0;
}

/* Classifies a failed SSL call: 0 (wants more input), TLS_CLOSED or TLS_FAILED. */
static int tls_conn_status(struct conn_tls *t, int r)
{
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->error, sizeof(t->error), "peer sent close_notify");
        ERR_clear_error();
        return TLS_CLOSED;
    }
    unsigned long err = ERR_peek_last_error();
    if (t->oom)
        snprintf(t->error, sizeof(t->error), "out of memory");
    else if (err)
        ERR_error_string_n(err, t->error, sizeof(t->error));
    else
        snprintf(t->error, sizeof(t->error), "TLS error (%d)", e);
    ERR_clear_error();
    return TLS_FAILED;
}

int tls_conn_read(struct conn_tls *t, uint8_t *out, size_t cap)
{
    ERR_clear_error();
    if (!t->established) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1)
            return tls_conn_status(t, r);
        t->established = true;
        tls_note_peer(t);
    }
    int n = SSL_read(t->ssl, out, cap > INT32_MAX ? INT32_MAX : (int)cap);
    if (n > 0)
        return n;
    return tls_conn_status(t, n);
}

/* Encrypts len bytes at once (the output BIO takes everything: no partial write). */
static int tls_conn_write_now(struct conn_tls *t, const uint8_t *data, size_t len)
{
    while (len) {
        int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
        int n = SSL_write(t->ssl, data, chunk);
        if (n <= 0) {
            tls_conn_status(t, n);
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int tls_conn_write(struct conn_tls *t, const uint8_t *data, size_t len)
{
    if (tls_plain_len + len <= sizeof(tls_plain)) {
        memcpy(tls_plain + tls_plain_len, data, len);
        tls_plain_len += len;
        return 0;
    }
    if (tls_conn_write_end(t) < 0)
        return -1;
    if (len >= sizeof(tls_plain))
        return tls_conn_write_now(t, data, len);
    memcpy(tls_plain, data, len);
    tls_plain_len = len;
    return 0;
}

int tls_conn_write_end(struct conn_tls *t)
{
    size_t n = tls_plain_len;
    tls_plain_len = 0;
    if (n == 0)
        return 0;
    ERR_clear_error();
    return tls_conn_write_now(t, tls_plain, n);
}

size_t tls_conn_out(struct conn_tls *t, const uint8_t **p)
{
    if (t->send.off == t->send.len && t->stage.len) {
        struct tls_buf drained = t->send;
        t->send = t->stage;
        t->send.off = 0;
        t->stage = drained;
        t->stage.len = t->stage.off = 0;
    }
    *p = t->send.p + t->send.off;
    return t->send.len - t->send.off;
}

void tls_conn_out_sent(struct conn_tls *t, size_t n, bool idle)
{
    t->send.off += n;
    if (t->send.off < t->send.len)
        return;
    t->send.off = t->send.len = 0;
    if (idle && t->send.cap > TLS_OUT_KEEP) {
        free(t->send.p);
        t->send.p = NULL;
        t->send.cap = 0;
    }
    if (idle && t->stage.len == 0 && t->stage.cap > TLS_OUT_KEEP) {
        free(t->stage.p);
        t->stage.p = NULL;
        t->stage.cap = 0;
    }
}

bool tls_conn_out_busy(const struct conn_tls *t)
{
    return t->send.off < t->send.len;
}

bool tls_conn_out_pending(const struct conn_tls *t)
{
    return t->send.off < t->send.len || t->stage.len > 0;
}
