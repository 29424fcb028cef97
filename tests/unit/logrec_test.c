// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/logrec_test.c: cmocka tests of the event log's record format (codec/logrec.h).
// A record encodes and decodes back to the same fields and frame bytes; every proper prefix of
// a record is LOGREC_SHORT (a torn tail: read more, or cut); every single byte flipped — in the
// magic, the campaign, the sequence, the timestamp, the checksum or the frame — is LOGREC_BAD
// (a flip in len is BAD, or SHORT when it makes the record longer than the buffer); len 0 and
// len above LOGREC_FRAME_MAX are BAD from the header alone; a sequence 0 is BAD; records follow
// each other with no padding (decoding a run of them consumes exactly their bytes).
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <xxhash.h>

#include "codec/logrec.h"

/* A frame-like payload: a 4-byte big-endian length prefix and n - 4 bytes of content. */
static void fill_frame(uint8_t *f, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        f[i] = (uint8_t)(i * 31u + salt * 7u + 3u);
    if (n >= 4) {
        uint32_t body = n - 4;
        f[0] = (uint8_t)(body >> 24);
        f[1] = (uint8_t)(body >> 16);
        f[2] = (uint8_t)(body >> 8);
        f[3] = (uint8_t)body;
    }
}

/* Encodes a record of an n-byte frame into a fresh buffer (caller frees). */
static uint8_t *make_record(uint32_t n, int64_t camp, uint64_t seq, int64_t ts, size_t *size)
{
    uint8_t *frame = malloc(n);
    assert_non_null(frame);
    fill_frame(frame, n, (uint32_t)seq);
    struct logrec r = {.campaign_id = camp,
                       .sequence = seq,
                       .ts_ns = ts,
                       .dedup_key = (uint64_t)seq * 0x9e3779b97f4a7c15ull,
                       .frame = frame,
                       .len = n};
    *size = logrec_size(n);
    uint8_t *out = malloc(*size);
    assert_non_null(out);
    logrec_encode(out, &r);
    free(frame);
    return out;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_round_trip(void **state)
{
    (void)state;
    const uint32_t lens[] = {1, 4, 5, 40, 41, 1000, 70000};
    const int64_t camps[] = {0, 1, -1, INT64_MAX, INT64_MIN, 123456789};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (size_t k = 0; k < sizeof(camps) / sizeof(camps[0]); k++) {
            uint64_t seq = k == 0 ? 1 : UINT64_MAX - k;
            int64_t ts = (int64_t)(k * 1000000007ull) - 5;
            uint8_t *frame = malloc(lens[i]);
            assert_non_null(frame);
            fill_frame(frame, lens[i], (uint32_t)seq);
            size_t size;
            uint8_t *rec = make_record(lens[i], camps[k], seq, ts, &size);
            assert_int_equal(size, LOGREC_HEADER + lens[i]);
            assert_memory_equal(rec, "NXL2", 4);
            struct logrec r;
            size_t used = 0;
            assert_int_equal(logrec_decode(rec, size, &r, &used), LOGREC_OK);
            assert_int_equal(used, size);
            assert_int_equal(r.campaign_id, camps[k]);
            assert_int_equal(r.sequence, seq);
            assert_int_equal(r.ts_ns, ts);
            assert_int_equal(r.dedup_key, seq * 0x9e3779b97f4a7c15ull);
            assert_int_equal(r.len, lens[i]);
            assert_ptr_equal(r.frame, rec + LOGREC_HEADER);
            assert_memory_equal(r.frame, frame, lens[i]);
            /* Trailing bytes (the next record) are not consumed. */
            uint8_t *more = malloc(size + 17);
            assert_non_null(more);
            memcpy(more, rec, size);
            memset(more + size, 0xAB, 17);
            assert_int_equal(logrec_decode(more, size + 17, &r, &used), LOGREC_OK);
            assert_int_equal(used, size);
            /* Re-encoding the decoded record gives the same bytes. */
            uint8_t *again = malloc(size);
            assert_non_null(again);
            logrec_encode(again, &r);
            assert_memory_equal(again, rec, size);
            free(again);
            free(more);
            free(rec);
            free(frame);
        }
    }
}

