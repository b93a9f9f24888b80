"""Initial state from the outside: `snapshot=true` on /v1/stream, GET /v1/snapshot,
relay.client — rows as live delivery would send them, then exactly the changes after.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from relay.client import RelayClient, RelayError
from tests.conftest import RelayServer, start_relay
from tests.sse import Event, SSEClient

COLUMNS = "id int primary key, org_id text, user_id text, status text, v int default 0, secret text"


def read_snapshot(c: SSEClient, timeout: float = 30.0) -> tuple[list[Event], Event]:
    """The snapshot frames, and the SUBSCRIBED event that ends them."""
    frames: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        ev = c.next(max(0.1, deadline - time.monotonic()))
        if ev.event == "system" and ev.data["status"] == "SUBSCRIBED":
            return frames, ev
        assert ev.event == "snapshot", ev
        assert ev.id is None
        frames.append(ev)


def rows_of(frames: list[Event]) -> dict[int, tuple[list[int], dict[str, Any]]]:
    """id -> (ids, row); each row appears once."""
    out: dict[int, tuple[list[int], dict[str, Any]]] = {}
    for f in frames:
        for row in f.data["rows"]:
            assert row["id"] not in out, f"row {row['id']} sent twice"
            out[row["id"]] = (f.data["ids"], row)
    return out


def head(db: psycopg.Connection[Any]) -> int:
    return int(db.execute("select relay.current_position()").fetchone()[0])


def visible(db: psycopg.Connection[Any], table: str, where: str) -> dict[int, dict[str, Any]]:
    rows = db.execute(f"select to_jsonb(t) - 'secret' from {table} t where {where}").fetchall()
    return {r[0]["id"]: r[0] for r in rows}


@pytest.fixture
def orgs_table(db: psycopg.Connection[Any], make_table: Any) -> str:
    t: str = make_table(COLUMNS, watch=", exclude => '{secret}'")
    db.execute(
        f"insert into {t} (id, org_id, user_id, status, secret) "
        "select i, case when i % 3 = 0 then 'A' when i % 3 = 1 then 'B' else 'C' end, "
        "case when i % 5 = 0 then 'u1' end, case when i % 2 = 0 then 'done' else 'new' end, 'pw' "
        "from generate_series(1, 30) i"
    )
    return t


def test_stream_sends_visible_rows_then_subscribed_at_their_position(
    relay_server: RelayServer, db: Any, orgs_table: str
) -> None:
    t = orgs_table
    token = relay_server.token(sub="u1", org_id="A")
    params = [
        ("sub", t),
        ("sub", f"{t}:*:status=eq.done"),
        ("select", "status"),
        ("snapshot", "true"),
    ]
    with relay_server.open(params, token=token, subscribed=False) as c:
        assert c.status == 200
        frames, hello = read_snapshot(c)
        got = rows_of(frames)
        # ownership: org A, or user u1 (the token's sub) whatever the org
        expected = visible(db, t, "org_id = 'A' or user_id = 'u1'")
        assert {i: r for i, (_, r) in got.items()} == expected
        for i, (ids, row) in got.items():
            assert "secret" not in row
            # a row both subscriptions want goes out once, with both ids and the full row
            assert ids == ([0, 1] if expected[i]["status"] == "done" else [0])
        assert hello.data["position"] == head(db)
        db.execute(f"update {t} set v = v + 1 where id = 3")
        live = c.next()
        assert live.event == "postgres_changes" and live.id == hello.data["position"] + 1
        assert live.data["new"]["v"] == 1


def test_subscribed_is_followed_by_a_bare_id_so_eventsource_resumes_from_it(
    relay_server: RelayServer, orgs_table: str
) -> None:
    """`id: P` with no data sets EventSource's Last-Event-ID and dispatches nothing."""
    url = relay_server.stream_url(
        {"sub": orgs_table, "snapshot": "true"}, relay_server.service_token()
    )
    with httpx.stream("GET", url, timeout=10) as resp:
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: ") and '"SUBSCRIBED"' in line:
                position = json.loads(line[6:])["position"]
                break
        assert [next(lines), next(lines), next(lines)] == ["", f"id: {position}", ""]


