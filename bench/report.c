// SPDX-License-Identifier: Apache-2.0
//
// The final report of nexus-bench, for people (text) and machines (one JSON object on a line,
// flat keys so that shell tools can pick fields), and the CPU readings it includes: the
// benchmark's own (getrusage) and, optionally, the broker's (/proc/PID/stat). Main thread.
#include "bench/bench.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

double bench_self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

double bench_proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name (field 2) may hold spaces and parentheses: fields resume after the
     * last ')'. utime and stime are fields 14 and 15. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stime) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (double)(ut + stime) / (double)(hz > 0 ? hz : 100);
}

static double per_s(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0;
}

static void workload_line(const struct bench_run *r, FILE *f)
{
    const struct bench_cfg *c = &r->cfg;
    char rate[48];
    if (c->rate)
        snprintf(rate, sizeof(rate), "%llu events/s", (unsigned long long)c->rate);
    else
        snprintf(rate, sizeof(rate), "max rate, window %u events", r->window_events);
    fprintf(f,
            "nexus-bench: %s, preset %s: %u publisher(s), %u subscriber(s), %u campaign(s), "
            "%u-byte payload (%s), %s ids, %s, %u thread(s)\n",
            bench_broker_name(c->broker), c->preset, c->publishers, c->subscribers, c->campaigns,
            r->pl.len, c->string_payload ? "one string" : "numbers",
            c->client_ids ? "client" : "broker", rate, c->threads);
}

