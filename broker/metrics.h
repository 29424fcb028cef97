// SPDX-License-Identifier: Apache-2.0
//
// Prometheus metrics over HTTP (text exposition format 0.0.4) on a port of its own, served by
// one small thread with its own io_uring: scrapes are rare and must never share a shard's
// loop. It reads the shards' relaxed atomic counters and ring depths; it writes nothing any
// shard reads.
#ifndef NEXUS_BROKER_METRICS_H
#define NEXUS_BROKER_METRICS_H

#include <stdbool.h>
#include <stddef.h>

struct broker;
struct metrics;

/* Binds cfg.metrics_host:metrics_port and starts the thread. Returns NULL after logging why. */
struct metrics *metrics_start(struct broker *b);

/* Stops the thread and frees everything. */
void metrics_stop(struct metrics *m);

/* Whether the broker serves: every shard's loop has ticked within METRICS_STALL_MS (2 s), and
 * no stop signal came. A shard's loop starts only once every shard has opened its event log
 * (recovery included) and restored its handlers' state, with the listeners bound, so a ready
 * broker has finished starting too. Writes the reason ("ready", or what is wrong) into why
 * (cap bytes). Any thread: /readyz and the systemd watchdog ask it. */
bool metrics_readiness(struct broker *b, char *why, size_t cap);

/* Renders the exposition text into buf (cap bytes). Returns the length (truncated at cap). */
size_t metrics_render(struct broker *b, char *buf, size_t cap);

#endif
