"""`GET /v1/changes`: the same changes as the stream, as JSON pages (long-poll)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RelayServer


def changes(
    relay_server: RelayServer, params: dict[str, Any], token: str | None = None, **kw: Any
) -> httpx.Response:
    p = dict(params)
    p["access_token"] = token or relay_server.service_token()
    with httpx.Client(timeout=60) as client:
        return client.get(f"{relay_server.url}/v1/changes", params=p, **kw)


def test_backlog_returns_immediately(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'o'), (2, 'o')")
    db.execute(f"update {t} set org_id = 'o' where id = 2")
    r = changes(relay_server, {"sub": t, "after": start, "wait": 20})
    assert r.status_code == 200
    body = r.json()
    assert [e["event"] for e in body["events"]] == ["postgres_changes"] * 3
    assert [e["data"]["eventType"] for e in body["events"]] == ["INSERT", "INSERT", "UPDATE"]
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids) and body["position"] >= ids[-1]
    assert body["more"] is False
    assert r.headers["cache-control"] == "no-store"
    # the payload is the stream's, byte for byte
    with relay_server.open({"sub": t, "last_event_id": str(start)}) as c:
        streamed = c.take(3)
    assert [e.data for e in streamed] == [e["data"] for e in body["events"]]


def test_waits_and_wakes_on_a_write(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    head = relay_server.caught_up(db)
    result: dict[str, Any] = {}

    def poll() -> None:
        t0 = time.monotonic()
        r = changes(relay_server, {"sub": t, "after": head, "wait": 20})
        result["elapsed"] = time.monotonic() - t0
        result["body"] = r.json()

    th = threading.Thread(target=poll)
    th.start()
    # the poll is waiting when the relay holds it open; write once it does
    deadline = time.monotonic() + 10
    while "body" not in result and time.monotonic() < deadline:
        db.execute(f"insert into {t} values (1, 'o') on conflict do nothing")
        th.join(0.2)
    th.join(20)
    assert [e["data"]["new"]["id"] for e in result["body"]["events"]] == [1]
    assert result["elapsed"] < 15


def test_times_out_empty(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    head = relay_server.caught_up(db)
    t0 = time.monotonic()
    r = changes(relay_server, {"sub": f"{t}:INSERT:id=eq.999", "after": head, "wait": 0.5})
    assert time.monotonic() - t0 >= 0.5
    body = r.json()
    assert body["events"] == [] and body["more"] is False and body["position"] >= head


def test_pagination_is_gapless(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    other = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 10000) g")
    db.execute(f"insert into {other} select g, 'o' from generate_series(1, 500) g")
    db.execute(f"update {t} set org_id = 'o' where id % 1000 = 0")
    seen: list[int] = []
    after = start
    pages = 0
    while True:
        r = changes(relay_server, {"sub": t, "after": after, "limit": 1000})
        body = r.json()
        pages += 1
        seen += [e["id"] for e in body["events"]]
        after = body["position"]
        if body["more"]:
            assert "max-age" in r.headers["cache-control"] and r.headers.get("etag")
            again = changes(relay_server, {"sub": t, "after": after - 0, "limit": 1000})
            assert again.status_code == 200
        else:
            break
    assert len(seen) == 10_010 and len(set(seen)) == 10_010 and seen == sorted(seen)
    assert pages >= 11


def test_full_page_etag_revalidates(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 5) g")
    params = {"sub": t, "after": start, "limit": 2}
    first = changes(relay_server, params)
    assert first.json()["more"] is True
    again = changes(relay_server, params, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_visibility_same_as_stream(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text, secret text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} values (1, 'A', 'a'), (2, 'B', 'b')")
    db.execute(f"update {t} set org_id = 'A' where id = 2")
    tok = relay_server.token(sub="u", org_id="A")
    body = changes(relay_server, {"sub": t, "after": start}, tok).json()
    assert [(e["data"]["eventType"], e["data"]["new"]["id"]) for e in body["events"]] == [
        ("INSERT", 1),
        ("INSERT", 2),
    ]


def test_resync_and_bad_parameters(relay_server: RelayServer, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    body = changes(relay_server, {"sub": t, "after": 2**62}).json()
    assert body["resync_required"] is True and "oldest" in body
    for bad in (
        {"after": "abc"},
        {"after": "-1"},
        {"limit": "0"},
        {"limit": "5000"},
        {"wait": "soon"},
        {"wait": "nan"},
    ):
        r = changes(relay_server, {"sub": t, **bad})
        assert r.status_code == 400, bad
        assert r.json()["error"] == "invalid_parameter"
    r = changes(relay_server, {"sub": "nope"})
    assert r.status_code == 400 and r.json()["error"] == "unknown_table"
    r = httpx.get(f"{relay_server.url}/v1/changes?sub={t}", timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("limit", [1, 7])
def test_limit_cuts_exactly(
    relay_server: RelayServer, db: Any, make_table: Any, limit: int
) -> None:
    t = make_table("id int primary key, org_id text")
    start = db.execute("select relay.current_position()").fetchone()[0]
    db.execute(f"insert into {t} select g, 'o' from generate_series(1, 10) g")
    body = changes(relay_server, {"sub": t, "after": start, "limit": limit}).json()
    assert len(body["events"]) == limit and body["more"] is True
    assert body["position"] == body["events"][-1]["id"]


owners = st.tuples(st.sampled_from(["u1", "u2", None]), st.sampled_from(["A", "B", None]))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["insert", "update", "delete"]), st.integers(1, 4), owners),
        min_size=1,
        max_size=12,
    ),
    who=st.tuples(st.sampled_from(["u1", "u2"]), st.sampled_from(["A", "B"])),
    flt=st.sampled_from(["", ":*:n=gt.1", ":UPDATE", ":*:org_id=eq.B"]),
)
def test_both_transports_deliver_the_same(
    relay_server: RelayServer, db: Any, make_table: Any, ops: Any, who: Any, flt: str
) -> None:
    """Same token, same subscription: /v1/changes returns exactly what /v1/stream sends."""
    t = make_table("id int primary key, user_id text, org_id text, n int")
    start = db.execute("select relay.current_position()").fetchone()[0]
    n = 0
    for op, key, (user, org) in ops:
        n += 1
        if op == "insert":
            db.execute(
                f"insert into {t} values (%s, %s, %s, %s) on conflict (id) do update "
                "set user_id = excluded.user_id, org_id = excluded.org_id, n = excluded.n",
                (key, user, org, n),
            )
        elif op == "update":
            db.execute(
                f"update {t} set user_id = %s, org_id = %s, n = %s where id = %s",
                (user, org, n, key),
            )
        else:
            db.execute(f"delete from {t} where id = %s", (key,))
    sentinel = make_table("id int primary key, org_id text")
    db.execute(f"insert into {sentinel} values (1, %s)", (who[1],))  # ends the stream below
    token = relay_server.token(sub=who[0], org_id=who[1])
    polled = changes(relay_server, {"sub": t + flt, "after": start, "limit": 1000}, token).json()
    want = [(e["id"], e["data"]) for e in polled["events"]]
    got = []
    with relay_server.open(
        [("sub", t + flt), ("sub", sentinel), ("last_event_id", str(start))], token
    ) as c:
        while True:
            ev = c.next(10)
            if ev.data["table"] == sentinel:
                break
            got.append((ev.id, ev.data))
    assert got == want
