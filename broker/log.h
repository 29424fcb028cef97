// SPDX-License-Identifier: Apache-2.0
//
// Structured logging: one line per record, written with a single write(2) so lines from
// different shards never interleave. Text mode: `ts level shard=N msg key=value ...`; JSON
// mode: one object per line. Any thread. The level and mode are set once at start-up, before
// the shards run.
#ifndef NEXUS_BROKER_LOG_H
#define NEXUS_BROKER_LOG_H

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

#endif
