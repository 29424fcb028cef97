// SPDX-License-Identifier: Apache-2.0
//
// WebSocket (RFC 6455), the pure parts: the HTTP/1.1 upgrade request (parsed and answered), the
// frame parser of the client-to-broker direction (masking checked, fragments assembled, control
// frames handed out) and the server frame headers. No I/O, no connection, no shard: conn_ws.c
// ties them to a connection, and tests/fuzz/ws_fuzz.c feeds them hostile bytes.
//
// A WebSocket connection carries the Nexus protocol with one change of framing
// (docs/PROTOCOL.md, "WebSocket"): each binary message is exactly one nexus.v1.Frame, without
// the 4-byte length prefix. The message boundary is the frame boundary.
//
//   client bytes ──► ws_parse ──► message (binary, whole)  ──► [len][frame] to the Nexus framer
//                        │    └─► ping / pong / close (control, ≤125 bytes)
//                        └─ error: the close code to send (1002 protocol, 1003 text, 1007 UTF-8,
//                           1009 too big) and why
//
// Threading: a parser belongs to its connection's shard; the functions keep no global state.
#ifndef NEXUS_BROKER_WS_H
#define NEXUS_BROKER_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The upgrade request, headers included, is at most this long (431 past it): browsers send
 * 0.5-2 KiB (cookies included); 8 KiB is what nginx's default header buffer takes. */
#define WS_HANDSHAKE_BYTES_MAX 8192
/* Control frames carry at most 125 bytes (RFC 6455 §5.5). */
#define WS_CONTROL_BYTES_MAX 125
/* A server frame header: 2 bytes, +2 or +8 of extended length, no mask. */
#define WS_HEADER_BYTES_MAX 10
/* Bytes free in front of a message's payload (ws_event.data - WS_MSG_HEADROOM is the parser's
 * memory): the caller writes the Nexus length prefix there and hands on one contiguous frame. */
#define WS_MSG_HEADROOM 4
/* A close frame's reason is cut to fit the 125-byte control payload (2 bytes are the code). */
#define WS_CLOSE_REASON_MAX 123
/* The subprotocol a client may ask for; the broker names it back when asked. */
#define WS_SUBPROTOCOL "nexus.v1"

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes the broker sends (RFC 6455 §7.4.1). */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,   /* the broker drains */
    WS_CLOSE_PROTOCOL = 1002,     /* a frame breaks RFC 6455 */
    WS_CLOSE_UNSUPPORTED = 1003,  /* a text message: Nexus frames are binary */
    WS_CLOSE_NO_STATUS = 1005,    /* (received only) a close frame without a code */
    WS_CLOSE_INVALID_DATA = 1007, /* a close reason that is not UTF-8 */
    WS_CLOSE_POLICY = 1008,       /* the Nexus protocol closed the connection (an error frame) */
    WS_CLOSE_TOO_BIG = 1009,      /* a message above the frame limit */
    WS_CLOSE_INTERNAL = 1011,     /* the broker ran out of memory */
    WS_CLOSE_TRY_LATER = 1013,    /* the shard's assembly budget is spent */
};

/* ---- the upgrade ------------------------------------------------------------------------- */

/* What ws_upgrade_parse found in a request. */
struct ws_upgrade {
    int status;       /* 101, or the HTTP status of the refusal */
    const char *why;  /* a refusal's reason (a static string), for the body and the log */
    char accept[29];  /* Sec-WebSocket-Accept, NUL-terminated (status 101) */
    bool subprotocol; /* the client offered WS_SUBPROTOCOL: name it in the answer */
    char origin[128]; /* the Origin header ("" if none; cut to fit), for the log */
};

/* The length of the request's header block, through its blank line: > 0 when complete, 0 when
 * more bytes are needed, -1 when WS_HANDSHAKE_BYTES_MAX bytes hold no complete block. */
int ws_request_end(const uint8_t *buf, size_t len);

/* Parses a complete header block (len from ws_request_end) and decides: 101 with the accept
 * key, or the refusal (400 malformed, 403 Origin refused, 405 not GET, 426 not an upgrade to
 * WebSocket version 13, 431 too long). allowed_origins is the --ws-allowed-origins list:
 * comma-separated origins (scheme://host[:port]) or "*"; a request with an Origin not on it is
 * refused unless the Origin's host is the Host header's host (the page came from the broker's
 * own host). A request without an Origin (not a browser) is not checked. Returns u->status. */
