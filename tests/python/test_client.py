# SPDX-License-Identifier: Apache-2.0
"""The blocking Python client (nexus.Client) against the real nexusd: round trip, acked and
fire-and-forget emits, pattern / campaign / user subscriptions, the request lifecycle (echo,
failure, no handler, a stream with heartbeats and a cancel), serving requests (stream,
success, failed with a code, an exception, cancel, saturation), the bound on a subscription's
local queue, resume with from_sequence, and the address from $NEXUS_BROKER."""

import os
import threading
import time
import unittest

from harness import WAIT_S, Broker, BrokerCase, free_port, nexus, tempdir, wait_until

NOTE = {"text": "hello", "n": 3, "ratio": 0.25, "tags": ["a", "b"],
        "nested": {"ok": True, "nothing": None}}


class PubSub(BrokerCase):
    def test_round_trip(self):
        c = self.client()
        self.assertEqual(c.welcome.server_version.split()[0], "nexusd")
        sub = c.subscribe("demo:*:v1:*", campaign=42)
        ack = c.emit("demo:note:v1:completed", NOTE, campaign=42, user_id="py-user",
                     tags=["t1"], entity_id="ent-1")
        ev = sub.next(timeout=WAIT_S)
        self.assertIsInstance(ev, nexus.Event)
        self.assertEqual((ev.event_id, ev.sequence), (ack.event_id, ack.sequence))
        self.assertEqual(ev.data, NOTE)
        self.assertEqual(ev.user_id, "py-user")
        self.assertEqual(ev.entity_id, "ent-1")
        self.assertEqual(list(ev.metadata.tags), ["t1"])
        self.assertEqual(ev.campaign_id, 42)
        self.assertEqual(ev.to_dict()["payload"]["data"], NOTE)
        self.assertIsNone(sub.next(timeout=0.2))  # exactly one

    def test_acked_emit_and_duplicate(self):
        c = self.client()
        a1 = c.emit("demo:a:v1:completed", campaign=9, event_id="ev-1")
        a2 = c.emit("demo:a:v1:completed", campaign=9)
        self.assertTrue(a1.success)
        self.assertEqual((a1.message, a1.event_id, a1.sequence), ("accepted", "ev-1", 1))
        self.assertEqual(a2.sequence, 2)
        self.assertEqual(len(a2.event_id), 36)  # the broker's UUIDv4
        dup = c.emit("demo:a:v1:completed", campaign=9, event_id="ev-1")
        self.assertEqual((dup.message, dup.sequence), ("duplicate", 0))
        with self.assertRaises(nexus.NexusError) as cm:
            c.emit("Demo:a:v1:completed", campaign=9)
        self.assertEqual(cm.exception.code, "invalid_event_type")
        self.assertGreater(c.ping(), 0)  # the connection stays usable

    def test_fire_and_forget(self):
        c = self.client()
        sub = c.subscribe(campaign=3)
        for i in range(50):
            self.assertIsNone(c.emit("demo:ff:v1:completed", {"i": i}, campaign=3, ack=False))
        c.flush()
        got = [sub.next(timeout=WAIT_S) for _ in range(50)]
        self.assertEqual([e.data["i"] for e in got], list(range(50)))
        self.assertEqual([e.sequence for e in got], list(range(1, 51)))
        c.emit("demo:BAD:v1:completed", campaign=3, ack=False)
        with self.assertRaises(nexus.NexusError) as cm:
            c.flush()
        self.assertEqual(cm.exception.code, "invalid_event_type")
        c.flush()  # reported once

    def test_patterns_campaigns_users(self):
        c = self.client()
        pub = self.client()
        orders = c.subscribe(["order:*:v1:success", "order:placed:*:*"], campaign=5)
        alice = c.subscribe(campaign=5, user_id="alice")
        fire = c.subscribe("*:*:*:completed")  # campaign 0: every campaign
        pub.emit("order:placed:v1:completed", campaign=5, user_id="bob")
        pub.emit("order:paid:v1:success", campaign=5, user_id="alice")
        pub.emit("order:paid:v1:failed", campaign=5)
        pub.emit("order:placed:v1:completed", campaign=6)
        pub.emit("stock:moved:v2:completed", campaign=7, user_id="alice")
        self.assertEqual([e.event_type for e in self.drain(orders, 2)],
                         ["order:placed:v1:completed", "order:paid:v1:success"])
        self.assertEqual([e.event_type for e in self.drain(alice, 1)], ["order:paid:v1:success"])
        fired = self.drain(fire, 3)
        self.assertEqual(sorted((e.campaign_id, e.event_type) for e in fired),
                         [(5, "order:placed:v1:completed"), (6, "order:placed:v1:completed"),
                          (7, "stock:moved:v2:completed")])
        orders.unsubscribe()
        pub.emit("order:paid:v1:success", campaign=5)
        self.assertIsNone(orders.next(timeout=0.3))
        self.assertTrue(orders.closed)
        self.assertEqual(alice.next(timeout=0.1), None)

    def test_local_queue_bound(self):
        c = self.client()
        sub = c.subscribe(campaign=13, queue_max=5)
        for i in range(20):
            c.emit("demo:q:v1:completed", {"i": i}, campaign=13)
        c.ping()
        self.assertEqual([sub.next(timeout=WAIT_S).sequence for _ in range(5)], [1, 2, 3, 4, 5])
        self.assertIsNone(sub.next(timeout=0.2))
        self.assertEqual(sub.dropped, 15)
        c.emit("demo:q:v1:completed", campaign=13)
        gap = sub.next(timeout=WAIT_S)
        self.assertIsInstance(gap, nexus.Gap)
        self.assertEqual((gap.reason, gap.campaign_id, gap.first_sequence, gap.last_sequence,
                          gap.dropped), ("client_queue_full", 13, 6, 20, 15))
        self.assertEqual(sub.next(timeout=WAIT_S).sequence, 21)

    def test_bad_pattern(self):
        c = self.client()
        with self.assertRaises(nexus.NexusError) as cm:
            c.subscribe("order:*:x1")
        self.assertEqual(cm.exception.code, "invalid_pattern")

    def drain(self, sub, n):
        """n events, then nothing more for a moment."""
        out = []
        for _ in range(n):
            ev = sub.next(timeout=WAIT_S)
            self.assertIsNotNone(ev, "expected %d events, got %r" % (n, out))
            out.append(ev)
        self.assertIsNone(sub.next(timeout=0.3))
        return out


