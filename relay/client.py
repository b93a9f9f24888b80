"""`relay.client`: consume relay's changes from Python services (asyncio, httpx).

    async with RelayClient("http://relay:8080", token=service_token) as rc:
        async for change in rc.subscribe(
            "jobs:INSERT:status=eq.failed", ("jobs:UPDATE", "id,status"), topic="stream-progress:42"
        ):
            if "jobs:INSERT:status=eq.failed" in change.subscriptions:
                alert(change)

Routing: the relay numbers a request's `sub=` parameters from 0 and names in each
change's `ids` the subscriptions it satisfies; `Change.subscriptions` gives them back
as the `sub` strings passed to `subscribe`, so a consumer never evaluates a filter.

Invariants:
- Every change is yielded once, in position order: the client resumes with
  the last position it yielded (SSE `Last-Event-ID`, or `after=` when it
  long-polls), across reconnects, relay restarts and transport switches.
- With a position store, the position of a change is saved only after the
  consumer's loop body for it finished (when the next change is asked for),
  so a worker that crashes resumes at the change it was handling.
- When the stream cannot get through (repeated failures, or a proxy that
  buffers it), the client long-polls `/v1/changes` and tries the stream again
  later; `transport` says which is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("relay.client")

TokenSource = str | Callable[[], Awaitable[str]]


class PostgresChange(BaseModel):
    """The `data` of a `postgres_changes` event."""

    model_config = ConfigDict(extra="allow")

    schema_: str = ""
    table: str
    commit_timestamp: str
    eventType: Literal["INSERT", "UPDATE", "DELETE"]
    new: dict[str, Any]
    old: dict[str, Any]
    errors: Any = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PostgresChange:
        return cls.model_validate({**data, "schema_": data.get("schema", "")})


class Broadcast(BaseModel):
    """The `data` of a `broadcast` event."""

    topic: str
    event: str
    payload: dict[str, Any]


class Change(BaseModel):
    """One event from the relay: a row change, a broadcast, or a `system` notice.

    `subscriptions` are the `sub` strings given to `RelayClient.subscribe` that a row
    change satisfies (from the relay's `ids`, in request order; empty for broadcasts,
    system notices, and relays that do not send `ids`).
    """

    id: int | None
    event: str
    data: dict[str, Any]
    subscriptions: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[int, ...]:
        """The numbers of the stream's subscriptions this row change satisfies."""
        raw = self.data.get("ids") if self.event == "postgres_changes" else None
        if not isinstance(raw, list):
            return ()
        return tuple(i for i in raw if type(i) is int)

    @property
    def row(self) -> PostgresChange | None:
        return PostgresChange.parse(self.data) if self.event == "postgres_changes" else None

    @property
    def broadcast(self) -> Broadcast | None:
        return Broadcast.model_validate(self.data) if self.event == "broadcast" else None

    @property
    def status(self) -> str | None:
        return str(self.data.get("status")) if self.event == "system" else None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of a `snapshot` page (`subscribe(..., snapshot=True)`); else empty."""
        return list(self.data.get("rows", ())) if self.event == "snapshot" else []


class PositionStore(Protocol):
    """Where a consumer keeps its resume position."""

    async def load(self) -> int | None: ...

    async def save(self, position: int) -> None: ...


class CallbackStore:
    """A position store made of two callables (load may return None)."""

    def __init__(
        self,
        load: Callable[[], Awaitable[int | None]],
        save: Callable[[int], Awaitable[None]],
    ) -> None:
        self._load, self._save = load, save

    async def load(self) -> int | None:
        return await self._load()

    async def save(self, position: int) -> None:
        await self._save(position)


class PostgresPositionStore:
    """Keeps the position in a small table of the consumer's own database.

    `relay_client_positions(name text primary key, position bigint)` is
    created on first use; `name` tells consumers apart.
    """

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self._conn: Any = None

    async def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            await self._conn.execute(
                "create table if not exists relay_client_positions ("
                " name text primary key, position bigint not null,"
                " updated_at timestamptz not null default now())"
            )
        return self._conn

    async def load(self) -> int | None:
        conn = await self._connection()
        cur = await conn.execute(
            "select position from relay_client_positions where name = %s", (self.name,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else None

    async def save(self, position: int) -> None:
        conn = await self._connection()
        await conn.execute(
            "insert into relay_client_positions (name, position) values (%s, %s) "
            "on conflict (name) do update set position = excluded.position, updated_at = now()",
            (self.name, position),
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class RelayError(Exception):
    """The relay refused the subscription (4xx): retrying would not help."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class _StreamFailed(Exception):
    pass


