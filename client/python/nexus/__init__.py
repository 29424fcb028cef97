# SPDX-License-Identifier: Apache-2.0
"""Client of the Nexus event broker (docs/PROTOCOL.md): emit events, subscribe to them by
campaign and type pattern, make requests and follow their lifecycle, serve requests.

    import nexus                       # blocking: nexus.connect() -> Client
    import nexus.aio                   # asyncio:  await nexus.aio.connect() -> AsyncClient

Both read the broker address from $NEXUS_BROKER (host:port) when none is given, and the
credentials and TLS files from $NEXUS_USER, $NEXUS_TOKEN, $NEXUS_TLS_CA, $NEXUS_TLS_CERT,
$NEXUS_TLS_KEY, like nexusctl (docs/SECURITY.md). See client/python/README.md.
"""

from .aio import AsyncClient, HandlerRequest, Registration, SyncHandlerRequest
from .client import Client, Request, Subscription, connect
from .config import parse_address, tls_context
from .errors import (AuthError, Cancelled, ClientClosed, ConnectionLost, HandlerError,
                     NexusError, RequestCancelled, RequestFailed, RequestTimeout)
from .events import TERMINAL_STATES, Event, Gap, pattern_matches

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AuthError", "Cancelled", "Client", "ClientClosed", "ConnectionLost",
    "Event", "Gap", "HandlerError", "HandlerRequest", "NexusError", "Registration", "Request",
    "RequestCancelled", "RequestFailed", "RequestTimeout", "Subscription", "SyncHandlerRequest",
    "TERMINAL_STATES", "connect", "parse_address", "pattern_matches", "tls_context",
]
