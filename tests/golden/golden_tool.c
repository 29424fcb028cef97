// SPDX-License-Identifier: Apache-2.0
//
// tests/golden/golden_tool.c: the codec's side of the wire-compatibility test
// (tests/golden/golden_test.sh), which holds the codec against protoc rather than against itself.
//   decode-frame FILE     reads one binary nexus.v1.Frame (no length prefix: what
//                         `protoc --encode` writes), decodes it with codec_envelope_decode and
//                         the body decoder of its kind, and prints the decoded fields as stable
//                         `key=value` lines (strings escaped, opaque bytes in hex).
//   encode-* ARGS...      writes one frame built by the codec's encoders to stdout, without its
//                         length prefix (checked first against the rest's length), for
//                         `protoc --decode=nexus.v1.Frame`.
// encode-event splices the metadata and payload of a protoc-encoded emit read from a file, so
// the test shows that the ancestor's bytes survive splicing. Exit status: 0 ok, 1 decode or
// encode failure, 2 usage. A test tool: single threaded, reads files and stdio only.
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/envelope.h"
#include "codec/wire.h"

/* Largest input file: a frame is at most 1 MiB by default; 16 MiB leaves room for tests of
 * larger configured limits. */
#define GOLDEN_FILE_BYTES_MAX (16u * 1024u * 1024u)

/* Largest encoded frame: patterns and strings come from the command line. */
#define GOLDEN_OUT_BYTES_MAX (64u * 1024u)

static int usage(void)
{
    fprintf(stderr,
            "usage: golden_tool decode-frame FILE\n"
            "       golden_tool encode-event EMIT_FRAME_FILE SEQUENCE TIMESTAMP_NS\n"
            "       golden_tool encode-emit-ack CORR EVENT_ID EVENT_TYPE CAMPAIGN SEQUENCE "
            "MESSAGE\n"
            "       golden_tool encode-welcome CORR SHARDS FRAME_BYTES_MAX CONN_ID SHARD_ID\n"
            "       golden_tool encode-error CORR CODE MESSAGE\n"
            "       golden_tool encode-error-repeat CORR CODE UNIT COUNT\n"
            "       golden_tool encode-gap CAMPAIGN FIRST LAST DROPPED REASON\n"
            "       golden_tool encode-subscribe-ack CORR SUBSCRIPTION_ID\n"
            "       golden_tool encode-unsubscribe CORR SUBSCRIPTION_ID\n"
            "       golden_tool encode-ping CORR NONCE\n"
            "       golden_tool encode-pong CORR NONCE\n"
            "       golden_tool encode-hello CORR VERSION TOKEN CLIENT_NAME\n"
            "       golden_tool encode-stats CORR\n"
            "       golden_tool encode-subscribe CORR CAMPAIGN USER_ID PATTERN...\n"
            "       golden_tool encode-emit CORR EVENT_ID EVENT_TYPE ENTITY_ID CAMPAIGN USER_ID "
            "CORRELATION_ID\n");
    return 2;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *out = v;
    return true;
}

static bool parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* Reads a whole file into a malloc'd buffer. Returns 0 or -errno. */
static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    uint8_t *buf = malloc(GOLDEN_FILE_BYTES_MAX);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, GOLDEN_FILE_BYTES_MAX, f);
    int r = ferror(f) ? -EIO : (!feof(f) ? -EFBIG : 0);
    fclose(f);
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* ---- printing ---------------------------------------------------------------------------- */

/* Printable ASCII as is (backslash doubled), every other byte as \xNN. */
static void print_str(const char *key, struct codec_slice s)
{
    printf("%s=", key);
    for (uint32_t i = 0; i < s.len; i++) {
        uint8_t c = s.ptr[i];
        if (c == '\\')
            fputs("\\\\", stdout);
        else if (c >= 0x20 && c < 0x7f)
            putchar(c);
        else
            printf("\\x%02x", c);
    }
    putchar('\n');
}

static void print_hex(const char *key, struct codec_slice s)
{
    printf("%s=", key);
    for (uint32_t i = 0; i < s.len; i++)
        printf("%02x", s.ptr[i]);
    putchar('\n');
}

