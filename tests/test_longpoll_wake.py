"""Waiting long-polls are answered by the hub, not by re-reading the log on every commit."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from tests.conftest import RelayServer, start_relay


def poll(srv: RelayServer, params: dict[str, Any], token: str | None = None) -> Any:
    p = dict(params)
    p["access_token"] = token or srv.service_token()
    with httpx.Client(timeout=60) as client:
        r = client.get(f"{srv.url}/v1/changes", params=p)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_commits_a_poll_cannot_see_cost_it_no_log_read(
    relay_server: RelayServer, db: Any, make_table: Any
) -> None:
    a = make_table("id int primary key, org_id text")
    b = make_table("id int primary key, org_id text")
    relay_server.caught_up(db)
    hub, stats = relay_server.relay.hub, relay_server.relay.stats
    reads = stats.log_reads["longpoll"]
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(poll, relay_server, {"sub": a, "wait": 20}) for _ in range(8)]
        wait_for(lambda: len(hub.polls) == 8)
        for i in range(20):
            db.execute(f"insert into {b} values ({i}, 'o')")
        relay_server.caught_up(db)
        assert not any(f.done() for f in answers)  # still waiting: nothing for them
        assert stats.log_reads["longpoll"] == reads  # and no read of the log for them
        db.execute(f"insert into {a} values (1, 'o')")
        head = relay_server.caught_up(db)
        for f in answers:
            page = f.result(timeout=10)
            assert [e["data"]["new"]["id"] for e in page["events"]] == [1]
            assert page["position"] == head and page["more"] is False
    # answered from the hub's frames: still no read
    assert stats.log_reads["longpoll"] == reads
    assert not hub.polls


def test_chained_polls_under_a_writer_see_every_row_once_in_order(
    relay_server: RelayServer, dsn: str, db: Any, make_table: Any
) -> None:
    a = make_table("id int primary key, org_id text")
    b = make_table("id int primary key, org_id text")
    start = relay_server.caught_up(db)
    total = 600
    done = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as w:
            i = 1
            n = 0
            while i <= total:
                k = (n % 5) * 7 + 1  # 1, 8, 15, 22, 29 rows per transaction
                hi = min(total, i + k - 1)
                with w.transaction():
                    w.execute(f"insert into {a} select g, 'o' from generate_series({i}, {hi}) g")
                    w.execute(f"insert into {b} values ({n}, 'o')")
                i, n = hi + 1, n + 1
        done.set()

    def chain(limit: int) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        after = start
        while len(got) < total:
            page = poll(relay_server, {"sub": a, "after": after, "limit": limit, "wait": 10})
            assert page["position"] >= after
            assert len(page["events"]) <= limit
            assert page["more"] is (len(page["events"]) == limit)
            for e in page["events"]:
                assert after < e["id"] <= page["position"]
                got.append((e["id"], e["data"]["new"]["id"]))
            after = page["position"]
        return got

    t = threading.Thread(target=writer)
    with ThreadPoolExecutor(3) as pool:
        chains = [pool.submit(chain, limit) for limit in (7, 30, 1000)]
        t.start()
        results = [c.result(timeout=120) for c in chains]
    t.join()
    assert done.is_set()
    for got in results:
        assert [row for _, row in got] == list(range(1, total + 1))
        positions = [p for p, _ in got]
        assert positions == sorted(set(positions))


def test_a_waiting_poll_answers_by_its_tokens_exp(
    relay_server: RelayServer, make_table: Any
) -> None:
    a = make_table("id int primary key, org_id text")
    token = relay_server.token(sub="u1", org_id="o", ttl=2)
    began = time.time()
    page = poll(relay_server, {"sub": a, "wait": 25}, token)
    assert page["events"] == [] and time.time() - began < 4
    assert not relay_server.relay.hub.polls


def test_a_waiting_poll_is_told_of_changes_pruned_before_they_were_read(
    private_dsn: str,
) -> None:
    # its own database: pruning the shared one would take the other tests' history
    srv = start_relay(private_dsn)
    try:
        with (
            psycopg.connect(private_dsn, autocommit=True) as db,
            psycopg.connect(private_dsn) as dba,
            ThreadPoolExecutor(1) as pool,
        ):
            db.execute("create table a (id int primary key, org_id text)")
            db.execute("select relay.watch('public.a')")
            srv.caught_up(db)
            answer = pool.submit(poll, srv, {"sub": "a", "wait": 20})
            wait_for(lambda: len(srv.relay.hub.polls) == 1)
            dba.execute("lock table relay.meta in access exclusive mode")  # holds the relay back
            db.execute("insert into a values (1, 'o')")
            dba.execute("select relay.prune('100 years', 0, 100000)")
            dba.commit()
            page = answer.result(timeout=20)
        assert page["resync_required"] is True and page["reason"] == "retention"
    finally:
        srv.stop()
