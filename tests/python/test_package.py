# SPDX-License-Identifier: Apache-2.0
"""The Python package itself: the generated protobuf code in client/python/nexus/_proto/ matches
proto/*.proto (regenerated with protoc into a temporary folder and compared; a changed schema
is noticed), and `pip install ./client/python` works offline on Debian 12 — into a venv made
with --system-site-packages (Debian's python3-protobuf and setuptools), with
--no-build-isolation --no-index — after which the installed package, imported from outside the
source tree with no protoc on PATH, does a round trip with a real nexusd."""

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
        script = (
            "import nexus, nexus.aio, sys\n"
            "assert nexus.__file__.startswith(sys.prefix), nexus.__file__\n"
            "with nexus.connect(sys.argv[1]) as c:\n"
            "    sub = c.subscribe('demo:*:v1:*', campaign=2)\n"
            "    c.emit('demo:venv:v1:completed', {'from': 'venv'}, campaign=2)\n"
            "    ev = sub.next(timeout=10)\n"
            "    assert ev.data == {'from': 'venv'}, ev\n"
            "    assert c.call('test:echo:v1', {'x': 1}) == {'x': 1}\n"
            "print('installed-ok', nexus.__file__)\n")
        # No PATH: nothing can run protoc; cwd outside the source tree.
        run_env = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}
        res = run([py, "-c", script, b.address], env=run_env, cwd=tmp)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertIn("installed-ok " + venv, res.stdout)
        self.assertEqual(b.stop(), 0)
        # And the source tree was left alone.
        for leftover in ("build", "nexus_client.egg-info"):
            self.assertFalse(os.path.exists(os.path.join(PKG_DIR, leftover)), leftover)


if __name__ == "__main__":
    unittest.main(verbosity=2)
