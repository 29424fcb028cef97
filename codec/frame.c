// SPDX-License-Identifier: Apache-2.0
//
// The incremental framer of frame.h. Owned by one connection, touched by its shard only.
#include "codec/frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* An assembly buffer at most this big is kept between frames; a bigger one (a rare large
 * frame) is freed once its frame is delivered, so that an idle connection holds at most this
 * much. 64 KiB covers the frames of every normal workload. */
#define FRAMER_KEEP_BYTES_MAX (64u * 1024u)

void codec_framer_init(struct codec_framer *f, uint32_t frame_bytes_max)
{
    memset(f, 0, sizeof(*f));
    f->frame_bytes_max = frame_bytes_max ? frame_bytes_max : 1;
}

void codec_framer_set_budget(struct codec_framer *f, uint64_t *budget)
{
    f->budget = budget; /* before the first feed: nothing is allocated yet */
}

static void framer_release_buf(struct codec_framer *f)
{
    if (f->budget)
        *f->budget += f->buf_cap;
    free(f->buf);
    f->buf = NULL;
    f->buf_cap = 0;
}

void codec_framer_free(struct codec_framer *f)
{
    framer_release_buf(f);
    f->hdr_have = 0;
    f->body_have = 0;
}

size_t codec_framer_buffered(const struct codec_framer *f)
{
    return f->hdr_have + f->body_have;
}

static void framer_reset(struct codec_framer *f)
{
    f->hdr_have = 0;
    f->body_have = 0;
    if (f->buf_cap > FRAMER_KEEP_BYTES_MAX)
        framer_release_buf(f);
}

void codec_framer_settle(struct codec_framer *f)
{
    if (f->hdr_have == CODEC_FRAME_HEADER_BYTES && f->body_have == f->body_bytes &&
        f->body_bytes != 0)
        framer_reset(f);
}

int codec_framer_feed(struct codec_framer *f, const uint8_t *data, size_t len, size_t *consumed,
                      const uint8_t **frame, uint32_t *frame_len)
{
    size_t pos = 0;

    /* A frame delivered by the previous call is done with now. */
    if (f->hdr_have == CODEC_FRAME_HEADER_BYTES && f->body_have == f->body_bytes &&
        f->body_bytes != 0)
        framer_reset(f);

    if (f->hdr_have < CODEC_FRAME_HEADER_BYTES) {
        /* Fast path: header and whole body inside this chunk, nothing buffered. */
        if (f->hdr_have == 0 && len >= CODEC_FRAME_HEADER_BYTES) {
            uint32_t l = ((uint32_t)data[0] << 24) | ((uint32_t)data[1] << 16) |
                         ((uint32_t)data[2] << 8) | data[3];
            if (l != 0 && l <= f->frame_bytes_max && len - CODEC_FRAME_HEADER_BYTES >= l) {
                *frame = data + CODEC_FRAME_HEADER_BYTES;
                *frame_len = l;
                *consumed = CODEC_FRAME_HEADER_BYTES + (size_t)l;
                return 1;
            }
        }
        while (f->hdr_have < CODEC_FRAME_HEADER_BYTES && pos < len)
            f->hdr[f->hdr_have++] = data[pos++];
        if (f->hdr_have < CODEC_FRAME_HEADER_BYTES) {
            *consumed = pos;
            return 0;
        }
        uint32_t l = codec_framer_bad_len(f);
        if (l == 0) {
            *consumed = pos;
            return -ENODATA;
        }
        if (l > f->frame_bytes_max) {
            *consumed = pos;
            return -EMSGSIZE;
        }
        f->body_bytes = l;
        f->body_have = 0;
        /* The body may be whole in what is left of this chunk: no copy. */
        if (len - pos >= l) {
            *frame = data + pos;
            *frame_len = l;
            *consumed = pos + l;
            f->hdr_have = 0;
            return 1;
        }
        if (f->buf_cap < l) {
            if (f->budget && *f->budget + f->buf_cap < l) {
                *consumed = pos;
                return -ENOBUFS;
            }
            uint8_t *nb = malloc(l);
            if (!nb) {
                *consumed = pos;
                return -ENOMEM;
            }
            framer_release_buf(f);
            f->buf = nb;
            f->buf_cap = l;
            if (f->budget)
                *f->budget -= l;
        }
    }

    size_t take = f->body_bytes - f->body_have;
    if (take > len - pos)
        take = len - pos;
    memcpy(f->buf + f->body_have, data + pos, take);
    f->body_have += (uint32_t)take;
    pos += take;
    *consumed = pos;
    if (f->body_have < f->body_bytes)
        return 0;
    *frame = f->buf;
    *frame_len = f->body_bytes;
    return 1; /* reset on the next call, once the caller is done with buf */
}
