"""Snapshot throughput and memory: 100,000 visible `jobs` rows through one request.

    python -m bench.snapshot [--rows 100000] [--hidden 50000] [--writes 200]

Measures, for `GET /v1/stream?snapshot=true` (until SUBSCRIBED) and
`GET /v1/snapshot` (until the body ends), against a relay subprocess:
rows received per second (wall clock, request sent to last byte; the client
parses and counts the rows after the clock stops), the relay's CPU, and the
relay's RSS growth over its RSS before the request (sampled every 10 ms).
Each is run idle and then under `--writes` single-row UPDATEs per second to
the same table. `--hidden` rows belong to another org: the token never sees
them, the snapshot's WHERE skips them. Targets: >= 50,000 rows/s, RSS
growth <= 50 MB. Prints a table, writes JSON (bench/results/snapshot.json).

Invariant: bounded and clean - every request has a timeout, the writer
thread and the relay subprocess are stopped on the way out (errors too), and
the database is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg

from bench import servers
from bench.database import bench_database
from relay.auth import make_token
from relay.migrate import migrate

ORG = "org-visible"
TARGET_ROWS_PER_S = 50_000
TARGET_RSS_MB = 50.0


def _fill(dsn: str, rows: int, hidden: int) -> None:
    migrate(dsn, demo=True)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("alter table jobs disable trigger relay_capture")  # loading is not the bench
        db.execute(
            "insert into jobs (org_id, user_id, status, directories_completed, "
            "progress_percentage, metadata, started_at) "
            "select case when g <= %s then %s else 'org-other' end, 'user-' || (g %% 97), "
            "'running', g %% 40, (g %% 100)::numeric, "
            "jsonb_build_object('source', 'import', 'batch', g %% 13, "
            "                   'tags', jsonb_build_array('a', 'b')), "
            "now() from generate_series(1, %s) g",
            (rows, ORG, rows + hidden),
        )
        db.execute("alter table jobs enable trigger relay_capture")
        db.execute("vacuum analyze jobs")


@contextlib.contextmanager
def _writer(dsn: str, per_second: int) -> Iterator[list[int]]:
    """UPDATEs of visible rows at `per_second`, on a fixed schedule, until the block ends."""
    done = [0]
    stop = threading.Event()

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as db:
            found = db.execute("select id from jobs where org_id = %s limit 5000", (ORG,))
            ids = [r[0] for r in found]
            start = time.monotonic()
            while not stop.is_set():
                due = start + done[0] / per_second
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
                db.execute(
                    "update jobs set directories_completed = directories_completed + 1 "
                    "where id = %s",
                    (ids[done[0] % len(ids)],),
                )
                done[0] += 1

    thread = threading.Thread(target=run, daemon=True)
    if per_second > 0:
        thread.start()
    try:
        yield done
    finally:
        stop.set()
        if per_second > 0:
            thread.join(10)


class _RssSampler:
    """Peak RSS of a server while a block runs (every 10 ms)."""

    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.before = server.rss()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.server.rss())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.server.rss())


def _receive(port: int, target: str, done: bytes) -> bytes:
    """The raw (chunked) response body of GET `target`, read until it ends with or
    contains `done`: a blocking socket and large reads, so the client costs little."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        parts: list[bytes] = []
        tail = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the response ended early: " + b"".join(parts)[-300:].decode())
            parts.append(chunk)
            tail = (tail + chunk)[-4096:]
            if done in tail:
                break
    raw = b"".join(parts)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(raw[:2000].decode("latin-1"))
    return _dechunk(body)


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    index = 0
    while index < len(body):
        line_end = body.index(b"\r\n", index)
        size = int(body[index:line_end].split(b";")[0], 16)
        if size == 0:
            break
        out.append(body[line_end + 2 : line_end + 2 + size])
        index = line_end + 2 + size + 2
    return b"".join(out)


def _stream(port: int, query: str) -> bytes:
    """/v1/stream?snapshot=true up to SUBSCRIBED (rows are parsed later)."""
    return _receive(port, f"/v1/stream?{query}&snapshot=true", b'"status":"SUBSCRIBED"')


