"""The one way to read the log: pages of changes in position order, or `Pruned`.

Invariants:
- `LogReader.pages(after, upto)` yields pages covering (after, upto] in
  position order, each change once; the last page's `scanned_to` is `upto`.
  Callers only ever pass a settled `upto` (docs/architecture.md, "Positions").
- Each page is one SQL statement that also reads how far retention pruned the
  log (`logdb.read_changes`): if anything after the page's start is gone, the
  read raises `Pruned(oldest)` instead of returning a page with a silent hole.
  There is no window between the check and the read.
- No connection is held while the caller handles a page: with a pool, each
  page takes a connection and gives it back before it is yielded, so a caller
  may stop iterating at any page.
- Every read is counted under the reader's kind (`relay_log_reads` metric).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncGenerator, Sequence

import asyncpg

from relay import logdb
from relay.logdb import MAX_POSITION, Page

# reader kinds (the metric's label)
LISTENER = "listener"
STREAM = "stream"
LONGPOLL = "longpoll"
FLOORS = "floors"


class Pruned(Exception):
    """Changes after the requested start were pruned by retention.

    `oldest` is the highest pruned position: positions <= it are gone.
    """

    def __init__(self, oldest: int) -> None:
        super().__init__(oldest)
        self.oldest = oldest


class LogReader:
    """Reads the log in pages of at most `batch` positions, from a pool or one connection."""

    def __init__(
        self,
        source: asyncpg.Pool | logdb.Conn,
        *,
        batch: int,
        kind: str,
        reads: Counter[str] | None = None,
    ) -> None:
        self._source = source
        self.batch = batch
        self.kind = kind
        self.reads: Counter[str] = reads if reads is not None else Counter()

    async def read(
        self,
        after: int,
        upto: int = MAX_POSITION,
        *,
        tables: Sequence[tuple[str, str]] | None = None,
        topics: Sequence[str] | None = None,
    ) -> Page:
        """One page after `after`; `Pruned` if anything after `after` is gone."""
        self.reads[self.kind] += 1
        if isinstance(self._source, asyncpg.Pool):
            async with self._source.acquire() as conn:
                page = await logdb.read_changes(
                    conn, after, upto=upto, limit=self.batch, tables=tables, topics=topics
                )
        else:
            page = await logdb.read_changes(
                self._source, after, upto=upto, limit=self.batch, tables=tables, topics=topics
            )
        if page.pruned_through > after:
            raise Pruned(page.pruned_through)
        return page

    async def pages(
        self,
        after: int,
        upto: int = MAX_POSITION,
        *,
        tables: Sequence[tuple[str, str]] | None = None,
        topics: Sequence[str] | None = None,
    ) -> AsyncGenerator[Page, None]:
        """Pages covering (after, upto] in order; the last one has `scanned_to == upto`
        (with the default `upto`, the last one read); none when `after >= upto`.
        Raises `Pruned` at the page whose range retention removed (pages before
        it were complete)."""
        cursor = after
        if cursor >= upto:
            return
        while True:
            page = await self.read(cursor, upto, tables=tables, topics=topics)
            if not page.more:
                end = upto if upto != MAX_POSITION else page.scanned_to
                page = dataclasses.replace(page, scanned_to=max(end, cursor))
                yield page
                return
            yield page
            cursor = page.scanned_to