/* Every proper prefix (0 .. size-1 bytes) of a valid record is SHORT: recovery treats it as
 * a torn tail. */
static void test_every_truncation_short(void **state)
{
    (void)state;
    const uint32_t lens[] = {1, 7, 300};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t size;
        uint8_t *rec = make_record(lens[i], 42, 9, 77, &size);
        for (size_t n = 0; n < size; n++) {
            /* An exact-size copy, so that ASan sees any read past the prefix. */
            uint8_t *p = malloc(n ? n : 1);
            assert_non_null(p);
            memcpy(p, rec, n);
            struct logrec r;
            size_t used = 12345;
            int got = logrec_decode(p, n, &r, &used);
            if (got != LOGREC_SHORT)
                fail_msg("len %u: a %zu-byte prefix of a %zu-byte record gave %d, want SHORT",
                         lens[i], n, size, got);
            assert_int_equal(used, 12345); /* untouched unless OK */
            free(p);
        }
        free(rec);
    }
}

/* Every single byte of the record, flipped (all 8 single-bit flips and an all-bits flip), is
 * BAD — except a flip in len, which is SHORT when it makes the record longer than the buffer. */
static void test_every_byte_flip(void **state)
{
    (void)state;
    size_t size;
    uint8_t *rec = make_record(200, -77, 1234, 5678, &size);
    uint8_t *p = malloc(size);
    assert_non_null(p);
    const uint8_t masks[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
    for (size_t pos = 0; pos < size; pos++) {
        for (size_t m = 0; m < sizeof(masks); m++) {
            memcpy(p, rec, size);
            p[pos] ^= masks[m];
            struct logrec r;
            size_t used;
            int got = logrec_decode(p, size, &r, &used);
            bool in_len = pos >= 4 && pos < 8;
            uint32_t len =
                (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
            int want = LOGREC_BAD;
            if (in_len && len != 0 && len <= LOGREC_FRAME_MAX && LOGREC_HEADER + len > size)
                want = LOGREC_SHORT;
            if (got != want)
                fail_msg("byte %zu ^ 0x%02x: got %d, want %d", pos, masks[m], got, want);
        }
    }
    free(p);
    free(rec);
}

/* len 0 and len > LOGREC_FRAME_MAX are BAD from the first 8 bytes (no need to read more);
 * LOGREC_FRAME_MAX itself is a possible length (SHORT when the buffer holds less). */
static void test_bad_lengths(void **state)
{
    (void)state;
    size_t size;
    uint8_t *rec = make_record(16, 1, 1, 1, &size);
    struct logrec r;
    size_t used;
    const uint32_t bad[] = {0, LOGREC_FRAME_MAX + 1, 0x80000000u, UINT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put32(rec + 4, bad[i]);
        for (size_t n = 8; n <= size; n++)
            assert_int_equal(logrec_decode(rec, n, &r, &used), LOGREC_BAD);
    }
    put32(rec + 4, LOGREC_FRAME_MAX);
    assert_int_equal(logrec_decode(rec, size, &r, &used), LOGREC_SHORT);
    free(rec);
}

/* A wrong magic is BAD as soon as 4 bytes are there; zeros (a preallocated or hole-punched
 * region) are BAD too. */
static void test_bad_magic_and_zeros(void **state)
{
    (void)state;
    uint8_t z[64];
    memset(z, 0, sizeof(z));
    struct logrec r;
    size_t used;
    for (size_t n = 4; n <= sizeof(z); n++)
        assert_int_equal(logrec_decode(z, n, &r, &used), LOGREC_BAD);
    size_t size;
    uint8_t *rec = make_record(10, 1, 1, 1, &size);
    rec[0] = 'X';
    for (size_t n = 4; n <= size; n++)
        assert_int_equal(logrec_decode(rec, n, &r, &used), LOGREC_BAD);
    free(rec);
}

/* A sequence of 0 never comes out of a shard: a record claiming it is BAD even with a matching
 * checksum. */
static void test_sequence_zero_bad(void **state)
{
    (void)state;
    uint8_t frame[8] = {0, 0, 0, 4, 1, 2, 3, 4};
    struct logrec in = {.campaign_id = 5, .sequence = 0, .ts_ns = 1, .frame = frame, .len = 8};
    uint8_t out[LOGREC_HEADER + 8];
    logrec_encode(out, &in);
    struct logrec r;
    size_t used;
    assert_int_equal(logrec_decode(out, sizeof(out), &r, &used), LOGREC_BAD);
}

/* Records written back to back decode one after the other, each consuming exactly its bytes,
 * and the run ends exactly at the end of the buffer. */
static void test_back_to_back(void **state)
{
    (void)state;
    enum { N = 50 };
    uint8_t *buf = NULL;
    size_t total = 0;
    for (uint32_t i = 0; i < N; i++) {
        size_t size;
        uint8_t *rec = make_record(1 + i * 13, (int64_t)(i % 7), i + 1, (int64_t)i * 10, &size);
        buf = realloc(buf, total + size);
        assert_non_null(buf);
        memcpy(buf + total, rec, size);
        total += size;
        free(rec);
    }
    size_t pos = 0;
    for (uint32_t i = 0; i < N; i++) {
        struct logrec r;
        size_t used;
        assert_int_equal(logrec_decode(buf + pos, total - pos, &r, &used), LOGREC_OK);
        assert_int_equal(r.sequence, i + 1);
        assert_int_equal(r.campaign_id, (int64_t)(i % 7));
        assert_int_equal(r.len, 1 + i * 13);
        pos += used;
    }
    assert_int_equal(pos, total);
    free(buf);
}

/* A version-1 record (40-byte header, no dedup key: the first build with a log) is read, with
 * dedup_key 0; a flipped byte in it is BAD like in version 2. Built by hand from logrec.h's
 * table, independently of the encoder. */
static void test_reads_version1(void **state)
{
    (void)state;
    uint8_t frame[8] = {0, 0, 0, 4, 9, 8, 7, 6};
    uint8_t rec[LOGREC_HEADER_V1 + 8];
    memcpy(rec, "NXL1", 4);
    put32(rec + 4, 8);
    uint64_t f64[3] = {77, 42, 123456789};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 8; i++)
            rec[8 + 8 * k + i] = (uint8_t)(f64[k] >> (8 * i));
    memcpy(rec + LOGREC_HEADER_V1, frame, 8);
    uint64_t check = XXH3_64bits_withSeed(frame, 8, XXH3_64bits(rec, 32));
    for (int i = 0; i < 8; i++)
        rec[32 + i] = (uint8_t)(check >> (8 * i));
    struct logrec r;
    size_t used = 0;
    assert_int_equal(logrec_decode(rec, sizeof(rec), &r, &used), LOGREC_OK);
    assert_int_equal(used, sizeof(rec));
    assert_int_equal(r.campaign_id, 77);
    assert_int_equal(r.sequence, 42);
    assert_int_equal(r.ts_ns, 123456789);
    assert_int_equal(r.dedup_key, 0);
    assert_int_equal(r.len, 8);
    assert_ptr_equal(r.frame, rec + LOGREC_HEADER_V1);
    rec[LOGREC_HEADER_V1 + 5] ^= 1;
    assert_int_equal(logrec_decode(rec, sizeof(rec), &r, &used), LOGREC_BAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),          cmocka_unit_test(test_every_truncation_short),
        cmocka_unit_test(test_every_byte_flip),     cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_bad_magic_and_zeros), cmocka_unit_test(test_sequence_zero_bad),
        cmocka_unit_test(test_back_to_back),        cmocka_unit_test(test_reads_version1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
