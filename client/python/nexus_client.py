# SPDX-License-Identifier: Apache-2.0
"""A small Python client for the Nexus event broker, written from docs/PROTOCOL.md alone.

It proves that the protocol document and proto/*.proto are enough to speak to nexusd from
another language. The protobuf classes are generated from proto/ with `protoc --python_out`
(see load_protos) and never committed; google.protobuf.Struct comes with python3-protobuf.

What it covers: framing (4-byte big-endian length, then one nexus.v1.Frame), hello/welcome,
emit with or without an acknowledgement, subscribe/unsubscribe, receiving delivered events,
requests with their lifecycle (requested -> started -> ... -> one terminal event), ping and
stats. Replies are matched by Frame.correlation; frames that arrive while the client waits
for a reply (delivered events, gaps) are kept in arrival order for next_event(), so nothing
is lost. One Client is one blocking TCP connection, for one thread at a time.

Accounts and TLS: Client(user=..., token=...) logs in as an account of a broker started with
--accounts (token alone: a broker started with --token); both fall back to the environment
variables NEXUS_USER and NEXUS_TOKEN, which keep the token out of the process list. TLS
(the ssl module) is used with tls=True, or when ca_file, cert_file or key_file is given, or
when NEXUS_TLS_CA, NEXUS_TLS_CERT or NEXUS_TLS_KEY is set: the broker's certificate is
verified against ca_file (else the system store) and server_hostname (default: host);
cert_file/key_file present a client certificate (brokers with --tls-client-ca). A refused
login raises AuthError (code "unauthorized"), as does a denied operation
("permission_denied").
"""

import collections
import importlib
import os
import socket
import ssl
import struct
import subprocess
import sys
import time

PROTOCOL_VERSION = 1
# Largest frame accepted from the broker before its Welcome says otherwise (the broker's own
# default bound is 1 MiB; 64 MiB leaves room for any configuration).
FRAME_BYTES_MAX = 64 << 20
# The states that end a request (docs/PROTOCOL.md, docs/DESIGN.md §3).
TERMINAL_STATES = ("success", "failed", "cancelled", "timeout")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_protos(out_dir, proto_dir=None, protoc="protoc"):
    """Generates nexus_pb2 and common_pb2 into out_dir with protoc (unless they are there and
    newer than the .proto files), puts out_dir on sys.path and imports them.

    Returns (nexus_pb2, common_pb2). Raises RuntimeError when protoc fails or is missing.
    """
    proto_dir = proto_dir or os.path.join(_REPO_ROOT, "proto")
    sources = [os.path.join(proto_dir, n) for n in ("common.proto", "nexus.proto")]
    targets = [os.path.join(out_dir, n) for n in ("common_pb2.py", "nexus_pb2.py")]
    os.makedirs(out_dir, exist_ok=True)
    newest_source = max(os.path.getmtime(s) for s in sources)
    if not all(os.path.exists(t) and os.path.getmtime(t) >= newest_source for t in targets):
        cmd = [protoc, "-I", proto_dir, "--python_out=" + out_dir] + sources
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise RuntimeError("protoc not found (Debian: apt-get install protobuf-compiler)") from exc
        if res.returncode != 0:
            raise RuntimeError("protoc failed: " + res.stderr.strip())
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return importlib.import_module("nexus_pb2"), importlib.import_module("common_pb2")


class NexusError(Exception):
    """The broker answered a frame with an Error frame (code from docs/PROTOCOL.md)."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class AuthError(NexusError):
    """The broker refused the login (code "unauthorized": wrong user or token; the broker then
    closes the connection) or an operation this account may not do ("permission_denied")."""


AUTH_ERROR_CODES = ("unauthorized", "permission_denied")


def _error(code, message):
    return (AuthError if code in AUTH_ERROR_CODES else NexusError)(code, message)


def tls_context(ca_file=None, cert_file=None, key_file=None):
    """An ssl.SSLContext for a client of nexusd: certificate and host name verified against
    ca_file (PEM), or the system store when None; cert_file/key_file (PEM) present a client
    certificate (key_file defaults to cert_file, for a PEM holding both)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    elif key_file:
        raise ValueError("key_file needs cert_file")
    return ctx


def _env(name):
    v = os.environ.get(name)
    return v if v else None


class ConnectionClosed(Exception):
    """The broker closed the connection."""


