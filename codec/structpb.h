// SPDX-License-Identifier: Apache-2.0
//
// Reading and writing the few google.protobuf.Struct values the broker itself needs inside a
// common.Payload (`data`, field 1): request options such as `heartbeat_ms`, and the payloads of
// the lifecycle events it emits (`stream_count`, `age_ms`, `code`, `message`). Direct wire
// access, no trees, no allocation. Pure; any thread.
//
//   Payload{1: Struct data{1: map entry{1: key, 2: Value{2: number | 3: string | 4: bool ...}}}}
#ifndef NEXUS_CODEC_STRUCTPB_H
#define NEXUS_CODEC_STRUCTPB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Kinds of google.protobuf.Value (its oneof field numbers). */
enum structpb_kind {
    STRUCTPB_NONE = 0,
    STRUCTPB_NULL = 1,
    STRUCTPB_NUMBER = 2,
    STRUCTPB_STRING = 3,
    STRUCTPB_BOOL = 4,
    STRUCTPB_STRUCT = 5,
    STRUCTPB_LIST = 6,
};

struct structpb_value {
    enum structpb_kind kind;
    double number;
    bool boolean;
    const uint8_t *ptr; /* string bytes, or the Struct / ListValue message bytes */
    uint32_t len;
};

/* Decodes one google.protobuf.Value message. Returns 0 (kind STRUCTPB_NONE if it holds no
 * known kind), or -EBADMSG if the bytes are malformed or a known field has the wrong wire
 * type. Slices point into p. */
int structpb_value_decode(const uint8_t *p, size_t len, struct structpb_value *v);

/* Finds key in the `data` Struct of Payload bytes. Returns 1 with *v filled (the last entry
 * wins, as for protobuf maps), 0 if absent, -EBADMSG if the bytes are malformed. */
int structpb_payload_get(const uint8_t *payload, size_t len, const char *key,
                         struct structpb_value *v);

/* Finds key in a Struct message's bytes (as above, for nested structs). */
int structpb_struct_get(const uint8_t *st, size_t len, const char *key, struct structpb_value *v);

/* A writer for a Payload whose data Struct holds simple fields. The caller provides the
 * buffer; on overflow the writer records it and structpb_finish returns -ENOSPC. */
struct structpb_writer {
    uint8_t *buf; /* body of the data Struct is built at buf + 8, then framed */
    size_t cap, len;
    bool overflow;
};

void structpb_begin(struct structpb_writer *w, uint8_t *buf, size_t cap);
void structpb_add_number(struct structpb_writer *w, const char *key, double v);
void structpb_add_string(struct structpb_writer *w, const char *key, const char *s, size_t len);
void structpb_add_bool(struct structpb_writer *w, const char *key, bool v);
/* Adds a field whose Value is the given raw google.protobuf.Value bytes. */
void structpb_add_raw_value(struct structpb_writer *w, const char *key, const uint8_t *value,
                            size_t len);
/* Finishes: the buffer then holds a whole common.Payload (data = the Struct). Returns its
 * length (and *out points at it inside buf) or -ENOSPC. */
int structpb_finish(struct structpb_writer *w, const uint8_t **out);

#endif
