// SPDX-License-Identifier: Apache-2.0
//
// Event types and subscription patterns (docs/DESIGN.md §2.1, §2.3, §3.2). This module owns the
// canonical event type `{service}:{action}:v{N}:{state}`: parsing and validating it from client
// bytes, the error text a client sees when it is wrong, the streaming rule, and the patterns a
// subscription matches types with. It does not own handler tables, subscriptions or frames; it
// only gives them parsed views. It is pure: no I/O, no allocation, no global state, so any shard
// may call any function at any time.
//
// Inputs are (pointer, length) pairs, never NUL-terminated strings, because event types arrive
// as protobuf `string` fields that point into a receive buffer. A parsed `struct evtype` holds
// offsets into the caller's buffer, so that buffer must outlive it. A `struct evpattern` copies
// its text inline and owns nothing else, so it may outlive the frame it was parsed from.
//
//     campaign:stream_state:v1:requested
//     |<-----><----------->|<>|<------->
//     service   action  version  state
//     `--- prefix_len(ACTION) ---'          "campaign:stream_state"    (handler lookup)
//     `------ prefix_len(VERSION) ----'     "campaign:stream_state:v1" (lifecycle types)
#ifndef NEXUS_CODEC_EVTYPE_H
#define NEXUS_CODEC_EVTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Longest event type or pattern, in bytes. Real types are a few dozen bytes
// (`campaign:stream_analytics:v1:requested` is 38); 255 leaves room for any sane name while
// keeping a pattern's inline copy small (a subscription may hold many) and every offset within a
// uint16_t. Longer input is rejected, not truncated.
#define EVTYPE_BYTES_MAX 255
// Longest service or action name. 64 bytes is longer than any name a person would type and keeps
// every valid type well under EVTYPE_BYTES_MAX (64 + 64 + 10 + 9 + 3 separators = 150), so that
// a type rebuilt with another state (evtype_with_state) always fits EVTYPE_BYTES_MAX + 1.
#define EVTYPE_NAME_BYTES_MAX 64
// Most digits after the 'v'. Nine decimal digits always fit a uint32_t (10^9 - 1 < 2^32), so
// the version needs no overflow check, and a billion versions is more than any service needs.
// Leading zeros are rejected ("v01"; "v0" is fine): every version then has one spelling, so two
// types with the same parts are the same bytes, which handler lookup and duplicate suppression
// (keyed on the type's bytes) rely on.
#define EVTYPE_VERSION_DIGITS_MAX 9
// Size of an error message buffer that no message is ever cut in (the longest is 202 bytes).
// Smaller buffers are accepted: the message is cut and still NUL-terminated. A message quotes at
// most EVTYPE_QUOTE_BYTES_MAX bytes of escaped client text, enough to show any valid name whole
// while keeping hostile input out of error frames and logs; see evtype_parse().
#define EVTYPE_ERR_BYTES       256
#define EVTYPE_QUOTE_BYTES_MAX 64

// Error codes. They lie below -4095 (the kernel's MAX_ERRNO) so that they never collide with a
// negative errno such as the -ENOSPC of evtype_with_state(). Every one means "the client sent a
// bad type or pattern" (the broker's `invalid_event_type`); the message buffer says which part.
#define EVTYPE_ERR_BASE (-4096)
enum evtype_error {
    EVTYPE_EEMPTY = EVTYPE_ERR_BASE - 1,    // zero bytes
    EVTYPE_ETOOLONG = EVTYPE_ERR_BASE - 2,  // more than EVTYPE_BYTES_MAX bytes
    EVTYPE_ENUL = EVTYPE_ERR_BASE - 3,      // an embedded NUL byte
    EVTYPE_ESEGMENTS = EVTYPE_ERR_BASE - 4, // not exactly four ':'-separated segments
    EVTYPE_ESERVICE = EVTYPE_ERR_BASE - 5,  // service empty, too long or outside [a-z][a-z0-9_]*
    EVTYPE_EACTION = EVTYPE_ERR_BASE - 6,   // action, likewise
    EVTYPE_EVERSION = EVTYPE_ERR_BASE - 7,  // not 'v' + 1..9 digits without leading zeros
    EVTYPE_ESTATE = EVTYPE_ERR_BASE - 8,    // not a state of the vocabulary
};

// The state vocabulary (docs/DESIGN.md §2.1), in lifecycle order.
enum evtype_state {
    EVTYPE_REQUESTED,
    EVTYPE_STARTED,
    EVTYPE_STREAM,
    EVTYPE_HEARTBEAT,
    EVTYPE_SUCCESS,
    EVTYPE_FAILED,
    EVTYPE_COMPLETED,
    EVTYPE_CANCEL,
    EVTYPE_CANCELLED,
    EVTYPE_TIMEOUT,
    EVTYPE_STATE_COUNT
};

