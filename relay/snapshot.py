"""Initial state: the current rows of a stream's subscriptions, and the position they reflect.

Invariants:
- Rows and position come from one REPEATABLE READ READ ONLY transaction. The
  position is `relay.snapshot_head()` of that database snapshot, used only when
  it is exact (no change above it is visible): the rows then reflect exactly the
  changes at or below it, and the log after it holds exactly the changes they do
  not — a stream that continues from it has no gap and no duplicate.
- A row is sent to a subscription exactly when live delivery would send that
  row version to it: ownership, filter and `select=` come from the same parsed
  subscription (compiled to SQL by relay.sqlfilter), and the row is
  `to_jsonb(row)` minus the excluded columns, as capture writes it (a
  projection re-encoded as the live path re-encodes it). A row several
  subscriptions want is sent once, with all their ids.
- Memory is bounded by one page whatever the table's size: rows come from a
  server-side cursor a page at a time, pages sized by rows and bytes.
- Limits are never a silent cut. The row limit is checked before the response
  starts (the rows are counted in the same snapshot, stopping just past the
  limit), as is the time spent until then: both are a 413 naming the limit.
  Time spent after the response started ends it with a named error
  (`SNAPSHOT_FAILED` on a stream; an aborted body for JSON).
- At most RELAY_SNAPSHOT_CONCURRENCY snapshots hold a database connection at
  once, and a snapshot gives its connection back as soon as its rows are sent:
  never for the life of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import orjson
from starlette.types import Receive, Scope, Send

from relay.catalog import Table
from relay.changes import _decode_exact, _encode_exact, sse_frame, system_frame
from relay.principal import Principal
from relay.sqlfilter import Params, compile_filter, compile_ownership, ident
from relay.subscriptions import RequestError, RowSubscription, SubscriptionSet, union_of

log = logging.getLogger("relay.snapshot")

# relay.server puts the connection's transport here (relay.stream.TRANSPORT_KEY)
TRANSPORT_KEY: Final = "relay.transport"
# A snapshot retries this often, backing off from the first delay, while
# positions below a visible one are still in flight; then 503.
HEAD_ATTEMPTS: Final = 6
HEAD_FIRST_DELAY: Final = 0.005
# A page of rows holds at most this many bytes (more only for one huge row).
PAGE_BYTES: Final = 256 * 1024

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-snapshot bounds (RELAY_SNAPSHOT_*)."""

    max_rows: int
    max_seconds: float
    page_rows: int


class SnapshotRefused(RequestError):
    """A snapshot refused before its response started; `headers` go with the answer."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(status, code, message)
        self.headers = {} if retry_after is None else {"retry-after": str(retry_after)}


class SnapshotAborted(Exception):
    """A snapshot that failed after its response started."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def snapshot_head(conn: Conn) -> tuple[int, bool]:
    """(position, exact) of the calling transaction's database snapshot.

    `position` is the highest P such that every position <= P is visible in
    this snapshot or will never be used; `exact` is true when no change above P
    is visible (sql/002_capture.sql, docs/architecture.md "Positions").
    """
    row = await conn.fetchrow('select "position", exact from relay.snapshot_head()')
    assert row is not None
    return int(row[0] or 0), bool(row[1])


@dataclass(frozen=True, slots=True)
class _Query:
    """One table's snapshot: its rows visible to any of its subscriptions.

    Selects the row's JSON text, then one boolean per subscription with a filter
    (`flagged`); subscriptions without a filter (`always`) match every row.
    """

    table: Table
    sql: str
    params: tuple[Any, ...]
    count_sql: str
    count_params: tuple[Any, ...]
    always: tuple[int, ...]
    flagged: tuple[int, ...]
    selects: Mapping[int, tuple[str, ...] | None]


_TYPES = """
select a.attname::text, format('%I.%I', n.nspname, b.typname)
  from pg_attribute a
  join pg_type t on t.oid = a.atttypid
  join pg_type b on b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end
  join pg_namespace n on n.oid = b.typnamespace
 where a.attrelid = $1::text::regclass and a.attnum > 0 and not a.attisdropped
"""


async def column_types(conn: Conn, table: Table) -> dict[str, str]:
    """Each column's base type, schema-qualified and quoted (no type modifier), read now."""
    name = f"{ident(table.schema)}.{ident(table.name)}"
    return {r[0]: r[1] for r in await conn.fetch(_TYPES, name)}


