// SPDX-License-Identifier: Apache-2.0
//
// Incremental framing: a 4-byte big-endian length L, then L bytes of one nexus.v1.Frame
// (docs/DESIGN.md §5). The framer accepts input in chunks of any size and yields whole frames. A
// frame that lies entirely inside the chunk being fed is returned in place (no copy); only a frame
// split across chunks is assembled in the framer's own buffer, which is allocated after its
// length has been validated, with exactly the frame's size. Lengths of 0 or above
// frame_bytes_max are rejected before any allocation, each with its own error.
//
// One framer per connection, used by the one shard that owns the connection.
//
//   feed(data) ──► [header: have 0..3 of 4 bytes] ──► [body: in place, or buf[0..have) of L]
//                          │ L == 0 → -ENODATA         │ complete → 1 (frame, frame_len)
//                          │ L > max → -EMSGSIZE
#ifndef NEXUS_CODEC_FRAME_H
#define NEXUS_CODEC_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Frame header size on the wire. */
#define CODEC_FRAME_HEADER_BYTES 4

struct codec_framer {
    uint32_t frame_bytes_max;
    uint32_t hdr_have; /* bytes of the current header seen, 0..4 */
    uint8_t hdr[CODEC_FRAME_HEADER_BYTES];
    uint32_t body_bytes; /* L of the frame being assembled, valid when hdr_have == 4 */
    uint32_t body_have;  /* bytes of it in buf */
    uint8_t *buf;        /* allocated only for frames split across feeds */
    uint32_t buf_cap;
    uint64_t *budget; /* bytes assembly buffers may still take (shared), or NULL: no bound */
};

/* Initializes a framer. frame_bytes_max must be >= 1. Never fails. */
void codec_framer_init(struct codec_framer *f, uint32_t frame_bytes_max);

/* Charges the framer's assembly buffer to *budget (bytes left, shared by the framers of one
 * thread): a buffer is taken from it when allocated and given back when freed, and a frame
 * whose buffer the budget cannot cover is refused with -ENOBUFS. NULL: no bound. Call it
 * right after codec_framer_init. */
void codec_framer_set_budget(struct codec_framer *f, uint64_t *budget);

/* Sets the largest frame accepted from now on (>= 1). */
static inline void codec_framer_set_max(struct codec_framer *f, uint32_t frame_bytes_max)
{
    f->frame_bytes_max = frame_bytes_max ? frame_bytes_max : 1;
}

/* True while a frame has started (some of its header or body arrived) but is not complete. */
static inline int codec_framer_partial(const struct codec_framer *f)
{
    return f->hdr_have > 0 && !(f->hdr_have == CODEC_FRAME_HEADER_BYTES &&
                                f->body_have == f->body_bytes && f->body_bytes != 0);
}

/* Frees the assembly buffer. The framer may be re-initialized afterwards. */
void codec_framer_free(struct codec_framer *f);

/* Consumes bytes from data[0..len) until one frame is complete or the input is used up.
 * *consumed is set to the bytes taken. Returns:
 *   1          a frame is complete: *frame and *frame_len name it, either inside data or inside the
 *              framer's buffer; valid until the next call
 *   0          all input consumed, no complete frame yet
 *   -ENODATA   a length of 0 was announced (error code frame_empty)
 *   -EMSGSIZE  a length above frame_bytes_max was announced (error code frame_too_large)
 *   -ENOMEM    the assembly buffer could not be allocated
 *   -ENOBUFS   the budget (codec_framer_set_budget) cannot cover the assembly buffer
 * After an error the stream is out of sync: the caller reports and closes the connection. */
int codec_framer_feed(struct codec_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                      const uint8_t **frame, uint32_t *frame_len);

/* The caller is done with the frame the last feed returned: a large assembly buffer (and its
 * budget) is given back now instead of at the next feed, which may never come from a client
 * that sent one big frame and went quiet. No-op otherwise. */
void codec_framer_settle(struct codec_framer *f);

/* Bytes held by the framer for a partly received frame (header + body); for memory metrics. */
size_t codec_framer_buffered(const struct codec_framer *f);

/* The length the framer rejected after -EMSGSIZE (for the error message). */
static inline uint32_t codec_framer_bad_len(const struct codec_framer *f)
{
    return ((uint32_t)f->hdr[0] << 24) | ((uint32_t)f->hdr[1] << 16) | ((uint32_t)f->hdr[2] << 8) |
           f->hdr[3];
}

#endif
