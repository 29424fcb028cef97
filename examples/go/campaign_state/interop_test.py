# SPDX-License-Identifier: Apache-2.0
"""campaign_state across languages: the Go external handler of this folder, built and run as
a program against a real nexusd, streams campaign state to a Python requester (the package in
client/python) and to `nexusctl stream`. Run by the CTest test go/campaign_state_interop
(cmake/go_client.cmake) with NEXUSD, NEXUSCTL, GO (and the Go cache variables) set.

Each requester opens campaign_ext:stream_state:v1 on its own campaign, waits for the snapshot,
makes three changes through the built-in campaign:* handlers and checks the stream events in
order (stream_seq 1..4: the snapshot and one diff per change, with versions 0..3), then the
terminal event: `cancelled`, after the Python requester's cancel or nexusctl's --count."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.dont_write_bytecode = True

import nexus  # noqa: E402  (after the path set-up above)

WAIT_S = 20.0  # every wait; generous for an ASan nexusd on a loaded machine
ACTION = "campaign_ext:stream_state:v1"

# The three changes and the diff the handler streams for each (last_updated_ms and
# campaign_id left out of the comparison).
CHANGES = [
    ("campaign:update:v1", {"updates": {"theme": "dark", "max_players": 8}},
     {"kind": "change", "version": 1, "changed": {"theme": "dark", "max_players": 8}}),
    ("campaign:feature:v1", {"action": "add", "features": ["chat", "video"]},
     {"kind": "change", "version": 2, "features_added": ["chat", "video"]}),
    ("campaign:update:v1", {"updates": {"theme": None, "round": 2}},
     {"kind": "change", "version": 3, "changed": {"round": 2}, "removed": ["theme"]}),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def norm(data):
    """A stream event's data without the fields that differ from run to run; whole numbers
    as int (the JSON of nexusctl and the Python client's dicts compare alike)."""
    d = {k: v for k, v in data.items() if k not in ("last_updated_ms", "campaign_id")}
    if isinstance(d.get("version"), float) and d["version"].is_integer():
        d["version"] = int(d["version"])
    return d


class Lines:
    """The lines a process writes to a pipe, collected by a thread."""

    def __init__(self, pipe):
        self.lines = []
        self.cv = threading.Condition()
        self.t = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.t.start()

    def _read(self, pipe):
        for line in pipe:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def wait_for(self, pred, what):
        deadline = time.monotonic() + WAIT_S
        with self.cv:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %s; lines so far:\n%s"
                                         % (what, "\n".join(self.lines)))
                self.cv.wait(left)

    def text(self):
        with self.cv:
            return "\n".join(self.lines)


