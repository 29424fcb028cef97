// SPDX-License-Identifier: Apache-2.0
//
// broker/tls.c without sockets: a client SSL over memory BIOs talks to a server conn_tls; the
// server's ciphertext is taken out in small pieces, as short sends would leave it, while more
// is staged; every frame arrives whole and in order on the client. Certificates are made with
// the openssl command (skipped without it).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/config.h"
#include "broker/tls.h"

static char dir[64];

/* Moves the client's pending output into the server; returns bytes moved. */
static size_t client_to_server(BIO *cw, struct conn_tls *t)
{
    uint8_t buf[16384];
    size_t moved = 0;
    int n;
    while ((n = BIO_read(cw, buf, sizeof(buf))) > 0) {
        assert_int_equal(tls_conn_feed(t, buf, (size_t)n), 0);
        moved += (size_t)n;
    }
    return moved;
}

/* Hands the server's ciphertext to the client in pieces of at most `piece` bytes. */
static size_t server_to_client(struct conn_tls *t, BIO *cr, size_t piece)
{
    size_t moved = 0;
    const uint8_t *p;
    size_t n;
    while ((n = tls_conn_out(t, &p)) > 0) {
        size_t k = n < piece ? n : piece;
        assert_int_equal(BIO_write(cr, p, (int)k), (int)k);
        tls_conn_out_sent(t, k, false);
        moved += k;
    }
    return moved;
}

static void test_handshake_and_short_sends(void **state)
{
    (void)state;
    struct conn_tls *t = tls_conn_new();
    assert_non_null(t);
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    SSL *cl = SSL_new(cctx);
    BIO *cr = BIO_new(BIO_s_mem()), *cw = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(cr, -1);
    SSL_set_bio(cl, cr, cw);
    SSL_set_connect_state(cl);
    uint8_t plain[16384];
    for (int i = 0; i < 10 && !(tls_conn_established(t) && SSL_is_init_finished(cl)); i++) {
        SSL_do_handshake(cl);
        client_to_server(cw, t);
        assert_true(tls_conn_read(t, plain, sizeof(plain)) >= 0);
        server_to_client(t, cr, 100);
    }
    assert_true(tls_conn_established(t));
    assert_true(SSL_is_init_finished(cl));
    assert_null(tls_conn_peer_name(t)); /* no --tls-client-ca */

    /* 300 frames of mixed sizes (some bigger than a record), sent in pieces of 777 bytes while
     * the next batches are staged. */
    static uint8_t frame[40000], got[40000];
    size_t total = 0;
    for (int batch = 0; batch < 30; batch++) {
        for (int i = 0; i < 10; i++) {
            int k = batch * 10 + i;
            size_t len = k % 50 == 49 ? 40000 : 1 + (size_t)(k * 131 % 5000);
            memset(frame, (char)k, len);
            assert_int_equal(tls_conn_write(t, frame, len), 0);
            total += len;
        }
        assert_int_equal(tls_conn_write_end(t), 0);
        const uint8_t *p;
        size_t n = tls_conn_out(t, &p);
        assert_true(n > 0);
        /* Half of what is handed out is "sent"; the rest stays handed out (a short send)
         * while the next batch is staged behind it. */
        size_t k = n > 1 ? n / 2 : n;
        assert_int_equal(BIO_write(cr, p, (int)k), (int)k);
        tls_conn_out_sent(t, k, false);
        assert_true(tls_conn_out_busy(t) || n == 1);
    }
    server_to_client(t, cr, 777);
    assert_false(tls_conn_out_pending(t));
    size_t read = 0;
    for (int k = 0; k < 300; k++) {
        size_t len = k % 50 == 49 ? 40000 : 1 + (size_t)(k * 131 % 5000);
        size_t have = 0;
        while (have < len) {
            int n = SSL_read(cl, got + have, (int)(len - have));
            assert_true(n > 0);
            have += (size_t)n;
        }
        for (size_t j = 0; j < len; j++)
            assert_int_equal(got[j], (uint8_t)k);
        read += len;
    }
    assert_int_equal(read, total);

    /* Client data back to the server; then close_notify. */
    assert_int_equal(SSL_write(cl, "hello", 5), 5);
    client_to_server(cw, t);
    assert_int_equal(tls_conn_read(t, plain, sizeof(plain)), 5);
    assert_memory_equal(plain, "hello", 5);
    assert_int_equal(tls_conn_read(t, plain, sizeof(plain)), 0);
    SSL_shutdown(cl);
    client_to_server(cw, t);
    assert_int_equal(tls_conn_read(t, plain, sizeof(plain)), TLS_CLOSED);
    SSL_free(cl);
    SSL_CTX_free(cctx);
    tls_conn_free(t);
}

static void test_garbage_fails(void **state)
{
    (void)state;
    struct conn_tls *t = tls_conn_new();
    assert_non_null(t);
    static const uint8_t hello[] = "\x00\x00\x00\x05GET /";
    assert_int_equal(tls_conn_feed(t, hello, sizeof(hello) - 1), 0);
    uint8_t plain[256];
    assert_int_equal(tls_conn_read(t, plain, sizeof(plain)), TLS_FAILED);
    assert_false(tls_conn_established(t));
    assert_true(strlen(tls_conn_error(t)) > 0);
    tls_conn_free(t);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/nexus-tlsu-XXXXXX");
    if (system("openssl version >/dev/null 2>&1") != 0 || !mkdtemp(dir)) {
        fprintf(stderr, "tls_conn_test: no openssl command; skipped\n");
        return 77;
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout k.pem -out c.pem -days 1 -subj /CN=localhost 2>/dev/null",
             dir);
    if (system(cmd) != 0)
        return 1;
    struct config cfg;
    config_defaults(&cfg);
    snprintf(cfg.tls_cert, sizeof(cfg.tls_cert), "%s/c.pem", dir);
    snprintf(cfg.tls_key, sizeof(cfg.tls_key), "%s/k.pem", dir);
    if (tls_init(&cfg) < 0 || !tls_enabled())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_short_sends),
        cmocka_unit_test(test_garbage_fails),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return r;
}
