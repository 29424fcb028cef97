// SPDX-License-Identifier: Apache-2.0
//
// The nexus.v1.Frame envelope (docs/DESIGN.md §5): decoding what clients send and encoding what the
// broker sends, directly on the protobuf wire format.
//
// Decoding never builds message trees and never allocates: every string and sub-message is a
// slice of the frame buffer, valid as long as that buffer is. An emit's metadata and payload
// are kept as opaque bytes; only the routing fields are read (event id, type, entity id,
// campaign, and from metadata.global_context the user id and correlation id). Encoding writes
// a complete frame, 4-byte length prefix included, into a caller buffer sized with the
// matching *_size function; a delivered event is built by splicing the emit's metadata and
// payload bytes, never by re-encoding them.
//
// Pure functions: any thread. Client bytes are never asserted on; every decoder returns 0 or
// a negative errno (-EBADMSG malformed, -E2BIG over a bound) and fills `err` with a message.
#ifndef NEXUS_CODEC_ENVELOPE_H
#define NEXUS_CODEC_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Frame body kinds: the field numbers of Frame.body (a number is never reused). */
enum codec_kind {
    CODEC_KIND_NONE = 0,
    CODEC_KIND_HELLO = 2,
    CODEC_KIND_WELCOME = 3,
    CODEC_KIND_EMIT = 4,
    CODEC_KIND_EMIT_ACK = 5,
    CODEC_KIND_SUBSCRIBE = 6,
    CODEC_KIND_SUBSCRIBE_ACK = 7,
    CODEC_KIND_UNSUBSCRIBE = 8,
    CODEC_KIND_EVENT = 9,
    CODEC_KIND_ERROR = 10,
    CODEC_KIND_PING = 11,
    CODEC_KIND_PONG = 12,
    CODEC_KIND_GAP = 13,
    CODEC_KIND_STATS = 16,
    CODEC_KIND_STATS_REPLY = 17,
    CODEC_KIND_REGISTER = 18,
    CODEC_KIND_REGISTER_ACK = 19,
    CODEC_KIND_GOAWAY = 20,
};

/* The first kind the broker core leaves to the handlers layer (external handler registration
 * and whatever comes after it): the core dispatches every kind from here up to its hook. */
#define CODEC_KIND_EXTENSION_MIN CODEC_KIND_REGISTER

/* A byte slice inside a decoded frame. */
struct codec_slice {
    const uint8_t *ptr;
    uint32_t len;
};

/* Error message buffer size for decoders (messages quote at most 64 bytes of input). */
#define CODEC_ERR_BYTES 160

struct codec_envelope {
    uint64_t correlation;
    uint32_t kind;           /* enum codec_kind, or the unknown field number */
    struct codec_slice body; /* the body message's bytes */
};

/* Decodes the envelope of one frame (the bytes after the length prefix). Returns 0, or
 * -EBADMSG if the bytes are not a protobuf message. A frame without a body yields kind
 * CODEC_KIND_NONE; a body field number this version does not know yields that number (the
 * caller answers unknown_frame). When several body fields appear, the last wins (proto3 oneof
 * rule). */
int codec_envelope_decode(const uint8_t *frame, size_t len, struct codec_envelope *env,
                          char err[CODEC_ERR_BYTES]);

/* Routing header of an emit (EventRequest). Slices point into the frame. */
struct codec_emit {
    struct codec_slice event_id;
    struct codec_slice event_type;
    struct codec_slice entity_id;
    struct codec_slice metadata;       /* opaque common.Metadata bytes; has_metadata says present */
    struct codec_slice payload;        /* opaque common.Payload bytes */
    struct codec_slice user_id;        /* metadata.global_context.user_id */
    struct codec_slice correlation_id; /* metadata.global_context.correlation_id */
    int64_t campaign_id;
    bool has_metadata;
    bool has_payload;
};

/* Decodes an EventRequest's routing fields, checking the wire structure of the message, of
 * metadata's top level and of global_context, and that event_id, entity_id and the
 * global_context strings are UTF-8. Metadata or payload given twice (legal protobuf, never
 * written by generated code) is rejected, since splicing keeps exactly one of each. Returns 0
 * or -EBADMSG. */
int codec_emit_decode(const uint8_t *body, size_t len, struct codec_emit *e,
                      char err[CODEC_ERR_BYTES]);

/* Patterns per subscribe frame: a subscription is matched per event, so its cost is bounded.
 * 64 covers every subscription of the ancestor's services with room to spare. */
#define CODEC_SUBSCRIBE_PATTERNS_MAX 64

struct codec_subscribe {
    int64_t campaign_id;
    uint32_t pattern_count;
    struct codec_slice patterns[CODEC_SUBSCRIBE_PATTERNS_MAX];
    struct codec_slice user_id; /* metadata.global_context.user_id, len 0 if none */
    uint64_t from_sequence;     /* 0: live only */
};

/* The bytes codec_emit_stamp_user writes at most for an emit body of len bytes and a user id
 * of user_len bytes. */