def test_select_projection_and_exact_numbers(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, amount numeric, doc jsonb, note text")
    db.execute(
        f"insert into {t} values (1, 'A', 12345678901234567890.123456789, "
        """'{"b": [1.10, "x"], "a": null}', 'n')"""
    )
    params = [("sub", f"{t}:*:amount=gt.1"), ("select", "amount,doc"), ("snapshot", "true")]
    with relay_server.open(
        params, token=relay_server.token(sub="u", org_id="A"), subscribed=False
    ) as c:
        frames, hello = read_snapshot(c)
        (frame,) = frames
        assert '"amount":12345678901234567890.123456789' in frame.raw  # exact, not a float
        assert frame.data["rows"] == [
            {
                "id": 1,
                "amount": 12345678901234567890.123456789,
                "doc": {"a": None, "b": [1.10, "x"]},
            }
        ]
        # the same projection and encoding as a live change of the row
        db.execute(f"update {t} set note = 'm' where id = 1")
        live = c.next()
        assert live.data["new"] == frame.data["rows"][0]


def test_json_snapshot_is_the_same_rows_and_position(
    relay_server: RelayServer, db: Any, orgs_table: str
) -> None:
    t = orgs_table
    token = relay_server.token(sub="u1", org_id="A")
    query = [("sub", t), ("sub", f"{t}:*:status=eq.done"), ("select", "status")]
    resp = httpx.get(
        f"{relay_server.url}/v1/snapshot",
        params=query,
        headers={"authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["position"] == head(db)
    with relay_server.open([*query, ("snapshot", "true")], token=token, subscribed=False) as c:
        frames, _ = read_snapshot(c)
    from_stream = {
        (tuple(ids), json.dumps(row, sort_keys=True)) for ids, row in rows_of(frames).values()
    }
    from_json = {(tuple(r["ids"]), json.dumps(r["row"], sort_keys=True)) for r in body["rows"]}
    assert from_json == from_stream and len(body["rows"]) == len(from_stream)
    assert {(r["schema"], r["table"]) for r in body["rows"]} == {("public", t)}


def test_a_resume_position_means_no_snapshot(
    relay_server: RelayServer, db: Any, orgs_table: str
) -> None:
    t = orgs_table
    position = head(db)
    params = {"sub": t, "snapshot": "true"}
    for how in ("query", "header"):
        extra = {"last_event_id": str(position)} if how == "query" else {}
        headers = {"Last-Event-ID": str(position)} if how == "header" else {}
        with relay_server.open({**params, **extra}, headers=headers) as c:
            assert c.hello.data["position"] == position  # type: ignore[attr-defined]
            db.execute(f"update {t} set v = v + 1 where id = 1")
            assert c.next().event == "postgres_changes"
            position += 1


def test_several_tables_and_topics(relay_server: RelayServer, db: Any, make_table: Any) -> None:
    t1 = make_table("id int primary key, org_id text")
    t2 = make_table("id text primary key, org_id text")
    db.execute(f"insert into {t1} values (1, 'A'), (2, 'B')")
    db.execute(f"insert into {t2} values ('x', 'A'), ('y', 'A')")
    params = [("sub", t1), ("sub", t2), ("topic", "room"), ("snapshot", "true")]
    with relay_server.open(params, subscribed=False) as c:  # service_role: every row
        frames, hello = read_snapshot(c)
        assert sorted((f.data["table"], r["id"]) for f in frames for r in f.data["rows"]) == sorted(
            [(t1, 1), (t1, 2), (t2, "x"), (t2, "y")]
        )
        assert {tuple(f.data["ids"]) for f in frames} == {(0,), (1,)}
        db.execute("select relay.broadcast('room', 'ping', '{}')")
        assert c.next().event == "broadcast"


def test_the_connection_is_given_back_once_the_rows_are_sent(
    relay_server: RelayServer, orgs_table: str
) -> None:
    gate = relay_server.relay.snapshot_gate
    free = relay_server.relay.settings.snapshot_concurrency
    with relay_server.open({"sub": orgs_table, "snapshot": "true"}, subscribed=False) as c:
        read_snapshot(c)
        assert gate._value == free  # the stream is live and holds no snapshot slot


# --------------------------------------------------------------------------------------
# The handoff under concurrent writes
# --------------------------------------------------------------------------------------


class Writer:
    """Inserts, updates, deletes and moves rows between orgs A and B until stopped."""

    def __init__(self, dsn: str, table: str, first_id: int) -> None:
        self.dsn, self.table, self.next_id = dsn, table, first_id
        self.writes = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(17)
        t = self.table
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    op = rnd.random()
                    some = rnd.randrange(1, self.next_id)
                    if op < 0.25:
                        conn.execute(
                            f"insert into {t} (id, org_id, status) values (%s, %s, 'new')",
                            (self.next_id, rnd.choice("AB")),
                        )
                        self.next_id += 1
                    elif op < 0.6:
                        conn.execute(
                            f"update {t} set v = v + 1, status = 'busy' where id = %s", (some,)
                        )
                    elif op < 0.7:
                        conn.execute(f"delete from {t} where id = %s", (some,))
                    elif op < 0.85:  # ownership moves
                        conn.execute(
                            f"update {t} set org_id = case org_id when 'A' then 'B' else 'A' end, "
                            "v = v + 1 where id = %s",
                            (some,),
                        )
                    else:  # a transaction of several changes
                        with conn.transaction():
                            conn.execute(
                                f"update {t} set v = v + 1 where id between %s and %s",
                                (some, some + 20),
                            )
                            conn.execute(f"delete from {t} where id = %s", (some + 21,))
                    self.writes += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def wait_for(self, writes: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.writes < writes:
            assert self.error is None, self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"writer at {self.writes} writes")
            self.stop.wait(0.01)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert self.error is None, self.error


class State:
    """A page's copy of the rows: snapshot first, then changes, checked for gaps and doubles."""

    def __init__(self, position: int) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.position = position

    def load(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            assert row["id"] not in self.rows, f"row {row['id']} twice in the snapshot"
            self.rows[row["id"]] = row

    def apply(self, position: int, data: dict[str, Any]) -> None:
        assert position > self.position, f"position {position} after {self.position}: a duplicate"
        self.position = position
        kind = data["eventType"]
        if kind == "INSERT":  # an insert the snapshot already reflects would be a duplicate
            assert data["new"]["id"] not in self.rows, (position, data)
            self.rows[data["new"]["id"]] = data["new"]
        elif kind == "UPDATE":  # an update of a row we do not have would mean a gap
            old = self.rows.get(data["new"]["id"])
            assert old is not None, (position, data)
            # every update raises v: one the snapshot already reflects would not
            assert data["new"]["v"] > old["v"], (position, data, old)
            self.rows[data["new"]["id"]] = data["new"]
        else:
            assert self.rows.pop(data["old"]["id"], None) is not None, (position, data)


@pytest.fixture
def busy_table(db: psycopg.Connection[Any], make_table: Any) -> str:
    t: str = make_table("id int primary key, org_id text, status text, v int default 0")
    db.execute(
        f"insert into {t} (id, org_id, status) select i, case when i % 2 = 0 then 'A' else 'B' end, "
        "'new' from generate_series(1, 4000) i"
    )
    return t


MARKER = 10_000_000


def finish(db: Any, t: str) -> None:
    """After the writer stopped: one last row the page waits for."""
    db.execute(f"insert into {t} (id, org_id, status) values ({MARKER}, 'A', 'marker')")


@pytest.mark.parametrize("continuation", ["stream", "json+stream", "json+changes"])
def test_handoff_is_exact_under_concurrent_writes(
    relay_server: RelayServer, dsn: str, db: Any, busy_table: str, continuation: str
) -> None:
    t = busy_table
    token = relay_server.token(sub="nobody", org_id="A")
    auth = {"authorization": f"Bearer {token}"}
    with Writer(dsn, t, 4001) as writer:
        writer.wait_for(50)
        if continuation == "stream":
            c = relay_server.open({"sub": t, "snapshot": "true"}, token=token, subscribed=False)
            frames, hello = read_snapshot(c)
            state = State(hello.data["position"])
            state.load([r for f in frames for r in f.data["rows"]])
        else:
            body = httpx.get(
                f"{relay_server.url}/v1/snapshot", params={"sub": t}, headers=auth, timeout=30
            ).json()
            state = State(body["position"])
            state.load([r["row"] for r in body["rows"]])
            if continuation == "json+stream":
                writer.wait_for(writer.writes + 100)  # changes pile up between the two requests
                c = relay_server.open(
                    {"sub": t, "last_event_id": str(body["position"])}, token=token
                )
                assert c.hello.data["position"] == body["position"]  # type: ignore[attr-defined]
        writer.wait_for(writer.writes + 300)
    finish(db, t)
    if continuation == "json+changes":
        after = state.position
        while MARKER not in state.rows:
            page = httpx.get(
                f"{relay_server.url}/v1/changes",
                params={"sub": t, "after": str(after), "wait": "5", "limit": "1000"},
                headers=auth,
                timeout=30,
            ).json()
            for e in page["events"]:
                state.apply(e["id"], e["data"])
            after = page["position"]
    else:
        with c:
            while MARKER not in state.rows:
                ev = c.next()
                assert ev.event == "postgres_changes", ev
                state.apply(ev.id, ev.data)  # type: ignore[arg-type]
    assert state.rows == visible(db, t, "org_id = 'A'")
    assert writer.writes >= 350


@pytest.mark.parametrize("transport", ["sse", "poll"])
def test_client_snapshot_then_changes(
    relay_server: RelayServer, dsn: str, db: Any, busy_table: str, transport: str
) -> None:
    t = busy_table
    token = relay_server.token(sub="nobody", org_id="A")

    async def consume() -> State:
        state: State | None = None
        async with RelayClient(relay_server.url, token=token, transport=transport) as rc:  # type: ignore[arg-type]
            pending: list[dict[str, Any]] = []
            async for change in rc.subscribe(t, snapshot=True):
                if change.event == "snapshot":
                    assert state is None
                    pending += change.rows
                elif change.status == "SUBSCRIBED":
                    assert change.id is not None and rc.position == change.id
                    state = State(change.id)
                    state.load(pending)
                else:
                    assert state is not None and change.id is not None, change
                    state.apply(change.id, change.data)
                    if MARKER in state.rows:
                        return state
        raise AssertionError("the subscription ended")

    results: list[State] = []
    with Writer(dsn, t, 4001) as writer:
        writer.wait_for(50)
        thread = threading.Thread(
            target=lambda: results.append(asyncio.run(asyncio.wait_for(consume(), 60)))
        )
        thread.start()
        writer.wait_for(writer.writes + 300)
    finish(db, t)
    thread.join(70)
    (state,) = results
    assert state.rows == visible(db, t, "org_id = 'A'")


def test_client_fetch_snapshot(relay_server: RelayServer, db: Any, orgs_table: str) -> None:
    async def main() -> tuple[int, list[dict[str, Any]]]:
        async with RelayClient(
            relay_server.url, token=relay_server.token(sub="u1", org_id="B")
        ) as rc:
            return await rc.fetch_snapshot(orgs_table, select={orgs_table: "org_id"})

    position, rows = asyncio.run(main())
    assert position == head(db)
    assert {r["row"]["id"]: r["row"] for r in rows} == {
        i: {"id": i, "org_id": r["org_id"]}
        for i, r in visible(db, orgs_table, "org_id = 'B' or user_id = 'u1'").items()
    }


# --------------------------------------------------------------------------------------
# Limits and bad input
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(dsn: str) -> Iterator[RelayServer]:
    srv = start_relay(dsn, snapshot_max_rows=5, snapshot_max_seconds=1.0)
    try:
        yield srv
    finally:
        srv.stop()


def test_row_limit_is_a_413_naming_it(limited: RelayServer, db: Any, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(
        f"insert into {t} select i, case when i <= 5 then 'A' else 'B' end from generate_series(1, 9) i"
    )
    token_a = limited.token(sub="x", org_id="A")  # sees exactly 5: within the limit
    with limited.open({"sub": t, "snapshot": "true"}, token=token_a, subscribed=False) as c:
        frames, _ = read_snapshot(c)
        assert len(rows_of(frames)) == 5
    for url in (
        limited.stream_url({"sub": t, "snapshot": "true"}, limited.service_token()),
        f"{limited.url}/v1/snapshot?"
        + urlencode({"sub": t, "access_token": limited.service_token()}),
    ):
        resp = httpx.get(url)
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "snapshot_too_large"
        assert "RELAY_SNAPSHOT_MAX_ROWS" in resp.json()["message"] and "5" in resp.json()["message"]
    # a filter narrows it below the limit
    with limited.open({"sub": f"{t}:*:id=gt.6", "snapshot": "true"}, subscribed=False) as c:
        frames, _ = read_snapshot(c)
        assert sorted(rows_of(frames)) == [7, 8, 9]


def test_time_limit_before_the_response_is_a_413_naming_it(
    limited: RelayServer, dsn: str, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    with psycopg.connect(dsn) as locker:  # holds the table: the snapshot cannot read it
        locker.execute(f"lock table {t} in access exclusive mode")
        started = time.monotonic()
        resp = httpx.get(
            limited.stream_url({"sub": t, "snapshot": "true"}, limited.service_token()), timeout=30
        )
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "snapshot_too_slow"
        assert "RELAY_SNAPSHOT_MAX_SECONDS" in resp.json()["message"]
        assert time.monotonic() - started < 10
        locker.rollback()
    assert limited.relay.snapshot_gate._value == limited.relay.settings.snapshot_concurrency


def test_a_stalled_reader_is_cut_at_the_time_limit(dsn: str, db: Any, make_table: Any) -> None:
    """Past RELAY_SNAPSHOT_MAX_SECONDS mid-stream: the stream ends without SUBSCRIBED,
    the snapshot's connection and slot are given back."""
    t = make_table("id int primary key, org_id text, pad text")
    db.execute(f"insert into {t} select i, 'A', repeat('x', 300) from generate_series(1, 60000) i")
    srv = start_relay(dsn, snapshot_max_seconds=1.5, snapshot_page_rows=100)
    try:
        gate = srv.relay.snapshot_gate
        sock = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        query = urlencode({"sub": t, "snapshot": "true", "access_token": srv.service_token()})
        sock.sendall(f"GET /v1/stream?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(12).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 20
        while gate._value != srv.relay.settings.snapshot_concurrency:  # taken, then given back
            assert time.monotonic() < deadline, "the snapshot was never given back"
            time.sleep(0.05)
        sock.settimeout(20)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
        assert b"SUBSCRIBED" not in received
        assert received.count(b"event: snapshot") < 600  # 60,000 rows / 100 were not all sent
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"sub": "{t}", "snapshot": "yes"}, 400, "invalid_parameter"),
        ({"sub": "{t}:*:nope=eq.1", "snapshot": "true"}, 400, "invalid_filter"),
        ({"sub": "{t}:*:id=gt.abc", "snapshot": "true"}, 400, "invalid_filter"),
        ({"sub": "no_such_table", "snapshot": "true"}, 400, "unknown_table"),
        ({"sub": "{t}", "select": "secret", "snapshot": "true"}, 400, "unknown_column"),
        # converts for the evaluator, overflows Postgres' numeric: a 400, not a 500
        ({"sub": "{t}:*:amount=lt.1e999999999", "snapshot": "true"}, 400, "invalid_filter"),
    ],
)
def test_bad_input_is_a_400(
    relay_server: RelayServer, make_table: Any, params: dict[str, str], status: int, code: str
) -> None:
    t = make_table(
        "id int primary key, org_id text, amount numeric, secret text",
        watch=", exclude => '{secret}'",
    )
    filled = {k: v.replace("{t}", t) for k, v in params.items()}
    for url in (
        relay_server.stream_url(filled, relay_server.service_token()),
        f"{relay_server.url}/v1/snapshot?"
        + urlencode({**filled, "access_token": relay_server.service_token()}),
    ):
        if "/v1/snapshot" in url and "snapshot" in filled and filled["snapshot"] != "true":
            continue  # /v1/snapshot does not read the parameter
        resp = httpx.get(url)
        assert (resp.status_code, resp.json()["error"]) == (status, code), resp.text


def test_auth_and_method_errors(relay_server: RelayServer, make_table: Any) -> None:
    t = make_table("id int primary key, org_id text")
    nobody_owns = make_table("id int primary key, note text")
    url = f"{relay_server.url}/v1/snapshot"
    assert httpx.get(url, params={"sub": t}).status_code == 401
    token = relay_server.token(sub="u", org_id="A")
    resp = httpx.get(url, params={"sub": nobody_owns, "access_token": token})
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden_table"
    resp = httpx.get(url, params={"sub": t, "topic": "secret-room", "access_token": token})
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden_topic"
    assert httpx.post(url, params={"sub": t}).status_code == 405
    resp = httpx.get(url, params={"sub": t, "access_token": token, "x": "a\x00b"})
    assert resp.status_code == 400


def test_snapshot_head_not_exact_is_a_503_with_retry_after(
    relay_server: RelayServer, db: Any, orgs_table: str
) -> None:
    """Positions below a visible one still in flight: retried, then 503 (relay.snapshot_head)."""
    (original,) = db.execute(
        "select pg_get_functiondef('relay.snapshot_head()'::regprocedure)"
    ).fetchone()
    # a database where some commit below the head stays in flight for good
    db.execute(
        'create or replace function relay.snapshot_head(out "position" bigint, out exact boolean) '
        "language sql as $$ select 0::bigint, false $$"
    )
    try:
        for url in (
            relay_server.stream_url(
                {"sub": orgs_table, "snapshot": "true"}, relay_server.service_token()
            ),
            f"{relay_server.url}/v1/snapshot?"
            + urlencode({"sub": orgs_table, "access_token": relay_server.service_token()}),
        ):
            resp = httpx.get(url)
            assert resp.status_code == 503, (resp.status_code, resp.text)
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["error"] == "snapshot_unavailable"
    finally:
        db.execute(original)
    resp = httpx.get(
        f"{relay_server.url}/v1/snapshot",
        params={"sub": orgs_table, "access_token": relay_server.service_token()},
    )
    assert resp.status_code == 200


def test_a_role_that_may_not_read_the_table_gets_a_clear_503(
    dsn: str, db: Any, make_table: Any
) -> None:
    """A relay logged in as relay_reader only (no SELECT on the table): never a silent empty snapshot."""
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} values (1, 'A')")
    role = f"relay_snap_{uuid.uuid4().hex[:8]}"
    db.execute(f"create role {role} login in role relay_reader")
    try:
        limited_dsn = dsn.replace("postgres@", f"{role}@", 1)
        srv = start_relay(limited_dsn)
        try:
            resp = httpx.get(
                f"{srv.url}/v1/snapshot", params={"sub": t, "access_token": srv.service_token()}
            )
            assert resp.status_code == 503 and resp.json()["error"] == "snapshot_forbidden"
            assert "SELECT" in resp.json()["message"]
            db.execute(f"grant select on {t} to {role}")
            db.execute(
                f"alter table {t} enable row level security"
            )  # no policy: it would see nothing
            resp = httpx.get(
                f"{srv.url}/v1/snapshot", params={"sub": t, "access_token": srv.service_token()}
            )
            assert resp.status_code == 503 and "row-level security" in resp.json()["message"]
            db.execute(f"alter table {t} disable row level security")
            resp = httpx.get(
                f"{srv.url}/v1/snapshot", params={"sub": t, "access_token": srv.service_token()}
            )
            assert resp.status_code == 200 and [r["row"]["id"] for r in resp.json()["rows"]] == [1]
        finally:
            srv.stop()
    finally:
        db.execute(f"drop owned by {role}")
        db.execute(f"drop role {role}")


def test_client_raises_on_a_refused_snapshot(
    limited: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text")
    db.execute(f"insert into {t} select i, 'A' from generate_series(1, 9) i")

    async def main(transport: str) -> None:
        async with RelayClient(
            limited.url, token=limited.service_token(), transport=transport
        ) as rc:  # type: ignore[arg-type]
            async for _ in rc.subscribe(t, snapshot=True):
                pass

    for transport in ("sse", "poll"):
        with pytest.raises(RelayError) as info:
            asyncio.run(asyncio.wait_for(main(transport), 30))
        assert info.value.status == 413
