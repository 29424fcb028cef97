# SPDX-License-Identifier: Apache-2.0
"""The asyncio client of the Nexus broker: one TCP (or TLS) connection to nexusd speaking the
framed protobuf of docs/PROTOCOL.md, shared by every operation of the program.

    import asyncio, nexus.aio

    async def main():
        async with await nexus.aio.connect("127.0.0.1:7400") as c:
            sub = await c.subscribe(["order:*:v1:*"], campaign=42)
            await c.emit("order:placed:v1:completed", {"total": 9.5}, campaign=42)
            print(await sub.next(timeout=5))
            print(await c.call("test:echo:v1", {"hello": "world"}))

    asyncio.run(main())

One task reads the connection and routes what arrives: replies to the call that is waiting
for them (matched by Frame.correlation), lifecycle events to their Request (matched by
correlation_id), requests to the handlers registered with serve(), delivered events to every
Subscription they match (the broker delivers an event once per connection, so the client
matches patterns, campaign and user filter itself), pings answered at once.

When the connection is lost (the broker restarts, a GoAway, the network) the client
reconnects with exponential back-off (reconnect_delay doubling up to reconnect_delay_max, with
jitter), says hello again, re-subscribes every subscription and re-registers every handler;
calls made meanwhile wait for it (up to their timeout). What cannot survive a lost connection
says so: calls in flight raise ConnectionLost (an emit may or may not have been accepted;
retrying it with the same event_id under the same client name is recognised as a duplicate
within the broker's duplicate window), open requests end with ConnectionLost (the broker
cancels a request whose requester went away), running handlers are cancelled (the broker
fails their requests with handler_lost), and each subscription receives a Gap with reason
"reconnect" for what it missed, unless it was made with from_sequence: then it resumes from the
last sequence it received, with neither gap nor duplicate (a broker with --data-dir).
A refused login (AuthError) is not retried.

Everything here runs on one event loop; a client is not thread-safe (nexus.Client, the
blocking client, wraps this one in a thread of its own). Plain (non-async) handler functions
are run in a thread pool so that they cannot stall the loop.
"""

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import logging
import random
import struct
import threading
import time
import uuid

from google.protobuf.message import DecodeError

from ._proto import nexus_pb2
from .config import Settings
from .errors import (AuthError, Cancelled, ClientClosed, ConnectionLost, HandlerError,
                     NexusError, RequestCancelled, RequestFailed, RequestTimeout,
                     error_from_frame)
from .events import (Event, Gap, as_data, build_metadata, build_payload, pattern_matches,
                     request_type, split_type)

log = logging.getLogger("nexus")

PROTOCOL_VERSION = 1
# Largest frame accepted from the broker before its Welcome says otherwise (the broker's own
# default bound is 1 MiB; 64 MiB leaves room for any configuration).
FRAME_BYTES_MAX = 64 << 20
# Events a Subscription (or a Request) keeps for the program before it drops them: a program
# that stops reading must not grow without bound. A dropped event is reported (Gap with reason
# client_queue_full; Request.dropped for stream and heartbeat events, never the terminal one).
QUEUE_MAX = 65536
# Broker errors (correlation 0: refused fire-and-forget emits) kept for flush().
ASYNC_ERRORS_MAX = 1024
# The protocol's bounds on one RegisterHandlers frame (docs/PROTOCOL.md, External handlers).
REGISTER_ACTIONS_MAX = 64
REGISTER_CAMPAIGNS_MAX = 64


async def connect(address=None, **kwargs):
    """Connects (AsyncClient(address, **kwargs).connect()) and returns the client."""
    return await AsyncClient(address, **kwargs).connect()


