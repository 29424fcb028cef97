# SPDX-License-Identifier: Apache-2.0
"""The exceptions of the Nexus client. Every one the client raises on its own derives from
NexusError; handlers raise HandlerError to end a request `failed` with a code of their choice."""

# Error codes that mean "who you are" rather than "what you sent" (docs/SECURITY.md).
AUTH_ERROR_CODES = ("unauthorized", "permission_denied")


class NexusError(Exception):
    """The broker refused a frame (an Error frame; code from docs/PROTOCOL.md), or the client
    could not do what was asked (code names why)."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class AuthError(NexusError):
    """The broker refused the login (code "unauthorized": wrong user or token; the broker then
    closes the connection, and the client does not retry) or an operation this account may not
    do ("permission_denied")."""


class ConnectionLost(NexusError, ConnectionError):
    """The connection to the broker is gone: an operation that was in flight may or may not
    have reached it. Raised by calls made while the client reconnects once reconnecting has
    given up, or when reconnecting is off, and by the open requests of a lost connection (the
    broker cancels a request whose requester went away)."""

    def __init__(self, message, code="connection_lost"):
        super().__init__(code, message)


class ClientClosed(NexusError):
    """The client was closed (close()) before or while this call ran."""

    def __init__(self, message="the client is closed"):
        super().__init__("closed", message)


class RequestFailed(NexusError):
    """A request ended `failed` (code: the handler's, or the broker's: no_handler,
    handler_lost, handler_busy, limit_exceeded, ...). event is the terminal Event."""

    def __init__(self, event, code=None, message=None):
        data = event.data if event is not None else {}
        code = code or (event.code if event is not None else "") or data.get("code") or "failed"
        message = message or data.get("message") or ("request ended " + event.state)
        super().__init__(code, message)
        self.event = event


class RequestCancelled(RequestFailed):
    """A request ended `cancelled` (a cancel, or the requester went away)."""

    def __init__(self, event):
        super().__init__(event, "cancelled", "the request was cancelled")


class RequestTimeout(RequestFailed):
    """A request ended `timeout`: it outlived the broker's limit for it."""

    def __init__(self, event):
        super().__init__(event, "timeout", "the request outlived the broker's time limit")


class HandlerError(Exception):
    """Raised by a handler (serve): the request ends `failed` with this code (the event's
    `code`), message and extra data (a dict merged into the payload data)."""

    def __init__(self, code, message="", data=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.data = dict(data or {})


class Cancelled(NexusError):
    """Raised inside a handler by send() once its request has ended without it (the requester
    cancelled, the broker's timeout, the connection was lost): stop working on it."""

    def __init__(self, message="the request was cancelled"):
        super().__init__("cancelled", message)


def error_from_frame(code, message):
    """The exception for an Error frame's code and message."""
    return (AuthError if code in AUTH_ERROR_CODES else NexusError)(code, message)
