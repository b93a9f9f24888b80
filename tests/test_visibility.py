"""No tenant ever sees another's rows: visibility checked from outside over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import RelayServer

SENTINEL_SQL = "insert into {s} values (default, 'A', 'uA'), (default, 'B', 'uB')"


@pytest.fixture
def tables(make_table: Any) -> dict[str, str]:
    return {
        "org": make_table("id int primary key, org_id text, secret text"),
        "user": make_table("id int primary key, user_id text, secret text"),
        "both": make_table("id int primary key, org_id text, user_id text, secret text"),
        "none": make_table("id int primary key, secret text"),
        # every stream also subscribes here; both tokens own one of the two rows
        "sentinel": make_table("id serial primary key, org_id text, user_id text"),
    }


def until_sentinel(c: Any, sentinel: str, timeout: float = 20.0) -> list[Any]:
    """Events before this stream's sentinel row (all earlier positions have arrived)."""
    out = []
    while True:
        ev = c.next(timeout)
        if ev.event == "postgres_changes" and ev.data["table"] == sentinel:
            return out
        out.append(ev)


def test_orgs_users_and_service_role(
    relay_server: RelayServer, db: Any, tables: dict[str, str]
) -> None:
    s = tables["sentinel"]
    tok_a = relay_server.token(sub="uA", org_id="A")
    tok_b = relay_server.token(sub="uB", org_ids=["B", "C"])
    subs = [("sub", tables[k]) for k in ("org", "user", "both")] + [("sub", s)]
    with (
        relay_server.open(subs, tok_a) as a,
        relay_server.open(subs, tok_b) as b,
        relay_server.open(subs + [("sub", tables["none"])]) as svc,
    ):
        db.execute(
            f"insert into {tables['org']} values (1, 'A', 'a1'), (2, 'B', 'b2'), (3, 'C', 'c3')"
        )
        db.execute(f"insert into {tables['user']} values (1, 'uA', 'a1'), (2, 'uB', 'b2')")
        db.execute(
            f"insert into {tables['both']} values (1, 'A', 'uB', 'ab'), (2, 'X', 'uA', 'xa'), "
            "(3, 'X', 'nobody', 'xx')"
        )
        db.execute(f"insert into {tables['none']} values (1, 'n1')")
        db.execute(SENTINEL_SQL.format(s=s))
        got_a = until_sentinel(a, s)
        got_b = until_sentinel(b, s)
        got_svc = until_sentinel(svc, s)
    seen = lambda evs: sorted(e.data["new"]["secret"] for e in evs)  # noqa: E731
    assert seen(got_a) == ["a1", "a1", "ab", "xa"]
    assert seen(got_b) == ["ab", "b2", "b2", "c3"]
    assert seen(got_svc) == ["a1", "a1", "ab", "b2", "b2", "c3", "n1", "xa", "xx"]


def test_table_without_owner_is_service_only(
    relay_server: RelayServer, tables: dict[str, str]
) -> None:
    tok = relay_server.token(sub="uA", org_id="A")
    r = httpx.get(relay_server.stream_url({"sub": tables["none"]}, tok), timeout=10)
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden_table"


def test_filters_never_widen(relay_server: RelayServer, db: Any, tables: dict[str, str]) -> None:
    t, s = tables["org"], tables["sentinel"]
    tok_a = relay_server.token(sub="uA", org_id="A")
    filters = [
        "org_id=eq.B",
        "org_id=neq.A",
        "org_id=in.(A,B)",
        "org_id=like.%",
        "secret=match.^b",
        "org_id=not.is.null",
        "org_id=isdistinct.A",
        "id=gt.0",
    ]
    streams = [relay_server.open([("sub", f"{t}:*:{f}"), ("sub", s)], tok_a) for f in filters]
    try:
        db.execute(f"insert into {t} values (1, 'A', 'a1'), (2, 'B', 'b2')")
        db.execute(f"update {t} set secret = secret || '!'")
        db.execute(f"delete from {t}")
        db.execute(SENTINEL_SQL.format(s=s))
        for f, c in zip(filters, streams, strict=True):
            got = until_sentinel(c, s)
            for e in got:
                row = e.data["new"] or e.data["old"]
                assert row["org_id"] == "A", (f, e.data)
    finally:
        for c in streams:
            c.close()


