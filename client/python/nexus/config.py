# SPDX-License-Identifier: Apache-2.0
"""Where and how to connect, the same way nexusctl reads it (docs/SECURITY.md): the address
from the argument or $NEXUS_BROKER (host:port, [v6]:port or host; default 127.0.0.1:7400),
the account and token from the arguments or $NEXUS_USER / $NEXUS_TOKEN, TLS from the arguments
or $NEXUS_TLS_CA / $NEXUS_TLS_CERT / $NEXUS_TLS_KEY (any of them turns TLS on)."""

import os
import ssl

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7400


def env(name):
    """The environment variable's value, None when unset or empty."""
    v = os.environ.get(name)
    return v if v else None


def parse_address(address=None):
    """(host, port) from "host:port", "[v6]:port", "host", a (host, port) pair, or None (then
    $NEXUS_BROKER, else 127.0.0.1:7400). Raises ValueError on a malformed one."""
    if address is None:
        address = env("NEXUS_BROKER") or "%s:%d" % (DEFAULT_HOST, DEFAULT_PORT)
    if isinstance(address, tuple):
        host, port = address
        return str(host), int(port)
    a = str(address).strip()
    port = DEFAULT_PORT
    if a.startswith("["):
        close = a.find("]")
        if close < 0 or (len(a) > close + 1 and a[close + 1] != ":"):
            raise ValueError("%r: expected HOST:PORT or [IPv6]:PORT" % address)
        host, rest = a[1:close], a[close + 2:]
        if rest:
            port = _port(rest, address)
    elif a.count(":") == 1:
        host, p = a.split(":")
        port = _port(p, address)
    else:  # a host name, or a bare IPv6 address
        host = a
    if not host:
        raise ValueError("%r: expected HOST:PORT" % address)
    return host, port


def _port(text, address):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("%r: the port must be a number in 1..65535" % address)
    return int(text)


def tls_context(ca_file=None, cert_file=None, key_file=None):
    """An ssl.SSLContext for a client of nexusd: the broker's certificate and name verified
    against ca_file (PEM), or the system store when None; cert_file/key_file (PEM) present a
    client certificate (key_file defaults to cert_file, for a PEM holding both)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    elif key_file:
        raise ValueError("key_file needs cert_file")
    return ctx


class Settings:
    """Everything needed to (re)connect, resolved once from the arguments and the environment."""

    def __init__(self, address=None, user=None, token=None, tls=None, ca_file=None,
                 cert_file=None, key_file=None, server_hostname=None, ssl_context=None):
        self.host, self.port = parse_address(address)
        self.user = user if user is not None else env("NEXUS_USER")
        self.token = token if token is not None else env("NEXUS_TOKEN")
        ca_file = ca_file or env("NEXUS_TLS_CA")
        cert_file = cert_file or env("NEXUS_TLS_CERT")
        key_file = key_file or env("NEXUS_TLS_KEY")
        if tls is None:
            tls = bool(ca_file or cert_file or key_file or ssl_context)
        self.tls = bool(tls)
        self.ssl_context = None
        if self.tls:
            self.ssl_context = ssl_context or tls_context(ca_file, cert_file, key_file)
        self.server_hostname = server_hostname or self.host

    @property
    def address(self):
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)
