// SPDX-License-Identifier: Apache-2.0
//
// tests/unit/ws_frame_test.c: cmocka tests of broker/ws.h, the WebSocket parts that need no
// socket. The upgrade: RFC 6455's own accept-key example, a valid request (and the 101 answer
// written for it), every refusal (wrong key, wrong version, no Upgrade/Connection, not GET, not
// HTTP/1.1, no Host, duplicates, an Origin from another host, too long) and the Origin rules
// (same host, the allowed list, "*", no Origin). The frame parser: messages split at every
// byte, fragments with a ping between them, each protocol violation with its close code,
// oversized messages (one frame and fragments), the minimal-length rule, close frames (code,
// reason, invalid code, one byte, bad UTF-8), the assembly budget, and a seeded property test
// of random messages in random fragments fed in random chunks. Single threaded.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "broker/ws.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* A client frame (masked unless mask is NULL) of len payload bytes into out; returns its
 * size. The length is encoded minimally, as RFC 6455 requires. */
static size_t client_frame(uint8_t *out, bool fin, uint8_t op, const uint8_t *payload, size_t len,
                           const uint8_t *mask)
{
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) {
        out[n++] = (uint8_t)(m | len);
    } else if (len <= 0xffff) {
        out[n++] = m | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = m | 127;
        for (int i = 0; i < 8; i++)
            out[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    for (size_t i = 0; i < len; i++)
        out[n + i] = (uint8_t)(payload[i] ^ (mask ? mask[i & 3] : 0));
    return n + len;
}

static const uint8_t test_mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Feeds all of data in one call: returns ws_parse's result and the bytes it took. */
static int feed(struct ws_parser *p, const uint8_t *data, size_t len, size_t *used,
                struct ws_event *ev)
{
    return ws_parse(p, data, len, used, ev);
}

static const char *valid_request = "GET /nexus HTTP/1.1\r\n"
                                   "Host: broker.example:7401\r\n"
                                   "Upgrade: websocket\r\n"
                                   "Connection: keep-alive, Upgrade\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\n"
                                   "Sec-WebSocket-Protocol: chat, nexus.v1\r\n"
                                   "\r\n";

/* The status ws_upgrade_parse gives a request built from valid_request with one line
 * replaced (from "name:" up to its CRLF) or, with repl NULL, removed; extra lines added. */
static int upgrade_with(const char *name, const char *repl, const char *extra, const char *allowed,
                        struct ws_upgrade *u)
{
    char req[2048];
    const char *at = strstr(valid_request, name);
    assert_non_null(at);
    const char *eol = strstr(at, "\r\n") + 2;
    int n = snprintf(req, sizeof(req), "%.*s%s%s%s", (int)(at - valid_request), valid_request,
                     repl ? repl : "", repl ? "\r\n" : "", extra ? extra : "");
    n += snprintf(req + n, sizeof(req) - (size_t)n, "%s", eol);
    assert_int_equal(ws_request_end((const uint8_t *)req, (size_t)n), n);
    return ws_upgrade_parse((const uint8_t *)req, (size_t)n, allowed, u);
}

/* ---- the upgrade ------------------------------------------------------------------------ */

static void test_accept_key_rfc_example(void **state)
{
    (void)state;
    char out[29];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    ws_accept_key(key, strlen(key), out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); /* RFC 6455 §1.3 */
}

static void test_upgrade_valid(void **state)
{
    (void)state;
    struct ws_upgrade u;
    size_t len = strlen(valid_request);
    assert_int_equal(ws_request_end((const uint8_t *)valid_request, len), (int)len);
    assert_int_equal(ws_upgrade_parse((const uint8_t *)valid_request, len, "", &u), 101);
    assert_string_equal(u.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_true(u.subprotocol);
    char out[512];
    int n = ws_upgrade_answer(&u, out, sizeof(out));
    assert_true(n > 0);
    assert_non_null(strstr(out, "HTTP/1.1 101 Switching Protocols\r\n"));
    assert_non_null(strstr(out, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_non_null(strstr(out, "Sec-WebSocket-Protocol: nexus.v1\r\n"));
    assert_memory_equal(out + n - 4, "\r\n\r\n", 4);
    /* Without the subprotocol offered, none is named. */
    assert_int_equal(upgrade_with("Sec-WebSocket-Protocol:", NULL, NULL, "", &u), 101);
    assert_false(u.subprotocol);
    n = ws_upgrade_answer(&u, out, sizeof(out));
    assert_null(strstr(out, "Sec-WebSocket-Protocol"));
    /* Header names are case-insensitive; values' blanks are trimmed. */
    assert_int_equal(upgrade_with("Upgrade:", "upgrade:   WebSocket  ", NULL, "", &u), 101);
}

static void test_upgrade_refusals(void **state)
{
    (void)state;
    struct ws_upgrade u;
    char out[512];
    /* Wrong key: not 16 bytes, not base64, absent, twice. */
    assert_int_equal(
        upgrade_with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==", NULL, "", &u),
        400);
    assert_int_equal(upgrade_with("Sec-WebSocket-Key:",
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==", NULL, "", &u),
                     400);
    assert_int_equal(upgrade_with("Sec-WebSocket-Key:", NULL, NULL, "", &u), 400);
    assert_int_equal(
        upgrade_with("Host:", "Host: a", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", "", &u),
        400);
    /* Wrong version: 426 naming the one spoken. */
    assert_int_equal(
        upgrade_with("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 8", NULL, "", &u), 426);
    assert_true(ws_upgrade_answer(&u, out, sizeof(out)) > 0);
    assert_non_null(strstr(out, "HTTP/1.1 426 Upgrade Required\r\n"));
    assert_non_null(strstr(out, "Sec-WebSocket-Version: 13\r\n"));
    assert_int_equal(upgrade_with("Sec-WebSocket-Version:", NULL, NULL, "", &u), 426);
    /* Missing upgrade (either header). */
    assert_int_equal(upgrade_with("Upgrade:", NULL, NULL, "", &u), 426);
    assert_int_equal(upgrade_with("Upgrade:", "Upgrade: h2c", NULL, "", &u), 426);
    assert_int_equal(upgrade_with("Connection:", "Connection: keep-alive", NULL, "", &u), 426);
    /* No Host. */
    assert_int_equal(upgrade_with("Host:", NULL, NULL, "", &u), 400);
    /* Malformed header line, folded line. */
    assert_int_equal(upgrade_with("Host:", "Host a", NULL, "", &u), 400);
    assert_int_equal(upgrade_with("Host:", "Host: a\r\n folded", NULL, "", &u), 400);

    const char *post = "POST / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(ws_upgrade_parse((const uint8_t *)post, strlen(post), "", &u), 405);
    const char *old = "GET / HTTP/1.0\r\nHost: a\r\n\r\n";
    assert_int_equal(ws_upgrade_parse((const uint8_t *)old, strlen(old), "", &u), 400);
    const char *junk = "\x16\x03\x01\x02\x00\x01\r\n\r\n"; /* a TLS hello on a plain port */
    assert_int_equal(ws_upgrade_parse((const uint8_t *)junk, strlen(junk), "", &u), 400);
    /* Every refusal's answer is a whole HTTP response with its reason as the body. */
    assert_true(ws_upgrade_answer(&u, out, sizeof(out)) > 0);
    assert_non_null(strstr(out, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(out, "Connection: close\r\n"));
    assert_non_null(strstr(out, u.why));
}

static void test_upgrade_origin(void **state)
{
    (void)state;
    struct ws_upgrade u;
    /* The broker's own host, any port or scheme: allowed by default. */
    assert_int_equal(upgrade_with("Host:", "Host: Broker.Example:7401",
                                  "Origin: http://broker.example:8080\r\n", "", &u),
                     101);
    assert_string_equal(u.origin, "http://broker.example:8080");
    assert_int_equal(upgrade_with("Host:", "Host: [::1]:7401", "Origin: https://[::1]\r\n", "", &u),
                     101);
    /* Another host: refused, unless listed (or "*"). */
    assert_int_equal(upgrade_with("Host:", NULL,
                                  "Host: broker.example\r\nOrigin: http://evil.example\r\n", "",
                                  &u),
                     403);
    char out[512];
    assert_true(ws_upgrade_answer(&u, out, sizeof(out)) > 0);
    assert_non_null(strstr(out, "HTTP/1.1 403 Forbidden\r\n"));
    assert_int_equal(upgrade_with("Host:", "Host: broker.example",
                                  "Origin: https://app.example:8443\r\n",
                                  "http://other.example, https://APP.example:8443/", &u),
                     101);
    assert_int_equal(upgrade_with("Host:", "Host: broker.example",
                                  "Origin: https://app.example:8444\r\n",
                                  "http://other.example,https://app.example:8443", &u),
                     403);
    assert_int_equal(
        upgrade_with("Host:", "Host: broker.example", "Origin: http://evil.example\r\n", "*", &u),
        101);
    /* An opaque origin (a sandboxed page, a file) is not the broker's host. */
    assert_int_equal(upgrade_with("Host:", "Host: broker.example", "Origin: null\r\n", "", &u),
                     403);
    /* Not a browser: no Origin, no check. */
    assert_int_equal(upgrade_with("Host:", "Host: broker.example", NULL, "", &u), 101);
    /* Two Origins. */
    assert_int_equal(upgrade_with("Host:", "Host: broker.example",
                                  "Origin: http://broker.example\r\nOrigin: http://e.example\r\n",
                                  "*", &u),
                     400);
}

static void test_request_end(void **state)
{
    (void)state;
    const uint8_t *r = (const uint8_t *)valid_request;
    size_t len = strlen(valid_request);
    for (size_t i = 0; i < len; i++)
        assert_int_equal(ws_request_end(r, i), 0);
    uint8_t big[WS_HANDSHAKE_BYTES_MAX + 10];
    memset(big, 'a', sizeof(big));
    assert_int_equal(ws_request_end(big, WS_HANDSHAKE_BYTES_MAX - 1), 0);
    assert_int_equal(ws_request_end(big, WS_HANDSHAKE_BYTES_MAX), -1);
    struct ws_upgrade u;
    assert_int_equal(ws_upgrade_parse(big, sizeof(big), "", &u), 431);
}

/* ---- frames ----------------------------------------------------------------------------- */

static void test_message_every_split(void **state)
{
    (void)state;
    uint8_t payload[300], wire[400];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    size_t n = client_frame(wire, true, WS_OP_BINARY, payload, sizeof(payload), test_mask);
    for (size_t cut = 0; cut <= n; cut++) {
        struct ws_parser p;
        ws_parser_init(&p, 1024, NULL);
        struct ws_event ev;
        size_t used;
        int r = feed(&p, wire, cut, &used, &ev);
        assert_int_equal(used, cut);
        if (cut < n) {
            assert_int_equal(r, 0);
            assert_int_equal(ws_parser_partial(&p), cut > 0);
            r = feed(&p, wire + cut, n - cut, &used, &ev);
            assert_int_equal(used, n - cut);
        }
        assert_int_equal(r, 1);
        assert_int_equal(ev.kind, WS_EV_MESSAGE);
        assert_int_equal(ev.len, sizeof(payload));
        assert_memory_equal(ev.data, payload, sizeof(payload));
        assert_false(ws_parser_partial(&p));
        ev.data[-WS_MSG_HEADROOM] = 0xff; /* the headroom is the caller's to write */
        ws_parser_free(&p);
    }
}

static void test_fragments_with_ping(void **state)
{
    (void)state;
    uint8_t wire[200];
    size_t n = 0;
    n += client_frame(wire + n, false, WS_OP_BINARY, (const uint8_t *)"hel", 3, test_mask);
    n += client_frame(wire + n, true, WS_OP_PING, (const uint8_t *)"pi", 2, test_mask);
    n += client_frame(wire + n, false, WS_OP_CONT, (const uint8_t *)"lo ", 3, test_mask);
    n += client_frame(wire + n, false, WS_OP_CONT, (const uint8_t *)"", 0, test_mask);
    n += client_frame(wire + n, true, WS_OP_CONT, (const uint8_t *)"you", 3, test_mask);
    n += client_frame(wire + n, true, WS_OP_PONG, (const uint8_t *)"", 0, test_mask);
    struct ws_parser p;
    ws_parser_init(&p, 9, NULL); /* exactly the message's size */
    struct ws_event ev;
    size_t used, pos = 0;
    assert_int_equal(feed(&p, wire, n, &used, &ev), 1);
    pos += used;
    assert_int_equal(ev.kind, WS_EV_PING);
    assert_int_equal(ev.len, 2);
    assert_memory_equal(ev.data, "pi", 2);
    assert_true(ws_parser_partial(&p)); /* the message is still open */
    assert_int_equal(feed(&p, wire + pos, n - pos, &used, &ev), 1);
    pos += used;
    assert_int_equal(ev.kind, WS_EV_MESSAGE);
    assert_int_equal(ev.len, 9);
    assert_memory_equal(ev.data, "hello you", 9);
    assert_int_equal(feed(&p, wire + pos, n - pos, &used, &ev), 1);
    pos += used;
    assert_int_equal(ev.kind, WS_EV_PONG);
    assert_int_equal(pos, n);
    ws_parser_free(&p);
}

/* The close code ws_parse gives for the frame (or frames) in wire. */
static int parse_error(const uint8_t *wire, size_t n, uint32_t max)
{
    struct ws_parser p;
    ws_parser_init(&p, max, NULL);
    struct ws_event ev;
    size_t used, pos = 0;
    int r;
    while ((r = feed(&p, wire + pos, n - pos, &used, &ev)) == 1)
        pos += used;
    if (r < 0)
        assert_non_null(p.err);
    ws_parser_free(&p);
    return r;
}

static void test_protocol_errors(void **state)
{
    (void)state;
    uint8_t wire[300], big[200];
    memset(big, 'x', sizeof(big));
    size_t n;
    n = client_frame(wire, true, WS_OP_BINARY, (const uint8_t *)"abc", 3, NULL);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* unmasked */
    n = client_frame(wire, true, WS_OP_BINARY, (const uint8_t *)"abc", 3, test_mask);
    wire[0] |= 0x40;
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* RSV1 */
    n = client_frame(wire, true, WS_OP_TEXT, (const uint8_t *)"abc", 3, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_UNSUPPORTED);
    n = client_frame(wire, true, WS_OP_CONT, (const uint8_t *)"abc", 3, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* no message open */
    n = client_frame(wire, false, WS_OP_BINARY, (const uint8_t *)"a", 1, test_mask);
    n += client_frame(wire + n, true, WS_OP_BINARY, (const uint8_t *)"b", 1, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* new message inside */
    n = client_frame(wire, true, 0x3, (const uint8_t *)"a", 1, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* reserved opcode */
    n = client_frame(wire, true, 0xB, (const uint8_t *)"a", 1, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL);
    n = client_frame(wire, false, WS_OP_PING, (const uint8_t *)"a", 1, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL); /* fragmented control */
    n = client_frame(wire, true, WS_OP_PING, big, 126, test_mask);
    assert_int_equal(parse_error(wire, n, 1000), -WS_CLOSE_PROTOCOL); /* control > 125 */
    /* A 16-bit length below 126, a 64-bit one below 65536, a 64-bit one with its top bit. */
    const uint8_t nonmin16[] = {0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e'};
    assert_int_equal(parse_error(nonmin16, sizeof(nonmin16), 100), -WS_CLOSE_PROTOCOL);
    const uint8_t nonmin64[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 1, 2, 3, 4};
    assert_int_equal(parse_error(nonmin64, sizeof(nonmin64), 100000), -WS_CLOSE_PROTOCOL);
    const uint8_t top64[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
    assert_int_equal(parse_error(top64, sizeof(top64), 100000), -WS_CLOSE_PROTOCOL);
}

static void test_too_big(void **state)
{
    (void)state;
    uint8_t wire[300], big[200];
    memset(big, 'x', sizeof(big));
    struct ws_parser p;
    struct ws_event ev;
    size_t used;
    /* One frame: refused from its header alone, before its payload arrives. */
    size_t n = client_frame(wire, true, WS_OP_BINARY, big, 101, test_mask);
    ws_parser_init(&p, 100, NULL);
    assert_int_equal(feed(&p, wire, 8, &used, &ev), -WS_CLOSE_TOO_BIG);
    assert_int_equal(p.bad_len, 101);
    assert_null(p.buf); /* nothing was allocated for it */
    ws_parser_free(&p);
    /* The limit itself passes. */
    n = client_frame(wire, true, WS_OP_BINARY, big, 100, test_mask);
    ws_parser_init(&p, 100, NULL);
    assert_int_equal(feed(&p, wire, n, &used, &ev), 1);
    assert_int_equal(ev.len, 100);
    ws_parser_free(&p);
    /* Fragments: the total counts. */
    n = client_frame(wire, false, WS_OP_BINARY, big, 60, test_mask);
    n += client_frame(wire + n, true, WS_OP_CONT, big, 41, test_mask);
    ws_parser_init(&p, 100, NULL);
    assert_int_equal(feed(&p, wire, n, &used, &ev), -WS_CLOSE_TOO_BIG);
    assert_int_equal(p.bad_len, 101);
    ws_parser_free(&p);
    /* A 64-bit length far past any limit. */
    const uint8_t huge[] = {0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4};
    ws_parser_init(&p, 1u << 20, NULL);
    assert_int_equal(feed(&p, huge, sizeof(huge), &used, &ev), -WS_CLOSE_TOO_BIG);
    assert_true(p.bad_len == 0x7fffffffffffffffull);
    ws_parser_free(&p);
}

static void test_close_frames(void **state)
{
    (void)state;
    uint8_t wire[200], pl[130];
    struct ws_parser p;
    struct ws_event ev;
    size_t used, n;
    pl[0] = 0x03; /* 1001 */
    pl[1] = 0xe9;
    memcpy(pl + 2, "bye \xc3\xa9", 6);
    n = client_frame(wire, true, WS_OP_CLOSE, pl, 8, test_mask);
    ws_parser_init(&p, 100, NULL);
    assert_int_equal(feed(&p, wire, n, &used, &ev), 1);
    assert_int_equal(ev.kind, WS_EV_CLOSE);
    assert_int_equal(ev.close_code, 1001);
    assert_int_equal(ev.len, 6);
    assert_memory_equal(ev.data, "bye \xc3\xa9", 6);
    ws_parser_free(&p);
    n = client_frame(wire, true, WS_OP_CLOSE, pl, 0, test_mask);
    ws_parser_init(&p, 100, NULL);
    assert_int_equal(feed(&p, wire, n, &used, &ev), 1);
    assert_int_equal(ev.close_code, WS_CLOSE_NO_STATUS);
    ws_parser_free(&p);
    n = client_frame(wire, true, WS_OP_CLOSE, pl, 1, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL);
    static const uint16_t bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 2999, 5000};
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
        pl[0] = (uint8_t)(bad_codes[i] >> 8);
        pl[1] = (uint8_t)bad_codes[i];
        n = client_frame(wire, true, WS_OP_CLOSE, pl, 2, test_mask);
        assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_PROTOCOL);
    }
    pl[0] = 0x0f; /* 4000: an application's code */
    pl[1] = 0xa0;
    memcpy(pl + 2, "\xc3\x28", 2); /* not UTF-8 */
    n = client_frame(wire, true, WS_OP_CLOSE, pl, 4, test_mask);
    assert_int_equal(parse_error(wire, n, 100), -WS_CLOSE_INVALID_DATA);
}

static void test_budget(void **state)
{
    (void)state;
    uint8_t *wire = malloc(200000), *big = calloc(1, 100000);
    assert_non_null(wire);
    assert_non_null(big);
    uint64_t budget = 150000;
    struct ws_parser a, b;
    struct ws_event ev;
    size_t used;
    ws_parser_init(&a, 1u << 20, &budget);
    ws_parser_init(&b, 1u << 20, &budget);
    size_t n = client_frame(wire, true, WS_OP_BINARY, big, 100000, test_mask);
    assert_int_equal(feed(&a, wire, n - 10, &used, &ev), 0); /* a holds ~100 KB */
    assert_true(budget < 60000);
    assert_int_equal(feed(&b, wire, n, &used, &ev), -WS_CLOSE_TRY_LATER);
    assert_int_equal(feed(&a, wire + n - 10, 10, &used, &ev), 1);
    ws_parser_settle(&a); /* a large buffer goes back after its message */
    assert_null(a.buf);
    assert_int_equal(budget, 150000);
    /* Small messages cost no budget. */
    n = client_frame(wire, true, WS_OP_BINARY, big, 100, test_mask);
    assert_int_equal(feed(&a, wire, n, &used, &ev), 1);
    ws_parser_settle(&a);
    assert_int_equal(budget, 150000);
    ws_parser_free(&a);
    ws_parser_free(&b);
    assert_int_equal(budget, 150000);
    free(wire);
    free(big);
}

static void test_server_frames(void **state)
{
    (void)state;
    uint8_t h[WS_HEADER_BYTES_MAX];
    assert_int_equal(ws_frame_header(h, WS_OP_BINARY, 125), 2);
    assert_memory_equal(h, "\x82\x7d", 2);
    assert_int_equal(ws_frame_header(h, WS_OP_BINARY, 126), 4);
    assert_memory_equal(h, "\x82\x7e\x00\x7e", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_PONG, 65535), 4);
    assert_memory_equal(h, "\x8a\x7e\xff\xff", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_BINARY, 65536), 10);
    assert_memory_equal(h, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    uint8_t c[2 + WS_CONTROL_BYTES_MAX];
    assert_int_equal(ws_close_frame(c, 1000, NULL), 4);
    assert_memory_equal(c, "\x88\x02\x03\xe8", 4);
    /* A long reason is cut at a character boundary, within 125 bytes of payload. */
    char reason[200];
    memset(reason, 'a', 122);
    strcpy(reason + 122, "\xc3\xa9\xc3\xa9");
    size_t n = ws_close_frame(c, 1002, reason);
    assert_int_equal(n, 2 + 2 + 122);
    assert_int_equal(c[1], 124);
}

/* Random messages, cut into random fragments with pings between them, fed in random chunks:
 * every message arrives whole and in order, every ping too. */
static void test_random_property(void **state)
{
    (void)state;
    uint32_t seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, seed >> 8)
    enum { MSGS = 2000 };
    uint8_t *wire = malloc(MSGS * 2200), *expect = malloc(MSGS * 1100);
    size_t *lens = malloc(MSGS * sizeof(size_t));
    assert_non_null(wire);
    size_t n = 0, e = 0;
    for (int m = 0; m < MSGS; m++) {
        size_t len = RND() % 1000, done = 0;
        lens[m] = len;
        for (size_t i = 0; i < len; i++)
            expect[e + i] = (uint8_t)RND();
        uint8_t mask[4];
        for (int k = 0; k < 4; k++)
            mask[k] = (uint8_t)RND();
        bool first = true;
        do {
            size_t part = len - done ? 1 + RND() % (len - done) : 0;
            bool fin = done + part == len;
            n += client_frame(wire + n, fin, first ? WS_OP_BINARY : WS_OP_CONT, expect + e + done,
                              part, mask);
            if (!fin && RND() % 3 == 0)
                n += client_frame(wire + n, true, WS_OP_PING, (const uint8_t *)"p", 1, mask);
            done += part;
            first = false;
        } while (done < len);
        e += len;
    }
    struct ws_parser p;
    ws_parser_init(&p, 1000, NULL);
    size_t pos = 0, got = 0, off = 0;
    while (pos < n) {
        size_t chunk = 1 + RND() % 700;
        if (chunk > n - pos)
            chunk = n - pos;
        size_t cpos = 0;
        while (cpos < chunk) {
            struct ws_event ev;
            size_t used;
            int r = ws_parse(&p, wire + pos + cpos, chunk - cpos, &used, &ev);
            assert_true(r >= 0);
            cpos += used;
            if (r == 1 && ev.kind == WS_EV_MESSAGE) {
                assert_int_equal(ev.len, lens[got]);
                assert_memory_equal(ev.data, expect + off, ev.len);
                off += ev.len;
                got++;
            }
        }
        pos += chunk;
    }
    assert_int_equal(got, MSGS);
    ws_parser_free(&p);
    free(wire);
    free(expect);
    free(lens);
#undef RND
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key_rfc_example),
        cmocka_unit_test(test_upgrade_valid),
        cmocka_unit_test(test_upgrade_refusals),
        cmocka_unit_test(test_upgrade_origin),
        cmocka_unit_test(test_request_end),
        cmocka_unit_test(test_message_every_split),
        cmocka_unit_test(test_fragments_with_ping),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_close_frames),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_server_frames),
        cmocka_unit_test(test_random_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
