"""Migrations and the log's SQL contract, straight against Postgres."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from relay.logdb import BLOCK
from relay.migrate import migrate


def test_migrate_twice_applies_nothing(dsn: str) -> None:
    assert migrate(dsn, demo=True) == []


def test_migrate_concurrently(dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(dsn, demo=True))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == [[]] * 4


def _positions(db: psycopg.Connection[Any], table: str) -> dict[int, int]:
    """Row id -> position of its INSERT, read from the log as the relay reads it."""
    rows = db.execute(
        "select (c.new->>'id')::int, b.base + c.ord - 1 from relay.changes c "
        "join relay.batches b on b.id = c.batch where c.table_name = %s and c.kind = 'I'",
        (table,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_positions_follow_commit_order(dsn: str, make_table: Any) -> None:
    """T1 writes first but commits after T2: T1's change gets the higher position."""
    t = make_table("id int primary key, org_id text")
    with (
        psycopg.connect(dsn) as t1,
        psycopg.connect(dsn) as t2,
        psycopg.connect(dsn, autocommit=True) as reader,
    ):
        t1.execute(f"insert into {t} values (1, 'o')")
        t2.execute(f"insert into {t} values (2, 'o')")
        t2.commit()
        p = _positions(reader, t)
        assert set(p) == {2}
        after_t2 = p[2]
        t1.commit()
        p = _positions(reader, t)
        assert p[1] > after_t2  # a reader resuming after T2's position still sees T1
        # the head is the end of T1's block: everything up to it is settled
        head = reader.execute("select relay.current_position()").fetchone()[0]
        assert p[1] <= head < p[1] + BLOCK


def test_bigserial_would_skip(dsn: str, make_table: Any) -> None:
    """The case the design exists for: ids drawn at insert time commit out of order."""
    t = make_table("id bigserial primary key, org_id text")
    with (
        psycopg.connect(dsn) as t1,
        psycopg.connect(dsn) as t2,
        psycopg.connect(dsn, autocommit=True) as reader,
    ):
        t1.execute(f"insert into {t} (org_id) values ('o')")  # id 1
        t2.execute(f"insert into {t} (org_id) values ('o')")  # id 2
        t2.commit()
        t1.commit()
        p = _positions(reader, t)
        assert p[2] < p[1]  # positions follow commit order, not id order


def test_transaction_keeps_order_and_savepoints(
    db: psycopg.Connection[Any], make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    with db.transaction():
        db.execute(f"insert into {t} values (1, 'o')")
        try:
            with db.transaction():
                db.execute(f"insert into {t} values (2, 'o')")
                db.execute(f"insert into {t} values (1, 'o')")  # duplicate: rolls back to savepoint
        except psycopg.errors.UniqueViolation:
            pass
        db.execute(f"insert into {t} values (3, 'o')")
        db.execute("select relay.broadcast('topic-x', 'ev', '{\"n\": 1}')")
    p = _positions(db, t)
    assert sorted(p) == [1, 3]
    assert p[1] + 1 == p[3]
    bpos = db.execute(
        "select b.base + c.ord - 1 from relay.changes c join relay.batches b on b.id = c.batch "
        "where c.topic = 'topic-x'"
    ).fetchone()
    assert bpos == (p[3] + 1,)


def test_rolled_back_changes_leave_nothing(db: psycopg.Connection[Any], make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    with pytest.raises(psycopg.errors.DivisionByZero):
        with db.transaction():
            db.execute(f"insert into {t} values (1, 'o')")
            db.execute("select 1/0")
    assert _positions(db, t) == {}


def test_watch_errors(db: psycopg.Connection[Any], make_table: Any) -> None:
    t = make_table("id int, org_id text", watch=None)
    with pytest.raises(psycopg.errors.InvalidColumnReference, match="no primary key"):
        db.execute(f"select relay.watch('{t}')")
    t2 = make_table("id int primary key, org_id text", watch=None)
    with pytest.raises(psycopg.errors.UndefinedColumn, match="owner"):
        db.execute(f"select relay.watch('{t2}', user_column => 'owner')")
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.execute("select relay.watch('no_such_table')")


def test_watch_defaults_and_rewatch(db: psycopg.Connection[Any], make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, user_id text, secret text")
    row = db.execute(
        "select user_column, org_column, pk_columns from relay.watched where table_name = %s", (t,)
    ).fetchone()
    assert row == ("user_id", "org_id", ["id"])
    db.execute(f"select relay.watch('{t}', exclude => array['secret'])")
    db.execute(f"insert into {t} values (1, 'o', 'u', 'hunter2')")
    logged = db.execute(
        "select new::text from relay.changes where table_name = %s", (t,)
    ).fetchone()
    assert logged is not None and "hunter2" not in logged[0] and "secret" not in logged[0]
    db.execute(f"select relay.unwatch('{t}')")
    db.execute(f"insert into {t} values (2, 'o', 'u', 'x')")
    assert db.execute(
        "select count(*) from relay.changes where table_name = %s", (t,)
    ).fetchone() == (1,)


def test_large_row_never_breaks_the_writer(db: psycopg.Connection[Any], make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, doc jsonb")
    big = '{"blob": "' + "x" * 1_000_000 + '"}'
    db.execute(f"insert into {t} values (1, 'o', %s::jsonb)", (big,))
    n = db.execute(
        "select length(new->'doc'->>'blob') from relay.changes where table_name = %s", (t,)
    ).fetchone()
    assert n == (1_000_000,)
