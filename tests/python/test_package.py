# SPDX-License-Identifier: Apache-2.0
"""The Python package itself: the generated protobuf code in client/python/nexus/_proto/ matches
proto/*.proto (regenerated with protoc into a temporary folder and compared; a changed schema
is noticed), and `pip install ./client/python` works offline on Debian 12 — into a venv made
with --system-site-packages (Debian's python3-protobuf and setuptools), with
--no-build-isolation --no-index — after which the installed package, imported from outside the
source tree with no protoc on PATH, runs against a real nexusd: blocking and asyncio
emit/subscribe, serve (streaming, a HandlerError), request and cancel (the handler sees it)."""

import os
import shutil
import subprocess
import sys
import unittest

from harness import SOURCE_DIR, Broker, tempdir

PKG_DIR = os.path.join(SOURCE_DIR, "client", "python")
GEN = os.path.join(PKG_DIR, "gen_proto.py")


def run(argv, **kw):
    kw.setdefault("timeout", 240)
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


# What the installed package does against the broker (argv[1]), run by the venv's python from
# outside the source tree: blocking and asyncio emit/subscribe, serve, request and cancel.
INSTALLED_SCRIPT = r"""
import asyncio, sys, threading
import nexus, nexus.aio
assert nexus.__file__.startswith(sys.prefix), nexus.__file__
assert nexus.aio.__file__.startswith(sys.prefix), nexus.aio.__file__
addr = sys.argv[1]
W = 10

with nexus.connect(addr) as c, nexus.connect(addr) as server:
    sub = c.subscribe('demo:*:v1:*', campaign=2)
    ack = c.emit('demo:venv:v1:completed', {'from': 'venv'}, campaign=2)
    ev = sub.next(timeout=W)
    assert ev.data == {'from': 'venv'} and ev.sequence == ack.sequence, ev
    assert c.call('test:echo:v1', {'x': 1}) == {'x': 1}
    print('blocking-emit-subscribe ok')

    cancelled = threading.Event()
    def quote(req):
        if req.data.get('qty', 0) <= 0:
            raise nexus.HandlerError('bad_qty', 'qty must be positive')
        if req.data.get('hang'):
            req.send({'waiting': True})
            if req.wait_cancelled(W):
                cancelled.set()
            return {}
        yield {'progress': 'pricing'}
        return {'price': 4.75 * req.data['qty']}
    server.serve('shop:quote', quote, streaming=True)
    r = c.request('shop:quote:v1', {'qty': 2}, campaign=5)
    states = []
    for _ in range(10):
        ev = r.next(timeout=W)
        states.append((ev.state, ev.data))
        if ev.state in ('success', 'failed', 'cancelled'):
            break
    assert states[0][0] == 'started', states
    assert ('stream', {'progress': 'pricing'}) in states, states
    assert states[-1] == ('success', {'price': 9.5}), states
    try:
        c.call('shop:quote:v1', {'qty': 0})
        raise AssertionError('no failure')
    except nexus.RequestFailed as e:
        assert e.code == 'bad_qty', e
    print('blocking-serve ok')

    r = c.request('shop:quote:v1', {'qty': 1, 'hang': True}, campaign=5)
    while True:
        ev = r.next(timeout=W)
        assert ev is not None and ev.state != 'success', ev
        if ev.state == 'stream':
            break
    r.cancel(timeout=W)
    assert r.wait(timeout=W).state == 'cancelled'
    assert cancelled.wait(W), 'the handler did not see the cancel'
    print('blocking-cancel ok')


async def aio_main():
    async with await nexus.aio.connect(addr) as c, await nexus.aio.connect(addr) as server:
        sub = await c.subscribe('math:*:*:*', campaign=3)
        await c.emit('math:note:v1:completed', {'n': 1}, campaign=3)
        ev = await sub.next(timeout=W)
        assert ev.event_type == 'math:note:v1:completed' and ev.data == {'n': 1}, ev
        print('aio-emit-subscribe ok')

        gone = asyncio.Event()
        async def double(req):
            await req.send({'working': True})
            if req.data.get('hang'):
                try:
                    await asyncio.sleep(3 * W)
                except asyncio.CancelledError:
                    gone.set()
                    raise
            return {'twice': req.data['n'] * 2}
        await server.serve('math:double', double, streaming=True)
        assert await c.call('math:double:v1', {'n': 21}, campaign=3) == {'twice': 42}
        seen = []
        while not seen or seen[-1] != 'success':
            ev = await sub.next(timeout=W)
            assert ev is not None, seen
            if ev.action == 'math:double:v1':
                seen.append(ev.state)
        assert seen == ['requested', 'started', 'stream', 'success'], seen
        print('aio-serve ok')

        r = await c.request('math:double:v1', {'n': 1, 'hang': True}, campaign=3)
        while (await r.next(timeout=W)).state != 'stream':
            pass
        await r.cancel(timeout=W)
        assert (await r.wait(timeout=W)).state == 'cancelled'
        await asyncio.wait_for(gone.wait(), W)
        try:
            await r.result(timeout=W)
            raise AssertionError('no cancel')
        except nexus.RequestCancelled:
            pass
        print('aio-cancel ok')

asyncio.run(aio_main())
print('installed-ok', nexus.__file__)
"""


