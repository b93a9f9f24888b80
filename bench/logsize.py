"""Log size: bytes per change for the demo tables, and the log after a million changes.

    python -m bench.logsize [--changes 1000000] [--keep 100000]

Measures (1) the log bytes each INSERT/UPDATE/DELETE of a typical demo row
costs, with old row versions kept and without (`keep_old => false`), and
(2) the size of `relay.changes` + `relay.batches` while 1,000,000 changes
are written with retention keeping the newest `--keep` positions, pruning
in small steps as the relay does: the table must stay bounded (space freed
by pruning is reused after vacuum, no bloat). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from relay.dsn import with_dbname
from relay.migrate import migrate


def _one(db: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    """The single value a query returns."""
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


SIZE_SQL = (
    "select pg_total_relation_size('relay.changes') + pg_total_relation_size('relay.batches')"
)


def _server() -> tuple[str, Any]:
    import os

    url = os.environ.get("RELAY_BENCH_DATABASE_URL")
    if url:
        return url, None
    from relay.embedded import start_embedded

    d = tempfile.mkdtemp(prefix="relay-logsize-")
    return start_embedded(Path(d))


def _fresh(admin: str) -> str:
    name = f"relay_logsize_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"create database {name}")
    dsn = with_dbname(admin, name)
    migrate(dsn, demo=True)
    return dsn


def per_change(dsn: str, n: int = 2000) -> dict[str, dict[str, float]]:
    """Average log bytes per change of each kind, for jobs rows, old kept or not."""
    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(dsn, autocommit=True) as db:
        for keep_old in (True, False):
            db.execute("select relay.watch('public.jobs', keep_old => %s)", (keep_old,))
            db.execute("truncate relay.changes, relay.batches")
            db.execute("vacuum full relay.changes")
            db.execute("vacuum full relay.batches")
            sizes: dict[str, float] = {}
            for kind, stmt in (
                (
                    "insert",
                    "insert into jobs (org_id, user_id, status, metadata) "
                    "select 'org-' || (g % 50), 'user-' || g, 'running', "
                    "jsonb_build_object('source', 'import', 'batch', g) "
                    f"from generate_series(1, {n}) g",
                ),
                (
                    "update",
                    "update jobs set directories_completed = directories_completed + 1, "
                    "progress_percentage = 50",
                ),
                ("delete", "delete from jobs"),
            ):
                before = _one(db, SIZE_SQL)
                db.execute(stmt)
                db.execute("checkpoint")
                after = _one(db, SIZE_SQL)
                payload = _one(
                    db,
                    "select avg(coalesce(pg_column_size(new), 0) "
                    "+ coalesce(pg_column_size(old), 0)) from relay.changes where kind = %s",
                    ({"insert": "I", "update": "U", "delete": "D"}[kind],),
                )
                sizes[f"{kind}_bytes"] = round((after - before) / n, 1)
                sizes[f"{kind}_payload_bytes"] = round(float(payload or 0), 1)
            out["old kept" if keep_old else "old = key only"] = sizes
        db.execute("select relay.watch('public.jobs')")
    return out


def million(dsn: str, changes: int, keep: int, step: int = 10_000) -> dict[str, Any]:
    """Write `changes` changes (INSERT statements of `step` rows), pruning as the relay does."""
    points: list[tuple[int, int]] = []
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("create table if not exists bulk (id bigserial primary key, org_id text, n int)")
        db.execute("select relay.watch('bulk')")
        db.execute("truncate relay.changes, relay.batches")
        t0 = time.monotonic()
        written = 0
        while written < changes:
            db.execute(
                f"insert into bulk (org_id, n) select 'o', g from generate_series(1, {step}) g"
            )
            written += step
            while _one(db, "select relay.prune('100 years', %s, 5000)", (keep,)):
                pass
            if written % (changes // 10) == 0:
                db.execute("vacuum relay.changes")  # what autovacuum does on its own
                db.execute("vacuum relay.batches")
                points.append((written, _one(db, SIZE_SQL)))
        elapsed = time.monotonic() - t0
        rows = _one(db, "select count(*) from relay.changes")
    return {
        "changes": changes,
        "kept": keep,
        "rows_left": rows,
        "seconds": round(elapsed, 1),
        "size_mib_by_changes": [(w, round(s / 1048576, 1)) for w, s in points],
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.logsize")
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--keep", type=int, default=100_000)
    ap.add_argument("--out", default="bench/results/logsize.json")
    args = ap.parse_args()
    admin, server = _server()
    try:
        dsn = _fresh(admin)
        result = {"per_change": per_change(dsn), "retention": million(dsn, args.changes, args.keep)}
    finally:
        if server is not None:
            server.cleanup()
    print("log bytes per change (jobs row, ~300 B of JSON):")
    print(f"  {'':<16} {'insert':>8} {'update':>8} {'delete':>8}")
    for name, sizes in result["per_change"].items():
        print(
            f"  {name:<16} {sizes['insert_bytes']:>8} {sizes['update_bytes']:>8} "
            f"{sizes['delete_bytes']:>8}"
        )
    r = result["retention"]
    print(f"{r['changes']} changes, keeping the newest {r['kept']}: {r['seconds']} s")
    for w, mib in r["size_mib_by_changes"]:
        print(f"  after {w:>9} changes: {mib:>7} MiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
