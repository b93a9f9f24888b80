"""Every query the relay runs against the `relay` schema (asyncpg).

Invariant: reads of the log return changes in position order and only
committed ones, and are only ever asked for positions up to a *settled*
head (`settle`, or `relay.current_position()`): every position <= it is
committed or will never be used, so a read that returned everything up to
it will never later find a change <= it (docs/architecture.md, "Positions").
Nothing a client sent is ever part of the SQL text: values are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from relay.catalog import Catalog, Table
from relay.changes import Change
from relay.columns import Column

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# One statement (one snapshot): how far the log was pruned, and the changes of
# the next $3 positions after $1 (and <= $2), in order. The batches covering
# them come from an index range scan on last_pos (at most $3: each holds at
# least one position; their sizes are known from their bounds), their changes
# by (batch, ord) range. Every row repeats the page's bounds; a page without
# changes is one row with NULL change columns. Because the prune bound and the
# changes are read from the same snapshot, "nothing after $1 was pruned" and
# "these are all the changes" are true together (relay.prune raises
# pruned_through in the transaction that deletes the batches).
_PAGE = """
with fetched as (
        select id, base, last_pos, committed_at,
               greatest(base, $1 + 1) as lo, least(last_pos, $2) as hi
          from relay.batches
         where last_pos > $1 and base <= $2
         order by last_pos
         limit $3),
     usable as (
        select f.*, coalesce(sum(hi - lo + 1) over (
                   order by last_pos rows between unbounded preceding and 1 preceding), 0)::bigint
                   as before
          from fetched f
         where hi >= lo),
     taken as (
        select id, base, committed_at, lo, hi, least(hi, lo + ($3 - before) - 1) as e
          from usable
         where before < $3),
     page as (
        select coalesce(max(e), $1) as end_pos,
               coalesce(sum(e - lo + 1), 0)::bigint as covered,
               count(*) > 0 and (
                   (select count(*) from fetched) = $3
                   or bool_or(e < hi)
                   or exists (select 1 from usable where before >= $3)) as more,
               array_agg(id) as ids
          from taken)