static void print_u64(const char *key, uint64_t v)
{
    printf("%s=%" PRIu64 "\n", key, v);
}

static void print_i64(const char *key, int64_t v)
{
    printf("%s=%" PRId64 "\n", key, v);
}

/* An opaque sub-message: presence, length and bytes. */
static void print_opaque(const char *name, bool has, struct codec_slice s)
{
    char key[32];
    snprintf(key, sizeof(key), "has_%s", name);
    print_u64(key, has);
    snprintf(key, sizeof(key), "%s_len", name);
    print_u64(key, s.len);
    snprintf(key, sizeof(key), "%s_hex", name);
    print_hex(key, s);
}

static int decode_failed(const char *what, int r, const char *err)
{
    printf("decode_error=%s %d %s\n", what, r, err);
    return 1;
}

static int print_body(const struct codec_envelope *env)
{
    char err[CODEC_ERR_BYTES] = "";
    const uint8_t *b = env->body.ptr;
    size_t n = env->body.len;
    int r;
    switch (env->kind) {
    case CODEC_KIND_EMIT: {
        struct codec_emit e;
        if ((r = codec_emit_decode(b, n, &e, err)) < 0)
            return decode_failed("emit", r, err);
        print_str("event_id", e.event_id);
        print_str("event_type", e.event_type);
        print_str("entity_id", e.entity_id);
        print_i64("campaign_id", e.campaign_id);
        print_str("user_id", e.user_id);
        print_str("correlation_id", e.correlation_id);
        print_opaque("metadata", e.has_metadata, e.metadata);
        print_opaque("payload", e.has_payload, e.payload);
        return 0;
    }
    case CODEC_KIND_EVENT:
    case CODEC_KIND_EMIT_ACK: {
        struct codec_event_in ev;
        if ((r = codec_event_decode(b, n, &ev, err)) < 0)
            return decode_failed("event", r, err);
        print_u64("success", ev.success);
        print_str("event_id", ev.event_id);
        print_str("event_type", ev.event_type);
        print_str("message", ev.message);
        print_i64("campaign_id", ev.campaign_id);
        print_str("entity_id", ev.entity_id);
        print_u64("sequence", ev.sequence);
        print_i64("timestamp_unix_nanos", ev.timestamp_unix_nanos);
        print_str("correlation_id", ev.correlation_id);
        print_u64("stream_seq", ev.stream_seq);
        print_str("code", ev.code);
        print_opaque("metadata", ev.has_metadata, ev.metadata);
        print_opaque("payload", ev.has_payload, ev.payload);
        return 0;
    }
    case CODEC_KIND_SUBSCRIBE: {
        static struct codec_subscribe s; /* ~1 KiB of slices: off the stack */
        if ((r = codec_subscribe_decode(b, n, &s, err)) < 0)
            return decode_failed("subscribe", r, err);
        print_i64("campaign_id", s.campaign_id);
        print_u64("pattern_count", s.pattern_count);
        for (uint32_t i = 0; i < s.pattern_count; i++) {
            char key[32];
            snprintf(key, sizeof(key), "pattern[%u]", i);
            print_str(key, s.patterns[i]);
        }
        print_str("user_id", s.user_id);
        return 0;
    }
    case CODEC_KIND_HELLO: {
        struct codec_hello h;
        if ((r = codec_hello_decode(b, n, &h, err)) < 0)
            return decode_failed("hello", r, err);
        print_u64("protocol_version", h.protocol_version);
        print_str("token", h.token);
        print_str("client_name", h.client_name);
        return 0;
    }
    case CODEC_KIND_UNSUBSCRIBE:
    case CODEC_KIND_SUBSCRIBE_ACK:
    case CODEC_KIND_PING:
    case CODEC_KIND_PONG: {
        uint64_t v;
        if ((r = codec_u64_msg_decode(b, n, &v, err)) < 0)
            return decode_failed(codec_kind_name(env->kind), r, err);
        bool is_sub = env->kind == CODEC_KIND_UNSUBSCRIBE || env->kind == CODEC_KIND_SUBSCRIBE_ACK;
        print_u64(is_sub ? "subscription_id" : "nonce", v);
        return 0;
    }
    case CODEC_KIND_GAP: {
        struct codec_gap_in g;
        if ((r = codec_gap_decode(b, n, &g, err)) < 0)
            return decode_failed("gap", r, err);
        print_i64("campaign_id", g.campaign_id);
        print_u64("first_sequence", g.first_sequence);
        print_u64("last_sequence", g.last_sequence);
        print_u64("dropped", g.dropped);
        print_str("reason", g.reason);
        return 0;
    }
    case CODEC_KIND_ERROR: {
        struct codec_error_in e;
        if ((r = codec_error_decode(b, n, &e, err)) < 0)
            return decode_failed("error", r, err);
        print_str("code", e.code);
        print_str("message", e.message);
        return 0;
    }
    case CODEC_KIND_WELCOME: {
        struct codec_welcome_in w;
        if ((r = codec_welcome_decode(b, n, &w, err)) < 0)
            return decode_failed("welcome", r, err);
        print_u64("protocol_version", w.protocol_version);
        print_str("server_version", w.server_version);
        print_u64("shard_count", w.shard_count);
        print_u64("frame_bytes_max", w.frame_bytes_max);
        print_u64("connection_id", w.connection_id);
        print_u64("shard_id", w.shard_id);
        return 0;
    }
    default:
        print_u64("body_len", env->body.len);
        return 0;
    }
}