#define CODEC_STAMP_EXTRA(user_len) (32u + (user_len))
/* Rewrites an EventRequest body that decoded into *e without error and has no user id, so
 * that its metadata.global_context.user_id is user: every field but metadata is copied as it
 * came, then metadata follows with a global_context {user_id} appended (protobuf merges a
 * repeated message field, so other global_context fields are kept). *e is moved onto out (as
 * codec_emit_decode of out would give). Returns the new length, or -ENOSPC if out (cap bytes)
 * is too small: cap >= len + CODEC_STAMP_EXTRA(user_len) always suffices. */
int codec_emit_stamp_user(const uint8_t *body, size_t len, struct codec_emit *e, const char *user,
                          size_t user_len, uint8_t *out, size_t cap);

/* Decodes a SubscribeRequest. Returns 0, -EBADMSG, or -E2BIG if it lists more than
 * CODEC_SUBSCRIBE_PATTERNS_MAX patterns (error code limit_exceeded). */
int codec_subscribe_decode(const uint8_t *body, size_t len, struct codec_subscribe *s,
                           char err[CODEC_ERR_BYTES]);

struct codec_hello {
    uint32_t protocol_version;
    struct codec_slice token;
    struct codec_slice client_name;
    struct codec_slice user; /* the account name (--accounts), len 0 if none */
};
int codec_hello_decode(const uint8_t *body, size_t len, struct codec_hello *h,
                       char err[CODEC_ERR_BYTES]);

/* Decodes the single uint64 field 1 of Unsubscribe, Ping and Pong. */
int codec_u64_msg_decode(const uint8_t *body, size_t len, uint64_t *value,
                         char err[CODEC_ERR_BYTES]);

/* An outgoing EventResponse: a delivered event (kind EVENT), an emit acknowledgement (kind
 * EMIT_ACK) or a lifecycle event. Empty slices and zero numbers are omitted on the wire, as
 * proto3 does. metadata/payload are spliced verbatim when has_* is set. */
struct codec_event_out {
    uint64_t correlation; /* Frame.correlation: the answered frame's, or 0 */
    uint32_t kind;        /* CODEC_KIND_EVENT or CODEC_KIND_EMIT_ACK */
    bool success;
    struct codec_slice event_id;
    struct codec_slice event_type;
    struct codec_slice message;
    struct codec_slice metadata;
    struct codec_slice payload;
    bool has_metadata;
    bool has_payload;
    int64_t campaign_id;
    struct codec_slice entity_id;
    uint64_t sequence;
    int64_t timestamp_unix_nanos;
    struct codec_slice correlation_id;
    uint64_t stream_seq;
    struct codec_slice code;
};

/* Bytes codec_event_encode writes, length prefix included. */
size_t codec_event_size(const struct codec_event_out *ev);

/* Writes the frame (length prefix included) to out, which has codec_event_size() bytes.
 * Returns the bytes written. */
size_t codec_event_encode(const struct codec_event_out *ev, uint8_t *out);

/* Where codec_event_encode_layout put the event type and the metadata bytes (offsets from
 * the start of out), so that a shared frame can point its routing facts into itself. */
struct codec_event_layout {
    uint32_t event_type_off;
    uint32_t metadata_off;
};
size_t codec_event_encode_layout(const struct codec_event_out *ev, uint8_t *out,
                                 struct codec_event_layout *layout);

/* The same in steps, for the hot path that sizes a buffer and then encodes into it: the body
 * length is computed once (codec_event_body_size) and handed to both. */
size_t codec_event_body_size(const struct codec_event_out *ev);
size_t codec_event_size_of_body(const struct codec_event_out *ev, size_t body);
size_t codec_event_encode_body(const struct codec_event_out *ev, size_t body, uint8_t *out,
                               struct codec_event_layout *layout);

/* Control frames. Each *_encode writes a whole frame (length prefix included) into out of
 * capacity cap and returns its length, or -ENOSPC. CODEC_CONTROL_BYTES_MAX is always enough
 * for welcome, subscribe_ack, pong and gap, and for error frames (whose message is truncated
 * to fit). */
#define CODEC_CONTROL_BYTES_MAX 512

int codec_welcome_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t shard_count,
                         uint32_t frame_bytes_max, uint64_t connection_id, uint32_t shard_id);
int codec_subscribe_ack_encode(uint8_t *out, size_t cap, uint64_t correlation,
                               uint64_t subscription_id);
int codec_error_encode(uint8_t *out, size_t cap, uint64_t correlation, const char *code,
                       const char *message);
int codec_ping_encode(uint8_t *out, size_t cap, uint64_t correlation, uint64_t nonce);
int codec_pong_encode(uint8_t *out, size_t cap, uint64_t correlation, uint64_t nonce);
int codec_goaway_encode(uint8_t *out, size_t cap, const char *reason);
int codec_gap_encode(uint8_t *out, size_t cap, int64_t campaign_id, uint64_t first_sequence,
                     uint64_t last_sequence, uint64_t dropped, const char *reason);

