"""Which subscriptions of a stream a change satisfies, and the frame it gets.

Invariant: a `Matcher` is pure — its answer depends only on the principal,
the parsed subscriptions and the change, never on a connection, an outbox
or time — so the hub, the SSE replay and the long-poll all decide the same
way, and the hub may decide once for every receiver with an equal `group`.
A row change goes out once per stream, naming in `ids` every subscription it
satisfies (numbered in request order), with the union of their `select`s.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

from relay.changes import (
    BROADCAST,
    DELETE,
    FULL,
    INSERT,
    MOVED_IN,
    MOVED_OUT,
    TRUNCATE,
    UPDATE,
    Change,
)
from relay.principal import Principal
from relay.subscriptions import RowSubscription, SubscriptionSet, union_of

_UNKNOWN: Any = object()  # not yet in a cache


class Matcher:
    """The routing of one stream's subscriptions (built once, when it opens)."""

    __slots__ = ("principal", "subs", "_by_table", "_unions", "group")

    def __init__(self, principal: Principal, subs: SubscriptionSet) -> None:
        self.principal = principal
        self.subs = subs
        by_table: dict[tuple[str, str], list[tuple[int, RowSubscription]]] = {}
        for i, r in enumerate(subs.rows):
            by_table.setdefault((r.table.schema, r.table.name), []).append((i, r))
        self._by_table = {k: tuple(v) for k, v in by_table.items()}
        self._unions: dict[tuple[int, ...], Any] = {}
        # Everything a row change's routing reads, but the token's `sub`: two
        # subscribers with equal groups get the same frame (or none) for any row
        # change whose user columns do not name either of them. Tables by identity:
        # subscriptions parsed against different catalog versions never share.
        self.group: tuple[Any, ...] = (
            principal.is_service,
            None if principal.is_service else principal.orgs,
            tuple((r.text, r.select, id(r.table)) for r in subs.rows),
        )

    def route(self, change: Change, topics: AbstractSet[str] | None = None) -> bytes | None:
        """The frame a stream with these subscriptions gets for `change`, or None.

        `topics` are the broadcast topics the stream may read now (default: all
        it subscribed to; a stream's may shrink while it is open, topicguard).

        A row change goes out once, naming in `ids` every subscription of the
        stream it satisfies (their numbers in request order), with the union of
        their `select`s (all columns if any of them selects all)."""
        kind = change.kind
        p = self.principal
        if kind == BROADCAST:
            if change.topic not in (self.subs.topics if topics is None else topics):
                return None
            if self.subs.topic_floors and change.position <= self.subs.topic_floors.get(
                change.topic or "", 0
            ):
                return None  # sent while the topic's row was someone else's (replay)
            if (change.user_id is not None or change.org_id is not None) and not p.owns(
                change.user_id, change.org_id
            ):
                return None
            return change.broadcast_frame()
        subs = self._by_table.get((change.schema or "", change.table or ""))
        if subs is None:
            return None
        if kind == TRUNCATE:
            return change.truncate_frame()
        if kind == INSERT:
            if not p.owns(change.user_id, change.org_id):
                return None
            variant, event_type, use_new = FULL, "INSERT", True
        elif kind == UPDATE:
            own_new = p.owns(change.user_id, change.org_id)
            own_old = p.owns(change.old_user_id, change.old_org_id)
            if own_new and own_old:
                variant, event_type, use_new = FULL, "UPDATE", True
            elif own_new:
                variant, event_type, use_new = MOVED_IN, "INSERT", True
            elif own_old:
                variant, event_type, use_new = MOVED_OUT, "DELETE", False
            else:
                return None
        elif kind == DELETE:
            if not p.owns(change.user_id, change.org_id):
                return None
            variant, event_type, use_new = FULL, "DELETE", False
        else:
            return None
        row: dict[str, Any] | None = None
        first: RowSubscription | None = None
        ids: list[int] | None = None
        for i, s in subs:
            if s.event != "*" and s.event != event_type:
                continue
            if s.filter is not None:
                if row is None:
                    row = change.new if use_new else change.old
                if not s.filter.matches(row):
                    continue
            if first is None:
                first, ids = s, [i]
            else:
                assert ids is not None
                ids.append(i)
        if first is None or ids is None:
            return None
        if len(ids) == 1:
            return change.row_frame(variant, first.select, first.table.pk, (ids[0],))
        key = tuple(ids)
        select = self._unions.get(key, _UNKNOWN)
        if select is _UNKNOWN:
            select = self._unions[key] = union_of(self.subs.rows[i].select for i in key)
        return change.row_frame(variant, select, first.table.pk, key)