void bench_report_text(const struct bench_run *r, const struct bench_result *res, FILE *f)
{
    const uint64_t *k = res->counters;
    workload_line(r, f);
    if (!res->ok) {
        fprintf(f,
                "\n  !!! DELIVERY CHECK FAILED: %s\n"
                "  !!! The rates below are not a result.\n\n",
                res->verdict);
    }
    double s = res->measured_s;
    fprintf(f, "  measured     %.2f s (after %.2f s warm-up)\n", s, r->cfg.warmup_s);
    fprintf(f, "  published    %12.0f events/s\n", per_s(res->published_measured, s));
    fprintf(f, "  delivered    %12.0f events/s   %.1f MB/s payload   %.1f MB/s on the wire\n",
            per_s(res->delivered_measured, s), per_s(res->payload_bytes_measured, s) / 1e6,
            per_s(res->wire_bytes_measured, s) / 1e6);
    const struct hist *h = res->hist;
    if (h->count)
        fprintf(f,
                "  latency      p50 %.1f us  p90 %.1f us  p99 %.1f us  p99.9 %.1f us  "
                "max %.1f us  (%llu samples%s)\n",
                (double)hist_quantile(h, 0.50) / 1e3, (double)hist_quantile(h, 0.90) / 1e3,
                (double)hist_quantile(h, 0.99) / 1e3, (double)hist_quantile(h, 0.999) / 1e3,
                (double)h->max_ns / 1e3, (unsigned long long)h->count,
                r->cfg.rate ? ", from scheduled send times" : ", max rate: includes queueing");
    if (r->cfg.rate)
        fprintf(f, "  schedule     worst send lag behind schedule %.1f us\n",
                (double)k[BC_SCHED_LAG_NS] / 1e3);
    fprintf(f, "  cpu          client %.0f%% of a core", s > 0 ? 100 * res->client_cpu_s / s : 0);
    if (res->broker_cpu_s >= 0)
        fprintf(f, ", broker %.0f%% of a core (%.0f delivered events per broker cpu-second)",
                s > 0 ? 100 * res->broker_cpu_s / s : 0,
                res->broker_cpu_s > 0 ? (double)res->delivered_measured / res->broker_cpu_s : 0);
    fprintf(f, "\n");
    fprintf(f,
            "  delivery     expected %llu, delivered %llu, lost %llu (gaps seen %llu), "
            "disorder/duplicates %llu, corrupt %llu",
            (unsigned long long)res->expected_total, (unsigned long long)res->delivered_total,
            (unsigned long long)res->lost, (unsigned long long)k[BC_LOST],
            (unsigned long long)k[BC_DISORDER], (unsigned long long)k[BC_CORRUPT]);
    if (r->cfg.broker == BENCH_NEXUS)
        fprintf(f, ", campaign sequence breaks %llu, gap notices %llu",
                (unsigned long long)k[BC_SEQ_GAPS], (unsigned long long)k[BC_GAP_DROPPED]);
    fprintf(f, ", broker errors %llu, disconnects %llu: %s\n",
            (unsigned long long)k[BC_BROKER_ERRORS], (unsigned long long)k[BC_DISCONNECTS],
            res->ok ? "OK" : "FAILED");
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

void bench_report_json(const struct bench_run *r, const struct bench_result *res, FILE *f)
{
    const struct bench_cfg *c = &r->cfg;
    const uint64_t *k = res->counters;
    const struct hist *h = res->hist;
    double s = res->measured_s;
    fprintf(f, "{\"broker\":\"%s\",\"preset\":", bench_broker_name(c->broker));
    json_str(f, c->preset);
    fprintf(f,
            ",\"publishers\":%u,\"subscribers\":%u,\"campaigns\":%u,\"payload_bytes\":%u,"
            "\"rate\":%llu,\"window\":%u,\"window_events\":%u,\"threads\":%u,\"warmup_s\":%.3f,"
            "\"measured_s\":%.3f,\"ids\":\"%s\",\"payload_kind\":\"%s\",",
            c->publishers, c->subscribers, c->campaigns, r->pl.len, (unsigned long long)c->rate,
            c->window, r->window_events, c->threads, c->warmup_s, s,
            c->client_ids ? "client" : "broker", c->string_payload ? "string" : "numbers");
    fprintf(f,
            "\"published_per_s\":%.1f,\"delivered_per_s\":%.1f,\"payload_mb_per_s\":%.3f,"
            "\"wire_mb_per_s\":%.3f,",
            per_s(res->published_measured, s), per_s(res->delivered_measured, s),
            per_s(res->payload_bytes_measured, s) / 1e6, per_s(res->wire_bytes_measured, s) / 1e6);
    fprintf(
        f,
        "\"lat_samples\":%llu,\"lat_p50_us\":%.2f,\"lat_p90_us\":%.2f,\"lat_p99_us\":%.2f,"
        "\"lat_p999_us\":%.2f,\"lat_max_us\":%.2f,\"lat_mean_us\":%.2f,\"sched_lag_max_us\":%.2f,",
        (unsigned long long)h->count, (double)hist_quantile(h, 0.50) / 1e3,
        (double)hist_quantile(h, 0.90) / 1e3, (double)hist_quantile(h, 0.99) / 1e3,
        (double)hist_quantile(h, 0.999) / 1e3, (double)h->max_ns / 1e3, hist_mean(h) / 1e3,
        (double)k[BC_SCHED_LAG_NS] / 1e3);
    fprintf(f, "\"client_cpu_pct\":%.1f,\"broker_cpu_pct\":%.1f,",
            s > 0 ? 100 * res->client_cpu_s / s : 0,
            res->broker_cpu_s >= 0 && s > 0 ? 100 * res->broker_cpu_s / s : -1.0);
    fprintf(f,
            "\"published\":%llu,\"expected\":%llu,\"delivered\":%llu,\"lost\":%llu,"
            "\"gaps_seen\":%llu,\"disorder\":%llu,\"corrupt\":%llu,\"seq_breaks\":%llu,"
            "\"gap_dropped\":%llu,\"broker_errors\":%llu,\"disconnects\":%llu,"
            "\"unsent_bytes\":%llu,\"ok\":%s,\"verdict\":",
            (unsigned long long)res->published_total, (unsigned long long)res->expected_total,
            (unsigned long long)res->delivered_total, (unsigned long long)res->lost,
            (unsigned long long)k[BC_LOST], (unsigned long long)k[BC_DISORDER],
            (unsigned long long)k[BC_CORRUPT], (unsigned long long)k[BC_SEQ_GAPS],
            (unsigned long long)k[BC_GAP_DROPPED], (unsigned long long)k[BC_BROKER_ERRORS],
            (unsigned long long)k[BC_DISCONNECTS], (unsigned long long)k[BC_PUB_UNSENT],
            res->ok ? "true" : "false");
    json_str(f, res->verdict);
    fprintf(f, "}\n");
    fflush(f);
}
