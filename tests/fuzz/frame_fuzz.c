// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/frame_fuzz.c: libFuzzer target for the incremental framer (codec/frame.h). The
// first bytes of the input choose frame_bytes_max and the chunk sizes; the rest is the byte
// stream a client would send. The stream is fed in those chunks, and every result is checked
// against a reference reading of the same stream (length, header, body): each frame comes back
// whole, in order, with 1 <= length <= frame_bytes_max; consumed never exceeds the chunk; an
// error is returned exactly where the reference finds a bad length. Single threaded.
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant broken: report it and let libFuzzer keep the input. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Input layout: [0..1] frame_bytes_max - 1 (so 1..65536: small limits reach -EMSGSIZE often),
 * [2] chunk mode, [3] chunk seed, then the stream. */
#define FUZZ_CONFIG_BYTES 4

static uint32_t be32_at(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Next chunk size, 1..: mode picks single bytes, small, mixed or whole-stream feeding. */
static size_t next_chunk(uint8_t mode, uint32_t *seed, size_t left)
{
    *seed = *seed * 1103515245u + 12345u;
    uint32_t r = *seed >> 16;
    size_t n;
    switch (mode & 3) {
    case 0:
        n = 1;
        break;
    case 1:
        n = 1 + r % 7;
        break;
    case 2:
        n = 1 + r % 300;
        break;
    default:
        n = left;
        break;
    }
    return n < left ? n : left;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < FUZZ_CONFIG_BYTES)
        return 0;
    uint32_t max = 1u + (((uint32_t)data[0] << 8) | data[1]);
    uint8_t mode = data[2];
    uint32_t seed = data[3];
    const uint8_t *stream = data + FUZZ_CONFIG_BYTES;
    size_t total = size - FUZZ_CONFIG_BYTES;

    struct codec_framer f;
    codec_framer_init(&f, max);
    size_t pos = 0;     /* bytes of the stream fed and consumed */
    size_t ref_pos = 0; /* where the reference reading expects the next header */
    int r = 0;
    while (pos < total) {
        size_t chunk = next_chunk(mode, &seed, total - pos);
        const uint8_t *c = stream + pos;
        size_t left = chunk;
        while (left > 0) {
            size_t consumed = (size_t)-1;
            const uint8_t *frame = NULL;
            uint32_t frame_len = 0;
            r = codec_framer_feed(&f, c, left, &consumed, &frame, &frame_len);
            CHECK(consumed <= left);
            pos += consumed;
            c += consumed;
            left -= consumed;
            CHECK(codec_framer_buffered(&f) <= CODEC_FRAME_HEADER_BYTES + (size_t)max);
            if (r == 0) {
                CHECK(left == 0);
                continue;
            }
            if (r < 0) {
                /* The reference finds the same bad length at the same place. */
                CHECK(ref_pos + CODEC_FRAME_HEADER_BYTES == pos);
                uint32_t l = be32_at(stream + ref_pos);
                CHECK(codec_framer_bad_len(&f) == l);
                CHECK((r == -ENODATA && l == 0) || (r == -EMSGSIZE && l > max));
                goto out; /* the stream is out of sync: a connection would be closed */
            }
            CHECK(r == 1);
            CHECK(frame_len >= 1 && frame_len <= max);
            CHECK(ref_pos + CODEC_FRAME_HEADER_BYTES <= total);
            uint32_t l = be32_at(stream + ref_pos);
            CHECK(frame_len == l);
            CHECK(ref_pos + CODEC_FRAME_HEADER_BYTES + l == pos);
            CHECK(memcmp(frame, stream + ref_pos + CODEC_FRAME_HEADER_BYTES, l) == 0);
            /* In place (inside what was fed) or in the framer's own buffer. */
            CHECK((frame >= stream && frame + l <= stream + total) ||
                  (frame == f.buf && l <= f.buf_cap));
            ref_pos = pos;
        }
    }
    /* All input consumed without error: what is left is an incomplete or empty frame. */
    CHECK(pos == total);
    if (ref_pos + CODEC_FRAME_HEADER_BYTES <= total) {
        uint32_t l = be32_at(stream + ref_pos);
        CHECK(l >= 1 && l <= max && ref_pos + CODEC_FRAME_HEADER_BYTES + l > total);
    }
out:
    codec_framer_free(&f);
    return 0;
}