static int cmd_decode_frame(int argc, char **argv)
{
    if (argc != 1)
        return usage();
    uint8_t *buf;
    size_t len;
    int r = read_file(argv[0], &buf, &len);
    if (r < 0) {
        fprintf(stderr, "golden_tool: %s: %s\n", argv[0], strerror(-r));
        return 1;
    }
    struct codec_envelope env;
    char err[CODEC_ERR_BYTES] = "";
    r = codec_envelope_decode(buf, len, &env, err);
    if (r < 0) {
        r = decode_failed("envelope", r, err);
    } else {
        printf("kind=%s\n", env.kind == CODEC_KIND_NONE ? "none" : codec_kind_name(env.kind));
        print_u64("correlation", env.correlation);
        r = print_body(&env);
    }
    free(buf);
    return r;
}

/* ---- encoding ---------------------------------------------------------------------------- */

/* Checks the length prefix of a frame of n bytes and writes the rest to stdout. */
static int emit_frame(const uint8_t *frame, long n)
{
    if (n < 4) {
        fprintf(stderr, "golden_tool: encoder failed: %ld\n", n);
        return 1;
    }
    uint32_t prefix = wire_get_be32(frame);
    if ((long)prefix != n - 4) {
        fprintf(stderr, "golden_tool: length prefix %" PRIu32 ", but %ld bytes follow\n", prefix,
                n - 4);
        return 1;
    }
    if (fwrite(frame + 4, 1, (size_t)n - 4, stdout) != (size_t)n - 4 || fflush(stdout) != 0) {
        fprintf(stderr, "golden_tool: write failed\n");
        return 1;
    }
    return 0;
}

static struct codec_slice slice_str(const char *s)
{
    struct codec_slice sl = {(const uint8_t *)s, (uint32_t)strlen(s)};
    return sl;
}

static const char *opt_str(const char *s)
{
    return strcmp(s, "-") == 0 ? NULL : s;
}

/* A delivered event built from a protoc-encoded emit: routing fields copied, metadata and
 * payload spliced. */
