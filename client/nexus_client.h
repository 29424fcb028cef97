// SPDX-License-Identifier: Apache-2.0
//
// The Nexus C client: one blocking TCP connection to nexusd, speaking the framed protobuf of
// docs/PROTOCOL.md. Writes are buffered (call nexus_flush, or use the *_sync helpers, which
// flush); reads return one frame at a time, with slices valid until the next receive. Frames
// that arrive while a *_sync helper waits for its own reply are kept in order and returned by
// later nexus_recv calls, so nothing is lost. A client is used by one thread at a time.
// Shared by the tests, nexusctl and nexus-bench.
#ifndef NEXUS_CLIENT_H
#define NEXUS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/envelope.h"

struct nexus_client;

/* A received frame. kind is enum codec_kind; the matching union member is decoded, and body
 * holds the raw body bytes. Slices point into the client's buffer until the next receive. */
struct nexus_frame {
    uint32_t kind;
    uint64_t correlation;
    struct codec_slice body;
    union {
        struct codec_event_in event; /* EVENT, EMIT_ACK */
        struct codec_error_in error;
        struct codec_gap_in gap;
        struct codec_welcome_in welcome;
        uint64_t subscription_id; /* SUBSCRIBE_ACK */
        uint64_t nonce;           /* PING, PONG */
    } u;
};

/* A blocking TCP connection to host:port (numeric or name, every address tried in turn),
 * TCP_NODELAY set. Returns the fd, or -errno with err filled. */
int nexus_tcp_connect(const char *host, uint16_t port, char *err, size_t cap);

/* Connects to host:port (numeric or name). Returns a client or NULL with err filled. */
struct nexus_client *nexus_connect(const char *host, uint16_t port, char *err, size_t err_cap);
void nexus_close(struct nexus_client *c);
int nexus_fd(const struct nexus_client *c);

/* TLS for a client (nexus_start_tls). ca_file: the CA the broker's certificate must chain to
 * (NULL: the system's default trust store); cert_file/key_file: a client certificate and its
 * key, for a broker started with --tls-client-ca (NULL: none); server_name: the name (or IP
 * address) the broker's certificate must carry, also sent as SNI when it is a name (NULL: the
 * chain is checked, the name is not); insecure_skip_verify: accept any certificate (tests,
 * debugging only). */
struct nexus_tls_opts {
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    const char *server_name;
    bool insecure_skip_verify;
};

/* Starts TLS on a connected client (blocking handshake, at most 10 s), before anything is sent
 * on it. Every read and write of the client then goes through TLS. Returns 0, or <0 with err
 * filled (-ECONNABORTED: the handshake failed, e.g. an untrusted certificate). With TLS 1.3 a
 * broker that refuses the client's certificate says so after the handshake: the first receive then
 * fails. */
int nexus_start_tls(struct nexus_client *c, const struct nexus_tls_opts *o, char *err, size_t cap);

/* Largest frame nexus_recv accepts (default 64 MiB; set it from Welcome.max_frame_bytes). */
void nexus_set_frame_max(struct nexus_client *c, uint32_t bytes);

/* Buffered writers. Each returns 0 or -errno (-ENOMEM, -ENOSPC for oversize input). */
int nexus_send_raw(struct nexus_client *c, const void *buf, size_t len);
int nexus_send_emit(struct nexus_client *c, const struct codec_emit_in *e);
int nexus_send_subscribe(struct nexus_client *c, uint64_t correlation, int64_t campaign_id,
                         const char *const *patterns, uint32_t pattern_count, const char *user_id);
/* With --data-dir: campaign_id's events from from_sequence are replayed from the broker's log
 * (before the subscribe_ack), then the live ones follow with no gap and no duplicate. */
int nexus_send_subscribe_from(struct nexus_client *c, uint64_t correlation, int64_t campaign_id,
                              const char *const *patterns, uint32_t pattern_count,
                              const char *user_id, uint64_t from_sequence);
int nexus_send_unsubscribe(struct nexus_client *c, uint64_t correlation, uint64_t sub_id);
int nexus_send_hello(struct nexus_client *c, uint64_t correlation, const char *token,
                     const char *name);
/* A hello naming an account (user, may be NULL) with its token (docs/SECURITY.md). */
int nexus_send_hello_user(struct nexus_client *c, uint64_t correlation, const char *user,
                          const char *token, const char *name);
int nexus_send_ping(struct nexus_client *c, uint64_t correlation, uint64_t nonce);
int nexus_send_stats(struct nexus_client *c, uint64_t correlation);
/* Registers this connection as the external handler of the listed actions; the broker
 * answers with register_ack (or error). */
int nexus_send_register(struct nexus_client *c, uint64_t correlation,
                        const struct codec_register *reg);

/* Writes out everything buffered (blocking). Returns 0 or -errno. */
int nexus_flush(struct nexus_client *c);

/* Bytes buffered but not yet written. */
size_t nexus_pending_bytes(const struct nexus_client *c);

/* Receives one frame, waiting at most timeout_ms (-1: forever). Returns 1 with *f filled, 0 on
 * timeout, -ECONNRESET when the broker closed the connection, -EBADMSG on a malformed frame,
 * -ECONNABORTED on a TLS error (an alert from the broker). Over TLS a record the broker sent only
 * in part is waited for whole. */
int nexus_recv(struct nexus_client *c, struct nexus_frame *f, int timeout_ms);

/* Sends the frame(s) buffered so far, then waits for the reply carrying `correlation`
 * (or an error frame with it). Returns 1 with *f filled, 0 on timeout, <0 on error. */
int nexus_wait_reply(struct nexus_client *c, uint64_t correlation, struct nexus_frame *f,
                     int timeout_ms);

/* Convenience: hello → welcome; subscribe → subscription id; emit → ack. Return 1 on the
 * expected reply, 0 on timeout, -EPROTO if the broker answered with an error (then *f holds
 * it when f is given), other negatives on I/O errors. */
int nexus_hello_sync(struct nexus_client *c, const char *token, const char *name,
                     struct nexus_frame *f, int timeout_ms);
int nexus_hello_user_sync(struct nexus_client *c, const char *user, const char *token,
                          const char *name, struct nexus_frame *f, int timeout_ms);
/* The same with the credentials a program should not take from its command line: user from
 * NEXUS_USER and token from NEXUS_TOKEN (either may be unset: a broker without --accounts
 * needs no user, one without authentication nothing). */
int nexus_hello_env_sync(struct nexus_client *c, const char *name, struct nexus_frame *f,
                         int timeout_ms);
int nexus_subscribe_sync(struct nexus_client *c, int64_t campaign_id, const char *const *patterns,
                         uint32_t pattern_count, const char *user_id, uint64_t *sub_id,
                         struct nexus_frame *f, int timeout_ms);
int nexus_emit_sync(struct nexus_client *c, struct codec_emit_in *e, struct nexus_frame *f,
                    int timeout_ms);

/* A fresh correlation id (per client, starting at 1). */
uint64_t nexus_next_correlation(struct nexus_client *c);

/* Fills an emit with NUL-terminated strings (NULL or "" = absent). metadata/payload are
 * opaque protobuf bytes (may be NULL). */
void nexus_emit_init(struct codec_emit_in *e, const char *event_type, int64_t campaign_id,
                     const char *event_id, const void *payload, size_t payload_len);

#endif