def stop(proc):
    """SIGTERM, then SIGKILL after a bound; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)
    for reader in getattr(proc, "readers", ()):
        reader.t.join(WAIT_S)
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    return proc.returncode


class Interop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for var in ("NEXUSD", "NEXUSCTL"):
            if not os.environ.get(var):
                raise RuntimeError(var + " is not set (run through ctest)")
        cls.tmp = tempfile.mkdtemp(prefix="nexus-go-interop-")
        cls.procs = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        go = os.environ.get("GO") or shutil.which("go")
        if not go:
            raise RuntimeError("no go toolchain (GO unset and no go on PATH)")
        exe = os.path.join(cls.tmp, "campaign_state")
        env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=readonly")
        res = subprocess.run([go, "build", "-o", exe, "."], cwd=HERE, env=env,
                             capture_output=True, text=True, timeout=240, check=False)
        if res.returncode != 0:
            raise RuntimeError("go build failed:\n" + res.stdout + res.stderr)

        cls.addr = "127.0.0.1:%d" % free_port()
        cls.broker = subprocess.Popen(
            [os.environ["NEXUSD"], "--listen", cls.addr, "--shards", "2", "--log-level", "warn"],
            stdin=subprocess.DEVNULL)
        cls.procs.append(cls.broker)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(cls.addr.split(":")[1])), 1).close()
                break
            except OSError:
                if cls.broker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nexusd did not start")
                time.sleep(0.02)

        cls.handler = subprocess.Popen([exe, "-broker", cls.addr], stdin=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        cls.procs.append(cls.handler)
        cls.handler_log = Lines(cls.handler.stderr)
        cls.handler.readers = [cls.handler_log]
        cls.handler_log.wait_for(lambda l: "serving " + ACTION.rsplit(":", 1)[0] in l,
                                 "the handler to register")
        cls.client = nexus.connect(cls.addr)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "client", None):
            cls.client.close()
        statuses = [stop(p) for p in reversed(cls.procs)]
        shutil.rmtree(cls.tmp, ignore_errors=True)
        cls.statuses = statuses

    def change_all(self, campaign):
        for action, data, _ in CHANGES:
            self.client.call(action, data, campaign=campaign, timeout=WAIT_S)

    def test_python_requester(self):
        camp = 4201
        req = self.client.request(ACTION, campaign=camp)
        got, states = [], []
        while not states or states[-1] != "cancelled":
            ev = req.next(timeout=WAIT_S)
            self.assertIsNotNone(ev, "the request ended before `cancelled`: %s" % states)
            states.append(ev.state)
            if ev.state != "stream":
                continue
            self.assertEqual(ev.stream_seq, len(got) + 1, ev)
            self.assertEqual(ev.data["campaign_id"], str(camp))
            got.append(norm(ev.data))
            if len(got) == 1:
                self.assertEqual(got[0], {"kind": "snapshot", "version": 0, "state": {},
                                          "features": []})
                self.change_all(camp)
            if len(got) == 1 + len(CHANGES):
                req.cancel(timeout=WAIT_S)
        self.assertEqual(got[1:], [want for _, _, want in CHANGES])
        self.assertEqual(states[0], "started", states)
        self.assertEqual(states[-1], "cancelled", states)
        with self.assertRaises(nexus.RequestCancelled):
            req.result(timeout=WAIT_S)
        self.handler_log.wait_for(lambda l: "ended by the broker" in l,
                                  "the handler to see the cancel")

    def test_nexusctl_stream(self):
        camp = 4202
        proc = subprocess.Popen(
            [os.environ["NEXUSCTL"], "--broker", self.addr, "stream", ACTION, "--campaign",
             str(camp), "--count", str(1 + len(CHANGES)), "--timeout", "60s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(stop, proc)
        out = Lines(proc.stdout)
        proc.readers = [out]
        out.wait_for(lambda l: '"stream_seq":1' in l, "the snapshot from nexusctl stream")
        self.change_all(camp)
        try:
            rc = proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.fail("nexusctl stream did not end:\n" + out.text())
        out.t.join(WAIT_S)
        err = proc.stderr.read()
        self.assertEqual(rc, 0, out.text() + "\n" + err)
        events = [json.loads(line) for line in out.lines]
        types = [e["event_type"] for e in events]
        self.assertEqual(types[0], ACTION + ":requested", types)
        self.assertEqual(types[1], ACTION + ":started", types)
        self.assertEqual(types[-1], ACTION + ":cancelled", types)
        stream = [e for e in events if e["event_type"] == ACTION + ":stream"]
        self.assertEqual([e["stream_seq"] for e in stream], [1, 2, 3, 4])
        seqs = [e["sequence"] for e in events]
        self.assertEqual(seqs, sorted(seqs), "campaign order")
        datas = [norm(e["payload"]["data"]) for e in stream]
        self.assertEqual(datas[0], {"kind": "snapshot", "version": 0, "state": {},
                                    "features": []})
        self.assertEqual(datas[1:], [want for _, _, want in CHANGES])
        for e in events[1:]:
            self.assertEqual(e["correlation_id"], events[0]["event_id"], e)


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    ok = result.wasSuccessful() and result.testsRun > 0
    # The handler exits 0 on SIGTERM, nexusd too (after the handler, which it outlives).
    statuses = getattr(Interop, "statuses", None)
    if statuses is not None and statuses != [0, 0]:
        print("exit statuses (handler, nexusd): %s, want [0, 0]" % statuses, file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)