class GeneratedCode(unittest.TestCase):
    def test_up_to_date(self):
        if shutil.which("protoc") is None:
            self.fail("protoc is not installed (Debian: protobuf-compiler, which ./dev installs)")
        res = run([sys.executable, GEN, "--check"])
        self.assertEqual(res.returncode, 0, "client/python/nexus/_proto is stale:\n"
                         + res.stdout + res.stderr)

    def test_a_changed_schema_is_noticed(self):
        tmp = tempdir(self)
        for name in ("common.proto", "nexus.proto"):
            shutil.copy(os.path.join(SOURCE_DIR, "proto", name), tmp)
        with open(os.path.join(tmp, "nexus.proto"), "a", encoding="utf-8") as f:
            f.write("\nmessage AddedByTheTest { string x = 1; }\n")
        res = run([sys.executable, GEN, "--check", "--proto-dir", tmp])
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("_ADDEDBYTHETEST._serialized_start", res.stdout)
        self.assertIn("differ from proto/", res.stderr)


class VenvInstall(unittest.TestCase):
    def test_pip_install_offline(self):
        tmp = tempdir(self)
        # A copy: pip builds in the tree it is given (build/, *.egg-info), and the source tree
        # must stay clean.
        src = os.path.join(tmp, "src")
        shutil.copytree(PKG_DIR, src, ignore=shutil.ignore_patterns(
            "__pycache__", "build", "*.egg-info"))
        venv = os.path.join(tmp, "venv")
        res = run([sys.executable, "-m", "venv", "--system-site-packages", venv])
        self.assertEqual(res.returncode, 0, "python3 -m venv failed (Debian: python3-venv):\n"
                         + res.stderr)
        py = os.path.join(venv, "bin", "python")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
                   PIP_NO_CACHE_DIR="1")  # nothing written to $HOME
        env.pop("PYTHONPATH", None)
        res = run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index", src],
                  env=env)
        self.assertEqual(res.returncode, 0, "pip install failed:\n" + res.stdout + res.stderr)
        self.assertIn("Successfully installed nexus-client", res.stdout)

        b = Broker("--test-handlers").start()
        self.addCleanup(b.kill)
        script = os.path.join(tmp, "installed.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(INSTALLED_SCRIPT)
        # No PATH: nothing can run protoc; cwd outside the source tree.
        run_env = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}
        res = run([py, script, b.address], env=run_env, cwd=tmp, timeout=120)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("installed-ok " + venv, res.stdout)
        for step in ("blocking-emit-subscribe", "blocking-serve", "blocking-cancel",
                     "aio-emit-subscribe", "aio-serve", "aio-cancel"):
            self.assertIn(step + " ok", res.stdout, res.stdout + res.stderr)
        self.assertEqual(b.stop(), 0)
        # And the source tree was left alone.
        for leftover in ("build", "nexus_client.egg-info"):
            self.assertFalse(os.path.exists(os.path.join(PKG_DIR, leftover)), leftover)


if __name__ == "__main__":
    unittest.main(verbosity=2)
