// SPDX-License-Identifier: Apache-2.0
//
// One nexusd per address. The shards of one process share the client port through
// SO_REUSEPORT, and SO_REUSEPORT would just as gladly let a second nexusd (same user) join
// them: clients would then be split silently between two brokers that know nothing of each
// other. portlock_claim, called once at start-up before the listeners bind, refuses that; it
// also names the process that holds an address, for the messages of a failed start. Start-up
// only (main thread); it reads /proc, nothing else of the broker.
#ifndef NEXUS_BROKER_PORTLOCK_H
#define NEXUS_BROKER_PORTLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Makes sure no other process serves host:port, with two checks:
 *  1. a lock: an abstract unix socket named "nexusd-listen IP:PORT" (IP as resolved), bound
 *     and kept open for the life of the process. Abstract names live in the network
 *     namespace, as ports do, need no file and vanish when the process ends, however it ends.
 *     It closes the window of two nexusd starting at the same moment.
 *  2. a probe: a bind of host:port without SO_REUSEPORT, closed at once. It fails with
 *     EADDRINUSE while any socket of any process listens there, SO_REUSEPORT ones included.
 * Returns the lock's descriptor (keep it open while serving), or -errno with err (cap bytes)
 * saying "cannot listen on HOST:PORT: ... (another process holds the port: pid N (comm);
 * use --FLAG ...)", naming the holder when /proc shows it (processes of other users are not
 * visible without privileges). */
int portlock_claim(const char *host, uint16_t port, const char *flag, char *err, size_t cap);

/* Describes the process listening on TCP port (any address) into out: "pid N (comm)".
 * Returns 0, or -ENOENT with out saying the owner is not visible. */
int portlock_holder(uint16_t port, char *out, size_t cap);

#endif