// Segment indexes, for struct evtype.seg, struct evpattern.seg and evtype_prefix_len().
enum evtype_segment {
    EVTYPE_SEG_SERVICE,
    EVTYPE_SEG_ACTION,
    EVTYPE_SEG_VERSION, // includes the 'v'
    EVTYPE_SEG_STATE,
    EVTYPE_SEG_COUNT
};

// A segment as offset and length into the buffer it was parsed from (no ':' included).
struct evtype_seg {
    uint16_t off;
    uint16_t len;
};

// A parsed event type: a view into the caller's buffer, which must outlive it. Embeddable.
struct evtype {
    uint16_t len; // whole type, in bytes
    struct evtype_seg seg[EVTYPE_SEG_COUNT];
    uint32_t version; // the N of vN
    enum evtype_state state;
};

// A parsed subscription pattern. Self-contained: the text is copied into `text`, and `seg`
// offsets point into it, so it may be copied with memcpy and outlive its frame. Embeddable.
struct evpattern {
    uint16_t len;                            // bytes used in text
    uint8_t wild;                            // bit (1 << seg) set: that segment is '*'
    uint32_t version;                        // valid when the version segment is not '*'
    enum evtype_state state;                 // valid when the state segment is not '*'
    struct evtype_seg seg[EVTYPE_SEG_COUNT]; // into text; all zero for the bare "*"
    char text[EVTYPE_BYTES_MAX];             // not NUL-terminated
};
#define EVPATTERN_WILD_ALL ((uint8_t)((1u << EVTYPE_SEG_COUNT) - 1))

// Parses and validates the `len` bytes at `s` as a canonical event type. `s` need not be
// NUL-terminated and may hold any bytes (embedded NULs are rejected). Returns 0 and fills *t, or
// a negative EVTYPE_E* code and leaves *t meaningless. On error, when err_cap > 0, writes a
// NUL-terminated message naming the bad part to `err` (cut to err_cap; EVTYPE_ERR_BYTES never
// cuts), e.g. `service "Campaign" must match [a-z][a-z0-9_]*`. Client bytes in a message are
// quoted and escaped (every byte outside printable ASCII becomes \xNN; '"' and '\' get a
// backslash), then cut to EVTYPE_QUOTE_BYTES_MAX bytes (followed by "..."), so the message is
// printable ASCII, hence valid UTF-8 for a protobuf string. `err` may be NULL when err_cap is 0.
// Nothing is written to err on success.
int evtype_parse(struct evtype *t, const char *s, size_t len, char *err, size_t err_cap);

// Returns a static, constant description of an EVTYPE_E* code, of 0 ("success") or of -ENOSPC;
// "unknown error" for anything else. Never NULL.
const char *evtype_strerror(int code);

// Returns the static name of a state ("requested", ...). Asserts that `st` is a valid state:
// states come from evtype_parse() or from code, never straight from a client.
const char *evtype_state_name(enum evtype_state st);

// Returns the length of the prefix of the parsed type that ends with segment `last` (no
// trailing ':'): EVTYPE_SEG_ACTION gives "service:action" (handler lookup), EVTYPE_SEG_VERSION
// gives "service:action:vN" (the stem of lifecycle types). The prefix starts at the buffer `t`
// was parsed from.
static inline size_t evtype_prefix_len(const struct evtype *t, enum evtype_segment last)
{
    return (size_t)t->seg[last].off + t->seg[last].len;
}

// docs/DESIGN.md §3.2's default streaming rule, applied literally: true only if the state is
// `requested` and either the action starts with "stream_" or the whole type contains one of
// ":stream:", ":typing:", ":presence:", ":chunks:", ":live:", ":realtime:". `s` is the buffer
// `t` was parsed from. (With four canonical segments a ":word:" can only be the action, so the
// second clause means "the action is exactly one of those words".)
bool evtype_is_streaming_request(const struct evtype *t, const char *s);

// Writes `S:A:vN:<state>` (the type parsed into `t` from `s`, with its state replaced by `st`)
// and a terminating NUL to `out`, which may be `s` itself. Returns the length without the NUL,
// or -ENOSPC when `cap` cannot hold it and the NUL (then `out` is untouched). A buffer of
// EVTYPE_BYTES_MAX + 1 bytes always suffices.
int evtype_with_state(const struct evtype *t, const char *s, enum evtype_state st, char *out,
                      size_t cap);

// Parses the `len` bytes at `s` as a subscription pattern: the bare "*" (matches every type), or
// four ':'-separated segments, each '*' or a literal valid for its position (as evtype_parse).
// Returns 0 and fills *p (copying the text into it), or a negative EVTYPE_E* code with a
// message in `err` exactly as evtype_parse() does. *p is meaningless after an error.
int evpattern_parse(struct evpattern *p, const char *s, size_t len, char *err, size_t err_cap);

// Returns whether the pattern matches the type parsed into `t` from `type_str`. Bounded work
// per call, no allocation: states and versions compare as numbers, names by length first.
bool evpattern_match(const struct evpattern *p, const struct evtype *t, const char *type_str);

#endif // NEXUS_CODEC_EVTYPE_H
