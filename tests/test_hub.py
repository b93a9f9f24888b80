"""The hub without a database: routing, bounded outboxes, keep-alives, expiry."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from relay.catalog import Catalog, Table
from relay.changes import Change
from relay.columns import Column
from relay.hub import TOKEN_EXPIRED, TOO_SLOW, Hub
from relay.principal import Principal
from relay.subscriptions import parse_subscriptions


def run_async(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run a coroutine test in its own event loop."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


TABLE = Table(
    schema="public",
    name="jobs",
    user_column="user_id",
    org_column="org_id",
    pk=("id",),
    excluded=frozenset(),
    columns={
        "id": Column("id", "int4", "N"),
        "org_id": Column("org_id", "text", "S"),
        "user_id": Column("user_id", "text", "S"),
        "status": Column("status", "text", "S"),
    },
)
CATALOG = Catalog(tables={("public", "jobs"): TABLE})


def principal(
    sub: str | None = None, *orgs: str, role: str | None = None, exp: float | None = None
) -> Principal:
    return Principal(sub=sub, orgs=frozenset(orgs), role=role, exp=exp, claims={})


def change(
    pos: int,
    kind: str = "I",
    org: str = "A",
    user: str | None = None,
    old_org: str | None = None,
    status: str = "new",
) -> Change:
    row = orjson.dumps({"id": pos, "org_id": org, "user_id": user, "status": status}).decode()
    old = None
    if kind in "UD":
        old = orjson.dumps({"id": pos, "org_id": old_org or org, "status": "old"}).decode()
    return Change(
        position=pos,
        kind=kind,
        schema="public",
        table="jobs",
        topic=None,
        event=None,
        user_id=user,
        org_id=org,
        old_user_id=None,
        old_org_id=(old_org or org) if kind == "U" else None,
        new_text=row if kind != "D" else None,
        old_text=old,
        commit_timestamp="2026-11-27T00:00:00.000Z",
    )


def subs(*params: tuple[str, str], who: Principal) -> object:
    return parse_subscriptions(list(params), CATALOG, who)


@run_async
async def test_routes_by_owner_and_filter() -> None:
    hub = Hub()
    a = principal("u1", "A")
    b = principal("u2", "B")
    sa = hub.subscribe(a, subs(("sub", "jobs:*:status=eq.new"), who=a))  # type: ignore[arg-type]
    sb = hub.subscribe(b, subs(("sub", "jobs"), who=b))  # type: ignore[arg-type]
    for s in (sa, sb):
        s.replaying = False
    hub.publish([change(1, org="A"), change(2, org="B"), change(3, org="A", status="done")])
    assert len(sa.outbox) == 1 and b'"id":1' in sa.outbox[0]
    assert len(sb.outbox) == 1 and b'"id":2' in sb.outbox[0]
    assert hub.position == 3


@run_async
async def test_same_bytes_for_every_receiver() -> None:
    hub = Hub()
    ps = [principal(f"u{i}", "A") for i in range(3)]
    ss = [hub.subscribe(p, subs(("sub", "jobs"), who=p)) for p in ps]  # type: ignore[arg-type]
    hub.publish([change(1)])
    assert ss[0].outbox[0] is ss[1].outbox[0] is ss[2].outbox[0]


@run_async
async def test_overflow_closes_with_too_slow() -> None:
    hub = Hub()
    p = principal("u", "A")
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p), max_events=5)  # type: ignore[arg-type]
    s.replaying = False
    closed: list[str] = []
    s.on_server_close = closed.append
    hub.publish([change(i) for i in range(1, 10)])
    assert s.closed and s.close_reason == TOO_SLOW and closed == [TOO_SLOW]
    assert len(s.outbox) == 1 and b"TOO_SLOW" in s.outbox[0]
    hub.publish([change(i) for i in range(10, 20)])
    assert len(s.outbox) == 1  # nothing more is queued for a closed subscriber
    frames, done = await s.wait()
    assert done and frames[0].startswith(b"event: system")


@run_async
async def test_overflow_while_replaying_is_reread_not_fatal() -> None:
    hub = Hub()
    p = principal("u", "A")
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p), max_events=3, replaying=True)  # type: ignore[arg-type]
    hub.publish([change(i) for i in range(1, 6)])
    assert not s.closed and s.outbox == []
    assert s.take_overflow() is True and s.take_overflow() is False
    hub.publish([change(6)])
    assert len(s.outbox) == 1


@run_async
async def test_skip_through() -> None:
    hub = Hub()
    p = principal("u", "A")
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p))  # type: ignore[arg-type]
    s.skip_through = 2
    hub.publish([change(1), change(2), change(3)])
    assert len(s.outbox) == 1 and s.outbox[0].startswith(b"id: 3\n")


@run_async
async def test_keepalive_only_for_idle_streams() -> None:
    hub = Hub(keepalive_seconds=3)
    p = principal("u", "A")
    idle = hub.subscribe(p, subs(("sub", "jobs"), who=p))  # type: ignore[arg-type]
    busy = hub.subscribe(p, subs(("sub", "jobs"), who=p))  # type: ignore[arg-type]
    idle.replaying = busy.replaying = False
    busy.outbox.append(b"x")
    hub.send_keepalives(now=time.monotonic() + 10)
    assert idle.outbox == [b": keep-alive\n\n"]
    assert busy.outbox == [b"x"]


@run_async
async def test_token_expiry_closes_the_stream() -> None:
    hub = Hub()
    p = principal("u", "A", exp=time.time() + 0.2)
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p), expiry_margin=0.0)  # type: ignore[arg-type]
    s.replaying = False
    frames, done = await asyncio.wait_for(s.wait(), 5)
    assert done and s.close_reason == TOKEN_EXPIRED and b"TOKEN_EXPIRED" in frames[0]


@run_async
async def test_unsubscribe_forgets_everything() -> None:
    hub = Hub()
    p = principal("u", "A", "B")
    s = hub.subscribe(p, subs(("sub", "jobs"), ("topic", "t"), who=p))  # type: ignore[arg-type]
    hub.unsubscribe(s)
    hub.unsubscribe(s)
    assert not hub.subscribers and not hub._tables and not hub._topics


@run_async
async def test_direct_writes_only_while_the_writer_is_idle() -> None:
    hub = Hub()
    p = principal("u", "A")
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p))  # type: ignore[arg-type]
    s.replaying = False
    written: list[bytes] = []
    s.direct = lambda frames: written.extend(frames) or True
    hub.publish([change(1)])  # the writer is not parked in wait(): queued, not written
    assert written == [] and len(s.outbox) == 1
    frames, _ = await s.wait()
    waiter = asyncio.ensure_future(s.wait())
    await asyncio.sleep(0)  # the writer parks
    hub.publish([change(2), change(3)])
    assert [f.split(b"\n", 1)[0] for f in written] == [b"id: 2", b"id: 3"]
    assert s.outbox == [] and not waiter.done()
    waiter.cancel()


@run_async
async def test_a_failing_direct_write_falls_back_to_the_writer() -> None:
    hub = Hub()
    p = principal("u", "A")
    s = hub.subscribe(p, subs(("sub", "jobs"), who=p))  # type: ignore[arg-type]
    s.replaying = False

    def broken(frames: list[bytes]) -> bool:
        raise RuntimeError("transport gone")

    s.direct = broken
    waiter = asyncio.ensure_future(s.wait())
    await asyncio.sleep(0)
    hub.publish([change(1)])  # must not raise
    frames, closed = await asyncio.wait_for(waiter, 5)
    assert len(frames) == 1 and not closed and s.direct is None
