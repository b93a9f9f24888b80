"""Stalled readers: what clients that stop reading cost the relay, and the others.

    python -m bench.stalled [--stalled 200] [--rows 3000] [--row-bytes 8000]
                            [--tps 100] [--per-tx 10]

Against a relay subprocess with its default settings, `--rows` rows of
`--row-bytes` each are written in transactions of `--per-tx` rows at `--tps`
transactions a second, while one healthy reader (a blocking socket that reads everything)
and, in the second run, `--stalled` readers that open the same stream and
never read (4 KB receive buffer) are connected. Each run uses a fresh relay
process. Reported per run: the relay's RSS growth (peak, sampled every 10 ms,
over its RSS once the streams were open), the healthy reader's latency from
COMMIT to the row's arrival (p50, p99), whether it got every row, and how many
stalled connections the relay cut (EOF or reset) within the close grace.
Prints a table, writes JSON (bench/results/stalled.json).

`--relay-src DIR` runs the relay from another source tree (e.g. an older
commit exported with `git archive`), to compare before and after.

Invariant: bounded and clean - every socket has a timeout, the writer and
reader threads end, the relay subprocess is stopped (errors too), and the
database is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import statistics
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
from bench.snapshot import _RssSampler
from relay.auth import make_token

TABLE = "stalled_rows"
_ID = re.compile(rb'"new": ?\{"id": ?(\d+)')


def _relay(dsn: str, src: str | None) -> contextlib.AbstractContextManager[servers.Server]:
    if src is None:
        return servers.relay(dsn)
    port = servers.free_port()
    env = {
        "RELAY_DATABASE_URL": dsn,
        "RELAY_JWT_SECRET": servers.SECRET,
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_LOG_FORMAT": "text",
    }
    code = (
        f"import sys; sys.path.insert(0, {src!r}); from relay.cli import main; main(sys.argv[1:])"
    )
    argv = ["-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return servers.serve("relay", argv, env, port)


def _open(port: int, target: str, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    return s


class _Reader:
    """The healthy reader: reads everything, notes when each row id first appears."""

    def __init__(self, port: int, target: str, rows: int) -> None:
        self.sock = _open(port, target)
        self.rows = rows
        self.seen: dict[int, float] = {}
        self.subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tail = b""
        self.end = "all rows"
        try:
            while len(self.seen) < self.rows:
                data = self.sock.recv(1 << 20)
                if not data:
                    self.end = "EOF after " + repr(tail[-120:])
                    return
                now = time.monotonic()
                buf = tail + data
                if b"SUBSCRIBED" in buf:
                    self.subscribed.set()
                for m in _ID.finditer(buf):
                    self.seen.setdefault(int(m.group(1)), now)
                tail = buf[-200:]
        except OSError as exc:
            self.end = f"{type(exc).__name__} after " + repr(tail[-120:])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self.sock.close()


def _wait_open(port: int, streams: int, timeout: float = 60) -> None:
    """Until the relay's /metrics shows `streams` open streams."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            m = re.search(rb"^relay_open_streams (\S+)$", r.read(), re.M)
        if m and float(m.group(1)) >= streams:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{streams} streams did not open within {timeout:.0f} s")


def _write(dsn: str, rows: int, row_bytes: int, tps: float, per_tx: int) -> dict[int, float]:
    """Insert the rows, `per_tx` per transaction at `tps`; the COMMIT time of each row id."""
    committed: dict[int, float] = {}
    with psycopg.connect(dsn, autocommit=True) as db:
        started = time.monotonic()
        for n, lo in enumerate(range(1, rows + 1, per_tx)):
            hi = min(rows, lo + per_tx - 1)
            wait = started + n / tps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            db.execute(
                f"insert into {TABLE} select g, 'o', repeat('x', %s::int) "
                "from generate_series(%s::int, %s::int) g",
                (row_bytes, lo, hi),
            )
            now = time.monotonic()
            for i in range(lo, hi + 1):
                committed[i] = now
    return committed


