"""What a stream asked for: `sub=`, `topic=` and `select=` parameters, parsed.

Invariant: parsing happens once, when the stream opens, against the catalog
snapshot; anything malformed, unknown or not allowed becomes a
`RequestError` with a status and a message naming the offending part, and
nothing the client sent is ever interpolated into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.catalog import Catalog, Table
from relay.filters import Filter, FilterError, parse_filter
from relay.principal import Principal

EVENTS = ("INSERT", "UPDATE", "DELETE")
MAX_TOPIC_LENGTH = 255
MAX_PARAM_LENGTH = 8192


class RequestError(Exception):
    """A client error answered before the stream starts: `{"error", "message"}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def union_of(selects: Iterable[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """The columns a row goes out with when several subscriptions want it: all
    (None) if any of them selects all, else the union in first-seen order."""
    keep: list[str] = []
    for select in selects:
        if select is None:
            return None
        keep += [c for c in select if c not in keep]
    return tuple(keep)


@dataclass(frozen=True, slots=True)
class RowSubscription:
    """Row changes of one table, of one event type or all, optionally filtered."""

    text: str
    table: Table
    event: str  # "*" or one of EVENTS
    filter: Filter | None
    select: tuple[str, ...] | None

    def wants(self, event_type: str, row: dict[str, Any]) -> bool:
        """Does a change of this type, with this row, match event and filter?"""
        if self.event != "*" and self.event != event_type:
            return False
        return self.filter is None or self.filter.matches(row)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sub": self.text,
            "schema": self.table.schema,
            "table": self.table.name,
            "event": self.event,
        }
        if self.select is not None:
            out["select"] = list(self.select)
        return out


@dataclass(frozen=True, slots=True)
class SubscriptionSet:
    """Everything one stream subscribed to, in the order given."""

    rows: tuple[RowSubscription, ...]
    topics: tuple[str, ...]
    # per topic: broadcasts at or below this position are not replayed (the row
    # the topic rests on belonged to someone else then; relay.topicguard)
    topic_floors: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.rows] + [{"topic": t} for t in self.topics]

    @property
    def tables(self) -> frozenset[tuple[str, str]]:
        return frozenset((r.table.schema, r.table.name) for r in self.rows)


def _check_text(name: str, value: str) -> None:
    if "\x00" in value:
        raise RequestError(400, "invalid_parameter", f"{name}: NUL character is not allowed")
    if len(value) > MAX_PARAM_LENGTH:
        raise RequestError(
            400, "invalid_parameter", f"{name}: longer than {MAX_PARAM_LENGTH} characters"
        )


def parse_sub(
    text: str,
    catalog: Catalog,
    principal: Principal,
    *,
    max_filter_length: int = 4096,
    max_in_values: int = 100,
) -> RowSubscription:
    """Parse `[schema.]table[:event[:filter]]` against the catalog."""
    _check_text("sub", text)
    if not text.strip():
        raise RequestError(400, "invalid_sub", "sub: empty subscription")
    parts = text.split(":", 2)
    name = parts[0].strip()
    schema, _, table_name = name.rpartition(".")
    schema = schema or "public"
    if not table_name:
        raise RequestError(400, "invalid_sub", f"sub {_clip(text)!r}: missing table name")
    table = catalog.get(schema, table_name)
    if table is None:
        raise RequestError(
            400,
            "unknown_table",
            f"sub {_clip(text)!r}: unknown table {_clip(schema)}.{_clip(table_name)} "
            "(it does not exist or is not watched: select relay.watch('...'))",
        )
    if not table.has_owner and not principal.is_service:
        raise RequestError(
            403,
            "forbidden_table",
            f"table {table.qualified} has no ownership column: only service_role may "
            "subscribe to it",
        )
    event = parts[1].strip().upper() if len(parts) > 1 else "*"
    event = event or "*"
    if event != "*" and event not in EVENTS:
        raise RequestError(
            400,
            "invalid_event",
            f"sub {_clip(text)!r}: unknown event {_clip(parts[1])!r} "
            "(use INSERT, UPDATE, DELETE or *)",
        )
    filt: Filter | None = None
    if len(parts) > 2 and parts[2].strip():
        try:
            filt = parse_filter(
                parts[2],
                table.columns,
                max_in_values=max_in_values,
                max_length=max_filter_length,
                unavailable=table.excluded,
            )
        except FilterError as exc:
            raise RequestError(
                400, "invalid_filter", f"sub {_clip(text)!r}: invalid filter: {exc}"
            ) from None
    return RowSubscription(text=text, table=table, event=event, filter=filt, select=None)


def parse_select(text: str, sub: RowSubscription) -> tuple[str, ...]:
    """`select=a,b` for the preceding sub: known columns, primary key always kept."""
    _check_text("select", text)
    names = [c.strip() for c in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise RequestError(400, "invalid_select", f"select {_clip(text)!r}: empty column name")
    columns = sub.table.columns
    for n in names:
        if n in sub.table.excluded:
            raise RequestError(
                400,
                "unknown_column",
                f"select: column {_clip(n)!r} of {sub.table.qualified} is not available "
                "(excluded from capture)",
            )
        if n not in columns:
            raise RequestError(
                400,
                "unknown_column",
                f"select: table {sub.table.qualified} has no column {_clip(n)!r}",
            )
    keep = list(sub.table.pk)
    keep += [n for n in names if n not in keep]
    return tuple(keep)


def parse_topic(text: str) -> str:
    _check_text("topic", text)
    if not text.strip():
        raise RequestError(400, "invalid_topic", "topic: empty topic")
    if len(text) > MAX_TOPIC_LENGTH:
        raise RequestError(
            400, "invalid_topic", f"topic: longer than {MAX_TOPIC_LENGTH} characters"
        )
    return text


def parse_subscriptions(
    params: Iterable[tuple[str, str]],
    catalog: Catalog,
    principal: Principal,
    *,
    max_subscriptions: int = 50,
    max_filter_length: int = 4096,
    max_in_values: int = 100,
) -> SubscriptionSet:
    """Parse the stream's query parameters, in order (`select` follows its `sub`)."""
    rows: list[RowSubscription] = []
    topics: list[str] = []
    for key, value in params:
        if key == "sub":
            rows.append(
                parse_sub(
                    value,
                    catalog,
                    principal,
                    max_filter_length=max_filter_length,
                    max_in_values=max_in_values,
                )
            )
        elif key == "topic":
            topic = parse_topic(value)
            if topic not in topics:
                topics.append(topic)
        elif key == "select":
            if not rows:
                raise RequestError(400, "invalid_select", "select must follow a sub parameter")
            last = rows[-1]
            if last.select is not None:
                raise RequestError(
                    400, "invalid_select", f"sub {_clip(last.text)!r}: select given twice"
                )
            rows[-1] = RowSubscription(
                text=last.text,
                table=last.table,
                event=last.event,
                filter=last.filter,
                select=parse_select(value, last),
            )
        if len(rows) + len(topics) > max_subscriptions:
            raise RequestError(
                400,
                "too_many_subscriptions",
                f"at most {max_subscriptions} sub/topic parameters per stream",
            )
    if not rows and not topics:
        raise RequestError(400, "no_subscription", "give at least one sub= or topic= parameter")
    return SubscriptionSet(rows=tuple(rows), topics=tuple(topics))


def stale_reason(sub: RowSubscription, catalog: Catalog) -> dict[str, Any] | None:
    """Why a live subscription can no longer match as asked (after DDL), or None."""
    table = catalog.get(sub.table.schema, sub.table.name)
    if table is None:
        return {"reason": "table_unwatched", "sub": sub.text}
    wanted = set(sub.filter.columns if sub.filter is not None else ()) | set(sub.select or ())
    missing = sorted(wanted - set(table.columns))
    if missing:
        return {"reason": "column_missing", "sub": sub.text, "columns": missing}
    return None
