"""relay.logreader: one reader of the log for the listener, replays and long-polls."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest

from relay.logreader import LogReader, Pruned


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_pages_cover_the_range_in_order(dsn: str, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 250) g")
    for i in range(251, 261):  # ten more transactions
        db.execute(f"insert into {t} values ({i}, 'o')")
    head = db.execute("select relay.current_position()").fetchone()[0]

    async def go() -> tuple[list[Any], list[int], int]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            reader = LogReader(pool, batch=64, kind="test")
            pages = [p async for p in reader.pages(start, head, tables=[("public", t)], topics=[])]
            return pages, [p.scanned_to for p in pages], reader.reads["test"]
        finally:
            await pool.close()

    pages, ends, reads = run(go())
    ids = [ch.new["id"] for p in pages for ch in p.changes]
    assert ids == list(range(1, 261))
    assert ends == sorted(ends) and ends[-1] == head
    assert all(len(p.changes) <= 64 for p in pages)
    assert reads == len(pages) >= 5


def test_nothing_to_read_is_no_read(dsn: str, db: Any) -> None:
    head = db.execute("select relay.current_position()").fetchone()[0]

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            reader = LogReader(conn, batch=10, kind="test")
            assert [p async for p in reader.pages(head, head)] == []
            return reader.reads["test"]
        finally:
            await conn.close()

    assert run(go()) == 0


def test_a_pruned_range_raises_pruned(private_dsn: str) -> None:
    dsn = private_dsn
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("create table p (id int primary key, org_id text)")
        db.execute("select relay.watch('public.p')")
        start = db.execute("select relay.current_position()").fetchone()[0]
        db.execute("insert into p values (1, 'o')")
        db.execute("insert into p values (2, 'o')")
        db.execute("select relay.prune('100 years', 1, 100000)")
        gone = db.execute("select pruned_through from relay.meta").fetchone()[0]
        head = db.execute("select relay.current_position()").fetchone()[0]
    assert start < gone < head

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            reader = LogReader(conn, batch=10, kind="test")
            with pytest.raises(Pruned) as exc:
                [p async for p in reader.pages(start, head)]
            assert exc.value.oldest == gone
            # from the oldest kept position on, the rest reads normally
            rest = [ch async for p in reader.pages(gone, head) for ch in p.changes]
            assert [ch.new["id"] for ch in rest] == [2]
        finally:
            await conn.close()

    run(go())