class RelayClient:
    """A consumer of one relay (or a load balancer in front of several)."""

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource,
        last_id: int | None = None,
        store: PositionStore | None = None,
        transport: Literal["auto", "sse", "poll"] = "auto",
        sse_failures_before_poll: int = 3,
        retry_sse_after: float = 60.0,
        poll_wait: float = 25.0,
        max_backoff: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.position = last_id
        self.store = store
        self.mode = transport
        self.transport: Literal["sse", "poll"] = "poll" if transport == "poll" else "sse"
        self._failures_before_poll = sse_failures_before_poll
        self._retry_sse_after = retry_sse_after
        self._poll_wait = poll_wait
        self._max_backoff = max_backoff
        self._http = http
        self._own_http = http is None

    async def __aenter__(self) -> RelayClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        if self.position is None and self.store is not None:
            self.position = await self.store.load()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None and self._own_http:
            await self._http.aclose()

    async def _bearer(self) -> str:
        tok = self._token
        return tok if isinstance(tok, str) else await tok()

    @staticmethod
    def _params(
        subs: tuple[str | tuple[str, str], ...], topics: list[str], select: dict[str, str]
    ) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
        """The query (each `sub` followed by its own `select`) and the subs in id order."""
        params: list[tuple[str, str]] = []
        texts: list[str] = []
        for sub in subs:
            text, columns = sub if isinstance(sub, tuple) else (sub, select.get(sub))
            params.append(("sub", text))
            texts.append(text)
            if columns:
                params.append(("select", columns))
        params += [("topic", t) for t in topics]
        return params, tuple(texts)

    async def subscribe(
        self,
        *subs: str | tuple[str, str],
        topic: str | list[str] | None = None,
        select: dict[str, str] | None = None,
        snapshot: bool = False,
    ) -> AsyncIterator[Change]:
        """Changes for these `sub=` / `topic=` subscriptions, forever, exactly once each.

        A sub is a string, or a `(sub, select)` pair giving that subscription its own
        columns; `select` (sub string -> columns) is the older way to say the same.
        Each row change says which of `subs` it satisfies: `Change.subscriptions`.

        With `snapshot=True` and no position yet, the current rows come first, as
        `snapshot` events (`change.rows`), then a `system` `SUBSCRIBED` event whose
        `id` is the position they reflect, then the changes after it. A snapshot
        cut short by a failure is followed by `RESYNC_REQUIRED` (reason
        `snapshot_interrupted`) and a new snapshot.
        """
        topics = [topic] if isinstance(topic, str) else list(topic or [])
        params, texts = self._params(subs, topics, select or {})
        pending: int | None = None  # position yielded, saved once the consumer asks again
        failures = 0
        polling_since = 0.0
        backoff = 0.2
        partial = False  # snapshot rows were yielded, their SUBSCRIBED not yet
        while True:
            if self.transport == "poll" and self.mode == "auto":
                if time.monotonic() - polling_since > self._retry_sse_after:
                    self.transport = "sse"
            source: AsyncGenerator[Change, None]
            if snapshot and self.position is None:
                if partial:
                    partial = False
                    yield Change(
                        id=None,
                        event="system",
                        data={"status": "RESYNC_REQUIRED", "reason": "snapshot_interrupted"},
                    )
                source = (
                    self._sse([*params, ("snapshot", "true")], with_snapshot=True)
                    if self.transport == "sse"
                    else self._poll_snapshot(params)
                )
            else:
                source = self._sse(params) if self.transport == "sse" else self._poll(params)
            try:
                async for change in source:
                    failures, backoff = 0, 0.2
                    if pending is not None and self.store is not None:
                        await self.store.save(pending)
                        pending = None
                    if change.id is not None:
                        self.position = change.id
                        pending = change.id
                    partial = change.event == "snapshot" or (partial and change.id is None)
                    yield _routed(change, texts)
            except RelayError:
                raise
            except (httpx.HTTPError, OSError, _StreamFailed, ValueError) as exc:
                failures += 1
                log.info("relay %s failed (%s); reconnecting", self.transport, type(exc).__name__)
                if (
                    self.mode == "auto"
                    and self.transport == "sse"
                    and failures >= self._failures_before_poll
                ):
                    self.transport, polling_since, failures = "poll", time.monotonic(), 0
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
            finally:
                with contextlib.suppress(Exception):
                    await source.aclose()

    def _fatal(self, status: int) -> bool:
        """A 4xx that retrying cannot fix (401 can, when a token provider refreshes)."""
        if status == 429 or not 400 <= status < 500:
            return False
        return status != 401 or isinstance(self._token, str)

    # The query is encoded here, not by httpx, which groups repeated keys together
    # (sub=a&sub=b&select=x) and so would give a `select` to the wrong `sub`.

    async def _sse(
        self, params: list[tuple[str, str]], with_snapshot: bool = False
    ) -> AsyncGenerator[Change, None]:
        assert self._http is not None
        headers = {"authorization": f"Bearer {await self._bearer()}", "accept": "text/event-stream"}
        if self.position is not None:
            headers["last-event-id"] = str(self.position)
        async with self._http.stream(
            "GET", f"{self.url}/v1/stream?{urlencode(params)}", headers=headers
        ) as resp:
            if self._fatal(resp.status_code):
                raise RelayError(resp.status_code, orjson.loads(await resp.aread() or b"null"))
            if resp.status_code != 200:
                raise _StreamFailed(str(resp.status_code))
            fields: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line == "":
                    if "data" in fields:
                        change = Change(
                            id=int(fields["id"]) if "id" in fields else None,
                            event=fields.get("event", "message"),
                            data=orjson.loads(fields["data"]),
                        )
                        if change.event == "system" and change.status in (
                            "TOKEN_EXPIRED",
                            "TOO_SLOW",
                            "SHUTDOWN",
                        ):
                            raise _StreamFailed(str(change.status))
                        if change.status == "SNAPSHOT_FAILED":
                            if change.data.get("error") == "unavailable":
                                raise _StreamFailed(str(change.status))
                            raise RelayError(413, change.data)
                        if change.event != "system" or change.status != "SUBSCRIBED":
                            yield change
                        elif with_snapshot:  # the snapshot's end: resume from its position
                            yield change.model_copy(update={"id": int(change.data["position"])})
                    fields = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    fields[key] = value[1:] if value.startswith(" ") else value
        raise _StreamFailed("stream ended")

    async def fetch_snapshot(
        self, *subs: str, select: dict[str, str] | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """`GET /v1/snapshot`: (position, rows as `{"ids","schema","table","row"}`)."""
        assert self._http is not None
        headers = {"authorization": f"Bearer {await self._bearer()}"}
        params, _ = self._params(subs, [], select or {})
        resp = await self._http.get(f"{self.url}/v1/snapshot?{urlencode(params)}", headers=headers)
        if resp.status_code != 200:
            raise RelayError(resp.status_code, resp.json())
        body = orjson.loads(resp.content)
        return int(body["position"]), list(body["rows"])

    async def _poll_snapshot(self, params: list[tuple[str, str]]) -> AsyncGenerator[Change, None]:
        """The snapshot over plain HTTP, shaped as the stream sends it: pages, then SUBSCRIBED."""
        assert self._http is not None
        headers = {"authorization": f"Bearer {await self._bearer()}"}
        resp = await self._http.get(f"{self.url}/v1/snapshot?{urlencode(params)}", headers=headers)
        if self._fatal(resp.status_code):
            raise RelayError(resp.status_code, resp.json())
        if resp.status_code != 200:
            raise _StreamFailed(str(resp.status_code))
        body = orjson.loads(resp.content)
        page: dict[str, Any] | None = None
        for item in body["rows"]:
            key = {"ids": item["ids"], "schema": item["schema"], "table": item["table"]}
            if page is None or any(page[k] != v for k, v in key.items()):
                if page is not None:
                    yield Change(id=None, event="snapshot", data=page)
                page = {**key, "rows": []}
            page["rows"].append(item["row"])
        if page is not None:
            yield Change(id=None, event="snapshot", data=page)
        position = int(body["position"])
        yield Change(
            id=position, event="system", data={"status": "SUBSCRIBED", "position": position}
        )

    async def _poll(self, params: list[tuple[str, str]]) -> AsyncGenerator[Change, None]:
        assert self._http is not None
        while True:
            headers = {"authorization": f"Bearer {await self._bearer()}"}
            query = list(params) + [("wait", str(self._poll_wait)), ("limit", "500")]
            if self.position is not None:
                query.append(("after", str(self.position)))
            resp = await self._http.get(
                f"{self.url}/v1/changes?{urlencode(query)}", headers=headers
            )
            if self._fatal(resp.status_code):
                raise RelayError(resp.status_code, resp.json())
            if resp.status_code != 200:
                raise _StreamFailed(str(resp.status_code))
            body = resp.json()
            if body.get("resync_required"):
                yield Change(
                    id=None,
                    event="system",
                    data={"status": "RESYNC_REQUIRED", **body},
                )
                self.position = int(body["position"])
                continue
            for e in body["events"]:
                yield Change.model_validate(e)
            self.position = int(body["position"])
            if self.mode == "auto" and not body["events"]:
                return  # an idle moment: let subscribe() decide whether to try SSE again


def _routed(change: Change, subs: tuple[str, ...]) -> Change:
    """`change` with the `sub` strings its `ids` name (an unknown number names nothing)."""
    named = tuple(subs[i] for i in dict.fromkeys(change.ids) if 0 <= i < len(subs))
    return change.model_copy(update={"subscriptions": named}) if named else change