select m.pruned_through, p.end_pos, p.covered, p.more, c.*
  from relay.meta m
 cross join page p
  left join lateral (
        select t.base + c.ord - 1 as pos, c.kind::text, c.schema_name, c.table_name, c.topic,
               c.event, c.user_id, c.org_id, c.old_user_id, c.old_org_id, c.new::text,
               c.old::text,
               to_char(t.committed_at at time zone 'UTC',
                       'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as ts
          from taken t
          join relay.changes c
            on c.batch = t.id and c.ord >= t.lo - t.base + 1 and c.ord <= t.e - t.base + 1
         where true {extra}) c on true
 order by c.pos
"""

_PAGE_ALL = _PAGE.format(extra="")
_PAGE_SOME = _PAGE.format(
    extra="and ((c.kind = 'B' and c.topic = any($5::text[])) or "
    "(c.kind <> 'B' and (c.schema_name || '.' || c.table_name) = any($4::text[])))"
)


@dataclass(frozen=True, slots=True)
class Page:
    """One read of the log: `changes` in order; everything up to `scanned_to` was read.

    `more` is True when the read stopped at its limit (there may be more after
    `scanned_to`). With a table/topic filter, `changes` may be fewer than the
    positions scanned: callers continue from `scanned_to`, never from the last
    change.
    """

    changes: list[Change]
    scanned_to: int
    more: bool
    pruned_through: int = 0
    positions: int = 0  # committed positions in (after, scanned_to]: rows expected unfiltered


MAX_POSITION = 2**63 - 1


def _to_change(r: asyncpg.Record) -> Change:
    return Change(
        position=r[4],
        kind=r[5],
        schema=r[6],
        table=r[7],
        topic=r[8],
        event=r[9],
        user_id=r[10],
        org_id=r[11],
        old_user_id=r[12],
        old_org_id=r[13],
        new_text=r[14],
        old_text=r[15],
        commit_timestamp=r[16],
    )


async def read_changes(
    conn: Conn,
    after: int,
    *,
    upto: int = MAX_POSITION,
    limit: int = 2000,
    tables: Sequence[tuple[str, str]] | None = None,
    topics: Sequence[str] | None = None,
) -> Page:
    """At most `limit` positions after `after` (and <= `upto`), in order, with
    how far the log was pruned as seen by the same statement (`pruned_through`).

    One index-driven statement: the batches covering the next `limit`
    positions, then their changes by (batch, ord) range, so a read costs
    O(limit) however large one transaction was or how far behind the reader is.
    Use it through `relay.logreader.LogReader`, which turns a pruned range
    into `Pruned`.
    """
    if tables is None and topics is None:
        rows = await conn.fetch(_PAGE_ALL, after, upto, limit)
    else:
        rows = await conn.fetch(
            _PAGE_SOME,
            after,
            upto,
            limit,
            [f"{s}.{t}" for s, t in tables or ()],
            list(topics or ()),
        )
    first = rows[0]
    pruned = int(first[0] or 0)
    end, covered, more = int(first[1]), int(first[2]), bool(first[3])
    changes = [_to_change(r) for r in rows if r[4] is not None]
    return Page(changes, end, more, pruned, covered)


BLOCK = 16384  # positions per block; a batch's positions lie in one block (sql/002)


def block_of(position: int) -> int:
    """The block a position belongs to (block n holds n*BLOCK .. (n+1)*BLOCK - 1)."""
    return position // BLOCK


def block_end(block: int) -> int:
    """The last position of `block`: a settled head is always one."""
    return (block + 1) * BLOCK - 1


async def settle(conn: asyncpg.Connection, head: int, max_blocks: int = 100_000) -> int:
    """Settle the blocks drawn after `head`; return the new settled head (>= `head`).

    Each hole (a block drawn but not visible) is claimed in its own statement
    on this autocommit connection: the claim waits for a writer committing that
    block, or marks the block empty when its writer rolled back. Never run
    inside a transaction: a claim held while waiting on another would deadlock.
    """
    try:
        row = await conn.fetchrow(
            "select upto, holes from relay._holes($1, $2)", block_of(head), max_blocks
        )
    except asyncpg.UndefinedFunctionError:
        # a database still on 001 (being upgraded under a running relay): its
        # positions follow commit order, so its head is settled as it stands
        return max(head, await current_position(conn))
    assert row is not None
    upto, holes = int(row[0]), list(row[1])
    for hole in holes:
        await conn.execute("select relay._claim($1)", hole)
    return max(head, block_end(upto))


async def mark_settled(conn: Conn, head: int) -> None:
    """Let `relay.current_position()` start its walk at `head` (throttled in SQL)."""
    try:
        await conn.execute("select relay._mark_settled($1)", block_of(head))
    except asyncpg.UndefinedFunctionError:
        pass  # a database still on 001: nothing to record


async def current_position(conn: Conn) -> int:
    """The highest committed position (0 for an empty log)."""
    value = await conn.fetchval("select relay.current_position()")
    return int(value or 0)


async def pruned_through(conn: Conn) -> int:
    """Positions <= this are gone; checked after each replay page (a prune may race it)."""
    value = await conn.fetchval("select pruned_through from relay.meta")
    return int(value or 0)


async def prune(
    conn: Conn, max_age_seconds: float, keep_count: int | None, max_batches: int = 5000
) -> int:
    """One small pruning step (see relay.prune); the number of batches removed."""
    value = await conn.fetchval(
        "select relay.prune(make_interval(secs => $1), $2, $3)",
        max_age_seconds,
        keep_count,
        max_batches,
    )
    return int(value or 0)


async def head_and_oldest(conn: Conn) -> tuple[int, int]:
    """(highest committed position, highest pruned position) in one round trip.

    A resume from below the second must resync: those changes are gone.
    """
    row = await conn.fetchrow(
        "select relay.current_position(), (select pruned_through from relay.meta)"
    )
    assert row is not None
    return int(row[0] or 0), int(row[1] or 0)


_CATALOG = """
select w.schema_name, w.table_name, w.user_column, w.org_column, w.pk_columns,
       w.exclude_columns, a.attname::text, bt.typname::text, bt.typcategory::text,
       case when bt.typtype = 'e'
            then array(select e.enumlabel::text from pg_enum e
                        where e.enumtypid = bt.oid order by e.enumsortorder)
       end
  from relay.watched w
  join pg_attribute a on a.attrelid = w.relid and a.attnum > 0 and not a.attisdropped
  join pg_type t on t.oid = a.atttypid
  join pg_type bt on bt.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end
 order by w.schema_name, w.table_name, a.attnum
"""


async def load_catalog(conn: Conn) -> Catalog:
    """The watched tables with their visible (not excluded) columns."""
    tables: dict[tuple[str, str], Table] = {}
    columns: dict[tuple[str, str], dict[str, Column]] = {}
    for r in await conn.fetch(_CATALOG):
        key = (r[0], r[1])
        if key not in tables:
            tables[key] = Table(
                schema=r[0],
                name=r[1],
                user_column=r[2],
                org_column=r[3],
                pk=tuple(r[4]),
                excluded=frozenset(r[5] or ()),
                columns=columns.setdefault(key, {}),
            )
        if r[6] in tables[key].excluded:
            continue
        columns[key][r[6]] = Column(
            name=r[6], type_name=r[7], category=r[8], enum_labels=tuple(r[9] or ())
        )
    return Catalog(tables=tables)


async def can_subscribe(conn: Conn, topic: str, claims: dict[str, Any]) -> bool:
    """Ask `relay.can_subscribe(topic, claims)` (replaceable by the application)."""
    value = await conn.fetchval(
        "select relay.can_subscribe($1, $2::jsonb)", topic, orjson.dumps(claims).decode()
    )
    return bool(value)


async def broadcast(
    conn: Conn,
    topic: str,
    event: str,
    payload: Any,
    org_id: str | None,
    user_id: str | None,
) -> int:
    """Send a broadcast in its own transaction; return its position."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "select batch, ord from relay._broadcast($1, $2, $3::jsonb, $4, $5)",
            topic,
            event,
            orjson.dumps(payload).decode(),
            org_id,
            user_id,
        )
        assert row is not None
        batch, ord_ = row
    value = await conn.fetchval("select base from relay.batches where id = $1", batch)
    return int(value) + int(ord_) - 1


async def load_topic_families(conn: Conn) -> list[tuple[str, str, str, str]]:
    """(family, schema, table, primary key column) of every registered topic family
    whose table is watched with a single-column primary key."""
    rows = await conn.fetch(
        "select f.family, w.schema_name, w.table_name, w.pk_columns[1]"
        "  from relay.topic_families f join relay.watched w on w.relid = f.relid"
        " where array_length(w.pk_columns, 1) = 1"
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]
