// SPDX-License-Identifier: Apache-2.0
//
// nexusctl's JSON side: JSON text from the command line (jansson) to the protobuf bytes of
// common.Payload and common.Metadata (protobuf-c generated code), and the bytes of a delivered
// event back to JSON, printed one object per line.
//
// google.protobuf.Struct <-> JSON follows the protobuf JSON mapping: objects, arrays, strings,
// booleans and null map to themselves, every number is a double (integral values up to 2^53 are
// printed without a fraction, others in the shortest form that reads back to the same double;
// NaN and infinities, which JSON cannot hold, are printed as the strings "NaN", "Infinity",
// "-Infinity" as protobuf's own JSON printer does). Struct fields are written in the order of
// the JSON object's keys, so one JSON text always packs to the same bytes. Nesting is bounded
// by CTL_JSON_DEPTH_MAX in both directions.
//
// nexusctl is the one program outside codec/ that uses protobuf-c directly: it converts whole
// Payload and Metadata trees, which is what generated code is for, and it is not on the
// broker's hot path. Single-threaded, like the rest of nexusctl.
#ifndef NEXUS_CTL_JSON_H
#define NEXUS_CTL_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Deepest JSON nesting accepted or printed; protobuf's own parsers stop at 100 levels too. */
#define CTL_JSON_DEPTH_MAX 100

/* Parses a JSON argument: the text itself, "@FILE" (read FILE) or "-" (read stdin). Numbers
 * are read as doubles (a Struct holds nothing else), duplicate keys are refused. what names the
 * flag in error messages. Returns a new reference, or NULL with err filled. */
json_t *ctl_json_parse(const char *arg, const char *what, char *err, size_t err_cap);

/* Packs a common.Payload from data and versioning (each a JSON object, or NULL to leave the
 * field out). Returns 0 with *out (malloc'd, the caller frees) and *len set, or -1 with err
 * filled (-ENOMEM-like failures say "out of memory"). */
int ctl_payload_pack(const json_t *data, const json_t *versioning, uint8_t **out, size_t *len,
                     char *err, size_t err_cap);

/* Packs a common.Metadata from a JSON object shaped like the message (see nexusctl --help:
 * global_context, features, tags, and the Struct fields), then overrides
 * global_context.user_id / correlation_id with the given strings when they are not NULL.
 * md may be NULL. Returns 0 with *out and *len set (NULL and 0 when there is nothing to send),
 * or -1 with err filled. */
int ctl_metadata_pack(const json_t *md, const char *user_id, const char *correlation_id,
                      uint8_t **out, size_t *len, char *err, size_t err_cap);

/* The JSON form of Payload / Metadata bytes as delivered. Bytes that do not decode (or nest too
 * deeply) become {"undecodable": "<reason>", "base64": "..."} so that nothing is hidden.
 * Returns a new reference, NULL only when out of memory. */
json_t *ctl_payload_to_json(const uint8_t *buf, size_t len);
json_t *ctl_metadata_to_json(const uint8_t *buf, size_t len);

/* Parses len bytes of JSON text as ctl_json_parse does (numbers as doubles, duplicate keys
 * refused), without its @FILE and - forms. Returns a new reference, or NULL if it is not JSON. */
json_t *ctl_json_parse_text(const char *text, size_t len);

/* Writes j and a newline to f (compact, or indented by two spaces when pretty), then flushes.
 * Numbers are printed as described above. Returns 0, or -errno on a write error (-EPIPE: the
 * reader of a pipe went away); the error is cleared from f. */
int ctl_json_print(FILE *f, const json_t *j, bool pretty);

/* Writes j to f, compact, without a newline and without flushing. */
void ctl_json_write(FILE *f, const json_t *j);

#endif