async def _query(
    conn: Conn, table: Table, subs: list[tuple[int, RowSubscription]], principal: Principal
) -> _Query:
    name = f"{ident(table.schema)}.{ident(table.name)}"
    types = await column_types(conn, table)
    always = tuple(index for index, sub in subs if sub.filter is None)
    filtered = [(index, sub.filter) for index, sub in subs if sub.filter is not None]

    def where(params: Params, flags: bool) -> tuple[str, list[str]]:
        """(WHERE clause, each filtered subscription's condition if `flags`), in `params`.

        Every parameter added must appear in the statement (Postgres infers its type).
        """
        owner = compile_ownership(table, principal, "t", params)
        if always and not flags:
            return f"{owner} AND TRUE", []
        conditions = [compile_filter(f, table.columns, types, "t", params) for _, f in filtered]
        wanted = "TRUE" if always else "(" + " OR ".join(conditions) + ")"
        return f"{owner} AND {wanted}", conditions

    counting = Params()
    count_where, _ = where(counting, flags=False)
    limit = f"${len(counting.values) + 1}::int8"
    count_sql = (
        f"select count(*) from (select from {name} as t where {count_where} limit {limit}) s"
    )

    params = Params()
    excluded = params.texts(sorted(table.excluded))
    row_where, conditions = where(params, flags=True)
    columns = [f"(to_jsonb(t.*) - {excluded})::text"]
    columns += [f"({sql}) IS TRUE" for sql in conditions]
    sql = f"select {', '.join(columns)} from {name} as t where {row_where}"
    return _Query(
        table=table,
        sql=sql,
        params=tuple(params.values),
        count_sql=count_sql,
        count_params=tuple(counting.values),
        always=always,
        flagged=tuple(index for index, _ in filtered),
        selects={index: sub.select for index, sub in subs},
    )


@dataclass(slots=True)
class Page:
    """Rows of one table that the same subscriptions (`ids`) want, as JSON texts."""

    ids: tuple[int, ...]
    schema: str
    table: str
    rows: list[bytes]
    size: int = 0  # bytes in rows

    def head(self) -> bytes:
        return b"".join(
            (
                b'{"ids":',
                orjson.dumps(self.ids),
                b',"schema":',
                orjson.dumps(self.schema),
                b',"table":',
                orjson.dumps(self.table),
            )
        )

    def sse(self) -> bytes:
        """The `event: snapshot` frame of this page (no `id:`)."""
        data = b"".join((self.head(), b',"rows":[', b",".join(self.rows), b"]}"))
        return sse_frame("snapshot", data)

    def json_rows(self) -> bytes:
        """This page's rows as `{"ids","schema","table","row"}` objects, comma-joined."""
        head = self.head() + b',"row":'
        return b",".join(head + row + b"}" for row in self.rows)


class Snapshot:
    """An open snapshot: its position, and its rows to read once with `pages()`.

    Holds a pooled connection in an open transaction until `close()` (which
    `pages()` callers must reach: use it in `try/finally`).
    """

    def __init__(
        self,
        conn: Conn,
        release: Any,
        tx: Any,
        gate: asyncio.Semaphore,
        position: int,
        queries: list[_Query],
        limits: Limits,
        deadline: float,
    ) -> None:
        self.position = position
        self.deadline = deadline  # loop time
        self._conn = conn
        self._release = release
        self._tx = tx
        self._gate = gate
        self._queries = queries
        self.limits = limits
        self._closed = False
        self.rows_sent = 0

    async def pages(self) -> AsyncGenerator[Page, None]:
        """Every visible row once, in pages; raises SnapshotAborted past the deadline."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        try:
            for q in self._queries:
                cursor = await self._conn.cursor(q.sql, *q.params)
                fetch = limits.page_rows
                while True:
                    if loop.time() > self.deadline:
                        raise _too_slow(limits)
                    records = await cursor.fetch(fetch)
                    if not records:
                        break
                    size = 0
                    for page in self._group(q, records):
                        size += page.size
                        self.rows_sent += len(page.rows)
                        yield page
                    # keep a fetch near PAGE_BYTES whatever the rows' size
                    average = max(1, size // len(records))
                    fetch = max(1, min(limits.page_rows, PAGE_BYTES // average))
        except asyncpg.QueryCanceledError:
            raise _too_slow(limits) from None

    def _group(self, q: _Query, records: list[asyncpg.Record]) -> list[Page]:
        """Records as pages, one per set of matching subscriptions, each under PAGE_BYTES."""
        table = q.table
        pages: dict[tuple[int, ...], list[Page]] = {}
        projections: dict[tuple[int, ...], tuple[str, ...] | None] = {}
        for record in records:
            ids = q.always + tuple(i for n, i in enumerate(q.flagged) if record[n + 1])
            ids = tuple(sorted(ids))
            if ids not in projections:
                projections[ids] = union_of(q.selects[i] for i in ids)
            keep = projections[ids]
            text: str = record[0]
            if keep is None:
                row = text.encode()
            else:
                full = _decode_exact(text)
                row = _encode_exact({k: full[k] for k in keep if k in full})
            group = pages.setdefault(ids, [])
            if not group or group[-1].size + len(row) > PAGE_BYTES:
                group.append(Page(ids, table.schema, table.name, []))
            page = group[-1]
            page.rows.append(row)
            page.size += len(row)
        return [page for group in pages.values() for page in group]

    async def close(self) -> None:
        """End the transaction and give the connection and the slot back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(Exception):
                await self._tx.rollback()  # read only: nothing to keep
        finally:
            try:
                await self._release()
            finally:
                self._gate.release()


