"""Capture that no database role can subvert (issue 14): each attack mounted as
the role that would mount it, with only the privileges that role would have.

Against 001 each of these succeeded: a cast on a column's type ran as the
schema owner, forged relay.* settings stalled or broke delivery and other
writers, an advisory lock stopped every commit, any role broadcast anything,
and a renamed excluded column leaked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.logdb import BLOCK
from tests.conftest import RelayServer
from tests.test_production import as_role


@pytest.fixture
def attacker(db: Any, dsn: str) -> Iterator[str]:
    """A login role with CONNECT and a schema of its own, nothing in schema relay."""
    role = f"mallory_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    db.execute(sql.SQL("create role {} login").format(ident))
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    db.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(dbname), ident))
    db.execute(sql.SQL("create schema {} authorization {}").format(ident, ident))
    yield role
    db.execute(sql.SQL("drop schema {} cascade").format(ident))
    db.execute(sql.SQL("drop owned by {}").format(ident))
    db.execute(sql.SQL("drop role {}").format(ident))


def _changes(db: Any, table: str) -> list[tuple[str, Any, Any]]:
    return db.execute(
        "select c.kind::text, c.new, c.old from relay.changes c join relay.batches b "
        "on b.id = c.batch where c.table_name = %s order by b.base, c.ord",
        (table,),
    ).fetchall()


def test_cast_on_a_column_type_never_runs_as_the_relay_owner(
    db: Any, dsn: str, attacker: str, make_table: Callable[..., str]
) -> None:
    """Attack 1: the owner of an enum used by a watched table gives it a cast to json."""
    with psycopg.connect(as_role(dsn, attacker), autocommit=True) as m:
        m.execute(f"create type {attacker}.status as enum ('queued', 'running')")
        m.execute(f"create table {attacker}.loot (who text, n bigint)")
        m.execute(f"grant insert on {attacker}.loot to public")
        m.execute(f"grant usage on schema {attacker} to public")
        m.execute(f"grant usage on type {attacker}.status to public")
        # the cast reads the log (as whoever runs it) and records who it ran as
        m.execute(
            f"create function {attacker}.steal({attacker}.status) returns json "
            "language plpgsql as $$ begin "
            f"insert into {attacker}.loot select current_user, "
            "(select count(*) from relay.changes); "
            "return to_json($1::text); end $$"
        )
        m.execute(f"create cast ({attacker}.status as json) with function {attacker}.steal")
        m.execute(f"create cast ({attacker}.status as jsonb) with inout")
    t = make_table(
        f"id int primary key, org_id text, status {attacker}.status, tags {attacker}.status[]"
    )
    db.execute(f"insert into {t} values (1, 'o', 'running', '{{queued,running}}')")
    db.execute(f"update {t} set status = 'queued'")
    db.execute(f"delete from {t}")
    assert db.execute(f"select count(*) from {attacker}.loot").fetchone() == (0,)
    kinds = _changes(db, t)
    assert [k for k, _, _ in kinds] == ["I", "U", "D"]
    # values still encoded as to_jsonb encodes an enum: strings
    assert kinds[0][1] == {
        "id": 1,
        "org_id": "o",
        "status": "running",
        "tags": ["queued", "running"],
    }
    assert kinds[1][2]["status"] == "running" and kinds[1][1]["status"] == "queued"


def test_forged_settings_affect_nothing(
    db: Any, dsn: str, attacker: str, make_table: Callable[..., str], relay_server: RelayServer
) -> None:
    """Attacks 2 and 3: relay.batch / relay.ord set by a role that may write a table."""
    t = make_table("id int primary key, org_id text")
    db.execute(
        sql.SQL("grant insert on {} to {}").format(sql.Identifier(t), sql.Identifier(attacker))
    )
    with (
        relay_server.open({"sub": t}) as c,
        psycopg.connect(as_role(dsn, attacker)) as m,
        psycopg.connect(dsn) as victim,
    ):
        nxt = db.execute("select max(id) from relay.batches").fetchone()[0] or 0
        m.execute("select set_config('relay.ord', '2000000000', true)")
        m.execute("select set_config('relay.batch', %s, true)", (str(nxt + 1),))
        m.execute(f"insert into public.{t} values (1, 'o')")
        victim.execute(f"insert into public.{t} values (2, 'o')")  # must not collide
        victim.commit()
        m.commit()
        events = c.take(2)
        assert sorted(e.data["new"]["id"] for e in events) == [1, 2]
        # each batch claims exactly as many positions as it has changes
        rows = db.execute(
            "select b.last_pos - b.base + 1, (select count(*) from relay.changes c "
            "where c.batch = b.id) from relay.batches b where b.id > 0 and b.base >= %s",
            (min(e.id for e in events) // BLOCK * BLOCK,),
        ).fetchall()
        assert rows and all(claimed == held for claimed, held in rows)
        db.execute(f"insert into {t} values (3, 'o')")  # delivery goes on
        (ev,) = c.take(1)
        assert ev.data["new"]["id"] == 3


def test_advisory_locks_held_by_anyone_block_nothing(
    db: Any, dsn: str, attacker: str, make_table: Callable[..., str], relay_server: RelayServer
) -> None:
    """Attack 4: 001 drew positions under pg_advisory_xact_lock(7265636, 1)."""
    t = make_table("id int primary key, org_id text")
    with (
        psycopg.connect(as_role(dsn, attacker), autocommit=True) as m,
        relay_server.open({"sub": t}) as c,
        psycopg.connect(dsn, autocommit=True) as victim,
    ):
        for key in range(0, 8):
            m.execute("select pg_advisory_lock(7265636, %s)", (key,))
        victim.execute("set lock_timeout = '3s'")
        victim.execute("set statement_timeout = '5s'")
        victim.execute(f"insert into {t} values (1, 'o')")  # raises if it waited
        victim.execute("select relay.broadcast('x', 'e', '{}')")
        assert victim.execute("select relay.prune('100 years', null, 10)").fetchone() is not None
        (ev,) = c.take(1)
        assert ev.data["new"]["id"] == 1


def test_broadcast_needs_relay_publisher_and_is_capped(
    db: Any, dsn: str, attacker: str, relay_server: RelayServer
) -> None:
    """Attack 5: relay.broadcast was executable by PUBLIC, with no size cap."""
    topic = f"t-{uuid.uuid4().hex[:6]}"
    with relay_server.open({"topic": topic}) as c:
        with psycopg.connect(as_role(dsn, attacker), autocommit=True) as m:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                m.execute("select relay.broadcast(%s, 'forged', '{}')", (topic,))
            db.execute(sql.SQL("grant relay_publisher to {}").format(sql.Identifier(attacker)))
            try:
                with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
                    m.execute(
                        "select relay.broadcast(%s, 'big', jsonb_build_object('x', repeat('y', %s)))",
                        (topic, 300_000),
                    )
                assert "cap" in str(info.value)
                m.execute("select relay.broadcast(%s, 'ok', '{\"n\": 1}')", (topic,))
            finally:
                db.execute(
                    sql.SQL("revoke relay_publisher from {}").format(sql.Identifier(attacker))
                )
        (ev,) = c.take(1)
        assert ev.data["event"] == "ok"


def test_excluded_column_stays_out_after_a_rename_and_from_the_past(
    db: Any, make_table: Callable[..., str]
) -> None:
    """Attack 6: exclusions followed the name, and past values stayed in the log."""
    t = make_table("id int primary key, org_id text, secret text")
    db.execute(f"insert into {t} values (1, 'o', 'before-exclusion')")
    db.execute(f"select relay.watch('{t}', exclude => '{{secret}}')")
    assert all("secret" not in (n or {}) for _, n, _ in _changes(db, t))
    db.execute(f"alter table {t} rename column secret to api_secret")
    db.execute(f"insert into {t} values (2, 'o', 'after-rename')")
    db.execute(f"update {t} set api_secret = 'x2' where id = 2")
    for _, new, old in _changes(db, t):
        for row in (new or {}, old or {}):
            assert "secret" not in row and "api_secret" not in row
            assert "before-exclusion" not in str(row) and "after-rename" not in str(row)


def test_an_open_transaction_never_delays_others(
    db: Any, dsn: str, make_table: Callable[..., str], relay_server: RelayServer
) -> None:
    """A psql session sitting in BEGIN after a write holds no position."""
    t = make_table("id int primary key, org_id text")
    with psycopg.connect(dsn) as idle, relay_server.open({"sub": t}) as c:
        idle.execute(f"insert into {t} values (1, 'o')")  # and then it sits there
        db.execute(f"insert into {t} values (2, 'o')")
        (ev,) = c.take(1)
        assert ev.data["new"]["id"] == 2
        idle.commit()
        (ev,) = c.take(1)
        assert ev.data["new"]["id"] == 1


def test_a_commit_in_flight_holds_back_only_what_follows_it(
    db: Any, dsn: str, make_table: Callable[..., str], relay_server: RelayServer
) -> None:
    """T1 has drawn its block and is still committing when T2 commits a higher one:
    the relay must not publish T2 before T1 (a resume after T2 would skip T1)."""
    t = make_table("id int primary key, org_id text")
    gate = make_table("id int primary key", watch=None)
    key = int(uuid.uuid4().int % 1_000_000)
    # a deferred trigger that fires after the seal and waits on a lock the test holds
    db.execute(
        "create or replace function relay_test_gate_wait() returns trigger language plpgsql as "
        f"$$ begin perform pg_advisory_xact_lock_shared(4242, {key}); return null; end $$"
    )
    db.execute(
        f"create constraint trigger gate_wait after insert on {gate} deferrable initially "
        "deferred for each row execute function relay_test_gate_wait()"
    )
    try:
        with (
            psycopg.connect(dsn, autocommit=True) as holder,
            psycopg.connect(dsn) as t1,
            relay_server.open({"sub": t}) as c,
        ):
            holder.execute("select pg_advisory_lock(4242, %s)", (key,))
            t1.execute(f"insert into {t} values (1, 'o')")
            t1.execute(f"insert into {gate} values (1)")  # queued after the seal
            done = threading.Event()

            def commit_t1() -> None:
                t1.commit()
                done.set()

            th = threading.Thread(target=commit_t1, daemon=True)
            th.start()
            # T1 is inside COMMIT once its batch row exists (uncommitted: wait for the lock)
            with psycopg.connect(dsn, autocommit=True) as probe:
                for _ in range(500):
                    waiting = probe.execute(
                        "select count(*) from pg_locks where locktype = 'advisory' "
                        "and objid = %s and not granted",
                        (key,),
                    ).fetchone()[0]
                    if waiting:
                        break
                    probe.execute("select pg_sleep(0.01)")
                assert waiting, "T1 never reached its commit"
            db.execute(f"insert into {t} values (2, 'o')")  # T2: a higher block, visible
            with pytest.raises(TimeoutError):
                c.next(1.0)  # nothing may be published past T1's block
            holder.execute("select pg_advisory_unlock(4242, %s)", (key,))
            th.join(10)
            assert done.is_set()
            first, second = c.take(2)
            assert (first.data["new"]["id"], second.data["new"]["id"]) == (1, 2)
            assert first.id is not None and second.id is not None and first.id < second.id
    finally:
        db.execute("drop function if exists relay_test_gate_wait() cascade")


def test_abandoned_block_is_claimed_and_delivery_goes_on(
    db: Any, dsn: str, make_table: Callable[..., str], relay_server: RelayServer
) -> None:
    """A transaction that drew a block and then failed at COMMIT leaves a hole:
    the relay claims it (never waits for it) and delivers what follows."""
    t = make_table("id int primary key, org_id text")
    gate = make_table("id int primary key", watch=None)
    db.execute(
        "create or replace function relay_test_gate_fail() returns trigger language plpgsql as "
        "$$ begin raise exception 'refused at commit'; end $$"
    )
    db.execute(
        f"create constraint trigger gate_fail after insert on {gate} deferrable initially "
        "deferred for each row execute function relay_test_gate_fail()"
    )
    try:
        with relay_server.open({"sub": t}) as c, psycopg.connect(dsn) as t1:
            t1.execute(f"insert into {t} values (1, 'o')")
            t1.execute(f"insert into {gate} values (1)")
            with pytest.raises(psycopg.errors.RaiseException):
                t1.commit()  # the seal drew a block, then the commit failed
            db.execute(f"insert into {t} values (2, 'o')")
            (ev,) = c.take(1)
            assert ev.data["new"]["id"] == 2
        claimed = db.execute("select count(*) from relay.batches where id < 0").fetchone()[0]
        assert claimed >= 1
    finally:
        db.execute("drop function if exists relay_test_gate_fail() cascade")