/* Client side encoders (used by the client library, tests and the load generator). */
struct codec_emit_in {
    uint64_t correlation;
    struct codec_slice event_id;
    struct codec_slice event_type;
    struct codec_slice entity_id;
    struct codec_slice metadata; /* opaque common.Metadata, or len 0 */
    struct codec_slice payload;  /* opaque common.Payload, or len 0 */
    bool has_metadata;
    bool has_payload;
    int64_t campaign_id;
};
size_t codec_emit_size(const struct codec_emit_in *e);
size_t codec_emit_encode(const struct codec_emit_in *e, uint8_t *out);

/* Encodes a SubscribeRequest frame; user_id (may be NULL) goes into
 * metadata.global_context.user_id. Returns the length or -ENOSPC. */
int codec_subscribe_encode(uint8_t *out, size_t cap, uint64_t correlation, int64_t campaign_id,
                           const char *const *patterns, uint32_t pattern_count,
                           const char *user_id);
/* The same, replaying campaign_id's events from from_sequence (0: none) first. */
int codec_subscribe_from_encode(uint8_t *out, size_t cap, uint64_t correlation, int64_t campaign_id,
                                const char *const *patterns, uint32_t pattern_count,
                                const char *user_id, uint64_t from_sequence);
int codec_unsubscribe_encode(uint8_t *out, size_t cap, uint64_t correlation,
                             uint64_t subscription_id);
int codec_hello_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t protocol_version,
                       const char *token, const char *client_name);
/* A hello naming an account (user, may be NULL) with its token. */
int codec_hello_user_encode(uint8_t *out, size_t cap, uint64_t correlation,
                            uint32_t protocol_version, const char *user, const char *token,
                            const char *client_name);
int codec_stats_encode(uint8_t *out, size_t cap, uint64_t correlation);

/* Builds common.Metadata bytes holding only a global_context with the given strings (NULL or
 * "" omitted). Returns the length or -ENOSPC. */
int codec_metadata_build(uint8_t *out, size_t cap, const char *user_id, const char *correlation_id);

/* Delivered-event fields read back from an EventResponse (client side). */
struct codec_event_in {
    bool success;
    struct codec_slice event_id, event_type, message, metadata, payload, entity_id;
    struct codec_slice correlation_id, code;
    bool has_metadata, has_payload;
    int64_t campaign_id;
    uint64_t sequence;
    int64_t timestamp_unix_nanos;
    uint64_t stream_seq;
};
int codec_event_decode(const uint8_t *body, size_t len, struct codec_event_in *ev,
                       char err[CODEC_ERR_BYTES]);
/* metadata.global_context.user_id of common.Metadata bytes (len 0 if none). 0 or -EBADMSG. */
int codec_metadata_user_id(const uint8_t *md, size_t len, struct codec_slice *user_id);

struct codec_gap_in {
    int64_t campaign_id;
    uint64_t first_sequence, last_sequence, dropped;
    struct codec_slice reason;
};
int codec_gap_decode(const uint8_t *body, size_t len, struct codec_gap_in *g,
                     char err[CODEC_ERR_BYTES]);

struct codec_error_in {
    struct codec_slice code, message;
};
int codec_error_decode(const uint8_t *body, size_t len, struct codec_error_in *e,
                       char err[CODEC_ERR_BYTES]);

struct codec_welcome_in {
    uint32_t protocol_version, shard_count, frame_bytes_max, shard_id;
    uint64_t connection_id;
    struct codec_slice server_version;
};
int codec_welcome_decode(const uint8_t *body, size_t len, struct codec_welcome_in *w,
                         char err[CODEC_ERR_BYTES]);

/* External handler registration (RegisterHandlers). Bounds: 64 actions per frame, 64
 * campaigns per action. */
#define CODEC_HANDLER_SPECS_MAX     64
#define CODEC_HANDLER_CAMPAIGNS_MAX 64
struct codec_handler_spec {
    struct codec_slice action;
    bool streaming;
    uint32_t campaign_count;
    int64_t campaigns[CODEC_HANDLER_CAMPAIGNS_MAX];
};
struct codec_register {
    uint32_t count;
    struct codec_handler_spec specs[CODEC_HANDLER_SPECS_MAX];
};
/* Returns 0, -EBADMSG, or -E2BIG past a bound. */
int codec_register_decode(const uint8_t *body, size_t len, struct codec_register *r,
                          char err[CODEC_ERR_BYTES]);
/* Client side: encodes a RegisterHandlers frame. Returns the length or -ENOSPC. */
int codec_register_encode(uint8_t *out, size_t cap, uint64_t correlation,
                          const struct codec_register *r);
int codec_register_ack_encode(uint8_t *out, size_t cap, uint64_t correlation, uint32_t registered);

/* Name of a frame kind, "unknown" for others. */
const char *codec_kind_name(uint32_t kind);
/* True if kind is one of enum codec_kind (other than CODEC_KIND_NONE). */
bool codec_kind_known(uint32_t kind);
/* True if kind is one the broker sends and clients must not (welcome, emit_ack, event, ...). */
bool codec_kind_from_broker(uint32_t kind);

#endif
