"""End to end over HTTP: a change written with plain SQL reaches an SSE client."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.conftest import RelayServer


def rows_of(events: list[Any]) -> list[tuple[str, Any]]:
    return [(e.data["eventType"], (e.data["new"] or e.data["old"])["id"]) for e in events]


def test_insert_update_delete_shape(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, status text")
    with relay_server.open({"sub": t}) as c:
        assert c.hello.data["subscriptions"][0]["table"] == t
        db.execute(f"insert into {t} values (1, 'o1', 'new')")
        db.execute(f"update {t} set status = 'running' where id = 1")
        db.execute(f"delete from {t} where id = 1")
        ins, upd, dele = c.take(3)
    assert [e.event for e in (ins, upd, dele)] == ["postgres_changes"] * 3
    assert ins.id is not None and upd.id is not None and dele.id is not None
    assert ins.id < upd.id < dele.id
    assert ins.data["schema"] == "public" and ins.data["table"] == t
    assert ins.data["eventType"] == "INSERT"
    assert ins.data["new"] == {"id": 1, "org_id": "o1", "status": "new"}
    assert ins.data["old"] == {}
    assert ins.data["errors"] is None
    assert ins.data["commit_timestamp"].endswith("Z")
    assert upd.data["eventType"] == "UPDATE"
    assert upd.data["new"]["status"] == "running"
    assert upd.data["old"] == {"id": 1, "org_id": "o1", "status": "new"}
    assert dele.data["eventType"] == "DELETE"
    assert dele.data["new"] == {}
    assert dele.data["old"] == {"id": 1, "org_id": "o1", "status": "running"}


def test_subscribed_event_first_with_retry(relay_server: RelayServer, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    with relay_server.open({"sub": f"{t}:UPDATE"}) as c:
        hello = c.hello
        assert hello.id is None  # system events never move the resume position
        assert hello.retry is not None
        assert isinstance(hello.data["position"], int)
        assert c.response_headers["content-type"].startswith("text/event-stream")
        assert c.response_headers["x-accel-buffering"] == "no"
        assert "no-cache" in c.response_headers["cache-control"]


def test_event_types_and_several_subs_on_one_connection(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    a = make_table("id int primary key, org_id text, status text")
    b = make_table("id int primary key, org_id text")
    params = [("sub", f"{a}:UPDATE"), ("sub", f"public.{b}:INSERT")]
    with relay_server.open(params) as c:
        db.execute(f"insert into {a} values (1, 'o', 'x')")  # not wanted: INSERT on a
        db.execute(f"insert into {b} values (10, 'o')")
        db.execute(f"update {a} set status = 'y'")
        db.execute(f"delete from {b}")  # not wanted
        db.execute(f"insert into {b} values (11, 'o')")
        got = c.take(3)
    assert [(e.data["table"], e.data["eventType"]) for e in got] == [
        (b, "INSERT"),
        (a, "UPDATE"),
        (b, "INSERT"),
    ]


def test_bulk_update_arrives_whole_and_in_order(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, n int")
    db.execute(f"insert into {t} select g, 'o', 0 from generate_series(1, 10000) g")
    with relay_server.open({"sub": f"{t}:UPDATE"}) as c:
        db.execute(f"update {t} set n = n + 1")
        got = c.take(10_000, timeout=60)
    ids = [e.id for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 10_000
    assert ids[-1] - ids[0] == 9_999  # one transaction: consecutive positions
    assert sorted(e.data["new"]["id"] for e in got) == list(range(1, 10_001))
    assert all(e.data["new"]["n"] == 1 and e.data["old"]["n"] == 0 for e in got)


def test_copy_and_one_megabyte_row(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, body text")
    big = "é" * 1_000_000
    with relay_server.open({"sub": t}) as c:
        with db.cursor().copy(f"copy {t} (id, org_id, body) from stdin") as cp:
            cp.write_row((1, "o", "small"))
            cp.write_row((2, "o", big))
        got = c.take(2, timeout=30)
    assert got[0].data["new"]["body"] == "small"
    assert got[1].data["new"]["body"] == big


def test_values_encoded_as_to_jsonb(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table(
        "id int primary key, org_id text, n numeric, f float8, b bool, ts timestamptz, "
        "u uuid, j jsonb, by bytea, arr int[], nul text"
    )
    with relay_server.open({"sub": t}) as c:
        db.execute(
            f"insert into {t} values (1, 'o', 12345678901234567890.123456789, 1.5, true, "
            "'2026-11-22 23:10:05.123+00', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', "
            """'{"a": [1, "x"]}', '\\xdeadbeef', '{1,2}', null)"""
        )
        (ev,) = c.take(1)
    expected = db.execute(f"select to_jsonb(t)::text from {t} t").fetchone()[0]
    assert ev.data["new"] == json.loads(expected)
    # numbers exactly as Postgres wrote them
    raw = json.loads(json.dumps(ev.data["new"]), parse_float=Decimal)
    assert json.loads(expected, parse_float=Decimal)["n"] == Decimal(
        "12345678901234567890.123456789"
    )
    assert ev.data["new"]["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert ev.data["new"]["by"] == "\\xdeadbeef"
    assert raw["nul"] is None


def test_numeric_passes_through_exactly(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    """The wire carries Postgres' own digits (no float round trip), with select= too."""
    t = make_table("id int primary key, org_id text, n numeric")
    with relay_server.open({"sub": t}) as c:
        db.execute(f"insert into {t} values (1, 'o', 0.10000000000000000000000001)")
        (ev,) = c.take(1)
    assert '"n": 0.10000000000000000000000001' in ev.raw
    with relay_server.open([("sub", t), ("select", "n")]) as c:
        db.execute(f"update {t} set n = 12345678901234567890.5")
        (ev,) = c.take(1)
    assert '"new":{"id":1,"n":12345678901234567890.5}' in ev.raw