def struct_to_python(st):
    """google.protobuf.Struct -> dict, with integral numbers as int (a Struct holds doubles)."""
    from google.protobuf import json_format

    def fix(v):
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json_format.MessageToDict(st))


class Client:
    """One connection to nexusd. pb is the (nexus_pb2, common_pb2) pair from load_protos."""

    def __init__(self, pb, host="127.0.0.1", port=7400, token=None, name="nexus-python",
                 timeout=10.0, user=None, tls=None, ca_file=None, cert_file=None,
                 key_file=None, server_hostname=None, ssl_context=None):
        """Connects and says hello. user/token: the account and its credential (default
        $NEXUS_USER / $NEXUS_TOKEN). tls: True for TLS, False for plain TCP, None (default):
        TLS when ca_file, cert_file, key_file, ssl_context or $NEXUS_TLS_CA, $NEXUS_TLS_CERT,
        $NEXUS_TLS_KEY is given. ssl_context replaces the context built from the files."""
        self.nexus_pb2, self.common_pb2 = pb
        self.timeout = timeout
        user = user if user is not None else _env("NEXUS_USER")
        token = token if token is not None else _env("NEXUS_TOKEN")
        ca_file = ca_file or _env("NEXUS_TLS_CA")
        cert_file = cert_file or _env("NEXUS_TLS_CERT")
        key_file = key_file or _env("NEXUS_TLS_KEY")
        if tls is None:
            tls = bool(ca_file or cert_file or key_file or ssl_context)
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                ctx = ssl_context or tls_context(ca_file, cert_file, key_file)
                sock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.tls = bool(tls)
        self.user = user  # the account logged in as (None: no account)
        self._rbuf = bytearray()
        self._held = collections.deque()  # frames received while waiting for a reply
        self._next_corr = 1
        self.frame_bytes_max = FRAME_BYTES_MAX
        try:
            self.welcome = self.hello(token=token, name=name, user=user)
        except BaseException:
            self._sock.close()
            raise

    # ---- framing -----------------------------------------------------------------------------

    def _send(self, frame):
        body = frame.SerializeToString()
        self._sock.sendall(struct.pack(">I", len(body)) + body)

    def _read_frame(self, deadline):
        """Reads one Frame off the socket; None when deadline (monotonic seconds) passes."""
        while True:
            if len(self._rbuf) >= 4:
                (length,) = struct.unpack_from(">I", self._rbuf)
                if length == 0 or length > self.frame_bytes_max:
                    raise ConnectionClosed("bad frame length %d from the broker" % length)
                if len(self._rbuf) >= 4 + length:
                    body = bytes(self._rbuf[4:4 + length])
                    del self._rbuf[:4 + length]
                    frame = self.nexus_pb2.Frame()
                    frame.ParseFromString(body)
                    if frame.WhichOneof("body") == "ping":
                        # The broker's liveness ping: answered at once, not handed to the
                        # caller, so that a connection that only reads stays open.
                        pong = self.nexus_pb2.Frame()
                        pong.correlation = frame.correlation
                        pong.pong.nonce = frame.ping.nonce
                        self._send(pong)
                        continue
                    return frame
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionClosed("the broker closed the connection")
            self._rbuf += chunk

    def _call(self, frame, timeout=None):
        """Sends frame with a fresh correlation and returns the reply that carries it. Events and
        gaps that arrive meanwhile are kept for next_event(). Raises NexusError on an error
        reply, TimeoutError when none comes in time."""
        frame.correlation = self._next_corr
        self._next_corr += 1
        self._send(frame)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._read_frame(deadline)
            if reply is None:
                raise TimeoutError("no reply from the broker in time")
            kind = reply.WhichOneof("body")
            if reply.correlation == frame.correlation and kind not in ("event", "gap"):
                if kind == "error":
                    raise _error(reply.error.code, reply.error.message)
                return reply
            self._held.append(reply)

    # ---- the protocol ------------------------------------------------------------------------

    def hello(self, token=None, name="nexus-python", user=None):
        """Says hello (the constructor does); raises AuthError when the broker refuses the
        user/token (it then closes the connection)."""
        f = self.nexus_pb2.Frame()
        f.hello.protocol_version = PROTOCOL_VERSION
        if token:
            f.hello.token = token
        if user:
            f.hello.user = user
        f.hello.client_name = name
        welcome = self._call(f).welcome
        if welcome.max_frame_bytes:
            self.frame_bytes_max = max(self.frame_bytes_max, welcome.max_frame_bytes)
        return welcome

    def _metadata(self, user_id=None, correlation_id=None, tags=None):
        md = self.common_pb2.Metadata()
        if user_id:
            md.global_context.user_id = user_id
        if correlation_id:
            md.global_context.correlation_id = correlation_id
        if tags:
            md.tags.extend(tags)
        return md

    def emit(self, event_type, campaign_id=0, data=None, event_id="", entity_id="",
             user_id=None, correlation_id=None, tags=None, ack=True):
        """Emits one event. data is a dict (becomes Payload.data, a Struct). With ack, returns
        the emit_ack EventResponse (event_id, sequence, message "accepted" or "duplicate");
        without, returns None (errors then come back as Error frames with correlation 0)."""
        f = self.nexus_pb2.Frame()
        e = f.emit
        e.event_type = event_type
        e.campaign_id = campaign_id
        e.event_id = event_id
        e.entity_id = entity_id
        if data is not None:
            e.payload.data.update(data)
        if user_id or correlation_id or tags:
            e.metadata.CopyFrom(self._metadata(user_id, correlation_id, tags))
        if not ack:
            f.correlation = 0
            self._send(f)
            return None
        return self._call(f).emit_ack

    def subscribe(self, patterns=(), campaign_id=0, user_id=None, from_sequence=0):
        """Subscribes; returns the subscription id. Events emitted after this returns are
        delivered (docs/PROTOCOL.md, subscribe). from_sequence (a broker with --data-dir, one
        campaign): the campaign's logged events from that sequence come first (next_event
        returns them), then the live ones, with no gap and no duplicate."""
        f = self.nexus_pb2.Frame()
        f.subscribe.event_types.extend(patterns)
        f.subscribe.campaign_id = campaign_id
        if from_sequence:
            f.subscribe.from_sequence = from_sequence
        if user_id:
            f.subscribe.metadata.global_context.user_id = user_id
        return self._call(f).subscribe_ack.subscription_id

    def unsubscribe(self, subscription_id):
        f = self.nexus_pb2.Frame()
        f.unsubscribe.subscription_id = subscription_id
        self._call(f)

    def ping(self, nonce=1):
        f = self.nexus_pb2.Frame()
        f.ping.nonce = nonce
        return self._call(f).pong.nonce

    def stats(self):
        f = self.nexus_pb2.Frame()
        f.stats.SetInParent()
        return self._call(f).stats_reply

    def recv(self, timeout=None):
        """The next frame of any kind: kept ones first, then the socket. None on timeout."""
        if self._held:
            return self._held.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._read_frame(deadline)

    def next_event(self, timeout=None):
        """The next delivered event (an EventResponse), None on timeout. Gaps are returned as
        Gap messages; an error frame (a rejected fire-and-forget emit) raises NexusError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            f = self.recv(left)
            if f is None:
                return None
            kind = f.WhichOneof("body")
            if kind == "event":
                return f.event
            if kind == "gap":
                return f.gap
            if kind == "error":
                raise _error(f.error.code, f.error.message)

    def request(self, action, campaign_id=0, data=None, event_id="", timeout=30.0):
        """Sends `action:requested` (action is service:action:vN) and yields the acknowledgement
        and then each lifecycle event until the terminal one (success, failed, cancelled,
        timeout). Frames that are not part of this request stay queued for next_event().
        Raises TimeoutError if the terminal event does not come in time."""
        ack = self.emit(action + ":requested", campaign_id, data=data, event_id=event_id)
        yield ack
        deadline = time.monotonic() + timeout
        others = []
        try:
            while True:
                f = self.recv(timeout=max(0.0, deadline - time.monotonic()))
                if f is None:
                    raise TimeoutError("request %s: no terminal event in time" % ack.event_id)
                if f.WhichOneof("body") != "event" or f.event.correlation_id != ack.event_id:
                    others.append(f)  # a subscription's event, a gap, an error: not ours
                    continue
                yield f.event
                if f.event.event_type.rsplit(":", 1)[-1] in TERMINAL_STATES:
                    return
        finally:
            self._held.extendleft(reversed(others))

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
