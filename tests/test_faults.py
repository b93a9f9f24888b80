"""Faults from outside: the listener's connection dies, the relay restarts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RelayServer, start_relay


@pytest.fixture
def own_relay(dsn: str) -> Iterator[RelayServer]:
    """A relay of this test alone, with a unique application_name to aim at."""
    srv = start_relay(dsn, application_name=f"relay-{uuid.uuid4().hex[:8]}")
    try:
        yield srv
    finally:
        srv.stop()


def _wait(cond: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def test_listener_terminated_reconnects_and_delivers_everything(
    own_relay: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    name = own_relay.relay.settings.application_name
    listener = own_relay.relay.listener
    with own_relay.open({"sub": t}) as c:
        db.execute(f"insert into {t} values (1, 'o')")
        assert [e.data["new"]["id"] for e in c.take(1)] == [1]
        reconnects = listener.reconnects
        killed = db.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where split_part(application_name, ' ', 1) = %s",
            (name,),
        ).fetchone()[0]
        assert killed == 1
        # written while the listener is away: no doorbell reaches it
        db.execute(f"insert into {t} select g, 'o' from generate_series(2, 50) g")
        _wait(lambda: listener.reconnects > reconnects, what="listener noticed the loss")
        got = c.take(49, timeout=20)
        db.execute(f"insert into {t} values (51, 'o')")
        got += c.take(1)
    assert [e.data["new"]["id"] for e in got] == list(range(2, 52))
    _wait(lambda: listener.ready, what="ready again")
    r = httpx.get(f"{own_relay.url}/readyz", timeout=5)
    assert r.status_code == 200


def test_readyz_reports_not_ready_while_disconnected(dsn: str) -> None:
    srv = start_relay(dsn, application_name=f"relay-{uuid.uuid4().hex[:8]}")
    try:
        listener = srv.relay.listener
        _wait(lambda: listener.ready, what="ready")
        listener._dsn = "postgresql://nobody@127.0.0.1:1/none"  # every reconnect now fails
        srv.relay.listener._conn.terminate()  # type: ignore[union-attr]
        _wait(lambda: not listener.connected, what="disconnected")
        r = httpx.get(f"{srv.url}/readyz", timeout=5)
        assert r.status_code == 503
        assert r.json() == {"status": "not_ready", "ready": False}
    finally:
        srv.stop()


def test_relay_restart_resumes_exactly(dsn: str, db: Any, make_table: Any) -> None:
    """Stop one relay, write, start another: a client resuming from its last id loses nothing."""
    t = make_table("id int primary key, org_id text")
    first = start_relay(dsn)
    try:
        with first.open({"sub": t}) as c:
            db.execute(f"insert into {t} values (1, 'o')")
            (ev,) = c.take(1)
    finally:
        first.stop()
    db.execute(f"insert into {t} select g, 'o' from generate_series(2, 20) g")
    second = start_relay(dsn)
    try:
        with second.open({"sub": t}, headers={"Last-Event-ID": str(ev.id)}) as c:
            got = c.take(19)
            db.execute(f"insert into {t} values (21, 'o')")
            got += c.take(1)
    finally:
        second.stop()
    assert [e.data["new"]["id"] for e in got] == list(range(2, 22))


def test_idle_streams_get_keepalive_comments(dsn: str, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(dsn, keepalive_seconds=0.3)
    try:
        with srv.open({"sub": t}) as c:
            _wait(lambda: c.comments >= 3, timeout=10, what="keep-alive comments")
            assert not c.closed.is_set()
    finally:
        srv.stop()
