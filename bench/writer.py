"""The writer: inserts rows at a fixed rate, the way an application would.

What it does: `rate` rows per second for `seconds`, on a schedule fixed in
advance (no drift); at up to `tick_hz` rows per second each row is its own
transaction, above that the rows due at a tick go in one multi-row INSERT
(one transaction), like a batch job. The `ts` column is stamped by
`clock_timestamp()` inside the INSERT, which is what latency is measured from.

Invariant: bounded - it stops after `rate * seconds` rows or `seconds + 30`
seconds, whichever comes first, and reports how many rows it wrote and how
long that took (a writer that cannot keep its rate is visible).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

BODY = "x" * 100  # makes a row frame ~330 bytes, a realistic small row


@dataclass
class WriteResult:
    rows: int
    seconds: float
    transactions: int


async def write_rows(
    dsn: str,
    table: str,
    *,
    rate: float,
    seconds: float,
    org_id: str,
    users: Sequence[str],
    tick_hz: float = 100.0,
    body: str = BODY,
) -> WriteResult:
    """Insert `rate * seconds` rows into `table`, owners `org_id` and a random user each."""
    total = max(1, round(rate * seconds))
    stmt = (
        f'insert into public."{table}" (org_id, user_id, body)'
        " select $1, u, $3 from unnest($2::text[]) as u"
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select 1")
        written = txs = 0
        rng = random.Random(7)
        interval = 1.0 / rate if rate <= tick_hz else 1.0 / tick_hz
        started = time.monotonic()
        hard_stop = started + seconds + 30
        k = 0
        while written < total and time.monotonic() < hard_stop:
            due = min(total, int(rate * (time.monotonic() - started)) + 1) - written
            if due > 0:
                batch = [rng.choice(users) for _ in range(due)]
                await conn.execute(stmt, org_id, batch, body)
                written += due
                txs += 1
            k += 1
            delay = started + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return WriteResult(rows=written, seconds=time.monotonic() - started, transactions=txs)
    finally:
        await conn.close()


async def insert_bulk(
    dsn: str, table: str, rows: int, *, org_id: str, user_id: str, per_tx: int = 1000
) -> int:
    """Insert `rows` rows in transactions of `per_tx` (for catch-up); returns transactions."""
    conn = await asyncpg.connect(dsn)
    try:
        txs = 0
        left = rows
        while left > 0:
            n = min(per_tx, left)
            await conn.execute(
                f'insert into public."{table}" (org_id, user_id, body)'
                " select $1, $2, $3 from generate_series(1, $4)",
                org_id,
                user_id,
                BODY,
                n,
            )
            left -= n
            txs += 1
        return txs
    finally:
        await conn.close()
