"""Running the ASGI app under uvicorn, with streams closed before the drain.

Invariants:
- On shutdown every open stream is sent `SHUTDOWN` (with a retry hint) and
  ended first, so uvicorn's wait for open connections finishes instead of
  running into its timeout; clients resume on another process.
- A connection holds a file descriptor only while it is useful: one that has
  not sent a complete request head within `header_timeout` seconds of
  connecting (or of starting its next request) is closed, however it
  trickles bytes; and a connection beyond `max_connections` open ones is
  answered 503 and closed at once, without touching the open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Generator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.app import Relay
from relay.hub import SHUTDOWN
from relay.stream import DRAIN_KEY, TRANSPORT_KEY

log = logging.getLogger("relay.server")

_TOO_MANY = (
    b'{"error":"too_many_connections","message":"the relay has reached its open '
    b'connection limit (RELAY_MAX_CONNECTIONS); retry shortly"}'
)
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 2\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(_TOO_MANY)
) + _TOO_MANY
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class TransportExposingProtocol(HttpToolsProtocol):
    """httptools protocol that bounds connections and puts the transport in the ASGI scope.

    ASGI has no way to drop a connection whose peer stopped reading: a write to
    it waits forever. The stream uses this to abort such a connection after it
    was closed server-side (TOO_SLOW, TOKEN_EXPIRED, SHUTDOWN) and did not drain.

    uvicorn times out only the idle gap *between* keep-alive requests; a socket
    that never sends a request, or sends its head one byte every few seconds,
    would be held forever. Here a timer runs from the moment a connection opens
    (or a new request begins) until its head is complete.
    """

    header_timeout: float = 5.0
    max_connections: int = 10_000
    send_buffer = 0  # SO_SNDBUF of each connection; 0: the kernel's (autotuned) default
    _head_timer: asyncio.TimerHandle | None = None
    _head_begun = False  # some bytes of the pending head arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write(REFUSED)
            self.transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            # a peer that vanished without a FIN (half-open) errors out after 30 s of
            # unacknowledged data instead of the kernel's ~15 minutes of retries
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)
        if sock is not None and self.send_buffer > 0:
            # what the kernel buffers for a peer that stopped reading (autotuned, up to
            # tcp_wmem's max, 4 MB by default): the relay copies that much to each one
            # before its transport even reports it as slow
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still going out: never cut it for a pipelined head
        if self._head_begun:  # a socket that sent nothing (a preconnect) is closed silently
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write(TIMED_OUT)
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._head_begun = False
        super().on_headers_complete()
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions[TRANSPORT_KEY] = self.transport
        extensions[DRAIN_KEY] = self.flow.drain  # returns once the transport takes writes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def connection_limit(wanted: int, reserve: int = 64) -> int:
    """`wanted`, capped so that the limit is reached before the open-file limit is."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - reserve))


def protocol_for(
    header_timeout: float, max_connections: int, send_buffer: int = 0
) -> type[TransportExposingProtocol]:
    """The protocol class with this process's bounds (uvicorn instantiates it)."""
    return type(
        "BoundedProtocol",
        (TransportExposingProtocol,),
        {
            "header_timeout": header_timeout,
            "max_connections": max_connections,
            "send_buffer": send_buffer,
        },
    )


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
    s = relay.settings
    limit = connection_limit(s.max_connections)
    if limit < s.max_connections:
        log.warning(
            "RELAY_MAX_CONNECTIONS=%d is above the open-file limit; using %d",
            s.max_connections,
            limit,
        )
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
        http=protocol_for(s.header_timeout_seconds, limit, s.send_buffer_bytes),
        timeout_keep_alive=max(1, int(min(5.0, s.header_timeout_seconds))),
        **kw,
    )
    return Server(config, relay)
