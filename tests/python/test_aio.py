# SPDX-License-Identifier: Apache-2.0
"""The asyncio client (nexus.aio.AsyncClient) against the real nexusd: round trip, acked and
fire-and-forget emits, pattern subscriptions, the request lifecycle with a cancel, serving
with a coroutine, an async generator and a plain function (stream, success, failed, cancel
reaching the handler's task), and many operations in flight at once on one connection."""

import asyncio
import unittest

from harness import WAIT_S, Broker, nexus


class AsyncCase(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.broker = Broker("--test-handlers").start()
        self.addCleanup(self._stop_broker)  # the first cleanup runs last: after the clients

    def _stop_broker(self):
        if self.broker.proc is not None:
            self.assertEqual(self.broker.stop(), 0, "nexusd did not exit 0 on SIGTERM")

    async def client(self, **kw):
        c = await nexus.aio.connect(self.broker.address, **kw)
        self.addAsyncCleanup(c.close)
        return c


class PubSub(AsyncCase):
    async def test_round_trip(self):
        c = await self.client()
        sub = await c.subscribe(["demo:*:v1:*"], campaign=4)
        data = {"a": [1, 2.5, None, {"b": False}], "s": "é"}
        ack = await c.emit("demo:x:v1:completed", data, campaign=4, user_id="u")
        ev = await sub.next(timeout=WAIT_S)
        self.assertEqual((ev.event_id, ev.sequence, ev.data, ev.user_id),
                         (ack.event_id, 1, data, "u"))
        await c.emit("demo:y:v2:completed", campaign=4)  # v2: not matched
        await c.emit("demo:z:v1:completed", campaign=5)  # another campaign
        self.assertIsNone(await sub.next(timeout=0.3))
        await sub.unsubscribe()

    async def test_fire_and_forget_and_iteration(self):
        c = await self.client()
        sub = await c.subscribe("*", campaign=6)
        for i in range(20):
            await c.emit("demo:n:v1:completed", {"i": i}, campaign=6, ack=False)
        await c.flush()
        got = []
        async for ev in sub:
            got.append(ev.data["i"])
            if len(got) == 20:
                break
        self.assertEqual(got, list(range(20)))

    async def test_concurrent_calls(self):
        c = await self.client()
        acks = await asyncio.gather(*(c.emit("demo:c:v1:completed", {"i": i}, campaign=7)
                                      for i in range(200)))
        self.assertEqual(sorted(a.sequence for a in acks), list(range(1, 201)))
        results = await asyncio.gather(*(c.call("test:echo:v1", {"i": i}, campaign=i % 5)
                                         for i in range(50)))
        self.assertEqual(results, [{"i": i} for i in range(50)])


class Requests(AsyncCase):
    async def test_lifecycle_and_cancel(self):
        c = await self.client()
        self.assertEqual(await c.call("test:echo:v1", {"k": "v"}), {"k": "v"})
        with self.assertRaises(nexus.RequestFailed) as cm:
            await c.call("test:fail:v1")
        self.assertEqual(cm.exception.code, "test_failure")
        req = await c.request("test:stream_ticks:v1", {"interval_ms": 30}, campaign=2)
        states = []
        async for ev in req:
            states.append(ev.state)
            if states.count("stream") == 3:
                await req.cancel()
        self.assertEqual(states[0], "started")
        self.assertEqual(states[-1], "cancelled")
        self.assertGreaterEqual(states.count("stream"), 3)
        with self.assertRaises(nexus.RequestCancelled):
            await req.result()

    async def test_result_timeout(self):
        c = await self.client()
        req = await c.request("test:stream_ticks:v1", {"interval_ms": 2000})
        with self.assertRaises(TimeoutError):
            await req.result(0.2)
        await req.cancel()
        self.assertEqual((await req.wait(WAIT_S)).state, "cancelled")


class Serve(AsyncCase):
    async def test_coroutine_generator_plain(self):
        server = await self.client()
        requester = await self.client()

        async def add(req):
            await req.send({"partial": req.data["a"]})
            if req.data["b"] == 0:
                raise nexus.HandlerError("zero", "b is zero")
            return {"sum": req.data["a"] + req.data["b"]}

        async def count(req):
            for i in range(req.data["n"]):
                yield {"i": i}

        def upper(req):
            return {"text": req.data["text"].upper()}

        await server.serve("calc:add", add)
        await server.serve("calc:count", count, streaming=True)
        await server.serve("calc:upper", upper)
        req = await requester.request("calc:add:v1", {"a": 2, "b": 3})
        evs = [ev async for ev in req]
        self.assertEqual([e.state for e in evs], ["started", "stream", "success"])
        self.assertEqual((evs[1].data, evs[2].data), ({"partial": 2}, {"sum": 5}))
        with self.assertRaises(nexus.RequestFailed) as cm:
            await requester.call("calc:add:v1", {"a": 1, "b": 0})
        self.assertEqual((cm.exception.code, cm.exception.message), ("zero", "b is zero"))
        req = await requester.request("calc:count:v1", {"n": 4})
        evs = [ev async for ev in req]
        self.assertEqual([e.data["i"] for e in evs if e.state == "stream"], [0, 1, 2, 3])
        self.assertEqual(evs[-1].state, "success")
        self.assertEqual(await requester.call("calc:upper:v3", {"text": "abc"}), {"text": "ABC"})

    async def test_cancel_cancels_the_task(self):
        server = await self.client()
        requester = await self.client()
        running = asyncio.Event()
        cancelled = asyncio.Event()

        async def forever(req):
            running.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        reg = await server.serve("wait:forever", forever, streaming=True)
        req = await requester.request("wait:forever:v1", campaign=9)
        await asyncio.wait_for(running.wait(), WAIT_S)
        await req.cancel()
        self.assertEqual((await req.wait(WAIT_S)).state, "cancelled")
        await asyncio.wait_for(cancelled.wait(), WAIT_S)
        for _ in range(100):
            if not reg.running:
                break
            await asyncio.sleep(0.01)
        self.assertEqual(reg.running, {})

    async def test_requester_gone(self):
        server = await self.client()
        requester = await nexus.aio.connect(self.broker.address)
        cancelled = asyncio.Event()

        async def forever(req):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        await server.serve("wait:gone", forever, streaming=True)
        req = await requester.request("wait:gone:v1")
        self.assertEqual((await req.next(WAIT_S)).state, "started")
        await requester.close()
        await asyncio.wait_for(cancelled.wait(), WAIT_S)
        with self.assertRaises(nexus.ClientClosed):
            await requester.emit("a:b:v1:completed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
