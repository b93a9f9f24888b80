"""Real relay processes: SIGKILL under writers, SIGTERM drain, two processes, Postgres restart."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from relay.auth import make_token
from tests.conftest import SECRET, free_port
from tests.sse import Event, SSEClient


class RelayProcess:
    """`relay serve` in a subprocess, JSON logs to a file."""

    def __init__(self, dsn: str, port: int | None = None, **env: str) -> None:
        self.dsn = dsn
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = tempfile.NamedTemporaryFile(prefix="relay-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_args: list[str] = []

    def start(self) -> RelayProcess:
        env = {
            **os.environ,
            "RELAY_DATABASE_URL": self.dsn,
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_POLL_SECONDS": "0.5",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay.cli",
                "serve",
                "--port",
                str(self.port),
                *self.start_args,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "relay did not become ready"
            time.sleep(0.05)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the workers too
            self.proc.wait(30)

    def stream(self, params: dict[str, str], last_id: int | None = None) -> SSEClient:
        token = make_token(SECRET, sub="svc", role="service_role")
        q = "&".join(f"{k}={v}" for k, v in params.items())
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        c = SSEClient(f"{self.url}/v1/stream?{q}&access_token={token}", headers=headers).open()
        hello = c.next()
        assert hello.data["status"] == "SUBSCRIBED"
        return c


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    made: list[RelayProcess] = []
    yield made
    for r in made:
        r.stop()


def writers(
    dsn: str, table: str, n_writers: int, per_writer: int, stop: threading.Event
) -> list[threading.Thread]:
    """Writers committing small random transactions of 1-5 rows each."""

    def run(w: int) -> None:
        rnd = random.Random(w)
        with psycopg.connect(dsn, autocommit=True) as conn:
            seq = 0
            while seq < per_writer and not stop.is_set():
                k = min(rnd.randint(1, 5), per_writer - seq)
                with conn.transaction():
                    for _ in range(k):
                        seq += 1
                        conn.execute(f"insert into {table} values (%s, %s, 'o')", (w, seq))

    threads = [threading.Thread(target=run, args=(w,)) for w in range(n_writers)]
    for t in threads:
        t.start()
    return threads


def collect(
    relay: RelayProcess, table: str, got: list[Event], want: int, timeout: float = 60
) -> None:
    """Read (reconnecting with the last id whenever the stream ends) until `want` events."""
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"{len(got)} of {want}"
        last = got[-1].id if got else None
        c = relay.stream({"sub": table}, last_id=last if last is not None else 0)
        try:
            while len(got) < want:
                ev = c.next(timeout=max(0.1, deadline - time.monotonic()))
                if ev.event == "postgres_changes":
                    got.append(ev)
        except TimeoutError:
            pass
        finally:
            c.close()


def check_exact(db: Any, table: str, got: list[Event]) -> None:
    rows = sorted(db.execute(f"select w, seq from {table}").fetchall())
    seen = [(e.data["new"]["w"], e.data["new"]["seq"]) for e in got]
    assert len(seen) == len(set(seen)), "duplicates"
    assert sorted(seen) == rows, "lost or extra changes"
    ids = [e.id for e in got]
    assert ids == sorted(ids), "out of position order"
    for w in {r[0] for r in rows}:  # each writer's rows arrive in its commit order
        mine = [s for ww, s in seen if ww == w]
        assert mine == sorted(mine)


def test_sigkill_while_writers_commit(
    dsn: str, db: Any, make_table: Any, relays: list[RelayProcess]
) -> None:
    t = make_table("w int, seq int, org_id text, primary key (w, seq)")
    start = db.execute("select relay.current_position()").fetchone()[0]
    relay = RelayProcess(dsn)
    relays.append(relay)
    relay.start()
    stop = threading.Event()
    threads = writers(dsn, t, 4, 100_000, stop)  # they commit until told to stop
    got: list[Event] = []
    c = relay.stream({"sub": t}, last_id=start)
    try:
        while len(got) < 100:
            got.append(c.next(20))
    finally:
        c.close()
    at_kill = db.execute(f"select count(*) from {t}").fetchone()[0]
    assert relay.kill() == -signal.SIGKILL
    relay.start()  # same port: the client reconnects to where it was
    collect(relay, t, got, at_kill + 50)  # writers kept committing across the kill
    stop.set()
    for th in threads:
        th.join(60)
    total = db.execute(f"select count(*) from {t}").fetchone()[0]
    assert total > at_kill + 50
    collect(relay, t, got, total)
    check_exact(db, t, got)


def test_two_processes_serve_the_same_positions(
    dsn: str, db: Any, make_table: Any, relays: list[RelayProcess]
) -> None:
    t = make_table("w int, seq int, org_id text, primary key (w, seq)")
    start = db.execute("select relay.current_position()").fetchone()[0]
    a, b = RelayProcess(dsn), RelayProcess(dsn)
    relays += [a, b]
    a.start()
    b.start()
    stop = threading.Event()
    threads = writers(dsn, t, 2, 100, stop)
    got: list[Event] = []
    c = a.stream({"sub": t}, last_id=start)
    try:
        while len(got) < 50:
            got.append(c.next(20))
    finally:
        c.close()
    for th in threads:
        th.join(60)
    collect(b, t, got, 200)  # the client moves to the other process
    check_exact(db, t, got)


def test_sigterm_drains_with_shutdown_and_exits_0(
    dsn: str, db: Any, make_table: Any, relays: list[RelayProcess]
) -> None:
    t = make_table("id int primary key, org_id text, secret text")
    relay = RelayProcess(dsn, RELAY_RETRY_MS="1500")
    relays.append(relay)
    relay.start()
    c = relay.stream({"sub": t})
    try:
        db.execute(f"insert into {t} values (1, 'o', 'row-secret-value')")
        assert c.next(10).event == "postgres_changes"
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        ev = c.next(10)
        assert ev.event == "system" and ev.data["status"] == "SHUTDOWN"
        assert ev.retry == 1500
        assert c.closed.wait(10)
        assert relay.proc.wait(20) == 0
    finally:
        c.close()
    out = relay.output()
    token = make_token(SECRET, sub="svc", role="service_role")
    assert token.split(".")[2] not in out
    assert "access_token" not in out
    assert "row-secret-value" not in out
    assert '"msg": "stream closed"' in out or '"msg":"stream closed"' in out


def test_postgres_restart(make_table: Any, relays: list[RelayProcess]) -> None:
    """The embedded server is stopped and started: streams stay open and miss nothing."""
    from relay.embedded import start_embedded
    from relay.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="relay-pgrestart-") as d:
        dsn, server = start_embedded(Path(d))
        try:
            migrate(dsn)
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute("create table r (id int primary key, org_id text)")
                db.execute("select relay.watch('r')")
            relay = RelayProcess(dsn)
            relays.append(relay)
            relay.start()
            c = relay.stream({"sub": "r"})
            try:
                with psycopg.connect(dsn, autocommit=True) as db:
                    db.execute("insert into r values (1, 'o')")
                assert c.next(10).data["new"]["id"] == 1
                server.cleanup()  # stop Postgres
                dsn2, server = start_embedded(Path(d))
                assert dsn2 == dsn
                with psycopg.connect(dsn, autocommit=True) as db:
                    db.execute("insert into r select g, 'o' from generate_series(2, 20) g")
                got = [c.next(30).data["new"]["id"] for _ in range(19)]
                assert got == list(range(2, 21))
                assert not c.closed.is_set()
            finally:
                c.close()
                relay.stop()
        finally:
            server.cleanup()


def test_workers_share_one_port(
    dsn: str, db: Any, make_table: Any, relays: list[RelayProcess]
) -> None:
    """`relay serve --workers 2`: streams land on both processes; SIGTERM stops all with 0."""
    t = make_table("id int primary key, org_id text")
    name = f"wk{uuid.uuid4().hex[:8]}"
    relay = RelayProcess(dsn, RELAY_APPLICATION_NAME=name)
    relays.append(relay)
    relay.start_args = ["--workers", "2"]
    relay.start()
    deadline = time.monotonic() + 20
    while True:  # one LISTEN connection per worker process, each reporting its position
        listeners = db.execute(
            "select count(distinct pid) from pg_stat_activity "
            "where application_name like %s and datname = current_database()",
            (f"{name} pos=%",),
        ).fetchone()[0]
        if listeners >= 2:
            break
        assert time.monotonic() < deadline, f"{listeners} worker listener(s)"
        time.sleep(0.1)
    streams = [relay.stream({"sub": t}) for _ in range(8)]
    try:
        db.execute(f"insert into {t} values (1, 'o')")
        for c in streams:
            assert c.next(10).data["new"]["id"] == 1
        code = relay.kill(signal.SIGTERM)
        assert code == 0, relay.output()[-3000:]
    finally:
        for c in streams:
            c.close()