class Requests(BrokerCase):
    def test_echo_lifecycle(self):
        c = self.client()
        watch = c.subscribe("test:echo:*:*", campaign=11)
        req = c.request("test:echo:v1", {"q": "ping", "n": 42}, campaign=11)
        self.assertEqual(req.ack.message, "accepted")
        self.assertEqual(req.ack.event_type, "test:echo:v1:requested")
        states = [(e.state, e.correlation_id) for e in req]
        self.assertEqual(states, [("started", req.id), ("success", req.id)])
        self.assertEqual(req.terminal.data, {"q": "ping", "n": 42})
        self.assertTrue(req.done)
        # The campaign saw the whole exchange, in order.
        seen = [watch.next(timeout=WAIT_S) for _ in range(3)]
        self.assertEqual([e.state for e in seen], ["requested", "started", "success"])
        self.assertEqual([e.sequence for e in seen], [1, 2, 3])
        self.assertEqual(c.call("test:echo:v1", {"x": [1, "two"]}), {"x": [1, "two"]})

    def test_failures(self):
        c = self.client()
        with self.assertRaises(nexus.RequestFailed) as cm:
            c.call("test:fail:v1")
        self.assertEqual(cm.exception.code, "test_failure")
        self.assertEqual(cm.exception.event.state, "failed")
        with self.assertRaises(nexus.RequestFailed) as cm:
            c.call("nobody:home:v1")
        self.assertEqual(cm.exception.code, "no_handler")
        with self.assertRaises(ValueError):
            c.request("test:echo")
        with self.assertRaises(nexus.NexusError) as cm:
            c.request("test:Echo:v1")
        self.assertEqual(cm.exception.code, "invalid_event_type")

    def test_stream_heartbeat_cancel(self):
        c = self.client()
        req = c.request("test:stream_ticks:v1", {"interval_ms": 50, "heartbeat_ms": 100},
                        campaign=12)
        kinds = []
        for ev in req:
            kinds.append(ev.state)
            if ev.state == "stream":
                self.assertEqual(ev.stream_seq, kinds.count("stream"))
            if kinds.count("stream") == 6 and "heartbeat" in kinds:
                req.cancel()
            if len(kinds) > 200:
                self.fail("no cancelled after the cancel: %r" % kinds)
        self.assertEqual(kinds[0], "started")
        self.assertEqual(kinds[-1], "cancelled")
        self.assertIn("heartbeat", kinds)
        with self.assertRaises(nexus.RequestCancelled):
            req.result(0)
        req.cancel()  # ended already: nothing to do

    def test_wait_timeout(self):
        c = self.client()
        req = c.request("test:stream_ticks:v1", {"interval_ms": 1000})
        with self.assertRaises(TimeoutError):
            req.wait(0.3)
        req.cancel()
        self.assertEqual(req.wait(WAIT_S).state, "cancelled")


