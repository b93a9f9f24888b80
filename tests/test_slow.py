"""Slow consumers: clients that stop reading are dropped; others get everything."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import RelayServer, start_relay


@pytest.fixture
def small_relay(dsn: str) -> Iterator[RelayServer]:
    srv = start_relay(dsn, max_outbox_events=50, read_batch=25, close_grace_seconds=0.5)
    try:
        yield srv
    finally:
        srv.stop()


def stalled_client(url: str) -> socket.socket:
    """Connect, send the request, and never read (tiny receive buffer)."""
    u = urlsplit(url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((u.hostname, u.port))
    s.sendall(f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode())
    return s


def read_until_cut(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything a stalled connection received, read once the server has cut it
    (EOF, or a reset); a connection still open after `timeout` fails the test."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_stalled_clients_are_dropped_others_get_everything(
    small_relay: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, pad text")
    hub = small_relay.relay.hub
    token = small_relay.service_token()
    stalled = [stalled_client(small_relay.stream_url({"sub": t}, token)) for _ in range(20)]
    try:
        deadline = time.monotonic() + 10
        while len(hub.subscribers) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with small_relay.open({"sub": t}) as good:
            for i in range(30):  # 30 transactions of 100 rows of ~2 KB
                db.execute(
                    f"insert into {t} select g, 'o', repeat('x', 2000) "
                    f"from generate_series({i * 100 + 1}, {i * 100 + 100}) g"
                )
                # outboxes stay bounded at every moment
                assert all(len(s.outbox) <= 51 for s in list(hub.subscribers))
            got = good.take(3000, timeout=60)
            assert [e.data["new"]["id"] for e in got] == list(range(1, 3001))
            deadline = time.monotonic() + 20
            while len(hub.subscribers) > 1:  # only the good client is left
                assert time.monotonic() < deadline, f"{len(hub.subscribers)} left"
                time.sleep(0.02)
        # each stalled connection was cut by the server (EOF or reset after its buffer)
        for s in stalled:
            read_until_cut(s)
    finally:
        for s in stalled:
            s.close()


def test_too_slow_then_resume_loses_nothing(
    small_relay: RelayServer, db: Any, make_table: Any
) -> None:
    """A client that fell behind reconnects with its last id and gets the rest."""
    t = make_table("id int primary key, org_id text, pad text")
    c = small_relay.open({"sub": t})
    got: list[Any] = []
    try:
        # pause the reader by not consuming while the relay writes a burst
        db.execute(
            f"insert into {t} select g, 'o', repeat('y', 3000) from generate_series(1, 3000) g"
        )
        while True:
            try:
                ev = c.next(timeout=20)
            except TimeoutError:
                break
            if ev.event == "system":
                assert ev.data["status"] == "TOO_SLOW"
                break
            got.append(ev)
            if len(got) == 3000:
                break
    finally:
        c.close()
    if len(got) < 3000:
        last = got[-1].id if got else 0
        with small_relay.open({"sub": t}, headers={"Last-Event-ID": str(last)}) as c2:
            got += c2.take(3000 - len(got), timeout=60)
    assert [e.data["new"]["id"] for e in got] == list(range(1, 3001))
