"""Upgrading a populated 001 database to 002 in place, while writers commit and
a relay keeps serving: positions and log kept, nothing lost or repeated."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.dsn import with_dbname
from relay.migrate import migrate, migrations
from tests.conftest import start_relay


@pytest.fixture
def db_on_001(pg_admin_dsn: str) -> Iterator[str]:
    """A database as users have it today: 001 applied and recorded, nothing newer."""
    name = f"relay_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_dbname(pg_admin_dsn, name)
    first = migrations()[0]
    assert first.version == "001_relay.sql"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(first.sql.encode())
            conn.execute(
                "create table relay.migrations (version text primary key,"
                " applied_at timestamptz not null default now())"
            )
            conn.execute("insert into relay.migrations (version) values (%s)", (first.version,))
    yield url
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(sql.SQL("drop database {}").format(sql.Identifier(name)))


def test_upgrade_from_001_under_writers_and_a_serving_relay(db_on_001: str) -> None:
    with psycopg.connect(db_on_001, autocommit=True) as db:
        db.execute("create table up (id int primary key, org_id text, secret text, n int)")
        db.execute("select relay.watch('up', exclude => '{secret}')")
        for i in range(1, 21):
            db.execute("insert into up values (%s, 'o', 's', 0)", (i,))
        db.execute("update up set n = 1 where id <= 5")
        db.execute("select relay.broadcast('up-topic', 'e', '{\"k\": 1}')")
        old_head = db.execute("select relay.current_position()").fetchone()[0]
        old_log = db.execute(
            "select b.base + c.ord - 1, c.kind::text, c.new from relay.changes c "
            "join relay.batches b on b.id = c.batch order by 1"
        ).fetchall()
        assert old_head == len(old_log) == 26

    srv = start_relay(db_on_001)
    stop = threading.Event()
    committed: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(db_on_001, autocommit=True) as w:
                i = 1000
                while not stop.is_set() or i < 1010:
                    w.execute("insert into up values (%s, 'o', 's', 0)", (i,))
                    committed.append(i)
                    i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        with srv.open({"sub": "up"}, headers={"Last-Event-ID": "0"}) as c:
            replayed = c.take(25)  # the 25 row changes of 001 (the broadcast is a topic)
            assert [e.id for e in replayed] == [p for p, k, _ in old_log if k != "B"]
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            applied = migrate(db_on_001)
            assert applied[0] == "002_capture.sql" and "001_relay.sql" not in applied
            with psycopg.connect(db_on_001, autocommit=True) as db:
                db.execute("insert into up values (5000, 'o', 's', 0)")
                db.execute("update up set n = 2 where id = 1")
                stop.set()
                writer.join(30)
                assert not errors
                live = c.take(len(committed) + 2)
                ids = [e.id for e in live]
                assert ids == sorted(ids) and len(set(ids)) == len(ids)
                got = [e.data["new"]["id"] for e in live if e.data["eventType"] == "INSERT"]
                assert sorted(got) == sorted(committed + [5000])
                updates = [e for e in live if e.data["eventType"] == "UPDATE"]
                assert [(u.data["new"]["id"], u.data["new"]["n"]) for u in updates] == [(1, 2)]
                assert all("secret" not in e.data["new"] for e in replayed + live)
                # the log of 001 is still there, at the same positions
                kept = db.execute(
                    "select b.base + c.ord - 1, c.kind::text, c.new from relay.changes c "
                    "join relay.batches b on b.id = c.batch where b.base + c.ord - 1 <= %s "
                    "order by 1",
                    (old_head,),
                ).fetchall()
                assert kept == old_log
                head = db.execute("select relay.current_position()").fetchone()[0]
                assert head >= max(ids) > old_head
                # capture is statement-level now, exclusions by attribute number
                trig = db.execute(
                    "select array_agg(tgname::text order by tgname) from pg_trigger "
                    "where tgrelid = 'up'::regclass and not tgisinternal"
                ).fetchone()[0]
                assert trig == [
                    "relay_capture_delete",
                    "relay_capture_insert",
                    "relay_capture_truncate",
                    "relay_capture_update",
                ]
        # a client resuming from a 001 position gets exactly what followed it
        with srv.open({"sub": "up"}, headers={"Last-Event-ID": str(old_head - 3)}) as c2:
            again = c2.take(2 + len(committed) + 2)
            assert [e.id for e in again][:2] == [p for p, k, _ in old_log if k != "B"][-2:]
    finally:
        stop.set()
        srv.stop()


def test_migrate_as_a_non_superuser_database_owner(pg_admin_dsn: str, db: Any) -> None:
    """Managed Postgres: nobody is superuser; the database owner migrates."""
    role = f"owner_{uuid.uuid4().hex[:8]}"
    name = f"relay_owned_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
    url = with_dbname(pg_admin_dsn, name)
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["user"] = role
    params.pop("password", None)
    owner_url = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    try:
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("create schema app")  # PG 15+: public is not writable by all
        assert migrate(owner_url, demo=False)[:2] == ["001_relay.sql", "002_capture.sql"]
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("create type app.st as enum ('a', 'b')")
            conn.execute("create table app.t (id int primary key, org_id text, s app.st)")
            conn.execute("select relay.watch('app.t')")
            conn.execute("insert into app.t values (1, 'o', 'a')")
            conn.execute("call relay.settle()")
            new = conn.execute(
                "select c.new from relay.changes c join relay.batches b on b.id = c.batch "
                "where c.table_name = 't'"
            ).fetchone()
            assert new == ({"id": 1, "org_id": "o", "s": "a"},)
            assert conn.execute("select relay.current_position()").fetchone()[0] > 0
            # no event triggers without a superuser; the rest is the same
            assert conn.execute("select count(*) from pg_event_trigger").fetchone()[0] >= 0
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (name,),
            )
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
