"""Topic access that follows the ownership it rests on.

A registered topic family (`stream-progress` -> `public.streams`) lets a token
read `stream-progress:{id}` while it owns row `{id}`. That ownership can change
after the stream opened, and a replay can reach back to broadcasts sent while
someone else owned the row.

Invariants:
- Live: when the log shows row `{id}` of a family's table leaving an owner
  (an UPDATE that changes its owner columns, a DELETE, a TRUNCATE), every open
  stream on `family:{id}` whose principal does not own the new row version
  stops receiving the topic before any later change is delivered (the batch is
  split there), and `relay.can_subscribe` is asked again: allowed, the topic
  comes back; denied, the stream gets `system` `TOPIC_REVOKED` and keeps the
  topic removed. Streams that still own the row are re-checked the same way
  (an application's own `can_subscribe` may say otherwise).
- Replay: `replay_floors` gives, per family topic, the last position in the
  replayed range at which the row came to this principal from someone else
  (or was created, or truncated); broadcasts on that topic at or below it are
  not replayed.
No database here: families and the re-check are handed in by the relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from relay.changes import DELETE, INSERT, TRUNCATE, UPDATE, Change, system_frame
from relay.hub import Hub, Subscriber
from relay.principal import Principal

log = logging.getLogger("relay.topicguard")

TOPIC_REVOKED = "TOPIC_REVOKED"

Recheck = Callable[[Principal, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Family:
    """`family:{id}` topics follow row `{id}` (primary key `pk`) of `schema.table`."""

    family: str
    schema: str
    table: str
    pk: str


def _text(value: Any) -> str | None:
    """A primary key value as Postgres' `::text` writes it (what topics carry)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | Decimal):
        return str(value)
    return None


def _row_ids(change: Change, pk: str) -> set[str]:
    ids: set[str] = set()
    if change.kind in (INSERT, UPDATE):
        ids.add(_text(change.new.get(pk)) or "")
    if change.kind in (UPDATE, DELETE):
        ids.add(_text(change.old.get(pk)) or "")
    ids.discard("")
    return ids


def family_index(families: Iterable[Family]) -> dict[tuple[str, str], tuple[Family, ...]]:
    out: dict[tuple[str, str], list[Family]] = {}
    for f in families:
        out.setdefault((f.schema, f.table), []).append(f)
    return {k: tuple(v) for k, v in out.items()}


def replay_floors(
    changes: Iterable[Change],
    principal: Principal,
    families: Mapping[tuple[str, str], Sequence[Family]],
    topics: Iterable[str],
) -> dict[str, int]:
    """Per topic: broadcasts at or below this position were not this principal's to read."""
    wanted = set(topics)
    floors: dict[str, int] = {}
    for ch in changes:
        for fam in families.get((ch.schema or "", ch.table or ""), ()):
            prefix = fam.family + ":"
            if ch.kind == TRUNCATE:
                hit = {t for t in wanted if t.startswith(prefix)}
            else:
                came = (
                    ch.kind == INSERT
                    or (ch.kind == UPDATE and not principal.owns(ch.old_user_id, ch.old_org_id))
                    or (ch.kind == DELETE and not principal.owns(ch.user_id, ch.org_id))
                )
                hit = {prefix + i for i in _row_ids(ch, fam.pk)} & wanted if came else set()
            for t in hit:
                floors[t] = max(floors.get(t, 0), ch.position)
    return floors


class GuardedHub(Hub):
    """The hub, plus the live re-check of family topics when a row changes owner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.families: dict[tuple[str, str], tuple[Family, ...]] = {}
        self.recheck: Recheck | None = None
        self.revoked = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, changes: Sequence[Change], position: int | None = None) -> None:
        if not self.families or not changes:
            super().publish(changes, position)
            return
        start = 0
        for i, ch in enumerate(changes):
            moved, now = self._moved(ch)
            if moved:
                # everything up to the change goes out under the old ownership,
                # nothing after it reaches a stream that may have lost the row
                super().publish(changes[start : i + 1], ch.position)
                self._suspend(ch, moved, now)
                start = i + 1
        if start == 0:
            super().publish(changes, position)
        else:
            super().publish(changes[start:], position)

    def _moved(self, ch: Change) -> tuple[set[str], set[str]]:
        """(topics whose row `ch` may take from someone, those naming its new version).

        Both are empty for most changes: only UPDATE/DELETE/TRUNCATE of a family's
        table with a subscribed topic count, and an UPDATE keeping owner and key
        takes nothing from anyone.
        """
        fams = self.families.get((ch.schema or "", ch.table or ""))
        if not fams or ch.kind not in (UPDATE, DELETE, TRUNCATE):
            return set(), set()
        moved: set[str] = set()
        now: set[str] = set()
        for f in fams:
            prefix = f.family + ":"
            if ch.kind == TRUNCATE:
                moved |= {t for t in self._topics if t.startswith(prefix)}
                continue
            ids = _row_ids(ch, f.pk)
            new_id = _text(ch.new.get(f.pk)) if ch.kind == UPDATE else None
            same_owner = (ch.user_id, ch.org_id) == (ch.old_user_id, ch.old_org_id)
            if ch.kind == UPDATE and same_owner and ids == {new_id}:
                continue
            moved |= {prefix + i for i in ids}
            if new_id:
                now.add(prefix + new_id)
        return {t for t in moved if t in self._topics}, now

    def _suspend(self, ch: Change, topics: set[str], now: set[str]) -> None:
        for t in topics:
            for sub in list(self._topics.get(t, ())):
                p = sub.principal
                if p.is_service:
                    continue
                keeps = t in now and p.owns(ch.user_id, ch.org_id)
                if not keeps:
                    self.drop_topic(sub, t)
                if self.recheck is not None:
                    task = asyncio.get_running_loop().create_task(self._recheck(sub, t, not keeps))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif not keeps:
                    self._revoke(sub, t)

    async def _recheck(self, sub: Subscriber, topic: str, suspended: bool) -> None:
        assert self.recheck is not None
        try:
            allowed = await self.recheck(sub.principal, topic)
        except Exception as exc:  # cannot ask: keep what is safe
            log.warning("topic re-check failed: %s", type(exc).__name__)
            allowed = False
        if sub.closed or sub not in self.subscribers:
            return
        if allowed:
            if suspended:
                self.add_topic(sub, topic)
            return
        self.drop_topic(sub, topic)
        self._revoke(sub, topic)

    def _revoke(self, sub: Subscriber, topic: str) -> None:
        self.revoked += 1
        frame = system_frame({"status": TOPIC_REVOKED, "topic": topic, "reason": "ownership"})
        if sub.push(frame):
            sub.wake()

    def drop_topic(self, sub: Subscriber, topic: str) -> None:
        """Stop delivering `topic` to `sub` (index and the subscriber's own set)."""
        sub.topics = sub.topics - {topic}
        s = self._topics.get(topic)
        if s is not None:
            s.discard(sub)
            if not s:
                del self._topics[topic]

    def add_topic(self, sub: Subscriber, topic: str) -> None:
        sub.topics = sub.topics | {topic}
        self._topics.setdefault(topic, set()).add(sub)