static int cmd_encode_event(int argc, char **argv)
{
    uint64_t sequence;
    int64_t ts;
    if (argc != 3 || !parse_u64(argv[1], &sequence) || !parse_i64(argv[2], &ts))
        return usage();
    uint8_t *buf;
    size_t len;
    int r = read_file(argv[0], &buf, &len);
    if (r < 0) {
        fprintf(stderr, "golden_tool: %s: %s\n", argv[0], strerror(-r));
        return 1;
    }
    struct codec_envelope env;
    struct codec_emit e;
    char err[CODEC_ERR_BYTES] = "";
    if ((r = codec_envelope_decode(buf, len, &env, err)) < 0 || env.kind != CODEC_KIND_EMIT ||
        (r = codec_emit_decode(env.body.ptr, env.body.len, &e, err)) < 0) {
        fprintf(stderr, "golden_tool: %s is not a valid emit frame: %s\n", argv[0], err);
        free(buf);
        return 1;
    }
    struct codec_event_out ev = {
        .kind = CODEC_KIND_EVENT,
        .success = true,
        .event_id = e.event_id,
        .event_type = e.event_type,
        .entity_id = e.entity_id,
        .campaign_id = e.campaign_id,
        .metadata = e.metadata,
        .payload = e.payload,
        .has_metadata = e.has_metadata,
        .has_payload = e.has_payload,
        .sequence = sequence,
        .timestamp_unix_nanos = ts,
    };
    size_t size = codec_event_size(&ev);
    uint8_t *out = malloc(size);
    if (!out) {
        free(buf);
        return 1;
    }
    size_t written = codec_event_encode(&ev, out);
    r = written == size ? emit_frame(out, (long)written) : 1;
    if (written != size)
        fprintf(stderr, "golden_tool: event size %zu, written %zu\n", size, written);
    free(out);
    free(buf);
    return r;
}

static int cmd_encode_emit_ack(int argc, char **argv)
{
    uint64_t corr, sequence;
    int64_t campaign;
    if (argc != 6 || !parse_u64(argv[0], &corr) || !parse_i64(argv[3], &campaign) ||
        !parse_u64(argv[4], &sequence))
        return usage();
    struct codec_event_out ev = {
        .correlation = corr,
        .kind = CODEC_KIND_EMIT_ACK,
        .success = true,
        .event_id = slice_str(argv[1]),
        .event_type = slice_str(argv[2]),
        .campaign_id = campaign,
        .sequence = sequence,
        .message = slice_str(argv[5]),
    };
    static uint8_t out[GOLDEN_OUT_BYTES_MAX];
    if (codec_event_size(&ev) > sizeof(out))
        return 1;
    return emit_frame(out, (long)codec_event_encode(&ev, out));
}

static int cmd_encode_emit(int argc, char **argv)
{
    uint64_t corr;
    int64_t campaign;
    if (argc != 7 || !parse_u64(argv[0], &corr) || !parse_i64(argv[4], &campaign))
        return usage();
    uint8_t md[CODEC_CONTROL_BYTES_MAX];
    int mdl = codec_metadata_build(md, sizeof(md), opt_str(argv[5]), opt_str(argv[6]));
    if (mdl < 0)
        return 1;
    struct codec_emit_in e = {
        .correlation = corr,
        .event_id = slice_str(argv[1]),
        .event_type = slice_str(argv[2]),
        .entity_id = slice_str(argv[3]),
        .campaign_id = campaign,
        .metadata = {md, (uint32_t)mdl},
        .has_metadata = mdl > 0,
    };
    static uint8_t out[GOLDEN_OUT_BYTES_MAX];
    if (codec_emit_size(&e) > sizeof(out))
        return 1;
    return emit_frame(out, (long)codec_emit_encode(&e, out));
}

/* An error whose message is COUNT copies of UNIT: long enough to be truncated. */
static int cmd_encode_error_repeat(int argc, char **argv)
{
    uint64_t corr;
    uint32_t count;
    if (argc != 4 || !parse_u64(argv[0], &corr) || !parse_u32(argv[3], &count))
        return usage();
    size_t unit = strlen(argv[2]);
    if (unit == 0 || count > GOLDEN_OUT_BYTES_MAX / unit)
        return usage();
    char *message = malloc(unit * count + 1);
    if (!message)
        return 1;
    for (uint32_t i = 0; i < count; i++)
        memcpy(message + i * unit, argv[2], unit);
    message[unit * count] = '\0';
    uint8_t out[CODEC_CONTROL_BYTES_MAX];
    int r = emit_frame(out, codec_error_encode(out, sizeof(out), corr, argv[1], message));
    free(message);
    return r;
}

