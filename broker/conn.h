// SPDX-License-Identifier: Apache-2.0
//
// A client connection (conn.c): its bytes in (multishot receive, framing, dispatch by frame
// kind), its bytes out (a bounded queue of shared frames, one sendmsg in flight), backpressure
// and closing. Private to broker/: handlers see a connection only through core.h. Threading: a
// connection belongs to the shard that accepted it; no other thread touches it (other shards
// reach it by id, through MSG_TO_CONN).
//
// Life of a connection (flags):
//
//   accepted ──► open ──conn_close_after_flush──► CLOSING ──queue empty──┐
//                 │   (peer EOF, bad frame, drain)  (no more input)       │
//                 └──────────────conn_close (reset, slow, limit)──────────┴─► DEAD
//   DEAD: nothing is queued or read any more; on the shard's kill list.
//   conn_reap (end of the loop pass) ─► DEAD|REAPED: unlinked from the shard's table and its
//   subscriptions; socket shut down; freed when ops_inflight, the operations the kernel still
//   holds (receive, send, cancel), reaches 0 — a buffer or msghdr given to the kernel belongs
//   to it until its completion.
// Invariants (asserted): REAPED implies DEAD; SEND_INFLIGHT and RECV_ARMED each count one in
// ops_inflight; ops_inflight never goes below 0; a connection is freed once, only when REAPED
// and ops_inflight is 0.
#ifndef NEXUS_BROKER_CONN_H
#define NEXUS_BROKER_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "broker/oframe.h"
#include "codec/evtype.h"
#include "codec/frame.h"

struct shard;
struct sub;
struct account;
struct conn_tls;
struct conn_ws;
struct io_uring_cqe;

/* Frames gathered into one sendmsg. A connection sends up to CONN_IOV_SMALL frames from an
 * iovec array inside it; one with a longer queue (a busy subscriber) borrows a heap array of
 * CONN_IOV_MAX entries, given back when its queue drains. 1024 small events ≈ 160 KiB per
 * send: measured with nexus-bench, raising the batch from 64 to 1024 frames took fanout-1 from
 * ~0.9-1.2M to ~1.6M events/s, since each send costs a syscall-equivalent of kernel work.
 * 1024 is also the kernel's UIO_MAXIOV. */
#define CONN_IOV_SMALL 16
/* Bytes gathered into one send at most: about what a loopback socket buffer takes at once. */
#define CONN_SEND_BYTES_MAX (256u * 1024u)
#define CONN_IOV_MAX        1024
/* Deep queues (conn.c, conn_stage): a connection with at least CONN_STAGE_MIN_FRAMES frames
 * queued copies the next frames of at most CONN_STAGE_FRAME_MAX bytes into one buffer of
 * CONN_STAGE_BYTES and sends that instead of an iovec per frame. */
#define CONN_STAGE_MIN_FRAMES 64
#define CONN_STAGE_FRAME_MAX  2048
#define CONN_STAGE_BYTES      (120u * 1024u)

/* A campaign missed by a connection under the drop policy, reported by a gap frame. */
struct gap {
    int64_t campaign_id;
    uint64_t first, last, dropped;
};

enum conn_flag {
    CONN_RECV_ARMED = 1u << 0, /* a multishot recv is in flight */
    CONN_SEND_INFLIGHT = 1u << 1,
    CONN_PAUSED = 1u << 2,    /* backpressure: input is stashed, not processed */
    CONN_CLOSING = 1u << 3,   /* no more input; close once output is flushed */
    CONN_DEAD = 1u << 4,      /* closed: waiting for in-flight operations to finish */
    CONN_ON_FLUSH = 1u << 5,  /* on the shard's flush list */
    CONN_ON_RESUME = 1u << 6, /* on the shard's resume list */
    CONN_AUTHED = 1u << 7,    /* hello accepted, or no token required */
    CONN_HELLO_SEEN = 1u << 8,
    CONN_RECV_CANCELLED = 1u << 9,
    CONN_REAPED = 1u << 10,       /* released: freed when its last operation completes */
    CONN_PEER_EOF = 1u << 11,     /* the peer closed its side while input was held back */
    CONN_DEADLINE_HIT = 1u << 12, /* closing after a missed deadline: no second chance */
    CONN_DRAINING = 1u << 13,     /* the broker drains: no more input; output still flows */
    CONN_AUTH_PENDING = 1u << 14, /* a hello's credential is being verified (auth worker) */
};

struct conn {
    uint64_t id; /* shard index in the top 8 bits */
    int fd;
    uint32_t flags;
    uint32_t ops_inflight; /* SQEs referencing this conn */
    struct shard *shard;
    struct codec_framer framer;

    /* Input held back while paused (backpressure): raw bytes, processed on resume. */
    uint8_t *stash;
    uint32_t stash_len, stash_cap;

