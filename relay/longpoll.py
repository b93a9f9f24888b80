"""`GET /v1/changes`: the stream's changes as JSON pages, for long-polling.

Invariants: the same subscriptions, visibility and payload bytes as
`/v1/stream` (a `Subscriber` that is never registered routes each change);
`position` is the last position *scanned*, so a client that asks again with
`after=position` skips nothing and sees nothing twice; a page cut at `limit`
(`more: true`) can never change, since positions follow commit order, and
is cacheable (varying by Authorization and Cookie), while a page that
reached the head is `no-store`; a waiting poll answers by its token's `exp`
at the latest (with what it has, possibly an empty page).
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
    matcher = Subscriber(principal, subs, max_events=1, max_bytes=1)
    reader = LogReader(pool, batch=read_batch, kind=LONGPOLL, reads=reads)
    tables = sorted(subs.tables)
    topics = list(subs.topics)
    deadline = time.monotonic() + wait
    position = after
    while True:
        try:
            # read only up to a settled head (the newer of ours and the listener's)
            head = max(head, hub.position)
            events, position, more = await _scan(
                reader, matcher, position, head, limit, tables, topics
            )
        except Pruned as exc:
            return _resync(head, exc.oldest, "retention")
        if not more:
            position = max(position, head)  # everything up to head was scanned
        left = deadline - time.monotonic()
        if events or left <= 0:
            break
        if not await hub.wait_beyond(hub.position, left):
            break
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


async def _scan(
    reader: LogReader,
    matcher: Subscriber,
    after: int,
    upto: int,
    limit: int,
    tables: list[tuple[str, str]],
    topics: list[str],
) -> tuple[list[bytes], int, bool]:
    """Matching events after `after`: (events, last position scanned, cut at limit)."""
    events: list[bytes] = []
    position = after
    async with aclosing(reader.pages(after, upto, tables=tables, topics=topics)) as pages:
        async for page in pages:
            for ch in page.changes:
                frame = matcher.route(ch)
                if frame is not None:
                    events.append(_event_json(frame))
                    if len(events) == limit:
                        return events, ch.position, True
            position = page.scanned_to
    return events, max(position, upto), False