static int cmd_encode_control(const char *cmd, int argc, char **argv)
{
    static uint8_t out[GOLDEN_OUT_BYTES_MAX];
    uint64_t corr = 0, a = 0, b = 0, c = 0;
    uint32_t u1, u2, u3;
    int64_t i1;
    if (argc < 1 || (strcmp(cmd, "encode-gap") != 0 && !parse_u64(argv[0], &corr)))
        return usage();

    if (strcmp(cmd, "encode-welcome") == 0) {
        if (argc != 5 || !parse_u32(argv[1], &u1) || !parse_u32(argv[2], &u2) ||
            !parse_u64(argv[3], &a) || !parse_u32(argv[4], &u3))
            return usage();
        return emit_frame(out,
                          codec_welcome_encode(out, CODEC_CONTROL_BYTES_MAX, corr, u1, u2, a, u3));
    }
    if (strcmp(cmd, "encode-error") == 0) {
        if (argc != 3)
            return usage();
        return emit_frame(out,
                          codec_error_encode(out, CODEC_CONTROL_BYTES_MAX, corr, argv[1], argv[2]));
    }
    if (strcmp(cmd, "encode-gap") == 0) {
        if (argc != 5 || !parse_i64(argv[0], &i1) || !parse_u64(argv[1], &a) ||
            !parse_u64(argv[2], &b) || !parse_u64(argv[3], &c))
            return usage();
        return emit_frame(out,
                          codec_gap_encode(out, CODEC_CONTROL_BYTES_MAX, i1, a, b, c, argv[4]));
    }
    if (strcmp(cmd, "encode-subscribe-ack") == 0 || strcmp(cmd, "encode-unsubscribe") == 0 ||
        strcmp(cmd, "encode-ping") == 0 || strcmp(cmd, "encode-pong") == 0) {
        if (argc != 2 || !parse_u64(argv[1], &a))
            return usage();
        int n;
        if (strcmp(cmd, "encode-subscribe-ack") == 0)
            n = codec_subscribe_ack_encode(out, CODEC_CONTROL_BYTES_MAX, corr, a);
        else if (strcmp(cmd, "encode-unsubscribe") == 0)
            n = codec_unsubscribe_encode(out, CODEC_CONTROL_BYTES_MAX, corr, a);
        else if (strcmp(cmd, "encode-ping") == 0)
            n = codec_ping_encode(out, CODEC_CONTROL_BYTES_MAX, corr, a);
        else
            n = codec_pong_encode(out, CODEC_CONTROL_BYTES_MAX, corr, a);
        return emit_frame(out, n);
    }
    if (strcmp(cmd, "encode-hello") == 0) {
        if (argc != 4 || !parse_u32(argv[1], &u1))
            return usage();
        return emit_frame(out, codec_hello_encode(out, CODEC_CONTROL_BYTES_MAX, corr, u1,
                                                  opt_str(argv[2]), opt_str(argv[3])));
    }
    if (strcmp(cmd, "encode-stats") == 0) {
        if (argc != 1)
            return usage();
        return emit_frame(out, codec_stats_encode(out, CODEC_CONTROL_BYTES_MAX, corr));
    }
    if (strcmp(cmd, "encode-subscribe") == 0) {
        if (argc < 3 || !parse_i64(argv[1], &i1))
            return usage();
        return emit_frame(out, codec_subscribe_encode(out, sizeof(out), corr, i1,
                                                      (const char *const *)(argv + 3),
                                                      (uint32_t)(argc - 3), opt_str(argv[2])));
    }
    return usage();
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    if (strcmp(cmd, "decode-frame") == 0)
        return cmd_decode_frame(argc - 2, argv + 2);
    if (strcmp(cmd, "encode-event") == 0)
        return cmd_encode_event(argc - 2, argv + 2);
    if (strcmp(cmd, "encode-emit-ack") == 0)
        return cmd_encode_emit_ack(argc - 2, argv + 2);
    if (strcmp(cmd, "encode-emit") == 0)
        return cmd_encode_emit(argc - 2, argv + 2);
    if (strcmp(cmd, "encode-error-repeat") == 0)
        return cmd_encode_error_repeat(argc - 2, argv + 2);
    if (strncmp(cmd, "encode-", 7) == 0)
        return cmd_encode_control(cmd, argc - 2, argv + 2);
    return usage();
}
