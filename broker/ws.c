// SPDX-License-Identifier: Apache-2.0
//
// WebSocket framing and the HTTP upgrade (ws.h): pure functions over bytes, fuzzed by
// tests/fuzz/ws_fuzz.c. Client bytes never reach an assertion: every malformed input is an
// HTTP status or a close code with a reason. SHA-1 and base64 come from OpenSSL.
#include "broker/ws.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "codec/wire.h"

/* RFC 6455 §1.3: appended to the client's key before hashing. */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* Assembly buffers up to this size are not charged to the shard's budget: every connection
 * keeps one for its small messages (a few hundred bytes each), and only large messages are what
 * --max-assembly-bytes bounds. Larger buffers are given back after their message. */
#define WS_BUF_FREE_BYTES (16u << 10)
#define WS_BUF_KEEP_BYTES (64u << 10)

/* ---- the upgrade ------------------------------------------------------------------------- */

int ws_request_end(const uint8_t *buf, size_t len)
{
    size_t n = len < WS_HANDSHAKE_BYTES_MAX ? len : WS_HANDSHAKE_BYTES_MAX;
    for (size_t i = 3; i < n; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return (int)(i + 1);
    return len >= WS_HANDSHAKE_BYTES_MAX ? -1 : 0;
}

void ws_accept_key(const char *key, size_t key_len, char out[29])
{
    char in[64 + sizeof(ws_guid)];
    if (key_len > 64)
        key_len = 64;
    memcpy(in, key, key_len);
    memcpy(in + key_len, ws_guid, sizeof(ws_guid) - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(in, key_len + sizeof(ws_guid) - 1, md, &mdlen, EVP_sha1(), NULL) ||
        mdlen != 20) {
        out[0] = 0;
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
}

/* A header value: its bytes, without the optional white space around it. */
struct ws_hval {
    const char *p;
    size_t len;
};

/* The headers the upgrade looks at. */
struct ws_req {
    struct ws_hval host, upgrade, key, version, origin, protocol;
    bool connection_upgrade; /* some Connection header lists "upgrade" */
    bool dup;                /* Host, key, version or Origin given twice */
};

static bool ws_is_tchar(char ch)
{
    return isalnum((unsigned char)ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Whether the comma-separated list v holds token tok (case-insensitive). */
static bool ws_list_has(struct ws_hval v, const char *tok)
{
    size_t tl = strlen(tok), i = 0;
    while (i < v.len) {
        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        size_t s = i;
        while (i < v.len && v.p[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v.p + s, tok, tl) == 0)
            return true;
    }
    return false;
}

/* Sets *slot to v; a second occurrence marks the request as duplicated. */
static void ws_hset(struct ws_req *r, struct ws_hval *slot, struct ws_hval v)
{
    if (slot->p)
        r->dup = true;
    *slot = v;
}

/* One header line (without its CRLF) into r. Returns 0, or -1 when it is malformed. */
static int ws_header_line(struct ws_req *r, const char *l, size_t n)
{
    const char *colon = memchr(l, ':', n);
    if (!colon || colon == l)
        return -1;
    size_t nl = (size_t)(colon - l);
    for (size_t i = 0; i < nl; i++)
        if (!ws_is_tchar(l[i]))
            return -1; /* also refuses obsolete line folding (a line starting with a blank) */
    struct ws_hval v = {colon + 1, n - nl - 1};
    for (size_t i = 0; i < v.len; i++)
        if ((unsigned char)v.p[i] < 0x20 && v.p[i] != '\t')
            return -1;
    while (v.len && (*v.p == ' ' || *v.p == '\t'))
        v.p++, v.len--;
    while (v.len && (v.p[v.len - 1] == ' ' || v.p[v.len - 1] == '\t'))
        v.len--;
#define IS(name) (nl == sizeof(name) - 1 && strncasecmp(l, name, nl) == 0)
    if (IS("Host"))
        ws_hset(r, &r->host, v);
    else if (IS("Upgrade"))
        r->upgrade = v; /* a list: websocket must be in it */
    else if (IS("Connection"))
        r->connection_upgrade |= ws_list_has(v, "upgrade");
    else if (IS("Sec-WebSocket-Key"))
        ws_hset(r, &r->key, v);
    else if (IS("Sec-WebSocket-Version"))
        ws_hset(r, &r->version, v);
    else if (IS("Origin"))
        ws_hset(r, &r->origin, v);
    else if (IS("Sec-WebSocket-Protocol"))
        r->protocol = v;
#undef IS
    return 0;
}

/* Whether the key is the base64 form of 16 bytes: 22 characters of the alphabet and "==". */
static bool ws_key_valid(struct ws_hval k)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (k.len != 24 || k.p[22] != '=' || k.p[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!memchr(b64, k.p[i], sizeof(b64) - 1))
            return false;
    return true;
}

/* The host part of "host[:port]" or "[v6]:port" (after a scheme's "://" when there is one). */
static struct ws_hval ws_host_of(struct ws_hval v)
{
    for (size_t i = 0; i + 2 < v.len; i++)
        if (v.p[i] == ':' && v.p[i + 1] == '/' && v.p[i + 2] == '/') {
            v.p += i + 3;
            v.len -= i + 3;
            break;
        }
    size_t e = 0;
    if (v.len && v.p[0] == '[') {
        while (e < v.len && v.p[e] != ']')
            e++;
        return (struct ws_hval){v.p, e < v.len ? e + 1 : e};
    }
    while (e < v.len && v.p[e] != ':' && v.p[e] != '/')
        e++;
    return (struct ws_hval){v.p, e};
}

/* Whether origin o may connect: on the allowed list ("*" allows any), or from the Host's own
 * host. An origin and a list entry compare case-insensitively, a trailing '/' ignored. */
static bool ws_origin_allowed(struct ws_hval o, struct ws_hval host, const char *allowed)
{
    while (o.len && o.p[o.len - 1] == '/')
        o.len--;
    const char *a = allowed ? allowed : "";
    while (*a) {
        while (*a == ' ' || *a == ',')
            a++;
        size_t n = strcspn(a, ",");
        size_t e = n;
        while (e && (a[e - 1] == ' ' || a[e - 1] == '/'))
            e--;
        if ((e == 1 && a[0] == '*') || (e == o.len && e && strncasecmp(a, o.p, e) == 0))
            return true;
        a += n;
    }
    struct ws_hval oh = ws_host_of(o), hh = ws_host_of(host);
    bool scheme = o.len >= 7 && (strncasecmp(o.p, "http://", 7) == 0 ||
                                 (o.len >= 8 && strncasecmp(o.p, "https://", 8) == 0));
    return scheme && oh.len && oh.len == hh.len && strncasecmp(oh.p, hh.p, oh.len) == 0;
}

static int ws_refuse(struct ws_upgrade *u, int status, const char *why)
{
    u->status = status;
    u->why = why;
    return status;
}

/* The request line: GET, a target, HTTP/1.1 (or a later 1.x). Returns 0 or an HTTP status. */
static int ws_request_line(struct ws_upgrade *u, const char *l, size_t n)
{
    const char *sp1 = memchr(l, ' ', n);
    if (!sp1)
        return ws_refuse(u, 400, "malformed request line");
    const char *rest = sp1 + 1;
    size_t rn = n - (size_t)(rest - l);
    const char *sp2 = memchr(rest, ' ', rn);
    if (!sp2 || sp2 == rest)
        return ws_refuse(u, 400, "malformed request line");
    for (const char *t = rest; t < sp2; t++)
        if ((unsigned char)*t <= 0x20 || *t == 0x7f)
            return ws_refuse(u, 400, "malformed request target");
    size_t vn = rn - (size_t)(sp2 + 1 - rest);
    const char *v = sp2 + 1;
    if (vn != 8 || strncmp(v, "HTTP/1.", 7) != 0 || v[7] < '1' || v[7] > '9')
        return ws_refuse(u, 400, "the upgrade needs HTTP/1.1");
    if ((size_t)(sp1 - l) != 3 || strncmp(l, "GET", 3) != 0)
        return ws_refuse(u, 405, "the upgrade must be a GET request");
    return 0;
}

/* The request's lines into r (after the request line). Returns 0 or an HTTP status. */
static int ws_request_headers(struct ws_upgrade *u, struct ws_req *r, const char *p,
                              const char *end)
{
    int lines = 0;
    while (p < end) {
        const char *eol = NULL;
        for (const char *q = p; q + 1 < end; q++)
            if (q[0] == '\r' && q[1] == '\n') {
                eol = q;
                break;
            }
        if (!eol)
            return ws_refuse(u, 400, "malformed header block");
        if (eol == p)
            return 0; /* the blank line */
        if (++lines > 100)
            return ws_refuse(u, 431, "too many header lines");
        if (ws_header_line(r, p, (size_t)(eol - p)) < 0)
            return ws_refuse(u, 400, "malformed header line");
        p = eol + 2;
    }
    return ws_refuse(u, 400, "header block without its blank line");
}

int ws_upgrade_parse(const uint8_t *req, size_t len, const char *allowed_origins,
                     struct ws_upgrade *u)
{
    memset(u, 0, sizeof(*u));
    const char *p = (const char *)req, *end = p + len;
    if (len > WS_HANDSHAKE_BYTES_MAX)
        return ws_refuse(u, 431, "request headers longer than 8 KiB");
    const char *eol = NULL;
    for (const char *q = p; q + 1 < end; q++)
        if (q[0] == '\r' && q[1] == '\n') {
            eol = q;
            break;
        }
    if (!eol || ws_request_line(u, p, (size_t)(eol - p)))
        return u->status ? u->status : ws_refuse(u, 400, "malformed request line");
    struct ws_req r;
    memset(&r, 0, sizeof(r));
    if (ws_request_headers(u, &r, eol + 2, end))
        return u->status;
    if (r.origin.p) {
        size_t n = r.origin.len < sizeof(u->origin) - 1 ? r.origin.len : sizeof(u->origin) - 1;
        memcpy(u->origin, r.origin.p, n);
    }
    if (r.dup)
        return ws_refuse(u, 400, "Host, Origin, Sec-WebSocket-Key or -Version given twice");
    if (!r.host.p || !r.host.len)
        return ws_refuse(u, 400, "no Host header");
    if (!r.upgrade.p || !ws_list_has(r.upgrade, "websocket") || !r.connection_upgrade)
        return ws_refuse(u, 426,
                         "this port speaks WebSocket: send an upgrade request "
                         "(Upgrade: websocket, Connection: Upgrade)");
    if (!r.version.p || r.version.len != 2 || memcmp(r.version.p, "13", 2) != 0)
        return ws_refuse(u, 426, "unsupported Sec-WebSocket-Version (this broker speaks 13)");
    if (!r.key.p || !ws_key_valid(r.key))
        return ws_refuse(u, 400, "Sec-WebSocket-Key must be the base64 of 16 bytes");
    if (r.origin.p && !ws_origin_allowed(r.origin, r.host, allowed_origins))
        return ws_refuse(u, 403, "Origin not allowed (--ws-allowed-origins)");
    u->subprotocol = r.protocol.p && ws_list_has(r.protocol, WS_SUBPROTOCOL);
    ws_accept_key(r.key.p, r.key.len, u->accept);
    if (!u->accept[0])
        return ws_refuse(u, 500, "cannot compute the accept key");
    u->status = 101;
    return 101;
}

static const char *ws_status_text(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 405:
        return "Method Not Allowed";
    case 426:
        return "Upgrade Required";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

int ws_upgrade_answer(const struct ws_upgrade *u, char *out, size_t cap)
{
    int n;
    if (u->status == 101) {
        n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                     u->accept,
                     u->subprotocol ? "Sec-WebSocket-Protocol: " WS_SUBPROTOCOL "\r\n" : "");
    } else {
        const char *why = u->why ? u->why : "refused";
        n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n%s\r\n%s\n",
                     u->status, ws_status_text(u->status), strlen(why) + 1,
                     u->status == 426 ? "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" : "",
                     why);
    }
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* ---- frames ------------------------------------------------------------------------------ */

void ws_parser_init(struct ws_parser *p, uint32_t msg_bytes_max, uint64_t *budget)
{
    memset(p, 0, sizeof(*p));
    p->msg_bytes_max = msg_bytes_max ? msg_bytes_max : 1;
    p->budget = budget;
    p->hdr_need = 2;
}

void ws_parser_set_max(struct ws_parser *p, uint32_t msg_bytes_max)
{
    p->msg_bytes_max = msg_bytes_max ? msg_bytes_max : 1;
}

static uint64_t ws_charge(uint32_t cap)
{
    return cap > WS_BUF_FREE_BYTES ? cap : 0;
}

void ws_parser_free(struct ws_parser *p)
{
    if (p->budget)
        *p->budget += ws_charge(p->buf_cap);
    free(p->buf);
    p->buf = NULL;
    p->buf_cap = 0;
}

bool ws_parser_partial(const struct ws_parser *p)
{
    return p->hdr_have > 0 || p->in_message;
}

void ws_parser_settle(struct ws_parser *p)
{
    if (!ws_parser_partial(p) && p->buf_cap > WS_BUF_KEEP_BYTES)
        ws_parser_free(p);
}

static int ws_fail(struct ws_parser *p, int code, const char *why)
{
    p->err = why;
    return -code;
}

/* Makes room for `need` bytes (headroom included) in the assembly buffer: exactly that for a
 * message in one frame, with slack for one in fragments. 0, or minus a close code. */
static int ws_reserve(struct ws_parser *p, uint64_t need, bool fragments)
{
    if (need <= p->buf_cap)
        return 0;
    uint64_t cap = need;
    if (fragments && (uint64_t)p->buf_cap * 2 > cap)
        cap = (uint64_t)p->buf_cap * 2;
    if (cap > (uint64_t)p->msg_bytes_max + WS_MSG_HEADROOM)
        cap = (uint64_t)p->msg_bytes_max + WS_MSG_HEADROOM;
    uint64_t more = ws_charge((uint32_t)cap) - ws_charge(p->buf_cap);
    if (p->budget && *p->budget < more)
        return ws_fail(p, WS_CLOSE_TRY_LATER,
                       "the broker is receiving too many large messages at once "
                       "(--max-assembly-bytes); retry later");
    uint8_t *nb = realloc(p->buf, cap);
    if (!nb)
        return ws_fail(p, WS_CLOSE_INTERNAL, "out of memory assembling a message");
    if (p->budget)
        *p->budget -= more;
    p->buf = nb;
    p->buf_cap = (uint32_t)cap;
    return 0;
}

/* The first two header bytes: everything that can be refused before the length is known.
 * Sets hdr_need to the whole header's size. 0, or minus a close code. */
static int ws_header_start(struct ws_parser *p)
{
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    uint8_t op = b0 & 0x0f, len7 = b1 & 0x7f;
    p->fin = (b0 & 0x80) != 0;
    p->opcode = op;
    if (b0 & 0x70)
        return ws_fail(p, WS_CLOSE_PROTOCOL, "reserved bits set (no extension was negotiated)");
    if (!(b1 & 0x80))
        return ws_fail(p, WS_CLOSE_PROTOCOL, "client frames must be masked");
    if (op & 0x8) {
        if (op != WS_OP_CLOSE && op != WS_OP_PING && op != WS_OP_PONG)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "reserved control opcode");
        if (!p->fin)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "fragmented control frame");
        if (len7 > WS_CONTROL_BYTES_MAX)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "control frame longer than 125 bytes");
    } else if (op == WS_OP_TEXT) {
        return ws_fail(p, WS_CLOSE_UNSUPPORTED,
                       "text message: each Nexus frame travels in one binary message");
    } else if (op == WS_OP_CONT && !p->in_message) {
        return ws_fail(p, WS_CLOSE_PROTOCOL, "continuation frame outside a message");
    } else if (op == WS_OP_BINARY && p->in_message) {
        return ws_fail(p, WS_CLOSE_PROTOCOL, "new message before the last one's final frame");
    } else if (op != WS_OP_CONT && op != WS_OP_BINARY) {
        return ws_fail(p, WS_CLOSE_PROTOCOL, "reserved data opcode");
    }
    p->hdr_need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
    return 0;
}

/* The whole header is in: length (minimally encoded), mask, room for the payload. 0, or
 * minus a close code. */
static int ws_header_done(struct ws_parser *p)
{
    uint8_t len7 = p->hdr[1] & 0x7f;
    uint64_t len = len7;
    if (len7 == 126) {
        len = ((uint64_t)p->hdr[2] << 8) | p->hdr[3];
        if (len < 126)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "payload length not minimally encoded");
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p->hdr[2 + i];
        if (len >> 63)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "payload length with its top bit set");
        if (len <= 0xffff)
            return ws_fail(p, WS_CLOSE_PROTOCOL, "payload length not minimally encoded");
    }
    memcpy(p->mask, p->hdr + p->hdr_need - 4, 4);
    p->frame_len = len;
    p->frame_have = 0;
    if (p->opcode & 0x8)
        return 0;
    uint64_t total = (uint64_t)p->msg_len + len;
    if (total > p->msg_bytes_max) {
        p->bad_len = total;
        return ws_fail(p, WS_CLOSE_TOO_BIG, "message larger than the broker's frame limit");
    }
    return ws_reserve(p, total + WS_MSG_HEADROOM, !(p->fin && !p->in_message));
}

