// SPDX-License-Identifier: Apache-2.0
//
// A non-blocking Nexus connection for the single-threaded Provider presets of nexus-bench
// (lifecycle.c, streams.c): connect and greet, a buffered output flushed with EPOLLOUT when the
// socket is full, framed input handed to the preset one frame at a time, and the pong to a
// ping. The pub/sub presets have their own engine (engine.c), with per-protocol drivers.
#ifndef NEXUS_BENCH_NCONN_H
#define NEXUS_BENCH_NCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench/bench.h"

struct nconn {
    int fd;
    int epfd;
    uint32_t index;
    bool dead, want_out;
    bool read_wants_out; /* TLS: SSL_read waits for the socket to be writable */
    struct ssl_st *ssl;  /* TLS (--tls, --tls-ca): NULL for plain TCP */
    uint8_t *in;
    uint32_t in_len, in_cap;
    uint8_t *out;
    uint32_t out_head, out_len, out_cap;
};

/* Called for each whole frame (body without the length prefix). */
typedef void nconn_frame_fn(void *ctx, struct nconn *c, const uint8_t *body, uint32_t len);

/* Allocates the buffers, connects to cfg's broker, greets it and registers with epfd.
 * 0, or <0 with the reason printed. */
int nconn_open(struct nconn *c, const struct bench_cfg *cfg, int epfd, uint32_t index,
               uint32_t in_cap, uint32_t out_cap);
/* Closes the socket (once) and frees the buffers. */
void nconn_free(struct nconn *c);
/* Closes the socket; the buffers stay until nconn_free. */
void nconn_kill(struct nconn *c);

/* Makes room for need more output bytes (moving unsent bytes to the front). */
bool nconn_room(struct nconn *c, size_t need);
/* Sends what is buffered; waits for EPOLLOUT when the socket is full. 0, or -1 when the
 * connection failed (killed; err says why). */
int nconn_flush(struct nconn *c, char *err, size_t cap);
/* Reads what is there and hands each whole frame to fn, setting *now_ns to the time of the
 * read first. 0, or -1 when the broker closed the connection or sent a bad length (killed; err
 * says why). */
int nconn_read(struct nconn *c, nconn_frame_fn *fn, void *ctx, int64_t *now_ns, char *err,
               size_t cap);

/* Answers a ping frame (its envelope's correlation and body). */
void nconn_pong(struct nconn *c, uint64_t correlation, const uint8_t *body, uint32_t len);

#endif
