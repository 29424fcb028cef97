// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/frame_test.c: cmocka tests of the incremental framer (codec/frame.h). They cover
// the contract of codec_framer_feed: frames split at every byte, many frames per feed, headers
// split across feeds, zero-copy return of frames that lie inside the fed chunk, the two bad
// lengths (0 and above the maximum) rejected before any allocation, the maximum itself accepted,
// a seeded random-chunking property test over thousands of frames, and the release of a large
// assembly buffer once its frame has been delivered. Single threaded, like a framer's owner.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/frame.h"

/* The framer keeps an assembly buffer of at most this many bytes between frames
 * (FRAMER_KEEP_BYTES_MAX in codec/frame.c, a private constant restated here). */
#define TEST_KEEP_BYTES_MAX (64u * 1024u)

/* ---- helpers ---------------------------------------------------------------------------- */

/* Content byte j of frame number i: depends on both, so a frame delivered out of order, cut
 * short, or mixed with another is caught by a byte comparison. */
static uint8_t frame_byte(uint32_t i, uint32_t j)
{
    return (uint8_t)(i * 131u + j * 7u + (j >> 8) + 1u);
}

/* Appends frame i of body_len bytes (header included) to out; returns the new end. */
static uint8_t *put_frame(uint8_t *out, uint32_t i, uint32_t body_len)
{
    out[0] = (uint8_t)(body_len >> 24);
    out[1] = (uint8_t)(body_len >> 16);
    out[2] = (uint8_t)(body_len >> 8);
    out[3] = (uint8_t)body_len;
    for (uint32_t j = 0; j < body_len; j++)
        out[4 + j] = frame_byte(i, j);
    return out + 4 + body_len;
}

static void check_frame(const uint8_t *frame, uint32_t frame_len, uint32_t i, uint32_t body_len)
{
    assert_int_equal(frame_len, body_len);
    for (uint32_t j = 0; j < body_len; j++) {
        if (frame[j] != frame_byte(i, j))
            fail_msg("frame %u differs at byte %u of %u", i, j, body_len);
    }
}