def test_ownership_moves(relay_server: RelayServer, db: Any, tables: dict[str, str]) -> None:
    t, s = tables["org"], tables["sentinel"]
    tok_a = relay_server.token(sub="uA", org_id="A")
    tok_b = relay_server.token(sub="uB", org_id="B")
    subs = [("sub", t), ("sub", s)]
    db.execute(f"insert into {t} values (1, 'A', 'secret-of-A')")
    relay_server.caught_up(db)
    with relay_server.open(subs, tok_a) as a, relay_server.open(subs, tok_b) as b:
        db.execute(f"update {t} set org_id = 'B', secret = 'secret-of-B' where id = 1")
        db.execute(f"update {t} set org_id = 'A', secret = 'back-to-A' where id = 1")
        db.execute(f"delete from {t} where id = 1")
        db.execute(SENTINEL_SQL.format(s=s))
        got_a = until_sentinel(a, s)
        got_b = until_sentinel(b, s)
    # A: the row leaves (DELETE, only the key), comes back (INSERT, full), is deleted
    assert [e.data["eventType"] for e in got_a] == ["DELETE", "INSERT", "DELETE"]
    assert got_a[0].data["old"] == {"id": 1} and got_a[0].data["new"] == {}
    assert got_a[1].data["new"]["secret"] == "back-to-A" and got_a[1].data["old"] == {}
    assert got_a[2].data["old"]["secret"] == "back-to-A"
    # B: the row arrives (INSERT, full new), leaves (DELETE, only the key)
    assert [e.data["eventType"] for e in got_b] == ["INSERT", "DELETE"]
    assert got_b[0].data["new"]["secret"] == "secret-of-B" and got_b[0].data["old"] == {}
    assert got_b[1].data["old"] == {"id": 1}
    assert "secret-of-A" not in str([e.raw for e in got_b])
    assert "back-to-A" not in str([e.raw for e in got_b])


def test_replay_applies_the_same_rules(
    relay_server: RelayServer, db: Any, tables: dict[str, str]
) -> None:
    t, s = tables["org"], tables["sentinel"]
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'A', 'a1'), (2, 'B', 'b2')")
    db.execute(f"update {t} set org_id = 'B' where id = 1")
    db.execute(SENTINEL_SQL.format(s=s))
    tok_b = relay_server.token(sub="uB", org_id="B")
    with relay_server.open([("sub", t), ("sub", s)], tok_b, {"Last-Event-ID": str(start)}) as b:
        got = until_sentinel(b, s)
    assert [(e.data["eventType"], (e.data["new"] or e.data["old"])["id"]) for e in got] == [
        ("INSERT", 2),
        ("INSERT", 1),
    ]
    assert "a1" in got[1].raw  # B owns the moved row version in full


def test_topics_default_deny_and_families(
    relay_server: RelayServer, db: Any, tables: dict[str, str]
) -> None:
    s = tables["sentinel"]
    row = db.execute(
        "insert into streams (org_id, name) values ('A', 'mine') returning id"
    ).fetchone()
    stream_id = row[0]
    tok_a = relay_server.token(sub="uA", org_id="A")
    tok_b = relay_server.token(sub="uB", org_id="B")
    with httpx.Client(timeout=10) as client:
        r = client.get(relay_server.stream_url({"topic": "anything"}, tok_a))
        assert r.status_code == 403 and "anything" in r.json()["message"]
        r = client.get(relay_server.stream_url({"topic": f"stream-progress:{stream_id}"}, tok_b))
        assert r.status_code == 403
        r = client.get(relay_server.stream_url({"topic": "stream-progress:not-a-uuid"}, tok_a))
        assert r.status_code == 403
    topic = f"stream-progress:{stream_id}"
    with relay_server.open([("topic", topic), ("sub", s)], tok_a) as a:
        db.execute(
            "select relay.broadcast(%s, 'progress-update', '{\"completed\": 1}', 'A')", (topic,)
        )
        db.execute(
            "select relay.broadcast(%s, 'progress-update', '{\"completed\": 2}', 'B')", (topic,)
        )
        db.execute("select relay.broadcast(%s, 'milestone', '{\"n\": 3}')", (topic,))
        db.execute(SENTINEL_SQL.format(s=s))
        got = until_sentinel(a, s)
    assert [e.data["payload"] for e in got] == [{"completed": 1}, {"n": 3}]


def test_token_expiry_closes_and_fresh_token_resumes(
    relay_server: RelayServer, db: Any, tables: dict[str, str]
) -> None:
    t = tables["org"]
    # long enough that the row arrives before the close even on a loaded 2-core CI
    # machine (exp is whole seconds and the relay closes a second early)
    short = relay_server.token(sub="uA", org_id="A", ttl=6)
    with relay_server.open({"sub": t}, short) as c:
        db.execute(f"insert into {t} values (1, 'A', 'a1')")
        (first,) = c.take(1)
        assert first.event == "postgres_changes" and first.data["new"]["id"] == 1, first
        expired = c.next(timeout=15)
        assert expired.event == "system" and expired.data["status"] == "TOKEN_EXPIRED"
        assert c.closed.wait(10)
    db.execute(f"insert into {t} values (2, 'A', 'a2')")  # written while disconnected
    fresh = relay_server.token(sub="uA", org_id="A")
    with relay_server.open({"sub": t}, fresh, {"Last-Event-ID": str(first.id)}) as c:
        (ev,) = c.take(1)
    assert ev.data["new"]["id"] == 2