class _Waitable:
    """A bounded queue of items for one reader, with an asyncio.Event to wait on."""

    def __init__(self, limit):
        self._items = collections.deque()
        self._limit = limit
        self._nonempty = asyncio.Event()
        self._error = None  # raised to the reader once the items are read
        self._finished = False  # no more items will come

    def _put(self, item):
        self._items.append(item)
        self._nonempty.set()

    def _finish(self, error=None):
        if not self._finished:
            self._finished = True
            self._error = error
        self._nonempty.set()

    async def _get(self, timeout):
        """The next item; None at the end or on timeout; raises the finishing error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._items:
            if self._finished:
                if self._error is not None:
                    raise self._error
                return None
            self._nonempty.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self._nonempty.wait(), left)
            except asyncio.TimeoutError:
                return None
        return self._items.popleft()


class Subscription(_Waitable):
    """Events matching (patterns, campaign, user filter), in campaign sequence order, as Event
    objects, and Gap objects for what this subscription did not get. Iterate it (`async for
    ev in sub`) or call next(timeout). id is the broker's subscription id (it changes when the
    client reconnects)."""

    def __init__(self, client, patterns, campaign_id, user_id, from_sequence, limit):
        super().__init__(limit)
        self._client = client
        self.patterns = tuple(patterns)
        self.campaign_id = campaign_id
        self.user_id = user_id or None
        self.resume = bool(from_sequence)
        self._from_sequence = from_sequence
        self.id = 0
        self.received = 0  # events handed to the queue
        self.dropped = 0  # events dropped because the queue was full
        self._last = {}  # campaign -> last sequence queued (resume point, duplicates, gaps)
        self._drops = {}  # campaign -> [first, last, count] not yet reported
        self._reconnect_gap = False

    @property
    def closed(self):
        return self._finished

    def matches(self, ev):
        """True if this subscription's campaign, user filter and patterns select ev."""
        if self.campaign_id and ev.campaign_id != self.campaign_id:
            return False
        if self.user_id and ev.user_id != self.user_id:
            return False
        return pattern_matches(self.patterns, ev.event_type)

    def _offer(self, ev):
        if self._finished or not self.matches(ev):
            return
        seq = ev.sequence
        if seq:
            # A resumed subscription (a broker with a log: sequences are never reused) drops
            # what it has queued already, where a replay overlaps. Others take every event: a
            # campaign forgotten by the broker starts again at 1 (docs/PROTOCOL.md).
            if self.resume and seq <= self._last.get(ev.campaign_id, 0):
                return
            self._last[ev.campaign_id] = seq
        if len(self._items) >= self._limit:
            self.dropped += 1
            d = self._drops.setdefault(ev.campaign_id, [seq, seq, 0])
            d[1] = seq
            d[2] += 1
            return
        for camp, (first, last, n) in self._drops.items():
            self._put(Gap(camp, first, last, n, "client_queue_full"))
        self._drops.clear()
        self.received += 1
        self._put(ev)

    def _offer_gap(self, gap):
        if not self._finished and (not self.campaign_id or gap.campaign_id == self.campaign_id):
            self._put(gap)

    def _connection_lost(self):
        if not self.resume:
            self._reconnect_gap = True

    def _subscribe_frame(self):
        f = nexus_pb2.Frame()
        s = f.subscribe
        s.event_types.extend(self.patterns)
        s.campaign_id = self.campaign_id
        if self.user_id:
            s.metadata.global_context.user_id = self.user_id
        if self.resume:
            last = self._last.get(self.campaign_id, 0)
            s.from_sequence = last + 1 if last else self._from_sequence
        return f

    async def _resubscribe(self):
        frame = self._subscribe_frame()
        if self._reconnect_gap:
            # Queued before the subscribe goes out: the new connection's events may be read
            # (and queued) before this coroutine resumes with the ack.
            self._reconnect_gap = False
            first = self._last.get(self.campaign_id, 0) + 1 if self.campaign_id else 0
            self._last.clear()  # a restarted broker without a log numbers campaigns anew
            self._put(Gap(self.campaign_id, first, 0, 0, "reconnect"))
        reply = await self._client._call(frame, internal=True)
        self.id = reply.subscribe_ack.subscription_id

    async def next(self, timeout=None):
        """The next Event or Gap; None on timeout, or once the subscription is closed (closed
        then says so). Raises ConnectionLost / AuthError when the client gave up."""
        return await self._get(timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._get(None)
        if item is None:
            raise StopAsyncIteration
        return item

    async def unsubscribe(self, timeout=None):
        """Ends the subscription: no event of it is queued after this returns."""
        if self._finished:
            return
        self._finish()
        await self._client._unsubscribe(self, timeout)


class Request(_Waitable):
    """A request in flight (AsyncClient.request): its lifecycle events (started, stream,
    heartbeat, then exactly one of success, failed, cancelled, timeout) as Event objects.
    Iterate it (`async for ev in req`: ends after the terminal event), call next(timeout), or
    wait for the outcome with result() / wait(). ack is the acknowledgement of the
    `requested` event (its sequence in the campaign)."""

    def __init__(self, client, event_id, action, campaign_id, limit):
        super().__init__(limit)
        self._client = client
        self.id = event_id
        self.action = action
        self.campaign_id = campaign_id
        self.ack = None
        self.terminal = None  # the terminal Event once it arrived
        self.dropped = 0  # stream/heartbeat events dropped because nobody read them

    @property
    def done(self):
        return self.terminal is not None or self._error is not None

    def _push(self, ev):
        if ev.terminal:
            self.terminal = ev
            self._put(ev)
            self._finish()
        elif len(self._items) >= self._limit and ev.state in ("stream", "heartbeat"):
            self.dropped += 1
        else:
            self._put(ev)

    async def next(self, timeout=None):
        """The next lifecycle Event; None on timeout or after the terminal event was returned.
        Raises ConnectionLost if the connection was lost while the request was open."""
        return await self._get(timeout)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._get(None)
        if item is None:
            raise StopAsyncIteration
        return item

    async def wait(self, timeout=None):
        """Reads the lifecycle up to the terminal Event and returns it. Raises TimeoutError
        when it does not come within timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.terminal is None or self._items:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if await self._get(left) is None and self._finished:
                break
        if self.terminal is None:
            if self._error is not None:
                raise self._error
            raise TimeoutError("request %s: no terminal event within %.1f s" % (self.id, timeout))
        return self.terminal

    async def result(self, timeout=None):
        """The data of the `success` event; raises RequestFailed (code: the handler's or the
        broker's, e.g. no_handler), RequestCancelled, RequestTimeout or TimeoutError."""
        ev = await self.wait(timeout)
        if ev.state == "success":
            return ev.data
        if ev.state == "cancelled":
            raise RequestCancelled(ev)
        if ev.state == "timeout":
            raise RequestTimeout(ev)
        raise RequestFailed(ev)

    async def cancel(self, timeout=None):
        """Sends S:A:vN:cancel naming the request; the broker then ends it with `cancelled`
        (read on as usual). A request that has already ended is left alone."""
        if self.done:
            return
        try:
            await self._client.emit(self.action + ":cancel", campaign=self.campaign_id,
                                    correlation_id=self.id, timeout=timeout)
        except NexusError as exc:
            if exc.code != "unknown_request":  # it ended before the cancel reached it
                raise


class HandlerRequest:
    """A request given to a handler (AsyncClient.serve): the `requested` event (event, data,
    campaign_id, user_id, ...) and send(), which streams data to the requester. cancelled is
    True once the request ended without the handler (the requester cancelled, the broker's
    timeout, the connection was lost); the handler's task is cancelled then."""

    def __init__(self, client, event):
        self._client = client
        self.event = event
        self.ended = None  # "cancelled", "timeout" or "connection_lost"
        self.sent = 0  # stream events sent
        self._task = None

    id = property(lambda self: self.event.event_id)
    event_type = property(lambda self: self.event.event_type)
    action = property(lambda self: self.event.action)
    campaign_id = property(lambda self: self.event.campaign_id)
    user_id = property(lambda self: self.event.user_id)
    entity_id = property(lambda self: self.event.entity_id)
    data = property(lambda self: self.event.data)
    cancelled = property(lambda self: self.ended is not None)

    async def send(self, data):
        """Emits a `stream` event of this request with data (a dict, or any JSON-like value,
        sent as {"result": value}); returns once the broker accepted it. Raises Cancelled
        once the request has ended."""
        if self.ended is not None:
            raise Cancelled("request %s ended: %s" % (self.id, self.ended))
        await self._client._reply(self, "stream", as_data(data))
        self.sent += 1

    def _end(self, why):
        if self.ended is None:
            self.ended = why
            if self._task is not None:
                self._task.cancel()

    def __repr__(self):
        return "HandlerRequest(%s id=%s campaign=%d)" % (self.event_type, self.id, self.campaign_id)


class SyncHandlerRequest:
    """HandlerRequest for a plain (thread) handler: send() blocks, cancelled can be polled or
    waited for (wait_cancelled)."""

    def __init__(self, areq, loop):
        self._areq = areq
        self._loop = loop
        self._cancel = threading.Event()

    event = property(lambda self: self._areq.event)
    id = property(lambda self: self._areq.id)
    event_type = property(lambda self: self._areq.event_type)
    action = property(lambda self: self._areq.action)
    campaign_id = property(lambda self: self._areq.campaign_id)
    user_id = property(lambda self: self._areq.user_id)
    entity_id = property(lambda self: self._areq.entity_id)
    data = property(lambda self: self._areq.data)
    sent = property(lambda self: self._areq.sent)

    @property
    def cancelled(self):
        return self._cancel.is_set()

    def wait_cancelled(self, timeout=None):
        """Sleeps until the request is cancelled (True) or timeout passes (False)."""
        return self._cancel.wait(timeout)

    def send(self, data):
        """Emits a `stream` event (blocking until the broker accepted it); raises Cancelled
        once the request has ended."""
        if self._cancel.is_set():
            raise Cancelled("request %s ended: %s" % (self.id, self._areq.ended or "cancelled"))
        fut = asyncio.run_coroutine_threadsafe(self._areq.send(data), self._loop)
        while True:
            try:
                return fut.result(0.5)
            except concurrent.futures.TimeoutError:
                # A client closed meanwhile never runs the send: do not wait for it forever.
                if self._cancel.is_set() or self._loop.is_closed() or not self._loop.is_running():
                    fut.cancel()
                    raise Cancelled("request %s ended: %s"
                                    % (self.id, self._areq.ended or "cancelled")) from None


class _ThreadHandler:
    """Runs a plain function (or generator function) handler in a thread pool of its own, so
    that it cannot stall the event loop; its requests see a SyncHandlerRequest."""

    def __init__(self, fn, workers):
        self.fn = fn
        self.pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                          thread_name_prefix="nexus-handler")

    async def __call__(self, areq):
        loop = asyncio.get_running_loop()
        sreq = SyncHandlerRequest(areq, loop)
        try:
            return await loop.run_in_executor(self.pool, self._run, sreq)
        except asyncio.CancelledError:
            sreq._cancel.set()  # the thread sees it at its next send() or cancelled check
            raise

    def _run(self, sreq):
        r = self.fn(sreq)
        if not inspect.isgenerator(r):
            return r
        try:
            while True:
                try:
                    item = next(r)
                except StopIteration as stop:
                    return stop.value
                sreq.send(item)
        finally:
            r.close()


def _is_async_handler(fn):
    return (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None)))