static void put_header(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

/* Deterministic PRNG (xorshift64*): the property test must fail the same way every run. */
static uint64_t prng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint32_t prng_range(uint64_t *s, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(prng_next(s) % ((uint64_t)hi - lo + 1));
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_one_byte_feeds(void **state)
{
    (void)state;
    struct codec_framer f;
    codec_framer_init(&f, 1024);
    uint8_t stream[4 + 300];
    put_frame(stream, 5, 300);

    for (size_t k = 0; k < sizeof(stream); k++) {
        size_t consumed = 99;
        const uint8_t *frame = NULL;
        uint32_t frame_len = 0;
        int r = codec_framer_feed(&f, stream + k, 1, &consumed, &frame, &frame_len);
        assert_int_equal(consumed, 1);
        if (k + 1 < sizeof(stream)) {
            assert_int_equal(r, 0);
            assert_null(frame);
            assert_int_equal(codec_framer_buffered(&f), k + 1);
        } else {
            assert_int_equal(r, 1);
            /* Assembled in the framer's own buffer, which holds exactly the frame. */
            assert_ptr_equal(frame, f.buf);
            assert_int_equal(f.buf_cap, 300);
            check_frame(frame, frame_len, 5, 300);
        }
    }
    codec_framer_free(&f);
    assert_null(f.buf);
    assert_int_equal(f.buf_cap, 0);
}

static void test_many_frames_one_feed(void **state)
{
    (void)state;
    enum { N = 50 };
    uint8_t stream[N * (4 + 64)];
    uint8_t *p = stream;
    for (uint32_t i = 0; i < N; i++)
        p = put_frame(p, i, 1 + (i * 13) % 64);
    size_t total = (size_t)(p - stream);

    struct codec_framer f;
    codec_framer_init(&f, 64);
    size_t pos = 0;
    for (uint32_t i = 0; i < N; i++) {
        size_t consumed = 0;
        const uint8_t *frame = NULL;
        uint32_t frame_len = 0;
        int r = codec_framer_feed(&f, stream + pos, total - pos, &consumed, &frame, &frame_len);
        assert_int_equal(r, 1);
        uint32_t want = 1 + (i * 13) % 64;
        assert_int_equal(consumed, 4 + want);
        /* Whole inside the chunk: returned in place, right after its header. */
        assert_ptr_equal(frame, stream + pos + 4);
        check_frame(frame, frame_len, i, want);
        pos += consumed;
    }
    assert_int_equal(pos, total);
    /* No frame went through the assembly buffer. */
    assert_null(f.buf);
    size_t consumed = 7;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;
    assert_int_equal(codec_framer_feed(&f, stream, 0, &consumed, &frame, &frame_len), 0);
    assert_int_equal(consumed, 0);
    assert_int_equal(codec_framer_buffered(&f), 0);
    codec_framer_free(&f);
}

/* The header arrives in two pieces (2 + 2 bytes), then the body in one: the body is whole in
 * the second chunk and must come back in place. Every split point of the header is tried. */
static void test_split_header(void **state)
{
    (void)state;
    uint8_t stream[4 + 40 + 4 + 10];
    uint8_t *second = put_frame(stream, 1, 40);
    put_frame(second, 2, 10);

    for (size_t cut = 1; cut < 4; cut++) {
        struct codec_framer f;
        codec_framer_init(&f, 100);
        size_t consumed = 0;
        const uint8_t *frame = NULL;
        uint32_t frame_len = 0;
        assert_int_equal(codec_framer_feed(&f, stream, cut, &consumed, &frame, &frame_len), 0);
        assert_int_equal(consumed, cut);
        assert_int_equal(codec_framer_buffered(&f), cut);

        const uint8_t *rest = stream + cut;
        size_t rest_len = sizeof(stream) - cut;
        assert_int_equal(codec_framer_feed(&f, rest, rest_len, &consumed, &frame, &frame_len), 1);
        assert_int_equal(consumed, 4 - cut + 40);
        assert_ptr_equal(frame, stream + 4); /* in place, although the header was buffered */
        check_frame(frame, frame_len, 1, 40);
        assert_null(f.buf);

        rest += consumed;
        rest_len -= consumed;
        assert_int_equal(codec_framer_feed(&f, rest, rest_len, &consumed, &frame, &frame_len), 1);
        assert_int_equal(consumed, rest_len);
        assert_ptr_equal(frame, second + 4);
        check_frame(frame, frame_len, 2, 10);
        codec_framer_free(&f);
    }
}

/* Zero copy: the returned pointer lies inside the input chunk, both on the fast path (header
 * and body in the chunk) and after a frame that had been assembled. */
static void test_in_place_return(void **state)
{
    (void)state;
    uint8_t a[4 + 20];
    put_frame(a, 7, 20);
    uint8_t b[4 + 30 + 4 + 8];
    put_frame(put_frame(b, 8, 30), 9, 8);

    struct codec_framer f;
    codec_framer_init(&f, 1000);
    size_t consumed = 0;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;

    /* Frame 7 split: assembled in buf. */
    assert_int_equal(codec_framer_feed(&f, a, 10, &consumed, &frame, &frame_len), 0);
    assert_int_equal(codec_framer_feed(&f, a + 10, sizeof(a) - 10, &consumed, &frame, &frame_len),
                     1);
    assert_ptr_equal(frame, f.buf);
    check_frame(frame, frame_len, 7, 20);

    /* Frames 8 and 9 fed at once: both returned inside b. */
    assert_int_equal(codec_framer_feed(&f, b, sizeof(b), &consumed, &frame, &frame_len), 1);
    assert_true(frame >= b && frame + frame_len <= b + sizeof(b));
    assert_ptr_equal(frame, b + 4);
    check_frame(frame, frame_len, 8, 30);
    size_t off = consumed;
    assert_int_equal(codec_framer_feed(&f, b + off, sizeof(b) - off, &consumed, &frame, &frame_len),
                     1);
    assert_ptr_equal(frame, b + off + 4);
    check_frame(frame, frame_len, 9, 8);
    codec_framer_free(&f);
}

static void test_zero_length(void **state)
{
    (void)state;
    uint8_t hdr[4 + 8] = {0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    size_t consumed = 0;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;

    /* Whole header in one chunk (fast path falls back to the header path). */
    struct codec_framer f;
    codec_framer_init(&f, 100);
    assert_int_equal(codec_framer_feed(&f, hdr, sizeof(hdr), &consumed, &frame, &frame_len),
                     -ENODATA);
    assert_int_equal(consumed, 4);
    assert_int_equal(codec_framer_bad_len(&f), 0);
    assert_null(f.buf);
    codec_framer_free(&f);

    /* Header split over single bytes. */
    codec_framer_init(&f, 100);
    for (int k = 0; k < 3; k++)
        assert_int_equal(codec_framer_feed(&f, hdr + k, 1, &consumed, &frame, &frame_len), 0);
    assert_int_equal(codec_framer_feed(&f, hdr + 3, 1, &consumed, &frame, &frame_len), -ENODATA);
    assert_int_equal(consumed, 1);
    assert_null(f.buf);
    codec_framer_free(&f);

    /* After a good frame. */
    uint8_t two[4 + 3 + 4];
    put_frame(two, 0, 3);
    put_header(two + 7, 0);
    codec_framer_init(&f, 100);
    assert_int_equal(codec_framer_feed(&f, two, sizeof(two), &consumed, &frame, &frame_len), 1);
    assert_int_equal(consumed, 7);
    assert_int_equal(codec_framer_feed(&f, two + 7, 4, &consumed, &frame, &frame_len), -ENODATA);
    codec_framer_free(&f);
}

static void test_too_large(void **state)
{
    (void)state;
    static const uint32_t bad[] = {101, 102, 1u << 20, 0x7fffffffu, 0xffffffffu};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        /* The header alone, then header with (part of a) body: rejected either way, and the
         * framer never allocates for the announced length. */
        uint8_t stream[4 + 16];
        put_header(stream, bad[k]);
        memset(stream + 4, 0xab, 16);
        for (size_t len = 4; len <= sizeof(stream); len += 16) {
            struct codec_framer f;
            codec_framer_init(&f, 100);
            size_t consumed = 0;
            const uint8_t *frame = NULL;
            uint32_t frame_len = 0;
            assert_int_equal(codec_framer_feed(&f, stream, len, &consumed, &frame, &frame_len),
                             -EMSGSIZE);
            assert_int_equal(consumed, 4);
            assert_null(frame);
            assert_null(f.buf);
            assert_int_equal(f.buf_cap, 0);
            assert_int_equal(codec_framer_bad_len(&f), bad[k]);
            codec_framer_free(&f);
        }
        /* Header split across feeds. */
        struct codec_framer f;
        codec_framer_init(&f, 100);
        size_t consumed = 0;
        const uint8_t *frame = NULL;
        uint32_t frame_len = 0;
        assert_int_equal(codec_framer_feed(&f, stream, 2, &consumed, &frame, &frame_len), 0);
        assert_int_equal(codec_framer_feed(&f, stream + 2, 18, &consumed, &frame, &frame_len),
                         -EMSGSIZE);
        assert_int_equal(consumed, 2);
        assert_null(f.buf);
        assert_int_equal(codec_framer_bad_len(&f), bad[k]);
        codec_framer_free(&f);
    }
}

static void test_exactly_max(void **state)
{
    (void)state;
    enum { MAX = 1000 };
    static uint8_t stream[2 * (4 + MAX)];
    put_frame(put_frame(stream, 3, MAX), 4, MAX);

    struct codec_framer f;
    codec_framer_init(&f, MAX);
    size_t consumed = 0;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;

    /* In place. */
    assert_int_equal(codec_framer_feed(&f, stream, sizeof(stream), &consumed, &frame, &frame_len),
                     1);
    assert_int_equal(consumed, 4 + MAX);
    assert_ptr_equal(frame, stream + 4);
    check_frame(frame, frame_len, 3, MAX);

    /* Assembled: body split in two. */
    const uint8_t *second = stream + 4 + MAX;
    assert_int_equal(codec_framer_feed(&f, second, 500, &consumed, &frame, &frame_len), 0);
    assert_int_equal(consumed, 500);
    assert_int_equal(codec_framer_buffered(&f), 500);
    assert_int_equal(
        codec_framer_feed(&f, second + 500, 4 + MAX - 500, &consumed, &frame, &frame_len), 1);
    assert_int_equal(consumed, 4 + MAX - 500);
    assert_ptr_equal(frame, f.buf);
    check_frame(frame, frame_len, 4, MAX);
    codec_framer_free(&f);

    /* A maximum of 1 accepts a 1-byte frame; 0 is treated as 1. */
    uint8_t one[5] = {0, 0, 0, 1, 0x42};
    codec_framer_init(&f, 0);
    assert_int_equal(codec_framer_feed(&f, one, 5, &consumed, &frame, &frame_len), 1);
    assert_int_equal(frame_len, 1);
    assert_int_equal(frame[0], 0x42);
    codec_framer_free(&f);
}

/* Property: for thousands of frames of random sizes, fed in random chunk sizes, every frame
 * comes back byte-identical, in order, and the framer consumes exactly the stream. */
static void test_random_chunking(void **state)
{
    (void)state;
    enum { FRAMES = 4000 };
    const uint32_t max = 128u * 1024u;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint32_t *sizes = malloc(FRAMES * sizeof(*sizes));
    assert_non_null(sizes);
    size_t total = 0;
    for (uint32_t i = 0; i < FRAMES; i++) {
        uint32_t pick = prng_range(&seed, 0, 99);
        if (pick < 60)
            sizes[i] = prng_range(&seed, 1, 64);
        else if (pick < 95)
            sizes[i] = prng_range(&seed, 65, 4096);
        else if (pick < 99)
            sizes[i] = prng_range(&seed, 4097, TEST_KEEP_BYTES_MAX + 4096);
        else
            sizes[i] = max; /* the limit itself */
        total += 4 + sizes[i];
    }
    uint8_t *stream = malloc(total);
    assert_non_null(stream);
    uint8_t *p = stream;
    for (uint32_t i = 0; i < FRAMES; i++)
        p = put_frame(p, i, sizes[i]);
    assert_int_equal((size_t)(p - stream), total);

    struct codec_framer f;
    codec_framer_init(&f, max);
    size_t pos = 0;
    uint32_t next = 0;
    uint32_t in_place = 0, assembled = 0;
    while (pos < total) {
        /* Mostly small chunks (1..16 bytes splits headers), sometimes large ones. */
        uint32_t kind = prng_range(&seed, 0, 9);
        size_t chunk = kind < 3   ? prng_range(&seed, 1, 16)
                       : kind < 8 ? prng_range(&seed, 17, 8192)
                                  : prng_range(&seed, 8193, 300000);
        if (chunk > total - pos)
            chunk = total - pos;
        const uint8_t *c = stream + pos;
        size_t left = chunk;
        while (left > 0) {
            size_t consumed = 0;
            const uint8_t *frame = NULL;
            uint32_t frame_len = 0;
            int r = codec_framer_feed(&f, c, left, &consumed, &frame, &frame_len);
            assert_true(r == 0 || r == 1);
            assert_true(consumed <= left);
            if (r == 0) {
                assert_int_equal(consumed, left);
            } else {
                assert_true(next < FRAMES);
                check_frame(frame, frame_len, next, sizes[next]);
                if (frame >= c && frame < c + left) {
                    in_place++;
                } else {
                    assert_ptr_equal(frame, f.buf);
                    assembled++;
                }
                next++;
            }
            c += consumed;
            left -= consumed;
        }
        pos += chunk;
    }
    assert_int_equal(next, FRAMES);
    /* Once the last frame is released nothing is held. */
    size_t consumed = 1;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;
    assert_int_equal(codec_framer_feed(&f, stream + total, 0, &consumed, &frame, &frame_len), 0);
    assert_int_equal(consumed, 0);
    assert_int_equal(codec_framer_buffered(&f), 0);
    /* Both paths were exercised, or the property says little. */
    assert_true(in_place > 100);
    assert_true(assembled > 100);
    codec_framer_free(&f);
    free(stream);
    free(sizes);
}

/* A frame above 64 KiB is assembled in a buffer of its size, which is freed once the frame is
 * delivered (on the next feed, since the frame stays valid until then); a small buffer is
 * kept for reuse. */
static void test_large_buffer_released(void **state)
{
    (void)state;
    const uint32_t big = TEST_KEEP_BYTES_MAX + 1;
    const uint32_t small = 1000;
    size_t total = (4 + (size_t)big) + (4 + small) + (4 + small);
    uint8_t *stream = malloc(total);
    assert_non_null(stream);
    put_frame(put_frame(put_frame(stream, 1, big), 2, small), 3, small);

    struct codec_framer f;
    codec_framer_init(&f, 1u << 20);
    size_t consumed = 0;
    const uint8_t *frame = NULL;
    uint32_t frame_len = 0;
    size_t pos = 0;

    assert_int_equal(codec_framer_feed(&f, stream, 1000, &consumed, &frame, &frame_len), 0);
    pos += consumed;
    assert_int_equal(f.buf_cap, big);
    assert_int_equal(
        codec_framer_feed(&f, stream + pos, 4 + big - pos, &consumed, &frame, &frame_len), 1);
    pos += consumed;
    assert_ptr_equal(frame, f.buf);
    check_frame(frame, frame_len, 1, big);
    assert_int_equal(f.buf_cap, big); /* still valid: the caller may be reading it */

    /* Next feed: only 2 bytes of the next header. The big buffer goes. */
    assert_int_equal(codec_framer_feed(&f, stream + pos, 2, &consumed, &frame, &frame_len), 0);
    pos += consumed;
    assert_null(f.buf);
    assert_int_equal(f.buf_cap, 0);

    /* A small split frame: its buffer is kept after delivery. */
    assert_int_equal(codec_framer_feed(&f, stream + pos, 500, &consumed, &frame, &frame_len), 0);
    pos += consumed;
    assert_int_equal(f.buf_cap, small);
    assert_int_equal(
        codec_framer_feed(&f, stream + pos, total - pos, &consumed, &frame, &frame_len), 1);
    pos += consumed;
    check_frame(frame, frame_len, 2, small);
    const uint8_t *kept = f.buf;
    assert_int_equal(
        codec_framer_feed(&f, stream + pos, total - pos, &consumed, &frame, &frame_len), 1);
    assert_int_equal(pos + consumed, total);
    check_frame(frame, frame_len, 3, small);
    assert_ptr_equal(f.buf, kept);
    assert_int_equal(f.buf_cap, small);

    codec_framer_free(&f);
    assert_null(f.buf);
    free(stream);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_byte_feeds),        cmocka_unit_test(test_many_frames_one_feed),
        cmocka_unit_test(test_split_header),          cmocka_unit_test(test_in_place_return),
        cmocka_unit_test(test_zero_length),           cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_exactly_max),           cmocka_unit_test(test_random_chunking),
        cmocka_unit_test(test_large_buffer_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
