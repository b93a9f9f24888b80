"""`GET /v1/changes`: the stream's changes as JSON pages, for long-polling.

Invariants: the same subscriptions, visibility and payload bytes as
`/v1/stream` (the same `Matcher` decides each change);
`position` is the last position *scanned*, so a client that asks again with
`after=position` skips nothing and sees nothing twice; a page cut at `limit`
(`more: true`) can never change, since positions follow commit order, and
is cacheable (varying by Authorization and Cookie), while a page that
reached the head is `no-store`; a waiting poll answers by its token's `exp`
at the latest (with what it has, possibly an empty page).

A waiting poll reads the log only to catch up to the head it started at:
then it is registered in the hub (`Hub.register_poll`, the hub's own
routing) and answers from the frames the hub queues for it, so commits it
cannot see cost it nothing. It reads the log again only when those frames
are not an exact answer (more than its bounds arrived at once, or a
RESYNC_REQUIRED), from the last position it holds.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from contextlib import aclosing

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from relay import logdb
from relay.hub import Hub, Subscriber
from relay.logreader import LONGPOLL, LogReader, Pruned
from relay.matching import Matcher
from relay.principal import Principal
from relay.subscriptions import RequestError, SubscriptionSet

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_WAIT = 30.0
MAX_POSITION = 2**63 - 1


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise RequestError(400, "invalid_parameter", f"{name} must be a non-negative integer")
    value = int(raw)
    if value < lo or value > hi:
        raise RequestError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}")
    return value


def _wait_param(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(400, "invalid_parameter", "wait must be a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise RequestError(400, "invalid_parameter", "wait must be a number of seconds")
    return min(value, MAX_WAIT)


def _event_json(frame: bytes) -> bytes:
    """An SSE frame as `{"id", "event", "data"}` JSON (data bytes passed through)."""
    pos: bytes = b"null"
    event = b""
    data = b"null"
    for line in frame.rstrip(b"\n").split(b"\n"):
        if line.startswith(b"id: "):
            pos = line[4:]
        elif line.startswith(b"event: "):
            event = line[7:]
        elif line.startswith(b"data: "):
            data = line[6:]
    return b'{"id":' + pos + b',"event":"' + event + b'","data":' + data + b"}"


async def changes_page(
    request: Request,
    *,
    hub: Hub,
    pool: asyncpg.Pool,
    principal: Principal,
    subs: SubscriptionSet,
    read_batch: int,
    max_bytes: int = 8 * 1024 * 1024,
    reads: Counter[str] | None = None,
) -> Response:
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    wait = _wait_param(request)
    if principal.exp is not None:  # never answer after the token's exp: an empty page at it
        wait = max(0.0, min(wait, principal.exp - time.time()))
    async with pool.acquire() as conn:
        head, oldest = await logdb.head_and_oldest(conn)
    after = _int_param(request, "after", head, 0, MAX_POSITION)
    if after < oldest or after > head:
        return _resync(head, oldest, "retention" if after < oldest else "ahead")
    matcher = Matcher(principal, subs)
    reader = LogReader(pool, batch=read_batch, kind=LONGPOLL, reads=reads)
    scan = _Scanner(reader, matcher, sorted(subs.tables), list(subs.topics))
    # read only up to a settled head (the newer of ours and the listener's)
    readto = max(head, hub.position)
    if wait <= 0 or hub.closing:
        try:
            events, position, more = await scan(after, readto, limit)
        except Pruned as exc:
            return _resync(readto, exc.oldest, "retention")
    else:
        # Registered before anything is read: the hub queues what it publishes above
        # `readto` for this poll, the log is read only up to `readto`.
        sub = hub.register_poll(
            principal, subs, max_events=limit, max_bytes=max_bytes, skip_through=readto
        )
        try:
            events, position, more = await _wait(
                hub, sub, scan, after, readto, limit, time.monotonic() + wait
            )
        except Pruned as exc:
            return _resync(max(readto, hub.position), exc.oldest, "retention")
        finally:
            hub.unsubscribe(sub)
    body = (
        b'{"events":['
        + b",".join(events)
        + b'],"position":%d,"more":%s}' % (position, b"true" if more else b"false")
    )
    headers = {"cache-control": "no-store"}
    if more:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(
                status_code=304, headers={"etag": etag, "vary": "Authorization, Cookie"}
            )
        headers = {
            "cache-control": "private, max-age=86400, immutable",
            "etag": etag,
            "vary": "Authorization, Cookie",  # what a page holds depends on the token
        }
    return Response(body, media_type="application/json", headers=headers)


def _resync(head: int, oldest: int, reason: str) -> Response:
    body = {"resync_required": True, "oldest": oldest + 1, "position": head, "reason": reason}
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"}
    )


class _Scanner:
    """Reads matching events from the log (the only place a long-poll reads it)."""

    def __init__(
        self,
        reader: LogReader,
        matcher: Matcher,
        tables: list[tuple[str, str]],
        topics: list[str],
    ) -> None:
        self.reader = reader
        self.matcher = matcher
        self.tables = tables
        self.topics = topics

    async def __call__(self, after: int, upto: int, limit: int) -> tuple[list[bytes], int, bool]:
        """Matching events after `after`: (events, last position scanned, cut at limit)."""
        events: list[bytes] = []
        position = after
        pages = self.reader.pages(after, upto, tables=self.tables, topics=self.topics)
        async with aclosing(pages):
            async for page in pages:
                for ch in page.changes:
                    frame = self.matcher.route(ch)
                    if frame is not None:
                        events.append(_event_json(frame))
                        if len(events) == limit:
                            return events, ch.position, True
                position = page.scanned_to
        return events, max(position, upto), False


def _frame_position(frame: bytes) -> int | None:
    """The `id:` of an SSE frame (None for system frames and comments)."""
    if not frame.startswith(b"id: "):
        return None
    return int(frame[4 : frame.index(b"\n")])


async def _wait(
    hub: Hub,
    sub: Subscriber,
    scan: _Scanner,
    after: int,
    readto: int,
    limit: int,
    deadline: float,
) -> tuple[list[bytes], int, bool]:
    """A waiting poll: catch up from the log to `readto`, then answer from what the hub
    queues for `sub` (the log is read again only when the hub's frames are not an
    exact answer: some were dropped at the poll's bounds, or a RESYNC came)."""
    events: list[bytes] = []
    cursor = after
    if cursor < readto:
        events, cursor, more = await scan(cursor, readto, limit)
        if more:
            return events, cursor, True
    cursor = max(cursor, readto)
    while True:
        frames, dropped = sub.take()
        exact = not dropped
        if sub.closed:  # shutdown: what was queued was replaced by the closing frame
            return events, cursor, False
        for frame in frames:
            pos = _frame_position(frame)
            if pos is None:  # RESYNC_REQUIRED (pruned before read): ask the log
                exact = False
                break
            if pos <= cursor:
                continue
            events.append(_event_json(frame))
            cursor = pos
            if len(events) == limit:
                return events, cursor, True
        if exact:
            # every frame for (cursor, hub.position] was queued: all were taken above
            cursor = max(cursor, hub.position)
        else:
            found, cursor, more = await scan(cursor, max(cursor, hub.position), limit - len(events))
            events += found
            if more:
                return events, cursor, True
        left = deadline - time.monotonic()
        if events or left <= 0:
            return events, cursor, False
        await sub.ready(left)
