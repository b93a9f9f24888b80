"""Eight writers with commits, rollbacks, savepoints and long transactions, and
readers resuming at random positions while they write: every committed change
exactly once, nothing rolled back, and the order of each row's versions kept
(if B overwrote what A wrote, A's position is below B's)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import httpx
import psycopg

from tests.conftest import RelayServer

WRITERS = 8
HOT_ROWS = 12
COMMITS = 400  # committed inserts before the writers stop


def _read(relay: RelayServer, table: str, after: int, upto: int | None = None) -> list[Any]:
    """Every event after `after` (up to `upto` when given), page by page."""
    out: list[Any] = []
    token = relay.service_token()
    with httpx.Client(timeout=30) as client:
        while True:
            r = client.get(
                f"{relay.url}/v1/changes",
                params={"sub": table, "after": after, "limit": 500, "access_token": token},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert "resync_required" not in body, body
            for ev in body["events"]:
                if upto is not None and int(ev["id"]) > upto:
                    return out
                out.append(ev)
            after = body["position"]
            if not body["more"] and (upto is None or after >= upto):
                return out


def test_writers_and_resuming_readers(
    relay_server: RelayServer, dsn: str, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, v int not null")
    db.execute(f"insert into {t} select g, 'o', 0 from generate_series(1, {HOT_ROWS}) g")
    start = relay_server.caught_up(db)
    committed_inserts: set[int] = set()
    committed_versions: dict[int, list[int]] = {i: [] for i in range(1, HOT_ROWS + 1)}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        next_id = (w + 1) * 1_000_000
        try:
            with psycopg.connect(dsn) as conn:
                while not stop.is_set():
                    try:
                        inserted, versions, next_id, keep = _transaction(conn, rng, next_id)
                    except psycopg.errors.DeadlockDetected:
                        conn.rollback()  # the writers' own lock order: rolled back, fine
                        continue
                    if not keep:
                        continue
                    with lock:
                        committed_inserts.update(inserted)
                        for hot, v in versions:
                            committed_versions[hot].append(v)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def _transaction(
        conn: psycopg.Connection[Any], rng: random.Random, next_id: int
    ) -> tuple[list[int], list[tuple[int, int]], int, bool]:
        """One random transaction: (ids inserted, hot versions, next id, committed?)."""
        inserted: list[int] = []
        versions: list[tuple[int, int]] = []
        kind = rng.random()
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                conn.execute(f"insert into {t} values (%s, 'o', 0)", (next_id,))
                inserted.append(next_id)
                next_id += 1
            else:
                hot = rng.randint(1, HOT_ROWS)
                row = conn.execute(
                    f"update {t} set v = v + 1 where id = %s returning v", (hot,)
                ).fetchone()
                assert row is not None
                versions.append((hot, row[0]))
        if rng.random() < 0.3:  # a savepoint rolled back: none of it stays
            with conn.transaction():
                conn.execute(f"insert into {t} values (%s, 'o', -1)", (-next_id,))
                raise psycopg.Rollback()
        if kind < 0.2:
            conn.rollback()
            return inserted, versions, next_id, False
        if kind > 0.95:  # a long transaction: others commit meanwhile
            time.sleep(rng.uniform(0.1, 0.4))
        conn.commit()
        return inserted, versions, next_id, True

    resumed: list[tuple[int, list[Any]]] = []

    def reader(r: int) -> None:
        rng = random.Random(100 + r)
        try:
            seen = [start]
            position = start
            while not stop.is_set():
                events = _read(relay_server, t, position)
                seen.extend(int(e["id"]) for e in events)
                if events:
                    position = int(events[-1]["id"])
                if rng.random() < 0.5:  # reconnect from a random position seen so far
                    position = rng.choice(seen)
                    resumed.append((position, []))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(r,), daemon=True) for r in range(3)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 60
    while len(committed_inserts) < COMMITS and time.monotonic() < deadline and not errors:
        time.sleep(0.05)  # the load runs until enough has committed
    stop.set()
    for th in threads:
        th.join(60)
    assert not errors, errors
    head = relay_server.caught_up(db)

    full = _read(relay_server, t, start, head)
    ids = [int(e["id"]) for e in full]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # each position once, in order
    inserted = [e["data"]["new"]["id"] for e in full if e["data"]["eventType"] == "INSERT"]
    assert sorted(inserted) == sorted(committed_inserts)  # exactly the committed ones
    assert all(i > 0 for i in inserted)  # nothing from a rolled-back savepoint
    for hot, versions in committed_versions.items():
        logged = [
            e["data"]["new"]["v"]
            for e in full
            if e["data"]["eventType"] == "UPDATE" and e["data"]["new"]["id"] == hot
        ]
        assert logged == sorted(versions) == list(range(1, len(versions) + 1)), hot
    # a resume from any position seen gives exactly the suffix of the full log
    for position, _ in resumed[:20]:
        suffix = [int(e["id"]) for e in _read(relay_server, t, position, head)]
        assert suffix == [i for i in ids if i > position]