class Serve(BrokerCase):
    def test_stream_success_failed(self):
        server = self.client()
        requester = self.client()

        def work(req):
            if req.data.get("fail"):
                raise nexus.HandlerError("out_of_stock", "no " + req.data["item"],
                                         {"item": req.data["item"]})
            if req.data.get("crash"):
                return 1 / 0
            yield {"step": 1, "user": req.user_id, "campaign": req.campaign_id}
            req.send("two")
            return {"done": req.data["item"]}

        reg = server.serve("shop:buy", work)
        req = requester.request("shop:buy:v2", {"item": "tea"}, campaign=21, user_id="carol")
        evs = list(req)
        self.assertEqual([e.state for e in evs], ["started", "stream", "stream", "success"])
        self.assertEqual(evs[1].data, {"step": 1, "user": "carol", "campaign": 21})
        self.assertEqual((evs[1].stream_seq, evs[2].stream_seq), (1, 2))
        self.assertEqual(evs[2].data, {"result": "two"})
        self.assertEqual(evs[3].data, {"done": "tea"})
        self.assertTrue(all(e.event_type.startswith("shop:buy:v2:") for e in evs))

        with self.assertRaises(nexus.RequestFailed) as cm:
            requester.call("shop:buy:v1", {"item": "jam", "fail": True})
        self.assertEqual(cm.exception.code, "out_of_stock")
        self.assertEqual(cm.exception.message, "no jam")
        self.assertEqual(cm.exception.event.data["item"], "jam")
        with self.assertRaises(nexus.RequestFailed) as cm:
            requester.call("shop:buy:v1", {"item": "x", "crash": True})
        self.assertEqual(cm.exception.code, "handler_exception")
        self.assertIn("ZeroDivisionError", cm.exception.message)
        self.assertEqual((reg.served, reg.failed), (1, 2))

    def test_cancel_reaches_handler(self):
        server = self.client()
        requester = self.client()
        started = threading.Event()
        stopped = threading.Event()

        def slow(req):
            started.set()
            n = 0
            while not req.wait_cancelled(0.05):
                n += 1
                if n > 400:
                    return {"never": "cancelled"}
            stopped.set()
            req.send({"too": "late"})  # raises Cancelled: the request has ended

        server.serve("slow:job", slow, streaming=True)
        req = requester.request("slow:job:v1", campaign=3)
        self.assertTrue(started.wait(WAIT_S))
        self.assertEqual(req.next(WAIT_S).state, "started")
        req.cancel()
        self.assertEqual(req.wait(WAIT_S).state, "cancelled")
        self.assertTrue(stopped.wait(WAIT_S), "the handler did not see the cancel")

    def test_broker_timeout_reaches_handler(self):
        server = self.client()
        requester = self.client()
        seen = threading.Event()

        def stuck(req):
            if req.wait_cancelled(WAIT_S):
                seen.set()

        server.serve("stuck:job", stuck)
        req = requester.request("stuck:job:v1", {"timeout_ms": 300})
        self.assertEqual(req.wait(WAIT_S).state, "timeout")
        self.assertTrue(seen.wait(WAIT_S))

    def test_max_inflight(self):
        server = self.client()
        requester = self.client()
        release = threading.Event()

        def hold(req):
            release.wait(WAIT_S)
            return {"held": True}

        reg = server.serve("hold:it", hold, max_inflight=1)
        first = requester.request("hold:it:v1")
        self.assertEqual(first.next(WAIT_S).state, "started")
        wait_until(lambda: len(reg.running) == 1, what="the first request running")
        with self.assertRaises(nexus.RequestFailed) as cm:
            requester.call("hold:it:v1", timeout=WAIT_S)
        self.assertEqual(cm.exception.code, "handler_busy")
        release.set()
        self.assertEqual(first.result(WAIT_S), {"held": True})
        self.assertEqual(reg.busy, 1)

    def test_campaign_limited_and_bad_action(self):
        server = self.client()
        requester = self.client()
        server.serve("only:here", lambda req: {"c": req.campaign_id}, campaigns=[77])
        self.assertEqual(requester.call("only:here:v1", campaign=77), {"c": 77})
        with self.assertRaises(nexus.RequestFailed) as cm:
            requester.call("only:here:v1", campaign=78)
        self.assertEqual(cm.exception.code, "no_handler")
        with self.assertRaises(ValueError):
            server.serve("only:here:v1", lambda req: None)
        with self.assertRaises(nexus.NexusError) as cm:
            server.serve("Only:here", lambda req: None)
        self.assertEqual(cm.exception.code, "invalid_event_type")


