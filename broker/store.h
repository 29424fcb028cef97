// SPDX-License-Identifier: Apache-2.0
//
// The shard's event log (docs/ARCHITECTURE.md, "The event log"; docs/OPERATIONS.md, "Data
// directory"): with --data-dir, every event the shard sequences is appended to its own
// segment files (codec/logrec.h records) through the shard's io_uring, in one batch per loop
// pass, and nothing that follows an event out of the shard — its deliveries, its
// acknowledgement, any later frame — leaves before the batch holding it is written (with
// --fsync always: and fdatasync'ed). So whatever a client may have seen is in the log, and a
// sequence is never given to two events, across kill -9 too. At start the log is scanned:
// checksums verified, a torn tail cut, each campaign's last sequence recovered.
// Threading: a shard's store belongs to its thread.
#ifndef NEXUS_BROKER_STORE_H
#define NEXUS_BROKER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct shard;
struct oframe;

/* Start-up, before the shards: counters, and DIR/meta checked or written (the shard count a
 * log was written with must not change). Returns 0, or <0 after printing why to stderr. */
int store_global_init(const char *data_dir, uint32_t shard_count);

/* In shard_init: recovers the shard's log and opens it for appending. 0, or <0 after logging
 * why (the shard refuses to start). A no-op without --data-dir. */
int store_open(struct shard *s);
/* After the handlers' shard_init: hands each campaign's last logged state snapshot to the
 * restore hook (core.h), then forgets them. */
void store_restore(struct shard *s);
/* At the shard's end: writes what is batched (blocking), syncs, closes. */
void store_close(struct shard *s);

/* The last sequence the log holds for a campaign this shard owns (0: none). */
uint64_t store_floor(struct shard *s, int64_t campaign_id);
/* A campaign is about to be freed: its sequence must continue from seq when it comes back.
 * 0, or -ENOMEM (then keep the campaign). */
int store_note_freed(struct shard *s, int64_t campaign_id, uint64_t seq);

/* Why emits are refused: 0 while the log works, else "storage_failed" / "storage_full". */
const char *store_refusal(const struct shard *s);

/* Whether events of this type are logged (--persist; every type without it). A type that is
 * not is published unsequenced (sequence 0), live only: a sequence is only given to an event
 * the log holds. */
struct evtype;
bool store_persists(const struct shard *s, const struct evtype *t, const char *type_str);

/* Appends the sequenced event f to the current batch, with its duplicate-window key (0: none;
 * only keys that mean the same after a restart: a client-named publisher's). 0, or -ENOMEM. */
int store_append(struct shard *s, const struct oframe *f, uint64_t dedup_key);
/* True while something waits for a batch: every later send must wait behind it. */
bool store_holding(const struct shard *s);
/* Defers the fan-out of f (takes the reference) until the current batch is durable. */
int store_defer_fanout(struct shard *s, int64_t campaign_id, struct oframe *f, uint64_t direct,
                       uint64_t direct2, bool unsequenced);
/* Defers a frame to a connection (takes the reference). ack: an emit acknowledgement, turned
 * into error{storage_failed} if the batch fails. */
int store_defer_frame(struct shard *s, uint64_t conn_id, struct oframe *f, uint64_t ack_corr);
/* Calls ev(arg, f) (f: the caller's reference, type and user filled) for each logged event of
 * campaign_id with a sequence in from..to, in order, and gap(arg, first, last) for each range
 * the log does not hold. Starts from the sparse index entry at or before `from`, so it reads
 * about the campaign's records from there, not the whole log. With max_bytes (0: no limit) it
 * pauses once the frames handed to ev reach that many bytes: *next (may be NULL) is then the
 * sequence to go on from, else to + 1. Returns the events, -ENOENT without a log, or -errno.
 * Reads the segments synchronously (page cache, READ_CHUNK pieces). */
int store_scan(struct shard *s, int64_t campaign_id, uint64_t from, uint64_t to, size_t max_bytes,
               uint64_t *next, void (*ev)(void *arg, struct oframe *f),
               void (*gap)(void *arg, uint64_t first, uint64_t last), void *arg);
/* Sends connection conn_id the logged events of campaign_id with sequences from..to that
 * match (match(arg, f) with f's type and user filled; match NULL: every event, and the frames
 * are not parsed), in order, read from the shard's log; a
 * range the log no longer holds is announced with a gap frame (reason "retention"). Pauses
 * after about max_bytes of frames (store_scan): *next is where to go on, to + 1 when done.
 * Returns the events sent, or -errno. Reads the segments synchronously. */
struct oframe;
int store_replay(struct shard *s, int64_t campaign_id, uint64_t from, uint64_t to, size_t max_bytes,
                 uint64_t *next, uint64_t conn_id,
                 bool (*match)(const void *arg, const struct oframe *f), const void *arg);
/* End of a loop pass: starts writing the current batch (one write in flight per shard; with
 * --fsync always, up to --fsync-depth written batches waiting for their fdatasync). */
void store_flush(struct shard *s);
/* Completion of a store operation (user_data UD_STORE_*). */
void store_cqe(struct shard *s, uint64_t ud, int res);
/* True when store_flush has nothing to do until a store completion arrives (the loop may
 * sleep); false when something batched can be handed to the kernel now. */
bool store_waits(const struct shard *s);
/* True when nothing is batched, being written or waiting for a sync (the drain waits for
 * it). */
bool store_idle(const struct shard *s);

#endif
