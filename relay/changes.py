"""One entry of the change log, and the SSE frames it turns into.

Invariant: a change is encoded at most once per distinct frame (payload
variant — full row, moved-in INSERT, moved-out DELETE —, `select=` columns,
and the subscription `ids` it names), and the same bytes object is handed to
every subscriber that receives that frame. Row
values are passed through exactly as Postgres' `to_jsonb` wrote them, except
in `select=` projections, which keep numbers exact (Decimal -> raw JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

# Change kinds as stored in relay.changes.kind
INSERT = "I"
UPDATE = "U"
DELETE = "D"
TRUNCATE = "T"
BROADCAST = "B"

EVENT_TYPES = {INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE"}

# Payload variants a subscriber may receive for a row change.
FULL = 0  # the change as it happened
MOVED_IN = 1  # UPDATE that moved the row to this owner: INSERT with full new
MOVED_OUT = 2  # UPDATE that moved the row away: DELETE with only the primary key


def _decode_exact(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text, parse_float=Decimal)
    return value if isinstance(value, dict) else {}


def _encode_exact(value: Any) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, Decimal):
            return orjson.Fragment(str(obj))
        raise TypeError(type(obj).__name__)

    return orjson.dumps(value, default=default)


def sse_frame(event: str, data: bytes, position: int | None = None) -> bytes:
    """One SSE event; `data` must be a single line (JSON always is)."""
    head = b"" if position is None else b"id: %d\n" % position
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def system_frame(payload: Mapping[str, Any], retry_ms: int | None = None) -> bytes:
    """A `system` event: no `id:`, so it never moves a client's resume position."""
    retry = b"" if retry_ms is None else b"retry: %d\n" % retry_ms
    return retry + sse_frame("system", orjson.dumps(payload))


KEEPALIVE = b": keep-alive\n\n"

# a frame's cache key: (variant, columns, primary key if only it goes out, ids)
_FrameKey = tuple[int, tuple[str, ...] | None, tuple[str, ...], tuple[int, ...]]
# the key of changes that have one frame for everyone (broadcast, truncate)
_SINGLE: _FrameKey = (FULL, None, (), ())


def _ids_json(ids: tuple[int, ...]) -> bytes:
    return b"[" + b",".join(b"%d" % i for i in ids) + b"]"


@dataclass(slots=True, eq=False)
class Change:
    """A committed change read from the log, at `position`.

    For INSERT/UPDATE `user_id`/`org_id` own the new row version; for UPDATE
    `old_user_id`/`old_org_id` own the old one; for DELETE `user_id`/`org_id`
    own the deleted (old) version. For BROADCAST `new_text` is the payload.
    """

    position: int
    kind: str
    schema: str | None
    table: str | None
    topic: str | None
    event: str | None
    user_id: str | None
    org_id: str | None
    old_user_id: str | None
    old_org_id: str | None
    new_text: str | None
    old_text: str | None
    commit_timestamp: str
    _new: dict[str, Any] | None = field(default=None, repr=False)
    _old: dict[str, Any] | None = field(default=None, repr=False)
    _frames: dict[tuple[int, tuple[str, ...] | None, tuple[str, ...], tuple[int, ...]], bytes] = (
        field(default_factory=dict, repr=False)
    )

    @property
    def new(self) -> dict[str, Any]:
        """The new row version, numbers exact (int / Decimal)."""
        if self._new is None:
            self._new = _decode_exact(self.new_text)
        return self._new

    @property
    def old(self) -> dict[str, Any]:
        """The old row version, numbers exact (int / Decimal)."""
        if self._old is None:
            self._old = _decode_exact(self.old_text)
        return self._old

    def row_frame(
        self,
        variant: int,
        select: tuple[str, ...] | None,
        pk: tuple[str, ...],
        ids: tuple[int, ...] = (0,),
    ) -> bytes:
        """The `postgres_changes` frame of this change in one payload variant, naming
        the subscriptions (`ids`) it satisfies; one bytes object per distinct frame."""
        key: _FrameKey
        if variant == MOVED_OUT:
            key = (variant, None, pk, ids)  # only the key goes out: select is moot
        else:
            key = (variant, select, (), ids)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._encode_row(variant, select, pk, ids)
            self._frames[key] = frame
        return frame

    def _encode_row(
        self,
        variant: int,
        select: tuple[str, ...] | None,
        pk: tuple[str, ...],
        ids: tuple[int, ...],
    ) -> bytes:
        kind = self.kind
        if variant == MOVED_IN:
            event_type, new, old = "INSERT", self._part(self.new_text, False, select), b"{}"
        elif variant == MOVED_OUT:
            keep = {k: self.old[k] for k in pk if k in self.old}
            event_type, new, old = "DELETE", b"{}", _encode_exact(keep)
        else:
            event_type = EVENT_TYPES[kind]
            new = b"{}" if kind == DELETE else self._part(self.new_text, False, select)
            old = b"{}" if kind == INSERT else self._part(self.old_text, True, select)
        data = b"".join(
            (
                b'{"ids":',
                _ids_json(ids),
                b',"schema":',
                orjson.dumps(self.schema),
                b',"table":',
                orjson.dumps(self.table),
                b',"commit_timestamp":"',
                self.commit_timestamp.encode(),
                b'","eventType":"',
                event_type.encode(),
                b'","new":',
                new,
                b',"old":',
                old,
                b',"errors":null}',
            )
        )
        return sse_frame("postgres_changes", data, self.position)

    def _part(self, text: str | None, is_old: bool, select: tuple[str, ...] | None) -> bytes:
        """A row version as JSON: Postgres' own text, or (with `select`) re-encoded exactly.

        The row is decoded only for a projection: the common case passes the
        bytes Postgres wrote straight through.
        """
        if not text:
            return b"{}"
        if select is None:
            return text.encode()
        row = self.old if is_old else self.new
        return _encode_exact({k: row[k] for k in select if k in row})

    def broadcast_frame(self) -> bytes:
        """The `broadcast` frame of a broadcast message (one variant for all)."""
        frame = self._frames.get(_SINGLE)
        if frame is None:
            data = b"".join(
                (
                    b'{"topic":',
                    orjson.dumps(self.topic),
                    b',"event":',
                    orjson.dumps(self.event),
                    b',"payload":',
                    (self.new_text or "{}").encode(),
                    b"}",
                )
            )
            frame = sse_frame("broadcast", data, self.position)
            self._frames[_SINGLE] = frame
        return frame

    def truncate_frame(self) -> bytes:
        """The `system` RESYNC_REQUIRED frame a TRUNCATE turns into."""
        frame = self._frames.get(_SINGLE)
        if frame is None:
            frame = system_frame(
                {
                    "status": "RESYNC_REQUIRED",
                    "reason": "truncate",
                    "schema": self.schema,
                    "table": self.table,
                    "position": self.position,
                }
            )
            self._frames[_SINGLE] = frame
        return frame
