# SPDX-License-Identifier: Apache-2.0
"""The blocking client: the same operations as the asyncio one (nexus.aio), as plain calls.

    import nexus

    with nexus.connect("127.0.0.1:7400") as c:
        sub = c.subscribe(["order:*:v1:*"], campaign=42)
        c.emit("order:placed:v1:completed", {"total": 9.5}, campaign=42)
        print(sub.next(timeout=5))
        print(c.call("test:echo:v1", {"hello": "world"}))

A Client runs an asyncio client (nexus.aio.AsyncClient) on an event loop in a daemon thread of
its own; each call hands its work to that loop and waits for the result. So a Client may be
used from several threads at once, reconnects by itself like the asyncio client (see there),
and serves requests in the background: handlers given to serve() run in a thread pool and
the program's main thread is free (run() waits until the client is closed).
"""

import asyncio
import threading

from .aio import AsyncClient
from .errors import ClientClosed


def connect(address=None, **kwargs):
    """A connected Client (see Client)."""
    return Client(address, **kwargs)


class Client:
    """One connection to nexusd. The arguments are those of nexus.aio.AsyncClient: address
    (default $NEXUS_BROKER, else 127.0.0.1:7400), user, token, tls, ca_file, cert_file,
    key_file, server_hostname, ssl_context, name, timeout, reconnect, reconnect_delay,
    reconnect_delay_max, reconnect_attempts, queue_max. Connects at once; raises OSError,
    AuthError, ConnectionLost or TimeoutError when that fails."""

    def __init__(self, address=None, **kwargs):
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="nexus-client", daemon=True)
        self._thread.start()

        async def start():
            return await AsyncClient(address, **kwargs).connect()

        try:
            self._aio = self._run(start())
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _stop_loop(self):
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coro):
        """Runs coro on the client's loop and returns its result (or raises its exception)."""
        if self._closed:
            coro.close()
            raise ClientClosed()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking nexus.Client call from its own event loop: use "
                               "nexus.aio.AsyncClient in asyncio code")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # KeyboardInterrupt and the like: do not leave the call running
            raise

    @property
    def aio(self):
        """The underlying AsyncClient (use it only from its loop)."""
        return self._aio

    welcome = property(lambda self: self._aio.welcome)
    user = property(lambda self: self._aio.user)
    tls = property(lambda self: self._aio.tls)
    name = property(lambda self: self._aio.name)
    reconnects = property(lambda self: self._aio.reconnects)
    async_errors = property(lambda self: self._aio.async_errors)
    connected = property(lambda self: self._aio.connected)

    def emit(self, event_type, data=None, **kwargs):
        """AsyncClient.emit: the acknowledgement (an Event), or None with ack=False."""
        return self._run(self._aio.emit(event_type, data, **kwargs))

    def flush(self, timeout=None):
        """AsyncClient.flush: raises the first refused fire-and-forget emit, if any."""
        return self._run(self._aio.flush(timeout))

    def ping(self, timeout=None):
        """A round trip; its duration in seconds."""
        return self._run(self._aio.ping(timeout))

    def stats(self, timeout=None):
        return self._run(self._aio.stats(timeout))

    def subscribe(self, patterns=(), **kwargs):
        """AsyncClient.subscribe; returns a blocking Subscription (iterate it, or next())."""
        return Subscription(self, self._run(self._aio.subscribe(patterns, **kwargs)))

    def request(self, action, data=None, **kwargs):
        """AsyncClient.request; returns a blocking Request (iterate it, next(), result(),
        wait(), cancel())."""
        return Request(self, self._run(self._aio.request(action, data, **kwargs)))

    def call(self, action, data=None, **kwargs):
        """request() and its result(): the data of `success`, or RequestFailed & co."""
        return self._run(self._aio.call(action, data, **kwargs))

    def serve(self, action, handler, **kwargs):
        """AsyncClient.serve. handler is a plain function or generator function (run in a
        thread pool; it receives a SyncHandlerRequest whose send() blocks and whose cancelled
        says when to stop), or an async one (run on the client's loop)."""
        return self._run(self._aio.serve(action, handler, **kwargs))

    def run(self):
        """Blocks until the client is closed (from another thread, or a handler), or until it
        gave up reconnecting (then raises why). For a program that only serves."""
        return self._run(self._aio.wait_closed())

    def close(self):
        """Closes the connection and stops the client's thread."""
        if self._closed:
            return
        try:
            self._run(self._aio.close())
        finally:
            self._stop_loop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Iterates:
    """Iteration over next() until it returns None (shared by Subscription and Request)."""

    def __iter__(self):
        while True:
            item = self.next()
            if item is None:
                return
            yield item


class Subscription(_Iterates):
    """The blocking face of nexus.aio.Subscription."""

    def __init__(self, client, asub):
        self._c = client
        self._s = asub

    id = property(lambda self: self._s.id)
    patterns = property(lambda self: self._s.patterns)
    campaign_id = property(lambda self: self._s.campaign_id)
    closed = property(lambda self: self._s.closed)
    received = property(lambda self: self._s.received)
    dropped = property(lambda self: self._s.dropped)

    def next(self, timeout=None):
        """The next Event or Gap; None on timeout or once closed."""
        return self._c._run(self._s.next(timeout))

    def unsubscribe(self, timeout=None):
        return self._c._run(self._s.unsubscribe(timeout))


class Request(_Iterates):
    """The blocking face of nexus.aio.Request."""

    def __init__(self, client, areq):
        self._c = client
        self._r = areq

    id = property(lambda self: self._r.id)
    ack = property(lambda self: self._r.ack)
    action = property(lambda self: self._r.action)
    campaign_id = property(lambda self: self._r.campaign_id)
    terminal = property(lambda self: self._r.terminal)
    done = property(lambda self: self._r.done)
    dropped = property(lambda self: self._r.dropped)

    def next(self, timeout=None):
        """The next lifecycle Event; None on timeout or after the terminal one."""
        return self._c._run(self._r.next(timeout))

    def wait(self, timeout=None):
        """The terminal Event (TimeoutError if it does not come in time)."""
        return self._c._run(self._r.wait(timeout))

    def result(self, timeout=None):
        """The data of `success`; RequestFailed, RequestCancelled, RequestTimeout."""
        return self._c._run(self._r.result(timeout))

    def cancel(self, timeout=None):
        """Asks the broker to cancel the request (it then ends `cancelled`)."""
        return self._c._run(self._r.cancel(timeout))
