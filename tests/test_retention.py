"""Retention: the log is pruned in small steps; resuming below it asks for a resync."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg

from tests.conftest import RelayServer, start_relay


def test_prune_by_count_in_small_steps(dsn: str, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    with psycopg.connect(dsn, autocommit=True) as db:
        for i in range(10):
            db.execute(f"insert into {t} values ({i}, 'o')")  # 10 batches
        head = db.execute("select relay.current_position()").fetchone()[0]
        # keep only the newest 3 positions, at most 4 batches per call
        removed = []
        while True:
            n = db.execute("select relay.prune('100 years', 3, 4)").fetchone()[0]
            if n == 0:
                break
            removed.append(n)
        assert all(n <= 4 for n in removed)
        pruned = db.execute("select pruned_through from relay.meta").fetchone()[0]
        kept = db.execute(
            "select min(b.base + c.ord - 1) from relay.changes c join relay.batches b "
            "on b.id = c.batch where c.table_name = %s",
            (t,),
        ).fetchone()[0]
        assert pruned < kept  # whole blocks went, up to the first change kept
        left = db.execute(
            "select count(*) from relay.changes c join relay.batches b on b.id = c.batch "
            "where c.table_name = %s",
            (t,),
        ).fetchone()[0]
        assert left == 3
        assert db.execute("select relay.current_position()").fetchone()[0] == head


def test_resume_below_retention_resyncs_then_goes_live(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} values (1, 'o')")
    old = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (2, 'o')")
    db.execute("select relay.prune('0 seconds', null, 100000)")
    oldest = db.execute("select pruned_through from relay.meta").fetchone()[0] + 1
    relay_server.caught_up(db)
    with relay_server.open({"sub": t}, headers={"Last-Event-ID": str(old - 1)}) as c:
        resync = c.next()
        assert resync.event == "system" and resync.data["status"] == "RESYNC_REQUIRED"
        assert resync.data["reason"] == "retention" and resync.data["oldest"] == oldest
        db.execute(f"insert into {t} values (3, 'o')")
        (ev,) = c.take(1)
    assert ev.data["new"]["id"] == 3
    r = httpx.get(
        f"{relay_server.url}/v1/changes",
        params={"sub": t, "after": old - 1, "access_token": relay_server.service_token()},
        timeout=10,
    )
    body = r.json()
    assert body["resync_required"] is True and body["oldest"] == oldest


def test_relay_prunes_on_its_own(dsn: str, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(dsn, retention_seconds=0.001, prune_interval_seconds=3600)
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"insert into {t} select g, 'o' from generate_series(1, 50) g")
            head = db.execute("select relay.current_position()").fetchone()[0]
            fut = asyncio.run_coroutine_threadsafe(srv.relay.prune_once(), srv.loop)
            assert fut.result(30) >= 1
            # every block up to the head is gone: the pruned mark is the head itself
            assert db.execute("select pruned_through from relay.meta").fetchone()[0] == head
    finally:
        srv.stop()


def test_pruned_before_read_makes_live_streams_resync(
    dsn: str, make_table: Any, relay_server: RelayServer
) -> None:
    """Retention shorter than the relay's lag: live streams are told, never silently skipped."""
    t = make_table("id int primary key, org_id text")
    with (
        psycopg.connect(dsn, autocommit=True) as db,
        psycopg.connect(dsn) as dba,
        relay_server.open({"sub": t}) as c,
    ):
        relay_server.caught_up(db)
        # hold the relay back: its log read waits on this lock
        dba.execute("lock table relay.meta in access exclusive mode")
        db.execute(f"insert into {t} values (1, 'o')")
        # prune everything, including the change the relay has not read yet
        dba.execute("select relay.prune('100 years', 0, 100000)")
        dba.commit()
        ev = c.next(10)
        assert ev.event == "system" and ev.data["status"] == "RESYNC_REQUIRED"
        assert ev.data["reason"] == "retention"
        db.execute(f"insert into {t} values (2, 'o')")
        (live,) = c.take(1)
        assert live.data["new"]["id"] == 2