def _too_slow(limits: Limits) -> SnapshotAborted:
    return SnapshotAborted(
        "snapshot_too_slow",
        f"the snapshot took longer than {limits.max_seconds:g} s "
        "(RELAY_SNAPSHOT_MAX_SECONDS): narrow the subscription with a filter, "
        "or raise the limit",
    )


async def open_snapshot(
    pool: asyncpg.Pool,
    gate: asyncio.Semaphore,
    principal: Principal,
    subs: SubscriptionSet,
    limits: Limits,
) -> Snapshot:
    """Take the snapshot: position fixed, limits checked, rows ready to stream.

    Raises SnapshotRefused (4xx/503 with a message naming the cause); database
    failures other than those it names propagate (answered 503).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.max_seconds
    try:
        await asyncio.wait_for(gate.acquire(), limits.max_seconds)
    except TimeoutError:
        raise SnapshotRefused(
            503,
            "snapshot_busy",
            "too many snapshots are in progress (RELAY_SNAPSHOT_CONCURRENCY); retry shortly",
            retry_after=1,
        ) from None
    release: Any = None
    try:
        conn = await pool.acquire(timeout=max(0.1, deadline - loop.time()))

        async def release() -> None:
            await pool.release(conn)

        tx, position = await _consistent_transaction(conn, deadline)
        try:
            queries = await _prepare(conn, principal, subs, limits)
        except BaseException:
            with contextlib.suppress(Exception):
                await tx.rollback()
            raise
    except BaseException as exc:
        try:
            if release is not None:
                await release()
        finally:
            gate.release()
        if isinstance(exc, asyncpg.PostgresError):
            refused = _refusal(exc, limits)
            if refused is not None:
                raise refused from None
        raise
    return Snapshot(conn, release, tx, gate, position, queries, limits, deadline)


async def _consistent_transaction(conn: Conn, deadline: float) -> tuple[Any, int]:
    """A REPEATABLE READ READ ONLY transaction whose snapshot has an exact head."""
    loop = asyncio.get_running_loop()
    delay = HEAD_FIRST_DELAY
    for _attempt in range(HEAD_ATTEMPTS):
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await tx.start()
        try:
            left_ms = max(1, int((deadline - loop.time()) * 1000))
            # the relay enforces the deadline; the server-side timeouts are a backstop
            await conn.execute(
                "select set_config('statement_timeout', $1, true),"
                " set_config('idle_in_transaction_session_timeout', $2, true),"
                " set_config('row_security', 'off', true)",
                str(left_ms),
                str(left_ms + 10_000),
            )
            position, exact = await snapshot_head(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await tx.rollback()
            raise
        if exact:
            return tx, position
        await tx.rollback()
        await asyncio.sleep(delay)
        delay *= 2
    raise SnapshotRefused(
        503,
        "snapshot_unavailable",
        "changes were still committing around the snapshot's position after "
        f"{HEAD_ATTEMPTS} attempts; retry shortly",
        retry_after=1,
    )


async def _prepare(
    conn: Conn, principal: Principal, subs: SubscriptionSet, limits: Limits
) -> list[_Query]:
    """One query per table, after counting its rows against the limit."""
    by_table: dict[tuple[str, str], list[tuple[int, RowSubscription]]] = {}
    for index, sub in enumerate(subs.rows):
        by_table.setdefault((sub.table.schema, sub.table.name), []).append((index, sub))
    queries: list[_Query] = []
    total = 0
    for group in by_table.values():
        q = await _query(conn, group[0][1].table, group, principal)
        total += int(await conn.fetchval(q.count_sql, *q.count_params, limits.max_rows - total + 1))
        if total > limits.max_rows:
            raise SnapshotRefused(
                413,
                "snapshot_too_large",
                f"the snapshot has more than {limits.max_rows} rows "
                "(RELAY_SNAPSHOT_MAX_ROWS): narrow the subscription with a filter, "
                "or raise the limit",
            )
        queries.append(q)
    return queries


def _refusal(exc: asyncpg.PostgresError, limits: Limits) -> SnapshotRefused | None:
    """The client-facing answer to a database error while taking a snapshot."""
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "57014":  # statement_timeout
        aborted = _too_slow(limits)
        return SnapshotRefused(413, aborted.code, aborted.message)
    if state == "42501":  # no SELECT on the table, or row-level security would filter it
        log.warning("snapshot refused by the database: %s", exc)
        return SnapshotRefused(
            503,
            "snapshot_forbidden",
            "the relay's database role may not read a subscribed table in full "
            "(it needs SELECT on it, and BYPASSRLS if the table has row-level security)",
        )
    if state in ("42703", "42P01"):  # a column or table changed since the catalog was read
        return SnapshotRefused(
            503, "schema_changed", "a subscribed table changed; retry shortly", retry_after=1
        )
    if state.startswith("22"):  # a filter value Postgres cannot convert (e.g. out of range)
        return SnapshotRefused(
            400, "invalid_filter", f"a filter value is out of range for Postgres: {exc}"[:200]
        )
    return None


# --------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def resume_marker(position: int) -> bytes:
    """`id: P` alone: EventSource records P as its Last-Event-ID without an event, so
    a reconnect before any change resumes from the snapshot instead of reloading it."""
    return b"id: %d\n\n" % position


async def stream_snapshot(
    snapshot: Snapshot, send: Send, receive: Receive, headers: list[tuple[bytes, bytes]]
) -> int | None:
    """Start an SSE response and send the snapshot's frames; always closes the snapshot.

    Returns the position the stream continues after, or None when the response
    already ended (client gone, or `SNAPSHOT_FAILED` sent).
    """
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        failure: SnapshotAborted
        try:
            async with asyncio.timeout_at(snapshot.deadline):
                async with contextlib.aclosing(snapshot.pages()) as pages:
                    async for page in pages:
                        if gone.done():
                            return None
                        await send(
                            {"type": "http.response.body", "body": page.sse(), "more_body": True}
                        )
            if gone.done():
                return None
            return snapshot.position
        except TimeoutError:
            failure = _too_slow(snapshot.limits)
        except SnapshotAborted as exc:
            failure = exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("snapshot ended by database error: %s", type(exc).__name__)
            failure = SnapshotAborted("unavailable", "the database is unavailable; retry shortly")
        frame = system_frame(
            {"status": "SNAPSHOT_FAILED", "error": failure.code, "message": failure.message}
        )
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(1.0):
                await send({"type": "http.response.body", "body": frame, "more_body": False})
        return None
    finally:
        gone.cancel()
        await snapshot.close()


class SnapshotResponse:
    """ASGI app answering `GET /v1/snapshot`: `{"position": P, "rows": [...]}`, streamed.

    A failure after the response started aborts the connection: the client sees
    a broken body, never a valid JSON document with rows missing.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshot = self.snapshot
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            body = b'{"position":%d,"rows":[' % snapshot.position
            first = True
            try:
                async with asyncio.timeout_at(snapshot.deadline):
                    async with contextlib.aclosing(snapshot.pages()) as pages:
                        async for page in pages:
                            if gone.done():
                                return
                            rows = page.json_rows()
                            body += rows if first else b"," + rows
                            first = False
                            chunk = {"type": "http.response.body", "body": body, "more_body": True}
                            await send(chunk)
                            body = b""
            except (TimeoutError, SnapshotAborted, OSError, asyncpg.PostgresError) as exc:
                log.warning("snapshot response aborted: %s", type(exc).__name__)
                transport = scope.get("extensions", {}).get(TRANSPORT_KEY)
                if transport is not None:
                    transport.abort()
                    return
                raise
            await send({"type": "http.response.body", "body": body + b"]}", "more_body": False})
        finally:
            gone.cancel()
            await snapshot.close()
