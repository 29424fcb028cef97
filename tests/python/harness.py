# SPDX-License-Identifier: Apache-2.0
"""What the Python client's tests share: the real nexusd ($NEXUSD, set by ctest) started on a
free loopback port and stopped with SIGTERM (it must exit 0, as in tests/harness.h), waits
with a bound, and the import of the client package from client/python/ (or, with
NEXUS_TEST_INSTALLED=1, from wherever python finds it: the venv install test)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("NEXUS_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
if not os.environ.get("NEXUS_TEST_INSTALLED"):
    sys.path.insert(0, os.path.join(SOURCE_DIR, "client", "python"))
sys.dont_write_bytecode = True

import nexus  # noqa: E402  (after the path set-up above)
import nexus.aio  # noqa: E402,F401

# Generous: the suite also runs against an ASan build of nexusd.
WAIT_S = 10.0


def nexusd_path():
    p = os.environ.get("NEXUSD")
    if not p:
        raise RuntimeError("NEXUSD is not set (run the tests through ctest, or set it to the "
                           "nexusd binary)")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=WAIT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))


class Broker:
    """One nexusd process. start() picks a free port the first time and keeps it, so that a
    restart comes back at the same address (what a reconnecting client needs)."""

    def __init__(self, *flags, shards=2):
        self.flags = list(flags)
        self.shards = shards
        self.port = None
        self.proc = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        for _ in range(5):
            if self.port is None:
                self.port = free_port()
            argv = [nexusd_path(), "--listen", self.address, "--shards", str(self.shards),
                    "--log-level", os.environ.get("NEXUS_TEST_LOG", "warn")] + self.flags
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.kill()
            self.port = None  # taken meanwhile? try another
        raise RuntimeError("nexusd did not start")

    def stop(self):
        """SIGTERM; returns the exit status (0 expected)."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class BrokerCase(unittest.TestCase):
    """A test with a broker (flags BROKER_FLAGS) started before each test and stopped after,
    checking that it exits 0 — unless the test already stopped it."""

    BROKER_FLAGS = ("--test-handlers",)

    def setUp(self):
        self.broker = Broker(*self.BROKER_FLAGS).start()
        self.addCleanup(self._stop_broker)

    def _stop_broker(self):
        if self.broker.proc is not None:
            self.assertEqual(self.broker.stop(), 0, "nexusd did not exit 0 on SIGTERM")

    def client(self, **kw):
        c = nexus.connect(self.broker.address, **kw)
        self.addCleanup(c.close)
        return c


def tempdir(case):
    d = tempfile.mkdtemp(prefix="nexus-pytest-")
    case.addCleanup(shutil.rmtree, d, True)
    return d
