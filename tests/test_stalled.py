"""A reader that stops reading costs bounded memory: cut at its outbox's byte bound,
counting what its connection holds unsent, whatever it missed; others are unaffected."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from relay.hub import TOO_SLOW
from relay.stream import WRITE_CHUNK
from tests.conftest import RelayServer, start_relay
from tests.test_slow import read_until_cut, stalled_client

MAX_BYTES = 256 * 1024
ROW = 8000


@pytest.fixture
def bounded_relay(dsn: str) -> Iterator[RelayServer]:
    srv = start_relay(dsn, max_outbox_bytes=MAX_BYTES, close_grace_seconds=0.5)
    try:
        yield srv
    finally:
        srv.stop()


def wait_for(cond: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.01)


def test_stalled_readers_are_cut_at_a_bounded_size(
    bounded_relay: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, pad text")
    hub = bounded_relay.relay.hub
    url = bounded_relay.stream_url({"sub": t}, bounded_relay.service_token())
    n = 12
    stalled = [stalled_client(url) for _ in range(n)]
    try:
        wait_for(lambda: len(hub.subscribers) == n, what="stalled streams open")
        subs = list(hub.subscribers)
        with bounded_relay.open({"sub": t}) as good:
            rows = 400  # 3.2 MB: over twelve times each stalled reader's bound
            got = []
            for i in range(0, rows, 10):
                db.execute(
                    f"insert into {t} select g, 'o', repeat('x', {ROW}) "
                    f"from generate_series({i + 1}, {i + 10}) g"
                )
                # the healthy reader keeps up (its own bound is the same as theirs)
                got += good.take(10, timeout=20)
                # what the relay holds for each stalled reader stays bounded at every moment
                assert all(s.held() <= MAX_BYTES + 2 * ROW for s in subs)
            assert [e.data["new"]["id"] for e in got] == list(range(1, rows + 1))
            wait_for(lambda: all(s.closed for s in subs), what="stalled readers closed")
            assert {s.close_reason for s in subs} == {TOO_SLOW}
            # never more than the bound (plus the frame that crossed it) at any push
            assert max(s.peak_held for s in subs) <= MAX_BYTES + 2 * ROW
            # and each stalled reader was really holding data when it was cut
            assert min(s.peak_held for s in subs) > WRITE_CHUNK
            wait_for(lambda: len(hub.subscribers) == 1, what="stalled streams gone")
            assert hub.held_bytes() <= MAX_BYTES + 2 * ROW
        # each stalled connection was cut by the server (EOF, or reset after the grace)
        for s in stalled:
            read_until_cut(s)
    finally:
        for s in stalled:
            s.close()


def test_connections_have_a_bounded_kernel_send_buffer(
    bounded_relay: RelayServer, make_table: Any
) -> None:
    """The kernel holds at most about 2 x RELAY_SEND_BUFFER_BYTES for a reader, not 4 MB."""
    t = make_table("id int primary key, org_id text")
    hub = bounded_relay.relay.hub
    with bounded_relay.open({"sub": t}):
        (sub,) = hub.subscribers
        assert sub.unsent is not None
        transport = sub.unsent.__self__  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        want = bounded_relay.relay.settings.send_buffer_bytes
        assert want > 0 and want <= size <= 2 * want


def received_ids(sock: socket.socket) -> list[int]:
    """The `id:`s of the complete postgres_changes events a cut connection received
    (its HTTP/1.1 chunked body de-chunked; a torn last chunk or event is ignored)."""
    raw = read_until_cut(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n", 1)[0], head[:100]
    data = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0 or len(rest) < size + 2:
            data += rest[:size]  # a torn chunk: keep what arrived, events are cut below
            break
        data += rest[:size]
        body = rest[size + 2 :]
    ids = []
    for event in data.split(b"\n\n")[:-1]:  # the last piece is incomplete (or empty)
        lines = event.split(b"\n")
        if lines[0].startswith(b"id: ") and b"event: postgres_changes" in lines:
            ids.append(int(lines[0][4:]))
    return ids


def test_a_cut_stalled_reader_resumes_with_exactly_what_it_missed(
    bounded_relay: RelayServer, db: Any, make_table: Any
) -> None:
    t = make_table("id int primary key, org_id text, pad text")
    hub = bounded_relay.relay.hub
    url = bounded_relay.stream_url({"sub": t}, bounded_relay.service_token())
    stalled = [stalled_client(url) for _ in range(3)]
    try:
        wait_for(lambda: len(hub.subscribers) == 3, what="stalled streams open")
        subs = list(hub.subscribers)
        rows = 200  # 1.6 MB: several times each reader's bound
        for i in range(0, rows, 10):
            db.execute(
                f"insert into {t} select g, 'o', repeat('x', {ROW}) "
                f"from generate_series({i + 1}, {i + 10}) g"
            )
        wait_for(lambda: all(s.closed for s in subs), what="stalled readers cut")
        committed = [r[0] for r in db.execute(f"select id from {t} order by id").fetchall()]
        assert committed == list(range(1, rows + 1))
        for k, sock in enumerate(stalled):
            seen = received_ids(sock)
            assert seen == sorted(set(seen))  # in order, none twice
            assert len(seen) < rows  # it was cut before the end: it missed something
            last = seen[-1] if seen else None
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            params = {"sub": t} if last is not None else {"sub": t, "last_event_id": "0"}
            # committed so far, in commit order: the rows, then earlier readers' markers
            ids = [r[0] for r in db.execute(f"select id from {t} order by id").fetchall()]
            with bounded_relay.open(params, headers=headers) as again:
                missed = ids[len(seen) :]
                got = again.take(len(missed), timeout=30, event="postgres_changes")
                assert [e.data["new"]["id"] for e in got] == missed
                assert last is None or all(e.id is not None and e.id > last for e in got)
                marker = rows + 100 + k  # then live, with nothing in between
                db.execute(f"insert into {t} values ({marker}, 'o', '')")
                (live,) = again.take(1, timeout=20, event="postgres_changes")
                assert live.data["new"]["id"] == marker
    finally:
        for s in stalled:
            s.close()
