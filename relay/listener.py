"""The one LISTEN connection per relay process: doorbell in, log batches out.

Invariants:
- Changes are handed to the hub strictly in position order, each exactly
  once: the listener keeps the last position it read and always reads the
  log after it, so a doorbell that was missed (connection lost, relay busy)
  only delays a change, never loses it.
- It reads only up to a settled head (`logdb.settle`): a position is never
  handed on while a lower one may still commit, so `hub.position` is always
  a settled head that replays and resumes may read up to.
- While the connection is down it reconnects with exponential backoff and
  jitter and, once back, catches up from the log before waiting again;
  `ready` is False meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from relay import logdb
from relay.hub import Hub
from relay.logreader import LISTENER, LogReader, Pruned

log = logging.getLogger("relay.listener")

CHANNEL = "relay"
CATALOG_CHANNEL = "relay_catalog"


class Listener:
    """Reads the log after `position` whenever the doorbell rings (or every poll)."""

    def __init__(
        self,
        dsn: str,
        hub: Hub,
        *,
        batch: int = 2000,
        poll_seconds: float = 1.0,
        ready_max_lag: float = 5.0,
        on_catalog_change: Callable[[], Coroutine[Any, Any, None]] | None = None,
        application_name: str = "relay",
        reads: Counter[str] | None = None,
    ) -> None:
        self._dsn = dsn
        self._hub = hub
        self._batch = batch
        self._poll = poll_seconds
        self._ready_max_lag = ready_max_lag
        self._on_catalog_change = on_catalog_change
        self._application_name = application_name
        self._bell = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self.connected = False
        self.position: int | None = None
        self.caught_up_at = 0.0
        self.reconnects = 0
        self.changes_read = 0
        self._reported_at = 0.0
        self.reads: Counter[str] = reads if reads is not None else Counter()  # log reads by kind

    @property
    def ready(self) -> bool:
        """Connected, and the log was read up to its head within the allowed lag."""
        return (
            self.connected
            and self.position is not None
            and time.monotonic() - self.caught_up_at <= self._ready_max_lag + self._poll
        )

    def _ring(self, *_: object) -> None:
        self._bell.set()

    def _catalog(self, *_: object) -> None:
        if self._on_catalog_change is not None:
            asyncio.get_running_loop().create_task(self._on_catalog_change())

    async def start_position(self) -> int:
        """Connect once and fix the starting position at the log's head."""
        conn = await asyncpg.connect(self._dsn)
        try:
            self.position = await logdb.current_position(conn)
        finally:
            await conn.close()
        self._hub.position = self.position
        return self.position

    async def run(self) -> None:
        """Forever: connect, catch up, wait for the bell; reconnect on failure."""
        delay = 0.1
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listener connection lost: %s", type(exc).__name__)
            except Exception:
                log.exception("listener failed")
            if self.connected:
                delay = 0.1  # it had worked: start the backoff over
            self.connected = False
            self.reconnects += 1
            await self._close()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _session(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            server_settings={"application_name": self._application_name},
            timeout=10,
            command_timeout=30,
        )
        self._conn = conn
        conn.add_termination_listener(self._ring)
        await conn.add_listener(CHANNEL, self._ring)
        await conn.add_listener(CATALOG_CHANNEL, self._catalog)
        if self.position is None:
            self.position = await logdb.current_position(conn)
            self._hub.position = max(self._hub.position, self.position)
        self.connected = True
        if self._on_catalog_change is not None:
            await self._on_catalog_change()
        log.info("listener connected at position %d", self.position)
        while True:
            self._bell.clear()
            await self._catch_up(conn)
            if conn.is_closed():
                raise ConnectionError("listener connection closed")
            try:
                await asyncio.wait_for(self._bell.wait(), self._poll)
            except TimeoutError:
                pass

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        assert self.position is not None
        head = await logdb.settle(conn, self.position)
        reader = LogReader(conn, batch=self._batch, kind=LISTENER, reads=self.reads)
        while True:
            try:
                async for page in reader.pages(self.position, head):
                    if page.scanned_to > self.position:
                        self.position = page.scanned_to
                        self.changes_read += len(page.changes)
                        self._hub.publish(page.changes, self.position)
            except Pruned as exc:
                # Pruning removed changes this relay had not read yet (retention
                # shorter than the lag): live streams cannot have them. Tell every
                # stream to resync; from here on, read on after the pruned range.
                log.warning("changes were pruned before they were read; streams resync")
                self._hub.resync_all(exc.oldest + 1)
                self.position = max(self.position, exc.oldest)
                self._hub.publish([], self.position)
                continue
            self.caught_up_at = time.monotonic()
            if self.caught_up_at - self._reported_at > 1.0:
                await self._report(conn)
            return

    async def _report(self, conn: asyncpg.Connection) -> None:
        """Show the position read in pg_stat_activity (`relay status` computes lag from it),
        and record it as settled, so `relay.current_position()` walks only from there."""
        self._reported_at = time.monotonic()
        assert self.position is not None
        await logdb.mark_settled(conn, self.position)
        await conn.execute(
            "select set_config('application_name', $1, false)",
            f"{self._application_name} pos={self.position}"[:63],
        )

    async def stop(self) -> None:
        await self._close()
