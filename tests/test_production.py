"""As in production: least-privilege roles, hijack attempts, excluded columns, DDL,
cross-origin requests, a restored database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from relay.dsn import with_dbname
from relay.logdb import BLOCK
from relay.migrate import migrate
from tests.conftest import RelayServer, start_relay


def as_role(dsn: str, role: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = role
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


@pytest.fixture
def app_role(db: Any, dsn: str) -> Iterator[str]:
    role = f"app_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    db.execute(
        sql.SQL("grant connect, create on database {} to {}").format(
            sql.Identifier(str(dbname)), sql.Identifier(role)
        )
    )
    db.execute(sql.SQL("grant usage, create on schema public to {}").format(sql.Identifier(role)))
    yield role
    db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
    db.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_app_role_is_captured_but_cannot_touch_the_log(
    db: Any, dsn: str, make_table: Any, app_role: str
) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(
        sql.SQL("grant select, insert, update, delete on {} to {}").format(
            sql.Identifier(t), sql.Identifier(app_role)
        )
    )
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as app:
        # a writer-owned schema shadowing functions the capture code calls
        app.execute("create schema evil")
        app.execute(
            "create function evil.to_jsonb(anyelement) returns jsonb "
            "language sql as $$ select '{\"hijacked\": true}'::jsonb $$"
        )
        app.execute(
            "create function evil.pg_notify(text, text) returns void "
            "language plpgsql as $$ begin raise exception 'hijacked'; end $$"
        )
        app.execute("set search_path = evil, public, pg_catalog")
        app.execute(f"insert into public.{t} values (1, 'o')")
        app.execute(f"update public.{t} set org_id = 'p'")
        app.execute(f"delete from public.{t}")
        for stmt in (
            "select * from relay.changes",
            "select * from relay.batches",
            "delete from relay.changes",
            "insert into relay.batches values (1, 1, 1, now())",
            f"select relay.watch('public.{t}')",
            f"select relay.unwatch('public.{t}')",
            "select relay.prune('0 seconds', null, 10)",
            "select nextval('relay.seal_seq')",
            "select relay._claim(1)",
            "call relay.settle()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(stmt)
        # relay.broadcast needs relay_publisher; reading the head is open to all
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("select relay.broadcast('t', 'e', '{}')")
        assert app.execute("select relay.current_position()").fetchone()[0] > 0
    rows = db.execute(
        "select kind, new::text from relay.changes where table_name = %s order by ord, batch",
        (t,),
    ).fetchall()
    assert sorted(k for k, _ in rows) == ["D", "I", "U"]
    assert all("hijacked" not in (n or "") for _, n in rows)


def test_relay_runs_as_relay_reader(db: Any, dsn: str, make_table: Any) -> None:
    if not db.execute("select 1 from pg_roles where rolname = 'relay_reader'").fetchone():
        pytest.skip("the migrating role could not create relay_reader")
    t = make_table("id int primary key, org_id text")
    role = f"relay_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create role {} login in role relay_reader").format(sql.Identifier(role)))
    try:
        srv = start_relay(as_role(dsn, role))
        try:
            with srv.open({"sub": t}) as c:
                db.execute(f"insert into {t} values (1, 'o')")
                (ev,) = c.take(1)
            assert ev.data["new"]["id"] == 1
            r = httpx.post(
                f"{srv.url}/v1/broadcast",
                json={"topic": "t", "event": "e", "payload": {}},
                headers={"Authorization": f"Bearer {srv.service_token()}"},
                timeout=10,
            )
            assert r.status_code == 202
        finally:
            srv.stop()
    finally:
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_excluded_columns_appear_nowhere(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table(
        "id int primary key, org_id text, email text, password_hash text",
        watch=", exclude => array['password_hash']",
    )
    with relay_server.open({"sub": t}) as c:
        db.execute(f"insert into {t} values (1, 'o', 'a@b', 'pbkdf2$secret')")
        db.execute(f"update {t} set password_hash = 'pbkdf2$other', email = 'c@d'")
        got = c.take(2)
    assert all("password_hash" not in e.raw and "pbkdf2" not in e.raw for e in got)
    logged = db.execute(
        "select coalesce(new::text, '') || coalesce(old::text, '') from relay.changes "
        "where table_name = %s",
        (t,),
    ).fetchall()
    assert logged and all("pbkdf2" not in r[0] and "password_hash" not in r[0] for r in logged)
    for params in ({"sub": f"{t}:*:password_hash=eq.x"}, {"sub": t, "select": "password_hash"}):
        r = httpx.get(relay_server.stream_url(params, relay_server.service_token()), timeout=10)
        assert r.status_code == 400
        assert "password_hash" in r.json()["message"] and "not available" in r.json()["message"]


def test_ddl_keeps_capture_working_and_tells_broken_subscriptions(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    if not db.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]:
        pytest.skip("event triggers need a superuser")
    t = make_table("id int primary key, org_id text, status text, extra text")
    with relay_server.open(
        [("sub", f"{t}:INSERT:status=eq.z"), ("sub", t), ("select", "extra")]
    ) as c:
        db.execute(f"insert into {t} values (1, 'o', 'a', 'x')")
        (first,) = c.take(1)
        db.execute(f"alter table {t} add column added int default 7")
        db.execute(f"insert into {t} values (2, 'o', 'a', 'y', 8)")
        (second,) = c.take(1)
        assert second.data["new"] == {"id": 2, "extra": "y"}
        db.execute(f"alter table {t} drop column extra")  # named by the second sub's select
        db.execute(f"alter table {t} rename column status to state")  # named by the filter
        notices = []
        while len(notices) < 2:
            ev = c.next(10)
            if ev.event == "system":
                notices.append(ev.data)
        db.execute(f"insert into {t} values (3, 'o', 'b')")  # the writer never fails
        (third,) = c.take(1)
    assert {n["status"] for n in notices} == {"SUBSCRIPTION_ERROR"}
    assert {tuple(n["columns"]) for n in notices} == {("extra",), ("status",)}
    assert third.data["new"] == {"id": 3}


def test_drop_table_unwatches_and_migrate_repairs(dsn: str, db: Any, make_table: Any) -> None:
    if not db.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]:
        pytest.skip("event triggers need a superuser")
    t = make_table("id int primary key, org_id text")
    u = make_table("id int primary key, org_id text")
    db.execute(f"drop table {t}")
    assert db.execute(
        "select count(*) from relay.watched where table_name = %s", (t,)
    ).fetchone() == (0,)
    db.execute(f"drop trigger relay_capture_insert on {u}")  # someone broke capture by hand
    migrate(dsn)
    db.execute(f"insert into {u} values (1, 'o')")
    assert db.execute(
        "select count(*) from relay.changes where table_name = %s", (u,)
    ).fetchone() == (1,)


def test_cors_only_for_listed_origins(dsn: str, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    srv = start_relay(dsn, cors_origins=["http://app.example:3000"])
    try:
        pre = {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        }
        with httpx.Client(timeout=10) as client:
            ok = client.options(
                f"{srv.url}/v1/stream", headers={"Origin": "http://app.example:3000", **pre}
            )
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "http://app.example:3000"
            assert ok.headers["access-control-allow-credentials"] == "true"
            bad = client.options(
                f"{srv.url}/v1/stream", headers={"Origin": "http://evil.example", **pre}
            )
            assert "access-control-allow-origin" not in bad.headers
            for path in ("/v1/changes", "/v1/broadcast"):
                r = client.options(
                    f"{srv.url}{path}",
                    headers={
                        "Origin": "http://app.example:3000",
                        "Access-Control-Request-Method": "POST"
                        if path.endswith("broadcast")
                        else "GET",
                    },
                )
                assert r.headers.get("access-control-allow-origin") == "http://app.example:3000"
            with client.stream(
                "GET",
                srv.stream_url({"sub": t}, None),
                headers={"Origin": "http://evil.example"},
                cookies={"relay_token": srv.service_token()},
            ) as r:
                assert r.status_code == 200  # served, but a browser may not read it
                assert "access-control-allow-origin" not in r.headers
            with client.stream(
                "GET",
                srv.stream_url({"sub": t}, None),
                headers={"Origin": "http://app.example:3000"},
                cookies={"relay_token": srv.service_token()},
            ) as r:
                assert r.headers["access-control-allow-origin"] == "http://app.example:3000"
    finally:
        srv.stop()


@pytest.fixture
def fresh_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"relay_restore_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_dbname(pg_admin_dsn, name)
    migrate(url)
    yield url
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(sql.SQL("drop database {}").format(sql.Identifier(name)))


def test_restored_database_resyncs_then_goes_live(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as db:
        db.execute("create table r (id int primary key, org_id text)")
        db.execute("select relay.watch('r')")
        for i in range(1, 11):
            db.execute("insert into r values (%s, 'o')", (i,))
        seen = db.execute("select relay.current_position()").fetchone()[0]
        # "restore from a backup" taken after the fifth insert
        (fifth,) = db.execute(
            "select base from relay.batches order by base offset 4 limit 1"
        ).fetchone()
        db.execute(
            "delete from relay.changes where batch in "
            "(select id from relay.batches where base > %s)",
            (fifth,),
        )
        db.execute("delete from relay.batches where base > %s", (fifth,))
        db.execute("select setval('relay.seal_seq', %s)", (fifth // BLOCK,))
        db.execute("update relay.settled set block = least(block, %s)", (fifth // BLOCK,))
        srv = start_relay(fresh_dsn)
        try:
            with srv.open({"sub": "r"}, headers={"Last-Event-ID": str(seen)}) as c:
                ev = c.next()
                assert ev.event == "system" and ev.data["status"] == "RESYNC_REQUIRED"
                assert ev.data["reason"] == "ahead"
                db.execute("insert into r values (100, 'o')")
                (live,) = c.take(1)
            assert live.data["new"]["id"] == 100 and live.id == fifth + BLOCK
        finally:
            srv.stop()


def test_keep_old_off_logs_only_the_key(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, body text", watch=", keep_old => false")
    a = relay_server.token(sub="u", org_id="A")
    b = relay_server.token(sub="v", org_id="B")
    with relay_server.open({"sub": t}, a) as ca, relay_server.open({"sub": t}, b) as cb:
        db.execute(f"insert into {t} values (1, 'A', repeat('x', 500))")
        db.execute(f"update {t} set body = 'short'")
        db.execute(f"update {t} set org_id = 'B'")  # moves: visibility still uses the old owner
        db.execute(f"delete from {t}")
        got_a = ca.take(3)
        got_b = cb.take(2)
    assert [e.data["eventType"] for e in got_a] == ["INSERT", "UPDATE", "DELETE"]
    assert got_a[1].data["old"] == {"id": 1} and got_a[1].data["new"]["body"] == "short"
    assert got_a[2].data["old"] == {"id": 1}
    assert [e.data["eventType"] for e in got_b] == ["INSERT", "DELETE"]
    assert got_b[1].data["old"] == {"id": 1}
    sizes = db.execute(
        "select kind, pg_column_size(old) from relay.changes where table_name = %s", (t,)
    ).fetchall()
    assert all(size is None or size < 40 for _, size in sizes)
