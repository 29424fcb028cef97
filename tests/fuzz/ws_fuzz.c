// SPDX-License-Identifier: Apache-2.0
//
// tests/fuzz/ws_fuzz.c: libFuzzer target for the WebSocket parts of broker/ws.h: the HTTP
// upgrade parser and the frame parser, both fed bytes a hostile client could send. The first
// byte chooses which. Upgrade: the rest is a request (and the second byte an allowed-origin
// list); the answer must be one of the statuses the broker sends, a 101 must carry a 28-byte
// accept key, and every answer must fit the broker's 512-byte buffer. Frames: bytes [1..2]
// choose the message limit, [3] the chunking and [4] its seed; the rest is fed in those chunks,
// and every result is checked: the bytes taken never exceed the chunk, all of it is taken when
// nothing completes, a message is at most the limit (its headroom writable), a control payload
// at most 125 bytes, a close code valid, an error has a reason, and the assembly budget comes
// back whole once the parser is freed. Single threaded.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void fuzz_upgrade(const uint8_t *d, size_t n)
{
    static const char *const lists[] = {"", "*", "http://a.example, https://b.example:8443/",
                                        "null"};
    if (n < 1)
        return;
    const char *allowed = lists[d[0] & 3];
    d++, n--;
    int end = ws_request_end(d, n);
    CHECK(end >= -1 && end <= (int)n);
    CHECK(end != -1 || n >= WS_HANDSHAKE_BYTES_MAX);
    struct ws_upgrade u;
    int st = ws_upgrade_parse(d, end > 0 ? (size_t)end : n, allowed, &u);
    CHECK(st == u.status);
    CHECK(st == 101 || st == 400 || st == 403 || st == 405 || st == 426 || st == 431);
    CHECK(st == 101 ? strlen(u.accept) == 28 : u.why != NULL);
    CHECK(memchr(u.origin, 0, sizeof(u.origin)) != NULL);
    char out[512];
    CHECK(ws_upgrade_answer(&u, out, sizeof(out)) > 0);
}

static size_t next_chunk(uint8_t mode, uint32_t *seed, size_t left)
{
    *seed = *seed * 1103515245u + 12345u;
    uint32_t r = *seed >> 16;
    size_t n = (mode & 3) == 0   ? 1
               : (mode & 3) == 1 ? 1 + r % 7
               : (mode & 3) == 2 ? 1 + r % 300
                                 : left;
    return n < left ? n : left;
}

static void check_event(const struct ws_parser *p, const struct ws_event *ev, uint32_t max)
{
    switch (ev->kind) {
    case WS_EV_MESSAGE:
        CHECK(ev->len <= max);
        CHECK(ev->data - WS_MSG_HEADROOM == p->buf);
        ev->data[-1] = 0; /* the headroom is the caller's to write (ASan checks the bounds) */
        if (ev->len) {
            volatile uint8_t last = ev->data[ev->len - 1]; /* in bounds (ASan) */
            (void)last;
        }
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        CHECK(ev->len <= WS_CONTROL_BYTES_MAX);
        break;
    case WS_EV_CLOSE:
        CHECK(ev->len <= WS_CONTROL_BYTES_MAX - 2);
        CHECK(ev->close_code == WS_CLOSE_NO_STATUS ||
              (ev->close_code >= 1000 && ev->close_code < 5000));
        break;
    default:
        CHECK(!"unknown event kind");
    }
}

static void fuzz_frames(const uint8_t *d, size_t n)
{
    if (n < 4)
        return;
    uint32_t max = 1u + (((uint32_t)d[0] << 8) | d[1]);
    uint8_t mode = d[2];
    uint32_t seed = d[3];
    d += 4, n -= 4;
    const uint64_t budget0 = 40000;
    uint64_t budget = budget0;
    struct ws_parser p;
    ws_parser_init(&p, max, &budget);
    size_t pos = 0;
    while (pos < n) {
        size_t chunk = next_chunk(mode, &seed, n - pos), cpos = 0;
        while (cpos < chunk) {
            struct ws_event ev;
            size_t used = (size_t)-1;
            int r = ws_parse(&p, d + pos + cpos, chunk - cpos, &used, &ev);
            CHECK(used <= chunk - cpos);
            cpos += used;
            CHECK(budget <= budget0);
            if (r < 0) {
                CHECK(p.err != NULL);
                CHECK(r == -WS_CLOSE_PROTOCOL || r == -WS_CLOSE_UNSUPPORTED ||
                      r == -WS_CLOSE_INVALID_DATA || r == -WS_CLOSE_TOO_BIG ||
                      r == -WS_CLOSE_TRY_LATER || r == -WS_CLOSE_INTERNAL);
                CHECK(r != -WS_CLOSE_TOO_BIG || p.bad_len > max);
                goto out; /* the connection would be closed */
            }
            if (r == 0) {
                CHECK(cpos == chunk);
                continue;
            }
            CHECK(r == 1);
            check_event(&p, &ev, max);
            if (ev.kind == WS_EV_MESSAGE)
                ws_parser_settle(&p);
        }
        pos += chunk;
    }
out:
    ws_parser_free(&p);
    CHECK(budget == budget0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_frames(data + 1, size - 1);
    else
        fuzz_upgrade(data + 1, size - 1);
    return 0;
}
