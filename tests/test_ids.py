"""Subscription ids on the wire: each row change is sent once per stream, naming in
`ids` every `sub=` (numbered in request order) it satisfies, with the union of their
`select`s — on SSE and on /v1/changes alike."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import httpx

from relay.hub import Hub
from tests.conftest import RelayServer
from tests.test_hub import change, principal, subs


def rows_of(events: list[Any]) -> list[tuple[list[int], str, dict[str, Any], dict[str, Any]]]:
    return [(e.data["ids"], e.data["eventType"], e.data["new"], e.data["old"]) for e in events]


def test_full_row_subscription_is_not_narrowed_by_another_select(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    """The reported case: `sub=t:INSERT&select=id&sub=t` — the full-row sub gets the row."""
    t = make_table("id int primary key, org_id text, name text")
    with relay_server.open([("sub", f"{t}:INSERT"), ("select", "id"), ("sub", t)]) as c:
        db.execute(f"insert into {t} values (1, 'o', 'a')")
        db.execute(f"update {t} set name = 'b' where id = 1")
        got = c.take(2, event="postgres_changes")
    assert rows_of(got) == [
        ([0, 1], "INSERT", {"id": 1, "org_id": "o", "name": "a"}, {}),
        (
            [1],
            "UPDATE",
            {"id": 1, "org_id": "o", "name": "b"},
            {"id": 1, "org_id": "o", "name": "a"},
        ),
    ]
    assert got[0].id is not None and got[1].id is not None and got[0].id < got[1].id


def test_each_subscription_gets_its_own_columns_and_the_union_when_both_match(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, n int, name text, note text")
    params = [
        ("sub", f"{t}:*:n=gt.10"),
        ("select", "name"),
        ("sub", f"{t}:*:n=lt.30"),
        ("select", "note"),
    ]
    with relay_server.open(params) as c:
        db.execute(f"insert into {t} values (1, 'o', 5, 'a', 'x')")  # lt.30 only
        db.execute(f"insert into {t} values (2, 'o', 40, 'b', 'y')")  # gt.10 only
        db.execute(f"insert into {t} values (3, 'o', 20, 'c', 'z')")  # both
        db.execute(f"insert into {t} values (4, 'o', null, 'd', 'w')")  # neither (NULL)
        db.execute(f"insert into {t} values (5, 'o', 1, 'e', 'v')")  # a marker after it
        got = c.take(4, event="postgres_changes")
    assert rows_of(got) == [
        ([1], "INSERT", {"id": 1, "note": "x"}, {}),
        ([0], "INSERT", {"id": 2, "name": "b"}, {}),
        ([0, 1], "INSERT", {"id": 3, "name": "c", "note": "z"}, {}),
        ([1], "INSERT", {"id": 5, "note": "v"}, {}),
    ]
    ids = [e.id for e in got]
    assert ids == sorted(set(ids))  # each position once, in order


def test_long_poll_names_the_same_ids(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, n int, name text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o', 5, 'a'), (2, 'o', 20, 'b')")
    db.execute(f"delete from {t} where id = 1")
    params = [
        ("sub", f"{t}:INSERT:n=gt.10"),
        ("select", "name"),
        ("sub", f"{t}"),
        ("select", "id"),
        ("sub", f"{t}:DELETE"),
        ("select", "n"),
    ]
    query = [*params, ("after", str(start)), ("access_token", relay_server.service_token())]
    # (httpx groups repeated keys when given params=, which would move each select)
    body = httpx.get(f"{relay_server.url}/v1/changes?{urlencode(query)}", timeout=30).json()
    assert "events" in body, body
    data = [e["data"] for e in body["events"]]
    assert [(d["ids"], d["eventType"], d["new"], d["old"]) for d in data] == [
        ([1], "INSERT", {"id": 1}, {}),
        ([0, 1], "INSERT", {"id": 2, "name": "b"}, {}),
        ([1, 2], "DELETE", {}, {"id": 1, "n": 5}),
    ]
    assert len({e["id"] for e in body["events"]}) == 3


def test_moved_out_names_every_subscription_and_sends_only_the_key(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, name text")
    db.execute(f"insert into {t} values (1, 'a', 'secret')")
    after = db.execute("select relay.current_position()").fetchone()[0]
    tok = relay_server.token(sub="u", org_id="a")
    params = [("sub", t), ("sub", f"{t}:DELETE"), ("select", "name")]
    with relay_server.open(params, tok, headers={"Last-Event-ID": str(after)}) as c:
        db.execute(f"update {t} set org_id = 'b', name = 'theirs' where id = 1")
        db.execute(f"insert into {t} values (2, 'a', 'mine')")
        got = c.take(2, event="postgres_changes")
    assert rows_of(got) == [
        ([0, 1], "DELETE", {}, {"id": 1}),
        ([0], "INSERT", {"id": 2, "org_id": "a", "name": "mine"}, {}),
    ]


def test_frames_are_shared_by_receivers_of_the_same_bytes_only() -> None:
    async def main() -> None:
        hub = Hub()
        a1, a2, a3 = principal("u1", "A"), principal("u2", "A"), principal("u3", "A")
        same = [("sub", "jobs:*:status=eq.new"), ("sub", "jobs")]
        s1 = hub.subscribe(a1, subs(*same, who=a1))  # type: ignore[arg-type]
        s2 = hub.subscribe(a2, subs(*same, who=a2))  # type: ignore[arg-type]
        s3 = hub.subscribe(a3, subs(("sub", "jobs"), who=a3))  # type: ignore[arg-type]
        hub.publish([change(1), change(2, status="done")])
        assert s1.outbox[0] is s2.outbox[0]  # same ids, same columns: one bytes object
        assert s1.outbox[1] is s2.outbox[1]
        assert s3.outbox[0] is not s1.outbox[0]
        assert b'{"ids":[0,1],' in s1.outbox[0] and b'{"ids":[1],' in s1.outbox[1]
        assert b'{"ids":[0],' in s3.outbox[0]
        # the second change names only sub 1 for both: s3's frame says [0] though
        assert s1.outbox[1] != s3.outbox[1]

    asyncio.run(main())
