// SPDX-License-Identifier: Apache-2.0
//
// TLS for client connections (--tls-cert, --tls-key, --tls-client-ca): a throwaway CA made
// with the openssl command at test time; pub/sub over TLS; wrong trust, plain TCP and missing
// client certificates refused; stalled handshakes do not hold up the shard; a burst of 1000
// events of mixed sizes (some spanning several TLS records) arrives whole and in order in both
// directions; bad certificate files stop nexusd at start-up; with --accounts, a client
// certificate logs in (without a token) as the account whose `cert` names its CN, and only as
// that account.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>

#include "auth_util.h"
#include "harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define TT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TT_ASAN 1
#endif
#endif
#ifndef TT_ASAN
#define TT_ASAN 0
#endif

static char dir[256];
static char ca_crt[300], other_ca_crt[300], srv_crt[300], srv_key[300], cli_crt[300], cli_key[300],
    other_cli_crt[300], other_cli_key[300], nobody_crt[300], nobody_key[300];

/* ---- the throwaway PKI -------------------------------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r != 0)
        fprintf(stderr, "command failed (%d): %s\n", r, cmd);
    return r;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A CA (self-signed) named cn, into dir/name.{key,crt}. */
static int make_ca(const char *name, const char *cn)
{
    return sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-keyout %s.key -out %s.crt -days 2 -subj /CN=%s 2>/dev/null",
              dir, name, name, cn);
}

/* A certificate for cn signed by the CA `ca`, with the extensions in dir/ext (may be ""). */
static int make_cert(const char *name, const char *cn, const char *ca, const char *ext)
{
    char extp[300];
    snprintf(extp, sizeof(extp), "%s/%s.ext", dir, name);
    write_file(extp, ext);
    return sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-keyout %s.key -out %s.csr -subj /CN=%s 2>/dev/null && openssl x509 -req -in %s.csr "
              "-CA %s.crt -CAkey %s.key -CAcreateserial -out %s.crt -days 2 -extfile %s.ext "
              "2>/dev/null",
              dir, name, name, cn, name, ca, ca, name, name);
}

static int setup_pki(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/nexus-tls-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    if (make_ca("ca", "nexus-test-ca") || make_ca("otherca", "unrelated-ca") ||
        make_cert("server", "localhost", "ca",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                  "extendedKeyUsage=serverAuth\n") ||
        make_cert("alice", "alice", "ca", "extendedKeyUsage=clientAuth\n") ||
        make_cert("mallory", "mallory", "otherca", "extendedKeyUsage=clientAuth\n") ||
        make_cert("nobody", "nobody", "ca", "extendedKeyUsage=clientAuth\n"))
        return -1;
    snprintf(ca_crt, sizeof(ca_crt), "%s/ca.crt", dir);
    snprintf(other_ca_crt, sizeof(other_ca_crt), "%s/otherca.crt", dir);
    snprintf(srv_crt, sizeof(srv_crt), "%s/server.crt", dir);
    snprintf(srv_key, sizeof(srv_key), "%s/server.key", dir);
    snprintf(cli_crt, sizeof(cli_crt), "%s/alice.crt", dir);
    snprintf(cli_key, sizeof(cli_key), "%s/alice.key", dir);
    snprintf(other_cli_crt, sizeof(other_cli_crt), "%s/mallory.crt", dir);
    snprintf(other_cli_key, sizeof(other_cli_key), "%s/mallory.key", dir);
    snprintf(nobody_crt, sizeof(nobody_crt), "%s/nobody.crt", dir);
    snprintf(nobody_key, sizeof(nobody_key), "%s/nobody.key", dir);
    return 0;
}

static int teardown_pki(void **state)
{
    (void)state;
    if (dir[0])
        sh("rm -rf %s", dir);
    return 0;
}

/* ---- clients -------------------------------------------------------------------------------- */

static struct nexus_tls_opts good_opts(void)
{
    struct nexus_tls_opts o = {.ca_file = ca_crt, .server_name = "127.0.0.1"};
    return o;
}

