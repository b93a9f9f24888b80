"""Waiting long-polls: what commits they cannot see cost the relay.

    python -m bench.polls [--polls 1000] [--rate 200] [--seconds 8]

Against a relay subprocess, `--polls` long-polls (`GET /v1/changes?sub=A&wait=25`,
one per-user token each, raw sockets) wait on table A. Two windows of
`--seconds` each, measured in the same run: first nothing is written (the
baseline), then `--rate` commits a second go to table B, which no poll may
see. Per window: log pages read by long-polls (`relay_log_reads_total
{reader="longpoll"}` from /metrics), polls answered, relay CPU seconds per
second. Then one commit to A: how long until every poll has its answer.
Prints a table, writes JSON (bench/results/polls.json).

Invariant: bounded and clean — every socket has a timeout, the writer thread
ends, the relay subprocess is stopped and the database dropped, errors too.
"""

from __future__ import annotations

import argparse
import json
import re
import selectors
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from bench import servers
from bench.database import bench_database
from bench.loadclient import raise_nofile_limit
from relay.auth import make_token

RESULTS = Path(__file__).resolve().parent / "results"
_READS = re.compile(r'^relay_log_reads_total\{reader="longpoll"\} (\S+)$', re.M)


def _longpoll_reads(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        m = _READS.search(r.read().decode())
    return int(float(m.group(1))) if m else 0


def _setup(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("polls_a", "polls_b"):
            conn.execute(
                f"create table if not exists public.{t} (id serial primary key, org_id text)"
            )
            conn.execute(f"select relay.watch('public.{t}')")
        row = conn.execute("select relay.current_position()").fetchone()
        return int(row[0]) if row else 0


class _Polls:
    """Raw sockets, each with one long-poll in flight; notes when each got its answer."""

    def __init__(self, port: int, targets: list[str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.answered: dict[int, float] = {}
        self.socks: list[socket.socket] = []
        for i, target in enumerate(targets):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, i)
            self.socks.append(s)

    def poll(self, seconds: float) -> None:
        """Note answers arriving within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in self.sel.select(min(left, 0.1)):
                i = int(key.data)
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if i not in self.answered:
                    self.answered[i] = time.monotonic()
                if not data:
                    self.sel.unregister(key.fileobj)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sel.close()


def _writer(dsn: str, rate: float, stop: threading.Event, done: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = 0
        started = time.monotonic()
        while not stop.is_set():
            conn.execute("insert into public.polls_b (org_id) values ('o1')")
            n += 1
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)
        done.append(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.polls", description=__doc__)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="commits/s to table B")
    parser.add_argument("--seconds", type=float, default=8.0, help="each window (< 12)")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    with bench_database() as db, servers.relay(db.dsn) as relay:
        after = _setup(db.dsn)
        targets = []
        for i in range(args.polls):
            token = make_token(servers.SECRET, sub=f"poller-{i}", org_id="o1", ttl=3600)
            query = urlencode({"sub": "polls_a", "after": after, "wait": 25, "access_token": token})
            targets.append(f"/v1/changes?{query}")
        polls = _Polls(relay.port, targets)
        try:
            polls.poll(1.0)  # let every poll reach its wait
            windows: dict[str, dict[str, Any]] = {}
            for name, rate in (("idle", 0.0), ("B commits", args.rate)):
                reads0, cpu0, t0 = _longpoll_reads(relay.port), relay.cpu(), time.monotonic()
                stop, done = threading.Event(), list[int]()
                writer = None
                if rate:
                    writer = threading.Thread(target=_writer, args=(db.dsn, rate, stop, done))
                    writer.start()
                answered0 = len(polls.answered)
                polls.poll(args.seconds)
                stop.set()
                if writer is not None:
                    writer.join(30)
                elapsed = time.monotonic() - t0
                windows[name] = {
                    "commits_per_s": round((done[0] if done else 0) / elapsed, 1),
                    "longpoll_log_reads": _longpoll_reads(relay.port) - reads0,
                    "polls_answered": len(polls.answered) - answered0,
                    "relay_cpu_s_per_s": round((relay.cpu() - cpu0) / elapsed, 3),
                }
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                conn.execute("insert into public.polls_a (org_id) values ('o1')")
            committed = time.monotonic()
            reads0 = _longpoll_reads(relay.port)
            polls.poll(5.0)
            answer_times = sorted(t - committed for t in polls.answered.values())
            wake = {
                "polls_answered": len(polls.answered),
                "longpoll_log_reads": _longpoll_reads(relay.port) - reads0,
                "last_answer_ms": round(answer_times[-1] * 1000, 1) if answer_times else None,
            }
        finally:
            polls.close()
    print(f"{args.polls} long-polls waiting on table A, windows of {args.seconds:g} s")
    print(f"{'window':<12}{'commits/s':>11}{'poll reads':>12}{'answered':>10}{'relay CPU':>11}")
    for name, w in windows.items():
        print(
            f"{name:<12}{w['commits_per_s']:>11.1f}{w['longpoll_log_reads']:>12}"
            f"{w['polls_answered']:>10}{w['relay_cpu_s_per_s']:>11.3f}"
        )
    print(
        f"one commit to A: {wake['polls_answered']}/{args.polls} answered, last after "
        f"{wake['last_answer_ms']} ms, {wake['longpoll_log_reads']} long-poll log reads"
    )
    RESULTS.mkdir(exist_ok=True)
    out = {"polls": args.polls, "windows": windows, "commit_to_a": wake}
    (RESULTS / "polls.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