/* Copies n payload bytes, unmasking them; off is the payload offset of src[0]. */
static void ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4],
                      uint64_t off)
{
    uint8_t k[8];
    for (int j = 0; j < 8; j++)
        k[j] = mask[(off + (uint64_t)j) & 3];
    uint64_t k64;
    memcpy(&k64, k, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* a word at a time: i stays a multiple of 4 */
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k64;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ mask[(off + i) & 3];
}

/* A close frame's payload: its code (valid per RFC 6455 §7.4) and a UTF-8 reason. */
static int ws_close_event(struct ws_parser *p, struct ws_event *ev)
{
    ev->kind = WS_EV_CLOSE;
    ev->close_code = WS_CLOSE_NO_STATUS;
    ev->data = p->ctl;
    ev->len = 0;
    if (p->frame_len == 0)
        return 1;
    if (p->frame_len == 1)
        return ws_fail(p, WS_CLOSE_PROTOCOL, "close frame of one byte");
    uint16_t code = (uint16_t)(p->ctl[0] << 8 | p->ctl[1]);
    bool ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
              (code >= 3000 && code <= 4999);
    if (!ok)
        return ws_fail(p, WS_CLOSE_PROTOCOL, "invalid close code");
    if (!wire_utf8_valid(p->ctl + 2, p->frame_len - 2))
        return ws_fail(p, WS_CLOSE_INVALID_DATA, "close reason is not UTF-8");
    ev->close_code = code;
    ev->data = p->ctl + 2;
    ev->len = p->frame_len - 2;
    return 1;
}

/* A frame's payload is complete: an event (1), nothing yet (0, a fragment), or an error. */
static int ws_frame_done(struct ws_parser *p, struct ws_event *ev)
{
    p->hdr_have = 0;
    p->hdr_need = 2;
    switch (p->opcode) {
    case WS_OP_CLOSE:
        return ws_close_event(p, ev);
    case WS_OP_PING:
    case WS_OP_PONG:
        ev->kind = p->opcode == WS_OP_PING ? WS_EV_PING : WS_EV_PONG;
        ev->data = p->ctl;
        ev->len = p->frame_len;
        ev->close_code = 0;
        return 1;
    default:
        break;
    }
    p->msg_len += (uint32_t)p->frame_len;
    if (!p->fin) {
        p->in_message = true;
        return 0;
    }
    ev->kind = WS_EV_MESSAGE;
    ev->data = p->buf + WS_MSG_HEADROOM;
    ev->len = p->msg_len;
    ev->close_code = 0;
    p->in_message = false;
    p->msg_len = 0;
    return 1;
}

int ws_parse(struct ws_parser *p, const uint8_t *data, size_t len, size_t *used,
             struct ws_event *ev)
{
    size_t pos = 0;
    int r = 0;
    while (pos < len) {
        if (p->hdr_have < p->hdr_need) { /* the header, two bytes first */
            size_t take = p->hdr_need - p->hdr_have;
            if (take > len - pos)
                take = len - pos;
            memcpy(p->hdr + p->hdr_have, data + pos, take);
            p->hdr_have += (uint32_t)take;
            pos += take;
            if (p->hdr_have == 2 && p->hdr_need == 2 && (r = ws_header_start(p)) < 0)
                break;
            if (p->hdr_have < p->hdr_need)
                continue;
            if ((r = ws_header_done(p)) < 0)
                break;
        }
        size_t take = p->frame_len - p->frame_have < len - pos
                          ? (size_t)(p->frame_len - p->frame_have)
                          : len - pos;
        uint8_t *dst = (p->opcode & 0x8) ? p->ctl + p->frame_have
                                         : p->buf + WS_MSG_HEADROOM + p->msg_len + p->frame_have;
        if (take)
            ws_unmask(dst, data + pos, take, p->mask, p->frame_have);
        p->frame_have += take;
        pos += take;
        if (p->frame_have < p->frame_len)
            break;
        if ((r = ws_frame_done(p, ev)) != 0)
            break;
    }
    *used = pos;
    return r;
}

size_t ws_frame_header(uint8_t out[WS_HEADER_BYTES_MAX], enum ws_opcode op, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | op);
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

size_t ws_close_frame(uint8_t out[2 + WS_CONTROL_BYTES_MAX], uint16_t code, const char *reason)
{
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > WS_CLOSE_REASON_MAX) {
        rl = WS_CLOSE_REASON_MAX;
        while (rl && ((uint8_t)reason[rl] & 0xc0) == 0x80)
            rl--; /* not inside a UTF-8 sequence */
    }
    out[0] = 0x80 | WS_OP_CLOSE;
    out[1] = (uint8_t)(2 + rl);
    out[2] = (uint8_t)(code >> 8);
    out[3] = (uint8_t)code;
    if (rl)
        memcpy(out + 4, reason, rl);
    return 4 + rl;
}
