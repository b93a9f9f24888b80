"""The fan-out hub: matches each change to the streams that may see it.

Invariants:
- No database here: changes are handed in (`publish`) in position order by
  whoever reads the log, and `position` is the last position handed in.
- A subscriber only ever receives a change whose row version its principal
  owns (`Principal.owns`), narrowed by its subscriptions' event and filter;
  every change is encoded once per payload variant and the same bytes are
  queued for every receiver.
- Publishing never awaits and never blocks on a socket: each subscriber has a
  bounded outbox of ready frames; one that overflows is closed with TOO_SLOW
  (or, while it is still replaying history, marked so its stream re-reads the
  dropped range from the log). The byte bound counts everything the subscriber
  holds: its outbox, the write in progress and what its connection has not
  sent yet (`Subscriber.held`), so a reader that stops reading is cut at a
  bound that does not grow with what it missed.
- A waiting long-poll is registered like a stream (`register_poll`, routed by
  the same index and `route`), but keeps only the first frames up to its
  bounds and marks the rest as dropped, for its request to read instead.
- Candidates are found by index (table -> owner -> subscribers), so the cost
  per change grows with the number of receivers, not of subscribers; a row
  change is routed once per group of receivers with identical routing inputs
  (`Matcher.group`), and each receiver gets what routing it alone would give.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from relay.changes import (
    BROADCAST,
    KEEPALIVE,
    TRUNCATE,
    Change,
    system_frame,
)
from relay.matching import Matcher
from relay.principal import Principal
from relay.subscriptions import SubscriptionSet

# Why a stream was closed by the server (also the metric label).
TOO_SLOW = "TOO_SLOW"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
SHUTDOWN = "SHUTDOWN"
CLIENT = "client"

_UNKNOWN: Any = object()  # not yet in a cache


class Subscriber:
    """One open stream: its principal, subscriptions and outbox of ready frames."""

    __slots__ = (
        "principal",
        "subs",
        "matcher",
        "topics",
        "outbox",
        "outbox_bytes",
        "max_events",
        "max_bytes",
        "replaying",
        "overflowed",
        "skip_through",
        "closed",
        "close_reason",
        "last_activity",
        "_waiter",
        "_expiry",
        "on_server_close",
        "direct",
        "poll",
        "inflight",
        "unsent",
        "peak_held",
    )

    def __init__(
        self,
        principal: Principal,
        subs: SubscriptionSet,
        *,
        max_events: int,
        max_bytes: int,
        replaying: bool = False,
        skip_through: int = 0,
    ) -> None:
        self.principal = principal
        self.subs = subs
        self.matcher = Matcher(principal, subs)
        self.topics = frozenset(subs.topics)
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.replaying = replaying
        self.overflowed = False
        self.skip_through = skip_through
        self.closed = False
        self.close_reason: str | None = None
        self.last_activity = time.monotonic()
        self._waiter: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        # called once when the server closes the stream (not the client)
        self.on_server_close: Callable[[str], None] | None = None
        # writes frames to the connection now if it can take them without waiting
        # (set by the stream once it is live); None: always go through the writer task
        self.direct: Callable[[list[bytes]], bool] | None = None
        # a waiting long-poll (Hub.register_poll): keeps the first frames up to its
        # bounds and marks `overflowed` for the rest (it answers with a prefix)
        self.poll = False
        # bytes the writer took from the outbox and has not finished writing (`wait`)
        self.inflight = 0
        # bytes the connection holds, not yet sent (set by the stream: the transport's
        # write buffer size); they count against max_bytes like the outbox
        self.unsent: Callable[[], int] | None = None
        self.peak_held = 0  # the most `held()` was when a frame was queued

    def route(self, change: Change) -> bytes | None:
        """The frame this subscriber gets for `change` now, or None (see `Matcher`)."""
        return self.matcher.route(change, self.topics)

    def push(self, frame: bytes) -> bool:
        """Queue a frame; True if the subscriber needs a wake-up for it."""
        if self.closed:
            return False
        if self.overflowed:
            return False
        if (
            self.poll
            and self.outbox
            and (
                len(self.outbox) >= self.max_events
                or self.outbox_bytes + len(frame) > self.max_bytes
            )
        ):
            self.overflowed = True  # the frames kept are an exact prefix; the rest is read
            return False
        self.outbox.append(frame)
        self.outbox_bytes += len(frame)
        held = self.held()
        if len(self.outbox) > self.max_events or (held > self.max_bytes and len(self.outbox) > 1):
            if self.replaying:
                self.overflowed = True
                self.outbox = []
                self.outbox_bytes = 0
                return False
            self.close(TOO_SLOW, system_frame({"status": TOO_SLOW}))
            return False
        if held > self.peak_held:
            self.peak_held = held
        return len(self.outbox) == 1

    def held(self) -> int:
        """Bytes this subscriber holds: queued, being written, and unsent in its connection."""
        unsent = self.unsent
        extra = 0
        if unsent is not None:
            try:
                extra = unsent()
            except Exception:  # a transport that went away holds nothing
                extra = 0
        return self.outbox_bytes + self.inflight + extra

    def take_overflow(self) -> bool:
        """While replaying: if live frames were dropped, reset and say so."""
        if not self.overflowed:
            return False
        self.overflowed = False
        self.outbox = []
        self.outbox_bytes = 0
        return True

    def close(self, reason: str, frame: bytes | None = None) -> None:
        """Close from the server side: the stream sends `frame` (if any) and ends."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.outbox = [frame] if frame is not None else []
        self.outbox_bytes = 0
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.wake()
        if reason != CLIENT and self.on_server_close is not None:
            self.on_server_close(reason)

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def flush(self) -> None:
        """Hand the outbox to the connection: written right away when the stream's
        writer is idle and the connection has room (no task switch per delivery),
        else the writer is woken. Never both: frames stay in order."""
        w = self._waiter
        if (
            self.direct is not None
            and w is not None
            and not w.done()
            and not self.closed
            and self.outbox
        ):
            try:
                written = self.direct(self.outbox)
            except Exception:  # publish must never fail: use the writer task from now on
                self.direct = None
                written = False
            if written:
                self.outbox = []
                self.outbox_bytes = 0
                self.last_activity = time.monotonic()
                return
        self.wake()

    def take(self) -> tuple[list[bytes], bool]:
        """Long-poll: (the frames queued, whether frames after them were dropped); resets both."""
        frames, dropped = self.outbox, self.overflowed
        self.outbox = []
        self.outbox_bytes = 0
        self.overflowed = False
        return frames, dropped

    async def ready(self, seconds: float) -> bool:
        """Long-poll: wait up to `seconds` for frames or a close, without taking them."""
        if not self.outbox and not self.closed and seconds > 0:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(seconds, self.wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        return bool(self.outbox) or self.overflowed or self.closed

    async def wait(self, max_bytes: int | None = None) -> tuple[list[bytes], bool]:
        """Wait for frames; returns (frames, closed). Frames are removed from the outbox:
        all of them, or with `max_bytes` a prefix of about that size (at least one frame),
        the rest staying queued. What is taken counts as held (`inflight`) until the
        next call, i.e. until the caller has written it."""
        self.inflight = 0
        while not self.outbox and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames = self.outbox
        if max_bytes is not None and self.outbox_bytes > max_bytes and len(frames) > 1:
            n = size = 0
            for f in frames:
                n += 1
                size += len(f)
                if size >= max_bytes:
                    break
            frames, self.outbox = frames[:n], frames[n:]
            self.outbox_bytes -= size
        else:
            size = self.outbox_bytes
            self.outbox = []
            self.outbox_bytes = 0
        self.inflight = size
        self.last_activity = time.monotonic()
        return frames, self.closed


class _TableIndex:
    """Subscribers of one table by how they may own its rows."""

    __slots__ = ("service", "users", "orgs", "all")

    def __init__(self) -> None:
        self.service: set[Subscriber] = set()
        self.users: dict[str, set[Subscriber]] = {}
        self.orgs: dict[str, set[Subscriber]] = {}
        self.all: set[Subscriber] = set()

    def candidates(self, change: Change) -> Iterable[Subscriber]:
        if change.kind == TRUNCATE:
            return self.all
        found: list[set[Subscriber]] = []
        if self.service:
            found.append(self.service)
        for uid in (change.user_id, change.old_user_id):
            if uid is not None:
                s = self.users.get(uid)
                if s:
                    found.append(s)
        for oid in (change.org_id, change.old_org_id):
            if oid is not None:
                s = self.orgs.get(oid)
                if s:
                    found.append(s)
        if not found:
            return ()
        if len(found) == 1:
            return found[0]
        return set().union(*found)

    def empty(self) -> bool:
        return not self.all


def _discard(index: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    s = index.get(key)
    if s is not None:
        s.discard(sub)
        if not s:
            del index[key]


class Hub:
    """Open subscribers, indexed by table/owner and topic."""

    def __init__(self, *, position: int = 0, keepalive_seconds: float = 15.0) -> None:
        self.position = position
        self.keepalive_seconds = keepalive_seconds
        self._tables: dict[tuple[str, str], _TableIndex] = {}
        self._topics: dict[str, set[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        # waiting long-polls: routed like streams, but no keep-alives, expiry or slot count
        self.polls: set[Subscriber] = set()
        self.delivered = 0
        self._per_user: dict[str, int] = {}
        self.closing = False

    def subscribe(
        self,
        principal: Principal,
        subs: SubscriptionSet,
        *,
        max_events: int = 10_000,
        max_bytes: int = 8 * 1024 * 1024,
        replaying: bool = False,
        skip_through: int = 0,
        expiry_margin: float = 1.0,
    ) -> Subscriber:
        """Register for live delivery from `self.position` on (synchronously)."""
        sub = Subscriber(
            principal,
            subs,
            max_events=max_events,
            max_bytes=max_bytes,
            replaying=replaying,
            skip_through=skip_through,
        )
        self.subscribers.add(sub)
        if principal.sub is not None:
            self._per_user[principal.sub] = self._per_user.get(principal.sub, 0) + 1
        self._index(sub)
        if principal.exp is not None:
            delay = max(0.0, principal.exp - expiry_margin - time.time())
            sub._expiry = asyncio.get_running_loop().call_later(
                delay, sub.close, TOKEN_EXPIRED, system_frame({"status": TOKEN_EXPIRED})
            )
        return sub

    def register_poll(
        self,
        principal: Principal,
        subs: SubscriptionSet,
        *,
        max_events: int,
        max_bytes: int,
        skip_through: int = 0,
    ) -> Subscriber:
        """Register a waiting long-poll (synchronously): from `self.position` on (and
        above `skip_through`), it gets the frames a stream with `subs` would get, up to
        `max_events`/`max_bytes` of them; beyond, `overflowed` says more were dropped.
        Forget it with `unsubscribe`."""
        sub = Subscriber(
            principal, subs, max_events=max_events, max_bytes=max_bytes, skip_through=skip_through
        )
        sub.poll = True
        self.polls.add(sub)
        self._index(sub)
        return sub

    def _index(self, sub: Subscriber) -> None:
        principal = sub.principal
        for key in sub.subs.tables:
            idx = self._tables.get(key)
            if idx is None:
                idx = self._tables[key] = _TableIndex()
            idx.all.add(sub)
            if principal.is_service:
                idx.service.add(sub)
                continue
            if principal.sub is not None:
                idx.users.setdefault(principal.sub, set()).add(sub)
            for org in principal.orgs:
                idx.orgs.setdefault(org, set()).add(sub)
        for topic in sub.subs.topics:
            self._topics.setdefault(topic, set()).add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber or long-poll (idempotent)."""
        if sub in self.polls:
            self.polls.discard(sub)
            self._unindex(sub)
            return
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        if sub.principal.sub is not None:
            left = self._per_user.get(sub.principal.sub, 1) - 1
            if left:
                self._per_user[sub.principal.sub] = left
            else:
                self._per_user.pop(sub.principal.sub, None)
        if sub._expiry is not None:
            sub._expiry.cancel()
            sub._expiry = None
        self._unindex(sub)

    def _unindex(self, sub: Subscriber) -> None:
        p = sub.principal
        for key in sub.subs.tables:
            idx = self._tables.get(key)
            if idx is None:
                continue
            idx.all.discard(sub)
            idx.service.discard(sub)
            if p.sub is not None:
                _discard(idx.users, p.sub, sub)
            for org in p.orgs:
                _discard(idx.orgs, org, sub)
            if idx.empty():
                del self._tables[key]
        for topic in sub.topics:
            s = self._topics.get(topic)
            if s is not None:
                s.discard(sub)
                if not s:
                    del self._topics[topic]

    def publish(self, changes: Sequence[Change], position: int | None = None) -> None:
        """Deliver changes (in position order) to every subscriber that may see them.

        `position` is how far the log has been read (at least the last change's).
        """
        touched: list[Subscriber] = []
        delivered = 0
        for ch in changes:
            cands: Iterable[Subscriber]
            if ch.kind == BROADCAST:
                cands = self._topics.get(ch.topic or "", ())
            else:
                idx = self._tables.get((ch.schema or "", ch.table or ""))
                if idx is None:
                    continue
                cands = idx.candidates(ch)
            pos = ch.position
            if ch.kind == BROADCAST:
                for s in cands:
                    if pos <= s.skip_through:
                        continue
                    frame = s.route(ch)
                    if frame is not None:
                        delivered += 1
                        if s.push(frame):
                            touched.append(s)
                continue
            # Row change: one decision per routing group (see Matcher.group),
            # except for receivers the change's user column names, who may own it
            # where the rest of their group does not.
            decided: dict[tuple[Any, ...], bytes | None] = {}
            users = (ch.user_id, ch.old_user_id)
            for s in cands:
                if pos <= s.skip_through:
                    continue
                uid = s.principal.sub
                if uid is not None and uid in users:
                    frame = s.route(ch)
                else:
                    group = s.matcher.group
                    frame = decided.get(group, _UNKNOWN)
                    if frame is _UNKNOWN:
                        frame = decided[group] = s.route(ch)
                if frame is not None:
                    delivered += 1
                    if s.push(frame):
                        touched.append(s)
        if changes:
            self.position = max(self.position, changes[-1].position)
        if position is not None:
            self.position = max(self.position, position)
        self.delivered += delivered
        for s in touched:
            s.flush()

    def streams_of(self, user: str) -> int:
        """Open streams of one token `sub`."""
        return self._per_user.get(user, 0)

    def held_bytes(self) -> int:
        """Bytes all open streams hold (outboxes, writes in progress, connection buffers)."""
        return sum(s.held() for s in self.subscribers)

    def stream_counts(self) -> dict[tuple[str, str], int]:
        """Open streams per subscribed table."""
        counts = {key: sum(not s.poll for s in idx.all) for key, idx in self._tables.items()}
        return {key: n for key, n in counts.items() if n}

    def resync_all(self, oldest: int) -> None:
        """Tell every stream that changes were lost to pruning: refetch, then live."""
        frame = system_frame({"status": "RESYNC_REQUIRED", "reason": "retention", "oldest": oldest})
        for s in (*self.subscribers, *self.polls):
            if s.push(frame):
                s.wake()

    def send_keepalives(self, now: float | None = None) -> int:
        """Queue a keep-alive comment for every stream idle for 2/3 of the interval."""
        now = time.monotonic() if now is None else now
        idle_since = now - self.keepalive_seconds * 2 / 3
        n = 0
        for s in self.subscribers:
            if not s.closed and not s.replaying and not s.outbox and s.last_activity < idle_since:
                if s.push(KEEPALIVE):
                    s.flush()
                n += 1
        return n

    async def run_keepalives(self) -> None:
        """Forever: one timer for all streams (no task per stream)."""
        while True:
            await asyncio.sleep(self.keepalive_seconds / 3)
            self.send_keepalives()

    def close_all(
        self, reason: str, payload: dict[str, Any] | None = None, retry_ms: int | None = None
    ) -> None:
        """Close every stream with a final `system` event (shutdown), with a `retry:` hint."""
        frame = system_frame(payload or {"status": reason}, retry_ms)
        for s in (*self.subscribers, *self.polls):
            s.close(reason, frame)
        self.closing = True  # long-polls that start now answer without waiting
