// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/logrec_fuzz.c: libFuzzer target for the event log's record decoder
// (codec/logrec.h). The input is the contents of a segment file: it is decoded as a run of
// records, the way recovery scans a segment (broker/store.c), until the end or the first
// record that is not OK; then, as recovery does to tell a torn tail from damage in the middle,
// a record is looked for at every later offset. Invariants: the decoder returns one of the
// three results; an OK record lies inside the input (used = LOGREC_HEADER + len, len >= 1,
// sequence >= 1, the frame pointer at offset 40 of the record); re-encoding it gives the
// identical bytes; it still decodes OK from exactly its own bytes, and every shorter prefix of
// it is SHORT (a torn tail is never mistaken for a record or for damage). The seed corpus
// (tests/fuzz/corpus/logrec/) holds segments of valid records, one torn, one with a flipped
// byte in the middle. Single threaded.
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/logrec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The checks on one OK record decoded at buf (avail bytes). */
static void check_record(const uint8_t *buf, size_t avail, const struct logrec *r, size_t used)
{
    static uint8_t again[1 << 16];
    /* A version-1 record (logrec.h) has the shorter header and no dedup key. */
    bool v1 = memcmp(buf, "NXL1", 4) == 0;
    size_t hdr = v1 ? LOGREC_HEADER_V1 : LOGREC_HEADER;
    CHECK(used >= hdr + 1 && used <= avail);
    CHECK(r->len >= 1 && r->len <= LOGREC_FRAME_MAX && used == hdr + r->len);
    CHECK(r->sequence >= 1);
    CHECK(r->frame == buf + hdr);
    CHECK(!v1 || r->dedup_key == 0);
    /* Re-encoding gives the identical bytes (the decoder accepts exactly what the encoder
     * writes: no field is ignored or normalised). The encoder writes version 2 only. */
    if (!v1 && used <= sizeof(again)) {
        logrec_encode(again, r);
        CHECK(memcmp(again, buf, used) == 0);
    }
    /* The record decodes from exactly its own bytes, to the same fields. */
    struct logrec r2;
    size_t used2 = 0;
    CHECK(logrec_decode(buf, used, &r2, &used2) == LOGREC_OK);
    CHECK(used2 == used && r2.campaign_id == r->campaign_id && r2.sequence == r->sequence &&
          r2.ts_ns == r->ts_ns && r2.dedup_key == r->dedup_key && r2.len == r->len &&
          r2.frame == r->frame);
    /* Any shorter prefix is SHORT: a record cut by a crash reads as a torn tail. Copied into
     * an exact-size buffer, so that ASan sees a read past the prefix. A few lengths only,
     * to keep the target fast. */
    size_t cuts[] = {0, 3, 4, 7, 8, LOGREC_HEADER - 1, LOGREC_HEADER, used - 1, used / 2};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        size_t n = cuts[i];
        if (n >= used)
            continue;
        uint8_t *p = malloc(n ? n : 1);
        CHECK(p);
        memcpy(p, buf, n);
        size_t u = 0;
        CHECK(logrec_decode(p, n, &r2, &u) == LOGREC_SHORT);
        free(p);
    }
}

/* Decodes at buf (avail bytes); returns the result after checking it. */
static int decode_checked(const uint8_t *buf, size_t avail, size_t *used)
{
    struct logrec r;
    *used = 0;
    int got = logrec_decode(buf, avail, &r, used);
    CHECK(got == LOGREC_OK || got == LOGREC_SHORT || got == LOGREC_BAD);
    if (got == LOGREC_OK)
        check_record(buf, avail, &r, *used);
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap copy: a read past the input is an ASan report, not a silent read of
     * libFuzzer's slack. */
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf);
    if (size)
        memcpy(buf, data, size);

    /* The recovery scan: records back to back until the end or the first one not OK. */
    size_t pos = 0, records = 0;
    int last = LOGREC_OK;
    while (pos < size) {
        size_t used;
        last = decode_checked(buf + pos, size - pos, &used);
        if (last != LOGREC_OK)
            break;
        CHECK(used <= size - pos);
        pos += used;
        records++;
    }
    CHECK(pos <= size);
    CHECK(pos == size || last != LOGREC_OK);

    /* Then, as recovery does after a failed record, look for a valid one at every later
     * offset (bounded, so a large input stays fast). */
    if (pos < size) {
        size_t end = size - pos > 4096 ? pos + 4096 : size;
        for (size_t p = pos + 1; p < end; p++) {
            size_t used;
            decode_checked(buf + p, size - p, &used);
        }
    }
    (void)records;
    free(buf);
    return 0;
}
