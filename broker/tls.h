// SPDX-License-Identifier: Apache-2.0
//
// TLS for client connections (tls.c), in user space with OpenSSL 3, without a socket BIO: the
// shard's io_uring loop keeps doing every read and write of the socket. Ciphertext received is
// fed in (tls_conn_feed) and plaintext taken out (tls_conn_read, which also advances the
// handshake); plaintext frames are encrypted (tls_conn_write, tls_conn_write_end) into a
// ciphertext buffer owned by the connection's TLS state, which conn.c sends (tls_conn_out,
// tls_conn_out_sent). Nothing here blocks or touches the socket.
//
// Threading: tls_init runs once on the main thread before the shards start; a conn_tls belongs
// to its connection's shard. The SSL_CTX is shared read-only by every shard.
//
// Kernel TLS: tls_init probes whether the kernel has the `tls` TCP ULP and logs the answer;
// this build does not hand keys to the kernel (docs/OPERATIONS.md, "TLS").
#ifndef NEXUS_BROKER_TLS_H
#define NEXUS_BROKER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/stats.h"

struct config;
struct conn_tls;

/* Results of tls_conn_read other than plaintext bytes. */
#define TLS_CLOSED (-1) /* the peer sent close_notify */
#define TLS_FAILED (-2) /* handshake failure, alert, or a record that is not TLS */

/* Longest peer name kept (a certificate's subject CN), NUL included. */
#define TLS_PEER_NAME_MAX 256

/* Start-up, before the shards run: with cfg->tls_cert set, loads the certificate chain, its
 * key and (cfg->tls_client_ca) the CA client certificates must chain to, and registers the
 * TLS counters. Prints why to stderr and returns <0 on a bad file; 0 otherwise (also when TLS
 * is not configured). Logs whether kernel TLS is available. */
int tls_init(const struct config *cfg);
/* True when tls_init configured TLS: every client connection speaks TLS. */
bool tls_enabled(void);

/* A server-side TLS state for a new connection, or NULL when out of memory. */
struct conn_tls *tls_conn_new(void);
void tls_conn_free(struct conn_tls *t);

/* True once the handshake has completed. */
bool tls_conn_established(const struct conn_tls *t);
/* The verified client certificate's subject CN, NUL-terminated; NULL without a verified
 * client certificate (no --tls-client-ca, or before the handshake completed). */
const char *tls_conn_peer_name(const struct conn_tls *t);

/* Takes len bytes of ciphertext received from the peer. Returns 0, or -1 out of memory. */
int tls_conn_feed(struct conn_tls *t, const uint8_t *data, size_t len);
/* Advances the handshake and decrypts what was fed: returns >0 bytes of plaintext written to
 * out (call again until it returns 0), 0 when more ciphertext is needed, TLS_CLOSED or
 * TLS_FAILED (the connection must close; tls_conn_error says why). Handshake messages and
 * alerts to send are staged: see tls_conn_out. */
int tls_conn_read(struct conn_tls *t, uint8_t *out, size_t cap);
/* Why the last call failed (for logs). */
const char *tls_conn_error(const struct conn_tls *t);

/* Encrypts len bytes of plaintext (the connection must be established); small writes are
 * gathered into full records until tls_conn_write_end, which must end each batch on this
 * thread before any other connection's write. Returns 0, or -1 (out of memory, TLS error). */
int tls_conn_write(struct conn_tls *t, const uint8_t *data, size_t len);
int tls_conn_write_end(struct conn_tls *t);

/* Ciphertext to send: *p and the length (0: nothing). The bytes stay valid and unchanged
 * until tls_conn_out_sent: a send in flight may hold them while more is staged. */
size_t tls_conn_out(struct conn_tls *t, const uint8_t **p);
/* n bytes of what tls_conn_out returned were sent. idle: the connection has nothing more
 * queued, so a large drained buffer is given back. */
void tls_conn_out_sent(struct conn_tls *t, size_t n, bool idle);
/* True while a previous tls_conn_out is not fully sent. */
bool tls_conn_out_busy(const struct conn_tls *t);
/* True while any ciphertext waits (being sent, or staged). */
bool tls_conn_out_pending(const struct conn_tls *t);

/* Counts a failed handshake in the shard's statistics (nexus_tls_handshake_failures_total). */
void tls_count_handshake_failure(struct shard_stats *st);

#endif
