// SPDX-License-Identifier: Apache-2.0
//
// The broker as a whole: the set of shards (one thread and one io_uring each), the rings
// between them, start-up checks and shutdown. main.c and in-process tests use only this API.
// broker_start/broker_stop/broker_wait are called from one controlling thread.
#ifndef NEXUS_BROKER_BROKER_H
#define NEXUS_BROKER_BROKER_H

#include <stddef.h>

#include "broker/config.h"

struct broker;

/* Checks that io_uring can be used as the broker needs it (ring flags, opcodes, provided
 * buffer rings). Returns 0, or -errno after writing to msg (cap bytes) a sentence naming the
 * cause and the fix (sysctl kernel.io_uring_disabled, seccomp, old kernel, RLIMIT_MEMLOCK). */
int broker_probe(char *msg, size_t cap);

/* Creates the broker: binds one SO_REUSEPORT listener per shard and starts the shard threads.
 * cfg is copied. Returns NULL after logging the reason (address in use, io_uring failure). */
struct broker *broker_start(const struct config *cfg);
/* The shards cfg asks for: --shards, or one per online CPU (at most CONFIG_SHARDS_MAX). */
uint32_t broker_shard_count(const struct config *cfg);

/* Asks every shard to stop accepting, flush queued output for at most cfg.drain_ms and exit.
 * Async-signal-safe (one atomic store). */
void broker_stop(struct broker *b);

/* Waits for every shard thread to exit, frees everything. Returns 0. */
int broker_wait(struct broker *b);

#endif