    /* Output queue: a ring of frame references; q_off bytes of the head frame are sent. */
    struct oframe **q;
    uint32_t q_head, q_count, q_cap, q_off;
    uint64_t q_bytes;
    uint32_t send_frames; /* frames covered by the send in flight */
    /* A deep queue's small frames are copied here and sent as one buffer (conn.c,
     * conn_stage): [stage_off, stage_len) is not sent yet and still counts in q_bytes. */
    uint8_t *stage;
    uint32_t stage_off, stage_len;
    struct iovec *iov; /* iov_small, or a borrowed array of CONN_IOV_MAX */
    struct iovec iov_small[CONN_IOV_SMALL];
    struct msghdr msg;

    struct sub **subs;
    uint32_t sub_count, sub_cap;
    uint64_t last_delivery; /* shard delivery stamp: at most once per event per connection */

    struct gap *gaps;
    uint32_t gap_count;

    /* The last event type this connection emitted, validated: publishers repeat their types,
     * so most emits skip the parser (a length check and a memcmp instead). */
    struct evtype last_type;
    uint16_t last_type_len;
    char last_type_str[EVTYPE_BYTES_MAX];
    /* Progress, for the deadlines (docs/OPERATIONS.md): only whole frames count, so a client
     * trickling bytes makes none. */
    int64_t accepted_ns;
    int64_t last_frame_ns;     /* last complete frame received, 0: none yet */
    int64_t frame_started_ns;  /* a frame is partly received since then, 0: none */
    uint32_t pings_unanswered; /* liveness pings sent since the last frame */
    uint32_t pattern_bytes;    /* subscription filter bytes held (--max-pattern-bytes) */
    /* Duplicate-window scope of its emits: the connection, or its hello's client_name, so
     * that a named client retrying after a reconnect is still recognised. */
    uint64_t dedup_scope;
    uint64_t notify_mask; /* shards to tell when this connection closes (requests, handlers) */
    /* Who is speaking (docs/SECURITY.md): the account this connection authenticated as, NULL
     * without --accounts or before authentication. Held by reference (auth.h). */
    struct account *acct;
    /* The last emit found allowed (auth.h): its campaign, for the type in last_type;
     * perm_type_len 0 when there is none. Publishers repeat both, so most emits skip the
     * check. */
    int64_t perm_campaign;
    uint16_t perm_type_len;
    /* TLS state (tls.h), NULL on a plain connection. */
    struct conn_tls *tls;
    /* WebSocket state (conn_ws.h), NULL on a connection of the client listener. */
    struct conn_ws *ws;
    uint8_t transport; /* enum conn_transport (conn_ws.h): its metrics label, 0 if uncounted */
    struct conn *flush_next;  /* shard flush list */
    struct conn *resume_next; /* shard resume list */
    struct conn *kill_next;   /* shard list of connections to release */
};

/* Creates a connection for an accepted socket fd (registered in the shard's table). Returns
 * NULL if out of memory (fd is still the caller's). */
struct conn *conn_create(struct shard *s, int fd);
/* The open connection with this id on shard s, or NULL (unknown or closed). */
struct conn *conn_lookup(struct shard *s, uint64_t id);

/* Arms the multishot receive (no-op while armed, paused, closing or dead). */
void conn_recv_arm(struct conn *c);
/* Completion of the receive: feeds the bytes through the framer, re-arms or closes. */
void conn_recv_done(struct conn *c, struct io_uring_cqe *cqe);
/* Starts one sendmsg of the queued frames, unless one is in flight. */
void conn_flush(struct conn *c);
/* Completion of the send: res bytes left (a short send resumes inside a frame). */
void conn_send_done(struct conn *c, int res);
/* Completion of another operation of the connection (a cancel). */
void conn_op_done(struct conn *c);

/* Queues a frame (takes one reference). Event frames (is_event) are subject to the
 * slow-subscriber policy; others close the connection when it is over its bound. Returns 0,
 * or -ENOBUFS if the frame was not queued (dropped, or the connection closed). */
int conn_enqueue(struct conn *c, struct oframe *f);
/* Queues a control frame built from len bytes (copied). */
void conn_enqueue_bytes(struct conn *c, const uint8_t *buf, size_t len);
/* Queues an error frame answering correlation; the message is formatted. */
void conn_error(struct conn *c, uint64_t correlation, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The verifier accepted c's hello (auth_poll): welcome it and process what it sent after. */
void conn_auth_done(struct conn *c, uint64_t correlation);

/* Closes at once: DEAD, nothing more is queued or read; released by conn_reap. */
void conn_close(struct conn *c, const char *why);
/* Stops reading and closes once the queued output is sent. */
void conn_close_after_flush(struct conn *c);
/* Releases the connections closed since the last call (subscriptions, socket, memory). */
void conn_reap(struct shard *s);
/* Replays input held back by backpressure and re-arms the receive. */
void conn_resume(struct conn *c);
/* The broker drains: stop reading (the receive is cancelled, held-back input dropped:
 * nothing of it was acknowledged); queued output keeps flowing. */
void conn_stop_reading(struct conn *c);
/* Applies the per-connection deadlines (hello, frame, liveness ping, idle) at now_ns: closes
 * the connections past one, pings the silent ones. Runs from the shard's tick. */
void conn_check_deadlines(struct conn *c, int64_t now_ns);

#endif
