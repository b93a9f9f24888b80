"""`relay.client`: a Python consumer that resumes exactly, over SSE or long-poll."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest

from relay.client import PostgresPositionStore, RelayClient, RelayError
from tests.conftest import RelayServer, free_port, start_relay


def write_later(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


async def take(it: Any, n: int, seconds: float = 30) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        async for change in it:
            out.append(change)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), seconds)
    return out


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_typed_changes_over_each_transport(
    relay_server: RelayServer, dsn: str, db: Any, make_table: Any, transport: str
) -> None:
    t = make_table("id int primary key, org_id text, status text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o', 'new')")
    db.execute(f"update {t} set status = 'done'")
    db.execute("select relay.broadcast('room', 'ping', '{\"n\": 1}')")

    async def main() -> list[Any]:
        async with RelayClient(
            relay_server.url,
            token=relay_server.service_token(),
            last_id=start,
            transport=transport,  # type: ignore[arg-type]
        ) as rc:
            return await take(rc.subscribe(t, topic="room"), 3)

    got = asyncio.run(main())
    assert got[0].row.eventType == "INSERT" and got[0].row.new["status"] == "new"
    assert got[1].row.eventType == "UPDATE" and got[1].row.old["status"] == "new"
    assert got[2].broadcast.payload == {"n": 1}
    assert [g.id for g in got] == sorted(g.id for g in got)


def test_survives_a_relay_restart_mid_iteration(dsn: str, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    port = free_port()
    srv = start_relay(dsn, port=port)
    holder = {"srv": srv}
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 10) g")

    async def main() -> list[int]:
        ids: list[int] = []
        async with RelayClient(
            srv.url, token=srv.service_token(), last_id=start, transport="sse", max_backoff=0.5
        ) as rc:
            async for change in rc.subscribe(t):
                ids.append(change.row.new["id"])
                if len(ids) == 5:  # stop the relay under the consumer, write, restart it
                    await asyncio.to_thread(holder["srv"].stop)
                    await asyncio.to_thread(
                        write_later,
                        dsn,
                        f"insert into {t} select g, 'o' from generate_series(11, 20) g",
                    )
                    holder["srv"] = await asyncio.to_thread(start_relay, dsn, port)
                if len(ids) == 20:
                    return ids
        return ids

    try:
        ids = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        holder["srv"].stop()
    assert ids == list(range(1, 21))


def test_falls_back_to_long_poll_when_the_stream_is_blocked(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    """A proxy that refuses /v1/stream: the client switches to /v1/changes, losing nothing."""
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 30) g")

    class BlockStream(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.blocked = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/stream":
                self.blocked += 1
                return httpx.Response(502, request=request)
            return await self.inner.handle_async_request(request)

    blocker = BlockStream()

    async def main() -> tuple[list[int], str]:
        async with (
            httpx.AsyncClient(transport=blocker, timeout=30) as http,
            RelayClient(
                relay_server.url,
                token=relay_server.service_token(),
                last_id=start,
                sse_failures_before_poll=2,
                max_backoff=0.1,
                http=http,
            ) as rc,
        ):
            ids = [c.row.new["id"] for c in await take(rc.subscribe(t), 30)]
            return ids, rc.transport

    ids, transport = asyncio.run(main())
    assert ids == list(range(1, 31))
    assert transport == "poll" and blocker.blocked == 2


def test_position_store_restarts_where_it_stopped(
    relay_server: RelayServer, dsn: str, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 10) g")
    name = f"worker-{t}"

    async def run(n: int) -> list[int]:
        store = PostgresPositionStore(dsn, name)
        try:
            first = await store.load()
            async with RelayClient(
                relay_server.url,
                token=relay_server.service_token(),
                store=store,
                last_id=None if first else start,
            ) as rc:
                got = []
                async for change in rc.subscribe(t):
                    got.append(change.row.new["id"])
                    if len(got) == n:
                        break  # the worker stops after handling n (the last one unsaved)
                return got
        finally:
            await store.close()

    first = asyncio.run(run(4))
    second = asyncio.run(run(6))
    assert first == [1, 2, 3, 4]
    assert second[0] == 4 and second[1:] == [5, 6, 7, 8, 9]  # 4 was in progress: redone


def test_refusal_is_raised_not_retried(relay_server: RelayServer) -> None:
    async def main() -> None:
        async with RelayClient(relay_server.url, token=relay_server.service_token()) as rc:
            await take(rc.subscribe("no_such_table"), 1, seconds=10)

    with pytest.raises(RelayError) as exc:
        asyncio.run(main())
    assert exc.value.status == 400


def test_relay_tail_from_a_url(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o'), (2, 'o')")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "tail",
            t,
            "--url",
            relay_server.url,
            "--token",
            relay_server.service_token(),
            "--after",
            str(start),
            "--count",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [line for line in out.decode().splitlines() if line]
    assert [json.loads(line)["data"]["new"]["id"] for line in lines] == [1, 2]


def test_callback_store_saves_after_each_handled_change(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    from relay.client import CallbackStore

    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 3) g")
    saved: list[int] = []

    async def load() -> int | None:
        return start

    async def save(position: int) -> None:
        saved.append(position)

    async def main() -> list[int]:
        store = CallbackStore(load, save)
        async with RelayClient(
            relay_server.url, token=relay_server.service_token(), store=store
        ) as rc:
            return [c.id for c in await take(rc.subscribe(t), 3)]

    ids = asyncio.run(main())
    assert saved == ids[:2]  # the third is saved only once the consumer asks for more
