"""One Server-Sent Events response: SUBSCRIBED, replay from the log, then live.

Invariants:
- With a snapshot (snapshot=true), its rows go out before anything else and
  the stream then resumes from the snapshot's position, exactly as if the
  client had sent it as Last-Event-ID (relay.snapshot).
- The subscriber is registered in the hub before anything is sent, so
  SUBSCRIBED is only sent once live delivery is in place.
- Replay covers (resume position, hub position at registration]; live frames
  that arrive meanwhile wait in the outbox and are all above that range, so
  the seam has no gap and no duplicate. If the outbox overflows during a long
  replay, the dropped live frames are re-read from the log instead.
- One task per stream writes (plus one that only waits for the client to
  go away); frames queued while a write is in progress go out together, in
  writes of about WRITE_CHUNK bytes: a reader that stopped reading holds one
  such write, never a private copy of its whole outbox.
- What the connection holds unsent counts against the outbox's max_bytes
  (`Subscriber.unsent`), so a reader that stops reading reaches TOO_SLOW at a
  bound that does not depend on how much it missed, and is cut `close_grace`
  seconds later if it does not drain the closing frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import asyncpg
from starlette.types import Message, Receive, Scope, Send

from relay import logdb
from relay.changes import system_frame
from relay.hub import CLIENT, Hub, Subscriber
from relay.logreader import STREAM, LogReader, Pruned
from relay.metrics import StreamStats
from relay.principal import Principal
from relay.snapshot import Snapshot, resume_marker, stream_snapshot
from relay.subscriptions import SubscriptionSet

log = logging.getLogger("relay.stream")

# The ASGI scope extension where the server puts the connection's transport
# (relay.server.TransportExposingProtocol); absent under other servers.
TRANSPORT_KEY = "relay.transport"
# ... and an awaitable that returns once the transport takes writes again (uvicorn's
# flow control): the writer waits on it *before* taking frames from the outbox, so
# what a stalled reader holds stays in its outbox (shared frames), not in a private
# write waiting for the peer.
DRAIN_KEY = "relay.drain"

# Direct writes stop when this much is already waiting in the connection's buffer
# (then the writer task takes over and waits for the client to drain it).
DIRECT_WRITE_LIMIT = 64 * 1024

# At most about this many bytes are joined into one write: a reader that stopped
# reading holds one such write (plus what its connection buffers, which counts
# against its outbox's max_bytes), never a copy of everything it missed.
WRITE_CHUNK = 64 * 1024

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    """ASGI app answering one `/v1/stream` request that passed validation."""

    def __init__(
        self,
        *,
        hub: Hub,
        pool: asyncpg.Pool,
        principal: Principal,
        subs: SubscriptionSet,
        last_event_id: int | None,
        ignored_last_event_id: bool,
        retry_ms: int,
        max_events: int,
        max_bytes: int,
        read_batch: int,
        expiry_margin: float,
        close_grace: float = 5.0,
        stats: StreamStats | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.hub = hub
        self.pool = pool
        self.principal = principal
        self.subs = subs
        self.last_event_id = last_event_id
        self.ignored_last_event_id = ignored_last_event_id
        self.retry_ms = retry_ms
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.read_batch = read_batch
        self.expiry_margin = expiry_margin
        self.close_grace = close_grace
        self.stats = stats or StreamStats()
        self.extra_headers: list[tuple[bytes, bytes]] = []  # CORS, set by the endpoint
        self.sent = 0
        # snapshot=true: its rows go out first, then the stream resumes from its position
        self.snapshot = snapshot
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        head = oldest = 0
        if self.snapshot is not None:
            position = await stream_snapshot(
                self.snapshot, send, receive, HEADERS + self.extra_headers
            )
            if position is None:
                return
            self.last_event_id, self.started = position, True
        if self.last_event_id is not None:
            # Read before registering: a position the client holds was committed
            # before it connected, so it is <= this head unless the log is not the
            # one the client came from (a restored or another database).
            try:
                async with self.pool.acquire() as conn:
                    head, oldest = await logdb.head_and_oldest(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stream refused, database unavailable: %s", type(exc).__name__)
                await _end_with_retry(send, self.retry_ms, self.started)
                return
        sub = hub.subscribe(
            self.principal,
            self.subs,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            replaying=True,
            expiry_margin=self.expiry_margin,
        )
        start = hub.position
        after, resync = self._resume_point(sub, start, head, oldest)
        watcher = asyncio.ensure_future(_watch_disconnect(receive, sub))
        self.stats.opened += 1
        abort_timer: list[asyncio.TimerHandle] = []
        transport = scope.get("extensions", {}).get(TRANSPORT_KEY)
        drain = scope.get("extensions", {}).get(DRAIN_KEY)
        if scope.get("method") != "GET" or scope.get("http_version") != "1.1":
            transport = None  # direct chunk writes only where uvicorn chunks the body
        if transport is not None:

            def abort_later(reason: str) -> None:
                # a peer that stopped reading never lets the final frame drain
                abort_timer.append(
                    asyncio.get_running_loop().call_later(self.close_grace, transport.abort)
                )

            sub.on_server_close = abort_later
            sub.unsent = transport.get_write_buffer_size
        opened = time.monotonic()
        try:
            if not self.started:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": HEADERS + self.extra_headers,
                    }
                )
            try:
                await self._run(sub, start, after, resync, send, transport, drain)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The client reconnects (retry:) and resumes from its last id.
                log.warning("stream ended by database error: %s", type(exc).__name__)
                sub.close_reason = sub.close_reason or "error"
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            for timer in abort_timer:
                timer.cancel()
            hub.unsubscribe(sub)
            self.stats.disconnects[sub.close_reason or CLIENT] += 1
            log.info(
                "stream closed",
                extra={
                    "duration_s": round(time.monotonic() - opened, 3),
                    "subscriptions": len(self.subs.rows) + len(self.subs.topics),
                    "reason": sub.close_reason or CLIENT,
                    "events": self.sent,
                },
            )

    def _resume_point(
        self, sub: Subscriber, start: int, head: int, oldest: int
    ) -> tuple[int, dict[str, Any] | None]:
        """(position the stream starts after, RESYNC_REQUIRED payload or None).

        Runs synchronously right after registration, so `skip_through` is in
        place before the hub can queue anything for this subscriber.
        """
        last = self.last_event_id
        if last is None:
            return start, None
        if last > head:
            return start, {"status": "RESYNC_REQUIRED", "reason": "ahead", "position": start}
        if last < oldest:
            return start, {
                "status": "RESYNC_REQUIRED",
                "reason": "retention",
                "oldest": oldest + 1,
                "position": start,
            }
        if last > start:  # this relay is behind the one the client came from
            sub.skip_through = last
        return last, None

    async def _send(self, send: Send, frames: list[bytes]) -> None:
        """Frames as writes of about WRITE_CHUNK bytes each (each awaited: the server
        waits for the client to drain before it takes the next)."""
        i, n = 0, len(frames)
        while i < n:
            j, size = i, 0
            while j < n and (size < WRITE_CHUNK or j == i):
                size += len(frames[j])
                j += 1
            body = frames[i] if j == i + 1 else b"".join(frames[i:j])
            self.stats.bytes_sent += len(body)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            i = j

    def _direct_writer(self, transport: Any) -> Callable[[list[bytes]], bool]:
        """Frames as one HTTP/1.1 chunk straight to the transport, when it has room.

        Used by the hub only while this stream's writer task is idle (its last
        send completed), so the bytes follow everything sent before, in order.
        """

        def write(frames: list[bytes]) -> bool:
            if transport.is_closing() or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
                return False
            if len(frames) > 1 and sum(map(len, frames)) > WRITE_CHUNK:
                return False  # the writer task sends it in bounded writes
            body = b"".join(frames)
            try:
                transport.write(b"".join((b"%x\r\n" % len(body), body, b"\r\n")))
            except (OSError, RuntimeError):  # never raise into the hub's publish
                return False
            self.sent += len(frames)
            self.stats.bytes_sent += len(body)
            return True

        return write

    async def _run(
        self,
        sub: Subscriber,
        start: int,
        after: int,
        resync: dict[str, Any] | None,
        send: Send,
        transport: Any = None,
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        hub = self.hub
        hello: dict[str, Any] = {
            "status": "SUBSCRIBED",
            "subscriptions": self.subs.describe(),
            "position": after,
        }
        if self.ignored_last_event_id:
            hello["ignored_last_event_id"] = "malformed"
        frames = [system_frame(hello, self.retry_ms)]
        if resync is not None:
            frames.append(system_frame(resync))
        elif self.snapshot is not None:
            frames.append(resume_marker(after))
        await self._send(send, frames)

        cursor, upto = after, start
        tables = sorted(self.subs.tables)
        topics = list(self.subs.topics)
        reader = LogReader(
            self.pool, batch=self.read_batch, kind=STREAM, reads=self.stats.log_reads
        )
        while True:
            try:
                async with aclosing(
                    reader.pages(cursor, upto, tables=tables, topics=topics)
                ) as pages:
                    async for page in pages:
                        if sub.closed:
                            break
                        batch = [f for ch in page.changes if (f := sub.route(ch)) is not None]
                        if batch:
                            self.sent += len(batch)
                            self.stats.replayed += len(batch)
                            await self._send(send, batch)
                        cursor = page.scanned_to
            except Pruned as exc:  # pruned while replaying: these rows may be missing
                resync = {
                    "status": "RESYNC_REQUIRED",
                    "reason": "retention",
                    "oldest": exc.oldest + 1,
                    "position": upto,
                }
                await self._send(send, [system_frame(resync)])
                cursor = upto
            if sub.closed or not sub.take_overflow():
                break
            cursor, upto = upto, hub.position  # live frames were dropped: read them instead
        sub.replaying = False
        if transport is not None:  # uvicorn (httptools) frames this response in chunks
            sub.direct = self._direct_writer(transport)

        while True:
            if drain is not None and not sub.closed:
                await drain()  # frames wait in the outbox until the connection takes them
            frames, closed = await sub.wait(WRITE_CHUNK)
            if frames:
                self.sent += len(frames)
                await self._send(send, frames)
            if closed:
                return


async def _end_with_retry(send: Send, retry_ms: int, started: bool = False) -> None:
    """An empty 200 stream with a retry hint: EventSource tries again (a 5xx would stop it)."""
    if not started:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send(
        {"type": "http.response.body", "body": b"retry: %d\n\n" % retry_ms, "more_body": False}
    )


async def _watch_disconnect(receive: Receive, sub: Subscriber) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            sub.close(CLIENT)
            return
