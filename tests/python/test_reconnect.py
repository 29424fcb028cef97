# SPDX-License-Identifier: Apache-2.0
"""Reconnection against a real nexusd that is stopped (SIGTERM: GoAway, then close) and
started again on the same port: calls made meanwhile wait and then succeed; subscriptions are
made anew (a Gap with reason "reconnect" says what may have been missed) or, with
from_sequence on a broker with --data-dir, resume with neither gap nor duplicate; handlers are
registered again and serve; an open request ends with ConnectionLost; a client that gives up
(reconnect_attempts) or does not reconnect (reconnect=False) says so. Blocking and asyncio."""

import asyncio
import threading
import unittest

from harness import WAIT_S, Broker, nexus, tempdir, wait_until

FAST = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.2}


class Blocking(unittest.TestCase):
    def start(self, *flags):
        b = Broker(*flags).start()
        self.addCleanup(b.kill)
        return b

    def connect(self, b, **kw):
        kw = dict(FAST, **kw)
        c = nexus.connect(b.address, **kw)
        self.addCleanup(c.close)
        return c

    def test_restart(self):
        b = self.start("--test-handlers")
        c = self.connect(b)
        r = self.connect(b)
        sub = c.subscribe("demo:*:v1:*", campaign=5)
        c.serve("again:echo", lambda req: {"echo": req.data})
        self.assertEqual(r.call("again:echo:v1", {"n": 1}), {"echo": {"n": 1}})
        r.emit("demo:a:v1:completed", {"n": 1}, campaign=5)
        self.assertEqual(sub.next(timeout=WAIT_S).data, {"n": 1})
        open_req = r.request("test:stream_ticks:v1", {"interval_ms": 1000})

        self.assertEqual(b.stop(), 0)
        with self.assertRaises(nexus.ConnectionLost):
            open_req.wait(WAIT_S)
        wait_until(lambda: not c.connected and not r.connected, what="both clients notice")
        # A call made while the broker is away waits for the reconnection.
        done = {}
        t = threading.Thread(target=lambda: done.setdefault(
            "ack", r.emit("demo:b:v1:completed", {"n": 2}, campaign=5, timeout=WAIT_S)))
        t.start()
        b.start()
        t.join(WAIT_S + 5)
        self.assertEqual(done["ack"].message, "accepted")
        wait_until(lambda: c.connected and r.connected, what="both clients reconnected")
        self.assertGreaterEqual(c.reconnects, 1)

        gap = sub.next(timeout=WAIT_S)
        self.assertIsInstance(gap, nexus.Gap)
        self.assertEqual((gap.reason, gap.campaign_id, gap.first_sequence), ("reconnect", 5, 2))
        # The emit made during the outage may have reached the broker before the subscription
        # was restored; everything after it arrives.
        r.emit("demo:c:v1:completed", {"n": 3}, campaign=5)
        seen = []
        while 3 not in seen and len(seen) < 3:
            ev = sub.next(timeout=WAIT_S)
            self.assertIsNotNone(ev, "no event after the reconnection; got %r" % seen)
            seen.append(ev.data["n"])
        self.assertIn(seen, ([3], [2, 3]))
        self.assertEqual(r.call("again:echo:v1", {"n": 4}), {"echo": {"n": 4}})
        self.assertEqual(b.stop(), 0)

    def test_resume_across_restart(self):
        data = tempdir(self)
        b = self.start("--data-dir", data)
        c = self.connect(b)
        pub = self.connect(b, reconnect=False)
        sub = c.subscribe(campaign=8, from_sequence=1)
        for i in range(1, 4):
            pub.emit("log:line:v1:completed", {"i": i}, campaign=8)
        self.assertEqual([sub.next(timeout=WAIT_S).sequence for _ in range(3)], [1, 2, 3])
        self.assertEqual(b.stop(), 0)
        wait_until(lambda: not c.connected, what="the client notices")
        b.start()
        wait_until(lambda: c.connected, what="the client reconnects")
        with nexus.connect(b.address) as pub2:
            for i in range(4, 7):
                pub2.emit("log:line:v1:completed", {"i": i}, campaign=8)
        got = [sub.next(timeout=WAIT_S) for _ in range(3)]
        self.assertEqual([(e.sequence, e.data["i"]) for e in got], [(4, 4), (5, 5), (6, 6)])
        self.assertIsNone(sub.next(timeout=0.3))  # no gap, no duplicate
        with self.assertRaises(nexus.ConnectionLost):
            pub.emit("log:line:v1:completed", campaign=8)  # reconnect=False: lost for good
        self.assertEqual(b.stop(), 0)

    def test_give_up(self):
        b = self.start()
        c = self.connect(b, reconnect_attempts=3)
        sub = c.subscribe(campaign=1)
        self.assertEqual(b.stop(), 0)
        with self.assertRaises(nexus.ConnectionLost) as cm:
            c.run()
        self.assertIn("gave up", str(cm.exception))
        with self.assertRaises(nexus.ConnectionLost):
            c.emit("a:b:v1:completed")
        with self.assertRaises(nexus.ConnectionLost):
            sub.next(timeout=1)


class Async(unittest.IsolatedAsyncioTestCase):
    async def test_restart(self):
        b = await asyncio.to_thread(Broker("--test-handlers").start)
        self.addCleanup(b.kill)
        c = await nexus.aio.connect(b.address, **FAST)
        self.addAsyncCleanup(c.close)
        calls = []

        async def handler(req):
            calls.append(req.id)
            return {"n": len(calls)}

        await c.serve("async:count", handler)
        sub = await c.subscribe("*", campaign=3)
        self.assertEqual(await c.call("async:count:v1"), {"n": 1})
        self.assertEqual(await asyncio.to_thread(b.stop), 0)
        for _ in range(500):
            if not c.connected:
                break
            await asyncio.sleep(0.01)
        self.assertFalse(c.connected)
        await asyncio.to_thread(b.start)
        # Waits for the reconnection, then is served by the re-registered handler.
        self.assertEqual(await c.call("async:count:v1", timeout=WAIT_S), {"n": 2})
        await c.emit("demo:x:v1:completed", campaign=3)
        items = [await sub.next(timeout=WAIT_S) for _ in range(2)]
        self.assertIsInstance(items[0], nexus.Gap)
        self.assertEqual(items[0].reason, "reconnect")
        self.assertEqual(items[1].event_type, "demo:x:v1:completed")
        await c.close()
        self.assertEqual(await asyncio.to_thread(b.stop), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
