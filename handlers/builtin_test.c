// SPDX-License-Identifier: Apache-2.0
//
// Built-in handlers for tests and demos, registered only with `nexusd --test-handlers`:
//   test:echo          plain: success with the request's payload
//   test:fail          plain: failed with code test_failure
//   test:stream_ticks  stream: a stream event every data.interval_ms (default 50 ms) with
//                      data {n}; success after data.count events if count > 0, else runs until
//                      cancelled or timed out
// They run on the campaign's owning shard, like every handler.
#include <stdint.h>
#include <stdlib.h>

#include "codec/structpb.h"
#include "handlers/provider.h"

static void echo_start(struct pv_request *r)
{
    const uint8_t *pl;
    uint32_t len;
    provider_payload(r, &pl, &len);
    provider_finish(r, EVTYPE_SUCCESS, len ? pl : NULL, len, NULL, NULL);
}

static void fail_start(struct pv_request *r)
{
    provider_finish(r, EVTYPE_FAILED, NULL, 0, "test_failure", "test:fail always fails");
}

struct ticks {
    uint64_t n, count;
};

static double data_number(struct pv_request *r, const char *key, double def)
{
    const uint8_t *pl;
    uint32_t len;
    struct structpb_value v;
    provider_payload(r, &pl, &len);
    if (len && structpb_payload_get(pl, len, key, &v) == 1 && v.kind == STRUCTPB_NUMBER &&
        v.number >= 0)
        return v.number;
    return def;
}

static void ticks_start(struct pv_request *r)
{
    struct ticks *t = calloc(1, sizeof(*t));
    if (!t) {
        provider_finish(r, EVTYPE_FAILED, NULL, 0, "internal", "out of memory");
        return;
    }
    t->count = (uint64_t)data_number(r, "count", 0);
    *provider_state(r) = t;
    double ms = data_number(r, "interval_ms", 50);
    provider_set_tick(r, ms < 1 ? 1 : ms > 60000 ? 60000 : (uint32_t)ms);
}

static void ticks_tick(struct pv_request *r, int64_t now_ns)
{
    (void)now_ns;
    struct ticks *t = *provider_state(r);
    t->n++;
    uint8_t buf[64];
    struct structpb_writer w;
    const uint8_t *pl;
    structpb_begin(&w, buf, sizeof(buf));
    structpb_add_number(&w, "n", (double)t->n);
    int len = structpb_finish(&w, &pl);
    provider_stream(r, len > 0 ? pl : NULL, len > 0 ? (uint32_t)len : 0);
    if (t->count && t->n >= t->count)
        provider_finish(r, EVTYPE_SUCCESS, NULL, 0, NULL, NULL);
}

static void ticks_stop(struct pv_request *r)
{
    free(*provider_state(r));
    *provider_state(r) = NULL;
}

const struct handler_row provider_test_rows[] = {
    {.action = "test:echo", .streaming = false, .start = echo_start},
    {.action = "test:fail", .streaming = false, .start = fail_start},
    {.action = "test:stream_ticks",
     .streaming = true,
     .start = ticks_start,
     .tick = ticks_tick,
     .stop = ticks_stop},
};
const size_t provider_test_row_count = sizeof(provider_test_rows) / sizeof(provider_test_rows[0]);
