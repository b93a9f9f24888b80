"""Running the ASGI app under uvicorn, with streams closed before the drain.

Invariant: on shutdown every open stream is sent `SHUTDOWN` (with a retry
hint) and ended first, so uvicorn's wait for open connections finishes
instead of running into its timeout; clients resume on another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.app import Relay
from relay.hub import SHUTDOWN
from relay.stream import TRANSPORT_KEY


class TransportExposingProtocol(HttpToolsProtocol):
    """httptools protocol that puts the connection's transport in the ASGI scope.

    ASGI has no way to drop a connection whose peer stopped reading: a write to
    it waits forever. The stream uses this to abort such a connection after it
    was closed server-side (TOO_SLOW, TOKEN_EXPIRED, SHUTDOWN) and did not drain.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            # a peer that vanished without a FIN (half-open) errors out after 30 s of
            # unacknowledged data instead of the kernel's ~15 minutes of retries
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[TRANSPORT_KEY] = self.transport


class Server(uvicorn.Server):
    """uvicorn.Server that ends the relay's streams when shutdown begins."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, but a drained SIGTERM/SIGINT ends with exit status 0.

        (uvicorn re-raises the signal after its graceful shutdown; for relay a
        drained stop is a normal stop, which process managers expect as 0.)
        """
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting first, so no stream opens after
            server.close()
        retry = self.relay.settings.retry_ms
        self.relay.hub.close_all(SHUTDOWN, {"status": SHUTDOWN, "retry": retry}, retry_ms=retry)
        await super().shutdown(sockets)


def make_server(relay: Relay, app: Any, host: str, port: int, **kw: Any) -> Server:
    """uvicorn with no access log: request lines carry `access_token` query strings."""
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # query strings may carry tokens
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=int(relay.settings.shutdown_timeout_seconds),
        http=TransportExposingProtocol,
        **kw,
    )
    return Server(config, relay)