class Resume(unittest.TestCase):
    def test_from_sequence(self):
        data = tempdir(self)
        b = Broker("--data-dir", data).start()
        self.addCleanup(b.kill)
        with nexus.connect(b.address) as c:
            for i in range(1, 6):
                c.emit("log:line:v1:completed", {"i": i}, campaign=8)
            sub = c.subscribe(campaign=8, from_sequence=3)
            got = [sub.next(timeout=WAIT_S) for _ in range(3)]
            self.assertEqual([e.sequence for e in got], [3, 4, 5])
            c.emit("log:line:v1:completed", {"i": 6}, campaign=8)
            self.assertEqual(sub.next(timeout=WAIT_S).sequence, 6)
            self.assertIsNone(sub.next(timeout=0.2))
            with self.assertRaises(ValueError):
                c.subscribe(from_sequence=1)
        self.assertEqual(b.stop(), 0)


class Environment(unittest.TestCase):
    def test_nexus_broker_variable(self):
        b = Broker("--test-handlers").start()
        self.addCleanup(b.kill)
        old = os.environ.get("NEXUS_BROKER")
        os.environ["NEXUS_BROKER"] = b.address
        try:
            with nexus.connect() as c:
                self.assertEqual(c.call("test:echo:v1", {"env": True}), {"env": True})
        finally:
            if old is None:
                del os.environ["NEXUS_BROKER"]
            else:
                os.environ["NEXUS_BROKER"] = old
        self.assertEqual(b.stop(), 0)

    def test_addresses(self):
        self.assertEqual(nexus.parse_address("h:1"), ("h", 1))
        self.assertEqual(nexus.parse_address("[::1]:7"), ("::1", 7))
        self.assertEqual(nexus.parse_address("host"), ("host", 7400))
        for bad in ("h:0", "h:x", "[::1"):
            with self.assertRaises(ValueError):
                nexus.parse_address(bad)

    def test_unreachable(self):
        t0 = time.monotonic()
        with self.assertRaises(OSError):
            nexus.connect("127.0.0.1:%d" % free_port())  # nobody listens there
        self.assertLess(time.monotonic() - t0, WAIT_S)

if __name__ == "__main__":
    unittest.main(verbosity=2)
