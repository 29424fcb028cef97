// SPDX-License-Identifier: Apache-2.0
//
// One record of a shard's event log (docs/ARCHITECTURE.md, "The event log"): the bytes of an
// event as it was delivered, with the campaign and sequence it was given and a checksum. Pure:
// no I/O, no allocation; the decoder takes any bytes (a torn or corrupt file) and never reads
// outside them.
//
//   offset  size  field
//   0       4     magic "NXL2" (0x324c584e little-endian)
//   4       4     len: bytes of the frame that follow the header (1 .. LOGREC_FRAME_MAX)
//   8       8     campaign_id (int64)
//   16      8     sequence (uint64, >= 1)
//   24      8     ts_ns: the event's timestamp (int64)
//   32      8     dedup_key: the duplicate-window key of a client-named publisher's event id
//                 (0: none), so that the window survives a restart (docs/ARCHITECTURE.md)
//   40      8     check: XXH3-64 of the frame, seeded with XXH3-64 of bytes 0..39
//   48      len   the delivered event frame, length prefix included
// All integers little-endian. A record is LOGREC_HEADER + len bytes; records follow each other
// with no padding. Version 1 records ("NXL1": no dedup_key, check at 32, frame at 40), written
// by the first build with a log, are still read (dedup_key 0); new records are always version 2.
#ifndef NEXUS_CODEC_LOGREC_H
#define NEXUS_CODEC_LOGREC_H

#include <stddef.h>
#include <stdint.h>

#define LOGREC_MAGIC     0x324c584eu
#define LOGREC_MAGIC_V1  0x314c584eu
#define LOGREC_HEADER    48u
#define LOGREC_HEADER_V1 40u
#define LOGREC_FRAME_MAX (64u << 20) /* a frame is at most --max-frame-bytes, itself <= 64 MiB */

struct logrec {
    int64_t campaign_id;
    uint64_t sequence;
    int64_t ts_ns;
    uint64_t dedup_key;
    const uint8_t *frame; /* into the decoded buffer */
    uint32_t len;
};

/* Bytes the record of a len-byte frame takes. */
static inline size_t logrec_size(uint32_t len)
{
    return LOGREC_HEADER + (size_t)len;
}

/* Writes r (its frame included) at out, which has logrec_size(r->len) bytes. */
void logrec_encode(uint8_t *out, const struct logrec *r);

enum logrec_result {
    LOGREC_OK = 1,    /* *r filled; *used bytes taken */
    LOGREC_SHORT = 0, /* buf ends inside the record: a torn tail, or read more */
    LOGREC_BAD = -1,  /* not a record here: wrong magic, impossible length, bad checksum */
};
/* Decodes the record at the start of buf (avail bytes). */
enum logrec_result logrec_decode(const uint8_t *buf, size_t avail, struct logrec *r, size_t *used);

#endif
