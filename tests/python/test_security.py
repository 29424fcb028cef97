# SPDX-License-Identifier: Apache-2.0
"""Credentials and TLS (docs/SECURITY.md) with the Python client, against a nexusd started with
--accounts and a TLS certificate made at test time by the openssl command: logging in with
user/token arguments and with $NEXUS_USER / $NEXUS_TOKEN / $NEXUS_TLS_CA / $NEXUS_BROKER, the
broker stamping the account's id, a refused login (AuthError, not retried), a refused
operation (permission_denied), serving as an account, and the TLS failures (untrusted
certificate, wrong name, plain TCP). Blocking and asyncio."""

import os
import shutil
import ssl
import subprocess
import tempfile
import unittest

from harness import WAIT_S, Broker, nexus, nexusd_path

TOKEN = "py-test-token-0123456789abcdef"

SETUP = r"""set -e; cd "$1"; exec 2>setup.log
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=test-ca -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
  -extfile ext -out server.pem
h=$(printf '%s' "$3" | "$2" --hash-token)
printf 'user svc\n  token %s\n  id svc-id\n  publish * *\n  subscribe * *\n' "$h" >accounts
printf '  request *\n  handle *\n' >>accounts
printf 'user ro\n  token %s\n  subscribe * *\n' "$h" >>accounts
"""


# The broker and its files, shared by every test of the module (setUpModule).
ENV = {}


def setUpModule():
    d = tempfile.mkdtemp(prefix="nexus-pytest-sec-")
    ENV["dir"] = d
    res = subprocess.run(["sh", "-c", SETUP, "sh", d, nexusd_path(), TOKEN],
                         capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        with open(os.path.join(d, "setup.log"), encoding="utf-8") as f:
            raise AssertionError("making certificates and accounts failed (openssl?): " + f.read())
    ENV["ca"] = os.path.join(d, "ca.pem")
    ENV["broker"] = Broker("--test-handlers", "--accounts", os.path.join(d, "accounts"),
                           "--tls-cert", os.path.join(d, "server.pem"),
                           "--tls-key", os.path.join(d, "server.key")).start()


def tearDownModule():
    try:
        b = ENV.get("broker")
        if b is not None:
            assert b.stop() == 0, "nexusd did not exit 0 on SIGTERM"
    finally:
        shutil.rmtree(ENV["dir"], True)


class Secure(unittest.TestCase):
    def setUp(self):
        self.broker, self.ca = ENV["broker"], ENV["ca"]

    def test_arguments(self):
        with nexus.connect(self.broker.address, user="svc", token=TOKEN,
                           ca_file=self.ca) as c:
            self.assertTrue(c.tls)
            self.assertEqual(c.user, "svc")
            sub = c.subscribe(campaign=4)
            c.emit("demo:a:v1:completed", {"x": 1}, campaign=4)
            ev = sub.next(timeout=WAIT_S)
            self.assertEqual(ev.user_id, "svc-id")  # stamped by the broker
            self.assertEqual(c.call("test:echo:v1", {"y": 2}), {"y": 2})
            with self.assertRaises(nexus.AuthError) as cm:
                c.emit("demo:a:v1:completed", campaign=4, user_id="someone-else")
            self.assertEqual(cm.exception.code, "permission_denied")

    def test_environment(self):
        env = {"NEXUS_BROKER": self.broker.address, "NEXUS_USER": "svc", "NEXUS_TOKEN": TOKEN,
               "NEXUS_TLS_CA": self.ca}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with nexus.connect() as c:
                self.assertTrue(c.tls)
                self.assertEqual(c.call("test:echo:v1", {"env": 1}), {"env": 1})
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def test_refusals(self):
        with self.assertRaises(nexus.AuthError) as cm:
            nexus.connect(self.broker.address, user="svc", token="wrong-token-0123456789",
                          ca_file=self.ca)
        self.assertEqual(cm.exception.code, "unauthorized")
        with nexus.connect(self.broker.address, user="ro", token=TOKEN, ca_file=self.ca) as ro:
            with self.assertRaises(nexus.AuthError) as cm:
                ro.emit("demo:a:v1:completed", campaign=1)
            self.assertEqual(cm.exception.code, "permission_denied")
            with self.assertRaises(nexus.AuthError) as cm:
                ro.serve("x:y", lambda req: None)
            self.assertEqual(cm.exception.code, "permission_denied")
            ro.subscribe(campaign=1)  # allowed

    def test_tls_failures(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            nexus.connect(self.broker.address, user="svc", token=TOKEN, tls=True)
        with self.assertRaises(ssl.SSLCertVerificationError):
            nexus.connect(self.broker.address, user="svc", token=TOKEN, ca_file=self.ca,
                          server_hostname="not-this-host")
        with self.assertRaises((nexus.ConnectionLost, TimeoutError, OSError)):
            nexus.connect(self.broker.address, user="svc", token=TOKEN, tls=False, timeout=3)

    def test_serve_as_account(self):
        with nexus.connect(self.broker.address, user="svc", token=TOKEN, ca_file=self.ca) as s, \
                nexus.connect(self.broker.address, user="svc", token=TOKEN,
                              ca_file=self.ca) as r:
            s.serve("acct:who", lambda req: {"asked_by": req.user_id})
            self.assertEqual(r.call("acct:who:v1"), {"asked_by": "svc-id"})


class SecureAsync(unittest.IsolatedAsyncioTestCase):
    async def test_login(self):
        b, ca = ENV["broker"], ENV["ca"]
        c = await nexus.aio.connect(b.address, user="svc", token=TOKEN, ca_file=ca)
        try:
            self.assertEqual(await c.call("test:echo:v1", {"a": 1}), {"a": 1})
        finally:
            await c.close()
        with self.assertRaises(nexus.AuthError):
            await nexus.aio.connect(b.address, user="nobody", token=TOKEN, ca_file=ca)


if __name__ == "__main__":
    unittest.main(verbosity=2)
