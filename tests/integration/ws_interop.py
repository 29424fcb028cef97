# SPDX-License-Identifier: Apache-2.0
"""Interoperability of nexusd's WebSocket listener (docs/PROTOCOL.md, "WebSocket") with a client
written independently of this project: Python's `websockets` (Debian: python3-websockets). The
Nexus frames are built with the protobuf classes of client/python (generated from proto/), the
WebSocket side is entirely the library's: the upgrade, masking, its ping/pong and close
handshake, fragmented sends. Over plain ws and over wss (nexusd with --tls-cert, a throwaway
certificate made by the openssl command). A WebSocket subscriber sees the same events as the
Python client over TCP. Run by ctest (ws/interop_python) with NEXUSD set."""

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NEXUS_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "python"))
sys.dont_write_bytecode = True

import websockets  # noqa: E402  (Debian's python3-websockets; the test fails without it)
from harness import Broker, free_port, nexus  # noqa: E402
from nexus._proto import nexus_pb2 as pb  # noqa: E402

TIMEOUT = 10.0


def frame(correlation=0, **body):
    f = pb.Frame(correlation=correlation)
    for kind, fields in body.items():
        getattr(f, kind).SetInParent()
        for k, v in fields.items():
            if isinstance(v, list):
                getattr(getattr(f, kind), k).extend(v)
            else:
                setattr(getattr(f, kind), k, v)
    return f.SerializeToString()


async def recv_frame(ws, kind=None):
    """The next Nexus frame (of `kind`, skipping others)."""
    while True:
        data = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(data, bytes), "a text message from the broker"
        f = pb.Frame()
        f.ParseFromString(data)
        if kind is None or f.WhichOneof("body") == kind:
            return f


async def round_trip(url, ssl_ctx=None):
    """hello, subscribe, emit (fragmented), event, ping, close: what each step returned."""
    out = {}
    async with websockets.connect(url, ssl=ssl_ctx, subprotocols=["nexus.v1"],
                                  max_size=None) as ws:
        out["subprotocol"] = ws.subprotocol
        await ws.send(frame(1, hello={"protocol_version": 1, "client_name": "py-websockets"}))
        out["welcome"] = (await recv_frame(ws)).welcome
        await ws.send(frame(2, subscribe={"campaign_id": 77, "event_types": ["*:*:*:*"]}))
        out["ack"] = (await recv_frame(ws, "subscribe_ack")).subscribe_ack
        emit = frame(3, emit={"event_type": "interop:check:v1:completed", "campaign_id": 77,
                              "event_id": "py-1", "entity_id": "e" * 1000})
        # A fragmented message: the library sends one frame per chunk.
        await ws.send([emit[:10], emit[10:500], emit[500:]])
        got = {}
        while len(got) < 2:
            f = await recv_frame(ws)
            got[f.WhichOneof("body")] = f
        out["emit_ack"], out["event"] = got["emit_ack"].emit_ack, got["event"].event
        pong = await ws.ping(b"interop")
        await asyncio.wait_for(pong, TIMEOUT)
        out["pong"] = True
    out["close_code"] = ws.close_code
    return out


class Interop(unittest.TestCase):
    def start(self, *flags):
        self.ws_port = free_port()
        b = Broker("--ws-listen", "127.0.0.1:%d" % self.ws_port, *flags).start()
        self.addCleanup(lambda: self.assertEqual(b.stop(), 0, "nexusd did not exit 0"))
        return b

    def check(self, out):
        self.assertEqual(out["subprotocol"], "nexus.v1")
        self.assertEqual(out["welcome"].protocol_version, 1)
        self.assertGreater(out["ack"].subscription_id, 0)
        self.assertTrue(out["emit_ack"].success)
        self.assertEqual(out["event"].event_id, "py-1")
        self.assertEqual(out["event"].entity_id, "e" * 1000)
        self.assertEqual(out["event"].sequence, out["emit_ack"].sequence)
        self.assertTrue(out["pong"])
        self.assertEqual(out["close_code"], 1000)

    def test_plain(self):
        self.start()
        self.check(asyncio.run(round_trip("ws://127.0.0.1:%d/" % self.ws_port)))

    def test_refusals(self):
        self.start()

        async def refused(**kw):
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                async with websockets.connect("ws://127.0.0.1:%d/" % self.ws_port, **kw):
                    pass
            return cm.exception.status_code
        self.assertEqual(asyncio.run(refused(origin="http://evil.example")), 403)

        async def too_big():
            async with websockets.connect("ws://127.0.0.1:%d/" % self.ws_port) as ws:
                await ws.send(b"\x00" * 5000)  # before the hello: 4 KiB at most
                err = (await recv_frame(ws, "error")).error
                with self.assertRaises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                return err.code, ws.close_code
        self.assertEqual(asyncio.run(too_big()), ("frame_too_large", 1009))

        async def text():
            async with websockets.connect("ws://127.0.0.1:%d/" % self.ws_port) as ws:
                await ws.send("a text message")
                with self.assertRaises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                return ws.close_code
        self.assertEqual(asyncio.run(text()), 1003)

    def test_same_events_as_tcp(self):
        b = self.start()

        async def ws_side():
            async with websockets.connect("ws://127.0.0.1:%d/" % self.ws_port) as ws:
                await ws.send(frame(1, hello={"client_name": "ws-sub"}))
                await recv_frame(ws, "welcome")
                await ws.send(frame(2, subscribe={"campaign_id": 5}))
                await recv_frame(ws, "subscribe_ack")
                with nexus.connect(b.address) as tcp:
                    sub = tcp.subscribe(campaign=5)
                    for i in range(50):
                        tcp.emit("interop:tick:v1:completed", {"i": i}, campaign=5)
                    tcp_seen = [(ev.sequence, ev.event_id)
                                for ev in (sub.next(timeout=TIMEOUT) for _ in range(50))]
                ws_seen = []
                while len(ws_seen) < 50:
                    ev = (await recv_frame(ws, "event")).event
                    ws_seen.append((ev.sequence, ev.event_id))
                return tcp_seen, ws_seen
        tcp_seen, ws_seen = asyncio.run(ws_side())
        self.assertEqual([s for s, _ in ws_seen], list(range(1, 51)))
        self.assertEqual(ws_seen, tcp_seen)

    def test_wss(self):
        d = tempfile.mkdtemp(prefix="nexus-ws-interop-")
        self.addCleanup(shutil.rmtree, d, True)
        res = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", os.path.join(d, "k.pem"),
             "-out", os.path.join(d, "c.pem"), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(res.returncode, 0, "openssl: " + res.stderr)
        self.start("--tls-cert", os.path.join(d, "c.pem"), "--tls-key", os.path.join(d, "k.pem"))
        ctx = ssl.create_default_context(cafile=os.path.join(d, "c.pem"))
        self.check(asyncio.run(round_trip("wss://localhost:%d/" % self.ws_port, ctx)))
        # The certificate is checked: an untrusting client fails the handshake.
        with self.assertRaises(ssl.SSLCertVerificationError):
            asyncio.run(round_trip("wss://localhost:%d/" % self.ws_port,
                                   ssl.create_default_context()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