def test_select_projection(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, status text, big text")
    with relay_server.open([("sub", t), ("select", "status")]) as c:
        db.execute(f"insert into {t} values (1, 'o', 'a', 'xxxxxxxx')")
        db.execute(f"update {t} set status = 'b'")
        ins, upd = c.take(2)
    assert ins.data["new"] == {"id": 1, "status": "a"}
    assert upd.data["new"] == {"id": 1, "status": "b"}
    assert upd.data["old"] == {"id": 1, "status": "a"}


def test_resume_after_commit_reordering(
    relay_server: RelayServer, dsn: str, make_table: Any
) -> None:
    """T1 draws its row first but commits after T2: a client resuming after T2's id gets T1."""
    t = make_table("id bigserial primary key, org_id text")
    with relay_server.open({"sub": t}) as c:
        with psycopg.connect(dsn) as t1, psycopg.connect(dsn) as t2:
            t1.execute(f"insert into {t} (org_id) values ('o')")
            t2.execute(f"insert into {t} (org_id) values ('o')")
            t2.commit()
            (second,) = c.take(1)
            t1.commit()
            (first,) = c.take(1)
    assert second.data["new"]["id"] == 2 and first.data["new"]["id"] == 1
    assert first.id is not None and second.id is not None and first.id > second.id
    with relay_server.open({"sub": t}, headers={"Last-Event-ID": str(second.id)}) as c:
        (again,) = c.take(1)
        assert again.id == first.id
        assert c.hello.data["position"] == second.id


def _writer(dsn: str, table: str, n: int, done: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True) as w:
        for i in range(1, n + 1):
            w.execute(f"insert into {table} values (%s, 'o')", (i,))
    done.set()


def test_replay_live_seam_under_racing_writes(
    relay_server: RelayServer, dsn: str, make_table: Any
) -> None:
    """Reconnect with Last-Event-ID every 25 events while a writer commits: all, once, in order."""
    t = make_table("id int primary key, org_id text")
    total = 600
    done = threading.Event()
    received: list[Any] = []
    c = relay_server.open({"sub": t})
    writer = threading.Thread(target=_writer, args=(dsn, t, total, done))
    writer.start()
    try:
        while len(received) < total:
            batch = c.take(min(25, total - len(received)), timeout=30)
            received.extend(batch)
            c.close()
            c = relay_server.open({"sub": t}, headers={"Last-Event-ID": str(received[-1].id)})
    finally:
        c.close()
        writer.join(30)
    ids = [e.data["new"]["id"] for e in received]
    assert ids == list(range(1, total + 1))
    positions = [e.id for e in received]
    assert positions == sorted(positions) and len(set(positions)) == total


def test_last_event_id_query_parameter(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    pos = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o'), (2, 'o')")
    with relay_server.open({"sub": t, "last_event_id": str(pos)}) as c:
        got = c.take(2)
    assert [e.data["new"]["id"] for e in got] == [1, 2]


def test_header_wins_over_query(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} values (1, 'o')")
    pos = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (2, 'o')")
    with relay_server.open(
        {"sub": t, "last_event_id": "0"}, headers={"Last-Event-ID": str(pos)}
    ) as c:
        (ev,) = c.take(1)
    assert ev.data["new"]["id"] == 2


@pytest.mark.parametrize("garbage", ["abc", "-5", "1" * 30, "²", "9223372036854775808", " 1"])
def test_malformed_last_event_id_streams_from_now(
    relay_server: RelayServer, db: Any, make_table: Any, garbage: str
) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} values (1, 'o')")  # before connect: must not be replayed
    relay_server.caught_up(db)
    with relay_server.open({"sub": t, "last_event_id": garbage}) as c:
        assert c.hello.data["ignored_last_event_id"] == "malformed"
        db.execute(f"insert into {t} values (2, 'o')")
        (ev,) = c.take(1)
    assert ev.data["new"]["id"] == 2


def test_position_ahead_of_head_resyncs(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    with relay_server.open({"sub": t}, headers={"Last-Event-ID": str(2**62)}) as c:
        resync = c.next()
        assert resync.event == "system" and resync.data["status"] == "RESYNC_REQUIRED"
        db.execute(f"insert into {t} values (1, 'o')")
        (ev,) = c.take(1)
    assert ev.data["new"]["id"] == 1


def test_broadcast_in_commit_order(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    with relay_server.open([("sub", t), ("topic", "room:1")]) as c:
        with db.transaction():
            db.execute(f"insert into {t} values (1, 'o')")
            db.execute("""select relay.broadcast('room:1', 'progress-update', '{"n": 1}')""")
            db.execute(f"insert into {t} values (2, 'o')")
        db.execute("""select relay.broadcast('room:2', 'x', '{}')""")  # other topic
        got = c.take(3)
    assert [e.event for e in got] == ["postgres_changes", "broadcast", "postgres_changes"]
    assert got[1].data == {"topic": "room:1", "event": "progress-update", "payload": {"n": 1}}
    assert got[0].id is not None and got[1].id == got[0].id + 1


def test_truncate_tells_subscribers_to_resync(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} values (1, 'o')")
    with relay_server.open({"sub": f"{t}:INSERT:id=eq.5"}) as c:
        db.execute(f"truncate {t}")
        ev = c.next()
    assert ev.event == "system"
    assert ev.data["status"] == "RESYNC_REQUIRED" and ev.data["reason"] == "truncate"
    assert ev.data["table"] == t