def _cut(socks: list[socket.socket], timeout: float) -> int:
    """How many of the stalled connections the relay closed (EOF or reset)."""
    cut = 0
    deadline = time.monotonic() + timeout
    for s in socks:
        try:
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                if not s.recv(1 << 20):
                    cut += 1
                    break
        except ConnectionResetError:
            cut += 1
        except OSError:
            pass
    return cut


def _run(
    dsn: str, src: str | None, stalled: int, rows: int, row_bytes: int, tps: float, per_tx: int
) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"truncate {TABLE}")
    token = make_token(servers.SECRET, sub="bench", role="service_role")
    target = "/v1/stream?" + urlencode({"sub": TABLE, "access_token": token})
    with _relay(dsn, src) as server:
        socks: list[socket.socket] = []
        try:
            reader = _Reader(server.port, target, rows)
            if not reader.subscribed.wait(30):
                raise RuntimeError("the healthy reader got no SUBSCRIBED")
            socks = [_open(server.port, target, rcvbuf=4096) for _ in range(stalled)]
            _wait_open(server.port, stalled + 1)
            cpu = server.cpu()
            began = time.monotonic()
            with _RssSampler(server) as rss:
                committed = _write(dsn, rows, row_bytes, tps, per_tx)
                reader.join(60)
            cpu, wall = server.cpu() - cpu, time.monotonic() - began
            cut = _cut(socks, 15) if socks else 0
        finally:
            for s in socks:
                s.close()
    lat = sorted((reader.seen[i] - committed[i]) * 1000 for i in committed if i in reader.seen)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {
        "stalled": stalled,
        "rows": rows,
        "row_bytes": row_bytes,
        "healthy_got_all": len(reader.seen) == rows,
        "healthy_rows": len(reader.seen),
        "healthy_end": reader.end,
        "latency_p50_ms": round(q[49], 1),
        "latency_p99_ms": round(q[98], 1),
        "rss_before_mb": round(rss.before / 2**20, 1),
        "rss_growth_mb": round((rss.peak - rss.before) / 2**20, 1),
        "stalled_cut": cut,
        "relay_cpu_s": round(cpu, 2),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stalled")
    ap.add_argument("--stalled", type=int, default=200, help="readers that never read")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--row-bytes", type=int, default=8000)
    ap.add_argument("--tps", type=float, default=100.0, help="transactions a second")
    ap.add_argument("--per-tx", type=int, default=10, help="rows per transaction")
    ap.add_argument("--relay-src", default=None, help="run the relay from this source tree")
    ap.add_argument("--out", default="bench/results/stalled.json")
    args = ap.parse_args()
    raise_nofile_limit()
    results: list[dict[str, Any]] = []
    with bench_database() as bdb:
        with psycopg.connect(bdb.dsn, autocommit=True) as db:
            db.execute(f"create table {TABLE} (id int primary key, org_id text, pad text)")
            db.execute(f"select relay.watch('public.{TABLE}')")
        for stalled in (0, args.stalled):
            results.append(
                _run(
                    bdb.dsn,
                    args.relay_src,
                    stalled,
                    args.rows,
                    args.row_bytes,
                    args.tps,
                    args.per_tx,
                )
            )
    print(
        f"{args.rows} rows of {args.row_bytes} B, {args.per_tx} per transaction at {args.tps:g}/s; "
        f"relay {args.relay_src or 'from this tree'}"
    )
    print(f"  {'stalled':>7} {'RSS +MB':>8} {'p50 ms':>7} {'p99 ms':>7} {'all rows':>8} {'cut':>5}")
    for r in results:
        print(
            f"  {r['stalled']:>7} {r['rss_growth_mb']:>8} {r['latency_p50_ms']:>7} "
            f"{r['latency_p99_ms']:>7} {'yes' if r['healthy_got_all'] else 'NO':>8} "
            f"{r['stalled_cut']:>5} {r['relay_cpu_s']:>11} {r['wall_s']:>6}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "relay_src": args.relay_src,
                "tps": args.tps,
                "rows_per_transaction": args.per_tx,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
