# SPDX-License-Identifier: Apache-2.0
"""docs/QUICKSTART.md, the Python and Go sections ("8. The same from Python" and "Go"), run as
written: every code block of those sections is taken from the document and run with bash
against a real nexusd, and the output the document shows is compared with what came (ids,
sequence numbers, durations masked). Run by the CTest test go/quickstart (cmake/go_client.cmake)
with NEXUSD and GO set.

One substitution: the document's broker listens on 127.0.0.1:7400, the default of
client/python/example.py; here the broker gets a free port, and the example's command is given
`--port N` at its end. Nothing else is changed. The commands run with a temporary HOME (the
venv goes to ~/nexus-venv) and, for the Python section, in a temporary copy of the repository
root holding client/python (pip builds in the tree it installs from; the source tree stays
clean). The Go section runs in the source tree (go test writes only to GOCACHE)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("NEXUS_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
DOC = os.path.join(ROOT, "docs", "QUICKSTART.md")
WAIT_S = 20.0


def section(text, heading_re):
    """The text of the `## ` section whose heading matches heading_re."""
    parts = re.split(r"(?m)^(## .*)$", text)
    for i in range(1, len(parts), 2):
        if re.search(heading_re, parts[i]):
            return parts[i + 1]
    raise AssertionError("docs/QUICKSTART.md has no section matching %r" % heading_re)


def blocks(sec):
    """The ``` code blocks of a section, as lists of lines."""
    return [b.split("\n") for b in re.findall(r"(?ms)^```[a-z]*\n(.*?)\n```$", sec)]


def steps(block):
    """(command, expected output lines or None) for each command of a block: in a block with
    `$ ` prompts, each prompt line and the lines after it; in one without, each line is a
    command whose output the document does not show."""
    if not any(line.startswith("$ ") for line in block):
        return [(line, None) for line in block if line.strip()]
    out = []
    for line in block:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"\bsequence=\d+"), "sequence=N"),
    (re.compile(r"\t(\d+\.\d+s|\(cached\))$"), "\tTIME"),
]


def mask(line):
    for rx, rep in MASKS:
        line = rx.sub(rep, line)
    return line.rstrip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quickstart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = open(DOC, encoding="utf-8").read()
        cls.tmp = tempfile.mkdtemp(prefix="nexus-quickstart-")
        cls.port = free_port()
        # As in section 1 (--test-handlers), with the document's two shards.
        cls.broker = subprocess.Popen(
            [os.environ["NEXUSD"], "--listen", "127.0.0.1:%d" % cls.port, "--shards", "2",
             "--test-handlers", "--log-level", "warn"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", cls.port), 1).close()
                break
            except OSError:
                if cls.broker.poll() is not None or time.monotonic() > deadline:
                    cls.tearDownClass()
                    raise RuntimeError("nexusd did not start")
                time.sleep(0.02)
        home = os.path.join(cls.tmp, "home")
        os.mkdir(home)
        # python3 is the interpreter running this test (Debian's, with python3-protobuf), go
        # the one CMake found.
        path = [os.path.dirname(sys.executable)]
        if os.environ.get("GO"):
            path.append(os.path.dirname(os.environ["GO"]))
        cls.env = dict(os.environ, HOME=home, PATH=":".join(path + ["/usr/bin", "/bin"]),
                       PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
                       PIP_NO_CACHE_DIR="1")
        for var in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_INDEX_URL"):
            cls.env.pop(var, None)

    @classmethod
    def tearDownClass(cls):
        if cls.broker.poll() is None:
            cls.broker.send_signal(signal.SIGTERM)
            try:
                cls.broker.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                cls.broker.kill()
                cls.broker.wait(WAIT_S)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_step(self, cmd, expected, cwd, timeout):
        res = subprocess.run(["bash", "-c", "set -e\n" + cmd], cwd=cwd, env=self.env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout, check=False)
        self.assertEqual(res.returncode, 0, "%s\nexit %d\n%s%s"
                         % (cmd, res.returncode, res.stdout, res.stderr))
        if expected is not None:
            got = [mask(line) for line in res.stdout.rstrip("\n").split("\n")]
            want = [mask(line) for line in expected]
            self.assertEqual(got, want, "%s: the output differs from docs/QUICKSTART.md\n"
                             "stderr:\n%s" % (cmd, res.stderr))
        return res

    def test_python(self):
        sec = section(self.text, r"^## \d+\. The same from Python")
        bs = blocks(sec)
        self.assertEqual(len(bs), 2, "expected the example's block and the venv block")
        root = os.path.join(self.tmp, "root")
        shutil.copytree(os.path.join(ROOT, "client", "python"),
                        os.path.join(root, "client", "python"),
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        ran = 0
        for block in bs:
            for cmd, expected in steps(block):
                if "client/python/example.py" in cmd:
                    cmd += " --port %d" % self.port  # the one substitution (docstring)
                self.run_step(cmd, expected, root, 240)
                ran += 1
        self.assertEqual(ran, 3)
        # What the venv block promised: the package installed in ~/nexus-venv, usable from
        # outside the tree.
        py = os.path.join(self.env["HOME"], "nexus-venv", "bin", "python")
        script = ("import sys, nexus\n"
                  "assert nexus.__file__.startswith(sys.prefix), nexus.__file__\n"
                  "with nexus.connect(sys.argv[1]) as c:\n"
                  "    print(c.call('test:echo:v1', {'from': 'venv'}))\n")
        res = subprocess.run([py, "-c", script, "127.0.0.1:%d" % self.port], cwd=self.tmp,
                             env=self.env, capture_output=True, text=True, timeout=60,
                             check=False)
        self.assertEqual((res.returncode, res.stdout), (0, "{'from': 'venv'}\n"), res.stderr)

    def test_go(self):
        sec = section(self.text, r"^## Go\s*$")
        bs = blocks(sec)
        self.assertEqual(len(bs), 1, "expected one block")
        todo = steps(bs[0])
        self.assertEqual(len(todo), 1)
        for cmd, expected in todo:
            self.assertIsNotNone(expected)
            self.run_step(cmd, expected, ROOT, 280)


if __name__ == "__main__":
    unittest.main(verbosity=2)