int ws_upgrade_parse(const uint8_t *req, size_t len, const char *allowed_origins,
                     struct ws_upgrade *u);

/* The HTTP answer to u: the 101 switching protocols, or the refusal with its reason as a
 * text/plain body. Returns the bytes written to out, or -1 if cap is too small (512 is enough
 * for any answer). */
int ws_upgrade_answer(const struct ws_upgrade *u, char *out, size_t cap);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + RFC 6455's GUID)). */
void ws_accept_key(const char *key, size_t key_len, char out[29]);

/* ---- frames ------------------------------------------------------------------------------ */

enum ws_event_kind { WS_EV_MESSAGE = 1, WS_EV_PING, WS_EV_PONG, WS_EV_CLOSE };

/* What ws_parse hands out: a whole binary message or a control frame. */
struct ws_event {
    enum ws_event_kind kind;
    uint8_t *data; /* payload (unmasked), valid until the next ws_parse; for a message,
                      data - WS_MSG_HEADROOM is writable */
    size_t len;
    uint16_t close_code; /* WS_EV_CLOSE: the peer's code, WS_CLOSE_NO_STATUS if none */
};

/*
 *   [header: 2..14 bytes] ──► [payload: len bytes, unmasked as it comes] ──► frame done
 *      │ checks: RSV 0, known opcode, MASK set, minimal length, control ≤125 and FIN,
 *      │ continuation only inside a message, message total ≤ msg_bytes_max
 *      └─ message bytes are assembled in buf (headroom first); control payloads in ctl
 */
struct ws_parser {
    uint32_t msg_bytes_max; /* largest message accepted */
    uint64_t *budget;       /* bytes assembly buffers may still take (shared), or NULL */
    uint8_t hdr[14];
    uint32_t hdr_have, hdr_need;
    uint8_t opcode; /* of the frame being read */
    bool fin;
    uint8_t mask[4];
    uint64_t frame_len, frame_have; /* payload of the frame being read */
    bool in_message;                /* a fragmented message has started */
    uint8_t *buf;                   /* WS_MSG_HEADROOM + message bytes */
    uint32_t buf_cap;               /* bytes allocated (charged to budget) */
    uint32_t msg_len;               /* message bytes so far */
    uint8_t ctl[WS_CONTROL_BYTES_MAX];
    uint64_t bad_len; /* after WS_CLOSE_TOO_BIG: the message size announced */
    const char *err;  /* after an error: why */
};

/* Initializes p for messages up to msg_bytes_max (≥ 1); budget as codec_framer_set_budget. */
void ws_parser_init(struct ws_parser *p, uint32_t msg_bytes_max, uint64_t *budget);
/* The largest message from now on (the Nexus pre-hello limit is lifted by a hello). */
void ws_parser_set_max(struct ws_parser *p, uint32_t msg_bytes_max);
/* Frees the assembly buffer (and gives its bytes back to the budget). */
void ws_parser_free(struct ws_parser *p);
/* After a message was handled: a large assembly buffer (over 64 KiB) is given back now. */
void ws_parser_settle(struct ws_parser *p);
/* True while a frame or a fragmented message has started and is not complete. */
bool ws_parser_partial(const struct ws_parser *p);

/* Consumes data[0..len) until an event is complete or the input is used up; *used is set to
 * the bytes taken. Returns 1 with *ev filled, 0 when all input was consumed, or minus a close
 * code (-WS_CLOSE_PROTOCOL, -WS_CLOSE_UNSUPPORTED, -WS_CLOSE_INVALID_DATA, -WS_CLOSE_TOO_BIG,
 * -WS_CLOSE_INTERNAL out of memory, -WS_CLOSE_TRY_LATER budget spent) with p->err saying why;
 * after an error the stream cannot be trusted: the caller closes. */
int ws_parse(struct ws_parser *p, const uint8_t *data, size_t len, size_t *used,
             struct ws_event *ev);

/* The header of a server frame (FIN set, not masked) carrying len payload bytes. Returns its
 * size (2, 4 or 10). */
size_t ws_frame_header(uint8_t out[WS_HEADER_BYTES_MAX], enum ws_opcode op, uint64_t len);

/* A whole close frame with code and a reason (cut to WS_CLOSE_REASON_MAX bytes at a UTF-8
 * boundary). Returns its size; out must hold 2 + 125 bytes. */
size_t ws_close_frame(uint8_t out[2 + WS_CONTROL_BYTES_MAX], uint16_t code, const char *reason);

#endif
