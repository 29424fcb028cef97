// SPDX-License-Identifier: Apache-2.0
//
// Structured logging: one line per record, written with a single write(2) so lines from
// different shards never interleave. Text mode: `ts level shard=N msg key=value ...`; JSON
// mode: one object per line. Any thread. The mode is set once at start-up, before the shards
// run; the level may change later (SIGHUP re-reads it from the config file).
//
// Refused and misbehaving clients (a wrong token, an oversized or malformed frame, a missed
// deadline, a slow consumer cut off) are logged at warn with the peer's address through
// log_refusal, which bounds them per shard: a flood of bad clients costs at most
// LOG_REFUSALS_PER_SEC lines a second on each shard, and one line saying how many were left
// out.
#ifndef NEXUS_BROKER_LOG_H
#define NEXUS_BROKER_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the minimum level and the output mode (json != 0: JSON lines). Not thread safe: call
 * before starting shards. */
void log_setup(enum log_level level, int json);

/* Parses "debug", "info", "warn", "error". Returns the level or -1. */
int log_level_parse(const char *s);

/* Logs a record. shard is the shard index or -1. fmt is printf-style and should render
 * `msg key=value ...`; in JSON mode the whole rendered text becomes the "msg" field. */
void log_write(enum log_level level, int shard, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(shard, ...) log_write(LOG_DEBUG, (shard), __VA_ARGS__)
#define log_info(shard, ...)  log_write(LOG_INFO, (shard), __VA_ARGS__)
#define log_warn(shard, ...)  log_write(LOG_WARN, (shard), __VA_ARGS__)
#define log_error(shard, ...) log_write(LOG_ERROR, (shard), __VA_ARGS__)

int log_enabled(enum log_level level);

/* Changes the minimum level while the shards run (SIGHUP). Any thread. */
void log_set_level(enum log_level level);
/* The minimum level in force. */
enum log_level log_get_level(void);
/* "debug", "info", "warn" or "error". */
const char *log_level_name(enum log_level level);

/* Refusal lines per second per shard. 10 shows an operator the addresses of a handful of
 * misbehaving clients at once (what is needed to find them), while a flood of thousands of
 * bad connections a second costs each shard at most ~10 short lines a second. */
#define LOG_REFUSALS_PER_SEC 10

/* Logs at warn, on shard `shard` (0 .. CONFIG_SHARDS_MAX - 1, from that shard's thread
 * only), "client peer=ADDR " followed by fmt: ADDR is the peer of socket fd (IP:PORT, [IPv6]:PORT,
 * or "?" once the socket lost it). Past LOG_REFUSALS_PER_SEC lines in the shard's current
 * second, the line is only counted; log_refusal_flush reports the count. */
void log_refusal(int shard, int fd, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* From the shard's tick (its thread): once the second in which lines were left out is over,
 * logs "refused clients: N similar lines suppressed in the last S ms" and starts counting
 * afresh. Cheap when nothing was left out. */
void log_refusal_flush(int shard);

/* Writes the peer address of socket fd into out (cap bytes; LOG_PEER_BYTES is enough):
 * "IP:PORT", "[IPv6]:PORT", or "?" when unknown. Returns out. */
#define LOG_PEER_BYTES 64
const char *log_peer(int fd, char *out, size_t cap);

#endif