def _json(port: int, query: str) -> bytes:
    """/v1/snapshot, whole."""
    return _receive(port, f"/v1/snapshot?{query}", b"\r\n0\r\n\r\n")


def _count(kind: str, body: bytes) -> tuple[int, int]:
    """(rows, position) of a received body, parsed in full."""
    if kind == "json":
        parsed = orjson.loads(body)
        return len(parsed["rows"]), int(parsed["position"])
    rows = 0
    for frame in body.split(b"\n\n"):
        if frame.startswith(b"event: snapshot\n"):
            rows += len(orjson.loads(frame[frame.index(b"data: ") + 6 :])["rows"])
        elif b'"SUBSCRIBED"' in frame:
            return rows, int(orjson.loads(frame[frame.index(b"data: ") + 6 :])["position"])
    raise RuntimeError("no SUBSCRIBED")


def _measure(server: servers.Server, kind: str, query: str, expected: int) -> dict[str, Any]:
    fetch = _stream if kind == "stream" else _json
    cpu0 = server.cpu()
    with _RssSampler(server) as rss:
        t0 = time.monotonic()
        body = fetch(server.port, query)
        seconds = time.monotonic() - t0
    rows, position = _count(kind, body)  # outside the timed window: the client's own cost
    if rows != expected:
        raise RuntimeError(f"{kind}: {rows} rows, expected {expected}")
    return {
        "rows": rows,
        "position": position,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "relay_cpu_s": round(server.cpu() - cpu0, 3),
        "rss_before_mb": round(rss.before / 1e6, 1),
        "rss_growth_mb": round((rss.peak - rss.before) / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.snapshot")
    ap.add_argument("--rows", type=int, default=100_000, help="rows the token sees")
    ap.add_argument("--hidden", type=int, default=50_000, help="rows of another org")
    ap.add_argument("--writes", type=int, default=200, help="UPDATEs per second in the busy runs")
    ap.add_argument("--out", default="bench/results/snapshot.json")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    with bench_database() as bdb:
        _fill(bdb.dsn, args.rows, args.hidden)
        token = make_token(servers.SECRET, sub="bench-user", org_id=ORG)
        query = urlencode({"sub": "jobs", "access_token": token})
        with servers.relay(bdb.dsn, snapshot_max_rows=args.rows + args.hidden) as server:
            # the first snapshot of a fresh process (imports, plans, pool), kept apart
            first = _measure(server, "stream", query, args.rows)
            results.append({"endpoint": "stream (first)", "writes_per_s": 0, **first})
            for writes in (0, args.writes):
                for kind in ("stream", "json"):
                    with _writer(bdb.dsn, writes) as done:
                        started = time.monotonic()
                        while done[0] < min(writes, 20) and time.monotonic() - started < 30:
                            time.sleep(0.01)  # the writer is under way before the snapshot
                        result = _measure(server, kind, query, args.rows)
                    results.append({"endpoint": kind, "writes_per_s": writes, **result})
                    results[-1]["writes_done"] = done[0]
        summary = {
            "rows": args.rows,
            "hidden_rows": args.hidden,
            "server_version": bdb.server_version,
            "targets": {"rows_per_s": TARGET_ROWS_PER_S, "rss_growth_mb": TARGET_RSS_MB},
            "runs": results,
        }
    print(f"snapshot of {args.rows} visible jobs rows ({args.hidden} hidden), one request each")
    print(
        f"  {'endpoint':<30} {'writes/s':>8} {'seconds':>8} {'rows/s':>9} {'relay cpu s':>11} "
        f"{'RSS +MB':>8}  target met"
    )
    for r in results:
        met = r["rows_per_s"] >= TARGET_ROWS_PER_S and r["rss_growth_mb"] <= TARGET_RSS_MB
        name = {"json": "/v1/snapshot"}.get(r["endpoint"], "/v1/stream?snapshot")
        name += " (first)" if "first" in r["endpoint"] else ""
        print(
            f"  {name:<30} {r['writes_per_s']:>8} {r['seconds']:>8} {r['rows_per_s']:>9} "
            f"{r['relay_cpu_s']:>11} {r['rss_growth_mb']:>8}  {'yes' if met else 'NO'}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
