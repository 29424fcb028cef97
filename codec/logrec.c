// SPDX-License-Identifier: Apache-2.0
//
// The event log's record format (logrec.h).
#include "codec/logrec.h"

#include <stdbool.h>
#include <string.h>
#include <xxhash.h>

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The header before the check seeds the frame's hash: one checksum over both. */
static uint64_t check_of(const uint8_t *hdr, size_t hdr_len, const uint8_t *frame, uint32_t len)
{
    return XXH3_64bits_withSeed(frame, len, XXH3_64bits(hdr, hdr_len));
}

void logrec_encode(uint8_t *out, const struct logrec *r)
{
    put32(out, LOGREC_MAGIC);
    put32(out + 4, r->len);
    put64(out + 8, (uint64_t)r->campaign_id);
    put64(out + 16, r->sequence);
    put64(out + 24, (uint64_t)r->ts_ns);
    put64(out + 32, r->dedup_key);
    memcpy(out + LOGREC_HEADER, r->frame, r->len);
    put64(out + 40, check_of(out, 40, r->frame, r->len));
}

enum logrec_result logrec_decode(const uint8_t *buf, size_t avail, struct logrec *r, size_t *used)
{
    uint32_t magic = avail >= 4 ? get32(buf) : 0;
    bool v1 = magic == LOGREC_MAGIC_V1;
    if (avail < 8)
        return avail >= 4 && magic != LOGREC_MAGIC && !v1 ? LOGREC_BAD : LOGREC_SHORT;
    uint32_t len = get32(buf + 4);
    size_t hdr = v1 ? LOGREC_HEADER_V1 : LOGREC_HEADER;
    if ((magic != LOGREC_MAGIC && !v1) || len == 0 || len > LOGREC_FRAME_MAX)
        return LOGREC_BAD;
    if (avail < hdr || avail - hdr < len)
        return LOGREC_SHORT;
    uint64_t seq = get64(buf + 16);
    if (seq == 0 || check_of(buf, hdr - 8, buf + hdr, len) != get64(buf + hdr - 8))
        return LOGREC_BAD;
    r->campaign_id = (int64_t)get64(buf + 8);
    r->sequence = seq;
    r->ts_ns = (int64_t)get64(buf + 24);
    r->dedup_key = v1 ? 0 : get64(buf + 32);
    r->frame = buf + hdr;
    r->len = len;
    *used = hdr + len;
    return LOGREC_OK;
}