/* Connects and starts TLS. NULL (err filled) if either fails. */
static struct nexus_client *tls_connect(const struct broker_proc *b, const struct nexus_tls_opts *o,
                                        char *err, size_t cap)
{
    struct nexus_client *c = nexus_connect("127.0.0.1", b->port, err, cap);
    if (!c)
        return NULL;
    if (nexus_start_tls(c, o, err, cap) < 0) {
        nexus_close(c);
        return NULL;
    }
    return c;
}

/* TLS with the good options, then hello. */
static struct nexus_client *tls_client(const struct broker_proc *b)
{
    char err[512];
    struct nexus_tls_opts o = good_opts();
    struct nexus_client *c = tls_connect(b, &o, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    if (nexus_hello_sync(c, NULL, "tls-test", NULL, 5000) != 1) {
        nexus_close(c);
        return NULL;
    }
    return c;
}

static struct broker_proc start_tls(uint32_t shards, const char *extra1, const char *extra2)
{
    const char *flags[] = {"--tls-cert", srv_crt, "--tls-key", srv_key, extra1, extra2, NULL};
    return h_track(h_start_flags(shards, 0, flags));
}

/* A common.Payload whose data Struct is {"k": text}, text n bytes of c. Returns its length. */
static size_t make_payload(uint8_t *out, char c, size_t n)
{
    uint8_t *text = malloc(n), *value = malloc(n + 16), *entry = malloc(n + 32),
            *st = malloc(n + 48);
    assert_non_null(text && value && entry && st);
    memset(text, c, n);
    size_t vl = (size_t)(wire_put_len_field(value, 3, text, n) - value);
    uint8_t *p = wire_put_len_field(entry, 1, "k", 1);
    size_t el = (size_t)(wire_put_len_field(p, 2, value, vl) - entry);
    size_t sl = (size_t)(wire_put_len_field(st, 1, entry, el) - st);
    size_t len = (size_t)(wire_put_len_field(out, 1, st, sl) - out);
    free(text);
    free(value);
    free(entry);
    free(st);
    return len;
}

/* ---- (a) pub/sub round trip ----------------------------------------------------------------- */

static void test_tls_pubsub(void **state)
{
    (void)state;
    struct broker_proc b = start_tls(2, NULL, NULL);
    struct nexus_client *sub = tls_client(&b);
    struct nexus_client *pub = tls_client(&b);
    assert_non_null(sub);
    assert_non_null(pub);
    const char *pat[] = {"order:*:v1:*"};
    uint64_t sid = 0;
    assert_int_equal(nexus_subscribe_sync(sub, 42, pat, 1, NULL, &sid, NULL, 5000), 1);
    uint8_t payload[256];
    size_t plen = make_payload(payload, 'z', 100);
    struct codec_emit_in e;
    nexus_emit_init(&e, "order:placed:v1:success", 42, "ev-tls-1", payload, plen);
    struct nexus_frame ack;
    assert_int_equal(nexus_emit_sync(pub, &e, &ack, 5000), 1);
    assert_true(ack.u.event.success);
    struct nexus_frame f;
    assert_int_equal(nexus_recv(sub, &f, 5000), 1);
    assert_int_equal(f.kind, CODEC_KIND_EVENT);
    assert_true(h_slice_eq(f.u.event.event_type, "order:placed:v1:success"));
    assert_true(h_slice_eq(f.u.event.event_id, "ev-tls-1"));
    assert_int_equal(f.u.event.campaign_id, 42);
    assert_int_equal(f.u.event.payload.len, plen);
    assert_memory_equal(f.u.event.payload.ptr, payload, plen);
    assert_int_equal(nexus_recv(sub, &f, 200), 0);
    /* The name check: the certificate is for 127.0.0.1 and localhost, not for another name. */
    char err[512];
    struct nexus_tls_opts o = good_opts();
    o.server_name = "nexus.example.com";
    assert_null(tls_connect(&b, &o, err, sizeof(err)));
    assert_non_null(strstr(err, "not trusted"));
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- (b) wrong trust, plain TCP ------------------------------------------------------------- */

/* Waits for the broker to close fd (end of file or reset), reading whatever comes first. */
static bool closed_within(int fd, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    uint8_t buf[4096];
    while (h_now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            return true;
    }
    return false;
}

static int raw_connect(uint16_t port)
{
    char err[256];
    int fd = nexus_tcp_connect("127.0.0.1", port, err, sizeof(err));
    assert_true(fd >= 0);
    return fd;
}

static void test_tls_refusals(void **state)
{
    (void)state;
    struct broker_proc b = start_tls(1, NULL, NULL);
    char err[512];
    struct nexus_tls_opts o = good_opts();
    o.ca_file = other_ca_crt;
    assert_null(tls_connect(&b, &o, err, sizeof(err)));
    assert_non_null(strstr(err, "not trusted"));

    /* Plain TCP: a hello in clear is not a TLS record; the broker closes the connection. */
    int fd = raw_connect(b.port);
    uint8_t buf[CODEC_CONTROL_BYTES_MAX];
    int n = codec_hello_encode(buf, sizeof(buf), 1, 1, NULL, "plain");
    assert_true(n > 0);
    assert_int_equal(send(fd, buf, (size_t)n, MSG_NOSIGNAL), n);
    assert_true(closed_within(fd, 5000));
    close(fd);
    /* The client library over plain TCP: no welcome. */
    struct nexus_client *plain = nexus_connect("127.0.0.1", b.port, err, sizeof(err));
    assert_non_null(plain);
    assert_true(nexus_hello_sync(plain, NULL, "plain", NULL, 5000) != 1);
    nexus_close(plain);

    /* insecure_skip_verify accepts the certificate; the broker still works after all that. */
    o.ca_file = NULL;
    o.insecure_skip_verify = true;
    struct nexus_client *c = tls_connect(&b, &o, err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(nexus_hello_sync(c, NULL, "skip", NULL, 5000), 1);
    nexus_close(c);
    c = tls_client(&b);
    assert_non_null(c);
    assert_int_equal(h_ping(c, 5000), 1);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- (c) client certificates ---------------------------------------------------------------- */

/* A TLS client with the given certificate (NULL: none): 1 when its hello is welcomed. */
static int hello_with_cert(const struct broker_proc *b, const char *crt, const char *key)
{
    char err[512];
    struct nexus_tls_opts o = good_opts();
    o.cert_file = crt;
    o.key_file = key;
    struct nexus_client *c = tls_connect(b, &o, err, sizeof(err));
    if (!c)
        return -1; /* refused during the handshake (TLS 1.2, or the client noticed) */
    /* TLS 1.3: the broker checks the certificate after the client's handshake is done; the
     * refusal shows as the first receive failing. */
    int r = nexus_hello_sync(c, NULL, "cert", NULL, 5000);
    nexus_close(c);
    return r;
}

static void test_tls_client_certs(void **state)
{
    (void)state;
    /* The broker's stderr goes to a file, to see the certificate's name it logs. */
    char logp[300];
    snprintf(logp, sizeof(logp), "%s/broker.log", dir);
    fflush(stderr);
    int saved = dup(2);
    int lf = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(saved >= 0 && lf >= 0);
    dup2(lf, 2);
    close(lf);
    const char *flags[] = {"--tls-cert", srv_crt,       "--tls-key", srv_key, "--tls-client-ca",
                           ca_crt,       "--log-level", "debug",     NULL};
    struct broker_proc b = h_track(h_start_flags(1, 0, flags));
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    assert_int_equal(hello_with_cert(&b, cli_crt, cli_key), 1);
    assert_true(hello_with_cert(&b, NULL, NULL) != 1);
    assert_true(hello_with_cert(&b, other_cli_crt, other_cli_key) != 1);
    assert_int_equal(hello_with_cert(&b, cli_crt, cli_key), 1);
    assert_int_equal(h_stop(&b), 0);

    FILE *f = fopen(logp, "r");
    assert_non_null(f);
    static char log[1 << 20];
    size_t n = fread(log, 1, sizeof(log) - 1, f);
    fclose(f);
    log[n] = 0;
    assert_non_null(strstr(log, "TLS established, client certificate alice"));
    assert_null(strstr(log, "client certificate mallory"));
    assert_non_null(strstr(log, "kernel TLS offload: "));
    assert_non_null(strstr(log, "TLS handshake failed"));
}

/* ---- (d) stalled handshakes ----------------------------------------------------------------- */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Connect, TLS handshake, hello, one acknowledged emit, close: µs for `rounds` of them. */
static int64_t round_trips_us(const struct broker_proc *b, int rounds)
{
    int64_t t0 = now_us();
    for (int i = 0; i < rounds; i++) {
        struct nexus_client *c = tls_client(b);
        assert_non_null(c);
        struct codec_emit_in e;
        nexus_emit_init(&e, "order:placed:v1:success", 7, NULL, NULL, 0);
        assert_int_equal(nexus_emit_sync(c, &e, NULL, 5000), 1);
        nexus_close(c);
    }
    return now_us() - t0;
}

static void test_tls_stalled_handshakes(void **state)
{
    (void)state;
    /* Stalled handshakes are closed by the hello deadline; 3 s leaves the measurement time. */
    const char *flags[] = {
        "--tls-cert",        srv_crt, "--tls-key", srv_key, "--hello-timeout-ms", "3000",
        "--auth-timeout-ms", "3000",  NULL};
    struct broker_proc b = h_track(h_start_flags(1, 0, flags));
    round_trips_us(&b, 3); /* warm up */
    int64_t base = round_trips_us(&b, 10);

    enum { STALLED = 20 };
    int fds[STALLED];
    /* Half a ClientHello: a record header announcing 512 bytes, the start of the message. */
    static const uint8_t half[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc,
                                   0x03, 0x03, 1,    2,    3,    4,    5,    6,    7,
                                   8,    9,    10,   11,   12,   13,   14,   15,   16};
    for (int i = 0; i < STALLED; i++) {
        fds[i] = raw_connect(b.port);
        if (i % 2)
            assert_int_equal(send(fds[i], half, sizeof(half), MSG_NOSIGNAL), (ssize_t)sizeof(half));
    }
    usleep(50000);
    int64_t stalled = round_trips_us(&b, 10);
    print_message("10 TLS connect+hello+emit round trips: %lld us alone, %lld us with %d stalled "
                  "handshakes on the same shard\n",
                  (long long)base, (long long)stalled, STALLED);
    int64_t slack_us = TT_ASAN ? 400000 : 100000;
    assert_true(stalled < 5 * base + slack_us);
    /* Every stalled handshake is still pending until the deadline closes it. */
    for (int i = 0; i < STALLED; i++) {
        assert_true(closed_within(fds[i], 8000));
        close(fds[i]);
    }
    struct nexus_client *c = tls_client(&b);
    assert_non_null(c);
    assert_int_equal(h_ping(c, 5000), 1);
    nexus_close(c);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- (e) a burst both ways ------------------------------------------------------------------ */

enum { BURST = 1000 };

/* Event i's payload text: mostly small, every 100th spans several TLS records. */
static size_t burst_text_len(int i)
{
    return i % 100 == 99 ? 40000 : 16 + (size_t)(i * 37 % 3000);
}

static void test_tls_burst(void **state)
{
    (void)state;
    struct broker_proc b = start_tls(2, NULL, NULL);
    struct nexus_client *sub = tls_client(&b);
    struct nexus_client *pub = tls_client(&b);
    assert_non_null(sub);
    assert_non_null(pub);
    /* A small receive window: the broker's sends to sub back up (and may come back short). */
    int small = 16384;
    assert_int_equal(setsockopt(nexus_fd(sub), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    const char *pat[] = {"burst:*:v1:*"};
    assert_int_equal(nexus_subscribe_sync(sub, 9, pat, 1, NULL, NULL, NULL, 5000), 1);
    uint8_t *payload = malloc(40100);
    assert_non_null(payload);
    uint64_t corr0 = 0;
    for (int i = 0; i < BURST; i++) {
        size_t plen = make_payload(payload, (char)('a' + i % 26), burst_text_len(i));
        struct codec_emit_in e;
        char id[32];
        snprintf(id, sizeof(id), "burst-%d", i);
        nexus_emit_init(&e, "burst:sent:v1:success", 9, id, payload, plen);
        e.correlation = nexus_next_correlation(pub);
        if (i == 0)
            corr0 = e.correlation;
        assert_int_equal(nexus_send_emit(pub, &e), 0);
    }
    assert_int_equal(nexus_flush(pub), 0); /* ~2.3 MB in one go */
    usleep(200000);                        /* let sub's queue and socket fill up */
    for (int i = 0; i < BURST; i++) {
        struct nexus_frame f;
        assert_int_equal(nexus_recv(sub, &f, 10000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EVENT);
        assert_int_equal(f.u.event.sequence, (uint64_t)i + 1);
        char id[32];
        snprintf(id, sizeof(id), "burst-%d", i);
        assert_true(h_slice_eq(f.u.event.event_id, id));
        size_t plen = make_payload(payload, (char)('a' + i % 26), burst_text_len(i));
        assert_int_equal(f.u.event.payload.len, plen);
        assert_memory_equal(f.u.event.payload.ptr, payload, plen);
    }
    for (int i = 0; i < BURST; i++) {
        struct nexus_frame f;
        assert_int_equal(nexus_recv(pub, &f, 10000), 1);
        assert_int_equal(f.kind, CODEC_KIND_EMIT_ACK);
        assert_int_equal(f.correlation, corr0 + (uint64_t)i);
        assert_int_equal(f.u.event.sequence, (uint64_t)i + 1);
    }
    struct nexus_frame f;
    assert_int_equal(nexus_recv(sub, &f, 200), 0);
    free(payload);
    nexus_close(sub);
    nexus_close(pub);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- (f) certificate logins with --accounts ------------------------------------------------- */

#define TOK_BOB "bob-tls-token-3e91d07a52c8"

/* A TLS client with the certificate crt/key (NULL: none) whose hello names user with token
 * (either may be NULL). Returns nexus_hello_user_sync's result (1: welcome; -EPROTO: *f is the
 * error); *out receives the client, or NULL when TLS itself failed (r is then -1). */
static int cert_hello(const struct broker_proc *b, const char *crt, const char *key,
                      const char *user, const char *token, struct nexus_client **out,
                      struct nexus_frame *f)
{
    char err[512];
    struct nexus_tls_opts o = good_opts();
    o.cert_file = crt;
    o.key_file = key;
    *out = tls_connect(b, &o, err, sizeof(err));
    if (!*out) {
        fprintf(stderr, "TLS with %s: %s\n", crt ? crt : "(no certificate)", err);
        return -1;
    }
    return nexus_hello_user_sync(*out, user, token, "tls-cert-test", f, PV_T);
}

/* Must be welcomed; returns the client. */
static struct nexus_client *cert_login(const struct broker_proc *b, const char *crt,
                                       const char *key, const char *user, const char *token,
                                       int line)
{
    struct nexus_client *c;
    struct nexus_frame f;
    int r = cert_hello(b, crt, key, user, token, &c, &f);
    if (r != 1)
        fail_msg("line %d: login with %s as %s (%s token): r=%d %.*s: %.*s", line, crt,
                 user ? user : "(no user)", token ? "a" : "no", r,
                 r == -EPROTO ? (int)f.u.error.code.len : 0,
                 r == -EPROTO ? (const char *)f.u.error.code.ptr : "",
                 r == -EPROTO ? (int)f.u.error.message.len : 0,
                 r == -EPROTO ? (const char *)f.u.error.message.ptr : "");
    assert_int_equal(f.kind, CODEC_KIND_WELCOME);
    return c;
}

/* Must be refused with error{unauthorized}, then closed. */
static void cert_refused(const struct broker_proc *b, const char *crt, const char *key,
                         const char *user, const char *token, int line)
{
    struct nexus_client *c;
    struct nexus_frame f;
    int r = cert_hello(b, crt, key, user, token, &c, &f);
    if (r != -EPROTO || f.kind != CODEC_KIND_ERROR)
        fail_msg("line %d: hello with %s as %s (%s token): r=%d kind %u, expected "
                 "error{unauthorized}",
                 line, crt, user ? user : "(no user)", token ? "a" : "no", r,
                 r == 1 || r == -EPROTO ? f.kind : 0u);
    if (!h_slice_eq(f.u.error.code, "unauthorized"))
        fail_msg("line %d: hello with %s as %s: error %.*s (%.*s), expected unauthorized", line,
                 crt, user ? user : "(no user)", (int)f.u.error.code.len,
                 (const char *)f.u.error.code.ptr, (int)f.u.error.message.len,
                 (const char *)f.u.error.message.ptr);
    hx_expect_closed(c, PV_T);
    nexus_close(c);
}

/* Emits type into campaign 77 as c (no user id) with event id `id`; sub must receive it
 * stamped with user id `uid`. */
static void emit_stamped(struct nexus_client *c, struct nexus_client *sub, const char *id,
                         const char *uid)
{
    PV_EMIT_OK(c, "order:placed:v1:success", 77, id, NULL, NULL, 0);
    struct pv_ev e;
    au_expect_id(sub, id, &e);
    assert_string_equal(e.type, "order:placed:v1:success");
    char got[160];
    assert_string_equal(au_md_user(e.md, e.md_len, got, sizeof(got)), uid);
}

/* --tls-client-ca and --accounts: alice logs in by her certificate (CN alice), no token;
 * bob by his token (his certificate's CN, nobody, names no account).
 *  1. alice's certificate, a hello without token naming no user or "alice": welcomed; her
 *     emits without a user id reach bob stamped u-alice.
 *  2. alice's certificate, a hello naming bob without a token: unauthorized (a certificate
 *     logs in as its own account only).
 *  3. the nobody certificate, user bob and his token: welcomed; his emits stamped "bob".
 *  4. the nobody certificate without a token (no user, user nobody, user alice): unauthorized;
 *     with bob's name and a wrong token too. */
static void test_cert_login(void **state)
{
    (void)state;
    char hash[160], acc[300], text[1024];
    au_hash(TOK_BOB, hash, sizeof(hash));
    snprintf(acc, sizeof(acc), "%s/accounts", dir);
    snprintf(text, sizeof(text),
             "user alice\n"
             "  cert alice          # the CN of the client certificate the test's CA signs\n"
             "  id u-alice\n"
             "  publish * *\n"
             "  subscribe * *\n"
             "user bob\n"
             "  token %s\n"
             "  publish * *\n"
             "  subscribe * *\n",
             hash);
    au_write(acc, text);
    const char *flags[] = {"--tls-cert", srv_crt,      "--tls-key", srv_key, "--tls-client-ca",
                           ca_crt,       "--accounts", acc,         NULL};
    struct broker_proc b = h_track(h_start_flags(2, 0, flags));

    /* 3. bob: the nobody certificate, his name and his token. He is the subscriber. */
    struct nexus_client *bob = cert_login(&b, nobody_crt, nobody_key, "bob", TOK_BOB, __LINE__);
    const char *pat[] = {"order:*:*:*"};
    assert_int_equal(nexus_subscribe_sync(bob, 77, pat, 1, NULL, NULL, NULL, PV_T), 1);

    /* 1. alice by her certificate: no user, or her own name; no token either way. */
    struct nexus_client *a1 = cert_login(&b, cli_crt, cli_key, NULL, NULL, __LINE__);
    struct nexus_client *a2 = cert_login(&b, cli_crt, cli_key, "alice", NULL, __LINE__);
    emit_stamped(a1, bob, "cert-1", "u-alice");
    emit_stamped(a2, bob, "cert-2", "u-alice");
    /* Her identity is the broker's word: an emit carrying another user id is refused. */
    struct pv_ev e;
    int r = pv_emit(a1, "order:placed:v1:success", 77, "cert-forged", NULL, "bob", NULL, 0, &e);
    PV_EXPECT_ERROR(&e, r, "permission_denied");
    AU_QUIET(bob, "cert-forged");

    /* 2. her certificate does not make her bob. */
    cert_refused(&b, cli_crt, cli_key, "bob", NULL, __LINE__);

    /* bob's own emits carry his id (the user name, as his block has no `id`). */
    struct nexus_client *bob_pub = cert_login(&b, nobody_crt, nobody_key, "bob", TOK_BOB, __LINE__);
    emit_stamped(bob_pub, bob, "cert-3", "bob");

    /* 4. a certificate naming no account is no login: a token is needed. */
    cert_refused(&b, nobody_crt, nobody_key, NULL, NULL, __LINE__);
    cert_refused(&b, nobody_crt, nobody_key, "nobody", NULL, __LINE__);
    cert_refused(&b, nobody_crt, nobody_key, "alice", NULL, __LINE__);
    cert_refused(&b, nobody_crt, nobody_key, "bob", NULL, __LINE__);
    cert_refused(&b, nobody_crt, nobody_key, "bob", "bob-tls-token-000000000000", __LINE__);

    /* The logged-in connections are unaffected by the refusals. */
    assert_int_equal(h_ping(a1, PV_T), 1);
    assert_int_equal(h_ping(a2, PV_T), 1);
    emit_stamped(a1, bob, "cert-4", "u-alice");
    nexus_close(a1);
    nexus_close(a2);
    nexus_close(bob_pub);
    nexus_close(bob);
    assert_int_equal(h_stop(&b), 0);
}

/* ---- start-up ------------------------------------------------------------------------------- */

static void test_tls_bad_files(void **state)
{
    (void)state;
    const char *bin = getenv("NEXUSD");
    assert_non_null(bin);
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", h_free_port());
    struct h_child ch;
    const char *missing[] = {bin,         "--listen", listen, "--tls-cert", "/nonexistent.crt",
                             "--tls-key", srv_key,    NULL};
    assert_int_equal(h_run(&ch, missing, 10000), 1);
    assert_non_null(strstr(ch.err, "TLS: cannot load the certificate /nonexistent.crt"));
    h_child_free(&ch);
    const char *mismatch[] = {bin,     "--listen",  listen,  "--tls-cert",
                              srv_crt, "--tls-key", cli_key, NULL};
    assert_int_equal(h_run(&ch, mismatch, 10000), 1);
    assert_non_null(strstr(ch.err, "TLS: cannot load the private key"));
    assert_non_null(strstr(ch.err, "mismatch"));
    h_child_free(&ch);
    const char *badca[] = {bin,     "--listen",        listen,  "--tls-cert", srv_crt, "--tls-key",
                           srv_key, "--tls-client-ca", srv_key, NULL};
    assert_int_equal(h_run(&ch, badca, 10000), 1);
    assert_non_null(strstr(ch.err, "client CA"));
    h_child_free(&ch);
}

int main(void)
{
    if (system("openssl version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "tls_test: the openssl command is not installed; skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls_pubsub, h_teardown),
        cmocka_unit_test_teardown(test_tls_refusals, h_teardown),
        cmocka_unit_test_teardown(test_tls_client_certs, h_teardown),
        cmocka_unit_test_teardown(test_tls_stalled_handshakes, h_teardown),
        cmocka_unit_test_teardown(test_tls_burst, h_teardown),
        cmocka_unit_test_teardown(test_cert_login, h_teardown),
        cmocka_unit_test(test_tls_bad_files),
    };
    return cmocka_run_group_tests(tests, setup_pki, teardown_pki);
}