class Registration:
    """An action served by this client (AsyncClient.serve). The protocol has no way to stop
    serving one action: close the client for that. running maps request ids to the tasks
    handling them; served / failed / busy count requests answered success, failed, and refused
    because max_inflight were running."""

    def __init__(self, action, handler, streaming, campaigns, max_inflight):
        self.action = action
        self.handler = handler
        self.streaming = bool(streaming)
        self.campaigns = tuple(int(c) for c in campaigns)
        self.max_inflight = max_inflight
        self.running = {}
        self.served = 0
        self.failed = 0
        self.busy = 0

    def accepts(self, ev):
        parts = ev.event_type.split(":")
        return (parts[0] + ":" + parts[1] == self.action
                and (not self.campaigns or ev.campaign_id in self.campaigns))


class AsyncClient:
    """One connection to nexusd (see the module's documentation).

    address: "host:port", "[v6]:port", "host" (port 7400) or (host, port); default
    $NEXUS_BROKER, else 127.0.0.1:7400. user/token: the account and its token (default
    $NEXUS_USER / $NEXUS_TOKEN; a token alone for a broker started with --token). tls: True,
    False, or None (default: TLS when ca_file, cert_file, key_file, ssl_context or one of
    $NEXUS_TLS_CA, $NEXUS_TLS_CERT, $NEXUS_TLS_KEY is given); the broker's certificate is
    verified against ca_file (else the system store) for server_hostname (default: the host).
    name: the hello's client_name, which also names this publisher's duplicate window (default:
    unique per client). timeout: seconds a call waits for its reply (and for a reconnection).
    reconnect=False: a lost connection is final. reconnect_attempts: give up after that many
    failed attempts in a row (None: never). queue_max: events a subscription or request keeps
    unread.
    """

    def __init__(self, address=None, *, user=None, token=None, name=None, tls=None,
                 ca_file=None, cert_file=None, key_file=None, server_hostname=None,
                 ssl_context=None, timeout=10.0, reconnect=True, reconnect_delay=0.1,
                 reconnect_delay_max=5.0, reconnect_attempts=None, queue_max=QUEUE_MAX):
        self.settings = Settings(address, user, token, tls, ca_file, cert_file, key_file,
                                 server_hostname, ssl_context)
        self.name = name or "nexus-python-" + uuid.uuid4().hex[:12]
        self.timeout = timeout
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_delay_max = reconnect_delay_max
        self.reconnect_attempts = reconnect_attempts
        self.queue_max = queue_max
        self.welcome = None
        self.reconnects = 0  # successful reconnections so far
        self.async_errors = collections.deque(maxlen=ASYNC_ERRORS_MAX)
        self._corr = itertools.count(1)
        self._sub_keys = itertools.count(1)
        self._frame_max = FRAME_BYTES_MAX
        self._reader = self._writer = None
        self._pending = {}  # correlation -> future of the reply
        self._subs = {}  # local key -> Subscription
        self._requests = {}  # request event id -> Request
        self._handling = {}  # request event id -> HandlerRequest
        self._registrations = []
        self._tasks = set()  # background tasks, referenced until done
        self._supervisor = None
        self._closing = False
        self._dead = None  # the exception that ended the client (gave up reconnecting)
        self._loop = self._ready = self._finished = self._write_lock = None

    # ---- connection ---------------------------------------------------------------------------

    @property
    def user(self):
        return self.settings.user

    @property
    def tls(self):
        return self.settings.tls

    @property
    def connected(self):
        return self._ready is not None and self._ready.is_set() and self._dead is None \
            and not self._closing

    async def connect(self):
        """Connects and says hello. Raises OSError (unreachable; ssl.SSLError for TLS),
        AuthError (login refused), ConnectionLost or TimeoutError; no retry for the first
        connection. Returns self."""
        if self._supervisor is not None:
            raise RuntimeError("already connected")
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._finished = asyncio.Event()
        self._write_lock = asyncio.Lock()
        await self._open()
        self._ready.set()
        self._supervisor = self._loop.create_task(self._supervise())
        return self

    async def _open(self):
        s = self.settings
        kw = {"ssl": s.ssl_context, "server_hostname": s.server_hostname} if s.tls else {}
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(s.host, s.port, limit=1 << 20, **kw), self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("connecting to %s: no answer within %.1f s"
                               % (s.address, self.timeout)) from None
        try:
            f = nexus_pb2.Frame()
            f.correlation = next(self._corr)
            f.hello.protocol_version = PROTOCOL_VERSION
            f.hello.client_name = self.name
            if s.token:
                f.hello.token = s.token
            if s.user:
                f.hello.user = s.user
            body = f.SerializeToString()
            writer.write(struct.pack(">I", len(body)) + body)
            await writer.drain()
            try:
                reply = await asyncio.wait_for(self._read_frame(reader), self.timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("%s: no welcome within %.1f s (not a Nexus broker? TLS?)"
                                   % (s.address, self.timeout)) from None
            kind = reply.WhichOneof("body")
            if kind == "error":
                raise error_from_frame(reply.error.code, reply.error.message)
            if kind != "welcome":
                raise ConnectionLost("%s answered the hello with %s" % (s.address, kind))
        except BaseException:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):  # closing is all that matters here
                pass
            raise
        self.welcome = reply.welcome
        if reply.welcome.max_frame_bytes:
            self._frame_max = max(FRAME_BYTES_MAX, reply.welcome.max_frame_bytes)
        self._reader, self._writer = reader, writer

    async def _read_frame(self, reader):
        try:
            head = await reader.readexactly(4)
            n = int.from_bytes(head, "big")
            if n == 0 or n > self._frame_max:
                raise ConnectionLost("bad frame length %d from the broker" % n)
            body = await reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionLost("the broker closed the connection") from None
        f = nexus_pb2.Frame()
        try:
            f.ParseFromString(body)
        except DecodeError as exc:
            raise ConnectionLost("undecodable frame from the broker: %s" % exc) from None
        return f

    async def _supervise(self):
        """Reads and routes frames; on a loss, reconnects (or gives up)."""
        while True:
            try:
                while True:
                    self._dispatch(await self._read_frame(self._reader))
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionLost) as exc:
                lost = exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc))
            except Exception as exc:  # a bug: keep the client alive, say what happened
                log.exception("nexus: reading the connection failed")
                lost = ConnectionLost("reading the connection failed: %r" % (exc,))
            self._connection_lost(lost)
            if self._closing:
                return
            if not self.reconnect:
                self._die(lost)
                return
            if not await self._reconnect(lost):
                return

    def _connection_lost(self, exc):
        log.warning("nexus: connection to %s lost: %s", self.settings.address, exc.message)
        self._ready.clear()
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(exc.message))
        requests, self._requests = self._requests, {}
        for req in requests.values():
            req._finish(ConnectionLost("the connection was lost while request %s was open "
                                       "(the broker cancels it): %s" % (req.id, exc.message)))
        for hr in list(self._handling.values()):
            hr._end("connection_lost")
        for sub in self._subs.values():
            sub._connection_lost()

    async def _reconnect(self, lost):
        delay = self.reconnect_delay
        attempts = 0
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await self._open()
            except AuthError as exc:
                self._die(exc)
                return False
            except (OSError, TimeoutError, NexusError) as exc:
                attempts += 1
                log.info("nexus: reconnecting to %s (attempt %d): %s", self.settings.address,
                         attempts, exc)
                if self.reconnect_attempts is not None and attempts >= self.reconnect_attempts:
                    self._die(ConnectionLost("gave up reconnecting to %s after %d attempts: %s"
                                             % (self.settings.address, attempts, exc)))
                    return False
                delay = min(delay * 2, self.reconnect_delay_max)
                continue
            self.reconnects += 1
            log.info("nexus: reconnected to %s", self.settings.address)
            self._spawn(self._restore())
            return True
        return False

    async def _restore(self):
        """After a reconnection: subscriptions and handlers as they were, then ready."""
        try:
            for sub in list(self._subs.values()):
                try:
                    await sub._resubscribe()
                except ConnectionLost:
                    raise
                except NexusError as exc:  # refused now (permissions changed, ...)
                    log.error("nexus: re-subscribing %s failed: %s", sub.patterns, exc)
                    self._subs = {k: s for k, s in self._subs.items() if s is not sub}
                    sub._finish(exc)
            if self._registrations:
                await self._register(self._registrations, internal=True)
        except ConnectionLost:
            return  # lost again: the supervisor starts over
        except NexusError as exc:
            log.error("nexus: re-registering handlers failed: %s", exc)
        self._ready.set()

    def _die(self, exc):
        self._dead = exc
        log.error("nexus: the client stopped: %s", exc)
        for sub in self._subs.values():
            sub._finish(exc)
        self._ready.set()  # wakes the calls waiting for a connection: they see _dead
        self._finished.set()

    def _spawn(self, coro):
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # ---- frames -------------------------------------------------------------------------------

    async def _wait_ready(self, timeout):
        if self._closing:
            raise ClientClosed()
        if self._dead is not None:
            raise self._dead
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("not connected to %s (reconnecting) within %.1f s"
                                   % (self.settings.address, timeout)) from None
            if self._closing:
                raise ClientClosed()
            if self._dead is not None:
                raise self._dead

    async def _send(self, frame):
        w = self._writer
        if w is None:
            raise ConnectionLost("not connected to %s" % self.settings.address)
        body = frame.SerializeToString()
        w.write(struct.pack(">I", len(body)) + body)
        try:
            async with self._write_lock:
                await w.drain()
        except OSError as exc:
            raise ConnectionLost(str(exc)) from None

    async def _call(self, frame, timeout=None, internal=False):
        """Sends frame with a fresh correlation and returns the reply Frame. Raises the
        broker's error (NexusError), ConnectionLost, TimeoutError. internal: do not wait for
        the client to be ready (the calls that make it ready)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not internal:
            await self._wait_ready(timeout)
        corr = next(self._corr)
        frame.correlation = corr
        fut = self._loop.create_future()
        self._pending[corr] = fut
        try:
            await self._send(frame)
            return await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise TimeoutError("no reply from the broker within %.1f s" % timeout) from None
        finally:
            self._pending.pop(corr, None)

    def _dispatch(self, f):
        kind = f.WhichOneof("body")
        if kind == "event":
            self._on_event(Event(f.event))
            return
        if kind == "gap":
            gap = Gap.from_wire(f.gap)
            for sub in self._subs.values():
                sub._offer_gap(gap)
            return
        if kind == "ping":
            # The broker's liveness ping: answered at once, so that a connection that only
            # reads stays open (docs/PROTOCOL.md, ping / pong).
            pong = nexus_pb2.Frame()
            pong.correlation = f.correlation
            pong.pong.nonce = f.ping.nonce
            body = pong.SerializeToString()
            self._writer.write(struct.pack(">I", len(body)) + body)
            return
        if kind == "goaway":
            log.info("nexus: %s is going away: %s", self.settings.address, f.goaway.reason)
            return
        fut = self._pending.pop(f.correlation, None) if f.correlation else None
        if fut is not None:
            if not fut.done():
                if kind == "error":
                    fut.set_exception(error_from_frame(f.error.code, f.error.message))
                else:
                    fut.set_result(f)
            return
        if kind == "error":  # a fire-and-forget emit refused, or a late reply
            err = error_from_frame(f.error.code, f.error.message)
            self.async_errors.append(err)
            log.warning("nexus: broker error: %s", err)

    def _on_event(self, ev):
        state = ev.state
        routed = False
        cid = ev.correlation_id
        if cid:
            req = self._requests.get(cid)
            if req is not None:
                routed = True
                req._push(ev)
                if ev.terminal:
                    del self._requests[cid]
            hr = self._handling.get(cid)
            if hr is not None and state in ("cancelled", "timeout"):
                routed = True  # the broker ended a request this client handles
                hr._end(state)
        if state == "requested":
            for reg in self._registrations:
                if reg.accepts(ev):
                    routed = True
                    self._start_handler(reg, ev)
                    break
        if routed and ev.sequence == 0:
            return  # a private event (heartbeat, ...): no subscription sees those
        for sub in self._subs.values():
            sub._offer(ev)

    # ---- publishing ---------------------------------------------------------------------------

    def _emit_frame(self, event_type, data, campaign, event_id, entity_id, user_id,
                    correlation_id, tags, metadata, versioning):
        f = nexus_pb2.Frame()
        e = f.emit
        e.event_type = event_type
        e.campaign_id = campaign
        e.event_id = event_id or ""
        e.entity_id = entity_id or ""
        p = build_payload(data, versioning)
        if p is not None:
            e.payload.CopyFrom(p)
        md = build_metadata(metadata, user_id, correlation_id, tags)
        if md is not None:
            e.metadata.CopyFrom(md)
        return f

    async def emit(self, event_type, data=None, *, campaign=0, event_id="", entity_id="",
                   user_id=None, correlation_id=None, tags=None, metadata=None, versioning=None,
                   ack=True, timeout=None):
        """Emits one event (event_type service:action:vN:state; data: a dict, the payload's
        Struct). With ack (the default) returns the acknowledgement, an Event whose sequence
        is the campaign sequence given to the event and message "accepted" or "duplicate";
        a refused emit raises NexusError (invalid_event_type, permission_denied, ...). With
        ack=False returns None once the frame is written: the broker reports a refusal
        later, in async_errors and from flush()."""
        f = self._emit_frame(event_type, data, campaign, event_id, entity_id, user_id,
                             correlation_id, tags, metadata, versioning)
        if ack:
            return Event((await self._call(f, timeout)).emit_ack)
        await self._wait_ready(self.timeout if timeout is None else timeout)
        await self._send(f)
        return None

    async def flush(self, timeout=None):
        """Waits until the broker has read everything sent before (a ping round trip), then
        raises the first broker error that no call was waiting for (a refused fire-and-forget
        emit), if any."""
        await self.ping(timeout)
        if self.async_errors:
            raise self.async_errors.popleft()

    async def ping(self, timeout=None):
        """A round trip to the broker; returns its duration in seconds."""
        f = nexus_pb2.Frame()
        f.ping.nonce = random.getrandbits(63)
        t0 = time.monotonic()
        await self._call(f, timeout)
        return time.monotonic() - t0

    async def stats(self, timeout=None):
        """The broker's statistics: {"rss_bytes": n, "shards": [{counter: value, ...}]}
        (an account needs admin)."""
        f = nexus_pb2.Frame()
        f.stats.SetInParent()
        r = (await self._call(f, timeout)).stats_reply
        shards = [{fd.name: getattr(s, fd.name) for fd in s.DESCRIPTOR.fields} for s in r.shards]
        return {"rss_bytes": r.rss_bytes, "shards": shards}

    # ---- subscribing --------------------------------------------------------------------------

    async def subscribe(self, patterns=(), *, campaign=0, user_id=None, from_sequence=0,
                        queue_max=None, timeout=None):
        """Subscribes to the events of campaign (0: every campaign, the firehose) whose type
        matches one of patterns (a pattern or a list; none or "*": every type) and, with
        user_id, whose metadata carries that user id. Events emitted after this returns are
        delivered. from_sequence (a broker with --data-dir, one campaign): the campaign's
        logged events from that sequence come first, then the live ones, with neither gap nor
        duplicate — and after a reconnection it resumes from the last one received.
        Returns a Subscription."""
        if isinstance(patterns, str):
            patterns = [patterns]
        if from_sequence and not campaign:
            raise ValueError("from_sequence needs a campaign (not 0)")
        timeout = self.timeout if timeout is None else timeout
        await self._wait_ready(timeout)
        sub = Subscription(self, patterns, campaign, user_id, from_sequence,
                           queue_max or self.queue_max)
        key = next(self._sub_keys)
        self._subs[key] = sub  # before the frame: a resume replay arrives before the ack
        sub._key = key
        try:
            reply = await self._call(sub._subscribe_frame(), timeout, internal=True)
        except BaseException:
            self._subs.pop(key, None)
            raise
        sub.id = reply.subscribe_ack.subscription_id
        return sub

    async def _unsubscribe(self, sub, timeout):
        self._subs.pop(getattr(sub, "_key", None), None)
        if not self.connected or not sub.id:
            return  # nothing on the broker to end: the connection that held it is gone
        f = nexus_pb2.Frame()
        f.unsubscribe.subscription_id = sub.id
        try:
            await self._call(f, timeout)
        except NexusError as exc:
            if exc.code != "unknown_subscription":
                raise

    # ---- requests -----------------------------------------------------------------------------

    async def request(self, action, data=None, *, campaign=0, event_id=None, entity_id="",
                      user_id=None, metadata=None, versioning=None, queue_max=None,
                      timeout=None):
        """Sends a request (action service:action:vN, or with :requested) and returns its
        Request once the broker acknowledged it. event_id: the request's id (default: a fresh
        UUID). A `timeout_ms` / `heartbeat_ms` number in data asks the broker for a shorter
        limit / other heartbeats (docs/PROTOCOL.md). Raises NexusError when the broker refuses
        the request itself (duplicate_request, permission_denied, ...)."""
        rtype = request_type(action)
        event_id = event_id or str(uuid.uuid4())
        req = Request(self, event_id, split_type(rtype)[0], campaign,
                      queue_max or self.queue_max)
        timeout = self.timeout if timeout is None else timeout
        await self._wait_ready(timeout)
        # Known before the frame leaves: its lifecycle events cannot arrive unrouted.
        self._requests[event_id] = req
        try:
            f = self._emit_frame(rtype, data, campaign, event_id, entity_id, user_id, None,
                                 None, metadata, versioning)
            req.ack = Event((await self._call(f, timeout, internal=True)).emit_ack)
        except BaseException:
            self._requests.pop(event_id, None)
            raise
        if req.ack.message == "duplicate":
            self._requests.pop(event_id, None)
            raise NexusError("duplicate", "request %s was accepted before (the broker's "
                             "duplicate window): its lifecycle went to that request" % event_id)
        return req

    async def call(self, action, data=None, *, timeout=30.0, **kwargs):
        """request() and its result(): the data of `success`, or RequestFailed & co."""
        req = await self.request(action, data, **kwargs)
        return await req.result(timeout)

    # ---- serving ------------------------------------------------------------------------------

    async def serve(self, action, handler, *, streaming=False, campaigns=(), max_inflight=64,
                    timeout=None):
        """Serves the requests of action ("service:action", every version) with handler, an
        async function, an async generator function, or a plain function or generator function
        (run in a thread pool of max_inflight threads); it receives a HandlerRequest. What it
        yields, or passes to send(), goes to the requester as `stream` events; what it returns
        is the `success` payload; HandlerError(code, message) ends the request `failed` with
        that code, another exception with code handler_exception. When the request ends
        without it (cancel, the broker's timeout), the handler is cancelled (a plain one sees
        cancelled / Cancelled from send()). At most max_inflight requests run at once; more
        are answered `failed` with code handler_busy. streaming: the action's requests are
        streams; campaigns: only these (default: every campaign). Returns a Registration."""
        parts = action.split(":")
        if len(parts) != 2 or not all(parts):
            raise ValueError("%r: serve takes service:action (it serves every version)"
                             % action)
        if len(campaigns) > REGISTER_CAMPAIGNS_MAX:
            raise ValueError("at most %d campaigns per action" % REGISTER_CAMPAIGNS_MAX)
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not _is_async_handler(handler):
            handler = _ThreadHandler(handler, max_inflight)
        reg = Registration(action, handler, streaming, campaigns, max_inflight)
        timeout = self.timeout if timeout is None else timeout
        await self._wait_ready(timeout)
        self._registrations.append(reg)
        try:
            await self._register([reg], timeout, internal=True)
        except BaseException:
            self._registrations.remove(reg)
            raise
        return reg

    async def _register(self, regs, timeout=None, internal=False):
        for i in range(0, len(regs), REGISTER_ACTIONS_MAX):
            f = nexus_pb2.Frame()
            for reg in regs[i:i + REGISTER_ACTIONS_MAX]:
                spec = f.register.handlers.add()
                spec.action = reg.action
                spec.streaming = reg.streaming
                spec.campaigns.extend(reg.campaigns)
            await self._call(f, timeout, internal=internal)

    def _start_handler(self, reg, ev):
        if ev.event_id in self._handling:
            return
        if len(reg.running) >= reg.max_inflight:
            reg.busy += 1
            hr = HandlerRequest(self, ev)
            self._spawn(self._reply_failed(hr, "handler_busy", "%d requests of %s already "
                                           "running (max_inflight)" % (reg.max_inflight,
                                                                       reg.action)))
            return
        hr = HandlerRequest(self, ev)
        self._handling[ev.event_id] = hr
        reg.running[ev.event_id] = hr._task = self._spawn(self._run_handler(reg, hr))

    async def _run_handler(self, reg, hr):
        try:
            fn = reg.handler
            if inspect.isasyncgenfunction(fn):
                gen = fn(hr)
                try:
                    async for item in gen:
                        await hr.send(item)
                finally:
                    await gen.aclose()
                result = None
            else:
                result = fn(hr)
                if inspect.isawaitable(result):
                    result = await result
            hr._task = None  # from here on a cancel must not interrupt the answer
            await self._reply(hr, "success", as_data(result), quiet=True)
            reg.served += 1
        except asyncio.CancelledError:
            if hr.ended is None and self._closing:
                raise
            # ended without this handler: nothing to answer
        except Cancelled:
            pass
        except HandlerError as exc:
            reg.failed += 1
            await self._reply_failed(hr, exc.code, exc.message, exc.data)
        except Exception as exc:
            reg.failed += 1
            log.exception("nexus: handler of %s failed on request %s", reg.action, hr.id)
            await self._reply_failed(hr, "handler_exception", "%s: %s" % (type(exc).__name__,
                                                                           exc))
        finally:
            reg.running.pop(hr.id, None)
            self._handling.pop(hr.id, None)

    async def _reply(self, hr, state, data=None, quiet=False):
        f = nexus_pb2.Frame()
        e = f.emit
        e.event_type = hr.action + ":" + state
        e.campaign_id = hr.campaign_id
        e.metadata.global_context.correlation_id = hr.id
        if data is not None:
            e.payload.data.SetInParent()
            e.payload.data.update(data)
        try:
            await self._call(f)
        except NexusError as exc:
            if not quiet:
                raise
            # The request ended meanwhile (unknown_request), or the connection went away.
            log.info("nexus: %s reply to request %s not delivered: %s", state, hr.id, exc)

    async def _reply_failed(self, hr, code, message, extra=None):
        data = dict(extra or {})
        data.update({"code": code, "message": message})
        await self._reply(hr, "failed", data, quiet=True)

    # ---- the end ------------------------------------------------------------------------------

    async def wait_closed(self):
        """Waits until the client is closed, or has given up reconnecting (then raises why)."""
        await self._finished.wait()
        if self._dead is not None and not self._closing:
            raise self._dead

    async def close(self):
        """Closes the connection: running handlers are cancelled, open requests and waiting
        calls end with ClientClosed, subscriptions end."""
        if self._closing or self._loop is None:
            return
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for hr in list(self._handling.values()):
            hr._end("closed")
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if self._supervisor is not None:
            tasks.append(self._supervisor)
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ClientClosed())
        for req in self._requests.values():
            req._finish(ClientClosed())
        for sub in self._subs.values():
            sub._finish()
        self._pending, self._requests, self._subs = {}, {}, {}
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (OSError, ConnectionError):
                pass
        self._reader = self._writer = None
        for reg in self._registrations:
            if isinstance(reg.handler, _ThreadHandler):
                reg.handler.pool.shutdown(wait=False)
        self._ready.set()
        self._finished.set()

    async def __aenter__(self):
        if self._loop is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()
