// SPDX-License-Identifier: Apache-2.0
//
// A client connection over WebSocket (conn_ws.c): the HTTP upgrade, then RFC 6455 frames
// around the Nexus frames, in the places where TLS sits (docs/ARCHITECTURE.md). Private to
// broker/; conn.c calls these hooks for a connection whose `ws` is set:
//
//   in:  socket ──► (TLS) ──► conn_ws_input: upgrade request, then ws_parse ──► each binary
//        message as [4-byte length][frame] ──► conn_input (the Nexus framer, as over TCP)
//   out: queued frames ──► conn_ws_flush: each framed (2..10-byte header + frame without its
//        length prefix) into one buffer ──► send   (over TLS: conn_ws_tls_write per frame)
//
// Control frames of the broker (the 101 answer or a refusal, pongs, the close frame) are queued
// like any reply, as `raw` frames, so they leave in order with the rest. Also the connection
// counters per transport (tcp, websocket). Threading: the connection's shard only.
#ifndef NEXUS_BROKER_CONN_WS_H
#define NEXUS_BROKER_CONN_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;
struct oframe;

/* struct conn.transport: how the connection reached the broker (metrics label). */
enum conn_transport { CONN_TRANSPORT_NONE, CONN_TRANSPORT_TCP, CONN_TRANSPORT_WS };

/* Registers the per-transport counters (start-up, before the shards run; idempotent). */
void conn_ws_stats_init(void);

/* An accepted connection, on the client listener (ws false) or the WebSocket one: counted under
 * its transport, and a WebSocket one gets its state. Returns 0, or -ENOMEM (the caller closes
 * the connection). */
int conn_ws_accepted(struct conn *c, bool ws);
/* The connection closed (conn_close): its transport's gauge goes down. */
void conn_ws_closed(struct conn *c);
/* Frees the WebSocket state (conn_free). */
void conn_ws_free(struct conn *c);

/* Bytes received (plaintext after TLS). */
void conn_ws_input(struct conn *c, const uint8_t *data, size_t len);
/* Starts one send of framed output (plain WebSocket; over TLS conn_tls_flush sends). */
void conn_ws_flush(struct conn *c);
/* Completion of that send: res bytes (>= 0) left. */
void conn_ws_sent(struct conn *c, int res);
/* Over TLS: encrypts queued frame f as WebSocket bytes (the frame header and the Nexus frame
 * without its length prefix; a raw frame as it is). Returns what tls_conn_write returned. */
int conn_ws_tls_write(struct conn *c, const struct oframe *f);

/* conn.c's own, shared with conn_ws.c. */
void conn_input(struct conn *c, const uint8_t *data, size_t len);
void conn_schedule_flush(struct conn *c);
void conn_flush_gaps(struct conn *c);

#endif
